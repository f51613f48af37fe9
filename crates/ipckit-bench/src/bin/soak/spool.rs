//! The soak of a durable queue with competing receivers (spool): writers and receivers
//! SIGKILLed at random, about 1,000 kills in a run whatever its length, and the queue's
//! promises checked from what each process printed and from what its directories hold.
//!
//! A writer prints `sent SEQ` only once `send` returned Ok: from then the message is the
//! queue's, and must be received at least once. A receiver (`?ack=done`) prints
//! `got SENDER INCARNATION SEQ DELIVERIES` before it drops the message, which is the
//! acknowledgement: one killed between the two leaves the message to be delivered again.
//! At the end the writers and receivers stop, and one receiver with `?ack=recv` drains
//! what is left. The rules checked:
//!
//! - lost: a `sent` message never received;
//! - torn: a received message that does not decode whole;
//! - dup (broken): a repeat not explained by the at-least-once promise. A receiver holds
//!   one claim at a time and prints before it acknowledges, so every delivery of a
//!   message but its last must be the last line of a receiver that was killed, and the
//!   deliveries of one message must carry distinct `deliveries()` numbers. Hence repeats
//!   never outnumber receiver kills;
//! - each receiver kill lets at most one claim go, so the sum over messages of
//!   (highest `deliveries()` − 1) must not exceed the receiver kills either;
//! - wrong: a message received that no writer wrote as far as the writers said (only the
//!   one a killed writer had in hand may arrive unconfirmed: its sequence number follows
//!   the writer's last `sent`), and any error a peer printed;
//! - leftover: anything in `new/`, `cur/`, `bad/` or `dead/` once the draining receiver
//!   is done; in `tmp/`, a file that the sweep's rule should have removed when the
//!   draining receiver started (its sender's process gone and the file ten seconds old:
//!   younger ones of killed writers wait for a later sweep, and are counted apart), an inbox in
//!   `clients/` (every writer is gone, the killed ones seen dead by a receiver), a
//!   `receivers/` file once every receiver is gone. `?max_deliveries=` is raised above
//!   the run's kills so that kills alone can never send a message to `dead/`.
//!
//! Order is not checked: with receivers competing, a message a killed receiver held comes
//! back behind later ones, as documented.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipckit::transport::Transport;

use super::{Dice, Peer, Tally, build, decode, fnv, stop_on_stdin_close};

const WRITERS: u32 = 3;
const RECEIVERS: u32 = 3;
/// Kills in a run, whatever its length; fewer where a kill every [`QUICKEST`] would not
/// fit them.
const KILLS: u32 = 1000;
const QUICKEST: Duration = Duration::from_millis(20);
/// Above any run's receiver kills: a message reaches `dead/` only if something other
/// than a kill keeps it from being acknowledged.
const MAX_DELIVERIES: u32 = 10 * KILLS;
/// A writer's pause between messages.
const PACE: Duration = Duration::from_millis(1);
/// Body sizes, mostly small, up to a few hundred KiB.
const SIZES: [usize; 16] = [
    0, 1, 17, 200, 1000, 4000, 5000, 16_384, 0, 100, 4096, 65_536, 1, 200, 8000, 300_000,
];
/// How long the draining receiver runs at least: a second for its look at the clients'
/// locks, and a margin.
const DRAIN_AT_LEAST: Duration = Duration::from_millis(1500);
const DRAIN_AT_MOST: Duration = Duration::from_secs(60);

/// Writes numbered, checksummed messages until stdin closes, printing `sent SEQ` after
/// each `send` that returned Ok, or `error MESSAGE`.
pub fn write(url: &str, writer: u32, incarnation: u32) {
    let stop = stop_on_stdin_close();
    let mut out = std::io::stdout().lock();
    // A spool client needs no receiver: connecting fails only when something is wrong.
    let client = match ipckit::connect(url) {
        Ok(client) => client,
        Err(e) => {
            let _ = writeln!(out, "error connecting: {e}");
            let _ = out.flush();
            return;
        }
    };
    let max = client.max_message();
    for seq in 0u64.. {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let body = SIZES[(seq as usize * 7 + writer as usize) % SIZES.len()].min(max - 28);
        match client.send(&build(writer, incarnation, seq, body)) {
            Ok(()) => {
                let _ = writeln!(out, "sent {seq}");
            }
            Err(e) => {
                let _ = writeln!(out, "error {e}");
                let _ = out.flush();
                break;
            }
        }
        let _ = out.flush();
        std::thread::sleep(PACE);
    }
}

