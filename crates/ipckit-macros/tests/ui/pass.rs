//! A contract of every kind of method and event, served per connection, its types as
//! callers and introspection see them.

use std::sync::atomic::{AtomicU64, Ordering};

use ipckit::contract::{Method, NoError, OneWay, Service};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Refused(String);

#[ipckit::contract]
pub trait Greeter {
    /// Greets `name`, in `language` if given.
    fn greet(&self, name: String, language: Option<String>) -> String;
    fn check(&self, name: String) -> Result<(), Refused>;
    fn count(&self) -> u64;
    fn reset(&self);
    #[oneway]
    fn forget(&self, name: String);
    #[oneway]
    fn ping(&self) -> ();
    #[event]
    fn greeted(&self, name: String, times: Vec<u64>);
}

#[derive(Default)]
struct Counting(AtomicU64);

impl Greeter for Counting {
    fn greet(&self, name: String, language: Option<String>) -> String {
        self.0.fetch_add(1, Ordering::Relaxed);
        match language.as_deref() {
            Some("fr") => format!("bonjour {name}"),
            _ => format!("hello {name}"),
        }
    }

    fn check(&self, name: String) -> Result<(), Refused> {
        if name.is_empty() { Err(Refused("no name".into())) } else { Ok(()) }
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn forget(&self, _: String) {}

    fn ping(&self) {}
}

fn same<A, B>() -> bool {
    std::any::type_name::<A>() == std::any::type_name::<B>()
}

fn main() {
    let mut service = Service::new();
    service.per_connection("greeter", greeter::object(), Counting::default);
    let _events = GreeterEvents::new(service.publisher("greeter"));

    assert_eq!(<greeter::Greet as Method>::NAME, "greet");
    assert!(same::<<greeter::Greet as Method>::Error, NoError>());
    assert!(same::<<greeter::Check as Method>::Error, Refused>());
    assert!(same::<<greeter::Reset as Method>::Output, ()>());
    assert_eq!(<greeter::Forget as OneWay>::NAME, "forget");
    let params: Vec<_> = greeter::Greet::PARAMS.iter().map(|p| (p.name, p.ty)).collect();
    assert_eq!(params, [("name", "String"), ("language", "Option<String>")]);
    assert_eq!(
        <greeter::Greeted as ipckit::contract::Event>::PARAMS[1].ty,
        "Vec<u64>"
    );
    assert_eq!(
        <greeter::Event as ipckit::contract::EventSet>::NAMES,
        ["greeted"]
    );

    // An optional argument may be left out, as a client older than it does.
    let greet: greeter::Greet = serde_json::from_str(r#"{"name":"ada"}"#).unwrap();
    assert_eq!((greet.name.as_str(), greet.language), ("ada", None));

    // The clients' methods, typed as the contract says.
    let _: fn(&GreeterClient, String, Option<String>) -> ipckit::Result<String> = GreeterClient::greet;
    let _: fn(&GreeterClient, String) -> Result<(), ipckit::contract::CallError<Refused>> = GreeterClient::check;
    let _: fn(&GreeterClient, String) -> ipckit::Result<()> = GreeterClient::forget;
    let _ = GreeterAsyncClient::greet;
}
