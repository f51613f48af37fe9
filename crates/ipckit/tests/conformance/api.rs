//! The API a check drives: the blocking one, or the async one on tokio. Every check is
//! written once against these two types and runs through both; peers drive the same API
//! as the check that started them.
//!
//! The async side runs on one multi-threaded runtime shared by all checks; the check's
//! own thread waits for each future with `block_on`, as a test of an async program's
//! behaviour needs no more.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::sync::LazyLock;
use std::time::Duration;

use ipckit::contract::{CallError, Codec, Description, EventSet, Method, OneWay, Service};
use ipckit::transport::Capabilities;
use ipckit::{Broadcaster, ClientHandle, Endpoint, Error, Event, Level, Message, ToEndpoint};

/// Names the API for a peer process.
pub const API_ENV: &str = "IPCKIT_CONFORMANCE_API";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Blocking,
    Async,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Blocking => "blocking",
            Api::Async => "async",
        }
    }
}

thread_local! {
    static CURRENT: Cell<Option<Api>> = const { Cell::new(None) };
}

/// The API of the check running on this thread, or of this peer process.
pub fn current() -> Api {
    CURRENT
        .with(Cell::get)
        .unwrap_or_else(|| match std::env::var(API_ENV).as_deref() {
            Ok("async") => Api::Async,
            _ => Api::Blocking,
        })
}

/// Makes this thread's checks (and the peers they start) drive `api`.
pub fn set(api: Api) {
    CURRENT.with(|c| c.set(Some(api)));
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.block_on(future)
}

#[derive(Debug)]
pub enum Client {
    Blocking(ipckit::Client),
    Async(ipckit::tokio::Client),
}

pub fn connect(endpoint: impl ToEndpoint) -> Result<Client, Error> {
    match current() {
        Api::Blocking => ipckit::connect(endpoint).map(Client::Blocking),
        Api::Async => block_on(ipckit::tokio::connect(endpoint)).map(Client::Async),
    }
}

impl Client {
    pub fn send(&self, payload: &[u8]) -> Result<(), Error> {
        match self {
            Client::Blocking(c) => c.send(payload),
            Client::Async(c) => block_on(c.send(payload)),
        }
    }

    pub fn send_at(&self, level: Level, payload: &[u8]) -> Result<(), Error> {
        match self {
            Client::Blocking(c) => c.send_at(level, payload),
            Client::Async(c) => block_on(c.send_at(level, payload)),
        }
    }

    pub fn is_enabled(&self, level: Level) -> bool {
        match self {
            Client::Blocking(c) => c.is_enabled(level),
            Client::Async(c) => c.is_enabled(level),
        }
    }

    pub fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, Error> {
        match self {
            Client::Blocking(c) => c.request(payload, timeout),
            Client::Async(c) => block_on(c.request(payload, timeout)),
        }
    }

    pub fn request_value<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<R, Error> {
        match self {
            Client::Blocking(c) => c.request_value(value, timeout),
            Client::Async(c) => block_on(c.request_value(value, timeout)),
        }
    }

    /// A request whose reply `read` reads (in place, where the transport can); the
    /// async API has no such call and reads a copy.
    pub fn request_with<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Error> {
        match self {
            Client::Blocking(c) => c.request_with(payload, timeout, read),
            Client::Async(c) => block_on(c.request(payload, timeout)).map(|reply| read(&reply)),
        }
    }

    /// The next message the server pushed, within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>, Error> {
        match self {
            Client::Blocking(c) => c.recv_timeout(timeout),
            Client::Async(c) => block_on(async {
                tokio::time::timeout(timeout, c.recv())
                    .await
                    .ok()
                    .transpose()
            }),
        }
    }

    pub fn max_message(&self) -> usize {
        match self {
            Client::Blocking(c) => c.max_message(),
            Client::Async(c) => c.max_message(),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        match self {
            Client::Blocking(c) => c.capabilities(),
            Client::Async(c) => c.capabilities(),
        }
    }
}

#[derive(Debug)]
pub enum Server {
    Blocking(ipckit::Server),
    Async(ipckit::tokio::Server),
}

