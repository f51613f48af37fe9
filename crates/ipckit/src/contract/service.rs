//! A service: the objects one server hosts by name, the calls it answers for them, and the
//! clients subscribed to their events.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::Event;
use super::describe::{Description, ObjectInfo};
use super::object::{Host, Hosted, Instance, Object, Refusal};
use super::serve;
use super::wire::{self, Call, Codec, Failure, Kind};
use crate::push::{ClientHandle, Delivery};
use crate::{Error, Message, Result, Server, ServerGuard};

/// The objects one server hosts, by name: it answers their calls from any
/// [`Server`](crate::Server) ([`serve`](Service::serve), [`spawn`](Service::spawn)) or
/// tokio server (`serve_async`, with the `tokio` feature).
///
/// It also answers two calls of its own on every object (docs/PROTOCOL.md):
/// `ipckit.describe`, which returns a [`Description`], and `ipckit.subscribe`, which
/// subscribes the caller to the object's events.
///
/// ```
/// use ipckit::contract::{Object, Service};
///
/// let mut service = Service::new();
/// service.shared("logger", Object::<()>::new(), ());
/// service.per_connection("session", Object::<Vec<String>>::new(), Vec::new);
/// let names: Vec<_> = service.describe().objects.into_iter().map(|o| o.name).collect();
/// assert_eq!(names, ["logger", "session"]);
/// ```
pub struct Service {
    objects: Vec<(String, Box<dyn Hosted>)>,
    /// Every method of every object, as its calls begin: the objects' in turn, each
    /// object's in the order of its handlers (from `first`).
    routes: Vec<Routed>,
    /// Each object's first route.
    first_route: Vec<usize>,
    /// The route of the last call answered, tried first: a client calling one method in
    /// a loop is answered with no parse of its calls' heads and no lookup by name.
    /// Written only when it changes, so that threads answering the same method share
    /// its cache line unwritten.
    last: AtomicUsize,
    subscriptions: Arc<Subscriptions>,
}

