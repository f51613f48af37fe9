//! `mq`: POSIX message queues (`mq://app` is the queue `/app`).
//!
//! The queue is created by whoever opens it first, client or server; messages sent while no receiver runs wait in it and are received when one
//! starts, until the queue is removed ([`Transport::destroy`]) or the machine restarts.
//! One-way messages are the payload exactly as sent, so a program that calls `mq_send`
//! itself is heard by `ipckit listen mq://NAME`, in priority order (`?priority=` sets
//! ipckit's).
//!
//! Limits are the kernel's: a message may be at most fs.mqueue.msgsize_max bytes and a
//! queue holds fs.mqueue.msg_max of them (/proc/sys/fs/mqueue/; 8192 and 10 by default).
//! A full queue makes a send wait, up to `?send_timeout_ms=` (10 s), then fail with
//! [`Error::Full`]. Senders wait in the kernel's line, which each receive lets the first
//! of through (by priority, then in the order they came), however many are waiting.
//!
//! One receiver per queue: a server holds an abstract socket named after the queue as its
//! lock, which the kernel removes with the process, so a crashed server never blocks the
//! next one.
//!
//! Requests carry a header naming a reply queue the client created (see
//! docs/PROTOCOL.md); the server answers into it. A client keeps a pool of reply queues,
//! one per request in flight, and removes them when dropped. Queues of clients that
//! crashed are removed by the next server to start, where the mqueue filesystem is
//! mounted at /dev/mqueue to list them.
//!
//! What a successful `send` promises: the message is in the kernel's queue. It survives
//! the receiver's death and waits for the next receiver.
//!
//! # URL and options
//!
//! `mq://app`: the queue `/app`. Options: `priority`, `mode`, `send_timeout_ms` and
//! `max_message`, described in [the crate's endpoint table](crate#endpoints).
//!
//! # Example
//!
//! A message sent before any server runs waits in the queue for the first one:
//!
//! ```
//! let url = format!("mq://ipckit-doc-mq-{}", std::process::id());
//! let client = ipckit::connect(url.as_str())?; // creates the queue
//! client.send(b"wait for me")?;
//!
//! let mut server = ipckit::listen(url.as_str())?;
//! assert_eq!(server.recv()?.payload(), b"wait for me");
//!
//! drop(server);
//! // A queue outlives its processes, durable, until it is removed.
//! ipckit::transport::find("mq").unwrap().destroy(&url.parse()?)?;
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::mqueue::{MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use rustix::event::PollFlags;

use super::pool::Pool;
use super::{Capabilities, Connection, Listener, Reclaim, Transport};
use crate::endpoint::{Address, Endpoint};
use crate::error::{Error, Result};
use crate::message::{Message, Peer, ReplySink, ReplyTo};
use crate::sys::wait_ready;

/// The first bytes of a request: a one-way message cannot start with them.
pub(crate) const REQUEST_MAGIC: &[u8; 8] = b"\0IPCKRQ1";
/// A reply's first byte.
pub(crate) const REPLY_OK: u8 = 0;
const REPLY_REFUSED: u8 = 1;
/// How long a reply may wait for room in a reply queue.
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The `mq` transport.
pub struct Mq;

/// An open queue, closed when dropped: nix's `MqdT` leaves that to its owner.
struct Queue(Option<MqdT>);

impl std::ops::Deref for Queue {
    type Target = MqdT;
    fn deref(&self) -> &MqdT {
        self.0.as_ref().expect("open until dropped")
    }
}

impl std::os::fd::AsRawFd for Queue {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.as_fd())
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        MqdT::as_fd(self)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            let _ = nix::mqueue::mq_close(queue);
        }
    }
}

/// The kernel's limits on queues, from /proc/sys/fs/mqueue, read once per process.
struct Limits {
    msg_max: usize,
    msgsize_max: usize,
}

fn limits() -> &'static Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let read = |name: &str, default: usize| {
            std::fs::read_to_string(format!("/proc/sys/fs/mqueue/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        Limits {
            msg_max: read("msg_max", 10),
            msgsize_max: read("msgsize_max", 8192),
        }
    })
}

