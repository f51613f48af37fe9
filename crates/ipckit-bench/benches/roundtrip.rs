//! Round trip of a 64-byte request/reply between two processes: ipckit over every
//! registered transport, each beside a hand-written loop over the same syscalls on the
//! same kind of socket, so the ratio is the cost of the abstraction.
//!
//! `cargo bench -p ipckit-bench --bench roundtrip` runs criterion on each variant in turn;
//! `… -- --interleaved` alternates the two variants of each transport in blocks and
//! compares medians, which cancels drift of the machine. The echo servers are this binary run again
//! with `IPCKIT_BENCH_PEER` set. Client and server are pinned to different cores (when
//! there are two) in every variant alike, so that each pays the same cross-core wake-up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};

use ipckit_bench::{pin_to, raw_shm};

const PEER_ENV: &str = "IPCKIT_BENCH_PEER";
const SIZE: usize = 64;

/// Echo servers, run in the child process; each prints its address, then serves.
fn serve(kind: &str, address: &str) {
    pin_to(1);
    let mut buf = [0u8; SIZE];
    match kind {
        "ipckit" => {
            let mut server = ipckit::listen(address).expect("listen");
            println!("{}", server.endpoint());
            loop {
                let mut message = server.recv().expect("recv");
                let payload = message.take_payload();
                message.reply(&payload).expect("reply");
            }
        }
        "uds" => {
            let listener = UnixListener::bind(address).expect("bind");
            println!("{address}");
            let (mut stream, _) = listener.accept().expect("accept");
            while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
        }
        "tcp" => {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            println!("{}", listener.local_addr().unwrap());
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).unwrap();
            while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
        }
        "udp" => {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            println!("{}", socket.local_addr().unwrap());
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                socket.send_to(&buf[..n], from).unwrap();
            }
        }
        "unixgram" => {
            let socket = UnixDatagram::bind(address).expect("bind");
            println!("{address}");
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let to = from
                    .as_abstract_name()
                    .expect("clients bind abstract names");
                let to = SocketAddr::from_abstract_name(to).unwrap();
                socket.send_to_addr(&buf[..n], &to).unwrap();
            }
        }
        "mq" => {
            let (requests, replies) = raw_queues(address);
            println!("{address}");
            let mut priority = 0;
            while let Ok(n) = nix::mqueue::mq_receive(&requests, &mut buf, &mut priority) {
                nix::mqueue::mq_send(&replies, &buf[..n], 0).unwrap();
            }
        }
        "fifo" => {
            let (requests, replies) = raw_fifos(address);
            println!("{address}");
            let (mut requests, mut replies) = (
                std::fs::File::open(requests).unwrap(),
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(replies)
                    .unwrap(),
            );
            while requests.read_exact(&mut buf).is_ok() && replies.write_all(&buf).is_ok() {}
        }
        "shm" => {
            let rings = raw_shm::Rings::open(address, true);
            println!("{address}");
            rings.serve()
        }
        other => panic!("unknown peer {other}"),
    }
}

/// The two FIFOs of the hand-written ping-pong, made by whoever comes first.
fn raw_fifos(address: &str) -> (String, String) {
    let (requests, replies) = (format!("{address}.req"), format!("{address}.rep"));
    for path in [&requests, &replies] {
        let _ = rustix::fs::mkfifoat(
            rustix::fs::CWD,
            path.as_str(),
            rustix::fs::Mode::from_raw_mode(0o600),
        );
    }
    (requests, replies)
}

/// The two queues of the hand-written mq ping-pong: requests and replies.
fn raw_queues(address: &str) -> (nix::mqueue::MqdT, nix::mqueue::MqdT) {
    use nix::mqueue::{MQ_OFlag, MqAttr, mq_open};
    let name = address.rsplit('/').next().unwrap();
    let attr = MqAttr::new(0, 10, SIZE as _, 0);
    let open = |suffix: &str| {
        let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        mq_open(
            format!("/{name}.{suffix}").as_str(),
            flags,
            mode,
            Some(&attr),
        )
        .unwrap()
    };
    (open("req"), open("rep"))
}

struct Peer {
    child: Child,
    address: String,
}

