//! The same client and server driven by tokio: the FIFOs stay non-blocking and tokio's
//! reactor says when they are readable or have room. Chunks, reassembly, inbound FIFOs and
//! their names are the blocking side's.
//!
//! Cancellation: a dropped `send` may have written some chunks of its message; the
//! server never delivers them (the writer's next message, or its death, discards them),
//! so the message arrives whole or not at all. A dropped `request` forgets its `seq`, so a
//! late reply is dropped as it is read, never taken for another request's. A dropped
//! `recv` loses nothing: what a read brought is in the shared state before the next await.
//!
//! A reply larger than the client's reply pipe (64 KiB) waits in [`Message::reply`] while
//! the client reads it, as on the blocking side.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Poll, ready};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::chunk::{
    Chunks, REQUEST, Reassembly, SigpipeBlocked, WriterId, pipe_full, write_chunk, write_pipe,
};
use super::client::{answer, write_pipe_whole};
use super::inbox::{Inbox, Taken, Want};
use super::server::FifoListener;
use super::{REAP_INTERVAL, check_size, fifo_path, open_fifo};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::push::{Broadcaster, Event};
use crate::transport::{AsyncConnection, AsyncListener, BoxFuture, reactor};
use rustix::fs::OFlags;

fn register<T: AsFd + std::os::fd::AsRawFd>(url: &str, fd: T) -> Result<AsyncFd<T>> {
    reactor::register(url, fd, Interest::READABLE | Interest::WRITABLE)
}

/// Writes one message chunk by chunk, waiting for room up to `patience` each time the
/// pipe is full.
async fn write_message(
    url: &str,
    fd: &AsyncFd<OwnedFd>,
    id: (WriterId, u32, u8),
    payload: &[u8],
    patience: Duration,
) -> Result<()> {
    let mut chunks = Chunks::new(id, payload);
    while let Some(chunk) = chunks.next_chunk() {
        loop {
            let written = {
                let sigpipe = SigpipeBlocked::new();
                write_chunk(url, fd.get_ref().as_fd(), chunk, &sigpipe)?
            };
            if written {
                break;
            }
            let room = tokio::time::timeout(patience, fd.writable())
                .await
                .map_err(|_| pipe_full(url, patience))?;
            // Not written since the wait: the room it saw may be gone again.
            room.map_err(|e| Error::io(url, "waiting for room in the pipe", e))?
                .clear_ready();
        }
    }
    Ok(())
}

/// Reads what `fd` has into `reassembly`, as `try_io` wants it: WouldBlock when empty.
fn fill(reassembly: &mut Reassembly, fd: &OwnedFd) -> io::Result<()> {
    match reassembly.fill(fd.as_fd()) {
        Ok(true) => Ok(()),
        Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e),
    }
}

pub(super) struct AsyncFifoConnection {
    endpoint: Endpoint,
    url: String,
    fd: AsyncFd<OwnedFd>,
    /// The writer id and last message number, held for a whole message so that its
    /// chunks follow the previous message's.
    sender: tokio::sync::Mutex<(WriterId, u32)>,
    inbox: Inbox,
    inbox_fd: AsyncFd<Arc<OwnedFd>>,
    /// Wakes the callers waiting for what another read for them.
    dispatched: tokio::sync::Notify,
    max: usize,
    send_timeout: Duration,
}

/// Forgets the reply to a request whose caller is done with it, or dropped the future.
struct Expected<'a>(&'a Inbox, u32);

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

impl AsyncFifoConnection {
    pub(super) fn new(endpoint: &Endpoint) -> Result<AsyncFifoConnection> {
        let url = endpoint.to_string();
        let fd = open_fifo(endpoint, fifo_path(endpoint), OFlags::WRONLY)?;
        let inbox = Inbox::open(endpoint)?;
        write_pipe_whole(&url, fd.as_fd(), &inbox.hello(), endpoint.send_timeout())?;
        Ok(AsyncFifoConnection {
            fd: register(&url, fd)?,
            inbox_fd: reactor::register(&url, inbox.fd.clone(), Interest::READABLE)?,
            endpoint: endpoint.clone(),
            url,
            sender: tokio::sync::Mutex::new((inbox.writer, 0)),
            inbox,
            dispatched: tokio::sync::Notify::new(),
            max: endpoint.max_message(),
            send_timeout: endpoint.send_timeout(),
        })
    }

    async fn send(&self, payload: &[u8]) -> Result<()> {
        check_size(&self.url, self.max, payload)?;
        let mut sender = self.sender.lock().await;
        sender.1 = sender.1.wrapping_add(1);
        let id = (sender.0, sender.1, 0);
        write_message(&self.url, &self.fd, id, payload, self.send_timeout).await
    }

    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        check_size(&self.url, self.max, payload)?;
        let exchange = async {
            let expected = {
                let mut sender = self.sender.lock().await;
                sender.1 = sender.1.wrapping_add(1);
                let (writer, seq) = *sender;
                // Expected before it is written: the reply may be read by another caller.
                self.inbox.expect(seq);
                let expected = Expected(&self.inbox, seq);
                let id = (writer, seq, REQUEST);
                write_message(&self.url, &self.fd, id, payload, self.send_timeout).await?;
                expected
            };
            let seq = expected.1;
            match self.wait(Want::Reply(seq)).await? {
                Taken::Reply(reply) => answer(&self.url, reply, seq, timeout, self.max),
                Taken::Push(_) => None,
            }
            .unwrap_or_else(|| {
                Err(Error::io(
                    &self.url,
                    "reading the reply",
                    io::ErrorKind::InvalidData.into(),
                ))
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                endpoint: self.url.clone(),
                after: timeout,
            })?
    }

