//! `uds`: AF_UNIX stream sockets, at a path (`uds:///run/app.sock`) or a Linux abstract
//! name (`uds://@app`). The kernel tells the server each client's pid, uid and gid
//! (SO_PEERCRED).
//!
//! A socket file is created with the endpoint's mode (0600 unless `?mode=` widens it)
//! before the socket listens, so there is no moment at which it is open wider. A file left
//! by a crashed server is replaced; one where a server answers is [`Error::AddrInUse`];
//! anything that is not a socket is never touched. The file is removed when the server is
//! dropped, unless another server has replaced it meanwhile.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::stream::{StreamConnection, StreamListener};
use super::{Capabilities, Connection, Listener, Transport};
use crate::endpoint::{Address, Endpoint, UnixAddr};
use crate::error::{Error, Result};
use crate::message::Peer;

/// The `uds` transport.
pub struct Uds;

impl Transport for Uds {
    fn scheme(&self) -> &'static str {
        "uds"
    }

    fn summary(&self) -> &'static str {
        "AF_UNIX stream sockets, SO_PEERCRED"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            reliable: true,
            ordered: true,
            durable: false,
            broadcast: false,
            max_message: endpoint.max_message(),
            peer_credentials: true,
            zero_copy: false,
        }
    }

    fn scratch_endpoint(&self, dir: &Path, name: &str) -> Endpoint {
        let endpoint = Endpoint::parse("uds:///scratch").expect("a valid form");
        endpoint.with_address(Address::Uds(UnixAddr::Path(
            dir.join(format!("{name}.sock")),
        )))
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        let addr = unix_addr(endpoint)?;
        let fd = socket(endpoint, SocketFlags::CLOEXEC)?;
        rustix::net::connect(&fd, &addr)
            .map_err(|e| Error::io(endpoint, "connecting", e.into()))?;
        Ok(Box::new(StreamConnection::establish(endpoint, fd)?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        let fd = socket(endpoint, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?;
        let cleanup: Option<Box<dyn Send>> = match endpoint.address() {
            Address::Uds(UnixAddr::Path(path)) => Some(Box::new(bind_path(endpoint, &fd, path)?)),
            _ => {
                // An abstract name vanishes with the last socket bound to it, so one that
                // is taken belongs to a live process.
                rustix::net::bind(&fd, &unix_addr(endpoint)?)
                    .map_err(|e| Error::io(endpoint, "binding", e.into()))?;
                None
            }
        };
        rustix::net::listen(&fd, 1024).map_err(|e| Error::io(endpoint, "listening", e.into()))?;
        Ok(Box::new(StreamListener::new(
            endpoint.clone(),
            fd,
            peer_credentials,
            cleanup,
        )?))
    }
}

fn unix_addr(endpoint: &Endpoint) -> Result<SocketAddrUnix> {
    let addr = match endpoint.address() {
        Address::Uds(UnixAddr::Path(path)) => SocketAddrUnix::new(path.as_path()),
        Address::Uds(UnixAddr::Abstract(name)) => {
            SocketAddrUnix::new_abstract_name(name.as_bytes())
        }
        _ => unreachable!("the registry hands uds endpoints only to uds"),
    };
    addr.map_err(|e| Error::io(endpoint, "making the socket address", e.into()))
}

fn socket(endpoint: &Endpoint, flags: SocketFlags) -> Result<OwnedFd> {
    rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)
        .map_err(|e| Error::io(endpoint, "creating a socket", e.into()))
}

fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<Peer> {
    let cred = rustix::net::sockopt::socket_peercred(fd)?;
    Ok(Peer {
        pid: Some(cred.pid.as_raw_nonzero().get() as u32),
        uid: Some(cred.uid.as_raw()),
        gid: Some(cred.gid.as_raw()),
        addr: None,
    })
}

/// The socket file a server made, removed on drop if it is still the same file.
struct SocketFile {
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

/// Binds `fd` at `path` with the endpoint's mode, replacing a dead server's file.
fn bind_path(endpoint: &Endpoint, fd: &OwnedFd, path: &Path) -> Result<SocketFile> {
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
            if somebody_answers(endpoint, path)? {
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

    let addr = unix_addr(endpoint)?;
    rustix::net::bind(fd, &addr).map_err(|e| io_err("binding", e.into()))?;
    // Nobody can connect before listen(), so narrowing the mode now leaves no window.
    rustix::fs::chmod(path, Mode::from_raw_mode(endpoint.mode()))
        .map_err(|e| io_err("setting the socket file's mode", e.into()))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("inspecting the socket", e))?;
    Ok(SocketFile {
        path: path.to_owned(),
        dev: meta.st_dev(),
        ino: meta.st_ino(),
    })
}

/// Whether a live server accepts connections at `path`.
fn somebody_answers(endpoint: &Endpoint, path: &Path) -> Result<bool> {
    let probe = socket(endpoint, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?;
    let addr = SocketAddrUnix::new(path)
        .map_err(|e| Error::io(endpoint, "making the socket address", e.into()))?;
    match rustix::net::connect(probe.as_fd(), &addr) {
        // A full backlog (EAGAIN) also means a live server.
        Ok(()) | Err(rustix::io::Errno::AGAIN) => Ok(true),
        Err(rustix::io::Errno::CONNREFUSED) => Ok(false),
        Err(e) => Err(Error::io(endpoint, "probing the existing socket", e.into())),
    }
}
