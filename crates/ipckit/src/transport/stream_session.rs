//! The server's side of a stream connection, whatever drives its I/O (the blocking
//! server's mio loop, or tokio): accepting within bounds and refusing what is over them,
//! admitting peers by their credentials, the hello, the ids in flight, the deadlines, and
//! writing replies.

use std::collections::{HashSet, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::net::{SendAncillaryBuffer, SendFlags, Shutdown};

use crate::endpoint::{Endpoint, Framing};
use crate::error::Result;
use crate::frame::{
    Decoder, HELLO_LEN, Header, Hello, Kind, STATUS_BUSY, STATUS_LINE, STATUS_REFUSED, Violation,
    Welcome, may_open, sniff_hello,
};
use crate::message::{Message, Peer, ReplySink, ReplyTo};
use crate::sys::lock;
use crate::transport::access::Access;
use crate::transport::stream::check_outgoing;

/// Whether the server admits the peer of an accepted socket. A refused peer is told why
/// (with length framing; a line has no way to say it) before the caller drops its socket,
/// and the refusal is logged. The refusal is written before the hello is read, so that a
/// refused peer holds nothing of the server; it goes whole into the new socket's empty
/// buffer.
pub(super) fn admitted(
    access: Option<&Access>,
    url: &str,
    framing: Framing,
    fd: BorrowedFd<'_>,
    peer: &Peer,
) -> bool {
    let Some(access) = access else {
        return true;
    };
    let Err(reason) = access.admit_connection(fd, peer) else {
        return true;
    };
    log::warn!(
        "{url}: refused the connection of {}: {reason}",
        describe(peer)
    );
    if framing == Framing::Length {
        let refusal = Welcome::refusal(STATUS_REFUSED, &reason);
        let _ = rustix::net::send(fd, &refusal, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
    }
    false
}

/// How a server's side of a connection writes: whole frames, never interleaved.
pub(super) trait ConnWrite {
    /// Writes all of `parts` as one unit.
    fn write(&self, parts: &[&[u8]]) -> Result<()>;
    /// Writes what goes out just before the connection is closed, if the socket takes
    /// it at once; never waits.
    fn write_now(&self, parts: &[&[u8]]);
    /// Records the largest payload the client accepts, from its hello.
    fn set_peer_max(&self, max: usize);
    /// The largest payload the client accepts.
    fn peer_max(&self) -> usize;
    /// The connection's requests not answered yet.
    fn in_flight(&self) -> &InFlight;
}

/// The ids of a connection's requests that are not answered yet: a REQUEST with one of
/// them breaks the protocol (docs/PROTOCOL.md), as its answer could not be told apart.
#[derive(Default)]
pub(super) struct InFlight(Mutex<HashSet<u64>>);

impl InFlight {
    /// Counts request `id` in; false if it is in already.
    fn begin(&self, id: u64) -> bool {
        lock(&self.0).insert(id)
    }

    /// Counts request `id` out: before its answer is written, since the client may reuse
    /// the id the moment the answer reaches it.
    pub(super) fn end(&self, id: u64) {
        lock(&self.0).remove(&id);
    }
}

/// Frames and writes the answer to request `id`, as the framing allows.
pub(super) fn write_reply(
    url: &str,
    framing: Framing,
    peer_max: usize,
    id: u64,
    payload: &[u8],
    ok: bool,
    write: impl FnOnce(&[&[u8]]) -> Result<()>,
) -> Result<()> {
    match framing {
        Framing::Line => {
            if !ok {
                return Ok(()); // Lines have no way to say "refused"; the caller times out.
            }
            check_outgoing(url, Framing::Line, payload, usize::MAX)?;
            write(&[payload, b"\n"])
        }
        Framing::Length => {
            let payload = if ok {
                check_outgoing(url, Framing::Length, payload, peer_max)?;
                payload
            } else {
                &payload[..payload.len().min(peer_max)]
            };
            let kind = if ok { Kind::Reply } else { Kind::Error };
            let header = Header::new(kind, id, payload.len()).encode();
            write(&[&header, payload])
        }
    }
}

/// The server's side of one connection's protocol, whatever drives its I/O: the hello,
/// then frames turned into messages, each within its deadline.
pub(super) struct Session {
    pub(super) decoder: Decoder,
    framing: Framing,
    max: usize,
    greeted: bool,
    /// With line framing: the first bytes are still looked at for an ipckit hello.
    sniffing: bool,
    /// The welcome, until written.
    welcome: Option<[u8; HELLO_LEN]>,
    frame_timeout: Duration,
    handshake_timeout: Duration,
    /// When the connection must have sent its hello, or finished the frame under way;
    /// `None` between frames, where a connection may idle as long as it likes.
    deadline: Option<Instant>,
}

impl Session {
    /// The session of a connection accepted now on the server at `endpoint`.
    pub(super) fn new(endpoint: &Endpoint) -> Session {
        let framing = endpoint.framing();
        let handshake_timeout = endpoint.handshake_timeout();
        let greeted = framing == Framing::Line;
        Session {
            decoder: Decoder::new(framing, endpoint.max_message()),
            framing,
            max: endpoint.max_message(),
            greeted,
            sniffing: framing == Framing::Line,
            welcome: None,
            frame_timeout: endpoint.frame_timeout(),
            handshake_timeout,
            deadline: (!greeted).then(|| Instant::now() + handshake_timeout),
        }
    }

    /// Whether the handshake is done (at once with line framing): the client may be
    /// announced and pushed to.
    pub(super) fn greeted(&self) -> bool {
        self.greeted
    }

    /// When the connection must have finished what it started, if it started anything.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Why a connection whose [`deadline`](Session::deadline) passed is closed.
    pub(super) fn expired(&self) -> String {
        if self.greeted {
            format!(
                "it did not finish a frame within {:?} (frame_timeout_ms; {} bytes of it came); nothing of it was delivered",
                self.frame_timeout,
                self.decoder.pending()
            )
        } else {
            format!(
                "it sent no hello within {:?} (handshake_timeout_ms)",
                self.handshake_timeout
            )
        }
    }

    /// After a read: a frame left unfinished must be finished in time, counted from its
    /// first byte or from the end of the frame before it, whichever came later.
    fn time_frame(&mut self, delivered: bool) {
        if !self.greeted {
            return;
        }
        self.deadline = match self.decoder.pending() {
            0 => None,
            _ if delivered || self.deadline.is_none() => Some(Instant::now() + self.frame_timeout),
            _ => self.deadline,
        };
    }

    /// Turns every whole frame read so far into a message for `deliver`; `Err` is why the
    /// connection must be closed.
    pub(super) fn parse<S: ConnWrite + ReplySink + 'static>(
        &mut self,
        sink: &Arc<S>,
        peer: &Arc<Peer>,
        url: &Arc<str>,
        deliver: impl FnMut(Message),
    ) -> std::result::Result<(), String> {
        let parsed = self.parse_frames(sink, peer, url, deliver);
        if let Err(reason) = &parsed {
            if self.greeted && self.framing == Framing::Length {
                // Tell the client why (an ERROR with id 0, docs/PROTOCOL.md): a message
                // it sent before it knew this server's limit would else vanish unseen.
                let reason = reason.as_bytes();
                let reason = &reason[..reason.len().min(sink.peer_max())];
                let header = Header::new(Kind::Error, 0, reason.len()).encode();
                // A welcome still due goes first: the client reads one before frames.
                let welcome = self.welcome.take();
                let welcome = welcome.as_ref().map_or(&[][..], |w| &w[..]);
                sink.write_now(&[welcome, &header, reason]);
            }
        }
        parsed
    }

    fn parse_frames<S: ConnWrite + ReplySink + 'static>(
        &mut self,
        sink: &Arc<S>,
        peer: &Arc<Peer>,
        url: &Arc<str>,
        mut deliver: impl FnMut(Message),
    ) -> std::result::Result<(), String> {
        if self.sniffing {
            match sniff_hello(self.decoder.peek()) {
                None => return Ok(()),
                Some(false) => self.sniffing = false,
                Some(true) => {
                    // A framed client at a line endpoint: tell it so, or it would wait
                    // for a welcome that never comes.
                    let refusal = Welcome::refusal(
                        STATUS_LINE,
                        "this endpoint speaks ?framing=line (text lines, no ipckit handshake); add ?framing=line to the client's URL",
                    );
                    sink.write_now(&[&refusal]);
                    return Err(
                        "it opened with the ipckit hello, and this endpoint speaks ?framing=line; it was told so".into(),
                    );
                }
            }
        }
        if !self.greeted {
            if !may_open(self.decoder.peek()) {
                let mut first = [0u8; 4];
                let peek = self.decoder.peek();
                let n = peek.len().min(4);
                first[..n].copy_from_slice(&peek[..n]);
                return Err(Violation::BadMagic(first).to_string());
            }
            let Some(bytes) = self.decoder.take_exact::<HELLO_LEN>() else {
                return Ok(());
            };
            let hello = Hello::decode(&bytes).map_err(|v| v.to_string())?;
            let welcome = hello.answer(self.max);
            if welcome.status != crate::frame::STATUS_OK {
                let _ = sink.write(&[&welcome.encode()]);
                return Err(Violation::Version {
                    min: hello.min_version,
                    max: hello.max_version,
                }
                .to_string());
            }
            sink.set_peer_max(hello.max_message as usize);
            self.welcome = Some(welcome.encode());
            self.send_welcome(sink, url);
            self.greeted = true;
            self.deadline = None;
        }
        let mut delivered = false;
        while let Some(frame) = self.decoder.next_frame().map_err(|v| v.to_string())? {
            delivered = true;
            let reply_to = match (self.framing, frame.kind) {
                (Framing::Line, _) => Some(ReplyTo::new(sink.clone(), 0)),
                (Framing::Length, Kind::Message) => None,
                (Framing::Length, Kind::Request) => {
                    if !sink.in_flight().begin(frame.id) {
                        return Err(format!(
                            "a REQUEST with id {}, which is still in flight",
                            frame.id
                        ));
                    }
                    Some(ReplyTo::new(sink.clone(), frame.id))
                }
                (Framing::Length, kind) => {
                    return Err(format!("a client may not send {kind:?} frames"));
                }
            };
            deliver(Message::new(
                frame.payload,
                peer.clone(),
                reply_to,
                url.clone(),
            ));
        }
        self.time_frame(delivered);
        self.decoder.shrink();
        Ok(())
    }

    /// Writes the welcome, if still due: at once, so that a client (which does not wait
    /// for it) reads it with its next call, and closes with nothing unread: over TCP a
    /// close with unread bytes resets the connection, discarding what the client wrote
    /// and the server has not read yet (the client also drains its socket as it closes).
    fn send_welcome<S: ConnWrite>(&mut self, sink: &Arc<S>, url: &str) {
        if let Some(welcome) = self.welcome.take() {
            // The first thing written: it fits the empty socket buffer.
            if let Err(e) = sink.write(&[&welcome]) {
                log::debug!("{url}: the client left before its welcome: {e}");
            }
        }
    }
}

