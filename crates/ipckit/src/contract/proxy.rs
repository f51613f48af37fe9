//! The client's side of a contract: a proxy for one object (.NET Remoting's transparent
//! proxy, zbus's `Proxy`), making typed calls over a [`Client`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::describe::Description;
use super::service::Subscribe;
use super::wire::{self, Codec, Failure, Kind, Reply};
use super::{CallError, EventData, EventSet, Method, NoError, OneWay};
use crate::{Client, Endpoint, Error, Message, Result, ToEndpoint};

thread_local! {
    /// Each thread's call body, whose room and head are kept from one call to the next.
    static BODY: std::cell::Cell<Body> = const { std::cell::Cell::new(Body::EMPTY) };
}

/// A call body kept for the thread's next call: when that call is of the same method on
/// the same object in the same codec, as calls in a loop are, its head is there already
/// and only its arguments are written (writing the head cost a fifth of a postcard call's
/// instructions on the client).
struct Body {
    bytes: Vec<u8>,
    /// The call whose head `bytes` begins with, and how long that head is.
    head: Option<(HeadKey, usize)>,
}

/// Which call a head is for: the proxy's target (by its number), the method's name (by
/// where it lies: a name is static, so the same address and length are the same name),
/// and the codec.
#[derive(Clone, Copy, PartialEq, Eq)]
struct HeadKey {
    target: u64,
    method: (usize, usize),
    codec: Codec,
}

impl Body {
    const EMPTY: Body = Body {
        bytes: Vec::new(),
        head: None,
    };
}

impl Default for Body {
    fn default() -> Body {
        Body::EMPTY
    }
}

/// Numbers each [`Target`], for a [`HeadKey`] to tell them apart.
static TARGETS: AtomicU64 = AtomicU64::new(0);

/// How long a call waits for its answer unless told otherwise: D-Bus's default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);

/// One object of a served contract, called through a [`Client`]: typed calls, one-way
/// calls, events, and its description.
///
/// Cheap to share by reference among threads: calls from several threads at once are in
/// flight together, each answered in turn.
///
/// ```no_run
/// use ipckit::contract::Proxy;
/// # use ipckit::contract::{Method, NoError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Add { a: i64, b: i64 }
/// # impl Method for Add { const NAME: &'static str = "add"; type Output = i64; type Error = NoError; }
///
/// let calculator = Proxy::connect("uds:///run/calc.sock#calculator")?;
/// let sum = calculator.call(&Add { a: 2, b: 3 })?;
/// println!("{}", calculator.describe()?);
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Proxy {
    client: Client,
    target: Target,
}

impl Proxy {
    /// Connects to the server at `url` and calls the object its `#name` names (with no
    /// name, the server's only object).
    pub fn connect(url: impl ToEndpoint) -> Result<Proxy> {
        let endpoint = url.to_endpoint()?;
        let client = crate::connect(endpoint.without_object())?;
        Ok(Proxy::new(client, endpoint.object()))
    }

    /// A proxy for `object` (or the server's only object) through `client`.
    pub fn new(client: Client, object: Option<&str>) -> Proxy {
        let target = Target::new(client.endpoint(), object);
        Proxy { client, target }
    }

    /// Calls in `codec` from now on (JSON unless set); a server that does not speak it
    /// is called in JSON instead.
    pub fn with_codec(mut self, codec: Codec) -> Proxy {
        self.target.postcard = AtomicBool::new(codec == Codec::Postcard);
        self
    }

