//! A broadcast ring in shared memory: any number of writers taking turns under a write
//! lock, any number of readers each at its own position, none of which a writer waits
//! for (unless the segment says block). It knows nothing of endpoints or messages; the
//! `events` transport puts it in a segment file.
//!
//! The memory: a header page (configuration, then one cache line each for the levels
//! word, the write lock, the ring's control words and the bell), a table of listener
//! entries (a cache line each), a table of writer entries, then the ring. Each party
//! holds a [`DeathNotice`](crate::sys::DeathNotice) word in its entry, which the kernel
//! marks when it dies: liveness in one load, for reaping a dead listener and for stealing
//! the lock of a dead writer.

pub(crate) mod records;
#[cfg(all(test, not(ipckit_loom)))]
mod tests;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// The atomics `records` uses; `tests/loom_broadcast.rs` gives it loom's instead.
use super::sync;
use super::{Mapping, Plain};
use crate::sys::{DeathNotice, OWNER_DIED};
#[allow(
    unused_imports,
    reason = "the events transport uses them in the commits that follow"
)]
pub(crate) use records::{Control, Next, Reader, Ring, Stamp};

/// The first bytes of a segment.
pub const MAGIC: [u8; 8] = *b"ipckevt\0";
/// The layout version; a party refuses any other. 2: claims and reaps carry a pid in
/// the owner word, and async sleepers mark themselves in [`Header::bell_sleepers`].
pub const VERSION: u32 = 2;
/// Where the tables and the ring are placed.
pub const PAGE: usize = 4096;
/// Writer entries: how many writers may hold the segment open at once.
pub const WRITERS: usize = 1024;
/// [`Header::state`] once the segment is set up.
pub const READY: u32 = 1;
/// [`Header::overflow`]: writers overwrite what slow readers have not read.
pub const OVERWRITE: u32 = 0;
/// [`Header::overflow`]: writers wait for the slowest live reader.
pub const BLOCK: u32 = 1;
/// An entry's owner word while a party claims it, before its death notice holds it, with
/// the claimer's pid in [`PID_BITS`]: not a thread id (those stay below 2^22). The pid
/// goes in with the state, in one step, so that a claimer killed at any moment leaves
/// a word that says whom to ask whether it lives.
pub const CLAIMING: u32 = 0x2000_0000;
/// An entry's owner word while someone reaps it, with the reaper's pid.
const REAPING: u32 = 0x1000_0000;
/// The bits of an owner word that hold a pid (or a thread id): Linux's pids stay below
/// 2^22.
const PID_BITS: u32 = (1 << 22) - 1;
/// How long an entry may stay mid-claim or mid-reap, or the levels word differ from the
/// counted entries, before a reaper takes it for a party that died between two steps:
/// each is a few instructions, or a thread's start, apart.
const STALE_STEP: Duration = Duration::from_secs(1);
/// The lock word's bit saying someone waits for it.
const LOCK_WAITERS: u32 = 1 << 31;
/// A writer entry's `pid` bit saying it holds the write lock (pids stay below 2^22).
pub const HOLDS_LOCK: u32 = 1 << 31;
/// How long a lock word may name a live writer that does not say it holds the lock
/// before contenders take the lock: only a scribble makes such a word, and a holder says
/// so nanoseconds after it takes the lock.
const STALE_LOCK: Duration = Duration::from_secs(2);

/// The header, at offset 0.
#[repr(C)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    /// Listener entries.
    pub listeners: u32,
    /// Bytes of the ring, a power of two.
    pub capacity: u64,
    /// Writer entries.
    pub writers: u32,
    /// [`OVERWRITE`] or [`BLOCK`].
    pub overflow: u32,
    /// 0 while being set up, then [`READY`].
    pub state: AtomicU32,
    _line0: [u8; 28],
    /// Six 10-bit counts: the live listeners at each level.
    pub levels: AtomicU64,
    _line1: [u8; 56],
    /// The writer entry index + 1 of the lock's holder (0: free), and [`LOCK_WAITERS`].
    pub lock: AtomicU32,
    _line2: [u8; 60],
    pub control: Control,
    /// Readers' sleep bits and the wake-up round ([`records::must_wake`]): a futex word.
    pub bell: AtomicU32,
    _line4: [u8; 60],
    /// One bit per listener entry, set while it waits for its async bell: a writer that
    /// wakes them reads these two cache lines, not the whole table.
    pub bell_sleepers: [AtomicU64; BELL_SLEEPER_WORDS],
}

