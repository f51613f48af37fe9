//! The async client and server of every stream transport (`uds`, `tcp`), on tokio.
//!
//! Nothing of the protocol is here: the handshake, framing, limits and the server's side
//! of a connection are `stream`'s ([`Session`], [`write_reply`], [`as_answer`]) and the
//! matching of replies to requests is the [`Correlator`]'s. This module only drives them
//! with readiness from tokio's reactor ([`AsyncFd`] on the same sockets) instead of
//! blocking calls.
//!
//! Cancellation: every future may be dropped at any await point.
//! - Writes are whole frames or nothing: a frame is put in the connection's outbox in one
//!   piece, and what the socket did not take yet is written by whoever waits next, or by
//!   a task spawned when the future that queued it is dropped. The peer never sees half a
//!   frame and the stream stays usable.
//! - Bytes read are kept in the connection's decoder, not in a future: a dropped read
//!   loses nothing, and an answer read for a request whose future was dropped is
//!   discarded by the correlator.
//! - The server reads each connection in a task of its own and hands whole messages, and
//!   the client's arrival and departure, to `recv_event` through a bounded channel, whose
//!   receive is cancel-safe.
//! - Pushes from the server are read by whichever future reads the socket (a request's
//!   or a `recv`'s) and queued for `recv`, which takes one only in the poll that returns
//!   it.
//!
//! That channel is the one hand-off here, where the blocking server has none: a task per
//! connection is how a runtime serves ten thousand of them, and the hand-off is a task
//! wake-up on the same runtime, not a thread hop (docs/DESIGN.md has the measurement).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use rustix::net::Shutdown;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::access::Access;
use super::correlate::{Correlator, NoAnswer};
use super::reactor::{poll_read, register, runtime, when_ready};
use super::stream::{
    Accepted, ConnWrite, InFlight, LINE_CLOSED_HINT, OnAccept, Pending, Session, Spare, accept_one,
    admitted, answer_result, as_answer, check_outgoing, closed_by_server, closing_reason, describe,
    protocol_error, went_away, write_reply,
};
use super::stream_greeting::{Greeting, drain_before_close};
use super::{AsyncConnection, AsyncListener, BoxFuture};
use crate::endpoint::{Endpoint, Framing};
use crate::error::{Error, Result};
use crate::frame::{Decoder, Frame, Header, Hello, Kind};
use crate::message::{Message, Peer, ReplySink};
use crate::push::{Broadcaster, ClientHandle, Event, Outbox, Roster};
use crate::sys::lock;

/// How long replies may wait for a client that does not read before its connection is
/// given up, as on the blocking side.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages read ahead of `recv`; a full channel stops the reading, and the kernel's
/// buffers then hold the clients back.
const QUEUED_MESSAGES: usize = 1024;

fn register_duplex(url: &str, fd: OwnedFd) -> Result<Arc<AsyncFd<OwnedFd>>> {
    register(url, fd, Interest::READABLE | Interest::WRITABLE).map(Arc::new)
}

/// Reads once from a non-blocking socket into `decoder`.
fn read_into(fd: &AsyncFd<OwnedFd>, decoder: &mut Decoder) -> io::Result<usize> {
    let read = rustix::io::read(fd.get_ref(), decoder.read_buf());
    if read == Err(rustix::io::Errno::AGAIN) {
        // Nothing came: a connection must not hold a buffer while it waits for more.
        decoder.advance(0);
        decoder.shrink();
    }
    read.map_err(io::Error::from)
}

// ---------------------------------------------------------------------------------------
// Writing whole frames
// ---------------------------------------------------------------------------------------

/// The writing half of a connection: frames go out whole, in the order they were put.
struct Writer {
    fd: Arc<AsyncFd<OwnedFd>>,
    url: Arc<str>,
    out: Mutex<Pending>,
    /// Told when frames leave, for pushes waiting for room.
    room: Condvar,
}

impl Writer {
    fn new(fd: Arc<AsyncFd<OwnedFd>>, url: Arc<str>) -> Writer {
        Writer {
            fd,
            url,
            out: Mutex::default(),
            room: Condvar::new(),
        }
    }

    fn broken(&self, detail: &str) -> Error {
        Error::Disconnected {
            endpoint: self.url.to_string(),
            detail: detail.to_owned(),
        }
    }

