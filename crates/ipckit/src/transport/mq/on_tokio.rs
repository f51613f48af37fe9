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
use std::task::{Poll, ready};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::client::ReplyQueue;
use super::server::Received;
use super::wire::answer;
use super::*;
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
}

impl AsyncMqConnection {
    pub(super) fn new(client: MqConnection) -> Result<AsyncMqConnection> {
        Ok(AsyncMqConnection {
            client,
            replies: Pool::new(),
            turn: Default::default(),
        })
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
        self.client.check_one_way(payload)?;
        self.put(payload).await
    }

    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let client = &self.client;
        let mut reply = self.replies.take(|| {
            client.new_reply_queue_with(|queue| {
                nonblocking(&client.endpoint, &queue)?;
                register(&client.url, queue, Interest::READABLE)
            })
        })?;
        let request = client.request_for(&mut reply, payload)?;
        let exchange = async {
            self.put(&request).await?;
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
        reply.request = request;
        self.replies.give_back(reply);
        Ok(answer)
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

impl AsyncListener for AsyncMqListener {
    /// Cancel-safe: a message is taken from the queue only when it is returned.
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        let AsyncMqListener { server, queue } = self;
        Box::pin(poll_fn(move |cx| {
            loop {
                let received = reactor::poll_read(queue, cx, |queue| {
                    Ok(nix::mqueue::mq_receive(
                        queue.get_ref(),
                        &mut server.buf,
                        &mut 0,
                    )?)
                });
                match ready!(received) {
                    // A waker's message is the blocking side's business.
                    Ok(n) => match server.take(n) {
                        Received::Message(message) => return Poll::Ready(Ok(message)),
                        Received::Wake | Received::Dropped => {}
                    },
                    Err(e) => {
                        return Poll::Ready(Err(errno_error(&server.endpoint, "receiving", e)));
                    }
                }
            }
        }))
    }

    fn endpoint(&self) -> &Endpoint {
        &self.server.endpoint
    }
}