/// Words of [`Header::bell_sleepers`]: a bit for each of the most listeners a segment has.
const BELL_SLEEPER_WORDS: usize = crate::endpoint::MAX_EVENTS_LISTENERS.div_ceil(64);

/// A listener's entry: one cache line, written by its listener, read by writers.
#[repr(C)]
pub struct ListenerEntry {
    /// 0 when free, [`CLAIMING`], or the death notice's word (a thread id, or
    /// [`OWNER_DIED`] once the listener died).
    pub owner: AtomicU32,
    /// Its level + 1, once set (0: none yet).
    pub level: AtomicU32,
    /// How far it has read, for writers that block.
    pub position: AtomicU64,
    /// 1 once its level is counted in [`Header::levels`].
    pub counted: AtomicU32,
    /// [`BELL`](super::wait::BELL) while it waits for its bell.
    pub sleep: AtomicU32,
    /// Its bell, when it waits through an async runtime.
    pub bell: AtomicU64,
    /// Its process id, for the claim in progress and for logs.
    pub pid: AtomicU32,
    _line: [u8; 28],
}

/// A writer's entry.
#[repr(C)]
pub struct WriterEntry {
    /// As [`ListenerEntry::owner`].
    pub owner: AtomicU32,
    /// Its process id, with [`HOLDS_LOCK`] while it holds the write lock.
    pub pid: AtomicU32,
}

// SAFETY: integers, atomics, padding and the ring's control words, `repr(C)`.
unsafe impl Plain for Header {}
// SAFETY: as above.
unsafe impl Plain for ListenerEntry {}
// SAFETY: as above.
unsafe impl Plain for WriterEntry {}
// SAFETY: atomics and padding, `repr(C)`.
unsafe impl Plain for Control {}

const _: () = assert!(size_of::<Header>() == 448 && size_of::<Control>() == 64);
const _: () = assert!(size_of::<ListenerEntry>() == 64 && size_of::<WriterEntry>() == 8);

/// Where everything is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub listeners: usize,
    /// Bytes of the ring: a power of two.
    pub capacity: usize,
}

impl Geometry {
    pub fn writers_at(&self) -> usize {
        PAGE + self.listeners * size_of::<ListenerEntry>()
    }

    pub fn ring_at(&self) -> usize {
        (self.writers_at() + WRITERS * size_of::<WriterEntry>()).next_multiple_of(PAGE)
    }

    pub fn total(&self) -> usize {
        self.ring_at() + self.capacity
    }

    /// The largest event.
    pub fn max_event(&self) -> usize {
        records::max_event(self.capacity as u64) as usize
    }

    pub fn valid(&self) -> bool {
        use crate::endpoint::{MAX_EVENTS_LISTENERS, MAX_SHM_RING, MIN_EVENTS_RING};
        (1..=MAX_EVENTS_LISTENERS).contains(&self.listeners)
            && self.capacity.is_power_of_two()
            && (MIN_EVENTS_RING..=MAX_SHM_RING).contains(&self.capacity)
    }
}

/// One level's count in [`Header::levels`].
#[inline]
pub const fn level_one(level: u8) -> u64 {
    1 << (10 * level as u64)
}

/// The counts of listeners that take an event at `level`: theirs and every less
/// important level's.
#[inline]
pub const fn enabled_mask(level: u8) -> u64 {
    // Without a loop, which the compiler keeps where the level is known only at run
    // time (a writer's own level): this is on the path of a send nobody listens to.
    const EVERY_COUNT: u64 = (1 << 60) - 1;
    if level >= 6 {
        return 0;
    }
    EVERY_COUNT & !((1 << (10 * level as u64)) - 1)
}

/// Whether an entry's owner word says its party died.
#[inline]
fn dead(owner: u32) -> bool {
    owner & OWNER_DIED != 0
}

/// The pid in an owner word that says its entry is being claimed or reaped.
#[inline]
fn in_step(owner: u32) -> Option<u32> {
    let state = owner & !PID_BITS;
    (state == CLAIMING || state == REAPING).then_some(owner & PID_BITS)
}