    /// Waits up to `timeout` for each answer ([`DEFAULT_TIMEOUT`] unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Proxy {
        self.target.timeout = timeout;
        self
    }

    /// Calls method `M` with `args` and waits for its result.
    pub fn call<M: Method>(&self, args: &M) -> Result<M::Output, CallError<M::Error>> {
        self.call_timeout(args, self.target.timeout)
    }

    /// Calls method `M` with `args`, waiting up to `timeout` for its result.
    pub fn call_timeout<M: Method>(
        &self,
        args: &M,
        timeout: Duration,
    ) -> Result<M::Output, CallError<M::Error>> {
        self.invoke(M::NAME, args, timeout)
    }

    /// Sends one-way method `M` with `args`, and returns once the transport has it:
    /// nothing answers, not even an error of the server's.
    pub fn notify<M: OneWay>(&self, args: &M) -> Result<()> {
        let body = self.target.encode(self.target.codec(), M::NAME, args)?;
        self.client.send(&body)
    }

    /// Calls `method` with arguments given as JSON text, and returns the result as JSON
    /// text: for callers that know the contract only by its description (`ipckit
    /// call`). An application error is [`CallError::App`] with its JSON text.
    pub fn call_json(&self, method: &str, args: &str) -> Result<String, CallError<String>> {
        let args = self.target.json_args(args).map_err(CallError::Ipc)?;
        let body = wire::call(Codec::Json, self.target.object.as_deref(), method, &args)
            .map_err(|detail| CallError::Ipc(self.target.encode_failed(method, detail)))?;
        let reply = self
            .client
            .request(&body, self.target.timeout)
            .map_err(CallError::Ipc)?;
        self.target.read_json(method, &reply)
    }

    /// Sends one-way `method` with arguments given as JSON text.
    pub fn notify_json(&self, method: &str, args: &str) -> Result<()> {
        let args = self.target.json_args(args).map_err(CallError::Ipc)?;
        let body = wire::call(Codec::Json, self.target.object.as_deref(), method, &args)
            .map_err(|detail| self.target.encode_failed(method, detail))?;
        self.client.send(&body)
    }

    /// What the object offers (or, for a proxy of no named object, every object served).
    pub fn describe(&self) -> Result<Description> {
        Ok(self.invoke::<_, _, NoError>(
            wire::DESCRIBE,
            &Subscribe::default(),
            self.target.timeout,
        )?)
    }

    /// Subscribes to the events of `E` (one [`Event`](super::Event), or a contract's
    /// event enum), and returns them as they come. Events of other objects or names,
    /// and pushes that are no event, are passed over.
    pub fn subscribe<E: EventSet>(&self) -> Result<Events<'_, E>> {
        let wanted = Subscribe {
            events: E::NAMES.iter().map(|n| n.to_string()).collect(),
        };
        let _: Vec<String> =
            self.invoke::<_, _, NoError>(wire::SUBSCRIBE, &wanted, self.target.timeout)?;
        Ok(Events {
            proxy: self,
            _events: std::marker::PhantomData,
        })
    }

    /// The next event of `E`, waiting up to `timeout` (forever for `None`); `Ok(None)`
    /// when the time ran out. After [`subscribe`](Proxy::subscribe).
    pub fn recv_event<E: EventSet>(&self, timeout: Option<Duration>) -> Result<Option<E>> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let msg = match deadline {
                None => self.client.recv()?,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match self.client.recv_timeout(left)? {
                        Some(msg) => msg,
                        None => return Ok(None),
                    }
                }
            };
            if let Some(event) = self.target.read_event(&msg)? {
                return Ok(Some(event));
            }
        }
    }

    /// The client underneath, for anything else it does.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn invoke<A: Serialize, R: DeserializeOwned, E: DeserializeOwned>(
        &self,
        method: &'static str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, CallError<E>> {
        let codec = self.target.codec();
        // The thread's body, taken out for the call (a call made meanwhile, from within
        // it, finds none and makes its own): an allocation saved per call, and the head
        // written once for a run of calls of one method.
        let mut body = BODY.take();
        let key = HeadKey {
            target: self.target.number,
            method: (method.as_ptr() as usize, method.len()),
            codec,
        };
        let written = match body.head {
            Some((made_for, len)) if made_for == key => {
                body.bytes.truncate(len);
                Ok(())
            }
            _ => {
                body.head = None;
                self.target
                    .encode_head(&mut body.bytes, codec, method)
                    .map(|()| body.head = Some((key, body.bytes.len())))
            }
        };
        let answer = written
            .and_then(|()| {
                self.target
                    .encode_args(&mut body.bytes, codec, method, args)
            })
            .and_then(|()| {
                self.client.request_with(&body.bytes, timeout, |reply| {
                    self.target.read(codec, method, reply)
                })
            });
        // Kept for the next call unless a large one made it large.
        if body.bytes.capacity() <= 64 << 10 {
            BODY.set(body);
        }
        match answer.map_err(CallError::Ipc)? {
            Answer::Done(result) => result,
            Answer::Again => self.invoke(method, args, timeout),
        }
    }
}

/// The events of `E` a proxy receives, as an iterator that ends when the server goes.
pub struct Events<'a, E> {
    proxy: &'a Proxy,
    _events: std::marker::PhantomData<fn() -> E>,
}

