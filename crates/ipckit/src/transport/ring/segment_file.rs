//! The files behind shared-memory segments, `/dev/shm/ipckit.…`: their names, who may
//! own them, and whether a name still refers to the file one holds open. One
//! implementation for every transport that keeps a segment (`shm`, `events`).

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{Error, Result};

/// The POSIX shared-memory name of `object` (`ipckit.NAME`, `ipckit.events.NAME`): what
/// `shm_open` takes.
pub fn posix_name(kind: Option<&str>, name: &str) -> String {
    match kind {
        Some(kind) => format!("ipckit.{kind}.{name}"),
        None => format!("ipckit.{name}"),
    }
}

/// The file behind a POSIX shared-memory name (glibc's shm_open opens it there too).
pub fn path(posix_name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/{posix_name}"))
}

/// Whether `path` still names `file`.
pub fn still_named(path: &Path, file: &std::fs::File) -> bool {
    let inode = |m: std::io::Result<std::fs::Metadata>| m.map(|m| m.ino()).ok();
    inode(std::fs::metadata(path)).is_some_and(|ino| inode(file.metadata()) == Some(ino))
}

/// Whether `path` still names the file open at `fd` (by inode).
pub fn still_names(path: &Path, fd: impl AsFd) -> bool {
    let Ok(stat) = rustix::fs::fstat(&fd) else {
        return false;
    };
    std::fs::metadata(path).is_ok_and(|m| m.ino() == stat.st_ino && m.dev() == stat.st_dev)
}

/// Takes the exclusive lock of a segment nobody holds; false while someone does.
/// Briefly retried: a party checking liveness holds a shared lock for a moment.
pub fn lock_if_abandoned(file: impl AsFd) -> bool {
    for attempt in 0..20 {
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return true,
            Err(_) if attempt < 19 => std::thread::sleep(std::time::Duration::from_millis(1)),
            Err(_) => {}
        }
    }
    false
}

/// Refuses a segment that another user owns or whose permissions are wider than `mode`:
/// someone else could read or write what is in it.
pub fn check_owner(url: &str, path: &Path, fd: impl AsFd, mode: u32) -> Result<()> {
    let stat =
        rustix::fs::fstat(&fd).map_err(|e| Error::io(url, "inspecting the segment", e.into()))?;
    let me = rustix::process::geteuid().as_raw();
    let found = stat.st_mode & 0o7777;
    if stat.st_uid != me {
        return Err(Error::PermissionDenied {
            endpoint: url.to_owned(),
            detail: format!(
                "{} belongs to user {} (mode {found:04o}), not to this user ({me}); remove it or use another name",
                path.display(),
                stat.st_uid
            ),
        });
    }
    if found & !mode != 0 {
        return Err(Error::PermissionDenied {
            endpoint: url.to_owned(),
            detail: format!(
                "{} has mode {found:04o}, wider than the {mode:04o} asked for (?mode=); remove it or ask for its mode",
                path.display()
            ),
        });
    }
    Ok(())
}
