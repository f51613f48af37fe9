//! Typed contracts and named objects: call `add(2, 3)` on the calculator in another
//! process, over any transport that answers requests.
//!
//! A contract is a set of methods and events. Each **two-way method** is a type that
//! implements [`Method`]: the type holds the arguments, and names the method, what it
//! returns and the application's error. Each **one-way method** implements [`OneWay`]:
//! the caller does not wait, and hears of no failure. Each **event** implements
//! [`Event`]: the server pushes it to the clients that subscribed. The
//! [`#[ipckit::contract]`](macro@crate::contract) macro writes these types from a trait,
//! with typed clients and a way to serve any implementation; they can as well be
//! written by hand, as here (the macro-free form of lsp-types' `Request` and
//! `Notification`).
//!
//! A server hosts **objects** by name in a [`Service`] (the .NET Remoting model: one
//! endpoint, `uds:///run/app.sock#calculator`, `#logger`), each with one shared instance
//! or one instance per client connection ([`Service::per_connection`], WCF's
//! `InstanceContextMode.PerSession`). A [`Proxy`] calls one object. Calls travel as
//! requests, one-way calls as messages, events as pushes, so every duplex transport
//! carries them with no code of its own; docs/PROTOCOL.md (*Contracts*) specifies the
//! bodies, JSON by default so that any language can call, postcard when both sides
//! agree ([`Codec`]).
//!
//! ```
//! use ipckit::contract::{Method, NoError, Object, Proxy, Service};
//! use serde::{Deserialize, Serialize};
//!
//! /// `add(a, b) -> a + b`
//! #[derive(Serialize, Deserialize)]
//! struct Add {
//!     a: i64,
//!     b: i64,
//! }
//!
//! impl Method for Add {
//!     const NAME: &'static str = "add";
//!     type Output = i64;
//!     type Error = NoError;
//! }
//!
//! let url = format!("uds://@ipckit-doc-contract-{}", std::process::id());
//! let mut service = Service::new();
//! service.shared("calculator", Object::new().method(|_: &(), args: Add| Ok(args.a + args.b)), ());
//! let _guard = service.spawn(ipckit::listen(&url)?);
//!
//! let calculator = Proxy::connect(format!("{url}#calculator"))?;
//! assert_eq!(calculator.call(&Add { a: 2, b: 3 })?, 5);
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! # Errors
//!
//! [`Proxy::call`] fails with a [`CallError`]: the application's own error, decoded
//! ([`CallError::App`]), or an [`Error`] saying what else went wrong:
//! [`Error::UnknownObject`] (listing the objects served), [`Error::UnknownMethod`] (a
//! client of a newer contract than its server's), [`Error::BadArguments`] (naming the
//! method and what did not decode), [`Error::Panicked`] (the handler panicked; the
//! server serves on), [`Error::Timeout`] (a handler that does not return), and the
//! transport's own errors.

mod describe;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod object;
mod proxy;
mod serve;
mod service;
mod wire;

#[cfg(feature = "tokio")]
mod on_tokio;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub use describe::{ArgInfo, Description, EventInfo, MethodInfo, ObjectInfo, Param};
pub use object::{Instance, Object};
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use on_tokio::AsyncProxy;
pub use proxy::{DEFAULT_TIMEOUT, Events, Proxy};
pub use service::{Publisher, Service};
pub use wire::Codec;

/// A two-way method of a contract: `Self` holds its arguments (a struct, one field per
/// argument, so that adding an optional argument does not break older callers).
///
/// ```
/// use ipckit::contract::Method;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Divide {
///     a: i64,
///     b: i64,
/// }
///
/// #[derive(Serialize, Deserialize, Debug)]
/// enum MathError {
///     DivisionByZero,
/// }
///
/// impl Method for Divide {
///     const NAME: &'static str = "divide";
///     type Output = i64;
///     type Error = MathError;
/// }
/// ```
pub trait Method: Serialize + DeserializeOwned {
    /// The method's name on the wire.
    const NAME: &'static str;
    /// What a successful call returns.
    type Output: Serialize + DeserializeOwned;
    /// The application's error ([`NoError`] for a method that cannot fail).
    type Error: Serialize + DeserializeOwned;
    /// The arguments' names and types as written, for introspection; when empty, the
    /// names serde gives `Self`'s fields, with their types unknown.
    const PARAMS: &'static [Param] = &[];
}

