//! The server side: the endpoint's one receiver, the sink of each requester's replies, and
//! the waker.

use super::wire::*;
use super::*;

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
    Ok(MqListener {
        url: endpoint.to_string().into(),
        reply_prefix: format!("{name}.r."),
        endpoint: endpoint.clone(),
        queue: Arc::new(queue),
        buf: vec![0; size],
        waker: Arc::new(waker),
        last_sink: None,
        anonymous: Arc::new(Peer::default()),
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
    /// Malformed, and logged: nothing to return.
    Dropped,
}

impl MqListener {
    /// Makes the `n` bytes just received into a message.
    pub(super) fn take(&mut self, n: usize) -> Received {
        let message = &self.buf[..n];
        if message == WAKE {
            self.waker.in_queue.fetch_sub(1, Ordering::AcqRel);
            return Received::Wake;
        }
        let (reply_name, payload) = match parse_request(message, &self.reply_prefix) {
            Ok(None) => (None, message),
            Ok(Some((name, payload))) => (Some(name.to_owned()), payload),
            Err(reason) => {
                log::warn!("{}: dropped a malformed request: {reason}", self.url);
                return Received::Dropped;
            }
        };
        let payload = payload.to_vec();
        let reply_to = reply_name.map(|name| ReplyTo::new(self.sink_for(&name), 0));
        let peer = self.anonymous.clone();
        Received::Message(Message::new(payload, peer, reply_to, self.url.clone()))
    }
}

impl Listener for MqListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        loop {
            if self.waker.stop.swap(false, Ordering::AcqRel) {
                return Ok(None);
            }
            let n = match self.receive(deadline)? {
                None => return Ok(None),
                Some(usize::MAX) => continue, // interrupted
                Some(n) => n,
            };
            match self.take(n) {
                Received::Message(message) => return Ok(Some(message)),
                Received::Wake => return Ok(None),
                Received::Dropped => {}
            }
        }
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
