//! A server: the segment, and the clients in its slots, served round robin.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::halves::{Partial, Sender, assemble};
use super::name_of;
use super::segment::{self, Geometry, Header, Slot};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, MessageRef, Peer, ReplySink, ReplyTo};
use crate::push::{Broadcaster, ClientHandle, Event, Outbox, Roster};
use crate::sys::{DeathNotice, Process, lock};
use crate::transport::Listener;
use crate::transport::backend::{Payload, ReplyBackend, ServerSide};
use crate::transport::ring::liveness::{LIVENESS_INTERVAL, Link};
use crate::transport::ring::spsc::{
    self, Area, Consumer, Control, Corrupt, Kind, MORE, RECORD_ALIGN,
};
use crate::transport::ring::wait::{self, Spinner};
use crate::transport::ring::{Mapping, Shared};

/// Gives a client's request-ring space back as the server's messages are dropped, which
/// may happen out of order and on any thread.
pub(crate) struct Releases {
    state: Mutex<(u64, Vec<(u64, u64)>)>,
    control: Shared<Control>,
    /// The client's bell, for a client that waits for room through an async runtime.
    bell: Shared<AtomicU64>,
    /// The ring's data, where leased payloads lie.
    area: Area,
}

impl Releases {
    #[inline(always)]
    fn release(&self, start: u64, end: u64) {
        let mut state = lock(&self.state);
        let (head, done) = &mut *state;
        if start != *head {
            done.push((start, end));
            return;
        }
        *head = end;
        while let Some(at) = done.iter().position(|(s, _)| *s == *head) {
            *head = done.swap_remove(at).1;
        }
        self.control.release_to(*head);
        wait::wake(&self.control.producer_sleeps, &self.bell);
    }
}

/// A message's payload read in place from a client's ring; the space is given back when
/// it is dropped.
pub(crate) struct Lease {
    releases: Arc<Releases>,
    /// Where the payload lies in the ring's data.
    at: usize,
    len: usize,
    start: u64,
    end: u64,
}

impl Lease {
    pub(crate) fn bytes(&self) -> &[u8] {
        let area = &self.releases.area;
        // SAFETY: inside the area (`range` checks), which `releases` keeps mapped; a
        // published record the producer does not write again before this lease is dropped
        // and releases it (barring a misbehaving peer: see the module docs).
        unsafe { std::slice::from_raw_parts(area.range(self.at, self.len), self.len) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.releases.release(self.start, self.end);
    }
}

/// The way back to one client: its reply ring, which carries the replies and the server's
/// pushes. Replies come from whichever thread answers, pushes from any thread: the lock
/// on the sender makes them one producer at a time, a message in pieces included.
pub(crate) struct ReplyChannel {
    url: String,
    sender: Mutex<Sender>,
    /// Set, under the sender's lock, before the server frees the slot: a push that got
    /// this far must not write into a ring the next client will use.
    freed: AtomicBool,
    /// The room a push found missing, 0 while none did: the ring counts as full until
    /// the client has freed that much, for pushes of every size, so that a client that
    /// does not read is full, not full only for messages larger than what is left.
    congested: AtomicU64,
    client_max: usize,
    client: Option<Process>,
    slot: Shared<Slot>,
    header: Shared<Header>,
    patience: Duration,
}

impl Link for ReplyChannel {
    fn url(&self) -> &str {
        &self.url
    }

    fn check(&self) -> Result<()> {
        let (slot, header) = (&self.slot, &self.header);
        let state = slot.state.load(Ordering::Acquire);
        let detail = if header.state.load(Ordering::Acquire) != segment::LISTENING {
            "the server stopped"
        } else if state == segment::LEFT || self.client.as_ref().is_none_or(Process::exited) {
            "the client went away"
        } else if state == segment::REFUSED {
            "the connection was closed for breaking the protocol"
        } else if state == segment::DISCONNECTED {
            "the server disconnected the client"
        } else {
            return Ok(());
        };
        Err(Error::Disconnected {
            endpoint: self.url.clone(),
            detail: detail.into(),
        })
    }
}

impl ReplySink for ReplyChannel {
    #[inline(always)]
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        if payload.len() > self.client_max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: payload.len(),
                max: self.client_max,
                limit: "the client's max_message".into(),
            });
        }
        let kind = if ok { Kind::Reply } else { Kind::Refusal };
        lock(&self.sender).send(kind, id, payload, self.patience, self)
    }
}

