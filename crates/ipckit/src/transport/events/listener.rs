//! A listener: `listen("events://NAME?level=...")`, blocking. [`Core`] is what the
//! blocking and async listeners share: everything but the waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

use super::segment::Segment;
use super::writer::shrunk;
use crate::Level;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, Peer, Stamp};
use crate::push::Event;
use crate::sys::DeathNotice;
use crate::sys::OWNER_DIED;
use crate::transport::ring::Shared;
use crate::transport::ring::broadcast::records::{FUTEX_SLEEPERS, announce_sleep};
use crate::transport::ring::broadcast::{CLAIMING, EnterError, Next, Reader, Role, level_one};
use crate::transport::ring::wait::Spinner;

/// The longest a waiting listener sleeps before it looks for dead listeners to reap
/// (and so the most a SIGKILLed listener stays counted while another listener waits).
pub(crate) const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// A listener's hold on a segment and its place in the ring.
pub(crate) struct Core {
    // Field order is drop order: the notice (which frees the entry) before the segment.
    _notice: DeathNotice,
    pub(crate) segment: Segment,
    pub(crate) endpoint: Endpoint,
    url: Arc<str>,
    pub(crate) entry: usize,
    pub(crate) reader: Reader,
    lost: u64,
    /// The event that follows a `Lost` just returned.
    pending: Option<Message>,
    /// The last writer's pid and the `Peer` made for it: one allocation per writer met.
    peer: Option<(u32, Arc<Peer>)>,
    next_reap: Instant,
    corrupt_told: u64,
    /// Its level, to find itself counted at it.
    level: u8,
}

impl Core {
    /// Joins the segment of `endpoint` at its level; `bell` is the async listener's.
    pub(crate) fn open(endpoint: &Endpoint, bell: u64) -> Result<Core> {
        let segment = Segment::open(endpoint)?;
        let url = endpoint.to_string();
        let ring = &segment.ring;
        ring.reap_listeners();
        let (entry, notice) = ring.enter(Role::Listener).map_err(|e| match e {
            EnterError::TableFull => Error::Full {
                endpoint: url.clone(),
                detail: format!(
                    "the listener table ({} entries; ?listeners= when the segment is made)",
                    ring.geometry().listeners
                ),
                after: Duration::ZERO,
            },
            EnterError::Notice(e) => Error::io(&url, "holding a death notice in the segment", e),
        })?;
        ring.listener(entry).bell.store(bell, Ordering::Release);
        let level = endpoint.level().unwrap_or(Level::DEFAULT_LISTENER);
        let reader = ring.join(entry, level as u8);
        Ok(Core {
            _notice: notice,
            reader,
            segment,
            endpoint: endpoint.clone(),
            url: url.into(),
            entry,
            lost: 0,
            pending: None,
            peer: None,
            next_reap: Instant::now() + REAP_INTERVAL,
            corrupt_told: 0,
            level: level as u8,
        })
    }

    /// The next event if one is there, without waiting.
    pub(crate) fn poll(&mut self) -> Result<Option<Event>> {
        if let Some(message) = self.pending.take() {
            return Ok(Some(Event::Message(message)));
        }
        let ring = &self.segment.ring;
        let mut payload = Vec::new();
        let next = self.reader.next(&ring.ring(), &mut payload);
        // For writers that block: how far it has read.
        ring.listener(self.entry)
            .position
            .store(self.reader.cursor, Ordering::Release);
        if self.reader.corrupt != self.corrupt_told {
            if self.corrupt_told == 0 {
                log::warn!(
                    "{}: skipped a record that failed its checks: something other than ipckit writes into the segment",
                    self.url
                );
            }
            self.corrupt_told = self.reader.corrupt;
        }
        let (stamp, lost) = match next {
            Next::Empty => {
                if self.segment.truncated() {
                    return Err(shrunk(&self.endpoint));
                }
                return Ok(None);
            }
            Next::Event { stamp, lost } => (stamp, lost),
        };
        let peer = match &self.peer {
            Some((pid, peer)) if *pid == stamp.pid => peer.clone(),
            _ => {
                let peer = Arc::new(Peer {
                    pid: Some(stamp.pid),
                    ..Peer::default()
                });
                self.peer = Some((stamp.pid, peer.clone()));
                peer
            }
        };
        let message = Message::new(payload, peer, None, self.url.clone()).with_stamp(Stamp {
            level: Level::from_u8(stamp.level).unwrap_or(Level::LogAlways),
            sequence: stamp.seq,
        });
        if lost > 0 {
            self.lost += lost;
            self.pending = Some(message);
            return Ok(Some(Event::Lost { count: lost }));
        }
        Ok(Some(Event::Message(message)))
    }

    /// Whether the ring holds something past this listener's position.
    #[inline]
    pub(crate) fn ready(&self) -> bool {
        self.pending.is_some()
            || self
                .segment
                .ring
                .header()
                .control
                .tail
                .load(Ordering::Acquire)
                != self.reader.cursor
    }

