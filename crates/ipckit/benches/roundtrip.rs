//! Round trip of a 64-byte request/reply between two processes: ipckit over `uds` and
//! `tcp`, each beside a hand-written blocking ping-pong over the same kind of socket, so
//! the ratio is the cost of the abstraction.
//!
//! `cargo bench -p ipckit --bench roundtrip`. The echo servers are this binary run again
//! with `IPCKIT_BENCH_PEER` set. Client and server are pinned to different cores (when
//! there are two) in every variant alike, so that each pays the same cross-core wake-up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};

const PEER_ENV: &str = "IPCKIT_BENCH_PEER";
const SIZE: usize = 64;

fn pin_to(cpu: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        return;
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu % cores);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// Echo servers, run in the child process.
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
        "raw-uds" => {
            let _ = std::fs::remove_file(address);
            let listener = UnixListener::bind(address).expect("bind");
            println!("{address}");
            let (mut stream, _) = listener.accept().expect("accept");
            while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
        }
        "raw-tcp" => {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            println!("{}", listener.local_addr().unwrap());
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).unwrap();
            while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
        }
        other => panic!("unknown peer {other}"),
    }
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

fn time_iters(iters: u64, mut round_trip: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        round_trip();
    }
    start.elapsed()
}

/// The hand-written side: write 64 bytes, read 64 back.
fn bench_baseline<S: Read + Write>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut stream: S,
) {
    let payload = [7u8; SIZE];
    let mut buf = [0u8; SIZE];
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            time_iters(iters, || {
                stream.write_all(&payload).unwrap();
                stream.read_exact(&mut buf).unwrap();
            })
        })
    });
}

fn bench(c: &mut Criterion) {
    pin_to(0);
    let dir = std::env::temp_dir().join(format!("ipckit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut group = c.benchmark_group("roundtrip_64B");

    let raw_socket = dir.join("raw.sock").display().to_string();
    let raw = Peer::start("raw-uds", &raw_socket);
    bench_baseline(
        &mut group,
        "uds/baseline",
        UnixStream::connect(&raw.address).unwrap(),
    );
    drop(raw);
    let raw = Peer::start("raw-tcp", "");
    let stream = TcpStream::connect(&raw.address).unwrap();
    stream.set_nodelay(true).unwrap();
    bench_baseline(&mut group, "tcp/baseline", stream);
    drop(raw);

    let uds = format!("uds://{}", dir.join("ipckit.sock").display());
    for (scheme, url) in [("uds", uds.as_str()), ("tcp", "tcp://127.0.0.1:0")] {
        let server = Peer::start("ipckit", url);
        let client = ipckit::connect(server.address.as_str()).unwrap();
        let payload = [7u8; SIZE];
        group.bench_function(format!("{scheme}/ipckit"), |b| {
            b.iter_custom(|iters| {
                time_iters(iters, || {
                    client.request(&payload, Duration::from_secs(5)).unwrap();
                })
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(kind) = std::env::var(PEER_ENV) {
        serve(&kind, &std::env::args().nth(1).unwrap_or_default());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