    /// Queues `parts` as one unit and writes what the socket takes at once; never waits.
    /// True when some of it waits, to be written by [`flush`](Self::flush).
    fn put(&self, parts: &[&[u8]]) -> Result<bool> {
        self.put_locked(&mut lock(&self.out), parts, false)
    }

    fn put_locked(&self, out: &mut Pending, parts: &[&[u8]], push: bool) -> Result<bool> {
        if let Some(detail) = &out.broken {
            return Err(self.broken(detail));
        }
        match out.write(self.fd.get_ref().as_fd(), parts, push) {
            Ok(_) => Ok(!out.is_empty()),
            Err(e) => {
                out.broken = Some(format!("sending failed: {e}"));
                Err(Error::io(&*self.url, "sending", e))
            }
        }
    }

    /// Writes out the queue, waiting for room as long as it takes.
    async fn flush(&self) -> Result<()> {
        loop {
            {
                let out = lock(&self.out);
                if let Some(detail) = &out.broken {
                    return Err(self.broken(detail));
                }
                if out.is_empty() {
                    return Ok(());
                }
            }
            let sent = when_ready(&self.fd, Interest::WRITABLE, |fd| {
                let mut out = lock(&self.out);
                let flushed = out.flush(fd.get_ref().as_fd());
                if out.waiting > 0 {
                    self.room.notify_all();
                }
                match flushed? {
                    true => Ok(()),
                    false => Err(io::ErrorKind::WouldBlock.into()),
                }
            })
            .await;
            if let Err(e) = sent {
                lock(&self.out).broken = Some(format!("sending failed: {e}"));
                self.room.notify_all();
                return Err(Error::io(&*self.url, "sending", e));
            }
        }
    }

    /// Ends the connection for both directions; later writes fail with `detail`.
    fn close(&self, detail: &str) {
        let mut out = lock(&self.out);
        out.broken.get_or_insert_with(|| detail.to_owned());
        out.clear();
        self.room.notify_all();
        let _ = rustix::net::shutdown(self.fd.get_ref(), Shutdown::Both);
    }
}

/// Finishes writing what a dropped future left in the outbox, so that the frame it queued
/// still goes out whole and the next one is not stuck behind it.
struct FlushOnDrop {
    writer: Option<Arc<ClientShared>>,
}

