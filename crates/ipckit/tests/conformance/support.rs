//! What every check is made of: [`Check`] and the predicates that say where one
//! applies, its surroundings ([`Ctx`]), the peer processes it starts ([`Child`]), and the
//! payloads and answers the checks and the peers agree on.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipckit::Endpoint;
use ipckit::endpoint::{Address, UnixAddr};
use ipckit::transport::{Capabilities, Transport};
use libtest_mimic::Failed;

use crate::api;
use crate::peer::Role;

/// Set in a peer's environment: the test binary, run again, plays a [`Role`].
pub const PEER_ENV: &str = "IPCKIT_CONFORMANCE_PEER";
/// Upper bound on any single wait; a check that needs it has failed.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub type Outcome = Result<(), Failed>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}
pub(crate) use ensure;

pub struct Check {
    pub name: &'static str,
    pub applies: fn(&dyn Transport, &Capabilities) -> bool,
    pub run: fn(&Ctx) -> Outcome,
}

pub fn always(_: &dyn Transport, _: &Capabilities) -> bool {
    true
}
pub fn duplex(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.duplex
}
/// Duplex transports whose server tells a request from a one-way message, and so can
/// refuse one it drops unanswered: all but datagrams, where both come from a bound socket
/// and only the application knows which it was.
pub fn refuses_unanswered(t: &dyn Transport, caps: &Capabilities) -> bool {
    let ep = t.scratch_endpoint(&std::env::temp_dir(), "probe");
    caps.duplex && !matches!(ep.address(), Address::Udp(_) | Address::Unixgram(_))
}
/// Duplex transports that refuse what is left unanswered and whose messages do not
/// outlive their server.
pub fn refuses_transient(t: &dyn Transport, caps: &Capabilities) -> bool {
    refuses_unanswered(t, caps) && !caps.durable
}
pub fn reliable_ordered(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.reliable && caps.ordered
}
pub fn reliable(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.reliable
}
pub fn credentials(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.peer_credentials
}
/// Byte-stream endpoints, which a raw socket can feed with arbitrary bytes.
pub fn byte_stream(t: &dyn Transport, _: &Capabilities) -> bool {
    let ep = t.scratch_endpoint(&std::env::temp_dir(), "probe");
    matches!(ep.address(), Address::Uds(_) | Address::Tcp(_))
}

/// Endpoints a plain program writes to by opening a file (`echo hi > PATH`): FIFOs.
pub fn opened_as_file(t: &dyn Transport, _: &Capabilities) -> bool {
    let ep = t.scratch_endpoint(&std::env::temp_dir(), "probe");
    matches!(ep.address(), Address::Fifo(_))
}

/// Transports whose large messages go out in several writes that a future can be
/// dropped between, and are finished after it: byte streams and shared-memory rings.
pub fn in_pieces(t: &dyn Transport, caps: &Capabilities) -> bool {
    byte_stream(t, caps) || caps.zero_copy
}

pub fn zero_copy(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.zero_copy
}
pub fn transient(_: &dyn Transport, caps: &Capabilities) -> bool {
    !caps.durable
}
/// Endpoints with one receiver, their server: a second server on a live one is refused,
/// and a client finds nothing where no server is. A broadcast endpoint has any number of
/// listeners and writers and no server to be missing; where receivers compete (share
/// the work), a second server on a live endpoint is welcome.
pub fn one_receiver(_: &dyn Transport, caps: &Capabilities) -> bool {
    !caps.broadcast && !caps.competing_receivers
}
/// Endpoints that several servers may receive from at once, each message reaching one.
pub fn competing(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.competing_receivers
}
/// [`transient`] endpoints with [`one_receiver`].
pub fn transient_one_receiver(t: &dyn Transport, caps: &Capabilities) -> bool {
    transient(t, caps) && one_receiver(t, caps)
}
pub fn reliable_transient(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.reliable && !caps.durable
}
pub fn durable(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.durable
}
/// Durable endpoints whose queue holds a known number of messages, after which a send
/// waits and then fails with `Full` (not only a full filesystem).
pub fn bounded_queue(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.durable && caps.queue_limit.is_some()
}

