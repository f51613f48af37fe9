//! The client and server of the datagram transports (`udp`, `unixgram`).
//!
//! One datagram is one message, its payload exactly as sent: no ipckit header, so any
//! program that sends a datagram is heard, and anything ipckit sends reads as plain data.
//! The one exception is an answer that is not a plain reply: a refusal is [`REFUSED`]
//! and then its reason, and a reply that itself begins with [`RESERVED`] goes out behind
//! [`ESCAPED`] so that it cannot be read as a refusal (docs/PROTOCOL.md, *Datagrams*).
//! The server cannot tell a request from a one-way message (both come from a bound
//! socket), so a message dropped unanswered is not refused: a refusal to every one-way
//! message would flood its sender's socket, which nobody reads.
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
use super::access::Access;
use super::datagram_clients::Clients;
use super::pool::Pool;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, Peer, ReplySink, ReplyTo};
use crate::push::{Broadcaster, Event, Roster};
use crate::sys::ReceiveTimeout;

/// How long a reply may wait for room in a client's receive queue (unixgram).
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The start of every answer that is not a plain reply, as mq marks its own messages.
pub(crate) const RESERVED: &[u8; 5] = b"\0IPCK";
/// A refusal: these 8 bytes, then the UTF-8 reason.
pub(crate) const REFUSED: &[u8; 8] = b"\0IPCKNO1";
/// Put before a reply or a client's message that begins with [`RESERVED`], and taken
/// off by the receiver.
pub(crate) const ESCAPED: &[u8; 8] = b"\0IPCKOK1";
/// A client's home socket introducing itself: these 8 bytes, then the client's token.
pub(crate) const HELLO: &[u8; 8] = b"\0IPCKHI1";
/// A client's request socket introducing itself: these 8 bytes, then the client's token.
pub(crate) const ALSO: &[u8; 8] = b"\0IPCKAS1";
/// A socket closing: from a client, it leaves (its home) or is done (a request socket);
/// from the server, it has stopped or forgotten the client.
pub(crate) const BYE: &[u8; 8] = b"\0IPCKBY1";
/// A push from the server's own socket to a client's home: these 8 bytes, then the
/// payload (a push from a socket of the client's own is the payload as it is).
pub(crate) const PUSHED: &[u8; 8] = b"\0IPCKPU1";
/// What differs between the datagram transports.
pub(super) trait Family: Send + Sync + 'static {
    /// A new client socket, connected to the server (and bound where replies need it).
    fn client_socket(&self, endpoint: &Endpoint) -> Result<OwnedFd>;
    /// Who sent a datagram, from its address and, where the kernel adds them, its
    /// credentials.
    fn peer(&self, from: Option<&SocketAddrAny>, creds: Option<rustix::net::UCred>) -> Peer;
    /// A client's home socket, and the server's address where the socket is not connected
    /// to the server (so that a socket of the server's own can push to it).
    fn home_socket(&self, endpoint: &Endpoint) -> Result<(OwnedFd, Option<SocketAddrAny>)> {
        Ok((self.client_socket(endpoint)?, None))
    }
    /// A socket of the server's own to push to the client at `home` from, connected there;
    /// `None` where pushes leave from the server's socket.
    fn push_socket(&self, home: &SocketAddrAny) -> Option<OwnedFd> {
        let _ = home;
        None
    }
}

/// A client's home: its inbox, where pushes arrive, and the socket its one-way messages
/// leave from, connected to the server (a send on an unconnected unix socket looks its
/// address up each time, which doubles the cost of a one-way message).
pub(super) struct Home<F = OwnedFd> {
    /// Where one-way messages leave from, introduced to the server as a request socket is.
    fd: F,
    /// Where pushes arrive; it says hello and goodbye for the client.
    inbox: F,
    /// The server's address, where `inbox` is not connected to it.
    server: Option<SocketAddrAny>,
    /// Where pushes come from, once the server's welcome named it (where `server` is set).
    pusher: std::sync::OnceLock<SocketAddrAny>,
}

impl<F: std::os::fd::AsFd> Home<F> {
    /// Sends a one-way message.
    #[inline]
    fn send(&self, marker: &[u8], payload: &[u8], flags: SendFlags) -> rustix::io::Result<usize> {
        if marker.is_empty() {
            return rustix::net::send(&self.fd, payload, flags);
        }
        let iov = [
            std::io::IoSlice::new(marker),
            std::io::IoSlice::new(payload),
        ];
        let control = &mut rustix::net::SendAncillaryBuffer::default();
        rustix::net::sendmsg(&self.fd, &iov, control, flags)
    }

    /// Sends hello or goodbye from the inbox, which is the client's address to the server.
    fn greet(&self, greeting: &[u8], flags: SendFlags) -> rustix::io::Result<usize> {
        match &self.server {
            None => rustix::net::send(&self.inbox, greeting, flags),
            Some(to) => rustix::net::sendto(&self.inbox, greeting, flags, to),
        }
    }

