//! The shm client and server driven by tokio: the same segment, rings, correlation,
//! limits and liveness checks as the blocking side, with another way to wait.
//!
//! A tokio worker must not block in a futex, nor spin: other tasks wait for it. So a
//! waiting future first re-polls itself: it wakes its own task and returns `Pending`, so
//! that the worker runs whatever else is ready and comes back to it, and looks again. A
//! busy peer's answer is seen on one of those passes, on the worker that asked, with no
//! syscall and no hand-off to another thread. That goes on for as long as recent waits
//! were that short (the blocking side's spin policy, measured in time rather than spin
//! iterations): [`MAX_SPIN`] while the peer keeps up, almost nothing once it pauses.
//! Then the future sleeps on its bell (see `bell`): it puts [`BELL`] in its sleep
//! word, and the peer that publishes next rings the bell, a datagram the reactor turns
//! into a wake-up of this task. While asleep it still looks every
//! [`LIVENESS_INTERVAL`] whether the peer is alive.
//!
//! Cancellation: `recv` takes a message out of a ring only when it returns it. A dropped
//! `request` forgets its id (its answer, when it comes, is discarded) and leaves the reply
//! ring to the other requests. A dropped `send` of a message that goes in several pieces
//! has its remaining pieces sent by a task of its own, holding the connection's order, so
//! that the message arrives whole and nothing comes between its pieces.
//!
//! A reply waits in [`Message::reply`] only when the client's reply ring is full, as on
//! the blocking side.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex as OrderLock, OwnedMutexGuard};

use super::halves::InPlace;
use super::server::{lend_next, work_waiting};
use super::{LIVENESS_INTERVAL, ShmConnection, ShmListener, segment};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, MessageRef};
use crate::push::{Broadcaster, Event};
use crate::sys::lock;
use crate::transport::correlate::NoAnswer;
use crate::transport::ring::bell::Bell;
use crate::transport::ring::spsc::{Kind, MORE, announce_sleep};
use crate::transport::ring::wait::{self, BELL, MAX_SPIN, MIN_SPIN};
use crate::transport::{AsyncConnection, AsyncListener, BoxFuture};

