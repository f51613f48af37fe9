//! mq senders under contention: N sender processes each send 1,000 one-way 64-byte
//! messages into one queue, read by one ipckit listener process, through ipckit's client
//! (blocking, and async on a single-threaded tokio runtime) and through plain blocking
//! `mq_send` (and `mq_timedsend` with a far deadline, as ipckit sends) into the same
//! listener. With the queue full most of the time, this measures
//! how senders wait for room: the wall time from the start signal until the listener has
//! every message, and the CPU time the senders spent, for N = 50 and N = 200.
//!
//! `ulimit -q unlimited; cargo bench -p ipckit-bench --bench mq_contention [-- N… --messages M --rounds R]`
//!
//! The senders start, open the queue, say they are ready and wait for one line on stdin,
//! so that starting 200 processes is not timed. The listener is the same process for
//! every variant of one N. The variants run in turn, R rounds (3 by default), each round
//! starting with the next variant, so that a machine busy with something else weighs on
//! all alike; the table gives each variant's median round, the ratio to `mq_send`'s.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use ipckit_bench::peer::{PEER_ENV, Peer};
use ipckit_bench::raw;

/// Long enough that no sender gives up, however unfairly it is treated: this measures
/// time, and a sender that failed would leave the listener short of its count.
const PATIENCE_MS: u64 = 3_600_000;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// `mq_send` on a blocking queue descriptor, as a program that knows only POSIX would.
    Raw,
    /// `mq_timedsend` with a deadline an hour away: the kernel's price for a deadline,
    /// which ipckit's send has.
    RawTimed,
    Ipckit,
    Async,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Raw,
        Variant::RawTimed,
        Variant::Ipckit,
        Variant::Async,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "mq_send",
            Variant::RawTimed => "mq_timedsend",
            Variant::Ipckit => "ipckit",
            Variant::Async => "ipckit-async",
        }
    }

    fn from_name(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// Plays this program's peer roles: `mq-listen:BATCH` and `mq-send:VARIANT:MESSAGES`.
/// Unlike the shared peers, these are not pinned: N senders and the listener share both
/// cores as any such program would.
fn run_if_peer() -> bool {
    let Ok(role) = std::env::var(PEER_ENV) else {
        return false;
    };
    let url = std::env::args().nth(1).expect("the peer's address");
    let mut parts = role.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("mq-listen"), Some(batch), None) => listen(&url, batch.parse().expect("a count")),
        (Some("mq-send"), Some(variant), Some(messages)) => send(
            &url,
            Variant::from_name(variant).expect("a variant"),
            messages.parse().expect("a count"),
        ),
        _ => panic!("unknown peer role {role}"),
    }
    true
}

/// Receives for ever, printing `done` after each `batch` messages; ends with its stdin.
fn listen(url: &str, batch: u64) {
    let mut server = ipckit::listen(url).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", server.endpoint());
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let mut received = 0;
    loop {
        let message = server.recv().unwrap_or_else(|e| panic!("{e}"));
        std::hint::black_box(message.payload());
        received += 1;
        if received == batch {
            println!("done");
            received = 0;
        }
    }
}

/// CPU time (user, system) of this process.
fn cpu() -> (Duration, Duration) {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let time =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    (time(usage.user_time()), time(usage.system_time()))
}

/// Opens the queue, says `ready`, waits for a line on stdin, then sends `messages` and
/// prints the CPU time that took, user and system, in microseconds.
fn send(url: &str, variant: Variant, messages: u64) {
    let start = std::cell::Cell::new((Duration::ZERO, Duration::ZERO));
    let payload = [7u8; raw::SIZE];
    let ready = || {
        println!("ready");
        let mut go = String::new();
        std::io::stdin()
            .read_line(&mut go)
            .expect("the start signal");
    };
    match variant {
        Variant::Raw | Variant::RawTimed => {
            let name = url
                .strip_prefix("mq://")
                .and_then(|n| n.split('?').next())
                .expect("an mq:// address");
            let queue = nix::mqueue::mq_open(
                format!("/{name}").as_str(),
                nix::mqueue::MQ_OFlag::O_WRONLY,
                nix::sys::stat::Mode::empty(),
                None,
            )
            .expect("opening the listener's queue");
            ready();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            let deadline = nix::sys::time::TimeSpec::from_duration(
                now.expect("a clock past 1970") + Duration::from_secs(3600),
            );
            for _ in 0..messages {
                if variant == Variant::Raw {
                    nix::mqueue::mq_send(&queue, &payload, 0).expect("mq_send");
                    continue;
                }
                use std::os::fd::{AsFd, AsRawFd};
                // SAFETY: the descriptor is open (`queue` lives), the message is a live
                // slice the kernel only reads, and the deadline a valid timespec.
                let sent = unsafe {
                    nix::libc::mq_timedsend(
                        queue.as_fd().as_raw_fd(),
                        payload.as_ptr().cast(),
                        payload.len(),
                        0,
                        deadline.as_ref(),
                    )
                };
                nix::errno::Errno::result(sent).expect("mq_timedsend");
            }
        }
        Variant::Ipckit => {
            let client = ipckit::connect(url).unwrap_or_else(|e| panic!("{e}"));
            ready();
            for _ in 0..messages {
                client.send(&payload).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        Variant::Async => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async {
                let client = ipckit::tokio::connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                ready();
                for _ in 0..messages {
                    client
                        .send(&payload)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                }
            });
        }
    }
    let (end, start) = (cpu(), start.get());
    println!(
        "cpu {} {}",
        (end.0 - start.0).as_micros(),
        (end.1 - start.1).as_micros()
    );
}

