//! The broadcast ring over anonymous memory: records, wrapping, lapping, levels, block
//! mode and recovery, one thread playing every party.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::records::{HEADER, record_len};
use super::*;

fn ring(capacity: usize, overflow: u32) -> Broadcast {
    let geometry = Geometry {
        listeners: 4,
        capacity,
    };
    let mut map = Mapping::anonymous(geometry.total()).unwrap();
    // SAFETY: fresh anonymous memory, reached by nothing else.
    unsafe { Broadcast::initialise(&mut map, geometry, overflow) };
    Broadcast::new(Arc::new(map), geometry)
}

/// Far enough that only a hang reaches it.
fn patience() -> Instant {
    Instant::now() + std::time::Duration::from_secs(20)
}

fn send(b: &Broadcast, level: u8, payload: &[u8]) -> u64 {
    b.lock(0, patience()).unwrap();
    let seq = b
        .ring()
        .append::<()>(level, 7, payload, |_| Ok(()))
        .unwrap();
    b.unlock(0);
    seq
}

fn take(b: &Broadcast, r: &mut Reader) -> Option<(Vec<u8>, Stamp, u64)> {
    let mut out = Vec::new();
    match r.next(&b.ring(), &mut out) {
        Next::Event { stamp, lost } => Some((out, stamp, lost)),
        Next::Empty => None,
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

#[test]
fn events_of_every_size_wrap_in_order() {
    let b = ring(4096, OVERWRITE);
    let mut r = Reader::new(0, Some(0), 5);
    // Sizes that are not multiples of 8 and records that meet the ring's end at every
    // offset, including less than a header before it.
    for i in 0..2000u64 {
        let p = payload(i, (i as usize * 7) % 200);
        assert_eq!(send(&b, 4, &p), i);
        let (got, stamp, lost) = take(&b, &mut r).expect("an event");
        assert_eq!(
            (got, stamp.seq, stamp.level, stamp.pid, lost),
            (p, i, 4, 7, 0)
        );
        assert!(take(&b, &mut r).is_none());
    }
}

#[test]
fn a_lapped_reader_learns_exactly_how_many_it_lost_and_gets_the_newest() {
    let b = ring(4096, OVERWRITE);
    let mut r = Reader::new(0, Some(0), 5);
    // 64-byte records, so that the reader's old position is a record's start again in
    // every lap, where a reader that missed the lap would read on as if nothing happened.
    send(&b, 4, &payload(0, 40));
    assert_eq!(take(&b, &mut r).unwrap().0, payload(0, 40));
    for i in 1..=150 {
        send(&b, 4, &payload(i, 40));
    }
    let (got, stamp, lost) = take(&b, &mut r).unwrap();
    assert_eq!((got, stamp.seq, lost), (payload(150, 40), 150, 149));
    assert!(take(&b, &mut r).is_none());
    send(&b, 4, b"next");
    assert_eq!(take(&b, &mut r).unwrap().2, 0);
}

#[test]
fn a_reader_one_record_short_of_a_lap_loses_nothing() {
    let b = ring(4096, OVERWRITE);
    let mut r = Reader::new(0, Some(0), 5);
    let size = record_len(64);
    let fit = 4096 / size;
    for i in 0..fit {
        send(&b, 4, &payload(i, 64));
    }
    for i in 0..fit {
        let (got, stamp, lost) = take(&b, &mut r).unwrap();
        assert_eq!((got, stamp.seq, lost), (payload(i, 64), i, 0));
    }
}

#[test]
fn levels_filter_and_count_only_what_was_enabled() {
    let b = ring(4096, OVERWRITE);
    let mut warnings = Reader::new(0, Some(0), Level::Warning as u8);
    for (i, level) in [0u8, 5, 3, 4, 2, 1].into_iter().enumerate() {
        send(&b, level, &[i as u8]);
    }
    let got: Vec<_> = std::iter::from_fn(|| take(&b, &mut warnings))
        .map(|(p, s, lost)| (p[0], s.level, lost))
        .collect();
    assert_eq!(got, [(0, 0, 0), (2, 3, 0), (4, 2, 0), (5, 1, 0)]);
}

use crate::Level;

#[test]
fn the_levels_word_is_one_load_per_send() {
    let b = ring(4096, OVERWRITE);
    assert!(Level::ALL.iter().all(|l| !b.enabled(*l as u8)));
    let i = b.claim(Role::Listener).unwrap();
    b.join(i, Level::Warning as u8);
    assert!(b.enabled(Level::LogAlways as u8) && b.enabled(Level::Warning as u8));
    assert!(!b.enabled(Level::Informational as u8) && !b.enabled(Level::Verbose as u8));
    b.uncount(i);
    assert!(!b.enabled(Level::LogAlways as u8));
    assert_eq!(b.header().levels.load(Ordering::Relaxed), 0);
}

#[test]
fn a_dead_listener_is_reaped_and_no_longer_counted() {
    let b = ring(4096, OVERWRITE);
    let i = b.claim(Role::Listener).unwrap();
    b.listener(i).owner.store(1234, Ordering::Relaxed);
    b.join(i, Level::Error as u8);
    assert_eq!(b.reap_listeners(), 0);
    // What the kernel writes in a robust futex word when its holder dies.
    b.listener(i)
        .owner
        .store(crate::sys::OWNER_DIED, Ordering::Relaxed);
    assert_eq!(b.reap_listeners(), 1);
    assert!(!b.enabled(Level::LogAlways as u8));
    assert_eq!(b.listener(i).owner.load(Ordering::Relaxed), 0);
}

#[test]
fn block_mode_waits_for_the_slowest_live_listener() {
    let b = ring(4096, BLOCK);
    let i = b.claim(Role::Listener).unwrap();
    b.listener(i).owner.store(1234, Ordering::Relaxed);
    let cursor = b.join(i, Level::Verbose as u8).cursor;
    assert!(b.room_for(cursor + 4096));
    assert!(!b.room_for(cursor + 4096 + 8));
    b.listener(i).position.store(8, Ordering::Relaxed);
    assert!(b.room_for(cursor + 4096 + 8));
    // A dead listener holds nobody back.
    b.listener(i)
        .owner
        .store(crate::sys::OWNER_DIED, Ordering::Relaxed);
    assert!(b.room_for(u64::MAX / 2));
}

#[test]
fn a_writer_that_died_mid_write_leaves_padding_and_a_counted_gap() {
    let b = ring(4096, OVERWRITE);
    let mut r = Reader::new(0, Some(0), 5);
    send(&b, 4, b"before");
    // A writer (entry 1) takes the lock, reserves and half-writes, and dies.
    b.writer(1)
        .owner
        .store(crate::sys::OWNER_DIED, Ordering::Relaxed);
    b.header().lock.store(2, Ordering::Relaxed);
    let c = &b.header().control;
    let tail = c.tail.load(Ordering::Relaxed);
    c.tail_intent
        .store(tail + record_len(100), Ordering::Relaxed);
    c.next_seq.fetch_add(1, Ordering::Relaxed);
    b.ring()
        .word_for_tests(tail)
        .store(u64::MAX, Ordering::Relaxed);
    // The next writer robs the lock and goes on.
    b.writer(0).owner.store(99, Ordering::Relaxed);
    send(&b, 4, b"after");
    // Past what the dead writer reserved: a reader that copied its bytes validated them
    // against its intent, which never moves back.
    assert!(c.latest.load(Ordering::Relaxed) >= tail + record_len(100));
    assert_eq!(take(&b, &mut r).unwrap().0, b"before");
    let (got, stamp, lost) = take(&b, &mut r).unwrap();
    assert_eq!((got.as_slice(), stamp.seq, lost), (&b"after"[..], 2, 1));
}

#[test]
fn a_scribbled_record_is_skipped_never_delivered() {
    let b = ring(4096, OVERWRITE);
    let mut r = Reader::new(0, Some(0), 5);
    send(&b, 4, b"good one");
    let bad = b.header().control.tail.load(Ordering::Relaxed);
    send(&b, 4, b"scribbled on");
    send(&b, 4, b"good two");
    // A payload byte changed: the checksum fails.
    let w = b.ring().word_for_tests(bad + HEADER);
    w.store(w.load(Ordering::Relaxed) ^ 1, Ordering::Relaxed);
    assert_eq!(take(&b, &mut r).unwrap().0, b"good one");
    let (got, _, lost) = take(&b, &mut r).unwrap();
    assert_eq!((got.as_slice(), lost), (&b"good two"[..], 1));
    assert_eq!(r.corrupt, 1);
    // A length past the ring: not followed, not allocated.
    let at = b.header().control.tail.load(Ordering::Relaxed);
    send(&b, 4, b"x");
    b.ring()
        .word_for_tests(at + 8)
        .store(u64::from(u32::MAX), Ordering::Relaxed);
    send(&b, 4, b"y");
    let (got, _, _) = take(&b, &mut r).unwrap();
    assert_eq!(got, b"y");
}

#[test]
fn garbage_control_words_never_hang_read_out_of_bounds_or_make_up_events() {
    let b = ring(4096, OVERWRITE);
    let mut r = Reader::new(0, Some(0), 5);
    for _ in 0..50 {
        send(&b, 4, b"steady");
    }
    let c = &b.header().control;
    for (intent, tail, latest) in [
        (u64::MAX, u64::MAX - 7, 3),
        (5, 3, u64::MAX),
        (0, 1 << 40, 1 << 39),
        (1 << 40, 1 << 40, 1 << 40),
        (u64::MAX, 12345, 77),
        (0, u64::MAX, u64::MAX - 8),
    ] {
        c.tail_intent.store(intent, Ordering::Relaxed);
        c.tail.store(tail, Ordering::Relaxed);
        c.latest.store(latest, Ordering::Relaxed);
        let mut out = Vec::new();
        for _ in 0..10 {
            // A stale record may be read again, but whole: never bytes that were not sent.
            if let Next::Event { .. } = r.next(&b.ring(), &mut out) {
                assert_eq!(out, b"steady");
            }
        }
        // A writer mends what it finds, and the reader takes what it writes next.
        send(&b, 4, b"mended");
        let mut got = Vec::new();
        for _ in 0..10 {
            if let Next::Event { .. } = r.next(&b.ring(), &mut out) {
                got = out.clone();
            }
        }
        assert!(got == b"mended" || got == b"steady", "{got:?}");
    }
}

#[test]
fn a_lock_word_naming_a_live_writer_that_does_not_hold_it_is_taken_over() {
    let b = Arc::new(ring(4096, OVERWRITE));
    // Writer 1 lives (its death word holds a thread id) but never took the lock: only a
    // scribble puts its number in the lock word.
    b.writer(1).owner.store(1234, Ordering::Relaxed);
    b.writer(1).pid.store(42, Ordering::Relaxed);
    b.header().lock.store(2, Ordering::Relaxed);
    let (done, taken) = std::sync::mpsc::channel();
    let contender = b.clone();
    std::thread::spawn(move || {
        send(&contender, 4, b"through");
        let _ = done.send(());
    });
    taken
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a scribbled lock word held writers for good");
    // A holder that says it holds the lock is waited for, however long.
    assert_eq!(b.writer(0).pid.load(Ordering::Relaxed) & HOLDS_LOCK, 0);
    b.lock(0, patience()).unwrap();
    assert_ne!(b.writer(0).pid.load(Ordering::Relaxed) & HOLDS_LOCK, 0);
    b.unlock(0);
}

/// Runs `f` on another thread; a failure, not a hang, if it does not return.
fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} never returned"))
}

