//! A client's connection: a claimed slot in the server's segment, its request ring to
//! write and its reply ring to read. The reply ring carries the server's pushes too;
//! whoever reads it (a requester, or a thread in `recv` when no requester does) files
//! each push with the correlator, where `recv` takes it.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::halves::{CopyOut, InPlace, Partial, Sender, assemble};
use super::segment::{self, Header, Slot};
use super::{corrupt, name_of};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::sys::{OWNER_DIED, Process, lock};
use crate::transport::Connection;
use crate::transport::backend::ClientSide;
use crate::transport::correlate::{Correlator, NoAnswer};
use crate::transport::ring::Shared;
use crate::transport::ring::liveness::{LIVENESS_INTERVAL, Link};
use crate::transport::ring::spsc::{Area, Consumer, Corrupt, Kind, MORE, Reservation};
use crate::transport::ring::wait::{self, Spinner, Woke};

/// The client's reading half: replies.
pub(super) struct Replies {
    pub(super) consumer: Consumer,
    spinner: Spinner,
    pub(super) partial: Option<Partial>,
}

/// A client's connection: a claimed slot in the server's segment.
pub(crate) struct ShmConnection {
    pub(super) endpoint: Endpoint,
    pub(super) url: String,
    name: String,
    fd: OwnedFd,
    header: Shared<Header>,
    slot: Shared<Slot>,
    slot_index: usize,
    server: Process,
    pub(super) server_max: usize,
    own_max: usize,
    patience: Duration,
    pub(super) requests: Mutex<Sender>,
    pub(super) replies: Mutex<Replies>,
    pub(super) answers: Correlator<Partial>,
    pub(super) next_id: AtomicU64,
    in_flight: AtomicUsize,
}

impl ShmConnection {
    pub(crate) fn connect(endpoint: &Endpoint) -> Result<ShmConnection> {
        Self::connect_within(endpoint, endpoint.send_timeout())
    }