    /// What the `len`-byte datagram in `buf` from `from` is: pushes are taken only from
    /// where the server's welcome came from (a stranger may write to an unconnected
    /// socket), and that welcome connects the home there.
    fn classify(
        &self,
        core: &ClientCore,
        buf: &[u8],
        len: usize,
        from: Option<SocketAddrAny>,
    ) -> AtHome {
        if self.server.is_some() {
            match (self.pusher.get(), from) {
                (Some(pusher), Some(from)) if *pusher == from => return core.pushed(buf, len),
                (None, Some(from)) if buf[..len.min(buf.len())] == core.greeting(HELLO) => {
                    // Connected, the outbox is this socket's queue as the server's push
                    // socket fills it, bounded by that socket's send buffer (module
                    // `unixgram`). A push socket closed since (its server pushed and went
                    // before this client read) refuses the connect, but what it sent waits
                    // in the queue all the same, its goodbye last: the welcome, which
                    // carries the token, names the pusher either way.
                    let _ = rustix::net::connect(&self.inbox, &from);
                    let _ = self.pusher.set(from);
                    return AtHome::Other;
                }
                _ => return AtHome::Other,
            }
        }
        core.at_home(buf, len)
    }
}

struct RequestSocket {
    fd: OwnedFd,
    timeout: ReceiveTimeout,
    buf: Vec<u8>,
}

impl Drop for RequestSocket {
    fn drop(&mut self) {
        say_bye(&self.fd);
    }
}

/// Tells the server a socket closes, best effort: it forgets the address (or, for a
/// client's home, the client) at once instead of when a push finds it gone.
fn say_bye(fd: &OwnedFd) {
    let _ = rustix::net::send(fd, BYE, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
}

/// What a datagram that reached a client's home is.
enum AtHome {
    /// A push: its payload.
    Pushed(Vec<u8>),
    /// The server's goodbye.
    Bye,
    /// Nothing for this client: a reply to a one-way message, or an oversized push.
    Other,
}

/// What every datagram client, blocking or async, knows and checks.
struct ClientCore {
    endpoint: Endpoint,
    url: String,
    family: Arc<dyn Family>,
    max: usize,
    /// What `max` is, for errors.
    limit: String,
    /// Names this client to the server from each of its sockets.
    token: [u8; 8],
}

/// A token no other client of the same server is likely to have.
fn new_token() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish().to_le_bytes()
}

impl ClientCore {
    fn new(endpoint: &Endpoint, family: Arc<dyn Family>, (max, limit): (usize, String)) -> Self {
        ClientCore {
            endpoint: endpoint.clone(),
            url: endpoint.to_string(),
            family,
            max,
            limit,
            token: new_token(),
        }
    }

    /// `mark` and this client's token.
    fn greeting(&self, mark: &[u8; 8]) -> [u8; 16] {
        let mut greeting = [0; 16];
        greeting[..8].copy_from_slice(mark);
        greeting[8..].copy_from_slice(&self.token);
        greeting
    }

    /// A new request socket, introduced to the server.
    fn introduced(&self) -> Result<OwnedFd> {
        let fd = self.family.client_socket(&self.endpoint)?;
        send_datagram(&fd, &[], &self.greeting(ALSO), &self.url)?;
        Ok(fd)
    }

    /// A new home, introduced to the server (while still blocking, so that the
    /// introductions are never dropped for want of room): the inbox first, so that the
    /// server knows the client when its sending socket says whose it is.
    fn home(&self) -> Result<Home> {
        let (inbox, server) = self.family.home_socket(&self.endpoint)?;
        let home = Home {
            fd: self.family.client_socket(&self.endpoint)?,
            inbox,
            server,
            pusher: std::sync::OnceLock::new(),
        };
        loop {
            match home.greet(&self.greeting(HELLO), SendFlags::NOSIGNAL) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io(&self.url, "sending", e.into())),
            }
        }
        self.also_from(&home)?;
        Ok(home)
    }

    /// Introduces the home's sending socket, after its inbox said hello.
    fn also_from(&self, home: &Home) -> Result<()> {
        match send_datagram(&home.fd, &[], &self.greeting(ALSO), &self.url) {
            // The server took the hello and has closed since (a publisher whose input
            // ended): this client is connected all the same, and what the server pushed
            // before it went waits in the inbox, its goodbye last. A send finds it gone.
            Err(e) if ClientCore::server_replaced(&e) => Ok(()),
            sent => sent,
        }
    }

    /// A receive buffer for pushes: the mark, the largest payload, and one byte to tell an
    /// oversized push.
    fn push_buffer(&self) -> Vec<u8> {
        vec![0; PUSHED.len() + self.max + 1]
    }

    /// What the `len`-byte datagram in `buf`, read at home, is.
    fn at_home(&self, buf: &[u8], len: usize) -> AtHome {
        let datagram = &buf[..len.min(buf.len())];
        if let Some(payload) = datagram.strip_prefix(PUSHED) {
            if len - PUSHED.len() > self.max {
                log::warn!(
                    "{}: dropped a push of {} bytes, over this client's limit of {} bytes",
                    self.url,
                    len - PUSHED.len(),
                    self.max
                );
                return AtHome::Other;
            }
            return AtHome::Pushed(payload.to_vec());
        }
        match datagram == BYE {
            true => AtHome::Bye,
            false => AtHome::Other,
        }
    }

    /// What the `len`-byte datagram in `buf` from the client's own push socket is: a
    /// push as it is, or escaped where it begins with [`RESERVED`], or the goodbye.
    fn pushed(&self, buf: &[u8], len: usize) -> AtHome {
        let datagram = &buf[..len.min(buf.len())];
        let payload = match datagram.starts_with(RESERVED) {
            false => datagram,
            true if datagram == BYE => return AtHome::Bye,
            true => match datagram.strip_prefix(ESCAPED) {
                Some(payload) => payload,
                // The welcome again, or a mark of a later version: not for this client.
                None => return AtHome::Other,
            },
        };
        let size = len - (datagram.len() - payload.len());
        if size > self.max {
            log::warn!(
                "{}: dropped a push of {size} bytes, over this client's limit of {} bytes",
                self.url,
                self.max
            );
            return AtHome::Other;
        }
        AtHome::Pushed(payload.to_vec())
    }

    fn server_gone(&self) -> Error {
        Error::Disconnected {
            endpoint: self.url.clone(),
            detail: "the server closed or forgot this client; connect again to go on".into(),
        }
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

    /// A receive buffer one byte over the limit, which tells an oversized reply from a
    /// full one.
    fn reply_buffer(&self) -> Vec<u8> {
        vec![0; self.max + 1]
    }

    /// The answer in `buf`, of which the datagram was `len` bytes (`recv` with TRUNC).
    fn reply(&self, buf: &[u8], len: usize) -> Result<Vec<u8>> {
        answer(&self.url, self.max, &buf[..len.min(buf.len())], len)
    }

    /// Whether a failed send means the server went (or restarted): a datagram socket
    /// stays connected to the server that was there, so the sender needs a fresh one.
    fn server_replaced(error: &Error) -> bool {
        matches!(error, Error::NotFound { .. } | Error::Disconnected { .. })
    }
}

