//! The contract the contract checks serve and call, written by hand (no macro): a
//! calculator in two versions, v2 adding a method (`multiply`) and an optional argument
//! to an existing one (`add`'s `scale`), and the calls the checks steer the server with.
//!
//! The service ([`service`]) hosts three objects: `calculator` (shared), `session` (one
//! instance per connection) and `logger` (shared, with an event of its own).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use ipckit::contract::{Event, Method, NoError, Object, OneWay, Param, Publisher, Service};
use serde::{Deserialize, Serialize};

/// The application's error of `divide`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MathError {
    DivisionByZero,
}

pub mod v1 {
    use super::*;

    /// `add(a, b) -> a + b`
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Add {
        pub a: i64,
        pub b: i64,
    }

    impl Method for Add {
        const NAME: &'static str = "add";
        type Output = i64;
        type Error = NoError;
        const PARAMS: &'static [Param] = &[
            Param {
                name: "a",
                ty: "i64",
            },
            Param {
                name: "b",
                ty: "i64",
            },
        ];
    }
}

pub mod v2 {
    use super::*;

    /// `add(a, b, scale?) -> (a + b) * scale`, `scale` being 1 when not given: v1's
    /// `add` with an optional argument, which v1's callers do not send.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Add {
        pub a: i64,
        pub b: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scale: Option<i64>,
    }

    impl Method for Add {
        const NAME: &'static str = "add";
        type Output = i64;
        type Error = NoError;
    }

    /// `multiply(a, b) -> a * b`: new in v2.
    #[derive(Debug, Serialize, Deserialize)]
    pub struct Multiply {
        pub a: i64,
        pub b: i64,
    }

    impl Method for Multiply {
        const NAME: &'static str = "multiply";
        type Output = i64;
        type Error = NoError;
    }
}

/// `divide(a, b) -> a / b`, or `MathError::DivisionByZero`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Divide {
    pub a: i64,
    pub b: i64,
}

impl Method for Divide {
    const NAME: &'static str = "divide";
    type Output = i64;
    type Error = MathError;
}

/// One-way: keeps `value` in the calculator's notes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Note {
    pub value: u32,
}

impl OneWay for Note {
    const NAME: &'static str = "note";
}

/// The values [`Note`]d so far, in the order their handlers ran.
#[derive(Debug, Serialize, Deserialize)]
pub struct Notes {}

impl Method for Notes {
    const NAME: &'static str = "notes";
    type Output = Vec<u32>;
    type Error = NoError;
}

/// One-way: waits at the gate until [`Open`], then notes `value`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Block {
    pub value: u32,
}

impl OneWay for Block {
    const NAME: &'static str = "block";
}

/// Two-way: waits at the gate until [`Open`] (a handler that never returns, for its
/// caller's timeout).
#[derive(Debug, Serialize, Deserialize)]
pub struct Hang {}

impl Method for Hang {
    const NAME: &'static str = "hang";
    type Output = ();
    type Error = NoError;
}

/// How many handlers wait at the gate.
#[derive(Debug, Serialize, Deserialize)]
pub struct Waiting {}

impl Method for Waiting {
    const NAME: &'static str = "waiting";
    type Output = u32;
    type Error = NoError;
}

/// Opens the gate for every handler waiting there, now and later.
#[derive(Debug, Serialize, Deserialize)]
pub struct Open {}

impl Method for Open {
    const NAME: &'static str = "open";
    type Output = ();
    type Error = NoError;
}

/// A handler that panics.
#[derive(Debug, Serialize, Deserialize)]
pub struct Panic {}

impl Method for Panic {
    const NAME: &'static str = "panic";
    type Output = ();
    type Error = NoError;
}

/// Emits [`Computed`] `count` times (`seq` from `first`), and says what became of the
/// last.
#[derive(Debug, Serialize, Deserialize)]
pub struct Emit {
    pub first: u32,
    pub count: u32,
}

/// What [`Emit`]'s last event came to, as `Publisher::emit` reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emitted {
    pub sent: usize,
    pub dropped: usize,
    pub disconnected: usize,
}

impl Method for Emit {
    const NAME: &'static str = "emit";
    type Output = Emitted;
    type Error = NoError;
}

/// The calculator's event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computed {
    pub seq: u32,
}

impl Event for Computed {
    const NAME: &'static str = "computed";
    const PARAMS: &'static [Param] = &[Param {
        name: "seq",
        ty: "u32",
    }];
}

