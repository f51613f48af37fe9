//! ipckit: one API and one address syntax over the IPC mechanisms of Linux.
//!
//! A program picks its transport with a URL (`uds:///run/app.sock`,
//! `tcp://127.0.0.1:7000`, `shm://app`, …) and talks through the same types whichever it
//! picks: a [`Client`] sends messages and requests, a [`Server`] receives them, with who
//! sent each, and answers.
//!
//! ipckit grew from a well-known article that compares ten IPC techniques in .NET on
//! Windows, each behind one small contract: a client that sends, a server that starts,
//! stops and is told of each message received. ipckit keeps that contract, brings each
//! technique to its Linux counterpart, and adds requests with replies, typed messages,
//! peer credentials and zero copy.
//!
//! # Brief overview
//!
//! [`connect`] opens a [`Client`] to an endpoint and [`listen`] starts a [`Server`] at one.
//! Both take anything that is [`ToEndpoint`]: a URL string, or an [`Endpoint`] already
//! parsed (the [endpoints](#endpoints) below list every form and option).
//!
//! - A [`Client`] sends one-way messages and requests with a timeout. Every method takes
//!   `&self`, so one client can be shared between threads, each reply reaching the thread
//!   that asked. [`Client::exclusive`] gives one thread the client to itself as an
//!   [`Exclusive`] handle, with the same calls and none of that coordination.
//!   [`Client::loan`] hands out a [`Loan`]: a buffer to write a message into and then send,
//!   which on `shm` is space in the shared ring itself.
//! - A [`Server`] receives from any number of clients through one loop on the caller's
//!   thread; there is no thread behind it. [`Server::spawn`] moves that loop to a thread of
//!   its own, with a handler, and returns a [`ServerGuard`] that stops the thread and the
//!   server when dropped.
//! - A server receives each message as a [`Message`], which it owns: the payload, the
//!   sender's [`Peer`] (pid, uid, gid or address, as far as the operating system tells),
//!   and, for a request, the way to [`reply`](Message::reply) or
//!   [`refuse`](Message::refuse), from any thread. A request dropped unanswered is refused
//!   (except on `udp` and `unixgram`: see [`Message::reply`]), so its caller does not wait
//!   for its timeout. The lending calls
//!   ([`Server::recv_with`], [`Server::serve_with`]) instead hand a [`MessageRef`] to a
//!   handler for the length of the call: the same accessors and answers, with nothing
//!   copied or allocated to hand it over.
//! - A server also speaks first, where the transport can ([`Capabilities::push`]): every
//!   message carries a [`ClientHandle`] to its sender ([`Message::client`]), to push
//!   messages to later from any thread; [`Server::broadcast`] sends to every connected
//!   client (a [`Broadcaster`] does so from other threads), never waiting on a slow one;
//!   [`Server::recv_event`] also says when a client connects or leaves ([`Event`]). A
//!   client takes what is pushed with [`Client::recv`], apart from its replies. Each
//!   client has a bounded outbox: a push to a full one waits up to `?send_timeout_ms=`
//!   and fails with [`Error::Full`]; a broadcast skips it and counts the drop, or
//!   disconnects it (`?overflow=`).
//! - Every call that can fail returns [`Result`], with the one [`Error`] type, whose
//!   message names the endpoint and says what to do.
//! - [`Capabilities`], from [`Client::capabilities`], [`Server::capabilities`] or a
//!   [`transport::Transport`], says what a transport promises: whether it is reliable,
//!   ordered, durable, connected, whether it pushes, the largest message, peer
//!   credentials, zero copy.
//!   `ipckit transports` prints them, and [`transport::all`] lists this build's
//!   transports.
//! - With the `tokio` feature, [`tokio::connect`](tokio/fn.connect.html) and
//!   [`tokio::listen`](tokio/fn.listen.html) give a
//!   [`tokio::Client`](tokio/struct.Client.html) and a
//!   [`tokio::Server`](tokio/struct.Server.html): the same endpoints, messages, errors
//!   and capabilities, with futures that may be dropped at any await point.
//!
//! The [`transport`] module holds one module per transport, each saying what a successful
//! `send` promises there; [`frame`] is the wire format of the stream transports
//! (`docs/PROTOCOL.md` describes every format).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! let dir = std::env::temp_dir().join(format!("ipckit-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let url = format!("uds://{}/echo.sock", dir.display());
//!
//! // Start, receive, stop: a handler on a thread of its own, stopped by a guard.
//! let server = ipckit::listen(&url)?.spawn(|msg| Some(msg.payload().to_vec()));
//!
//! let client = ipckit::connect(&url)?;
//! client.send(b"one-way")?;
//! let reply = client.request(b"ping", Duration::from_secs(5))?;
//! assert_eq!(reply, b"ping");
//!
//! drop(server); // stops the loop and removes the socket file
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! The crate's `examples/` go further, each a server and a client in two processes:
//! `server.rs` and `client.rs` (the blocking pair), `typed.rs` (serde values both ways),
//! `oneway.rs` (one-way messages against requests), `async_pair.rs` (the same on
//! tokio) and `calculator.rs` (a typed [contract](mod@contract) written with
//! `#[ipckit::contract]`: methods, an error of its own, one-way calls, events, and named
//! objects shared or per connection). Each file says how to run it.
//!
//! # Which transport to pick
//!
#![doc = include_str!("docs/which_transport.md")]
//!
//! # Endpoints
//!
#![doc = include_str!("docs/endpoints.md")]
//!
//! [uds]: transport::uds
//! [tcp]: transport::tcp
//! [udp]: transport::udp
//! [unixgram]: transport::unixgram
//! [fifo]: transport::fifo
//! [mq]: transport::mq
//! [shm]: transport::shm
//! [events]: transport::events
//! [spool]: transport::spool
//!
//! # Which call to use when
//!
//! A server:
//!
//! - [`Server::recv`], or [`Server::incoming`] as an iterator, for a [`Message`] to keep,
//!   move to another thread, or answer later. [`Server::recv_timeout`] when the loop has
//!   other work to do between messages.
//! - [`Server::recv_with`] (and [`Server::recv_with_timeout`]) to handle one message inside
//!   a call, as a [`MessageRef`]. On `shm` the message is read, and its reply written, in
//!   the shared rings. Its space in the sender's ring is held until the handler returns,
//!   so copy out what must outlive it.
//! - [`Server::serve_with`] to serve on this thread until the handler returns
//!   [`ControlFlow::Break`]: `recv_with` in a loop, and on `shm` the fastest way to answer
//!   requests.
//! - [`Server::spawn`] for the least code: a handler on a thread of its own, whose return
//!   value is the reply; the [`ServerGuard`] stops it.
//!
//! A client:
//!
//! - [`Client::send`] for a one-way message, [`Client::request`] for a reply as a
//!   `Vec<u8>`.
//! - [`Client::request_with`] to read the reply inside a closure instead: on `shm` where it
//!   lies in the ring, with no copy and no allocation.
//! - [`Client::exclusive`] for a thread that sends or asks in a loop: on `shm` its calls
//!   skip the locking that a shared client does on every call, and `request_with` on it is
//!   the fastest request.
//! - [`Client::loan`] to write a message straight into the buffer it is sent from: on
//!   `shm` that buffer is space in the ring (for a message up to half a ring), so the
//!   message is never copied. Send it with [`Loan::send`], [`Loan::request`] or
//!   [`Loan::request_with`].
//! - [`Client::send_value`] and [`Client::request_value`] for serde values (postcard); the
//!   server reads them with [`Message::decode`] or [`MessageRef::decode`] and answers with
//!   [`Message::reply_value`]. A payload that is not a whole value of the type asked for
//!   (another type, bytes left over, plain bytes) is [`Error::Codec`].
//!
//! # Features
//!
//! - Default: the kernel transports above, `uds`, `tcp`, `udp`, `unixgram`, `fifo`, `mq`
//!   and `shm`, with no async runtime.
//! - `macros` (default): [`#[ipckit::contract]`](macro@contract), which writes a
//!   contract's types, typed clients and server from a trait (see [`mod@contract`]).
//! - `tokio`: adds the [`tokio`](tokio/index.html) module, the async client and server
//!   for every transport, driven by tokio's reactor on the same descriptors as the
//!   blocking API.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

