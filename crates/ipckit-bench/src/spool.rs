//! The spool table of `ipckit bench`: what a send costs on the disk, and how soon a
//! receiver has a message.
//!
//! Sending: this process publishes into a fresh spool in the temp dir (on its disk, not
//! on tmpfs: the disk is the point), with no receiver running, 64-byte and 1 MiB
//! messages, with `?sync=true` and `?sync=false`, through `Client::send` and through a
//! hand-written loop ([`raw_spool`](crate::raw_spool)) in blocks that take turns, so that
//! a drift of the machine (another process flushing the same disk) weighs on both alike.
//! What arrives in `new/` is removed between blocks, outside the time.
//!
//! Receiving: a receiver process (`ipckit::listen`, blocking `recv`) on the run's second
//! CPU, and this process on its first renaming files into `new/` by hand, each carrying
//! the monotonic clock read just before its rename: from the rename to the receiver's
//! handler, one message every millisecond (the receiver sleeps in inotify each time) and
//! back to back.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::events::{Watchdog, now_ns, sample, sequence, stamp};
use crate::harness::{Failure, Options, broke, check, unavailable};
use crate::peer::Peer;
use crate::pin_to;
use crate::raw_spool::{RawSpool, empty_dir};

/// Bytes per message of the send rows.
pub const SIZES: [usize; 2] = [64, 1 << 20];

/// Steps `run_spool` reports to its progress callback: one per send row, one per
/// latency case.
pub const STEPS: usize = SIZES.len() * 2 + LATENCY_CASES.len();

/// The latency cases: their names and the time between messages.
const LATENCY_CASES: [(&str, Duration); 2] = [
    ("paused", Duration::from_millis(1)),
    ("busy", Duration::ZERO),
];

/// Blocks of each contender in a send row: many short ones, since the disk's pace
/// drifts within a second when other processes flush to it.
const BLOCKS: usize = 16;
/// The same, with `--quick`.
const QUICK_BLOCKS: usize = 4;

/// The most bytes one block writes: unflushed 1 MiB messages would otherwise fill the
/// page cache until the kernel throttles the writer, measuring the writeback instead.
const BLOCK_BYTES: usize = 256 << 20;

/// Messages each contender sends before a row's blocks, not timed.
const WARM_UP: usize = 5;

/// One row of the send table: ipckit and the hand-written loop, one size, one `sync`.
/// Serialised as is by `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SendPoint {
    /// Bytes per message.
    pub size: usize,
    /// Whether each message is flushed to disk (`?sync=true`).
    pub sync: bool,
    /// `"ok"`, `"failed"` or `"unavailable"`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// Timed blocks of each contender.
    pub blocks: usize,
    /// Messages ipckit sent in its blocks.
    pub ipckit_messages: u64,
    /// Messages the hand-written loop sent in its blocks.
    pub baseline_messages: u64,
    /// ipckit's `Client::send`, messages per second over its blocks.
    pub ipckit_msgs_per_sec: Option<f64>,
    /// The hand-written loop's messages per second over its blocks.
    pub baseline_msgs_per_sec: Option<f64>,
    /// ipckit's rate over the hand-written one in each round (a block of each), the
    /// median of the rounds: a stall of the disk in one block, as another process's
    /// flush, moves it less than it moves the ratio of the totals.
    pub ratio: Option<f64>,
    /// ipckit's messages/s over the hand-written loop's, both over all their blocks.
    pub total_ratio: Option<f64>,
    /// The lowest of the rounds' ratios: how far the disk's drift moved them.
    pub lowest_ratio: Option<f64>,
    /// The highest of the ratios of single rounds.
    pub highest_ratio: Option<f64>,
}

/// From the rename into `new/` to the receiver's handler. Serialised as is by
/// `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReceiveLatency {
    /// `"paused"` (the receiver sleeps before each message) or `"busy"` (back to back).
    pub case: &'static str,
    /// Time between renames, in nanoseconds.
    pub gap_ns: u64,
    /// `"ok"`, `"failed"` or `"unavailable"`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// Messages timed, after a tenth as many (at least 10) to warm up.
    pub messages: usize,
    /// Median, in nanoseconds.
    pub median_ns: Option<u64>,
    /// 99th percentile, in nanoseconds.
    pub p99_ns: Option<u64>,
}