impl FlushOnDrop {
    fn disarm(mut self) {
        self.writer = None;
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let (Some(shared), Ok(runtime)) = (self.writer.take(), Handle::try_current()) {
            runtime.spawn(async move {
                let _ = shared.writer.flush().await;
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

struct Reader {
    decoder: Decoder,
    /// With line framing, answers carry no ids: the n-th line answers request n.
    lines: u64,
}

struct ClientShared {
    endpoint: Endpoint,
    url: String,
    fd: Arc<AsyncFd<OwnedFd>>,
    framing: Framing,
    greeting: Greeting,
    writer: Writer,
    /// With line framing, ids must follow the order requests are written in.
    id_order: Mutex<()>,
    next_id: AtomicU64,
    reader: Mutex<Reader>,
    answers: Correlator<Frame>,
    /// Messages the server pushed, until `recv` takes them.
    pushes: Mutex<Pushes>,
}

/// A client's pushed messages not taken yet, and the `recv` futures waiting for one.
#[derive(Default)]
struct Pushes {
    queue: VecDeque<Vec<u8>>,
    wakers: Vec<Waker>,
}

impl ClientShared {
    /// Keeps a message the server pushed for `recv`.
    fn file_push(&self, payload: Vec<u8>) {
        let mut pushes = lock(&self.pushes);
        pushes.queue.push_back(payload);
        wake_all(&mut pushes.wakers);
    }

    /// Wakes the `recv` futures: the socket may need one of them to watch it.
    fn wake_receivers(&self) {
        wake_all(&mut lock(&self.pushes).wakers);
    }
}

fn wake_all(wakers: &mut Vec<Waker>) {
    for waker in wakers.drain(..) {
        waker.wake();
    }
}

impl Drop for ClientShared {
    fn drop(&mut self) {
        let tcp = matches!(self.endpoint.address(), crate::endpoint::Address::Tcp(_));
        let fd = std::os::fd::AsFd::as_fd(self.fd.get_ref());
        let unwelcomed = tcp && !self.greeting.known();
        // Waiting for the welcome blocks: it is done off the runtime's threads, on a
        // duplicate of the socket, which keeps the connection open until the wait ends.
        if unwelcomed {
            if let (Ok(handle), Ok(dup)) = (
                Handle::try_current(),
                rustix::io::fcntl_dupfd_cloexec(fd, 0),
            ) {
                handle.spawn_blocking(move || {
                    drain_before_close(std::os::fd::AsFd::as_fd(&dup), true)
                });
                return;
            }
        }
        drain_before_close(fd, unwelcomed);
    }
}

/// An async client connection on a connected, non-blocking stream socket.
pub(super) struct AsyncStreamConnection {
    shared: Arc<ClientShared>,
}

impl AsyncStreamConnection {
    /// Takes a connected non-blocking socket and, with length framing, sends the hello.
    /// The welcome is not waited for (see `stream_greeting`); a refusal already there
    /// fails the connect.
    pub(super) async fn establish(
        endpoint: &Endpoint,
        fd: OwnedFd,
    ) -> Result<AsyncStreamConnection> {
        let url = endpoint.to_string();
        let framing = endpoint.framing();
        let own_max = endpoint.max_message();
        let fd = register_duplex(&url, fd)?;
        let writer = Writer::new(fd.clone(), url.as_str().into());
        let conn = AsyncStreamConnection {
            shared: Arc::new(ClientShared {
                endpoint: endpoint.clone(),
                answers: Correlator::new(&url),
                greeting: Greeting::new(framing, own_max),
                url,
                fd,
                framing,
                writer,
                id_order: Mutex::new(()),
                next_id: AtomicU64::new(1),
                reader: Mutex::new(Reader {
                    decoder: Decoder::new(framing, own_max),
                    lines: 0,
                }),
                pushes: Mutex::default(),
            }),
        };
        if framing == Framing::Length {
            let shared = &conn.shared;
            // Twelve bytes into a new socket: they go at once.
            let sent = match shared.writer.put(&[&Hello::new(own_max).encode()]) {
                Ok(false) => Ok(()),
                Ok(true) => shared.writer.flush().await,
                Err(e) => Err(e),
            };
            let mut reader = lock(&shared.reader);
            conn.poll_welcome(&mut reader)?;
            if let Err(e) = sent {
                // A server that refuses a peer closes without reading its hello: the
                // refusal may be waiting.
                return Err(shared
                    .greeting
                    .refusal_or(&shared.url, &mut reader.decoder, e));
            }
        }
        Ok(conn)
    }

    /// Takes the welcome if it has come, without waiting.
    fn poll_welcome(&self, reader: &mut Reader) -> Result<()> {
        let shared = &self.shared;
        loop {
            if shared.greeting.take(&shared.url, &mut reader.decoder)? {
                return Ok(());
            }
            match read_into(&shared.fd, &mut reader.decoder) {
                Ok(0) => return Err(shared.greeting.ended(&shared.url, &mut reader.decoder)),
                Ok(n) => reader.decoder.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Error::io(&shared.url, "receiving", e)),
            }
        }
    }

    /// Before a call: the welcome, if it has come and nobody else is reading.
    fn check_welcome(&self) -> Result<()> {
        let shared = &self.shared;
        if shared.greeting.known() {
            return Ok(());
        }
        match shared.reader.try_lock() {
            Ok(mut reader) => self.poll_welcome(&mut reader),
            Err(_) => shared.greeting.failure(&shared.url).map_or(Ok(()), Err),
        }
    }

    /// A failed write's error, or the refusal it met.
    fn write_failed(&self, e: Error) -> Error {
        let shared = &self.shared;
        if shared.greeting.known() {
            return e;
        }
        match shared.reader.try_lock() {
            Ok(mut reader) => {
                let _ = self.poll_welcome(&mut reader);
                shared
                    .greeting
                    .refusal_or(&shared.url, &mut reader.decoder, e)
            }
            Err(_) => e,
        }
    }

    fn broken_error(&self, detail: &str) -> Error {
        if let Some(e) = self.shared.greeting.failure(&self.shared.url) {
            return e;
        }
        Error::Disconnected {
            endpoint: self.shared.url.clone(),
            detail: detail.to_owned(),
        }
    }

    /// Queues one frame; `Ok(true)` when part of it still waits in the outbox.
    fn put_frame(&self, kind: Kind, id: u64, payload: &[u8]) -> Result<bool> {
        let shared = &self.shared;
        shared.greeting.before_send(&shared.url, payload)?;
        let queued = match shared.framing {
            Framing::Length => {
                let header = Header::new(kind, id, payload.len()).encode();
                shared.writer.put(&[&header, payload])
            }
            Framing::Line => shared.writer.put(&[payload, b"\n"]),
        };
        queued.map_err(|e| self.write_failed(e))
    }

    /// Waits until what this future queued has left, finishing it in a task if the
    /// future is dropped first.
    async fn flush(&self) -> Result<()> {
        let on_drop = FlushOnDrop {
            writer: Some(self.shared.clone()),
        };
        let flushed = self.shared.writer.flush().await;
        on_drop.disarm();
        flushed.map_err(|e| self.write_failed(e))
    }

    async fn send(&self, payload: &[u8]) -> Result<()> {
        let shared = &self.shared;
        if let Some(detail) = shared.answers.broken() {
            return Err(self.broken_error(&detail));
        }
        self.check_welcome()?;
        if self.put_frame(Kind::Message, 0, payload)? {
            self.flush().await?;
        }
        Ok(())
    }

    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let shared = &self.shared;
        if let Some(detail) = shared.answers.broken() {
            return Err(self.broken_error(&detail));
        }
        self.check_welcome()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let (id, queued) = {
            // Only lines need ids in the order requests are written: frames carry theirs.
            let _in_order = (shared.framing == Framing::Line).then(|| lock(&shared.id_order));
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            shared.answers.register(id);
            match self.put_frame(Kind::Request, id, payload) {
                Ok(queued) => (id, queued),
                Err(e) => {
                    shared.answers.forget(id);
                    return Err(e);
                }
            }
        };
        let _leave = Leave { shared, id };
        if queued {
            self.flush().await?;
        }
        let answer = poll_fn(|cx| {
            shared
                .answers
                .poll_answer(id, cx, &shared.reader, |reader, cx| {
                    loop {
                        match ready!(read_frame(shared, reader, cx)) {
                            Ok(Read::Answer(id, frame)) => return Poll::Ready(Ok((id, frame))),
                            Ok(Read::Push) => {}
                            Err(detail) => return Poll::Ready(Err(detail)),
                        }
                    }
                })
        });
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(frame)) => answer_result(&shared.url, frame),
            Ok(Err(NoAnswer::Broken(detail))) => Err(self.broken_error(&detail)),
            Ok(Err(NoAnswer::TimedOut)) | Err(_) => {
                Err(shared.greeting.timed_out(&shared.url, timeout))
            }
        }
    }
}

impl AsyncStreamConnection {
    /// Cancel-safe: a message is taken from the queue only by the poll that returns it,
    /// and a future that was watching the socket wakes the others as it ends.
    async fn recv(&self) -> Result<Vec<u8>> {
        self.check_welcome()?;
        let shared = &*self.shared;
        let _hand_on = HandOn(shared);
        poll_fn(|cx| {
            loop {
                let mut pushes = lock(&shared.pushes);
                if let Some(payload) = pushes.queue.pop_front() {
                    return Poll::Ready(Ok(payload));
                }
                if let Some(detail) = shared.answers.broken() {
                    return Poll::Ready(Err(self.broken_error(&detail)));
                }
                if !pushes.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    pushes.wakers.push(cx.waker().clone());
                }
                // Held only while polling: a failed try means another future is reading
                // this instant and files (and wakes us for) whatever it finds.
                let Ok(mut reader) = shared.reader.try_lock() else {
                    return Poll::Pending;
                };
                drop(pushes);
                let read = loop {
                    match read_frame(shared, &mut reader, cx) {
                        Poll::Ready(Ok(Read::Answer(id, frame))) => {
                            shared.answers.deliver(id, frame);
                        }
                        Poll::Ready(Ok(Read::Push)) => break Poll::Ready(Ok(())),
                        Poll::Ready(Err(detail)) => break Poll::Ready(Err(detail)),
                        Poll::Pending => break Poll::Pending,
                    }
                };
                drop(reader);
                match read {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(detail)) => shared.answers.break_off(detail),
                }
            }
        })
        .await
    }
}