/// A datagram client.
pub(super) struct DatagramConnection {
    core: ClientCore,
    /// The client's home: one-way messages leave here and pushes arrive here; replaced
    /// (and introduced again) when the server it was connected to is gone.
    sender: Mutex<Arc<Home>>,
    pool: Pool<RequestSocket>,
    /// Where pushes are read.
    inbox: Mutex<Vec<u8>>,
    /// The server said goodbye to this home.
    gone: AtomicBool,
}

impl Drop for DatagramConnection {
    fn drop(&mut self) {
        let home = crate::sys::lock(&self.sender);
        let _ = home.greet(BYE, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
    }
}

impl Home {
    /// Sends one datagram, waiting for room.
    fn send_all(&self, marker: &[u8], payload: &[u8], url: &str) -> Result<()> {
        loop {
            match self.send(marker, payload, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io(url, "sending", e.into())),
            }
        }
    }
}

impl DatagramConnection {
    pub(super) fn new(
        endpoint: &Endpoint,
        family: Arc<dyn Family>,
        max: (usize, String),
    ) -> Result<DatagramConnection> {
        let core = ClientCore::new(endpoint, family, max);
        Ok(DatagramConnection {
            sender: Mutex::new(Arc::new(core.home()?)),
            inbox: Mutex::new(core.push_buffer()),
            core,
            pool: Pool::new(),
            gone: AtomicBool::new(false),
        })
    }

    /// Where this client's one-way messages go, as its socket is connected.
    #[cfg(test)]
    pub(super) fn one_way_peer(&self) -> Option<SocketAddrAny> {
        rustix::net::getpeername(&crate::sys::lock(&self.sender).fd).ok()?
    }

    fn request_on(
        &self,
        socket: &mut RequestSocket,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let url = &self.core.url;
        let deadline = Instant::now() + timeout;
        send_datagram(&socket.fd, escape(payload), payload, url)?;
        loop {
            let armed = socket.timeout.arm(&socket.fd, Some(deadline));
            if !armed.map_err(|e| Error::io(url, "setting the receive timeout", e))? {
                return Err(Error::Timeout {
                    endpoint: url.clone(),
                    after: timeout,
                });
            }
            match rustix::net::recv(&socket.fd, &mut socket.buf[..], RecvFlags::TRUNC) {
                Ok((_, len)) if !is_answer(&socket.buf[..len.min(socket.buf.len())]) => {}
                Ok((_, len)) => return self.core.reply(&socket.buf, len),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(Error::io(url, "receiving the reply", e.into())),
            }
        }
    }
}

/// What goes before a client's `payload`: [`ESCAPED`] where the server would read its
/// start as a mark.
#[inline]
fn escape(payload: &[u8]) -> &'static [u8] {
    match payload.starts_with(RESERVED) {
        true => ESCAPED,
        false => &[],
    }
}

/// Whether a datagram a request socket received can be its answer: a push (which reaches
/// a request socket only if the server took it for a stranger's home) or a goodbye is not.
#[inline]
fn is_answer(datagram: &[u8]) -> bool {
    !(datagram.starts_with(RESERVED) && (datagram.starts_with(PUSHED) || datagram == BYE))
}

/// Sends `marker` and then `payload` as one datagram on a connected socket; a plain
/// payload in one `send`.
fn send_datagram(fd: &OwnedFd, marker: &[u8], payload: &[u8], url: &str) -> Result<()> {
    loop {
        let sent = if marker.is_empty() {
            rustix::net::send(fd, payload, SendFlags::NOSIGNAL)
        } else {
            rustix::net::sendmsg(
                fd,
                &[
                    std::io::IoSlice::new(marker),
                    std::io::IoSlice::new(payload),
                ],
                &mut rustix::net::SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            )
        };
        match sent {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io(url, "sending", e.into())),
        }
    }
}

crate::transport::sealed!(DatagramConnection, DatagramListener);

