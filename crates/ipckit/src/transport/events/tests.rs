//! The events transport's own tests: the segment's life (open, reinitialise, last leaver
//! removes it, stale ones reclaimed), and parties killed with SIGKILL in processes of
//! their own (this test binary run again in a child role).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::segment;
use super::*;
use crate::transport::ring::broadcast::records::record_len;
use crate::{Event, Level};

/// Turns a hang into a failure; never a measure of speed.
const PATIENCE: Duration = Duration::from_secs(20);

const CHILD_ROLE: &str = "IPCKIT_EVENTS_CHILD";
const CHILD_URL: &str = "IPCKIT_EVENTS_URL";

/// A fresh endpoint, its segment removed when the test ends whatever happens.
struct Scratch(Endpoint);

impl Scratch {
    fn new(name: &str, query: &str) -> Scratch {
        let base = Events.scratch_endpoint(Path::new("/tmp"), name).to_string();
        Scratch(format!("{base}{query}").parse().unwrap())
    }

    fn url(&self) -> String {
        self.0.to_string()
    }

    fn path(&self) -> std::path::PathBuf {
        let Address::Events(name) = self.0.address() else {
            unreachable!()
        };
        crate::transport::ring::segment_file::path(&segment::posix_name(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path());
    }
}

/// The count of listeners at `level` in the segment's levels word.
fn listeners_at(writer: &EventsConnection, level: Level) -> u64 {
    let levels = writer
        .segment_for_tests()
        .header()
        .levels
        .load(Ordering::SeqCst);
    (levels >> (10 * level as u64)) & 0x3ff
}

fn event(listener: &mut EventsListener) -> Event {
    crate::transport::Listener::recv_event(listener, Some(Instant::now() + PATIENCE))
        .unwrap()
        .expect("an event within the patience")
}

fn message(listener: &mut EventsListener) -> crate::Message {
    crate::transport::Listener::recv(listener, Some(Instant::now() + PATIENCE))
        .unwrap()
        .expect("a message within the patience")
}

#[test]
fn a_listener_takes_its_levels_in_order_with_number_and_pid() {
    let s = Scratch::new("levels", "?level=warning");
    let mut listener = EventsListener::bind(&s.0).unwrap();
    let writer =
        EventsConnection::connect(&s.url().replace("?level=warning", "").parse().unwrap()).unwrap();
    assert!(writer.is_enabled(Level::Warning) && !writer.is_enabled(Level::Informational));
    writer.send(b"informational, skipped").unwrap();
    writer.send_at(Level::Error, b"one").unwrap();
    writer.send_at(Level::Verbose, b"skipped").unwrap();
    writer.send_at(Level::LogAlways, b"two").unwrap();
    let one = message(&mut listener);
    let two = message(&mut listener);
    assert_eq!(
        (one.payload(), one.level()),
        (&b"one"[..], Some(Level::Error))
    );
    assert_eq!(
        (two.payload(), two.level()),
        (&b"two"[..], Some(Level::LogAlways))
    );
    // Nothing nobody listened to was written, so the numbers follow each other.
    assert_eq!(two.sequence(), Some(one.sequence().unwrap() + 1));
    assert_eq!(one.peer().pid, Some(std::process::id()));
    assert!(writer.request(b"?", Duration::from_secs(1)).is_err());
    let too_big = vec![0u8; writer.max_message() + 1];
    assert!(matches!(
        writer.send_at(Level::Error, &too_big),
        Err(crate::Error::MessageTooLarge { .. })
    ));
}

#[test]
fn a_slow_listener_is_told_exactly_what_it_lost() {
    let s = Scratch::new("lost", "?ring=4096");
    let mut listener = EventsListener::bind(&s.0).unwrap();
    let writer = EventsConnection::connect(&s.0).unwrap();
    for i in 0u32..500 {
        writer.send(&i.to_le_bytes()).unwrap();
    }
    let Event::Lost { count } = event(&mut listener) else {
        panic!("no Lost first")
    };
    let newest = message(&mut listener);
    assert_eq!(newest.payload(), 499u32.to_le_bytes());
    assert_eq!(count, 499);
    assert_eq!(crate::transport::Listener::lost(&listener), 499);
}

#[test]
fn the_last_to_leave_removes_the_segment_and_a_stale_one_is_laid_out_afresh() {
    let s = Scratch::new("leave", "");
    let writer = EventsConnection::connect(&s.0).unwrap();
    let listener = EventsListener::bind(&s.0).unwrap();
    assert!(s.path().exists());
    drop(writer);
    assert!(s.path().exists(), "removed while a listener held it");
    drop(listener);
    assert!(!s.path().exists(), "left behind by the last to leave");

    // What a crash leaves: a segment nobody holds, its contents anything at all.
    std::fs::write(s.path(), vec![0xa5u8; 100_000]).unwrap();
    std::fs::set_permissions(
        s.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut listener = EventsListener::bind(&s.0).unwrap();
    let writer = EventsConnection::connect(&s.0).unwrap();
    writer.send(b"fresh").unwrap();
    assert_eq!(message(&mut listener).payload(), b"fresh");
}

#[test]
fn a_live_segment_of_another_shape_or_mode_is_refused_with_a_clear_error() {
    let s = Scratch::new("shape", "?ring=8192");
    let _writer = EventsConnection::connect(&s.0).unwrap();
    let other: Endpoint = s.url().replace("ring=8192", "ring=16384").parse().unwrap();
    let Err(e) = EventsListener::bind(&other) else {
        panic!("another ring size accepted")
    };
    assert!(e.to_string().contains("ring=8192"), "{e}");
    // No explicit size: the live segment's is taken.
    let plain: Endpoint = s.url().replace("?ring=8192", "").parse().unwrap();
    assert!(EventsListener::bind(&plain).is_ok());
    let wider: Endpoint = s
        .url()
        .replace("ring=8192", "ring=8192&mode=0660")
        .parse()
        .unwrap();
    drop(EventsListener::bind(&wider));
    std::fs::set_permissions(
        s.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let Err(e) = EventsListener::bind(&plain) else {
        panic!("a segment wider than its mode accepted")
    };
    assert!(e.to_string().contains("0666"), "{e}");
}

#[test]
fn a_segment_enlarged_by_someone_is_mapped_at_its_header_size_and_a_shrunk_one_refused() {
    let s = Scratch::new("enlarged", "?ring=8192");
    let writer = EventsConnection::connect(&s.0).unwrap();
    let total = writer.segment_for_tests().geometry().total() as u64;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path())
        .unwrap();
    // A gigabyte more, sparse: mapping the file's size would take it all.
    file.set_len(total + (1 << 30)).unwrap();
    let opened = segment::Segment::open(&s.0).unwrap();
    assert_eq!(opened.ring.mapping().len() as u64, total);
    drop(opened);
    file.set_len(total - 4096).unwrap();
    let Err(e) = segment::Segment::open(&s.0) else {
        panic!("a segment smaller than its header says was opened")
    };
    assert!(e.to_string().contains("needs"), "{e}");
    drop(writer);
}

#[test]
fn overflow_is_read_once_so_a_scribble_does_not_make_a_writer_block() {
    let s = Scratch::new("overflow-scribbled", "?ring=4096&send_timeout_ms=100");
    let _listener = EventsListener::bind(&s.0).unwrap();
    let writer = EventsConnection::connect(&s.0).unwrap();
    // The header's overflow word, after magic, version, listeners, capacity and writers.
    let at = std::mem::offset_of!(crate::transport::ring::broadcast::Header, overflow);
    std::os::unix::fs::FileExt::write_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(s.path())
            .unwrap(),
        &crate::transport::ring::broadcast::BLOCK.to_ne_bytes(),
        at as u64,
    )
    .unwrap();
    // Many rings' worth past a listener that reads nothing: a writer in drop mode never
    // waits, whatever the word says now.
    for i in 0u32..1000 {
        writer.send(&i.to_le_bytes()).unwrap();
    }
}

#[test]
fn names_and_sizes_that_cannot_be_are_refused_when_parsed() {
    for url in [
        "events://a/b",
        "events://..",
        "events://app?ring=5000",
        "events://app?ring=1024",
        "events://app?listeners=1024",
        "events://app?overflow=disconnect",
        "events://app?level=loud",
    ] {
        assert!(url.parse::<Endpoint>().is_err(), "{url} accepted");
    }
    let long = format!("events://{}", "n".repeat(300));
    assert!(long.parse::<Endpoint>().is_err());
    assert!("uds://@a?overflow=block".parse::<Endpoint>().is_err());
    let ep: Endpoint = "events://app?overflow=overwrite".parse().unwrap();
    assert_eq!(ep.overflow(), Overflow::Drop);
}

// ---------------------------------------------------------------------------------------
// Parties in processes of their own
// ---------------------------------------------------------------------------------------

/// A child process playing `role` on `url`, killed when dropped.
struct Child(std::process::Child);

impl Child {
    /// Starts it and waits until it says it is ready.
    fn start(role: &str, url: &str) -> Child {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "transport::events::tests::child", "--nocapture"])
            .env(CHILD_ROLE, role)
            .env(CHILD_URL, url)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let child = Child(process);
        rx.recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the {role} child never said it was ready"));
        child
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a child does, when the test binary runs as one.
#[test]
fn child() {
    let (Ok(role), Ok(url)) = (std::env::var(CHILD_ROLE), std::env::var(CHILD_URL)) else {
        return;
    };
    let endpoint: Endpoint = url.parse().unwrap();
    let ready = || println!("\nready");
    // Whatever the role holds, held until the process is killed.
    let mut _held: Vec<Box<dyn std::any::Any>> = Vec::new();
    match role.as_str() {
        "listener" => {
            _held.push(Box::new(EventsListener::bind(&endpoint).unwrap()));
            ready();
        }
        "writer-dying-mid-write" => {
            let writer = EventsConnection::connect(&endpoint).unwrap();
            let ring = writer.segment_for_tests();
            // What append does, up to the middle of a record: the lock taken, the room
            // reserved, half the bytes written, nothing published.
            ring.lock(
                writer.entry_for_tests(),
                std::time::Instant::now() + std::time::Duration::from_secs(20),
            )
            .unwrap();
            let c = &ring.header().control;
            let tail = c.tail.load(Ordering::Relaxed);
            c.tail_intent
                .store(tail + record_len(1000), Ordering::Relaxed);
            c.next_seq.fetch_add(1, Ordering::Relaxed);
            for at in (0..500).step_by(8) {
                ring.ring()
                    .word_for_tests(tail + at)
                    .store(u64::MAX, Ordering::Relaxed);
            }
            _held.push(Box::new(writer));
            ready();
        }
        "writer-flooding" => {
            let writer = EventsConnection::connect(&endpoint).unwrap();
            for i in 0u64.. {
                let _ = writer.send(&checksummed(i));
                if i == 100 {
                    ready();
                }
            }
        }
        other => panic!("no child role {other}"),
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// An event that says whether it arrived whole: its length and bytes follow from `i`.
fn checksummed(i: u64) -> Vec<u8> {
    let len = 8 + (i as usize * 37) % 300;
    let mut v: Vec<u8> = (0..len).map(|j| (i as usize ^ j) as u8).collect();
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn whole(payload: &[u8]) -> bool {
    payload.len() >= 8
        && payload == checksummed(u64::from_le_bytes(payload[..8].try_into().unwrap()))
}

#[test]
fn a_killed_listener_is_unregistered_and_its_level_no_longer_counts() {
    let s = Scratch::new("killed-listener", "?level=error");
    let child = Child::start("listener", &s.url());
    let writer = EventsConnection::connect(&s.0).unwrap();
    assert_eq!(listeners_at(&writer, Level::Error), 1);
    assert!(writer.is_enabled(Level::Error) && !writer.is_enabled(Level::Warning));
    child.kill();
    // Nobody else is there: the writer, which reaps as it writes (once a second), is the
    // only party that can notice; the count drops to 0.
    let deadline = Instant::now() + PATIENCE;
    while writer.is_enabled(Level::Error) {
        assert!(Instant::now() < deadline, "the dead listener still counts");
        writer.send_at(Level::Error, b"anyone?").unwrap();
    }
    assert_eq!(listeners_at(&writer, Level::Error), 0);
    assert_eq!(
        writer
            .segment_for_tests()
            .header()
            .levels
            .load(Ordering::SeqCst),
        0
    );
    // And its entry is free again: a table of one takes a new listener.
    let one = Scratch::new("killed-listener-table", "?listeners=1");
    let child = Child::start("listener", &one.url());
    child.kill();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match EventsListener::bind(&one.0) {
            Ok(_) => break,
            Err(crate::Error::Full { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_waiting_listener_reaps_a_killed_one_while_nobody_writes() {
    let s = Scratch::new("reaped-by-a-listener", "?level=critical");
    let mut waiting = EventsListener::bind(&s.0).unwrap();
    let child = Child::start("listener", &s.url().replace("critical", "error"));
    let writer =
        EventsConnection::connect(&s.url().replace("?level=critical", "").parse().unwrap())
            .unwrap();
    assert!(writer.is_enabled(Level::Error));
    child.kill();
    // The writer writes nothing: only the waiting listener can notice.
    let deadline = Instant::now() + PATIENCE;
    while writer.is_enabled(Level::Error) {
        assert!(Instant::now() < deadline, "the dead listener still counts");
        let nothing = crate::transport::Listener::recv(
            &mut waiting,
            Some(Instant::now() + Duration::from_millis(100)),
        );
        assert!(nothing.unwrap().is_none());
    }
    assert!(writer.is_enabled(Level::Critical));
}

#[test]
fn a_writer_killed_holding_the_lock_mid_write_stops_nobody() {
    let s = Scratch::new("killed-writer", "");
    let mut listener = EventsListener::bind(&s.0).unwrap();
    let writer = EventsConnection::connect(&s.0).unwrap();
    writer.send(b"before").unwrap();
    let child = Child::start("writer-dying-mid-write", &s.url());
    child.kill();
    // In a thread of its own, so that a lock never taken over fails the test, not hangs it.
    let (sent, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sent.send(writer.send(b"after"));
    });
    done.recv_timeout(PATIENCE)
        .expect("a dead writer's lock was never taken over")
        .unwrap();
    assert_eq!(message(&mut listener).payload(), b"before");
    let Event::Lost { count: 1 } = event(&mut listener) else {
        panic!("the dead writer's event was not counted lost")
    };
    assert_eq!(message(&mut listener).payload(), b"after");
}

#[test]
fn writers_killed_at_random_moments_deliver_nothing_torn_and_stop_nothing_sent_after() {
    const BATCH: u64 = 50;
    let s = Scratch::new("killed-writers", "?ring=65536");
    let mut listener = EventsListener::bind(&s.0).unwrap();
    let writer = EventsConnection::connect(&s.0).unwrap();
    // The sequence number the next event must have, once one is known.
    let mut expected: Option<u64> = None;
    let mut follows = |m: &crate::Message, lost: u64| {
        let seq = m.sequence().unwrap();
        if let Some(expected) = expected {
            assert_eq!(seq, expected + lost, "a sequence number unaccounted for");
        }
        expected = Some(seq + 1);
    };
    for round in 0..10u64 {
        let child = Child::start("writer-flooding", &s.url());
        std::thread::sleep(Duration::from_micros(round * 1500));
        child.kill();
        // Our own writer gets through whatever the child held when it died; what the
        // child wrote is whole, or counted lost.
        writer.send(b"marker").unwrap();
        let mut lost = 0;
        loop {
            match event(&mut listener) {
                Event::Lost { count } => lost += count,
                Event::Message(m) => {
                    follows(&m, lost);
                    lost = 0;
                    if m.payload() == b"marker" {
                        break;
                    }
                    assert!(
                        whole(m.payload()),
                        "a torn event of {} bytes",
                        m.payload().len()
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        // Every event sent after the kill arrives, whole, in order, none lost.
        for i in 0..BATCH {
            writer.send(&checksummed(round * BATCH + i)).unwrap();
        }
        for i in 0..BATCH {
            let Event::Message(m) = event(&mut listener) else {
                panic!("an event sent after a writer was killed was lost")
            };
            assert_eq!(m.payload(), checksummed(round * BATCH + i));
            follows(&m, 0);
        }
    }
}

#[test]
fn a_scribbled_tail_intent_that_nobody_mends_does_not_hang_a_listener() {
    let s = Scratch::new("intent-scribbled", "?ring=4096");
    let mut listener = EventsListener::bind(&s.0).unwrap();
    let writer = EventsConnection::connect(&s.0).unwrap();
    for i in 0u32..20 {
        writer.send(&i.to_le_bytes()).unwrap();
    }
    // Far past the tail, while the listener has records to read: every copy it makes
    // looks lapped, and resuming at the newest record does not change that. No writer
    // writes, so nobody mends it.
    let control = &writer.segment_for_tests().header().control;
    control.tail_intent.store(
        control.tail.load(Ordering::SeqCst) + (1 << 40),
        Ordering::SeqCst,
    );
    let (done, returned) = std::sync::mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let got = crate::transport::Listener::recv_event(
            &mut listener,
            Some(Instant::now() + Duration::from_millis(100)),
        );
        let _ = done.send(got.is_ok());
        listener
    });
    returned
        .recv_timeout(PATIENCE)
        .expect("a listener's recv with a deadline hangs on a scribbled tail_intent");
    let mut listener = waiting.join().unwrap();
    // The next write mends it, and arrives.
    writer.send(b"after").unwrap();
    loop {
        if let Event::Message(m) = event(&mut listener) {
            if m.payload() == b"after" {
                break;
            }
        }
    }
}

#[test]
fn in_block_mode_writers_wait_for_the_slowest_listener_then_give_up_having_written_nothing() {
    let s = Scratch::new("block", "?ring=4096&overflow=block&send_timeout_ms=100");
    assert!(Events.capabilities(&s.0).reliable);
    let mut listener = EventsListener::bind(&s.0).unwrap();
    let writer = EventsConnection::connect(&s.0).unwrap();
    let mut sent = 0u32;
    let full = loop {
        match writer.send(&sent.to_le_bytes()) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(
            sent < 1000,
            "a ring of 4 KiB took {sent} events without waiting"
        );
    };
    assert!(matches!(full, crate::Error::Full { .. }), "{full}");
    // Every event that went is there, none lost, none made up by the failed send.
    for i in 0..sent {
        let Event::Message(m) = event(&mut listener) else {
            panic!("lost events in block mode")
        };
        assert_eq!(m.payload(), i.to_le_bytes());
    }
    assert!(
        crate::transport::Listener::recv(&mut listener, Some(Instant::now()))
            .unwrap()
            .is_none()
    );
    writer.send(b"room again").unwrap();
}

#[test]
fn in_block_mode_a_killed_listener_holds_nobody_back() {
    let s = Scratch::new("block-killed", "?ring=4096&overflow=block");
    let child = Child::start("listener", &s.url());
    let writer = EventsConnection::connect(&s.0).unwrap();
    child.kill();
    // Twenty rings' worth: each wait reaps, and the dead listener stops counting.
    for i in 0u32..1000 {
        writer.send(&i.to_le_bytes()).unwrap();
    }
}

/// The async listener sleeps on its bell and a writer in another thread rings it; the
/// async writer sends at its levels.
#[cfg(feature = "tokio")]
#[test]
fn async_listeners_wake_for_writers_of_any_kind() {
    use crate::transport::{AsyncConnection as _, AsyncListener as _};
    let s = Scratch::new("async", "?level=warning");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut listener = on_tokio::AsyncEventsListener::bind(&s.0).unwrap();
        let plain: Endpoint = s.url().replace("?level=warning", "").parse().unwrap();
        let url = plain.clone();
        // Long enough for the listener to be asleep on its bell, usually; either way
        // the event must arrive.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let writer = EventsConnection::connect(&url).unwrap();
            writer.send_at(Level::Error, b"from a thread").unwrap();
        });
        let got = tokio::time::timeout(PATIENCE, listener.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.payload(), b"from a thread");
        writer.join().unwrap();
        let writer = on_tokio::AsyncEventsConnection::connect(&plain).unwrap();
        assert!(!writer.is_enabled(Level::Informational));
        writer.send(b"informational: nobody").await.unwrap();
        writer.send_at(Level::Critical, b"critical").await.unwrap();
        let got = tokio::time::timeout(PATIENCE, listener.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.payload(), got.level()),
            (&b"critical"[..], Some(Level::Critical))
        );
    });
}
