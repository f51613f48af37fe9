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

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::net::{SendAncillaryBuffer, SendFlags, Shutdown};

use crate::endpoint::{Endpoint, Framing};
use crate::error::{Error, Result};
use crate::frame::{Decoder, Frame, Header, Hello, Kind, MAX_REFUSAL, STATUS_BUSY, Violation};
use crate::sys::{ReceiveTimeout, lock, wait_ready};
use crate::transport::Connection;
use crate::transport::correlate::{Correlator, NoAnswer};
use crate::transport::stream_greeting::{Greeting, drain_before_close};
pub(super) use crate::transport::stream_server::StreamListener;

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