impl Connection for DatagramConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        let core = &self.core;
        core.check_size(payload)?;
        let mut sender = crate::sys::lock(&self.sender);
        match sender.send_all(escape(payload), payload, &core.url) {
            // A missing server is NotFound from introducing the fresh socket.
            Err(e) if ClientCore::server_replaced(&e) => {
                *sender = Arc::new(core.home()?);
                self.gone.store(false, Ordering::Release);
                sender.send_all(escape(payload), payload, &core.url)
            }
            sent => sent,
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        let core = &self.core;
        let url = &core.url;
        let mut buf = crate::sys::lock(&self.inbox);
        // Whether to try the socket before polling it.
        let mut waited = true;
        loop {
            if self.gone.load(Ordering::Acquire) {
                return Err(core.server_gone());
            }
            let home = crate::sys::lock(&self.sender).clone();
            // With a deadline, a push already queued is taken without a poll first: a
            // subscriber behind its server pays one syscall a message.
            let flags = match (deadline, waited) {
                (None, _) => RecvFlags::TRUNC,
                (Some(_), true) => RecvFlags::TRUNC | RecvFlags::DONTWAIT,
                (Some(_), false) => {
                    waited = true;
                    let ready = crate::sys::wait_ready(
                        std::os::fd::AsFd::as_fd(&home.inbox),
                        rustix::event::PollFlags::IN,
                        deadline,
                    );
                    if !ready.map_err(|e| Error::io(url, "waiting for a push", e))? {
                        return Ok(None);
                    }
                    RecvFlags::TRUNC | RecvFlags::DONTWAIT
                }
            };
            match rustix::net::recvfrom(&home.inbox, &mut buf[..], flags) {
                Ok((_, len, from)) => match home.classify(core, &buf, len, from) {
                    AtHome::Pushed(payload) => return Ok(Some(payload)),
                    AtHome::Bye => self.gone.store(true, Ordering::Release),
                    AtHome::Other => {}
                },
                Err(rustix::io::Errno::AGAIN) => waited = false,
                Err(rustix::io::Errno::INTR) => {}
                // udp: a one-way message met a closed port.
                Err(rustix::io::Errno::CONNREFUSED) => self.gone.store(true, Ordering::Release),
                Err(e) => return Err(Error::io(url, "receiving a push", e.into())),
            }
        }
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let core = &self.core;
        core.check_size(payload)?;
        self.pool.with(
            || {
                Ok(RequestSocket {
                    fd: core.introduced()?,
                    timeout: ReceiveTimeout::default(),
                    buf: core.reply_buffer(),
                })
            },
            |socket| self.request_on(socket, payload, timeout),
        )
    }

    fn max_message(&self) -> usize {
        self.core.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}

/// The way back to one sender: the server's socket and the sender's address.
pub(super) struct DatagramSink {
    fd: Arc<OwnedFd>,
    to: SocketAddrAny,
    url: Arc<str>,
    max: usize,
}

/// The caller's result from an answer of `len` bytes, of which `received` are what a
/// buffer one byte over the client's limit `max` took.
pub(crate) fn answer(url: &str, max: usize, received: &[u8], len: usize) -> Result<Vec<u8>> {
    if let Some(reason) = received.strip_prefix(REFUSED) {
        // Cut to this client's limit, as a stream client's ERROR is: a refusal longer
        // than that is still a refusal, not an oversized reply.
        let reason = &reason[..reason.len().min(max.saturating_sub(REFUSED.len()))];
        return Err(Error::Remote {
            endpoint: url.to_owned(),
            reason: utf8_prefix(reason),
        });
    }
    if len > max {
        return Err(Error::Protocol {
            endpoint: url.to_owned(),
            reason: format!("a reply of {len} bytes, over this client's limit of {max} bytes"),
        });
    }
    Ok(received.strip_prefix(ESCAPED).unwrap_or(received).to_vec())
}

/// The longest prefix of `bytes` that is whole UTF-8 (a reason cut mid-character loses
/// that character), with anything invalid before it replaced.
fn utf8_prefix(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl DatagramSink {
    pub(super) fn new(fd: Arc<OwnedFd>, to: SocketAddrAny, url: Arc<str>, max: usize) -> Self {
        DatagramSink { fd, to, url, max }
    }

    /// Sends `marker` and then `payload` as one datagram; a plain reply (no marker) in one
    /// `sendto`, as a hand-written server would.
    fn send_to(&self, marker: &[u8], payload: &[u8]) -> Result<()> {
        loop {
            let sent = if marker.is_empty() {
                rustix::net::sendto(&*self.fd, payload, SendFlags::NOSIGNAL, &self.to)
            } else {
                rustix::net::sendmsg_addr(
                    &*self.fd,
                    &self.to,
                    &[
                        std::io::IoSlice::new(marker),
                        std::io::IoSlice::new(payload),
                    ],
                    &mut rustix::net::SendAncillaryBuffer::default(),
                    SendFlags::NOSIGNAL,
                )
            };
            match sent {
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

impl ReplySink for DatagramSink {
    fn send_reply(&self, _id: u64, payload: &[u8], ok: bool) -> Result<()> {
        if !ok {
            // Cut to what one datagram of this endpoint carries (the server cannot learn
            // its client's limit; the client cuts it again to its own).
            let cut = crate::frame::char_cut(payload, self.max.saturating_sub(REFUSED.len()));
            return self.send_to(REFUSED, &payload[..cut]);
        }
        let escape: &[u8] = match payload.starts_with(RESERVED) {
            true => ESCAPED,
            false => &[],
        };
        let max = self.max.saturating_sub(escape.len());
        if payload.len() > max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.to_string(),
                size: payload.len(),
                max,
                limit: "the largest datagram this endpoint carries".into(),
            });
        }
        self.send_to(escape, payload)
    }

    /// Not refused: the server cannot tell a one-way message from a request (module docs).
    fn unanswered(&self, _id: u64) {}
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
    clients: Clients,
    /// A message held back behind the `Connected` of the client it introduced.
    held: Option<Message>,
    /// Whom the server admits, where the kernel does not decide it already.
    access: Option<Access>,
    /// The last sender refused, whose further datagrams are dropped without a warning
    /// each: a stranger sending in a loop must not flood the log.
    last_refused: Option<Option<rustix::net::UCred>>,
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
        let access = Access::for_endpoint(&endpoint);
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Send,
            Some(REPLY_SEND_TIMEOUT),
        )
        .map_err(|e| Error::io(&*url, "setting the send timeout", e.into()))?;
        let waker = family.client_socket(&endpoint)?;
        let waker_addr = rustix::net::getsockname(&waker)
            .map_err(|e| Error::io(&*url, "reading the waker's address", e.into()))?;
        let fd = Arc::new(fd);
        let roster = Roster::new(&endpoint);
        let clients = Clients::new(roster, fd.clone(), url.clone(), max, family.clone());
        Ok(DatagramListener {
            url,
            endpoint,
            fd,
            family,
            max,
            buf: vec![0; max + 1],
            timeout: ReceiveTimeout::default(),
            stop: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(waker),
            waker_addr,
            clients,
            held: None,
            access,
            last_refused: None,
            _cleanup: cleanup,
        })
    }
}