/// The logger's one method: emits [`Logged`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Log {
    pub line: String,
}

impl Method for Log {
    const NAME: &'static str = "log";
    type Output = Emitted;
    type Error = NoError;
}

/// The logger's event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logged {
    pub line: String,
}

impl Event for Logged {
    const NAME: &'static str = "logged";
}

/// A session's counter: 1 at the first call, then one more at each.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bump {}

impl Method for Bump {
    const NAME: &'static str = "bump";
    type Output = u64;
    type Error = NoError;
}

/// One-way: makes the caller's session, if it has none yet.
#[derive(Debug, Serialize, Deserialize)]
pub struct Touch {}

impl OneWay for Touch {
    const NAME: &'static str = "touch";
}

/// How many session instances are alive.
#[derive(Debug, Serialize, Deserialize)]
pub struct Live {}

impl Method for Live {
    const NAME: &'static str = "live";
    type Output = usize;
    type Error = NoError;
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicU32,
}

impl Gate {
    fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

struct Calculator {
    notes: Mutex<Vec<u32>>,
    gate: Gate,
    events: Publisher,
}

struct Session {
    count: AtomicU64,
    live: Arc<AtomicUsize>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn emitted(delivery: ipckit::Result<ipckit::Delivery>) -> Emitted {
    let delivery = delivery.expect("an event encodes");
    Emitted {
        sent: delivery.sent,
        dropped: delivery.dropped,
        disconnected: delivery.disconnected,
    }
}

/// The service of contract version `version` (1 or 2).
pub fn service(version: u32) -> Service {
    let mut service = Service::new();
    let calculator = Calculator {
        notes: Mutex::default(),
        gate: Gate::default(),
        events: service.publisher("calculator"),
    };
    let object = Object::new();
    let object = if version >= 2 {
        object
            .method(|_: &Calculator, args: v2::Add| Ok((args.a + args.b) * args.scale.unwrap_or(1)))
            .method(|_: &Calculator, args: v2::Multiply| Ok(args.a * args.b))
    } else {
        object.method(|_: &Calculator, args: v1::Add| Ok(args.a + args.b))
    };
    let object = object
        .method(|_: &Calculator, args: Divide| {
            args.a.checked_div(args.b).ok_or(MathError::DivisionByZero)
        })
        .oneway(|calc: &Calculator, args: Note| calc.notes.lock().unwrap().push(args.value))
        .method(|calc: &Calculator, _: Notes| Ok(calc.notes.lock().unwrap().clone()))
        .oneway(|calc: &Calculator, args: Block| {
            calc.gate.pass();
            calc.notes.lock().unwrap().push(args.value);
        })
        .method(|calc: &Calculator, _: Hang| {
            calc.gate.pass();
            Ok(())
        })
        .method(|calc: &Calculator, _: Waiting| Ok(calc.gate.waiting.load(Ordering::SeqCst)))
        .method(|calc: &Calculator, _: Open| {
            calc.gate.open();
            Ok(())
        })
        .method(|_: &Calculator, _: Panic| -> Result<(), NoError> {
            panic!("the panic method panics")
        })
        .method(|calc: &Calculator, args: Emit| {
            let mut last = Emitted {
                sent: 0,
                dropped: 0,
                disconnected: 0,
            };
            for seq in args.first..args.first + args.count {
                last = emitted(calc.events.emit(&Computed { seq }));
            }
            Ok(last)
        })
        .event::<Computed>();
    service.shared("calculator", object, calculator);

    let live = Arc::new(AtomicUsize::new(0));
    let sessions = Object::new()
        .method(|session: &Session, _: Bump| Ok(session.count.fetch_add(1, Ordering::SeqCst) + 1))
        .method(|session: &Session, _: Live| Ok(session.live.load(Ordering::SeqCst)))
        .oneway(|_: &Session, _: Touch| {});
    service.per_connection("session", sessions, move || {
        live.fetch_add(1, Ordering::SeqCst);
        Session {
            count: AtomicU64::new(0),
            live: live.clone(),
        }
    });

    let logger = Object::new()
        .method(|events: &Publisher, args: Log| {
            Ok(emitted(events.emit(&Logged { line: args.line })))
        })
        .event::<Logged>();
    let events = service.publisher("logger");
    service.shared("logger", logger, events);
    service
}
