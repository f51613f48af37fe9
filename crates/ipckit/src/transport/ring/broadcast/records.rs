//! The broadcast ring's records: how a writer that holds the write lock appends one, and
//! how each reader, at its own position, takes them, in the manner of Agrona's
//! `BroadcastTransmitter`/`BroadcastReceiver` (one writer at a time, any number of readers
//! that never write to the ring and that a writer never waits for).
//!
//! Positions count bytes from the ring's start and only grow; a record at position `p`
//! lies at `p % capacity`. Before it writes, a writer publishes how far it will write
//! (`tail_intent`); after, how far the complete records reach (`tail`). A reader copies a
//! record, then checks that no writer has meanwhile reached the bytes it copied
//! (`tail_intent <= position + capacity`): if one has, the copy may be torn, and the
//! reader was lapped. A lapped reader jumps to the newest record (`latest`) and learns
//! from the gap in sequence numbers how many events it lost.
//!
//! Every byte of the ring is read and written as a relaxed atomic word, so that the
//! seqlock-style race of a reader with a lapping writer is no data race, and loom checks
//! it (`tests/loom_broadcast.rs`, which compiles this file alone against loom's atomics);
//! records are 8-byte aligned.
//!
//! Nothing read from the ring is trusted: a length is checked against the record's room
//! and the largest event before anything is sized, and a CRC-32C over the header and
//! payload turns a record that anyone scribbled on into a skipped one (counted as lost).

use super::sync::{AtomicU32, AtomicU64, Ordering, fence};

/// Bytes of a record's header: `seq: u64`, `len: u32`, `crc: u32`, `level: u8`,
/// `kind: u8`, two bytes unused, `pid: u32`.
pub const HEADER: u64 = 24;
/// A record's `kind`: an event.
pub const EVENT: u8 = 1;
/// A record's `kind`: room skipped at the ring's end, or left by a writer that died.
pub const PADDING: u8 = 2;

/// Positions stay below this: a ring written at a gigabyte a second takes a century to
/// reach it, so a position past it is a scribble, and below it no sum of a position and
/// a record's size overflows.
pub const POSITION_LIMIT: u64 = 1 << 62;

/// The ring's control words, which writers change under the write lock.
#[repr(C)]
pub struct Control {
    /// Where the write in progress will end; readers validate their copies against it.
    pub tail_intent: AtomicU64,
    /// Where the complete records end.
    pub tail: AtomicU64,
    /// Where the newest complete record begins: where a lapped reader resumes.
    pub latest: AtomicU64,
    /// The sequence number the next event gets.
    pub next_seq: AtomicU64,
    _line: [u64; 4],
}

impl Control {
    /// A ring with nothing in it, for tests outside a mapping.
    #[cfg_attr(not(any(test, ipckit_loom)), allow(dead_code))]
    pub fn new() -> Control {
        Control {
            tail_intent: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            latest: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            _line: [0; 4],
        }
    }
}

/// A record's size in the ring: its header and payload, rounded up to 8 bytes.
#[inline]
pub fn record_len(payload: u64) -> u64 {
    (HEADER + payload + 7) & !7
}

/// The largest event a ring of `capacity` bytes takes: a quarter of it, less the header,
/// so that a reader keeps some slack before a writer laps it.
pub fn max_event(capacity: u64) -> u64 {
    capacity / 4 - HEADER
}

/// The ring: its control words and its data, seen as words.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    pub control: &'a Control,
    pub data: &'a [AtomicU64],
    /// Bytes; a power of two, and `8 * data.len()`.
    pub capacity: u64,
}

/// One event's header fields, as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub level: u8,
    pub pid: u32,
}

fn checksum(w0: u64, len: u32, w2: u64, payload: impl FnOnce(u32) -> u32) -> u32 {
    let mut head = [0u8; 20];
    head[..8].copy_from_slice(&w0.to_le_bytes());
    head[8..12].copy_from_slice(&len.to_le_bytes());
    head[12..].copy_from_slice(&w2.to_le_bytes());
    payload(crc32c::crc32c(&head))
}

fn third_word(level: u8, kind: u8, pid: u32) -> u64 {
    u64::from(level) | u64::from(kind) << 8 | u64::from(pid) << 32
}