impl ReplyChannel {
    /// The states that say the client cannot be pushed to, read from shared memory (no
    /// syscall): one that left, was refused or disconnected, or a server that stopped.
    #[inline(always)]
    fn closed(&self) -> Result<()> {
        let state = self.slot.state.load(Ordering::Acquire);
        if matches!(state, segment::OPEN | segment::ACCEPTED)
            && self.header.state.load(Ordering::Relaxed) == segment::LISTENING
        {
            return Ok(());
        }
        self.check()
    }

    /// Writes `payload` into the reply ring as a push, all of it or nothing: a message in
    /// pieces starts only once the ring has room for the whole (or is empty, for one
    /// larger than the ring), so that a full ring never leaves half a message in it.
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        if payload.len() > self.client_max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: payload.len(),
                max: self.client_max,
                limit: "the client's max_message".into(),
            });
        }
        let mut sender = lock(&self.sender);
        if self.freed.load(Ordering::Acquire) {
            return Err(self.gone());
        }
        self.closed()?;
        let pushed = self.push_by(&mut sender, payload, patience);
        if let Err(Error::Full { .. }) = pushed {
            let wanted =
                (payload.len().min(sender.producer.capacity() / 2) + 2 * RECORD_ALIGN) as u64;
            self.congested.fetch_max(wanted, Ordering::Relaxed);
        }
        pushed
    }

    #[inline(always)]
    fn push_by(&self, sender: &mut Sender, payload: &[u8], patience: Duration) -> Result<()> {
        let wanted = self.congested.load(Ordering::Relaxed);
        if wanted > 0 {
            if sender.producer.free() < wanted {
                if patience.is_zero() {
                    return Err(sender.full(self, patience));
                }
                sender.wait_until(patience, self, |p| Ok((p.free() >= wanted).then_some(())))?;
            }
            self.congested.store(0, Ordering::Relaxed);
        }
        let max_record = sender.producer.max_record();
        if payload.len() <= max_record {
            // A client that died is seen by the probe within LIVENESS_PROBE of pushing,
            // and at once while its ring stays full.
            let r = match sender.try_reserve(payload.len(), self, true)? {
                Some(r) => r,
                None if patience.is_zero() => return Err(sender.full(self, patience)),
                None => sender.wait_for_room(payload.len(), patience, self)?,
            };
            sender.producer.write(&r, 0, payload);
            sender.commit(r, payload.len(), Kind::Push, 0, 0);
            return Ok(());
        }
        // In quarter-ring pieces, as `Sender::send` cuts them; each costs its header and
        // padding, and the wrap at the end of the ring at most one piece more.
        let piece = max_record / 2;
        let capacity = sender.producer.capacity() as u64;
        let pieces = payload.len().div_ceil(piece);
        let whole = ((pieces + 1) * (piece + 2 * RECORD_ALIGN)) as u64;
        let want = whole.min(capacity);
        sender.probe(self)?;
        if sender.producer.free() < want {
            if patience.is_zero() {
                return Err(sender.full(self, patience));
            }
            sender.wait_until(patience, self, |p| Ok((p.free() >= want).then_some(())))?;
        }
        let mut chunks = payload.chunks(piece).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_some() { MORE } else { 0 };
            let r = match sender.reserve(chunk.len(), patience, self, false) {
                Ok(r) => r,
                Err(e) => {
                    // Larger than the ring, and the client stopped taking it halfway: what
                    // is in the ring cannot be finished, so the client cannot go on.
                    if matches!(e, Error::Full { .. }) {
                        self.disconnect();
                    }
                    return Err(e);
                }
            };
            sender.producer.write(&r, 0, chunk);
            sender.commit(r, chunk.len(), Kind::Push, flags, 0);
        }
        Ok(())
    }

    /// Closes the client's connection from the server's side: its calls fail with
    /// [`Error::Disconnected`], and the server stops reading what it sends. A client
    /// that left already is left alone.
    fn disconnect(&self) {
        let slot = &self.slot;
        for from in [segment::OPEN, segment::ACCEPTED] {
            let to = segment::DISCONNECTED;
            if slot
                .state
                .compare_exchange(from, to, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        wait::wake_all(&slot.replies.consumer_sleeps, &slot.bell);
        wait::wake_all(&slot.requests.producer_sleeps, &slot.room_bell);
        // The server's loop looks at the slot as it does when a client leaves.
        self.header.changes.fetch_add(1, Ordering::SeqCst);
        wait::wake(&self.header.doorbell, &self.header.bell);
    }

    fn gone(&self) -> Error {
        Error::Disconnected {
            endpoint: self.url.clone(),
            detail: "the client went away".into(),
        }
    }
}

/// A client's outbox: its reply ring. Held weakly, so that a handle kept by the
/// application keeps neither the slot nor its mapping once the client has gone.
struct ShmOutbox {
    channel: Weak<ReplyChannel>,
    url: Arc<str>,
}

impl Outbox for ShmOutbox {
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        match self.channel.upgrade() {
            Some(channel) => channel.push(payload, patience),
            None => Err(Error::Disconnected {
                endpoint: self.url.to_string(),
                detail: "the client went away".into(),
            }),
        }
    }

    fn disconnect(&self) {
        if let Some(channel) = self.channel.upgrade() {
            channel.disconnect();
        }
    }
}