pub fn listen(endpoint: impl ToEndpoint) -> Result<Server, Error> {
    match current() {
        Api::Blocking => ipckit::listen(endpoint).map(Server::Blocking),
        Api::Async => {
            let _entered = RUNTIME.enter();
            ipckit::tokio::listen(endpoint).map(Server::Async)
        }
    }
}

impl Server {
    pub fn recv(&mut self) -> Result<Message, Error> {
        match self {
            Server::Blocking(s) => s.recv(),
            Server::Async(s) => block_on(s.recv()),
        }
    }

    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Message>, Error> {
        match self {
            Server::Blocking(s) => s.recv_timeout(timeout),
            Server::Async(s) => block_on(s.recv_timeout(timeout)),
        }
    }

    /// The next message or client coming or going, within `timeout`.
    pub fn recv_event_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        match self {
            Server::Blocking(s) => s.recv_event_timeout(timeout),
            Server::Async(s) => block_on(async {
                tokio::time::timeout(timeout, s.recv_event())
                    .await
                    .ok()
                    .transpose()
            }),
        }
    }

    /// How many events this listener missed, all told.
    pub fn lost(&self) -> u64 {
        match self {
            Server::Blocking(s) => s.lost(),
            Server::Async(s) => s.lost(),
        }
    }

    pub fn broadcaster(&self) -> Result<Broadcaster, Error> {
        match self {
            Server::Blocking(s) => s.broadcaster(),
            Server::Async(s) => s.broadcaster(),
        }
    }

    pub fn clients(&self) -> Vec<ClientHandle> {
        match self {
            Server::Blocking(s) => s.clients(),
            Server::Async(s) => s.clients(),
        }
    }

    /// Waits up to `timeout` for a message lent by `recv_with` and answers it with what
    /// `answer` makes of its payload (`None`: no answer); false when none came.
    pub fn answer_lent(
        &mut self,
        timeout: Duration,
        answer: impl FnOnce(&[u8], bool) -> Option<Vec<u8>> + Send,
    ) -> Result<bool, Error> {
        let handle = |message: &mut ipckit::MessageRef<'_>| match answer(
            message.payload(),
            message.wants_reply(),
        ) {
            Some(reply) => message.reply(&reply),
            None => Ok(()),
        };
        let answered = match self {
            Server::Blocking(s) => s.recv_with_timeout(timeout, handle)?,
            Server::Async(s) => block_on(s.recv_with_timeout(timeout, handle))?,
        };
        answered.transpose().map(|a| a.is_some())
    }

    /// Serves with `serve_with` until `handle` breaks. `handle` is given each payload and
    /// whether it wants a reply, and says what to reply, if anything, and whether to go on.
    pub fn serve_until<B: Send>(
        &mut self,
        mut handle: impl FnMut(&[u8], bool) -> (Option<Vec<u8>>, ControlFlow<B>) + Send,
    ) -> Result<B, Error> {
        let lend = |message: &mut ipckit::MessageRef<'_>| {
            let (reply, flow) = handle(message.payload(), message.wants_reply());
            match reply.map(|reply| message.reply(&reply)) {
                Some(Err(e)) => ControlFlow::Break(Err(e)),
                _ => flow.map_break(Ok),
            }
        };
        match self {
            Server::Blocking(s) => s.serve_with(lend)?,
            Server::Async(s) => block_on(s.serve_with(lend))?,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        match self {
            Server::Blocking(s) => s.endpoint(),
            Server::Async(s) => s.endpoint(),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        match self {
            Server::Blocking(s) => s.capabilities(),
            Server::Async(s) => s.capabilities(),
        }
    }

    /// The article's Start/Received/Stop: `Server::spawn` on the blocking side, `serve`
    /// in a task on the async side. Dropping the guard stops the server and waits until
    /// it has cleaned up.
    pub fn spawn<F>(self, handler: F) -> Guard
    where
        F: Fn(&Message) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        match self {
            Server::Blocking(s) => Guard::Blocking(s.spawn(handler)),
            Server::Async(s) => {
                let endpoint = s.endpoint().clone();
                let handler = std::sync::Arc::new(handler);
                let task = RUNTIME.spawn(s.serve(move |mut message| {
                    let handler = handler.clone();
                    async move {
                        if let Some(reply) = handler(&message) {
                            if message.wants_reply() {
                                let _ = message.reply(&reply);
                            }
                        }
                    }
                }));
                Guard::Async {
                    endpoint,
                    task: Some(task),
                }
            }
        }
    }
}

