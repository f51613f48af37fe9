//! One writer's events reaching every listener: `connect` gives a writer, `listen` a
//! listener, and every listener receives every event written after it joined, in the
//! order of the one stream, filtered by its level, told how many it lost when it fell
//! behind, never given a torn one. For every transport whose capabilities say
//! `broadcast`; writers and listeners are peer processes, the check only reads what they
//! print.
//!
//! The peers' side is here too ([`play`]), under [`Role::Writer`] and
//! [`Role::Listener`]. What they agree on: writer `W`'s events are [`numbered`] as from
//! client `W`, in order from 0, so that a listener verifies each one whole; the number
//! [`END`] ends a writer's stream. A writer takes commands on stdin (see [`writer`]) and
//! answers each with one line. A listener prints `ready URL` (and, one told to wait,
//! `reading` once told `read`), then a line per item of its
//! stream, `ev W N SEQ LEVEL PID`, `lost COUNT` or `torn LEN`, and `done lost L` (its
//! `lost()`) once it has seen `ends` writers end.

use std::collections::HashMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use ipckit::transport::{Capabilities, Transport};
use ipckit::{Event, Level};
use libtest_mimic::Failed;

use crate::api;
use crate::peer::{Role, say};
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, ensure, numbered, parse_numbered,
};

pub const CHECKS: &[Check] = checks![in broadcast:
    broadcast => every_listener_receives_every_event_in_order,
    broadcast => one_writer_is_one_numbered_stream,
    broadcast => a_late_listener_receives_only_what_follows,
    broadcast => a_slow_listener_is_told_what_it_lost,
    broadcast => a_lapped_listener_at_a_level_is_told_all_it_lost,
    broadcast => a_listener_receives_its_levels_only,
    broadcast => is_enabled_follows_the_listeners,
    broadcast => a_killed_listener_leaves_the_others_receiving,
    broadcast => a_killed_writer_leaves_the_others_receiving,
    broadcast => overflow_block_loses_nothing_and_the_writer_waits,
    broadcast => a_killed_listener_releases_a_blocked_writer,
];

pub fn broadcast(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.broadcast
}

/// The number of the event that ends a writer's stream.
pub const END: u32 = u32::MAX;
/// The small ring of the checks of overflow: 4 KiB, events of at most 1000 bytes.
const SMALL_RING: &str = "4096";

/// The size of writer's event `n`: small and large, some wrapping the ring's end.
fn size_of(n: u32, max: usize) -> usize {
    const SIZES: [usize; 7] = [12, 13, 64, 200, 1000, 3000, 40];
    SIZES[n as usize % SIZES.len()].min(max)
}

/// The level of event `n` when a writer cycles through them: every level in turn.
fn level_of(n: u32) -> Level {
    Level::ALL[n as usize % Level::ALL.len()]
}

// ---------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------

fn every_listener_receives_every_event_in_order(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 300;
    let url = ctx.endpoint("all").to_string();
    let mut listeners = start_listeners(&url, 3, 2)?;
    let mut writers = [Writer::start(&url, 1)?, Writer::start(&url, 2)?];
    // Both at once: their events interleave in the ring.
    for writer in &mut writers {
        writer.tell(&format!("send {COUNT}"))?;
    }
    for writer in &mut writers {
        writer.answer("ok")?;
        writer.ask("end", "ok")?;
    }
    let pids: HashMap<u32, u32> = writers.iter().map(|w| (w.number, w.child.pid())).collect();
    let mut orders = Vec::new();
    for listener in &mut listeners {
        let heard = Heard::read(listener)?;
        heard.consistent(&pids, Hears::Every)?;
        ensure!(
            heard.lost.is_empty(),
            "a listener lost events: {:?}",
            heard.lost
        );
        for writer in [1, 2] {
            let numbers: Vec<u32> = heard.events_of(writer).map(|e| e.n).collect();
            ensure!(
                numbers == (0..COUNT).chain([END]).collect::<Vec<_>>(),
                "a listener heard writer {writer}'s events {}",
                summary(&numbers)
            );
        }
        orders.push(
            heard
                .events
                .iter()
                .map(|e| (e.writer, e.n, e.seq))
                .collect::<Vec<_>>(),
        );
    }
    // One ring, one order: every listener saw the same interleaving.
    ensure!(
        orders.windows(2).all(|pair| pair[0] == pair[1]),
        "the listeners saw the writers' events in different orders"
    );
    Ok(())
}

