//! The two halves of a ring as each side uses them: the writer, with how it waits for
//! room and whom it wakes, and the reader's reassembly of messages sent in pieces.

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use super::corrupt;
use crate::error::{Error, Result};
use crate::sys::coarse_now;
use crate::transport::ring::Shared;
use crate::transport::ring::liveness::{LIVENESS_INTERVAL, LIVENESS_PROBE, Link};
use crate::transport::ring::spsc::{
    self, Area, Consumer, Control, Corrupt, Kind, MORE, Producer, Reservation,
};
use crate::transport::ring::wait::{self, Spinner};

/// The writing half of a ring, with how to wait for room and whom to wake.
pub(super) struct Sender {
    pub(super) producer: Producer,
    spinner: Spinner,
    /// The ring's word on which this side sleeps waiting for room.
    room: Shared<AtomicU32>,
    /// The word on which the consumer sleeps, and its bell.
    doorbell: Shared<AtomicU32>,
    bell: Shared<AtomicU64>,
    /// When the peer was last seen alive, by the coarse clock.
    checked_at: Duration,
}

impl Sender {
    /// # Safety
    /// As for [`Producer::new`]: `control` describes `area`, and this is its one producer.
    pub(super) unsafe fn new(
        control: Shared<Control>,
        area: Area,
        doorbell: Shared<AtomicU32>,
        bell: Shared<AtomicU64>,
    ) -> Sender {
        Sender {
            room: control.project(|c| &c.producer_sleeps),
            // SAFETY: per this function's contract.
            producer: unsafe { Producer::new(control, area) },
            spinner: Spinner::default(),
            doorbell,
            bell,
            checked_at: Duration::ZERO,
        }
    }

    /// Wakes the consumer, if it sleeps.
    #[inline(always)]
    fn wake_consumer(&self) {
        wait::wake(&self.doorbell, &self.bell);
    }

    /// Claims room for `len` bytes, waiting up to `patience`. `link` says whether the peer
    /// went away: asked while the ring stays full, and, when `probe`, every
    /// [`LIVENESS_PROBE`] of sending.
    #[inline(always)]
    pub(super) fn reserve(
        &mut self,
        len: usize,
        patience: Duration,
        link: &dyn Link,
        probe: bool,
    ) -> Result<Reservation> {
        // A ring with room takes messages whether or not anyone reads them; make sure now
        // and then that someone does. The coarse clock costs a few nanoseconds, where
        // looking at the consumer's position would cost a cache miss on every send.
        // Only one-way messages need this: a request, or a reply, is followed by a wait
        // that watches the peer anyway (and a reply to a dead client is simply never read).
        if let Some(r) = self.try_reserve(len, link, probe)? {
            return Ok(r);
        }
        self.wait_for_room(len, patience, link)
    }

    /// [`reserve`](Self::reserve) once the ring is full: out of line, so that a send
    /// into a ring with room stays short.
    #[cold]
    #[inline(never)]
    pub(super) fn wait_for_room(
        &mut self,
        len: usize,
        patience: Duration,
        link: &dyn Link,
    ) -> Result<Reservation> {
        self.wait_until(patience, link, |producer| producer.try_reserve(len))
    }

    /// Waits up to `patience` for `take` to find what it needs in the ring (woken as the
    /// consumer frees space), checking meanwhile that the peer lives; then
    /// [`Error::Full`].
    #[cold]
    pub(super) fn wait_until<T>(
        &mut self,
        patience: Duration,
        link: &dyn Link,
        mut take: impl FnMut(&mut Producer) -> std::result::Result<Option<T>, Corrupt>,
    ) -> Result<T> {
        let deadline = Instant::now() + patience;
        loop {
            let mut outcome = None;
            let Sender {
                producer,
                spinner,
                room,
                ..
            } = self;
            let slice = (Instant::now() + LIVENESS_INTERVAL).min(deadline);
            spinner.wait(
                room,
                || match take(producer) {
                    Ok(None) => false,
                    other => {
                        outcome = Some(other);
                        true
                    }
                },
                Some(slice),
            );
            match outcome {
                Some(Ok(Some(r))) => return Ok(r),
                Some(Err(c)) => return Err(corrupt(link.url(), "receiver", c)),
                _ => {}
            }
            link.check()?;
            if Instant::now() >= deadline {
                return Err(self.full(link, patience));
            }
        }
    }

    /// The ring stayed full for `patience`.
    #[cold]
    pub(super) fn full(&self, link: &dyn Link, patience: Duration) -> Error {
        Error::Full {
            endpoint: link.url().to_owned(),
            detail: format!(
                "the shared ring ({} bytes pending)",
                self.producer.pending()
            ),
            after: patience,
        }
    }

    /// Claims room for `len` bytes if the ring has it now. `probe` as for
    /// [`reserve`](Self::reserve).
    #[inline(always)]
    pub(super) fn try_reserve(
        &mut self,
        len: usize,
        link: &dyn Link,
        probe: bool,
    ) -> Result<Option<Reservation>> {
        if probe {
            self.probe(link)?;
        }
        self.producer
            .try_reserve(len)
            .map_err(|c| corrupt(link.url(), "receiver", c))
    }