#[test]
fn a_scribbled_intent_alone_never_holds_a_reader() {
    let b = Arc::new(ring(4096, OVERWRITE));
    send(&b, 4, b"one");
    send(&b, 4, b"two");
    b.header()
        .control
        .tail_intent
        .store(u64::MAX, Ordering::Relaxed);
    let reader = b.clone();
    let mut r = returns("next() over a scribbled intent", move || {
        let mut r = Reader::new(0, Some(0), 5);
        r.next(&reader.ring(), &mut Vec::new());
        r
    });
    // The next writer mends the intent, and the reader goes on from there.
    send(&b, 4, b"three");
    assert_eq!(take(&b, &mut r).unwrap().0, b"three");
}

#[test]
fn a_filtered_reader_lapped_onto_an_event_it_skips_is_told_the_whole_loss() {
    let b = ring(4096, OVERWRITE);
    let mut warnings = Reader::new(0, Some(0), Level::Warning as u8);
    // 150 errors lap it, and the newest event, where it resumes, is verbose.
    for i in 0..150 {
        send(&b, Level::Error as u8, &payload(i, 40));
    }
    send(&b, Level::Verbose as u8, b"chatter");
    assert!(take(&b, &mut warnings).is_none());
    send(&b, Level::Warning as u8, b"seen");
    let (got, stamp, lost) = take(&b, &mut warnings).unwrap();
    assert_eq!((got.as_slice(), stamp.seq, lost), (&b"seen"[..], 151, 150));
    send(&b, Level::Warning as u8, b"again");
    assert_eq!(take(&b, &mut warnings).unwrap().2, 0);
}

