//! The hardware floor for shared memory: a bare busy-spin ping-pong over two
//! single-producer/single-consumer rings of fixed-size slots (64 bytes, one cache line,
//! unless a run asks for another size) in a shared mapping. No framing, no wake-ups, no
//! checks: what any shared-memory IPC costs at the least.
//!
//! The same ping-pong can also frame its messages as ipckit does ([`Framing::Records`]),
//! so that a run shows what the record format alone costs, apart from any software.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SLOTS: usize = 64;
/// Bytes in a message, unless a run asks for another size.
pub const SLOT: usize = 64;
/// The most a ring's slots take: large messages get fewer slots (a ping-pong has one
/// message in flight), not a mapping of 64 of them.
const RING_BYTES: usize = 4 << 20;
/// Bytes in an ipckit record header (`ipckit`'s shm ring: length, kind, flags, id).
const HEADER: usize = 16;

/// How a bare ring lays out its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A slot per message, whole cache lines: a 64-byte message is exactly one line.
    Slots,
    /// As ipckit's shm rings frame them: a 16-byte header before the payload, records
    /// one after the other at 16-byte alignment, so that a 64-byte message spans two
    /// cache lines and most headers share a line with the previous record's end.
    Records,
}

impl Framing {
    /// Bytes from one message of `size` bytes to the next.
    fn stride(self, size: usize) -> usize {
        match self {
            Framing::Slots => size.next_multiple_of(64),
            Framing::Records => HEADER + size.next_multiple_of(HEADER),
        }
    }
}

/// A ring's counters, each on a line (a pair of lines, for the prefetcher) of its own;
/// the slots follow them in the mapping.
#[repr(C, align(128))]
struct Counters {
    tail: AtomicU64,
    _tail_line: [u8; 120],
    head: AtomicU64,
    _head_line: [u8; 120],
}

/// Maps `len` bytes of `/dev/shm/NAME`, created (zeroed) when `create`. The mapping lives
/// as long as the process.
pub(crate) fn map(name: &str, len: usize, create: bool) -> *mut u8 {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(format!("/dev/shm/{name}"))
        .expect("open the raw segment");
    if create {
        // Counters left by an earlier run would be taken for this one's.
        file.set_len(0).unwrap();
    }
    file.set_len(len as u64).unwrap();
    // SAFETY: a fresh shared mapping of a file of `len` bytes; all-zero bytes are valid
    // counters and slots.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &file,
            0,
        )
        .unwrap()
    };
    ptr.cast()
}

/// The mapping: requests, then replies.
///
/// ```no_run
/// use ipckit_bench::raw_shm::{Framing, Rings, SLOT};
/// let server =
///     std::thread::spawn(|| Rings::open("doc-raw", true, Framing::Slots, SLOT).serve());
/// let mut round_trip = Rings::open("doc-raw", false, Framing::Slots, SLOT).client();
/// round_trip();
/// ```
pub struct Rings {
    ptr: *mut u8,
    framing: Framing,
    /// Bytes in a message.
    size: usize,
    /// Slots in each ring.
    slots: usize,
    /// Bytes from one ring's counters to the next's.
    ring_len: usize,
}

impl Rings {
    /// Maps `/dev/shm/NAME` for messages of `size` bytes, creating it when `create`;
    /// both sides must use the same framing and size.
    pub fn open(name: &str, create: bool, framing: Framing, size: usize) -> Rings {
        let stride = framing.stride(size.max(1));
        let slots = (RING_BYTES / stride).clamp(1, SLOTS);
        let ring_len = (size_of::<Counters>() + slots * stride).next_multiple_of(128);
        Rings {
            ptr: map(name, 2 * ring_len, create),
            framing,
            size,
            slots,
            ring_len,
        }
    }

    fn ring(&self, i: usize) -> &Counters {
        // SAFETY: the mapping holds two rings, each starting 128-aligned (a page-aligned
        // mapping, `ring_len` a multiple of 128) with its counters, and lives as long as
        // the process.
        unsafe { &*self.ptr.add(i * self.ring_len).cast::<Counters>() }
    }