impl DatagramListener {
    /// Receives one datagram: `Ok(None)` for one that is nothing to report (the waker's,
    /// one over the limit, which is logged, or a request socket introducing itself).
    fn receive(&mut self) -> rustix::io::Result<Option<Event>> {
        if let Some(message) = self.held.take() {
            return Ok(Some(Event::Message(message)));
        }
        if let Some(replaced) = self.clients.take_replaced() {
            return Ok(Some(Event::Disconnected(replaced)));
        }
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &*self.fd,
            &mut [std::io::IoSliceMut::new(&mut self.buf)],
            &mut control,
            RecvFlags::TRUNC | RecvFlags::CMSG_CLOEXEC,
        )?;
        if received.address.as_ref() == Some(&self.waker_addr) {
            return Ok(None); // the waker: the stop flag is checked by the caller
        }
        let creds = control.drain().find_map(|m| match m {
            RecvAncillaryMessage::ScmCredentials(creds) => Some(creds),
            _ => None,
        });
        if let Some(access) = &self.access {
            let verdict = match creds {
                Some(c) => access.admit(c.uid.as_raw(), c.gid.as_raw(), Vec::new),
                None => Err("the kernel gave no credentials for it".to_owned()),
            };
            if let Err(reason) = verdict {
                // Not answered: this may be a one-way message, and a stranger sending in a
                // loop must not be sent a refusal for each. A request times out.
                let from = creds.map_or_else(
                    || "a sender".to_owned(),
                    |c| format!("pid {}", c.pid.as_raw_nonzero()),
                );
                if self.last_refused == Some(creds) {
                    log::debug!("{}: dropped a datagram from {from}: {reason}", self.url);
                } else {
                    log::warn!("{}: dropped a datagram from {from}: {reason}", self.url);
                    self.last_refused = Some(creds);
                }
                return Ok(None);
            }
        }
        let Some(from) = received.address else {
            // An unbound unix socket: it can be heard but neither answered nor pushed to.
            return Ok(self.within_limit(received.bytes, None).then(|| {
                let peer = Arc::new(self.family.peer(None, creds));
                let payload = self.buf[..received.bytes].to_vec();
                Event::Message(Message::new(payload, peer, None, self.url.clone()))
            }));
        };
        let mut start = 0;
        if self.buf[..received.bytes.min(self.buf.len())].starts_with(RESERVED) {
            match self.control(&from, creds, received.bytes) {
                Control::Event(event) => return Ok(event),
                Control::Escaped => start = ESCAPED.len(),
                Control::Message => {}
            }
        }
        let (known, joined) = self.clients.sender(&from, creds);
        if !self.within_limit(received.bytes, Some(&known.peer)) {
            return Ok(joined.map(Event::Connected));
        }
        let payload = self.buf[start..received.bytes].to_vec();
        let reply_to = ReplyTo::new(known.sink.clone(), 0);
        let message = Message::new(
            payload,
            known.peer.clone(),
            Some(reply_to),
            self.url.clone(),
        )
        .with_client(known.client.clone());
        Ok(Some(match joined {
            Some(client) => {
                self.held = Some(message);
                Event::Connected(client)
            }
            None => Event::Message(message),
        }))
    }

    /// Whether a datagram of `bytes` is within the limit; logged when it is not.
    fn within_limit(&self, bytes: usize, peer: Option<&Peer>) -> bool {
        if bytes <= self.max {
            return true;
        }
        log::warn!(
            "{}: dropped a datagram of {} bytes from {}: it exceeds the limit of {} bytes",
            self.url,
            bytes,
            peer.and_then(|p| p.addr.clone().or_else(|| p.pid.map(|p| format!("pid {p}"))))
                .unwrap_or_else(|| "a sender".into()),
            self.max
        );
        false
    }

    /// What a datagram of `bytes` beginning with [`RESERVED`] from `from` is.
    #[cold]
    fn control(
        &mut self,
        from: &SocketAddrAny,
        creds: Option<rustix::net::UCred>,
        bytes: usize,
    ) -> Control {
        let datagram = &self.buf[..bytes.min(self.buf.len())];
        let token =
            |mark: &[u8; 8]| -> Option<[u8; 8]> { datagram.strip_prefix(mark)?.try_into().ok() };
        if let Some(token) = token(HELLO) {
            return Control::Event(self.clients.hello(from, creds, token).map(Event::Connected));
        }
        if let Some(token) = token(ALSO) {
            self.clients.also(from, creds, token);
            return Control::Event(None);
        }
        if datagram == BYE {
            return Control::Event(self.clients.bye(from).map(Event::Disconnected));
        }
        match datagram.starts_with(ESCAPED) {
            true => Control::Escaped,
            // A stranger's message that happens to begin so: delivered as it is.
            false => Control::Message,
        }
    }

    /// One wait, until `deadline`, for the next event.
    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        loop {
            if self.held.is_none() {
                if self.stop.swap(false, Ordering::AcqRel) {
                    return Ok(None);
                }
                let armed = self.timeout.arm(&*self.fd, deadline);
                if !armed.map_err(|e| Error::io(&*self.url, "setting the receive timeout", e))? {
                    return Ok(None);
                }
            }
            match self.receive() {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) | Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(Error::io(&*self.url, "receiving", e.into())),
            }
        }
    }
}

