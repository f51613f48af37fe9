//! Round trip of a 64-byte request/reply between two processes: ipckit over every
//! registered transport, each beside a hand-written loop over the same syscalls on the
//! same kind of kernel object (`ipckit_bench::raw`), so the ratio is the cost of the
//! abstraction.
//!
//! `cargo bench -p ipckit-bench --bench roundtrip` runs criterion on each variant in turn;
//! `… -- --interleaved [SCHEME…]` alternates the two variants of each transport in blocks
//! and compares medians, which cancels drift of the machine. Client and server are pinned
//! to different cores in every variant alike, so that each pays the same cross-core
//! wake-up.

use std::time::Duration;

use criterion::{Criterion, criterion_group};
use ipckit_bench::peer::Peer;
use ipckit_bench::{ipckit_round_trip, pin_to, raw, time_iters};

fn bench(c: &mut Criterion) {
    pin_to(0);
    let dir = std::env::temp_dir().join(format!("ipckit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut group = c.benchmark_group("roundtrip_64B");
    for transport in ipckit::transport::all().iter().filter(|t| duplex(**t)) {
        let scheme = transport.scheme();
        let raw_peer = Peer::start(&format!("raw:{scheme}"), &raw::address(scheme, &dir)).unwrap();
        let mut round_trip = raw::client(scheme, raw_peer.address(), raw::SIZE);
        group.bench_function(format!("{scheme}/baseline"), |b| {
            b.iter_custom(|iters| time_iters(iters, &mut round_trip))
        });
        drop(round_trip);
        drop(raw_peer);
        if scheme == "fifo" {
            // A pipe has no receive timeout: a request that can time out must poll before
            // it reads, as ipckit's does. This is that loop, for reference.
            let address = format!("{}-timed", raw::address(scheme, &dir));
            let raw_peer = Peer::start("raw:fifo", &address).unwrap();
            let mut round_trip = raw::fifo_client_with_poll(raw_peer.address());
            group.bench_function("fifo/baseline+poll", |b| {
                b.iter_custom(|iters| time_iters(iters, &mut round_trip))
            });
        }
        let endpoint = transport.scratch_endpoint(&dir, "ipckit");
        let server = Peer::start("echo", &endpoint.to_string()).unwrap();
        let mut round_trip = ipckit_round_trip(server.address());
        group.bench_function(format!("{scheme}/ipckit"), |b| {
            b.iter_custom(|iters| time_iters(iters, &mut round_trip))
        });
    }
    raw::remove_leftovers();
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
    for transport in ipckit::transport::all().iter().filter(|t| duplex(**t)) {
        let scheme = transport.scheme();
        if !only.is_empty() && !only.iter().any(|o| o == scheme) {
            continue;
        }
        let raw_peer = Peer::start(&format!("raw:{scheme}"), &raw::address(scheme, &dir)).unwrap();
        let endpoint = transport.scratch_endpoint(&dir, "ipckit");
        let server = Peer::start("echo", &endpoint.to_string()).unwrap();
        let mut contenders: Vec<Box<dyn FnMut()>> = vec![
            raw::client(scheme, raw_peer.address(), raw::SIZE),
            ipckit_round_trip(server.address()),
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
    }
    raw::remove_leftovers();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `transport` has round trips: a one-way broadcast (events) has none, and is
/// measured by `ipckit bench` instead.
fn duplex(transport: &dyn ipckit::transport::Transport) -> bool {
    let dir = std::env::temp_dir();
    transport
        .capabilities(&transport.scratch_endpoint(&dir, "caps"))
        .duplex
}

criterion_group!(benches, bench);

fn main() {
    if ipckit_bench::peer::run_if_peer(|_, _| false) {
        return;
    }
    if std::env::args().any(|a| a == "--interleaved") {
        interleaved();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
