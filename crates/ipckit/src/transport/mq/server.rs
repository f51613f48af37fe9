//! The server side: the endpoint's one receiver, the sink of each requester's replies, and
//! the waker.

use std::collections::VecDeque;

use super::outbox::Clients;
use super::wire::*;
use super::*;
use crate::push::{Broadcaster, Event};

/// How long a reply may wait for room in a reply queue.
pub(super) const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint's one receiver.
pub(super) fn server(endpoint: &Endpoint) -> Result<MqListener> {
    let name = queue_name(endpoint);
    let lock = hold_receiver_lock(endpoint, &name)?;
    reclaim_reply_queues(&name);
    let (max, _) = max_message(endpoint);
    let queue = open_queue(
        endpoint,
        &name,
        MQ_OFlag::O_RDONLY | MQ_OFlag::O_NONBLOCK,
        (limits().msg_max, max),
        mq_listen_error,
    )?;
    let size = msgsize(endpoint, &queue)?;
    let waker = Waker {
        queue: open_queue(
            endpoint,
            &name,
            MQ_OFlag::O_WRONLY | MQ_OFlag::O_NONBLOCK,
            (limits().msg_max, max),
            mq_listen_error,
        )?,
        stop: AtomicBool::new(false),
        in_queue: Default::default(),
    };
    let anonymous = Arc::new(Peer::default());
    Ok(MqListener {
        url: endpoint.to_string().into(),
        reply_prefix: format!("{name}.r."),
        endpoint: endpoint.clone(),
        queue: Arc::new(queue),
        buf: vec![0; size],
        waker: Arc::new(waker),
        last_sink: None,
        clients: Clients::new(endpoint, format!("{name}.r."), anonymous.clone()),
        events: VecDeque::new(),
        anonymous,
        reclaim: Reclaim::new(),
        _lock: lock,
    })
}

pub(super) struct MqReplySink {
    pub(super) endpoint: Endpoint,
    pub(super) name: String,
    /// The reply queue once opened, for later replies through this sink. It is closed with
    /// the sink, when no request of that client is held and another client has asked: an
    /// open queue counts against its owner's RLIMIT_MSGQUEUE even once it is removed.
    pub(super) queue: OnceLock<Arc<(Queue, usize)>>,
}

impl MqReplySink {
    pub(super) fn reply_queue(&self) -> Result<Arc<(Queue, usize)>> {
        let open = || {
            // Never O_CREAT: a reply queue that is gone means its client is gone. Blocking,
            // as a client's: a full one is waited on in mq_timedsend.
            let queue = nix::mqueue::mq_open(
                self.name.as_str(),
                MQ_OFlag::O_WRONLY | MQ_OFlag::O_CLOEXEC,
                Mode::empty(),
                None,
            )
            .map(|queue| Queue(Some(queue)))
            .map_err(|e| Error::Disconnected {
                endpoint: self.endpoint.to_string(),
                detail: format!(
                    "opening the reply queue {}: {e}; the requester has gone",
                    self.name
                ),
            })?;
            let size = msgsize(&self.endpoint, &queue)?;
            Ok((queue, size))
        };
        open().map(Arc::new)
    }
}

impl ReplySink for MqReplySink {
    fn send_reply(&self, _id: u64, payload: &[u8], ok: bool) -> Result<()> {
        let queue = match self.queue.get() {
            Some(queue) => queue.clone(),
            None => {
                let queue = self.reply_queue()?;
                let _ = self.queue.set(queue.clone());
                queue
            }
        };
        let (queue, size) = (&queue.0, queue.1);
        let max = size.saturating_sub(1);
        let payload = match (ok, payload.len() > max) {
            (true, true) => {
                return Err(Error::MessageTooLarge {
                    endpoint: self.endpoint.to_string(),
                    size: payload.len(),
                    max,
                    limit: "the requester's reply queue".into(),
                });
            }
            (false, true) => &payload[..max],
            _ => payload,
        };
        let status = if ok { REPLY_OK } else { REPLY_REFUSED };
        // A small reply is assembled on the stack; a queue takes one contiguous buffer.
        let mut small = [0u8; 512];
        let mut large = Vec::new();
        let reply = if payload.len() < small.len() {
            small[0] = status;
            small[1..=payload.len()].copy_from_slice(payload);
            &small[..=payload.len()]
        } else {
            large.push(status);
            large.extend_from_slice(payload);
            &large[..]
        };
        put(&self.endpoint, queue, reply, 0, REPLY_SEND_TIMEOUT)
    }
}