/// Receives until stdin closes, printing `got SENDER INCARNATION SEQ DELIVERIES` or
/// `torn LEN` for each message before dropping it (with `?ack=done`, its acknowledgement).
pub fn receive(url: &str) {
    let stop = stop_on_stdin_close();
    let mut out = std::io::stdout().lock();
    let mut server = match ipckit::listen(url) {
        Ok(server) => server,
        Err(e) => {
            let _ = writeln!(out, "error {e}");
            return;
        }
    };
    while !stop.load(Ordering::Acquire) {
        let message = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(e) => {
                let _ = writeln!(out, "error {e}");
                break;
            }
        };
        let deliveries = message.deliveries().unwrap_or(0);
        let _ = match decode(message.payload()) {
            Some((s, i, q)) => writeln!(out, "got {s} {i} {q} {deliveries}"),
            None => writeln!(out, "torn {}", message.payload().len()),
        };
        let _ = out.flush();
        drop(message);
    }
}

pub fn soak(transport: &dyn Transport, dir: &Path, length: Duration) -> Tally {
    let mut tally = Tally::default();
    let endpoint = transport.scratch_endpoint(dir, "soak");
    let url = endpoint.to_string();
    let spool = match endpoint.address() {
        ipckit::endpoint::Address::Spool(path) => path.clone(),
        other => panic!("a competing-receivers soak knows only spool directories, not {other:?}"),
    };
    let receiving = format!("{url}?ack=done&max_deliveries={MAX_DELIVERIES}");
    let (lines, gathered) = mpsc::channel::<(String, String)>();
    let mut incarnation = 0u32;
    let mut start = |role: &str, number: u32, url: &str| {
        incarnation += 1;
        let args = vec![url.to_owned(), number.to_string(), incarnation.to_string()];
        let tag = format!("{} {number} {incarnation}", &role[6..7]);
        (Peer::start(role, &args, lines.clone(), tag.clone()), tag)
    };
    let (mut receivers, mut receiver_tags): (Vec<Peer>, Vec<String>) = (0..RECEIVERS)
        .map(|r| start("spool-receiver", r, &receiving))
        .unzip();
    let (mut writers, mut writer_tags): (Vec<Peer>, Vec<String>) =
        (0..WRITERS).map(|w| start("spool-writer", w, &url)).unzip();
    let mut killed = HashSet::new();
    let mut dice = Dice(0x2545_F491_4F6C_DD1D ^ std::process::id() as u64 ^ fnv(url.as_bytes()));
    let every = (length / KILLS).max(QUICKEST);
    let began = Instant::now();
    let until = began + length;
    loop {
        // Kill k falls anywhere in the k-th interval: restarts delay no kill.
        let kills = tally.kills_of_senders + tally.kills_of_receivers;
        let jitter = Duration::from_micros(dice.roll(every.as_micros() as u64 + 1));
        let at = began + every * kills + jitter;
        if at >= until {
            break;
        }
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        if dice.roll(2) == 0 {
            let victim = dice.roll(WRITERS.into()) as usize;
            writers[victim].kill();
            killed.insert(writer_tags[victim].clone());
            (writers[victim], writer_tags[victim]) = start("spool-writer", victim as u32, &url);
            tally.kills_of_senders += 1;
        } else {
            let victim = dice.roll(RECEIVERS.into()) as usize;
            receivers[victim].kill();
            killed.insert(receiver_tags[victim].clone());
            (receivers[victim], receiver_tags[victim]) =
                start("spool-receiver", victim as u32, &receiving);
            tally.kills_of_receivers += 1;
        }
    }
    for peer in writers.iter_mut().chain(&mut receivers) {
        if !peer.stop(Duration::from_secs(10)) {
            tally.hung += 1;
        }
    }
    // One receiver, acknowledging as it receives, takes what is left.
    let drain_url = format!("{url}?max_deliveries={MAX_DELIVERIES}");
    let (mut drainer, _) = start("spool-drainer", 0, &drain_url);
    let drain_began = Instant::now();
    let empty = |area: &str| names_in(&spool.join(area)).is_empty();
    while Instant::now() < drain_began + DRAIN_AT_LEAST || !(empty("new") && empty("cur")) {
        if Instant::now() > drain_began + DRAIN_AT_MOST {
            println!("          the draining receiver did not empty new/ and cur/");
            tally.hung += 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !drainer.stop(Duration::from_secs(10)) {
        tally.hung += 1;
    }
    let mut awaiting_sweep = 0;
    for area in ["new", "cur", "tmp", "bad", "dead", "clients", "receivers"] {
        for name in names_in(&spool.join(area)) {
            let path = spool.join(area).join(&name);
            if area == "tmp" && young_and_of_the_dead(&path, &name, drain_began) {
                awaiting_sweep += 1;
                continue;
            }
            tally.leftover.push(path.display().to_string());
        }
    }
    if awaiting_sweep > 0 {
        println!(
            "          tmp/ holds {awaiting_sweep} half-written file(s) of killed writers, under ten seconds old when the draining receiver swept: the next sweep's"
        );
    }
    drop(lines);
    let checked = check(gathered.iter(), &killed, &mut tally);
    println!(
        "          {WRITERS} writers, {RECEIVERS} receivers (ack=done), \
         max_deliveries={MAX_DELIVERIES}: repeats {} ≤ receiver kills {}, each the last \
         message of a killed receiver; deliveries above the first {}; \
         unconfirmed {} ≤ writer kills {}; highest delivery {}",
        tally.redelivered,
        tally.kills_of_receivers,
        checked.claims_let_go,
        tally.unconfirmed,
        tally.kills_of_senders,
        checked.highest_delivery
    );
    if checked.claims_let_go > tally.kills_of_receivers as usize {
        println!("          more claims let go than receivers killed");
        tally.duplicated += checked.claims_let_go - tally.kills_of_receivers as usize;
    }
    let _ = transport.destroy(&endpoint);
    tally
}

/// Whether the `tmp/` file `name` is one the sweep at `swept` was right to leave: its
/// sender (the pid its name gives) no longer runs, and it was under ten seconds old then.
fn young_and_of_the_dead(path: &Path, name: &str, swept: Instant) -> bool {
    let pid = name
        .split(['.', ','])
        .nth(2)
        .and_then(|pid| pid.parse::<i32>().ok());
    let dead = pid.is_some_and(|pid| {
        rustix::process::Pid::from_raw(pid)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_err())
    });
    let young = std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(10) + swept.elapsed());
    dead && young
}