#[test]
fn a_writer_says_it_holds_the_lock_before_the_lock_word_can_name_it() {
    let b = Arc::new(ring(4096, OVERWRITE));
    for i in 0..2 {
        b.writer(i).owner.store(1000 + i as u32, Ordering::Relaxed);
        b.writer(i).pid.store(42, Ordering::Relaxed);
    }
    b.lock(1, patience()).unwrap();
    let says = |i: usize| b.writer(i).pid.load(Ordering::SeqCst) & HOLDS_LOCK != 0;
    assert!(says(1));
    // Writer 0 waits for writer 1, and says so all along: the moment the word names it,
    // no contender can find it silent and take the lock over.
    let waiter = b.clone();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        waiter.lock(0, patience()).unwrap();
        let _ = done.send(());
    });
    returns("writer 0 saying it takes the lock", {
        let b = b.clone();
        move || {
            while b.writer(0).pid.load(Ordering::SeqCst) & HOLDS_LOCK == 0 {
                std::thread::yield_now();
            }
        }
    });
    b.unlock(1);
    assert!(!says(1));
    waited
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("writer 0 never took the freed lock");
    assert!(says(0));
    assert_eq!(b.header().lock.load(Ordering::SeqCst) & !LOCK_WAITERS, 1);
    b.unlock(0);
    assert!(!says(0));
    assert_eq!(b.header().lock.load(Ordering::SeqCst), 0);
}