    /// Connects, waiting up to `patience` for a free slot while every one is taken.
    pub(super) fn connect_within(endpoint: &Endpoint, patience: Duration) -> Result<ShmConnection> {
        let url = endpoint.to_string();
        let name = name_of(endpoint).to_owned();
        let found = segment::find(&url, &name)?;
        let gone = |detail: &str| Error::NotFound {
            endpoint: url.clone(),
            detail: detail.to_owned(),
        };
        let server =
            Process::watch(found.server_pid).ok_or_else(|| gone("the server process is gone"))?;
        // The pid might have been reused between reading it and opening its pidfd; the
        // lock being still held after the open proves the holder is that process.
        if !segment::server_alive(&found.fd) {
            return Err(gone("the server process is gone"));
        }
        let header: Shared<Header> = found.header.get(0);
        let me = std::process::id();
        let claim = || {
            (0..found.geometry.slots).find(|&i| {
                let owner: &AtomicU32 = found.header.at(segment::OWNERS + 4 * i);
                owner
                    .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            })
        };
        // Every slot taken: one frees when a client leaves and the server has taken what
        // it sent, so wait for it as a send waits for room, up to `send_timeout_ms`.
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_micros(100);
        let slot_index = loop {
            if let Some(i) = claim() {
                break i;
            }
            if !segment::server_alive(&found.fd) {
                return Err(gone("the server process is gone"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Full {
                    endpoint: url.clone(),
                    detail: format!(
                        "all {} client slots of the server (its ?clients= option sets how many)",
                        found.geometry.slots
                    ),
                    after: patience,
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        let release_claim = || {
            let owner: &AtomicU32 = found.header.at(segment::OWNERS + 4 * slot_index);
            owner.store(0, Ordering::SeqCst);
        };
        let slot_map = match segment::map_slot(&found.fd, found.geometry, slot_index) {
            Ok(m) => m,
            Err(e) => {
                release_claim();
                return Err(Error::io(&url, "mapping a client slot", e));
            }
        };
        let slot: Shared<Slot> = slot_map.get(0);
        let own_max = endpoint.max_message();
        slot.client_max.store(own_max as u64, Ordering::Relaxed);
        let capacity = found.geometry.capacity;
        let area = |at| Area::new(slot_map.bytes(segment::ALIGN + at, capacity));
        // SAFETY: the slot is ours alone, so this is the one producer of its requests and
        // the one consumer of its replies: we claimed its owner word, and the server
        // emptied its rings before freeing it.
        let (requests, consumer) = unsafe {
            (
                Sender::new(
                    slot.project(|s| &s.requests),
                    area(0),
                    header.project(|h| &h.doorbell),
                    header.project(|h| &h.bell),
                ),
                Consumer::new(slot.project(|s| &s.replies), area(capacity)),
            )
        };
        slot.state.store(segment::OPEN, Ordering::SeqCst);
        header.changes.fetch_add(1, Ordering::SeqCst);
        wait::wake(&header.doorbell, &header.bell);
        Ok(ShmConnection {
            endpoint: endpoint.clone(),
            answers: Correlator::new(&url),
            url,
            name,
            server_max: found.max_message,
            fd: found.fd,
            header,
            slot,
            slot_index,
            server,
            own_max,
            patience: endpoint.send_timeout(),
            requests: Mutex::new(requests),
            replies: Mutex::new(Replies {
                consumer,
                spinner: Spinner::default(),
                partial: None,
            }),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
        })
    }

    #[inline(always)]
    fn header(&self) -> &Header {
        &self.header
    }

    #[inline(always)]
    pub(super) fn slot(&self) -> &Slot {
        &self.slot
    }

    #[inline(always)]
    pub(super) fn check_size(&self, len: usize) -> Result<()> {
        if len > self.server_max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: len,
                max: self.server_max,
                limit: "the server's max_message".into(),
            });
        }
        Ok(())
    }

    #[inline(always)]
    fn send_kind(&self, kind: Kind, id: u64, payload: &[u8]) -> Result<()> {
        self.send_by(&mut lock(&self.requests), kind, id, payload)
    }

    /// Sends through `requests`, this connection's request ring, already locked.
    #[inline(always)]
    fn send_by(&self, requests: &mut Sender, kind: Kind, id: u64, payload: &[u8]) -> Result<()> {
        self.check_size(payload.len())?;
        self.closed()?;
        requests.send(kind, id, payload, self.patience, self)
    }

    /// Waits for the answer to request `id` while other requests are in flight: one
    /// thread at a time reads the reply ring and hands out what it reads.
    fn await_answer(&self, id: u64, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let answer = self
            .answers
            .await_answer(id, deadline, &self.replies, |replies, deadline| {
                self.read_for_others(replies, deadline, timeout)
            });
        match answer {
            Ok(answer) => self.outcome(answer),
            Err(NoAnswer::Broken(detail)) => Err(Error::Disconnected {
                endpoint: self.url.clone(),
                detail,
            }),
            Err(NoAnswer::TimedOut) => Err(Error::Timeout {
                endpoint: self.url.clone(),
                after: timeout,
            }),
        }
    }

    /// Reads the reply ring for the correlator: the next answer, for whichever request it
    /// is, or `None` having filed a push (or waited until `deadline` for nothing).
    fn read_for_others(
        &self,
        replies: &mut Replies,
        deadline: Instant,
        timeout: Duration,
    ) -> std::result::Result<Option<(u64, Partial)>, String> {
        match self.read_answer(
            replies,
            &mut Some(deadline),
            timeout,
            &mut InPlace::copied(),
        ) {
            Ok(Some(push)) if push.kind == Kind::Push => {
                self.answers.file_push(push);
                Ok(None)
            }
            Ok(answer) => Ok(answer.map(|a| (a.id, a))),
            Err(e) => Err(e.as_detail()),
        }
    }

    /// Hands what was read outside the correlator's wait to whom it is for: a push to
    /// `recv`, an answer to its request.
    #[cold]
    pub(super) fn file(&self, read: Partial) {
        if read.kind == Kind::Push {
            self.answers.file_push(read);
        } else {
            self.answers.deliver(read.id, read);
        }
    }

    /// The next message the server pushed, waiting until `deadline` (without end when
    /// `None`), reading the reply ring itself when no requester does.
    pub(super) fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        // Counted as in flight, so that a request made meanwhile takes the general path
        // and, when it ends, hands the reply ring back to this thread.
        let alone = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let pushed = match self.replies.try_lock() {
            // Nothing filed and nobody else reading: the next push is in the ring.
            Ok(mut replies) if alone && !self.answers.has_pushes() => {
                self.lone_push(&mut replies, deadline)
            }
            not_alone => {
                drop(not_alone);
                self.answers
                    .await_push(deadline, &self.replies, |replies, until| {
                        let timeout = until.saturating_duration_since(Instant::now());
                        self.read_for_others(replies, until, timeout)
                    })
                    .map(|push| push.map(|p| p.bytes))
                    .map_err(|detail| Error::Disconnected {
                        endpoint: self.url.clone(),
                        detail,
                    })
            }
        };
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) > 1 {
            self.answers.release_followers();
        }
        pushed
    }