thread_local! {
    /// A reply body's room, kept for the thread's next reply.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A method's [`Route`](wire::Route), and where its handler is.
struct Routed {
    route: wire::Route,
    object: usize,
    handler: usize,
    method: &'static str,
}

impl Default for Service {
    fn default() -> Self {
        Service::new()
    }
}

impl Service {
    /// A service hosting nothing yet.
    pub fn new() -> Service {
        Service {
            objects: Vec::new(),
            routes: Vec::new(),
            first_route: Vec::new(),
            last: AtomicUsize::new(0),
            subscriptions: Arc::default(),
        }
    }

    /// Hosts `object` as `name`, with its instance(s).
    ///
    /// # Panics
    ///
    /// If `name` is hosted already, or cannot follow `#` in a URL (letters, digits, `.`,
    /// `_` and `-`).
    pub fn host<T: Send + Sync + 'static>(
        &mut self,
        name: &str,
        object: Object<T>,
        instance: Instance<T>,
    ) -> &mut Service {
        if let Err(why) = crate::endpoint::check_object_name(name) {
            panic!("cannot host an object as '{name}': {why}");
        }
        assert!(
            !self.objects.iter().any(|(n, _)| n == name),
            "an object is hosted as '{name}' already"
        );
        let routes = object.names().enumerate().map(|(handler, method)| Routed {
            route: wire::Route::new(name, method),
            object: self.objects.len(),
            handler,
            method,
        });
        self.first_route.push(self.routes.len());
        self.routes.extend(routes);
        self.objects
            .push((name.to_string(), Box::new(Host::new(object, instance))));
        self
    }

    /// Hosts `object` as `name`, with one `instance` for every client.
    ///
    /// # Panics
    ///
    /// As [`host`](Service::host).
    pub fn shared<T: Send + Sync + 'static>(
        &mut self,
        name: &str,
        object: Object<T>,
        instance: T,
    ) -> &mut Service {
        self.host(name, object, Instance::Shared(instance))
    }

    /// Hosts `object` as `name`, with an instance for each client connection, made by
    /// `make` at its first call and dropped when it disconnects.
    ///
    /// # Panics
    ///
    /// As [`host`](Service::host).
    pub fn per_connection<T: Send + Sync + 'static>(
        &mut self,
        name: &str,
        object: Object<T>,
        make: impl Fn() -> T + Send + Sync + 'static,
    ) -> &mut Service {
        self.host(name, object, Instance::per_connection(make))
    }

    /// What the service hosts, as `ipckit.describe` returns it.
    pub fn describe(&self) -> Description {
        Description {
            objects: self.objects.iter().map(|(n, h)| info(n, &**h)).collect(),
        }
    }

    /// A handle that emits the events of object `object` to the clients subscribed to
    /// them, from any thread; the object's handlers may keep one in their state.
    pub fn publisher(&self, object: &str) -> Publisher {
        Publisher {
            object: object.into(),
            subscriptions: self.subscriptions.clone(),
        }
    }

    /// Answers one message: runs the call it carries and replies, if its sender waits
    /// for a reply. For a server loop of one's own; [`serve`](Service::serve) does this
    /// for every message.
    pub fn handle(&self, msg: &mut Message) {
        // The thread's last reply body, taken out for the call (a call answered
        // meanwhile, from within it, finds none and makes its own): an allocation saved
        // per call.
        let mut body = SPARE.take();
        let answered = self.answer_into(msg.client(), msg.payload(), &mut body);
        match answered {
            true if msg.wants_reply() => {
                if let Err(e) = msg.reply(&body) {
                    log::debug!("a contract reply was not delivered: {e}");
                }
            }
            true => {
                if let Ok(wire::Reply::Failed(failure, _)) = wire::parse_reply(&body) {
                    log::warn!(
                        "{}: a one-way contract call failed: {}",
                        msg.endpoint(),
                        failure.message
                    );
                }
            }
            // A one-way method called as a request: say that it ran.
            false if msg.wants_reply() => {
                let codec = Codec::of(msg.payload()).unwrap_or_default();
                if let Ok(body) = wire::ok(codec, &()) {
                    if let Err(e) = msg.reply(&body) {
                        log::debug!("a contract reply was not delivered: {e}");
                    }
                }
            }
            false => {}
        }
        // Kept for the thread's next reply unless a large one made it large.
        if body.capacity() <= 4096 {
            SPARE.set(body);
        }
    }

    /// Answers calls from `server` on this thread until it is stopped (through its
    /// [`Stopper`](crate::Stopper)), when it returns `Ok`, or fails. A call whose handler
    /// runs long has the server taken over by another thread meanwhile, so that one
    /// slow or stuck handler holds up no other caller.
    ///
    /// Once stopped, it returns when the handler running on this thread, if any, has
    /// returned; handlers running on threads of its own finish on their own, and their
    /// replies find the server gone.
    pub fn serve(self, server: Server) -> Result<()> {
        serve::serve(self, server)
    }

    /// Answers calls from `server` on a thread of its own, until the guard is dropped.
    ///
    /// ```
    /// use ipckit::contract::{Object, Proxy, Service};
    ///
    /// let url = format!("uds://@ipckit-doc-service-spawn-{}", std::process::id());
    /// let mut service = Service::new();
    /// service.shared("nothing", Object::<()>::new(), ());
    /// let guard = service.spawn(ipckit::listen(&url)?);
    /// let methods = Proxy::connect(&url)?.describe()?.objects[0].methods.len();
    /// assert_eq!(methods, 0);
    /// drop(guard);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn spawn(self, server: Server) -> ServerGuard {
        serve::spawn(self, server)
    }

    /// Forgets what the service keeps for `client`, which has gone: its instances and
    /// subscriptions. [`serve`](Service::serve) calls it on every
    /// [`Event::Disconnected`](crate::Event::Disconnected).
    ///
    /// A call of the client's still running, or yet to run, on another thread may find
    /// it gone: its instance is then dropped as the call ends (a departed client is
    /// never connected again), so what a client leaves behind goes away whichever is
    /// seen first.
    pub fn disconnected(&self, client: &ClientHandle) {
        // An instance's Drop that panics must not end the loop that saw the departure.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.forget(client))) {
            log::error!(
                "{}: dropping what a departed client left panicked: {}; serving on",
                client.endpoint(),
                panic_message(&*panic)
            );
        }
    }

    fn forget(&self, client: &ClientHandle) {
        for (_, host) in &self.objects {
            host.disconnected(client.id());
        }
        self.subscriptions.remove(client.id());
    }

    /// The reply body for call `body`, or `None` for a one-way call that went well.
    #[cfg(any(test, fuzzing))]
    pub(super) fn answer(&self, client: Option<&ClientHandle>, body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.answer_into(client, body, &mut out).then_some(out)
    }

    /// As [`answer`](Service::answer), into `out`, whose room is kept from call to call:
    /// whether there is a reply body.
    pub(super) fn answer_into(
        &self,
        client: Option<&ClientHandle>,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        if let Some(answered) = self.answer_routed(client, body, out) {
            return answered;
        }
        match self.answer_parsed(client, body) {
            Some(answer) => {
                *out = answer;
                true
            }
            None => false,
        }
    }

    /// The reply body for call `body`, read the long way.
    fn answer_parsed(&self, client: Option<&ClientHandle>, body: &[u8]) -> Option<Vec<u8>> {
        let mut call = wire::parse_call(body);
        loop {
            let read = match call {
                Ok(read) => read,
                Err(message) => {
                    let kind = match Codec::of(body) {
                        Some(_) => Kind::BadCall,
                        None if body.is_empty() => Kind::BadCall,
                        None => Kind::Codec,
                    };
                    let failure = Failure {
                        kind,
                        message,
                        served: Vec::new(),
                    };
                    return Some(wire::failed::<()>(Codec::Json, &failure, None));
                }
            };
            match self.answer_call(client, &read) {
                Ok(answer) => return answer,
                // Read by the shortcut: the arguments may not be all the rest of the body.
                Err(_) if read.shortcut => call = wire::parse_call_fully(body),
                Err(message) => {
                    let failure = Failure {
                        kind: Kind::BadArguments,
                        message,
                        served: Vec::new(),
                    };
                    return Some(wire::failed::<()>(read.codec, &failure, None));
                }
            }
        }
    }

    /// The reply body for `call`, `None` for a one-way call that went well, or why its
    /// arguments do not decode.
    fn answer_call(
        &self,
        client: Option<&ClientHandle>,
        call: &Call<'_>,
    ) -> Result<Option<Vec<u8>>, String> {
        let codec = call.codec;
        let failed = |kind, message, served| {
            let failure = Failure {
                kind,
                message,
                served,
            };
            Ok(Some(wire::failed::<()>(codec, &failure, None)))
        };
        // Asked of no object, describe answers for the whole service, however many
        // objects it hosts.
        if call.object.is_none() && *call.method == *wire::DESCRIBE.as_bytes() {
            return Ok(wire::ok(codec, &self.describe()).ok());
        }
        let (object, name, host) = match self.find(call.object.as_deref()) {
            Some(found) => found,
            None => {
                let wanted = String::from_utf8_lossy(call.object.as_deref().unwrap_or_default());
                let served = self.objects.iter().map(|(n, _)| n.clone()).collect();
                let message = if wanted.is_empty() {
                    "the call names no object and the server hosts more than one".to_string()
                } else {
                    format!("no object named '{wanted}' is served")
                };
                return failed(Kind::UnknownObject, message, served);
            }
        };
        if call.method.starts_with(wire::RESERVED.as_bytes()) {
            return self.answer_own(client, name, host, call);
        }
        let Some(handler) = host.handler(&call.method) else {
            return failed(
                Kind::UnknownMethod,
                format!(
                    "the object '{name}' has no method '{}'",
                    String::from_utf8_lossy(&call.method)
                ),
                host.methods().iter().map(|m| m.name.clone()).collect(),
            );
        };
        if call.object.is_some() {
            // The next call of this method is known by its head.
            let route = self.first_route[object] + handler;
            if self.last.load(Ordering::Relaxed) != route {
                self.last.store(route, Ordering::Relaxed);
            }
        }
        let method = String::from_utf8_lossy(&call.method);
        let mut out = Vec::new();
        let answered = self.run(
            client, name, host, handler, &method, codec, call.args, &mut out,
        )?;
        Ok(answered.then_some(out))
    }

    /// The answer to a call of the last route answered, if it is one, into `out` (as
    /// [`answer_into`](Service::answer_into)); `None` for any other call, or a JSON call
    /// whose arguments do not decode, which the long way reads again in full.
    #[inline]
    fn answer_routed(
        &self,
        client: Option<&ClientHandle>,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<bool> {
        let routed = self.routes.get(self.last.load(Ordering::Relaxed))?;
        let (codec, args) = routed.route.args(body)?;
        let (name, host) = &self.objects[routed.object];
        let method = routed.method;
        match self.run(
            client,
            name,
            &**host,
            routed.handler,
            method,
            codec,
            args,
            out,
        ) {
            Ok(answer) => Some(answer),
            Err(_) if codec == Codec::Json => None,
            Err(message) => {
                let failure = Failure {
                    kind: Kind::BadArguments,
                    message,
                    served: Vec::new(),
                };
                *out = wire::failed::<()>(codec, &failure, None);
                Some(true)
            }
        }
    }

    /// Runs handler `handler` of object `name`: whether it wrote a reply body into `out`
    /// (not for a one-way call that went well), or why the arguments do not decode.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        client: Option<&ClientHandle>,
        name: &str,
        host: &dyn Hosted,
        handler: usize,
        method: &str,
        codec: Codec,
        args: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let (kind, message) = match catch_unwind(AssertUnwindSafe(|| {
            host.dispatch(client, handler, codec, args, &mut *out)
        })) {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(Refusal::BadArguments(message))) => return Err(message),
            Ok(Err(Refusal::BadCall(why))) => (Kind::BadCall, why),
            Err(panic) => {
                let why = panic_message(&*panic);
                log::error!("the handler of '{name}.{method}' panicked: {why}; serving on");
                (Kind::Panicked, why)
            }
        };
        let failure = Failure {
            kind,
            message,
            served: Vec::new(),
        };
        *out = wire::failed::<()>(codec, &failure, None);
        Ok(true)
    }

    /// The object a call names: the one so named, or the only one for a call that names
    /// none.
    fn find(&self, object: Option<&[u8]>) -> Option<(usize, &str, &dyn Hosted)> {
        let found = match object {
            Some(name) => self.objects.iter().position(|(n, _)| n.as_bytes() == name),
            None if self.objects.len() == 1 => Some(0),
            None => None,
        };
        found.map(|i| (i, self.objects[i].0.as_str(), &*self.objects[i].1))
    }

    /// The answer to one of ipckit's own calls on an object.
    fn answer_own(
        &self,
        client: Option<&ClientHandle>,
        name: &str,
        host: &dyn Hosted,
        call: &Call<'_>,
    ) -> Result<Option<Vec<u8>>, String> {
        let codec = call.codec;
        let failed = |kind, message: String| {
            let failure = Failure {
                kind,
                message,
                served: Vec::new(),
            };
            Ok(Some(wire::failed::<()>(codec, &failure, None)))
        };
        let method = String::from_utf8_lossy(&call.method);
        match &*method {
            wire::DESCRIBE => {
                // Named, an object describes itself; unnamed, the whole service.
                let described = match call.object {
                    Some(_) => Description {
                        objects: vec![info(name, host)],
                    },
                    None => self.describe(),
                };
                Ok(wire::ok(codec, &described).ok())
            }
            wire::SUBSCRIBE => {
                let Some(client) = client else {
                    return failed(
                        Kind::BadCall,
                        "this transport cannot push, so it has no events".to_string(),
                    );
                };
                let wanted: Subscribe = match codec.decode(call.args) {
                    Ok(wanted) => wanted,
                    Err(detail) => {
                        return Err(format!(
                            "'{}' takes {{\"events\": [names]}}: {detail}",
                            wire::SUBSCRIBE
                        ));
                    }
                };
                let declared: Vec<String> = host.events().iter().map(|e| e.name.clone()).collect();
                if let Some(unknown) = wanted.events.iter().find(|e| !declared.contains(e)) {
                    let failure = Failure {
                        kind: Kind::UnknownMethod,
                        message: format!("the object '{name}' has no event '{unknown}'"),
                        served: declared,
                    };
                    return Ok(Some(wire::failed::<()>(codec, &failure, None)));
                }
                let events = if wanted.events.is_empty() {
                    declared
                } else {
                    wanted.events
                };
                self.subscriptions
                    .add(name, client.clone(), codec, events.clone());
                // A departure handled before this call ran would leave the subscription
                // behind: the departure is marked before it is reported.
                if !client.is_connected() {
                    self.subscriptions.remove(client.id());
                }
                Ok(wire::ok(codec, &events).ok())
            }
            other => failed(
                Kind::UnknownMethod,
                format!(
                    "'{other}' is no call of ipckit's own (they are {} and {})",
                    wire::DESCRIBE,
                    wire::SUBSCRIBE
                ),
            ),
        }
    }
}

