//! What ipckit's benchmarks share: hand-written baselines over the raw mechanisms, and
//! the placement of processes on CPUs. Nothing in the library depends on this crate.

pub mod chart;
pub mod contract;
pub mod events;
pub mod harness;
mod iceoryx;
pub mod peer;
mod push;
pub mod raw;
pub mod raw_events;
pub mod raw_shm;
pub mod raw_spool;
mod report;
pub mod spool;

/// Set in a peer's environment to the CPUs its run may use, as `0,1`: the peer's own
/// affinity is the one its parent pinned itself to, a single CPU.
pub const CPUS_ENV: &str = "IPCKIT_BENCH_CPUS";

/// The CPUs this process may use as it started (its affinity, which `taskset` sets), or,
/// in a peer, its run's; read once, before any pinning narrows it.
fn inherited_cpus() -> &'static [usize] {
    static INHERITED: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    INHERITED.get_or_init(|| {
        if let Some(list) = std::env::var(CPUS_ENV)
            .ok()
            .and_then(|l| parse_cpus(&l).ok())
        {
            return list;
        }
        let cpus: Vec<usize> = rustix::thread::sched_getaffinity(None)
            .map(|set| {
                (0..rustix::thread::CpuSet::MAX_CPU)
                    .filter(|&c| set.is_set(c))
                    .collect()
            })
            .unwrap_or_default();
        if cpus.is_empty() { vec![0] } else { cpus }
    })
}

/// The CPUs chosen with [`choose_cpus`], if any.
static CHOSEN: std::sync::Mutex<Option<Vec<usize>>> = std::sync::Mutex::new(None);

/// A CPU list as `taskset -c` writes it: `0,2,4-7`.
///
/// ```
/// assert_eq!(ipckit_bench::parse_cpus("0,2,4-6").unwrap(), [0, 2, 4, 5, 6]);
/// assert!(ipckit_bench::parse_cpus("one").is_err());
/// ```
pub fn parse_cpus(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |n: &str| {
            n.trim().parse::<usize>().map_err(|_| {
                format!("'{part}' is not a CPU number or range; write CPUs as taskset -c does, e.g. 0,1 or 2-3")
            })
        };
        match part.split_once('-') {
            Some((from, to)) => cpus.extend(number(from)?..=number(to)?),
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err("no CPUs given; write them as taskset -c does, e.g. 0,1".into());
    }
    Ok(cpus)
}

/// Restricts the run to `cpus` (`--cpus`), which must be among those this process may
/// use; empty leaves it the whole of them. The client takes the first, its servers the
/// second (or the first too, if there is one).
///
/// ```
/// let mine = ipckit_bench::allowed_cpus();
/// ipckit_bench::choose_cpus(&mine[..1]).unwrap();
/// assert_eq!(ipckit_bench::allowed_cpus(), &mine[..1]);
/// assert!(ipckit_bench::choose_cpus(&[100_000]).is_err());
/// ```
pub fn choose_cpus(cpus: &[usize]) -> Result<(), String> {
    let inherited = inherited_cpus();
    if let Some(outside) = cpus.iter().find(|c| !inherited.contains(c)) {
        return Err(format!(
            "--cpus: CPU {outside} is not one this process may use ({}); choose among those",
            cpu_list(inherited)
        ));
    }
    *CHOSEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        (!cpus.is_empty()).then(|| cpus.to_vec());
    Ok(())
}

/// The CPUs a run places its processes on: those chosen with [`choose_cpus`], or those
/// this process was allowed as it started.
///
/// ```
/// assert!(!ipckit_bench::allowed_cpus().is_empty());
/// ```
pub fn allowed_cpus() -> Vec<usize> {
    CHOSEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| inherited_cpus().to_vec())
}

/// Pins this thread (and the processes and threads it starts) to the `index`-th of the
/// [`allowed_cpus`], modulo their number, so that a client (0) and its server (1) run on
/// different cores in every variant alike, when two are allowed. An explicit choice, by
/// `taskset` or [`choose_cpus`], is kept: the CPU is always one of it.
///
/// ```
/// ipckit_bench::pin_to(0);
/// ```
pub fn pin_to(index: usize) {
    let cpus = allowed_cpus();
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpus[index % cpus.len()]);
    rustix::thread::sched_setaffinity(None, &set).expect("pinning to a CPU");
}

/// Where a run's processes go, in words: "client on CPU 0, servers on CPU 1, of 0-3".
///
/// ```
/// assert!(ipckit_bench::placement().contains("CPU"));
/// ```
pub fn placement() -> String {
    let cpus = allowed_cpus();
    let (client, server) = (cpus[0], cpus[1 % cpus.len()]);
    let of = if CHOSEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_some()
    {
        format!("of {} (--cpus)", cpu_list(&cpus))
    } else if cpus.len() < online_cpus() {
        format!("of {} (this process's affinity)", cpu_list(&cpus))
    } else {
        format!("of {}", cpu_list(&cpus))
    };
    if client == server {
        format!("client and servers on CPU {client}, {of}")
    } else {
        format!("client on CPU {client}, servers on CPU {server}, {of}")
    }
}

/// CPUs as `taskset -c` lists them: `0-3,6`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &c in cpus {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == c => *end = c,
            _ => runs.push((c, c)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
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
