//! `#[ipckit::contract]`: a contract's method types, typed clients and server, from a
//! trait. Use it through ipckit (its `macros` feature, on by default), which documents
//! it as [`ipckit::contract`](macro@contract).

mod expand;
mod parse;

use proc_macro::TokenStream;
use syn::{ItemTrait, parse_macro_input};

/// Makes a trait a contract of methods and events, served from any duplex transport:
/// the types, the clients and the server that [`ipckit::contract`] otherwise has written
/// by hand.
///
/// ```
/// use std::sync::Mutex;
///
/// use ipckit::contract::{CallError, Service};
/// use serde::{Deserialize, Serialize};
///
/// /// The contract's own error, which its callers receive typed.
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// pub enum MathError {
///     DivisionByZero,
/// }
///
/// #[ipckit::contract]
/// pub trait Calculator {
///     /// `a + b`.
///     fn add(&self, a: i64, b: i64) -> i64;
///     /// `a / b`, failing with the contract's own error.
///     fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;
///     /// One-way: the caller does not wait.
///     #[oneway]
///     fn log(&self, line: String);
///     /// Pushed to the clients that subscribed.
///     #[event]
///     fn computed(&self, expression: String, result: i64);
/// }
///
/// struct Calc {
///     events: CalculatorEvents,
///     lines: Mutex<Vec<String>>,
/// }
///
/// impl Calculator for Calc {
///     fn add(&self, a: i64, b: i64) -> i64 {
///         let _ = self.events.computed(format!("{a} + {b}"), a + b);
///         a + b
///     }
///
///     fn divide(&self, a: i64, b: i64) -> Result<i64, MathError> {
///         a.checked_div(b).ok_or(MathError::DivisionByZero)
///     }
///
///     fn log(&self, line: String) {
///         self.lines.lock().unwrap().push(line);
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let url = format!("uds://@ipckit-doc-contract-macro-{}", std::process::id());
///     let mut service = Service::new();
///     let events = CalculatorEvents::new(service.publisher("calculator"));
///     let calc = Calc { events, lines: Mutex::default() };
///     service.shared("calculator", calculator::object(), calc);
///     let _server = service.spawn(ipckit::listen(&url)?);
///
///     let client = CalculatorClient::connect(format!("{url}#calculator"))?;
///     let mut events = client.subscribe()?;
///     assert_eq!(client.add(2, 3)?, 5);
///     assert!(matches!(client.divide(1, 0), Err(CallError::App(MathError::DivisionByZero))));
///     client.log("hello".to_string())?;
///     match events.next().unwrap()? {
///         calculator::Event::Computed(computed) => assert_eq!(computed.expression, "2 + 3"),
///     }
///     Ok(())
/// }
/// ```
///
/// # What it writes
///
/// For `pub trait Calculator` above:
///
/// - **The trait** itself, without its events and the helper attributes, with `Send +
///   Sync + 'static` added to its supertraits: the server's side implements it. Its
///   methods take `&self` and may run at once on several threads, so state that changes
///   sits behind a lock or in atomics.
/// - **A module `calculator`** (the trait's name in snake case) with:
///   - a struct per method holding its arguments as public fields, `calculator::Add {
///     a, b }`, implementing [`Method`] (two-way; `Error` is the `E` of a `Result<T,
///     E>` result, [`NoError`] for any other result) or [`OneWay`]; `NAME` is the
///     method's name, and `PARAMS` its arguments' names and types as written, for
///     introspection;
///   - a struct per event, `calculator::Computed { expression, result }`, implementing
///     [`Event`];
///   - `calculator::Event`, an enum of all the contract's events (an [`EventSet`]);
///   - `calculator::object::<T: Calculator>()`, an [`Object`] answering every method
///     with `T` and declaring every event, to host in a [`Service`] as one shared
///     instance (`service.shared("calculator", calculator::object(), calc)`) or one per
///     connection (`service.per_connection("calculator", calculator::object(), ||
///     Calc::default())`).
/// - **`CalculatorClient`**, a blocking client over a [`Proxy`]:
///   `CalculatorClient::connect("uds:///run/app.sock#calculator")`, `::new(proxy)`,
///   `.proxy()`, and one method per method of the trait with its doc comment: an
///   infallible method returns `ipckit::Result<T>`, a failing one
///   `Result<T, CallError<E>>` ([`CallError::App`] holds the application's error), a
///   one-way method `ipckit::Result<()>`. `subscribe()` subscribes to every event and
///   returns them as an iterator of `calculator::Event`.
/// - **`CalculatorAsyncClient`**, the same on tokio over an [`AsyncProxy`], every call
///   awaited; `subscribe().await` returns a `calculator::AsyncEvents` whose `next().await`
///   is the next event. Written only when ipckit has its `tokio` feature.
/// - **`CalculatorEvents`**, made from the [`Publisher`] of the object's name
///   (`CalculatorEvents::new(service.publisher("calculator"))`), with one method per
///   event that emits it: `events.computed(expression, result)`.
///
/// # Evolving a contract
///
/// Arguments travel by name (`{"a":2,"b":3}` in JSON), so a server may gain methods,
/// and a method may gain arguments of type `Option<T>`: such an argument is
/// `#[serde(default)]`, `None` when an older client leaves it out. A client calling a
/// method its server lacks gets `Error::UnknownMethod`. This holds for JSON calls, the
/// default: postcard's bodies are positional, so a proxy calling in postcard needs the
/// server's own version of the contract.
///
/// # Rules
///
/// Each is a compile error, pointing at the item that breaks it:
///
/// - every method takes `&self`, is neither `async` nor generic, and takes its
///   arguments by value, each named by a plain identifier;
/// - a `#[oneway]` method returns nothing (as WCF requires `void` for `IsOneWay`): its
///   caller does not wait for anything to come back;
/// - an `#[event]` has no return type and no body;
/// - no method is named as the clients' own methods (`connect`, `new`, `proxy`,
///   `subscribe`), and no event as the events handle's (`new`, `publisher`);
/// - a failing method names its error: `Result<T, E>`, with `E` the contract's own
///   serde type (not `ipckit::Result<T>`).
///
/// Arguments, results and errors are serde types (`Serialize` and `Deserialize`); the
/// generated argument and event structs also derive `Debug`, so their fields' types
/// implement it.
///
/// The module sees the trait's surroundings through `use super::*`, so the trait stands
/// in a module, not inside a function body.
///
/// [`ipckit::contract`]: https://docs.rs/ipckit/latest/ipckit/contract/index.html
/// [`Method`]: https://docs.rs/ipckit/latest/ipckit/contract/trait.Method.html
/// [`OneWay`]: https://docs.rs/ipckit/latest/ipckit/contract/trait.OneWay.html
/// [`Event`]: https://docs.rs/ipckit/latest/ipckit/contract/trait.Event.html
/// [`EventSet`]: https://docs.rs/ipckit/latest/ipckit/contract/trait.EventSet.html
/// [`NoError`]: https://docs.rs/ipckit/latest/ipckit/contract/enum.NoError.html
/// [`Object`]: https://docs.rs/ipckit/latest/ipckit/contract/struct.Object.html
/// [`Service`]: https://docs.rs/ipckit/latest/ipckit/contract/struct.Service.html
/// [`Proxy`]: https://docs.rs/ipckit/latest/ipckit/contract/struct.Proxy.html
/// [`AsyncProxy`]: https://docs.rs/ipckit/latest/ipckit/contract/struct.AsyncProxy.html
/// [`Publisher`]: https://docs.rs/ipckit/latest/ipckit/contract/struct.Publisher.html
/// [`CallError::App`]: https://docs.rs/ipckit/latest/ipckit/contract/enum.CallError.html#variant.App
#[proc_macro_attribute]
pub fn contract(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::TokenStream::from(attr)
                .into_iter()
                .next()
                .map_or_else(proc_macro2::Span::call_site, |t| t.span()),
            "#[ipckit::contract] takes no arguments",
        )
        .into_compile_error()
        .into();
    }
    let item = parse_macro_input!(item as ItemTrait);
    match parse::contract(item.clone()) {
        Ok(contract) => expand::contract(&contract).into(),
        Err(e) => {
            // The trait stays, so that its uses meet no second error of its absence.
            let mut errors = e.into_compile_error();
            errors.extend(quote::ToTokens::into_token_stream(parse::as_written(item)));
            errors.into()
        }
    }
}