/// A descriptor held in reserve so that a server out of descriptors can still accept a
/// client, to refuse it, as libuv and nginx do: otherwise the client would wait in the
/// backlog until its handshake timed out, and the listener would stay readable forever.
pub(super) struct Spare(Option<OwnedFd>);

impl Spare {
    pub(super) fn new() -> Spare {
        Spare(Self::open())
    }

    fn open() -> Option<OwnedFd> {
        rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()
    }
}

/// What [`accept_one`] did.
pub(super) enum Accepted {
    /// A connection to serve.
    Conn(OwnedFd),
    /// Nothing to serve, but there may be more to accept (a client refused or gone).
    Again,
}

/// Accepts one connection on `listener`, which holds `held` of its `max` connections; a
/// client beyond them, or arriving when the process is out of descriptors, is refused
/// at once. `WouldBlock` when nobody waits; any other error is the listener's.
pub(super) fn accept_one(
    listener: BorrowedFd<'_>,
    spare: &mut Spare,
    url: &str,
    framing: Framing,
    held: usize,
    max: usize,
) -> io::Result<Accepted> {
    let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
    match rustix::net::accept_with(listener, flags) {
        Ok(fd) if held >= max => {
            let reason = format!(
                "it holds its limit of {max} connections (max_connections); retry later, or raise ?max_connections= on the server"
            );
            refuse(fd, url, framing, &reason);
            Ok(Accepted::Again)
        }
        Ok(fd) => Ok(Accepted::Conn(fd)),
        Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => Ok(Accepted::Again),
        Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
            let Some(reserve) = spare.0.take() else {
                // The reserve could not be reopened: the client waits in the backlog.
                log::error!("{url}: cannot accept a connection: {e}");
                return Err(e.into());
            };
            drop(reserve);
            let accepted = rustix::net::accept_with(listener, flags).map(|fd| {
                let reason = format!(
                    "it is out of file descriptors ({e}) with {held} connections; retry later, or raise the server's descriptor limit (ulimit -n) or lower its ?max_connections="
                );
                refuse(fd, url, framing, &reason);
            });
            spare.0 = Spare::open();
            accepted.map(|()| Accepted::Again).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Tells a client it is refused (docs/PROTOCOL.md) and closes its connection; a client
/// with line framing, which has no way to be told, is only closed.
fn refuse(fd: OwnedFd, url: &str, framing: Framing, reason: &str) {
    log::warn!("{url}: refused a connection: {reason}");
    if framing == Framing::Length {
        let refusal = Welcome::refusal(STATUS_BUSY, reason);
        // The first bytes on a new socket fit its empty buffer: this never waits.
        let _ = rustix::net::send(&fd, &refusal, SendFlags::NOSIGNAL | SendFlags::DONTWAIT);
    }
    let _ = rustix::net::shutdown(&fd, Shutdown::Write);
    // Read what the client sent (its hello): closing a TCP socket with unread bytes
    // resets the connection, which could discard the refusal before the client reads it.
    let mut sink = [0u8; 256];
    for _ in 0..4 {
        if !matches!(rustix::io::read(&fd, &mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

/// Why a connection that ended `pending` bytes into a frame is worth a warning.
pub(super) fn went_away(pending: usize) -> Option<String> {
    (pending > 0).then(|| {
        format!("the peer went away {pending} bytes into a frame; nothing of it was delivered")
    })
}

pub(super) fn describe(peer: &Peer) -> String {
    match (&peer.addr, peer.pid) {
        (Some(addr), _) => addr.clone(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => "a client".to_owned(),
    }
}

/// What the server has written to one connection that its socket has not taken yet:
/// whole frames in order, the first perhaps partly sent, so that frames never interleave
/// on the wire. Pushed frames are counted against the connection's `?outbox=`; replies
/// are not (their number is bounded by the requests the client has in flight).
#[derive(Default)]
pub(super) struct Pending {
    bytes: Vec<u8>,
    /// Where the unsent bytes start in `bytes`.
    head: usize,
    /// Bytes ever handed to the socket, and the end of every frame ever written, counted
    /// from the start of the connection: a frame has left once `sent` reaches its end.
    sent: u64,
    end: u64,
    /// The end of each queued frame, and whether it is a push.
    frames: VecDeque<(u64, bool)>,
    pushes: usize,
    /// Why nothing more can be written (the async side; the blocking one has `closed`).
    #[cfg(feature = "tokio")]
    pub(super) broken: Option<String>,
    /// The server's loop was asked to say when the socket takes more (EPOLLOUT).
    pub(super) watching: bool,
    /// Threads waiting for room for a push.
    #[cfg(feature = "tokio")]
    pub(super) waiting: usize,
}

/// Writes what the socket takes of `parts` at once; never waits. MSG_NOSIGNAL: a closed
/// peer is an error here, never a SIGPIPE.
pub(super) fn send_now(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<usize> {
    /// Frames up to this size are copied into one buffer and sent with `send(2)`, which
    /// costs less than `sendmsg(2)` with an iovec per part.
    const COALESCE: usize = 512;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    let mut written = 0;
    if total <= COALESCE {
        let mut joined = [0u8; COALESCE];
        for part in parts {
            joined[written..written + part.len()].copy_from_slice(part);
            written += part.len();
        }
        let mut at = 0;
        while at < total {
            match rustix::net::send(fd, &joined[at..total], flags) {
                Ok(n) => at += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(at);
    }
    let mut storage: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut slices = &mut storage[..];
    while !slices.is_empty() {
        match rustix::net::sendmsg(fd, slices, &mut SendAncillaryBuffer::default(), flags) {
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Pushed frames waiting.
    pub(super) fn pushes(&self) -> usize {
        self.pushes
    }

    /// Whether a reply waits behind the socket.
    #[cfg(feature = "tokio")]
    pub(super) fn holds_reply(&self) -> bool {
        self.frames.len() > self.pushes
    }

    /// Whether the frame ending at `end` has left.
    pub(super) fn written(&self, end: u64) -> bool {
        self.sent >= end
    }

    /// Writes `parts` as one frame: at once if nothing waits and the socket takes it,
    /// else queued behind what waits. Returns where the frame ends.
    pub(super) fn write(
        &mut self,
        fd: BorrowedFd<'_>,
        parts: &[&[u8]],
        push: bool,
    ) -> io::Result<u64> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let behind = !self.is_empty();
        let mut skip = 0;
        if !behind {
            skip = send_now(fd, parts)?;
            self.sent += skip as u64;
        }
        self.end += total as u64;
        if skip < total {
            for part in parts {
                let taken = skip.min(part.len());
                skip -= taken;
                self.bytes.extend_from_slice(&part[taken..]);
            }
            self.frames.push_back((self.end, push));
            self.pushes += usize::from(push);
            if behind {
                // The socket may have taken some of what waits since.
                self.flush(fd)?;
            }
        }
        Ok(self.end)
    }

    /// Writes what waits, as far as the socket takes it; never waits. True once all has
    /// gone.
    pub(super) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while self.head < self.bytes.len() {
            let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
            match rustix::net::send(fd, &self.bytes[self.head..], flags) {
                Ok(n) => {
                    self.head += n;
                    self.sent += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(&(end, push)) = self.frames.front() {
            if self.sent < end {
                break;
            }
            self.frames.pop_front();
            self.pushes -= usize::from(push);
        }
        if self.head == self.bytes.len() {
            self.head = 0;
            if self.bytes.capacity() > 64 << 10 {
                // A burst must not leave its high-water mark behind.
                self.bytes = Vec::new();
            } else {
                self.bytes.clear();
            }
        } else if self.head > self.bytes.len() / 2 {
            self.bytes.drain(..self.head);
            self.head = 0;
        }
        Ok(self.is_empty())
    }

    /// Drops what waits: the connection is ending.
    #[cfg(feature = "tokio")]
    pub(super) fn clear(&mut self) {
        self.bytes = Vec::new();
        self.head = 0;
        self.frames.clear();
        self.pushes = 0;
    }
}