    /// Where message number `n` of ring `ring` lies.
    fn message(&self, ring: usize, n: u64) -> *mut u8 {
        let offset =
            size_of::<Counters>() + n as usize % self.slots * self.framing.stride(self.size);
        // SAFETY: the mapping holds two rings of `ring_len` bytes, each the counters and
        // `slots` strides.
        unsafe { self.ptr.add(ring * self.ring_len + offset) }
    }

    fn send(&self, ring: usize, tail: &mut u64, bytes: &[u8]) {
        debug_assert_eq!(bytes.len(), self.size);
        let r = self.ring(ring);
        spin_until(|| *tail - r.head.load(Ordering::Acquire) < self.slots as u64);
        let at = self.message(ring, *tail);
        // SAFETY: the slot lies between head and tail + slots: only the producer touches
        // it, and `stride` bytes from `at` lie inside the ring.
        unsafe {
            let payload = match self.framing {
                Framing::Slots => at,
                Framing::Records => {
                    let header = [self.size as u64, *tail];
                    at.cast::<[u64; 2]>().write_unaligned(header);
                    at.add(HEADER)
                }
            };
            copy_in(payload, bytes);
        }
        *tail += 1;
        r.tail.store(*tail, Ordering::Release);
    }

    fn ready(&self, ring: usize, head: u64) -> bool {
        self.ring(ring).tail.load(Ordering::Acquire) != head
    }

    fn try_recv(&self, ring: usize, head: &mut u64, out: &mut [u8]) -> bool {
        let r = self.ring(ring);
        if r.tail.load(Ordering::Acquire) == *head {
            return false;
        }
        let at = self.message(ring, *head);
        // SAFETY: published by the tail store (Acquire above); the producer does not
        // reuse it before head moves past it. In bounds as in `send`.
        unsafe {
            let payload = match self.framing {
                Framing::Slots => at,
                Framing::Records => {
                    // The header is read, as a receiver must; the payload's place does
                    // not depend on it, so both lines are fetched at once.
                    std::hint::black_box(at.cast::<[u64; 2]>().read_unaligned());
                    at.add(HEADER)
                }
            };
            copy_out(out, payload);
        }
        *head += 1;
        r.head.store(*head, Ordering::Release);
        true
    }