    /// Checks that the peer lives, if that was last done [`LIVENESS_PROBE`] ago: for
    /// one-way messages, which no wait follows.
    #[inline(always)]
    pub(super) fn probe(&mut self, link: &dyn Link) -> Result<()> {
        let now = coarse_now();
        if now.saturating_sub(self.checked_at) >= LIVENESS_PROBE {
            link.check()?;
            self.checked_at = now;
        }
        Ok(())
    }

    /// Publishes a reservation and wakes the consumer if it sleeps.
    #[inline(always)]
    pub(super) fn commit(&mut self, r: Reservation, len: usize, kind: Kind, flags: u8, id: u64) {
        self.producer.commit(r, len, kind, flags, id);
        self.wake_consumer();
    }

    /// Sends `payload` as one record, or as several when it is larger than one can be.
    #[inline(always)]
    pub(super) fn send(
        &mut self,
        kind: Kind,
        id: u64,
        payload: &[u8],
        patience: Duration,
        link: &dyn Link,
    ) -> Result<()> {
        let max_record = self.producer.max_record();
        if payload.len() <= max_record {
            let r = self.reserve(payload.len(), patience, link, kind == Kind::Message)?;
            self.producer.write(&r, 0, payload);
            self.commit(r, payload.len(), kind, 0, id);
            return Ok(());
        }
        // Quarter-ring pieces keep both sides busy: one is written while another is read.
        let piece = max_record / 2;
        let mut chunks = payload.chunks(piece).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_some() { MORE } else { 0 };
            let r = self.reserve(chunk.len(), patience, link, kind == Kind::Message)?;
            self.producer.write(&r, 0, chunk);
            self.commit(r, chunk.len(), kind, flags, id);
        }
        Ok(())
    }
}

/// A message being put together from several records.
pub(crate) struct Partial {
    pub(crate) kind: Kind,
    pub(crate) id: u64,
    pub(crate) bytes: Vec<u8>,
}

/// A caller that reads the reply to its request `id` where it lies in the ring
/// ([`Client::request_with`](crate::Client::request_with)) rather than in a copy. `read`
/// is taken once it has been called, and what it returned kept.
///
/// Generic rather than a `dyn FnMut`: a reader known at compile time is inlined between
/// reading a reply and giving its space back, where a call costs a measurable share of a
/// round trip (docs/DESIGN.md, "lending").
pub(super) struct InPlace<F, R> {
    pub(super) id: u64,
    pub(super) read: Option<F>,
    pub(super) result: Option<R>,
}

/// The type of reader of a caller that wants its reply copied out.
pub(super) type CopyOut = fn(&[u8]);

impl InPlace<CopyOut, ()> {
    /// For a caller that wants the reply copied out.
    pub(super) fn copied() -> InPlace<CopyOut, ()> {
        InPlace {
            id: 0,
            read: None,
            result: None,
        }
    }
}

impl<F: FnOnce(&[u8]) -> R, R> InPlace<F, R> {
    /// What the reader returned: reading the reply in place, or, if the reply came copied
    /// after all (as a reply of several records does, or one read by another thread),
    /// reading `reply`.
    pub(super) fn into_result(self, reply: &[u8]) -> Option<R> {
        match (self.result, self.read) {
            (Some(result), _) => Some(result),
            (None, Some(read)) => Some(read(reply)),
            (None, None) => None,
        }
    }
}

/// Adds `record` to the message being assembled, checking it belongs there and that the
/// whole stays within `max`; the finished message once the last piece arrived.
#[inline(always)]
pub(crate) fn assemble(
    partial: &mut Option<Partial>,
    consumer: &Consumer,
    record: &spsc::Record,
    max: usize,
) -> std::result::Result<Option<Partial>, Corrupt> {
    if partial.is_none() && record.flags & MORE == 0 {
        // A whole message in one record, the common case: one exact allocation.
        if record.len > max {
            return Err(Corrupt(format!(
                "a message of {} bytes is over the limit of {max}",
                record.len
            )));
        }
        // Not vec![0; len]: that is calloc, which glibc serves without its thread cache.
        let mut bytes = Vec::with_capacity(record.len);
        consumer.append_to(record, &mut bytes);
        return Ok(Some(Partial {
            kind: record.kind,
            id: record.id,
            bytes,
        }));
    }
    let p = partial.get_or_insert_with(|| Partial {
        kind: record.kind,
        id: record.id,
        bytes: Vec::new(),
    });
    if p.kind != record.kind || p.id != record.id {
        return Err(Corrupt(format!(
            "a piece of {:?} {} arrived inside {:?} {}",
            record.kind, record.id, p.kind, p.id
        )));
    }
    if p.bytes.len() + record.len > max {
        return Err(Corrupt(format!(
            "a message grew past the limit of {max} bytes"
        )));
    }
    // The buffer grows with what actually arrived, never with what a peer claims.
    consumer.append_to(record, &mut p.bytes);
    Ok(if record.flags & MORE == 0 {
        partial.take()
    } else {
        None
    })
}
