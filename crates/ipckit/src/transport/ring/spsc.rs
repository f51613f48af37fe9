//! A single-producer, single-consumer ring of variable-length records in shared memory.
//!
//! The ring is two monotonic byte counters and a power-of-two data area. The producer
//! owns `tail`, the consumer owns `head`; each only ever reads the other's. A record is a
//! 16-byte header followed by its payload, padded to 16 bytes, and never wraps: when it
//! would cross the end of the area the producer first writes a padding record up to the
//! end. A record becomes visible when `tail` moves past it, so a reader never sees a
//! torn or half-written record, and a producer killed while writing leaves nothing behind.
//!
//! The consumer trusts nothing it reads from shared memory: positions and lengths are
//! checked before use, copied out once, and a violation is [`Corrupt`], never an
//! out-of-bounds access. The model is checked with loom (`RUSTFLAGS="--cfg ipckit_loom"`).

use super::Shared;
#[cfg(not(all(ipckit_loom, test)))]
use super::SharedBytes;
use super::sync::{AtomicU32, AtomicU64, Ordering, fence};

/// Bytes in a record header: len (u32), kind (u8), flags (u8), two reserved bytes, id (u64),
/// all little-endian.
pub const RECORD_HEADER: usize = 16;
/// Records start at multiples of this, so payloads are 16-byte aligned.
pub const RECORD_ALIGN: usize = 16;

/// What a record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Filler up to the end of the data area; the next record starts at its beginning.
    Pad = 0,
    /// A one-way message.
    Message = 1,
    /// A request; the reply carries the same id.
    Request = 2,
    /// The answer to a request.
    Reply = 3,
    /// A refused request; the payload is the reason, in UTF-8.
    Refusal = 4,
    /// A message the server sent of its own accord (id 0), in the reply ring.
    Push = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Pad,
            1 => Kind::Message,
            2 => Kind::Request,
            3 => Kind::Reply,
            4 => Kind::Refusal,
            5 => Kind::Push,
            _ => return None,
        })
    }
}

/// Flag: the message continues in the next record (it was too large for one).
pub const MORE: u8 = 1;

/// The control block of a ring, in shared memory. Each counter sits on a cache line of its
/// own, and the sleep flags on a third, so that the two sides do not steal each other's
/// line on every update: a flag is written only by a side about to sleep.
#[repr(C, align(128))]
pub struct Control {
    /// Bytes ever published; written by the producer only.
    tail: AtomicU64,
    _tail_line: [u8; 120],
    /// Bytes ever consumed; written by the consumer only.
    head: AtomicU64,
    _head_line: [u8; 120],
    /// 1 while the producer sleeps waiting for space.
    pub producer_sleeps: AtomicU32,
    /// 1 while the consumer sleeps waiting for data (rings whose consumer waits on a
    /// doorbell shared with other rings leave it unused).
    pub consumer_sleeps: AtomicU32,
    _flags_line: [u8; 120],
}

impl Control {
    /// A fresh, empty ring.
    #[cfg(all(test, ipckit_loom))]
    pub fn new() -> Control {
        Control {
            tail: AtomicU64::new(0),
            _tail_line: [0; 120],
            head: AtomicU64::new(0),
            _head_line: [0; 120],
            producer_sleeps: AtomicU32::new(0),
            consumer_sleeps: AtomicU32::new(0),
            _flags_line: [0; 120],
        }
    }

    /// The producer's counter, for a test or fuzz target playing a peer that writes
    /// anything there.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn tail_word(&self) -> &AtomicU64 {
        &self.tail
    }

    /// The consumer's counter, as [`tail_word`](Self::tail_word).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn head_word(&self) -> &AtomicU64 {
        &self.head
    }

    /// Empties the ring; only while neither side is attached.
    pub fn reset(&self) {
        self.tail.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
        self.producer_sleeps.store(0, Ordering::Relaxed);
        self.consumer_sleeps.store(0, Ordering::Relaxed);
    }

    /// Hands the space up to `end` back to the producer.
    #[inline(always)]
    pub(crate) fn release_to(&self, end: u64) {
        // SYNC POINT (space): the consumer's reads of the records before `end` happen
        // before the producer's Acquire of `head` in `look_at_head`, which reuses them.
        self.head.store(end, Ordering::Release);
    }
}