/// A client the server serves.
pub(super) struct Client {
    pid: u32,
    process: Option<Process>,
    consumer: Consumer,
    partial: Option<Partial>,
    releases: Arc<Releases>,
    replies: Arc<ReplyChannel>,
    peer: Arc<Peer>,
    /// Its handle, which the server's pushes go through and its messages carry.
    handle: ClientHandle,
    /// Its departure was reported (or a push found it gone): nothing more to say of it.
    departed: bool,
    /// It left or died: take what it sent, then free the slot.
    leaving: bool,
    /// Dropped for breaking the protocol: nothing more is read.
    refused: bool,
}

/// A server: the segment, and the clients in its slots.
pub(crate) struct ShmListener {
    pub(super) endpoint: Endpoint,
    url: Arc<str>,
    /// The header page, with the owner table.
    map: Arc<Mapping>,
    pub(super) header: Shared<Header>,
    /// Each slot's pages, mapped while a client holds the slot: a server pays address
    /// space and memory for the clients it has, not for the ones it could take.
    slots: Vec<Option<Arc<Mapping>>>,
    _fd: OwnedFd,
    inode: u64,
    name: String,
    geometry: Geometry,
    max_message: usize,
    pub(super) clients: Vec<Option<Client>>,
    pub(super) serving: Vec<usize>,
    cursor: usize,
    pub(super) changes_seen: u32,
    pub(super) next_check: Instant,
    pub(super) rounds: u32,
    spinner: Spinner,
    pub(super) woken: Arc<AtomicBool>,
    /// The clients, for pushes and broadcasts from any thread.
    roster: Arc<Roster>,
    /// Clients come and gone, for `recv_event` to return before the next message.
    pub(super) events: VecDeque<Event>,
    /// Whether the events are kept: only while the server's loop asks for events, so
    /// that a loop that only receives messages keeps none.
    pub(super) events_wanted: bool,
    /// Marks the header's keeper word when this process dies, so that clients stop
    /// sending at once; dropped after `Drop` closed the segment.
    _death_notice: Option<DeathNotice>,
}

impl ShmListener {
    pub(crate) fn bind(endpoint: &Endpoint) -> Result<ShmListener> {
        let url = endpoint.to_string();
        let name = name_of(endpoint).to_owned();
        let geometry = Geometry {
            slots: endpoint.clients(),
            capacity: endpoint.ring(),
        };
        let max_message = endpoint.max_message();
        let created = segment::create(endpoint, &name, endpoint.mode(), geometry, max_message)?;
        let map = Arc::new(created.map);
        let header: Shared<Header> = map.get(0);
        // Without it, clients learn of a death by polling the server's pid, a little later.
        let death_notice = DeathNotice::hold(header.project(|h| &h.keeper))
            .inspect_err(|e| log::warn!("{url}: cannot hold a robust futex: {e}"))
            .ok();
        Ok(ShmListener {
            endpoint: endpoint.clone(),
            url: url.into(),
            header,
            map,
            slots: (0..geometry.slots).map(|_| None).collect(),
            _fd: created.fd,
            inode: created.inode,
            name,
            geometry,
            max_message,
            clients: (0..geometry.slots).map(|_| None).collect(),
            serving: Vec::new(),
            cursor: 0,
            changes_seen: 0,
            next_check: Instant::now() + LIVENESS_INTERVAL,
            rounds: 0,
            spinner: Spinner::default(),
            woken: Arc::new(AtomicBool::new(false)),
            roster: Roster::new(endpoint),
            events: VecDeque::new(),
            events_wanted: false,
            _death_notice: death_notice,
        })
    }

    pub(super) fn header(&self) -> &Header {
        &self.header
    }

