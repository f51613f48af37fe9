//! `ipckit bench`: every registered transport measured between two processes, beside a
//! hand-written baseline over the same mechanism.
//!
//! For each transport: the round-trip latency of a request/reply (median, p99, p99.9 of a
//! fixed count after a warm-up), and of a server's push answered by its client where the
//! transport pushes, one-way throughput in messages/s and in GB/s for 64 KiB
//! messages (or the transport's largest, if smaller), and the CPU time both processes
//! spent per round trip. A transport that cannot run here, or whose server dies during
//! the run, is reported with the reason and the run goes on.

use std::time::{Duration, Instant};

use crate::peer::{Peer, thread_cpu_time};
use crate::{pin_to, raw};

pub use crate::contract::{ContractPoint, run_contracts};
pub use crate::events::{EventsReport, run_events};
pub use crate::push::{BroadcastPoint, SUBSCRIBERS as BROADCAST_SUBSCRIBERS, run_broadcast};
pub use crate::report::{
    broadcast_csv, broadcast_table, contract_csv, contract_table, csv, events_csv, events_table,
    scaling_csv, scaling_table, spool_csv, spool_table, table,
};
pub use crate::spool::{SpoolReport, run_spool};

/// What to measure.
///
/// ```
/// let options = ipckit_bench::harness::Options {
///     transports: vec!["uds".into(), "shm".into()],
///     quick: true,
///     ..Default::default()
/// };
/// assert!(ipckit_bench::harness::check(&options).is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// Schemes to run; all registered ones when empty.
    pub transports: Vec<String>,
    /// Bytes in each round-trip and small one-way message.
    pub size: usize,
    /// Round trips per measurement.
    pub count: usize,
    /// A run under 20 s: fewer round trips and messages.
    pub quick: bool,
    /// The CPUs to run on (`--cpus`), among those this process may use; empty for all
    /// of those. The client takes the first, the servers the second.
    pub cpus: Vec<usize>,
    /// How long the writer sends in each throughput measurement of the events table;
    /// zero for the default (1 s, or 300 ms when quick).
    pub events_time: Duration,
    /// Events of each fan-out latency measurement; 0 for the default (1,000, or 300
    /// when quick).
    pub latency_samples: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            transports: Vec::new(),
            size: 64,
            count: 10_000,
            quick: false,
            cpus: Vec::new(),
            events_time: Duration::ZERO,
            latency_samples: 0,
        }
    }
}

/// One line of the results: a transport measured through ipckit or by hand. Serialised
/// as is by `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    /// The scheme.
    pub transport: String,
    /// `"ipckit"`, `"push"` (a server's push to a client, answered by a send: only for
    /// transports that push) or `"baseline"` (the hand-written loop).
    pub variant: &'static str,
    /// `"ok"`, `"failed"` (it started but broke) or `"unavailable"` (it cannot run here).
    pub status: &'static str,
    /// Why it failed or is unavailable.
    pub reason: Option<String>,
    /// Bytes per round-trip message.
    pub size: usize,
    /// Round-trip latency, median, in nanoseconds.
    pub rtt_median_ns: Option<u64>,
    /// Round-trip latency, 99th percentile.
    pub rtt_p99_ns: Option<u64>,
    /// Round-trip latency, 99.9th percentile.
    pub rtt_p999_ns: Option<u64>,
    /// ipckit's median round trip over the baseline's, on ipckit's row; on the push row,
    /// the push round trip's median over ipckit's request round trip's.
    pub ratio: Option<f64>,
    /// ipckit's messages/s over the baseline's, on ipckit's row.
    pub msgs_ratio: Option<f64>,
    /// ipckit's GB/s over the baseline's, on ipckit's row.
    pub gb_ratio: Option<f64>,
    /// CPU time of both processes per round trip, in nanoseconds.
    pub cpu_ns_per_rtt: Option<u64>,
    /// One-way messages of `size` bytes delivered per second.
    pub msgs_per_sec: Option<f64>,
    /// Bytes per message of the bandwidth measurement.
    pub stream_size: usize,
    /// One-way bandwidth with `stream_size` messages, in GB/s (10^9 bytes).
    pub gb_per_sec: Option<f64>,
}

