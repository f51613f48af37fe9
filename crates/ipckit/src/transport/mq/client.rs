//! The client side: the endpoint's queue to send into, its inbound queue for what the
//! server pushes, and a pool of reply queues.

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
    // A client that cannot have its inbound queue (RLIMIT_MSGQUEUE) still sends and
    // requests, as before pushes were: only `recv` fails, saying why.
    let inbound = Inbound::create(endpoint, max).map_err(|e| {
        log::warn!("{e}; this client receives no pushes");
        e.to_string()
    });
    let client = MqConnection {
        endpoint: endpoint.clone(),
        url: endpoint.to_string(),
        queue: Arc::new(queue),
        max,
        limit,
        replies: Pool::new(),
        live_replies: Default::default(),
        priority: endpoint.priority(),
        send_timeout: endpoint.send_timeout(),
        announced: AtomicBool::new(false),
        inbound,
    };
    client.announce()?;
    Ok(client)
}

/// How often a client waiting for pushes looks whether the server it knew is still there.
pub(super) const SERVER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A client's inbound queue, for what the server pushes to it: made at connect, removed
/// when dropped (or, after a crash, by the next server of the endpoint).
pub(super) struct Inbound {
    /// `/NAME.r.PID.N`; the client's reply queues are named after it, `/NAME.r.PID.N.M`.
    pub(super) name: String,
    queue: Queue,
    /// The push being put together from its pieces, held by one receiver at a time.
    pub(super) assembly: Mutex<Assembly>,
    /// The server closed the way: its last message said so, or it is gone.
    closed: AtomicBool,
    /// A server was seen since connect, whose going away ends `recv`. (A queue is durable:
    /// a client of a queue no server reads yet waits for one.)
    pub(super) saw_server: AtomicBool,
    next_reply: AtomicU64,
}

impl Inbound {
    /// Creates the inbound queue for a client whose server takes messages up to `max`.
    fn create(endpoint: &Endpoint, max: usize) -> Result<Inbound> {
        let name = new_queue_name(endpoint);
        let (depth, pieces, size) = inbound_geometry(max);
        let flags = MQ_OFlag::O_RDONLY | MQ_OFlag::O_EXCL;
        let queue = match open_queue(endpoint, &name, flags, (depth, size), mq_error) {
            // The user's queues are near RLIMIT_MSGQUEUE: room for one push of any size
            // still works.
            Err(_) if pieces < depth => {
                open_queue(endpoint, &name, flags, (pieces, size), mq_error)?
            }
            other => other?,
        };
        let msgsize = match msgsize(endpoint, &queue) {
            Ok(size) => size,
            Err(e) => {
                let _ = nix::mqueue::mq_unlink(name.as_str());
                return Err(e);
            }
        };
        Ok(Inbound {
            name,
            queue,
            assembly: Mutex::new(Assembly {
                buf: vec![0; msgsize],
                partial: Vec::new(),
            }),
            closed: AtomicBool::new(false),
            saw_server: AtomicBool::new(false),
            next_reply: AtomicU64::new(0),
        })
    }

    /// The inbound queue opened again, non-blocking, for an async client to poll.
    #[cfg(feature = "tokio")]
    pub(super) fn reopen_nonblocking(&self, endpoint: &Endpoint) -> Result<Queue> {
        nix::mqueue::mq_open(
            self.name.as_str(),
            MQ_OFlag::O_RDONLY | MQ_OFlag::O_NONBLOCK | MQ_OFlag::O_CLOEXEC,
            Mode::empty(),
            None,
        )
        .map(|queue| Queue(Some(queue)))
        .map_err(|e| mq_error(endpoint, "opening the inbound queue", e))
    }