/// A broadcast ring in a mapping, with the geometry it was checked against (nothing
/// read from shared memory later is trusted for bounds).
pub struct Broadcast {
    map: Arc<Mapping>,
    geometry: Geometry,
    /// What this process's reaper saw in earlier rounds, to tell a step in progress from
    /// one a dead party left.
    suspects: Mutex<Suspects>,
}

/// Things a reaper saw that only a party dying between two steps leaves for long.
#[derive(Default)]
struct Suspects {
    /// Entries seen mid-claim or mid-reap: (writer table?, index, owner word, since).
    entries: Vec<(bool, usize, u32, Instant)>,
    /// The levels word and the sum of the counted entries, when they differed, since.
    levels: Option<(u64, u64, Instant)>,
}

/// No entry was free.
#[derive(Debug)]
pub struct TableFull;

/// The table a party has an entry in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Listener,
    Writer,
}

/// Why a party could not take an entry.
#[derive(Debug)]
pub enum EnterError {
    /// Every entry of its table is taken.
    TableFull,
    /// The thread that holds its death notice could not start or take the entry.
    Notice(std::io::Error),
}

/// The write lock stayed held by a live writer until the deadline.
#[derive(Debug)]
pub struct LockBusy;

impl Broadcast {
    /// Lays out a new segment in `map` (zeroed, and nobody else's yet): everything but
    /// the state word, which [`ready`](Self::ready) sets last.
    ///
    /// # Safety
    /// Nobody else reaches the memory yet (see [`Mapping::write`]).
    pub unsafe fn initialise(map: &mut Mapping, geometry: Geometry, overflow: u32) {
        // SAFETY: per the contract.
        unsafe {
            map.write(
                0,
                Header {
                    magic: MAGIC,
                    version: VERSION,
                    listeners: geometry.listeners as u32,
                    capacity: geometry.capacity as u64,
                    writers: WRITERS as u32,
                    overflow,
                    state: AtomicU32::new(0),
                    _line0: [0; 28],
                    levels: AtomicU64::new(0),
                    _line1: [0; 56],
                    lock: AtomicU32::new(0),
                    _line2: [0; 60],
                    control: Control::new(),
                    bell: AtomicU32::new(0),
                    _line4: [0; 60],
                    bell_sleepers: [const { AtomicU64::new(0) }; BELL_SLEEPER_WORDS],
                },
            )
        };
    }

    /// A view of the ring in `map`, laid out as `geometry` says (already checked against
    /// the header and the file's size).
    pub fn new(map: Arc<Mapping>, geometry: Geometry) -> Broadcast {
        assert!(geometry.valid() && geometry.total() <= map.len());
        Broadcast {
            map,
            geometry,
            suspects: Mutex::new(Suspects::default()),
        }
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    #[inline]
    pub fn header(&self) -> &Header {
        self.map.at(0)
    }

    pub fn listener(&self, i: usize) -> &ListenerEntry {
        self.map.at(self.entry_at(Role::Listener, i))
    }

    pub fn writer(&self, i: usize) -> &WriterEntry {
        self.map.at(self.entry_at(Role::Writer, i))
    }

    /// The levels word, held apart from the segment's other handles: for a writer's
    /// hottest check.
    pub fn levels_word(&self) -> super::Shared<AtomicU64> {
        self.map.get(std::mem::offset_of!(Header, levels))
    }

    /// The bell word, held apart from the segment's other handles: for a waker.
    pub fn bell_word(&self) -> super::Shared<AtomicU32> {
        self.map.get(std::mem::offset_of!(Header, bell))
    }

    #[inline]
    pub fn ring(&self) -> Ring<'_> {
        Ring {
            control: &self.header().control,
            data: self
                .map
                .slice(self.geometry.ring_at(), self.geometry.capacity / 8),
            capacity: self.geometry.capacity as u64,
        }
    }

    /// Whether anyone listens at `level` or a less important one: one load.
    #[inline(always)]
    pub fn enabled(&self, level: u8) -> bool {
        self.header().levels.load(Ordering::Relaxed) & enabled_mask(level) != 0
    }

