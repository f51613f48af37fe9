//! The async writer and listener: the same segment and ring, waiting through tokio. A
//! listener with nothing to read sleeps on its bell, which writers ring, as shm's async
//! side does.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::listener::{Core, REAP_INTERVAL};
use super::writer::{EventsConnection, one_way};
use crate::Level;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::push::Event;
use crate::transport::ring::bell::Bell;
use crate::transport::ring::broadcast::records::{BELL_SLEEPERS, announce_sleep};
use crate::transport::{AsyncConnection, AsyncListener, BoxFuture};

/// How many times a listener with nothing to read lets other tasks run, looking again
/// after each, before it sleeps on its bell.
const YIELDS: u32 = 4;

pub(crate) struct AsyncEventsConnection {
    writer: Arc<EventsConnection>,
}

impl AsyncEventsConnection {
    pub(crate) fn connect(endpoint: &Endpoint) -> Result<AsyncEventsConnection> {
        Ok(AsyncEventsConnection {
            writer: Arc::new(EventsConnection::connect(endpoint)?),
        })
    }

    async fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        if !self.writer.blocks() || !self.writer.is_enabled(level) {
            return self.writer.send_at(level, payload);
        }
        // A writer that blocks may wait for the slowest listener: off the runtime.
        let writer = self.writer.clone();
        let payload = payload.to_vec();
        let url = self.writer.endpoint().to_string();
        tokio::task::spawn_blocking(move || writer.send_at(level, &payload))
            .await
            .map_err(|e| Error::io(&url, "sending", std::io::Error::other(e)))?
    }
}

crate::transport::sealed!(AsyncEventsConnection, AsyncEventsListener);

impl AsyncConnection for AsyncEventsConnection {
    /// Dropped before it completes, the event is written whole or not at all.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.send_at(self.writer.level(), payload))
    }

    fn send_at<'a>(&'a self, level: Level, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(AsyncEventsConnection::send_at(self, level, payload))
    }

    fn is_enabled(&self, level: Level) -> bool {
        self.writer.is_enabled(level)
    }

    fn request<'a>(
        &'a self,
        _payload: &'a [u8],
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(std::future::ready(Err(one_way(self.writer.endpoint()))))
    }

    fn max_message(&self) -> usize {
        self.writer.max_message()
    }

    fn endpoint(&self) -> &Endpoint {
        self.writer.endpoint()
    }
}

pub(crate) struct AsyncEventsListener {
    core: Core,
    bell: Bell,
}

impl AsyncEventsListener {
    pub(crate) fn bind(endpoint: &Endpoint) -> Result<AsyncEventsListener> {
        let bell = Bell::new(&endpoint.to_string())?;
        let core = Core::open(endpoint, bell.nonce())?;
        Ok(AsyncEventsListener { core, bell })
    }

    /// Cancel-safe: an event is taken only by the poll that returns it, and the message
    /// after a `Lost` waits in the listener.
    async fn next(&mut self) -> Result<Event> {
        let mut yields = 0;
        loop {
            if let Some(event) = self.core.poll()? {
                return Ok(event);
            }
            if yields < YIELDS {
                yields += 1;
                tokio::task::yield_now().await;
                continue;
            }
            yields = 0;
            let ring = &self.core.segment.ring;
            let entry = ring.listener(self.core.entry);
            ring.sleep_on_bell(self.core.entry);
            let header = ring.header();
            let asleep = announce_sleep(
                &header.bell,
                &header.control.tail,
                self.core.reader.cursor,
                BELL_SLEEPERS,
            );
            if asleep.is_some() {
                let bell = &self.bell;
                // Timed, to reap listeners that died while nothing is written.
                let _ = tokio::time::timeout(REAP_INTERVAL, poll_fn(|cx| bell.poll_rung(cx))).await;
            }
            entry.sleep.store(0, Ordering::Relaxed);
            self.core.reap_due()?;
        }
    }
}

impl AsyncListener for AsyncEventsListener {
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        Box::pin(async move {
            loop {
                if let Event::Message(message) = self.next().await? {
                    return Ok(message);
                }
            }
        })
    }

    fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
        Box::pin(self.next())
    }

    fn lost(&self) -> u64 {
        self.core.lost()
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}