thread_local! {
    /// Set by a waiter that re-polls itself: the poll that returned `Pending` will be
    /// followed by another at once, so no timer is needed yet (see [`within`]).
    static YIELDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One waiter's way to wait without blocking its worker.
struct Waiting {
    bell: Bell,
    /// How long to re-poll before sleeping: long while waits are short.
    budget: Duration,
    /// When the current wait began re-polling.
    since: Option<Instant>,
    /// When the peer is next checked for life while asleep.
    liveness: Pin<Box<tokio::time::Sleep>>,
    /// How many times a poll looks before yielding: a microsecond's worth.
    looks: u64,
}

impl Waiting {
    fn new(bell: Bell) -> Waiting {
        Waiting {
            bell,
            budget: MAX_SPIN,
            since: None,
            liveness: Box::pin(tokio::time::sleep(LIVENESS_INTERVAL)),
            looks: wait::iterations_per_micro().max(1),
        }
    }

    /// The wait ended: remember whether it was short.
    fn done(&mut self) {
        if let Some(since) = self.since.take() {
            self.budget = if since.elapsed() <= MAX_SPIN {
                MAX_SPIN
            } else {
                MIN_SPIN
            };
        }
    }

    /// Polls for `ready()`: re-polling first, then asleep on `word` until the bell rings.
    /// Every [`LIVENESS_INTERVAL`] of sleep it asks `alive` and returns its answer, so
    /// that the caller looks around too: `Ready(Ok)` does not promise `ready()`.
    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        word: &AtomicU32,
        mut ready: impl FnMut() -> bool,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Poll<Result<()>> {
        loop {
            if ready() {
                self.done();
                return Poll::Ready(Ok(()));
            }
            // Looks for up to a microsecond before anything else, the clock included:
            // about what a pass through the scheduler costs (it polls the reactor, a
            // syscall), so that a busy peer's answer is seen here, not a pass later.
            for _ in 0..self.looks {
                std::hint::spin_loop();
                if ready() {
                    self.done();
                    return Poll::Ready(Ok(()));
                }
            }
            let since = *self.since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.budget {
                YIELDED.set(true);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            announce_sleep(word, BELL);
            if ready() {
                word.store(0, Ordering::Relaxed);
                continue;
            }
            if self.liveness.as_mut().poll(cx).is_ready() {
                let next = tokio::time::Instant::now() + LIVENESS_INTERVAL;
                self.liveness.as_mut().reset(next);
                word.store(0, Ordering::Relaxed);
                self.done();
                // Ready either way: the caller looks again at everything it waits for.
                return Poll::Ready(alive());
            }
            match self.bell.poll_rung(cx) {
                // The waker set the word back to 0 before it rang.
                Poll::Ready(_) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

struct Shared {
    connection: ShmConnection,
    /// The largest record the request ring takes: larger messages go in pieces.
    max_record: usize,
    /// Held for a whole message, so that no other message comes between its pieces.
    order: Arc<OrderLock<()>>,
    /// Waiting for room in the request ring.
    room: std::sync::Mutex<Waiting>,
    /// Waiting for replies, by whoever reads the reply ring.
    answers: std::sync::Mutex<Waiting>,
}

pub(in crate::transport) struct AsyncShmConnection {
    shared: Arc<Shared>,
}

impl AsyncShmConnection {
    /// Connects, waiting up to `patience` for a free slot while every one is taken.
    pub(in crate::transport) fn connect(
        endpoint: &Endpoint,
        patience: Duration,
    ) -> Result<AsyncShmConnection> {
        let url = endpoint.to_string();
        let (room_bell, answers_bell) = (Bell::new(&url)?, Bell::new(&url)?);
        let connection = ShmConnection::connect_within(endpoint, patience)?;
        let max_record = lock(&connection.requests).producer.max_record();
        // Published before this side ever sleeps on a bell.
        let slot = connection.slot();
        slot.bell.store(answers_bell.nonce(), Ordering::Release);
        slot.room_bell.store(room_bell.nonce(), Ordering::Release);
        Ok(AsyncShmConnection {
            shared: Arc::new(Shared {
                max_record,
                connection,
                order: Arc::new(OrderLock::new(())),
                room: std::sync::Mutex::new(Waiting::new(room_bell)),
                answers: std::sync::Mutex::new(Waiting::new(answers_bell)),
            }),
        })
    }

    async fn send(&self, payload: &[u8]) -> Result<()> {
        publish(&self.shared, Kind::Message, 0, payload).await
    }

    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let shared = &*self.shared;
        let connection = &shared.connection;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        connection.answers.register(id);
        let _leave = Leave { shared, id };
        let exchange = async {
            publish(&self.shared, Kind::Request, id, payload).await?;
            // What broke the reply ring, when this future was the one reading it: its
            // own error, where the others waiting learn only that the connection broke.
            let mut failure = None;
            let answer = poll_fn(|cx| {
                connection
                    .answers
                    .poll_answer(id, cx, &connection.replies, |replies, cx| {
                        let mut waiting = lock(&shared.answers);
                        loop {
                            let next = connection.next_answer(
                                &mut replies.consumer,
                                &mut replies.partial,
                                &mut InPlace::copied(),
                            );
                            match next {
                                Ok(Some(push)) if push.kind == Kind::Push => {
                                    connection.answers.file_push(push);
                                    continue;
                                }
                                Ok(Some(answer)) => {
                                    waiting.done();
                                    return Poll::Ready(Ok((answer.id, answer)));
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    let detail = e.as_detail();
                                    failure = Some(e);
                                    return Poll::Ready(Err(detail));
                                }
                            }
                            let consumer = &replies.consumer;
                            let ready = || connection.reply_or_closed(consumer);
                            let word = &connection.slot().replies.consumer_sleeps;
                            match waiting.poll_ready(cx, word, ready, || connection.trouble()) {
                                Poll::Ready(Ok(())) => {
                                    if !replies.consumer.has_data() {
                                        if let Err(e) = connection.trouble() {
                                            return Poll::Ready(Err(e.as_detail()));
                                        }
                                    }
                                }
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.as_detail())),
                                Poll::Pending => return Poll::Pending,
                            }
                        }
                    })
            })
            .await;
            match answer {
                Ok(answer) => connection.outcome(answer),
                Err(NoAnswer::Broken(detail)) => Err(failure.unwrap_or(Error::Disconnected {
                    endpoint: connection.url.clone(),
                    detail,
                })),
                // The async wait has no deadline of its own: the timeout below ends it.
                Err(NoAnswer::TimedOut) => Err(Error::Timeout {
                    endpoint: connection.url.clone(),
                    after: timeout,
                }),
            }
        };
        within(timeout, exchange).await.unwrap_or_else(|| {
            Err(Error::Timeout {
                endpoint: connection.url.clone(),
                after: timeout,
            })
        })
    }
}

impl AsyncShmConnection {
    /// The next message the server pushed. Cancel-safe: a push leaves the books only in
    /// the poll that returns it; one read from the ring by this future stays filed.
    async fn recv(&self) -> Result<Vec<u8>> {
        let shared = &*self.shared;
        let connection = &shared.connection;
        let me = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let _leave = LeavePush { shared, me };
        let mut failure = None;
        let pushed = poll_fn(|cx| {
            connection
                .answers
                .poll_push(me, cx, &connection.replies, |replies, cx| {
                    let mut waiting = lock(&shared.answers);
                    loop {
                        let next = connection.next_answer(
                            &mut replies.consumer,
                            &mut replies.partial,
                            &mut InPlace::copied(),
                        );
                        match next {
                            Ok(Some(push)) if push.kind == Kind::Push => {
                                waiting.done();
                                connection.answers.file_push(push);
                                return Poll::Ready(Ok(None));
                            }
                            Ok(Some(answer)) => {
                                waiting.done();
                                return Poll::Ready(Ok(Some((answer.id, answer))));
                            }
                            Ok(None) => {}
                            Err(e) => {
                                let detail = e.as_detail();
                                failure = Some(e);
                                return Poll::Ready(Err(detail));
                            }
                        }
                        let consumer = &replies.consumer;
                        let ready = || connection.reply_or_closed(consumer);
                        let word = &connection.slot().replies.consumer_sleeps;
                        match waiting.poll_ready(cx, word, ready, || connection.trouble()) {
                            Poll::Ready(Ok(())) => {
                                if !replies.consumer.has_data() {
                                    if let Err(e) = connection.trouble() {
                                        return Poll::Ready(Err(e.as_detail()));
                                    }
                                }
                            }
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.as_detail())),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                })
        })
        .await;
        pushed.map(|push| push.bytes).map_err(|detail| {
            failure.unwrap_or(Error::Disconnected {
                endpoint: connection.url.clone(),
                detail,
            })
        })
    }
}

/// Takes a `recv` future out of the correlator's books when it ends, however it ends.
struct LeavePush<'a> {
    shared: &'a Shared,
    me: u64,
}

impl Drop for LeavePush<'_> {
    fn drop(&mut self) {
        self.shared.connection.answers.leave_push(self.me);
    }
}

/// `future`'s output, or `None` if it takes longer than `timeout`. Unlike tokio's
/// `timeout`, the timer is set only once the future waits to be woken, not while it
/// re-polls itself: a quick exchange never touches the timer wheel.
async fn within<F: Future>(timeout: Duration, future: F) -> Option<F::Output> {
    // Counted from the first wait: a future that is ready at once never reads the clock.
    let mut deadline = None;
    let mut future = std::pin::pin!(future);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        YIELDED.set(false);
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
        let timer = match &mut timer {
            Some(timer) => timer,
            None if YIELDED.get() && Instant::now() < deadline => return Poll::Pending,
            None => timer.insert(Box::pin(tokio::time::sleep_until(
                tokio::time::Instant::from_std(deadline),
            ))),
        };
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Takes a request out of the correlator's books when its future ends, however it ends.
struct Leave<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.shared.connection.answers.leave(self.id);
    }
}