/// The largest message for `endpoint`, and which limit that is.
fn max_message(endpoint: &Endpoint) -> (usize, String) {
    let kernel = limits().msgsize_max;
    if endpoint.max_message() < kernel {
        (endpoint.max_message(), "this endpoint's max_message".into())
    } else {
        (
            kernel,
            "fs.mqueue.msgsize_max (/proc/sys/fs/mqueue/msgsize_max)".into(),
        )
    }
}

fn queue_name(endpoint: &Endpoint) -> String {
    match endpoint.address() {
        Address::Mq(name) => format!("/{name}"),
        _ => unreachable!("the registry hands mq endpoints only to mq"),
    }
}

fn mq_error(endpoint: &Endpoint, op: &'static str, errno: Errno) -> Error {
    side_error(endpoint, op, errno, |e, op, io| Error::io(e, op, io))
}

/// [`mq_error`] for the receiver starting up, with a server's advice.
fn mq_listen_error(endpoint: &Endpoint, op: &'static str, errno: Errno) -> Error {
    side_error(endpoint, op, errno, Error::listen_io)
}

fn side_error(
    endpoint: &Endpoint,
    op: &'static str,
    errno: Errno,
    io_error: impl FnOnce(&Endpoint, &'static str, std::io::Error) -> Error,
) -> Error {
    let io = std::io::Error::from_raw_os_error(errno as i32);
    match errno {
        Errno::EMFILE | Errno::ENOMEM => Error::Io {
            endpoint: endpoint.to_string(),
            op,
            source: std::io::Error::new(
                io.kind(),
                format!("{io}; the user's queues may have reached RLIMIT_MSGQUEUE (ulimit -q)"),
            ),
        },
        _ => io_error(endpoint, op, io),
    }
}

/// Opens (creating when missing) a queue holding `maxmsg` messages of `msgsize` bytes;
/// `as_error` makes its error, with a client's or a server's advice.
fn open_queue(
    endpoint: &Endpoint,
    name: &str,
    flags: MQ_OFlag,
    (maxmsg, msgsize): (usize, usize),
    as_error: fn(&Endpoint, &'static str, Errno) -> Error,
) -> Result<Queue> {
    let attr = MqAttr::new(0, maxmsg as _, msgsize as _, 0);
    let mode = Mode::from_bits_truncate(endpoint.mode() as _);
    nix::mqueue::mq_open(
        name,
        flags | MQ_OFlag::O_CREAT | MQ_OFlag::O_CLOEXEC,
        mode,
        Some(&attr),
    )
    .map(|queue| Queue(Some(queue)))
    .map_err(|e| as_error(endpoint, "opening the queue", e))
}

/// The message size of an open queue: the creator's, whatever this side asked for.
fn msgsize(endpoint: &Endpoint, queue: &MqdT) -> Result<usize> {
    let attr = nix::mqueue::mq_getattr(queue)
        .map_err(|e| mq_error(endpoint, "reading the queue's size", e))?;
    Ok(attr.msgsize() as usize)
}

fn queue_full(endpoint: &Endpoint, queue: &MqdT, patience: Duration) -> Error {
    let held = nix::mqueue::mq_getattr(queue).map_or(0, |a| a.maxmsg());
    Error::Full {
        endpoint: endpoint.to_string(),
        detail: format!(
            "the queue, which holds {held} messages (fs.mqueue.msg_max is {}),",
            limits().msg_max
        ),
        after: patience,
    }
}

/// `after` from now on CLOCK_REALTIME, the clock of mq_timedsend's and mq_timedreceive's
/// deadlines; the end of time when that is past what the clock can say.
fn realtime_deadline(after: Duration) -> TimeSpec {
    SystemTime::now()
        .checked_add(after)
        .and_then(|d| d.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(TimeSpec::new(i64::MAX, 0), TimeSpec::from_duration)
}

/// A deadline already past: mq_timedsend then returns at once if the queue is full.
const NOW_OR_NEVER: TimeSpec = TimeSpec::new(0, 0);

/// Sends on a blocking queue, waiting for room until `deadline` (CLOCK_REALTIME); false
/// when it passed with the queue still full.
///
/// The wait is the kernel's: senders blocked in mq_timedsend wait in line (by priority,
/// then in the order they came), and a receive hands its free slot to the first of them,
/// waking that one alone. Waiting in `poll` for POLLOUT instead, every waiting sender
/// woke at each receive to race for the one slot: with 200 senders, 50 times as long as
/// plain `mq_send`, nearly all of it in the kernel.
fn send_by(
    endpoint: &Endpoint,
    queue: &MqdT,
    message: &[u8],
    priority: u32,
    deadline: &TimeSpec,
) -> Result<bool> {
    loop {
        match crate::sys::mq_timedsend(queue.as_fd(), message, priority, deadline) {
            Ok(()) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(Errno::ETIMEDOUT) => return Ok(false),
            Err(e) => return Err(mq_error(endpoint, "sending", e)),
        }
    }
}

/// Sends on a blocking queue, waiting for room up to `patience`, then failing with
/// [`Error::Full`].
fn put(
    endpoint: &Endpoint,
    queue: &MqdT,
    message: &[u8],
    priority: u32,
    patience: Duration,
) -> Result<()> {
    if send_by(
        endpoint,
        queue,
        message,
        priority,
        &realtime_deadline(patience),
    )? {
        Ok(())
    } else {
        Err(queue_full(endpoint, queue, patience))
    }
}

crate::transport::sealed!(Mq, MqConnection, MqListener);

impl Transport for Mq {
    fn scheme(&self) -> &'static str {
        "mq"
    }

    fn summary(&self) -> &'static str {
        static SUMMARY: OnceLock<String> = OnceLock::new();
        SUMMARY.get_or_init(|| {
            format!(
                "POSIX message queues, durable (msg_max {}, msgsize_max {})",
                limits().msg_max,
                limits().msgsize_max
            )
        })
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            reliable: true,
            ordered: true,
            durable: true,
            broadcast: false,
            connection: false,
            max_message: max_message(endpoint).0,
            peer_credentials: false,
            zero_copy: false,
            push: false,
        }
    }

    fn scratch_endpoint(&self, _dir: &Path, name: &str) -> Endpoint {
        Address::Mq(super::unique_scratch_name(name)).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(client(endpoint)?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        Ok(Box::new(server(endpoint)?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        super::connected(client(endpoint).and_then(on_tokio::AsyncMqConnection::new))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        Ok(Box::new(on_tokio::AsyncMqListener::new(server(endpoint)?)?))
    }

    fn destroy(&self, endpoint: &Endpoint) -> Result<()> {
        let name = queue_name(endpoint);
        // A receiver's queue stays: removing its name would leave it reading a queue that
        // new senders no longer find.
        let _lock = hold_receiver_lock(endpoint, &name).map_err(|e| match e {
            Error::AddrInUse { endpoint, .. } => Error::AddrInUse {
                endpoint,
                detail: "a receiver is reading this queue; stop it before removing the queue"
                    .into(),
            },
            other => other,
        })?;
        // Those of live clients are theirs: each goes when its client is done with it.
        reclaim_reply_queues(&name);
        match nix::mqueue::mq_unlink(name.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(mq_error(endpoint, "removing the queue", e)),
        }
    }
}

/// A client of the endpoint's queue (created if missing). The queue blocks: a full one is
/// waited on in mq_timedsend (see [`send_by`]).
fn client(endpoint: &Endpoint) -> Result<MqConnection> {
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

/// The endpoint's one receiver.
fn server(endpoint: &Endpoint) -> Result<MqListener> {
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

/// Binds the abstract socket that marks `name` as having a receiver.
fn hold_receiver_lock(endpoint: &Endpoint, name: &str) -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::listen_io(endpoint, "creating the receiver lock", e.into()))?;
    let addr =
        rustix::net::SocketAddrUnix::new_abstract_name(format!("ipckit.mq{name}").as_bytes())
            .map_err(|e| Error::listen_io(endpoint, "naming the receiver lock", e.into()))?;
    match rustix::net::bind(&fd, &addr) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::ADDRINUSE) => Err(Error::AddrInUse {
            endpoint: endpoint.to_string(),
            detail: "another receiver is reading this queue".into(),
        }),
        Err(e) => Err(Error::listen_io(
            endpoint,
            "taking the receiver lock",
            e.into(),
        )),
    }
}

/// Removes the reply queues of clients that died, when /dev/mqueue shows them.
fn reclaim_reply_queues(name: &str) {
    let Ok(entries) = std::fs::read_dir("/dev/mqueue") else {
        return;
    };
    let prefix = format!("{}.r.", &name[1..]);
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
        if !alive {
            log::info!(
                "mq:/{}: removing the reply queue of a client that is gone",
                file.to_string_lossy()
            );
            let _ = nix::mqueue::mq_unlink(format!("/{}", file.to_string_lossy()).as_str());
        }
    }
}

