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
//! A client introduces itself when it connects, and the server pushes to the socket its
//! one-way messages leave from (docs/PROTOCOL.md, *Datagrams*). The outbox is the
//! client's receive queue in the kernel: a push never waits and never fails `Full`; when
//! the queue is full the kernel drops the datagram silently, so a subscriber that does
//! not keep up sees gaps, which it can count by numbering the messages. A client that
//! leaves says goodbye; one that crashed stays listed until the server forgets it
//! ([`ClientHandle::disconnect`](crate::ClientHandle::disconnect)), as UDP tells a sender
//! nothing of a closed port unless the socket asks for ICMP errors, which this server
//! does not yet. A foreign program that sends a datagram becomes a client of its own,
//! and its pushes arrive with an 8-byte mark. `capabilities().push` stays false until
//! every push check of the conformance suite passes over udp.
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
/// Room for bursts in the server's receive queue (the kernel caps it at rmem_max).
const SERVER_RECEIVE_BUFFER: usize = 4 << 20;

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

impl Family for UdpFamily {
    fn client_socket(&self, endpoint: &Endpoint) -> Result<OwnedFd> {
        let server = tcp::resolve(endpoint)?[0];
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => ([0u16; 8], 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(|e| Error::io(endpoint, "binding", e))?;
        socket
            .connect(server)
            .map_err(|e| Error::io(endpoint, "connecting", e))?;
        Ok(socket.into())
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
            push: false,
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
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, SERVER_RECEIVE_BUFFER);
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