/// The sleeper's half of the wake-up handshake: says on `word` that it is about to sleep,
/// and how it is to be woken (`how`, never 0: a futex wake, or its bell). The caller must
/// then check its condition once more before sleeping.
///
/// With [`sleeper_announced`] on the waker's side this is the store-fence-load pattern
/// of Dekker: the waker publishes, fences, and reads `word`; the sleeper writes `word`,
/// fences, and reads what the waker published. The two fences are ordered one way or the
/// other, so at least one side sees the other's write: a wake-up is never lost.
#[inline(always)]
pub fn announce_sleep(word: &AtomicU32, how: u32) {
    word.store(how, Ordering::Relaxed);
    // SYNC POINT (sleep): pairs with the fence in `sleeper_announced`.
    fence(Ordering::SeqCst);
}

/// The waker's half: after publishing, whether the other side announced it sleeps.
#[inline(always)]
pub fn sleeper_announced(word: &AtomicU32) -> bool {
    // SYNC POINT (sleep): pairs with the fence in `announce_sleep`.
    fence(Ordering::SeqCst);
    word.load(Ordering::Relaxed) != 0
}

/// A peer broke the ring's invariants: the connection cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt(pub String);

/// The data area of a ring. Outside loom it is raw shared memory.
#[cfg(not(all(ipckit_loom, test)))]
pub struct Area {
    bytes: SharedBytes,
    capacity: usize,
}

#[cfg(not(all(ipckit_loom, test)))]
impl Area {
    /// The data area in `bytes`, whose length is a power of two, a multiple of
    /// [`RECORD_ALIGN`].
    pub fn new(bytes: SharedBytes) -> Area {
        let capacity = bytes.len();
        assert!(capacity.is_power_of_two() && capacity >= 2 * RECORD_ALIGN);
        Area { bytes, capacity }
    }

    #[inline(always)]
    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at <= self.capacity && bytes.len() <= self.capacity - at);
        // SAFETY: in bounds (asserted); only the producer writes, and only into space it
        // owns between `tail` and `head + capacity`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.bytes.as_ptr().add(at), bytes.len())
        }
    }

    #[inline(always)]
    fn read(&self, at: usize, out: &mut [u8]) {
        assert!(at <= self.capacity && out.len() <= self.capacity - at);
        // SAFETY: in bounds (asserted). The bytes were published before `tail` moved past
        // them (Acquire), and the producer does not reuse them before `head` passes them.
        unsafe {
            std::ptr::copy_nonoverlapping(self.bytes.as_ptr().add(at), out.as_mut_ptr(), out.len())
        }
    }

    #[inline(always)]
    fn append(&self, at: usize, len: usize, out: &mut Vec<u8>) {
        assert!(at <= self.capacity && len <= self.capacity - at);
        // SAFETY: in bounds (asserted); published and not reused before release, as in
        // `read`.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(self.bytes.as_ptr().add(at), len)
        });
    }

    /// Loads the byte at `at` and discards it: starts fetching its cache line while the
    /// caller works on another, so that two misses overlap instead of following each
    /// other.
    #[inline(always)]
    fn touch(&self, at: usize) {
        assert!(at < self.capacity);
        // SAFETY: in bounds (asserted); the caller only touches published bytes.
        unsafe { std::ptr::read_volatile(self.bytes.as_ptr().add(at)) };
    }

    /// The address of `len` bytes at `at`, checked to lie inside the area.
    pub fn range(&self, at: usize, len: usize) -> *mut u8 {
        assert!(at <= self.capacity && len <= self.capacity - at);
        // SAFETY: in bounds (asserted).
        unsafe { self.bytes.as_ptr().add(at) }
    }
}

/// Under loom, the area is a vector of tracked cells so that loom reports any read of a
/// byte that was not published to the reader.
#[cfg(all(ipckit_loom, test))]
pub struct Area {
    cells: std::sync::Arc<Vec<loom::cell::UnsafeCell<u8>>>,
    capacity: usize,
}