impl<'a> Ring<'a> {
    #[inline]
    fn word(&self, position: u64) -> &'a AtomicU64 {
        // The mask keeps every index in bounds whatever the position.
        &self.data[((position & (self.capacity - 1)) / 8) as usize]
    }

    #[cfg(test)]
    pub fn word_for_tests(&self, position: u64) -> &'a AtomicU64 {
        self.word(position)
    }

    fn write_header(&self, at: u64, seq: u64, len: u32, crc: u32, w2: u64) {
        self.word(at).store(seq, Ordering::Relaxed);
        self.word(at + 8)
            .store(u64::from(len) | u64::from(crc) << 32, Ordering::Relaxed);
        self.word(at + 16).store(w2, Ordering::Relaxed);
    }

    fn write_padding(&self, at: u64, room: u64) {
        // Less than a header before the ring's end is skipped by rule, unmarked.
        if room >= HEADER {
            let len = (room - HEADER) as u32;
            let w2 = third_word(0, PADDING, 0);
            let crc = checksum(0, len, w2, |c| c);
            self.write_header(at, 0, len, crc, w2);
        }
    }

    /// Appends an event; the caller holds the write lock and has checked that the payload
    /// is at most [`max_event`]. Returns its sequence number. Allocates nothing.
    ///
    /// `before_write` runs once the record's place is known, before anything is
    /// written, with the position its end will have: a writer in block mode waits
    /// there for the slowest listener.
    pub fn append<E>(
        &self,
        level: u8,
        pid: u32,
        payload: &[u8],
        before_write: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<u64, E> {
        let c = self.control;
        let mut tail = c.tail.load(Ordering::Relaxed);
        if tail % 8 != 0 || tail >= POSITION_LIMIT {
            // Only a scribbler leaves such a tail: go on from a sound one.
            tail = ((tail % (POSITION_LIMIT / 2)) + 7) & !7;
        }
        let len = payload.len() as u64;
        let size = record_len(len);
        let room = self.capacity - (tail & (self.capacity - 1));
        let start = if size > room { tail + room } else { tail };
        let end = start + size;
        before_write(end)?;
        // SYNC POINT: writer's intent. Readers that copy any byte written below see this
        // intent when they validate after their acquire fence.
        c.tail_intent.store(end, Ordering::Relaxed);
        fence(Ordering::Release);
        if start != tail {
            self.write_padding(tail, room);
        }
        let seq = c.next_seq.load(Ordering::Relaxed);
        // Counted before it is published: a writer that dies in between leaves a gap that
        // readers report as one event lost, which it was.
        // Wrapping: only a scribble brings it near the end, and a writer must not panic
        // over what is in the segment.
        c.next_seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        let w2 = third_word(level, EVENT, pid);
        let crc = checksum(seq, len as u32, w2, |c| crc32c::crc32c_append(c, payload));
        let mut at = start + HEADER;
        let mut chunks = payload.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            self.word(at).store(word, Ordering::Relaxed);
            at += 8;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(at)
                .store(u64::from_le_bytes(last), Ordering::Relaxed);
        }
        self.write_header(start, seq, len as u32, crc, w2);
        c.latest.store(start, Ordering::Relaxed);
        // SYNC POINT: publication. The fence in `must_wake`, after it, makes this store
        // and the bell's load the writer's half of the sleep handshake.
        c.tail.store(end, Ordering::Release);
        Ok(seq)
    }

    /// Makes the ring whole after a writer died holding the lock: whatever it reserved
    /// and did not publish becomes padding that readers skip. `tail_intent` never moves
    /// back, as readers validate against it.
    pub fn recover(&self) {
        let c = self.control;
        let tail = c.tail.load(Ordering::Relaxed);
        let intent = c.tail_intent.load(Ordering::Relaxed);
        if intent <= tail || intent - tail > self.capacity {
            // Nothing was reserved, or the intent is garbage: resume from the tail.
            c.tail_intent.store(tail, Ordering::Relaxed);
            return;
        }
        fence(Ordering::Release);
        let mut at = tail;
        while at < intent {
            let room = self.capacity - (at & (self.capacity - 1));
            let chunk = room.min(intent - at);
            self.write_padding(at, chunk);
            at += chunk;
        }
        c.tail.store(intent, Ordering::Release);
    }
}

/// What a reader found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// An event, its payload in the buffer; `lost` events were missed since the one
    /// delivered before it. The count covers events of every level, the reader's or not:
    /// what a writer overwrote cannot say its level, so a reader with a level filter learns
    /// of the gap, not of how much of it it would have taken.
    Event { stamp: Stamp, lost: u64 },
    /// Nothing new.
    Empty,
}

/// One reader's place in the ring.
#[derive(Debug)]
pub struct Reader {
    /// Where the next record begins.
    pub cursor: u64,
    /// The sequence number it expects next; `None` before its first event.
    expected: Option<u64>,
    /// The least important level it takes (ETW's numbers: higher is less important).
    level: u8,
    /// Records it skipped for a bad checksum or shape, for the log.
    pub corrupt: u64,
    /// Events lost in gaps found at records it skipped for their level: told with the
    /// next event it delivers, so that no gap goes untold for landing on a filtered one.
    untold: u64,
}

