//! The client and server of the datagram transports (`udp`, `unixgram`).
//!
//! One datagram is one message, its payload exactly as sent: no ipckit header, so any
//! program that sends a datagram is heard, and anything ipckit sends reads as plain data.
//!
//! Requests: a datagram carries no correlation id, so each request in flight has a client
//! socket of its own. Sockets come from a pool: a lone caller reuses one and pays one
//! `send` and one `recv`, like a hand-written loop; concurrent callers get one each; a
//! socket whose request timed out is closed, so a late reply can never be taken for the
//! answer to the next request. One-way messages leave from yet another socket, so that a
//! server answering them cannot confuse a request either.
//!
//! Server: one socket, read with a blocking `recvmsg`; it needs no epoll. Its waker
//! sends an empty datagram from a socket whose address it recognises.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags, SocketAddrAny};

use super::Connection;
use super::Listener;
use super::pool::Pool;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, Peer, ReplySink, ReplyTo};
use crate::sys::ReceiveTimeout;

/// How long a reply may wait for room in a client's receive queue (unixgram).
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// What differs between the datagram transports.
pub(super) trait Family: Send + Sync + 'static {
    /// A new client socket, connected to the server (and bound where replies need it).
    fn client_socket(&self, endpoint: &Endpoint) -> Result<OwnedFd>;
    /// Who sent a datagram, from its address and, where the kernel adds them, its
    /// credentials.
    fn peer(&self, from: Option<&SocketAddrAny>, creds: Option<rustix::net::UCred>) -> Peer;
}

struct RequestSocket {
    fd: OwnedFd,
    timeout: ReceiveTimeout,
    buf: Vec<u8>,
}

/// A datagram client.
pub(super) struct DatagramConnection {
    endpoint: Endpoint,
    url: String,
    family: Arc<dyn Family>,
    max: usize,
    /// What `max` is, for errors.
    limit: String,
    /// One-way messages leave here; replaced when the server it was connected to is gone.
    sender: Mutex<OwnedFd>,
    pool: Pool<RequestSocket>,
}

impl DatagramConnection {
    pub(super) fn new(
        endpoint: &Endpoint,
        family: Arc<dyn Family>,
        (max, limit): (usize, String),
    ) -> Result<DatagramConnection> {
        Ok(DatagramConnection {
            sender: Mutex::new(family.client_socket(endpoint)?),
            endpoint: endpoint.clone(),
            url: endpoint.to_string(),
            family,
            max,
            limit,
            pool: Pool::new(),
        })
    }

    fn check_size(&self, payload: &[u8]) -> Result<()> {
        if payload.len() > self.max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: payload.len(),
                max: self.max,
                limit: self.limit.clone(),
            });
        }
        Ok(())
    }

    fn request_on(
        &self,
        socket: &mut RequestSocket,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        send_datagram(&socket.fd, payload, &self.url)?;
        loop {
            let armed = socket.timeout.arm(&socket.fd, Some(deadline));
            if !armed.map_err(|e| Error::io(&self.url, "setting the receive timeout", e))? {
                return Err(Error::Timeout {
                    endpoint: self.url.clone(),
                    after: timeout,
                });
            }
            match rustix::net::recv(&socket.fd, &mut socket.buf[..], RecvFlags::TRUNC) {
                Ok((_, len)) if len > socket.buf.len() => {
                    return Err(Error::Protocol {
                        endpoint: self.url.clone(),
                        reason: format!("a reply of {len} bytes exceeds the limit of {}", self.max),
                    });
                }
                Ok((_, len)) => return Ok(socket.buf[..len].to_vec()),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(Error::io(&self.url, "receiving the reply", e.into())),
            }
        }
    }
}

fn send_datagram(fd: &OwnedFd, payload: &[u8], url: &str) -> Result<()> {
    loop {
        match rustix::net::send(fd, payload, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io(url, "sending", e.into())),
        }
    }
}

impl Connection for DatagramConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.check_size(payload)?;
        let mut sender = crate::sys::lock(&self.sender);
        match send_datagram(&sender, payload, &self.url) {
            // A datagram socket stays connected to the server that was there; a server
            // restarted on the same address gets a fresh socket, and a missing one is
            // NotFound from connecting it.
            Err(Error::NotFound { .. } | Error::Disconnected { .. }) => {
                *sender = self.family.client_socket(&self.endpoint)?;
                send_datagram(&sender, payload, &self.url)
            }
            sent => sent,
        }
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.check_size(payload)?;
        self.pool.with(
            || {
                Ok(RequestSocket {
                    fd: self.family.client_socket(&self.endpoint)?,
                    timeout: ReceiveTimeout::default(),
                    // One byte more than the limit tells an oversized reply from a full one.
                    buf: vec![0; self.max + 1],
                })
            },
            |socket| self.request_on(socket, payload, timeout),
        )
    }

    fn max_message(&self) -> usize {
        self.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The way back to one sender: the server's socket and the sender's address.
struct DatagramSink {
    fd: Arc<OwnedFd>,
    to: SocketAddrAny,
    url: Arc<str>,
    max: usize,
}

impl ReplySink for DatagramSink {
    fn send_reply(&self, _id: u64, payload: &[u8], ok: bool) -> Result<()> {
        if !ok {
            return Ok(()); // A datagram cannot say "refused"; the caller times out.
        }
        if payload.len() > self.max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.to_string(),
                size: payload.len(),
                max: self.max,
                limit: "the largest datagram this endpoint carries".into(),
            });
        }
        loop {
            match rustix::net::sendto(&*self.fd, payload, SendFlags::NOSIGNAL, &self.to) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Disconnected {
                        endpoint: self.url.to_string(),
                        detail: format!("replying: {e}; the requester has gone"),
                    });
                }
            }
        }
    }
}