#[test]
fn a_writer_whose_lock_was_taken_over_does_not_free_the_new_holders() {
    let b = ring(4096, OVERWRITE);
    for i in 0..2 {
        b.writer(i).owner.store(1000 + i as u32, Ordering::Relaxed);
        b.writer(i).pid.store(42, Ordering::Relaxed);
    }
    // Writer 1 holds the lock and stalls; writer 0 takes it over (as after a scribble),
    // waiters queued behind it.
    b.lock(1, patience()).unwrap();
    b.writer(0).pid.fetch_or(HOLDS_LOCK, Ordering::SeqCst);
    b.header().lock.store(1 | LOCK_WAITERS, Ordering::SeqCst);
    // Writer 1 wakes and unlocks: the lock stays writer 0's, waiters' bit and all.
    b.unlock(1);
    assert_eq!(b.header().lock.load(Ordering::SeqCst), 1 | LOCK_WAITERS);
    assert_ne!(b.writer(0).pid.load(Ordering::SeqCst) & HOLDS_LOCK, 0);
    b.unlock(0);
    assert_eq!(b.header().lock.load(Ordering::SeqCst), 0);
}

#[test]
fn a_writer_waiting_for_the_lock_gives_up_at_its_deadline() {
    let b = ring(4096, OVERWRITE);
    for i in 0..2 {
        b.writer(i).owner.store(1000 + i as u32, Ordering::Relaxed);
        b.writer(i).pid.store(42, Ordering::Relaxed);
    }
    b.lock(1, patience()).unwrap();
    assert!(b.lock(0, Instant::now()).is_err());
    // Giving up unsays it, or contenders would wait for a holder that is not one.
    assert_eq!(b.writer(0).pid.load(Ordering::SeqCst) & HOLDS_LOCK, 0);
    assert_eq!(b.header().lock.load(Ordering::SeqCst) & !LOCK_WAITERS, 2);
    b.unlock(1);
    b.lock(0, patience()).unwrap();
    b.unlock(0);
}

