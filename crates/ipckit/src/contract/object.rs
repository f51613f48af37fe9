//! An object's methods: handlers by name, each decoding its own arguments, so that the
//! service finds a method by its name and never learns its types.

use std::any::type_name;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::describe::{self, EventInfo, MethodInfo};
use super::wire::{self, Codec, Failure, Kind};
use super::{Event, Method, NoError, OneWay};
use crate::push::ClientHandle;

/// What a handler made of a call: whether it wrote a reply body to send (two-way) into
/// the buffer it was given, or nothing (one-way).
pub(super) type Answer = bool;

/// A handler: its answer, written into the buffer it is given (which keeps its room from
/// call to call), or why the arguments do not fit the method (for the service to read
/// the call again, if it took a shortcut, or to say so).
type Handler<T> =
    Box<dyn Fn(&T, Codec, &[u8], &mut Vec<u8>) -> Result<Answer, String> + Send + Sync>;

/// Why an object did not run a call.
pub(super) enum Refusal {
    /// The arguments do not decode as the method's: what is wrong.
    BadArguments(String),
    /// The call cannot be run here: why.
    BadCall(String),
}

/// The methods of an object whose state is a `T`: register a handler for each, then host
/// it in a [`Service`](super::Service).
///
/// Handlers take `&T` and may run at once on several threads (a slow call does not hold
/// up the others): state that changes sits behind a lock or in atomics.
///
/// ```
/// use std::sync::atomic::{AtomicI64, Ordering};
/// use ipckit::contract::{Method, NoError, Object, OneWay};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Add { a: i64, b: i64 }
/// # impl Method for Add { const NAME: &'static str = "add"; type Output = i64; type Error = NoError; }
/// # #[derive(Serialize, Deserialize)] struct Reset {}
/// # impl OneWay for Reset { const NAME: &'static str = "reset"; }
///
/// #[derive(Default)]
/// struct Total(AtomicI64);
///
/// let calculator = Object::new()
///     .method(|total: &Total, args: Add| Ok(total.0.fetch_add(args.a + args.b, Ordering::Relaxed)))
///     .oneway(|total: &Total, _: Reset| total.0.store(0, Ordering::Relaxed));
/// ```
pub struct Object<T> {
    handlers: Vec<(&'static str, Handler<T>)>,
    methods: Vec<MethodInfo>,
    events: Vec<EventInfo>,
}

impl<T> Default for Object<T> {
    fn default() -> Self {
        Object {
            handlers: Vec::new(),
            methods: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<T: Send + Sync + 'static> Object<T> {
    /// An object with no methods yet.
    pub fn new() -> Object<T> {
        Object::default()
    }

    /// Adds two-way method `M`, answered by `handler`.
    ///
    /// # Panics
    ///
    /// If the object has a method of that name already, or the name starts with
    /// `ipckit.` (kept for ipckit's own).
    pub fn method<M: Method>(
        mut self,
        handler: impl Fn(&T, M) -> Result<M::Output, M::Error> + Send + Sync + 'static,
    ) -> Self {
        self.add_name(M::NAME);
        let error = (type_name::<M::Error>() != type_name::<NoError>())
            .then(describe::type_name::<M::Error>);
        self.methods.push(MethodInfo {
            name: M::NAME.to_string(),
            oneway: false,
            args: describe::args_of::<M>(M::PARAMS),
            returns: describe::type_name::<M::Output>(),
            error,
        });
        let handler: Handler<T> = Box::new(move |state, codec, args, out| {
            let answer = match codec.decode::<M>(args) {
                Ok(args) => match handler(state, args) {
                    Ok(output) => match wire::ok_into(out, codec, &output) {
                        Ok(()) => return Ok(true),
                        Err(e) => {
                            let failure = Failure {
                                kind: Kind::Panicked,
                                message: format!("its result could not be encoded: {e}"),
                                served: Vec::new(),
                            };
                            wire::failed::<()>(codec, &failure, None)
                        }
                    },
                    Err(error) => {
                        let failure = Failure {
                            kind: Kind::App,
                            message: format!(
                                "'{}' failed with its error {}",
                                M::NAME,
                                describe::type_name::<M::Error>()
                            ),
                            served: Vec::new(),
                        };
                        wire::failed(codec, &failure, Some(&error))
                    }
                },
                Err(detail) => {
                    return Err(format!(
                        "'{}' takes {}: {detail}",
                        M::NAME,
                        describe::type_name::<M>()
                    ));
                }
            };
            *out = answer;
            Ok(true)
        });
        self.handlers.push((M::NAME, handler));
        self
    }

    /// Adds one-way method `M`, run by `handler`; its caller hears nothing, so a call
    /// whose arguments do not decode is logged and dropped.
    ///
    /// # Panics
    ///
    /// As [`method`](Object::method).
    pub fn oneway<M: OneWay>(mut self, handler: impl Fn(&T, M) + Send + Sync + 'static) -> Self {
        self.add_name(M::NAME);
        self.methods.push(MethodInfo {
            name: M::NAME.to_string(),
            oneway: true,
            args: describe::args_of::<M>(M::PARAMS),
            returns: "()".to_string(),
            error: None,
        });
        let handler: Handler<T> =
            Box::new(move |state, codec, args, _| match codec.decode::<M>(args) {
                Ok(args) => {
                    handler(state, args);
                    Ok(false)
                }
                Err(detail) => Err(format!(
                    "'{}' takes {}: {detail}",
                    M::NAME,
                    describe::type_name::<M>()
                )),
            });
        self.handlers.push((M::NAME, handler));
        self
    }

    /// Declares event `E`, which the object's [`Publisher`](super::Publisher) emits, so
    /// that clients may subscribe to it and introspection lists it.
    pub fn event<E: Event>(mut self) -> Self {
        assert!(
            !self.events.iter().any(|e| e.name == E::NAME),
            "the event '{}' is declared twice",
            E::NAME
        );
        self.events.push(EventInfo {
            name: E::NAME.to_string(),
            args: describe::args_of::<E>(E::PARAMS),
        });
        self
    }

    /// The names of its methods, in the order of their handlers' numbers.
    pub(super) fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.iter().map(|(n, _)| *n)
    }

    fn add_name(&self, name: &'static str) {
        assert!(
            !name.starts_with(wire::RESERVED),
            "method names starting with '{}' are ipckit's own: rename '{name}'",
            wire::RESERVED
        );
        assert!(
            !self.handlers.iter().any(|(n, _)| *n == name),
            "the method '{name}' is added twice"
        );
    }
}

/// How many instances of an object's state there are.
///
/// ```
/// use ipckit::contract::Instance;
///
/// let one_for_all = Instance::Shared(0u64);
/// let one_per_caller = Instance::<u64>::per_connection(|| 0);
/// # let _ = (one_for_all, one_per_caller);
/// ```
pub enum Instance<T> {
    /// One instance serves every client (the default of .NET Remoting's singleton).
    Shared(T),
    /// One instance per client connection, made at its first call and dropped when it
    /// disconnects (WCF's `InstanceContextMode.PerSession`).
    PerConnection(Box<dyn Fn() -> T + Send + Sync>),
}

impl<T> Instance<T> {
    /// One instance per connection, each made by `make`.
    pub fn per_connection(make: impl Fn() -> T + Send + Sync + 'static) -> Instance<T> {
        Instance::PerConnection(Box::new(make))
    }
}

/// Drops a departed client's per-connection instance as a call of it ends.
struct ForgetIfGone<'a, T: Send + Sync + 'static> {
    host: &'a Host<T>,
    client: &'a ClientHandle,
}

impl<T: Send + Sync + 'static> Drop for ForgetIfGone<'_, T> {
    fn drop(&mut self) {
        if !self.client.is_connected() {
            self.host.disconnected(self.client.id());
        }
    }
}

/// An object with its instance(s), as the service holds it: its types erased.
pub(super) trait Hosted: Send + Sync {
    /// The number of the handler of method `method`; `None` when the object has no such
    /// method.
    fn handler(&self, method: &[u8]) -> Option<usize>;
    /// Runs handler `handler` (from [`handler`](Hosted::handler), or the position of its
    /// method in [`Object::names`]) for client `client`.
    fn dispatch(
        &self,
        client: Option<&ClientHandle>,
        handler: usize,
        codec: Codec,
        args: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Answer, Refusal>;
    /// Forgets what belongs to `client`, which has gone.
    fn disconnected(&self, client: u64);
    fn methods(&self) -> &[MethodInfo];
    fn events(&self) -> &[EventInfo];
    fn instance(&self) -> &'static str;
}

pub(super) struct Host<T> {
    object: Object<T>,
    instance: Instances<T>,
}

enum Instances<T> {
    Shared(T),
    PerConnection {
        make: Box<dyn Fn() -> T + Send + Sync>,
        live: Mutex<HashMap<u64, Arc<T>>>,
    },
}

impl<T: Send + Sync + 'static> Host<T> {
    pub(super) fn new(object: Object<T>, instance: Instance<T>) -> Host<T> {
        let instance = match instance {
            Instance::Shared(state) => Instances::Shared(state),
            Instance::PerConnection(make) => Instances::PerConnection {
                make,
                live: Mutex::default(),
            },
        };
        Host { object, instance }
    }
}

impl<T: Send + Sync + 'static> Hosted for Host<T> {
    fn handler(&self, method: &[u8]) -> Option<usize> {
        self.object
            .handlers
            .iter()
            .position(|(n, _)| n.as_bytes() == method)
    }