    /// Slot `i`, whose pages are mapped while a client holds it.
    fn slot(&self, i: usize) -> &Slot {
        self.slots[i]
            .as_ref()
            .expect("a claimed slot is mapped")
            .at(0)
    }

    /// The state of slot `i`, whose pages are mapped now if they were not; `None` (logged)
    /// if they cannot be.
    fn slot_state(&mut self, i: usize) -> Option<u32> {
        if self.slots[i].is_none() {
            match segment::map_slot(&self._fd, self.geometry, i) {
                Ok(map) => self.slots[i] = Some(map),
                Err(e) => {
                    log::error!("{}: mapping slot {i}: {e}", self.url);
                    return None;
                }
            }
        }
        Some(self.slot(i).state.load(Ordering::Acquire))
    }

    fn owner(&self, i: usize) -> &AtomicU32 {
        self.map.at(segment::OWNERS + 4 * i)
    }

    /// Takes in clients that attached or left since the last look.
    fn rescan(&mut self) {
        for i in 0..self.geometry.slots {
            let owner = self.owner(i).load(Ordering::Acquire);
            if owner == 0 && self.clients[i].is_none() {
                continue;
            }
            let Some(state) = self.slot_state(i) else {
                continue;
            };
            match &mut self.clients[i] {
                Some(client) if state == segment::LEFT => client.leaving = true,
                Some(client) if state == segment::DISCONNECTED && !client.refused => {
                    client.refused = true;
                    client.partial = None;
                }
                Some(_) => {}
                None if owner != 0 && matches!(state, segment::OPEN | segment::LEFT) => {
                    self.accept(i, owner, state == segment::LEFT);
                }
                None => {}
            }
        }
    }

