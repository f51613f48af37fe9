//! The events table of `ipckit bench`: a broadcast that listeners join (a transport that
//! broadcasts and does not push, such as events), one writer here and 1, 4 and 16
//! listener processes, 64-byte events: what each listener receives per second and what
//! each event costs the writer, beside a bare broadcast ring ([`raw_events`]) and iceoryx2
//! publish/subscribe with as many subscribers, in the same run. Then what `send` costs
//! when nobody would receive the event, and how long an event takes to reach the last of
//! 16 listeners, busy and after a pause.
//!
//! The writer runs on the run's first CPU, every listener on its second (see
//! [`pin_to`]): 16 listeners share one core, as they would share a few on
//! a busy machine, and alike for every contender.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Failure, Options, broke, check, unavailable};
use crate::peer::{Peer, thread_cpu_time};
use crate::{pin_to, raw_events};

/// Bytes in each event.
pub const SIZE: usize = 64;

/// An event as every contender carries it: its number, then the writer's clock when it
/// was sent (for latency), then filler.
pub(crate) type Sample = [u8; SIZE];

/// The number of the last event: the writer is done.
const END: u64 = u64::MAX;

/// Listener counts of the table.
pub const LISTENERS: [usize; 3] = [1, 4, 16];

/// Listeners of the fan-out latency: the time is the last one's.
pub const FAN_OUT: usize = 16;

/// The contenders of each listener count.
const VARIANTS: [&str; 3] = ["ipckit", "baseline", "iceoryx2"];

/// Steps `run_events` reports to its progress callback for each transport it measures.
pub const STEPS: usize = LISTENERS.len() * VARIANTS.len() + 2 + 3;

/// Time between events of the busy fan-out: shorter than a listener's spin before it
/// sleeps, so that each event finds the listeners awake.
const BUSY_GAP: Duration = Duration::from_micros(10);
/// Time between events of the paused fan-out: long enough for every listener to sleep.
const PAUSED_GAP: Duration = Duration::from_millis(1);

/// How long a listener may take to say what it received before the run calls it broken.
const PATIENCE: Duration = Duration::from_secs(30);

/// Whether `transport` broadcasts to listeners that join it (rather than a server's
/// push to its clients): the transports of the events table.
///
/// ```
/// let uds = ipckit::transport::find("uds").unwrap();
/// let endpoint = uds.scratch_endpoint(&std::env::temp_dir(), "doc");
/// assert!(!ipckit_bench::events::listened(uds, &endpoint));
/// ```
pub fn listened(transport: &dyn ipckit::transport::Transport, endpoint: &ipckit::Endpoint) -> bool {
    let caps = transport.capabilities(endpoint);
    caps.broadcast && !caps.push && !caps.duplex
}

/// One writer and some listeners, for one contender. Serialised as is by
/// `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EventsPoint {
    /// The scheme.
    pub transport: String,
    /// `"ipckit"`, `"baseline"` (the bare ring) or `"iceoryx2"` (publish/subscribe).
    pub variant: &'static str,
    /// Listener (subscriber) processes.
    pub listeners: usize,
    /// `"ok"`, `"failed"` or `"unavailable"`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// Bytes per event.
    pub size: usize,
    /// Events written.
    pub events: u64,
    /// The writer's CPU time per event, sending back to back, in nanoseconds.
    pub writer_ns: Option<f64>,
    /// Events each listener received per second, from the first send until it had the
    /// last event: the median listener's.
    pub per_listener: Option<f64>,
    /// The same, of the slowest listener.
    pub slowest: Option<f64>,
    /// The share of the events a listener received, on average: the others were
    /// overwritten before it read them.
    pub received: Option<f64>,
}

/// What one call costs when nobody would receive its event. Serialised as is by
/// `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SendCost {
    /// The scheme.
    pub transport: String,
    /// What was called, and who listened.
    pub case: &'static str,
    /// `"ok"`, `"failed"` or `"unavailable"`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// Calls timed, back to back.
    pub calls: u64,
    /// Nanoseconds per call.
    pub ns_per_call: Option<f64>,
}

