//! The segment behind `shm://NAME`: its layout, and creating, finding and mapping it.
//!
//! One segment per server, `/dev/shm/ipckit.NAME`, holding a header page and one slot per
//! client; a slot is a control page (who holds it, and the two rings' counters) followed
//! by the data areas of the request ring (client to server) and the reply ring. The
//! server holds an exclusive `flock` on the segment for as long as it lives, which is how
//! everyone tells a live segment from one a crashed server left behind: the kernel drops
//! the lock when the process dies, whatever killed it.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustix::fs::{FlockOperation, Mode};
use rustix::io::Errno;
use rustix::shm::OFlags;

use crate::error::{Error, Result};
use crate::transport::ring::segment_file::{self, lock_if_abandoned, still_named};
use crate::transport::ring::spsc::Control;
use crate::transport::ring::{Mapping, Plain};

/// The first bytes of every segment.
pub const MAGIC: [u8; 8] = *b"ipckshm\0";
/// The layout version; a client refuses any other. 2: sleep words may say "ring my bell"
/// ([`BELL`](crate::transport::ring::wait::BELL)), and the header and slots hold bells. 3:
/// the reply ring carries the server's pushes, and the server may disconnect a client.
pub const VERSION: u32 = 3;
/// Everything is placed at multiples of this, the largest page size Linux uses, so that a
/// slot can be mapped on its own.
pub const ALIGN: usize = 64 * 1024;

/// [`Header::state`] while the server serves.
pub const LISTENING: u32 = 1;
/// [`Header::state`] once the server has stopped.
pub const CLOSED: u32 = 2;

/// [`Slot::state`]: nobody attached (the owner may be claiming it).
pub const FREE: u32 = 0;
/// [`Slot::state`]: a client attached; the server may not have noticed yet.
pub const OPEN: u32 = 1;
/// [`Slot::state`]: the server serves the client.
pub const ACCEPTED: u32 = 2;
/// [`Slot::state`]: the client left; the server drains what it sent, then frees the slot.
pub const LEFT: u32 = 3;
/// [`Slot::state`]: the server dropped the client for breaking the protocol.
pub const REFUSED: u32 = 4;
/// [`Slot::state`]: the server disconnected the client (`ClientHandle::disconnect`, or
/// `?overflow=disconnect`).
pub const DISCONNECTED: u32 = 5;

/// The header at offset 0.
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// 0 while the server sets the segment up, then [`LISTENING`], then [`CLOSED`].
    pub state: AtomicU32,
    /// The server's process id.
    pub server_pid: u32,
    /// How many client slots follow.
    pub slots: u32,
    /// Bytes in each ring's data area.
    pub ring_capacity: u64,
    /// The largest message the server accepts.
    pub max_message: u64,
    /// Bumped by a client that attaches or leaves, so that the server rescans the slots.
    pub changes: AtomicU32,
    /// The thread id of the server's [`DeathNotice`](crate::sys::DeathNotice): the kernel
    /// sets [`OWNER_DIED`](crate::sys::OWNER_DIED) here when the server dies; 0 when it
    /// holds none (it stopped, or predates this word).
    pub keeper: AtomicU32,
    /// The server's bell, when it waits through an async runtime (see `bell`).
    pub bell: AtomicU64,
    _line: [u8; 72],
    /// The server's doorbell: 1 while it sleeps; a client that publishes and finds 1 sets
    /// 0 and wakes it (FUTEX_WAKE on this word).
    pub doorbell: AtomicU32,
    _doorbell_line: [u8; 124],
}

/// Where the owner table begins in the header page: one `AtomicU32` per slot, the pid of
/// the client that holds it or 0 when free, claimed by compare-and-swap. It sits in the
/// header page so that a client finds a free slot without mapping every slot.
pub const OWNERS: usize = 4096;