fn one_writer_is_one_numbered_stream(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 500;
    let url = ctx.endpoint("one").to_string();
    let mut listeners = start_listeners(&url, 3, 1)?;
    let mut writer = Writer::start(&url, 7)?;
    writer.ask(&format!("send {COUNT}"), "ok")?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(7, writer.child.pid())]);
    let mut firsts = Vec::new();
    for listener in &mut listeners {
        let heard = Heard::read(listener)?;
        heard.consistent(&pids, Hears::Every)?;
        let numbers: Vec<u32> = heard.events.iter().map(|e| e.n).collect();
        ensure!(
            numbers == (0..COUNT).chain([END]).collect::<Vec<_>>(),
            "a listener heard {}",
            summary(&numbers)
        );
        let seqs: Vec<u64> = heard.events.iter().map(|e| e.seq).collect();
        ensure!(
            seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "sequence numbers are not consecutive: {seqs:?}"
        );
        firsts.push(seqs[0]);
    }
    ensure!(
        firsts.windows(2).all(|pair| pair[0] == pair[1]),
        "the listeners number the same events differently: first {firsts:?}"
    );
    Ok(())
}

fn a_late_listener_receives_only_what_follows(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint("late").to_string();
    let mut early = Child::spawn(listener(1, false), &url);
    early.ready()?;
    let mut writer = Writer::start(&url, 3)?;
    writer.ask("send 100", "ok")?;
    // Joins once those hundred were written, before the next hundred begin.
    let mut late = Child::spawn(listener(1, false), &url);
    late.ready()?;
    writer.ask("send 100", "ok")?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(3, writer.child.pid())]);
    let heard = Heard::read(&mut early)?;
    heard.consistent(&pids, Hears::Every)?;
    ensure!(
        heard.events.len() == 201,
        "the early listener heard {}",
        heard.events.len()
    );
    let heard = Heard::read(&mut late)?;
    heard.consistent(&pids, Hears::Every)?;
    let numbers: Vec<u32> = heard.events.iter().map(|e| e.n).collect();
    ensure!(
        numbers == (100..200).chain([END]).collect::<Vec<_>>(),
        "the late listener heard {}",
        summary(&numbers)
    );
    Ok(())
}

fn a_slow_listener_is_told_what_it_lost(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 400;
    let url = ctx.endpoint_with("slow", "ring", SMALL_RING).to_string();
    let mut slow = Child::spawn(listener(1, true), &url);
    slow.ready()?;
    let mut keen = Child::spawn(listener(1, false), &url);
    keen.ready()?;
    let mut writer = Writer::start(&url, 4)?;
    // Far more than the ring holds, while the slow one reads nothing: the writer does not
    // wait for it.
    writer.ask(&format!("send {COUNT}"), "ok")?;
    slow.say("read")?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(4, writer.child.pid())]);
    let heard = Heard::read(&mut slow)?;
    heard.consistent(&pids, Hears::Every)?;
    let lost: u64 = heard.lost.iter().map(|&(_, count)| count).sum();
    ensure!(
        lost > 0,
        "a listener that read nothing while {COUNT} events passed lost none"
    );
    ensure!(
        lost + heard.events.len() as u64 == u64::from(COUNT) + 1,
        "the slow listener heard {} events and lost {lost}, of {} written",
        heard.events.len(),
        COUNT + 1
    );
    // What it heard after its loss is the newest, with the end last.
    ensure!(
        heard.events.last().is_some_and(|e| e.n == END),
        "the slow listener's stream did not end with the end"
    );
    let heard = Heard::read(&mut keen)?;
    heard.consistent(&pids, Hears::Every)?;
    let lost: u64 = heard.lost.iter().map(|&(_, count)| count).sum();
    ensure!(
        lost + heard.events.len() as u64 == u64::from(COUNT) + 1,
        "the reading listener heard {} events and lost {lost}, of {} written",
        heard.events.len(),
        COUNT + 1
    );
    Ok(())
}

