//! The same client and server driven by tokio: the FIFOs stay non-blocking and tokio's
//! reactor says when they are readable or have room. Chunks, reassembly, reply FIFOs and
//! their names are the blocking side's.
//!
//! Cancellation: a dropped `send` may have written some chunks of its message; the
//! server never delivers them (the writer's next message, or its death, discards them),
//! so the message arrives whole or not at all. A dropped `request` drops its reply FIFO
//! with it, so a late reply cannot be taken for another request's.
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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::chunk::{
    Chunks, REQUEST, Reassembly, SigpipeBlocked, WriterId, next_writer, pipe_full, write_chunk,
};
use super::client::{answer, make_reply_fifo};
use super::server::FifoListener;
use super::{REAP_INTERVAL, check_size, fifo_path, open_fifo};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::transport::pool::Pool;
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

struct AsyncChannel {
    writer: WriterId,
    seq: u32,
    path: PathBuf,
    fd: AsyncFd<OwnedFd>,
    replies: Reassembly,
}

impl Drop for AsyncChannel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(super) struct AsyncFifoConnection {
    endpoint: Endpoint,
    url: String,
    fd: AsyncFd<OwnedFd>,
    /// One-way messages: their writer and last message number, held for a whole
    /// message so that its chunks follow the previous message's.
    sender: tokio::sync::Mutex<(WriterId, u32)>,
    channels: Pool<AsyncChannel>,
    max: usize,
    send_timeout: Duration,
}

impl AsyncFifoConnection {
    pub(super) fn new(endpoint: &Endpoint) -> Result<AsyncFifoConnection> {
        let url = endpoint.to_string();
        let fd = open_fifo(endpoint, fifo_path(endpoint), OFlags::WRONLY)?;
        Ok(AsyncFifoConnection {
            fd: register(&url, fd)?,
            endpoint: endpoint.clone(),
            url,
            sender: tokio::sync::Mutex::new((next_writer(), 0)),
            channels: Pool::new(),
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
        let mut channel = self.channels.take(|| {
            let (writer, path, fd) = make_reply_fifo(&self.endpoint)?;
            Ok(AsyncChannel {
                writer,
                seq: 0,
                fd: register(&self.url, fd)?,
                path,
                replies: Reassembly::new(self.max),
            })
        })?;
        channel.seq = channel.seq.wrapping_add(1);
        let exchange = async {
            let seq = channel.seq;
            let id = (channel.writer, seq, REQUEST);
            write_message(&self.url, &self.fd, id, payload, self.send_timeout).await?;
            loop {
                while let Some(reply) = channel.replies.next(&self.url) {
                    if let Some(answer) = answer(&self.url, reply, seq, timeout, self.max) {
                        return answer;
                    }
                }
                let replies = &mut channel.replies;
                reactor::when_ready(&channel.fd, Interest::READABLE, |fd| {
                    fill(replies, fd.get_ref())
                })
                .await
                .map_err(|e| Error::io(&self.url, "reading the reply", e))?;
            }
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                endpoint: self.url.clone(),
                after: timeout,
            })??;
        self.channels.give_back(channel);
        Ok(answer)
    }
}

crate::transport::sealed!(AsyncFifoConnection, AsyncFifoListener);

impl AsyncConnection for AsyncFifoConnection {
    /// Dropped before it completes, the message arrives whole or not at all.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(AsyncFifoConnection::send(self, payload))
    }

    /// Dropped at any point, the request's reply FIFO goes with it.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(AsyncFifoConnection::request(self, payload, timeout))
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

impl AsyncListener for AsyncFifoListener {
    /// Cancel-safe: messages read but not returned wait for the next call.
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        Box::pin(poll_fn(move |cx| {
            loop {
                let server = &mut self.server;
                server.deliver(); // wake chunks are the blocking side's alone
                if let Some(message) = server.ready.pop_front() {
                    return Poll::Ready(Ok(message));
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
        }))
    }

    fn endpoint(&self) -> &Endpoint {
        &self.server.endpoint
    }
}