struct Round {
    wall: Duration,
    user: Duration,
    system: Duration,
}

/// Starts `senders` processes of `variant`, lets them go at once, and times them until
/// `listener` has received every message.
fn round(listener: &mut Peer, url: &str, variant: Variant, senders: usize, messages: u64) -> Round {
    let exe = std::env::current_exe().expect("this program");
    let mut children: Vec<(Child, ChildStdin)> = (0..senders)
        .map(|_| {
            let mut child = Command::new(&exe)
                .env(PEER_ENV, format!("mq-send:{}:{messages}", variant.name()))
                .arg(url)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting a sender");
            let stdin = child.stdin.take().expect("piped");
            (child, stdin)
        })
        .collect();
    for (child, _) in &mut children {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("a sender's ready line");
        assert_eq!(line.trim(), "ready", "a sender did not start");
    }
    let start = Instant::now();
    for (_, stdin) in &mut children {
        stdin.write_all(b"go\n").expect("starting a sender");
    }
    let (mut user, mut system) = (Duration::ZERO, Duration::ZERO);
    for (mut child, _) in children {
        let status = child.wait().expect("waiting for a sender");
        assert!(
            status.success(),
            "a {} sender failed: {status}",
            variant.name()
        );
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("a sender's CPU time");
        let mut micros = line
            .strip_prefix("cpu ")
            .unwrap_or_else(|| panic!("a sender said '{line}'"))
            .split_whitespace()
            .map(|n| Duration::from_micros(n.parse().expect("microseconds")));
        user += micros.next().expect("user time");
        system += micros.next().expect("system time");
    }
    // Every message is in the queue by now; the listener says when it has them all.
    assert_eq!(listener.line().expect("the listener's count"), "done");
    Round {
        wall: start.elapsed(),
        user,
        system,
    }
}

fn main() {
    if run_if_peer() {
        return;
    }
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut sizes = Vec::new();
    let mut messages = 1000u64;
    let mut rounds = 3usize;
    while let Some(arg) = args.next() {
        if arg == "--messages" {
            messages = args
                .next()
                .and_then(|m| m.parse().ok())
                .expect("--messages takes a count");
        } else if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|m| m.parse().ok())
                .filter(|&r| r > 0)
                .expect("--rounds takes a count of at least 1");
        } else {
            sizes.push(arg.parse::<usize>().expect("a number of senders"));
        }
    }
    if sizes.is_empty() {
        sizes = vec![50, 200];
    }
    let dir = std::env::temp_dir();
    let transport = ipckit::transport::find("mq").expect("the mq transport");
    println!(
        "{messages} one-way messages of {} bytes from each of N processes into one queue \
         (fs.mqueue.msg_max {}), read by one ipckit listener; {} CPUs; median of {rounds} rounds",
        raw::SIZE,
        std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max")
            .map_or("?".into(), |s| s.trim().to_owned()),
        ipckit_bench::online_cpus(),
    );
    println!(
        "{:>5} {:<13} {:>10} {:>12} {:>12} {:>7}",
        "N", "sender", "wall", "senders usr", "senders sys", "ratio"
    );
    for senders in sizes {
        let endpoint = transport.scratch_endpoint(&dir, "contention");
        let url = format!("{endpoint}?send_timeout_ms={PATIENCE_MS}");
        let role = format!("mq-listen:{}", senders as u64 * messages);
        let mut listener =
            Peer::start(&role, &endpoint.to_string()).unwrap_or_else(|e| panic!("{e}"));
        let mut measured: [Vec<Round>; Variant::ALL.len()] = Default::default();
        for first in (0..Variant::ALL.len()).cycle().take(rounds) {
            for turn in 0..Variant::ALL.len() {
                let which = (first + turn) % Variant::ALL.len();
                let variant = Variant::ALL[which];
                measured[which].push(round(&mut listener, &url, variant, senders, messages));
            }
        }
        let medians = measured.map(|mut rounds| {
            rounds.sort_by_key(|r| r.wall);
            rounds.swap_remove(rounds.len() / 2)
        });
        let baseline = medians[0].wall.as_secs_f64();
        for (variant, median) in Variant::ALL.into_iter().zip(&medians) {
            let wall = median.wall.as_secs_f64();
            println!(
                "{senders:>5} {:<13} {:>9.2}s {:>11.2}s {:>11.2}s {:>7.2}",
                variant.name(),
                wall,
                median.user.as_secs_f64(),
                median.system.as_secs_f64(),
                wall / baseline
            );
        }
        drop(listener);
        let _ = transport.destroy(&endpoint);
    }
}