/// The control page of a client slot.
#[repr(C)]
pub struct Slot {
    /// [`FREE`], [`OPEN`], [`ACCEPTED`], [`LEFT`], [`REFUSED`] or [`DISCONNECTED`].
    pub state: AtomicU32,
    _reserved: u32,
    /// The largest reply the client accepts.
    pub client_max: AtomicU64,
    /// The client's bells, when it waits through an async runtime (see `bell`): for
    /// replies, and for room in the request ring.
    pub bell: AtomicU64,
    pub room_bell: AtomicU64,
    _line: [u8; 96],
    /// Client to server.
    pub requests: Control,
    /// Server to client.
    pub replies: Control,
}

// SAFETY: integers, atomics and padding, `repr(C)`.
unsafe impl Plain for Header {}
// SAFETY: integers, atomics, padding and ring control blocks (themselves `Plain`).
unsafe impl Plain for Slot {}

const _: () = assert!(size_of::<Header>() == 256);
const _: () = assert!(size_of::<Slot>() == 896 && size_of::<Slot>() <= ALIGN);
const _: () = assert!(OWNERS + 4 * MAX_SLOTS <= ALIGN);

/// Where everything is, given the two numbers a server chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Client slots.
    pub slots: usize,
    /// Bytes in each ring's data area: a power of two, at least [`ALIGN`].
    pub capacity: usize,
}

impl Geometry {
    /// Bytes of one slot: its control page and two data areas.
    pub fn slot_len(&self) -> usize {
        ALIGN + 2 * self.capacity
    }

    /// Where slot `i` begins.
    pub fn slot_offset(&self, i: usize) -> usize {
        ALIGN + i * self.slot_len()
    }

    /// The whole segment.
    pub fn total(&self) -> usize {
        ALIGN + self.slots * self.slot_len()
    }

    fn valid(&self) -> bool {
        (1..=MAX_SLOTS).contains(&self.slots)
            && self.capacity.is_power_of_two()
            && (ALIGN..=MAX_RING).contains(&self.capacity)
    }
}

use crate::endpoint::{Endpoint, MAX_SHM_CLIENTS as MAX_SLOTS, MAX_SHM_RING as MAX_RING};

/// The file behind the POSIX name `/ipckit.NAME`.
pub fn path(name: &str) -> PathBuf {
    segment_file::path(&segment_file::posix_name(None, name))
}

/// The server's segment, locked and named.
pub struct Created {
    /// Holds the flock that says the server lives.
    pub fd: OwnedFd,
    /// The header page, with the owner table.
    pub map: Mapping,
    /// Its inode, to tell whether the name still refers to it at drop.
    pub inode: u64,
}