fn info(name: &str, host: &dyn Hosted) -> ObjectInfo {
    ObjectInfo {
        name: name.to_string(),
        instance: host.instance().to_string(),
        methods: host.methods().to_vec(),
        events: host.events().to_vec(),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic with no message".to_string(),
    }
}

/// The arguments of `ipckit.subscribe`: the events wanted, all the object's when empty.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct Subscribe {
    #[serde(default)]
    pub events: Vec<String>,
}

/// The clients subscribed to each object's events.
#[derive(Default)]
struct Subscriptions {
    by_object: Mutex<HashMap<String, Vec<Subscriber>>>,
}

struct Subscriber {
    client: ClientHandle,
    codec: Codec,
    events: Vec<String>,
}

impl Subscriptions {
    fn add(&self, object: &str, client: ClientHandle, codec: Codec, events: Vec<String>) {
        let mut by_object = self.by_object.lock().unwrap_or_else(|e| e.into_inner());
        let subscribers = by_object.entry(object.to_string()).or_default();
        subscribers.retain(|s| s.client != client);
        subscribers.push(Subscriber {
            client,
            codec,
            events,
        });
    }

    fn remove(&self, client: u64) {
        let mut by_object = self.by_object.lock().unwrap_or_else(|e| e.into_inner());
        for subscribers in by_object.values_mut() {
            subscribers.retain(|s| s.client.id() != client);
        }
    }
}

