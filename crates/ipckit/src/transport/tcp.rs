//! `tcp`: TCP over loopback (`tcp://127.0.0.1:7000`), with TCP_NODELAY on both ends so a
//! small message leaves at once.
//!
//! What a successful `send` promises: the frame is in the kernel's socket buffer. A
//! server that dies before reading it loses it; the client learns at its next send or
//! the one after, when the reset has come back.
//!
//! A client dropped before its server's welcome came waits for it, up to a second (the
//! tokio client on the blocking pool, not on the runtime's threads): a TCP socket closed
//! with bytes unread, or sent bytes once closed, resets the connection, and the reset
//! discards what the client sent and the server has not read yet. A server in its loop
//! welcomes within microseconds; the wait is felt only when the server is not taking
//! connections (busy, or the very thread that would).
//!
//! A server binds only to a loopback address unless the endpoint says `?public=true`:
//! local IPC should not become reachable from the network by a typo. Port 0 lets the
//! kernel choose; the server's [`Listener::endpoint`] reports the port it got.
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
//! - **Departure:** a client that closes or crashes is seen by the server's loop when its kernel
//!   closes the connection (at once on loopback; a crashed client's reset), and reported as [`crate::Event::Disconnected`]; a push that
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
//! `tcp://127.0.0.1:7000`, `tcp://[::1]:7000` or `tcp://localhost:7000`; port 0 when
//! listening lets the kernel choose. Options: `public`, `framing`, `max_message`,
//! `max_connections`, `handshake_timeout_ms`, `frame_timeout_ms`, `outbox`, `overflow` and
//! `send_timeout_ms`, each described in
//! [the crate's endpoint table](crate#endpoints).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! let server = ipckit::listen("tcp://127.0.0.1:0")?;
//! let url = server.endpoint().clone(); // the port the kernel chose
//! let _serving = server.spawn(|msg| Some(msg.payload().len().to_string().into_bytes()));
//!
//! let client = ipckit::connect(&url)?;
//! assert_eq!(client.request(b"four", Duration::from_secs(5))?, b"4");
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use super::stream::{StreamConnection, StreamListener};
#[cfg(feature = "tokio")]
use super::stream_tokio::{AsyncStreamConnection, AsyncStreamListener};
use super::{Capabilities, Connection, Listener, Transport};
use crate::endpoint::{Address, Endpoint, HostPort};
use crate::error::{Error, Result};
use crate::message::Peer;

/// The `tcp` transport.
pub struct Tcp;

crate::transport::sealed!(Tcp);