/// How long events take from the writer to the last of [`FAN_OUT`] listeners.
/// Serialised as is by `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FanOut {
    /// The scheme.
    pub transport: String,
    /// `"busy"` (listeners awake) or `"paused"` (listeners asleep).
    pub case: &'static str,
    /// Listener processes.
    pub listeners: usize,
    /// Time between events, in nanoseconds.
    pub gap_ns: u64,
    /// `"ok"`, `"failed"` or `"unavailable"`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// Events timed, after a tenth as many (at least 10) to warm up.
    pub events: usize,
    /// Events every listener received, whose latency counts.
    pub complete: usize,
    /// From the send to the last listener's receipt, median, in nanoseconds.
    pub median_ns: Option<u64>,
    /// The same, 99th percentile.
    pub p99_ns: Option<u64>,
    /// From the send to the first listener's receipt, median: the rest of the time to
    /// the last is the listeners' turns at the CPU.
    pub first_median_ns: Option<u64>,
}

/// Everything of the events table.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EventsReport {
    /// Throughput, per contender and listener count.
    pub points: Vec<EventsPoint>,
    /// The cost of an event nobody receives.
    pub costs: Vec<SendCost>,
    /// Fan-out latency.
    pub latency: Vec<FanOut>,
}

impl EventsReport {
    /// Whether there is nothing to show: no transport of the table was chosen.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.costs.is_empty() && self.latency.is_empty()
    }
}

/// Measures every chosen transport that [`listened`] says is a broadcast to listeners,
/// telling `progress` what it starts on ([`STEPS`] steps each). The program must call
/// [`run_if_peer`](crate::peer::run_if_peer) first thing in `main`, as for
/// [`run`](crate::harness::run).
///
/// ```no_run
/// use ipckit_bench::harness;
/// let options = harness::Options { quick: true, ..Default::default() };
/// let report = ipckit_bench::events::run_events(&options, &mut |step| eprintln!("{step}"))?;
/// print!("{}", harness::events_table(&report));
/// # Ok::<(), String>(())
/// ```
pub fn run_events(
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<EventsReport, String> {
    let chosen = check(options)?;
    pin_to(0);
    let dir = crate::harness::scratch_dir("events");
    let sending = match (options.events_time, options.quick) {
        (Duration::ZERO, true) => Duration::from_millis(300),
        (Duration::ZERO, false) => Duration::from_secs(1),
        (time, _) => time,
    };
    let samples = match (options.latency_samples, options.quick) {
        (0, true) => 300,
        (0, false) => 1_000,
        (n, _) => n,
    };
    let mut report = EventsReport::default();
    for transport in chosen {
        let scheme = transport.scheme();
        let endpoint = transport.scratch_endpoint(&dir, "events");
        if !listened(transport, &endpoint) {
            continue;
        }
        for listeners in LISTENERS {
            for variant in VARIANTS {
                progress(&format!(
                    "{scheme}: {variant}, one writer, {listeners} listeners"
                ));
                let at = transport.scratch_endpoint(&dir, &format!("events-{listeners}"));
                report
                    .points
                    .push(throughput(&at, variant, listeners, sending));
                let _ = transport.destroy(&at);
            }
        }
        for (case, listening) in [
            ("send, no listener", false),
            ("is_enabled, no listener", false),
            ("send, every listener above its level", true),
        ] {
            progress(&format!("{scheme}: {case}"));
            let at = transport.scratch_endpoint(&dir, "events-cost");
            report.costs.push(send_cost(&at, case, listening));
            let _ = transport.destroy(&at);
        }
        for (case, gap) in [("busy", BUSY_GAP), ("paused", PAUSED_GAP)] {
            progress(&format!("{scheme}: fan-out to {FAN_OUT} listeners, {case}"));
            let at = transport.scratch_endpoint(&dir, "events-fan-out");
            report.latency.push(fan_out(&at, case, gap, samples));
            let _ = transport.destroy(&at);
        }
    }
    Ok(report)
}

/// The event numbered `n`, stamped with the writer's clock.
pub(crate) fn sample(n: u64, stamp: u64) -> Sample {
    let mut sample = [7u8; SIZE];
    sample[..8].copy_from_slice(&n.to_le_bytes());
    sample[8..16].copy_from_slice(&stamp.to_le_bytes());
    sample
}

/// An event's number; [`END`] for anything too short to carry one.
pub(crate) fn sequence(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .map_or(END, |n| u64::from_le_bytes(n.try_into().expect("8 bytes")))
}

pub(crate) fn stamp(payload: &[u8]) -> u64 {
    payload
        .get(8..16)
        .map_or(0, |n| u64::from_le_bytes(n.try_into().expect("8 bytes")))
}

/// The monotonic clock in nanoseconds, the same in every process.
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// What a writer did: events sent, and the CPU time it spent on them.
struct Written {
    events: u64,
    cpu: Duration,
}

/// Writes numbered events back to back for `sending`, then the end.
fn write_all<E: std::fmt::Display>(
    sending: Duration,
    mut send: impl FnMut(&Sample) -> Result<(), E>,
) -> Result<Written, String> {
    // Events between looks at the clock: its cost is spread thin.
    const BATCH: u64 = 256;
    let mut event = sample(0, 0);
    let start = Instant::now();
    // The writer's cost is its CPU time: on a shared machine, the time it is preempted
    // is no cost of the transport's.
    let cpu = thread_cpu_time();
    let mut n = 0u64;
    while start.elapsed() < sending {
        for _ in 0..BATCH {
            event[..8].copy_from_slice(&n.to_le_bytes());
            send(&event).map_err(|e| format!("sending: {e}"))?;
            n += 1;
        }
    }
    let cpu = thread_cpu_time().saturating_sub(cpu);
    send(&sample(END, 0)).map_err(|e| format!("sending the end: {e}"))?;
    Ok(Written { events: n, cpu })
}

/// Kills `pids` unless dropped within [`PATIENCE`]: a listener that never sees the end
/// turns into a failed measurement rather than a hung run. The peers are not reaped
/// before their `Peer` is dropped, so a pid here is still theirs.
pub(crate) struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    fired: std::sync::Arc<AtomicBool>,
}