/// `Debug` for a client or server: which endpoint it is on.
macro_rules! debug_by_endpoint {
    ($type:ident $(<$lifetime:lifetime>)?) => {
        impl$(<$lifetime>)? std::fmt::Debug for $type$(<$lifetime>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($type))
                    .field("endpoint", &self.endpoint().to_string())
                    .finish_non_exhaustive()
            }
        }
    };
}

pub mod contract;
#[cfg(test)]
mod docs;
pub mod endpoint;
pub mod error;
mod exclusive;
pub mod frame;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
mod level;
mod loan;
mod message;
mod push;
mod sys;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
pub mod transport;
mod typed;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use endpoint::{Endpoint, Framing, ToEndpoint};
pub use error::{Error, Result};
pub use exclusive::Exclusive;
pub use level::Level;
pub use loan::Loan;
pub use message::{Message, MessageRef, Peer};
pub use push::{Broadcaster, ClientHandle, Delivery, Event};
pub use transport::Capabilities;

#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use ipckit_macros::contract;

/// What the code `#[ipckit::contract]` writes reaches for, so that its users need not
/// depend on the same crates themselves.
#[doc(hidden)]
pub mod __private {
    pub use serde;
}

/// Expands to its input when ipckit has its `tokio` feature, and to nothing otherwise:
/// `#[ipckit::contract]` cannot see ipckit's features, so it wraps the async client in
/// this.
#[cfg(feature = "tokio")]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_tokio {
    ($($item:tt)*) => { $($item)* };
}

/// See the other `__if_tokio`.
#[cfg(not(feature = "tokio"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __if_tokio {
    ($($item:tt)*) => {};
}
use transport::backend::{ClientBackend, ServerBackend};

