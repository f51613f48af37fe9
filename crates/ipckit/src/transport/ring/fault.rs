//! Surviving a peer that shrinks a shared file under our mappings.
//!
//! A segment lives in a file any process of its owner may open, and `truncate` (or a `dd`
//! without `conv=notrunc`) shrinks it while it is mapped: touching a page past the new end
//! raises SIGBUS, which kills the process. File seals would forbid the shrinking, but only
//! on a memfd, which a client cannot open by name. So ipckit does what Wayland
//! compositors do with the pools their clients hand them: a SIGBUS handler that finds the
//! faulting address in one of our mappings puts anonymous zeroed pages in place of the
//! lost ones, marks the mapping [`truncated`](Region::truncated) and returns; the access
//! is repeated on the new pages, and the transport, which checks everything it reads,
//! sees the mark at its next check and fails that connection with an error. A fault
//! anywhere else goes to the handler that was there before, or kills the process as it
//! would have.
//!
//! The handler reads the registry of mapped regions with atomics only, and makes one
//! system call (`mmap`): both are async-signal-safe.

use std::ffi::c_void;
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering, fence};

use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

/// One mapped range of a shared file, as the SIGBUS handler knows it.
pub(crate) struct Region {
    /// Taken by a mapping (set before `start` and `end`, cleared after them).
    claimed: AtomicBool,
    /// Odd while `start` and `end` change: the handler, which cannot wait, takes a range
    /// only from a snapshot that no change overlapped (a seqlock), so never one whose
    /// start is of one mapping and end of the next.
    version: AtomicU32,
    start: AtomicUsize,
    /// The end of the range's last page; 0 while the region is free.
    end: AtomicUsize,
    truncated: AtomicBool,
}

impl Region {
    const fn free() -> Region {
        Region {
            claimed: AtomicBool::new(false),
            version: AtomicU32::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            truncated: AtomicBool::new(false),
        }
    }

    /// Whether the file was shrunk under the range: the pages past its new end are now
    /// private zeroes, and what the peer writes no longer reaches this process.
    #[inline]
    pub(crate) fn truncated(&self) -> bool {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Stops watching the range; called before it is unmapped.
    pub(crate) fn release(&'static self) {
        self.set(0, 0);
        self.truncated.store(false, Ordering::Relaxed);
        self.claimed.store(false, Ordering::Release);
    }

    /// Writes the range, by its one writer (the mapping that claimed the region).
    fn set(&self, start: usize, end: usize) {
        // SYNC POINT: the odd version is seen before the new range, and the new range
        // before the even version (paired with `range`).
        self.version.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The range, if no change overlapped reading it; `None` while the region is free or
    /// changing.
    fn range(&self) -> Option<(usize, usize)> {
        // SYNC POINT: paired with `set`.
        let before = self.version.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        let start = self.start.load(Ordering::Relaxed);
        let end = self.end.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let after = self.version.load(Ordering::Relaxed);
        (after == before && start != 0 && end > start).then_some((start, end))
    }
}

/// Regions in chunks that are never freed, so that the handler may walk them at any time.
struct Chunk {
    regions: [Region; CHUNK],
    next: AtomicPtr<Chunk>,
}

const CHUNK: usize = 64;

static FIRST: Chunk = Chunk {
    regions: [const { Region::free() }; CHUNK],
    next: AtomicPtr::new(ptr::null_mut()),
};

/// Every chunk of regions, first to last.
fn chunks() -> impl Iterator<Item = &'static Chunk> {
    std::iter::successors(Some(&FIRST), |chunk| {
        // SAFETY: a non-null `next` points to a leaked chunk (see `watch`), published with
        // Release after it was initialised.
        unsafe { chunk.next.load(Ordering::Acquire).as_ref() }
    })
}

/// Watches `len` bytes mapped at `start` from a shared file, until the region returned
/// is [released](Region::release).
pub(crate) fn watch(start: *const u8, len: usize) -> &'static Region {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(install);
    let page = PAGE.load(Ordering::Relaxed);
    let end = (start as usize + len).next_multiple_of(page);
    loop {
        for chunk in chunks() {
            for region in &chunk.regions {
                if region
                    .claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    region.set(start as usize, end);
                    return region;
                }
            }
        }
        // Every region taken: add a chunk at the end (or find one another thread added).
        let last = chunks().last().expect("there is a first chunk");
        let fresh = Box::into_raw(Box::new(Chunk {
            regions: [const { Region::free() }; CHUNK],
            next: AtomicPtr::new(ptr::null_mut()),
        }));
        if last
            .next
            .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: `fresh` was never published; this is its only owner.
            drop(unsafe { Box::from_raw(fresh) });
        }
    }
}

/// The handler that was installed before ours, to pass on faults that are not ours.
static PREVIOUS: AtomicPtr<SigAction> = AtomicPtr::new(ptr::null_mut());

/// The page size, read before the handler may need it.
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// Our disposition of SIGBUS.
fn ours() -> SigAction {
    SigAction::new(
        SigHandler::SigAction(on_sigbus),
        SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK | SaFlags::SA_NODEFER,
        SigSet::empty(),
    )
}

fn install() {
    PAGE.store(rustix::param::page_size(), Ordering::Relaxed);
    let ours = ours();
    // SAFETY: the handler only reads atomics, calls mmap and sigaction, and calls the
    // previous handler, which was installed to run in a signal handler.
    match unsafe { nix::sys::signal::sigaction(Signal::SIGBUS, &ours) } {
        Ok(previous) => PREVIOUS.store(Box::into_raw(Box::new(previous)), Ordering::Release),
        Err(e) => log::warn!(
            "cannot catch SIGBUS ({e}): a peer that truncates a shared-memory segment will kill this process"
        ),
    }
}

