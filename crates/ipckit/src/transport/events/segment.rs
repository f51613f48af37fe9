//! The segment behind `events://NAME`, `/dev/shm/ipckit.events.NAME`: opening it
//! (creating or reclaiming it when nobody else is there) and leaving it (removing it
//! when last).
//!
//! Every party holds a shared `flock` on the segment for as long as it has it open; the
//! kernel drops it when the party dies, however it dies. So an exclusive lock that
//! succeeds means nobody is there: a new segment, or a stale one that crashed parties
//! left, which the opener lays out afresh. A leaver that gets the exclusive lock is the
//! last, and removes the name.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode};
use rustix::io::Errno;
use rustix::shm::OFlags;

use crate::endpoint::{Endpoint, Overflow};
use crate::error::{Error, Result};
use crate::transport::ring::Mapping;
use crate::transport::ring::broadcast::{
    self, BLOCK, Broadcast, Geometry, MAGIC, OVERWRITE, PAGE, READY, VERSION, WRITERS,
};
use crate::transport::ring::segment_file::{self, check_owner, still_names};

/// How long an opener waits for a party that holds the segment exclusively (one setting
/// it up, or leaving) before it says so.
const EXCLUSIVE_PATIENCE: Duration = Duration::from_secs(2);

/// An open segment: held (shared lock) until dropped.
pub(crate) struct Segment {
    pub ring: Broadcast,
    /// Whether writers wait for the slowest listener: the header's word, read once at
    /// open (a scribble on it later does not switch a writer in or out of block mode).
    blocks: bool,
    fd: OwnedFd,
    path: PathBuf,
}

/// The POSIX name of the segment for `name`.
pub(crate) fn posix_name(name: &str) -> String {
    segment_file::posix_name(Some("events"), name)
}

fn name_of(endpoint: &Endpoint) -> &str {
    match endpoint.address() {
        crate::endpoint::Address::Events(name) => name,
        other => unreachable!("events given {other:?}"),
    }
}