    /// Waits for the next push holding the reply ring, as [`lone_answer`](Self::lone_answer)
    /// waits for a reply: answers read meanwhile (late ones, or to a request made since)
    /// go to their requests.
    #[inline(always)]
    fn lone_push(
        &self,
        replies: &mut Replies,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<u8>>> {
        // A wait without end is cut every so often: the ring's wait wants a deadline.
        const A_WHILE: Duration = Duration::from_secs(3600);
        let timeout = deadline.map_or(A_WHILE, |d| d.saturating_duration_since(Instant::now()));
        loop {
            let mut until = deadline;
            match self.read_answer(replies, &mut until, timeout, &mut InPlace::copied())? {
                Some(push) if push.kind == Kind::Push => return Ok(Some(push.bytes)),
                Some(answer) => self.file(answer),
                None if deadline.is_some() => return Ok(None),
                None => {}
            }
        }
    }

    /// Reads the next complete answer or push, waiting until `deadline` (set, from
    /// `timeout`, when the first spin runs out: a busy exchange never reads the clock) and
    /// checking that the server lives while it sleeps.
    #[inline(always)]
    fn read_answer<F: FnOnce(&[u8]) -> R, R>(
        &self,
        replies: &mut Replies,
        deadline: &mut Option<Instant>,
        timeout: Duration,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Option<Partial>> {
        let Replies {
            consumer,
            spinner,
            partial,
        } = replies;
        let slot = self.slot();
        loop {
            if let Some(done) = self.next_answer(consumer, partial, in_place)? {
                return Ok(Some(done));
            }
            let mut ready = || self.reply_or_closed(consumer);
            if spinner.spin(&mut ready) {
                if !consumer.has_data() {
                    self.check()?;
                }
                continue;
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + timeout);
            let woke = spinner.sleep(
                &slot.replies.consumer_sleeps,
                ready,
                Some((now + LIVENESS_INTERVAL).min(deadline)),
            );
            if !consumer.has_data() {
                self.check()?;
                if woke == Woke::TimedOut && Instant::now() >= deadline {
                    return Ok(None);
                }
            }
        }
    }

    /// Whether a waiter for replies has something to look at: a reply, or a connection
    /// the server closed (shared states only, no syscall).
    #[inline(always)]
    pub(super) fn reply_or_closed(&self, consumer: &Consumer) -> bool {
        consumer.has_data()
            || self.header().state.load(Ordering::Relaxed) != segment::LISTENING
            || matches!(
                self.slot().state.load(Ordering::Relaxed),
                segment::REFUSED | segment::DISCONNECTED
            )
    }

    /// The next complete answer or push already in the reply ring; `None` once the ring is
    /// empty.
    /// The reply `in_place` waits for, if it lies whole in one record, is handed to its
    /// reader before the record is released, and comes back without its bytes.
    #[inline(always)]
    pub(super) fn next_answer<F: FnOnce(&[u8]) -> R, R>(
        &self,
        consumer: &mut Consumer,
        partial: &mut Option<Partial>,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Option<Partial>> {
        while let Some(record) = consumer
            .peek()
            .map_err(|c| corrupt(&self.url, "server", c))?
        {
            if !matches!(record.kind, Kind::Reply | Kind::Refusal | Kind::Push) {
                return Err(corrupt(
                    &self.url,
                    "server",
                    Corrupt(format!("it sent a {:?} as a reply", record.kind)),
                ));
            }
            let done = match in_place.read.take() {
                Some(read)
                    if partial.is_none()
                        && record.flags & MORE == 0
                        && record.kind == Kind::Reply
                        && record.id == in_place.id
                        && record.len <= self.own_max =>
                {
                    in_place.result = Some(read(consumer.payload(&record)));
                    Some(Partial {
                        kind: Kind::Reply,
                        id: record.id,
                        bytes: Vec::new(),
                    })
                }
                not_now => {
                    in_place.read = not_now;
                    let done = assemble(partial, consumer, &record, self.own_max)
                        .map_err(|c| corrupt(&self.url, "server", c))?;
                    // A push answers no request: numbered, it could pass for an answer.
                    if record.kind == Kind::Push && record.id != 0 {
                        let c = Corrupt(format!("it sent a push numbered {}", record.id));
                        return Err(corrupt(&self.url, "server", c));
                    }
                    done
                }
            };
            consumer.release(record.end);
            wait::wake(&self.slot().replies.producer_sleeps, &self.header().bell);
            if done.is_some() {
                return Ok(done);
            }
        }
        Ok(None)
    }

    /// Waits for the answer to request `id` as the only requester in flight, holding the
    /// reply ring throughout: no waiter list, no condition variable.
    #[inline(always)]
    fn lone_answer<F: FnOnce(&[u8]) -> R, R>(
        &self,
        replies: &mut Replies,
        id: u64,
        timeout: Duration,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Vec<u8>> {
        let mut deadline = None;
        loop {
            match self.read_answer(replies, &mut deadline, timeout, in_place)? {
                // A push is numbered 0, which no request is.
                Some(answer) if answer.id == id => return self.outcome(answer),
                // A push, or the answer to another thread's request, which went out
                // meanwhile by the general path.
                Some(other) => self.file(other),
                None => {
                    return Err(Error::Timeout {
                        endpoint: self.url.clone(),
                        after: timeout,
                    });
                }
            }
        }
    }

    #[inline(always)]
    pub(super) fn outcome(&self, answer: Partial) -> Result<Vec<u8>> {
        match answer.kind {
            Kind::Reply => Ok(answer.bytes),
            _ => Err(Error::Remote {
                endpoint: self.url.clone(),
                reason: String::from_utf8_lossy(&answer.bytes).into_owned(),
            }),
        }
    }

    /// Why the connection cannot be used, judging by the shared states alone (no syscall).
    #[inline(always)]
    pub(super) fn closed(&self) -> Result<()> {
        let listening = self.header().state.load(Ordering::Acquire) == segment::LISTENING;
        let died = self.header().keeper.load(Ordering::Relaxed) & OWNER_DIED != 0;
        let slot = self.slot().state.load(Ordering::Acquire);
        // A slot reads FREE only once its page is lost: the client holds it open. LEFT is
        // this client's own, set as it drops.
        if listening && !died && matches!(slot, segment::OPEN | segment::ACCEPTED | segment::LEFT) {
            return Ok(());
        }
        // Asked after the states: touching a lost page is what marks the mapping.
        let detail = if self.header.truncated() || self.slot.truncated() {
            "another process shrank the shared-memory segment (truncate, or dd without conv=notrunc)"
        } else if died {
            segment::remove_abandoned(&self.name, &self.fd);
            "the server process died"
        } else if !listening {
            "the server stopped"
        } else if slot == segment::REFUSED {
            "the server dropped this connection for breaking the protocol; see its log"
        } else if slot == segment::DISCONNECTED {
            "the server disconnected this client (it did not keep up with the server's messages, or the server chose to); connect again"
        } else {
            return Ok(());
        };
        Err(Error::Disconnected {
            endpoint: self.url.clone(),
            detail: detail.into(),
        })
    }

    /// Why the connection cannot be used, if it cannot: [`closed`](Self::closed), or a
    /// server that died (one syscall).
    pub(super) fn trouble(&self) -> Result<()> {
        self.closed()?;
        if self.server.exited() {
            segment::remove_abandoned(&self.name, &self.fd);
            return Err(Error::Disconnected {
                endpoint: self.url.clone(),
                detail: "the server process died".into(),
            });
        }
        Ok(())
    }

    /// A new request's number, with the reader its reply goes to, if any.
    fn next_request<F, R>(&self, read: Option<F>) -> InPlace<F, R> {
        InPlace {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            read,
            result: None,
        }
    }

    /// Sends `payload` as a request and waits for its reply.
    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.request_by(|id| self.send_kind(Kind::Request, id, payload), timeout)
    }

    /// Sends `payload` as a request and hands its reply to `read`, in place when the
    /// reply lies whole in one record.
    #[inline(always)]
    pub(crate) fn request_in_place<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let publish = |id| self.send_kind(Kind::Request, id, payload);
        self.request_in_place_by(publish, timeout, read)
    }

    /// A request that `publish` puts in the ring, given its number; its reply.
    fn request_by(
        &self,
        publish: impl FnOnce(u64) -> Result<()>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.ask(publish, timeout, None::<CopyOut>)
            .map(|(reply, _)| reply)
    }

    /// A request that `publish` puts in the ring, given its number; what `read` returns
    /// for its reply.
    #[inline(always)]
    fn request_in_place_by<R>(
        &self,
        publish: impl FnOnce(u64) -> Result<()>,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let (_, result) = self.ask(publish, timeout, Some(read))?;
        Ok(result.expect("a reader given is called"))
    }

    /// Numbers a request, has `publish` put it in the ring, and waits for its answer. The
    /// answer goes to `read` if given (in place when it lies whole in one record); it is
    /// returned, empty if read in place, with what `read` returned.
    #[inline(always)]
    fn ask<F: FnOnce(&[u8]) -> R, R>(
        &self,
        publish: impl FnOnce(u64) -> Result<()>,
        timeout: Duration,
        read: Option<F>,
    ) -> Result<(Vec<u8>, Option<R>)> {
        let mut in_place = self.next_request(read);
        let id = in_place.id;
        let reply = self.exchange(|| publish(id), timeout, &mut in_place)?;
        let result = in_place.into_result(&reply);
        Ok((reply, result))
    }

    /// Publishes a request and waits for its answer: by the lone-requester path when
    /// no other request is in flight, else by the general one. The answer is read in
    /// place if `in_place` asks and the lone path finds it whole in one record; else it
    /// is returned.
    #[inline(always)]
    fn exchange<F: FnOnce(&[u8]) -> R, R>(
        &self,
        publish: impl FnOnce() -> Result<()>,
        timeout: Duration,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Vec<u8>> {
        let id = in_place.id;
        let alone = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let result = match self.replies.try_lock() {
            Ok(mut replies) if alone => {
                publish().and_then(|()| self.lone_answer(&mut replies, id, timeout, in_place))
            }
            not_alone => {
                drop(not_alone);
                self.answers.register(id);
                match publish() {
                    Ok(()) => self.await_answer(id, timeout),
                    Err(e) => {
                        self.answers.forget(id);
                        Err(e)
                    }
                }
            }
        };
        // Threads that joined meanwhile may wait for the reply ring this one held.
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) > 1 {
            self.answers.release_followers();
        }
        result
    }
}

/// A connection that one thread holds alone: both rings are locked once, when it is
/// taken, instead of on every call; see [`Client::exclusive`](crate::Client::exclusive).
pub(crate) struct ShmExclusive<'a> {
    connection: &'a ShmConnection,
    requests: MutexGuard<'a, Sender>,
    replies: MutexGuard<'a, Replies>,
}

impl ShmConnection {
    /// Holds both rings until the returned handle is dropped. The caller has the
    /// connection to itself (`Client::exclusive` takes `&mut`), so the locks are free.
    pub(crate) fn exclusive(&self) -> ShmExclusive<'_> {
        ShmExclusive {
            connection: self,
            requests: lock(&self.requests),
            replies: lock(&self.replies),
        }
    }
}

