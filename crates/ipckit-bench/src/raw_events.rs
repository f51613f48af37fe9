//! The hand-written baseline of events: the plainest single-writer broadcast ring in a
//! shared mapping, after Agrona's BroadcastTransmitter/Receiver. One writer process, any
//! number of reader processes each at its own cursor, and a seqlock's validation against
//! the writer's intent: no levels, no checksum, no lock, no registration, no wake-ups
//! (readers spin). What is left of the events transport once its generality is taken
//! away, so that a run shows what that generality costs.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Bytes of the ring: the events transport's default.
pub const CAPACITY: usize = 1 << 20;
/// Bytes before the ring: the three control words, each on a pair of lines of its own.
const CONTROL: usize = 384;
/// Bytes of a record's header: the payload's length and the record's kind.
const HEADER: usize = 8;
const EVENT: u64 = 1;
const PADDING: u64 = 2;
/// Says the stream ended: the writer wrote its last event.
const END: u64 = 3;
/// The largest payload: a quarter of the ring, as the events transport takes.
pub const MAX_EVENT: usize = CAPACITY / 4 - HEADER;

/// The mapping, shared by the writer and the readers.
struct Ring {
    ptr: *mut u8,
}

// SAFETY: the mapping is shared memory guarded by the ring's protocol, and lives as long
// as the process.
unsafe impl Send for Ring {}

impl Ring {
    fn open(name: &str, create: bool) -> Ring {
        Ring {
            ptr: crate::raw_shm::map(name, CONTROL + CAPACITY, create),
        }
    }

    /// The position the writer is writing up to: a record it writes lies below it.
    fn intent(&self) -> &AtomicU64 {
        // SAFETY: the mapping starts with the control words, page-aligned.
        unsafe { &*self.ptr.cast::<AtomicU64>() }
    }

    /// The position up to which records are complete.
    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as in `intent`, 128 bytes further.
        unsafe { &*self.ptr.add(128).cast::<AtomicU64>() }
    }

    /// Where the newest record starts: where a lapped reader goes on from, so that the
    /// last record written is never skipped.
    fn latest(&self) -> &AtomicU64 {
        // SAFETY: as in `intent`, 256 bytes further.
        unsafe { &*self.ptr.add(256).cast::<AtomicU64>() }
    }

    /// The header of the record at `position`, read and written whole, so that a torn
    /// one is a stale one.
    fn header(&self, position: u64) -> &AtomicU64 {
        // SAFETY: records are 8-aligned and the ring's offset is taken modulo its
        // capacity: the word lies in the mapping.
        unsafe {
            &*self
                .ptr
                .add(CONTROL + (position as usize & (CAPACITY - 1)))
                .cast::<AtomicU64>()
        }
    }

    fn payload(&self, position: u64) -> *mut u8 {
        // SAFETY: as in `header`; a record never runs past the ring's end (padding).
        unsafe {
            self.ptr
                .add(CONTROL + (position as usize & (CAPACITY - 1)) + HEADER)
        }
    }
}

/// The one writer of a ring.
///
/// ```no_run
/// use ipckit_bench::raw_events::{Reader, Writer};
/// let mut writer = Writer::create("doc-raw-events");
/// let mut reader = Reader::open("doc-raw-events");
/// writer.send(b"hello");
/// let mut buf = Vec::new();
/// assert!(matches!(reader.try_recv(&mut buf), ipckit_bench::raw_events::Read::Event));
/// ```
pub struct Writer {
    ring: Ring,
    tail: u64,
}

impl Writer {
    /// Makes the ring `/dev/shm/NAME`, empty, and writes to it.
    pub fn create(name: &str) -> Writer {
        Writer {
            ring: Ring::open(name, true),
            tail: 0,
        }
    }

    /// Writes to the ring a reader made.
    pub fn open(name: &str) -> Writer {
        let ring = Ring::open(name, false);
        let tail = ring.tail().load(Ordering::Acquire);
        Writer { ring, tail }
    }

    /// Writes one event; the writer never waits, and overwrites the oldest.
    pub fn send(&mut self, payload: &[u8]) {
        self.write(EVENT, payload);
    }

    /// Says the stream ended.
    pub fn end(&mut self) {
        self.write(END, &[]);
    }

    fn write(&mut self, kind: u64, payload: &[u8]) {
        assert!(
            payload.len() <= MAX_EVENT,
            "an event over the ring's quarter"
        );
        let record = (HEADER + payload.len().next_multiple_of(8)) as u64;
        let mut at = self.tail;
        let room = CAPACITY as u64 - (at & (CAPACITY as u64 - 1));
        let pad = if record > room { room } else { 0 };
        let end = at + pad + record;
        // SYNC POINT: writer. Readers that read anything below `end - CAPACITY` from
        // here on see this intent after their copy, and drop what they read.
        self.ring.intent().store(end, Ordering::Relaxed);
        fence(Ordering::Release);
        if pad > 0 {
            self.ring
                .header(at)
                .store((pad - HEADER as u64) | (PADDING << 32), Ordering::Relaxed);
            at += pad;
        }
        // SAFETY: the record lies in the ring (padding put it at the start if it would
        // have run past the end); readers copying it meanwhile validate against the
        // intent above.
        unsafe {
            std::ptr::copy_nonoverlapping(payload.as_ptr(), self.ring.payload(at), payload.len());
        }
        self.ring
            .header(at)
            .store(payload.len() as u64 | (kind << 32), Ordering::Relaxed);
        self.ring.latest().store(at, Ordering::Relaxed);
        self.ring.tail().store(end, Ordering::Release);
        self.tail = end;
    }
}