impl Segment {
    /// Opens the segment of `endpoint`, creating it, or reclaiming a stale one, when
    /// nobody else holds it.
    pub(crate) fn open(endpoint: &Endpoint) -> Result<Segment> {
        let url = endpoint.to_string();
        let posix = posix_name(name_of(endpoint));
        let path = segment_file::path(&posix);
        let mode = endpoint.mode();
        let wanted = Geometry {
            listeners: endpoint.listeners(),
            capacity: endpoint.ring(),
        };
        let overflow = match endpoint.overflow() {
            Overflow::Block => BLOCK,
            _ => OVERWRITE,
        };
        let io = |op, e: Errno| Error::io(&url, op, e.into());
        loop {
            let (fd, created) = match rustix::shm::open(
                posix.as_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => (fd, true),
                Err(Errno::EXIST) => {
                    match rustix::shm::open(posix.as_str(), OFlags::RDWR, Mode::empty()) {
                        Ok(fd) => (fd, false),
                        // Its last party removed it meanwhile.
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(io("opening the events segment", e)),
                    }
                }
                Err(e) => return Err(io("creating the events segment", e)),
            };
            if created {
                // fchmod after creation: the umask would narrow a wider mode asked for.
                rustix::fs::fchmod(&fd, Mode::from_bits_truncate(mode))
                    .map_err(|e| io("setting the segment's mode", e))?;
            }
            check_owner(&url, &path, &fd, mode)?;
            if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
                // Nobody else is here: lay it out afresh, whatever a crashed party left.
                rustix::fs::ftruncate(&fd, 0).map_err(|e| io("emptying the segment", e))?;
                rustix::fs::ftruncate(&fd, wanted.total() as u64)
                    .map_err(|e| io("sizing the segment", e))?;
                let mut map = Mapping::new(&fd, 0, wanted.total())
                    .map_err(|e| Error::io(&url, "mapping the segment", e))?;
                // SAFETY: we hold the segment's exclusive lock, so no other party has it
                // open as a party; it was just emptied, so nothing of before remains.
                unsafe { Broadcast::initialise(&mut map, wanted, overflow) };
                map.at::<broadcast::Header>(0)
                    .state
                    .store(READY, Ordering::Release);
                // Downgrading is not atomic: another opener may slip in and lay it out
                // again, which the checks below notice.
                rustix::fs::flock(&fd, FlockOperation::LockShared)
                    .map_err(|e| io("locking the segment", e))?;
            } else {
                let deadline = Instant::now() + EXCLUSIVE_PATIENCE;
                while rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared).is_err() {
                    if Instant::now() >= deadline {
                        return Err(Error::AddrInUse {
                            endpoint: url,
                            detail: format!(
                                "{} has been locked exclusively for {EXCLUSIVE_PATIENCE:?}, by something other than an ipckit party; find what holds it (fuser) or use another name",
                                path.display()
                            ),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let stat = rustix::fs::fstat(&fd).map_err(|e| io("inspecting the segment", e))?;
            if stat.st_nlink == 0 {
                // Its last party removed it between our open and our lock: open anew.
                continue;
            }
            let size = stat.st_size as usize;
            let not_ours = |why: String| Error::Protocol {
                endpoint: url.clone(),
                reason: format!(
                    "{} is not a usable events segment: {why}; remove it once nothing uses it (ipckit's destroy, or rm)",
                    path.display()
                ),
            };
            if size < PAGE {
                return Err(not_ours(format!("it is only {size} bytes")));
            }
            // The header page alone first: the file's size is anyone's to change, so only
            // the geometry the header gives, once checked, sizes the mapping.
            let (found, found_overflow) = {
                let page = Mapping::new(&fd, 0, PAGE)
                    .map_err(|e| Error::io(&url, "mapping the segment's header", e))?;
                let header: &broadcast::Header = page.at(0);
                if header.magic != MAGIC || header.version != VERSION {
                    return Err(not_ours(format!(
                        "it has magic {:?} and version {}; this ipckit speaks version {VERSION}",
                        header.magic, header.version
                    )));
                }
                // Copied once: nothing read from the segment later is trusted for bounds,
                // nor for what a writer does when the ring is full.
                let found = Geometry {
                    listeners: header.listeners as usize,
                    capacity: header.capacity as usize,
                };
                if header.state.load(Ordering::Acquire) != READY
                    || !found.valid()
                    || header.writers as usize != WRITERS
                    || header.overflow > BLOCK
                {
                    return Err(not_ours(format!(
                        "its header ({} listeners, a {}-byte ring, overflow {}) is not one ipckit writes",
                        found.listeners, found.capacity, header.overflow
                    )));
                }
                (found, header.overflow)
            };
            if size < found.total() {
                return Err(not_ours(format!(
                    "its header ({} listeners, a {}-byte ring) needs {} bytes, and it is {size}",
                    found.listeners,
                    found.capacity,
                    found.total()
                )));
            }
            let map = Arc::new(
                Mapping::new(&fd, 0, found.total())
                    .map_err(|e| Error::io(&url, "mapping the segment", e))?,
            );
            let differs = |key: &str, theirs: String, ours: String| Error::AddrInUse {
                endpoint: url.clone(),
                detail: format!(
                    "{} is in use with {key}={theirs}, and this endpoint asks for {key}={ours}; drop the option, ask for {theirs}, or use another name",
                    path.display()
                ),
            };
            if endpoint.has_option("ring") && found.capacity != wanted.capacity {
                return Err(differs(
                    "ring",
                    found.capacity.to_string(),
                    wanted.capacity.to_string(),
                ));
            }
            if endpoint.has_option("listeners") && found.listeners != wanted.listeners {
                return Err(differs(
                    "listeners",
                    found.listeners.to_string(),
                    wanted.listeners.to_string(),
                ));
            }
            if endpoint.has_option("overflow") && found_overflow != overflow {
                let spell = |o| if o == BLOCK { "block" } else { "drop" }.to_owned();
                return Err(differs("overflow", spell(found_overflow), spell(overflow)));
            }
            return Ok(Segment {
                ring: Broadcast::new(map, found),
                blocks: found_overflow == BLOCK,
                fd,
                path,
            });
        }
    }

    /// Whether writers wait for the slowest listener.
    pub(crate) fn blocks(&self) -> bool {
        self.blocks
    }

    /// Whether someone shrank the file under the mapping.
    pub(crate) fn truncated(&self) -> bool {
        self.ring.mapping().truncated()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // The last party out removes the name, if it still names this segment (a stale
        // one may have been reclaimed and replaced meanwhile: then it is not ours).
        if rustix::fs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive).is_ok()
            && still_names(&self.path, &self.fd)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the segment of `endpoint` if nobody holds it; true when it did.
pub(crate) fn destroy(endpoint: &Endpoint) -> bool {
    let path = segment_file::path(&posix_name(name_of(endpoint)));
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(&path) else {
        return false;
    };
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok()
        && still_names(&path, &file)
    {
        return std::fs::remove_file(&path).is_ok();
    }
    false
}