/// When a `recv` future ends, however it ends: it may have been the one watching the
/// socket, so the requests and the other `recv`s are woken for one of them to take over.
struct HandOn<'a>(&'a ClientShared);

impl Drop for HandOn<'_> {
    fn drop(&mut self) {
        self.0.answers.wake_all();
        self.0.wake_receivers();
    }
}

/// Takes a request out of the correlator's books when its future ends, however it ends,
/// and wakes the `recv` futures, as it may have been the one watching the socket.
struct Leave<'a> {
    shared: &'a ClientShared,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.shared.answers.leave(self.id);
        self.shared.wake_receivers();
    }
}

/// What [`read_frame`] read.
enum Read {
    /// The answer to a request.
    Answer(u64, Frame),
    /// A message the server pushed, now in the queue.
    Push,
}

/// Reads the socket until a frame is whole, or registers for readiness.
fn read_frame(
    shared: &ClientShared,
    reader: &mut Reader,
    cx: &mut Context<'_>,
) -> Poll<std::result::Result<Read, String>> {
    let broken = |detail: String| {
        let _ = rustix::net::shutdown(shared.fd.get_ref(), Shutdown::Both);
        Poll::Ready(Err(detail))
    };
    loop {
        let welcomed = match shared.greeting.take(&shared.url, &mut reader.decoder) {
            Ok(welcomed) => welcomed,
            Err(e) => return broken(e.as_detail()),
        };
        match welcomed.then(|| reader.decoder.next_frame()) {
            None | Some(Ok(None)) => {}
            Some(Err(v)) => return broken(protocol_error(&shared.endpoint, v).as_detail()),
            Some(Ok(Some(mut frame))) if shared.framing == Framing::Line => {
                // A line answers the oldest request written that has had no line yet (it
                // cannot say "refused"); with none, it is a push.
                let requested = shared.next_id.load(Ordering::Acquire) - 1;
                if requested == reader.lines {
                    shared.file_push(frame.payload);
                    return Poll::Ready(Ok(Read::Push));
                }
                frame.kind = Kind::Reply;
                reader.lines += 1;
                return Poll::Ready(Ok(Read::Answer(reader.lines, frame)));
            }
            Some(Ok(Some(frame))) => {
                if let Some(reason) = closing_reason(&frame) {
                    return broken(reason);
                }
                if frame.kind == Kind::Message {
                    shared.file_push(frame.payload);
                    return Poll::Ready(Ok(Read::Push));
                }
                match as_answer(&shared.url, frame) {
                    Some((id, answer)) => return Poll::Ready(Ok(Read::Answer(id, answer))),
                    None => continue,
                }
            }
        }
        match ready!(poll_read(&shared.fd, cx, |fd| read_into(
            fd,
            &mut reader.decoder
        ))) {
            Ok(0) if !shared.greeting.known() => {
                let ended = shared.greeting.ended(&shared.url, &mut reader.decoder);
                return broken(ended.as_detail());
            }
            Ok(0) => {
                let pending = reader.decoder.pending();
                let closed = closed_by_server(&shared.url, pending).as_detail();
                if shared.framing == Framing::Line && reader.lines == 0 {
                    return broken(format!("{closed} {LINE_CLOSED_HINT}"));
                }
                return broken(closed);
            }
            Ok(n) => reader.decoder.advance(n),
            Err(e) => return broken(format!("receiving failed: {e}")),
        }
    }
}