pub enum Guard {
    Blocking(ipckit::ServerGuard),
    Async {
        endpoint: Endpoint,
        task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
    },
}

impl Guard {
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            Guard::Blocking(g) => g.endpoint(),
            Guard::Async { endpoint, .. } => endpoint,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Async { task, .. } = self {
            if let Some(task) = task.take() {
                task.abort();
                // The server is dropped (its endpoint removed) when the aborted task is.
                let _ = block_on(task);
            }
        }
    }
}

/// A contract proxy for one object: `ipckit::contract::Proxy`, or `AsyncProxy` on tokio.
pub enum Proxy {
    Blocking(ipckit::contract::Proxy),
    Async(ipckit::contract::AsyncProxy),
}

/// A proxy for the object `url`'s `#name` names (or the server's only object).
pub fn proxy(url: impl ToEndpoint) -> Result<Proxy, Error> {
    match current() {
        Api::Blocking => ipckit::contract::Proxy::connect(url).map(Proxy::Blocking),
        Api::Async => block_on(ipckit::contract::AsyncProxy::connect(url)).map(Proxy::Async),
    }
}

impl Proxy {
    pub fn with_codec(self, codec: Codec) -> Proxy {
        match self {
            Proxy::Blocking(p) => Proxy::Blocking(p.with_codec(codec)),
            Proxy::Async(p) => Proxy::Async(p.with_codec(codec)),
        }
    }

    pub fn with_timeout(self, timeout: Duration) -> Proxy {
        match self {
            Proxy::Blocking(p) => Proxy::Blocking(p.with_timeout(timeout)),
            Proxy::Async(p) => Proxy::Async(p.with_timeout(timeout)),
        }
    }

    pub fn call<M: Method>(&self, args: &M) -> Result<M::Output, CallError<M::Error>> {
        match self {
            Proxy::Blocking(p) => p.call(args),
            Proxy::Async(p) => block_on(p.call(args)),
        }
    }

    pub fn notify<M: OneWay>(&self, args: &M) -> Result<(), Error> {
        match self {
            Proxy::Blocking(p) => p.notify(args),
            Proxy::Async(p) => block_on(p.notify(args)),
        }
    }

    pub fn call_json(&self, method: &str, args: &str) -> Result<String, CallError<String>> {
        match self {
            Proxy::Blocking(p) => p.call_json(method, args),
            Proxy::Async(p) => block_on(p.call_json(method, args)),
        }
    }

    pub fn describe(&self) -> Result<Description, Error> {
        match self {
            Proxy::Blocking(p) => p.describe(),
            Proxy::Async(p) => block_on(p.describe()),
        }
    }

    /// Subscribes to `E`; its events then come from [`recv_event`](Proxy::recv_event).
    pub fn subscribe<E: EventSet>(&self) -> Result<(), Error> {
        match self {
            Proxy::Blocking(p) => p.subscribe::<E>().map(drop),
            Proxy::Async(p) => block_on(p.subscribe::<E>()),
        }
    }

    /// The next event of `E` within `timeout`.
    pub fn recv_event<E: EventSet>(&self, timeout: Duration) -> Result<Option<E>, Error> {
        match self {
            Proxy::Blocking(p) => p.recv_event(Some(timeout)),
            Proxy::Async(p) => block_on(async {
                tokio::time::timeout(timeout, p.recv_event())
                    .await
                    .ok()
                    .transpose()
            }),
        }
    }

    /// The next message pushed to the proxy's client, whatever it is, within `timeout`.
    pub fn recv_push(&self, timeout: Duration) -> Result<Option<Message>, Error> {
        match self {
            Proxy::Blocking(p) => p.client().recv_timeout(timeout),
            Proxy::Async(p) => block_on(async {
                tokio::time::timeout(timeout, p.client().recv())
                    .await
                    .ok()
                    .transpose()
            }),
        }
    }
}

/// Serves `service` from `server` until the server stops: `Service::serve`, or
/// `serve_async` on the shared runtime.
pub fn serve_service(service: Service, server: Server) -> Result<(), Error> {
    match server {
        Server::Blocking(s) => service.serve(s),
        Server::Async(s) => block_on(service.serve_async(s)),
    }
}