/// `si_code` of a SIGBUS the kernel raised for an access past the end of a mapped file
/// (asm-generic/siginfo.h); `kill` and `sigqueue` say otherwise.
const BUS_ADRERR: libc::c_int = 2;

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // Only a fault the kernel raised names an address; a signal another process sent
    // could name any, and must not make this one zero its memory.
    if code == BUS_ADRERR {
        if let Some((region, end)) = region_of(address) {
            let page = address & !(PAGE.load(Ordering::Relaxed) - 1);
            // SAFETY: [page, end) lies inside a mapping this process made and still
            // holds: the range was read whole (`Region::range`), and it contains the
            // faulting address, which only a live mapping can (a region is released
            // before its mapping is unmapped). Replacing its pages with zeroed private
            // ones changes what a peer can write into, never what Rust references may
            // assume, as everything in a mapping is `Plain` or ring bytes.
            let replaced = unsafe {
                rustix::mm::mmap_anonymous(
                    page as *mut c_void,
                    end - page,
                    rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                    rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::FIXED,
                )
            };
            if replaced.is_ok() {
                region.truncated.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
    pass_on(signal, code, info, context);
}

/// The watched region holding `address`, with the end of its range, if any.
fn region_of(address: usize) -> Option<(&'static Region, usize)> {
    chunks()
        .flat_map(|chunk| &chunk.regions)
        .find_map(|region| match region.range() {
            Some((start, end)) if (start..end).contains(&address) => Some((region, end)),
            _ => None,
        })
}

/// Hands a signal that is not ours to the handler before ours, or does what the default
/// or ignoring would have done: a fault the kernel raised is repeated on return, killing
/// the process (with the core dump it would have had); a signal another process sent is
/// raised again under the default, or dropped if it was ignored. A sent signal leaves
/// ours in place, even when the handler before ours reset the disposition (as Rust's
/// own, which watches for stack overflows, does with whatever is not one).
fn pass_on(
    signal: libc::c_int,
    code: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut c_void,
) {
    // SAFETY: `PREVIOUS` is set once, before any mapping is watched, to a leaked action.
    let previous = unsafe { PREVIOUS.load(Ordering::Acquire).as_ref() };
    let sent = code <= 0; // SI_USER, SI_QUEUE, SI_TKILL and the like
    match previous.map(SigAction::handler) {
        Some(SigHandler::SigAction(handler)) => {
            handler(signal, info, context);
            if sent {
                // SAFETY: sigaction is async-signal-safe.
                let _ = unsafe { nix::sys::signal::sigaction(Signal::SIGBUS, &ours()) };
            }
        }
        Some(SigHandler::Handler(handler)) => {
            handler(signal);
            if sent {
                // SAFETY: as above.
                let _ = unsafe { nix::sys::signal::sigaction(Signal::SIGBUS, &ours()) };
            }
        }
        Some(SigHandler::SigIgn) if sent => {}
        _ => {
            let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SAFETY: sigaction and raise are async-signal-safe; the default action of
            // SIGBUS ends the process (SA_NODEFER: the signal is not blocked here).
            unsafe {
                let _ = nix::sys::signal::sigaction(Signal::SIGBUS, &default);
                if sent {
                    libc::raise(libc::SIGBUS);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_file_reads_as_zeroes_and_is_marked() {
        let file = tempfile_in_shm();
        rustix::fs::ftruncate(&file, 3 * 4096).unwrap();
        let map = crate::transport::ring::mapping::Mapping::new(&file, 0, 3 * 4096).unwrap();
        let word: &std::sync::atomic::AtomicU64 = map.at(2 * 4096);
        word.store(7, Ordering::Relaxed);
        assert!(!map.truncated());
        rustix::fs::ftruncate(&file, 4096).unwrap();
        assert_eq!(
            word.load(Ordering::Relaxed),
            0,
            "the lost page reads as zeroes"
        );
        assert!(map.truncated());
        word.store(9, Ordering::Relaxed);
        assert_eq!(word.load(Ordering::Relaxed), 9, "and takes writes");
        let kept: &std::sync::atomic::AtomicU64 = map.at(0);
        kept.store(1, Ordering::Relaxed);
    }

    #[test]
    fn regions_are_reused_and_grow_past_a_chunk() {
        let file = tempfile_in_shm();
        rustix::fs::ftruncate(&file, 4096).unwrap();
        let maps: Vec<_> = (0..CHUNK * 2 + 1)
            .map(|_| crate::transport::ring::mapping::Mapping::new(&file, 0, 4096).unwrap())
            .collect();
        assert!(maps.iter().all(|m| !m.truncated()));
        drop(maps);
        let again = crate::transport::ring::mapping::Mapping::new(&file, 0, 4096).unwrap();
        assert!(!again.truncated());
    }

    #[test]
    fn each_region_has_one_holder_at_a_time() {
        let threads: Vec<_> = (1..=4usize)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..2000usize {
                        // Never touched: watching does not map.
                        let start = (t << 40 | i << 16) as *const u8;
                        let region = watch(start, 4096);
                        assert_eq!(region.range().map(|r| r.0), Some(start as usize));
                        let found = region_of(start as usize + 100).map(|(r, _)| ptr::from_ref(r));
                        assert_eq!(found, Some(ptr::from_ref(region)));
                        region.release();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    fn tempfile_in_shm() -> std::os::fd::OwnedFd {
        rustix::fs::memfd_create("ipckit-fault-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap()
    }
}