/// What a reader found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Nothing new.
    Empty,
    /// An event, copied into the buffer.
    Event,
    /// The writer overtook this reader, which jumped to the newest record.
    Lapped,
    /// The writer ended the stream.
    End,
}

/// One reader of a ring, at its own cursor.
pub struct Reader {
    ring: Ring,
    cursor: u64,
}

impl Reader {
    /// Reads the ring `/dev/shm/NAME` from what is written next.
    pub fn open(name: &str) -> Reader {
        let ring = Ring::open(name, false);
        let cursor = ring.tail().load(Ordering::Acquire);
        Reader { ring, cursor }
    }

    /// Makes the ring `/dev/shm/NAME`, empty, and reads it (for a writer that comes after).
    pub fn create(name: &str) -> Reader {
        let ring = Ring::open(name, true);
        Reader { ring, cursor: 0 }
    }

    /// Takes the next record, if any; an event's payload is copied into `buf`.
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> Read {
        let capacity = CAPACITY as u64;
        loop {
            // SYNC POINT: reader, pairs with the writer's store of the tail.
            let tail = self.ring.tail().load(Ordering::Acquire);
            if self.cursor >= tail {
                return Read::Empty;
            }
            if self.ring.intent().load(Ordering::Relaxed) > self.cursor + capacity {
                return self.lapped();
            }
            let header = self.ring.header(self.cursor).load(Ordering::Relaxed);
            let (len, kind) = ((header & 0xffff_ffff) as usize, header >> 32);
            // A header torn by the writer's lap could claim anything: no copy past the
            // largest event, and validation below says whether it counted.
            let fits = len <= MAX_EVENT;
            if fits && kind == EVENT {
                buf.clear();
                // SAFETY: at most MAX_EVENT bytes from an 8-aligned record, which padding
                // keeps inside the ring; a racing overwrite is caught below.
                unsafe {
                    buf.reserve(len);
                    std::ptr::copy_nonoverlapping(
                        self.ring.payload(self.cursor),
                        buf.as_mut_ptr(),
                        len,
                    );
                    buf.set_len(len);
                }
            }
            // SYNC POINT: reader, pairs with the writer's fence after its intent.
            fence(Ordering::Acquire);
            if !fits || self.ring.intent().load(Ordering::Relaxed) > self.cursor + capacity {
                return self.lapped();
            }
            self.cursor += (HEADER + len.next_multiple_of(8)) as u64;
            match kind {
                EVENT => return Read::Event,
                END => return Read::End,
                _ => continue,
            }
        }
    }

    /// Goes on from the newest record (at worst one whose tail is still to come, then
    /// waited for), as Agrona's receiver does: a jump to the tail would skip it.
    fn lapped(&mut self) -> Read {
        self.cursor = self.ring.latest().load(Ordering::Acquire);
        Read::Lapped
    }

    /// Waits, spinning, for the next record that is not [`Read::Empty`].
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> Read {
        let mut spins = 0u32;
        loop {
            match self.try_recv(buf) {
                Read::Empty => {
                    std::hint::spin_loop();
                    spins = spins.saturating_add(1);
                    // Readers may share a CPU: after a while, each spin lets another run.
                    if spins > 4096 {
                        std::thread::yield_now();
                    }
                }
                read => return read,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_every_event_in_order_then_learns_it_was_lapped() {
        struct Removed(String);
        impl Drop for Removed {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
            }
        }
        let name = format!("ipckit-test-raw-events-{}", std::process::id());
        let _removed = Removed(name.clone());
        let mut writer = Writer::create(&name);
        let mut reader = Reader::open(&name);
        let mut buf = Vec::new();
        for n in 0..5000u64 {
            writer.send(&n.to_le_bytes().repeat(8));
            assert_eq!(reader.try_recv(&mut buf), Read::Event);
            assert_eq!(buf, n.to_le_bytes().repeat(8));
        }
        assert_eq!(reader.try_recv(&mut buf), Read::Empty);
        // More than the ring holds, unread: the reader is told, and goes on from there.
        for n in 0..(CAPACITY / 64) as u64 {
            writer.send(&n.to_le_bytes().repeat(8));
        }
        assert_eq!(reader.try_recv(&mut buf), Read::Lapped);
        let last = (CAPACITY / 64 - 1) as u64;
        assert_eq!(reader.try_recv(&mut buf), Read::Event, "the newest is kept");
        assert_eq!(buf, last.to_le_bytes().repeat(8));
        writer.send(b"after");
        writer.end();
        assert_eq!(reader.try_recv(&mut buf), Read::Event);
        assert_eq!(buf, b"after");
        assert_eq!(reader.try_recv(&mut buf), Read::End);
    }
}
