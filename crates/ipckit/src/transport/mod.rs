//! The transports, each behind the same three traits, and the registry of them.
//!
//! A transport is registered here only when it is finished: everything it claims in
//! [`Capabilities`] is checked by the conformance suite (`tests/conformance/`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::level::Level;
use crate::message::{Message, MessageRef};
use crate::push::{Broadcaster, Event};

pub(crate) use access::check_listen;

mod access;
pub(crate) mod backend;
mod correlate;
pub(crate) mod datagram;
mod datagram_clients;
pub(crate) mod endpoint_file;
pub mod events;
pub mod fifo;
pub mod mq;
mod pool;
#[cfg(feature = "tokio")]
mod reactor;
pub(crate) mod ring;
pub mod shm;
pub mod spool;
mod stream;
mod stream_greeting;
mod stream_server;
mod stream_session;
#[cfg(feature = "tokio")]
mod stream_tokio;
#[cfg(feature = "tokio")]
mod stream_tokio_server;
pub mod tcp;
pub mod udp;
pub mod uds;
pub mod unixgram;

/// Keeps the transport traits to ipckit's own transports: the generic layer relies on
/// every implementation keeping the rules the conformance suite checks.
mod private {
    pub trait Sealed {}
}
use private::Sealed;

/// Marks ipckit's own implementations of the transport traits.
macro_rules! sealed {
    ($($type:ty),+ $(,)?) => {
        $(impl $crate::transport::Sealed for $type {})+
    };
}
pub(crate) use sealed;

/// What a transport can promise; read by `ipckit transports`, by the conformance suite to
/// decide which checks apply, and by the benchmark.
///
/// ```
/// let udp = ipckit::transport::find("udp").unwrap();
/// let caps = udp.capabilities(&"udp://127.0.0.1:9000".parse()?);
/// assert!(!caps.reliable);
/// assert_eq!(caps.max_message, 65507);
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// A client can send a request and get its reply.
    pub duplex: bool,
    /// A server can send to a client at any time and broadcast to all of them
    /// ([`ClientHandle`](crate::ClientHandle), [`Server::broadcast`](crate::Server::broadcast)),
    /// and sees clients come and go ([`Event`]); a client takes those messages
    /// with [`Client::recv`](crate::Client::recv). Each transport's module says what bounds
    /// a client's outbox there.
    pub push: bool,
    /// A message that `send` accepted is delivered unless the receiver dies.
    pub reliable: bool,
    /// One client's messages arrive in the order it sent them.
    pub ordered: bool,
    /// Messages survive the receiver's absence (they wait for it).
    pub durable: bool,
    /// One message can reach many receivers.
    pub broadcast: bool,
    /// A client is connected: it learns at once when its server goes away, where a
    /// connectionless client's request can only time out.
    pub connection: bool,
    /// The largest payload the endpoint accepts, in bytes.
    pub max_message: usize,
    /// The receiver learns the sender's pid, uid and gid from the kernel.
    pub peer_credentials: bool,
    /// Payloads can be written and read in place, without copies.
    pub zero_copy: bool,
    /// Several servers may receive from one endpoint, each message reaching exactly one
    /// of them (work sharing).
    pub competing_receivers: bool,
    /// For a durable transport, how many messages its queue holds before a send waits for
    /// room and then fails with [`Error::Full`]; `None` where only the filesystem bounds
    /// it, and for transports that keep no queue of their own.
    pub queue_limit: Option<usize>,
}

/// One way of moving messages between processes: `uds`, `tcp`, …
///
/// ```
/// for transport in ipckit::transport::all() {
///     println!("{:8} {}", transport.scheme(), transport.summary());
/// }
/// ```
pub trait Transport: Sealed + Send + Sync {
    /// The URL scheme that selects it.
    fn scheme(&self) -> &'static str;
    /// What it is built on, in a few words.
    fn summary(&self) -> &'static str;
    /// What it promises for `endpoint` (limits may depend on the endpoint's options).
    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities;
    /// A fresh endpoint private to this process, under `dir` where it needs a path,
    /// distinguished by `name`: for tests and benchmarks. Listening on it may pick the
    /// real address (a TCP port), which [`Listener::endpoint`] then reports.
    fn scratch_endpoint(&self, dir: &Path, name: &str) -> Endpoint;
    /// Opens a client connection.
    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>>;
    /// Starts a server.
    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>>;
    /// Removes what an endpoint keeps once every party is gone: a message queue with the
    /// messages in it and the reply queues of clients that died (refused with
    /// [`Error::AddrInUse`] while a receiver reads it), the
    /// segment of a shared-memory server that was killed. Other transports clean up after
    /// themselves.
    fn destroy(&self, endpoint: &Endpoint) -> Result<()> {
        let _ = endpoint;
        Ok(())
    }
    /// Opens an async client connection, on the tokio runtime it is polled in.
    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> BoxFuture<'a, Result<Box<dyn AsyncConnection>>>;
    /// Starts an async server on the current tokio runtime (its tasks run there).
    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn AsyncListener>>;
}

