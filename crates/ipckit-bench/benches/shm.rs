//! The shm transport against its references, all in one run on this machine, client and
//! server in two processes on two cores:
//!
//! - 64-byte round trip: the hardware floor (a bare busy-spin ping-pong over two rings in
//!   shared memory, `ipckit_bench::raw_shm`), the same ping-pong with its messages framed
//!   as ipckit frames them (what the record format costs before any software), ipckit
//!   (`request` and `recv`; lent both ways, `request_with` and `recv_with`; lent to a
//!   server that stays in its loop, `request_with` and `serve_with`; and the same from a
//!   client held by one thread, `Client::exclusive`), and iceoryx2's publish/subscribe
//!   ping-pong; interleaved blocks, medians;
//! - the same round trip with pauses between requests, where the server has fallen
//!   asleep: what the spin-then-sleep policy costs a user who is not busy;
//! - one-way streaming of 64 KiB messages, written in place with a loan and read in place,
//!   against a single-threaded memcpy of the same data;
//! - the CPU an idle server with a connected client uses.
//!
//! `cargo bench -p ipckit-bench --bench shm`. The servers are this binary run again with
//! `IPCKIT_BENCH_PEER` set.

use std::time::{Duration, Instant};

use ipckit_bench::peer::Peer;
use ipckit_bench::raw_shm::Framing;
use ipckit_bench::{ipckit_round_trip, pin_to, raw_shm, time_iters};
const SIZE: usize = 64;
const STREAM_SIZE: usize = 64 * 1024;
const STREAM_BYTES: usize = 4 << 30;
/// The ring size of both streaming contenders: shm's default. (In a 4 MiB ring, larger
/// than a core's second-level cache, the writer's stores go further out: reading in place
/// then drops from about 80% of memcpy to about 65%, as memcpy into such a ring drops.)
const STREAM_RING: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

type Pingpong = [u8; SIZE];