#[cfg(all(ipckit_loom, test))]
impl Area {
    /// An area shared by the clones made with [`Area::share`].
    pub fn with_capacity(capacity: usize) -> Area {
        Area {
            cells: std::sync::Arc::new(
                (0..capacity)
                    .map(|_| loom::cell::UnsafeCell::new(0))
                    .collect(),
            ),
            capacity,
        }
    }

    /// Another handle on the same bytes.
    pub fn share(&self) -> Area {
        Area {
            cells: self.cells.clone(),
            capacity: self.capacity,
        }
    }

    #[inline(always)]
    fn write(&self, at: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: loom checks the access.
            self.cells[at + i].with_mut(|p| unsafe { *p = *b });
        }
    }

    fn touch(&self, _at: usize) {}

    #[inline(always)]
    fn append(&self, at: usize, len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + len, 0);
        self.read(at, &mut out[start..]);
    }

    #[inline(always)]
    fn read(&self, at: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: loom checks the access.
            *b = self.cells[at + i].with(|p| unsafe { *p });
        }
    }
}

#[inline(always)]
fn padded(len: usize) -> usize {
    (RECORD_HEADER + len).next_multiple_of(RECORD_ALIGN)
}

#[inline(always)]
fn encode_header(len: usize, kind: Kind, flags: u8, id: u64) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4] = kind as u8;
    h[5] = flags;
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h
}

/// How far into the data area a producer writes records of up to this size before it
/// goes back to the start, when the consumer has taken what lies there. See
/// [`Producer::try_reserve`].
pub const HOT_WINDOW: usize = 4096;

/// The writing end. Its owner guarantees there is only one per ring.
pub struct Producer {
    control: Shared<Control>,
    area: Area,
    tail: u64,
    head_seen: u64,
    /// [`HOT_WINDOW`], or less in a small ring.
    window: usize,
    /// The tail from which the consumer's position may be read again to go back early.
    next_look: u64,
}

/// Space claimed at the tail, to be filled and then published with [`Producer::commit`].
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    /// Where a padding record goes first, if the record would cross the end.
    pad_at: Option<usize>,
    /// Offset of the record header in the area.
    at: usize,
    /// Payload bytes claimed.
    capacity: usize,
    /// The tail once the padding (if any) is published: where the record begins.
    start: u64,
}

impl Reservation {
    /// Offset in the area of the payload.
    pub fn payload_at(&self) -> usize {
        self.at + RECORD_HEADER
    }

    /// Payload bytes claimed.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Producer {
    /// # Safety
    /// `control` describes `area`, and no other producer writes to the same ring: the
    /// producer writes its bytes unsynchronised. Nothing else in this process touches the
    /// area's bytes but this ring's producer and consumer.
    pub unsafe fn new(control: Shared<Control>, area: Area) -> Producer {
        let tail = control.tail.load(Ordering::Acquire);
        Producer {
            window: HOT_WINDOW.min(area.capacity / 4),
            head_seen: control.head.load(Ordering::Acquire),
            control,
            area,
            tail,
            next_look: tail,
        }
    }

    #[inline(always)]
    fn control(&self) -> &Control {
        &self.control
    }

    /// The largest payload one record can carry.
    pub fn max_record(&self) -> usize {
        self.area.capacity / 2 - RECORD_HEADER
    }

    /// The bytes of the data area.
    pub fn capacity(&self) -> usize {
        self.area.capacity
    }

    /// The data area.
    pub fn area(&self) -> &Area {
        &self.area
    }

