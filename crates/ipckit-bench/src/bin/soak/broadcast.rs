//! The soak of a broadcast transport: writers and listeners, on one name, SIGKILLed at
//! random and restarted. A listener checks every event itself (whole: [`decode`]; each
//! writer incarnation's numbers rising) and prints only what broke and how far it got.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipckit::transport::Transport;

use super::{Dice, Peer, Tally, build, decode, encode, endpoint_name, fnv, stop_on_stdin_close};

const WRITERS: u32 = 3;
const LISTENERS: u32 = 3;
/// Kills in a run, whatever its length, as the issue asks; fewer where a kill every
/// [`QUICKEST`] would not fit them.
const KILLS: u32 = 1000;
const QUICKEST: Duration = Duration::from_millis(20);
/// A writer's pause between events: thousands a second from each, not a flood that the
/// listeners' checks cannot follow on a shared machine.
const PACE: Duration = Duration::from_micros(300);
/// The sender number of the marker the soak writes at the end.
const MARKER: u32 = u32::MAX;
/// How often a writer says how many it wrote, and a listener how many it heard.
const REPORT_EVERY: u64 = 100;

/// Writes events, numbered and checksummed, until stdin closes.
pub fn write(url: &str, writer: u32, incarnation: u32) {
    let stop = stop_on_stdin_close();
    let client = loop {
        match ipckit::connect(url) {
            Ok(client) => break client,
            Err(_) if !stop.load(Ordering::Acquire) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return,
        }
    };
    let max = client.max_message().min(8192);
    let mut out = std::io::stdout().lock();
    for seq in 0.. {
        if stop.load(Ordering::Acquire) {
            break;
        }
        if let Err(e) = client.send(&encode(writer, incarnation, seq, max)) {
            let _ = writeln!(out, "error {e}");
            break;
        }
        if seq % REPORT_EVERY == 0 {
            let _ = writeln!(out, "sent {seq}");
            let _ = out.flush();
        }
        std::thread::sleep(PACE);
    }
}