/// A listener at warning lapped while the ring holds every level: its `Lost` counts the
/// events of every level that were overwritten, since it cannot know their levels, so
/// that what it heard, what it was told it lost and what it skipped (the events above
/// its level it read past) account for every sequence number.
fn a_lapped_listener_at_a_level_is_told_all_it_lost(ctx: &Ctx) -> Outcome {
    // The last of them verbose: a lapped listener resumes at the newest record, one it
    // skips.
    const COUNT: u32 = 402;
    debug_assert_eq!(level_of(COUNT - 1), Level::Verbose);
    let endpoint = ctx.endpoint_with("lapped-level", "ring", SMALL_RING);
    let url = endpoint.to_string();
    let mut slow = Child::spawn(listener(1, true), with_level(&endpoint, Level::Warning));
    slow.ready()?;
    // Hears everything, so that every event is written.
    let mut keen = Child::spawn(listener(1, false), &url);
    keen.ready()?;
    let mut writer = Writer::start(&url, 13)?;
    writer.ask(&format!("cycle {COUNT}"), "ok")?;
    // The slow one looks at the ring, finds itself lapped, and waits, before the end.
    slow.say("read")?;
    let line = slow.line()?;
    ensure!(line == "reading", "a waiting listener said {line:?}");
    slow.settled()?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(13, writer.child.pid())]);
    let written = Written(
        (0..COUNT)
            .map(|n| (n, level_of(n)))
            .chain([(END, Level::LogAlways)])
            .collect(),
    );
    let heard = Heard::read(&mut slow)?;
    heard.consistent(&pids, Hears::Only(Level::Warning, &written))?;
    ensure!(
        heard.events.last().is_some_and(|e| e.n == END) && !heard.lost.is_empty(),
        "a lapped listener at warning heard {:?} and lost {:?}",
        heard.events,
        heard.lost
    );
    let heard = Heard::read(&mut keen)?;
    heard.consistent(&pids, Hears::Every)?;
    Ok(())
}

fn a_listener_receives_its_levels_only(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 60;
    let endpoint = ctx.endpoint("levels");
    let url = endpoint.to_string();
    let warning = with_level(&endpoint, Level::Warning);
    let mut partial = Child::spawn(listener(1, false), &warning);
    partial.ready()?;
    let mut everything = Child::spawn(listener(1, false), &url);
    everything.ready()?;
    let mut writer = Writer::start(&url, 5)?;
    writer.ask(&format!("cycle {COUNT}"), "ok")?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(5, writer.child.pid())]);
    let heard = Heard::read(&mut everything)?;
    heard.consistent(&pids, Hears::Every)?;
    ensure!(
        heard.events.len() as u32 == COUNT + 1,
        "a verbose listener heard {}",
        heard.events.len()
    );
    for event in &heard.events {
        let sent = if event.n == END {
            Level::LogAlways
        } else {
            level_of(event.n)
        };
        ensure!(
            event.level == sent,
            "event {} was sent at {sent}, heard at {}",
            event.n,
            event.level
        );
    }
    // The verbose listener makes every event go: each took a sequence number.
    let written = Written(
        (0..COUNT)
            .map(|n| (n, level_of(n)))
            .chain([(END, Level::LogAlways)])
            .collect(),
    );
    let heard = Heard::read(&mut partial)?;
    heard.consistent(&pids, Hears::Only(Level::Warning, &written))?;
    let expected: Vec<u32> = (0..COUNT)
        .filter(|&n| Level::Warning.includes(level_of(n)))
        .chain([END])
        .collect();
    let numbers: Vec<u32> = heard.events.iter().map(|e| e.n).collect();
    ensure!(
        numbers == expected,
        "a listener at warning heard {} (expected {})",
        summary(&numbers),
        summary(&expected)
    );
    ensure!(
        heard.lost.is_empty(),
        "events above a listener's level were counted as lost"
    );
    Ok(())
}