#[test]
fn a_join_preempted_while_writers_lap_it_reports_no_loss() {
    let b = ring(4096, OVERWRITE);
    send(&b, 4, b"long before");
    let i = b.claim(Role::Listener).unwrap();
    b.listener(i).owner.store(1234, Ordering::Relaxed);
    // Writers lap the position it read, before it returns.
    let mut r = b.join_with(i, Level::Verbose as u8, || {
        for n in 0..150 {
            send(&b, 4, &payload(n, 40));
        }
    });
    assert!(take(&b, &mut r).is_none());
    send(&b, 4, b"after");
    let (got, _, lost) = take(&b, &mut r).unwrap();
    assert_eq!((got.as_slice(), lost), (&b"after"[..], 0));
}

/// The pid of a process that has exited.
fn a_dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn entries_left_mid_claim_or_mid_reap_by_killed_parties_are_reclaimed() {
    let b = ring(4096, OVERWRITE);
    let dead = a_dead_pid();
    let now = Instant::now();
    // A listener killed right after its claim, before anything else; a reaper killed
    // after marking a counted entry; a writer killed mid-claim.
    b.listener(0)
        .owner
        .store(CLAIMING | dead, Ordering::Relaxed);
    b.listener(1).owner.store(1234, Ordering::Relaxed);
    b.join(1, Level::Error as u8);
    b.listener(1).owner.store(REAPING | dead, Ordering::Relaxed);
    b.writer(3).owner.store(CLAIMING | dead, Ordering::Relaxed);
    assert_eq!(b.reap_listeners_at(now), 2);
    b.reap_writers_at(now);
    assert!((0..2).all(|i| b.listener(i).owner.load(Ordering::Relaxed) == 0));
    assert_eq!(b.writer(3).owner.load(Ordering::Relaxed), 0);
    assert_eq!(b.header().levels.load(Ordering::Relaxed), 0);
    // A claim by a live process that never finishes (its pid answers): taken for dead
    // once it has stayed a second, not before.
    let i = b.claim(Role::Listener).unwrap();
    b.listener(i).pid.store(0, Ordering::Relaxed);
    assert_eq!(b.reap_listeners_at(now), 0);
    assert_eq!(b.reap_listeners_at(now + STALE_STEP / 2), 0);
    assert_eq!(b.reap_listeners_at(now + STALE_STEP), 1);
    assert_eq!(b.listener(i).owner.load(Ordering::Relaxed), 0);
    // A claim that finished and a new one with the same word start the wait afresh.
    let i = b.claim(Role::Listener).unwrap();
    assert_eq!(b.reap_listeners_at(now + STALE_STEP * 2), 0);
    b.listener(i).owner.store(1234, Ordering::Relaxed);
    assert_eq!(b.reap_listeners_at(now + STALE_STEP * 3), 0);
    b.listener(i).owner.store(claiming(), Ordering::Relaxed);
    assert_eq!(b.reap_listeners_at(now + STALE_STEP * 4), 0);
}

