//! The client and server of every stream transport (`uds`, `tcp`), over [`crate::frame`].
//!
//! The transports only make sockets; everything after that is here, working on plain
//! file descriptors.
//!
//! Server: one mio loop waits on the listening socket and every connection at once, and
//! `recv` returns messages parsed on the caller's own thread; nothing is handed between
//! threads on the way in. Replies and pushes are written by whoever calls
//! `Message::reply` or `ClientHandle::send`, under the connection's outbox lock: straight
//! into the socket when nothing waits, else queued whole behind what does, which the loop
//! writes on when epoll says the socket takes more (it asks for EPOLLOUT only then, so a
//! client's reads do not wake the loop otherwise).
//!
//! Client: a request is written under a write lock, then the caller reads the socket
//! itself. When several threads have requests in flight, one of them at a time (the
//! leader, holding the read half) reads frames and hands each reply to the thread that
//! waits for it; a lone caller therefore pays one `write` and one `read`, as a
//! hand-written ping-pong does. Messages the server pushes are read the same way, by
//! whoever holds the read half (a requesting thread, or a thread in `recv`), and kept in
//! a queue for `recv`.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustix::event::PollFlags;
use rustix::net::{SendAncillaryBuffer, SendFlags, Shutdown};
use slab::Slab;

use crate::endpoint::{Endpoint, Framing};
use crate::error::{Error, Result};
use crate::frame::{Decoder, Frame, Header, Hello, Kind, MAX_REFUSAL, STATUS_BUSY, Violation};
use crate::message::{Message, Peer, ReplySink};
use crate::push::{Broadcaster, ClientHandle, Event, Outbox, Roster};
use crate::sys::{ReceiveTimeout, lock, wait_ready};
use crate::transport::access::Access;
use crate::transport::correlate::{Correlator, NoAnswer};
use crate::transport::stream_greeting::{Greeting, drain_before_close};
pub(super) use crate::transport::stream_session::{
    Accepted, ConnWrite, InFlight, Pending, Session, Spare, accept_one, admitted, describe,
    send_now, went_away, write_reply,
};
use crate::transport::{Connection, Listener};

/// How long a reply may wait for a client that does not read before its connection is
/// given up: one stuck client must not hold a replying thread forever.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads from one connection before the loop turns to the others.
const READS_PER_TURN: usize = 16;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// Frames up to this size are copied into one buffer and sent with `send(2)`, which
/// costs less than `sendmsg(2)` with an iovec per part; larger ones go out as they are.
const COALESCE: usize = 512;

