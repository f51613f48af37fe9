//! `uds`: AF_UNIX stream sockets, at a path (`uds:///run/app.sock`) or a Linux abstract
//! name (`uds://@app`). The kernel tells the server each client's pid, uid and gid
//! (SO_PEERCRED).
//!
//! What a successful `send` promises: the frame is in the kernel's socket buffer. A
//! server that dies before reading it loses it, and the client's next send fails with
//! [`crate::Error::Disconnected`]; a request is answered, refused,
//! or fails the same way.
//!
//! Socket files are private, replace a dead server's leftovers and are removed on drop:
//! see the module `endpoint_file`.
//!
//! Who may connect: the owner (and root) unless `?mode=` widens it. An abstract name has
//! no file, so the server applies the mode to each client's SO_PEERCRED instead, and
//! `?allow_uid=` and `?allow_gid=` admit more users and groups on either kind (the
//! module `access`). A refused client is told why before it is closed, and fails to
//! connect with [`crate::Error::PermissionDenied`]; the server logs the refusal.
//!
//! # Pushing to clients
//!
//! A server pushes to a client ([`crate::ClientHandle`], [`crate::Server::broadcast`]) with
//! a MESSAGE frame on its connection (docs/PROTOCOL.md, *Server push*; with `?framing=line`,
//! a line). Each client's connection has an outbox: a push first goes straight into the
//! kernel's socket buffer; what does not fit (the rest of a frame included: frames never
//! interleave) waits in the outbox, which the next write to that client and the server's
//! loop (blocking: on EPOLLOUT; tokio: a task) send on as the client reads.
//!
//! - **What bounds it:** `?outbox=` pushed messages (1000 unless set, ZeroMQ's high-water
//!   mark) beyond the socket buffer, so a client that stops reading holds at most
//!   `outbox × max_message` of the server's memory. Replies wait there too, in order, but
//!   are not counted: a reply returns once it is in the socket buffer, and a client that
//!   reads nothing for 10 s while a reply waits is disconnected.
//! - **When it is full:** [`ClientHandle::send`](crate::ClientHandle::send) waits up to
//!   `?send_timeout_ms=` (10 s) for the client to read, then fails with
//!   [`crate::Error::Full`], having sent nothing; a broadcast skips that client and counts
//!   the drop, or disconnects it (`?overflow=disconnect`).
//! - **Departure:** a client that closes or crashes is seen by the server's loop at once
//!   (the connection's end), and reported as [`crate::Event::Disconnected`]; a push that
//!   finds the connection closed fails with [`crate::Error::Disconnected`].
//! - **The client side:** nothing reads in the background. [`crate::Client::recv`] reads
//!   the socket itself, and a thread waiting for a reply files the pushes it meets for
//!   `recv`; a client that never calls `recv` leaves pushes in the kernel's buffers, and
//!   the server's outbox policy applies to it. (A client that makes requests but never
//!   calls `recv` keeps the pushes read on the way to its replies.)
//! - **With `?framing=line`:** lines carry no mark, so the first line after a request is
//!   its reply and every other line a push; a push that the server writes between a
//!   request and its reply is taken for the reply. A subscriber that only reads (socat,
//!   nc) prints every line pushed.
//!
//! # URL and options
//!
//! `uds:///run/app.sock` (a socket file at that absolute path) or `uds://@app` (the abstract
//! name `app`). Options: `framing`, `mode`, `allow_uid`, `allow_gid`, `max_message`,
//! `max_connections`, `handshake_timeout_ms`, `frame_timeout_ms`, `outbox`, `overflow` and
//! `send_timeout_ms`, each described in
//! [the crate's endpoint table](crate#endpoints).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! let url = format!("uds://@ipckit-doc-uds-{}", std::process::id());
//! let server = ipckit::listen(&url)?.spawn(|msg| {
//!     // SO_PEERCRED: the kernel vouches for the asker's uid.
//!     Some(format!("hello, uid {}", msg.peer().uid?).into_bytes())
//! });
//! let client = ipckit::connect(&url)?;
//! let reply = client.request(b"who am I?", Duration::from_secs(5))?;
//! assert!(reply.starts_with(b"hello, uid "));
//! drop(server); // stops it (a socket file would be removed)
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::endpoint_file::{bind_path, socket_addr};
use super::stream::{StreamConnection, StreamListener};
#[cfg(feature = "tokio")]
use super::stream_tokio::{AsyncStreamConnection, AsyncStreamListener};
use super::{Capabilities, Connection, Listener, Transport};
use crate::endpoint::{Address, Endpoint, UnixAddr};
use crate::error::{Error, Result};
use crate::message::Peer;

/// The `uds` transport.
pub struct Uds;

crate::transport::sealed!(Uds);

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
            connection: true,
            max_message: endpoint.max_message(),
            peer_credentials: true,
            zero_copy: false,
            competing_receivers: false,
            queue_limit: None,
            push: true,
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
        let (fd, cleanup) = bind_listening(endpoint)?;
        Ok(Box::new(StreamListener::new(
            endpoint.clone(),
            fd,
            peer_credentials,
            cleanup,
        )?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        Box::pin(async move {
            let addr = unix_addr(endpoint)?;
            let fd = socket(endpoint, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?;
            loop {
                match rustix::net::connect(&fd, &addr) {
                    Ok(()) => break,
                    // The server's backlog is full: it accepts soon, or the caller's
                    // timeout ends the wait.
                    Err(rustix::io::Errno::AGAIN) => {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(Error::io(endpoint, "connecting", e.into())),
                }
            }
            let connection = AsyncStreamConnection::establish(endpoint, fd).await?;
            Ok(Box::new(connection) as Box<dyn super::AsyncConnection>)
        })
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        let (fd, cleanup) = bind_listening(endpoint)?;
        Ok(Box::new(AsyncStreamListener::new(
            endpoint.clone(),
            fd,
            peer_credentials,
            cleanup,
        )?))
    }
}

/// A non-blocking socket listening at the endpoint, and what removes its file.
fn bind_listening(endpoint: &Endpoint) -> Result<(OwnedFd, Option<Box<dyn Send>>)> {
    let fd = socket(endpoint, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?;
    let cleanup: Option<Box<dyn Send>> = match endpoint.address() {
        Address::Uds(UnixAddr::Path(path)) => Some(Box::new(bind_path(
            endpoint,
            &fd,
            path,
            SocketType::STREAM,
        )?)),
        _ => {
            // An abstract name vanishes with the last socket bound to it, so one that
            // is taken belongs to a live process.
            rustix::net::bind(&fd, &unix_addr(endpoint)?)
                .map_err(|e| Error::listen_io(endpoint, "binding", e.into()))?;
            None
        }
    };
    rustix::net::listen(&fd, 1024)
        .map_err(|e| Error::listen_io(endpoint, "listening", e.into()))?;
    Ok((fd, cleanup))
}

fn unix_addr(endpoint: &Endpoint) -> Result<SocketAddrUnix> {
    match endpoint.address() {
        Address::Uds(addr) => socket_addr(endpoint, addr),
        _ => unreachable!("the registry hands uds endpoints only to uds"),
    }
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
