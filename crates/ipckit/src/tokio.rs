//! The async API, on tokio (cargo feature `tokio`): the same endpoints, messages, errors
//! and capabilities as the blocking one, and the same protocol code underneath: each
//! transport drives its one implementation of framing, handshake, correlation and limits
//! with readiness from tokio's reactor on the same descriptors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ipckit::Result<()> {
//! use std::time::Duration;
//!
//! let dir = std::env::temp_dir().join(format!("ipckit-doc-async-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let url = format!("uds://{}/echo.sock", dir.display());
//!
//! let server = ipckit::tokio::listen(&url)?;
//! let serving = tokio::spawn(server.serve(|mut msg| async move {
//!     let echo = msg.payload().to_vec();
//!     let _ = msg.reply(&echo);
//! }));
//!
//! let client = ipckit::tokio::connect(&url).await?;
//! let reply = client.request(b"ping", Duration::from_secs(5)).await?;
//! assert_eq!(reply, b"ping");
//!
//! serving.abort(); // stops the server and removes the socket file
//! # let _ = serving.await;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! Every future here may be dropped at any await point (in `select!`, or by a timeout)
//! without losing a message or breaking the connection; each method says what dropping
//! it leaves behind. [`Message::reply`] never blocks a runtime thread: what the socket
//! does not take at once is written by a task.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::transport::{self, AsyncConnection, AsyncListener, Capabilities};
use tokio::sync::Notify;

use crate::{
    Broadcaster, ClientHandle, ConnectWait, Delivery, Endpoint, Event, Level, Message, MessageRef,
    Result, ToEndpoint, typed,
};

/// Connects to the server at `endpoint`. Dropped before it completes, nothing is left
/// behind but a connection the server sees closed.
///
/// With nothing listening there it fails at once with
/// [`Error::NotFound`](crate::Error::NotFound), or, given `?connect_timeout=` (see
/// [`Endpoint::connect_timeout`]), waits that long for the server to appear, sleeping on
/// the runtime's timer between attempts.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ipckit::Result<()> {
/// let server = ipckit::tokio::listen("tcp://127.0.0.1:0")?; // port 0: the kernel picks one
/// let url = server.endpoint().clone(); // the port it picked
/// tokio::spawn(server.serve(|_| async {}));
///
/// let client = ipckit::tokio::connect(&url).await?;
/// client.send(b"hello").await?;
///
/// // A client that may start before its server gives it time to appear, here 5 s:
/// let patient = ipckit::tokio::connect(format!("{url}?connect_timeout=5s")).await?;
/// patient.send(b"hello").await?;
/// # Ok(())
/// # }
/// ```
pub async fn connect(endpoint: impl ToEndpoint) -> Result<Client> {
    let endpoint = endpoint.to_endpoint()?;
    let transport = transport::for_endpoint(&endpoint)?;
    let mut wait = ConnectWait::new(&endpoint);
    let connection = loop {
        match transport.connect_async(&endpoint).await {
            Ok(connection) => break connection,
            Err(e) => ::tokio::time::sleep(wait.after(e)?).await,
        }
    };
    Ok(Client {
        capabilities: transport.capabilities(&endpoint),
        pushed_from: crate::Pushed::from(&endpoint),
        connection,
    })
}

/// Starts a server at `endpoint`, whose tasks run on the current tokio runtime: call it
/// from within one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ipckit::Result<()> {
/// let url = format!("uds://@ipckit-doc-async-listen-{}", std::process::id());
/// let mut server = ipckit::tokio::listen(&url)?;
/// # tokio::spawn({
/// #     let url = url.clone();
/// #     async move {
/// #         let client = ipckit::tokio::connect(&url).await?;
/// #         client.send(b"hi").await?;
/// #         client.send(b"quit").await
/// #     }
/// # });
/// loop {
///     let msg = server.recv().await?;
///     if msg.payload() == b"quit" {
///         break;
///     }
///     println!("{:?}", msg.payload());
/// }
/// # Ok(())
/// # }
/// ```
pub fn listen(endpoint: impl ToEndpoint) -> Result<Server> {
    let endpoint = endpoint.to_endpoint()?;
    let transport = transport::for_endpoint(&endpoint)?;
    transport::check_listen(transport, &endpoint)?;
    let listener = transport.listen_async(&endpoint)?;
    let broadcaster = listener.broadcaster();
    let departed = Arc::new(Notify::new());
    if let Some(broadcaster) = &broadcaster {
        let departed = departed.clone();
        broadcaster
            .roster()
            .set_waker(Arc::new(move || departed.notify_one()));
    }
    Ok(Server {
        capabilities: transport.capabilities(listener.endpoint()),
        listener,
        broadcaster,
        departed,
    })
}