crate::transport::sealed!(AsyncStreamConnection, AsyncStreamListener);

impl AsyncConnection for AsyncStreamConnection {
    /// Resolves once the whole frame is in the kernel's socket buffer. Dropped before,
    /// the frame is still written whole, by a task of its own.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(AsyncStreamConnection::send(self, payload))
    }

    /// Dropped at any point, the request is forgotten: its reply, if one comes, is
    /// discarded and the connection stays usable.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(AsyncStreamConnection::request(self, payload, timeout))
    }

    fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(AsyncStreamConnection::recv(self))
    }

    fn max_message(&self) -> usize {
        let _ = self.check_welcome();
        self.shared.greeting.limit()
    }

    fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// The writing half of one accepted connection, shared with the messages it delivered.
struct AsyncConnSink {
    out: Arc<Replies>,
    framing: Framing,
    peer_max: AtomicUsize,
    in_flight: InFlight,
    /// How many pushes may wait in the writer (`?outbox=`).
    outbox: usize,
}

/// Replies on their way out: what the socket does not take at once is written by a task.
struct Replies {
    writer: Writer,
    runtime: Handle,
    /// A task is writing the outbox out.
    flushing: AtomicBool,
}

impl Replies {
    /// Writes the outbox out in a task, giving the connection up if the client does not
    /// read for [`REPLY_WRITE_TIMEOUT`].
    fn flush_later(self: &Arc<Self>) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let out = self.clone();
        self.runtime.spawn(async move {
            loop {
                let flushed = tokio::time::timeout(REPLY_WRITE_TIMEOUT, out.writer.flush()).await;
                if flushed.is_err() {
                    if !lock(&out.writer.out).holds_reply() {
                        // Only pushes wait: they wait as long as the client stays, and
                        // its outbox's bound (?outbox=) holds the server's memory.
                        continue;
                    }
                    log::warn!(
                        "{}: closed a connection whose client read no reply for {REPLY_WRITE_TIMEOUT:?}",
                        out.writer.url
                    );
                    out.writer.close("the client stopped reading its replies");
                }
                out.flushing.store(false, Ordering::Release);
                // A frame queued while this task finished found it still flushing.
                let more = !lock(&out.writer.out).is_empty();
                if !more || out.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
}

impl ConnWrite for AsyncConnSink {
    fn write(&self, parts: &[&[u8]]) -> Result<()> {
        if self.out.writer.put(parts)? {
            self.out.flush_later();
        }
        Ok(())
    }

    fn write_now(&self, parts: &[&[u8]]) {
        // What the socket takes at once goes out; the connection's end drops the rest.
        let _ = self.out.writer.put(parts);
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

impl Outbox for AsyncConnSink {
    /// What the socket does not take at once is written by a task; a push waiting for
    /// room blocks the calling thread (async code calls `try_send`, which never waits).
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        let writer = &self.out.writer;
        check_outgoing(&writer.url, self.framing, payload, self.peer_max())?;
        let header = Header::new(Kind::Message, 0, payload.len()).encode();
        let parts: [&[u8]; 2] = match self.framing {
            Framing::Length => [&header, payload],
            Framing::Line => [payload, b"\n"],
        };
        let mut out = lock(&writer.out);
        let mut deadline = None;
        while out.pushes() >= self.outbox && out.broken.is_none() {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + patience);
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Full {
                    endpoint: writer.url.to_string(),
                    detail: format!(
                        "the client's outbox holds its {} messages (?outbox=) and the client is not reading them",
                        self.outbox
                    ),
                    after: patience,
                });
            }
            out.waiting += 1;
            out = writer
                .room
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            out.waiting -= 1;
        }
        let queued = writer.put_locked(&mut out, &parts, true)?;
        drop(out);
        if queued {
            self.out.flush_later();
        }
        Ok(())
    }

    fn disconnect(&self) {
        self.out.writer.close("the server disconnected this client");
    }
}

impl ReplySink for AsyncConnSink {
    /// Never waits: what the socket does not take at once is written by a task.
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        self.in_flight.end(id);
        let max = self.peer_max.load(Ordering::Relaxed);
        let url = &self.out.writer.url;
        write_reply(url, self.framing, max, id, payload, ok, |parts| {
            self.write(parts)
        })
    }
}