    /// Claims room for a payload of `len` bytes; `None` while the ring is too full.
    ///
    /// A record of up to [`HOT_WINDOW`] bytes, once the producer is that far into the area,
    /// goes back to the start (after a padding record) if the consumer has already taken
    /// what lies there. A pair that keeps up with each other thus cycles through a few KiB
    /// that stay in both cores' first-level caches, where walking the whole ring would
    /// make every record a miss in a cache further out; a consumer that lags still gets
    /// the whole ring. Larger records walk the ring: cycling them through the same lines
    /// makes the two cores take every line of every message from each other.
    #[inline(always)]
    pub fn try_reserve(&mut self, len: usize) -> Result<Option<Reservation>, Corrupt> {
        assert!(
            len <= self.max_record(),
            "record larger than the ring allows"
        );
        let capacity = self.area.capacity;
        let need = padded(len);
        let at = (self.tail as usize) & (capacity - 1);
        let to_end = capacity - at;
        let back_to_start = need > to_end
            || (len <= self.window
                && at >= self.window
                && need <= at
                && self.start_has_room(to_end + need)?);
        let pad = if back_to_start { to_end } else { 0 };
        let total = (pad + need) as u64;
        if self.tail + total - self.head_seen > capacity as u64 {
            self.look_at_head()?;
            if self.tail + total - self.head_seen > capacity as u64 {
                return Ok(None);
            }
        }
        Ok(Some(Reservation {
            pad_at: (pad > 0).then_some(at),
            at: if pad > 0 { 0 } else { at },
            capacity: len,
            start: self.tail + pad as u64,
        }))
    }

    /// Whether `total` more bytes fit, going back to the start early. The consumer's
    /// position (a cache miss) is read again at most once per window of bytes written.
    #[inline(always)]
    fn start_has_room(&mut self, total: usize) -> Result<bool, Corrupt> {
        let fits = |p: &Producer| p.tail + total as u64 - p.head_seen <= p.area.capacity as u64;
        if fits(self) {
            return Ok(true);
        }
        if self.tail < self.next_look {
            return Ok(false);
        }
        self.next_look = self.tail + self.window as u64;
        self.look_at_head()?;
        Ok(fits(self))
    }

    /// Reads where the consumer is, and checks that it is possible.
    #[inline(always)]
    fn look_at_head(&mut self) -> Result<(), Corrupt> {
        // SYNC POINT (space): pairs with the Release in `Control::release_to`.
        let head = self.control().head.load(Ordering::Acquire);
        if head < self.head_seen || head > self.tail {
            return Err(Corrupt(format!(
                "the consumer's position {head} is outside [{}, {}]",
                self.head_seen, self.tail
            )));
        }
        self.head_seen = head;
        Ok(())
    }

    /// Copies `bytes` into the reservation at `offset` of its payload.
    #[inline(always)]
    pub fn write(&mut self, r: &Reservation, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= r.capacity);
        self.area.write(r.payload_at() + offset, bytes);
    }

    /// Publishes the first `len` bytes of the reservation as one record.
    #[inline(always)]
    pub fn commit(&mut self, r: Reservation, len: usize, kind: Kind, flags: u8, id: u64) {
        assert!(len <= r.capacity);
        if let Some(pad_at) = r.pad_at {
            let pad_len = self.area.capacity - pad_at - RECORD_HEADER;
            self.area
                .write(pad_at, &encode_header(pad_len, Kind::Pad, 0, 0));
        }
        self.area.write(r.at, &encode_header(len, kind, flags, id));
        self.tail = r.start + padded(len) as u64;
        // SYNC POINT (publish): the record's bytes, written above, happen before the
        // consumer's Acquire of `tail` in `peek` (and `has_data`) that reads them.
        self.control().tail.store(self.tail, Ordering::Release);
    }

    /// Whether the consumer is still behind the producer: used to tell a peer that
    /// takes nothing any more.
    pub fn pending(&self) -> u64 {
        self.tail - self.control().head.load(Ordering::Acquire)
    }

    /// Bytes free in the ring now: only the consumer frees more meanwhile.
    pub fn free(&self) -> u64 {
        (self.area.capacity as u64).saturating_sub(self.pending())
    }
}

/// A record read from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// What it carries.
    pub kind: Kind,
    /// [`MORE`] or nothing.
    pub flags: u8,
    /// The request it belongs to.
    pub id: u64,
    /// Offset of its payload in the area.
    pub payload_at: usize,
    /// Payload length.
    pub len: usize,
    /// Where the record (with any padding before it) begins in the stream of bytes.
    pub start: u64,
    /// Consuming up to here releases this record and any padding before it.
    pub end: u64,
}

