//! A writer: `connect("events://NAME")`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::segment::Segment;
use crate::Level;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::sys::DeathNotice;
use crate::transport::ring::Shared;
use crate::transport::ring::broadcast::{EnterError, Role, WRITERS, enabled_mask};

/// A writer's hold on a segment.
pub(crate) struct EventsConnection {
    // Field order is drop order: the notice (which frees the entry) before the segment.
    _notice: DeathNotice,
    segment: Segment,
    /// The segment's levels word, reached without the segment's indirections: the one
    /// load of a send that nobody listens to.
    levels: Shared<AtomicU64>,
    endpoint: Endpoint,
    /// Its writer entry.
    entry: usize,
    /// What `send` writes at.
    level: Level,
    pid: u32,
    max_event: usize,
    /// Threads of this process take turns here before the shared lock, whose holder is
    /// a writer entry, not a thread.
    turn: Mutex<()>,
    /// When to look for dead listeners next, in seconds of the coarse clock.
    next_reap: AtomicU64,
}

impl EventsConnection {
    pub(crate) fn connect(endpoint: &Endpoint) -> Result<EventsConnection> {
        let segment = Segment::open(endpoint)?;
        let url = endpoint.to_string();
        let ring = &segment.ring;
        ring.reap_writers();
        ring.reap_listeners();
        let (entry, notice) = ring.enter(Role::Writer).map_err(|e| match e {
            EnterError::TableFull => Error::Full {
                endpoint: url.clone(),
                detail: format!("the table of {WRITERS} writers"),
                after: Duration::ZERO,
            },
            EnterError::Notice(e) => Error::io(&url, "holding a death notice in the segment", e),
        })?;
        let max_event = ring.geometry().max_event();
        let levels = ring.levels_word();
        Ok(EventsConnection {
            levels,
            _notice: notice,
            segment,
            endpoint: endpoint.clone(),
            entry,
            level: endpoint.level().unwrap_or(Level::DEFAULT_EVENT),
            pid: std::process::id(),
            max_event,
            turn: Mutex::new(()),
            next_reap: AtomicU64::new(0),
        })
    }

    /// Whether a listener takes events at `level`: one load.
    #[inline(always)]
    pub(crate) fn is_enabled(&self, level: Level) -> bool {
        self.levels.load(Ordering::Relaxed) & enabled_mask(level as u8) != 0
    }