/// An async server on a listening, non-blocking stream socket. `recv` accepts (as the
/// blocking server does while it waits), each connection is read and parsed by a task of
/// its own, and `recv` takes the messages they deliver. The listening socket is the
/// server's own, so it is closed the moment the server is dropped.
pub(super) struct AsyncStreamListener {
    endpoint: Endpoint,
    url: Arc<str>,
    listener: AsyncFd<OwnedFd>,
    spare: Spare,
    on_accept: OnAccept,
    /// Whom the server admits, where the kernel does not decide it already.
    access: Option<Access>,
    runtime: Handle,
    /// Dropped with the server: aborts the connection tasks.
    connections: JoinSet<()>,
    /// Shut down when the server is dropped, at once rather than when the aborted tasks
    /// next run: clients learn that the server has gone before it has finished going.
    sinks: Vec<std::sync::Weak<AsyncConnSink>>,
    deliver: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    roster: Arc<Roster>,
    /// Removes the endpoint's file when the server goes.
    _cleanup: Option<Box<dyn Send>>,
}

impl AsyncStreamListener {
    pub(super) fn new(
        endpoint: Endpoint,
        listener: OwnedFd,
        on_accept: OnAccept,
        cleanup: Option<Box<dyn Send>>,
    ) -> Result<AsyncStreamListener> {
        let url: Arc<str> = endpoint.to_string().into();
        let runtime = runtime(&url)?;
        let listener = register(&url, listener, Interest::READABLE)?;
        let (deliver, events) = mpsc::channel(QUEUED_MESSAGES);
        Ok(AsyncStreamListener {
            access: Access::for_endpoint(&endpoint),
            roster: Roster::new(&endpoint),
            endpoint,
            url,
            listener,
            spare: Spare::new(),
            on_accept,
            runtime,
            connections: JoinSet::new(),
            sinks: Vec::new(),
            deliver,
            events,
            _cleanup: cleanup,
        })
    }

