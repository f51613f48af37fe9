//! `unixgram`: AF_UNIX datagram sockets (`unixgram:///tmp/app.dgram`, or
//! `unixgram://@name`). One datagram is one message, payload as is.
//!
//! On Linux these are reliable and ordered: a sender blocks while the receiver's queue
//! is full, and nothing is dropped. The kernel adds each sender's pid, uid and gid
//! (SCM_CREDENTIALS, asked for with SO_PASSCRED). Clients get an address for replies by
//! autobind: a kernel-chosen abstract name, gone with the socket, so a crashed client
//! leaves nothing behind. The server's socket file is handled like `uds`'s (see
//! `endpoint_file`).
//!
//! Who may send: the owner (and root) unless `?mode=` widens it. An abstract name has no
//! file, so the server applies the mode to each datagram's SCM_CREDENTIALS instead, and
//! `?allow_uid=` and `?allow_gid=` admit more users and groups on either kind (the
//! module `access`; a group is the sender's gid alone, as the kernel gives no more). A
//! refused datagram is dropped and logged, not answered: the server cannot tell a request
//! from a one-way message, and a stranger sending in a loop must not be sent a refusal
//! for each, so a refused request meets its caller's timeout.
//!
//! The largest message is what the kernel takes in one datagram: the send buffer (raised
//! to net.core.wmem_max) less 32 bytes, and never over 4 MiB, which this kernel's
//! datagram allocation reliably holds.
//!
//! What a successful `send` promises: the datagram is in the receiver's queue. A receiver
//! killed before reading it loses it with the socket; after that, sends fail with
//! [`crate::Error::NotFound`] instead of succeeding into the void.
//!
//! # Pushes
//!
//! A client introduces itself when it connects; the server answers from a socket of its
//! own for that client, connected to the client's home socket, and pushes from it
//! (docs/PROTOCOL.md, *Datagrams*). The outbox is what that socket's send buffer holds
//! (net.core.wmem_max) once the client has read the server's welcome, and
//! net.unix.max_dgram_qlen datagrams before: a push to a full client waits, by `poll`,
//! for the client to read, up to the endpoint's `?send_timeout_ms=`, then fails `Full`;
//! a broadcast skips it. Each client's outbox is its own, so a client that stops reading
//! holds up no other. A client that leaves says goodbye; one that crashed is noticed by
//! the next push to it (its socket is gone: `Disconnected`). A foreign program that
//! sends from a bound socket becomes a client of its own, pushed to from the server's
//! socket.
//!
//! # URL and options
//!
//! `unixgram:///tmp/app.dgram` (a socket file at that absolute path) or `unixgram://@app`
//! (an abstract name). Options: `mode`, `allow_uid`, `allow_gid` and `max_message`,
//! described in [the crate's endpoint table](crate#endpoints).
//!
//! # Example
//!
//! A send needs no answer from the server, so one thread can send and then receive:
//!
//! ```
//! let url = format!("unixgram://@ipckit-doc-unixgram-{}", std::process::id());
//! let mut server = ipckit::listen(&url)?;
//! let client = ipckit::connect(&url)?;
//! client.send(b"one datagram")?;
//!
//! let msg = server.recv()?;
//! assert_eq!(msg.payload(), b"one datagram");
//! // SCM_CREDENTIALS: the kernel says which process sent it.
//! assert_eq!(msg.peer().pid, Some(std::process::id()));
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustix::net::{AddressFamily, SocketAddrAny, SocketAddrUnix, SocketFlags, SocketType};

use super::datagram::{DatagramConnection, DatagramListener, Family};
use super::endpoint_file::{bind_path, socket_addr};
use super::{Capabilities, Connection, Listener, Transport};
use crate::endpoint::{Address, Endpoint, UnixAddr};
use crate::error::{Error, Result};
use crate::message::Peer;

/// The `unixgram` transport.
pub struct Unixgram;

struct UnixgramFamily;

/// The most this kernel lets one datagram carry when the send buffer is raised as far as
/// an unprivileged process may.
fn kernel_max() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let probe = || -> std::io::Result<usize> {
            let fd = datagram_socket()?;
            raise_send_buffer(&fd);
            Ok(rustix::net::sockopt::socket_send_buffer_size(&fd)?)
        };
        let sndbuf = probe().unwrap_or(212_992);
        (sndbuf - 32).min(4 << 20)
    })
}