/// A one-way method of a contract: the caller sends it and goes on; nothing answers, not
/// even an error (WCF's `IsOneWay`, D-Bus's `no_reply`, a JSON-RPC notification).
///
/// ```
/// use ipckit::contract::OneWay;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Log {
///     line: String,
/// }
///
/// impl OneWay for Log {
///     const NAME: &'static str = "log";
/// }
/// ```
pub trait OneWay: Serialize + DeserializeOwned {
    /// The method's name on the wire.
    const NAME: &'static str;
    /// As [`Method::PARAMS`].
    const PARAMS: &'static [Param] = &[];
}

/// An event of a contract, which the server pushes to the clients that subscribed to it
/// ([`Proxy::subscribe`], [`Publisher::emit`]).
///
/// ```
/// use ipckit::contract::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug)]
/// struct Computed {
///     result: i64,
/// }
///
/// impl Event for Computed {
///     const NAME: &'static str = "computed";
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned {
    /// The event's name on the wire.
    const NAME: &'static str;
    /// As [`Method::PARAMS`], for the event's fields.
    const PARAMS: &'static [Param] = &[];
}

/// The events a client listens for: one [`Event`], or an enum of a contract's events
/// (which `#[ipckit::contract]` writes).
pub trait EventSet: Sized {
    /// The events' names, to subscribe to.
    const NAMES: &'static [&'static str];
    /// The event called `name`, from its data; `Ok(None)` when `name` is none of these.
    fn decode(name: &str, data: EventData<'_>) -> Result<Option<Self>, Error>;
}

impl<E: Event> EventSet for E {
    const NAMES: &'static [&'static str] = &[E::NAME];

    fn decode(name: &str, data: EventData<'_>) -> Result<Option<Self>, Error> {
        if name == E::NAME {
            data.decode().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// An event's data as it came, for [`EventSet::decode`] to read as the event's type.
pub struct EventData<'a> {
    codec: Codec,
    bytes: &'a [u8],
    endpoint: &'a str,
    name: &'a str,
}

impl EventData<'_> {
    /// The data as a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.codec
            .decode(self.bytes)
            .map_err(|detail| Error::Codec {
                endpoint: self.endpoint.to_string(),
                op: "decode",
                detail: format!("the data of event '{}': {detail}", self.name),
            })
    }
}

/// The error of a method that cannot fail: it has no values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoError {}

impl fmt::Display for NoError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoError {}

/// Why a [`Proxy::call`] failed: the application's own error, or ipckit's.
///
/// ```
/// use ipckit::contract::CallError;
///
/// let failed: CallError<String> = CallError::App("division by zero".into());
/// assert_eq!(failed.to_string(), "division by zero");
/// ```
#[derive(Debug)]
pub enum CallError<E> {
    /// The method failed, as the application says: its own error, decoded.
    App(E),
    /// The call did not reach the method, or its answer did not come back: an unknown
    /// object or method, arguments that do not fit, a panicking handler, a timeout, the
    /// transport.
    Ipc(Error),
}

impl<E> CallError<E> {
    /// The application's error, if it is one.
    pub fn app(self) -> Option<E> {
        match self {
            CallError::App(e) => Some(e),
            CallError::Ipc(_) => None,
        }
    }
}

/// A method that cannot fail fails only with ipckit's errors, so that `?` takes its
/// calls into an [`ipckit::Result`](crate::Result).
impl From<CallError<NoError>> for Error {
    fn from(e: CallError<NoError>) -> Self {
        match e {
            CallError::App(never) => match never {},
            CallError::Ipc(e) => e,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::App(e) => e.fmt(f),
            CallError::Ipc(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::App(_) => None,
            CallError::Ipc(e) => Some(e),
        }
    }
}
