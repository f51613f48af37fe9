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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use rustix::net::Shutdown;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;

use super::correlate::{Correlator, NoAnswer};
use super::reactor::{poll_read, register, when_ready};
use super::stream::{
    LINE_CLOSED_HINT, answer_result, as_answer, closed_by_server, closing_reason, protocol_error,
};
use super::stream_greeting::{Greeting, drain_before_close};
use super::stream_session::Pending;
use super::{AsyncConnection, BoxFuture};
use crate::endpoint::{Endpoint, Framing};
use crate::error::{Error, Result};
use crate::frame::{Decoder, Frame, Header, Hello, Kind};
use crate::sys::lock;

pub(super) fn register_duplex(url: &str, fd: OwnedFd) -> Result<Arc<AsyncFd<OwnedFd>>> {
    register(url, fd, Interest::READABLE | Interest::WRITABLE).map(Arc::new)
}

/// Reads once from a non-blocking socket into `decoder`.
pub(super) fn read_into(fd: &AsyncFd<OwnedFd>, decoder: &mut Decoder) -> io::Result<usize> {
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
pub(super) struct Writer {
    pub(super) fd: Arc<AsyncFd<OwnedFd>>,
    pub(super) url: Arc<str>,
    pub(super) out: Mutex<Pending>,
    /// Told when frames leave, for pushes waiting for room.
    pub(super) room: Condvar,
}

impl Writer {
    pub(super) fn new(fd: Arc<AsyncFd<OwnedFd>>, url: Arc<str>) -> Writer {
        Writer {
            fd,
            url,
            out: Mutex::default(),
            room: Condvar::new(),
        }
    }

    pub(super) fn broken(&self, detail: &str) -> Error {
        Error::Disconnected {
            endpoint: self.url.to_string(),
            detail: detail.to_owned(),
        }
    }

    /// Queues `parts` as one unit and writes what the socket takes at once; never waits.
    /// True when some of it waits, to be written by [`flush`](Self::flush).
    pub(super) fn put(&self, parts: &[&[u8]]) -> Result<bool> {
        self.put_locked(&mut lock(&self.out), parts, false)
    }

    pub(super) fn put_locked(
        &self,
        out: &mut Pending,
        parts: &[&[u8]],
        push: bool,
    ) -> Result<bool> {
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
    pub(super) async fn flush(&self) -> Result<()> {
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
    pub(super) fn close(&self, detail: &str) {
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

pub(super) use super::stream_tokio_server::AsyncStreamListener;

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
