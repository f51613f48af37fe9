//! `udp`: UDP datagrams (`udp://127.0.0.1:9000`). One datagram is one message, payload
//! as is, so `socat - UDP:127.0.0.1:9000` or any socket program is heard.
//!
//! UDP may drop and reorder, and its capabilities say so; on loopback it loses datagrams
//! only when a receive queue overflows. A message can be at most 65507 bytes over IPv4
//! (65527 over IPv6): what one IP packet can carry. A server binds only to loopback
//! unless the endpoint says `?public=true`.
//!
//! What a successful `send` promises: the datagram was handed to the kernel. Nothing
//! more: not that anybody received it. A request is answered, refused, or times out.
//!
//! # Pushes
//!
//! A client introduces itself when it connects; the server answers from a socket of its
//! own for that client, connected to the client's home, and pushes from it
//! (docs/PROTOCOL.md, *Datagrams*). The outbox is the client's receive queue in the
//! kernel (raised to 4 MiB, capped by net.core.rmem_max): a push never waits and never
//! fails `Full`, as a datagram to a full queue is dropped by the kernel, silently; so a
//! subscriber that does not keep up sees gaps, which it can count by numbering the
//! messages, and a broadcast never drops one for being full either. A client that leaves
//! says goodbye; one that crashed is noticed by the push after the one that found its
//! port closed: the ICMP port unreachable that comes back fails the next push from that
//! connected socket with `Disconnected`. A foreign program that sends a datagram becomes
//! a client of its own, pushed to from the server's socket with an 8-byte mark, and is
//! never noticed gone (an unconnected socket is told nothing) until the server forgets
//! it ([`ClientHandle::disconnect`](crate::ClientHandle::disconnect)).
//!
//! # URL and options
//!
//! `udp://127.0.0.1:9000` (or an IPv6 literal in brackets, or a host name); port 0 when
//! listening lets the kernel choose. Options: `public` and `max_message`, described in
//! [the crate's endpoint table](crate#endpoints).
//!
//! # Example
//!
//! Any program that sends a datagram is heard: here, a plain [`std::net::UdpSocket`].
//!
//! ```
//! use std::time::Duration;
//!
//! let mut server = ipckit::listen("udp://127.0.0.1:0")?;
//! let at = server.endpoint().to_string();
//! let addr = at.trim_start_matches("udp://");
//!
//! let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
//! socket.send_to(b"hello from anywhere", addr).unwrap();
//!
//! // UDP may drop a datagram, even on loopback when a queue overflows: wait, but not forever.
//! let msg = server.recv_timeout(Duration::from_secs(5))?.expect("the datagram");
//! assert_eq!(msg.payload(), b"hello from anywhere");
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use rustix::net::SocketAddrAny;

use super::datagram::{DatagramConnection, DatagramListener, Family};
use super::{Capabilities, Connection, Listener, Transport, tcp};
use crate::endpoint::{Address, Endpoint, HostPort};
use crate::error::{Error, Result};
use crate::message::Peer;

/// The largest UDP payload over IPv4 and over IPv6, jumbograms aside.
const MAX_V4: usize = 65507;
const MAX_V6: usize = 65527;
/// Room for bursts in the server's receive queue and a client's home, where pushes
/// arrive (the kernel caps it at rmem_max).
const RECEIVE_BUFFER: usize = 4 << 20;

/// The `udp` transport.
pub struct Udp;

struct UdpFamily;

/// The largest message for `endpoint`, and which limit that is.
fn max_message(endpoint: &Endpoint) -> (usize, String) {
    let Address::Udp(at) = endpoint.address() else {
        unreachable!("the registry hands udp endpoints only to udp")
    };
    let (ip_max, family) = if at.host.starts_with('[') {
        (MAX_V6, "IPv6")
    } else {
        (MAX_V4, "IPv4")
    };
    if endpoint.max_message() < ip_max {
        (endpoint.max_message(), "this endpoint's max_message".into())
    } else {
        (ip_max, format!("the largest UDP payload over {family}"))
    }
}

/// Any address of `peer`'s family, any port: what a socket that talks to `peer` binds.
fn unspecified(peer: &SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    }
}