struct LastSender {
    addr: SocketAddrAny,
    creds: Option<rustix::net::UCred>,
    peer: Arc<Peer>,
    sink: Arc<DatagramSink>,
}

/// A datagram server on a bound socket.
pub(super) struct DatagramListener {
    endpoint: Endpoint,
    url: Arc<str>,
    fd: Arc<OwnedFd>,
    family: Arc<dyn Family>,
    max: usize,
    buf: Vec<u8>,
    timeout: ReceiveTimeout,
    stop: Arc<AtomicBool>,
    waker: Arc<OwnedFd>,
    waker_addr: SocketAddrAny,
    /// The last sender, whose peer and reply sink are reused while it keeps sending.
    last: Option<LastSender>,
    _cleanup: Option<Box<dyn Send>>,
}

impl DatagramListener {
    /// `fd` is the bound server socket; `endpoint` its real address.
    pub(super) fn new(
        endpoint: Endpoint,
        fd: OwnedFd,
        family: Arc<dyn Family>,
        max: usize,
        cleanup: Option<Box<dyn Send>>,
    ) -> Result<DatagramListener> {
        let url: Arc<str> = endpoint.to_string().into();
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Send,
            Some(REPLY_SEND_TIMEOUT),
        )
        .map_err(|e| Error::io(&*url, "setting the send timeout", e.into()))?;
        let waker = family.client_socket(&endpoint)?;
        let waker_addr = rustix::net::getsockname(&waker)
            .map_err(|e| Error::io(&*url, "reading the waker's address", e.into()))?;
        Ok(DatagramListener {
            url,
            endpoint,
            fd: Arc::new(fd),
            family,
            max,
            buf: vec![0; max + 1],
            timeout: ReceiveTimeout::default(),
            stop: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(waker),
            waker_addr,
            last: None,
            _cleanup: cleanup,
        })
    }

    fn sender(
        &mut self,
        from: Option<SocketAddrAny>,
        creds: Option<rustix::net::UCred>,
    ) -> (Arc<Peer>, Option<Arc<DatagramSink>>) {
        let Some(from) = from else {
            // An unbound unix socket: it can be heard but not answered.
            return (Arc::new(self.family.peer(None, creds)), None);
        };
        if let Some(last) = &self.last {
            if last.addr == from && last.creds == creds {
                return (last.peer.clone(), Some(last.sink.clone()));
            }
        }
        let peer = Arc::new(self.family.peer(Some(&from), creds));
        let sink = Arc::new(DatagramSink {
            fd: self.fd.clone(),
            to: from.clone(),
            url: self.url.clone(),
            max: self.max,
        });
        self.last = Some(LastSender {
            addr: from,
            creds,
            peer: peer.clone(),
            sink: sink.clone(),
        });
        (peer, Some(sink))
    }
}

impl Listener for DatagramListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        loop {
            if self.stop.swap(false, Ordering::AcqRel) {
                return Ok(None);
            }
            let armed = self.timeout.arm(&*self.fd, deadline);
            if !armed.map_err(|e| Error::io(&*self.url, "setting the receive timeout", e))? {
                return Ok(None);
            }
            let mut space =
                [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                &*self.fd,
                &mut [std::io::IoSliceMut::new(&mut self.buf)],
                &mut control,
                RecvFlags::TRUNC | RecvFlags::CMSG_CLOEXEC,
            );
            let received = match received {
                Ok(received) => received,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                Err(e) => return Err(Error::io(&*self.url, "receiving", e.into())),
            };
            if received.address.as_ref() == Some(&self.waker_addr) {
                continue; // the waker: the stop flag is checked at the top
            }
            let creds = control.drain().find_map(|m| match m {
                RecvAncillaryMessage::ScmCredentials(creds) => Some(creds),
                _ => None,
            });
            let (peer, sink) = self.sender(received.address, creds);
            if received.bytes > self.max {
                log::warn!(
                    "{}: dropped a datagram of {} bytes from {}: it exceeds the limit of {} bytes",
                    self.url,
                    received.bytes,
                    peer.addr
                        .as_deref()
                        .map_or_else(|| format!("pid {:?}", peer.pid), str::to_owned),
                    self.max
                );
                continue;
            }
            let payload = self.buf[..received.bytes].to_vec();
            let reply_to = sink.map(|sink| ReplyTo::new(sink, 0));
            return Ok(Some(Message::new(
                payload,
                peer,
                reply_to,
                self.url.clone(),
            )));
        }
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let (stop, waker) = (self.stop.clone(), self.waker.clone());
        Arc::new(move || {
            stop.store(true, Ordering::Release);
            let _ = rustix::net::send(&*waker, &[], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}