/// The largest message for `endpoint`, and which limit that is.
fn max_message(endpoint: &Endpoint) -> (usize, String) {
    if endpoint.max_message() < kernel_max() {
        (endpoint.max_message(), "this endpoint's max_message".into())
    } else {
        (
            kernel_max(),
            "the kernel's datagram limit (net.core.wmem_max)".into(),
        )
    }
}

fn datagram_socket() -> std::io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn raise_send_buffer(fd: &OwnedFd) {
    // net.core.wmem_max, read once: it is a machine setting, and sockets are made often
    // (one per request in flight).
    static WMEM_MAX: OnceLock<usize> = OnceLock::new();
    let wmem_max = *WMEM_MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(212_992)
    });
    // Best effort: the kernel caps the request at net.core.wmem_max.
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, wmem_max);
}

fn server_addr(endpoint: &Endpoint) -> &UnixAddr {
    match endpoint.address() {
        Address::Unixgram(addr) => addr,
        _ => unreachable!("the registry hands unixgram endpoints only to unixgram"),
    }
}

impl Family for UnixgramFamily {
    fn client_socket(&self, endpoint: &Endpoint) -> Result<OwnedFd> {
        let io_err = |op, e: rustix::io::Errno| Error::io(endpoint, op, e.into());
        let fd = datagram_socket().map_err(|e| Error::io(endpoint, "creating a socket", e))?;
        raise_send_buffer(&fd);
        rustix::net::bind(&fd, &SocketAddrUnix::new_unnamed())
            .map_err(|e| io_err("binding a reply address", e))?;
        rustix::net::connect(&fd, &socket_addr(endpoint, server_addr(endpoint))?)
            .map_err(|e| io_err("connecting", e))?;
        Ok(fd)
    }

    fn home_socket(&self, endpoint: &Endpoint) -> Result<(OwnedFd, Option<SocketAddrAny>)> {
        let fd = datagram_socket().map_err(|e| Error::io(endpoint, "creating a socket", e))?;
        raise_send_buffer(&fd);
        rustix::net::bind(&fd, &SocketAddrUnix::new_unnamed())
            .map_err(|e| Error::io(endpoint, "binding a home address", e.into()))?;
        let server = socket_addr(endpoint, server_addr(endpoint))?;
        Ok((fd, Some(server.into())))
    }

    fn push_socket(&self, home: &SocketAddrAny) -> Option<OwnedFd> {
        let fd = datagram_socket().ok()?;
        raise_send_buffer(&fd);
        rustix::net::bind(&fd, &SocketAddrUnix::new_unnamed()).ok()?;
        rustix::net::connect(&fd, home).ok()?;
        Some(fd)
    }

    fn peer(&self, _: Option<&SocketAddrAny>, creds: Option<rustix::net::UCred>) -> Peer {
        match creds {
            Some(c) => Peer {
                pid: Some(c.pid.as_raw_nonzero().get() as u32),
                uid: Some(c.uid.as_raw()),
                gid: Some(c.gid.as_raw()),
                addr: None,
            },
            None => Peer::default(),
        }
    }
}

crate::transport::sealed!(Unixgram);