impl Watchdog {
    pub(crate) fn over(peers: &[Peer]) -> Watchdog {
        let pids: Vec<u32> = peers.iter().map(Peer::pid).collect();
        let (done, watch) = std::sync::mpsc::channel::<()>();
        let fired = std::sync::Arc::new(AtomicBool::new(false));
        let firing = fired.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(PATIENCE) {
                firing.store(true, Ordering::SeqCst);
                for pid in pids {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        });
        Watchdog {
            done: Some(done),
            fired,
        }
    }

    /// Whether it killed the peers.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// Starts `count` peers of `role` at `address`, each ready when this returns.
fn listeners(role: &str, address: &str, count: usize) -> Result<Vec<Peer>, Failure> {
    (0..count)
        .map(|_| Peer::start(role, address))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)
}

/// What each listener said: the events it received, and when it had the last.
type Heard = Vec<(u64, u64)>;

/// Each peer's `done RECEIVED END_NS`.
fn results(peers: &mut [Peer]) -> Result<Heard, Failure> {
    let watchdog = Watchdog::over(peers);
    let mut out = Vec::new();
    for peer in peers.iter_mut() {
        let line = peer
            .line()
            .map_err(|e| broke(peer, "a listener's count", e))?;
        let mut numbers = line
            .strip_prefix("done ")
            .unwrap_or_default()
            .split(' ')
            .map(|n| n.parse::<u64>().ok());
        match (numbers.next().flatten(), numbers.next().flatten()) {
            (Some(got), Some(at)) => out.push((got, at)),
            _ => {
                let words = peer.last_words();
                let said = if watchdog.fired() {
                    format!("it had not the last event within {PATIENCE:?}, and was stopped")
                } else if words.is_empty() {
                    format!("it said {line:?}, not the end")
                } else {
                    format!("it died: {words}")
                };
                return Err(broke(peer, "a listener's count", said));
            }
        }
    }
    Ok(out)
}