/// Listens until stdin closes, printing `ready`, `heard N` now and then, `lost C`,
/// `torn LEN`, `order`, `marker`, or `error MESSAGE`.
pub fn listen(url: &str) {
    let stop = stop_on_stdin_close();
    let mut out = std::io::stdout().lock();
    let mut server = match ipckit::listen(url) {
        Ok(server) => server,
        Err(e) => {
            let _ = writeln!(out, "error {e}");
            return;
        }
    };
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    let mut last: HashMap<(u32, u32), u64> = HashMap::new();
    let mut heard = 0u64;
    while !stop.load(Ordering::Acquire) {
        let event = match server.recv_event_timeout(Duration::from_millis(100)) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(e) => {
                let _ = writeln!(out, "error {e}");
                break;
            }
        };
        let line = match event {
            ipckit::Event::Lost { count } => format!("lost {count}"),
            ipckit::Event::Message(message) => match decode(message.payload()) {
                None => format!("torn {}", message.payload().len()),
                Some((MARKER, _, _)) => "marker".to_owned(),
                Some((writer, incarnation, seq)) => {
                    heard += 1;
                    let rose = last
                        .insert((writer, incarnation), seq)
                        .is_none_or(|before| seq > before);
                    match (rose, heard % REPORT_EVERY) {
                        (false, _) => format!("order {writer} {incarnation} {seq}"),
                        (true, 0) => format!("heard {heard}"),
                        _ => continue,
                    }
                }
            },
            _ => continue,
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

pub fn soak(transport: &dyn Transport, dir: &Path, length: Duration) -> Tally {
    let mut tally = Tally::default();
    let url = transport.scratch_endpoint(dir, "soak").to_string();
    let (lines, gathered) = mpsc::channel::<(String, String)>();
    let mut incarnation = 0u32;
    let mut start = |role: &str, number: u32| {
        incarnation += 1;
        let args = vec![url.clone(), number.to_string(), incarnation.to_string()];
        let tag = format!("{} {number} {incarnation}", &role[..1]);
        (Peer::start(role, &args, lines.clone(), tag.clone()), tag)
    };
    let (mut listeners, mut listening): (Vec<Peer>, Vec<String>) =
        (0..LISTENERS).map(|l| start("listener", l)).unzip();
    let mut writers: Vec<Peer> = (0..WRITERS).map(|w| start("writer", w).0).collect();
    let mut dice = Dice(0x2545_F491_4F6C_DD1D ^ std::process::id() as u64 ^ fnv(url.as_bytes()));
    let mut seen = Seen::default();
    let every = (length / KILLS).max(QUICKEST);
    let began = Instant::now();
    let until = began + length;
    loop {
        // Kill k falls in the k-th interval of the run, anywhere within it: a schedule of
        // times rather than of pauses, so that restarting a process delays no kill.
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
            writers[victim] = start("writer", victim as u32).0;
            tally.kills_of_senders += 1;
        } else {
            let victim = dice.roll(LISTENERS.into()) as usize;
            listeners[victim].kill();
            (listeners[victim], listening[victim]) = start("listener", victim as u32);
            tally.kills_of_receivers += 1;
        }
        seen.take(&gathered, &mut tally);
    }
    for writer in &mut writers {
        if !writer.stop(Duration::from_secs(5)) {
            tally.hung += 1;
        }
    }
    // Every live listener hears one more event: none is stuck behind what the killed
    // ones left. (A listener started just now is ready first.)
    let ready_by = Instant::now() + Duration::from_secs(5);
    while !listening.iter().all(|tag| seen.ready.contains(tag)) && Instant::now() < ready_by {
        std::thread::sleep(Duration::from_millis(10));
        seen.take(&gathered, &mut tally);
    }
    match ipckit::connect(url.as_str()) {
        Ok(client) => {
            if let Err(e) = client.send(&build(MARKER, 0, 0, 0)) {
                println!("          the marker was not written: {e}");
                tally.hung += LISTENERS as usize;
            }
        }
        Err(e) => {
            println!("          no writer could open the name at the end: {e}");
            tally.hung += LISTENERS as usize;
        }
    }
    let heard_by = Instant::now() + Duration::from_secs(5);
    let stuck = |seen: &Seen| {
        listening
            .iter()
            .filter(|tag| !seen.markers.contains(*tag))
            .count()
    };
    while stuck(&seen) > 0 && Instant::now() < heard_by {
        std::thread::sleep(Duration::from_millis(10));
        seen.take(&gathered, &mut tally);
    }
    tally.hung += stuck(&seen);
    for listener in &mut listeners {
        if !listener.stop(Duration::from_secs(5)) {
            tally.hung += 1;
        }
    }
    drop(lines);
    seen.take(&gathered, &mut tally);
    tally.received = seen.heard as usize;
    tally.sent = seen.sent as usize;
    // Every party gone: the segment went with the last of them.
    let name = endpoint_name(&url);
    tally.leftover = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| !name.is_empty() && f.ends_with(&format!(".{name}")))
        .map(|f| format!("/dev/shm/{f}"))
        .collect();
    if let Ok(endpoint) = url.parse::<ipckit::Endpoint>() {
        let _ = transport.destroy(&endpoint);
    }
    tally
}

/// What the peers said so far.
#[derive(Default)]
struct Seen {
    ready: HashSet<String>,
    markers: HashSet<String>,
    heard: u64,
    sent: u64,
    /// The last `heard N` and `sent N` of each peer, whose sum is what all of them did.
    counts: HashMap<String, u64>,
}

impl Seen {
    fn take(&mut self, gathered: &mpsc::Receiver<(String, String)>, tally: &mut Tally) {
        while let Ok((tag, line)) = gathered.try_recv() {
            let mut words = line.split(' ');
            let number = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
            match words.next() {
                Some("ready") => {
                    self.ready.insert(tag);
                }
                Some("marker") => {
                    self.markers.insert(tag);
                }
                Some("lost") => tally.unconfirmed += number(words.next()) as usize,
                Some("torn") => tally.torn += 1,
                Some("order") => tally.reordered += 1,
                Some("heard") => {
                    let now = number(words.next());
                    let before = self.counts.insert(tag, now).unwrap_or(0);
                    self.heard += now - before;
                }
                Some("sent") => {
                    let now = number(words.next());
                    let before = self.counts.insert(tag, now).unwrap_or(0);
                    self.sent += now - before;
                }
                Some("error") => {
                    println!("          {tag}: {line}");
                    tally.wrong += 1;
                }
                _ => {}
            }
        }
    }
}