/// A reaper that stalls, alive, after marking an entry is never taken over: it would
/// go on to uncount and free the entry of whoever claimed it next.
#[test]
fn a_stalled_reaper_keeps_its_entry() {
    let b = ring(4096, OVERWRITE);
    let now = Instant::now();
    let mine = REAPING | std::process::id();
    b.listener(0).owner.store(mine, Ordering::Relaxed);
    assert_eq!(b.reap_listeners_at(now), 0);
    assert_eq!(b.reap_listeners_at(now + STALE_STEP * 2), 0);
    assert_eq!(b.listener(0).owner.load(Ordering::Relaxed), mine);
}

#[test]
fn a_levels_word_that_disagrees_with_the_listeners_for_a_second_is_mended() {
    let b = ring(4096, OVERWRITE);
    let now = Instant::now();
    b.listener(0).owner.store(1234, Ordering::Relaxed);
    b.join(0, Level::Warning as u8);
    let right = level_one(Level::Warning as u8);
    // A listener killed between adding its count and saying so, then reaped.
    b.listener(1)
        .owner
        .store(crate::sys::OWNER_DIED, Ordering::Relaxed);
    b.header()
        .levels
        .fetch_add(level_one(Level::Verbose as u8), Ordering::SeqCst);
    assert_eq!(b.reap_listeners_at(now), 1);
    assert!(b.enabled(Level::Verbose as u8));
    assert_eq!(b.reap_listeners_at(now + STALE_STEP), 0);
    assert_eq!(b.header().levels.load(Ordering::SeqCst), right);
    // A scribble, likewise.
    b.header().levels.store(u64::MAX, Ordering::SeqCst);
    b.reap_listeners_at(now + STALE_STEP * 2);
    b.reap_listeners_at(now + STALE_STEP * 3);
    assert_eq!(b.header().levels.load(Ordering::SeqCst), right);
    // A join seen between its two steps, finished by the next round: left alone.
    b.listener(2).owner.store(1234, Ordering::Relaxed);
    b.listener(2)
        .level
        .store(Level::Error as u32 + 1, Ordering::SeqCst);
    b.header()
        .levels
        .fetch_add(level_one(Level::Error as u8), Ordering::SeqCst);
    b.reap_listeners_at(now + STALE_STEP * 4);
    b.listener(2).counted.store(1, Ordering::SeqCst);
    b.reap_listeners_at(now + STALE_STEP * 5);
    let both = right + level_one(Level::Error as u8);
    assert_eq!(b.header().levels.load(Ordering::SeqCst), both);
    // Nor does a leave ever take a count below zero.
    b.header().levels.store(right, Ordering::SeqCst);
    b.uncount(2);
    assert_eq!(b.header().levels.load(Ordering::SeqCst), right);
}

#[test]
fn a_write_looks_only_at_the_listeners_marked_asleep_on_their_bells() {
    let b = ring(4096, OVERWRITE);
    let sleeps = |i: usize| b.listener(i).sleep.load(Ordering::SeqCst);
    // Listener 1 goes to sleep on its bell (number 0: ringing it sends nothing).
    b.sleep_on_bell(1);
    let bell = &b.header().bell;
    let tail = &b.header().control.tail;
    assert!(records::announce_sleep(bell, tail, 0, records::BELL_SLEEPERS).is_some());
    // An entry that says it sleeps but is not marked: a writer never reads it (only the
    // marks say who sleeps, which is what keeps a write's cost off the table's size).
    b.listener(3)
        .sleep
        .store(crate::transport::ring::wait::BELL, Ordering::SeqCst);
    send(&b, 4, b"wake up");
    b.wake();
    assert_eq!(
        (sleeps(1), sleeps(3)),
        (0, crate::transport::ring::wait::BELL)
    );
    assert_eq!(b.header().bell_sleepers[0].load(Ordering::SeqCst), 0);
    // Nobody asleep: the next write makes no wake-up at all.
    assert_eq!(records::must_wake(bell), 0);
}
