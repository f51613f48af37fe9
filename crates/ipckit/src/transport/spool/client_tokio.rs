//! The spool's client driven by tokio: the same [`Core`] as the blocking client, waiting
//! on its inotify descriptor through tokio's reactor rather than in `poll`.
//!
//! A send with `?sync=true` (the default) writes, flushes and renames on tokio's blocking
//! pool, since an fsync can take long enough to stall a runtime worker; with
//! `?sync=false` it runs inline (a few syscalls that never wait on the disk).
//!
//! Cancellation: a send dropped once its write has started on the blocking pool still
//! publishes its message, whole (nothing half-written is ever in `new/`). A request
//! dropped forgets its id: its reply, if one comes, is removed unread. A `recv` dropped
//! loses nothing: a push is taken from the books only by the poll that returns it.

use std::future::{Future, poll_fn};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Sleep;

use super::client::{Core, Incoming, Reader};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::transport::reactor::register;
use crate::transport::{AsyncConnection, BoxFuture};

/// An async client of a spool, on the runtime it was made in.
pub(crate) struct AsyncSpoolConnection {
    core: Arc<Core>,
    reader: Mutex<AsyncReader>,
}

/// The blocking client's reader, with what tokio needs to wait for it.
struct AsyncReader {
    reader: Reader,
    /// The watch's inotify descriptor (a duplicate), registered with the reactor.
    inotify: AsyncFd<OwnedFd>,
    /// Wakes the reader when the receivers are next to be looked at.
    check: Pin<Box<Sleep>>,
}

/// Opens the spool and makes the client's inbox, as [`super::client::connect`] does, on
/// the current runtime.
pub(super) fn connect_async(endpoint: &Endpoint) -> Result<AsyncSpoolConnection> {
    connect_with(endpoint, super::client::sync_of(endpoint))
}

fn connect_with(endpoint: &Endpoint, sync: bool) -> Result<AsyncSpoolConnection> {
    let (core, reader) = Core::open(endpoint, sync)?;
    let inotify = reader
        .watch()
        .fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io(&core.url, "watching the client's inbox", e))?;
    let inotify = register(&core.url, inotify, Interest::READABLE)?;
    Ok(AsyncSpoolConnection {
        core: Arc::new(core),
        reader: Mutex::new(AsyncReader {
            reader,
            inotify,
            check: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }),
    })
}

/// Reads the inbox as the task holding it: `Ready` once it took anything, else `Pending`
/// with this task registered for the next inotify event and the next look at the
/// receivers.
fn poll_read(
    core: &Core,
    state: &mut AsyncReader,
    cx: &mut Context<'_>,
) -> Poll<std::result::Result<(), String>> {
    loop {
        if core.read(&mut state.reader)? {
            return Poll::Ready(Ok(()));
        }
        match state.inotify.poll_read_ready(cx) {
            // Whatever made it readable is read by the next pass: clearing first loses
            // nothing.
            Poll::Ready(Ok(mut ready)) => {
                ready.clear_ready();
                continue;
            }
            Poll::Ready(Err(e)) => {
                return Poll::Ready(Err(format!("waiting on the inbox's inotify: {e}")));
            }
            Poll::Pending => {}
        }
        if let Some(at) = state.reader.next_check() {
            state.check.as_mut().reset(at.into());
            if state.check.as_mut().poll(cx).is_ready() {
                continue;
            }
        }
        return Poll::Pending;
    }
}

impl AsyncSpoolConnection {
    /// Publishes one message of this client's: on the blocking pool when it is flushed
    /// to disk.
    async fn publish(&self, request: Option<u64>, payload: &[u8]) -> Result<()> {
        let core = &self.core;
        core.check_size(payload)?;
        if !core.sync {
            return core.publish(request, payload);
        }
        let (shared, payload) = (core.clone(), payload.to_vec());
        tokio::task::spawn_blocking(move || shared.publish(request, &payload))
            .await
            .map_err(|e| Error::io(&core.url, "publishing a message", std::io::Error::other(e)))?
    }

    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let core = &*self.core;
        core.check_size(payload)?;
        let id = core.next_id();
        core.answers.register(id);
        let _leave = Leave { core, id };
        let exchange = async {
            self.publish(Some(id), payload).await?;
            Ok(poll_fn(|cx| {
                core.answers.poll_answer(id, cx, &self.reader, |state, cx| {
                    match poll_read(core, state, cx) {
                        // What was read went into the books, this request's answer
                        // perhaps: the correlator looks again at the next poll.
                        Poll::Ready(Ok(())) => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        Poll::Ready(Err(detail)) => Poll::Ready(Err(detail)),
                        Poll::Pending => Poll::Pending,
                    }
                })
            })
            .await)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => core.outcome(answer, timeout),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                endpoint: core.url.clone(),
                after: timeout,
            }),
        }
    }

    async fn recv(&self) -> Result<Vec<u8>> {
        let core = &*self.core;
        let me = core.next_id();
        let _leave = LeavePush { core, me };
        let pushed = poll_fn(|cx| {
            core.answers.poll_push(me, cx, &self.reader, |state, cx| {
                poll_read(core, state, cx).map(|read| read.map(|()| None))
            })
        })
        .await;
        match pushed {
            Ok(Incoming::Payload(push)) => Ok(push),
            Ok(other) => unreachable!("only payloads are filed as pushes: {other:?}"),
            Err(detail) => Err(core.broken(detail)),
        }
    }
}

/// Forgets a request however its future ends, so that a late reply is dropped.
struct Leave<'a> {
    core: &'a Core,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.core.answers.leave(self.id);
    }
}

/// Takes a `recv` future off the books however it ends.
struct LeavePush<'a> {
    core: &'a Core,
    me: u64,
}

impl Drop for LeavePush<'_> {
    fn drop(&mut self) {
        self.core.answers.leave_push(self.me);
    }
}

crate::transport::sealed!(AsyncSpoolConnection);

impl AsyncConnection for AsyncSpoolConnection {
    /// Dropped once its write has started, the message is still published, whole.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.publish(None, payload))
    }

    /// Dropped at any point, the request's id is forgotten and a late reply removed
    /// unread.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(AsyncSpoolConnection::request(self, payload, timeout))
    }

    /// Cancel-safe: a pushed message is taken only by the call that returns it.
    fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(AsyncSpoolConnection::recv(self))
    }

    fn max_message(&self) -> usize {
        self.core.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}