/// Connects to the server at `endpoint`. With nothing listening there it fails at once
/// with [`Error::NotFound`], or, given `?connect_timeout=` (see
/// [`Endpoint::connect_timeout`]), waits that long for the server to appear.
///
/// ```
/// let server = ipckit::listen("tcp://127.0.0.1:0")?; // port 0: the kernel picks one
/// let url = server.endpoint().clone(); // the port it picked
/// let _serving = server.spawn(|_| None);
///
/// let client = ipckit::connect(&url)?;
/// client.send(b"hello")?;
///
/// // A client that may start before its server waits for it, here up to 5 s:
/// let url = format!("uds://@ipckit-doc-late-{}", std::process::id());
/// let early = std::thread::spawn({
///     let url = format!("{url}?connect_timeout=5s");
///     move || ipckit::connect(url)?.send(b"I was here first")
/// });
/// let mut server = ipckit::listen(&url)?;
/// assert_eq!(server.recv()?.payload(), b"I was here first");
/// early.join().unwrap()?;
/// # Ok::<(), ipckit::Error>(())
/// ```
pub fn connect(endpoint: impl ToEndpoint) -> Result<Client> {
    let endpoint = endpoint.to_endpoint()?;
    let transport = transport::for_endpoint(&endpoint)?;
    let mut wait = ConnectWait::new(&endpoint);
    let backend = loop {
        match ClientBackend::connect(transport, &endpoint) {
            Ok(backend) => break backend,
            Err(e) => std::thread::sleep(wait.after(e)?),
        }
    };
    Ok(Client {
        capabilities: transport.capabilities(&endpoint),
        pushed_from: Pushed::from(&endpoint),
        backend,
    })
}

/// How a connect waits for a server that is not there yet (`?connect_timeout=`): one
/// policy for both APIs, which differ only in how they pause.
pub(crate) struct ConnectWait {
    timeout: Duration,
    started: Instant,
    pause: Duration,
}

impl ConnectWait {
    /// The longest pause between attempts: a server that appears is found within it.
    const MAX_PAUSE: Duration = Duration::from_millis(100);

    pub(crate) fn new(endpoint: &Endpoint) -> ConnectWait {
        ConnectWait {
            timeout: endpoint.connect_timeout(),
            started: Instant::now(),
            pause: Duration::from_millis(1),
        }
    }

    /// After a failed attempt, how long to pause before the next one; or the error to
    /// return: any but [`Error::NotFound`] at once, that one when the time is up.
    pub(crate) fn after(&mut self, error: Error) -> Result<Duration> {
        let Error::NotFound { endpoint, detail } = error else {
            return Err(error);
        };
        if self.timeout.is_zero() {
            return Err(Error::NotFound { endpoint, detail });
        }
        let waited = self.started.elapsed();
        if waited >= self.timeout {
            return Err(Error::NotFound {
                endpoint,
                detail: format!("{detail}, still after waiting {:?}", self.timeout),
            });
        }
        let pause = self.pause.min(self.timeout - waited);
        self.pause = (self.pause * 2).min(Self::MAX_PAUSE);
        Ok(pause)
    }
}