impl Peer {
    fn start(kind: &str, address: &str) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(PEER_ENV, kind)
            .arg(address)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn echo server");
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        Peer {
            child,
            address: line.trim().to_owned(),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hand-written client of each baseline: one write or send, one read or recv.
fn raw_round_trip(kind: &str, address: &str) -> Box<dyn FnMut()> {
    let payload = [7u8; SIZE];
    let mut buf = [0u8; SIZE];
    match kind {
        "uds" => {
            let mut s = UnixStream::connect(address).unwrap();
            Box::new(move || {
                s.write_all(&payload).unwrap();
                s.read_exact(&mut buf).unwrap();
            })
        }
        "tcp" => {
            let mut s = TcpStream::connect(address).unwrap();
            s.set_nodelay(true).unwrap();
            Box::new(move || {
                s.write_all(&payload).unwrap();
                s.read_exact(&mut buf).unwrap();
            })
        }
        "udp" => {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(address).unwrap();
            Box::new(move || {
                s.send(&payload).unwrap();
                s.recv(&mut buf).unwrap();
            })
        }
        "unixgram" => {
            let name = format!("ipckit-bench-{}", std::process::id());
            let s =
                UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name).unwrap()).unwrap();
            s.connect(address).unwrap();
            Box::new(move || {
                s.send(&payload).unwrap();
                s.recv(&mut buf).unwrap();
            })
        }
        "mq" => {
            let (requests, replies) = raw_queues(address);
            Box::new(move || {
                nix::mqueue::mq_send(&requests, &payload, 0).unwrap();
                nix::mqueue::mq_receive(&replies, &mut buf, &mut 0).unwrap();
            })
        }
        "fifo" => {
            let (requests, replies) = raw_fifos(address);
            let mut requests = std::fs::OpenOptions::new()
                .write(true)
                .open(requests)
                .unwrap();
            let mut replies = std::fs::File::open(replies).unwrap();
            Box::new(move || {
                requests.write_all(&payload).unwrap();
                replies.read_exact(&mut buf).unwrap();
            })
        }
        "shm" => Box::new(raw_shm::Rings::open(address, false).client()),
        other => panic!("no baseline for {other}"),
    }
}

/// The hand-written FIFO client that can time out: write, poll with a timeout, read.
fn raw_fifo_timed(address: &str) -> Box<dyn FnMut()> {
    let (requests, replies) = raw_fifos(address);
    let mut requests = std::fs::OpenOptions::new()
        .write(true)
        .open(requests)
        .unwrap();
    let mut replies = std::fs::File::open(replies).unwrap();
    let payload = [7u8; SIZE];
    let mut buf = [0u8; SIZE];
    let timeout = rustix::time::Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    Box::new(move || {
        requests.write_all(&payload).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &replies,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
        replies.read_exact(&mut buf).unwrap();
    })
}

fn time_iters(iters: u64, round_trip: &mut dyn FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        round_trip();
    }
    start.elapsed()
}

/// Where the hand-written server of `scheme` listens: a queue name or a path in `dir`.
fn raw_address(scheme: &str, dir: &std::path::Path) -> String {
    match scheme {
        "mq" | "shm" => format!("raw-{scheme}-{}", std::process::id()),
        _ => dir.join(format!("raw-{scheme}")).display().to_string(),
    }
}

/// Removes the hand-written mq queues and shm segment, which outlive their processes.
fn remove_raw_leftovers() {
    for suffix in ["req", "rep"] {
        let name = format!("/raw-mq-{}.{suffix}", std::process::id());
        let _ = nix::mqueue::mq_unlink(name.as_str());
    }
    let _ = std::fs::remove_file(format!("/dev/shm/raw-shm-{}", std::process::id()));
}