/// A named round trip.
type Contender = (&'static str, Box<dyn FnMut()>);

/// An idle echo server naps instead of spinning, so that it does not take the core from
/// the contender measured in between.
struct Idle {
    since: Option<Instant>,
}

impl Idle {
    fn busy(&mut self) {
        self.since = None;
    }

    fn idle(&mut self) {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() > Duration::from_micros(200) {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::hint::spin_loop();
        }
    }
}

fn iceoryx_service(
    node: &iceoryx2::node::Node<iceoryx2::service::ipc::Service>,
    name: &str,
) -> iceoryx2::service::port_factory::publish_subscribe::PortFactory<
    iceoryx2::service::ipc::Service,
    Pingpong,
    (),
> {
    node.service_builder(&name.try_into().expect("a valid service name"))
        .publish_subscribe::<Pingpong>()
        .open_or_create()
        .expect("an iceoryx2 service")
}

/// Answers a lent request with its own payload, read and written in place.
fn echo_lent(message: &mut ipckit::MessageRef<'_>) {
    let echo: Pingpong = message.payload().try_into().unwrap_or([0; SIZE]);
    if message.wants_reply() {
        message.reply(&echo).expect("reply");
    }
}

/// The roles only this bench has; false for any other.
fn serve(kind: &str, address: &str) -> bool {
    if kind != "iceoryx2" {
        // Ends when the bench closes our stdin (iceoryx2's server does so itself, cleanly).
        std::thread::spawn(|| {
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            std::process::exit(0);
        });
    }
    match kind {
        "echo-in-place" => {
            let mut server = ipckit::listen(address).expect("listen");
            println!("{}", server.endpoint());
            loop {
                let mut message = server.recv().expect("recv");
                if message.wants_reply() {
                    // Read in place; the reply is written straight into the reply ring.
                    let echo: Pingpong = message.payload().try_into().unwrap_or([0; SIZE]);
                    message.reply(&echo).expect("reply");
                } else if message.payload().len() < SIZE {
                    // The end of a stream: the sum proves every byte was read.
                    println!("done");
                }
            }
        }
        "echo-served" => {
            let mut server = ipckit::listen(address).expect("listen");
            println!("{}", server.endpoint());
            // Lent as by recv_with, without leaving the wait loop between messages.
            server
                .serve_with(|message| {
                    echo_lent(message);
                    std::ops::ControlFlow::<()>::Continue(())
                })
                .expect("serve_with");
        }
        "echo-lent" => {
            let mut server = ipckit::listen(address).expect("listen");
            println!("{}", server.endpoint());
            loop {
                // Read in place and answered in place, with no Message built.
                server.recv_with(echo_lent).expect("recv");
            }
        }
        "raw-stream" => {
            let ring = raw_shm::Stream::open(address, STREAM_RING, STREAM_SIZE, true);
            println!("{address}");
            let mut sink = vec![0u8; STREAM_SIZE];
            ring.consume(&mut sink, (STREAM_BYTES / STREAM_SIZE) as u64);
            println!("done");
        }
        "ipckit-stream" | "ipckit-stream-in-place" => {
            let mut server = ipckit::listen(address).expect("listen");
            println!("{}", server.endpoint());
            let mut sink = vec![0u8; STREAM_SIZE];
            let copy_out = kind == "ipckit-stream";
            loop {
                let mut message = server.recv().expect("recv");
                let payload = message.payload();
                if copy_out {
                    // As an application keeping each message would.
                    sink[..payload.len()].copy_from_slice(payload);
                } else {
                    // Zero copy all the way: the message is looked at where it lies.
                    sink[0] = payload[0] ^ payload[payload.len() - 1];
                }
                std::hint::black_box(&sink);
                if message.wants_reply() {
                    message.reply(b"ok").expect("reply");
                }
            }
        }
        "iceoryx2" => {
            let node = iceoryx2::prelude::NodeBuilder::new()
                .create::<iceoryx2::service::ipc::Service>()
                .expect("an iceoryx2 node");
            let requests = iceoryx_service(&node, &format!("{address}/a2b"))
                .subscriber_builder()
                .create()
                .expect("subscriber");
            let replies = iceoryx_service(&node, &format!("{address}/b2a"))
                .publisher_builder()
                .create()
                .expect("publisher");
            println!("{address}");
            // Ends when the bench closes our stdin, so that iceoryx2 removes its files
            // (a killed iceoryx2 process leaves them in /dev/shm).
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopping = stop.clone();
            std::thread::spawn(move || {
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
                stopping.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let mut idle = Idle { since: None };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match requests.receive().expect("receive") {
                    Some(sample) => {
                        idle.busy();
                        let echo = *sample;
                        drop(sample);
                        let out = replies.loan_uninit().expect("loan");
                        out.write_payload(echo).send().expect("send");
                    }
                    None => idle.idle(),
                }
            }
        }
        _ => return false,
    }
    true
}

fn iceoryx_client(address: &str) -> Box<dyn FnMut()> {
    let node = iceoryx2::prelude::NodeBuilder::new()
        .create::<iceoryx2::service::ipc::Service>()
        .expect("an iceoryx2 node");
    let requests = iceoryx_service(&node, &format!("{address}/a2b"))
        .publisher_builder()
        .create()
        .expect("publisher");
    let replies = iceoryx_service(&node, &format!("{address}/b2a"))
        .subscriber_builder()
        .create()
        .expect("subscriber");
    let payload = [7u8; SIZE];
    Box::new(move || {
        let _keep = &node;
        requests
            .loan_uninit()
            .expect("loan")
            .write_payload(payload)
            .send()
            .expect("send");
        loop {
            if let Some(sample) = replies.receive().expect("receive") {
                std::hint::black_box(*sample);
                break;
            }
            std::hint::spin_loop();
        }
    })
}

/// A round trip with nothing handed over: the server lends each request to its handler
/// (`recv_with`), the client reads each reply in the ring (`request_with`).
fn lent_round_trip(url: &str) -> Box<dyn FnMut()> {
    let client = ipckit::connect(url).unwrap_or_else(|e| panic!("{e}"));
    let payload = [7u8; SIZE];
    Box::new(move || {
        client
            .request_with(&payload, TIMEOUT, |reply| std::hint::black_box(reply[0]))
            .unwrap_or_else(|e| panic!("{e}"));
    })
}

/// [`lent_round_trip`] from a client that the calling thread holds alone.
fn exclusive_round_trip(url: &str) -> Box<dyn FnMut()> {
    // The round trip outlives this function, and the handle borrows the client.
    let client = Box::leak(Box::new(
        ipckit::connect(url).unwrap_or_else(|e| panic!("{e}")),
    ));
    let mut requests = client.exclusive();
    let payload = [7u8; SIZE];
    Box::new(move || {
        requests
            .request_with(&payload, TIMEOUT, |reply| std::hint::black_box(reply[0]))
            .unwrap_or_else(|e| panic!("{e}"));
    })
}

/// 64-byte round trips: the contenders in interleaved blocks of at least 5 ms.
fn round_trips(tag: &str) {
    const ROUNDS: usize = 41;
    const BLOCK: Duration = Duration::from_millis(5);
    let raw = Peer::start("raw:shm", &format!("raw-shm-{tag}")).expect("the floor");
    let framed = Peer::start("raw:shm-records", &format!("raw-shm-records-{tag}"))
        .expect("the floor in ipckit's record format");
    let ours = Peer::start("echo-in-place", &format!("shm://bench-{tag}")).expect("ipckit");
    let lent = Peer::start("echo-lent", &format!("shm://bench-lent-{tag}")).expect("ipckit");
    let served = Peer::start("echo-served", &format!("shm://bench-served-{tag}")).expect("ipckit");
    let held = Peer::start("echo-served", &format!("shm://bench-held-{tag}")).expect("ipckit");
    let iceoryx = Peer::start("iceoryx2", &format!("ipckit-bench-{tag}")).expect("iceoryx2");
    let mut contenders: Vec<Contender> = vec![
        (
            "bare spin over two rings (the floor)",
            Box::new(
                raw_shm::Rings::open(raw.address(), false, Framing::Slots, raw_shm::SLOT).client(),
            ),
        ),
        (
            "bare spin, messages framed as ipckit's",
            Box::new(
                raw_shm::Rings::open(framed.address(), false, Framing::Records, raw_shm::SLOT)
                    .client(),
            ),
        ),
        ("ipckit shm", ipckit_round_trip(ours.address())),
        (
            "ipckit shm, lent both ways",
            lent_round_trip(lent.address()),
        ),
        (
            "ipckit shm, lent, served in a loop",
            lent_round_trip(served.address()),
        ),
        (
            "ipckit shm, lent, served, exclusive client",
            exclusive_round_trip(held.address()),
        ),
        (
            "iceoryx2 publish/subscribe",
            iceoryx_client(iceoryx.address()),
        ),
    ];
    // Only the server being measured may run: the others are stopped (SIGSTOP), so that
    // none of them takes the server core, however briefly, during another's block.
    let servers = [&raw, &framed, &ours, &lent, &served, &held, &iceoryx];
    let only = |which: usize| {
        for (i, server) in servers.iter().enumerate() {
            let signal = if i == which {
                nix::sys::signal::Signal::SIGCONT
            } else {
                nix::sys::signal::Signal::SIGSTOP
            };
            let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
            nix::sys::signal::kill(pid, signal).expect("signalling a server");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let per_round: Vec<u64> = contenders
        .iter_mut()
        .enumerate()
        .map(|(i, (_, c))| {
            only(i);
            let warm = time_iters(20_000, c.as_mut()) / 20_000;
            (BLOCK.as_nanos() / warm.as_nanos().max(1)).max(2000) as u64
        })
        .collect();
    let mut blocks = vec![Vec::new(); contenders.len()];
    for round in 0..ROUNDS {
        for turn in 0..contenders.len() {
            let which = (round + turn) % contenders.len();
            only(which);
            time_iters(1000, contenders[which].1.as_mut()); // back to speed
            let took = time_iters(per_round[which], contenders[which].1.as_mut());
            blocks[which].push(took / per_round[which] as u32);
        }
    }
    only(usize::MAX);
    for server in servers {
        let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    }
    let medians: Vec<Duration> = blocks
        .into_iter()
        .map(|mut b| {
            b.sort();
            b[ROUNDS / 2]
        })
        .collect();
    println!("\n64-byte round trip, median of {ROUNDS} interleaved blocks of at least {BLOCK:?}");
    for ((name, _), median) in contenders.iter().zip(&medians) {
        println!(
            "  {name:<44} {:>10.1?}  {:>5.2}x the floor",
            median,
            median.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
    for floor in [&raw, &framed] {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", floor.address()));
    }
}

/// Round trips with a pause before each: the server has gone to sleep.
fn paused(tag: &str) {
    let ours = Peer::start("echo-in-place", &format!("shm://paused-{tag}")).expect("ipckit");
    let client = ipckit::connect(ours.address()).expect("connect");
    println!("\n64-byte round trip after a pause (the server sleeps), median and p99 of 400");
    for pause in [
        Duration::from_micros(20),
        Duration::from_micros(200),
        Duration::from_millis(2),
    ] {
        let mut took: Vec<Duration> = (0..400)
            .map(|_| {
                // Busy-wait the pause, so that the client's own wake-up is not measured.
                let until = Instant::now() + pause;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                let start = Instant::now();
                client.request(&[7u8; SIZE], TIMEOUT).expect("request");
                start.elapsed()
            })
            .collect();
        took.sort();
        println!(
            "  pause {:>7.0?}: median {:>9.1?}  p99 {:>9.1?}",
            pause,
            took[took.len() / 2],
            took[took.len() * 99 / 100]
        );
    }
}

/// 64 KiB messages one way: written in place by the client, copied out by the server;
/// against a bare ring between two processes, and memcpy in one thread.
fn streaming(tag: &str) {
    let count = STREAM_BYTES / STREAM_SIZE;
    let source: Box<[u8; STREAM_SIZE]> = (0..STREAM_SIZE)
        .map(|i| i as u8)
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();
    let rate = |t: Duration| STREAM_BYTES as f64 / t.as_secs_f64() / 1e9;

    let mut raw = Peer::start("raw-stream", &format!("raw-stream-{tag}")).expect("raw stream");
    let ring = raw_shm::Stream::open(raw.address(), STREAM_RING, STREAM_SIZE, false);
    let start = Instant::now();
    ring.produce(&source[..], count as u64);
    raw.line().expect("the raw consumer's end");
    let bare = start.elapsed();
    let _ = std::fs::remove_file(format!("/dev/shm/{}", raw.address()));

    let stream_through = |kind: &str| {
        let server =
            Peer::start(kind, &format!("shm://{kind}-{tag}?ring={STREAM_RING}")).expect("ipckit");
        let client = ipckit::connect(server.address()).expect("connect");
        let start = Instant::now();
        for _ in 0..count {
            let mut loan = client.loan(STREAM_SIZE).expect("loan");
            loan.copy_from_slice(&source[..]);
            loan.send().expect("send");
        }
        client
            .request(b"end", TIMEOUT)
            .expect("the server took everything");
        start.elapsed()
    };
    let ours = stream_through("ipckit-stream");
    let in_place = stream_through("ipckit-stream-in-place");

    let mut sink = vec![0u8; STREAM_SIZE];
    let start = Instant::now();
    for _ in 0..count {
        sink.copy_from_slice(std::hint::black_box(&source[..]));
        std::hint::black_box(&sink);
    }
    let memcpy_hot = start.elapsed();
    let mut ring = vec![0u8; STREAM_RING];
    let slots = STREAM_RING / STREAM_SIZE;
    let start = Instant::now();
    for n in 0..count {
        let slot = &mut ring[(n % slots) * STREAM_SIZE..][..STREAM_SIZE];
        slot.copy_from_slice(std::hint::black_box(&source[..]));
        std::hint::black_box(slot);
    }
    let memcpy_ring = start.elapsed();
    println!(
        "\nstreaming {} GiB as 64 KiB messages, one way ({} MiB rings)",
        STREAM_BYTES >> 30,
        STREAM_RING >> 20
    );
    let line = |name: &str, t: Duration| {
        println!(
            "  {name:<55} {:>6.2} GB/s  {:>4.0}% of memcpy",
            rate(t),
            100.0 * memcpy_hot.as_secs_f64() / t.as_secs_f64()
        )
    };
    line(
        "memcpy in one thread, 64 KiB to the same 64 KiB",
        memcpy_hot,
    );
    line(
        &format!(
            "memcpy in one thread, 64 KiB into a {} MiB ring",
            STREAM_RING >> 20
        ),
        memcpy_ring,
    );
    line(
        "bare ring between two processes (memcpy in, memcpy out)",
        bare,
    );
    line("ipckit shm (loan and write in place, copy out)", ours);
    line(
        "ipckit shm (loan and write in place, read in place)",
        in_place,
    );
}

/// The CPU an idle server uses while a client stays connected.
fn idle(tag: &str) {
    let server = Peer::start("echo-in-place", &format!("shm://idle-{tag}")).expect("ipckit");
    let client = ipckit::connect(server.address()).expect("connect");
    client.request(b"hello", TIMEOUT).expect("request");
    let window = Duration::from_secs(5);
    let before = server.cpu_time();
    std::thread::sleep(window);
    let used = server.cpu_time() - before;
    println!(
        "\nidle server with a connected client: {:.2?} of CPU in {window:?} = {:.4}% of a core",
        used,
        100.0 * used.as_secs_f64() / window.as_secs_f64()
    );
}

fn main() {
    if ipckit_bench::peer::run_if_peer(serve) {
        return;
    }
    // `cargo bench` passes --bench; any other word picks parts.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    pin_to(0);
    let tag = std::process::id().to_string();
    println!(
        "shm on {} CPUs, client on CPU 0, servers on CPU 1",
        ipckit_bench::online_cpus()
    );
    if wants("roundtrip") {
        round_trips(&tag);
    }
    if wants("paused") {
        paused(&tag);
    }
    if wants("stream") {
        streaming(&tag);
    }
    if wants("idle") {
        idle(&tag);
    }
}