fn is_enabled_follows_the_listeners(ctx: &Ctx) -> Outcome {
    let endpoint = ctx.endpoint("enabled");
    let mut writer = Writer::start(&endpoint.to_string(), 6)?;
    for level in Level::ALL {
        writer.ask(&format!("enabled {level}"), "enabled false")?;
    }
    let mut listener = Child::spawn(listener(1, false), with_level(&endpoint, Level::Warning));
    listener.ready()?;
    for level in Level::ALL {
        let expected = Level::Warning.includes(level);
        writer.ask(&format!("enabled {level}"), &format!("enabled {expected}"))?;
    }
    // Gone (cleanly): nobody listens again.
    writer.ask("end", "ok")?;
    let heard = Heard::read(&mut listener)?;
    ensure!(
        heard.events.len() == 1,
        "the listener heard {:?}",
        heard.events
    );
    listener.finish()?;
    writer.ask("enabled warning", "enabled false")
}

fn a_killed_listener_leaves_the_others_receiving(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 200;
    let endpoint = ctx.endpoint("killed-listener");
    let url = endpoint.to_string();
    // The victim alone enables error; the survivors enable critical (and always).
    let mut victim = Child::spawn(listener(1, false), with_level(&endpoint, Level::Error));
    victim.ready()?;
    let mut survivors = Vec::new();
    for _ in 0..2 {
        let mut survivor = Child::spawn(listener(1, false), with_level(&endpoint, Level::Critical));
        survivor.ready()?;
        survivors.push(survivor);
    }
    let mut writer = Writer::start(&url, 8)?;
    writer.ask(&format!("cycle {COUNT}"), "ok")?;
    // Killed after it has heard some.
    victim.line()?;
    victim.kill();
    // Its level no longer counts once it is reaped, which needs no send (the survivors,
    // waiting, reap it).
    let deadline = Instant::now() + PATIENCE;
    loop {
        writer.tell("enabled error")?;
        if writer.answer("enabled")? == "enabled false" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "a killed listener's level still counts after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.ask("enabled critical", "enabled true")?;
    writer.ask(&format!("cycle {COUNT}"), "ok")?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(8, writer.child.pid())]);
    // What went: at error and above while the victim lived, at critical and above once
    // it was reaped (nobody took the rest, so it was never written).
    let written = Written(
        (0..2 * COUNT)
            .map(|n| (n, level_of(n)))
            .filter(|&(n, level)| {
                let taken = if n < COUNT {
                    Level::Error
                } else {
                    Level::Critical
                };
                taken.includes(level)
            })
            .chain([(END, Level::LogAlways)])
            .collect(),
    );
    let expected: Vec<u32> = (0..2 * COUNT)
        .filter(|&n| Level::Critical.includes(level_of(n)))
        .chain([END])
        .collect();
    for survivor in &mut survivors {
        let heard = Heard::read(survivor)?;
        heard.consistent(&pids, Hears::Only(Level::Critical, &written))?;
        ensure!(
            heard.lost.is_empty(),
            "a listener beside a killed one lost {:?}",
            heard.lost
        );
        let numbers: Vec<u32> = heard.events.iter().map(|e| e.n).collect();
        ensure!(
            numbers == expected,
            "a listener beside a killed one heard {} (expected {})",
            summary(&numbers),
            summary(&expected)
        );
    }
    Ok(())
}