    #[inline(always)]
    pub(crate) fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        if payload.len() > self.max_event {
            return Err(self.too_large(payload.len()));
        }
        if !self.is_enabled(level) {
            return Ok(());
        }
        self.write(level, payload)
    }

    fn too_large(&self, size: usize) -> Error {
        Error::MessageTooLarge {
            endpoint: self.endpoint.to_string(),
            size,
            max: self.max_event,
            limit: "a quarter of the events ring, less a 24-byte header (?ring= makes it larger)"
                .into(),
        }
    }

    #[inline(never)]
    fn write(&self, level: Level, payload: &[u8]) -> Result<()> {
        let ring = &self.segment.ring;
        // One deadline for this process's turn, the shared lock and the room: writers
        // queued for the lock do not each wait a send_timeout behind the one waiting for
        // room.
        let patience = self.endpoint.send_timeout();
        let deadline = Instant::now() + patience;
        let Some(turn) = self.take_turn(deadline) else {
            return Err(Error::Full {
                endpoint: self.endpoint.to_string(),
                detail:
                    "this process's turn at the events ring, which its other threads' sends held,"
                        .into(),
                after: patience,
            });
        };
        if ring.lock(self.entry, deadline).is_err() {
            return Err(Error::Full {
                endpoint: self.endpoint.to_string(),
                detail: "the events ring's write lock, which another writer holds,".into(),
                after: patience,
            });
        }
        let blocks = self.segment.blocks();
        let written = ring.ring().append(level as u8, self.pid, payload, |end| {
            if blocks && !ring.room_for(end) && !ring.wait_for_room(end, deadline) {
                return Err(Error::Full {
                    endpoint: self.endpoint.to_string(),
                    detail:
                        "the events ring (overflow=block), which the slowest listener has not read,"
                            .into(),
                    after: patience,
                });
            }
            Ok(())
        });
        ring.unlock(self.entry);
        drop(turn);
        written?;
        ring.wake();
        self.now_and_then();
        if self.segment.truncated() {
            return Err(shrunk(&self.endpoint));
        }
        Ok(())
    }

    /// This process's turn at the shared lock, waited for until `deadline` (a std mutex
    /// would wait for as long as other threads keep it).
    fn take_turn(&self, deadline: Instant) -> Option<std::sync::MutexGuard<'_, ()>> {
        loop {
            match self.turn.try_lock() {
                Ok(turn) => return Some(turn),
                Err(std::sync::TryLockError::Poisoned(turn)) => return Some(turn.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() >= deadline => {
                    return None;
                }
                // A turn lasts one append: yielding is enough.
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
    }

    /// Reaps dead listeners about once a second, so that a listener killed while nobody
    /// else listens stops counting within a second of the next write. The coarse clock
    /// costs a few nanoseconds (vDSO), against the tens a write costs; a send nobody
    /// listens to never comes here.
    fn now_and_then(&self) {
        let now = crate::sys::coarse_now().as_secs();
        if now >= self.next_reap.load(Ordering::Relaxed) {
            self.next_reap.store(now + 1, Ordering::Relaxed);
            self.segment.ring.reap_listeners();
            self.segment.ring.reap_writers();
        }
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn max_message(&self) -> usize {
        self.max_event
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn level(&self) -> Level {
        self.level
    }

    #[cfg(test)]
    pub(crate) fn segment_for_tests(&self) -> &crate::transport::ring::broadcast::Broadcast {
        &self.segment.ring
    }

    #[cfg(test)]
    pub(crate) fn entry_for_tests(&self) -> usize {
        self.entry
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn blocks(&self) -> bool {
        self.segment.blocks()
    }
}

impl Drop for EventsConnection {
    fn drop(&mut self) {
        // Before the notice frees the entry (the fields drop in order): a pid left behind
        // would be read as that of a claim in progress.
        self.segment
            .ring
            .writer(self.entry)
            .pid
            .store(0, Ordering::Relaxed);
    }
}

/// The error of a party whose segment someone shrank.
pub(crate) fn shrunk(endpoint: &Endpoint) -> Error {
    Error::Protocol {
        endpoint: endpoint.to_string(),
        reason: "someone shrank the events segment's file; open the endpoint again".into(),
    }
}

impl crate::transport::Connection for EventsConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.send_at(self.level, payload)
    }

    fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        EventsConnection::send_at(self, level, payload)
    }

    fn is_enabled(&self, level: Level) -> bool {
        EventsConnection::is_enabled(self, level)
    }

    fn request(&self, _payload: &[u8], _timeout: Duration) -> Result<Vec<u8>> {
        Err(one_way(&self.endpoint))
    }

    fn max_message(&self) -> usize {
        self.max_event
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The error of a request on events.
pub(crate) fn one_way(endpoint: &Endpoint) -> Error {
    Error::Unsupported {
        endpoint: endpoint.to_string(),
        what: "events is a one-way broadcast: a writer sends, listeners receive, and nobody replies; use send, or a duplex transport (uds, shm) for requests".into(),
    }
}

/// The client flavor of the generic layer (`backend.rs`): the level check inlined into
/// `Client::send_at` and `Client::is_enabled`.
impl crate::transport::backend::ClientSide for EventsConnection {
    #[inline(always)]
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.send_at(self.level, payload)
    }

    #[inline(always)]
    fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        EventsConnection::send_at(self, level, payload)
    }

    #[inline(always)]
    fn is_enabled(&self, level: Level) -> bool {
        EventsConnection::is_enabled(self, level)
    }

    fn request(&self, _payload: &[u8], _timeout: Duration) -> Result<Vec<u8>> {
        Err(one_way(&self.endpoint))
    }

    fn request_with<R>(
        &self,
        _payload: &[u8],
        _timeout: Duration,
        _read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        Err(one_way(&self.endpoint))
    }

    fn max_message(&self) -> usize {
        self.max_event
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}
