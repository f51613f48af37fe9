//! The article's WCF sample done in ipckit: a service contract written as a Rust trait,
//! with a two-way method, one that fails with the contract's own error, a one-way method
//! and events, served by one process and called, typed, by another.
//!
//! The server hosts two objects at one endpoint (.NET Remoting's named objects):
//! `#calculator`, one instance shared by every client, and `#session`, one instance per
//! client connection (WCF's `InstanceContextMode.PerSession`).
//!
//! ```text
//! cargo run -p ipckit --example calculator -- serve uds:///tmp/calc.sock
//! cargo run -p ipckit --example calculator -- call uds:///tmp/calc.sock
//! cargo run -p ipckit --example calculator --features tokio -- call-async uds:///tmp/calc.sock
//! ipckit call uds:///tmp/calc.sock#calculator add '{"a":2,"b":3}'
//! ```
//!
//! The server prints `ready URL` once it listens, and serves until SIGINT or SIGTERM, or
//! until its standard input, if a pipe, closes.

use std::sync::atomic::{AtomicI64, Ordering};

use ipckit::contract::{CallError, Service};
use serde::{Deserialize, Serialize};

/// Where the pair meet unless told otherwise.
pub const DEFAULT_URL: &str = "uds:///tmp/ipckit-calculator.sock";

/// The calculator's own error: its callers receive it as this type.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum MathError {
    /// The divisor was 0.
    DivisionByZero,
    /// The result does not fit an `i64`.
    Overflow,
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MathError::DivisionByZero => "division by zero",
            MathError::Overflow => "the result does not fit an i64",
        })
    }
}

impl std::error::Error for MathError {}

#[ipckit::contract]
pub trait Calculator {
    /// `a + b`.
    fn add(&self, a: i64, b: i64) -> i64;
    /// `a / b`, rounded towards zero.
    fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// The article's `Send(string)`: one way, the caller does not wait.
    #[oneway]
    fn send(&self, text: String);
    /// Pushed after each computation.
    #[event]
    fn computed(&self, expression: String, result: i64);
    /// The article's `Received` event: a text some client sent.
    #[event]
    fn received(&self, text: String);
}

#[ipckit::contract]
pub trait Session {
    /// Adds `value` to this connection's tally and returns the tally: each connection
    /// has its own.
    fn tally(&self, value: i64) -> i64;
}

/// The shared calculator.
struct Calc {
    events: CalculatorEvents,
}

impl Calc {
    fn computed(&self, expression: String, result: i64) {
        // Nobody subscribed is no failure; a client gone is the publisher's to drop.
        if let Err(e) = self.events.computed(expression, result) {
            eprintln!("the event was not emitted: {e}");
        }
    }
}

impl Calculator for Calc {
    fn add(&self, a: i64, b: i64) -> i64 {
        let sum = a.wrapping_add(b);
        self.computed(format!("{a} + {b}"), sum);
        sum
    }

    fn divide(&self, a: i64, b: i64) -> Result<i64, MathError> {
        let quotient = match (a.checked_div(b), b) {
            (Some(q), _) => q,
            (None, 0) => return Err(MathError::DivisionByZero),
            (None, _) => return Err(MathError::Overflow),
        };
        self.computed(format!("{a} / {b}"), quotient);
        Ok(quotient)
    }

    fn send(&self, text: String) {
        println!("received {text:?}");
        if let Err(e) = self.events.received(text) {
            eprintln!("the event was not emitted: {e}");
        }
    }
}

/// One connection's session.
#[derive(Default)]
struct Tally(AtomicI64);

impl Session for Tally {
    fn tally(&self, value: i64) -> i64 {
        self.0.fetch_add(value, Ordering::Relaxed) + value
    }
}

// `pub` only so that tests/examples.rs can run it in a process of its own.
pub fn main() {
    // ipckit's errors say what went wrong and what to do: print them as they are.
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_default();
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.to_owned());
    match role.as_str() {
        "serve" => serve(&url),
        "call" => call(&url),
        #[cfg(feature = "tokio")]
        "call-async" => call_async(&url),
        _ => {
            eprintln!(
                "usage: calculator serve [URL] | calculator call [URL] | calculator call-async [URL]"
            );
            std::process::exit(2);
        }
    }
}

/// Serves `#calculator` and `#session` at `url` (`pub` for the CLI's tests, which call
/// this example's server with `ipckit call`).
pub fn serve(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    // Blocked before any thread starts, so that every thread leaves them to `wait` below.
    let signals = stop_signals()?;
    let server = ipckit::listen(url)?;
    let stopper = server.stopper();
    let mut service = Service::new();
    let events = CalculatorEvents::new(service.publisher("calculator"));
    service.shared("calculator", calculator::object(), Calc { events });
    service.per_connection("session", session::object(), Tally::default);

    let on_signal = stopper.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            on_signal.stop();
        }
    });
    // A pipe on stdin is a parent that stops the server by closing it; a terminal or
    // /dev/null is not (a background job's stdin is /dev/null).
    if stdin_is_a_pipe() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            stopper.stop();
        });
    }

    println!("ready {}", server.endpoint());
    service.serve(server)?;
    Ok(())
}

fn stop_signals() -> nix::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;
    Ok(signals)
}

fn stdin_is_a_pipe() -> bool {
    use rustix::fs::{FileType, fstat};
    fstat(std::io::stdin()).is_ok_and(|stat| {
        matches!(
            FileType::from_raw_mode(stat.st_mode),
            FileType::Fifo | FileType::Socket
        )
    })
}

/// The typed client: two calls, a failing one, a one-way one and the events they caused.
fn call(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let calculator = CalculatorClient::connect(format!("{url}#calculator"))?;
    let mut events = calculator.subscribe()?;

    println!("{}", calculator.add(2, 3)?);
    println!("{}", calculator.divide(10, 4)?);
    match calculator.divide(1, 0) {
        Err(CallError::App(e)) => println!("1 / 0 failed: {e:?}"),
        other => return Err(format!("1 / 0 gave {other:?}").into()),
    }
    calculator.send("hello".to_string())?;

    // Two computations and one text: three events, in any order against the calls.
    for event in events.by_ref().take(3) {
        match event? {
            calculator::Event::Computed(c) => println!("event: {} = {}", c.expression, c.result),
            calculator::Event::Received(r) => println!("event: received {:?}", r.text),
        }
    }

    let session = SessionClient::connect(format!("{url}#session"))?;
    session.tally(1)?;
    println!("session tally {}", session.tally(2)?);
    Ok(())
}

/// The same as [`call`], on tokio.
#[cfg(feature = "tokio")]
fn call_async(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let calculator = CalculatorAsyncClient::connect(format!("{url}#calculator")).await?;
        let mut events = calculator.subscribe().await?;

        println!("{}", calculator.add(2, 3).await?);
        println!("{}", calculator.divide(10, 4).await?);
        match calculator.divide(1, 0).await {
            Err(CallError::App(e)) => println!("1 / 0 failed: {e:?}"),
            other => return Err(format!("1 / 0 gave {other:?}").into()),
        }
        calculator.send("hello".to_string()).await?;

        for _ in 0..3 {
            match events.next().await? {
                calculator::Event::Computed(c) => {
                    println!("event: {} = {}", c.expression, c.result)
                }
                calculator::Event::Received(r) => println!("event: received {:?}", r.text),
            }
        }

        let session = SessionAsyncClient::connect(format!("{url}#session")).await?;
        session.tally(1).await?;
        println!("session tally {}", session.tally(2).await?);
        Ok(())
    })
}