fn bench(c: &mut Criterion) {
    pin_to(0);
    let dir = std::env::temp_dir().join(format!("ipckit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut group = c.benchmark_group("roundtrip_64B");
    for transport in ipckit::transport::all() {
        let scheme = transport.scheme();
        let raw_address = raw_address(scheme, &dir);
        let raw = Peer::start(scheme, &raw_address);
        let mut round_trip = raw_round_trip(scheme, &raw.address);
        group.bench_function(format!("{scheme}/baseline"), |b| {
            b.iter_custom(|iters| time_iters(iters, &mut round_trip))
        });
        drop(round_trip);
        drop(raw);
        if scheme == "fifo" {
            // A pipe has no receive timeout: a request that can time out must poll before
            // it reads, as ipckit's does. This is that loop, for reference.
            let raw = Peer::start(scheme, &format!("{raw_address}-timed"));
            let mut round_trip = raw_fifo_timed(&raw.address);
            group.bench_function("fifo/baseline+poll", |b| {
                b.iter_custom(|iters| time_iters(iters, &mut round_trip))
            });
        }

        let endpoint = transport.scratch_endpoint(&dir, "ipckit");
        let server = Peer::start("ipckit", &endpoint.to_string());
        let client = ipckit::connect(server.address.as_str()).unwrap();
        let payload = [7u8; SIZE];
        let mut round_trip = move || {
            client.request(&payload, Duration::from_secs(5)).unwrap();
        };
        group.bench_function(format!("{scheme}/ipckit"), |b| {
            b.iter_custom(|iters| time_iters(iters, &mut round_trip))
        });
        drop(round_trip);
        drop(server);
        let _ = transport.destroy(&endpoint);
    }
    remove_raw_leftovers();
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The comparison without drift: both servers run at once, and blocks of round trips
/// alternate between the hand-written loop and ipckit, so that a machine that slows down
/// or speeds up during the run weighs on both alike. Prints the median of the blocks.
fn interleaved() {
    const ROUNDS: usize = 41;
    const WARM_UP: u64 = 2000;
    // Blocks of at least 5 ms, so that a server that sleeps when idle wakes once per
    // block at most, a cost spread over the block.
    const BLOCK: Duration = Duration::from_millis(5);
    let only: Vec<String> = std::env::args()
        .skip_while(|a| a != "--interleaved")
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    pin_to(0);
    let dir = std::env::temp_dir().join(format!("ipckit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("64-byte round trip, median of {ROUNDS} interleaved blocks of at least {BLOCK:?}");
    println!(
        "{:<9} {:>12} {:>12} {:>7}",
        "transport", "hand-written", "ipckit", "ratio"
    );
    for transport in ipckit::transport::all() {
        let scheme = transport.scheme();
        if !only.is_empty() && !only.iter().any(|o| o == scheme) {
            continue;
        }
        let raw_address = raw_address(scheme, &dir);
        let raw = Peer::start(scheme, &raw_address);
        let endpoint = transport.scratch_endpoint(&dir, "ipckit");
        let server = Peer::start("ipckit", &endpoint.to_string());
        let client = ipckit::connect(server.address.as_str()).unwrap();
        let payload = [7u8; SIZE];
        let mut contenders: Vec<Box<dyn FnMut()>> = vec![
            raw_round_trip(scheme, &raw.address),
            Box::new(move || {
                client.request(&payload, Duration::from_secs(5)).unwrap();
            }),
        ];
        let mut blocks = [Vec::new(), Vec::new()];
        let fastest = contenders
            .iter_mut()
            .map(|c| time_iters(WARM_UP, c.as_mut()) / WARM_UP as u32)
            .min()
            .expect("two contenders");
        let per_round = (BLOCK.as_nanos() / fastest.as_nanos().max(1)).max(WARM_UP as u128) as u64;
        for round in 0..ROUNDS {
            for turn in 0..2 {
                // Alternate who goes first, so neither always follows the other.
                let which = (round + turn) % 2;
                let took = time_iters(per_round, contenders[which].as_mut());
                blocks[which].push(took / per_round as u32);
            }
        }
        let [hand, ours] = blocks.map(|mut b| {
            b.sort();
            b[ROUNDS / 2]
        });
        println!(
            "{scheme:<9} {:>12.2?} {:>12.2?} {:>7.3}",
            hand,
            ours,
            ours.as_secs_f64() / hand.as_secs_f64()
        );
        drop(contenders);
        drop(server);
        drop(raw);
        let _ = transport.destroy(&endpoint);
    }
    remove_raw_leftovers();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(kind) = std::env::var(PEER_ENV) {
        serve(&kind, &std::env::args().nth(1).unwrap_or_default());
        return;
    }
    if std::env::args().any(|a| a == "--interleaved") {
        interleaved();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