impl<E: EventSet> Iterator for Events<'_, E> {
    type Item = Result<E>;

    fn next(&mut self) -> Option<Result<E>> {
        match self.proxy.recv_event(None) {
            Ok(Some(event)) => Some(Ok(event)),
            Ok(None) => None,
            Err(Error::Disconnected { .. } | Error::Stopped { .. }) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// What a reply came to: a result, or a call to make again in JSON.
pub(super) enum Answer<R, E> {
    Done(Result<R, CallError<E>>),
    Again,
}

/// What a proxy knows of its object, for both APIs: where it is, how to encode, how
/// long to wait, and how to read what comes back.
pub(super) struct Target {
    pub object: Option<String>,
    /// What each call begins with; `None` for an object name that cannot be encoded,
    /// whose calls then fail to encode.
    head: Option<wire::CallHead>,
    /// The URL with `#object`, for errors.
    pub url: String,
    pub postcard: AtomicBool,
    pub timeout: Duration,
    /// This target's number, unique in the process.
    number: u64,
}

impl Target {
    pub fn new(endpoint: &Endpoint, object: Option<&str>) -> Target {
        let url = match object {
            Some(object) => format!("{endpoint}#{object}"),
            None => endpoint.to_string(),
        };
        Target {
            object: object.map(str::to_string),
            head: wire::CallHead::new(object).ok(),
            url,
            postcard: AtomicBool::new(false),
            timeout: DEFAULT_TIMEOUT,
            number: TARGETS.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn codec(&self) -> Codec {
        if self.postcard.load(Ordering::Relaxed) {
            Codec::Postcard
        } else {
            Codec::Json
        }
    }

    pub fn encode<A: Serialize + ?Sized>(
        &self,
        codec: Codec,
        method: &str,
        args: &A,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_into(&mut out, codec, method, args)?;
        Ok(out)
    }

    /// As [`encode`](Target::encode), into `out`.
    pub fn encode_into<A: Serialize + ?Sized>(
        &self,
        out: &mut Vec<u8>,
        codec: Codec,
        method: &str,
        args: &A,
    ) -> Result<()> {
        match &self.head {
            Some(head) => head.write(out, codec, method, args),
            None => Err("the object's name cannot be encoded".to_string()),
        }
        .map_err(|detail| self.encode_failed(method, detail))
    }

    /// What a call of `method` in `codec` begins with, into `out` (emptied first).
    fn encode_head(&self, out: &mut Vec<u8>, codec: Codec, method: &str) -> Result<()> {
        match &self.head {
            Some(head) => head.write_head(out, codec, method),
            None => Err("the object's name cannot be encoded".to_string()),
        }
        .map_err(|detail| self.encode_failed(method, detail))
    }

    /// The arguments of a call of `method`, after its head in `out`.
    fn encode_args<A: Serialize + ?Sized>(
        &self,
        out: &mut Vec<u8>,
        codec: Codec,
        method: &str,
        args: &A,
    ) -> Result<()> {
        wire::write_args(out, codec, args).map_err(|detail| self.encode_failed(method, detail))
    }

    pub fn encode_failed(&self, method: &str, detail: String) -> Error {
        Error::Codec {
            endpoint: self.url.clone(),
            op: "encode",
            detail: format!("the arguments of '{method}': {detail}"),
        }
    }

    /// What `reply`, to a call of `method` in `codec`, says.
    pub fn read<R: DeserializeOwned, E: DeserializeOwned>(
        &self,
        codec: Codec,
        method: &str,
        reply: &[u8],
    ) -> Answer<R, E> {
        let decoded = |codec: Codec, bytes: &[u8], what: &str| {
            codec.decode(bytes).map_err(|detail| Error::Codec {
                endpoint: self.url.clone(),
                op: "decode",
                detail: format!("the {what} of '{method}': {detail}"),
            })
        };
        // Read in the codec the reply is in: a server that does not speak the call's
        // answers in JSON.
        let answered = Codec::of(reply).unwrap_or(codec);
        // Nearly every reply is `{"ok":…}` or its postcard twin: its result is decoded
        // where it lies, with no parse of the whole reply, unless it proves no result of
        // that shape.
        let result = match answered {
            Codec::Json => wire::ok_shortcut(reply),
            Codec::Postcard => wire::postcard_ok(reply),
        };
        if let Some(Ok(result)) = result.map(|r| answered.decode::<R>(r)) {
            return Answer::Done(Ok(result));
        }
        let reply = match wire::parse_reply(reply) {
            Ok(reply) => reply,
            Err(reason) => {
                return Answer::Done(Err(CallError::Ipc(Error::Protocol {
                    endpoint: self.url.clone(),
                    reason,
                })));
            }
        };
        Answer::Done(match reply {
            Reply::Ok(bytes) => decoded(answered, bytes, "result").map_err(CallError::Ipc),
            Reply::Failed(failure, data) => {
                if failure.kind == Kind::Codec && codec == Codec::Postcard {
                    log::info!(
                        "{}: the server does not speak postcard ({}); calling in JSON",
                        self.url,
                        failure.message
                    );
                    self.postcard.store(false, Ordering::Relaxed);
                    return Answer::Again;
                }
                match failure.kind {
                    Kind::App => {
                        let data = data.unwrap_or(b"null");
                        match answered.decode::<E>(data).map_err(|detail| Error::Codec {
                            endpoint: self.url.clone(),
                            op: "decode",
                            detail: format!("the error of '{method}': {detail}"),
                        }) {
                            Ok(e) => Err(CallError::App(e)),
                            Err(e) => Err(CallError::Ipc(e)),
                        }
                    }
                    _ => Err(CallError::Ipc(self.error(method, failure))),
                }
            }
        })
    }

    /// The [`Error`] a failure other than the application's stands for.
    pub fn error(&self, method: &str, failure: Failure) -> Error {
        let endpoint = self.url.clone();
        let object = self.object.clone().unwrap_or_default();
        match failure.kind {
            Kind::UnknownObject => Error::UnknownObject {
                endpoint,
                object,
                served: failure.served,
            },
            Kind::UnknownMethod => Error::UnknownMethod {
                endpoint,
                object,
                method: method.to_string(),
                methods: failure.served,
            },
            Kind::BadArguments => Error::BadArguments {
                endpoint,
                method: method.to_string(),
                detail: failure.message,
            },
            Kind::Panicked => Error::Panicked {
                endpoint,
                method: method.to_string(),
                detail: failure.message,
            },
            Kind::App | Kind::BadCall | Kind::Codec => Error::Protocol {
                endpoint,
                reason: failure.message,
            },
        }
    }

    pub fn json_args(&self, args: &str) -> Result<Box<serde_json::value::RawValue>> {
        serde_json::value::RawValue::from_string(args.to_string()).map_err(|e| Error::Codec {
            endpoint: self.url.clone(),
            op: "encode",
            detail: format!("the arguments are not JSON ({e}); give them as an object, e.g. '{{\"a\":2,\"b\":3}}'"),
        })
    }

    /// What a reply to a JSON call of `method` says, as JSON text.
    pub fn read_json(&self, method: &str, reply: &[u8]) -> Result<String, CallError<String>> {
        match wire::parse_reply(reply) {
            Ok(Reply::Ok(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Ok(Reply::Failed(failure, data)) if failure.kind == Kind::App => Err(CallError::App(
                String::from_utf8_lossy(data.unwrap_or(b"null")).into_owned(),
            )),
            Ok(Reply::Failed(failure, _)) => Err(CallError::Ipc(self.error(method, failure))),
            Err(reason) => Err(CallError::Ipc(Error::Protocol {
                endpoint: self.url.clone(),
                reason,
            })),
        }
    }

    /// The event of `E` in pushed message `msg`, if it is one of this object's.
    pub fn read_event<E: EventSet>(&self, msg: &Message) -> Result<Option<E>> {
        let pushed = match wire::parse_event(msg.payload()) {
            Ok(pushed) => pushed,
            Err(why) => {
                log::debug!("{}: a push passed over: {why}", self.url);
                return Ok(None);
            }
        };
        if let (Some(mine), Some(theirs)) = (&self.object, &pushed.object) {
            if mine != theirs {
                return Ok(None);
            }
        }
        E::decode(
            &pushed.name,
            EventData {
                codec: pushed.codec,
                bytes: pushed.data,
                endpoint: &self.url,
                name: &pushed.name,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::fuzz::Add;
    use crate::contract::{Object, Service};

    /// A thread's calls of one method keep its head from call to call: calls that
    /// alternate between objects, codecs and proxies each go with their own head.
    #[test]
    fn a_kept_head_is_only_that_of_the_same_call() {
        let url = format!("uds://@ipckit-test-proxy-head-{}", std::process::id());
        let mut service = Service::new();
        service.shared(
            "sum",
            Object::new().method(|_: &(), args: Add| Ok(args.a + args.b)),
            (),
        );
        service.shared(
            "difference",
            Object::new().method(|_: &(), args: Add| Ok(args.a - args.b)),
            (),
        );
        let _guard = service.spawn(crate::listen(&url).unwrap());
        let proxy = |object: &str, codec| {
            Proxy::connect(format!("{url}#{object}"))
                .unwrap()
                .with_codec(codec)
                .with_timeout(Duration::from_secs(10))
        };
        let sum = proxy("sum", Codec::Json);
        let difference = proxy("difference", Codec::Json);
        let sum_postcard = proxy("sum", Codec::Postcard);
        let args = Add { a: 7, b: 2 };
        for _ in 0..3 {
            assert_eq!(sum.call(&args).unwrap(), 9);
            assert_eq!(sum.call(&args).unwrap(), 9);
            assert_eq!(difference.call(&args).unwrap(), 5);
            assert_eq!(sum_postcard.call(&args).unwrap(), 9);
            assert_eq!(difference.call(&args).unwrap(), 5);
            // Another proxy of the same object, whose head is the same bytes.
            assert_eq!(proxy("difference", Codec::Json).call(&args).unwrap(), 5);
        }
    }
}