    /// Accepts every connection waiting, starting a task for each; `Pending` once none
    /// is left (registered for the next).
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.reap();
        let framing = self.endpoint.framing();
        let max = self.endpoint.max_connections();
        loop {
            // Connections that ended since are not counted against the limit.
            if self.connections.len() >= max {
                self.reap();
            }
            let mut ready = ready!(self.listener.poll_read_ready(cx))
                .map_err(|e| Error::io(&*self.url, "waiting for connections", e))?;
            let (spare, url, held) = (&mut self.spare, &self.url, self.connections.len());
            let accepted = ready.try_io(|fd| {
                accept_one(
                    std::os::fd::AsFd::as_fd(fd.get_ref()),
                    spare,
                    url,
                    framing,
                    held,
                    max,
                )
            });
            match accepted {
                Err(_would_block) => {}
                Ok(Ok(Accepted::Conn(fd))) => self.start(fd),
                Ok(Ok(Accepted::Again)) => {}
                Ok(Err(e)) => {
                    // Out of memory, or of descriptors with none in reserve: the client
                    // waits in the backlog and the next connection's event brings us
                    // back here, as on the blocking side.
                    log::error!("{}: cannot accept a connection: {e}", self.url);
                    ready.clear_ready();
                }
            }
        }
    }

    /// Forgets the connections that have ended.
    fn reap(&mut self) {
        while self.connections.try_join_next().is_some() {}
        if self.sinks.len() > 64 && self.sinks.len() > 2 * self.connections.len() {
            self.sinks.retain(|sink| sink.strong_count() > 0);
            self.sinks.shrink_to(2 * self.connections.len());
        }
    }

    fn start(&mut self, fd: OwnedFd) {
        let peer = match (self.on_accept)(std::os::fd::AsFd::as_fd(&fd)) {
            Ok(peer) => Arc::new(peer),
            Err(e) => return log::warn!("{}: dropping a new connection: {e}", self.url),
        };
        let framing = self.endpoint.framing();
        let fd_ref = std::os::fd::AsFd::as_fd(&fd);
        if !admitted(self.access.as_ref(), &self.url, framing, fd_ref, &peer) {
            return;
        }
        let fd = match register_duplex(&self.url, fd) {
            Ok(fd) => fd,
            Err(e) => return log::error!("{e}"),
        };
        let max = self.endpoint.max_message();
        let session = Session::new(&self.endpoint);
        let sink = Arc::new(AsyncConnSink {
            out: Arc::new(Replies {
                writer: Writer::new(fd.clone(), self.url.clone()),
                runtime: self.runtime.clone(),
                flushing: AtomicBool::new(false),
            }),
            framing,
            peer_max: AtomicUsize::new(max),
            in_flight: InFlight::default(),
            outbox: self.endpoint.outbox(),
        });
        // Pruned when it has doubled: amortised, since `recv` passes here for every message.
        if self.sinks.len() == self.sinks.capacity() {
            self.sinks.retain(|sink| sink.strong_count() > 0);
        }
        self.sinks.push(Arc::downgrade(&sink));
        self.connections.spawn_on(
            serve_connection(
                fd,
                sink,
                peer,
                session,
                self.deliver.clone(),
                self.url.clone(),
                self.roster.clone(),
            ),
            &self.runtime,
        );
    }
}

/// Shuts a connection down when its task ends or is aborted with the server, so that its
/// client learns at once even while messages of it are still held.
struct CloseOnDrop(Arc<AsyncConnSink>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.out.writer.close("the server closed the connection");
    }
}