/// A connection made at once (nothing to wait for), as the future `connect_async` returns.
#[cfg(feature = "tokio")]
fn connected<'a, C: AsyncConnection + 'static>(
    made: Result<C>,
) -> BoxFuture<'a, Result<Box<dyn AsyncConnection>>> {
    let made = made.map(|c| Box::new(c) as Box<dyn AsyncConnection>);
    Box::pin(std::future::ready(made))
}

/// A boxed future, as the async traits return.
#[cfg(feature = "tokio")]
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A transport's async client side; [`crate::tokio::Client`] wraps it. Each method says
/// what dropping its future leaves behind.
#[cfg(feature = "tokio")]
pub trait AsyncConnection: Sealed + Send + Sync {
    /// Sends one message.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>>;
    /// Sends one message at `level`, as [`Connection::send_at`].
    fn send_at<'a>(&'a self, level: Level, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        let _ = level;
        self.send(payload)
    }
    /// Whether a message at `level` may reach anyone, as [`Connection::is_enabled`].
    fn is_enabled(&self, level: Level) -> bool {
        let _ = level;
        true
    }
    /// Sends a request and waits up to `timeout` for its reply.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>>;
    /// Waits for the next message the server pushed, apart from any reply. Dropping the
    /// future loses nothing: a message is taken only by the call that returns it.
    /// [`Error::Disconnected`] once the server has gone and every pushed message was taken.
    fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(std::future::ready(Err(cannot_push(self.endpoint()))))
    }
    /// The largest payload the server accepts.
    fn max_message(&self) -> usize;
    /// Where it is connected.
    fn endpoint(&self) -> &Endpoint;
}

/// The next message among the events `next` gives, skipping clients coming and going:
/// `recv` for a listener whose `recv_event` makes both.
pub(crate) fn next_message(
    mut next: impl FnMut() -> Result<Option<Event>>,
) -> Result<Option<Message>> {
    loop {
        match next()? {
            Some(Event::Message(message)) => return Ok(Some(message)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

/// The error of a client's `recv` on a transport that does not push.
pub(crate) fn cannot_push(endpoint: &Endpoint) -> Error {
    Error::Unsupported {
        endpoint: endpoint.to_string(),
        what: format!(
            "the {} transport cannot push messages to a client; use a transport whose capabilities say push (ipckit transports)",
            endpoint.scheme()
        ),
    }
}

/// A transport's async server side; [`crate::tokio::Server`] wraps it.
#[cfg(feature = "tokio")]
pub trait AsyncListener: Sealed + Send {
    /// Waits for the next message.
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>>;
    /// Waits for the next message and lends it to `handle`, as
    /// [`Listener::recv_with`] does.
    fn recv_with<'a>(
        &'a mut self,
        handle: &'a mut (dyn FnMut(&mut MessageRef<'_>) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            handle(&mut self.recv().await?.lend());
            Ok(())
        })
    }
    /// Waits for the next message or client arriving or leaving (see [`Event`]). Dropping
    /// the future loses nothing. Transports that push override it; the others only have
    /// messages.
    fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
        Box::pin(async move { Ok(Event::Message(self.recv().await?)) })
    }
    /// The clients connected to it, for pushing and broadcasting; `None` where the
    /// transport does not push.
    fn broadcaster(&self) -> Option<Broadcaster> {
        None
    }
    /// How many messages it missed in all (the sum of its [`Event::Lost`] counts); 0
    /// where nothing is ever overwritten before it is read.
    fn lost(&self) -> u64 {
        0
    }
    /// The endpoint it listens on, with the real address where the kernel chose it.
    fn endpoint(&self) -> &Endpoint;
}