    /// Reaps dead listeners if it is time, and checks that it is still registered; when
    /// the next look is due.
    pub(crate) fn reap_due(&mut self) -> Result<Instant> {
        let now = Instant::now();
        if now >= self.next_reap {
            self.segment.ring.reap_listeners();
            self.registered()?;
            self.next_reap = now + REAP_INTERVAL;
        }
        Ok(self.next_reap)
    }

    /// Fails if its entry no longer says it listens: only a scribble does that, and
    /// writers would then skip what it waits for, leaving it deaf for good. A levels
    /// word that counts nobody at its level (a scribble, or a mend of the word made while
    /// this listener was stalled between counting itself and saying so) gets its count
    /// back: the next mend settles the word on the entries' sum either way.
    fn registered(&self) -> Result<()> {
        let ring = &self.segment.ring;
        let entry = ring.listener(self.entry);
        let owner = entry.owner.load(Ordering::Acquire);
        let sound = owner != 0
            && owner & (OWNER_DIED | CLAIMING) == 0
            && entry.level.load(Ordering::Acquire) == u32::from(self.level) + 1
            && entry.counted.load(Ordering::Acquire) == 1;
        if sound {
            let levels = &ring.header().levels;
            let field = 0x3ff << (10 * u64::from(self.level));
            if levels.load(Ordering::Acquire) & field == 0 {
                levels.fetch_add(level_one(self.level), Ordering::SeqCst);
                log::warn!(
                    "{}: the events segment counted no listener at this one's level; counted it again",
                    self.endpoint
                );
            }
            return Ok(());
        }
        Err(Error::Protocol {
            endpoint: self.endpoint.to_string(),
            reason: "something other than ipckit wrote into the events segment and undid this listener's registration, so writers may skip what it listens for; listen again".into(),
        })
    }

    pub(crate) fn lost(&self) -> u64 {
        self.lost
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let ring = &self.segment.ring;
        ring.uncount(self.entry);
        ring.listener(self.entry).bell.store(0, Ordering::Relaxed);
        // Before the notice frees the entry: a pid left behind would be read as that of
        // a claim in progress.
        ring.listener(self.entry).pid.store(0, Ordering::Relaxed);
    }
}

/// A blocking listener.
pub(crate) struct EventsListener {
    core: Core,
    spinner: Spinner,
    woken: Arc<AtomicBool>,
    bell: Shared<AtomicU32>,
}

impl EventsListener {
    pub(crate) fn bind(endpoint: &Endpoint) -> Result<EventsListener> {
        let core = Core::open(endpoint, 0)?;
        let bell = core.segment.ring.bell_word();
        Ok(EventsListener {
            core,
            spinner: Spinner::default(),
            woken: Arc::new(AtomicBool::new(false)),
            bell,
        })
    }

    fn next(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        loop {
            if self.woken.swap(false, Ordering::AcqRel) {
                return Ok(None);
            }
            if let Some(event) = self.core.poll()? {
                return Ok(Some(event));
            }
            let core = &self.core;
            let woken = &self.woken;
            if self
                .spinner
                .spin(|| core.ready() || woken.load(Ordering::Relaxed))
            {
                // A scribbled tail can look ready for ever: the deadline still holds.
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
                continue;
            }
            let next_reap = self.core.reap_due()?;
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let until = deadline.map_or(next_reap, |d| d.min(next_reap));
            let tail = &self.core.segment.ring.header().control.tail;
            let asleep = announce_sleep(&self.bell, tail, self.core.reader.cursor, FUTEX_SLEEPERS);
            if let Some(word) = asleep.filter(|_| !self.woken.load(Ordering::SeqCst)) {
                let timeout =
                    rustix::time::Timespec::try_from(until.saturating_duration_since(now))
                        .unwrap_or(rustix::time::Timespec {
                            tv_sec: 1,
                            tv_nsec: 0,
                        });
                // Not FUTEX_PRIVATE: writers in other processes wake it. EAGAIN (the word
                // moved on), EINTR and ETIMEDOUT all lead back to the checks.
                let _ = futex::wait(&self.bell, futex::Flags::empty(), word, Some(&timeout));
            }
        }
    }
}

impl crate::transport::Listener for EventsListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        crate::transport::next_message(|| self.next(deadline))
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.next(deadline)
    }

    fn lost(&self) -> u64 {
        self.core.lost()
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let woken = self.woken.clone();
        let bell = self.bell.clone();
        Arc::new(move || {
            woken.store(true, Ordering::SeqCst);
            // Moves the word on, so that a sleep about to begin does not.
            bell.fetch_add(
                crate::transport::ring::broadcast::records::BELL_ROUND,
                Ordering::SeqCst,
            );
            let _ = futex::wake(
                &bell,
                futex::Flags::empty(),
                crate::transport::ring::wait::EVERY_SLEEPER,
            );
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}
