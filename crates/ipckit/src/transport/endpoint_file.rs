//! Endpoint files (sockets, FIFOs), shared by the transports that live at a path.
//!
//! An endpoint file is created with the endpoint's mode (0600 unless `?mode=` widens it)
//! and is never open wider than that. A file left by a crashed server is replaced; one
//! where a server answers is [`Error::AddrInUse`]; a file of another kind is never
//! touched. The file is removed when the server is dropped, unless another server has
//! replaced it meanwhile.

use std::fs::File;
use std::fs::FileType;
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
pub(crate) fn socket_addr(endpoint: &Endpoint, addr: &UnixAddr) -> Result<SocketAddrUnix> {
    let addr = match addr {
        UnixAddr::Path(path) => SocketAddrUnix::new(path.as_path()),
        UnixAddr::Abstract(name) => SocketAddrUnix::new_abstract_name(name.as_bytes()),
    };
    addr.map_err(|e| Error::io(endpoint, "making the socket address", e.into()))
}

/// The file a server made, removed on drop if it is still the same file.
pub(super) struct EndpointFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for EndpointFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.st_dev() == self.dev && m.st_ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What sort of file an endpoint is.
pub(super) struct Kind<'a> {
    /// For messages: "socket", "FIFO".
    pub name: &'static str,
    /// Whether an existing file is of this sort.
    pub is: fn(&FileType) -> bool,
    /// Whether a live server owns the existing file.
    pub alive: &'a dyn Fn() -> Result<bool>,
    /// The file's permission bits.
    pub mode: u32,
}

/// Makes the endpoint file at `path` with `create`, replacing a dead server's file of the
/// same kind, and sets the kind's mode exactly. `create` must make the file no wider
/// than that mode.
pub(super) fn claim_path(
    endpoint: &Endpoint,
    path: &Path,
    kind: Kind<'_>,
    create: impl FnOnce() -> Result<()>,
) -> Result<EndpointFile> {
    let io_err = |op, e: io::Error| Error::listen_io(endpoint, op, e);
    let parent = path.parent().filter(|d| !d.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("/"));
    let dir = File::open(parent).map_err(|e| io_err("opening the endpoint's directory", e))?;
    // Two servers starting together must not both decide a file is stale and each delete
    // the other's: the check, removal and creation happen under a lock on the directory.
    rustix::fs::flock(&dir, FlockOperation::LockExclusive)
        .map_err(|e| io_err("locking the endpoint's directory", e.into()))?;

    match std::fs::symlink_metadata(path) {
        Ok(meta) if (kind.is)(&meta.file_type()) => {
            if (kind.alive)()? {
                return Err(Error::AddrInUse {
                    endpoint: endpoint.to_string(),
                    detail: format!("a server answers at this {}", kind.name),
                });
            }
            log::info!(
                "{endpoint}: replacing the {} of a server that is gone",
                kind.name
            );
            std::fs::remove_file(path).map_err(|e| io_err("removing a stale endpoint file", e))?;
        }
        Ok(_) => {
            return Err(Error::AddrInUse {
                endpoint: endpoint.to_string(),
                detail: format!(
                    "{} exists and is not a {}; ipckit will not remove it",
                    path.display(),
                    kind.name
                ),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting the endpoint path", e)),
    }
    create()?;
    // Undo what the umask took away from a mode that asked for more.
    rustix::fs::chmod(path, Mode::from_raw_mode(kind.mode))
        .map_err(|e| io_err("setting the endpoint file's mode", e.into()))?;
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| io_err("inspecting the endpoint file", e))?;
    Ok(EndpointFile {
        path: path.to_owned(),
        dev: meta.st_dev(),
        ino: meta.st_ino(),
    })
}

/// Binds `fd` (a socket of type `kind`) at `path` with the endpoint's mode (widened for
/// an allow-list, see `access`), replacing a dead server's file.
pub(super) fn bind_path(
    endpoint: &Endpoint,
    fd: &OwnedFd,
    path: &Path,
    kind: SocketType,
) -> Result<EndpointFile> {
    let alive = || somebody_answers(endpoint, path, kind);
    let file_mode = super::access::socket_file_mode(endpoint);
    let socket = Kind {
        name: "socket",
        is: FileType::is_socket,
        alive: &alive,
        mode: file_mode,
    };
    claim_path(endpoint, path, socket, || {
        let mode = Mode::from_raw_mode(file_mode);
        let io_err = |op, e: rustix::io::Errno| Error::listen_io(endpoint, op, e.into());
        // Linux creates the socket file with the socket inode's mode less the umask, so
        // setting it before bind means the file is never wider than asked, even for a
        // datagram socket, which receives from the moment it is bound.
        rustix::fs::fchmod(fd, mode).map_err(|e| io_err("setting the socket's mode", e))?;
        let addr = socket_addr(endpoint, &UnixAddr::Path(path.to_owned()))?;
        rustix::net::bind(fd, &addr).map_err(|e| io_err("binding", e))
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
    .map_err(|e| Error::listen_io(endpoint, "creating a socket", e.into()))?;
    let addr = SocketAddrUnix::new(path)
        .map_err(|e| Error::listen_io(endpoint, "making the socket address", e.into()))?;
    match rustix::net::connect(probe.as_fd(), &addr) {
        // A full backlog (EAGAIN) also means a live server.
        Ok(()) | Err(rustix::io::Errno::AGAIN) => Ok(true),
        Err(rustix::io::Errno::CONNREFUSED) => Ok(false),
        Err(e) => Err(Error::listen_io(
            endpoint,
            "probing the existing socket",
            e.into(),
        )),
    }
}