    fn dispatch(
        &self,
        client: Option<&ClientHandle>,
        handler: usize,
        codec: Codec,
        args: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Answer, Refusal> {
        let (_, handler) = &self.object.handlers[handler];
        match &self.instance {
            Instances::Shared(state) => handler(state, codec, args, out).map_err(Refusal::BadArguments),
            Instances::PerConnection { make, live } => match client {
                Some(client) => {
                    // Whatever way the call ends, panics included: a client whose
                    // departure was handled before or while this call ran would leave
                    // the instance behind. The departure is marked before it is
                    // reported, so this load sees it when the report came first.
                    let _forget_if_gone = ForgetIfGone {
                        host: self,
                        client,
                    };
                    let state = {
                        let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
                        live.entry(client.id())
                            .or_insert_with(|| Arc::new(make()))
                            .clone()
                    };
                    handler(&state, codec, args, out).map_err(Refusal::BadArguments)
                }
                None => Err(Refusal::BadCall("an object with one instance per connection needs a transport that tells its clients apart".to_string())),
            },
        }
    }

    fn disconnected(&self, client: u64) {
        if let Instances::PerConnection { live, .. } = &self.instance {
            let gone = live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&client);
            drop(gone); // outside the lock: the state's Drop may take its time
        }
    }

    fn methods(&self) -> &[MethodInfo] {
        &self.object.methods
    }

    fn events(&self) -> &[EventInfo] {
        &self.object.events
    }

    fn instance(&self) -> &'static str {
        match self.instance {
            Instances::Shared(_) => "shared",
            Instances::PerConnection { .. } => "per_connection",
        }
    }
}
