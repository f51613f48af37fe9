//! Socket files, shared by the transports that bind AF_UNIX sockets at a path.
//!
//! A socket file is created with the endpoint's mode (0600 unless `?mode=` widens it)
//! before anybody can reach it, so there is no moment at which it is open wider. A file
//! left by a crashed server is replaced; one where a server answers is
//! [`Error::AddrInUse`]; anything that is not a socket is never touched. The file is
//! removed when the server is dropped, unless another server has replaced it meanwhile.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::endpoint::{Endpoint, UnixAddr};
use crate::error::{Error, Result};

/// The kernel's address for `addr`.
pub(super) fn socket_addr(endpoint: &Endpoint, addr: &UnixAddr) -> Result<SocketAddrUnix> {
    let addr = match addr {
        UnixAddr::Path(path) => SocketAddrUnix::new(path.as_path()),
        UnixAddr::Abstract(name) => SocketAddrUnix::new_abstract_name(name.as_bytes()),
    };
    addr.map_err(|e| Error::io(endpoint, "making the socket address", e.into()))
}

/// The socket file a server made, removed on drop if it is still the same file.
pub(super) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.st_dev() == self.dev && m.st_ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `fd` (a socket of type `kind`) at `path` with the endpoint's mode, replacing a
/// dead server's file.
pub(super) fn bind_path(
    endpoint: &Endpoint,
    fd: &OwnedFd,
    path: &Path,
    kind: SocketType,
) -> Result<SocketFile> {
    let io_err = |op, e: io::Error| Error::io(endpoint, op, e);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = File::open(dir.unwrap_or(Path::new("/"))).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound {
                endpoint: endpoint.to_string(),
                detail: format!(
                    "the directory {} does not exist; create it first",
                    path.parent().unwrap_or(Path::new("/")).display()
                ),
            }
        } else {
            io_err("opening the socket's directory", e)
        }
    })?;
    // Two servers starting together must not both decide a file is stale and each delete
    // the other's: the check, removal and bind happen under a lock on the directory.
    rustix::fs::flock(&dir, FlockOperation::LockExclusive)
        .map_err(|e| io_err("locking the socket's directory", e.into()))?;

    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if somebody_answers(endpoint, path, kind)? {
                return Err(Error::AddrInUse {
                    endpoint: endpoint.to_string(),
                    detail: "a server answers at this socket".into(),
                });
            }
            log::info!("{endpoint}: replacing the socket file of a server that is gone");
            std::fs::remove_file(path).map_err(|e| io_err("removing a stale socket file", e))?;
        }
        Ok(_) => {
            return Err(Error::AddrInUse {
                endpoint: endpoint.to_string(),
                detail: format!(
                    "{} exists and is not a socket; ipckit will not remove it",
                    path.display()
                ),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting the socket path", e)),
    }

    let addr = socket_addr(endpoint, &UnixAddr::Path(path.to_owned()))?;
    let mode = Mode::from_raw_mode(endpoint.mode());
    // Linux creates the socket file with the socket inode's mode less the umask, so
    // setting it before bind means the file is never wider than asked, even for a
    // datagram socket, which receives from the moment it is bound. The chmod after undoes
    // what the umask took away from a mode that asked for more.
    rustix::fs::fchmod(fd, mode).map_err(|e| io_err("setting the socket's mode", e.into()))?;
    rustix::net::bind(fd, &addr).map_err(|e| io_err("binding", e.into()))?;
    rustix::fs::chmod(path, mode)
        .map_err(|e| io_err("setting the socket file's mode", e.into()))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("inspecting the socket", e))?;
    Ok(SocketFile {
        path: path.to_owned(),
        dev: meta.st_dev(),
        ino: meta.st_ino(),
    })
}

/// Whether a live socket of type `kind` is bound at `path`.
fn somebody_answers(endpoint: &Endpoint, path: &Path, kind: SocketType) -> Result<bool> {
    let probe = rustix::net::socket_with(
        AddressFamily::UNIX,
        kind,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| Error::io(endpoint, "creating a socket", e.into()))?;
    let addr = SocketAddrUnix::new(path)
        .map_err(|e| Error::io(endpoint, "making the socket address", e.into()))?;
    match rustix::net::connect(probe.as_fd(), &addr) {
        // A full backlog (EAGAIN) also means a live server.
        Ok(()) | Err(rustix::io::Errno::AGAIN) => Ok(true),
        Err(rustix::io::Errno::CONNREFUSED) => Ok(false),
        Err(e) => Err(Error::io(endpoint, "probing the existing socket", e.into())),
    }
}