/// Serves one connection: its client joins the roster once its handshake is done, and
/// leaves it when the connection ends.
async fn serve_connection(
    fd: Arc<AsyncFd<OwnedFd>>,
    sink: Arc<AsyncConnSink>,
    peer: Arc<Peer>,
    session: Session,
    deliver: mpsc::Sender<Event>,
    url: Arc<str>,
    roster: Arc<Roster>,
) {
    let close = CloseOnDrop(sink.clone());
    let mut client = None;
    let conn = Conn {
        sink: &sink,
        peer: &peer,
        deliver: &deliver,
        url: &url,
        roster: &roster,
    };
    read_connection(&fd, conn, session, &mut client).await;
    drop(close);
    if let Some(client) = client {
        if roster.leave(&client) {
            let _ = deliver.send(Event::Disconnected(client)).await;
        }
    }
}

/// What a connection's task shares with its reading.
struct Conn<'a> {
    sink: &'a Arc<AsyncConnSink>,
    peer: &'a Arc<Peer>,
    deliver: &'a mpsc::Sender<Event>,
    url: &'a Arc<str>,
    roster: &'a Arc<Roster>,
}

impl Conn<'_> {
    /// Puts the client in the roster once its handshake is done; false if the server
    /// has gone.
    async fn announce(&self, session: &Session, client: &mut Option<ClientHandle>) -> bool {
        if client.is_some() || !session.greeted() {
            return true;
        }
        let joined = self.roster.join(self.peer.clone(), self.sink.clone());
        *client = Some(joined.clone());
        self.deliver.send(Event::Connected(joined)).await.is_ok()
    }
}

async fn read_connection(
    fd: &Arc<AsyncFd<OwnedFd>>,
    conn: Conn<'_>,
    mut session: Session,
    client: &mut Option<ClientHandle>,
) {
    let Conn {
        sink,
        peer,
        deliver,
        url,
        ..
    } = &conn;
    let mut batch = Vec::new();
    loop {
        if !conn.announce(&session, client).await {
            return; // The server is gone.
        }
        let deadline = session.deadline();
        let read = when_ready(fd, Interest::READABLE, |fd| {
            read_into(fd, &mut session.decoder)
        });
        let read = match deadline {
            None => read.await,
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), read).await {
                Ok(read) => read,
                Err(_) => {
                    return log::warn!(
                        "{url}: closed the connection of {}: {}",
                        describe(peer),
                        session.expired()
                    );
                }
            },
        };
        let n = match read {
            Ok(0) => {
                return match went_away(session.decoder.pending()) {
                    Some(reason) => {
                        log::warn!(
                            "{url}: closed the connection of {}: {reason}",
                            describe(peer)
                        )
                    }
                    None => log::debug!("{url}: {} disconnected", describe(peer)),
                };
            }
            Ok(n) => n,
            Err(e) => {
                return log::warn!(
                    "{url}: closed the connection of {}: reading failed: {e}",
                    describe(peer)
                );
            }
        };
        session.decoder.advance(n);
        if let Err(violation) = session.parse(sink, peer, url, |m| batch.push(m)) {
            return log::warn!(
                "{url}: closed the connection of {}: {violation}",
                describe(peer)
            );
        }
        if !conn.announce(&session, client).await {
            return;
        }
        for message in batch.drain(..) {
            let message = match client {
                Some(client) => message.with_client(client.clone()),
                None => message,
            };
            if deliver.send(Event::Message(message)).await.is_err() {
                return; // The server is gone.
            }
        }
    }
}

impl Drop for AsyncStreamListener {
    fn drop(&mut self) {
        for sink in self.sinks.iter().filter_map(std::sync::Weak::upgrade) {
            sink.out.writer.close("the server closed the connection");
        }
    }
}

impl AsyncListener for AsyncStreamListener {
    /// Cancel-safe: a message is taken from the queue only when the future completes,
    /// and a connection accepted meanwhile is already being served.
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        Box::pin(poll_fn(move |cx| {
            if let Poll::Ready(Err(e)) = self.poll_accept(cx) {
                return Poll::Ready(Err(e));
            }
            loop {
                match self.events.poll_recv(cx) {
                    Poll::Ready(Some(Event::Message(message))) => return Poll::Ready(Ok(message)),
                    Poll::Ready(Some(_)) => {}
                    // The server holds a sender itself, so the queue never closes.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            }
        }))
    }

    /// Cancel-safe, as `recv`.
    fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
        Box::pin(poll_fn(move |cx| {
            if let Poll::Ready(Err(e)) = self.poll_accept(cx) {
                return Poll::Ready(Err(e));
            }
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(event)) => Poll::Ready(Ok(event)),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        }))
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(
            self.roster.clone(),
            self.endpoint.max_message(),
        ))
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}
