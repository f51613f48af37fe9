//! The broadcast ring's records, model-checked with loom: a reader racing a writer that
//! laps it, a writer that dies mid-write and the one that takes over, and the sleep and
//! wake-up handshake, in every interleaving loom builds (within its preemption bound).
//!
//! Run with `RUSTFLAGS="--cfg ipckit_loom" cargo test -p ipckit --release --test
//! loom_broadcast --target-dir target/loom` (`scripts/test.sh` does); without the flag
//! this file is empty.
#![cfg(ipckit_loom)]
#![allow(dead_code)]

/// The ring's atomics, from loom instead of std.
mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

#[path = "../src/transport/ring/broadcast/records.rs"]
mod records;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use records::{Control, FUTEX_SLEEPERS, Next, Reader, Ring, announce_sleep, must_wake};

/// The smallest ring whose events hold a payload: 128 bytes, events of up to 8.
const CAPACITY: u64 = 128;

struct Memory {
    control: Control,
    data: Vec<AtomicU64>,
    bell: AtomicU32,
}

impl Memory {
    fn new() -> Arc<Memory> {
        Arc::new(Memory {
            control: Control::new(),
            data: (0..CAPACITY / 8).map(|_| AtomicU64::new(0)).collect(),
            bell: AtomicU32::new(0),
        })
    }

    fn ring(&self) -> Ring<'_> {
        Ring {
            control: &self.control,
            data: &self.data,
            capacity: CAPACITY,
        }
    }

    /// Appends event `n`, whose payload says its number (8 bytes: a 32-byte record, so
    /// four fill the ring).
    fn append(&self, n: u64) {
        self.ring()
            .append::<()>(4, 1, &n.to_le_bytes(), |_| Ok(()))
            .unwrap();
    }
}

fn builder() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder
}

/// A reader at the ring's start while a writer laps it: whatever it returns is a whole
/// event whose payload is the number it carries, never bytes of two events.
#[test]
fn a_lapped_reader_never_returns_a_torn_event() {
    builder().check(|| {
        let memory = Memory::new();
        for n in 0..4 {
            memory.append(n);
        }
        let writer = {
            let memory = memory.clone();
            loom::thread::spawn(move || {
                // Overwrites the first record, then the second.
                memory.append(4);
                memory.append(5);
            })
        };
        let mut reader = Reader::new(0, Some(0), 5);
        let mut out = Vec::new();
        for _ in 0..2 {
            if let Next::Event { stamp, lost } = reader.next(&memory.ring(), &mut out) {
                assert_eq!(out, stamp.seq.to_le_bytes(), "a torn event");
                // Exactly the events before it that it did not get.
                assert!(lost <= stamp.seq);
            }
        }
        // Caught by lap detection, not left to the checksum: nothing counted corrupt.
        assert_eq!(
            reader.corrupt, 0,
            "a lapped copy went unnoticed until its CRC"
        );
        writer.join().unwrap();
    });
}

/// A writer that took the lock, reserved room and wrote part of a record, then died; a
/// writer on another thread sees its death word, takes its lock over, makes the ring whole
/// and writes. The takeover's reads of what the dead writer reserved are ordered by the
/// death word (which the kernel sets after the dead thread's last store: a release) and
/// the lock word, as in `Broadcast::lock`. A reader running through all of it never sees
/// the dead writer's bytes as an event.
#[test]
fn a_dead_writers_partial_record_is_never_read() {
    builder().check(|| {
        let memory = Memory::new();
        memory.append(0);
        // The write lock, which the dying writer (1) holds from the start, and which the
        // other (2) takes over; the dying writer's death word (1 once it died).
        let lock = Arc::new(AtomicU32::new(1));
        let died = Arc::new(AtomicU32::new(0));
        let dying = {
            let (memory, died) = (memory.clone(), died.clone());
            loom::thread::spawn(move || {
                // What `append` does before publishing, half done.
                let c = &memory.control;
                let tail = c.tail.load(Ordering::Relaxed);
                c.tail_intent.store(tail + 32, Ordering::Relaxed);
                loom::sync::atomic::fence(Ordering::Release);
                c.next_seq.store(2, Ordering::Relaxed);
                memory.data[(tail / 8) as usize].store(u64::MAX, Ordering::Relaxed);
                memory.data[(tail / 8) as usize + 1].store(8 | 0xdead << 32, Ordering::Relaxed);
                died.store(1, Ordering::Release);
            })
        };
        let taker = {
            let (memory, lock, died) = (memory.clone(), lock.clone(), died.clone());
            loom::thread::spawn(move || {
                loop {
                    // `Broadcast::acquire`: a holder whose death word says it died is
                    // robbed by compare-and-swap.
                    if died.load(Ordering::Acquire) == 1
                        && lock
                            .compare_exchange(1, 2, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                    {
                        memory.ring().recover();
                        memory.append(2);
                        lock.store(0, Ordering::Release);
                        return;
                    }
                    loom::thread::yield_now();
                }
            })
        };
        let mut reader = Reader::new(0, Some(0), 5);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..3 {
            if let Next::Event { stamp, .. } = reader.next(&memory.ring(), &mut out) {
                assert_eq!(out, stamp.seq.to_le_bytes(), "a partial event");
                seen.push(stamp.seq);
            }
        }
        dying.join().unwrap();
        taker.join().unwrap();
        assert!(seen.iter().all(|&s| s == 0 || s == 2), "{seen:?}");
        // The taker saw all the dead writer reserved: its event lies past it.
        let c = &memory.control;
        assert!(
            c.latest.load(Ordering::Relaxed) >= 64,
            "the takeover wrote over a reservation"
        );
    });
}

/// A reader that finds nothing and goes to sleep, and a writer that publishes: either
/// the reader sees the event before it sleeps, or the writer sees that it sleeps and
/// wakes it. A wake-up is never lost.
#[test]
fn a_sleeping_reader_is_always_woken() {
    loom::model(|| {
        let memory = Memory::new();
        let writer = {
            let memory = memory.clone();
            loom::thread::spawn(move || {
                memory.append(0);
                must_wake(&memory.bell) != 0
            })
        };
        let slept = announce_sleep(&memory.bell, &memory.control.tail, 0, FUTEX_SLEEPERS);
        let woke = writer.join().unwrap();
        if let Some(word) = slept {
            // The writer cleared the bit and moved the word on, so FUTEX_WAIT on `word`
            // returns at once if it had not yet begun.
            assert!(woke, "a reader slept through an event");
            assert_ne!(memory.bell.load(Ordering::SeqCst), word);
        }
    });
}