/// Starts a server at `endpoint`.
///
/// ```
/// let url = format!("uds://@ipckit-doc-listen-{}", std::process::id());
/// let mut server = ipckit::listen(&url)?;
/// # std::thread::spawn({
/// #     let url = url.clone();
/// #     move || -> ipckit::Result<()> {
/// #         let client = ipckit::connect(&url)?;
/// #         client.send(b"hi")?;
/// #         client.send(b"quit")
/// #     }
/// # });
/// for msg in server.incoming() {
///     let msg = msg?;
///     if msg.payload() == b"quit" {
///         break;
///     }
///     println!("{:?}", msg.payload());
/// }
/// # Ok::<(), ipckit::Error>(())
/// ```
pub fn listen(endpoint: impl ToEndpoint) -> Result<Server> {
    let endpoint = endpoint.to_endpoint()?;
    let transport = transport::for_endpoint(&endpoint)?;
    transport::check_listen(transport, &endpoint)?;
    let backend = ServerBackend::listen(transport, &endpoint)?;
    let broadcaster = backend.broadcaster();
    if let Some(broadcaster) = &broadcaster {
        broadcaster.roster().set_waker(backend.waker());
    }
    Ok(Server {
        capabilities: transport.capabilities(backend.endpoint()),
        backend,
        broadcaster,
        stopped: Arc::new(AtomicBool::new(false)),
    })
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The sending side of a connection. Every method takes `&self`: share one client between
/// threads, and their requests are in flight together, each reply reaching its caller.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let url = format!("uds://@ipckit-doc-client-{}", std::process::id());
/// let _server = ipckit::listen(&url)?.spawn(|msg| Some(msg.payload().to_ascii_uppercase()));
///
/// let client = Arc::new(ipckit::connect(&url)?);
/// let askers: Vec<_> = ["one", "two", "three"]
///     .into_iter()
///     .map(|word| {
///         let client = Arc::clone(&client);
///         std::thread::spawn(move || client.request(word.as_bytes(), Duration::from_secs(5)))
///     })
///     .collect();
/// for (asker, word) in askers.into_iter().zip(["ONE", "TWO", "THREE"]) {
///     assert_eq!(asker.join().unwrap()?, word.as_bytes());
/// }
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Client {
    backend: ClientBackend,
    capabilities: Capabilities,
    /// What every pushed message carries, made once rather than on every message.
    pushed_from: Pushed,
}

/// Who a client's pushed messages come from, and where, for its every [`Message`].
#[derive(Clone)]
pub(crate) struct Pushed {
    server: Arc<Peer>,
    url: Arc<str>,
}

impl Pushed {
    pub(crate) fn from(endpoint: &Endpoint) -> Pushed {
        Pushed {
            server: Arc::default(),
            url: endpoint.to_string().into(),
        }
    }

    pub(crate) fn message(&self, payload: Vec<u8>) -> Message {
        Message::new(payload, self.server.clone(), None, self.url.clone())
    }
}

impl Client {
    /// Sends one message. Larger than the server accepts is [`Error::MessageTooLarge`],
    /// before anything is written.
    ///
    /// A one-way message: `send` returns once the transport has it (each transport's
    /// module says exactly what that promises), without waiting for the server to read
    /// it, and nobody answers. [`request`](Client::request) waits for an answer. (Over
    /// `udp` and `unixgram` the server cannot tell the two apart: see
    /// [`Message::wants_reply`].)
    ///
    /// ```
    /// let url = format!("uds://@ipckit-doc-send-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// let sender = std::thread::spawn({
    ///     let url = url.clone();
    ///     move || ipckit::connect(&url)?.send(b"job 42")
    /// });
    /// let msg = server.recv()?;
    /// assert_eq!(msg.payload(), b"job 42");
    /// assert!(!msg.wants_reply()); // one-way: nobody waits for an answer
    /// sender.join().unwrap()?;
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn send(&self, payload: &[u8]) -> Result<()> {
        self.backend.send(payload)
    }

    /// Sends one message at `level`, as [`send`](Client::send) does. On `events` it
    /// reaches the listeners that enabled that level (and costs one load when none did);
    /// the other transports carry no levels and deliver it as `send` does.
    ///
    /// ```
    /// use ipckit::Level;
    ///
    /// let url = format!("uds://@ipckit-doc-send-at-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// ipckit::connect(&url)?.send_at(Level::Warning, b"disk 90% full")?;
    /// assert_eq!(server.recv()?.payload(), b"disk 90% full");
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    #[inline]
    pub fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        self.backend.send_at(level, payload)
    }

    /// Whether a message at `level` may reach anyone: false only where the transport
    /// knows that nobody enabled that level (`events`), so that a caller can skip building
    /// the message. One load of shared memory on `events`; `true` on the others.
    ///
    /// ```
    /// use ipckit::Level;
    ///
    /// let url = format!("uds://@ipckit-doc-is-enabled-{}", std::process::id());
    /// let _server = ipckit::listen(&url)?;
    /// let client = ipckit::connect(&url)?;
    /// if client.is_enabled(Level::Verbose) {
    ///     client.send_at(Level::Verbose, format!("state: {:?}", [1, 2, 3]).as_bytes())?;
    /// }
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    #[inline]
    pub fn is_enabled(&self, level: Level) -> bool {
        self.backend.is_enabled(level)
    }

    /// Sends a request and waits up to `timeout` for the reply.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let url = format!("uds://@ipckit-doc-request-{}", std::process::id());
    /// let _server = ipckit::listen(&url)?.spawn(|msg| match msg.payload() {
    ///     b"2+2" => Some(b"4".to_vec()),
    ///     _ => None, // refused: the caller gets Error::Remote at once
    /// });
    ///
    /// let client = ipckit::connect(&url)?;
    /// assert_eq!(client.request(b"2+2", Duration::from_secs(1))?, b"4");
    /// assert!(client.request(b"2/0", Duration::from_secs(1)).is_err());
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    #[inline]
    pub fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.backend.request(payload, timeout)
    }

    /// Sends a request and hands the reply to `read`, returning what `read` returns. On
    /// `shm` the reply is read where it lies in the shared ring, with no copy and no
    /// allocation; elsewhere, and for a reply too large for one record, it is read from a
    /// buffer.
    ///
    /// `read` runs while the reply still holds its space in the ring and while this
    /// client reads replies for nobody else: keep it short, and make no request on the
    /// same client from inside it (that request would wait for it until its timeout).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let url = format!("shm://doc-request-with-{}", std::process::id());
    /// let server = ipckit::listen(url.as_str())?.spawn(|msg| Some(msg.payload().to_vec()));
    /// let client = ipckit::connect(url.as_str())?;
    /// let sum = client.request_with(&[1, 2, 3], Duration::from_secs(5), |reply| {
    ///     reply.iter().map(|&b| u32::from(b)).sum::<u32>()
    /// })?;
    /// assert_eq!(sum, 6);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    #[inline]
    pub fn request_with<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.backend.request_with(payload, timeout, read)
    }

    /// This client for the calling thread alone, as long as the handle lives: for a loop
    /// of sends or requests, which then skip coordinating with other threads (see
    /// [`Exclusive`]).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// let mut client = ipckit::connect("shm://prices")?;
    /// let mut quotes = client.exclusive();
    /// for symbol in ["ABC", "XYZ"] {
    ///     let price = quotes.request_with(symbol.as_bytes(), Duration::from_secs(1), |r| r.len())?;
    /// }
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn exclusive(&mut self) -> Exclusive<'_> {
        Exclusive::new(self.backend.exclusive())
    }

    /// Sends a serde value (encoded with postcard, behind a byte naming its shape); the
    /// server reads it with [`Message::decode`].
    ///
    /// ```no_run
    /// #[derive(serde::Serialize)]
    /// struct Job { id: u32 }
    /// ipckit::connect("uds:///tmp/jobs.sock")?.send_value(&Job { id: 7 })?;
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn send_value<T: Serialize>(&self, value: &T) -> Result<()> {
        self.send(&typed::encode(value, self.endpoint())?)
    }

    /// Sends a serde value as a request and decodes the reply, which the server gives with
    /// [`Message::reply_value`]. A reply that is not a whole `R` (another type, bytes left
    /// over, or a plain [`reply`](Message::reply)) is [`Error::Codec`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Add {
    ///     a: i64,
    ///     b: i64,
    /// }
    ///
    /// let url = format!("uds://@ipckit-doc-request-value-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// std::thread::spawn(move || -> ipckit::Result<()> {
    ///     let mut msg = server.recv()?;
    ///     let Add { a, b } = msg.decode()?;
    ///     msg.reply_value(&(a + b))
    /// });
    ///
    /// let client = ipckit::connect(&url)?;
    /// let sum: i64 = client.request_value(&Add { a: 2, b: 40 }, Duration::from_secs(5))?;
    /// assert_eq!(sum, 42);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn request_value<T: Serialize, R: DeserializeOwned>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<R> {
        let reply = self.request(&typed::encode(value, self.endpoint())?, timeout)?;
        typed::decode(&reply, self.endpoint())
    }

    /// A buffer for a message of `len` bytes, to write into and then
    /// [`send`](Loan::send): on `shm` it is space in the shared ring, so the message is
    /// never copied. Larger than the server accepts is [`Error::MessageTooLarge`].
    ///
    /// ```no_run
    /// let client = ipckit::connect("shm://app")?;
    /// let mut buf = client.loan(4096)?;
    /// let n = std::io::Read::read(&mut std::io::stdin(), &mut buf).unwrap_or(0);
    /// buf.truncate(n);
    /// buf.send()?;
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn loan(&self, len: usize) -> Result<Loan<'_>> {
        if len > self.max_message() {
            return Err(Error::MessageTooLarge {
                endpoint: self.endpoint().to_string(),
                size: len,
                max: self.max_message(),
                limit: "the server's max_message".into(),
            });
        }
        Ok(Loan::new(self.backend.loan(len)?))
    }

    /// Waits for the next message the server pushed to this client
    /// ([`ClientHandle::send`], [`Server::broadcast`]). Pushed messages are never taken
    /// for replies, nor replies for them, however they interleave; threads may call
    /// `recv` and `request` on one client at once. [`Error::Disconnected`] once the
    /// server has gone and every message it pushed was taken; [`Error::Unsupported`] on a
    /// transport that cannot push ([`Capabilities::push`]).
    ///
    /// The message has no way back ([`Message::wants_reply`] is false): answer with
    /// [`send`](Client::send) or [`request`](Client::request).
    ///
    /// A client that calls `recv` reads one message at a time, so that a slow one leaves
    /// the rest in its server's outbox, whose policy then applies. A client that only
    /// makes requests while its server pushes reads the pushes on the way to its replies:
    /// over `uds`, `tcp` and `shm` it keeps the oldest 4,096 unread and drops newer ones
    /// (logged), so that its memory stays bounded.
    ///
    /// ```
    /// let url = format!("uds://@ipckit-doc-client-recv-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// let client = ipckit::connect(&url)?;
    /// client.send(b"subscribe")?;
    /// server.recv()?.client().unwrap().send(b"news")?;
    /// let pushed = client.recv()?;
    /// assert_eq!(pushed.payload(), b"news");
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn recv(&self) -> Result<Message> {
        loop {
            if let Some(message) = self.recv_until(None)? {
                return Ok(message);
            }
        }
    }

    /// [`recv`](Client::recv), waiting up to `timeout`; `Ok(None)` when nothing came.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(Some(deadline))? {
                Some(message) => return Ok(Some(message)),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    /// The messages the server pushes, until it goes away.
    ///
    /// ```no_run
    /// let client = ipckit::connect("uds:///run/app.sock")?;
    /// client.send(b"subscribe")?;
    /// for pushed in client.incoming() {
    ///     println!("{:?}", pushed?.payload());
    /// }
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn incoming(&self) -> impl Iterator<Item = Result<Message>> + '_ {
        let mut ended = false;
        std::iter::from_fn(move || {
            if ended {
                return None;
            }
            match self.recv() {
                Err(Error::Disconnected { .. }) => None,
                received => {
                    ended = received.is_err();
                    Some(received)
                }
            }
        })
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Option<Message>> {
        Ok(self
            .backend
            .recv(deadline)?
            .map(|payload| self.pushed_from.message(payload)))
    }

    /// The largest message the server accepts.
    pub fn max_message(&self) -> usize {
        self.backend.max_message()
    }

    /// Where the client is connected.
    pub fn endpoint(&self) -> &Endpoint {
        self.backend.endpoint()
    }

    /// What the transport promises.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