/// What a datagram beginning with [`RESERVED`] is.
enum Control {
    /// A client coming, going or introducing a request socket: what to report, if any.
    Event(Option<Event>),
    /// A client's message behind [`ESCAPED`].
    Escaped,
    /// A message as it is.
    Message,
}

impl Listener for DatagramListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        crate::transport::next_message(|| self.next_event(deadline))
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.next_event(deadline)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(self.clients.roster().clone(), self.max))
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

// ---------------------------------------------------------------------------------------
// Async
// ---------------------------------------------------------------------------------------

#[cfg(feature = "tokio")]
pub(super) use self::on_tokio::{AsyncDatagramConnection, AsyncDatagramListener};

/// The same clients and server driven by tokio: the sockets are made non-blocking and
/// registered with its reactor. A datagram goes out whole or not at all, so a dropped
/// `send` never leaves part of one; a dropped `request` drops its socket with it, so its
/// late reply cannot reach the next request.
#[cfg(feature = "tokio")]
mod on_tokio {
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::task::{Poll, ready};

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    use super::*;
    use crate::transport::{AsyncConnection, AsyncListener, BoxFuture, reactor};

    /// Makes a socket non-blocking and registers it, errors included: a refused datagram
    /// comes back as an error on the socket, which only error readiness reports.
    fn register<T: std::os::fd::AsFd + std::os::fd::AsRawFd>(
        url: &str,
        fd: T,
    ) -> Result<AsyncFd<T>> {
        rustix::io::ioctl_fionbio(&fd, true)
            .map_err(|e| Error::io(url, "making the socket non-blocking", e.into()))?;
        let interest = Interest::READABLE | Interest::WRITABLE | Interest::ERROR;
        reactor::register(url, fd, interest)
    }

    /// A new request socket, introduced to the server while still blocking.
    fn new_socket(core: &ClientCore) -> Result<Arc<AsyncFd<OwnedFd>>> {
        register(&core.url, core.introduced()?).map(Arc::new)
    }

    /// A new home socket, introduced to the server while still blocking.
    fn new_home(core: &ClientCore) -> Result<Arc<Home<AsyncFd<OwnedFd>>>> {
        let Home {
            fd,
            inbox,
            server,
            pusher,
        } = core.home()?;
        Ok(Arc::new(Home {
            fd: register(&core.url, fd)?,
            inbox: register(&core.url, inbox)?,
            server,
            pusher,
        }))
    }

    /// Sends one datagram, waiting for room in the socket's buffer.
    async fn send_on(fd: &AsyncFd<OwnedFd>, payload: &[u8], url: &str) -> Result<()> {
        let marker = escape(payload);
        reactor::when_ready(fd, Interest::WRITABLE, |fd| {
            Ok(match marker.is_empty() {
                true => rustix::net::send(fd.get_ref(), payload, SendFlags::NOSIGNAL)?,
                false => rustix::net::sendmsg(
                    fd.get_ref(),
                    &[
                        std::io::IoSlice::new(marker),
                        std::io::IoSlice::new(payload),
                    ],
                    &mut rustix::net::SendAncillaryBuffer::default(),
                    SendFlags::NOSIGNAL,
                )?,
            })
        })
        .await
        .map(drop)
        .map_err(|e| Error::io(url, "sending", e))
    }

    /// Sends one datagram from a client's home, waiting for room.
    async fn send_home(home: &Home<AsyncFd<OwnedFd>>, payload: &[u8], url: &str) -> Result<()> {
        let marker = escape(payload);
        reactor::when_ready(&home.fd, Interest::WRITABLE, |_| {
            Ok(home.send(marker, payload, SendFlags::NOSIGNAL)?)
        })
        .await
        .map(drop)
        .map_err(|e| Error::io(url, "sending", e))
    }

    struct AsyncRequestSocket {
        fd: Arc<AsyncFd<OwnedFd>>,
        buf: Vec<u8>,
    }

    impl Drop for AsyncRequestSocket {
        fn drop(&mut self) {
            say_bye(self.fd.get_ref());
        }
    }

    pub(in crate::transport) struct AsyncDatagramConnection {
        core: ClientCore,
        /// The client's home, as the blocking client's `sender`.
        sender: Mutex<Arc<Home<AsyncFd<OwnedFd>>>>,
        pool: Pool<AsyncRequestSocket>,
        inbox: Mutex<Vec<u8>>,
        gone: AtomicBool,
    }