    fn accept(&mut self, i: usize, owner: u32, left: bool) {
        let capacity = self.geometry.capacity;
        let map = self.slots[i]
            .clone()
            .expect("mapped when its claim was seen");
        let slot: Shared<Slot> = map.get(0);
        let _ = slot.state.compare_exchange(
            segment::OPEN,
            segment::ACCEPTED,
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
        let client_max = (slot.client_max.load(Ordering::Acquire) as usize).max(1);
        let process = Process::watch(owner);
        let leaving = left || process.is_none();
        let area = |at| Area::new(map.bytes(segment::ALIGN + at, capacity));
        // SAFETY: one consumer of the client's requests, this server; one producer of its
        // replies, the channel's sender.
        let (consumer, sender) = unsafe {
            (
                Consumer::new(slot.project(|s| &s.requests), area(0)),
                Sender::new(
                    slot.project(|s| &s.replies),
                    area(capacity),
                    slot.project(|s| &s.replies.consumer_sleeps),
                    slot.project(|s| &s.bell),
                ),
            )
        };
        let releases = Arc::new(Releases {
            state: Mutex::new((consumer.position(), Vec::new())),
            control: slot.project(|s| &s.requests),
            bell: slot.project(|s| &s.room_bell),
            area: area(0),
        });
        let replies = Arc::new(ReplyChannel {
            url: self.url.to_string(),
            sender: Mutex::new(sender),
            freed: AtomicBool::new(false),
            congested: AtomicU64::new(0),
            client_max,
            client: process.as_ref().map(Process::try_clone),
            slot,
            header: self.header.clone(),
            patience: self.endpoint.send_timeout(),
        });
        log::debug!("{}: client pid {owner} attached in slot {i}", self.url);
        let peer = Arc::new(Peer {
            pid: Some(owner),
            ..Peer::default()
        });
        let outbox = ShmOutbox {
            channel: Arc::downgrade(&replies),
            url: self.url.clone(),
        };
        let handle = self.roster.join(peer.clone(), Arc::new(outbox));
        if self.events_wanted {
            self.events.push_back(Event::Connected(handle.clone()));
        }
        self.clients[i] = Some(Client {
            pid: owner,
            process,
            consumer,
            partial: None,
            releases,
            replies,
            peer,
            handle,
            departed: false,
            leaving,
            refused: false,
        });
        self.serving.push(i);
    }

    /// Notices dead clients, frees slots whose clients are done, and slots claimed by a
    /// process that died before it attached.
    fn check_clients(&mut self) {
        for k in 0..self.serving.len() {
            let i = self.serving[k];
            let shrunk = self.slots[i].as_ref().is_some_and(|map| map.truncated());
            let client = self.clients[i].as_mut().expect("serving");
            if shrunk && !client.refused {
                self.refuse(i, "another process shrank the segment under its slot");
                continue;
            }
            if !client.leaving && client.process.as_ref().is_none_or(Process::exited) {
                log::debug!("{}: client pid {} died", self.url, client.pid);
                client.leaving = true;
            }
        }
        for i in 0..self.geometry.slots {
            let owner = self.owner(i).load(Ordering::Acquire);
            if self.clients[i].is_some() || owner == 0 {
                continue;
            }
            if self.slot_state(i) == Some(segment::FREE) && Process::watch(owner).is_none() {
                log::debug!(
                    "{}: slot {i} was claimed by pid {owner}, which died",
                    self.url
                );
                self.free_slot(i);
            }
        }
    }

    /// Frees the slots of clients that are gone once nothing of theirs is pending.
    fn free_finished(&mut self) {
        let mut k = 0;
        while k < self.serving.len() {
            let i = self.serving[k];
            let client = self.clients[i].as_mut().expect("serving");
            let drained = client.refused || !client.consumer.has_data();
            if (client.leaving || client.refused) && drained && !client.departed {
                // After its last message, and before its slot is freed (which waits for
                // the application to drop its messages): pushes fail from now on.
                client.departed = true;
                if self.roster.leave(&client.handle) && self.events_wanted {
                    self.events
                        .push_back(Event::Disconnected(client.handle.clone()));
                }
            }
            // Messages still held by the application point into the slot.
            let unheld =
                Arc::strong_count(&client.releases) == 1 && Arc::strong_count(&client.replies) == 1;
            // A push holding the reply ring finishes first; the slot is freed on a later
            // look, so that the server never waits for it.
            let quiet = || match client.replies.sender.try_lock() {
                Ok(_sender) => {
                    client.replies.freed.store(true, Ordering::Release);
                    true
                }
                Err(_) => false,
            };
            if client.leaving && drained && unheld && quiet() {
                if client.partial.is_some() {
                    log::warn!(
                        "{}: client pid {} went away in the middle of a message, which is discarded",
                        self.url,
                        client.pid
                    );
                }
                self.clients[i] = None;
                self.serving.swap_remove(k);
                self.free_slot(i);
            } else {
                k += 1;
            }
        }
    }

    fn free_slot(&mut self, i: usize) {
        if let Some(map) = self.slots[i].take() {
            let slot: &Slot = map.at(0);
            slot.requests.reset();
            slot.replies.reset();
            slot.client_max.store(0, Ordering::Relaxed);
            slot.state.store(segment::FREE, Ordering::Release);
        }
        // Give the ring pages back to the system; a slot's next client starts clean.
        let offset = self.geometry.slot_offset(i) + segment::ALIGN;
        let _ = rustix::fs::fallocate(
            &self._fd,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            offset as u64,
            2 * self.geometry.capacity as u64,
        );
        self.owner(i).store(0, Ordering::Release);
    }

    /// Err once another process shrank the segment under the header: nothing in it can
    /// be trusted or reached any more. Asked when a wait ends, which housekeeping ends
    /// as soon as it sees the mark (a shrunk header reads as changed).
    pub(super) fn intact(&self) -> Result<()> {
        if !self.map.truncated() {
            return Ok(());
        }
        Err(Error::Protocol {
            endpoint: self.url.to_string(),
            reason: format!(
                "another process shrank the segment /dev/shm/ipckit.{} (truncate, or dd without conv=notrunc): it cannot be served any more; restart the server",
                self.name
            ),
        })
    }

    pub(super) fn housekeeping(&mut self, changes: u32) {
        if self.map.truncated() {
            // Ends the wait, so that the receiving call returns what `intact` says.
            self.woken.store(true, Ordering::Relaxed);
            return;
        }
        self.changes_seen = changes;
        self.rescan();
        let now = Instant::now();
        if now >= self.next_check {
            self.check_clients();
            self.next_check = now + LIVENESS_INTERVAL;
        }
        self.free_finished();
    }

    /// The next message from any client, round robin; closes the connections of clients
    /// that break the protocol.
    #[inline(always)]
    pub(super) fn poll(&mut self) -> Option<Message> {
        self.poll_with(next_message)
    }

    /// The next message from any client, round robin, taken by `take` (which hands it
    /// out, as a [`Message`] or lent); closes the connections of clients that break the
    /// protocol.
    #[inline(always)]
    pub(super) fn poll_with<R>(
        &mut self,
        mut take: impl FnMut(&mut Client, usize, &Arc<str>) -> std::result::Result<Option<R>, Corrupt>,
    ) -> Option<R> {
        let n = self.serving.len();
        if self.cursor >= n {
            self.cursor = 0;
        }
        for k in 0..n {
            let at = if self.cursor + k >= n {
                self.cursor + k - n
            } else {
                self.cursor + k
            };
            let i = self.serving[at];
            let client = self.clients[i].as_mut().expect("serving");
            if client.refused {
                continue;
            }
            match take(client, self.max_message, &self.url) {
                Ok(Some(taken)) => {
                    self.cursor = if at + 1 == n { 0 } else { at + 1 };
                    return Some(taken);
                }
                Ok(None) => {}
                Err(c) => self.refuse(i, &format!("it broke the shared ring: {}", c.0)),
            }
        }
        None
    }

    /// Closes the connection of the client in slot `i`, for `why`: nothing more of it is
    /// read, and it is woken to learn so.
    fn refuse(&mut self, i: usize, why: &str) {
        let client = self.clients[i].as_mut().expect("a client in the slot");
        log::error!(
            "{}: closing the connection of client pid {} (slot {i}): {why}",
            self.url,
            client.pid
        );
        client.refused = true;
        client.partial = None;
        let slot = self.slot(i);
        slot.state.store(segment::REFUSED, Ordering::SeqCst);
        wait::wake_all(&slot.replies.consumer_sleeps, &slot.bell);
        wait::wake_all(&slot.requests.producer_sleeps, &slot.room_bell);
    }

    /// Waits until `deadline` for a message and lends it to `handle` (taken when called),
    /// returning what `handle` returned; `None` when the deadline passed or the waker was
    /// called. Generic, so that `handle` and the reply it writes are inlined between
    /// reading the request and giving its space back (see [`InPlace`](super::halves::InPlace) for why).
    #[inline(always)]
    pub(crate) fn recv_in_place<H: FnOnce(&mut MessageRef<'_>) -> R, R>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut Option<H>,
    ) -> Option<R> {
        self.wait_for(deadline, |listener| {
            listener
                .poll_with(|client, max, url| lend_next(client, max, url, handle))
                .map(ControlFlow::Break)
        })
    }

    /// Lends every message to `handle` until it breaks; what it broke with, or `None` once
    /// woken with `stopped` set. The loop never leaves [`wait_for`](Self::wait_for)
    /// between messages: returning from it and entering it again for each message, as a
    /// loop over `recv_in_place` does, costs a measurable share of a round trip
    /// (docs/DESIGN.md).
    #[inline(always)]
    pub(crate) fn serve_in_place<B>(
        &mut self,
        stopped: &AtomicBool,
        mut handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> Option<B> {
        loop {
            let served = self.wait_for(None, |listener| {
                listener.poll_with(|client, max, url| {
                    lend_next(client, max, url, &mut Some(&mut handle))
                })
            });
            if served.is_some() {
                return served;
            }
            if stopped.load(Ordering::Acquire) || self.map.truncated() {
                return None;
            }
        }
    }

    /// Waits until `deadline` while `poll` takes messages, looking after the clients
    /// meanwhile: `poll` returns `None` when there was nothing to take, `Continue` when it
    /// took one and wants more, `Break` when it is done. What it broke with; `None` when
    /// the deadline passed or the waker was called.
    #[inline(always)]
    fn wait_for<R>(
        &mut self,
        deadline: Option<Instant>,
        mut poll: impl FnMut(&mut ShmListener) -> Option<ControlFlow<R>>,
    ) -> Option<R> {
        loop {
            if self.woken.load(Ordering::Relaxed) && self.woken.swap(false, Ordering::AcqRel) {
                return None;
            }
            // Clients that attach, leave or die are looked at even while others keep the
            // server busy; the clock is read only every so often.
            self.rounds = self.rounds.wrapping_add(1);
            let changes = self.header().changes.load(Ordering::Acquire);
            if changes != self.changes_seen
                || (self.rounds % 64 == 0 && Instant::now() >= self.next_check)
            {
                self.housekeeping(changes);
            }
            // Spin first, polling: a busy client's next message is taken the moment it is
            // seen, and then not even the clock is read. (Spinning on a cheaper test and
            // polling afterwards costs 15 ns a message: measured.) A wake-up, or a client
            // that attached or left, ends the spin too, to be seen to at the top.
            let mut done = None;
            let mut take = |listener: &mut ShmListener| match poll(listener) {
                None => woken_or_changed(&listener.woken, listener.header(), listener.changes_seen),
                Some(ControlFlow::Continue(())) => true,
                Some(ControlFlow::Break(value)) => {
                    done = Some(value);
                    true
                }
            };
            let mut spinner = self.spinner;
            let busy = take(self) || spinner.spin(|| take(self));
            self.spinner = spinner;
            if let Some(value) = done {
                return Some(value);
            }
            if busy {
                continue;
            }
            let now = Instant::now();
            if now >= self.next_check {
                self.housekeeping(changes);
                continue;
            }
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            let until = deadline.map_or(self.next_check, |d| d.min(self.next_check));
            let header: &Header = &self.header;
            let (clients, serving, woken) = (&self.clients, &self.serving, &self.woken);
            let seen = self.changes_seen;
            self.spinner.sleep(
                &header.doorbell,
                || work_waiting(woken, header, seen, serving, clients),
                Some(until),
            );
        }
    }
}

/// Whether the server has something to do: a wake-up, a client that attached or left, or
/// a message.
#[inline(always)]
pub(super) fn work_waiting(
    woken: &AtomicBool,
    header: &Header,
    changes_seen: u32,
    serving: &[usize],
    clients: &[Option<Client>],
) -> bool {
    woken_or_changed(woken, header, changes_seen)
        || serving.iter().any(|&i| {
            clients[i]
                .as_ref()
                .is_some_and(|c| !c.refused && c.consumer.has_data())
        })
}

/// Whether the server was woken, or a client attached or left since `changes_seen`.
#[inline(always)]
pub(super) fn woken_or_changed(woken: &AtomicBool, header: &Header, changes_seen: u32) -> bool {
    woken.load(Ordering::Relaxed) || header.changes.load(Ordering::Relaxed) != changes_seen
}

/// A complete message from a client's ring.
pub(super) enum Whole {
    /// In one record, read where it lies.
    InRing(spsc::Record),
    /// Put together from several records.
    Assembled(Partial),
}

impl Whole {
    fn kind_and_id(&self) -> (Kind, u64) {
        match self {
            Whole::InRing(record) => (record.kind, record.id),
            Whole::Assembled(whole) => (whole.kind, whole.id),
        }
    }
}

/// The next complete message in a client's ring.
#[inline(always)]
pub(super) fn next_whole(
    client: &mut Client,
    max: usize,
) -> std::result::Result<Option<Whole>, Corrupt> {
    loop {
        let Some(record) = client.consumer.peek()? else {
            return Ok(None);
        };
        if !matches!(record.kind, Kind::Message | Kind::Request) {
            return Err(Corrupt(format!("it sent a {:?}", record.kind)));
        }
        if client.partial.is_none() && record.flags & MORE == 0 {
            if record.len > max {
                return Err(Corrupt(format!(
                    "a message of {} bytes is over the limit of {max}",
                    record.len
                )));
            }
            return Ok(Some(Whole::InRing(record)));
        }
        let done = assemble(&mut client.partial, &client.consumer, &record, max)?;
        client.releases.release(record.start, record.end);
        if let Some(whole) = done {
            return Ok(Some(Whole::Assembled(whole)));
        }
    }
}

/// The next complete message in a client's ring, as a [`Message`].
#[inline(always)]
pub(super) fn next_message(
    client: &mut Client,
    max: usize,
    url: &Arc<str>,
) -> std::result::Result<Option<Message>, Corrupt> {
    let Some(whole) = next_whole(client, max)? else {
        return Ok(None);
    };
    let (kind, id) = whole.kind_and_id();
    let payload = match whole {
        Whole::InRing(record) => Payload::Shm(Lease {
            releases: client.releases.clone(),
            at: record.payload_at,
            len: record.len,
            start: record.start,
            end: record.end,
        }),
        Whole::Assembled(whole) => Payload::Owned(whole.bytes),
    };
    let reply_to = (kind == Kind::Request).then(|| ReplyTo::new(client.replies.clone(), id));
    Ok(Some(
        // The handle says who sent it, in place of a peer of its own.
        Message::from_client(payload, client.handle.clone(), reply_to, url.clone()),
    ))
}

/// Lends the next complete message in a client's ring to `handle` (taking it), then
/// gives its space back; what `handle` returned, when there was a message.
#[inline(always)]
pub(super) fn lend_next<H: FnOnce(&mut MessageRef<'_>) -> R, R>(
    client: &mut Client,
    max: usize,
    url: &str,
    handle: &mut Option<H>,
) -> std::result::Result<Option<R>, Corrupt> {
    let record = match next_whole(client, max)? {
        None => return Ok(None),
        Some(Whole::InRing(record)) => record,
        Some(Whole::Assembled(whole)) => {
            let reply_to = (whole.kind == Kind::Request)
                .then(|| ReplyTo::to(ReplyBackend::Shm(&client.replies), whole.id));
            let handle = handle.take().expect("a message is lent to a handler once");
            return Ok(Some(handle(
                &mut MessageRef::new(&whole.bytes, false, &client.peer, reply_to, url)
                    .with_client(&client.handle),
            )));
        }
    };
    // In this order (the payload, then the way back, then the guard, then the handler):
    // measured in a loop serving one client, the order in which the older version built
    // them cost 30 ns a message.
    let payload = client.consumer.payload(&record);
    let reply_to = (record.kind == Kind::Request)
        .then(|| ReplyTo::to(ReplyBackend::Shm(&client.replies), record.id));
    // Given back even if the handler panics: the ring must not lose the space.
    let returned = Returned {
        releases: &client.releases,
        start: record.start,
        end: record.end,
    };
    let handle = handle.take().expect("a message is lent to a handler once");
    let result = handle(
        &mut MessageRef::new(payload, true, &client.peer, reply_to, url)
            .with_client(&client.handle),
    );
    drop(returned);
    Ok(Some(result))
}

/// Gives a lent record's space back when dropped.
pub(super) struct Returned<'a> {
    releases: &'a Releases,
    start: u64,
    end: u64,
}

impl Drop for Returned<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.releases.release(self.start, self.end);
    }
}