/// The async sending side of a connection. Every method takes `&self`: share one client
/// between tasks, and their requests are in flight together, each reply reaching its
/// caller.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ipckit::Result<()> {
/// use std::time::Duration;
///
/// let url = format!("uds://@ipckit-doc-async-client-{}", std::process::id());
/// let server = ipckit::tokio::listen(&url)?;
/// tokio::spawn(server.serve(|mut msg| async move {
///     let echo = msg.payload().to_vec();
///     let _ = msg.reply(&echo);
/// }));
///
/// let client = ipckit::tokio::connect(&url).await?;
/// client.send(b"one-way").await?;
/// let timeout = Duration::from_secs(5);
/// // Two requests in flight at once on one connection, each answer to its own caller.
/// let (one, two) = tokio::join!(
///     client.request(b"one", timeout),
///     client.request(b"two", timeout),
/// );
/// assert_eq!((one?, two?), (b"one".to_vec(), b"two".to_vec()));
/// # Ok(())
/// # }
/// ```
pub struct Client {
    connection: Box<dyn AsyncConnection>,
    capabilities: Capabilities,
    /// What every pushed message carries, made once rather than on every message.
    pushed_from: crate::Pushed,
}

impl Client {
    /// Sends one message; resolves once the transport has it (as the blocking `send`
    /// returns). Larger than the server accepts is [`Error::MessageTooLarge`](crate::Error::MessageTooLarge), before
    /// anything is written.
    ///
    /// Dropping the future: the message is sent whole or not at all, never in part, and
    /// the connection stays usable.
    ///
    /// ```no_run
    /// # async fn run(client: ipckit::tokio::Client) -> ipckit::Result<()> {
    /// client.send(b"job 42").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, payload: &[u8]) -> Result<()> {
        self.connection.send(payload).await
    }

    /// Sends one message at `level`, as [`crate::Client::send_at`] does.
    ///
    /// ```no_run
    /// # async fn run(client: ipckit::tokio::Client) -> ipckit::Result<()> {
    /// client.send_at(ipckit::Level::Error, b"disk full").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        self.connection.send_at(level, payload).await
    }

    /// Whether a message at `level` may reach anyone, as [`crate::Client::is_enabled`]
    /// says.
    ///
    /// ```no_run
    /// # async fn run(client: ipckit::tokio::Client) -> ipckit::Result<()> {
    /// if client.is_enabled(ipckit::Level::Verbose) {
    ///     client.send_at(ipckit::Level::Verbose, b"details").await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_enabled(&self, level: Level) -> bool {
        self.connection.is_enabled(level)
    }

    /// Sends a request and waits up to `timeout` for the reply.
    ///
    /// Dropping the future: the request is forgotten; its reply, if one comes, is
    /// discarded, and the connection stays usable for the next one.
    ///
    /// ```no_run
    /// # async fn run(client: ipckit::tokio::Client) -> ipckit::Result<()> {
    /// let answer = client.request(b"2+2", std::time::Duration::from_secs(1)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.connection.request(payload, timeout).await
    }

    /// Sends a serde value (encoded with postcard), as [`send`](Self::send) does.
    ///
    /// ```no_run
    /// # async fn run(client: ipckit::tokio::Client) -> ipckit::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Job { id: u32 }
    /// client.send_value(&Job { id: 7 }).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_value<T: Serialize>(&self, value: &T) -> Result<()> {
        self.send(&typed::encode(value, self.endpoint())?).await
    }

    /// Sends a serde value as a request and decodes the reply, as
    /// [`request`](Self::request) does.
    ///
    /// ```no_run
    /// # async fn run(client: ipckit::tokio::Client) -> ipckit::Result<()> {
    /// let sum: u64 = client
    ///     .request_value(&(2u64, 2u64), std::time::Duration::from_secs(1))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request_value<T: Serialize, R: DeserializeOwned>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<R> {
        let request = typed::encode(value, self.endpoint())?;
        let reply = self.request(&request, timeout).await?;
        typed::decode(&reply, self.endpoint())
    }

    /// Waits for the next message the server pushed to this client, apart from any
    /// reply, as [`crate::Client::recv`] does. Cancel-safe: dropped before it completes,
    /// no message is taken (wrap it in `tokio::time::timeout` or `select!` freely).
    ///
    /// ```no_run
    /// # async fn run(client: ipckit::tokio::Client) -> ipckit::Result<()> {
    /// client.send(b"subscribe").await?;
    /// loop {
    ///     let pushed = client.recv().await?;
    ///     println!("{:?}", pushed.payload());
    /// }
    /// # }
    /// ```
    pub async fn recv(&self) -> Result<Message> {
        let payload = self.connection.recv().await?;
        Ok(self.pushed_from.message(payload))
    }

    /// The largest message the server accepts.
    pub fn max_message(&self) -> usize {
        self.connection.max_message()
    }

    /// Where the client is connected.
    pub fn endpoint(&self) -> &Endpoint {
        self.connection.endpoint()
    }

    /// What the transport promises.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

