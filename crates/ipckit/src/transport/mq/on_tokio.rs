//! The same client and server driven by tokio: the queue descriptors they receive from
//! are non-blocking and registered with its reactor (Linux can poll a queue descriptor);
//! a send that must wait for room waits in the blocking pool. Requests, replies, limits
//! and reply queues are the blocking side's.
//!
//! Cancellation: a queue message is sent whole or not at all, so a dropped `send` leaves
//! nothing half-sent. One dropped while it waits for room is finished on its own, as a
//! stream's dropped send is: its message is queued whole if room comes before the send
//! timeout, and before any later message of the same client. A dropped `request` drops
//! (and removes) its reply queue, so a late reply cannot be taken for another request's.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::client::{REPLY_QUEUE_RETRY, ReplyQueue, SERVER_CHECK_INTERVAL};
use super::server::Received;
use super::wire::answer;
use super::*;
use crate::push::{Broadcaster, Event};
use crate::transport::reactor::{self, register};
use crate::transport::{AsyncConnection, AsyncListener, BoxFuture};

/// The queue's error for a failed call, from the errno tokio's wrapper carried.
fn errno_error(endpoint: &Endpoint, op: &'static str, e: io::Error) -> Error {
    mq_error(endpoint, op, Errno::from_raw(e.raw_os_error().unwrap_or(0)))
}

fn nonblocking(endpoint: &Endpoint, queue: &MqdT) -> Result<()> {
    nix::mqueue::mq_set_nonblock(queue)
        .map(|_| ())
        .map_err(|e| mq_error(endpoint, "making the queue non-blocking", e))
}

pub(super) struct AsyncMqConnection {
    client: MqConnection,
    replies: Pool<ReplyQueue<AsyncFd<Queue>>>,
    /// Held by the send that waits for room, until its message is queued or its
    /// deadline passes, even when its future was dropped: the next send waits its
    /// turn, so that this client's messages stay in the order it sent them.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// The inbound queue, non-blocking, for `recv`.
    inbound: Option<AsyncFd<Queue>>,
}

impl AsyncMqConnection {
    pub(super) fn new(client: MqConnection) -> Result<AsyncMqConnection> {
        let inbound = match &client.inbound {
            Ok(inbound) => {
                let queue = inbound.reopen_nonblocking(&client.endpoint)?;
                Some(register(&client.url, queue, Interest::READABLE)?)
            }
            Err(_) => None,
        };
        Ok(AsyncMqConnection {
            client,
            replies: Pool::new(),
            turn: Default::default(),
            inbound,
        })
    }

    /// The next message the server pushed. Cancel-safe: a message is taken from the
    /// inbound queue only by the poll that returns it.
    async fn recv(&self) -> Result<Vec<u8>> {
        let (endpoint, inbound) = (&self.client.endpoint, self.client.inbound()?);
        let queue = self
            .inbound
            .as_ref()
            .expect("opened with the inbound queue");
        let mut gone = inbound.closed();
        loop {
            self.client.announce()?;
            // Each piece is received and put with the others under the lock, in one poll:
            // a future dropped between pieces leaves them for the next receiver.
            let receive_one = |queue: &AsyncFd<Queue>| {
                let mut assembly = crate::sys::lock(&inbound.assembly);
                let n = nix::mqueue::mq_receive(queue.get_ref(), &mut assembly.buf, &mut 0)?;
                Ok(inbound.take(endpoint, &mut assembly, n))
            };
            if gone {
                // Only what the server pushed before it went is left to take.
                return match receive_one(queue) {
                    Ok(Some(pushed)) => pushed,
                    Ok(None) => continue,
                    Err(Errno::EAGAIN) => Err(inbound.gone(endpoint)),
                    Err(e) => Err(mq_error(endpoint, "receiving a pushed message", e)),
                };
            }
            let received = reactor::when_ready(queue, Interest::READABLE, |queue| {
                receive_one(queue).map_err(io::Error::from)
            });
            // Now and then, to look whether the server is still there.
            match tokio::time::timeout(SERVER_CHECK_INTERVAL, received).await {
                Ok(Ok(Some(pushed))) => return pushed,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(errno_error(endpoint, "receiving a pushed message", e)),
                Err(_) => gone = inbound.server_gone(endpoint),
            }
        }
    }

