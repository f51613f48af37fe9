//! Contracts on tokio: an async proxy, and serving a service from a tokio server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::describe::Description;
use super::proxy::{Answer, Target};
use super::service::Subscribe;
use super::wire::{self, Codec};
use super::{CallError, EventSet, Method, NoError, OneWay, Service};
use crate::push::Event;
use crate::tokio::{Client, Server};
use crate::{Error, Result, ToEndpoint};

/// A [`Proxy`](super::Proxy) on tokio: the same calls, awaited.
///
/// ```no_run
/// # async fn run() -> ipckit::Result<()> {
/// use ipckit::contract::AsyncProxy;
/// # use ipckit::contract::{Method, NoError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Add { a: i64, b: i64 }
/// # impl Method for Add { const NAME: &'static str = "add"; type Output = i64; type Error = NoError; }
///
/// let calculator = AsyncProxy::connect("uds:///run/calc.sock#calculator").await?;
/// let sum = calculator.call(&Add { a: 2, b: 3 }).await?;
/// # Ok(())
/// # }
/// ```
pub struct AsyncProxy {
    client: Client,
    target: Target,
}

impl AsyncProxy {
    /// As [`Proxy::connect`](super::Proxy::connect).
    pub async fn connect(url: impl ToEndpoint) -> Result<AsyncProxy> {
        let endpoint = url.to_endpoint()?;
        let client = crate::tokio::connect(endpoint.without_object()).await?;
        Ok(AsyncProxy::new(client, endpoint.object()))
    }

    /// As [`Proxy::new`](super::Proxy::new).
    pub fn new(client: Client, object: Option<&str>) -> AsyncProxy {
        let target = Target::new(client.endpoint(), object);
        AsyncProxy { client, target }
    }

    /// As [`Proxy::with_codec`](super::Proxy::with_codec).
    pub fn with_codec(mut self, codec: Codec) -> AsyncProxy {
        self.target.postcard = AtomicBool::new(codec == Codec::Postcard);
        self
    }

    /// As [`Proxy::with_timeout`](super::Proxy::with_timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> AsyncProxy {
        self.target.timeout = timeout;
        self
    }

    /// As [`Proxy::call`](super::Proxy::call).
    pub async fn call<M: Method>(&self, args: &M) -> Result<M::Output, CallError<M::Error>> {
        self.call_timeout(args, self.target.timeout).await
    }

    /// As [`Proxy::call_timeout`](super::Proxy::call_timeout).
    pub async fn call_timeout<M: Method>(
        &self,
        args: &M,
        timeout: Duration,
    ) -> Result<M::Output, CallError<M::Error>> {
        self.invoke(M::NAME, args, timeout).await
    }

    /// As [`Proxy::notify`](super::Proxy::notify).
    pub async fn notify<M: OneWay>(&self, args: &M) -> Result<()> {
        let body = self.target.encode(self.target.codec(), M::NAME, args)?;
        self.client.send(&body).await
    }

    /// As [`Proxy::call_json`](super::Proxy::call_json).
    pub async fn call_json(&self, method: &str, args: &str) -> Result<String, CallError<String>> {
        let args = self.target.json_args(args).map_err(CallError::Ipc)?;
        let body = self
            .target
            .encode(Codec::Json, method, &args)
            .map_err(CallError::Ipc)?;
        let reply = self
            .client
            .request(&body, self.target.timeout)
            .await
            .map_err(CallError::Ipc)?;
        self.target.read_json(method, &reply)
    }

    /// As [`Proxy::describe`](super::Proxy::describe).
    pub async fn describe(&self) -> Result<Description> {
        let described: Result<Description, CallError<NoError>> = self
            .invoke(wire::DESCRIBE, &Subscribe::default(), self.target.timeout)
            .await;
        Ok(described?)
    }

    /// As [`Proxy::subscribe`](super::Proxy::subscribe); the events then come from
    /// [`recv_event`](AsyncProxy::recv_event).
    pub async fn subscribe<E: EventSet>(&self) -> Result<()> {
        let wanted = Subscribe {
            events: E::NAMES.iter().map(|n| n.to_string()).collect(),
        };
        let subscribed: Result<Vec<String>, CallError<NoError>> = self
            .invoke(wire::SUBSCRIBE, &wanted, self.target.timeout)
            .await;
        subscribed?;
        Ok(())
    }

    /// The next event of `E`. Cancel-safe, as [`Client::recv`] is.
    pub async fn recv_event<E: EventSet>(&self) -> Result<E> {
        loop {
            let msg = self.client.recv().await?;
            if let Some(event) = self.target.read_event(&msg)? {
                return Ok(event);
            }
        }
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn invoke<A: Serialize, R: DeserializeOwned, E: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, CallError<E>> {
        loop {
            let codec = self.target.codec();
            let body = self
                .target
                .encode(codec, method, args)
                .map_err(CallError::Ipc)?;
            let reply = self
                .client
                .request(&body, timeout)
                .await
                .map_err(CallError::Ipc)?;
            match self.target.read(codec, method, &reply) {
                Answer::Done(result) => return result,
                Answer::Again => continue,
            }
        }
    }
}

impl Service {
    /// Answers calls from a tokio `server` until it fails or is dropped, each call on
    /// tokio's blocking threads (handlers are plain functions, which may take their time
    /// without holding up the runtime). Calls run side by side, so two one-way calls of
    /// one client may run in either order, and as many at once as tokio's blocking pool
    /// allows (512 threads unless the runtime says otherwise).
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn serve_async(self, mut server: Server) -> Result<()> {
        let service = Arc::new(self);
        loop {
            match server.recv_event().await {
                Ok(Event::Message(mut msg)) => {
                    let service = Arc::clone(&service);
                    tokio::task::spawn_blocking(move || service.handle(&mut msg));
                }
                Ok(Event::Disconnected(client)) => service.disconnected(&client),
                Ok(Event::Connected(_) | Event::Lost { .. }) => {}
                Err(Error::Stopped { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}