impl ShmExclusive<'_> {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.connection.endpoint
    }

    pub(crate) fn send(&mut self, payload: &[u8]) -> Result<()> {
        (self.connection).send_by(&mut self.requests, Kind::Message, 0, payload)
    }

    pub(crate) fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.ask(payload, timeout, None::<CopyOut>)
            .map(|(reply, _)| reply)
    }

    #[inline(always)]
    pub(crate) fn request_in_place<R>(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let (_, result) = self.ask(payload, timeout, Some(read))?;
        Ok(result.expect("a reader given is called"))
    }

    /// [`ShmConnection::ask`] as the lone requester, with the rings already in hand. No
    /// request but this one can be waiting (nobody else can ask while this is held), but
    /// the late reply to one that timed out, here or before, can be in the ring: it is
    /// passed over.
    #[inline(always)]
    fn ask<F: FnOnce(&[u8]) -> R, R>(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        read: Option<F>,
    ) -> Result<(Vec<u8>, Option<R>)> {
        let connection = self.connection;
        let mut in_place = connection.next_request(read);
        let id = in_place.id;
        connection.send_by(&mut self.requests, Kind::Request, id, payload)?;
        let reply = connection.lone_answer(&mut self.replies, id, timeout, &mut in_place)?;
        let result = in_place.into_result(&reply);
        Ok((reply, result))
    }
}

