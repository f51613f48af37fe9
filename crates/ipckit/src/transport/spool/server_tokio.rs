//! The spool's server driven by tokio: the same [`Core`] as the blocking listener, woken
//! by the inotify descriptor registered with tokio's reactor, and by a timer only while
//! the core has something to look at (clients to check, claims of other receivers).
//!
//! Cancellation: a step is synchronous and returns what it claimed, or keeps it among
//! the core's events; a dropped future loses nothing.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::queue::Options;
use super::server::Core;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::push::{Broadcaster, Event};
use crate::transport::reactor::register;
use crate::transport::{AsyncListener, BoxFuture};

/// Starts an async server on the spool of `endpoint`, on the current runtime.
pub(super) fn listen_async(endpoint: &Endpoint) -> Result<AsyncSpoolListener> {
    listen_async_with(endpoint, Options::of(endpoint))
}

pub(super) fn listen_async_with(
    endpoint: &Endpoint,
    options: Options,
) -> Result<AsyncSpoolListener> {
    let core = Core::new(endpoint, options)?;
    // The watch's own descriptor, shared with the reactor's registration.
    let watch = core.queue.watch_fd();
    let watch = register(&endpoint.to_string(), watch, Interest::READABLE)?;
    Ok(AsyncSpoolListener { core, watch })
}

pub(super) struct AsyncSpoolListener {
    core: Core,
    watch: AsyncFd<Arc<OwnedFd>>,
}

impl AsyncSpoolListener {
    async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.core.step()? {
                return Ok(event);
            }
            let readable = self.watch.readable();
            let ready = match self.core.next_look() {
                Some(at) => match tokio::time::timeout_at(at.into(), readable).await {
                    Ok(ready) => ready,
                    Err(_) => continue,
                },
                None => readable.await,
            };
            // The next step reads everything queued, so the readiness seen is used up
            // there, whatever came since.
            ready
                .map_err(|e| Error::io(&self.core.endpoint, "waiting for messages", e))?
                .clear_ready();
        }
    }
}

crate::transport::sealed!(AsyncSpoolListener);

impl AsyncListener for AsyncSpoolListener {
    /// Cancel-safe: a message is claimed only by the poll that returns it.
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        Box::pin(async move {
            loop {
                if let Event::Message(message) = self.next_event().await? {
                    return Ok(message);
                }
            }
        })
    }

    /// Cancel-safe, as `recv`.
    fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
        Box::pin(self.next_event())
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(self.core.broadcaster())
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}