    impl Drop for AsyncDatagramConnection {
        fn drop(&mut self) {
            let home = crate::sys::lock(&self.sender);
            let _ = home.greet(BYE, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
        }
    }

    impl AsyncDatagramConnection {
        pub(in crate::transport) fn new(
            endpoint: &Endpoint,
            family: Arc<dyn Family>,
            max: (usize, String),
        ) -> Result<AsyncDatagramConnection> {
            let core = ClientCore::new(endpoint, family, max);
            Ok(AsyncDatagramConnection {
                sender: Mutex::new(new_home(&core)?),
                inbox: Mutex::new(core.push_buffer()),
                core,
                pool: Pool::new(),
                gone: AtomicBool::new(false),
            })
        }

        /// Cancel-safe: a datagram is read only by the poll that returns it.
        async fn recv(&self) -> Result<Vec<u8>> {
            let core = &self.core;
            loop {
                if self.gone.load(Ordering::Acquire) {
                    return Err(core.server_gone());
                }
                let home = crate::sys::lock(&self.sender).clone();
                let read =
                    reactor::when_ready(&home.inbox, Interest::READABLE | Interest::ERROR, |fd| {
                        let mut buf = crate::sys::lock(&self.inbox);
                        let (_, len, from) =
                            rustix::net::recvfrom(fd.get_ref(), &mut buf[..], RecvFlags::TRUNC)?;
                        Ok(home.classify(core, &buf, len, from))
                    });
                match read.await {
                    Ok(AtHome::Pushed(payload)) => return Ok(payload),
                    Ok(AtHome::Bye) => self.gone.store(true, Ordering::Release),
                    Ok(AtHome::Other) => {}
                    Err(e)
                        if e.raw_os_error()
                            == Some(rustix::io::Errno::CONNREFUSED.raw_os_error()) =>
                    {
                        self.gone.store(true, Ordering::Release)
                    }
                    Err(e) => return Err(Error::io(&core.url, "receiving a push", e)),
                }
            }
        }

        async fn send(&self, payload: &[u8]) -> Result<()> {
            let core = &self.core;
            core.check_size(payload)?;
            let sender = crate::sys::lock(&self.sender).clone();
            match send_home(&sender, payload, &core.url).await {
                Err(e) if ClientCore::server_replaced(&e) => {
                    let fresh = new_home(core)?;
                    *crate::sys::lock(&self.sender) = fresh.clone();
                    self.gone.store(false, Ordering::Release);
                    send_home(&fresh, payload, &core.url).await
                }
                sent => sent,
            }
        }

