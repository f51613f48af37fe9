//! The other process of every measurement: the same program started again with
//! [`PEER_ENV`] naming its role, so that a benchmark needs no second binary.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{pin_to, raw};

/// Set in a peer's environment to its role.
pub const PEER_ENV: &str = "IPCKIT_BENCH_PEER";

/// When this process was started as a peer, plays the role (on the second of its run's
/// CPUs, see [`pin_to`]) and returns true;
/// the caller then exits. `extra` handles roles that only one program knows.
///
/// ```no_run
/// if ipckit_bench::peer::run_if_peer(|_, _| false) {
///     std::process::exit(0);
/// }
/// // ... the measurement itself
/// ```
pub fn run_if_peer(extra: impl FnOnce(&str, &str) -> bool) -> bool {
    let Ok(role) = std::env::var(PEER_ENV) else {
        return false;
    };
    let address = std::env::args().nth(1).unwrap_or_default();
    pin_to(1);
    let builtin = role.starts_with("raw:")
        || role.starts_with("rawsink:")
        || role == "echo"
        || role == "sink"
        || role == "tally"
        || role == "answer"
        || role == "subscriber"
        || role == "calculator"
        || role.starts_with("rawcall:");
    if builtin {
        // Ends when the parent closes our stdin or goes away, whatever it was doing.
        std::thread::spawn(|| {
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            std::process::exit(0);
        });
    }
    if let Some(spec) = role.strip_prefix("raw:") {
        // raw:SCHEME or raw:SCHEME:SIZE
        let (scheme, size) = spec.split_once(':').unwrap_or((spec, ""));
        raw::serve(scheme, &address, size.parse().unwrap_or(raw::SIZE));
    } else if let Some(spec) = role.strip_prefix("rawsink:") {
        // rawsink:SCHEME:SIZE:COUNT
        let mut parts = spec.split(':');
        let scheme = parts.next().unwrap_or_default();
        let mut number = || parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let stream = raw::Stream {
            size: number() as usize,
            count: number(),
        };
        raw::sink(scheme, &address, stream);
    } else if role == "echo" {
        echo(&address);
    } else if role == "sink" {
        sink(&address);
    } else if role == "tally" {
        tally(&address);
    } else if role == "answer" {
        crate::push::answer(&address);
    } else if role == "subscriber" {
        crate::push::subscriber(&address);
    } else if role == "calculator" {
        crate::contract::serve_calculator(&address);
    } else if let Some(codec) = role.strip_prefix("rawcall:") {
        crate::contract::serve_raw(codec, &address);
    } else if !crate::events::peer(&role, &address)
        && !crate::spool::peer(&role, &address)
        && !extra(&role, &address)
    {
        panic!("unknown peer role {role}");
    }
    true
}

fn listen(address: &str) -> ipckit::Server {
    let server = ipckit::listen(address).unwrap_or_else(|e| panic!("{e}"));
    // The parent reads the real endpoint (a TCP port the kernel chose) from this line.
    println!("{}", server.endpoint());
    server
}

/// Answers every request with its own payload.
fn echo(address: &str) {
    let mut server = listen(address);
    loop {
        let mut message = server.recv().unwrap_or_else(|e| panic!("{e}"));
        let payload = message.take_payload();
        if message.wants_reply() {
            let _ = message.reply(&payload);
        }
    }
}

/// The request that asks a `sink` peer for its count.
pub const COUNT_REQUEST: &[u8] = b"count?";

/// Counts one-way messages and their bytes; the request [`COUNT_REQUEST`] is answered
/// with `"MESSAGES BYTES"` since the previous one. (On a datagram transport every message
/// can be answered, so the payload, not `wants_reply`, tells the question.) Each payload
/// is copied out, as every socket, pipe or queue receiver gets its bytes, so that shm's
/// in-place read does not count as receiving more than it touched.
fn sink(address: &str) {
    let mut server = listen(address);
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut kept = Vec::new();
    loop {
        let mut message = server.recv().unwrap_or_else(|e| panic!("{e}"));
        if message.payload() == COUNT_REQUEST && message.wants_reply() {
            let _ = message.reply(format!("{messages} {bytes}").as_bytes());
            (messages, bytes) = (0, 0);
        } else {
            messages += 1;
            bytes += message.payload().len() as u64;
            kept.clear();
            kept.extend_from_slice(message.payload());
            std::hint::black_box(&kept);
        }
    }
}

/// The message that ends a one-way stream to a `tally` peer.
pub const END_OF_STREAM: &[u8] = b"ipckit-bench: end of stream";

/// Counts one-way messages until [`END_OF_STREAM`], copying each out as `sink` does, then
/// prints `done MESSAGES NANOS`, the time from the first message to the end, as the
/// hand-written sinks do: for transports that cannot reply.
fn tally(address: &str) {
    let mut server = listen(address);
    let mut messages = 0u64;
    let mut first = None;
    let mut kept = Vec::new();
    loop {
        let message = server.recv().unwrap_or_else(|e| panic!("{e}"));
        let now = Instant::now();
        if message.payload() == END_OF_STREAM {
            let nanos = first.map_or(0, |f: Instant| now.duration_since(f).as_nanos());
            println!("done {messages} {nanos}");
            return;
        }
        first.get_or_insert(now);
        messages += 1;
        kept.clear();
        kept.extend_from_slice(message.payload());
        std::hint::black_box(&kept);
    }
}

/// The peers running now, by process id and address, so that a run stopped by a signal
/// can stop them and remove what they made ([`abandon`]); `None` once abandoned, so that
/// no peer starts after.
static RUNNING: Mutex<Option<Vec<(u32, String)>>> = Mutex::new(Some(Vec::new()));

static ABANDONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`abandon`] was called: the run's own thread then fails as its servers go,
/// and should wait for the process to end rather than report it.
///
/// ```
/// assert!(!ipckit_bench::peer::abandoned());
/// ```
pub fn abandoned() -> bool {
    ABANDONED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Stops every running peer and removes what it made, for a run that is stopping (from a
/// signal, while the measurement goes on in another thread); no peer starts after.
///
/// ```no_run
/// // On SIGINT, from the thread that waits for it:
/// ipckit_bench::peer::abandon();
/// std::process::exit(0);
/// ```
pub fn abandon() {
    ABANDONED.store(true, std::sync::atomic::Ordering::SeqCst);
    let running = RUNNING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    for (pid, address) in running {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        // Dead, its descriptors closed, but left for its `Child` to reap: a pid reaped
        // here could be reused before that `Child` kills it.
        let _ = nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(pid),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
        );
        destroy_endpoint(&address);
    }
}

/// Enters a peer in [`RUNNING`]; false once the run is abandoned.
fn registered(pid: u32, address: &str) -> bool {
    match RUNNING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        Some(running) => {
            running.push((pid, address.to_owned()));
            true
        }
        None => false,
    }
}

/// Takes a peer out of [`RUNNING`], before it is reaped, so that `abandon` never signals
/// a pid that could be reused.
fn forget(pid: u32) {
    if let Some(running) = RUNNING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        running.retain(|(p, _)| *p != pid);
    }
}

/// Removes what a server at `address` leaves when killed (a segment, a queue).
///
/// ```
/// ipckit_bench::peer::destroy_endpoint("mq://ipckit-doc-gone");
/// ```
pub fn destroy_endpoint(address: &str) {
    if let Ok(endpoint) = address.parse::<ipckit::Endpoint>() {
        if let Some(transport) = ipckit::transport::find(endpoint.scheme()) {
            let _ = transport.destroy(&endpoint);
        }
    }
}

/// A running peer, stopped (and its endpoint cleaned up) when dropped.
pub struct Peer {
    child: Child,
    address: String,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Peer {
    /// Starts this program again as `role` at `address`, and waits for it to say where it
    /// listens.
    ///
    /// ```no_run
    /// # if ipckit_bench::peer::run_if_peer(|_, _| false) { std::process::exit(0) }
    /// let echo = ipckit_bench::peer::Peer::start("echo", "uds:///tmp/doc-echo.sock")?;
    /// let client = ipckit::connect(echo.address()).unwrap();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(role: &str, address: &str) -> std::io::Result<Peer> {
        let cpus: Vec<String> = crate::allowed_cpus()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut child = Command::new(std::env::current_exe()?)
            .env(PEER_ENV, role)
            .env(crate::CPUS_ENV, cpus.join(","))
            .arg(address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Known to `abandon` from the start: a signal may come while it starts up.
        let pid = child.id();
        if !registered(pid, address) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the run is stopping"));
        }
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        if read.is_err() || line.is_empty() {
            forget(pid);
            let mut err = String::new();
            let _ =
                std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut err);
            let _ = child.kill();
            let _ = child.wait();
            read?;
            return Err(std::io::Error::other(format!(
                "the {role} peer did not start: {}",
                panic_message(&err)
            )));
        }
        let address = line.trim().to_owned();
        // Where it really listens (a port the kernel chose), for `abandon` to clean up.
        if let Some(running) = RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            for entry in running.iter_mut().filter(|(p, _)| *p == pid) {
                entry.1 = address.clone();
            }
        }
        Ok(Peer {
            child,
            address,
            stdout,
        })
    }

    /// Where the peer listens.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the peer prints.
    pub fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }

    /// CPU time the peer used so far, including the slice it is running now (its CPU
    /// clock, where /proc only counts up to the last tick or switch).
    pub fn cpu_time(&self) -> Duration {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::time::clock_getcpuclockid(pid)
            .and_then(nix::time::clock_gettime)
            .map(Duration::from)
            .unwrap_or_default()
    }

    /// How a peer that has ended did (its exit status, and a panic's message), or
    /// nothing while it runs.
    pub fn last_words(&mut self) -> String {
        if self.alive_after(Duration::from_millis(500)) {
            return String::new();
        }
        let mut err = String::new();
        if let Some(stderr) = self.child.stderr.as_mut() {
            let _ = std::io::Read::read_to_string(stderr, &mut err);
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => "ended".to_owned(),
        };
        match panic_message(&err) {
            said if said.is_empty() => status,
            said => format!("{status}: {said}"),
        }
    }

    /// Whether the peer is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether the peer is still running after waiting up to `patience` for it to end.
    pub fn alive_after(&mut self, patience: Duration) -> bool {
        let until = Instant::now() + patience;
        while self.alive() {
            if Instant::now() >= until {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// A panic's message in what a process wrote to stderr, without the backtrace.
fn panic_message(stderr: &str) -> String {
    let said: Vec<&str> = stderr
        .lines()
        .take_while(|l| !l.starts_with("stack backtrace") && !l.starts_with("note:"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    said.join(" ")
}

/// CPU time used by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Out of the registry before it is reaped, so that `abandon` never signals a pid
        // that could be reused; once abandoned, `abandon` does it all.
        match RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(running) => running.retain(|(pid, _)| *pid != self.child.id()),
            None => return,
        }
        // Peers end when their stdin closes (iceoryx2's then removes its files); one
        // that does not within a moment is killed.
        drop(self.child.stdin.take());
        self.alive_after(Duration::from_millis(500));
        let _ = self.child.kill();
        let _ = self.child.wait();
        destroy_endpoint(&self.address);
    }
}