debug_by_endpoint!(Client);

/// The receiving side: messages from any number of clients, through one loop.
///
/// There is no thread behind a `Server`: connections are accepted and greeted while it
/// waits in [`recv`](Server::recv) (or [`spawn`](Server::spawn) does so), so a client's
/// `connect` completes when the server next waits for messages.
///
/// A server's loop: one-way messages to take in, requests to answer.
///
/// ```
/// use std::time::Duration;
///
/// let url = format!("uds://@ipckit-doc-server-{}", std::process::id());
/// let mut server = ipckit::listen(&url)?;
///
/// let client = std::thread::spawn({
///     let url = url.clone();
///     move || -> ipckit::Result<Vec<u8>> {
///         let client = ipckit::connect(&url)?;
///         client.send(b"hello")?;
///         client.request(b"how are you?", Duration::from_secs(5))
///     }
/// });
///
/// for msg in server.incoming() {
///     let mut msg = msg?;
///     if msg.wants_reply() {
///         msg.reply(b"fine")?;
///         break;
///     }
///     assert_eq!(msg.payload(), b"hello");
/// }
/// assert_eq!(client.join().unwrap()?, b"fine");
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Server {
    backend: ServerBackend,
    capabilities: Capabilities,
    broadcaster: Option<Broadcaster>,
    stopped: Arc<AtomicBool>,
}