/// Creates and names the segment for `name`, replacing one a dead server left.
pub fn create(
    endpoint: &Endpoint,
    name: &str,
    mode: u32,
    geometry: Geometry,
    max_message: usize,
) -> Result<Created> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let final_path = path(name);
    let pid = std::process::id();
    // Built under a temporary name and renamed into place only when complete and locked,
    // so nobody ever finds a half-made segment under the real name.
    let temp_name = format!(
        "ipckit.{name}.{pid}.{}.new",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let temp_path = segment_file::path(&temp_name);
    let io = |op, e: std::io::Error| Error::listen_io(endpoint, op, e);
    let fd = rustix::shm::open(
        temp_name.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| io("creating the shared-memory segment", e.into()))?;
    let result = (|| {
        // fchmod after creation: the umask would narrow a wider mode asked for.
        rustix::fs::fchmod(&fd, Mode::from_bits_truncate(mode))
            .map_err(|e| io("setting the segment's mode", e.into()))?;
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io("locking the segment", e.into()))?;
        rustix::fs::ftruncate(&fd, geometry.total() as u64)
            .map_err(|e| io("sizing the segment", e.into()))?;
        // The header page alone: the server maps each slot when a client claims it.
        let mut map = Mapping::new(&fd, 0, ALIGN).map_err(|e| io("mapping the segment", e))?;
        // SAFETY: nobody else can reach the segment yet: it was just created, exclusively,
        // under a private temporary name, and this is its only mapping.
        unsafe {
            map.write(
                0,
                Header {
                    magic: MAGIC,
                    version: VERSION,
                    state: AtomicU32::new(0),
                    server_pid: pid,
                    slots: geometry.slots as u32,
                    ring_capacity: geometry.capacity as u64,
                    max_message: max_message as u64,
                    changes: AtomicU32::new(0),
                    keeper: AtomicU32::new(0),
                    bell: AtomicU64::new(0),
                    _line: [0; 72],
                    doorbell: AtomicU32::new(0),
                    _doorbell_line: [0; 124],
                },
            );
        }
        map.at::<Header>(0)
            .state
            .store(LISTENING, Ordering::Release);
        let inode = rustix::fs::fstat(&fd)
            .map_err(|e| io("inspecting the segment", e.into()))?
            .st_ino;
        put_in_place(endpoint, &temp_path, &final_path)?;
        Ok::<_, Error>(Created { fd, map, inode })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    let created = result?;
    Ok(created)
}

/// Renames the finished segment to its real name unless a live server holds that name.
fn put_in_place(endpoint: &Endpoint, temp: &PathBuf, target: &PathBuf) -> Result<()> {
    let url = &endpoint.to_string();
    // A server's errors, with a server's advice: this is how it starts.
    let io = |op, e: std::io::Error| Error::listen_io(endpoint, op, e);
    loop {
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            temp,
            rustix::fs::CWD,
            target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(io("naming the segment", e.into())),
        }
        let existing = match std::fs::OpenOptions::new().read(true).open(target) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("inspecting the existing segment", e)),
        };
        if !is_ipckit_segment(&existing) {
            return Err(Error::AddrInUse {
                endpoint: url.to_owned(),
                detail: format!(
                    "{} exists and is not an ipckit segment; it was left untouched",
                    target.display()
                ),
            });
        }
        if !lock_if_abandoned(&existing) {
            return Err(Error::AddrInUse {
                endpoint: url.to_owned(),
                detail: format!("a live server holds {}", target.display()),
            });
        }
        // Holding the dead server's lock serialises everyone replacing it; the name must
        // still be that segment, or someone replaced it first.
        if still_named(target, &existing) {
            log::info!(
                "{url}: replacing {} left by a server that died",
                target.display()
            );
            return std::fs::rename(temp, target).map_err(|e| io("naming the segment", e));
        }
    }
}

fn is_ipckit_segment(file: &std::fs::File) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    (&*file).read_exact(&mut magic).is_ok() && magic == MAGIC
}