impl Transport for Tcp {
    fn scheme(&self) -> &'static str {
        "tcp"
    }

    fn summary(&self) -> &'static str {
        "TCP over loopback, TCP_NODELAY"
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
            peer_credentials: false,
            zero_copy: false,
            competing_receivers: false,
            queue_limit: None,
            push: true,
        }
    }

    fn scratch_endpoint(&self, _dir: &Path, _name: &str) -> Endpoint {
        Endpoint::parse("tcp://127.0.0.1:0").expect("a valid form")
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        let stream = TcpStream::connect(resolve(endpoint)?.as_slice())
            .map_err(|e| Error::io(endpoint, "connecting", e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::io(endpoint, "setting TCP_NODELAY", e))?;
        Ok(Box::new(StreamConnection::establish(
            endpoint,
            OwnedFd::from(stream),
        )?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        let (fd, actual) = bind_listening(endpoint)?;
        Ok(Box::new(StreamListener::new(
            actual,
            fd,
            prepare_accepted,
            None,
        )?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(resolve(endpoint)?.as_slice())
                .await
                .map_err(|e| Error::io(endpoint, "connecting", e))?;
            stream
                .set_nodelay(true)
                .map_err(|e| Error::io(endpoint, "setting TCP_NODELAY", e))?;
            let fd = OwnedFd::from(
                stream
                    .into_std()
                    .map_err(|e| Error::io(endpoint, "taking the socket from tokio", e))?,
            );
            let connection = AsyncStreamConnection::establish(endpoint, fd).await?;
            Ok(Box::new(connection) as Box<dyn super::AsyncConnection>)
        })
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        let (fd, actual) = bind_listening(endpoint)?;
        Ok(Box::new(AsyncStreamListener::new(
            actual,
            fd,
            prepare_accepted,
            None,
        )?))
    }
}

/// A non-blocking socket listening at the endpoint, and the endpoint with the port the
/// kernel chose.
fn bind_listening(endpoint: &Endpoint) -> Result<(OwnedFd, Endpoint)> {
    let addrs = resolve_to_listen(endpoint)?;
    refuse_public_unless_asked(endpoint, &addrs)?;
    let listener = TcpListener::bind(addrs.as_slice())
        .map_err(|e| Error::listen_io(endpoint, "binding", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::listen_io(endpoint, "making the socket non-blocking", e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::listen_io(endpoint, "reading the bound address", e))?;
    let Address::Tcp(asked) = endpoint.address() else {
        unreachable!("the registry hands tcp endpoints only to tcp")
    };
    let actual = endpoint.with_address(Address::Tcp(HostPort {
        host: asked.host.clone(),
        port: bound.port(),
    }));
    Ok((OwnedFd::from(listener), actual))
}

/// Local IPC should not become reachable from the network by a typo.
pub(super) fn refuse_public_unless_asked(endpoint: &Endpoint, addrs: &[SocketAddr]) -> Result<()> {
    if endpoint.public() {
        return Ok(());
    }
    let open = addrs.iter().find(|a| !a.ip().is_loopback());
    // An address of another machine cannot be listened on, public or not: say that,
    // rather than ask for ?public=true, which would only fail at bind. Binding a
    // throwaway UDP socket to port 0 tells, and listens on nothing.
    if let Some(Err(e)) = open.map(|a| std::net::UdpSocket::bind((a.ip(), 0))) {
        return Err(Error::listen_io(endpoint, "binding", e));
    }
    match open {
        Some(open) => Err(Error::PermissionDenied {
            endpoint: endpoint.to_string(),
            detail: format!(
                "{} is reachable from other machines; add ?public=true to listen there anyway",
                open.ip()
            ),
        }),
        None => Ok(()),
    }
}

/// [`resolve`] for a server: a host that does not resolve is no place to listen.
pub(super) fn resolve_to_listen(endpoint: &Endpoint) -> Result<Vec<SocketAddr>> {
    resolve(endpoint).map_err(|e| match e {
        Error::NotFound { endpoint, detail } => Error::CannotListen {
            endpoint,
            reason: format!("{detail}; listen on 127.0.0.1 or an address of this host"),
        },
        other => other,
    })
}

/// The addresses of a `tcp://` or `udp://` endpoint's host and port.
pub(super) fn resolve(endpoint: &Endpoint) -> Result<Vec<SocketAddr>> {
    let at = match endpoint.address() {
        Address::Tcp(at) | Address::Udp(at) => at,
        _ => unreachable!("only network endpoints are resolved"),
    };
    let addrs: Vec<SocketAddr> = (at.bare_host(), at.port)
        .to_socket_addrs()
        .map_err(|e| Error::NotFound {
            endpoint: endpoint.to_string(),
            detail: format!("cannot resolve host '{}': {e}", at.host),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::NotFound {
            endpoint: endpoint.to_string(),
            detail: format!("host '{}' has no address", at.host),
        });
    }
    Ok(addrs)
}

fn prepare_accepted(fd: BorrowedFd<'_>) -> io::Result<Peer> {
    rustix::net::sockopt::set_tcp_nodelay(fd, true)?;
    let addr = rustix::net::getpeername(fd)?
        .and_then(|a| SocketAddr::try_from(a).ok())
        .map(|a| a.to_string());
    Ok(Peer {
        addr,
        ..Peer::default()
    })
}