/// Sends `payload` as one record, or in pieces, holding the connection's order.
async fn publish(shared: &Arc<Shared>, kind: Kind, id: u64, payload: &[u8]) -> Result<()> {
    let connection = &shared.connection;
    connection.check_size(payload.len())?;
    connection.closed()?;
    let order = match shared.order.clone().try_lock_owned() {
        Ok(order) => order,
        Err(_) => shared.order.clone().lock_owned().await,
    };
    let max_record = shared.max_record;
    if payload.len() <= max_record {
        return put(shared, kind, id, payload, 0).await;
    }
    // Quarter-ring pieces, as on the blocking side.
    let piece = max_record / 2;
    let mut rest = Rest {
        shared: shared.clone(),
        order: Some(order),
        kind,
        id,
        remaining: payload,
        piece,
    };
    while !rest.remaining.is_empty() {
        let take = rest.remaining.len().min(piece);
        let flags = if take < rest.remaining.len() { MORE } else { 0 };
        put(shared, kind, id, &rest.remaining[..take], flags).await?;
        rest.remaining = &rest.remaining[take..];
    }
    Ok(())
}

/// The pieces of a message not yet sent, finished by a task if the future that sends
/// them is dropped: a message cut short would make the server refuse the connection.
struct Rest<'a> {
    shared: Arc<Shared>,
    order: Option<OwnedMutexGuard<()>>,
    kind: Kind,
    id: u64,
    remaining: &'a [u8],
    piece: usize,
}

impl Drop for Rest<'_> {
    fn drop(&mut self) {
        if self.remaining.is_empty() {
            return;
        }
        let (Ok(runtime), Some(order)) = (tokio::runtime::Handle::try_current(), self.order.take())
        else {
            return;
        };
        let (shared, kind, id, piece) = (self.shared.clone(), self.kind, self.id, self.piece);
        let remaining = self.remaining.to_vec();
        runtime.spawn(async move {
            let _order = order;
            let mut chunks = remaining.chunks(piece).peekable();
            while let Some(chunk) = chunks.next() {
                let flags = if chunks.peek().is_some() { MORE } else { 0 };
                if let Err(e) = put(&shared, kind, id, chunk, flags).await {
                    log::warn!("finishing a dropped send: {e}");
                    return;
                }
            }
        });
    }
}