impl ShmListener {
    /// Keeps the events from now on, or stops keeping them (and drops those kept).
    #[inline(always)]
    pub(super) fn want_events(&mut self, wanted: bool) {
        if self.events_wanted != wanted {
            self.events_wanted = wanted;
            self.events.clear();
        }
    }

    /// The next event: a client come or gone, else a message.
    #[inline(always)]
    pub(super) fn poll_event(&mut self) -> Option<Event> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        self.poll().map(Event::Message)
    }

    pub(super) fn broadcaster(&self) -> Broadcaster {
        Broadcaster::new(self.roster.clone(), self.max_message)
    }
}

impl ServerSide for ShmListener {
    #[inline(always)]
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        self.want_events(false);
        let received = self.wait_for(deadline, |listener| listener.poll().map(ControlFlow::Break));
        self.intact()?;
        Ok(received)
    }

    #[inline(always)]
    fn recv_with<R, H: FnOnce(&mut MessageRef<'_>) -> R>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut Option<H>,
    ) -> Result<Option<R>> {
        self.want_events(false);
        let received = self.recv_in_place(deadline, handle);
        self.intact()?;
        Ok(received)
    }

    #[inline(always)]
    fn serve_with<B>(
        &mut self,
        stopped: &AtomicBool,
        handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> Result<Option<B>> {
        self.want_events(false);
        let served = self.serve_in_place(stopped, handle);
        self.intact()?;
        Ok(served)
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.want_events(true);
        let received = self.wait_for(deadline, |listener| {
            listener.poll_event().map(ControlFlow::Break)
        });
        self.intact()?;
        Ok(received)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(ShmListener::broadcaster(self))
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let woken = self.woken.clone();
        let header = self.header.clone();
        Arc::new(move || {
            woken.store(true, Ordering::SeqCst);
            wait::wake(&header.doorbell, &header.bell);
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// For [`Transport::listen`](crate::transport::Transport::listen), which hands out any transport's listener as a trait object;
/// `ipckit::listen` calls the [`ServerSide`] methods directly.
impl Listener for ShmListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        ServerSide::recv(self, deadline)
    }

    fn recv_with(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut dyn FnMut(&mut MessageRef<'_>),
    ) -> Result<bool> {
        let mut handle = Some(handle);
        Ok(ServerSide::recv_with(self, deadline, &mut handle)?.is_some())
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        ServerSide::recv_event(self, deadline)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        ServerSide::broadcaster(self)
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        ServerSide::waker(self)
    }

    fn endpoint(&self) -> &Endpoint {
        ServerSide::endpoint(self)
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        self.header().state.store(segment::CLOSED, Ordering::SeqCst);
        for map in self.slots.iter().flatten() {
            let slot: &Slot = map.at(0);
            wait::wake_all(&slot.replies.consumer_sleeps, &slot.bell);
            wait::wake_all(&slot.requests.producer_sleeps, &slot.room_bell);
        }
        let path = segment::path(&self.name);
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&path);
        }
    }
}