fn a_killed_writer_leaves_the_others_receiving(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 200;
    let url = ctx.endpoint("killed-writer").to_string();
    let mut listeners = start_listeners(&url, 2, 1)?;
    let mut victim = Writer::start(&url, 9)?;
    let mut survivor = Writer::start(&url, 10)?;
    victim.ask("send 50", "ok")?;
    victim.ask("flood", "flooding")?;
    // Killed mid-stream, perhaps mid-event or holding whatever writers take turns with.
    // (The listeners' lines are left for `Heard::read`: the first may be a loss.)
    std::thread::sleep(Duration::from_millis(20));
    victim.child.kill();
    // Caught up with whatever the victim left, before the survivor writes.
    for listener in &listeners {
        listener.settled()?;
    }
    survivor.ask(&format!("send {COUNT}"), "ok")?;
    survivor.ask("end", "ok")?;
    let pids = HashMap::from([(9, victim.child.pid()), (10, survivor.child.pid())]);
    for listener in &mut listeners {
        let heard = Heard::read(listener)?;
        heard.consistent(&pids, Hears::Every)?;
        let numbers: Vec<u32> = heard.events_of(10).map(|e| e.n).collect();
        ensure!(
            numbers == (0..COUNT).chain([END]).collect::<Vec<_>>(),
            "after a writer was killed, a listener heard the survivor's {}",
            summary(&numbers)
        );
        let first = heard
            .events
            .iter()
            .position(|e| e.writer == 10)
            .unwrap_or(0);
        ensure!(
            heard.lost.iter().all(|&(at, _)| at <= first),
            "a listener lost some of the survivor's events: {:?}",
            heard.lost
        );
    }
    Ok(())
}

fn overflow_block_loses_nothing_and_the_writer_waits(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 400;
    let mut endpoint = ctx.endpoint_with("block", "ring", SMALL_RING);
    endpoint.set_option("overflow", "block")?;
    let url = endpoint.to_string();
    let mut slow = Child::spawn(listener(1, true), &url);
    slow.ready()?;
    let mut writer = Writer::start(&url, 11)?;
    writer.tell(&format!("send {COUNT}"))?;
    // The writer waits for the listener that reads nothing: it sleeps with its sends
    // unfinished.
    writer.child.settled()?;
    ensure!(
        writer.child.lines.try_recv().is_err(),
        "the writer finished {COUNT} events into a 4 KiB ring nobody read"
    );
    slow.say("read")?;
    writer.answer("ok")?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(11, writer.child.pid())]);
    let heard = Heard::read(&mut slow)?;
    heard.consistent(&pids, Hears::Every)?;
    ensure!(
        heard.lost.is_empty(),
        "with overflow=block a listener lost {:?}",
        heard.lost
    );
    let numbers: Vec<u32> = heard.events.iter().map(|e| e.n).collect();
    ensure!(
        numbers == (0..COUNT).chain([END]).collect::<Vec<_>>(),
        "with overflow=block a listener heard {}",
        summary(&numbers)
    );
    Ok(())
}

