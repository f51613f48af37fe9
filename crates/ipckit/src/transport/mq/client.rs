//! The client side: the endpoint's queue to send into, and a pool of reply queues.

use super::wire::*;
use super::*;

/// A client of the endpoint's queue (created if missing). The queue blocks: a full one is
/// waited on in mq_timedsend (see [`send_by`]).
pub(super) fn client(endpoint: &Endpoint) -> Result<MqConnection> {
    let (max, limit) = max_message(endpoint);
    let queue = open_queue(
        endpoint,
        &queue_name(endpoint),
        MQ_OFlag::O_WRONLY,
        (limits().msg_max, max),
        mq_error,
    )?;
    // The queue may have been created before, with a smaller size.
    let max = max.min(msgsize(endpoint, &queue)?);
    Ok(MqConnection {
        endpoint: endpoint.clone(),
        url: endpoint.to_string(),
        queue: Arc::new(queue),
        max,
        limit,
        replies: Pool::new(),
        priority: endpoint.priority(),
        send_timeout: endpoint.send_timeout(),
    })
}

/// A client's queue for the replies to its requests, one request at a time; removed when
/// dropped. `Q` is the queue as the API drives it: blocking, or registered with tokio.
pub(super) struct ReplyQueue<Q = Queue> {
    pub(super) name: String,
    pub(super) queue: Q,
    pub(super) buf: Vec<u8>,
    /// The request being sent, kept to reuse its allocation.
    pub(super) request: Vec<u8>,
}

impl<Q> Drop for ReplyQueue<Q> {
    fn drop(&mut self) {
        let _ = nix::mqueue::mq_unlink(self.name.as_str());
    }
}

pub(super) struct MqConnection {
    pub(super) endpoint: Endpoint,
    pub(super) url: String,
    pub(super) queue: Arc<Queue>,
    pub(super) max: usize,
    pub(super) limit: String,
    pub(super) replies: Pool<ReplyQueue>,
    /// The endpoint's options, read once.
    pub(super) priority: u32,
    pub(super) send_timeout: Duration,
}

impl MqConnection {
    pub(super) fn too_large(&self, size: usize, max: usize) -> Error {
        Error::MessageTooLarge {
            endpoint: self.url.clone(),
            size,
            max,
            limit: self.limit.clone(),
        }
    }

    /// Refuses a one-way message the queue cannot take, or that would read as ipckit's own.
    pub(super) fn check_one_way(&self, payload: &[u8]) -> Result<()> {
        if payload.len() > self.max {
            return Err(self.too_large(payload.len(), self.max));
        }
        if payload.starts_with(REQUEST_MAGIC) || payload == WAKE {
            return Err(Error::Unsupported {
                endpoint: self.url.clone(),
                what: "a one-way message cannot start with the bytes that mark ipckit's own messages (\\0IPCK)".into(),
            });
        }
        Ok(())
    }

    /// The request for `payload`, naming `reply`'s queue, in the buffer `reply` keeps.
    pub(super) fn request_for<Q>(
        &self,
        reply: &mut ReplyQueue<Q>,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        let header = REQUEST_MAGIC.len() + 1 + reply.name.len();
        if header + payload.len() > self.max {
            return Err(self.too_large(payload.len(), self.max.saturating_sub(header)));
        }
        let mut request = std::mem::take(&mut reply.request);
        encode_request(&mut request, &reply.name, payload);
        Ok(request)
    }

    /// Sends into the endpoint's queue with its priority and send timeout.
    pub(super) fn put(&self, message: &[u8]) -> Result<()> {
        put(
            &self.endpoint,
            &self.queue,
            message,
            self.priority,
            self.send_timeout,
        )
    }

    /// A new reply queue, its queue made by `wrap` from the one just created.
    pub(super) fn new_reply_queue_with<Q>(
        &self,
        wrap: impl FnOnce(Queue) -> Result<Q>,
    ) -> Result<ReplyQueue<Q>> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}.r.{}.{}",
            queue_name(&self.endpoint),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let queue = open_queue(
            &self.endpoint,
            &name,
            MQ_OFlag::O_RDONLY | MQ_OFlag::O_EXCL,
            // A reply is its status byte and then up to `max` bytes of payload.
            (1, (self.max + 1).min(limits().msgsize_max)),
            mq_error,
        )?;
        let wrapped = msgsize(&self.endpoint, &queue).and_then(|size| Ok((size, wrap(queue)?)));
        let (size, queue) = match wrapped {
            Ok(wrapped) => wrapped,
            Err(e) => {
                let _ = nix::mqueue::mq_unlink(name.as_str());
                return Err(e);
            }
        };
        Ok(ReplyQueue {
            name,
            queue,
            buf: vec![0; size],
            request: Vec::new(),
        })
    }

    pub(super) fn new_reply_queue(&self) -> Result<ReplyQueue> {
        self.new_reply_queue_with(Ok)
    }

    pub(super) fn exchange(
        &self,
        reply: &mut ReplyQueue,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.put(request)?;
        let abstime = realtime_deadline(timeout);
        loop {
            let mut priority = 0;
            match nix::mqueue::mq_timedreceive(
                &reply.queue,
                &mut reply.buf,
                &mut priority,
                &abstime,
            ) {
                Ok(n) => return answer(&self.url, &reply.buf[..n]),
                Err(Errno::EINTR) => {}
                Err(Errno::ETIMEDOUT) => {
                    return Err(Error::Timeout {
                        endpoint: self.url.clone(),
                        after: timeout,
                    });
                }
                Err(e) => return Err(mq_error(&self.endpoint, "receiving the reply", e)),
            }
        }
    }
}

impl Connection for MqConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.check_one_way(payload)?;
        self.put(payload)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.replies.with(
            || self.new_reply_queue(),
            |reply| {
                let request = self.request_for(reply, payload)?;
                let answer = self.exchange(reply, &request, timeout);
                reply.request = request;
                answer
            },
        )
    }

    fn max_message(&self) -> usize {
        self.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}
