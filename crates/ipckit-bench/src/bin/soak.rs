//! A soak you can re-run: for every transport, sending processes with checksummed,
//! numbered messages, and receivers and senders killed with SIGKILL at random and
//! restarted, for a bounded time. It prints, per transport, what was checked and every
//! broken promise (lost, duplicated, torn, reordered, wrongly answered, left behind), and
//! exits 1 if there was one. `scripts/soak.sh` runs it.
//!
//! ```sh
//! cargo run --release -p ipckit-bench --bin soak -- --seconds 60 [--transports uds,shm]
//! ```
//!
//! A broadcast transport (events) is soaked as one: writers and listeners killed at random,
//! about 1,000 kills in a run whatever its length (one at most every 20 ms), every
//! listener checking each event whole and each writer's events in order; at the end a
//! marker that every live listener must hear (none is stuck), and no segment left once
//! all are gone. Events a listener missed for falling behind are counted apart
//! ("unconf"), as the transport promises to say how many rather than keep them.
//!
//! A durable queue with competing receivers (spool) is soaked as one too: writers and
//! `?ack=done` receivers killed about 1,000 times a run, every message a writer confirmed
//! received at least once, every repeat explained by a receiver killed between reporting
//! a message and acknowledging it ("again", not broken; "dup" counts those that are not),
//! and the spool's directories empty at the end (`soak/spool.rs`).
//!
//! What counts as lost: a request whose reply came back but that the receiver never
//! reported (the receiver reports a message before answering it). One-way messages that
//! were sent but never received are counted apart ("unconfirmed"): a receiver killed
//! holding them loses them on every transport, as documented; they are not a broken
//! promise.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ipckit::transport::Transport;

const ROLE: &str = "IPCKIT_SOAK_ROLE";
const SENDERS: u32 = 4;
/// A sender's pause between messages, so that a minute's soak is a few hundred thousand
/// messages, not a flood no one can check.
const PACE: Duration = Duration::from_micros(500);
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Sent by the soak itself at the end, so that the receiver reclaims what killed clients
/// left (it looks when a client it does not know asks).
const LAST_CALL: &[u8] = b"last call";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match std::env::var(ROLE).as_deref() {
        Ok("receiver") => receive(&args[1]),
        Ok("sender") => send(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap()),
        Ok("writer") => {
            broadcast::write(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap())
        }
        Ok("listener") => broadcast::listen(&args[1]),
        Ok("spool-writer") => {
            spool::write(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap())
        }
        Ok("spool-receiver" | "spool-drainer") => spool::receive(&args[1]),
        _ => std::process::exit(drive(&args[1..])),
    }
}

// ---- the message ----

/// sender, incarnation, seq, body length, body, then an FNV-1a checksum of all before it.
fn encode(sender: u32, incarnation: u32, seq: u64, max: usize) -> Vec<u8> {
    let sizes = [0, 1, 17, 200, 1000, 4000, 5000, 70_000];
    let body_len = sizes[(seq as usize * 7 + sender as usize) % sizes.len()].min(max - 28);
    build(sender, incarnation, seq, body_len)
}