/// Publishes one record, waiting for room in the ring.
async fn put(shared: &Shared, kind: Kind, id: u64, bytes: &[u8], flags: u8) -> Result<()> {
    let connection = &shared.connection;
    let probe = kind == Kind::Message;
    loop {
        {
            let mut sender = lock(&connection.requests);
            if let Some(r) = sender.try_reserve(bytes.len(), connection, probe)? {
                sender.producer.write(&r, 0, bytes);
                sender.commit(r, bytes.len(), kind, flags, id);
                return Ok(());
            }
        }
        let word = &connection.slot().requests.producer_sleeps;
        poll_fn(|cx| {
            let mut waiting = lock(&shared.room);
            let room = || {
                let mut sender = lock(&connection.requests);
                !matches!(sender.producer.try_reserve(bytes.len()), Ok(None))
            };
            waiting.poll_ready(cx, word, room, || connection.trouble())
        })
        .await?;
        connection.trouble()?;
    }
}

crate::transport::sealed!(AsyncShmConnection, AsyncShmListener);

impl AsyncConnection for AsyncShmConnection {
    /// Dropped before it completes, the message arrives whole (a message in pieces is
    /// finished by a task) or not at all.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(AsyncShmConnection::send(self, payload))
    }

    /// Dropped at any point, the request is forgotten: its reply, if one comes, is
    /// discarded, and the connection stays usable.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(AsyncShmConnection::request(self, payload, timeout))
    }

    /// Dropped at any point, nothing is lost: a push read meanwhile waits for the next
    /// `recv`.
    fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(AsyncShmConnection::recv(self))
    }

    fn max_message(&self) -> usize {
        self.shared.connection.server_max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.shared.connection.endpoint
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

pub(in crate::transport) struct AsyncShmListener {
    server: ShmListener,
    /// Its liveness timer, every [`LIVENESS_INTERVAL`] of sleep, brings the server back
    /// to look at its clients and slots when nothing else does.
    waiting: Waiting,
}

impl AsyncShmListener {
    pub(in crate::transport) fn bind(endpoint: &Endpoint) -> Result<AsyncShmListener> {
        let bell = Bell::new(&endpoint.to_string())?;
        let server = ShmListener::bind(endpoint)?;
        server.header().bell.store(bell.nonce(), Ordering::Release);
        Ok(AsyncShmListener {
            server,
            waiting: Waiting::new(bell),
        })
    }

    /// Waits for `take` to take a message (handing it out, as a [`Message`] or lent).
    fn poll_take<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&mut ShmListener) -> Option<R>,
    ) -> Poll<Result<R>> {
        let AsyncShmListener { server, waiting } = self;
        loop {
            server.intact()?;
            let changes = server.header().changes.load(Ordering::Acquire);
            server.rounds = server.rounds.wrapping_add(1);
            // The clock only now and then, as on the blocking side.
            let due = server.rounds % 64 == 0 && Instant::now() >= server.next_check;
            if changes != server.changes_seen || due {
                server.housekeeping(changes);
            }
            if let Some(taken) = take(server) {
                waiting.done();
                return Poll::Ready(Ok(taken));
            }
            let header: &segment::Header = &server.header;
            let (clients, serving, woken) = (&server.clients, &server.serving, &server.woken);
            let seen = server.changes_seen;
            let work = || work_waiting(woken, header, seen, serving, clients);
            let mut look_around = || {
                server.rounds = 63; // housekeeping on the next pass, if it is due
                Ok(())
            };
            match waiting.poll_ready(cx, &header.doorbell, work, &mut look_around) {
                Poll::Ready(result) => result?,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncListener for AsyncShmListener {
    /// Cancel-safe: a message leaves its client's ring only when it is returned.
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        self.server.want_events(false);
        Box::pin(poll_fn(move |cx| self.poll_take(cx, ShmListener::poll)))
    }

    /// Cancel-safe as `recv`: an event leaves the server's books only when returned.
    fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
        self.server.want_events(true);
        Box::pin(poll_fn(move |cx| {
            self.poll_take(cx, ShmListener::poll_event)
        }))
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(self.server.broadcaster())
    }

    /// Cancel-safe too: a message is taken and lent within one poll.
    fn recv_with<'a>(
        &'a mut self,
        handle: &'a mut (dyn FnMut(&mut MessageRef<'_>) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        self.server.want_events(false);
        let mut handle = Some(handle);
        Box::pin(poll_fn(move |cx| {
            self.poll_take(cx, |server| {
                server.poll_with(|client, max, url| lend_next(client, max, url, &mut handle))
            })
        }))
    }

    fn endpoint(&self) -> &Endpoint {
        &self.server.endpoint
    }
}