    /// The echo server: spins while busy; idle for a while, it naps, so that it does not
    /// steal the core from a contender measured in between.
    pub fn serve(&self) -> ! {
        let (mut head, mut tail) = (0, 0);
        let mut buf = vec![0u8; self.size];
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.try_recv(0, &mut head, &mut buf) {
                self.send(1, &mut tail, &buf);
                spins = 0;
                continue;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins == 1 {
                idle_since = Instant::now();
            } else if spins % 1024 == 0 {
                // The client may share this CPU (taskset -c 0): it runs if it can.
                std::thread::yield_now();
                if idle_since.elapsed() <= Duration::from_micros(200) {
                    continue;
                }
                // Idle: nap, and look again after each nap without spinning.
                while !self.ready(0, head) {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }

    /// A client's round trip.
    pub fn client(self) -> impl FnMut() {
        let (mut head, mut tail) = (0, 0);
        let payload = vec![7u8; self.size];
        let mut buf = vec![0u8; self.size];
        move || {
            self.send(0, &mut tail, &payload);
            spin_until(|| self.try_recv(1, &mut head, &mut buf));
        }
    }
}

// SAFETY: the mapping is shared memory guarded by the ring protocol.
unsafe impl Send for Rings {}

/// Spins until `ready`; after many fruitless spins, yields at each, so that a peer that
/// shares the CPU (`taskset -c 0`, `--cpus 0`) runs rather than waiting out a time slice.
/// On cores of their own, an answer comes long before.
fn spin_until(mut ready: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        std::hint::spin_loop();
        spins = spins.saturating_add(1);
        if spins > 4096 {
            std::thread::yield_now();
        }
    }
}

/// Copies `bytes` to `to`; a 64-byte message as one fixed-size move, as the floor's
/// one-line message has always been copied, so that the default size measures the same.
///
/// # Safety
/// `to` is valid for `bytes.len()` bytes of writes.
unsafe fn copy_in(to: *mut u8, bytes: &[u8]) {
    // SAFETY: the caller's promise.
    unsafe {
        match <&[u8; SLOT]>::try_from(bytes) {
            Ok(line) => to.cast::<[u8; SLOT]>().write_unaligned(*line),
            Err(_) => std::ptr::copy_nonoverlapping(bytes.as_ptr(), to, bytes.len()),
        }
    }
}

/// Copies `out.len()` bytes from `from` into `out`, as [`copy_in`] does.
///
/// # Safety
/// `from` is valid for `out.len()` bytes of reads.
unsafe fn copy_out(out: &mut [u8], from: *const u8) {
    // SAFETY: the caller's promise.
    unsafe {
        match <&mut [u8; SLOT]>::try_from(&mut *out) {
            Ok(line) => *line = from.cast::<[u8; SLOT]>().read_unaligned(),
            Err(_) => std::ptr::copy_nonoverlapping(from, out.as_mut_ptr(), out.len()),
        }
    }
}

/// The floor for streaming: a bare ring of fixed-size slots in shared memory, filled with
/// memcpy by one process and emptied with memcpy by another, both spinning.
pub struct Stream {
    ptr: *mut u8,
    slot: usize,
    slots: usize,
}

const STREAM_HEADER: usize = 256;

// SAFETY: the mapping is shared memory guarded by the ring protocol.
unsafe impl Send for Stream {}

impl Stream {
    /// Maps `/dev/shm/NAME` with room for `bytes` of `slot`-byte slots (one slot at
    /// least, however large), creating it when `create`.
    pub fn open(name: &str, bytes: usize, slot: usize, create: bool) -> Stream {
        let slots = (bytes / slot).max(1);
        let ptr = map(name, STREAM_HEADER + slots * slot, create);
        Stream {
            ptr: ptr.cast(),
            slot,
            slots,
        }
    }

    fn counter(&self, i: usize) -> &AtomicU64 {
        // SAFETY: the header holds two counters on separate cache lines, in the mapping.
        unsafe { &*self.ptr.add(i * 128).cast::<AtomicU64>() }
    }

    fn slot(&self, n: u64) -> *mut u8 {
        // SAFETY: in bounds: the slot index is taken modulo the slot count.
        unsafe {
            self.ptr
                .add(STREAM_HEADER + (n as usize % self.slots) * self.slot)
        }
    }

    /// Copies `count` messages of `source` (one slot long) into the ring.
    pub fn produce(&self, source: &[u8], count: u64) {
        assert_eq!(source.len(), self.slot);
        let (tail, head) = (self.counter(0), self.counter(1));
        for n in 0..count {
            spin_until(|| n - head.load(Ordering::Acquire) < self.slots as u64);
            // SAFETY: slot `n` is free (the consumer is past it) until the tail moves.
            unsafe { std::ptr::copy_nonoverlapping(source.as_ptr(), self.slot(n), self.slot) };
            tail.store(n + 1, Ordering::Release);
        }
    }

    /// Copies `count` messages out of the ring into `sink` (one slot long).
    pub fn consume(&self, sink: &mut [u8], count: u64) {
        assert_eq!(sink.len(), self.slot);
        let (tail, head) = (self.counter(0), self.counter(1));
        for n in 0..count {
            spin_until(|| tail.load(Ordering::Acquire) != n);
            // SAFETY: slot `n` was published by the tail store (Acquire above).
            unsafe { std::ptr::copy_nonoverlapping(self.slot(n), sink.as_mut_ptr(), self.slot) };
            head.store(n + 1, Ordering::Release);
        }
    }
}