    /// Claims a free entry of `role`'s table for this process, writing its claim word
    /// and nothing else (see [`enter`](Self::enter)).
    pub fn claim(&self, role: Role) -> Result<usize, TableFull> {
        let entries = match role {
            Role::Listener => self.geometry.listeners,
            Role::Writer => WRITERS,
        };
        (0..entries)
            .find(|&i| {
                self.map
                    .at::<AtomicU32>(self.entry_at(role, i))
                    .compare_exchange(0, claiming(), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(TableFull)
    }

    /// Where entry `i` of `role`'s table is; its owner word comes first.
    fn entry_at(&self, role: Role, i: usize) -> usize {
        match role {
            Role::Listener => {
                assert!(i < self.geometry.listeners);
                PAGE + i * size_of::<ListenerEntry>()
            }
            Role::Writer => {
                assert!(i < WRITERS);
                self.geometry.writers_at() + i * size_of::<WriterEntry>()
            }
        }
    }

    /// Takes an entry of `role`'s table for this process: claims it, holds it with the
    /// process's death notice, and only then sets it up. Not before: a claim taken back
    /// from a claimer stalled past [`STALE_STEP`] may be someone else's entry by then,
    /// and only the notice's compare-and-swap from the claim tells.
    pub fn enter(&self, role: Role) -> Result<(usize, DeathNotice), EnterError> {
        let i = self.claim(role).map_err(|_| EnterError::TableFull)?;
        let owner = self.map.get::<AtomicU32>(self.entry_at(role, i));
        let released = owner.clone();
        let notice = DeathNotice::hold_claimed(owner, claiming()).map_err(|e| {
            // Given back, unless someone took the claim back meanwhile.
            let _ = released.compare_exchange(claiming(), 0, Ordering::AcqRel, Ordering::Relaxed);
            EnterError::Notice(e)
        })?;
        let pid = match role {
            Role::Listener => {
                let entry = self.listener(i);
                entry.counted.store(0, Ordering::Relaxed);
                entry.level.store(0, Ordering::Relaxed);
                entry.sleep.store(0, Ordering::Relaxed);
                entry.bell.store(0, Ordering::Relaxed);
                &entry.pid
            }
            Role::Writer => &self.writer(i).pid,
        };
        pid.store(std::process::id(), Ordering::Release);
        Ok((i, notice))
    }

    /// Makes listener `i`, whose death notice holds its entry, a reader at `level` from
    /// now on: it gets every event whose send begins after this returns, and none sent
    /// before this began.
    pub fn join(&self, i: usize, level: u8) -> Reader {
        self.join_with(i, level, || {})
    }

    /// [`join`](Self::join), with `preempted` run where a slow join may be preempted.
    fn join_with(&self, i: usize, level: u8, preempted: impl FnOnce()) -> Reader {
        let entry = self.listener(i);
        let control = &self.header().control;
        // Read before the listener is counted, so that no event a writer sends once it
        // sees the count lies before the cursor; `position` holds writers that block.
        let cursor = control.tail.load(Ordering::SeqCst);
        let expected = control.next_seq.load(Ordering::SeqCst);
        entry.position.store(cursor, Ordering::Relaxed);
        entry.level.store(u32::from(level) + 1, Ordering::Release);
        preempted();
        self.header()
            .levels
            .fetch_add(level_one(level), Ordering::SeqCst);
        entry.counted.store(1, Ordering::Release);
        // Writers that lapped the cursor meanwhile (a join preempted long enough) wrote
        // only events sent before this returns: start after them rather than report
        // them lost. The new cursor is still read after the count, so nothing sent once
        // this returns lies before it.
        let intent = control.tail_intent.load(Ordering::SeqCst);
        let tail = control.tail.load(Ordering::SeqCst);
        let capacity = self.geometry.capacity as u64;
        if intent.saturating_sub(cursor) > capacity || tail.saturating_sub(cursor) > capacity {
            let expected = control.next_seq.load(Ordering::SeqCst);
            entry.position.store(tail, Ordering::Release);
            return Reader::new(tail, Some(expected), level);
        }
        Reader::new(cursor, Some(expected), level)
    }

    /// Stops counting listener `i` (leaving, or reaped).
    pub fn uncount(&self, i: usize) {
        let entry = self.listener(i);
        let level = entry.level.load(Ordering::Acquire);
        if entry.counted.swap(0, Ordering::AcqRel) == 1 && (1..=6).contains(&level) {
            // Never below zero, which would borrow from the next level's count: a reaper
            // that mended the word may already have left this listener out.
            let one = level_one(level as u8 - 1);
            let field = one * 1023;
            let _ = self
                .header()
                .levels
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                    (w & field != 0).then(|| w - one)
                });
        }
        entry.level.store(0, Ordering::Release);
    }

    /// Reclaims the entries of listeners that died, and mends the levels word; how many
    /// entries.
    pub fn reap_listeners(&self) -> usize {
        self.reap_listeners_at(Instant::now())
    }

    fn reap_listeners_at(&self, now: Instant) -> usize {
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        let mut reaped = 0;
        for i in 0..self.geometry.listeners {
            let entry = self.listener(i);
            let owner = entry.owner.load(Ordering::Acquire);
            if (dead(owner) || self.left_mid_step(&mut suspects, false, i, owner, now))
                && entry
                    .owner
                    .compare_exchange(owner, reaping(), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                self.uncount(i);
                entry.sleep.store(0, Ordering::Relaxed);
                let pid = entry.pid.swap(0, Ordering::Relaxed);
                let _ =
                    entry
                        .owner
                        .compare_exchange(reaping(), 0, Ordering::AcqRel, Ordering::Relaxed);
                log::debug!("events: reaped the entry of listener pid {pid}, which died");
                reaped += 1;
            }
        }
        self.mend_levels(&mut suspects, now);
        reaped
    }

    /// Whether an entry whose owner word is `owner` was left mid-claim or mid-reap by a
    /// party that died: its pid is gone, or this reaper saw the same word a
    /// [`STALE_STEP`] ago.
    fn left_mid_step(
        &self,
        suspects: &mut Suspects,
        writers: bool,
        i: usize,
        owner: u32,
        now: Instant,
    ) -> bool {
        let Some(pid) = in_step(owner) else {
            // Out of the step: what was seen of it before no longer counts.
            if !suspects.entries.is_empty() {
                suspects.entries.retain(|e| !(e.0 == writers && e.1 == i));
            }
            return false;
        };
        let seen = suspects
            .entries
            .iter()
            .position(|e| e.0 == writers && e.1 == i);
        if process_gone(pid) {
            if let Some(k) = seen {
                suspects.entries.swap_remove(k);
            }
            return true;
        }
        if owner & !PID_BITS == REAPING {
            // A live reaper finishes, however long it stalls: taken over, it would
            // uncount and free the entry of whoever claimed it next.
            return false;
        }
        match seen {
            Some(k) if suspects.entries[k].2 == owner => {
                let stale = now.saturating_duration_since(suspects.entries[k].3) >= STALE_STEP;
                if stale {
                    // Whether or not this reaper wins the entry, the step is over.
                    suspects.entries.swap_remove(k);
                }
                stale
            }
            Some(k) => {
                suspects.entries[k] = (writers, i, owner, now);
                false
            }
            None => {
                suspects.entries.push((writers, i, owner, now));
                false
            }
        }
    }

    /// Makes the levels word the sum of the counted entries' levels, when it has differed
    /// from it by the same amount for a [`STALE_STEP`]: a party killed between counting
    /// and saying so (or the reverse), or a scribble.
    ///
    /// A join adds its count, then marks its entry counted; a leaver the reverse. Between
    /// the two steps the word and the sum differ, rightly, so a difference seen once
    /// proves nothing. It must be seen twice, a second apart, with the same word and the
    /// same sum, and the word is replaced only by a compare-and-swap from the value seen:
    /// any join or leave meanwhile changes the word or the sum and starts the wait again.
    /// What is left is a party stalled a whole second between two adjacent stores; its
    /// count is then mended wrongly, and mended back the same way a second after it
    /// stores the second (and `uncount` never takes a count below zero meanwhile).
    fn mend_levels(&self, suspects: &mut Suspects, now: Instant) {
        let word = &self.header().levels;
        let mut sum = 0u64;
        for i in 0..self.geometry.listeners {
            let entry = self.listener(i);
            let level = entry.level.load(Ordering::Acquire);
            if entry.counted.load(Ordering::Acquire) == 1 && (1..=6).contains(&level) {
                sum += level_one(level as u8 - 1);
            }
        }
        let levels = word.load(Ordering::SeqCst);
        if levels == sum {
            suspects.levels = None;
            return;
        }
        match suspects.levels {
            Some((seen, seen_sum, since)) if seen == levels && seen_sum == sum => {
                if now.saturating_duration_since(since) >= STALE_STEP
                    && word
                        .compare_exchange(levels, sum, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                {
                    log::warn!(
                        "events: the levels word said {levels:#x} where the listeners count {sum:#x} (a listener died while joining, or something scribbled on the segment); mended"
                    );
                    suspects.levels = None;
                }
            }
            _ => suspects.levels = Some((levels, sum, now)),
        }
    }

    /// Reclaims the entries of writers that died, except the lock's holder (whose entry
    /// tells contenders that it died).
    pub fn reap_writers(&self) {
        self.reap_writers_at(Instant::now());
    }

    fn reap_writers_at(&self, now: Instant) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..WRITERS {
            let entry = self.writer(i);
            let owner = entry.owner.load(Ordering::Acquire);
            if owner == 0 {
                // Forgets a sighting of a step that has ended since.
                self.left_mid_step(&mut suspects, true, i, owner, now);
                continue;
            }
            let holder = self.header().lock.load(Ordering::Acquire) & !LOCK_WAITERS;
            if (dead(owner) || self.left_mid_step(&mut suspects, true, i, owner, now))
                && holder as usize != i + 1
                && entry
                    .owner
                    .compare_exchange(owner, reaping(), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                entry.pid.store(0, Ordering::Relaxed);
                let _ =
                    entry
                        .owner
                        .compare_exchange(reaping(), 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Takes the write lock as writer `me` (its entry index), or gives up at `deadline`.
    /// A holder that died is robbed and its half-written record made padding; a lock
    /// word that names no writer, or a live writer that has not said it holds the lock
    /// for [`STALE_LOCK`] (both only a scribbler makes), is taken as a dead holder's.
    pub fn lock(&self, me: usize, deadline: Instant) -> Result<(), LockBusy> {
        // Said before the lock word can name it, and unsaid only after the word no
        // longer does (in `unlock`): while the word names a live writer, that writer
        // says so, however long it stalls between the steps, and nobody takes over.
        let pid = &self.writer(me).pid;
        pid.fetch_or(HOLDS_LOCK, Ordering::SeqCst);
        let taken = self.acquire(me as u32 + 1, deadline);
        if taken.is_err() {
            pid.fetch_and(!HOLDS_LOCK, Ordering::SeqCst);
        }
        taken
    }

    fn acquire(&self, me: u32, deadline: Instant) -> Result<(), LockBusy> {
        let lock = &self.header().lock;
        if lock
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(());
        }
        let mut spins = 0u32;
        // The lock word last seen with a live holder that did not say it held the lock.
        let mut unclaimed: Option<(u32, Instant)> = None;
        loop {
            let word = lock.load(Ordering::Acquire);
            let holder = word & !LOCK_WAITERS;
            if holder == 0 {
                // Others may wait behind us: keep the bit, so that our unlock wakes them.
                if lock
                    .compare_exchange(
                        word,
                        me | LOCK_WAITERS,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            let stale = holder == me
                || holder as usize > WRITERS
                || self.writer_dead(holder as usize - 1)
                || self.unclaimed_for(holder as usize - 1, word, &mut unclaimed) >= STALE_LOCK;
            if stale {
                if lock
                    .compare_exchange(
                        word,
                        me | (word & LOCK_WAITERS),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    log::warn!(
                        "events: the write lock's holder died (or the lock word was scribbled on); taking it over"
                    );
                    self.ring().recover();
                    return Ok(());
                }
                continue;
            }
            if spins < 100 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LockBusy);
            }
            if word & LOCK_WAITERS == 0
                && lock
                    .compare_exchange(
                        word,
                        word | LOCK_WAITERS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                continue;
            }
            // Timed, to look at the holder's death word again (a holder that dies never
            // wakes us), and to give up at the deadline.
            let pause = left.min(Duration::from_millis(10));
            let timeout = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: pause.as_nanos() as i64,
            };
            let _ = futex::wait(
                lock,
                futex::Flags::empty(),
                word | LOCK_WAITERS,
                Some(&timeout),
            );
        }
    }

    /// How long the lock word has been `word` while writer `holder`, alive, has not said
    /// it holds the lock; zero while it says so.
    fn unclaimed_for(
        &self,
        holder: usize,
        word: u32,
        unclaimed: &mut Option<(u32, Instant)>,
    ) -> Duration {
        if self.writer(holder).pid.load(Ordering::Relaxed) & HOLDS_LOCK != 0 {
            *unclaimed = None;
            return Duration::ZERO;
        }
        match unclaimed {
            Some((seen, since)) if *seen == word => since.elapsed(),
            _ => {
                *unclaimed = Some((word, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Releases the write lock, which writer `me` holds, unless another writer took it
    /// over meanwhile (then it is that writer's to release).
    pub fn unlock(&self, me: usize) {
        let lock = &self.header().lock;
        let me_word = me as u32 + 1;
        let mut word = lock.load(Ordering::Relaxed);
        while word & !LOCK_WAITERS == me_word {
            match lock.compare_exchange_weak(word, 0, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => {
                    if word & LOCK_WAITERS != 0 {
                        let _ = futex::wake(lock, futex::Flags::empty(), 1);
                    }
                    break;
                }
                Err(now) => word = now,
            }
        }
        // After the word stopped naming us: see `lock`.
        self.writer(me).pid.fetch_and(!HOLDS_LOCK, Ordering::SeqCst);
    }

    fn writer_dead(&self, i: usize) -> bool {
        let owner = self.writer(i).owner.load(Ordering::Acquire);
        owner == 0 || dead(owner)
    }

    /// After publishing: wakes the readers that sleep, if any (no syscall otherwise).
    #[inline]
    pub fn wake(&self) {
        let bits = records::must_wake(&self.header().bell);
        if bits != 0 {
            self.wake_bits(bits);
        }
    }

    /// Marks listener `i` as about to wait for its async bell, before it announces its
    /// sleep (whose fence orders this before its last look at the tail).
    pub fn sleep_on_bell(&self, i: usize) {
        self.listener(i)
            .sleep
            .store(super::wait::BELL, Ordering::SeqCst);
        self.header().bell_sleepers[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
    }

    #[cold]
    fn wake_bits(&self, bits: u32) {
        if bits & records::FUTEX_SLEEPERS != 0 {
            let _ = futex::wake(
                &self.header().bell,
                futex::Flags::empty(),
                super::wait::EVERY_SLEEPER,
            );
        }
        if bits & records::BELL_SLEEPERS != 0 {
            // The marked entries only: a load per 64 entries, then those that sleep. A
            // stale mark (a listener that woke by itself) costs one look, and goes.
            let words = self.geometry.listeners.div_ceil(64);
            for (w, word) in self.header().bell_sleepers[..words].iter().enumerate() {
                if word.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                let mut marked = word.swap(0, Ordering::SeqCst);
                while marked != 0 {
                    let i = w * 64 + marked.trailing_zeros() as usize;
                    marked &= marked - 1;
                    if i >= self.geometry.listeners {
                        break;
                    }
                    let entry = self.listener(i);
                    if entry.sleep.swap(0, Ordering::AcqRel) == super::wait::BELL {
                        super::bell::ring(entry.bell.load(Ordering::Acquire));
                    }
                }
            }
        }
    }

    /// In block mode, whether every live listener has read far enough that a record
    /// ending at `end` overwrites nothing it has not read.
    pub fn room_for(&self, end: u64) -> bool {
        let floor = end.saturating_sub(self.geometry.capacity as u64);
        (0..self.geometry.listeners).all(|i| {
            let entry = self.listener(i);
            let owner = entry.owner.load(Ordering::Acquire);
            owner == 0
                || in_step(owner).is_some()
                || dead(owner)
                || entry.level.load(Ordering::Acquire) == 0
                || entry.position.load(Ordering::Acquire) >= floor
        })
    }

    /// Waits, in block mode, until [`room_for`](Self::room_for) `end`, reaping dead
    /// listeners as it goes; false if `deadline` passed first.
    pub fn wait_for_room(&self, end: u64, deadline: Instant) -> bool {
        let mut pause = Duration::from_micros(20);
        loop {
            if self.room_for(end) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.reap_listeners();
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

/// This process's owner word for an entry it claims.
fn claiming() -> u32 {
    CLAIMING | (std::process::id() & PID_BITS)
}

/// This process's owner word for an entry it reaps.
fn reaping() -> u32 {
    REAPING | (std::process::id() & PID_BITS)
}

/// Whether process `pid` is gone (so the step it began on an entry will never end).
fn process_gone(pid: u32) -> bool {
    pid != 0
        && rustix::process::Pid::from_raw(pid as i32)
            .is_some_and(|p| rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH))
}