fn a_killed_listener_releases_a_blocked_writer(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 400;
    let mut endpoint = ctx.endpoint_with("block-killed", "ring", SMALL_RING);
    endpoint.set_option("overflow", "block")?;
    let url = endpoint.to_string();
    let mut victim = Child::spawn(listener(1, true), &url);
    victim.ready()?;
    let mut keen = Child::spawn(listener(1, false), &url);
    keen.ready()?;
    let mut writer = Writer::start(&url, 12)?;
    writer.tell(&format!("send {COUNT}"))?;
    writer.child.settled()?;
    victim.kill();
    writer.answer("ok")?;
    writer.ask("end", "ok")?;
    let pids = HashMap::from([(12, writer.child.pid())]);
    let heard = Heard::read(&mut keen)?;
    heard.consistent(&pids, Hears::Every)?;
    ensure!(
        heard.lost.is_empty(),
        "with overflow=block a listener lost {:?}",
        heard.lost
    );
    ensure!(
        heard.events.len() as u32 == COUNT + 1,
        "the reading listener heard {}",
        heard.events.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The checks' side of the peers
// ---------------------------------------------------------------------------------------

fn listener(ends: u32, wait: bool) -> Role {
    Role::Listener { ends, wait }
}

fn start_listeners(url: &str, count: usize, ends: u32) -> Result<Vec<Child>, Failed> {
    let mut listeners: Vec<Child> = (0..count)
        .map(|_| Child::spawn(listener(ends, false), url))
        .collect();
    for listener in &mut listeners {
        listener.ready()?;
    }
    Ok(listeners)
}

fn with_level(endpoint: &ipckit::Endpoint, level: Level) -> String {
    let mut endpoint = endpoint.clone();
    endpoint
        .set_option("level", &level.to_string())
        .expect("events take ?level=");
    endpoint.to_string()
}

/// A writer process, told what to write line by line.
struct Writer {
    child: Child,
    number: u32,
}

impl Writer {
    fn start(url: &str, number: u32) -> Result<Writer, Failed> {
        let mut child = Child::spawn(Role::Writer { writer: number }, url);
        let line = child.line()?;
        ensure!(
            line == "connected",
            "a writer said {line:?}; its stderr:\n{}",
            child.stderr()
        );
        Ok(Writer { child, number })
    }

    fn tell(&mut self, command: &str) -> Outcome {
        self.child.say(command)
    }

    /// The writer's next line, which must begin with `expected`.
    fn answer(&mut self, expected: &str) -> Result<String, Failed> {
        let line = self.child.line()?;
        ensure!(
            line.starts_with(expected),
            "writer {} said {line:?} instead of {expected:?}; its stderr:\n{}",
            self.number,
            self.child.stderr()
        );
        Ok(line)
    }

    fn ask(&mut self, command: &str, expected: &str) -> Outcome {
        self.tell(command)?;
        let line = self.answer(expected)?;
        ensure!(
            line == expected,
            "writer {} answered {command:?} with {line:?}",
            self.number
        );
        Ok(())
    }
}

#[derive(Debug)]
struct Heard {
    events: Vec<Got>,
    /// Each loss: the index in `events` of the event it came before, and its count.
    lost: Vec<(usize, u64)>,
    /// What the listener's `lost()` said at the end.
    total_lost: u64,
}

#[derive(Debug)]
struct Got {
    writer: u32,
    n: u32,
    seq: u64,
    level: Level,
    pid: u32,
}

impl Heard {
    /// Reads a listener's lines until it is done.
    fn read(listener: &mut Child) -> Result<Heard, Failed> {
        let mut heard = Heard {
            events: Vec::new(),
            lost: Vec::new(),
            total_lost: 0,
        };
        loop {
            let line = listener.line()?;
            let words: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| -> Result<u64, Failed> {
                words
                    .get(i)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| format!("a listener said {line:?}").into())
            };
            match words[0] {
                "ev" => heard.events.push(Got {
                    writer: number(1)? as u32,
                    n: number(2)? as u32,
                    seq: number(3)?,
                    level: words
                        .get(4)
                        .and_then(|w| w.parse().ok())
                        .ok_or("no level")?,
                    pid: number(5)? as u32,
                }),
                "lost" => heard.lost.push((heard.events.len(), number(1)?)),
                // A waiting listener's answer to `read`.
                "reading" => {}
                "done" => {
                    heard.total_lost = number(2)?;
                    return Ok(heard);
                }
                _ => {
                    return Err(format!(
                        "a listener said {line:?}; its stderr:\n{}",
                        listener.stderr()
                    )
                    .into());
                }
            }
        }
    }

    fn events_of(&self, writer: u32) -> impl Iterator<Item = &Got> {
        self.events.iter().filter(move |e| e.writer == writer)
    }

    /// What holds of any listener's stream: each event from a writer it knows with that
    /// writer's pid; every writer's numbers rising; `lost()` the sum of the losses; and
    /// every sequence number accounted for, as `hears` says.
    fn consistent(&self, pids: &HashMap<u32, u32>, hears: Hears<'_>) -> Outcome {
        let mut last_n: HashMap<u32, u32> = HashMap::new();
        for event in &self.events {
            ensure!(
                pids.get(&event.writer) == Some(&event.pid),
                "event {}/{} says pid {}, its writer is {:?}",
                event.writer,
                event.n,
                event.pid,
                pids.get(&event.writer)
            );
            if let Some(&last) = last_n.get(&event.writer) {
                ensure!(
                    event.n > last,
                    "writer {}'s event {} came after its {last}",
                    event.writer,
                    event.n
                );
            }
            last_n.insert(event.writer, event.n);
        }
        match hears {
            Hears::Every => self.every_number_accounted_for()?,
            Hears::Only(level, written) => self.every_number_accounted_for_at(level, written)?,
        }
        let told: u64 = self.lost.iter().map(|&(_, count)| count).sum();
        ensure!(
            told == self.total_lost,
            "the listener was told of {told} lost events, its lost() says {}",
            self.total_lost
        );
        Ok(())
    }

    /// The losses told right before event `at`.
    fn lost_before(&self, at: usize) -> u64 {
        self.lost
            .iter()
            .filter(|&&(before, _)| before == at)
            .map(|&(_, count)| count)
            .sum()
    }

    /// A listener that hears every level: each sequence number after the first it heard
    /// is one it heard or one it was told it lost.
    fn every_number_accounted_for(&self) -> Outcome {
        for (at, pair) in self.events.windows(2).enumerate() {
            let (previous, event) = (pair[0].seq, &pair[1]);
            let gap = self.lost_before(at + 1);
            ensure!(
                event.seq == previous + 1 + gap,
                "event {}/{} has sequence {} after {previous} and a loss of {gap}",
                event.writer,
                event.n,
                event.seq
            );
        }
        Ok(())
    }

    /// A listener at `level`, there before `written` began: each sequence number is an
    /// event it heard, one it was told it lost, or one above its level it skipped. Which
    /// of those above its level it skipped and which it lost is not known from outside
    /// (a lapped listener loses events of every level), so between two events it heard
    /// the losses it was told may not exceed the numbers between them, and the rest, the
    /// skipped, must all be above its level.
    fn every_number_accounted_for_at(&self, level: Level, written: &Written) -> Outcome {
        let Some(first) = self.events.first() else {
            return Ok(());
        };
        let base = first.seq - written.index_of(first.n)? as u64;
        let mut next = 0usize;
        for (at, event) in self.events.iter().enumerate() {
            let index = written.index_of(event.n)?;
            ensure!(
                event.seq == base + index as u64,
                "event {} has sequence {}; written {index}th after sequence {base}",
                event.n,
                event.seq
            );
            ensure!(
                event.level == written.0[index].1 && level.includes(event.level),
                "event {} was written at {}, heard at {} by a listener at {level}",
                event.n,
                written.0[index].1,
                event.level
            );
            ensure!(
                index >= next,
                "event {} came again or out of order",
                event.n
            );
            let between = &written.0[next..index];
            let lost = self.lost_before(at);
            let above = between.iter().filter(|&&(_, l)| !level.includes(l)).count() as u64;
            ensure!(
                lost <= between.len() as u64 && between.len() as u64 - lost <= above,
                "before event {} a listener at {level} was told of {lost} lost, of {} events written since the last it heard, {above} of them above its level: {} unaccounted for",
                event.n,
                between.len(),
                (between.len() as u64).saturating_sub(lost + above)
            );
            next = index + 1;
        }
        Ok(())
    }
}

/// How a listener hears the stream.
enum Hears<'a> {
    /// Every level: its sequence numbers follow each other but for what it lost.
    Every,
    /// Those that a listener at this level takes, of what one writer wrote.
    Only(Level, &'a Written),
}

/// One writer's events that took a sequence number, in order, with their levels: what a
/// check knows of the stream when only that writer writes.
struct Written(Vec<(u32, Level)>);

impl Written {
    fn index_of(&self, n: u32) -> Result<usize, Failed> {
        self.0
            .iter()
            .position(|&(m, _)| m == n)
            .ok_or_else(|| format!("event {n} was heard, and never written").into())
    }
}

/// A list of numbers in short: runs as `a..=b`.
fn summary(numbers: &[u32]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut start = 0;
    for i in 1..=numbers.len() {
        if i == numbers.len() || numbers[i] != numbers[i - 1].wrapping_add(1) {
            runs.push(if start == i - 1 {
                numbers[start].to_string()
            } else {
                format!("{}..={}", numbers[start], numbers[i - 1])
            });
            start = i;
        }
    }
    format!("[{}]", runs.join(", "))
}

// ---------------------------------------------------------------------------------------
// The peers
// ---------------------------------------------------------------------------------------

/// Plays [`Role::Writer`] or [`Role::Listener`] on the endpoint `url`.
pub fn play(role: Role, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    match role {
        Role::Writer { writer: number } => writer(url, number),
        Role::Listener { ends, wait } => listen(url, ends, wait),
        other => Err(format!("{other:?} is no broadcast role").into()),
    }
}

/// Connects, prints `connected`, and does what each line of stdin says until it closes:
/// `send N` writes its next N events at the default level, `cycle N` its next N each at
/// the next level in turn, `end` its [`END`] at LogAlways (each answered `ok`); `flood`
/// answers `flooding` and writes until killed; `enabled LEVEL` answers `enabled
/// true|false`.
fn writer(url: &str, number: u32) -> Result<(), Box<dyn std::error::Error>> {
    let client = api::connect(url)?;
    let max = client.max_message();
    say("connected");
    let mut next = 0u32;
    let mut write = |cycle: bool| -> Result<(), ipckit::Error> {
        let event = numbered(number, next, size_of(next, max));
        let level = cycle.then(|| level_of(next));
        next += 1;
        match level {
            Some(level) => client.send_at(level, &event),
            None => client.send(&event),
        }
    };
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let (command, argument) = line.split_once(' ').unwrap_or((&line, ""));
        match command {
            "send" | "cycle" => {
                for _ in 0..argument.parse::<u32>()? {
                    write(command == "cycle")?;
                }
                say("ok");
            }
            "flood" => {
                say("flooding");
                loop {
                    write(false)?;
                }
            }
            "end" => {
                client.send_at(Level::LogAlways, &numbered(number, END, 12))?;
                say("ok");
            }
            "enabled" => say(&format!("enabled {}", client.is_enabled(argument.parse()?))),
            other => return Err(format!("unknown command {other:?}").into()),
        }
    }
    Ok(())
}