impl Family for UdpFamily {
    fn client_socket(&self, endpoint: &Endpoint) -> Result<OwnedFd> {
        let server = tcp::resolve(endpoint)?[0];
        let socket =
            UdpSocket::bind(unspecified(&server)).map_err(|e| Error::io(endpoint, "binding", e))?;
        socket
            .connect(server)
            .map_err(|e| Error::io(endpoint, "connecting", e))?;
        Ok(socket.into())
    }

    /// Unconnected, so that it can take pushes from the server's push socket for this
    /// client (which the server's welcome names) after saying hello to the server's
    /// socket; with a receive queue with room for bursts, as a subscriber's is where
    /// pushes are dropped when it falls behind.
    fn home_socket(&self, endpoint: &Endpoint) -> Result<(OwnedFd, Option<SocketAddrAny>)> {
        let server = tcp::resolve(endpoint)?[0];
        let socket =
            UdpSocket::bind(unspecified(&server)).map_err(|e| Error::io(endpoint, "binding", e))?;
        let fd = OwnedFd::from(socket);
        // Best effort: the kernel caps it at rmem_max, which is fine too.
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, RECEIVE_BUFFER);
        Ok((fd, Some(server.into())))
    }

    /// Connected to the client's home, so that the ICMP port unreachable a closed home
    /// sends back fails the next push with ECONNREFUSED: the server's own socket, being
    /// unconnected, is told nothing.
    fn push_socket(&self, home: &SocketAddrAny) -> Option<OwnedFd> {
        let home = SocketAddr::try_from(home.clone()).ok()?;
        let socket = UdpSocket::bind(unspecified(&home)).ok()?;
        socket.connect(home).ok()?;
        Some(socket.into())
    }

    fn peer(&self, from: Option<&SocketAddrAny>, _: Option<rustix::net::UCred>) -> Peer {
        Peer {
            addr: from
                .and_then(|a| SocketAddr::try_from(a.clone()).ok())
                .map(|a| a.to_string()),
            ..Peer::default()
        }
    }
}

crate::transport::sealed!(Udp);

impl Transport for Udp {
    fn scheme(&self) -> &'static str {
        "udp"
    }

    fn summary(&self) -> &'static str {
        "UDP datagrams, payload as is"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            reliable: false,
            ordered: false,
            durable: false,
            broadcast: false,
            connection: false,
            max_message: max_message(endpoint).0,
            peer_credentials: false,
            zero_copy: false,
            competing_receivers: false,
            queue_limit: None,
            push: true,
        }
    }

    fn scratch_endpoint(&self, _dir: &Path, _name: &str) -> Endpoint {
        Endpoint::parse("udp://127.0.0.1:0").expect("a valid form")
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(DatagramConnection::new(
            endpoint,
            Arc::new(UdpFamily),
            max_message(endpoint),
        )?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        Ok(Box::new(server(endpoint)?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        super::connected(super::datagram::AsyncDatagramConnection::new(
            endpoint,
            Arc::new(UdpFamily),
            max_message(endpoint),
        ))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        Ok(Box::new(super::datagram::AsyncDatagramListener::new(
            server(endpoint)?,
        )?))
    }
}

/// The server: its socket bound at the endpoint, shared by both APIs.
fn server(endpoint: &Endpoint) -> Result<DatagramListener> {
    let addrs = tcp::resolve_to_listen(endpoint)?;
    tcp::refuse_public_unless_asked(endpoint, &addrs)?;
    let socket =
        UdpSocket::bind(addrs.as_slice()).map_err(|e| Error::listen_io(endpoint, "binding", e))?;
    let bound = socket
        .local_addr()
        .map_err(|e| Error::listen_io(endpoint, "reading the bound address", e))?;
    let fd = OwnedFd::from(socket);
    // Best effort: the kernel caps it at rmem_max, which is fine too.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, RECEIVE_BUFFER);
    let Address::Udp(asked) = endpoint.address() else {
        unreachable!("the registry hands udp endpoints only to udp")
    };
    let actual = endpoint.with_address(Address::Udp(HostPort {
        host: asked.host.clone(),
        port: bound.port(),
    }));
    let (max, _) = max_message(&actual);
    DatagramListener::new(actual, fd, Arc::new(UdpFamily), max, None)
}