/// Spool directories (`spool:///dir`), which any program writes into with plain files.
pub fn spool_dir(t: &dyn Transport, _: &Capabilities) -> bool {
    let ep = t.scratch_endpoint(&std::env::temp_dir(), "probe");
    matches!(ep.address(), Address::Spool(_))
}

/// Endpoints that live in the filesystem.
pub fn has_path(t: &dyn Transport, _: &Capabilities) -> bool {
    path_of(&t.scratch_endpoint(&std::env::temp_dir(), "probe")).is_some()
}

/// A `Role::Print` server at `ctx`'s endpoint `name`, with a client whose first message
/// it printed: a live pair, for checks of what happens when the server goes.
pub fn heard_by_a_printer(ctx: &Ctx, name: &str) -> Result<(Child, api::Client, Endpoint), Failed> {
    let mut server = Child::spawn(Role::Print, ctx.endpoint(name));
    let url = server.ready()?;
    let client = api::connect(&url)?;
    client.send(b"alive")?;
    let heard = server.line()?;
    if heard != "msg alive" {
        return Err(format!("the server did not hear the client: it said {heard:?}").into());
    }
    Ok((server, client, url))
}

pub fn path_of(endpoint: &Endpoint) -> Option<PathBuf> {
    match endpoint.address() {
        Address::Uds(UnixAddr::Path(p)) | Address::Unixgram(UnixAddr::Path(p)) => Some(p.clone()),
        Address::Fifo(p) | Address::Spool(p) => Some(p.clone()),
        // Where glibc's shm_open, and ipckit, put the segment of `shm://NAME`.
        Address::Shm(name) => Some(PathBuf::from(format!("/dev/shm/ipckit.{name}"))),
        _ => None,
    }
}

/// The checks, each as `applies_when => check_function`; a check's name is the function's,
/// after `module::` where the list begins with `in module:` (`bad_input::random_bytes`).
macro_rules! checks {
    (in $module:ident: $($applies:ident => $run:ident),* $(,)?) => {
        &[$($crate::support::Check {
            name: concat!(stringify!($module), "::", stringify!($run)),
            applies: $applies,
            run: $run,
        }),*]
    };
    ($($applies:ident => $run:ident),* $(,)?) => {
        &[$($crate::support::Check { name: stringify!($run), applies: $applies, run: $run }),*]
    };
}
pub(crate) use checks;

// ---------------------------------------------------------------------------------------
// The check's surroundings
// ---------------------------------------------------------------------------------------

/// One check's surroundings: the transport, a private directory, and the endpoints it
/// made, destroyed at the end where the transport keeps them (durable queues).
pub struct Ctx {
    pub transport: &'static dyn Transport,
    pub dir: PathBuf,
    made: std::cell::RefCell<Vec<Endpoint>>,
}

impl Ctx {
    /// `trial` is the trial's name, `scheme::check`.
    pub fn new(transport: &'static dyn Transport, trial: &str) -> Ctx {
        // Short, as a socket's path must fit in 107 bytes with the trial's name in it.
        let dir = scratch_root().join(format!(
            "ipc-{}-{}",
            std::process::id(),
            trial.replace("::", "-")
        ));
        std::fs::create_dir_all(&dir).expect("creating the check's directory");
        Ctx {
            transport,
            dir,
            made: Default::default(),
        }
    }

    /// A fresh endpoint for this check.
    pub fn endpoint(&self, name: &str) -> Endpoint {
        let endpoint = self.transport.scratch_endpoint(&self.dir, name);
        self.made.borrow_mut().push(endpoint.clone());
        endpoint
    }

    pub fn endpoint_with(&self, name: &str, key: &str, value: &str) -> Endpoint {
        let mut ep = self.endpoint(name);
        ep.set_option(key, value).expect("valid option");
        ep
    }
}