/// How a blocked `recv` is ended: a [`WAKE`] message when the queue has room, a flag
/// when it has none (then the server is busy and sees the flag before it blocks again).
pub(super) struct Waker {
    pub(super) queue: Queue,
    pub(super) stop: AtomicBool,
    /// Wake messages sent and not yet taken; the listener removes them when dropped.
    pub(super) in_queue: std::sync::atomic::AtomicUsize,
}

pub(super) struct MqListener {
    pub(super) endpoint: Endpoint,
    pub(super) url: Arc<str>,
    /// Reply queues of this endpoint's clients start with this.
    pub(super) reply_prefix: String,
    pub(super) queue: Arc<Queue>,
    pub(super) buf: Vec<u8>,
    pub(super) waker: Arc<Waker>,
    /// The sink of the last request, reused while requests come from the same queue.
    pub(super) last_sink: Option<Arc<MqReplySink>>,
    /// A queue says nothing about senders: every message has this same nobody.
    pub(super) anonymous: Arc<Peer>,
    pub(super) reclaim: Reclaim,
    /// The clients known by their inbound queues, for pushing.
    pub(super) clients: Clients,
    /// What the last message meant, in order, when it was more than a message (a client
    /// arriving before its first message).
    pub(super) events: VecDeque<Event>,
    pub(super) _lock: OwnedFd,
}

impl MqListener {
    pub(super) fn sink_for(&mut self, name: &str) -> Arc<MqReplySink> {
        match &self.last_sink {
            Some(sink) if sink.name == name => sink.clone(),
            _ => {
                // A new client: those that crashed leave reply queues to remove.
                if self.reclaim.due() {
                    reclaim_reply_queues(&queue_name(&self.endpoint));
                }
                let sink = Arc::new(MqReplySink {
                    endpoint: self.endpoint.clone(),
                    name: name.to_owned(),
                    queue: Default::default(),
                });
                self.last_sink = Some(sink.clone());
                sink
            }
        }
    }