/// Whether a server holds the segment's lock: false once it died, however.
pub fn server_alive(fd: impl AsFd) -> bool {
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&fd, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// Removes the segment of a server that died, if the name still refers to the segment
/// open at `fd`.
pub fn remove_abandoned(name: &str, fd: impl AsFd) {
    let Ok(dup) = fd.as_fd().try_clone_to_owned() else {
        return;
    };
    let inode = std::fs::File::from(dup).metadata().map(|m| m.ino()).ok();
    remove_if_abandoned(name, inode);
}

/// Removes the segment at `name` if it is an ipckit segment whose server is dead (and, when
/// `inode` is given, still that one); true when it did.
pub fn remove_if_abandoned(name: &str, inode: Option<u64>) -> bool {
    let target = path(name);
    // A fresh open: a duplicated descriptor would share the lock of the one it came from.
    let Ok(own) = std::fs::OpenOptions::new().read(true).open(&target) else {
        return false;
    };
    let asked_for = inode.is_none_or(|ino| own.metadata().map(|m| m.ino()).ok() == Some(ino));
    // Whoever replaces a dead server's segment takes its lock first (`put_in_place`): once
    // we hold it, the name can only change by our hand. It must still be this segment: a
    // new server may have replaced it before we took the lock, and removing the name
    // would then cut the new server off from every client.
    if asked_for && is_ipckit_segment(&own) && lock_if_abandoned(&own) && still_named(&target, &own)
    {
        log::info!(
            "removing {}: its server died without cleaning up",
            target.display()
        );
        return std::fs::remove_file(&target).is_ok();
    }
    false
}

/// A client's view of a server's segment: its header, mapped alone.
pub struct Found {
    /// Open on the segment, for the slot mapping and liveness checks.
    pub fd: OwnedFd,
    /// The header page.
    pub header: Arc<Mapping>,
    /// The server's choice of slots and ring size.
    pub geometry: Geometry,
    /// The largest message the server accepts.
    pub max_message: usize,
    /// The server's process id.
    pub server_pid: u32,
}

/// Opens the segment of a live server, checking everything a client relies on.
pub fn find(url: &str, name: &str) -> Result<Found> {
    let object = segment_file::posix_name(None, name);
    let fd = rustix::shm::open(object.as_str(), OFlags::RDWR, Mode::empty())
        .map_err(|e| Error::io(url, "opening the shared-memory segment", e.into()))?;
    let not_ours = |why: String| Error::Protocol {
        endpoint: url.to_owned(),
        reason: format!(
            "{} is not a usable ipckit segment: {why}",
            path(name).display()
        ),
    };
    let size = rustix::fs::fstat(&fd)
        .map_err(|e| Error::io(url, "inspecting the segment", e.into()))?
        .st_size as usize;
    if size < ALIGN {
        return Err(not_ours(format!("it is only {size} bytes")));
    }
    let header_map = Arc::new(
        Mapping::new(&fd, 0, ALIGN).map_err(|e| Error::io(url, "mapping the segment", e))?,
    );
    let header: &Header = header_map.at(0);
    if header.magic != MAGIC || header.version != VERSION {
        return Err(not_ours(format!(
            "it has magic {:?} and version {}; this ipckit speaks version {VERSION}",
            header.magic, header.version
        )));
    }
    if !server_alive(&fd) || header.state.load(Ordering::Acquire) != LISTENING {
        remove_abandoned(name, &fd);
        return Err(Error::NotFound {
            endpoint: url.to_owned(),
            detail: "the segment's server has stopped".into(),
        });
    }
    let geometry = Geometry {
        slots: header.slots as usize,
        capacity: header.ring_capacity as usize,
    };
    if !geometry.valid() || geometry.total() != size {
        return Err(not_ours(format!(
            "{} slots of {}-byte rings do not match its size of {size} bytes",
            geometry.slots, geometry.capacity
        )));
    }
    let max_message = header.max_message as usize;
    let server_pid = header.server_pid;
    Ok(Found {
        fd,
        header: header_map,
        geometry,
        max_message,
        server_pid,
    })
}

/// Maps slot `i` alone.
pub fn map_slot(fd: impl AsFd, geometry: Geometry, i: usize) -> std::io::Result<Arc<Mapping>> {
    Mapping::new(fd, geometry.slot_offset(i), geometry.slot_len()).map(Arc::new)
}

#[cfg(all(test, not(ipckit_loom)))]
mod tests {
    use super::*;

    /// A client that finds a dead server's segment while a new server replaces it must
    /// not remove the replacement: it gets the old segment's lock only afterwards.
    #[test]
    fn removing_a_dead_segment_spares_its_replacement() {
        let name = format!("segment-test-{}", std::process::id());
        let geometry = Geometry {
            slots: 1,
            capacity: ALIGN,
        };
        let segment = |name: &str| {
            create(&"shm://test".parse().unwrap(), name, 0o600, geometry, 1024).unwrap()
        };
        let dying = segment(&name);
        let client = std::thread::spawn({
            let name = name.clone();
            move || remove_if_abandoned(&name, None)
        });
        // Meanwhile the client opens the segment and waits for its lock (20 ms at most).
        std::thread::sleep(std::time::Duration::from_millis(5));
        let replacement = segment(&format!("{name}.next"));
        std::fs::rename(path(&format!("{name}.next")), path(&name)).unwrap();
        drop(dying);
        let removed = client.join().unwrap();
        let replacement = std::fs::File::from(replacement.fd);
        let kept = still_named(&path(&name), &replacement);
        let _ = std::fs::remove_file(path(&name));
        assert!(
            kept && !removed,
            "the replacement was removed with the dead segment"
        );
    }
}