    /// Waits for what `want` names, reading the inbox when it is readable. Cancel-safe:
    /// what a read brings is in the shared state before the next await.
    async fn wait(&self, want: Want) -> Result<Taken> {
        loop {
            let dispatched = self.dispatched.notified();
            tokio::pin!(dispatched);
            dispatched.as_mut().enable();
            {
                let mut state = crate::sys::lock(&self.inbox.state);
                if let Some(taken) = state.take(want) {
                    return Ok(taken);
                }
                if state.closed {
                    return Err(self.inbox.server_gone());
                }
            }
            tokio::select! {
                biased;
                () = &mut dispatched => {}
                ready = self.inbox_fd.readable() => {
                    let mut ready = ready
                        .map_err(|e| Error::io(&self.url, "waiting for the inbound FIFO", e))?;
                    let mut reader = crate::sys::lock(&self.inbox.reader);
                    let read = ready.try_io(|fd| match reader.read(fd.get_ref().as_fd()) {
                        Ok(Some(n)) => Ok(n),
                        Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                        Err(e) => Err(e),
                    });
                    let Ok(read) = read else {
                        continue; // read by another caller meanwhile
                    };
                    let read = read.map_err(|e| Error::io(&self.url, "reading the inbound FIFO", e))?;
                    let mut state = crate::sys::lock(&self.inbox.state);
                    self.inbox.dispatch(&mut reader, &mut state, read == 0);
                    drop((state, reader));
                    self.dispatched.notify_waiters();
                }
            }
        }
    }
}

impl Drop for AsyncFifoConnection {
    fn drop(&mut self) {
        // Best effort: a server that misses it sees the inbound FIFO go unread.
        let sigpipe = SigpipeBlocked::new();
        let _ = write_pipe(
            &self.url,
            self.fd.get_ref().as_fd(),
            &self.inbox.bye(),
            &sigpipe,
        );
    }
}

crate::transport::sealed!(AsyncFifoConnection, AsyncFifoListener);

impl AsyncConnection for AsyncFifoConnection {
    /// Dropped before it completes, the message arrives whole or not at all.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(AsyncFifoConnection::send(self, payload))
    }

    /// Dropped at any point, the request's `seq` is forgotten: a late reply is dropped.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(AsyncFifoConnection::request(self, payload, timeout))
    }

    /// Cancel-safe: a push read by a dropped call waits for the next.
    fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            match self.wait(Want::Push).await? {
                Taken::Push(payload) => Ok(payload),
                Taken::Reply(_) => unreachable!("a push is taken only as a push"),
            }
        })
    }

    fn max_message(&self) -> usize {
        self.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The blocking server's FIFO and reassembly, read when tokio says it is readable.
pub(super) struct AsyncFifoListener {
    server: FifoListener,
    fd: AsyncFd<Arc<OwnedFd>>,
    /// When unfinished messages are next checked for writers that died.
    reap: Pin<Box<tokio::time::Sleep>>,
}

impl AsyncFifoListener {
    pub(super) fn new(server: FifoListener) -> Result<AsyncFifoListener> {
        Ok(AsyncFifoListener {
            fd: register(&server.url, server.fd.clone())?,
            server,
            reap: Box::pin(tokio::time::sleep(REAP_INTERVAL)),
        })
    }
}

impl AsyncFifoListener {
    /// The next event, or only the next message. Cancel-safe: what was read but not
    /// returned waits for the next call.
    fn next(&mut self, events: bool) -> impl Future<Output = Result<Event>> + '_ {
        poll_fn(move |cx| {
            loop {
                let server = &mut self.server;
                server.deliver(); // wake chunks are the blocking side's alone
                if let Some(event) = server.pop(events) {
                    return Poll::Ready(Ok(event));
                }
                if !server.reassembly.partial.is_empty() && self.reap.as_mut().poll(cx).is_ready() {
                    self.server.reassembly.reap(&self.server.url);
                    let next = tokio::time::Instant::now() + REAP_INTERVAL;
                    self.reap.as_mut().reset(next);
                }
                let reassembly = &mut self.server.reassembly;
                let filled = reactor::poll_read(&self.fd, cx, |fd| fill(reassembly, fd.get_ref()));
                if let Err(e) = ready!(filled) {
                    let url = &self.server.url;
                    return Poll::Ready(Err(Error::io(&**url, "reading", e)));
                }
            }
        })
    }
}

impl AsyncListener for AsyncFifoListener {
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        Box::pin(async move {
            match self.next(false).await? {
                Event::Message(message) => Ok(message),
                _ => unreachable!("only messages were asked for"),
            }
        })
    }

    fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
        Box::pin(self.next(true))
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(
            self.server.roster.clone(),
            self.server.endpoint.max_message(),
        ))
    }

    fn endpoint(&self) -> &Endpoint {
        &self.server.endpoint
    }
}