    /// One receive, waiting until `deadline`; `None` when it passed.
    ///
    /// The queue is non-blocking and the wait is `poll`: the kernel hands a message
    /// straight to a receiver blocked in `mq_receive`, so a receiver frozen and then
    /// killed there would take the next message with it. Polled, it takes nothing until
    /// it runs.
    pub(super) fn receive(&mut self, deadline: Option<Instant>) -> Result<Option<usize>> {
        loop {
            let mut priority = 0;
            match nix::mqueue::mq_receive(&self.queue, &mut self.buf, &mut priority) {
                Ok(n) => return Ok(Some(n)),
                Err(Errno::EINTR) => return Ok(Some(usize::MAX)),
                Err(Errno::EAGAIN) => {
                    let readable = wait_ready(self.queue.as_fd(), PollFlags::IN, deadline)
                        .map_err(|e| Error::io(&self.endpoint, "waiting for messages", e))?;
                    if !readable {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(mq_error(&self.endpoint, "receiving", e)),
            }
        }
    }
}

/// What a received queue message is to the server.
pub(super) enum Received {
    Message(Message),
    /// A waker's: `recv` returns.
    Wake,
    /// Nothing to return, or what there is waits in `events`.
    Nothing,
}

impl MqListener {
    /// Makes the `n` bytes just received into a message, or into the events they mean.
    pub(super) fn take(&mut self, n: usize) -> Received {
        let message = &self.buf[..n];
        let (payload, reply, client) = match classify(message, &self.reply_prefix) {
            Ok(Kind::Plain(payload)) => (payload, None, None),
            Ok(Kind::Request { reply, payload }) => {
                let client = inbound_of_reply(reply, &self.reply_prefix)
                    .and_then(|inbound| self.clients.of(inbound, &mut self.events));
                (payload, Some(reply), client)
            }
            Ok(Kind::From { inbound, payload }) => {
                let client = self.clients.of(inbound, &mut self.events);
                (payload, None, client)
            }
            Ok(Kind::Hello(inbound)) => {
                self.clients.of(inbound, &mut self.events);
                return Received::Nothing;
            }
            Ok(Kind::Bye(inbound)) => {
                self.clients.bye(inbound, &mut self.events);
                return Received::Nothing;
            }
            Ok(Kind::Wake) => {
                self.waker.in_queue.fetch_sub(1, Ordering::AcqRel);
                return Received::Wake;
            }
            Err(reason) => {
                log::warn!("{}: dropped a malformed message: {reason}", self.url);
                return Received::Nothing;
            }
        };
        let payload = payload.to_vec();
        let reply = reply.map(str::to_owned);
        let reply_to = reply.map(|name| ReplyTo::new(self.sink_for(&name), 0));
        let peer = self.anonymous.clone();
        let mut message = Message::new(payload, peer, reply_to, self.url.clone());
        if let Some(client) = client {
            message = message.with_client(client);
        }
        if self.events.is_empty() {
            Received::Message(message)
        } else {
            // After the client's `Connected`.
            self.events.push_back(Event::Message(message));
            Received::Nothing
        }
    }

    /// The next event already known: one the last message meant, or a client found gone.
    pub(super) fn pending_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            self.clients.check(&mut self.events);
        }
        self.events.pop_front()
    }

    /// The deadline of one wait: the caller's, or sooner when clients are to be looked at.
    pub(super) fn wait_until(&self, deadline: Option<Instant>) -> Option<Instant> {
        match (deadline, self.clients.next_check()) {
            (Some(deadline), Some(check)) => Some(deadline.min(check)),
            (deadline, check) => deadline.or(check),
        }
    }

    /// One wait for an event, until `deadline`.
    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.pending_event() {
                return Ok(Some(event));
            }
            if self.waker.stop.swap(false, Ordering::AcqRel) {
                return Ok(None);
            }
            let n = match self.receive(self.wait_until(deadline))? {
                None if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(None),
                None => continue,             // time to look at the clients
                Some(usize::MAX) => continue, // interrupted
                Some(n) => n,
            };
            match self.take(n) {
                Received::Message(message) => return Ok(Some(Event::Message(message))),
                Received::Wake => return Ok(None),
                Received::Nothing => {}
            }
        }
    }
}

impl Listener for MqListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        crate::transport::next_message(|| self.next_event(deadline))
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.next_event(deadline)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(
            self.clients.roster.clone(),
            max_message(&self.endpoint).0,
        ))
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let waker = self.waker.clone();
        Arc::new(
            move || match nix::mqueue::mq_send(&waker.queue, WAKE, WAKE_PRIORITY) {
                Ok(()) => {
                    waker.in_queue.fetch_add(1, Ordering::AcqRel);
                }
                Err(_) => waker.stop.store(true, Ordering::Release),
            },
        )
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for MqListener {
    fn drop(&mut self) {
        // The clients wait for pushes no one will send: each learns it at its next receive.
        self.clients.close_all();
        // The queue outlives the server: take back the wake messages nobody received, so
        // the next receiver does not find them. They have the highest priority, so they
        // are at the head of the queue.
        while self.waker.in_queue.load(Ordering::Acquire) > 0 {
            let mut priority = 0;
            match nix::mqueue::mq_timedreceive(
                &self.queue,
                &mut self.buf,
                &mut priority,
                &NOW_OR_NEVER,
            ) {
                Ok(_) => {
                    self.waker.in_queue.fetch_sub(1, Ordering::AcqRel);
                }
                Err(_) => break,
            }
        }
    }
}