/// A transport's client side; [`Client`](crate::Client) wraps it.
pub trait Connection: Sealed + Send + Sync {
    /// Sends one message.
    fn send(&self, payload: &[u8]) -> Result<()>;
    /// Sends one message at `level`. A transport that filters by level (`events`) skips
    /// it when no receiver enabled that level; the others deliver it as `send` does.
    fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        let _ = level;
        self.send(payload)
    }
    /// Whether a message at `level` may reach anyone: false only where the transport
    /// knows that no receiver enabled that level. Cheap enough to ask before building
    /// each message.
    fn is_enabled(&self, level: Level) -> bool {
        let _ = level;
        true
    }
    /// Sends a request and waits up to `timeout` for its reply.
    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>>;
    /// Waits until `deadline` (forever when `None`) for the next message the server
    /// pushed, apart from any reply; `Ok(None)` when the deadline passed.
    /// [`Error::Disconnected`] once the server has gone and every pushed message was taken.
    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        let _ = deadline;
        Err(cannot_push(self.endpoint()))
    }
    /// The largest payload the server accepts.
    fn max_message(&self) -> usize;
    /// Where it is connected.
    fn endpoint(&self) -> &Endpoint;
}

/// A transport's server side; [`Server`](crate::Server) wraps it.
pub trait Listener: Sealed + Send {
    /// Waits for the next message until `deadline` (forever when `None`). `Ok(None)` when
    /// the deadline passed or the waker was called.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>>;
    /// Waits as [`recv`](Listener::recv) does and lends the message to `handle`; `false`
    /// where `recv` gives `None`. A transport that keeps messages in shared memory lends
    /// them where they lie; the others lend a [`Message`].
    fn recv_with(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut dyn FnMut(&mut MessageRef<'_>),
    ) -> Result<bool> {
        match self.recv(deadline)? {
            Some(mut message) => {
                handle(&mut message.lend());
                Ok(true)
            }
            None => Ok(false),
        }
    }
    /// Waits as [`recv`](Listener::recv) does for the next message or client arriving or
    /// leaving (see [`Event`]). Transports that push override it (and make `recv` skip
    /// the other events); the others only have messages.
    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        Ok(self.recv(deadline)?.map(Event::Message))
    }
    /// The clients connected to it, for pushing and broadcasting; `None` where the
    /// transport does not push.
    fn broadcaster(&self) -> Option<Broadcaster> {
        None
    }
    /// How many messages it missed in all (the sum of its [`Event::Lost`] counts); 0
    /// where nothing is ever overwritten before it is read.
    fn lost(&self) -> u64 {
        0
    }
    /// A function that makes a blocked or the next `recv` return `Ok(None)`.
    fn waker(&self) -> Arc<dyn Fn() + Send + Sync>;
    /// The endpoint it listens on, with the real address where the kernel chose it.
    fn endpoint(&self) -> &Endpoint;
}

static ALL: [&dyn Transport; 9] = [
    &uds::Uds,
    &tcp::Tcp,
    &udp::Udp,
    &unixgram::Unixgram,
    &fifo::Fifo,
    &mq::Mq,
    &shm::Shm,
    &events::Events,
    &spool::Spool,
];

/// How often a server looks for what crashed clients left behind (reply FIFOs, reply
/// queues): on the way, when a request from a new client comes, at most this often.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// A chore done on the way, at most once per [`RECLAIM_INTERVAL`].
struct Reclaim {
    next: Instant,
}

impl Reclaim {
    fn new() -> Reclaim {
        Reclaim {
            next: Instant::now() + RECLAIM_INTERVAL,
        }
    }

    /// Whether the chore is due; if so, the next one is an interval away.
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + RECLAIM_INTERVAL;
        true
    }
}

/// A name no other scratch endpoint of this process has, for kernel objects named in a
/// namespace shared by the whole system (message queues, shared memory).
fn unique_scratch_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "ipckit-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Every registered transport.
pub fn all() -> &'static [&'static dyn Transport] {
    &ALL
}

/// The registered transport for `scheme`, if there is one.
///
/// ```
/// assert!(ipckit::transport::find("uds").is_some());
/// assert!(ipckit::transport::find("carrier-pigeon").is_none());
/// ```
pub fn find(scheme: &str) -> Option<&'static dyn Transport> {
    all().iter().copied().find(|t| t.scheme() == scheme)
}

/// The transport that serves `endpoint`, or an error saying none is built in.
pub(crate) fn for_endpoint(endpoint: &Endpoint) -> Result<&'static dyn Transport> {
    let transport = find(endpoint.scheme()).ok_or_else(|| Error::Unsupported {
        endpoint: endpoint.to_string(),
        what: format!(
            "the {} transport is not available in this build; available: {}",
            endpoint.scheme(),
            all()
                .iter()
                .map(|t| t.scheme())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    if endpoint.object().is_some() {
        return Err(Error::Unsupported {
            endpoint: endpoint.to_string(),
            what: "#name names an object of a contract service: call it through ipckit::contract::Proxy, or connect and listen without the #name (a server hosts its objects by name in a contract::Service)".into(),
        });
    }
    Ok(transport)
}