impl Reader {
    /// A reader that takes events from `cursor` (the tail when it joined) at `level` and
    /// more important; `expected` is the next sequence number, read after the tail (so
    /// that it is never ahead of the first event the reader finds), if known.
    pub fn new(cursor: u64, expected: Option<u64>, level: u8) -> Reader {
        Reader {
            cursor,
            expected,
            level,
            corrupt: 0,
            untold: 0,
        }
    }

    /// Whether what it copied from `cursor` on may have been overwritten meanwhile.
    #[inline]
    fn lapped(&self, ring: &Ring<'_>) -> bool {
        // SYNC POINT: reader's validation, pairing with the writer's intent.
        fence(Ordering::Acquire);
        let intent = ring.control.tail_intent.load(Ordering::Relaxed);
        intent.saturating_sub(self.cursor) > ring.capacity
    }

    /// Resumes at the newest record, as a lapped reader does, unless this read has
    /// resumed `resyncs` times already: then false, so that a scribbled control word
    /// never keeps a read from returning.
    fn resync_within(&mut self, ring: &Ring<'_>, resyncs: &mut u32) -> bool {
        if *resyncs == 0 {
            return false;
        }
        *resyncs -= 1;
        self.resync(ring);
        true
    }

    /// Resumes at the newest record, or at the tail if `latest` cannot be one, or if even
    /// it is lapped by the intent: only a scribbled intent laps the newest record, and
    /// resuming at it again would loop for good; at the tail the reader waits for the
    /// next writer, which mends the intent.
    fn resync(&mut self, ring: &Ring<'_>) {
        let c = ring.control;
        let latest = c.latest.load(Ordering::Acquire);
        let tail = c.tail.load(Ordering::Acquire);
        let intent = c.tail_intent.load(Ordering::Acquire);
        self.cursor = if latest % 8 == 0
            && latest < tail
            && tail - latest <= ring.capacity
            && intent.saturating_sub(latest) <= ring.capacity
        {
            latest
        } else {
            tail
        };
    }

    /// Takes the next event at its level into `out` (cleared first), skipping padding,
    /// events of other levels, and records that fail their checks. Never returns a torn
    /// or corrupt event, and never reads outside the ring.
    pub fn next(&mut self, ring: &Ring<'_>, out: &mut Vec<u8>) -> Next {
        let cap = ring.capacity;
        // Resyncs left in this call: writers that lap the reader again and again, or a
        // scribble no resync gets past, make it return, and the caller's deadline runs.
        let mut resyncs = 4u32;
        // Records looked at in this call: a reader a whole ring behind passes fewer than
        // a ring's worth of the smallest records, so more than that is a scribble (a tail
        // far ahead, say, over a ring of records all skipped for their level), and the
        // call returns rather than walk it.
        let mut looks = cap / 8 + 16;
        loop {
            let tail = ring.control.tail.load(Ordering::Acquire);
            if tail == self.cursor {
                return Next::Empty;
            }
            looks -= 1;
            if looks == 0 {
                self.corrupt += 1;
                return Next::Empty;
            }
            let intent = ring.control.tail_intent.load(Ordering::Acquire);
            if tail % 8 != 0 || tail >= POSITION_LIMIT {
                // Only a scribbler puts the tail off the grid: wait at it for what
                // writers publish next (they mend it).
                self.corrupt += 1;
                self.cursor = tail;
                return Next::Empty;
            }
            if tail < self.cursor {
                // Nor does anyone else move it back: resume at the newest record.
                self.corrupt += 1;
                self.resync(ring);
                if self.cursor > tail {
                    self.cursor = tail;
                }
                continue;
            }
            // A tail more than a ring ahead is a lap as surely as an intent is (writers
            // publish the tail after the bytes), and only a scribble makes it so while
            // the intent says otherwise.
            if intent.saturating_sub(self.cursor) > cap || tail - self.cursor > cap {
                if !self.resync_within(ring, &mut resyncs) {
                    return Next::Empty;
                }
                continue;
            }
            let room = cap - (self.cursor & (cap - 1));
            if room < HEADER {
                self.cursor += room;
                continue;
            }
            let w0 = ring.word(self.cursor).load(Ordering::Relaxed);
            let w1 = ring.word(self.cursor + 8).load(Ordering::Relaxed);
            let w2 = ring.word(self.cursor + 16).load(Ordering::Relaxed);
            let len = w1 as u32;
            let crc = (w1 >> 32) as u32;
            let level = w2 as u8;
            let kind = (w2 >> 8) as u8;
            let size = record_len(u64::from(len));
            let fits = size <= room
                && self.cursor + size <= tail
                && match kind {
                    EVENT => u64::from(len) <= max_event(cap),
                    PADDING => true,
                    _ => false,
                };
            if !fits {
                if self.lapped(ring) {
                    if !self.resync_within(ring, &mut resyncs) {
                        return Next::Empty;
                    }
                    continue;
                }
                self.skip_corrupt(ring);
                continue;
            }
            let wanted = kind == EVENT && level <= self.level;
            out.clear();
            if wanted {
                out.reserve(len as usize);
                let mut at = self.cursor + HEADER;
                let mut left = len as usize;
                while left > 0 {
                    let word = ring.word(at).load(Ordering::Relaxed).to_le_bytes();
                    let n = left.min(8);
                    out.extend_from_slice(&word[..n]);
                    left -= n;
                    at += 8;
                }
            }
            if self.lapped(ring) {
                if !self.resync_within(ring, &mut resyncs) {
                    return Next::Empty;
                }
                continue;
            }
            let sound = if wanted {
                checksum(w0, len, w2, |c| crc32c::crc32c_append(c, out)) == crc
            } else {
                checksum(w0, len, w2, |c| c) == crc || kind == EVENT
            };
            if !sound {
                if wanted {
                    // Its number may be the scribble: the next good event's gap counts it.
                    self.corrupt += 1;
                    self.cursor += size;
                } else {
                    self.skip_corrupt(ring);
                }
                continue;
            }
            self.cursor += size;
            if kind == PADDING {
                continue;
            }
            let lost = match self.expected {
                Some(expected) => w0.saturating_sub(expected),
                None => 0,
            };
            self.expected = Some(w0.wrapping_add(1));
            if !wanted {
                self.untold = self.untold.saturating_add(lost);
                continue;
            }
            let lost = lost.saturating_add(std::mem::take(&mut self.untold));
            let stamp = Stamp {
                seq: w0,
                level,
                pid: (w2 >> 32) as u32,
            };
            return Next::Event { stamp, lost };
        }
    }