    /// Waits until `until` on CLOCK_REALTIME for the next push: its payload, `None` at the
    /// deadline, or `Disconnected` for the server's closing notice.
    fn receive(&self, endpoint: &Endpoint, until: &TimeSpec) -> Result<Option<Vec<u8>>> {
        let mut assembly = crate::sys::lock(&self.assembly);
        loop {
            let buf = &mut assembly.buf;
            let n = match nix::mqueue::mq_timedreceive(&self.queue, buf, &mut 0, until) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                // A push's pieces are written together: a deadline never falls among them.
                Err(Errno::ETIMEDOUT) => return Ok(None),
                Err(e) => return Err(mq_error(endpoint, "receiving a pushed message", e)),
            };
            if let Some(pushed) = self.take(endpoint, &mut assembly, n) {
                return pushed.map(Some);
            }
        }
    }

    /// Takes the `n` bytes just received into `assembly.buf`: a whole push, the server's
    /// closing notice, or (`None`) a piece of a push to put together with the next.
    pub(super) fn take(
        &self,
        endpoint: &Endpoint,
        assembly: &mut Assembly,
        n: usize,
    ) -> Option<Result<Vec<u8>>> {
        let Assembly { buf, partial } = assembly;
        match buf[..n].split_first() {
            Some((&PIECE_LAST, data)) => {
                self.saw_server.store(true, Ordering::Release);
                if partial.is_empty() {
                    return Some(Ok(data.to_vec()));
                }
                partial.extend_from_slice(data);
                Some(Ok(std::mem::take(partial)))
            }
            Some((&PIECE_MORE, data)) => {
                partial.extend_from_slice(data);
                None
            }
            Some((&CLOSED, [])) => {
                self.closed.store(true, Ordering::Release);
                Some(Err(self.gone(endpoint)))
            }
            _ => {
                log::warn!(
                    "{endpoint}: skipped a message in the inbound queue {} that the server did not push",
                    self.name
                );
                None
            }
        }
    }

    /// Whether the server closed the way to this client.
    pub(super) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the server this client knew has gone, looking (a few syscalls) if it was
    /// not told.
    pub(super) fn server_gone(&self, endpoint: &Endpoint) -> bool {
        if self.closed() {
            return true;
        }
        if self.saw_server.load(Ordering::Acquire) && !receiver_running(endpoint) {
            self.closed.store(true, Ordering::Release);
            return true;
        }
        false
    }

    pub(super) fn gone(&self, endpoint: &Endpoint) -> Error {
        Error::Disconnected {
            endpoint: endpoint.to_string(),
            detail: "the server has gone (connect again once one runs)".into(),
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        let _ = nix::mqueue::mq_unlink(self.name.as_str());
    }
}

/// A name for a new inbound or reply queue of this process, `/NAME.r.PID.N`.
fn new_queue_name(endpoint: &Endpoint) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.r.{}.{}",
        queue_name(endpoint),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A push being put together from its pieces, and the buffer each piece is received in.
pub(super) struct Assembly {
    pub(super) buf: Vec<u8>,
    pub(super) partial: Vec<u8>,
}

/// The largest piece of a push in a client's inbound queue, with its mark: small, so that
/// the queue holds several pushes for little of RLIMIT_MSGQUEUE, and large enough that
/// most pushes are one piece, and the default fs.mqueue.msgsize_max (8192 bytes) four.
const PIECE: usize = 2049;

/// A client's inbound queue for pushes of up to `max` bytes: how many messages it holds,
/// how many pieces the largest push takes, and its message size. It holds the largest
/// push, and more messages where 96 clients' queues still fit the user's
/// RLIMIT_MSGQUEUE, up to fs.mqueue.msg_max. A queue is charged its size whether it
/// holds anything or not, and some 96 bytes per message more: by default, the limit of
/// 819,200 bytes holds some 95 clients' queues of 4 messages of 2 KiB, or the endpoint's
/// queue (10 messages of 8 KiB) and 85.
fn inbound_geometry(max: usize) -> (usize, usize, usize) {
    let size = max.min(PIECE - 1) + 1;
    let msg_max = limits().msg_max.max(1);
    let pieces = max.div_ceil(size - 1).clamp(1, msg_max);
    let budget = rustix::process::getrlimit(rustix::process::Resource::Msgqueue)
        .current
        .map_or(usize::MAX, |bytes| bytes as usize / 96);
    let depth = (budget / (size + 96)).clamp(pieces, msg_max);
    (depth, pieces, size)
}

/// A client's queue for the replies to its requests, one request at a time; removed when
/// dropped. `Q` is the queue as the API drives it: blocking, or registered with tokio.
pub(super) struct ReplyQueue<Q = Queue> {
    pub(super) name: String,
    pub(super) queue: Q,
    pub(super) buf: Vec<u8>,
    /// The request being sent, kept to reuse its allocation.
    pub(super) request: Vec<u8>,
    /// Its client's count of reply queues, this one among them.
    live: Arc<AtomicUsize>,
}