/// The reading end. Its owner guarantees there is only one per ring.
pub struct Consumer {
    control: Shared<Control>,
    area: Area,
    /// Where the next record is read; ahead of the shared head while records are held.
    next: u64,
    tail_seen: u64,
}

impl Consumer {
    /// # Safety
    /// As for [`Producer::new`], with "consumer" for "producer": the consumer's view of
    /// what is published is its own.
    pub unsafe fn new(control: Shared<Control>, area: Area) -> Consumer {
        let next = control.head.load(Ordering::Acquire);
        Consumer {
            control,
            area,
            next,
            tail_seen: next,
        }
    }

    #[inline(always)]
    fn control(&self) -> &Control {
        &self.control
    }

    /// Whether a record is waiting, without validating it.
    #[inline(always)]
    pub fn has_data(&self) -> bool {
        self.next != self.tail_seen || self.control().tail.load(Ordering::Acquire) != self.next
    }

    /// The next record, if one is published; padding is skipped.
    #[inline(always)]
    pub fn peek(&mut self) -> Result<Option<Record>, Corrupt> {
        let capacity = self.area.capacity as u64;
        let start = self.next;
        loop {
            if self.next == self.tail_seen {
                // SYNC POINT (publish): pairs with the Release in `Producer::commit`.
                let tail = self.control().tail.load(Ordering::Acquire);
                if tail == self.next {
                    return Ok(None);
                }
                if tail < self.next
                    || tail - self.next > capacity
                    || tail % RECORD_ALIGN as u64 != 0
                {
                    return Err(Corrupt(format!(
                        "the producer's position {tail} is impossible (reader at {})",
                        self.next
                    )));
                }
                self.tail_seen = tail;
            }
            let available = (self.tail_seen - self.next) as usize;
            let at = (self.next as usize) & (self.area.capacity - 1);
            // A record's payload usually runs into the next cache line: fetch it together
            // with the header's.
            if available > 64 && at + 64 < self.area.capacity {
                self.area.touch(at + 64);
            }
            let mut h = [0u8; RECORD_HEADER];
            self.area.read(at, &mut h);
            let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
            let kind = Kind::from_u8(h[4])
                .ok_or_else(|| Corrupt(format!("unknown record kind {}", h[4])))?;
            let flags = h[5];
            let id = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let to_end = self.area.capacity - at;
            if len > to_end || padded(len) > to_end || padded(len) > available || flags & !MORE != 0
            {
                return Err(Corrupt(format!(
                    "a record of {len} bytes at offset {at} overruns the ring \
                     ({available} bytes published, {to_end} to the end)"
                )));
            }
            let end = self.next + padded(len) as u64;
            if kind == Kind::Pad {
                if padded(len) != to_end {
                    return Err(Corrupt(format!("padding at {at} does not reach the end")));
                }
                self.next = end;
                continue;
            }
            self.next = end;
            return Ok(Some(Record {
                kind,
                flags,
                id,
                payload_at: at + RECORD_HEADER,
                len,
                start,
                end,
            }));
        }
    }

    /// Copies a record's payload out.
    #[cfg(test)]
    pub fn read(&self, record: &Record, out: &mut [u8]) {
        self.area.read(record.payload_at, &mut out[..record.len]);
    }

    /// A record's payload where it lies, valid until the record is released.
    #[cfg(not(all(ipckit_loom, test)))]
    #[inline(always)]
    pub fn payload(&self, record: &Record) -> &[u8] {
        let start = self.area.range(record.payload_at, record.len);
        // SAFETY: `range` checked the bytes lie inside the area; they were published
        // before the tail moved past them (read with Acquire by `peek`), and the producer
        // does not write them again before `head` passes them, which only the owner of
        // this consumer moves, not while it holds this borrow of the consumer.
        unsafe { std::slice::from_raw_parts(start, record.len) }
    }

    /// Appends a record's payload to `out`.
    #[inline(always)]
    pub fn append_to(&self, record: &Record, out: &mut Vec<u8>) {
        self.area.append(record.payload_at, record.len, out);
    }