/// Emits one object's events to the clients subscribed to them (from
/// [`Service::publisher`]); cheap to clone, usable from any thread.
///
/// An event is pushed as the transport pushes ([`ClientHandle::try_send`]): it never
/// waits, and skips a client whose outbox is full, counting it in the [`Delivery`].
#[derive(Clone)]
pub struct Publisher {
    object: Arc<str>,
    subscriptions: Arc<Subscriptions>,
}

impl Publisher {
    /// Pushes `event` to every client subscribed to it.
    pub fn emit<E: Event>(&self, event: &E) -> Result<Delivery, Error> {
        let mut delivery = Delivery::default();
        let mut bodies: [Option<Vec<u8>>; 2] = [None, None];
        let mut by_object = self
            .subscriptions
            .by_object
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(subscribers) = by_object.get_mut(&*self.object) else {
            return Ok(delivery);
        };
        let mut gone = Vec::new();
        for (i, subscriber) in subscribers.iter().enumerate() {
            if !subscriber.events.iter().any(|e| e == E::NAME) {
                continue;
            }
            let slot = &mut bodies[subscriber.codec as usize];
            if slot.is_none() {
                let body = wire::event(subscriber.codec, &self.object, E::NAME, event).map_err(
                    |detail| Error::Codec {
                        endpoint: subscriber.client.endpoint().to_string(),
                        op: "encode",
                        detail: format!("the event '{}': {detail}", E::NAME),
                    },
                )?;
                *slot = Some(body);
            }
            let body = slot.as_deref().unwrap_or_default();
            match subscriber.client.try_send(body) {
                Ok(()) => delivery.sent += 1,
                Err(Error::Full { .. }) => delivery.dropped += 1,
                Err(e) => {
                    log::debug!("an event subscriber has gone: {e}");
                    delivery.disconnected += 1;
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            subscribers.swap_remove(i);
        }
        Ok(delivery)
    }

    /// How many clients are subscribed to event `E`.
    pub fn subscribers<E: Event>(&self) -> usize {
        let by_object = self
            .subscriptions
            .by_object
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        by_object.get(&*self.object).map_or(0, |subscribers| {
            subscribers
                .iter()
                .filter(|s| s.events.iter().any(|e| e == E::NAME))
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn kind(reply: &[u8]) -> Kind {
        match wire::parse_reply(reply) {
            Ok(wire::Reply::Failed(failure, _)) => failure.kind,
            _ => panic!("not a failure: {}", String::from_utf8_lossy(reply)),
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Add {
        a: i64,
        b: i64,
    }

    impl super::super::Method for Add {
        const NAME: &'static str = "add";
        type Output = i64;
        type Error = super::super::NoError;
    }

    #[derive(Serialize, Deserialize)]
    struct Neg {
        a: i64,
    }

    impl super::super::Method for Neg {
        const NAME: &'static str = "neg";
        type Output = i64;
        type Error = super::super::NoError;
    }

    /// Calls known by the head of the last one answered are answered as calls read in
    /// full, in both codecs, whatever came before them; bodies that only begin as a
    /// route's go the long way.
    #[test]
    fn calls_known_by_their_route_are_answered_as_calls_read_in_full() {
        let mut service = Service::new();
        service.shared(
            "calc",
            Object::new()
                .method(|_: &(), args: Add| Ok(args.a + args.b))
                .method(|_: &(), args: Neg| Ok(-args.a)),
            (),
        );
        service.shared(
            "twice",
            Object::new().method(|_: &(), args: Add| Ok(2 * (args.a + args.b))),
            (),
        );
        let route = |object: &str, method: &str| {
            service
                .routes
                .iter()
                .position(|r| service.objects[r.object].0 == object && r.method == method)
                .unwrap()
        };
        for codec in [Codec::Json, Codec::Postcard] {
            let add = wire::call(codec, Some("calc"), "add", &Add { a: 2, b: 3 }).unwrap();
            let neg = wire::call(codec, Some("calc"), "neg", &Neg { a: 7 }).unwrap();
            let twice = wire::call(codec, Some("twice"), "add", &Add { a: 2, b: 3 }).unwrap();
            let unnamed = wire::call(codec, None, "add", &Add { a: 2, b: 3 }).unwrap();
            let mut cut = add.clone();
            cut.pop();
            let mut longer = add.clone();
            longer.push(b'0');
            for _ in 0..2 {
                let answer = |body: &[u8]| service.answer(None, body).unwrap();
                assert_eq!(answer(&add), wire::ok(codec, &5i64).unwrap(), "{codec:?}");
                assert_eq!(service.last.load(Ordering::Relaxed), route("calc", "add"));
                assert_eq!(answer(&add), wire::ok(codec, &5i64).unwrap(), "{codec:?}");
                assert_eq!(answer(&neg), wire::ok(codec, &-7i64).unwrap(), "{codec:?}");
                assert_eq!(service.last.load(Ordering::Relaxed), route("calc", "neg"));
                assert_eq!(
                    answer(&twice),
                    wire::ok(codec, &10i64).unwrap(),
                    "{codec:?}"
                );
                assert_eq!(service.last.load(Ordering::Relaxed), route("twice", "add"));
                assert_eq!(
                    answer(&twice),
                    wire::ok(codec, &10i64).unwrap(),
                    "{codec:?}"
                );
                assert_eq!(kind(&answer(&unnamed)), Kind::UnknownObject, "{codec:?}");
                assert_eq!(answer(&add), wire::ok(codec, &5i64).unwrap(), "{codec:?}");
                for bad in [&cut, &longer] {
                    // A JSON body cut or lengthened is no JSON: no call at all.
                    let expected = match codec {
                        Codec::Json => Kind::BadCall,
                        Codec::Postcard => Kind::BadArguments,
                    };
                    assert_eq!(kind(&answer(bad)), expected, "{codec:?}");
                }
            }
        }
        // After a route's head, a JSON body may hold more than the shortcut reads.
        let answer = |body: &str| service.answer(None, body.as_bytes()).unwrap();
        let plain = r#"{"object":"calc","method":"add","args":{"a":2,"b":3}}"#;
        assert_eq!(answer(plain), br#"{"ok":5}"#);
        let more = r#"{"object":"calc","method":"add","args":{"a":2,"b":3},"later":[1]}"#;
        assert_eq!(answer(more), br#"{"ok":5}"#);
    }

    /// A call read by the shortcut whose arguments do not decode is read again in full:
    /// the answers are those of a full parse, whatever the body.
    #[test]
    fn calls_the_shortcut_misreads_are_answered_as_in_full() {
        // The fuzz target's: `calc` adds, and logs one-way.
        let service = crate::contract::fuzz::service();
        let answer = |body: &str| service.answer(None, body.as_bytes());
        let plain = r#"{"object":"calc","method":"add","args":{"a":2,"b":3}}"#;
        assert_eq!(answer(plain).unwrap(), br#"{"ok":5}"#);
        let more = r#"{"object":"calc","method":"add","args":{"a":2,"b":3},"later":[1]}"#;
        assert_eq!(answer(more).unwrap(), br#"{"ok":5}"#);
        let wrong = r#"{"object":"calc","method":"add","args":{"a":"two","b":3}}"#;
        assert_eq!(kind(&answer(wrong).unwrap()), Kind::BadArguments);
        let broken = r#"{"object":"calc","method":"add","args":{"a":2,,"b":3}}"#;
        assert_eq!(kind(&answer(broken).unwrap()), Kind::BadCall);
        let twice = r#"{"object":"calc","method":"add","args":{"a":2,"b":3},"method":"add"}"#;
        assert_eq!(kind(&answer(twice).unwrap()), Kind::BadCall);
        let note = r#"{"object":"calc","method":"log","args":{"line":"hi"},"later":1}"#;
        assert_eq!(answer(note), None);
        let bad_note = r#"{"object":"calc","method":"log","args":{"line":7}}"#;
        assert_eq!(kind(&answer(bad_note).unwrap()), Kind::BadArguments);
    }
}