/// A client's queue for the reply to one request at a time.
/// A client's queue for the replies to its requests, one request at a time; removed when
/// dropped. `Q` is the queue as the API drives it: blocking, or registered with tokio.
struct ReplyQueue<Q = Queue> {
    name: String,
    queue: Q,
    buf: Vec<u8>,
    /// The request being sent, kept to reuse its allocation.
    request: Vec<u8>,
}

impl<Q> Drop for ReplyQueue<Q> {
    fn drop(&mut self) {
        let _ = nix::mqueue::mq_unlink(self.name.as_str());
    }
}

struct MqConnection {
    endpoint: Endpoint,
    url: String,
    queue: Arc<Queue>,
    max: usize,
    limit: String,
    replies: Pool<ReplyQueue>,
    /// The endpoint's options, read once.
    priority: u32,
    send_timeout: Duration,
}

impl MqConnection {
    fn too_large(&self, size: usize, max: usize) -> Error {
        Error::MessageTooLarge {
            endpoint: self.url.clone(),
            size,
            max,
            limit: self.limit.clone(),
        }
    }

    /// Refuses a one-way message the queue cannot take, or that would read as ipckit's own.
    fn check_one_way(&self, payload: &[u8]) -> Result<()> {
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
    fn request_for<Q>(&self, reply: &mut ReplyQueue<Q>, payload: &[u8]) -> Result<Vec<u8>> {
        let header = REQUEST_MAGIC.len() + 1 + reply.name.len();
        if header + payload.len() > self.max {
            return Err(self.too_large(payload.len(), self.max.saturating_sub(header)));
        }
        let mut request = std::mem::take(&mut reply.request);
        encode_request(&mut request, &reply.name, payload);
        Ok(request)
    }

    /// Sends into the endpoint's queue with its priority and send timeout.
    fn put(&self, message: &[u8]) -> Result<()> {
        put(
            &self.endpoint,
            &self.queue,
            message,
            self.priority,
            self.send_timeout,
        )
    }

    /// A new reply queue, its queue made by `wrap` from the one just created.
    fn new_reply_queue_with<Q>(
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

    fn new_reply_queue(&self) -> Result<ReplyQueue> {
        self.new_reply_queue_with(Ok)
    }

    fn exchange(
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

/// Writes into `out` the request for `payload` whose answer goes to the queue `name`
/// (at most 255 bytes: NAME_MAX).
pub(crate) fn encode_request(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(REQUEST_MAGIC);
    out.push(u8::try_from(name.len()).expect("a queue name is at most NAME_MAX bytes"));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(payload);
}

/// Splits a request into its reply queue's name and its payload; `None` for a one-way
/// message. The name must start with `reply_prefix`, the prefix of this endpoint's reply
/// queues, followed by digits and dots.
pub(crate) fn parse_request<'a>(
    message: &'a [u8],
    reply_prefix: &str,
) -> std::result::Result<Option<(&'a str, &'a [u8])>, String> {
    let Some(rest) = message.strip_prefix(REQUEST_MAGIC) else {
        return Ok(None);
    };
    let (&len, rest) = rest
        .split_first()
        .ok_or("a request without its reply queue")?;
    let len = len as usize;
    if rest.len() < len {
        return Err("a request cut short in its reply queue's name".into());
    }
    let name =
        std::str::from_utf8(&rest[..len]).map_err(|_| "a reply queue name that is not UTF-8")?;
    // Only this endpoint's reply queues: a sender must not make the server write into any
    // queue it can name.
    let valid = name
        .strip_prefix(reply_prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if !valid {
        return Err(format!(
            "a reply queue '{name}' that is not this endpoint's"
        ));
    }
    Ok(Some((name, &rest[len..])))
}

/// The caller's result from a reply: a status byte, then the payload or the reason.
pub(crate) fn answer(url: &str, reply: &[u8]) -> Result<Vec<u8>> {
    match reply.split_first() {
        None => Err(Error::Protocol {
            endpoint: url.to_owned(),
            reason: "an empty reply, without its status byte".into(),
        }),
        Some((&REPLY_OK, payload)) => Ok(payload.to_vec()),
        Some((_, reason)) => Err(Error::Remote {
            endpoint: url.to_owned(),
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
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

struct MqReplySink {
    endpoint: Endpoint,
    name: String,
    /// The reply queue once opened, for later replies through this sink. It is closed with
    /// the sink, when no request of that client is held and another client has asked: an
    /// open queue counts against its owner's RLIMIT_MSGQUEUE even once it is removed.
    queue: OnceLock<Arc<(Queue, usize)>>,
}

impl MqReplySink {
    fn reply_queue(&self) -> Result<Arc<(Queue, usize)>> {
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

/// The message a waker puts in the queue, at the highest priority so that it is taken
/// before anything else; receivers skip it.
const WAKE: &[u8; 10] = b"\0IPCKWAKE1";
const WAKE_PRIORITY: u32 = 32767;

/// How a blocked `recv` is ended: a [`WAKE`] message when the queue has room, a flag
/// when it has none (then the server is busy and sees the flag before it blocks again).
struct Waker {
    queue: Queue,
    stop: AtomicBool,
    /// Wake messages sent and not yet taken; the listener removes them when dropped.
    in_queue: std::sync::atomic::AtomicUsize,
}

struct MqListener {
    endpoint: Endpoint,
    url: Arc<str>,
    /// Reply queues of this endpoint's clients start with this.
    reply_prefix: String,
    queue: Arc<Queue>,
    buf: Vec<u8>,
    waker: Arc<Waker>,
    /// The sink of the last request, reused while requests come from the same queue.
    last_sink: Option<Arc<MqReplySink>>,
    /// A queue says nothing about senders: every message has this same nobody.
    anonymous: Arc<Peer>,
    reclaim: Reclaim,
    _lock: OwnedFd,
}

impl MqListener {
    fn sink_for(&mut self, name: &str) -> Arc<MqReplySink> {
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
    fn receive(&mut self, deadline: Option<Instant>) -> Result<Option<usize>> {
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
enum Received {
    Message(Message),
    /// A waker's: `recv` returns.
    Wake,
    /// Malformed, and logged: nothing to return.
    Dropped,
}

impl MqListener {
    /// Makes the `n` bytes just received into a message.
    fn take(&mut self, n: usize) -> Received {
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

/// The same client and server driven by tokio: the queue descriptors they receive from
/// are non-blocking and registered with its reactor (Linux can poll a queue descriptor);
/// a send that must wait for room waits in the blocking pool. Requests, replies, limits
/// and reply queues are the blocking side's.
///
/// Cancellation: a queue message is sent whole or not at all, so a dropped `send` leaves
/// nothing half-sent. One dropped while it waits for room is finished on its own, as a
/// stream's dropped send is: its message is queued whole if room comes before the send
/// timeout, and before any later message of the same client. A dropped `request` drops
/// (and removes) its reply queue, so a late reply cannot be taken for another request's.
#[cfg(feature = "tokio")]
mod on_tokio {
    use std::future::poll_fn;
    use std::io;
    use std::task::{Poll, ready};

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

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
}