/// Everything of the spool table.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SpoolReport {
    /// The filesystem the spools were on, as /proc/mounts names it.
    pub filesystem: String,
    /// The send rows.
    pub send: Vec<SendPoint>,
    /// The receive latency.
    pub latency: Vec<ReceiveLatency>,
}

impl SpoolReport {
    /// Whether there is nothing to show: spool was not chosen.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.latency.is_empty()
    }
}

/// Measures spool, when the options choose it, telling `progress` what it starts on
/// ([`STEPS`] steps); an empty report otherwise. The program must call
/// [`run_if_peer`](crate::peer::run_if_peer) first thing in `main`, as for
/// [`run`](crate::harness::run).
///
/// ```no_run
/// use ipckit_bench::harness;
/// let options = harness::Options {
///     transports: vec!["spool".into()],
///     quick: true,
///     ..Default::default()
/// };
/// let report = harness::run_spool(&options, &mut |step| eprintln!("{step}"))?;
/// print!("{}", harness::spool_table(&report));
/// # Ok::<(), String>(())
/// ```
pub fn run_spool(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<SpoolReport, String> {
    let chosen = check(options)?;
    if !chosen.iter().any(|t| t.scheme() == "spool") {
        return Ok(SpoolReport::default());
    }
    pin_to(0);
    let dir = crate::harness::scratch_dir("spool");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut report = SpoolReport {
        filesystem: filesystem_of(&dir),
        ..SpoolReport::default()
    };
    let (blocks, sync_block, unsynced_block) = if options.quick {
        (
            QUICK_BLOCKS,
            Duration::from_millis(250),
            Duration::from_millis(80),
        )
    } else {
        (
            BLOCKS,
            Duration::from_millis(150),
            Duration::from_millis(75),
        )
    };
    for size in SIZES {
        for sync in [true, false] {
            progress(&format!(
                "spool: {size}-byte sends, sync={sync}, ipckit and by hand in turn"
            ));
            let block = if sync { sync_block } else { unsynced_block };
            report
                .send
                .push(send_point(&dir, size, sync, blocks, block));
        }
    }
    let samples = match (options.latency_samples, options.quick) {
        (0, true) => 300,
        (0, false) => 1_000,
        (n, _) => n,
    };
    for (case, gap) in LATENCY_CASES {
        progress(&format!("spool: rename to handler, {case}"));
        report
            .latency
            .push(receive_latency(&dir, case, gap, samples));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The endpoint of `transport` the other tables measure, in `dir`: its scratch endpoint,
/// except that a spool's sends skip the fsyncs there (`?sync=false`), since on a disk
/// each costs milliseconds, which would stretch those tables' thousands of messages
/// into an hour; this table measures them.
///
/// ```
/// let spool = ipckit::transport::find("spool").unwrap();
/// let at = ipckit_bench::spool::bench_endpoint(spool, &std::env::temp_dir(), "doc");
/// assert!(at.to_string().ends_with("?sync=false"), "{at}");
/// ```
pub fn bench_endpoint(
    transport: &dyn ipckit::transport::Transport,
    dir: &Path,
    name: &str,
) -> ipckit::Endpoint {
    let mut endpoint = transport.scratch_endpoint(dir, name);
    if transport.scheme() == "spool" {
        endpoint
            .set_option("sync", "false")
            .expect("spool takes ?sync=");
    }
    endpoint
}

/// Who sends in a block.
#[derive(Clone, Copy, PartialEq)]
enum Contender {
    Ipckit,
    ByHand,
}

/// Messages sent and the time they took, ipckit's and the hand-written loop's (indexed
/// by [`Contender`]).
type Totals = [(u64, Duration); 2];

/// One send row: ipckit and the hand-written loop in `blocks` blocks each of `block`
/// (or [`BLOCK_BYTES`]), taking turns, each into a spool of its own.
fn send_point(dir: &Path, size: usize, sync: bool, blocks: usize, block: Duration) -> SendPoint {
    let mut point = SendPoint {
        size,
        sync,
        status: "ok",
        reason: None,
        blocks,
        ipckit_messages: 0,
        baseline_messages: 0,
        ipckit_msgs_per_sec: None,
        baseline_msgs_per_sec: None,
        ratio: None,
        total_ratio: None,
        lowest_ratio: None,
        highest_ratio: None,
    };
    let ours_at = dir.join(format!("send-{size}-{sync}.spool"));
    let hand_at = dir.join(format!("raw-{size}-{sync}"));
    let outcome = (|| -> Result<(Totals, Vec<f64>), Failure> {
        let url = format!("spool://{}?sync={sync}", ours_at.display());
        let client = ipckit::connect(url.as_str()).map_err(unavailable)?;
        let mut raw = RawSpool::create(&hand_at).map_err(unavailable)?;
        let payload = vec![7u8; size];
        let failed = |what: &str, e: &dyn std::fmt::Display| Failure {
            status: "failed",
            reason: format!("{what}: {e}"),
        };
        let mut send = |who: Contender| match who {
            Contender::Ipckit => client.send(&payload).map_err(|e| failed("ipckit", &e)),
            Contender::ByHand => raw.send(&payload, sync).map_err(|e| failed("by hand", &e)),
        };
        let empty = |who: Contender| {
            let new = match who {
                Contender::Ipckit => ours_at.join("new"),
                Contender::ByHand => hand_at.join("new"),
            };
            empty_dir(&new).map_err(|e| failed("emptying new/", &e))
        };
        for who in [Contender::Ipckit, Contender::ByHand] {
            for _ in 0..WARM_UP {
                send(who)?;
            }
            empty(who)?;
        }
        let most = (BLOCK_BYTES / size).max(1) as u64;
        let mut totals = [(0u64, Duration::ZERO); 2];
        let mut ratios = Vec::with_capacity(blocks);
        for round in 0..blocks {
            let mut rates = [0.0; 2];
            for turn in 0..2 {
                // A B, then B A: neither always goes first after the other's clean-up.
                let who = if (round + turn) % 2 == 0 {
                    Contender::Ipckit
                } else {
                    Contender::ByHand
                };
                let start = Instant::now();
                let mut sent = 0u64;
                while sent < most && start.elapsed() < block {
                    send(who)?;
                    sent += 1;
                }
                let took = start.elapsed();
                let total = &mut totals[who as usize];
                total.0 += sent;
                total.1 += took;
                rates[who as usize] = sent as f64 / took.as_secs_f64().max(1e-9);
                empty(who)?;
            }
            ratios.push(rates[0] / rates[1].max(1e-9));
        }
        Ok((totals, ratios))
    })();
    let _ = std::fs::remove_dir_all(&ours_at);
    let _ = std::fs::remove_dir_all(&hand_at);
    match outcome {
        Ok(([(ours, ours_took), (hand, hand_took)], mut ratios)) => {
            let ours_rate = ours as f64 / ours_took.as_secs_f64().max(1e-9);
            let hand_rate = hand as f64 / hand_took.as_secs_f64().max(1e-9);
            point.ipckit_messages = ours;
            point.baseline_messages = hand;
            point.ipckit_msgs_per_sec = Some(ours_rate);
            point.baseline_msgs_per_sec = Some(hand_rate);
            point.total_ratio = Some(ours_rate / hand_rate);
            ratios.sort_by(f64::total_cmp);
            point.ratio = ratios.get(ratios.len() / 2).copied();
            point.lowest_ratio = ratios.first().copied();
            point.highest_ratio = ratios.last().copied();
        }
        Err(f) => {
            point.status = f.status;
            point.reason = Some(f.reason);
        }
    }
    point
}

/// Messages `gap` apart, renamed into `new/` by hand, to an ipckit receiver process:
/// from the clock read before each rename to the receiver's handler.
fn receive_latency(
    dir: &Path,
    case: &'static str,
    gap: Duration,
    samples: usize,
) -> ReceiveLatency {
    let mut point = ReceiveLatency {
        case,
        gap_ns: gap.as_nanos() as u64,
        status: "ok",
        reason: None,
        messages: samples,
        median_ns: None,
        p99_ns: None,
    };
    let warm_up = (samples / 10).max(10);
    let at = dir.join(format!("latency-{case}.spool"));
    let outcome = (|| -> Result<Vec<u64>, Failure> {
        let mut receiver = Peer::start("spool-receiver", &format!("spool://{}", at.display()))
            .map_err(unavailable)?;
        let mut writer = RawSpool::open(&at).map_err(unavailable)?;
        let start = Instant::now();
        for n in 0..(warm_up + samples) as u64 {
            // Waited out spinning, so that the writer's own wake-up is not measured.
            let due = start + gap * (n as u32 + 1);
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            let file = writer
                .write(&sample(n, 0))
                .map_err(|e| broke(&mut receiver, "writing", e))?;
            // The stamp goes in last, just before the rename: the time to the handler
            // starts there.
            file.write_all_at(&now_ns().to_le_bytes(), 8)
                .and_then(|()| writer.publish())
                .map_err(|e| broke(&mut receiver, "publishing", e))?;
        }
        writer
            .write(&sample(u64::MAX, 0))
            .and_then(|_| writer.publish())
            .map_err(|e| broke(&mut receiver, "publishing the end", e))?;
        let watchdog = Watchdog::over(std::slice::from_ref(&receiver));
        let line = receiver
            .line()
            .map_err(|e| broke(&mut receiver, "the receiver's times", e))?;
        let Some(times) = line.strip_prefix("took ") else {
            let said = if watchdog.fired() {
                "it had not the last message within its patience, and was stopped".to_owned()
            } else {
                format!("it said {line:?}; {}", receiver.last_words())
            };
            return Err(broke(&mut receiver, "the receiver's times", said));
        };
        Ok(times
            .split(',')
            .skip(warm_up)
            .filter_map(|t| t.parse().ok())
            .collect())
    })();
    let _ = std::fs::remove_dir_all(&at);
    match outcome {
        Ok(mut took) if !took.is_empty() => {
            took.sort_unstable();
            point.messages = took.len();
            point.median_ns = Some(took[took.len() / 2]);
            point.p99_ns = Some(took[(took.len() * 99 / 100).min(took.len() - 1)]);
        }
        Ok(_) => {
            point.status = "failed";
            point.reason = Some("no message reached the receiver".into());
        }
        Err(f) => {
            point.status = f.status;
            point.reason = Some(f.reason);
        }
    }
    point
}

/// Plays the role `spool-receiver`; false for any other. It receives until the end,
/// then prints `took T0,T1,…`: for each message, by its number, the nanoseconds from its
/// stamp to its handler (empty where one never came).
pub(crate) fn peer(role: &str, address: &str) -> bool {
    if role != "spool-receiver" {
        return false;
    }
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let mut receiver = ipckit::listen(address).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", receiver.endpoint());
    let mut took: Vec<Option<u64>> = Vec::new();
    loop {
        let message = receiver.recv().unwrap_or_else(|e| panic!("{e}"));
        let now = now_ns();
        let n = sequence(message.payload());
        if n == u64::MAX {
            break;
        }
        let n = n as usize;
        if took.len() <= n {
            took.resize(n + 1, None);
        }
        took[n] = Some(now.saturating_sub(stamp(message.payload())));
    }
    let line: Vec<String> = took
        .iter()
        .map(|t| t.map(|t| t.to_string()).unwrap_or_default())
        .collect();
    println!("took {}", line.join(","));
    true
}

/// The filesystem `path` is on, from /proc/mounts (the mount point that holds it,
/// deepest first): `"ext4 (/dev/vda on /)"`.
///
/// ```
/// let fs = ipckit_bench::spool::filesystem_of(&std::env::temp_dir());
/// assert!(fs.contains(" on /"), "{fs}");
/// ```
pub fn filesystem_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    // /proc/mounts writes a space in a path as \040, a tab as \011 and so on.
    let unescape = |field: &str| {
        let mut out = String::new();
        let mut rest = field;
        while let Some(at) = rest.find('\\') {
            out.push_str(&rest[..at]);
            match u8::from_str_radix(rest.get(at + 1..at + 4).unwrap_or(""), 8) {
                Ok(byte) => {
                    out.push(byte as char);
                    rest = &rest[at + 4..];
                }
                Err(_) => {
                    out.push('\\');
                    rest = &rest[at + 1..];
                }
            }
        }
        out.push_str(rest);
        PathBuf::from(out)
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            let point = unescape(point);
            path.starts_with(&point)
                .then(|| (point.components().count(), device, point, kind))
        })
        // The last of the deepest: a later mount on the same point hides the earlier.
        .max_by_key(|m| m.0)
        .map_or_else(
            || "an unknown filesystem".to_owned(),
            |(_, device, point, kind)| format!("{kind} ({device} on {})", point.display()),
        )
}