debug_by_endpoint!(Client);

/// The async receiving side: messages from any number of clients, each connection
/// served by a task of its own. Dropping it stops those tasks, closes the connections and
/// removes the endpoint.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ipckit::Result<()> {
/// use std::time::Duration;
///
/// let url = format!("uds://@ipckit-doc-async-server-{}", std::process::id());
/// let mut server = ipckit::tokio::listen(&url)?;
///
/// let client = tokio::spawn({
///     let url = url.clone();
///     async move {
///         let client = ipckit::tokio::connect(&url).await?;
///         client.send(b"hello").await?;
///         client.request(b"2+2", Duration::from_secs(5)).await
///     }
/// });
///
/// let hello = server.recv().await?;
/// assert_eq!(hello.payload(), b"hello");
/// let mut question = server.recv().await?;
/// question.reply(b"4")?;
/// assert_eq!(client.await.unwrap()?, b"4");
/// # Ok(())
/// # }
/// ```
pub struct Server {
    listener: Box<dyn AsyncListener>,
    capabilities: Capabilities,
    broadcaster: Option<Broadcaster>,
    /// Told when a push finds a client gone, which the listener did not see.
    departed: Arc<Notify>,
}

impl Server {
    /// Waits for the next message. Cancel-safe: dropped before it completes, no message
    /// is taken.
    ///
    /// ```no_run
    /// # async fn run(mut server: ipckit::tokio::Server) -> ipckit::Result<()> {
    /// let mut msg = server.recv().await?;
    /// if msg.wants_reply() {
    ///     msg.reply(b"got it")?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<Message> {
        self.forget_departed();
        self.listener.recv().await
    }

    /// Waits for the next message, or for a client to connect or leave, as
    /// [`crate::Server::recv_event`] does. Cancel-safe: dropped before it completes, no
    /// event is taken.
    ///
    /// ```no_run
    /// use ipckit::Event;
    /// # async fn run(mut server: ipckit::tokio::Server) -> ipckit::Result<()> {
    /// let mut subscribers = Vec::new();
    /// loop {
    ///     match server.recv_event().await? {
    ///         Event::Connected(client) => subscribers.push(client),
    ///         Event::Disconnected(client) => subscribers.retain(|c| c != &client),
    ///         Event::Message(msg) => println!("{:?}", msg.payload()),
    ///         Event::Lost { count } => eprintln!("missed {count}"), // on events only
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn recv_event(&mut self) -> Result<Event> {
        loop {
            if let Some(departed) = self.take_departed() {
                return Ok(Event::Disconnected(departed));
            }
            tokio::select! {
                event = self.listener.recv_event() => return event,
                () = self.departed.notified() => {}
            }
        }
    }

    fn take_departed(&self) -> Option<ClientHandle> {
        self.broadcaster.as_ref()?.roster().take_departed()
    }

    /// Departures found by pushes are reported to `recv_event` alone.
    fn forget_departed(&self) {
        while self.take_departed().is_some() {}
    }

    /// Sends `payload` to every connected client without waiting on any, as
    /// [`crate::Server::broadcast`] does.
    pub fn broadcast(&self, payload: &[u8]) -> Result<Delivery> {
        self.pushing()?.broadcast(payload)
    }

    /// Broadcasts `value` serialized, as [`crate::Server::broadcast_value`] does.
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

    /// How many messages this server missed in all, as [`crate::Server::lost`] says.
    ///
    /// ```no_run
    /// # fn run(server: ipckit::tokio::Server) {
    /// println!("missed {} events", server.lost());
    /// # }
    /// ```
    pub fn lost(&self) -> u64 {
        self.listener.lost()
    }

    /// A handle that broadcasts and lists clients from other tasks and threads while this
    /// server receives; [`Error::Unsupported`](crate::Error::Unsupported) on a transport
    /// that cannot push.
    pub fn broadcaster(&self) -> Result<Broadcaster> {
        self.pushing().cloned()
    }

    fn pushing(&self) -> Result<&Broadcaster> {
        self.broadcaster
            .as_ref()
            .ok_or_else(|| transport::cannot_push(self.endpoint()))
    }

    /// Waits for the next message and lends it to `handle`, returning what `handle`
    /// returns, as [`crate::Server::recv_with`] does: on `shm` the message is read and
    /// answered in the shared rings, with nothing allocated or counted to hand it over.
    /// Cancel-safe, as [`recv`](Self::recv): a message is taken and lent in one step.
    ///
    /// ```no_run
    /// # async fn run(mut server: ipckit::tokio::Server) -> ipckit::Result<()> {
    /// let len = server
    ///     .recv_with(|msg| {
    ///         let len = msg.payload().len();
    ///         if msg.wants_reply() {
    ///             let _ = msg.reply(&len.to_le_bytes());
    ///         }
    ///         len
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_with<R: Send>(
        &mut self,
        handle: impl FnOnce(&mut MessageRef<'_>) -> R + Send,
    ) -> Result<R> {
        let mut once = CallOnce::new(handle);
        self.listener
            .recv_with(&mut |message| once.call(message))
            .await?;
        Ok(once.into_result())
    }

    /// [`recv_with`](Self::recv_with), waiting up to `timeout`; `Ok(None)` when no
    /// message came.
    ///
    /// ```no_run
    /// # async fn run(mut server: ipckit::tokio::Server) -> ipckit::Result<()> {
    /// let timeout = std::time::Duration::from_millis(10);
    /// let len = server.recv_with_timeout(timeout, |msg| msg.payload().len()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_with_timeout<R: Send>(
        &mut self,
        timeout: Duration,
        handle: impl FnOnce(&mut MessageRef<'_>) -> R + Send,
    ) -> Result<Option<R>> {
        match tokio::time::timeout(timeout, self.recv_with(handle)).await {
            Ok(handled) => handled.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    /// Serves on this task: lends every message to `handle`, as
    /// [`recv_with`](Self::recv_with) does, until it returns [`ControlFlow::Break`]; what
    /// it broke with. Messages after that one stay queued. Cancel-safe between messages,
    /// as `recv_with` is. [`serve`](Self::serve) instead hands each message to a task of
    /// its own.
    ///
    /// ```no_run
    /// # use std::ops::ControlFlow;
    /// # async fn run(mut server: ipckit::tokio::Server) -> ipckit::Result<()> {
    /// // Answers requests until a one-way "stop" arrives.
    /// server
    ///     .serve_with(|msg| match msg.wants_reply() {
    ///         true => ControlFlow::Continue(msg.reply(b"pong").unwrap_or_default()),
    ///         false if msg.payload() == b"stop" => ControlFlow::Break(()),
    ///         false => ControlFlow::Continue(()),
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn serve_with<B: Send>(
        &mut self,
        mut handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B> + Send,
    ) -> Result<B> {
        loop {
            if let ControlFlow::Break(value) = self.recv_with(&mut handle).await? {
                return Ok(value);
            }
        }
    }

    /// Waits up to `timeout` for the next message; `Ok(None)` when none came.
    /// Cancel-safe, as [`recv`](Self::recv).
    ///
    /// ```no_run
    /// # async fn run(mut server: ipckit::tokio::Server) -> ipckit::Result<()> {
    /// let maybe = server.recv_timeout(std::time::Duration::from_millis(10)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Message>> {
        match tokio::time::timeout(timeout, self.listener.recv()).await {
            Ok(message) => message.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    /// Serves until the runtime stops it or the server fails: `handler` runs as a task of
    /// its own for every message, so that many clients are served at once. Abort the task
    /// that runs this future (or drop the future) to stop the server.
    ///
    /// ```no_run
    /// # async fn run() -> ipckit::Result<()> {
    /// ipckit::tokio::listen("uds:///tmp/upper.sock")?
    ///     .serve(|mut msg| async move {
    ///         let upper = msg.payload().to_ascii_uppercase();
    ///         let _ = msg.reply(&upper);
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn serve<F, Fut>(mut self, handler: F) -> Result<()>
    where
        F: Fn(Message) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let message = self.recv().await?;
            tokio::spawn(handler(message));
        }
    }

    /// The endpoint it listens on, with the real port where the kernel chose one.
    pub fn endpoint(&self) -> &Endpoint {
        self.listener.endpoint()
    }

    /// What the transport promises.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

debug_by_endpoint!(Server);

/// A caller's `FnOnce` handler behind the `FnMut` a listener calls, once.
struct CallOnce<F, R> {
    call: Option<F>,
    result: Option<R>,
}

impl<F, R> CallOnce<F, R> {
    fn new(call: F) -> Self {
        CallOnce {
            call: Some(call),
            result: None,
        }
    }

    fn call<A>(&mut self, arg: A)
    where
        F: FnOnce(A) -> R,
    {
        if let Some(call) = self.call.take() {
            self.result = Some(call(arg));
        }
    }

    /// What the caller's function returned; only after a transport reported it called.
    fn into_result(self) -> R {
        self.result
            .expect("a transport that reports success has made the call")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Users spawn these futures on a multi-threaded runtime.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let request = async {
            let client = connect("uds:///nowhere").await?;
            client.request(b"", Duration::ZERO).await
        };
        send(&request);
        let receive = async { listen("uds:///nowhere")?.recv().await };
        send(&receive);
    }
}