/// The names in a directory; none if it is not there.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What [`check`] found beyond the tally's columns.
#[derive(Debug, Default)]
struct Checked {
    /// The sum over messages of (highest delivery − 1): the claims receivers let go.
    claims_let_go: usize,
    highest_delivery: u32,
}

/// One received message: the receiver that printed it, the line's place in that
/// receiver's output, and which delivery it was.
struct Delivery {
    receiver: String,
    line: usize,
    deliveries: u32,
}

/// Reads every line the peers printed (tagged `w N INC`, `r N INC`, or `d 0 INC` for the
/// drainer) and counts what the module docs list; `killed` holds the tags of the killed.
fn check(
    gathered: impl Iterator<Item = (String, String)>,
    killed: &HashSet<String>,
    tally: &mut Tally,
) -> Checked {
    let mut sent: HashSet<(u32, u32, u64)> = HashSet::new();
    // Each writer incarnation's last confirmed seq, and whether it was killed.
    let mut last_sent: HashMap<u32, u64> = HashMap::new();
    let mut received: HashMap<(u32, u32, u64), Vec<Delivery>> = HashMap::new();
    let mut lines_of: HashMap<String, usize> = HashMap::new();
    for (tag, line) in gathered {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let numbers: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
        let tagged: Vec<u32> = tag
            .split(' ')
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        let at = lines_of.entry(tag.clone()).or_default();
        *at += 1;
        match (tag.as_bytes()[0], kind, numbers.as_slice()) {
            (b'w', Some("sent"), &[seq]) => {
                sent.insert((tagged[0], tagged[1], seq));
                last_sent.insert(tagged[1], seq);
            }
            (b'r' | b'd', Some("got"), &[s, i, q, d]) => {
                received
                    .entry((s as u32, i as u32, q))
                    .or_default()
                    .push(Delivery {
                        receiver: tag.clone(),
                        line: *at,
                        deliveries: d as u32,
                    });
            }
            (b'r' | b'd', Some("torn"), _) => tally.torn += 1,
            _ => {
                println!("          {tag}: {line}");
                tally.wrong += 1;
            }
        }
    }
    let mut checked = Checked::default();
    for (&(writer, incarnation, seq), deliveries) in &received {
        if !sent.contains(&(writer, incarnation, seq)) {
            // Only the message a killed writer had in hand: the one after its last `sent`.
            let in_hand = last_sent.get(&incarnation).map_or(0, |last| last + 1);
            let was_killed = killed.contains(&format!("w {writer} {incarnation}"));
            if was_killed && seq == in_hand {
                tally.unconfirmed += 1;
            } else {
                println!("          received {writer} {incarnation} {seq}, never written");
                tally.wrong += 1;
            }
        }
        let highest = deliveries.iter().map(|d| d.deliveries).max().unwrap_or(0);
        checked.highest_delivery = checked.highest_delivery.max(highest);
        checked.claims_let_go += highest.saturating_sub(1) as usize;
        let numbers: HashSet<u32> = deliveries.iter().map(|d| d.deliveries).collect();
        let explained = deliveries
            .iter()
            .filter(|d| d.deliveries != highest)
            .filter(|d| killed.contains(&d.receiver) && lines_of[&d.receiver] == d.line)
            .count();
        let repeats = deliveries.len() - 1;
        tally.redelivered += repeats;
        if numbers.len() != deliveries.len() || explained != repeats {
            let mut numbered: Vec<u32> = deliveries.iter().map(|d| d.deliveries).collect();
            numbered.sort();
            println!(
                "          {writer} {incarnation} {seq} delivered {} times, as deliveries \
                 {numbered:?}; {explained} of the repeats the last message of a killed receiver",
                deliveries.len()
            );
            tally.duplicated += (repeats - explained).max(1);
        }
    }
    tally.sent = sent.len();
    tally.received = received.len();
    tally.lost = sent.iter().filter(|k| !received.contains_key(k)).count();
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(of: &[(&str, &str)]) -> Vec<(String, String)> {
        of.iter()
            .map(|(tag, line)| (tag.to_string(), line.to_string()))
            .collect()
    }

    #[test]
    fn a_repeat_of_a_killed_receivers_last_message_keeps_the_promise() {
        let killed = HashSet::from(["r 0 1".to_owned(), "w 0 2".to_owned()]);
        let mut tally = Tally::default();
        let checked = check(
            lines(&[
                ("w 0 2", "sent 0"),
                ("w 0 2", "sent 1"),
                ("r 0 1", "got 0 2 0 1"),
                ("r 0 1", "got 0 2 1 1"),
                ("r 1 3", "got 0 2 1 2"),
                // The one the killed writer had in hand.
                ("d 0 4", "got 0 2 2 1"),
            ])
            .into_iter(),
            &killed,
            &mut tally,
        );
        assert!(!tally.broken(), "{tally:?}");
        assert_eq!((tally.redelivered, tally.unconfirmed), (1, 1));
        assert_eq!((checked.claims_let_go, checked.highest_delivery), (1, 2));
    }

    #[test]
    fn loss_tearing_and_unexplained_repeats_are_counted() {
        let killed = HashSet::from(["r 0 1".to_owned()]);
        let mut tally = Tally::default();
        check(
            lines(&[
                ("w 0 2", "sent 0"),
                ("w 0 2", "sent 1"),
                ("w 0 2", "sent 2"),
                ("w 0 2", "sent 3"),
                // Repeated, but not the killed receiver's last line.
                ("r 0 1", "got 0 2 0 1"),
                ("r 0 1", "got 0 2 1 1"),
                ("r 1 3", "got 0 2 0 2"),
                // Repeated by a receiver that was not killed.
                ("r 1 3", "got 0 2 3 1"),
                ("d 0 4", "got 0 2 3 2"),
                // Two deliveries with one number: a claim handed out twice.
                ("d 0 4", "got 0 2 1 1"),
                ("d 0 4", "torn 12"),
                // Never written: the writer was not killed.
                ("d 0 4", "got 0 2 4 1"),
            ])
            .into_iter(),
            &killed,
            &mut tally,
        );
        assert_eq!(
            (tally.lost, tally.torn, tally.wrong, tally.duplicated > 0),
            (1, 1, 1, true),
            "{tally:?}"
        );
        assert!(tally.broken());
    }
}