fn build(sender: u32, incarnation: u32, seq: u64, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + body_len);
    out.extend_from_slice(&sender.to_le_bytes());
    out.extend_from_slice(&incarnation.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    let mut x = seq ^ ((sender as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    out.extend((0..body_len).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    let sum = fnv(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// (sender, incarnation, seq) if the message is whole and its checksum holds.
fn decode(message: &[u8]) -> Option<(u32, u32, u64)> {
    if message.len() < 28 {
        return None;
    }
    let (body, sum) = message.split_at(message.len() - 8);
    let word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
    let len = word(16) as usize;
    if body.len() != 20 + len || fnv(body) != u64::from_le_bytes(sum.try_into().unwrap()) {
        return None;
    }
    let seq = u64::from_le_bytes(body[8..16].try_into().unwrap());
    let (sender, incarnation) = (word(0), word(4));
    (build(sender, incarnation, seq, len) == message).then_some((sender, incarnation, seq))
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Ends the process's loop when its stdin closes: the soak's way to stop it gracefully.
fn stop_on_stdin_close() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, Ordering::Release);
    });
    stop
}

// ---- the peers ----

fn receive(url: &str) {
    let mut server = loop {
        match ipckit::listen(url) {
            Ok(server) => break server,
            // A killed receiver's port may linger a moment.
            Err(ipckit::Error::AddrInUse { .. }) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    let stopper = server.stopper();
    let stop = stop_on_stdin_close();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        stopper.stop();
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", server.endpoint()).unwrap();
    out.flush().unwrap();
    loop {
        let mut message = match server.recv() {
            Ok(message) => message,
            Err(ipckit::Error::Stopped { .. }) => return,
            Err(e) => {
                writeln!(out, "error {e}").unwrap();
                continue;
            }
        };
        let payload = message.payload();
        if payload != LAST_CALL {
            match decode(payload) {
                Some((s, i, q)) => writeln!(out, "got {s} {i} {q}").unwrap(),
                None => writeln!(out, "torn {}", payload.len()).unwrap(),
            }
            // Reported before it is answered: an answered request was reported.
            out.flush().unwrap();
        }
        if message.wants_reply() {
            let payload = payload.to_vec();
            let _ = message.reply(&payload);
        }
    }
}

fn send(url: &str, sender: u32, incarnation: u32) {
    let stop = stop_on_stdin_close();
    let mut out = std::io::stdout().lock();
    let connect = || loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        match ipckit::connect(url) {
            Ok(client) => return Some(client),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let Some(mut client) = connect() else { return };
    let max = client.max_message();
    for seq in 0.. {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let message = encode(sender, incarnation, seq, max);
        let outcome = if seq % 2 == 0 {
            match client.request(&message, REPLY_TIMEOUT) {
                Ok(reply) if reply == message => "acked",
                Ok(_) => "wrong",
                Err(_) => "failed",
            }
        } else {
            match client.send(&message) {
                Ok(()) => "sent",
                Err(_) => "failed",
            }
        };
        writeln!(out, "{outcome} {seq}").unwrap();
        out.flush().unwrap();
        if outcome == "failed" {
            drop(client);
            let Some(again) = connect() else { return };
            client = again;
        }
        std::thread::sleep(PACE);
    }
}

#[path = "soak/broadcast.rs"]
mod broadcast;
#[path = "soak/spool.rs"]
mod spool;

// ---- the driver ----

/// A peer process and the lines it printed, gathered by a thread.
pub(crate) struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Peer {
    pub(crate) fn start(
        role: &str,
        args: &[String],
        lines: mpsc::Sender<(String, String)>,
        tag: String,
    ) -> Peer {
        let mut child = Command::new(std::env::current_exe().expect("this program"))
            .env(ROLE, role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a peer");
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send((tag.clone(), line)).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Peer { child, stdin }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin and waits up to `patience` for it to end; false if it did not.
    pub(crate) fn stop(&mut self, patience: Duration) -> bool {
        drop(self.stdin.take());
        let until = Instant::now() + patience;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }
}

#[derive(Debug, Default)]
pub(crate) struct Tally {
    kills_of_senders: u32,
    kills_of_receivers: u32,
    acked: usize,
    sent: usize,
    received: usize,
    lost: usize,
    unconfirmed: usize,
    duplicated: usize,
    /// Deliveries again within an at-least-once promise: not broken, counted.
    redelivered: usize,
    torn: usize,
    reordered: usize,
    wrong: usize,
    hung: usize,
    leftover: Vec<String>,
}

impl Tally {
    fn broken(&self) -> bool {
        self.lost + self.duplicated + self.torn + self.reordered + self.wrong + self.hung > 0
            || !self.leftover.is_empty()
    }
}

/// A small xorshift: the soak's schedule need not be cryptographic, only varied.
pub(crate) struct Dice(u64);

impl Dice {
    pub(crate) fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn drive(args: &[String]) -> i32 {
    let mut seconds = 10u64;
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--transports" => {
                only = it
                    .next()
                    .expect("--transports a,b")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            other => panic!("unknown argument {other}; see the module docs"),
        }
    }
    let dir = std::env::temp_dir().join(format!("ipckit-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let mut broken = false;
    println!(
        "{:<9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>5} {:>6} {:>5} {:>5} {:>5} {:>5} {:>5} {:>4} {:>8}",
        "transport",
        "kill-s",
        "kill-r",
        "acked",
        "sent",
        "received",
        "lost",
        "unconf",
        "dup",
        "again",
        "torn",
        "order",
        "wrong",
        "hung",
        "leftover"
    );
    for transport in ipckit::transport::all() {
        if !only.is_empty() && !only.iter().any(|t| t == transport.scheme()) {
            continue;
        }
        let length = Duration::from_secs(seconds);
        let endpoint = transport.scratch_endpoint(&dir, "soak");
        let caps = transport.capabilities(&endpoint);
        let tally = if caps.broadcast {
            broadcast::soak(*transport, &dir, length)
        } else if caps.competing_receivers && caps.durable {
            spool::soak(*transport, &dir, length)
        } else {
            soak(*transport, &dir, length)
        };
        broken |= tally.broken();
        println!(
            "{:<9} {:>6} {:>6} {:>8} {:>8} {:>8} {:>5} {:>6} {:>5} {:>5} {:>5} {:>5} {:>5} {:>4} {:>8}",
            transport.scheme(),
            tally.kills_of_senders,
            tally.kills_of_receivers,
            tally.acked,
            tally.sent,
            tally.received,
            tally.lost,
            tally.unconfirmed,
            tally.duplicated,
            tally.redelivered,
            tally.torn,
            tally.reordered,
            tally.wrong,
            tally.hung,
            tally.leftover.len()
        );
        for left in &tally.leftover {
            println!("          left behind: {left}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if broken {
        println!(
            "a promise was broken: see the columns lost, dup, torn, order, wrong, hung, leftover"
        );
        1
    } else {
        println!("no promise broken");
        0
    }
}

fn soak(transport: &dyn Transport, dir: &Path, length: Duration) -> Tally {
    let mut tally = Tally::default();
    let endpoint = transport.scratch_endpoint(dir, "soak");
    let caps = transport.capabilities(&endpoint);
    let (lines, gathered) = mpsc::channel::<(String, String)>();
    let receiver_args = |url: &str| vec![url.to_owned()];
    let mut receiver = Peer::start(
        "receiver",
        &receiver_args(&endpoint.to_string()),
        lines.clone(),
        "r 0".into(),
    );
    // The real address (a port the kernel chose), which restarted receivers reuse.
    let url = loop {
        let (tag, line) = gathered
            .recv_timeout(Duration::from_secs(10))
            .expect("the receiver starts");
        if let ("r 0", Some(url)) = (tag.as_str(), line.strip_prefix("ready ")) {
            break url.to_owned();
        }
    };
    let incarnations = Arc::new(Mutex::new(0u32));
    let start_sender = |sender: u32| {
        let mut next = incarnations.lock().unwrap();
        *next += 1;
        let args = vec![url.clone(), sender.to_string(), next.to_string()];
        Peer::start("sender", &args, lines.clone(), format!("s {sender} {next}"))
    };
    let mut senders: Vec<Peer> = (0..SENDERS).map(start_sender).collect();
    let mut dice = Dice(0x2545_F491_4F6C_DD1D ^ std::process::id() as u64 ^ fnv(url.as_bytes()));
    let until = Instant::now() + length;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50 + dice.roll(250)));
        if dice.roll(10) < 7 {
            let victim = dice.roll(SENDERS as u64) as usize;
            senders[victim].kill();
            senders[victim] = start_sender(victim as u32);
            tally.kills_of_senders += 1;
        } else {
            receiver.kill();
            receiver = Peer::start(
                "receiver",
                &receiver_args(&url),
                lines.clone(),
                format!("r {}", tally.kills_of_receivers + 1),
            );
            tally.kills_of_receivers += 1;
        }
    }
    for sender in &mut senders {
        if !sender.stop(Duration::from_secs(5)) {
            tally.hung += 1;
        }
    }
    // Past the receiver's reclaim interval, a client it does not know asks: it then
    // removes what the killed clients left.
    std::thread::sleep(Duration::from_millis(1200));
    if let Ok(client) = ipckit::connect(url.as_str()) {
        let _ = client.request(LAST_CALL, Duration::from_secs(2));
    }
    if !receiver.stop(Duration::from_secs(5)) {
        tally.hung += 1;
    }
    drop(lines);
    count(&mut tally, gathered, caps.ordered);
    if let Ok(endpoint) = url.parse::<ipckit::Endpoint>() {
        // A queue is durable by design; what else it leaves is counted.
        let _ = transport.destroy(&endpoint);
    }
    tally.leftover = leftovers(dir, &url);
    tally
}

/// Reads every line the peers printed and counts what was checked and what broke.
fn count(tally: &mut Tally, gathered: mpsc::Receiver<(String, String)>, ordered: bool) {
    let mut received: HashMap<(u32, u32, u64), usize> = HashMap::new();
    // Per receiver and sender: the lines of a killed receiver may be read after those of
    // the next, so order is checked within one receiver's life.
    let mut last_seq: HashMap<(String, u32, u32), u64> = HashMap::new();
    let mut acked = HashSet::new();
    let mut sent = HashSet::new();
    for (tag, line) in gathered.iter() {
        let mut words = line.split_whitespace();
        let from_receiver = tag.starts_with("r ");
        match (tag.as_str(), words.next()) {
            (_, Some("got")) if from_receiver => {
                let n: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
                let key = (n[0] as u32, n[1] as u32, n[2]);
                *received.entry(key).or_default() += 1;
                let stream = (tag.clone(), key.0, key.1);
                if let Some(&last) = last_seq.get(&stream) {
                    if ordered && key.2 <= last {
                        tally.reordered += 1;
                    }
                }
                last_seq.insert(stream, key.2);
            }
            (_, Some("torn")) if from_receiver => tally.torn += 1,
            (sender, Some(outcome)) if sender.starts_with("s ") => {
                let n: Vec<u32> = sender[2..]
                    .split(' ')
                    .filter_map(|w| w.parse().ok())
                    .collect();
                let seq: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let key = (n[0], n[1], seq);
                match outcome {
                    "acked" => {
                        acked.insert(key);
                    }
                    "sent" => {
                        sent.insert(key);
                    }
                    "wrong" => tally.wrong += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    tally.acked = acked.len();
    tally.sent = sent.len();
    tally.received = received.len();
    tally.duplicated = received.values().filter(|&&n| n > 1).count();
    tally.lost = acked.iter().filter(|k| !received.contains_key(k)).count();
    tally.unconfirmed = sent.iter().filter(|k| !received.contains_key(k)).count();
}

/// The last part of an endpoint's URL, without its options: what names the segments and
/// queues it makes.
fn endpoint_name(url: &str) -> &str {
    let last = url.rsplit('/').next().unwrap_or_default();
    last.split('?').next().unwrap_or_default()
}

/// What the soak's endpoint left behind: files in its directory, and segments or queues
/// named after it.
fn leftovers(dir: &Path, url: &str) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    let name = endpoint_name(url);
    if name.starts_with("ipckit-") {
        for shared in ["/dev/shm", "/dev/mqueue"] {
            left.extend(
                std::fs::read_dir(shared)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| PathBuf::from(shared).join(e.file_name()))
                    .filter(|p| p.to_string_lossy().contains(name))
                    .map(|p| p.display().to_string()),
            );
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_and_any_damage_is_seen() {
        for seq in 0..16 {
            let message = encode(3, 2, seq, 8192);
            assert_eq!(decode(&message), Some((3, 2, seq)));
            for at in [0, 5, 12, 20, message.len() / 2, message.len() - 1] {
                let mut torn = message.clone();
                torn[at] ^= 0x40;
                assert_eq!(decode(&torn), None, "a flipped byte at {at} of {seq}");
            }
            assert_eq!(decode(&message[..message.len() - 1]), None);
            assert_eq!(decode(&[message.as_slice(), b"x"].concat()), None);
        }
    }

    #[test]
    fn broken_promises_are_counted() {
        let (lines, gathered) = mpsc::channel();
        for (tag, line) in [
            ("s 0 1", "acked 0"),
            ("s 0 1", "acked 2"),
            ("s 0 1", "sent 1"),
            ("r 0", "got 0 1 0"),
            ("r 0", "got 0 1 1"),
            ("r 0", "got 0 1 1"),
            ("r 0", "got 0 1 0"),
            ("r 0", "torn 12"),
            ("s 0 1", "wrong 4"),
        ] {
            lines.send((tag.to_owned(), line.to_owned())).unwrap();
        }
        drop(lines);
        let mut tally = Tally::default();
        count(&mut tally, gathered, true);
        assert_eq!(
            (
                tally.lost,
                tally.duplicated,
                tally.reordered,
                tally.torn,
                tally.wrong
            ),
            (1, 2, 2, 1, 1)
        );
        assert!(tally.broken());
    }
}
