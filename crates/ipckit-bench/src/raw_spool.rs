//! The hand-written baseline of spool: what a careful programmer writes to drop a file
//! into a Maildir-style directory, and nothing of ipckit's. A message is written into
//! `tmp/NAME` (created exclusively, never following a link), flushed with `fdatasync`
//! when it is to survive a power loss, renamed into `new/NAME`, and `new/` flushed with
//! `fsync` so that the rename itself is on disk. Names are Maildir's: the time, the pid
//! and a counter.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

/// A spool directory's `tmp/` and `new/`, opened once, and the name of the next message.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("ipckit-doc-raw-spool-{}", std::process::id()));
/// let mut spool = ipckit_bench::raw_spool::RawSpool::create(&dir)?;
/// spool.send(b"hello", true)?;
/// spool.send(b"again", false)?;
/// let names: Vec<_> = std::fs::read_dir(dir.join("new"))?.collect();
/// assert_eq!(names.len(), 2);
/// assert_eq!(std::fs::read_dir(dir.join("tmp"))?.count(), 0);
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct RawSpool {
    tmp: OwnedFd,
    new: OwnedFd,
    pid: u32,
    counter: u64,
    name: String,
}

/// Permission bits of the directories: the owner's alone, as spool's default.
const DIR_MODE: u32 = 0o700;
/// Permission bits of the message files.
const FILE_MODE: u32 = 0o600;

impl RawSpool {
    /// Makes `dir` with its `tmp/` and `new/` (those that exist are kept) and opens them.
    pub fn create(dir: &Path) -> std::io::Result<RawSpool> {
        for sub in [dir.to_path_buf(), dir.join("tmp"), dir.join("new")] {
            match rfs::mkdir(&sub, Mode::from_raw_mode(DIR_MODE)) {
                Err(rustix::io::Errno::EXIST) | Ok(()) => {}
                Err(e) => return Err(e.into()),
            }
        }
        RawSpool::open(dir)
    }

    /// Opens the `tmp/` and `new/` of a spool that exists, as a program that is not
    /// ipckit writes into one that an ipckit receiver made.
    pub fn open(dir: &Path) -> std::io::Result<RawSpool> {
        let open = |sub: &str| {
            rfs::open(
                dir.join(sub),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        Ok(RawSpool {
            tmp: open("tmp")?,
            new: open("new")?,
            pid: std::process::id(),
            counter: 0,
            name: String::with_capacity(64),
        })
    }

    /// Writes `payload` as one message into `new/`, flushed to disk first when `sync`.
    pub fn send(&mut self, payload: &[u8], sync: bool) -> std::io::Result<()> {
        let file = self.write(payload)?;
        if sync {
            rfs::fdatasync(&file)?;
        }
        drop(file);
        self.publish()?;
        if sync {
            rfs::fsync(&self.new)?;
        }
        Ok(())
    }

    /// Writes `payload` to a fresh name in `tmp/`, returning the open file; the message
    /// is not in `new/` until [`publish`](RawSpool::publish). `tmp/` keeps nothing of a
    /// write that failed.
    pub fn write(&mut self, payload: &[u8]) -> std::io::Result<std::fs::File> {
        self.next_name();
        let fd = rfs::openat(
            &self.tmp,
            self.name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )?;
        let mut file = std::fs::File::from(fd);
        if let Err(e) = file.write_all(payload) {
            let _ = rfs::unlinkat(&self.tmp, self.name.as_str(), AtFlags::empty());
            return Err(e);
        }
        Ok(file)
    }

    /// Renames the file last [`write`](RawSpool::write)n into `new/`.
    pub fn publish(&self) -> std::io::Result<()> {
        rfs::renameat(&self.tmp, self.name.as_str(), &self.new, self.name.as_str()).inspect_err(
            |_| {
                let _ = rfs::unlinkat(&self.tmp, self.name.as_str(), AtFlags::empty());
            },
        )?;
        Ok(())
    }

    /// Maildir's name: seconds and nanoseconds of the wall clock, the pid, a counter.
    fn next_name(&mut self) {
        use std::fmt::Write as _;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.name.clear();
        let _ = write!(
            self.name,
            "{}.{:09}.{}.{}",
            now.as_secs(),
            now.subsec_nanos(),
            self.pid,
            self.counter
        );
        self.counter += 1;
    }
}

/// Removes every file in `dir` (a spool's `new/`, between measurements), returning how
/// many went.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("ipckit-doc-empty-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("a"), b"1")?;
/// assert_eq!(ipckit_bench::raw_spool::empty_dir(&dir)?, 1);
/// assert_eq!(std::fs::read_dir(&dir)?.count(), 0);
/// std::fs::remove_dir(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn empty_dir(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        std::fs::remove_file(entry?.path())?;
        removed += 1;
    }
    Ok(removed)
}