    /// Gives the space up to `end` back to the producer.
    #[inline(always)]
    pub fn release(&mut self, end: u64) {
        self.control().release_to(end);
    }

    /// Where the next unread record begins.
    pub fn position(&self) -> u64 {
        self.next
    }
}

#[cfg(all(test, not(ipckit_loom)))]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::AtomicU8;

    use crate::transport::ring::Mapping;

    struct Ring {
        map: Arc<Mapping>,
        control: Shared<Control>,
        producer: Producer,
        consumer: Consumer,
    }

    /// Where a test ring's data begins in its mapping.
    const DATA: usize = 4096;

    /// A ring in fresh shared memory: the control block (zeroed, as a new one is) in the
    /// first page, the data after it.
    fn ring(capacity: usize) -> Ring {
        let map = Arc::new(Mapping::anonymous(DATA + capacity).unwrap());
        let control = map.get::<Control>(0);
        // SAFETY: one producer and one consumer, each given the ring's control block.
        let (producer, consumer) = unsafe {
            (
                Producer::new(control.clone(), Area::new(map.bytes(DATA, capacity))),
                Consumer::new(control.clone(), Area::new(map.bytes(DATA, capacity))),
            )
        };
        Ring {
            map,
            control,
            producer,
            consumer,
        }
    }

    fn send(p: &mut Producer, bytes: &[u8]) -> bool {
        match p.try_reserve(bytes.len()).unwrap() {
            Some(r) => {
                p.write(&r, 0, bytes);
                p.commit(r, bytes.len(), Kind::Message, 0, 7);
                true
            }
            None => false,
        }
    }

    fn take(c: &mut Consumer) -> Option<Vec<u8>> {
        let r = c.peek().unwrap()?;
        let mut out = vec![0; r.len];
        c.read(&r, &mut out);
        c.release(r.end);
        Some(out)
    }

    #[test]
    fn wraps_with_padding_and_keeps_order() {
        let mut ring = ring(256);
        let mut expected = std::collections::VecDeque::new();
        for i in 0..1000usize {
            let msg: Vec<u8> = (0..(i * 7) % 100).map(|b| (b + i) as u8).collect();
            while !send(&mut ring.producer, &msg) {
                assert_eq!(take(&mut ring.consumer), expected.pop_front());
            }
            expected.push_back(msg);
        }
        while let Some(m) = take(&mut ring.consumer) {
            assert_eq!(Some(m), expected.pop_front());
        }
        assert!(expected.is_empty());
    }

    #[test]
    fn garbage_is_reported_not_followed() {
        let mut ring = ring(256);
        send(&mut ring.producer, b"hello");
        // A length running past the data published.
        ring.map.at::<AtomicU32>(DATA).store(200, Ordering::SeqCst);
        assert!(ring.consumer.peek().is_err());
        let mut ring2 = self::ring(256);
        ring2.control.tail.store(1 << 40, Ordering::SeqCst);
        assert!(ring2.consumer.peek().is_err());
        let mut ring3 = self::ring(256);
        send(&mut ring3.producer, b"hello");
        ring3
            .map
            .at::<AtomicU8>(DATA + 4)
            .store(99, Ordering::SeqCst);
        assert!(ring3.consumer.peek().is_err());
        let mut ring4 = self::ring(256);
        ring4.control.head.store(1 << 40, Ordering::SeqCst);
        // Two records too large to go back early fit without asking where the consumer
        // is; the third must ask.
        for _ in 0..2 {
            let r = ring4.producer.try_reserve(100).unwrap().unwrap();
            ring4.producer.commit(r, 100, Kind::Message, 0, 0);
        }
        let e = ring4.producer.try_reserve(100).unwrap_err();
        assert!(e.0.contains("consumer"), "{e:?}");
    }

    #[test]
    fn a_consumer_that_keeps_up_keeps_small_records_near_the_start() {
        let furthest = |size: usize| {
            let mut ring = ring(1 << 16);
            let mut furthest = 0;
            for i in 0..1000usize {
                let msg = vec![i as u8; size];
                let r = ring.producer.try_reserve(msg.len()).unwrap().unwrap();
                furthest = furthest.max(r.payload_at());
                ring.producer.write(&r, 0, &msg);
                ring.producer
                    .commit(r, msg.len(), Kind::Message, 0, i as u64);
                assert_eq!(take(&mut ring.consumer), Some(msg));
            }
            furthest
        };
        for size in [0, 64, HOT_WINDOW] {
            let at = furthest(size);
            assert!(
                at <= HOT_WINDOW + 2 * padded(size),
                "{size}: went up to {at}"
            );
        }
        // Larger records walk the whole ring.
        assert!(furthest(HOT_WINDOW + 1) > (1 << 16) - 2 * padded(HOT_WINDOW + 1));
    }

    #[test]
    fn a_consumer_that_lags_still_gets_the_whole_ring() {
        let mut ring = ring(1 << 16);
        let msg = [7u8; 64];
        let mut sent = 0;
        while send(&mut ring.producer, &msg) {
            sent += 1;
        }
        assert_eq!(sent, (1 << 16) / padded(msg.len()));
        // Freed space at the start is used once the producer is past the window.
        assert!(take(&mut ring.consumer).is_some());
        assert!(send(&mut ring.producer, &msg));
        while take(&mut ring.consumer).is_some() {}
    }
}