/// One writer here, `listeners` peers of `variant`, events back to back for `sending`.
fn throughput(
    endpoint: &ipckit::Endpoint,
    variant: &'static str,
    listeners: usize,
    sending: Duration,
) -> EventsPoint {
    let mut point = EventsPoint {
        transport: endpoint.scheme().to_owned(),
        variant,
        listeners,
        status: "ok",
        reason: None,
        size: SIZE,
        events: 0,
        writer_ns: None,
        per_listener: None,
        slowest: None,
        received: None,
    };
    let name = format!("ipckit-bench-events-{}-{listeners}", std::process::id());
    let outcome = (|| -> Result<(Written, u64, Heard), Failure> {
        let (mut peers, written, start) = match variant {
            "ipckit" => {
                let mut peers =
                    self::listeners("events-listener:ipckit", &endpoint.to_string(), listeners)?;
                let writer = ipckit::connect(peers[0].address())
                    .map_err(|e| broke(&mut peers[0], "connecting", e))?;
                let start = now_ns();
                let written = write_all(sending, |e| writer.send(e))
                    .map_err(|e| broke(&mut peers[0], "writing", e))?;
                (peers, written, start)
            }
            "baseline" => {
                // The writer makes the ring, then the readers join it.
                let mut writer = raw_events::Writer::create(&name);
                let peers = self::listeners("events-listener:baseline", &name, listeners)?;
                let start = now_ns();
                let written = write_all(sending, |e| {
                    writer.send(e);
                    Ok::<(), String>(())
                })
                .map_err(unavailable)?;
                (peers, written, start)
            }
            _ => {
                let role = format!("events-listener:iceoryx2:{listeners}");
                let mut peers = self::listeners(&role, &name, listeners)?;
                let publisher = crate::iceoryx::Publisher::open(&name, listeners)
                    .map_err(|e| broke(&mut peers[0], "publishing", e))?;
                let start = now_ns();
                let written = write_all(sending, |e| publisher.send(e))
                    .map_err(|e| broke(&mut peers[0], "publishing", e))?;
                // A subscriber now and then never had the one end sample (one run of 16
                // in a few dozen): the end again, to subscribers that stop at the first.
                publisher
                    .repeat_end(&sample(END, 0))
                    .map_err(|e| broke(&mut peers[0], "publishing", e))?;
                (peers, written, start)
            }
        };
        let counts = results(&mut peers)?;
        Ok((written, start, counts))
    })();
    if variant == "baseline" {
        let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
    }
    match outcome {
        Ok((written, start, counts)) => {
            let events = written.events.max(1);
            point.events = written.events;
            point.writer_ns = Some(written.cpu.as_nanos() as f64 / events as f64);
            let mut rates: Vec<f64> = counts
                .iter()
                .map(|&(got, at)| got as f64 / (at.saturating_sub(start).max(1) as f64 / 1e9))
                .collect();
            rates.sort_by(f64::total_cmp);
            point.per_listener = Some(rates[rates.len() / 2]);
            point.slowest = Some(rates[0]);
            let got: u64 = counts.iter().map(|c| c.0).sum();
            point.received = Some(got as f64 / (events * counts.len() as u64) as f64);
        }
        Err(f) => {
            point.status = f.status;
            point.reason = Some(f.reason);
        }
    }
    point
}