impl Transport for Unixgram {
    fn scheme(&self) -> &'static str {
        "unixgram"
    }

    fn summary(&self) -> &'static str {
        "AF_UNIX datagram sockets, SCM_CREDENTIALS"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            reliable: true,
            ordered: true,
            durable: false,
            broadcast: false,
            connection: false,
            max_message: max_message(endpoint).0,
            peer_credentials: true,
            zero_copy: false,
            competing_receivers: false,
            queue_limit: None,
            push: true,
        }
    }

    fn scratch_endpoint(&self, dir: &Path, name: &str) -> Endpoint {
        Address::Unixgram(UnixAddr::Path(dir.join(format!("{name}.dgram")))).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(DatagramConnection::new(
            endpoint,
            Arc::new(UnixgramFamily),
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
            Arc::new(UnixgramFamily),
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
    let fd = datagram_socket().map_err(|e| Error::io(endpoint, "creating a socket", e))?;
    raise_send_buffer(&fd);
    let cleanup: Option<Box<dyn Send>> = match server_addr(endpoint) {
        UnixAddr::Path(path) => Some(Box::new(bind_path(endpoint, &fd, path, SocketType::DGRAM)?)),
        addr => {
            rustix::net::bind(&fd, &socket_addr(endpoint, addr)?)
                .map_err(|e| Error::listen_io(endpoint, "binding", e.into()))?;
            None
        }
    };
    rustix::net::sockopt::set_socket_passcred(&fd, true)
        .map_err(|e| Error::listen_io(endpoint, "asking for sender credentials", e.into()))?;
    DatagramListener::new(
        endpoint.clone(),
        fd,
        Arc::new(UnixgramFamily),
        max_message(endpoint).0,
        cleanup,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::datagram::{BYE, HELLO};
    use rustix::net::{RecvFlags, SendFlags};
    use std::time::{Duration, Instant};

    fn autobound() -> OwnedFd {
        let fd = datagram_socket().unwrap();
        rustix::net::bind(&fd, &SocketAddrUnix::new_unnamed()).unwrap();
        fd
    }

    /// A client whose server takes its hello and then closes at once: its sending socket
    /// is connected to a socket gone before it introduces itself, as the server's is.
    struct GoneAfterHello(SocketAddrAny);

    impl Family for GoneAfterHello {
        fn client_socket(&self, _: &Endpoint) -> Result<OwnedFd> {
            let gone = autobound();
            let fd = autobound();
            rustix::net::connect(&fd, &rustix::net::getsockname(&gone).unwrap()).unwrap();
            Ok(fd)
        }
        fn home_socket(&self, _: &Endpoint) -> Result<(OwnedFd, Option<SocketAddrAny>)> {
            Ok((autobound(), Some(self.0.clone())))
        }
        fn peer(&self, _: Option<&SocketAddrAny>, _: Option<rustix::net::UCred>) -> Peer {
            Peer::default()
        }
    }

    /// A server that took a client's hello, pushed and went before the client introduced
    /// its sending socket or read a thing (a publisher whose input ended) leaves it
    /// connected, with every push to read and then the end: neither the refused
    /// introduction nor the push socket, gone before the client could connect its home
    /// to it, loses what was sent.
    #[test]
    fn a_server_gone_after_the_hello_leaves_its_pushes_to_read() {
        let url = format!("unixgram://@ipckit-test-gone-{}", std::process::id());
        let endpoint = Endpoint::parse(&url).unwrap();
        let server = autobound();
        let family = GoneAfterHello(rustix::net::getsockname(&server).unwrap());
        let client = DatagramConnection::new(&endpoint, Arc::new(family), (100, "test".into()))
            .expect("connected: the server took the hello");
        // The server's side, by hand: a welcome from a push socket of its own, a push and
        // the goodbye, and then everything closes.
        let mut hello = [0; 64];
        let (_, len, from) = rustix::net::recvfrom(&server, &mut hello, RecvFlags::empty())
            .expect("the client's hello");
        assert!(hello[..len].starts_with(HELLO));
        let pusher = autobound();
        rustix::net::connect(&pusher, &from.unwrap()).unwrap();
        for datagram in [&hello[..len], b"pushed", BYE] {
            rustix::net::send(&pusher, datagram, SendFlags::empty()).unwrap();
        }
        drop((pusher, server));
        // A hang guard: a push dropped for good would wait forever.
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        assert_eq!(client.recv(deadline).unwrap(), Some(b"pushed".to_vec()));
        match client.recv(deadline) {
            Err(Error::Disconnected { .. }) => {}
            other => panic!("after the goodbye, recv gave {other:?}"),
        }
    }

    /// A client's one-way messages leave from a socket connected to the server: a send
    /// to an address looks a socket file up each time, which doubled the kernel's cost
    /// of a one-way message when the home, which must stay open to the server's push
    /// socket, sent them.
    #[test]
    fn one_way_messages_leave_from_a_connected_socket() {
        let url = format!("unixgram://@ipckit-test-one-way-{}", std::process::id());
        let endpoint = Endpoint::parse(&url).unwrap();
        let _server = server(&endpoint).unwrap();
        let client =
            DatagramConnection::new(&endpoint, Arc::new(UnixgramFamily), max_message(&endpoint))
                .unwrap();
        let peer = client.one_way_peer().expect("a connected socket");
        assert_eq!(
            peer,
            SocketAddrAny::from(socket_addr(&endpoint, server_addr(&endpoint)).unwrap())
        );
    }
}