impl<Q> Drop for ReplyQueue<Q> {
    fn drop(&mut self) {
        let _ = nix::mqueue::mq_unlink(self.name.as_str());
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a request that found no room for another reply queue looks for one of its
/// client's given back.
pub(super) const REPLY_QUEUE_RETRY: Duration = Duration::from_millis(2);

pub(super) struct MqConnection {
    pub(super) endpoint: Endpoint,
    pub(super) url: String,
    pub(super) queue: Arc<Queue>,
    pub(super) max: usize,
    pub(super) limit: String,
    pub(super) replies: Pool<ReplyQueue>,
    /// How many reply queues this client has, in use or pooled, through either API.
    pub(super) live_replies: Arc<AtomicUsize>,
    /// The endpoint's options, read once.
    pub(super) priority: u32,
    pub(super) send_timeout: Duration,
    /// The server may know this client (it sent a hello or a message): it says goodbye.
    pub(super) announced: AtomicBool,
    /// The queue the server pushes into, or why there is none.
    pub(super) inbound: std::result::Result<Inbound, String>,
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
        if payload.starts_with(OWN) {
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

    /// A new reply queue, its queue made by `wrap` from the one just created; `no_room`
    /// is set when the user or the process had no room for another queue
    /// (RLIMIT_MSGQUEUE, fs.mqueue.queues_max, descriptors): see [`Self::may_wait`].
    pub(super) fn new_reply_queue_with<Q>(
        &self,
        wrap: impl FnOnce(Queue) -> Result<Q>,
        no_room: &mut bool,
    ) -> Result<ReplyQueue<Q>> {
        // Named after the inbound queue, so that the server knows whose request it is.
        let name = match &self.inbound {
            Ok(inbound) => format!(
                "{}.{}",
                inbound.name,
                inbound.next_reply.fetch_add(1, Ordering::Relaxed)
            ),
            Err(_) => new_queue_name(&self.endpoint),
        };
        let queue = open_queue(
            &self.endpoint,
            &name,
            MQ_OFlag::O_RDONLY | MQ_OFlag::O_EXCL,
            // A reply is its status byte and then up to `max` bytes of payload.
            (1, (self.max + 1).min(limits().msgsize_max)),
            |endpoint, op, errno| {
                *no_room = matches!(
                    errno,
                    Errno::EMFILE | Errno::ENFILE | Errno::ENOSPC | Errno::ENOMEM
                );
                mq_error(endpoint, op, errno)
            },
        );
        let queue = queue?;
        let wrapped = msgsize(&self.endpoint, &queue).and_then(|size| Ok((size, wrap(queue)?)));
        let (size, queue) = match wrapped {
            Ok(wrapped) => wrapped,
            Err(e) => {
                let _ = nix::mqueue::mq_unlink(name.as_str());
                return Err(e);
            }
        };
        self.live_replies.fetch_add(1, Ordering::AcqRel);
        Ok(ReplyQueue {
            name,
            queue,
            buf: vec![0; size],
            request: Vec::new(),
            live: self.live_replies.clone(),
        })
    }

    /// Whether a request that found no room for another reply queue (`no_room`) since
    /// `since` looks again rather than failing. With reply queues of its own, one given
    /// back by the request using it will do: concurrent requests share as many as there
    /// is room for, up to the request's `deadline`. With none, room that the user's other
    /// queues free (RLIMIT_MSGQUEUE is shared by all the user's processes) is waited for
    /// as room in a full queue is, up to the send timeout.
    pub(super) fn may_wait(&self, no_room: bool, since: Instant, deadline: Instant) -> bool {
        let now = Instant::now();
        no_room
            && now < deadline
            && (self.live_replies.load(Ordering::Acquire) > 0 || now < since + self.send_timeout)
    }

    /// A reply queue for a request that must be sent by `deadline`: a pooled one, a new
    /// one, or one of this client's given back while there is no room for more.
    fn reply_queue(&self, since: Instant, timeout: Duration) -> Result<ReplyQueue> {
        let deadline = since + timeout;
        loop {
            if let Some(pooled) = self.replies.pop() {
                return Ok(pooled);
            }
            let mut no_room = false;
            match self.new_reply_queue_with(Ok, &mut no_room) {
                Err(_) if self.may_wait(no_room, since, deadline) => {
                    std::thread::sleep(REPLY_QUEUE_RETRY)
                }
                made => return made,
            }
        }
    }

    /// Sends a one-way message, naming this client when the queue has room for its name.
    pub(super) fn one_way(
        &self,
        payload: &[u8],
        put: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.check_one_way(payload)?;
        self.announced.store(true, Ordering::Release);
        let name = match &self.inbound {
            Ok(inbound) => &inbound.name,
            Err(_) => return put(payload),
        };
        if header_len(name) + payload.len() > self.max {
            // Too large to name its sender: the server gets it without a client handle.
            return put(payload);
        }
        let mut small = [0u8; 512];
        let mut large = Vec::new();
        let message = if header_len(name) + payload.len() <= small.len() {
            let header = header_len(name);
            small[..FROM_MAGIC.len()].copy_from_slice(FROM_MAGIC);
            small[FROM_MAGIC.len()] = name.len() as u8;
            small[FROM_MAGIC.len() + 1..header].copy_from_slice(name.as_bytes());
            small[header..header + payload.len()].copy_from_slice(payload);
            &small[..header + payload.len()]
        } else {
            encode_named(&mut large, FROM_MAGIC, name, payload);
            &large[..]
        };
        put(message)
    }

    /// Says hello to a server that runs, so that it can push before this client's first
    /// message. The hello never waits, nor takes a place in a queue no server reads: a
    /// client of a full queue, or of none yet, says it again from `recv`, at each of its
    /// looks at the server (a subscriber may never send anything), and its first message
    /// says who it is too.
    pub(super) fn announce(&self) -> Result<()> {
        let Ok(inbound) = &self.inbound else {
            return Ok(());
        };
        if self.announced.load(Ordering::Acquire) || !receiver_running(&self.endpoint) {
            return Ok(());
        }
        inbound.saw_server.store(true, Ordering::Release);
        let mut hello = Vec::new();
        encode_named(&mut hello, HELLO_MAGIC, &inbound.name, b"");
        if send_by(
            &self.endpoint,
            &self.queue,
            &hello,
            self.priority,
            &NOW_OR_NEVER,
        )? {
            self.announced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The inbound queue, or the error of a client without one.
    pub(super) fn inbound(&self) -> Result<&Inbound> {
        self.inbound.as_ref().map_err(|reason| Error::Unsupported {
            endpoint: self.url.clone(),
            what: format!(
                "this client could not make its inbound queue, so the server cannot push to it: {reason}"
            ),
        })
    }

    /// Waits until `deadline` for the next message the server pushed.
    pub(super) fn recv_push(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        let inbound = self.inbound()?;
        let mut gone = inbound.closed();
        loop {
            self.announce()?;
            // Once the server has gone, only what it pushed before is left to take.
            let until = match (gone, deadline) {
                (true, _) => NOW_OR_NEVER,
                (false, Some(deadline)) => realtime_deadline(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(SERVER_CHECK_INTERVAL),
                ),
                (false, None) => realtime_deadline(SERVER_CHECK_INTERVAL),
            };
            match inbound.receive(&self.endpoint, &until)? {
                Some(pushed) => return Ok(Some(pushed)),
                None if gone => return Err(inbound.gone(&self.endpoint)),
                None if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(None),
                None => gone = inbound.server_gone(&self.endpoint),
            }
        }
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
        self.one_way(payload, |message| self.put(message))
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.announced.store(true, Ordering::Release);
        // A pooled reply queue at once, as nearly always; the time spent waiting for one
        // counts against the timeout.
        let (mut reply, left) = match self.replies.pop() {
            Some(pooled) => (pooled, timeout),
            None => {
                let started = Instant::now();
                let reply = self.reply_queue(started, timeout)?;
                (reply, timeout.saturating_sub(started.elapsed()))
            }
        };
        let request = self.request_for(&mut reply, payload)?;
        let answer = self.exchange(&mut reply, &request, left)?;
        reply.request = request;
        self.replies.give_back(reply);
        Ok(answer)
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        self.recv_push(deadline)
    }

    fn max_message(&self) -> usize {
        self.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for MqConnection {
    fn drop(&mut self) {
        // Without waiting: a server that does not read its queue learns that this client
        // has gone when it finds the inbound queue removed.
        if let (Ok(inbound), true) = (&self.inbound, self.announced.load(Ordering::Acquire)) {
            let mut bye = Vec::new();
            encode_named(&mut bye, BYE_MAGIC, &inbound.name, b"");
            let _ = send_by(
                &self.endpoint,
                &self.queue,
                &bye,
                self.priority,
                &NOW_OR_NEVER,
            );
        }
    }
}