/// The cost of a call whose event nobody would receive: no listener at all, or one
/// whose level excludes the writer's.
fn send_cost(endpoint: &ipckit::Endpoint, case: &'static str, listening: bool) -> SendCost {
    let mut cost = SendCost {
        transport: endpoint.scheme().to_owned(),
        case,
        status: "ok",
        reason: None,
        calls: 0,
        ns_per_call: None,
    };
    let outcome = (|| -> Result<(u64, Duration), Failure> {
        let _listener = if listening {
            // The writer sends at its default level, informational; this listener
            // enables warning and more severe.
            let mut at = endpoint.clone();
            at.set_option("level", "warning").map_err(unavailable)?;
            Some(Peer::start("events-idle", &at.to_string()).map_err(unavailable)?)
        } else {
            None
        };
        let writer = ipckit::connect(endpoint).map_err(unavailable)?;
        let event = sample(0, 0);
        if case.starts_with("is_enabled") {
            tight_loop(|| {
                std::hint::black_box(writer.is_enabled(ipckit::Level::Informational));
                Ok(())
            })
        } else {
            tight_loop(|| writer.send(std::hint::black_box(&event)))
        }
        .map_err(unavailable)
    })();
    match outcome {
        Ok((calls, took)) => {
            cost.calls = calls;
            cost.ns_per_call = Some(took.as_nanos() as f64 / calls as f64);
        }
        Err(f) => {
            cost.status = f.status;
            cost.reason = Some(f.reason);
        }
    }
    cost
}

/// Times `call` back to back, inlined in the loop: as many calls as fill about 0.2 s,
/// and at least a million.
fn tight_loop(mut call: impl FnMut() -> ipckit::Result<()>) -> ipckit::Result<(u64, Duration)> {
    let mut time = |calls: u64| {
        let start = Instant::now();
        for _ in 0..calls {
            call()?;
        }
        Ok::<Duration, ipckit::Error>(start.elapsed())
    };
    let warm = time(100_000)?;
    let calls = ((0.2 / warm.as_secs_f64().max(1e-9)) * 100_000.0).clamp(1e6, 1e9) as u64;
    Ok((calls, time(calls)?))
}

/// Events `gap` apart to [`FAN_OUT`] listener processes: from the send to the last
/// listener's receipt, by the clock they share.
fn fan_out(
    endpoint: &ipckit::Endpoint,
    case: &'static str,
    gap: Duration,
    samples: usize,
) -> FanOut {
    let mut point = FanOut {
        transport: endpoint.scheme().to_owned(),
        case,
        listeners: FAN_OUT,
        gap_ns: gap.as_nanos() as u64,
        status: "ok",
        reason: None,
        events: samples,
        complete: 0,
        median_ns: None,
        p99_ns: None,
        first_median_ns: None,
    };
    // Events before these are not counted: listeners that have just started may not
    // have come to their first wait yet.
    let warm_up = (samples / 10).max(10);
    let outcome = (|| -> Result<Vec<(u64, u64)>, Failure> {
        let mut peers = listeners("events-latency", &endpoint.to_string(), FAN_OUT)?;
        let writer = ipckit::connect(peers[0].address())
            .map_err(|e| broke(&mut peers[0], "connecting", e))?;
        let start = Instant::now();
        for n in 0..(warm_up + samples) as u64 {
            // Waited out spinning, so that the writer's own wake-up is not measured.
            let due = start + gap * (n as u32 + 1);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            writer
                .send(&sample(n, now_ns()))
                .map_err(|e| broke(&mut peers[0], "sending", e))?;
        }
        writer
            .send(&sample(END, 0))
            .map_err(|e| broke(&mut peers[0], "sending the end", e))?;
        let _watchdog = Watchdog::over(&peers);
        // The first listener's time and the last's, per event that reached them all.
        let mut reached: Vec<Option<(u64, u64)>> = vec![Some((u64::MAX, 0)); warm_up + samples];
        for peer in peers.iter_mut() {
            let line = peer
                .line()
                .map_err(|e| broke(peer, "a listener's times", e))?;
            let Some(times) = line.strip_prefix("took ") else {
                return Err(broke(
                    peer,
                    "a listener's times",
                    format!("it said {line:?}"),
                ));
            };
            let mut times = times.split(',');
            for slot in &mut reached {
                let took = times.next().and_then(|t| t.parse::<u64>().ok());
                *slot = match (*slot, took) {
                    (Some((first, last)), Some(t)) => Some((first.min(t), last.max(t))),
                    _ => None,
                };
            }
        }
        Ok(reached.into_iter().skip(warm_up).flatten().collect())
    })();
    match outcome {
        Ok(reached) if !reached.is_empty() => {
            let mut first: Vec<u64> = reached.iter().map(|r| r.0).collect();
            let mut last: Vec<u64> = reached.iter().map(|r| r.1).collect();
            first.sort_unstable();
            last.sort_unstable();
            point.complete = last.len();
            point.median_ns = Some(last[last.len() / 2]);
            point.p99_ns = Some(last[(last.len() * 99 / 100).min(last.len() - 1)]);
            point.first_median_ns = Some(first[first.len() / 2]);
        }
        Ok(_) => {
            point.status = "failed";
            point.reason = Some("no event reached every listener".into());
        }
        Err(f) => {
            point.status = f.status;
            point.reason = Some(f.reason);
        }
    }
    point
}