/// Where the checks' directories go: /dev/shm, a tmpfs, where there is one. The suite
/// checks behaviour, not a disk's speed, and on a journaled filesystem the metadata of a
/// spool's messages (a file made, renamed and removed for each) made its checks three
/// times slower. The disk's figures are the benchmark's (`ipckit bench`).
fn scratch_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let probe = shm.join(format!("ipckit-conf-probe-{}", std::process::id()));
        match std::fs::create_dir(&probe).and_then(|()| std::fs::remove_dir(&probe)) {
            Ok(()) => shm,
            Err(_) => std::env::temp_dir(),
        }
    })
    .clone()
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for endpoint in self.made.borrow().iter() {
            // An async server may let go of its endpoint a moment after it is dropped,
            // and a queue is not removed from under its receiver.
            for _ in 0..100 {
                match self.transport.destroy(endpoint) {
                    Err(ipckit::Error::AddrInUse { .. }) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Peer processes, as the check sees them (what they do: `peer::Role`)
// ---------------------------------------------------------------------------------------

/// A peer process, killed when dropped.
pub struct Child {
    process: std::process::Child,
    pub lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdin: Option<std::process::ChildStdin>,
}

impl Child {
    /// Starts a peer process that plays `role` on the endpoint `url`.
    pub fn spawn(role: Role, url: impl std::fmt::Display) -> Child {
        let mut process = Command::new(std::env::current_exe().expect("own path"))
            .env(PEER_ENV, "1")
            .env(api::API_ENV, api::current().name())
            .env("RUST_LOG", "info")
            .args(role.to_args(&url.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a peer");
        let (tx, lines) = mpsc::channel();
        let stdout = process.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = process.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = process.stdin.take();
        Child {
            process,
            lines,
            stderr,
            stdin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The next line the peer prints.
    pub fn line(&mut self) -> Result<String, Failed> {
        self.lines.recv_timeout(PATIENCE).map_err(|_| {
            format!(
                "peer {} printed nothing within {PATIENCE:?}; its stderr:\n{}",
                self.pid(),
                self.stderr()
            )
            .into()
        })
    }

    /// The next line the peer prints, serving `server` meanwhile so that the peer can
    /// connect; a message arriving meanwhile is an error.
    pub fn line_serving(&mut self, server: &mut api::Server) -> Result<String, Failed> {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.lines.try_recv() {
                return Ok(line);
            }
            if let Some(message) = server.recv_timeout(Duration::from_millis(5))? {
                return Err(
                    format!("unexpected message of {} bytes", message.payload().len()).into(),
                );
            }
        }
        Err(format!("peer {} printed nothing within {PATIENCE:?}", self.pid()).into())
    }

    /// Waits for a `ready URL` line and returns the URL.
    pub fn ready(&mut self) -> Result<Endpoint, Failed> {
        let line = self.line()?;
        let url = line.strip_prefix("ready ").ok_or_else(|| {
            format!(
                "peer said '{line}' instead of ready; stderr:\n{}",
                self.stderr()
            )
        })?;
        Ok(url.parse().expect("the peer prints valid URLs"))
    }

    /// Writes a line to the peer's stdin.
    pub fn say(&mut self, line: &str) -> Outcome {
        let stdin = self.stdin.as_mut().ok_or("the peer's stdin is closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the peer's log mentions `text`: what a server logs about one
    /// connection is not ordered with what it does for the others.
    pub fn logged(&self, text: &str) -> Outcome {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !self.stderr().contains(text) {
            ensure!(
                std::time::Instant::now() < deadline,
                "the peer's log does not give the reason '{text}':\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Closes the peer's stdin (servers stop then) and waits for a clean exit.
    pub fn finish(mut self) -> Result<String, Failed> {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.try_wait().expect("waiting for a peer") {
                // Give the stderr reader a moment to drain the pipe.
                std::thread::sleep(Duration::from_millis(50));
                let stderr = self.stderr();
                ensure!(
                    status.success(),
                    "peer exited with {status}; its stderr:\n{stderr}"
                );
                return Ok(stderr);
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "peer did not exit within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// As [`Child::finish`], then every line the peer printed that was not read yet.
    pub fn finish_reading(mut self) -> Result<Vec<String>, Failed> {
        let lines = std::mem::replace(&mut self.lines, mpsc::channel().1);
        self.finish()?;
        // The reader thread ends, and the channel with it, at the end of the pipe.
        Ok(lines.iter().collect())
    }

    /// Waits until every thread of the peer sleeps, or the peer has exited: until what
    /// woke it has run its course. (Read from /proc; a thread that sleeps is in state S.)
    pub fn settled(&self) -> Outcome {
        let tasks = format!("/proc/{}/task", self.pid());
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let states: Vec<char> = std::fs::read_dir(&tasks)
                .map(|tasks| {
                    tasks
                        .flatten()
                        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
                        // The state follows the command name, which is in parentheses.
                        .filter_map(|stat| stat.rsplit_once(") ")?.1.chars().next())
                        .collect()
                })
                .unwrap_or_default();
            if states.iter().all(|&state| matches!(state, 'S' | 'Z' | 'X')) {
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "peer {} did not settle within {PATIENCE:?}: its threads are {states:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------
// What the checks and the peers agree on
// ---------------------------------------------------------------------------------------

/// A payload that says who sent it, in which order and how long it is, padded to `size`
/// (at least 12 bytes) with bytes that depend on all three. Built from a 4 KiB block, so
/// that gigabytes of it are made and checked at memcpy speed.
pub fn numbered(client: u32, seq: u32, size: usize) -> Vec<u8> {
    let size = size.max(12);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&client.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(size as u32).to_le_bytes());
    let salt = client
        .wrapping_mul(7)
        .wrapping_add(seq)
        .wrapping_add(size as u32);
    // Only as much of the block as the message takes: the 64-subscriber check checks
    // 640,000 messages of 12 to 61 bytes, in a debug build.
    let block: Vec<u8> = (0..(size as u32).min(4096))
        .map(|i| i.wrapping_mul(31).wrapping_add(salt) as u8)
        .collect();
    while out.len() < size {
        let take = (size - out.len()).min(block.len());
        out.extend_from_slice(&block[..take]);
    }
    out
}

pub fn parse_numbered(payload: &[u8]) -> Result<(u32, u32), Failed> {
    ensure!(
        payload.len() >= 12,
        "a message of {} bytes is not numbered",
        payload.len()
    );
    let client = u32::from_le_bytes(payload[..4].try_into().unwrap());
    let seq = u32::from_le_bytes(payload[4..8].try_into().unwrap());
    ensure!(
        payload == numbered(client, seq, payload.len()).as_slice(),
        "message {client}/{seq} of {} bytes arrived corrupted",
        payload.len()
    );
    Ok((client, seq))
}

/// Sizes that cross buffer and frame boundaries: tiny, odd, around 32/64 KiB, large.
pub fn size_for(seq: u32) -> usize {
    const SIZES: [usize; 8] = [12, 13, 64, 1000, 32 * 1024 + 1, 65 * 1024, 12, 200_000];
    SIZES[seq as usize % SIZES.len()]
}

/// The next message's number, read where the transport lends it (`Server::recv_with`).
pub fn recv_lent(server: &mut api::Server) -> Result<(u32, u32), Failed> {
    let mut numbered = None;
    let came = server.answer_lent(PATIENCE, |payload, _| {
        numbered = Some(parse_numbered(payload));
        None
    })?;
    ensure!(came, "no message arrived within {PATIENCE:?}");
    numbered.expect("read by the handler")
}

/// How the checks' servers answer a request: its bytes backwards.
pub fn reversed(payload: &[u8]) -> Vec<u8> {
    payload.iter().rev().copied().collect()
}

/// Whether `reply` answers `request` as the checks' servers do.
pub fn expect_reversed(request: &[u8], reply: &[u8]) -> Result<(), String> {
    if reply == reversed(request) {
        return Ok(());
    }
    Err(format!(
        "request {:?} got reply {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(reply)
    ))
}

pub fn recv(server: &mut api::Server) -> Result<ipckit::Message, Failed> {
    server
        .recv_timeout(PATIENCE)?
        .ok_or_else(|| format!("no message arrived within {PATIENCE:?}").into())
}