/// Writes all of `parts` to a socket, waiting for room up to `patience` if it is
/// non-blocking. MSG_NOSIGNAL: a closed peer is an error here, never a SIGPIPE.
fn send_all(fd: BorrowedFd<'_>, parts: &[&[u8]], patience: Option<Duration>) -> io::Result<()> {
    // The clock is read only if the socket is ever full.
    let mut deadline = None;
    let mut wait_writable = || {
        let deadline = *deadline.get_or_insert_with(|| patience.map(|p| Instant::now() + p));
        if wait_ready(fd, PollFlags::OUT, deadline)? {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::TimedOut))
        }
    };
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total <= COALESCE {
        let mut joined = [0u8; COALESCE];
        let mut at = 0;
        for part in parts {
            joined[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let mut rest = &joined[..total];
        while !rest.is_empty() {
            match rustix::net::send(fd, rest, SendFlags::NOSIGNAL) {
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => wait_writable()?,
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(());
    }
    let mut storage: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut slices = &mut storage[..];
    while !slices.is_empty() {
        match rustix::net::sendmsg(
            fd,
            slices,
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => wait_writable()?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub(super) fn protocol_error(endpoint: &Endpoint, violation: Violation) -> Error {
    Error::Protocol {
        endpoint: endpoint.to_string(),
        reason: violation.to_string(),
    }
}

/// The error of a client whose server refused it, with the reason it wrote.
/// The error for a server that turned this client away with `status` and `reason`.
pub(super) fn turned_away(url: &str, status: u8, reason: &[u8]) -> Error {
    match status {
        STATUS_BUSY => refused(url, reason),
        _ => refused_by_server(url, reason),
    }
}

/// The error for a server that took no more connections.
fn refused(url: &str, reason: &[u8]) -> Error {
    let reason = String::from_utf8_lossy(&reason[..reason.len().min(MAX_REFUSAL)]);
    let reason = match reason.trim() {
        "" => "it gave no reason; retry later".to_owned(),
        reason => reason.to_owned(),
    };
    Error::Refused {
        endpoint: url.to_owned(),
        reason,
    }
}

/// Refuses what cannot be framed before a byte is written.
pub(super) fn check_outgoing(
    endpoint: &str,
    framing: Framing,
    payload: &[u8],
    max: usize,
) -> Result<()> {
    if payload.len() > max {
        return Err(Error::MessageTooLarge {
            endpoint: endpoint.to_owned(),
            size: payload.len(),
            max,
            limit: "the receiver's max_message".into(),
        });
    }
    if framing == Framing::Line && payload.contains(&b'\n') {
        return Err(Error::Unsupported {
            endpoint: endpoint.to_owned(),
            what: "with framing=line a message cannot contain a newline; use the default framing"
                .into(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

struct Reader {
    decoder: Decoder,
    timeout: ReceiveTimeout,
    /// With line framing: the lines read so far.
    lines: u64,
}

/// A client connection on a connected, blocking stream socket.
pub(super) struct StreamConnection {
    endpoint: Endpoint,
    url: String,
    fd: OwnedFd,
    framing: Framing,
    greeting: Greeting,
    write_lock: Mutex<()>,
    reader: Mutex<Reader>,
    answers: Correlator<Frame>,
    next_id: AtomicU64,
    /// Messages the server pushed, until `recv` takes them.
    pushes: Mutex<Pushes>,
    pushed: Condvar,
}

/// A client's pushed messages not taken yet.
#[derive(Default)]
struct Pushes {
    queue: VecDeque<Vec<u8>>,
    /// Threads in `recv` waiting on `pushed`, for a message or for the socket to read.
    waiting: usize,
}

enum ReadOutcome {
    Frame(Frame),
    TimedOut,
}

impl StreamConnection {
    /// Takes a connected blocking socket and, with length framing, sends the hello. The
    /// welcome is not waited for (see `stream_greeting`); a refusal already there fails
    /// the connect.
    pub(super) fn establish(endpoint: &Endpoint, fd: OwnedFd) -> Result<StreamConnection> {
        let framing = endpoint.framing();
        let own_max = endpoint.max_message();
        let url = endpoint.to_string();
        let conn = StreamConnection {
            endpoint: endpoint.clone(),
            answers: Correlator::new(&url),
            greeting: Greeting::new(framing, own_max),
            url,
            fd,
            framing,
            write_lock: Mutex::new(()),
            reader: Mutex::new(Reader {
                decoder: Decoder::new(framing, own_max),
                timeout: ReceiveTimeout::default(),
                lines: 0,
            }),
            next_id: AtomicU64::new(1),
            pushes: Mutex::default(),
            pushed: Condvar::new(),
        };
        if framing == Framing::Length {
            let sent = send_all(conn.fd.as_fd(), &[&Hello::new(own_max).encode()], None);
            let sent = hello_sent(&conn.url, sent)?;
            let mut reader = lock(&conn.reader);
            conn.poll_welcome(&mut reader)?;
            if let Err(e) = sent {
                return Err(conn.greeting.refusal_or(&conn.url, &mut reader.decoder, e));
            }
        }
        Ok(conn)
    }

    /// Takes the welcome if it has come, without waiting: what each call does until
    /// the welcome is known, when nobody else is reading.
    fn poll_welcome(&self, reader: &mut Reader) -> Result<()> {
        loop {
            if self.greeting.take(&self.url, &mut reader.decoder)? {
                return Ok(());
            }
            let buf = reader.decoder.read_buf();
            match rustix::net::recv(&self.fd, buf, rustix::net::RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Err(self.greeting.ended(&self.url, &mut reader.decoder)),
                Ok((n, _)) => reader.decoder.advance(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(e) => return Err(Error::io(&self.url, "receiving", e.into())),
            }
        }
    }

    /// Before a call: the welcome, if it has come and nobody else is reading.
    fn check_welcome(&self) -> Result<()> {
        if self.greeting.known() {
            return Ok(());
        }
        match self.reader.try_lock() {
            Ok(mut reader) => self.poll_welcome(&mut reader),
            // Whoever reads takes the welcome; a failure is on the books for us.
            Err(_) => self.greeting.failure(&self.url).map_or(Ok(()), Err),
        }
    }

    fn write_frame(&self, kind: Kind, id: u64, payload: &[u8]) -> Result<()> {
        self.greeting.before_send(&self.url, payload)?;
        let _writing = lock(&self.write_lock);
        let result = match self.framing {
            Framing::Length => {
                let header = Header::new(kind, id, payload.len()).encode();
                send_all(self.fd.as_fd(), &[&header, payload], None)
            }
            Framing::Line => send_all(self.fd.as_fd(), &[payload, b"\n"], None),
        };
        result.map_err(|e| {
            let e = Error::io(&self.url, "sending", e);
            if self.greeting.known() {
                return e;
            }
            // A server that refused this client wrote why before it closed.
            match self.reader.try_lock() {
                Ok(mut reader) => {
                    let _ = self.poll_welcome(&mut reader);
                    self.greeting.refusal_or(&self.url, &mut reader.decoder, e)
                }
                Err(_) => e,
            }
        })
    }

    fn broken_error(&self, detail: &str) -> Error {
        if let Some(e) = self.greeting.failure(&self.url) {
            return e;
        }
        Error::Disconnected {
            endpoint: self.url.clone(),
            detail: detail.to_owned(),
        }
    }

    /// Keeps a message the server pushed for `recv`.
    fn file_push(&self, payload: Vec<u8>) {
        let mut pushes = lock(&self.pushes);
        pushes.queue.push_back(payload);
        if pushes.waiting > 0 {
            self.pushed.notify_all();
        }
    }

    /// Wakes the threads in `recv`: the socket is free for one of them to read.
    fn wake_receivers(&self) {
        if lock(&self.pushes).waiting > 0 {
            self.pushed.notify_all();
        }
    }

    /// `recv`'s turn at the socket, which nobody else reads: reads until a message comes
    /// or `deadline`, handing the answers it meets to their requests.
    fn read_pushes(&self, reader: &mut Reader, deadline: Option<Instant>) -> Result<()> {
        loop {
            let frame = match self.read_frame(reader, deadline)? {
                ReadOutcome::Frame(frame) => frame,
                ReadOutcome::TimedOut => return Ok(()),
            };
            if let Some(reason) = closing_reason(&frame) {
                return Err(self.broken_error(&reason));
            }
            // With line framing every line read here is a push: a request holds the
            // socket from its line to its answer.
            if self.framing == Framing::Line || frame.kind == Kind::Message {
                self.file_push(frame.payload);
                return Ok(());
            }
            if let Some((id, answer)) = as_answer(&self.url, frame) {
                self.answers.deliver(id, answer);
            }
        }
    }

    /// Reads the next frame the server sends, until `deadline`, taking the welcome first.
    fn read_frame(&self, reader: &mut Reader, deadline: Option<Instant>) -> Result<ReadOutcome> {
        loop {
            if self.greeting.take(&self.url, &mut reader.decoder)? {
                if let Some(frame) = reader
                    .decoder
                    .next_frame()
                    .map_err(|v| protocol_error(&self.endpoint, v))?
                {
                    return Ok(ReadOutcome::Frame(frame));
                }
            }
            match fill(&self.fd, reader, deadline, &self.url) {
                Ok(true) => {}
                Ok(false) => return Ok(ReadOutcome::TimedOut),
                Err(e) if !self.greeting.known() => {
                    return Err(match e {
                        Error::Disconnected { .. } => {
                            self.greeting.ended(&self.url, &mut reader.decoder)
                        }
                        e => e,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn line_request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        // Lines carry no ids: one request at a time, its answer is the next line.
        let mut reader = lock(&self.reader);
        let deadline = Instant::now() + timeout;
        // Lines read before the request are pushes; the first after it is its answer.
        while let Some(line) = reader
            .decoder
            .next_frame()
            .map_err(|v| protocol_error(&self.endpoint, v))?
        {
            self.file_push(line.payload);
        }
        let answered = self
            .write_frame(Kind::Request, 0, payload)
            .and_then(|()| self.read_frame(&mut reader, Some(deadline)));
        if let Ok(ReadOutcome::Frame(_)) = answered {
            reader.lines += 1;
        }
        let lines = reader.lines;
        drop(reader);
        self.wake_receivers();
        match answered {
            Ok(ReadOutcome::Frame(frame)) => Ok(frame.payload),
            Ok(ReadOutcome::TimedOut) => Err(Error::Timeout {
                endpoint: self.url.clone(),
                after: timeout,
            }),
            Err(Error::Disconnected { endpoint, detail }) if lines == 0 => {
                Err(Error::Disconnected {
                    endpoint,
                    detail: format!("{detail} {LINE_CLOSED_HINT}"),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the answer to request `id`, reading the socket as leader when nobody
    /// else does.
    fn await_answer(&self, id: u64, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let answer = self
            .answers
            .await_answer(id, deadline, &self.reader, |reader, deadline| {
                let read = self.read_frame(reader, Some(deadline)).and_then(|outcome| {
                    let ReadOutcome::Frame(frame) = outcome else {
                        return Ok(None);
                    };
                    match closing_reason(&frame) {
                        Some(reason) => Err(Error::Disconnected {
                            endpoint: self.url.clone(),
                            detail: reason,
                        }),
                        None if frame.kind == Kind::Message => {
                            self.file_push(frame.payload);
                            Ok(None)
                        }
                        None => Ok(as_answer(&self.url, frame)),
                    }
                });
                read.map_err(|e| {
                    let _ = rustix::net::shutdown(&self.fd, Shutdown::Both);
                    e.as_detail()
                })
            });
        // A thread in `recv` may read the socket now.
        self.wake_receivers();
        match answer {
            Ok(frame) => answer_result(&self.url, frame),
            Err(NoAnswer::Broken(detail)) => Err(self.broken_error(&detail)),
            Err(NoAnswer::TimedOut) => Err(self.greeting.timed_out(&self.url, timeout)),
        }
    }
}

/// What a line client that got no line before the server closed is told: the server may
/// have been waiting for a hello, which a line is not.
pub(super) const LINE_CLOSED_HINT: &str = "before answering any line; if the server expects the ipckit handshake (no ?framing=line on its side), drop ?framing=line from the URL";

/// Why the server is ending the connection, if `frame` says so (an ERROR with id 0).
pub(super) fn closing_reason(frame: &Frame) -> Option<String> {
    (frame.kind == Kind::Error && frame.id == 0).then(|| {
        format!(
            "the server ended it: {}",
            String::from_utf8_lossy(&frame.payload)
        )
    })
}

/// What a client makes of a failed hello: a server that refuses a peer closes without
/// reading it, so a hello that meets a closed connection may still have a refusal to
/// read (`Ok(Err(..))`: read on, and fail with this only if there is none).
pub(super) fn hello_sent(url: &str, sent: io::Result<()>) -> Result<Result<()>> {
    match sent {
        Ok(()) => Ok(Ok(())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(Err(Error::io(url, "sending the hello", e)))
        }
        Err(e) => Err(Error::io(url, "sending the hello", e)),
    }
}

/// The client's error for a server's refusal with `reason` (docs/PROTOCOL.md).
pub(super) fn refused_by_server(url: &str, reason: &[u8]) -> Error {
    let reason = if reason.is_empty() {
        "no reason given".into()
    } else {
        String::from_utf8_lossy(reason)
    };
    Error::PermissionDenied {
        endpoint: url.to_owned(),
        detail: format!("the server refused this connection: {reason}"),
    }
}

/// The answer among the frames a server sends its client, with the request it answers;
/// anything else is logged and ignored.
pub(super) fn as_answer(url: &str, frame: Frame) -> Option<(u64, Frame)> {
    match frame.kind {
        Kind::Reply | Kind::Error => Some((frame.id, frame)),
        Kind::Message | Kind::Request => {
            log::debug!("{url}: ignoring a {:?} the server sent", frame.kind);
            None
        }
    }
}

/// The caller's result from the answer to its request.
pub(super) fn answer_result(url: &str, frame: Frame) -> Result<Vec<u8>> {
    match frame.kind {
        Kind::Reply => Ok(frame.payload),
        _ => Err(Error::Remote {
            endpoint: url.to_owned(),
            reason: String::from_utf8_lossy(&frame.payload).into_owned(),
        }),
    }
}

/// What a connection's end of stream means to a client that wanted more.
pub(super) fn closed_by_server(url: &str, pending: usize) -> Error {
    let detail = if pending > 0 {
        format!("the server closed it {pending} bytes into a frame")
    } else {
        "the server closed it".to_owned()
    };
    Error::Disconnected {
        endpoint: url.to_owned(),
        detail,
    }
}

/// Reads once into the decoder, waiting until `deadline`; false on timeout. End of stream
/// is an error: the caller wanted more.
fn fill(fd: &OwnedFd, reader: &mut Reader, deadline: Option<Instant>, url: &str) -> Result<bool> {
    loop {
        let armed = reader.timeout.arm(fd, deadline);
        if !armed.map_err(|e| Error::io(url, "setting the receive timeout", e))? {
            return Ok(false);
        }
        let buf = reader.decoder.read_buf();
        match rustix::io::read(fd, buf) {
            Ok(0) => return Err(closed_by_server(url, reader.decoder.pending())),
            Ok(n) => {
                reader.decoder.advance(n);
                return Ok(true);
            }
            // The receive timeout elapsed: loop to check the deadline.
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(Error::io(url, "receiving", e.into())),
        }
    }
}

impl Drop for StreamConnection {
    fn drop(&mut self) {
        let tcp = matches!(self.endpoint.address(), crate::endpoint::Address::Tcp(_));
        drain_before_close(self.fd.as_fd(), tcp && !self.greeting.known());
    }
}

crate::transport::sealed!(StreamConnection, StreamListener);

impl Connection for StreamConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        if let Some(detail) = self.answers.broken() {
            return Err(self.broken_error(&detail));
        }
        self.check_welcome()?;
        self.write_frame(Kind::Message, 0, payload)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        if self.framing == Framing::Line {
            return self.line_request(payload, timeout);
        }
        self.check_welcome()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(detail) = self.answers.broken() {
            return Err(self.broken_error(&detail));
        }
        self.answers.register(id);
        if let Err(e) = self.write_frame(Kind::Request, id, payload) {
            self.answers.forget(id);
            return Err(e);
        }
        self.await_answer(id, timeout)
    }

    /// Whoever reads the socket files what it reads: a thread here reads it itself when
    /// no request does, and otherwise waits for the requests' reader to hand it a message
    /// or the socket. No thread reads in the background: pushes wait in the kernel's
    /// buffers (and then in the server's outbox) until a call reads them.
    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        self.check_welcome()?;
        let mut pushes = lock(&self.pushes);
        loop {
            if let Some(payload) = pushes.queue.pop_front() {
                return Ok(Some(payload));
            }
            if let Some(detail) = self.answers.broken() {
                return Err(self.broken_error(&detail));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            // Tried while holding `pushes`, as the correlator does with its books: a
            // reader that lets go (and then wakes us under `pushes`) cannot slip between.
            let Ok(mut reader) = self.reader.try_lock() else {
                pushes.waiting += 1;
                pushes = match deadline {
                    Some(d) => {
                        let waited = self.pushed.wait_timeout(pushes, d - now);
                        waited.unwrap_or_else(|e| e.into_inner()).0
                    }
                    None => self.pushed.wait(pushes).unwrap_or_else(|e| e.into_inner()),
                };
                pushes.waiting -= 1;
                continue;
            };
            drop(pushes);
            if let Err(e) = self.read_pushes(&mut reader, deadline) {
                let _ = rustix::net::shutdown(&self.fd, Shutdown::Both);
                self.answers.break_off(e.as_detail());
            }
            drop(reader);
            // The socket is free: for a request, or another thread here, to read.
            self.answers.release_followers();
            pushes = lock(&self.pushes);
            if pushes.waiting > 0 {
                self.pushed.notify_all();
            }
        }
    }

    fn max_message(&self) -> usize {
        let _ = self.check_welcome();
        self.greeting.limit()
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// The writing half of one accepted connection, shared with the messages it delivered
/// and with the handle that pushes to its client.
struct ConnSink {
    fd: OwnedFd,
    url: Arc<str>,
    framing: Framing,
    /// The largest payload the client accepts; known after its hello.
    peer_max: AtomicUsize,
    /// What the socket has not taken yet; held while writing, which keeps frames whole.
    out: Mutex<Pending>,
    /// How many pushes may wait in `out` (`?outbox=`).
    outbox: usize,
    closed: AtomicBool,
    in_flight: InFlight,
    /// To ask the server's loop to finish writing `out` once the socket takes more.
    registry: Arc<Registry>,
    token: Token,
}

impl ConnSink {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = rustix::net::shutdown(&self.fd, Shutdown::Both);
    }

    fn gone(&self, detail: &str) -> Error {
        Error::Disconnected {
            endpoint: self.url.to_string(),
            detail: detail.to_owned(),
        }
    }

    /// A write failed: the stream may hold half a frame, so it ends here.
    fn failed(&self, op: &'static str, e: io::Error) -> Error {
        self.close();
        Error::io(&*self.url, op, e)
    }

    /// Writes one frame behind what waits, asking the server's loop to finish it if the
    /// socket is full; where the frame ends.
    fn put(&self, out: &mut Pending, parts: &[&[u8]], push: bool) -> Result<u64> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.gone("the client's connection was closed"));
        }
        let op = if push { "pushing" } else { "replying" };
        let end = out
            .write(self.fd.as_fd(), parts, push)
            .map_err(|e| self.failed(op, e))?;
        if !out.is_empty() && !out.watching {
            self.watch(out, true);
        }
        Ok(end)
    }

    /// Asks the server's loop to say (or no longer) when the socket takes more.
    fn watch(&self, out: &mut Pending, writable: bool) {
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        // Fails only for a connection the loop has closed, which is then past caring.
        let _ = self
            .registry
            .reregister(&mut SourceFd(&self.fd.as_raw_fd()), self.token, interest);
        out.watching = writable;
    }

    /// The server's loop: the socket takes more of what waits.
    fn flush_waiting(&self) {
        let mut out = lock(&self.out);
        match out.flush(self.fd.as_fd()) {
            Ok(true) if out.watching => self.watch(&mut out, false),
            Ok(_) => {}
            Err(e) => {
                log::debug!("{}: writing to a client failed: {e}", self.url);
                self.close();
            }
        }
    }

    /// Waits until the socket may take more, or `deadline`, without holding `out`.
    fn wait_writable(&self, deadline: Instant) {
        let now = Instant::now();
        // Looked at again after a while: the server's loop may have made room in `out`
        // while the socket stayed full.
        let _ = wait_ready(
            self.fd.as_fd(),
            PollFlags::OUT,
            Some(deadline.min(now + ROOM_RECHECK)),
        );
    }
}

/// How long a thread waiting for a client to read sleeps before looking again.
const ROOM_RECHECK: Duration = Duration::from_millis(20);

impl ConnWrite for ConnSink {
    /// Returns once the frame is in the socket's buffer, as a reply did before there were
    /// pushes: a client that sends requests without reading answers thus holds its
    /// replying threads back, never the server's memory.
    fn write(&self, parts: &[&[u8]]) -> Result<()> {
        let mut out = lock(&self.out);
        let end = self.put(&mut out, parts, false)?;
        let deadline = Instant::now() + REPLY_WRITE_TIMEOUT;
        while !out.written(end) {
            if Instant::now() >= deadline {
                // The client stopped reading; a half-written frame leaves the stream
                // unusable, so end it.
                self.close();
                return Err(Error::Timeout {
                    endpoint: self.url.to_string(),
                    after: REPLY_WRITE_TIMEOUT,
                });
            }
            drop(out);
            self.wait_writable(deadline);
            out = lock(&self.out);
            if self.closed.load(Ordering::Acquire) {
                return Err(self.gone("the client's connection was closed before the reply"));
            }
            out.flush(self.fd.as_fd())
                .map_err(|e| self.failed("replying", e))?;
        }
        Ok(())
    }

    fn write_now(&self, parts: &[&[u8]]) {
        // Never waits: the server's loop calls this, about a connection it is closing.
        let Ok(out) = self.out.try_lock() else {
            return;
        };
        if out.is_empty() {
            let _ = send_now(self.fd.as_fd(), parts);
        }
    }

    fn set_peer_max(&self, max: usize) {
        self.peer_max.store(max, Ordering::Relaxed);
    }

    fn peer_max(&self) -> usize {
        self.peer_max.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }
}

impl ReplySink for ConnSink {
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        self.in_flight.end(id);
        let max = self.peer_max.load(Ordering::Relaxed);
        write_reply(&self.url, self.framing, max, id, payload, ok, |parts| {
            self.write(parts)
        })
    }
}

impl Outbox for ConnSink {
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        check_outgoing(&self.url, self.framing, payload, self.peer_max())?;
        let header = Header::new(Kind::Message, 0, payload.len()).encode();
        let parts: [&[u8]; 2] = match self.framing {
            Framing::Length => [&header, payload],
            Framing::Line => [payload, b"\n"],
        };
        let mut out = lock(&self.out);
        let mut deadline = None;
        while out.pushes() >= self.outbox {
            if self.closed.load(Ordering::Acquire) {
                return Err(self.gone("the client's connection was closed"));
            }
            out.flush(self.fd.as_fd())
                .map_err(|e| self.failed("pushing", e))?;
            if out.pushes() < self.outbox {
                break;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + patience);
            if Instant::now() >= deadline {
                return Err(Error::Full {
                    endpoint: self.url.to_string(),
                    detail: format!(
                        "the client's outbox holds its {} messages (?outbox=) and the client is not reading them",
                        self.outbox
                    ),
                    after: patience,
                });
            }
            drop(out);
            self.wait_writable(deadline);
            out = lock(&self.out);
        }
        self.put(&mut out, &parts, true).map(drop)
    }

    fn disconnect(&self) {
        self.close();
    }
}

struct Conn {
    sink: Arc<ConnSink>,
    session: Session,
    peer: Arc<Peer>,
    /// epoll reported the peer's end (or an error): read on to EOF, since no further
    /// edge will come to say so.
    hung_up: bool,
    /// The session's deadline as entered in the listener's `deadlines`.
    deadline: Option<Instant>,
    /// The client in the roster, once its handshake is done.
    handle: Option<ClientHandle>,
}

/// How a transport learns who is on the other end of an accepted socket, and prepares it.
pub(super) type OnAccept = fn(BorrowedFd<'_>) -> io::Result<Peer>;

/// A server on a listening, non-blocking stream socket.
pub(super) struct StreamListener {
    endpoint: Endpoint,
    url: Arc<str>,
    framing: Framing,
    max: usize,
    max_connections: usize,
    poll: Poll,
    events: Events,
    listener: OwnedFd,
    spare: Spare,
    on_accept: OnAccept,
    /// Whom the server admits, where the kernel does not decide it already.
    access: Option<Access>,
    conns: Slab<Conn>,
    /// The connections that must finish a hello or a frame in time, soonest first.
    deadlines: BTreeSet<(Instant, usize)>,
    /// Messages parsed, and clients come and gone, not yet returned by `recv_event`.
    ready: VecDeque<Event>,
    roster: Arc<Roster>,
    /// For the connections to ask for EPOLLOUT from any thread.
    registry: Arc<Registry>,
    /// Connections that may still hold unread bytes (edge-triggered: nobody will say so).
    unread: VecDeque<usize>,
    waker: Arc<Waker>,
    /// Removes the endpoint's file when the server goes.
    _cleanup: Option<Box<dyn Send>>,
}

impl StreamListener {
    pub(super) fn new(
        endpoint: Endpoint,
        listener: OwnedFd,
        on_accept: OnAccept,
        cleanup: Option<Box<dyn Send>>,
    ) -> Result<StreamListener> {
        let url: Arc<str> = endpoint.to_string().into();
        let io_err = |op, e| Error::io(&*url, op, e);
        let poll = Poll::new().map_err(|e| io_err("creating the epoll instance", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(|e| io_err("registering the listening socket", e))?;
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(|e| io_err("creating the waker", e))?;
        let access = Access::for_endpoint(&endpoint);
        let registry = poll
            .registry()
            .try_clone()
            .map_err(|e| io_err("sharing the epoll instance", e))?;
        Ok(StreamListener {
            roster: Roster::new(&endpoint),
            registry: Arc::new(registry),
            framing: endpoint.framing(),
            max: endpoint.max_message(),
            max_connections: endpoint.max_connections(),
            endpoint,
            url,
            poll,
            events: Events::with_capacity(256),
            listener,
            spare: Spare::new(),
            on_accept,
            access,
            conns: Slab::new(),
            deadlines: BTreeSet::new(),
            ready: VecDeque::new(),
            unread: VecDeque::new(),
            waker: Arc::new(waker),
            _cleanup: cleanup,
        })
    }

    fn accept_all(&mut self) {
        loop {
            let accepted = accept_one(
                self.listener.as_fd(),
                &mut self.spare,
                &self.url,
                self.framing,
                self.conns.len(),
                self.max_connections,
            );
            let fd = match accepted {
                Ok(Accepted::Conn(fd)) => fd,
                Ok(Accepted::Again) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of memory, or of descriptors with none in reserve: the client
                    // waits in the backlog and the next connection's event brings us
                    // back here.
                    log::error!("{}: cannot accept a connection: {e}", self.url);
                    return;
                }
            };
            let peer = match (self.on_accept)(fd.as_fd()) {
                Ok(peer) => Arc::new(peer),
                Err(e) => {
                    log::warn!("{}: dropping a new connection: {e}", self.url);
                    continue;
                }
            };
            if !admitted(
                self.access.as_ref(),
                &self.url,
                self.framing,
                fd.as_fd(),
                &peer,
            ) {
                continue;
            }
            let raw = fd.as_raw_fd();
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let registered = self.poll.registry().register(
                &mut SourceFd(&raw),
                Token(key + FIRST_CONNECTION),
                Interest::READABLE,
            );
            if let Err(e) = registered {
                log::error!("{}: cannot watch a new connection: {e}", self.url);
                continue;
            }
            entry.insert(Conn {
                sink: Arc::new(ConnSink {
                    fd,
                    url: self.url.clone(),
                    framing: self.framing,
                    peer_max: AtomicUsize::new(self.max),
                    out: Mutex::default(),
                    outbox: self.endpoint.outbox(),
                    closed: AtomicBool::new(false),
                    in_flight: InFlight::default(),
                    registry: self.registry.clone(),
                    token: Token(key + FIRST_CONNECTION),
                }),
                session: Session::new(&self.endpoint),
                peer,
                hung_up: false,
                deadline: None,
                handle: None,
            });
            self.time(key);
            // A line client has no handshake: it may be pushed to at once.
            self.announce(key);
        }
    }

    /// Enters connection `key`'s deadline, if it changed, in `deadlines`.
    fn time(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let deadline = conn.session.deadline();
        if conn.deadline == deadline {
            return;
        }
        if let Some(old) = std::mem::replace(&mut conn.deadline, deadline) {
            self.deadlines.remove(&(old, key));
        }
        if let Some(new) = deadline {
            self.deadlines.insert((new, key));
        }
    }

    /// Closes the connections whose deadline has passed.
    fn expire(&mut self) {
        let Some(&(first, _)) = self.deadlines.first() else {
            return;
        };
        let now = Instant::now();
        if first > now {
            return;
        }
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let reason = self.conns[key].session.expired();
            self.close(key, Some(reason));
        }
    }

    /// Reads what connection `key` has, parsing messages into `ready`.
    fn service(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let buf = conn.session.decoder.read_buf();
            let wanted = buf.len();
            match rustix::io::read(&conn.sink.fd, buf) {
                Ok(0) => {
                    let reason = went_away(conn.session.decoder.pending());
                    return self.close(key, reason);
                }
                Ok(n) => {
                    conn.session.decoder.advance(n);
                    if let Err(violation) = self.parse(key) {
                        return self.close(key, Some(violation));
                    }
                    self.time(key);
                    // A short read emptied the socket; Linux raises a new edge for any
                    // later data or hang-up, so there is no need to read until EAGAIN.
                    if n < wanted && !self.conns[key].hung_up {
                        return;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return self.close(key, Some(format!("reading failed: {e}"))),
            }
        }
        self.unread.push_back(key);
    }

    /// Moves every whole frame of connection `key` into `ready`, after the client's
    /// arrival once its handshake is done.
    fn parse(&mut self, key: usize) -> std::result::Result<(), String> {
        let conn = &mut self.conns[key];
        let (ready, roster) = (&mut self.ready, &self.roster);
        let (sink, peer, handle) = (&conn.sink, &conn.peer, &mut conn.handle);
        conn.session.parse(sink, peer, &self.url, |m| {
            let client = handle.get_or_insert_with(|| join(roster, peer, sink, ready));
            ready.push_back(Event::Message(m.with_client(client.clone())));
        })?;
        self.announce(key);
        Ok(())
    }

    /// Puts connection `key`'s client in the roster once its handshake is done.
    fn announce(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.handle.is_none() && conn.session.greeted() {
            conn.handle = Some(join(&self.roster, &conn.peer, &conn.sink, &mut self.ready));
        }
    }

    fn close(&mut self, key: usize, reason: Option<String>) {
        let conn = self.conns.remove(key);
        if let Some(deadline) = conn.deadline {
            self.deadlines.remove(&(deadline, key));
        }
        // Give back the table's room once most of it is vacant: a burst of connections
        // must not leave its high-water mark behind.
        if self.conns.capacity() > 64 && self.conns.len() < self.conns.capacity() / 4 {
            self.conns.shrink_to_fit();
        }
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&conn.sink.fd.as_raw_fd()));
        conn.sink.close();
        if let Some(client) = conn.handle {
            if self.roster.leave(&client) {
                self.ready.push_back(Event::Disconnected(client));
            }
        }
        match reason {
            Some(reason) => log::warn!(
                "{}: closed the connection of {}: {reason}",
                self.url,
                describe(&conn.peer)
            ),
            None => log::debug!("{}: {} disconnected", self.url, describe(&conn.peer)),
        }
    }
}

impl StreamListener {
    /// One wait, until `deadline`, for the next event; with `messages_only`, clients
    /// coming and going are passed over.
    fn next_event(
        &mut self,
        deadline: Option<Instant>,
        messages_only: bool,
    ) -> Result<Option<Event>> {
        loop {
            while let Some(event) = self.ready.pop_front() {
                if !messages_only || matches!(event, Event::Message(_)) {
                    return Ok(Some(event));
                }
            }
            let timeout = if self.unread.is_empty() {
                // Wake for the soonest of the caller's and the connections' deadlines.
                let first = self.deadlines.first().map(|&(d, _)| d);
                let wake = match (deadline, first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                wake.map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(&*self.url, "waiting for messages", e)),
            }
            let mut woken = false;
            let mut accept = false;
            for event in self.events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => woken = true,
                    Token(t) => {
                        let key = t - FIRST_CONNECTION;
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue;
                        };
                        if event.is_writable() {
                            conn.sink.flush_waiting();
                            if !(event.is_readable() || event.is_read_closed() || event.is_error())
                            {
                                continue;
                            }
                        }
                        if event.is_read_closed() || event.is_error() {
                            conn.hung_up = true;
                        }
                        self.unread.push_back(key);
                    }
                }
            }
            if accept {
                self.accept_all();
            }
            for _ in 0..self.unread.len() {
                let key = self.unread.pop_front().expect("counted");
                self.service(key);
            }
            self.expire();
            if !self.ready.is_empty() {
                continue;
            }
            if woken || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }
}

/// Puts a connection's client in `roster` and announces it in `ready`.
fn join(
    roster: &Arc<Roster>,
    peer: &Arc<Peer>,
    sink: &Arc<ConnSink>,
    ready: &mut VecDeque<Event>,
) -> ClientHandle {
    let client = roster.join(peer.clone(), sink.clone());
    ready.push_back(Event::Connected(client.clone()));
    client
}

impl Listener for StreamListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        match self.next_event(deadline, true)? {
            Some(Event::Message(message)) => Ok(Some(message)),
            _ => Ok(None),
        }
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.next_event(deadline, false)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(self.roster.clone(), self.max))
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let waker = self.waker.clone();
        Arc::new(move || {
            let _ = waker.wake();
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        // Messages still held elsewhere keep their connection's descriptor open; shut the
        // sockets down now so every client sees the end at once.
        for conn in self.conns.drain() {
            conn.sink.close();
            if let Some(client) = conn.handle {
                self.roster.leave(&client);
            }
        }
    }
}