        async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
            let core = &self.core;
            core.check_size(payload)?;
            let mut socket = self.pool.take(|| {
                Ok(AsyncRequestSocket {
                    fd: new_socket(core)?,
                    buf: core.reply_buffer(),
                })
            })?;
            let exchange = async {
                send_on(&socket.fd, payload, &core.url).await?;
                let fd = socket.fd.clone();
                let buf = &mut socket.buf;
                let received =
                    reactor::when_ready(&fd, Interest::READABLE | Interest::ERROR, |fd| {
                        let (_, len) =
                            rustix::net::recv(fd.get_ref(), &mut buf[..], RecvFlags::TRUNC)?;
                        match is_answer(&buf[..len.min(buf.len())]) {
                            true => Ok(len),
                            // Not for this request: read on.
                            false => Err(std::io::ErrorKind::WouldBlock.into()),
                        }
                    });
                match received.await {
                    Ok(len) => core.reply(&socket.buf, len),
                    Err(e) => Err(Error::io(&core.url, "receiving the reply", e)),
                }
            };
            let reply = tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| Error::Timeout {
                    endpoint: core.url.clone(),
                    after: timeout,
                })??;
            self.pool.give_back(socket);
            Ok(reply)
        }
    }

    crate::transport::sealed!(AsyncDatagramConnection, AsyncDatagramListener);

    impl AsyncConnection for AsyncDatagramConnection {
        /// Dropped before it completes, the datagram was sent whole or not at all.
        fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
            Box::pin(AsyncDatagramConnection::send(self, payload))
        }

        /// Dropped at any point, the request's socket is closed with it: a late reply
        /// cannot be taken for another request's.
        fn request<'a>(
            &'a self,
            payload: &'a [u8],
            timeout: Duration,
        ) -> BoxFuture<'a, Result<Vec<u8>>> {
            Box::pin(AsyncDatagramConnection::request(self, payload, timeout))
        }

        fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
            Box::pin(AsyncDatagramConnection::recv(self))
        }

        fn max_message(&self) -> usize {
            self.core.max
        }

        fn endpoint(&self) -> &Endpoint {
            &self.core.endpoint
        }
    }

    /// The blocking server's socket and bookkeeping, read when tokio says it is readable.
    pub(in crate::transport) struct AsyncDatagramListener {
        server: DatagramListener,
        fd: AsyncFd<Arc<OwnedFd>>,
    }

    impl AsyncDatagramListener {
        pub(in crate::transport) fn new(server: DatagramListener) -> Result<AsyncDatagramListener> {
            let fd = register(&server.url, server.fd.clone())?;
            Ok(AsyncDatagramListener { server, fd })
        }
    }

    impl AsyncDatagramListener {
        /// The next event. Cancel-safe: a datagram is read only when what it says is
        /// returned (a message behind a `Connected` is held by the server itself).
        fn poll_event(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<Event>> {
            let AsyncDatagramListener { server, fd } = self;
            loop {
                if let Some(message) = server.held.take() {
                    return Poll::Ready(Ok(Event::Message(message)));
                }
                // A push found a client gone and woke this loop through the waker.
                if let Some(departed) = server.clients.roster().take_departed() {
                    return Poll::Ready(Ok(Event::Disconnected(departed)));
                }
                let received = reactor::poll_read(fd, cx, |_| Ok(server.receive()?));
                match ready!(received) {
                    Ok(Some(event)) => return Poll::Ready(Ok(event)),
                    Ok(None) => {} // nothing to report: the next one
                    Err(e) => return Poll::Ready(Err(Error::io(&*server.url, "receiving", e))),
                }
            }
        }
    }

    impl AsyncListener for AsyncDatagramListener {
        /// Cancel-safe: a datagram is read only when it is returned.
        fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
            Box::pin(poll_fn(move |cx| {
                loop {
                    match ready!(self.poll_event(cx)) {
                        Ok(Event::Message(message)) => return Poll::Ready(Ok(message)),
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }))
        }

        fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
            Box::pin(poll_fn(move |cx| self.poll_event(cx)))
        }

        fn broadcaster(&self) -> Option<Broadcaster> {
            Listener::broadcaster(&self.server)
        }

        fn endpoint(&self) -> &Endpoint {
            &self.server.endpoint
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(max: usize, datagram: &[u8]) -> Result<Vec<u8>> {
        answer(
            "udp://test",
            max,
            &datagram[..datagram.len().min(max + 1)],
            datagram.len(),
        )
    }

    #[test]
    fn answers_read_as_replies_refusals_and_escaped_replies() {
        assert_eq!(answered(100, b"plain").unwrap(), b"plain");
        assert_eq!(answered(100, b"").unwrap(), b"");
        assert_eq!(
            answered(100, b"\0IPCKOK1\0IPCKNO1x").unwrap(),
            b"\0IPCKNO1x"
        );
        match answered(100, b"\0IPCKNO1why not") {
            Err(Error::Remote { reason, .. }) => assert_eq!(reason, "why not"),
            other => panic!("a refusal read as {other:?}"),
        }
        match answered(5, b"toolong") {
            Err(Error::Protocol { reason, .. }) => {
                assert!(
                    reason.contains("7 bytes") && reason.contains("5 bytes"),
                    "{reason}"
                )
            }
            other => panic!("an oversized reply read as {other:?}"),
        }
    }

    /// At a client's home, a push is its payload, the server's goodbye ends `recv`, and
    /// anything else (a reply to a one-way message, a push over the limit) is not for it;
    /// at a request socket, neither a push nor a goodbye is taken for the answer.
    #[test]
    fn pushes_and_answers_are_told_apart() {
        let endpoint: Endpoint = "udp://127.0.0.1:9".parse().unwrap();
        struct NoFamily;
        impl Family for NoFamily {
            fn client_socket(&self, _: &Endpoint) -> Result<OwnedFd> {
                unreachable!()
            }
            fn peer(&self, _: Option<&SocketAddrAny>, _: Option<rustix::net::UCred>) -> Peer {
                Peer::default()
            }
        }
        let core = ClientCore::new(&endpoint, Arc::new(NoFamily), (5, "test".into()));
        let home = |datagram: &[u8]| core.at_home(datagram, datagram.len());
        assert!(matches!(home(b"\0IPCKPU1hello"), AtHome::Pushed(p) if p == b"hello"));
        assert!(matches!(home(b"\0IPCKPU1"), AtHome::Pushed(p) if p.is_empty()));
        assert!(matches!(home(b"\0IPCKPU1toolong"), AtHome::Other));
        assert!(matches!(home(BYE), AtHome::Bye));
        assert!(matches!(home(b"a reply"), AtHome::Other));
        // From the client's own push socket: the payload as it is, escaped where it
        // begins with a mark.
        let own = |datagram: &[u8]| core.pushed(datagram, datagram.len());
        assert!(matches!(own(b"hello"), AtHome::Pushed(p) if p == b"hello"));
        assert!(matches!(own(b""), AtHome::Pushed(p) if p.is_empty()));
        assert!(matches!(own(b"\0IPCKOK1\0IPCK"), AtHome::Pushed(p) if p == RESERVED));
        assert!(matches!(own(b"\0IPCKOK112345"), AtHome::Pushed(p) if p == b"12345"));
        assert!(matches!(own(b"123456"), AtHome::Other));
        assert!(matches!(own(b"\0IPCKOK1123456"), AtHome::Other));
        assert!(matches!(own(BYE), AtHome::Bye));
        assert!(matches!(own(b"\0IPCKHI1token..."), AtHome::Other));
        assert!(!is_answer(b"\0IPCKPU1x") && !is_answer(BYE));
        assert!(is_answer(b"\0IPCKNO1no") && is_answer(b"\0IPCKOK1x") && is_answer(b"x"));
        assert_eq!(escape(b"\0IPCKBY1"), ESCAPED);
        assert!(escape(b"plain").is_empty());
    }

    /// A refusal over the client's limit is cut to it, never mid-character.
    #[test]
    fn long_refusal_cut_to_the_client_limit() {
        let mut datagram = REFUSED.to_vec();
        datagram.extend_from_slice("é".repeat(100).as_bytes());
        match answered(8 + 11, &datagram) {
            Err(Error::Remote { reason, .. }) => assert_eq!(reason, "é".repeat(5)),
            other => panic!("a long refusal read as {other:?}"),
        }
    }
}