impl Server {
    /// Waits for the next message; [`Error::Stopped`] once a [`Stopper`] stopped it.
    ///
    /// ```
    /// let url = format!("uds://@ipckit-doc-recv-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// std::thread::spawn({
    ///     let url = url.clone();
    ///     move || ipckit::connect(&url)?.send(b"hi")
    /// });
    /// let msg = server.recv()?;
    /// assert_eq!(msg.payload(), b"hi");
    /// // Over uds the kernel says who sent it: here, this very process.
    /// assert_eq!(msg.peer().pid, Some(std::process::id()));
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    #[inline]
    pub fn recv(&mut self) -> Result<Message> {
        loop {
            self.check_stopped()?;
            if let Some(message) = self.backend.recv(None)? {
                return Ok(message);
            }
        }
    }

    /// A handle that stops this server's receiving from another thread (a signal-handling
    /// thread, say): see [`Stopper`].
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stopped: self.stopped.clone(),
            wake: self.backend.waker(),
        }
    }

    /// [`Error::Stopped`] once a [`Stopper`] stopped the server. Called before every
    /// wait for messages only, which also forgets the departures that a push found out
    /// (they are reported to [`recv_event`](Server::recv_event) alone).
    #[inline(always)]
    fn check_stopped(&self) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.stopped_error());
        }
        if let Some(broadcaster) = &self.broadcaster {
            while broadcaster.roster().take_departed().is_some() {}
        }
        Ok(())
    }

    /// Waits for the next message, or for a client to connect or leave: see [`Event`].
    /// [`recv`](Server::recv) and the other receiving calls skip the comings and goings;
    /// this is the loop for a server that greets its subscribers or forgets them.
    ///
    /// ```
    /// use ipckit::Event;
    ///
    /// let url = format!("uds://@ipckit-doc-recv-event-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// std::thread::spawn({
    ///     let url = url.clone();
    ///     move || -> ipckit::Result<()> {
    ///         let client = ipckit::connect(&url)?;
    ///         let welcome = client.recv()?;
    ///         client.send(welcome.payload())
    ///     }
    /// });
    /// loop {
    ///     match server.recv_event()? {
    ///         Event::Connected(client) => client.send(b"welcome")?,
    ///         Event::Message(msg) => {
    ///             assert_eq!(msg.payload(), b"welcome");
    ///         }
    ///         Event::Disconnected(_) => break,
    ///         Event::Lost { count } => eprintln!("missed {count}"), // on events only
    ///     }
    /// }
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn recv_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.next_event(None)? {
                return Ok(event);
            }
        }
    }

    /// [`recv_event`](Server::recv_event), waiting up to `timeout`; `Ok(None)` when
    /// nothing happened.
    pub fn recv_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event(Some(deadline))? {
                Some(event) => return Ok(Some(event)),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.stopped_error());
        }
        if let Some(broadcaster) = &self.broadcaster {
            if let Some(departed) = broadcaster.roster().take_departed() {
                return Ok(Some(Event::Disconnected(departed)));
            }
        }
        self.backend.recv_event(deadline)
    }

    /// Sends `payload` to every connected client, never waiting on a slow one: see
    /// [`Broadcaster::broadcast`]. Clients are accepted while the server receives, so a
    /// server that broadcasts keeps a loop receiving too (on another thread, through a
    /// [`broadcaster`](Server::broadcaster)). [`Error::Unsupported`] on a transport that
    /// cannot push ([`Capabilities::push`]).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let url = format!("uds://@ipckit-doc-broadcast-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// let client = ipckit::connect(&url)?;
    /// client.send(b"hello")?;
    /// server.recv()?; // the client is connected once the server has seen it
    /// let delivery = server.broadcast(b"to all")?;
    /// assert_eq!((delivery.sent, delivery.dropped), (1, 0));
    /// assert_eq!(client.recv()?.payload(), b"to all");
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn broadcast(&self, payload: &[u8]) -> Result<Delivery> {
        self.pushing()?.broadcast(payload)
    }

    /// Broadcasts `value` serialized; clients decode it with
    /// [`Message::decode`] on what [`Client::recv`] returns.
    pub fn broadcast_value<T: Serialize + ?Sized>(&self, value: &T) -> Result<Delivery> {
        self.pushing()?.broadcast_value(value)
    }

    /// The clients connected now, oldest first (empty on a transport that cannot push).
    pub fn clients(&self) -> Vec<ClientHandle> {
        self.broadcaster
            .as_ref()
            .map(Broadcaster::clients)
            .unwrap_or_default()
    }

    /// How many messages this server missed in all because they were overwritten before
    /// it read them: the sum of the [`Event::Lost`] counts [`recv_event`](Server::recv_event)
    /// gave or [`recv`](Server::recv) skipped. Always 0 where nothing is overwritten
    /// (every transport but `events`).
    ///
    /// ```
    /// let server = ipckit::listen("tcp://127.0.0.1:0")?;
    /// assert_eq!(server.lost(), 0);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn lost(&self) -> u64 {
        self.backend.lost()
    }

    /// A handle that broadcasts and lists clients from other threads while this server
    /// receives. [`Error::Unsupported`] on a transport that cannot push.
    pub fn broadcaster(&self) -> Result<Broadcaster> {
        self.pushing().cloned()
    }

    fn pushing(&self) -> Result<&Broadcaster> {
        self.broadcaster
            .as_ref()
            .ok_or_else(|| transport::cannot_push(self.endpoint()))
    }

    #[cold]
    fn stopped_error(&self) -> Error {
        Error::Stopped {
            endpoint: self.endpoint().to_string(),
        }
    }

    /// Waits up to `timeout` for the next message; `Ok(None)` when none came.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let mut server = ipckit::listen("tcp://127.0.0.1:0")?;
    /// assert!(server.recv_timeout(Duration::from_millis(10))?.is_none());
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_stopped()?;
            match self.backend.recv(Some(deadline))? {
                Some(message) => return Ok(Some(message)),
                None if Instant::now() >= deadline => return Ok(None),
                None => {}
            }
        }
    }

    /// Waits for the next message and lends it to `handle`, returning what `handle`
    /// returns. The message is not handed over as a [`Message`]: on `shm` its payload is
    /// read and its reply written in the shared rings, with no allocation and no
    /// reference counting on the way, which makes this the fastest way to serve
    /// requests. Elsewhere it is a [`Message`] lent for the call.
    ///
    /// The message's space in the sender's ring is given back when `handle` returns: keep
    /// what it needs beyond that by copying it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let url = format!("shm://doc-recv-with-{}", std::process::id());
    /// let mut server = ipckit::listen(url.as_str())?;
    /// let client = std::thread::spawn({
    ///     let url = url.clone();
    ///     move || ipckit::connect(url.as_str())?.request(b"ping", Duration::from_secs(5))
    /// });
    /// let asked = server.recv_with(|msg| {
    ///     let asked = msg.payload().to_vec();
    ///     msg.reply(b"pong").map(|()| asked)
    /// })??;
    /// assert_eq!(asked, b"ping");
    /// assert_eq!(client.join().unwrap()?, b"pong");
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    #[inline]
    pub fn recv_with<R>(&mut self, handle: impl FnOnce(&mut MessageRef<'_>) -> R) -> Result<R> {
        let mut handle = Some(handle);
        loop {
            self.check_stopped()?;
            if let Some(handled) = self.backend.recv_with(None, &mut handle)? {
                return Ok(handled);
            }
        }
    }

    /// [`recv_with`](Server::recv_with), waiting up to `timeout`; `Ok(None)` when no
    /// message came.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let url = format!("shm://doc-recv-with-timeout-{}", std::process::id());
    /// let mut server = ipckit::listen(url.as_str())?;
    /// let len = server.recv_with_timeout(Duration::from_millis(10), |msg| msg.payload().len())?;
    /// assert_eq!(len, None);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn recv_with_timeout<R>(
        &mut self,
        timeout: Duration,
        handle: impl FnOnce(&mut MessageRef<'_>) -> R,
    ) -> Result<Option<R>> {
        let deadline = Instant::now() + timeout;
        let mut handle = Some(handle);
        loop {
            self.check_stopped()?;
            if let Some(handled) = self.backend.recv_with(Some(deadline), &mut handle)? {
                return Ok(Some(handled));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Serves on this thread: lends every message to `handle`, as
    /// [`recv_with`](Server::recv_with) does, until `handle` returns
    /// [`ControlFlow::Break`]; returns what it broke with. Messages after that one stay
    /// queued for the next call.
    ///
    /// On `shm` this is the fastest way to answer requests: between messages the server
    /// stays in its wait loop, where a loop over `recv_with` leaves it and enters it
    /// again for each message (docs/DESIGN.md gives the measurement). Clients are still
    /// taken in turn, and a server with nothing to do still sleeps.
    ///
    /// ```
    /// # use std::ops::ControlFlow;
    /// # use std::time::Duration;
    /// let url = format!("shm://doc-serve-with-{}", std::process::id());
    /// let mut server = ipckit::listen(url.as_str())?;
    /// let client = std::thread::spawn({
    ///     let url = url.clone();
    ///     move || -> ipckit::Result<()> {
    ///         let client = ipckit::connect(url.as_str())?;
    ///         assert_eq!(client.request(b"ping", Duration::from_secs(5))?, b"pong");
    ///         client.send(b"bye")
    ///     }
    /// });
    /// let served = server.serve_with(|msg| {
    ///     if msg.wants_reply() {
    ///         if let Err(e) = msg.reply(b"pong") {
    ///             return ControlFlow::Break(Err(e));
    ///         }
    ///         return ControlFlow::Continue(());
    ///     }
    ///     ControlFlow::Break(Ok(msg.payload().to_vec()))
    /// })?;
    /// assert_eq!(served?, b"bye");
    /// client.join().unwrap()?;
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn serve_with<B>(
        &mut self,
        handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> Result<B> {
        self.check_stopped()?;
        match self.backend.serve_with(&self.stopped, handle)? {
            Some(value) => Ok(value),
            None => Err(self.stopped_error()),
        }
    }

    /// The messages, until a [`Stopper`] stops the server.
    ///
    /// ```
    /// let url = format!("uds://@ipckit-doc-incoming-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// std::thread::spawn({
    ///     let url = url.clone();
    ///     move || -> ipckit::Result<()> {
    ///         let client = ipckit::connect(&url)?;
    ///         (1..=3).try_for_each(|n| client.send(&[n]))
    ///     }
    /// });
    /// let mut total = 0;
    /// for msg in server.incoming().take(3) {
    ///     total += msg?.payload()[0];
    /// }
    /// assert_eq!(total, 6);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn incoming(&mut self) -> impl Iterator<Item = Result<Message>> + '_ {
        std::iter::from_fn(move || match self.recv() {
            Err(Error::Stopped { .. }) => None,
            received => Some(received),
        })
    }

    /// Serves on a thread of its own, calling `handler` for every message; what it
    /// returns for a request is the reply (`None` refuses it). Dropping the guard stops
    /// the thread and then the server, which removes its endpoint.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let url = format!("uds://@ipckit-doc-spawn-{}", std::process::id());
    /// let guard = ipckit::listen(&url)?.spawn(|msg| Some(msg.payload().to_ascii_uppercase()));
    /// // ... serving until the guard is dropped
    /// # let reply = ipckit::connect(&url)?.request(b"upper", Duration::from_secs(5))?;
    /// # assert_eq!(reply, b"UPPER");
    /// drop(guard);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn spawn<F>(mut self, mut handler: F) -> ServerGuard
    where
        F: FnMut(&Message) -> Option<Vec<u8>> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = self.backend.waker();
        let endpoint = self.endpoint().clone();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ipckit {endpoint}"))
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    match self.backend.recv(None) {
                        Ok(Some(mut message)) => {
                            let reply = handler(&message);
                            if let (Some(reply), true) = (reply, message.wants_reply()) {
                                if let Err(e) = message.reply(&reply) {
                                    log::warn!("{e}");
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            log::error!("{e}; the server stops");
                            break;
                        }
                    }
                }
            })
            .expect("spawning the server thread");
        ServerGuard {
            endpoint,
            stop,
            wake,
            thread: Some(thread),
        }
    }

    /// The endpoint it listens on, with the real port where the kernel chose one.
    pub fn endpoint(&self) -> &Endpoint {
        self.backend.endpoint()
    }

    /// What the transport promises.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

debug_by_endpoint!(Server);

/// Stops a [`Server`]'s receiving from another thread, from [`Server::stopper`]: its
/// blocking calls (`recv`, `recv_timeout`, `recv_with`, `serve_with`) return
/// [`Error::Stopped`], at once if one is waiting, and [`Server::incoming`] ends. Dropping
/// the server then removes its endpoint, as always.
///
/// A program stopped by a signal does that cleanup by stopping its server from a thread
/// that waits for the signal (block the signals in every thread first, and `sigwait` in
/// that one); the `ipckit` command does so for SIGINT, SIGTERM and SIGHUP. (On the tokio
/// API, drop the receiving future instead, in a `select!` with the signal: every
/// receive there is cancel-safe.)
///
/// ```
/// let mut server = ipckit::listen("tcp://127.0.0.1:0")?;
/// let stopper = server.stopper();
/// std::thread::spawn(move || stopper.stop());
/// for message in server.incoming() {
///     println!("{:?}", message?.payload());
/// }
/// // Stopped: the loop ended, and dropping the server cleans up.
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone)]
pub struct Stopper {
    stopped: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Stopper {
    /// Stops the server; its receiving calls return [`Error::Stopped`] from now on.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        (self.wake)();
    }
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A running [`Server::spawn`]: stops the server and cleans up when dropped.
///
/// ```
/// let guard = ipckit::listen("tcp://127.0.0.1:0")?.spawn(|_| None);
/// let url = guard.endpoint().clone();
/// guard.stop(); // the handler thread has ended and the port is free
/// ipckit::listen(&url)?;
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct ServerGuard {
    endpoint: Endpoint,
    stop: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
    thread: Option<JoinHandle<()>>,
}

impl ServerGuard {
    /// A guard that stops `thread`, serving `endpoint`, by calling `wake`.
    pub(crate) fn new(
        endpoint: Endpoint,
        wake: Arc<dyn Fn() + Send + Sync>,
        thread: JoinHandle<()>,
    ) -> ServerGuard {
        ServerGuard {
            endpoint,
            stop: Arc::default(),
            wake,
            thread: Some(thread),
        }
    }

    /// The endpoint it serves.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops the server and waits until it has cleaned up.
    pub fn stop(self) {}
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        (self.wake)();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