#[cfg(all(test, ipckit_loom))]
mod loom_tests {
    use super::*;

    /// Messages of varying size cross a tiny ring that wraps, in order, intact, with no
    /// unsynchronised access to any byte (loom's cells would report it).
    #[test]
    fn messages_cross_intact_and_in_order() {
        loom::model(|| {
            let control = Shared::new(Control::new());
            let area = Area::with_capacity(64);
            let consumer_area = area.share();
            let producer_control = control.clone();
            let producer = loom::thread::spawn(move || {
                // SAFETY: one producer.
                let mut p = unsafe { Producer::new(producer_control.clone(), area) };
                for (i, len) in [3usize, 12, 5].into_iter().enumerate() {
                    let msg = vec![i as u8 + 1; len];
                    loop {
                        if let Some(r) = p.try_reserve(len).unwrap() {
                            p.write(&r, 0, &msg);
                            p.commit(r, len, Kind::Message, 0, i as u64);
                            break;
                        }
                        loom::thread::yield_now();
                    }
                }
            });
            // SAFETY: as above; one consumer.
            let mut c = unsafe { Consumer::new(control.clone(), consumer_area) };
            let mut got = 0u64;
            while got < 3 {
                match c.peek().unwrap() {
                    Some(r) => {
                        assert_eq!(r.id, got);
                        let mut out = vec![0; r.len];
                        c.read(&r, &mut out);
                        assert!(out.iter().all(|&b| b == got as u8 + 1), "{out:?}");
                        c.release(r.end);
                        got += 1;
                    }
                    None => loom::thread::yield_now(),
                }
            }
            producer.join().unwrap();
        });
    }

    /// The sleep/wake handshake: a consumer that announces it sleeps and then checks
    /// once more never misses a record published concurrently.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let control = Shared::new(Control::new());
            let area = Area::with_capacity(64);
            let consumer_area = area.share();
            let producer_control = control.clone();
            let producer = loom::thread::spawn(move || {
                // SAFETY: as above.
                let mut p = unsafe { Producer::new(producer_control.clone(), area) };
                let r = p.try_reserve(4).unwrap().unwrap();
                p.write(&r, 0, b"ring");
                p.commit(r, 4, Kind::Message, 0, 1);
                // What `wait::wake` does: a consumer that said it sleeps is woken.
                sleeper_announced(&producer_control.consumer_sleeps)
            });
            // SAFETY: as above.
            let mut c = unsafe { Consumer::new(control.clone(), consumer_area) };
            announce_sleep(&control.consumer_sleeps, 1);
            let saw_data = c.has_data();
            let woken = producer.join().unwrap();
            // Either the consumer saw the record before sleeping or the producer saw the
            // announcement and woke it: never neither.
            assert!(saw_data || woken);
            if saw_data {
                assert_eq!(c.peek().unwrap().unwrap().len, 4);
            }
        });
    }
}