/// Listens, prints `ready URL`, waits for a line on stdin if `wait`, and prints what it
/// receives until `ends` writers ended.
fn listen(url: &str, ends: u32, wait: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut server = api::listen(url)?;
    say(&format!("ready {}", server.endpoint()));
    if wait {
        std::io::stdin().read_line(&mut String::new())?;
        say("reading");
    }
    let mut ended = 0;
    while ended < ends {
        match server.recv_event_timeout(PATIENCE)? {
            None => return Err(format!("nothing came within {PATIENCE:?}").into()),
            Some(Event::Lost { count }) => say(&format!("lost {count}")),
            Some(Event::Message(message)) => {
                let payload = message.payload();
                let Ok((writer, n)) = parse_numbered(payload) else {
                    say(&format!("torn {}", payload.len()));
                    continue;
                };
                let level = message.level().ok_or("an event without its level")?;
                let seq = message
                    .sequence()
                    .ok_or("an event without its sequence number")?;
                let pid = message
                    .peer()
                    .pid
                    .ok_or("an event without its writer's pid")?;
                say(&format!("ev {writer} {n} {seq} {level} {pid}"));
                if n == END {
                    ended += 1;
                }
            }
            Some(_) => {}
        }
    }
    say(&format!("done lost {}", server.lost()));
    Ok(())
}