impl Row {
    pub(crate) fn new(transport: &str, variant: &'static str, size: usize) -> Row {
        Row {
            transport: transport.to_owned(),
            variant,
            status: "ok",
            reason: None,
            size,
            rtt_median_ns: None,
            rtt_p99_ns: None,
            rtt_p999_ns: None,
            ratio: None,
            msgs_ratio: None,
            gb_ratio: None,
            cpu_ns_per_rtt: None,
            msgs_per_sec: None,
            stream_size: 0,
            gb_per_sec: None,
        }
    }

    pub(crate) fn failed(mut self, status: &'static str, reason: String) -> Row {
        self.status = status;
        self.reason = Some(reason);
        self
    }
}

/// The largest message of the bandwidth measurement.
pub const STREAM_SIZE: usize = 64 * 1024;

/// Checks the options against the registered transports: unknown names, a size over a
/// transport's maximum, a zero count and CPUs this process may not use are errors, each
/// saying what to do. The CPUs are the run's from then on ([`choose_cpus`](crate::choose_cpus)).
pub fn check(options: &Options) -> Result<Vec<&'static dyn ipckit::transport::Transport>, String> {
    crate::choose_cpus(&options.cpus)?;
    if options.count == 0 {
        return Err("--count must be at least 1".into());
    }
    if options.size == 0 {
        return Err("--size must be at least 1 byte".into());
    }
    let all = ipckit::transport::all();
    let chosen: Vec<_> = if options.transports.is_empty() {
        all.to_vec()
    } else {
        options
            .transports
            .iter()
            .map(|name| {
                ipckit::transport::find(name).ok_or_else(|| {
                    format!(
                        "unknown transport '{name}'; available: {}",
                        all.iter()
                            .map(|t| t.scheme())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    let dir = std::env::temp_dir();
    for transport in &chosen {
        let max = transport
            .capabilities(&transport.scratch_endpoint(&dir, "check"))
            .max_message;
        if options.size > max {
            return Err(format!(
                "--size {} exceeds the largest message {} takes, {max} bytes; choose a smaller size or leave {} out with --transports",
                options.size,
                transport.scheme(),
                transport.scheme()
            ));
        }
    }
    Ok(chosen)
}

/// Runs the measurements, telling `progress` what it starts on; one [`Row`] per transport
/// and variant, in the order of `options.transports` (the registry's, when empty). The
/// program must call [`run_if_peer`](crate::peer::run_if_peer) first thing in `main`:
/// the servers are this program started again.
///
/// ```no_run
/// use ipckit_bench::harness;
/// let options = harness::Options { quick: true, ..Default::default() };
/// let rows = harness::run(&options, &mut |step| eprintln!("{step}"))?;
/// print!("{}", harness::table(&rows));
/// # Ok::<(), String>(())
/// ```
pub fn run(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Vec<Row>, String> {
    let chosen = check(options)?;
    pin_to(0);
    let dir = scratch_dir("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plan = Plan::new(options);
    let mut rows = Vec::new();
    for transport in chosen {
        let scheme = transport.scheme();
        let endpoint = crate::spool::bench_endpoint(transport, &dir, "bench");
        let caps = transport.capabilities(&endpoint);

        progress(&format!(
            "{scheme}: round trips, ipckit and by hand in turn"
        ));
        let mut ours = Row::new(scheme, "ipckit", options.size);
        ours.stream_size = STREAM_SIZE.min(caps.max_message);
        let mut hand = Row::new(scheme, "baseline", options.size);
        let mut contenders = Vec::new();
        // A one-way transport (a broadcast to listeners) has no round trip: it is
        // measured for what it does, its throughput to one listener.
        if caps.duplex {
            match ipckit_contender(&endpoint, options.size) {
                Ok(c) => contenders.push((c, &mut ours)),
                Err(f) => ours = ours.failed(f.status, f.reason),
            }
        }
        if !raw::has_baseline(scheme) {
            hand = hand.failed(
                "unavailable",
                "no hand-written baseline for this transport".into(),
            );
        } else if caps.duplex {
            match baseline_contender(scheme, &dir, options.size) {
                Ok(c) => contenders.push((c, &mut hand)),
                Err(f) => hand = hand.failed(f.status, f.reason),
            }
        }
        // A server's push answered by its client, timed in the same blocks as the request.
        let mut push = caps.push.then(|| Row::new(scheme, "push", options.size));
        // An endpoint of its own: the echo server holds the other while they take turns.
        let push_at = crate::spool::bench_endpoint(transport, &dir, "push");
        if let Some(push) = &mut push {
            match crate::push::contender(&push_at, options.size) {
                Ok(c) => contenders.push((c, push)),
                Err(f) => *push = push.clone().failed(f.status, f.reason),
            }
        }
        interleave(&plan, contenders);
        // What the push's client left (an mq inbound queue) goes with its endpoint.
        let _ = transport.destroy(&push_at);
        progress(&format!("{scheme}: one-way throughput"));
        if ours.status == "ok" {
            let measured = if caps.duplex {
                measure_throughput(&plan, &endpoint, &mut ours)
            } else {
                measure_one_way(&plan, &endpoint, &mut ours)
            };
            if let Err(f) = measured {
                ours = ours.failed(f.status, f.reason);
            }
        }
        if raw::has_baseline(scheme) && hand.reason.is_none() {
            hand.stream_size = ours.stream_size;
            if let Err(f) = measure_raw_throughput(&plan, scheme, &dir, &mut hand) {
                hand = hand.failed(f.status, f.reason);
            }
        }
        if let (Some(a), Some(b)) = (ours.rtt_median_ns, hand.rtt_median_ns) {
            ours.ratio = Some(a as f64 / b.max(1) as f64);
        }
        if let (Some(a), Some(b)) = (ours.msgs_per_sec, hand.msgs_per_sec) {
            ours.msgs_ratio = Some(a / b);
        }
        if let (Some(a), Some(b)) = (ours.gb_per_sec, hand.gb_per_sec) {
            ours.gb_ratio = Some(a / b);
        }
        if let Some(push) = &mut push {
            if let (Some(a), Some(b)) = (push.rtt_median_ns, ours.rtt_median_ns) {
                push.ratio = Some(a as f64 / b.max(1) as f64);
            }
        }
        rows.push(ours);
        rows.extend(push);
        rows.push(hand);
    }
    raw::remove_leftovers();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// The directory a run of `kind` keeps its sockets and FIFOs in, removed when it ends.
pub(crate) fn scratch_dir(kind: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ipckit-{kind}-{}", std::process::id()))
}

/// Stops a run from another thread, as when a signal comes: stops its servers and
/// removes what it made (their endpoints, its temp dirs, the hand-written loops' queues
/// and segments). The caller then exits, as the run's own thread goes on.
///
/// ```no_run
/// // In the thread that waits for SIGINT, SIGTERM and SIGHUP:
/// ipckit_bench::harness::abandon();
/// std::process::exit(0);
/// ```
pub fn abandon() {
    crate::peer::abandon();
    for kind in [
        "bench",
        "scaling",
        "broadcast",
        "contracts",
        "events",
        "spool",
    ] {
        // The run's own thread goes on meanwhile and may make a file in the directory as
        // it is being emptied, which then fails to go: look again, briefly.
        for _ in 0..20 {
            match std::fs::remove_dir_all(scratch_dir(kind)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => break,
            }
        }
    }
    raw::remove_leftovers();
}

/// How much of each measurement to do.
pub(crate) struct Plan {
    size: usize,
    round_trips: usize,
    warm_up: usize,
    messages: usize,
    stream_bytes: usize,
    /// Deliveries of each broadcast measurement, all subscribers together: the
    /// subscribers' reading bounds its time, so more subscribers get fewer messages.
    pub(crate) deliveries: usize,
}

impl Plan {
    pub(crate) fn new(options: &Options) -> Plan {
        let quick = options.quick;
        Plan {
            size: options.size,
            round_trips: if quick {
                options.count.min(2_000)
            } else {
                options.count
            },
            warm_up: (options.count / 10).clamp(1, 1_000),
            messages: if quick { 10_000 } else { 100_000 },
            stream_bytes: if quick { 32 << 20 } else { 256 << 20 },
            deliveries: if quick { 2_000 } else { 8_000 },
        }
    }
}

impl Plan {
    /// This plan with at most `calls` round trips per measurement.
    pub(crate) fn at_most(mut self, calls: usize) -> Plan {
        self.round_trips = self.round_trips.min(calls);
        self
    }

    /// Round trips per measurement.
    pub(crate) fn round_trips(&self) -> usize {
        self.round_trips
    }

    /// Messages of `size` bytes for the messages/s figure: no more bytes than the
    /// bandwidth measurement moves, so that a large --size does not send gigabytes.
    fn small_messages(&self) -> usize {
        self.messages
            .min((self.stream_bytes / self.size.max(1)).max(10))
    }
}

pub(crate) struct Failure {
    pub(crate) status: &'static str,
    pub(crate) reason: String,
}

/// A step that broke: its server died, or an operation failed.
pub(crate) fn broke(peer: &mut Peer, what: &str, error: impl std::fmt::Display) -> Failure {
    // A peer killed mid-run closes its sockets a moment before it can be reaped: the
    // client may see the failure first.
    let reason = if peer.alive_after(Duration::from_millis(500)) {
        format!("{what}: {error}")
    } else {
        format!("{what}: the server process died ({error})")
    };
    Failure {
        status: "failed",
        reason,
    }
}

pub(crate) fn unavailable(reason: impl std::fmt::Display) -> Failure {
    Failure {
        status: "unavailable",
        reason: reason.to_string(),
    }
}

/// One side of a latency comparison: a server, and a round trip to it.
pub(crate) struct Contender {
    pub(crate) peer: Peer,
    pub(crate) round_trip: Box<dyn FnMut() -> Result<(), String>>,
    pub(crate) took: Vec<Duration>,
    pub(crate) cpu: Duration,
}

fn ipckit_contender(endpoint: &ipckit::Endpoint, size: usize) -> Result<Contender, Failure> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let mut peer = Peer::start("echo", &endpoint.to_string()).map_err(unavailable)?;
    let client = ipckit::connect(peer.address()).map_err(|e| broke(&mut peer, "connecting", e))?;
    let payload = vec![7u8; size];
    Ok(Contender {
        peer,
        round_trip: Box::new(move || {
            client
                .request(&payload, TIMEOUT)
                .map(drop)
                .map_err(|e| e.to_string())
        }),
        took: Vec::new(),
        cpu: Duration::ZERO,
    })
}

fn baseline_contender(
    scheme: &str,
    dir: &std::path::Path,
    size: usize,
) -> Result<Contender, Failure> {
    let role = format!("raw:{scheme}:{size}");
    let peer = Peer::start(&role, &raw::address(scheme, dir)).map_err(unavailable)?;
    let mut round_trip = raw::client(scheme, peer.address(), size);
    Ok(Contender {
        peer,
        round_trip: Box::new(move || {
            round_trip();
            Ok(())
        }),
        took: Vec::new(),
        cpu: Duration::ZERO,
    })
}

/// Times round trips one by one, after a warm-up, in blocks that alternate between the
/// contenders, so that drift of the machine during the run weighs on each alike; fills
/// each row's latency and CPU figures, or marks it failed (and drops it from the
/// rotation) when its round trip breaks.
pub(crate) fn interleave(plan: &Plan, contenders: Vec<(Contender, &mut Row)>) {
    const BLOCKS: usize = 20;
    let mut live: Vec<(Contender, &mut Row)> = Vec::new();
    for (mut contender, row) in contenders {
        let warmed = (0..plan.warm_up).try_for_each(|_| (contender.round_trip)());
        match warmed {
            Ok(()) => live.push((contender, row)),
            Err(e) => {
                let f = broke(&mut contender.peer, "warming up", e);
                row.status = f.status;
                row.reason = Some(f.reason);
            }
        }
    }
    let per_block = plan.round_trips.div_ceil(BLOCKS);
    for block in 0..BLOCKS {
        let n = live.len();
        for turn in 0..n {
            // Alternate who goes first, so that no one always follows another.
            let (contender, row) = &mut live[(block + turn) % n];
            if row.status != "ok" {
                continue;
            }
            let cpu_before = thread_cpu_time() + contender.peer.cpu_time();
            for _ in 0..per_block {
                let start = Instant::now();
                if let Err(e) = (contender.round_trip)() {
                    let f = broke(&mut contender.peer, "a round trip", e);
                    row.status = f.status;
                    row.reason = Some(f.reason);
                    break;
                }
                contender.took.push(start.elapsed());
            }
            // A peer that died has no CPU clock left to read: its time counts as none.
            let cpu_after = thread_cpu_time() + contender.peer.cpu_time();
            contender.cpu += cpu_after.saturating_sub(cpu_before);
        }
    }
    for (contender, row) in live {
        let mut took = contender.took;
        if row.status != "ok" || took.is_empty() {
            continue;
        }
        took.sort();
        let at =
            |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)].as_nanos() as u64;
        row.rtt_median_ns = Some(at(0.5));
        row.rtt_p99_ns = Some(at(0.99));
        row.rtt_p999_ns = Some(at(0.999));
        row.cpu_ns_per_rtt = Some(contender.cpu.as_nanos() as u64 / took.len() as u64);
    }
}

/// One-way throughput through ipckit: messages of the row's size, then of its stream
/// size, into a counting server.
fn measure_throughput(
    plan: &Plan,
    endpoint: &ipckit::Endpoint,
    row: &mut Row,
) -> Result<(), Failure> {
    let stream = |size: usize, messages: usize| -> Result<(u64, u64, Duration), Failure> {
        let mut sink = Peer::start("sink", &endpoint.to_string()).map_err(unavailable)?;
        let client =
            ipckit::connect(sink.address()).map_err(|e| broke(&mut sink, "connecting", e))?;
        let payload = vec![7u8; size];
        let start = Instant::now();
        for sent in 1..=messages {
            client
                .send(&payload)
                .map_err(|e| broke(&mut sink, "sending", e))?;
            // The clock read only now and then, so that it costs a fast transport nothing.
            if sent % 256 == 0 && start.elapsed() > STREAM_TIME_LIMIT {
                break;
            }
        }
        // The count comes back by request; a transport that may drop (udp) may drop
        // the request too, so it is asked again.
        let mut answer = client.request(crate::peer::COUNT_REQUEST, Duration::from_secs(2));
        for _ in 1..3 {
            if answer.is_ok() {
                break;
            }
            answer = client.request(crate::peer::COUNT_REQUEST, Duration::from_secs(2));
        }
        let elapsed = start.elapsed();
        let answer = answer.map_err(|e| broke(&mut sink, "asking the count", e))?;
        let reply = String::from_utf8(answer).unwrap_or_default();
        let mut numbers = reply.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        let (delivered, bytes) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        Ok((delivered, bytes, elapsed))
    };
    let (delivered, _, elapsed) = stream(plan.size, plan.small_messages())?;
    row.msgs_per_sec = Some(delivered as f64 / elapsed.as_secs_f64());
    let messages = (plan.stream_bytes / row.stream_size).max(10);
    let (_, bytes, elapsed) = stream(row.stream_size, messages)?;
    row.gb_per_sec = Some(bytes as f64 / elapsed.as_secs_f64() / 1e9);
    Ok(())
}

/// How long a one-way stream through ipckit may send before it stops short of its count:
/// the rate is of what was sent, and a transport that writes to a disk (spool), which
/// other processes may be flushing to, does not stretch the run by minutes.
const STREAM_TIME_LIMIT: Duration = Duration::from_secs(2);

/// One-way throughput through a transport without replies: the same messages (or more,
/// for at least [`ONE_WAY_AT_LEAST`]) to a listener that counts them until [`END_OF_STREAM`](crate::peer::END_OF_STREAM) and
/// says how many came, as the hand-written sinks do. Over a broadcast that overwrites, a
/// listener that falls behind loses the oldest: what it received is what counts.
fn measure_one_way(plan: &Plan, endpoint: &ipckit::Endpoint, row: &mut Row) -> Result<(), Failure> {
    let through = |size: usize, messages: usize| -> Result<(u64, Duration), Failure> {
        let mut tally = Peer::start("tally", &endpoint.to_string()).map_err(unavailable)?;
        let client =
            ipckit::connect(tally.address()).map_err(|e| broke(&mut tally, "connecting", e))?;
        let payload = vec![7u8; size];
        let start = Instant::now();
        let mut sent = 0;
        while sent < messages || start.elapsed() < ONE_WAY_AT_LEAST {
            client
                .send(&payload)
                .map_err(|e| broke(&mut tally, "sending", e))?;
            sent += 1;
        }
        client
            .send(crate::peer::END_OF_STREAM)
            .map_err(|e| broke(&mut tally, "sending", e))?;
        read_done(&mut tally)
    };
    let (got, over) = through(plan.size, plan.small_messages())?;
    row.msgs_per_sec = Some(got as f64 / over.as_secs_f64());
    let count = (plan.stream_bytes / row.stream_size).max(10);
    let (got, over) = through(row.stream_size, count)?;
    row.gb_per_sec = Some((got * row.stream_size as u64) as f64 / over.as_secs_f64() / 1e9);
    Ok(())
}

/// The shortest one-way stream to a listener of a broadcast: one that the sender ends
/// before the listener's first turn at a CPU tells nothing, since an overwriting
/// broadcast keeps only the newest messages for it.
pub(crate) const ONE_WAY_AT_LEAST: Duration = Duration::from_millis(100);

/// A sink's last line, `done MESSAGES NANOS`: how many came, and over how long.
fn read_done(sink: &mut Peer) -> Result<(u64, Duration), Failure> {
    let done = sink.line().map_err(|e| broke(sink, "the count", e))?;
    let mut numbers = done
        .strip_prefix("done ")
        .unwrap_or_default()
        .split(' ')
        .map(|n| n.parse::<u64>().unwrap_or(0));
    let (got, nanos) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if got == 0 {
        return Err(broke(sink, "the count", "nothing arrived"));
    }
    Ok((got, Duration::from_nanos(nanos.max(1))))
}

/// One-way throughput by hand: the same messages into the hand-written sink of `scheme`,
/// which reports how many came and over how long.
fn measure_raw_throughput(
    plan: &Plan,
    scheme: &str,
    dir: &std::path::Path,
    row: &mut Row,
) -> Result<(), Failure> {
    let address = format!("{}-sink", raw::address(scheme, dir));
    let through = |size: usize, count: u64| -> Result<(u64, Duration), Failure> {
        let role = format!("rawsink:{scheme}:{size}:{count}");
        let mut sink = Peer::start(&role, &address).map_err(unavailable)?;
        raw::send(scheme, sink.address(), raw::Stream { size, count })
            .map_err(|e| broke(&mut sink, "sending", e))?;
        read_done(&mut sink)
    };
    let (got, over) = through(plan.size, plan.small_messages() as u64)?;
    row.msgs_per_sec = Some(got as f64 / over.as_secs_f64());
    let count = (plan.stream_bytes / row.stream_size).max(10) as u64;
    let (got, over) = through(row.stream_size, count)?;
    row.gb_per_sec = Some((got * row.stream_size as u64) as f64 / over.as_secs_f64() / 1e9);
    Ok(())
}

/// One point of a scaling run (`--scaling`): a transport at one message size or one
/// number of concurrent clients.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScalePoint {
    /// The scheme.
    pub transport: String,
    /// `"size"` (x is bytes per message) or `"clients"` (x is concurrent clients).
    pub axis: &'static str,
    /// The size or the number of clients.
    pub x: u64,
    /// `"ok"` or `"failed"`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// Round trip, median, in nanoseconds.
    pub rtt_median_ns: Option<u64>,
    /// Round trip, 99th percentile.
    pub rtt_p99_ns: Option<u64>,
    /// Round trips completed per second, all clients together.
    pub round_trips_per_sec: Option<f64>,
    /// Payload bytes carried per second, both directions together, in GB/s.
    pub gb_per_sec: Option<f64>,
}

/// Message sizes of a scaling run.
pub const SCALING_SIZES: [usize; 7] = [16, 256, 4096, 65536, 1 << 20, 4 << 20, 16 << 20];
/// Client counts of a scaling run.
pub const SCALING_CLIENTS: [usize; 4] = [1, 4, 16, 64];

/// Round trips as the message grows from 16 B to 16 MiB (up to each transport's
/// largest) and as the clients grow from 1 to 64; a transport without round trips (a
/// one-way broadcast) has no points.
pub fn run_scaling(
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ScalePoint>, String> {
    let chosen = check(options)?;
    pin_to(0);
    let dir = scratch_dir("scaling");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut points = Vec::new();
    for transport in chosen {
        let scheme = transport.scheme();
        let endpoint = crate::spool::bench_endpoint(transport, &dir, "scaling");
        let caps = transport.capabilities(&endpoint);
        // Round trips only: a one-way broadcast has none to scale.
        if !caps.duplex {
            continue;
        }
        let max = caps.max_message;
        for size in SCALING_SIZES.into_iter().filter(|&s| s <= max) {
            progress(&format!("{scheme}: {size}-byte round trips"));
            // Fewer round trips for large messages: each moves the message twice.
            let count = (options.count / 10)
                .clamp(10, 1000)
                .min((256 << 20) / size)
                .max(5);
            let count = if options.quick { count.min(100) } else { count };
            points.push(scale_point(&endpoint, "size", size as u64, size, 1, count));
        }
        for clients in SCALING_CLIENTS {
            progress(&format!("{scheme}: {clients} clients at once"));
            let each = if options.quick { 50 } else { 300 };
            points.push(scale_point(
                &endpoint,
                "clients",
                clients as u64,
                64,
                clients,
                each,
            ));
        }
    }
    raw::remove_leftovers();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(points)
}

/// `clients` threads, each with a connection of its own, make `each` round trips of `size`
/// bytes to one echo server.
fn scale_point(
    endpoint: &ipckit::Endpoint,
    axis: &'static str,
    x: u64,
    size: usize,
    clients: usize,
    each: usize,
) -> ScalePoint {
    let mut point = ScalePoint {
        transport: endpoint.scheme().to_owned(),
        axis,
        x,
        status: "ok",
        reason: None,
        rtt_median_ns: None,
        rtt_p99_ns: None,
        round_trips_per_sec: None,
        gb_per_sec: None,
    };
    let outcome = (|| -> Result<(Vec<Duration>, Duration), String> {
        let mut echo = Peer::start("echo", &endpoint.to_string()).map_err(|e| e.to_string())?;
        let connections = (0..clients)
            .map(|_| ipckit::connect(echo.address()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| broke(&mut echo, "connecting", e).reason)?;
        let payload = vec![7u8; size];
        let start = Instant::now();
        let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = connections
                .iter()
                .map(|client| {
                    let payload = &payload;
                    scope.spawn(move || {
                        let mut took = Vec::with_capacity(each);
                        for _ in 0..each {
                            let t = Instant::now();
                            client
                                .request(payload, Duration::from_secs(30))
                                .map_err(|e| e.to_string())?;
                            took.push(t.elapsed());
                        }
                        Ok(took)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a client thread panicked".into()))
                })
                .collect()
        });
        let elapsed = start.elapsed();
        let mut all = Vec::new();
        for r in results {
            all.extend(r.map_err(|e| broke(&mut echo, "a round trip", e).reason)?);
        }
        Ok((all, elapsed))
    })();
    match outcome {
        Ok((mut took, elapsed)) if !took.is_empty() => {
            took.sort();
            let at = |q: f64| {
                took[((took.len() as f64 * q) as usize).min(took.len() - 1)].as_nanos() as u64
            };
            point.rtt_median_ns = Some(at(0.5));
            point.rtt_p99_ns = Some(at(0.99));
            let rate = took.len() as f64 / elapsed.as_secs_f64();
            point.round_trips_per_sec = Some(rate);
            point.gb_per_sec = Some(rate * 2.0 * size as f64 / 1e9);
        }
        Ok(_) => {}
        Err(reason) => {
            point.status = "failed";
            point.reason = Some(reason);
        }
    }
    point
}

/// What the run was measured on, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    /// The CPU model, as /proc/cpuinfo names it.
    pub cpu: String,
    /// CPUs online.
    pub cpus: usize,
    /// The kernel release.
    pub kernel: String,
    /// Where the client and the servers ran ([`placement`](crate::placement)).
    pub placement: String,
    /// The CPU the client ran on.
    pub client_cpu: usize,
    /// The CPU the servers ran on.
    pub server_cpu: usize,
}

impl Machine {
    /// This machine, and the CPUs of this run.
    pub fn here() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let allowed = crate::allowed_cpus();
        Machine {
            cpu,
            cpus: crate::online_cpus(),
            kernel,
            placement: crate::placement(),
            client_cpu: allowed[0],
            server_cpu: allowed[1 % allowed.len()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused_with_what_to_do() {
        let with = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            check(&o).err().unwrap_or_default()
        };
        assert!(with(|o| o.count = 0).contains("--count"));
        assert!(with(|o| o.transports = vec!["pigeon".into()]).contains("available: uds"));
        let too_big = with(|o| {
            o.transports = vec!["udp".into()];
            o.size = 100_000;
        });
        assert!(too_big.contains("65507"), "{too_big}");
    }
}
