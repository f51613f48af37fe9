//! The async API against the blocking one: a 64-byte request/reply between two processes
//! over every transport with an async side, the blocking client and server beside the
//! async ones (each on a single-threaded tokio runtime, as an async program on one core
//! runs), in interleaved blocks. The ratio is what the async API costs.
//!
//! `cargo bench -p ipckit-bench --bench async_roundtrip [-- SCHEME…]`

use std::time::{Duration, Instant};

use ipckit_bench::peer::Peer;
use ipckit_bench::{pin_to, raw};

const ROUNDS: usize = 21;
const WARM_UP: u64 = 1000;
/// Blocks of at least this long, so that a server that sleeps when idle wakes once per
/// block at most.
const BLOCK: Duration = Duration::from_millis(20);
const PATIENCE: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The async echo server, the blocking `echo` peer's counterpart.
fn serve_async(role: &str, address: &str) -> bool {
    if role != "async-echo" {
        return false;
    }
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    runtime().block_on(async {
        let mut server = ipckit::tokio::listen(address).unwrap_or_else(|e| panic!("{e}"));
        println!("{}", server.endpoint());
        loop {
            let mut message = server.recv().await.unwrap_or_else(|e| panic!("{e}"));
            let payload = message.take_payload();
            if message.wants_reply() {
                let _ = message.reply(&payload);
            }
        }
    })
}

/// Times `n` round trips.
type Contender = Box<dyn FnMut(u64) -> Duration>;

fn blocking(url: &str) -> Contender {
    let client = ipckit::connect(url).unwrap_or_else(|e| panic!("{e}"));
    let payload = [7u8; raw::SIZE];
    Box::new(move |n| {
        let start = Instant::now();
        for _ in 0..n {
            client
                .request(&payload, PATIENCE)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        start.elapsed()
    })
}

fn asynchronous(url: &str) -> Contender {
    let runtime = runtime();
    let client = runtime
        .block_on(ipckit::tokio::connect(url))
        .unwrap_or_else(|e| panic!("{e}"));
    let payload = [7u8; raw::SIZE];
    Box::new(move |n| {
        runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                client
                    .request(&payload, PATIENCE)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            start.elapsed()
        })
    })
}

fn main() {
    if ipckit_bench::peer::run_if_peer(serve_async) {
        return;
    }
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    pin_to(0);
    let dir = std::env::temp_dir().join(format!("ipckit-bench-async-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("64-byte round trip, median of {ROUNDS} interleaved blocks of at least {BLOCK:?}");
    println!(
        "{:<9} {:>12} {:>12} {:>7}",
        "transport", "blocking", "async", "ratio"
    );
    for transport in ipckit::transport::all() {
        let scheme = transport.scheme();
        if !only.is_empty() && !only.iter().any(|o| o == scheme) {
            continue;
        }
        // A one-way broadcast (events) has no round trip.
        if !transport
            .capabilities(&transport.scratch_endpoint(&dir, "caps"))
            .duplex
        {
            continue;
        }
        let blocking_server = Peer::start(
            "echo",
            &transport.scratch_endpoint(&dir, "blocking").to_string(),
        )
        .unwrap();
        let async_endpoint = transport.scratch_endpoint(&dir, "async");
        let Ok(async_server) = Peer::start("async-echo", &async_endpoint.to_string()) else {
            println!("{scheme:<9} (no async side)");
            continue;
        };
        let mut contenders = [
            blocking(blocking_server.address()),
            asynchronous(async_server.address()),
        ];
        let fastest = contenders
            .iter_mut()
            .map(|c| c(WARM_UP) / WARM_UP as u32)
            .min()
            .expect("two contenders");
        let per_block = (BLOCK.as_nanos() / fastest.as_nanos().max(1)).max(100) as u64;
        let mut blocks = [Vec::new(), Vec::new()];
        for round in 0..ROUNDS {
            for turn in 0..2 {
                // Alternate who goes first, so neither always follows the other.
                let which = (round + turn) % 2;
                blocks[which].push(contenders[which](per_block) / per_block as u32);
            }
        }
        let [ours_blocking, ours_async] = blocks.map(|mut b| {
            b.sort();
            b[ROUNDS / 2]
        });
        println!(
            "{scheme:<9} {:>12.2?} {:>12.2?} {:>7.3}",
            ours_blocking,
            ours_async,
            ours_async.as_secs_f64() / ours_blocking.as_secs_f64()
        );
        drop(contenders);
        for endpoint in [transport.scratch_endpoint(&dir, "blocking"), async_endpoint] {
            let _ = transport.destroy(&endpoint);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