    /// Sends into the endpoint's queue, waiting for room up to the send timeout.
    ///
    /// A queue with room takes the message at once, on the runtime. A full one is
    /// waited on as the blocking side does, in the kernel's line of senders (see
    /// [`send_by`]), on a thread of tokio's blocking pool: a runtime's reactor can
    /// only poll, which wakes every waiting sender at each receive.
    async fn put(&self, message: &[u8]) -> Result<()> {
        let client = &self.client;
        let patience = client.send_timeout;
        let full = || queue_full(&client.endpoint, &client.queue, patience);
        // The time spent waiting for this client's earlier send counts against this
        // one's timeout too.
        let (turn, deadline) = match self.turn.clone().try_lock_owned() {
            Ok(turn) => (turn, None),
            Err(_) => {
                let deadline = realtime_deadline(patience);
                let turn = tokio::time::timeout(patience, self.turn.clone().lock_owned())
                    .await
                    .map_err(|_| full())?;
                (turn, Some(deadline))
            }
        };
        if send_by(
            &client.endpoint,
            &client.queue,
            message,
            client.priority,
            &NOW_OR_NEVER,
        )? {
            return Ok(());
        }
        let deadline = deadline.unwrap_or_else(|| realtime_deadline(patience));
        let (endpoint, queue, message, priority) = (
            client.endpoint.clone(),
            client.queue.clone(),
            message.to_vec(),
            client.priority,
        );
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            match send_by(&endpoint, &queue, &message, priority, &deadline)? {
                true => Ok(()),
                false => Err(queue_full(&endpoint, &queue, patience)),
            }
        })
        .await
        .map_err(|e| Error::io(&client.endpoint, "sending", io::Error::other(e)))?
    }

    async fn send(&self, payload: &[u8]) -> Result<()> {
        let mut message = None;
        self.client.one_way(payload, |m| {
            message = Some(m.to_vec());
            Ok(())
        })?;
        self.put(&message.expect("set by one_way")).await
    }

    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let client = &self.client;
        client.announced.store(true, Ordering::Release);
        let mut kept = None;
        let exchange = async {
            let reply = kept.insert(self.reply_queue(timeout).await?);
            let request = client.request_for(reply, payload)?;
            self.put(&request).await?;
            reply.request = request;
            let buf = &mut reply.buf;
            let received = reactor::when_ready(&reply.queue, Interest::READABLE, |queue| {
                Ok(nix::mqueue::mq_receive(queue.get_ref(), buf, &mut 0)?)
            });
            match received.await {
                Ok(n) => answer(&client.url, &reply.buf[..n]),
                Err(e) => Err(errno_error(&client.endpoint, "receiving the reply", e)),
            }
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                endpoint: client.url.clone(),
                after: timeout,
            })??;
        self.replies.give_back(kept.expect("taken by the exchange"));
        Ok(answer)
    }

    /// A pooled reply queue, a new one, or, while there is no room for more, one of this
    /// client's given back (see [`MqConnection::new_reply_queue_with`]).
    async fn reply_queue(&self, timeout: Duration) -> Result<ReplyQueue<AsyncFd<Queue>>> {
        let client = &self.client;
        let since = Instant::now();
        loop {
            if let Some(pooled) = self.replies.pop() {
                return Ok(pooled);
            }
            let mut no_room = false;
            let made = client.new_reply_queue_with(
                |queue| {
                    nonblocking(&client.endpoint, &queue)?;
                    register(&client.url, queue, Interest::READABLE)
                },
                &mut no_room,
            );
            match made {
                Err(_) if client.may_wait(no_room, since, since + timeout) => {
                    tokio::time::sleep(REPLY_QUEUE_RETRY).await
                }
                made => return made,
            }
        }
    }
}

crate::transport::sealed!(AsyncMqConnection, AsyncMqListener);

impl AsyncConnection for AsyncMqConnection {
    /// Dropped before it completes, the message is queued whole or not at all; one
    /// dropped while it waits for room may still be queued, until its send timeout.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(AsyncMqConnection::send(self, payload))
    }

    /// Dropped at any point, the request's reply queue is removed with it.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(AsyncMqConnection::request(self, payload, timeout))
    }

    /// Cancel-safe: a pushed message is taken only by the call that returns it.
    fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(AsyncMqConnection::recv(self))
    }

    fn max_message(&self) -> usize {
        self.client.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.client.endpoint
    }
}

/// The blocking server's queue and bookkeeping, read when tokio says it has messages.
pub(super) struct AsyncMqListener {
    server: MqListener,
    queue: AsyncFd<Arc<Queue>>,
}

impl AsyncMqListener {
    pub(super) fn new(server: MqListener) -> Result<AsyncMqListener> {
        let queue = register(&server.url, server.queue.clone(), Interest::READABLE)?;
        Ok(AsyncMqListener { server, queue })
    }
}

impl AsyncMqListener {
    /// Receives from the queue once it has messages: a message, or `None` when what came
    /// waits in the server's events (or was nothing to return).
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>>> {
        let AsyncMqListener { server, queue } = self;
        loop {
            let received = reactor::poll_read(queue, cx, |queue| {
                Ok(nix::mqueue::mq_receive(
                    queue.get_ref(),
                    &mut server.buf,
                    &mut 0,
                )?)
            });
            match ready!(received) {
                Ok(n) => match server.take(n) {
                    Received::Message(message) => return Poll::Ready(Ok(Some(message))),
                    Received::Nothing if !server.events.is_empty() => return Poll::Ready(Ok(None)),
                    // A waker's message is the blocking side's business.
                    Received::Wake | Received::Nothing => {}
                },
                Err(e) => {
                    return Poll::Ready(Err(errno_error(&server.endpoint, "receiving", e)));
                }
            }
        }
    }

    /// The next message or client coming or going. Cancel-safe: what was taken from the
    /// queue is returned, or waits in the server's events.
    async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.server.pending_event() {
                return Ok(event);
            }
            let check = self.server.clients.next_check();
            let taken = poll_fn(|cx| self.poll_take(cx));
            let taken = match check {
                // Until it is time to look for clients that left without a word.
                Some(at) => match tokio::time::timeout_at(at.into(), taken).await {
                    Ok(taken) => taken,
                    Err(_) => continue,
                },
                None => taken.await,
            };
            if let Some(message) = taken? {
                return Ok(Event::Message(message));
            }
        }
    }
}

impl AsyncListener for AsyncMqListener {
    /// Cancel-safe: a message is taken from the queue only when it is returned.
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
        Listener::broadcaster(&self.server)
    }

    fn endpoint(&self) -> &Endpoint {
        &self.server.endpoint
    }
}
