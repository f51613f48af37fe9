//! `mq`: POSIX message queues (`mq://app` is the queue `/app`).
//!
//! The queue is created by whoever opens it first, client or server; messages sent while no receiver runs wait in it and are received when one
//! starts, until the queue is removed ([`Transport::destroy`]) or the machine restarts.
//! A program that calls `mq_send` itself is heard by `ipckit listen mq://NAME`: its
//! message is the payload exactly as sent, in priority order (`?priority=` sets
//! ipckit's). An ipckit client's one-way message names the client's inbound queue before
//! the payload, so that the server knows who sent it (see docs/PROTOCOL.md).
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
//! one per request in flight, and removes them when dropped. Each costs some 8.3 KB of
//! RLIMIT_MSGQUEUE, shared by all the user's processes: where no more fit (or no more
//! descriptors), a request waits, within its timeout, for one of its client's own to be
//! given back, so that concurrent requests share as many as there is room for instead
//! of failing; a client with none waits for room up to `?send_timeout_ms=`, as a full
//! queue is waited for, and then fails naming the limit. Queues of clients that
//! crashed are removed by the next server to start, where the mqueue filesystem is
//! mounted at /dev/mqueue to list them.
//!
//! # Pushes
//!
//! A server pushes into each client's **inbound queue**, which the client creates at
//! connect and removes when dropped. It is the client's outbox: 4 messages of 2 KiB by
//! default, a larger push taking several (a push of up to `max_message` always fits an
//! empty queue). A push waits for room up to `?send_timeout_ms=` (10 s), then fails with
//! [`Error::Full`]; once full, the queue takes no more pushes until the client has read
//! half of it, so a client that does not read is full for small pushes and large alike. A
//! broadcast never waits: a full client is skipped and the drop counted, or disconnected
//! (`?overflow=`). The queue is the kernel's memory, not the server's, and a pushing
//! server grows by nothing per client that does not read.
//!
//! Replies keep queues of their own: a reply never waits behind pushes the client has not
//! read, so a client that stops reading pushes still gets its answers, and stalls no
//! reply of the server's.
//!
//! A queue has no connection, so a client announces itself: with a hello at connect, when
//! a server runs then (without waiting, and never into a full queue), or else with its
//! first message, which names its inbound queue. The server reports
//! [`Event::Connected`](crate::Event) before that first message. A client's goodbye, as
//! it is dropped, is its [`Event::Disconnected`](crate::Event). A client that crashed says
//! no goodbye: a server with clients looks each second whether each one's process still
//! runs and its inbound queue is still there, and reports the departures it finds
//! (removing the inbound queue of a client whose process is gone); a push that finds the
//! queue full looks at once. A server that stops tells each client, so that
//! [`Client::recv`](crate::Client::recv) returns [`Error::Disconnected`] once it has
//! taken the pushes before; a client also looks each second whether the server it has
//! seen still holds its lock. A client of a queue that no server reads yet waits for one.
//!
//! Each inbound queue costs its owner RLIMIT_MSGQUEUE (`ulimit -q`, 819,200 bytes per
//! user by default), charged for its size, full or empty: some 8.6 KB, where the
//! endpoint's queue takes 83 KB. The depth above is what lets some 85 clients of one user
//! share the default limit; with a larger limit, an inbound queue holds up to
//! fs.mqueue.msg_max messages. A client that cannot have its queue still connects,
//! sends and requests; its `recv` fails with an error that names the limit.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

use client::{MqConnection, client};
use server::{MqListener, server};
#[cfg(any(test, fuzzing))]
pub(crate) use wire::{REPLY_OK, REQUEST_MAGIC, answer, encode_request, parse_request};

mod client;
#[cfg(feature = "tokio")]
mod on_tokio;
mod outbox;
mod server;
mod wire;

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
    as_error: impl FnOnce(&Endpoint, &'static str, Errno) -> Error,
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
            competing_receivers: false,
            queue_limit: Some(limits().msg_max),
            push: true,
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

/// Binds the abstract socket that marks `name` as having a receiver.
fn hold_receiver_lock(endpoint: &Endpoint, name: &str) -> Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::listen_io(endpoint, "creating the receiver lock", e.into()))?;
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(lock_name(name).as_bytes())
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

/// The abstract socket a receiver of the queue `name` binds.
fn lock_name(name: &str) -> String {
    format!("ipckit.mq{name}")
}

/// Whether a receiver holds `endpoint`'s lock: a datagram socket connects to a bound name
/// only.
fn receiver_running(endpoint: &Endpoint) -> bool {
    let socket = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    );
    let addr =
        rustix::net::SocketAddrUnix::new_abstract_name(lock_name(&queue_name(endpoint)).as_bytes());
    match (socket, addr) {
        (Ok(socket), Ok(addr)) => rustix::net::connect(&socket, &addr).is_ok(),
        _ => false,
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