impl Link for ShmConnection {
    fn url(&self) -> &str {
        &self.url
    }

    fn check(&self) -> Result<()> {
        self.trouble()
    }
}

impl ClientSide for ShmConnection {
    #[inline(always)]
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.send_kind(Kind::Message, 0, payload)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        ShmConnection::request(self, payload, timeout)
    }

    #[inline(always)]
    fn request_with<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.request_in_place(payload, timeout, read)
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        ShmConnection::recv(self, deadline)
    }

    fn max_message(&self) -> usize {
        self.server_max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// For [`Transport::connect`](crate::transport::Transport::connect), which hands out any transport's connection as a trait
/// object; `ipckit::connect` calls the [`ClientSide`] methods directly.
impl Connection for ShmConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        ClientSide::send(self, payload)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        ClientSide::request(self, payload, timeout)
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        ClientSide::recv(self, deadline)
    }

    fn max_message(&self) -> usize {
        ClientSide::max_message(self)
    }

    fn endpoint(&self) -> &Endpoint {
        ClientSide::endpoint(self)
    }
}

impl ShmConnection {
    /// Space for `len` bytes in the request ring, or `None` when a message that large
    /// goes in pieces (and is copied).
    pub(crate) fn loan(&self, len: usize) -> Result<Option<ShmLoan<'_>>> {
        let mut requests = lock(&self.requests);
        if len > requests.producer.max_record() {
            // Too large for one record: it will go in pieces, copied.
            return Ok(None);
        }
        self.closed()?;
        // Whether the peer lives is checked when the loan is sent, if it is sent one way.
        let reservation = requests.reserve(len, self.patience, self, false)?;
        Ok(Some(ShmLoan {
            connection: self,
            requests,
            reservation,
        }))
    }
}

