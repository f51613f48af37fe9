//! What ipckit's benchmarks share: hand-written baselines over the raw mechanisms, and
//! the placement of processes on CPUs. Nothing in the library depends on this crate.

pub mod chart;
pub mod harness;
pub mod peer;
pub mod raw;
pub mod raw_shm;

/// Pins this process to `cpu` (modulo the CPUs online), so that a client and its server
/// run on different cores in every variant alike. The count comes from the system, not
/// from `available_parallelism`, which reads the affinity a child inherits from its
/// already-pinned parent and would see a single CPU.
///
/// ```
/// ipckit_bench::pin_to(0);
/// ```
pub fn pin_to(cpu: usize) {
    let cores = online_cpus();
    if cores < 2 {
        return;
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu % cores);
    rustix::thread::sched_setaffinity(None, &set).expect("pinning to a CPU");
}

/// The number of CPUs the system has online.
pub fn online_cpus() -> usize {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    online
        .trim()
        .rsplit(['-', ','])
        .next()
        .and_then(|last| last.parse::<usize>().ok())
        .map_or(1, |last| last + 1)
}

/// How long `iters` calls of `round_trip` take, back to back.
///
/// ```
/// let took = ipckit_bench::time_iters(3, &mut || {});
/// assert!(took < std::time::Duration::from_secs(1));
/// ```
pub fn time_iters(iters: u64, round_trip: &mut dyn FnMut()) -> std::time::Duration {
    let start = std::time::Instant::now();
    for _ in 0..iters {
        round_trip();
    }
    start.elapsed()
}

/// A 64-byte request to the ipckit echo server at `url`, as a closure that panics on
/// failure: for benchmarks, where a failed round trip is a broken run.
///
/// ```no_run
/// let mut round_trip = ipckit_bench::ipckit_round_trip("uds:///tmp/echo.sock");
/// round_trip();
/// ```
pub fn ipckit_round_trip(url: &str) -> Box<dyn FnMut()> {
    let client = ipckit::connect(url).unwrap_or_else(|e| panic!("{e}"));
    let payload = [7u8; raw::SIZE];
    Box::new(move || {
        client
            .request(&payload, std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
    })
}