    /// Leaves a record whose shape cannot be trusted (so neither can its length): to the
    /// newest record, which the gap in numbers then reports.
    fn skip_corrupt(&mut self, ring: &Ring<'_>) {
        self.corrupt += 1;
        let before = self.cursor;
        self.resync(ring);
        if self.cursor <= before {
            self.cursor = ring.control.tail.load(Ordering::Acquire);
        }
    }
}

/// Announces that a reader is about to sleep until the tail moves past `cursor`, with
/// `bit` ([`FUTEX_SLEEPERS`] or [`BELL_SLEEPERS`]) in the bell word; true if it may sleep
/// (nothing arrived meanwhile). Returns the bell word's value to sleep on.
///
/// SYNC POINT: Dekker with [`must_wake`]: the reader writes the bell, then (SeqCst fence)
/// reads the tail; the writer writes the tail, then (SeqCst fence) reads the bell. One of
/// the two sees the other's write. Fences rather than SeqCst accesses: the same cost on
/// x86 (a locked instruction or `mfence` either way), and loom checks fences exactly
/// where it checks SeqCst accesses only as AcqRel.
pub fn announce_sleep(bell: &AtomicU32, tail: &AtomicU64, cursor: u64, bit: u32) -> Option<u32> {
    let word = bell.fetch_or(bit, Ordering::Relaxed) | bit;
    fence(Ordering::SeqCst);
    (tail.load(Ordering::Acquire) == cursor).then_some(word)
}

/// The bell word's bit for readers sleeping in FUTEX_WAIT on it.
pub const FUTEX_SLEEPERS: u32 = 1;
/// The bell word's bit for readers waiting for their async bells.
pub const BELL_SLEEPERS: u32 = 2;
/// What one round of wake-ups adds to the bell word, above the bits.
pub const BELL_ROUND: u32 = 4;

/// After publishing: the sleeper bits that were set, cleared in the same step that
/// changes the word (so that a sleeper about to wait on the old value does not); 0, and
/// no write, when nobody sleeps.
#[inline]
pub fn must_wake(bell: &AtomicU32) -> u32 {
    // SYNC POINT: the writer's half of the handshake in `announce_sleep`.
    fence(Ordering::SeqCst);
    let word = bell.load(Ordering::Relaxed);
    if word & (FUTEX_SLEEPERS | BELL_SLEEPERS) == 0 {
        return 0;
    }
    let before = bell
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            Some((w & !(FUTEX_SLEEPERS | BELL_SLEEPERS)).wrapping_add(BELL_ROUND))
        })
        .unwrap_or(word);
    before & (FUTEX_SLEEPERS | BELL_SLEEPERS)
}