/// Set when the bench closes a peer's stdin: the peer is to end.
static STOP: AtomicBool = AtomicBool::new(false);

/// Plays the events roles (`events-…`); false for any other.
pub(crate) fn peer(role: &str, address: &str) -> bool {
    let Some(role) = role.strip_prefix("events-") else {
        return false;
    };
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        // An iceoryx2 subscriber sees this and leaves, removing its files; the others
        // are waiting in a receive, and are ended.
        STOP.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(200));
        std::process::exit(0);
    });
    let report = |got: u64| println!("done {got} {}", now_ns());
    match role {
        "listener:ipckit" => {
            let mut listener = ipckit::listen(address).unwrap_or_else(|e| panic!("{e}"));
            println!("{}", listener.endpoint());
            let mut got = 0u64;
            loop {
                let event = listener.recv().unwrap_or_else(|e| panic!("{e}"));
                if sequence(event.payload()) == END {
                    report(got);
                    return true;
                }
                got += 1;
                std::hint::black_box(event.payload());
            }
        }
        "listener:baseline" => {
            let mut reader = raw_events::Reader::open(address);
            println!("{address}");
            let (mut got, mut buf) = (0u64, Vec::with_capacity(SIZE));
            loop {
                if reader.recv(&mut buf) == raw_events::Read::Event {
                    if sequence(&buf) == END {
                        report(got);
                        return true;
                    }
                    got += 1;
                    std::hint::black_box(&buf);
                }
            }
        }
        "latency" => {
            let mut listener = ipckit::listen(address).unwrap_or_else(|e| panic!("{e}"));
            println!("{}", listener.endpoint());
            let mut took: Vec<Option<u64>> = Vec::new();
            loop {
                let event = listener.recv().unwrap_or_else(|e| panic!("{e}"));
                let now = now_ns();
                let n = sequence(event.payload());
                if n == END {
                    break;
                }
                let n = n as usize;
                if took.len() <= n {
                    took.resize(n + 1, None);
                }
                took[n] = Some(now.saturating_sub(stamp(event.payload())));
            }
            let line: Vec<String> = took
                .iter()
                .map(|t| t.map(|t| t.to_string()).unwrap_or_default())
                .collect();
            println!("took {}", line.join(","));
        }
        "idle" => {
            let mut listener = ipckit::listen(address).unwrap_or_else(|e| panic!("{e}"));
            println!("{}", listener.endpoint());
            while listener.recv().is_ok() {}
        }
        other => {
            let Some(subscribers) = other
                .strip_prefix("listener:iceoryx2:")
                .and_then(|n| n.parse().ok())
            else {
                return false;
            };
            match crate::iceoryx::subscribe(address, subscribers, &STOP) {
                Ok(Some(got)) => report(got),
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    true
}