impl Drop for ShmConnection {
    fn drop(&mut self) {
        // The server frees the slot once it has taken what is still in the ring.
        self.slot().state.store(segment::LEFT, Ordering::SeqCst);
        let header = self.header();
        header.changes.fetch_add(1, Ordering::SeqCst);
        wait::wake(&header.doorbell, &header.bell);
        log::debug!("{}: left slot {}", self.url, self.slot_index);
    }
}

/// Space in a client's request ring, written in place and published by `send` or
/// `request`; see [`Client::loan`](crate::Client::loan).
pub(crate) struct ShmLoan<'a> {
    connection: &'a ShmConnection,
    requests: MutexGuard<'a, Sender>,
    reservation: Reservation,
}

impl ShmLoan<'_> {
    fn start(&self) -> *mut u8 {
        let r = &self.reservation;
        self.requests
            .producer
            .area()
            .range(r.payload_at(), r.capacity())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the reservation is space between the ring's tail and the consumer's
        // head, which nobody reads until the tail moves past it, and the guard keeps
        // every other writer out; the mapping outlives the borrow of the connection.
        unsafe { std::slice::from_raw_parts(self.start(), self.reservation.capacity()) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.start(), self.reservation.capacity()) }
    }

    pub(crate) fn send(mut self, len: usize) -> Result<()> {
        self.requests.probe(self.connection)?;
        self.requests
            .commit(self.reservation, len, Kind::Message, 0, 0);
        Ok(())
    }

    pub(crate) fn request(self, len: usize, timeout: Duration) -> Result<Vec<u8>> {
        let connection = self.connection;
        connection.request_by(self.publish_request(len), timeout)
    }

    #[inline(always)]
    pub(crate) fn request_in_place<R>(
        self,
        len: usize,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let connection = self.connection;
        connection.request_in_place_by(self.publish_request(len), timeout, read)
    }

    /// Publishes the loan's `len` bytes as request number `id`, when called.
    fn publish_request(mut self, len: usize) -> impl FnOnce(u64) -> Result<()> {
        move |id| {
            self.requests
                .commit(self.reservation, len, Kind::Request, 0, id);
            Ok(())
        }
    }
}
