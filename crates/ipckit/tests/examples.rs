//! The examples a newcomer copies from (`examples/`), run as their files say: each server
//! in a process of its own, and its client in another, every pair over a socket in a
//! scratch directory. The examples are compiled into this test as modules, and it runs
//! itself as each of them, so `cargo test --test examples` needs no example binaries
//! built beforehand.

#[path = "../examples/async_pair.rs"]
mod async_pair;
#[path = "../examples/calculator.rs"]
mod calculator;
#[path = "../examples/client.rs"]
mod client;
#[path = "../examples/oneway.rs"]
mod oneway;
#[path = "../examples/server.rs"]
mod server;
#[path = "../examples/typed.rs"]
mod typed;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

/// Set in a child to the example it is to be, given the example's own arguments.
const BE: &str = "IPCKIT_TEST_EXAMPLE";
/// Only turns a hang into a failure.
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(example) = std::env::var(BE) {
        // Each prints its error and exits 1 when it fails.
        match example.as_str() {
            "server" => server::main(),
            "client" => client::main(),
            "typed" => typed::main(),
            "oneway" => oneway::main(),
            "async_pair" => async_pair::main(),
            "calculator" => calculator::main(),
            "calculator-v2" => v2::main(),
            other => panic!("no example {other}"),
        }
        return;
    }

    let trials = vec![
        Trial::test("server_and_client", || {
            let out = pair(("server", &[]), ("client", &[]), 2)?;
            expect(&out.server, "received \"hello\" from pid Some(")?;
            expect(&out.server, "answered \"how are you?\"")?;
            expect(&out.client, "the server answered \"HOW ARE YOU?\"")
        }),
        Trial::test("typed", || {
            let out = pair(("typed", &["server"]), ("typed", &["client"]), 2)?;
            expect(&out.client, "Receipt { order_id: 1, total_cents: 105 }")?;
            expect(&out.client, "refused: no pear in stock")?;
            expect(
                &out.server,
                "order 1: Order { item: \"apple\", quantity: 3 }",
            )
        }),
        Trial::test("oneway", || {
            let count = oneway::READINGS as usize + 1;
            let out = pair(("oneway", &["server"]), ("oneway", &["client"]), count)?;
            expect(&out.client, "the server had 1000 readings")?;
            expect(&out.server, "asked after 1000 readings")
        }),
        Trial::test("async_pair", || {
            let out = pair(("async_pair", &["server"]), ("async_pair", &["client"]), 4)?;
            expect(&out.server, "received \"hello\"")?;
            for line in ["3 squared is 9", "2 squared is 4", "1 squared is 1"] {
                expect(&out.client, line)?;
            }
            Ok(())
        }),
        Trial::test("calculator", calculator_typed_clients),
        Trial::test("calculator_versions", calculator_versions),
        Trial::test(
            "python_client_receives_pushes",
            python_client_receives_pushes,
        ),
    ];
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code();
}

/// docs/PROTOCOL.md's server push is enough for the Python client written from it
/// (docs/examples/client.py) to take pushes apart from a reply they come before, over both
/// stream transports: the server pushes "one" when it subscribes, and "two" just before
/// answering its request.
fn python_client_receives_pushes() -> Result<(), Failed> {
    use ipckit::Event;
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/client.py");
    let dir = Scratch::new("python-pushes")?;
    let uds = format!("uds://{}/py.sock", dir.0.display());
    for url in [uds.as_str(), "tcp://127.0.0.1:0"] {
        let mut server = ipckit::listen(url)?;
        let url = server.endpoint().to_string();
        let python = Command::new("python3")
            .args([client, &url, "--pushes"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting python3 (scripts/test.sh installs it): {e}"))?;
        let python = Reaped(python);
        loop {
            let event = server
                .recv_event_timeout(PATIENCE)?
                .ok_or_else(|| format!("{url}: the Python client went silent"))?;
            let mut msg = match event {
                Event::Message(msg) => msg,
                Event::Connected(_) | Event::Lost { .. } => continue,
                Event::Disconnected(_) => break,
            };
            let to_client = msg
                .client()
                .ok_or("a stream message has its client")?
                .clone();
            if msg.wants_reply() {
                to_client.send(b"two")?;
                msg.reply(b"pong")?;
            } else {
                to_client.send(b"one")?;
            }
        }
        let printed = finish(python, "the Python client")?;
        if printed != "pong\none\ntwo\n" {
            return Err(format!("{url}: the Python client printed {printed:?}").into());
        }
    }
    Ok(())
}

/// The contract macro's code, cross-process: the calculator's typed clients, blocking
/// and async, each call a method, get the contract's own error, make a one-way call, and
/// receive the events those caused, typed; and each has its own `#session` instance.
fn calculator_typed_clients() -> Result<(), Failed> {
    let dir = Scratch::new("calculator")?;
    let url = format!("uds://{}/calc.sock", dir.0.display());
    let server = Served::start(be("calculator").args(["serve", &url]), &url)?;
    for role in ["call", "call-async"] {
        let client = be("calculator")
            .args([role, &url])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the client: {e}"))?;
        let printed = finish(Reaped(client), role)?;
        for line in [
            "5\n",
            "2\n",
            "1 / 0 failed: DivisionByZero",
            "event: 2 + 3 = 5",
            "event: 10 / 4 = 2",
            "event: received \"hello\"",
            // Per connection: the first of each client's two tallies starts from 0.
            "session tally 3",
        ] {
            expect(&printed, line).map_err(|e| format!("{role}: {}", e.message().unwrap_or("")))?;
        }
    }
    let rest = server.stop()?;
    expect(&rest, "received \"hello\"")
}

/// The calculator's contract one version on, as a later release of the example would
/// have it: `add` takes an optional third term, and `multiply` is new.
mod v2 {
    #[ipckit::contract]
    pub trait Calculator {
        /// `a + b + c`.
        fn add(&self, a: i64, b: i64, c: Option<i64>) -> i64;
        /// `a * b`.
        fn multiply(&self, a: i64, b: i64) -> i64;
    }

    struct Calc;

    impl Calculator for Calc {
        fn add(&self, a: i64, b: i64, c: Option<i64>) -> i64 {
            a + b + c.unwrap_or(0)
        }

        fn multiply(&self, a: i64, b: i64) -> i64 {
            a * b
        }
    }

    /// Serves `#calculator` at the URL given until stdin closes.
    pub fn main() {
        let url = std::env::args().nth(1).expect("a URL");
        let serve = || -> ipckit::Result<()> {
            let server = ipckit::listen(&url)?;
            let stopper = server.stopper();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                stopper.stop();
            });
            let mut service = ipckit::contract::Service::new();
            service.shared("calculator", calculator::object(), Calc);
            println!("ready {}", server.endpoint());
            service.serve(server)
        };
        if let Err(e) = serve() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

/// Two versions of a contract in two processes: a client of the example's contract calls
/// a server of the next version, whose `add` has gained an optional argument, and a
/// client of the next version calls the example's server, which lacks the new method and
/// says so (an unknown method, not a failure to decode).
fn calculator_versions() -> Result<(), Failed> {
    let dir = Scratch::new("calculator-versions")?;

    let url = format!("uds://{}/v2.sock", dir.0.display());
    let newer = Served::start(be("calculator-v2").arg(&url), &url)?;
    let older_client = calculator::CalculatorClient::connect(format!("{url}#calculator"))?;
    let sum = older_client.add(2, 3)?;
    if sum != 5 {
        return Err(
            format!("the older client's add(2, 3) gave {sum} from the newer server").into(),
        );
    }
    newer.stop()?;

    let url = format!("uds://{}/v1.sock", dir.0.display());
    let older = Served::start(be("calculator").args(["serve", &url]), &url)?;
    let newer_client = v2::CalculatorClient::connect(format!("{url}#calculator"))?;
    // `c` left out, as JSON has it (`null`) the older server passes over it.
    let sum = newer_client.add(2, 3, None)?;
    if sum != 5 {
        return Err(
            format!("the newer client's add(2, 3, None) gave {sum} from the older server").into(),
        );
    }
    match newer_client.multiply(2, 3) {
        Err(ipckit::Error::UnknownMethod {
            method, methods, ..
        }) if method == "multiply" && methods.iter().any(|m| m == "add") => {}
        other => {
            return Err(format!(
                "multiply on the older server gave {other:?}, not an unknown method"
            )
            .into());
        }
    }
    older.stop().map(drop)
}

/// A server in a child process, ready, stopped by closing its stdin; what it prints
/// after saying it is ready is read meanwhile (it never meets a closed pipe), and is what
/// `stop` returns.
struct Served {
    child: Reaped,
    rest: std::thread::JoinHandle<std::io::Result<String>>,
}

impl Served {
    fn start(command: &mut Command, url: &str) -> Result<Served, Failed> {
        let mut child = Reaped(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting the server: {e}"))?,
        );
        let mut lines = BufReader::new(child.0.stdout.take().expect("piped"));
        let mut first = String::new();
        lines
            .read_line(&mut first)
            .map_err(|e| format!("reading the server: {e}"))?;
        if first.trim() != format!("ready {url}") {
            return Err(format!("the server printed {first:?}, not that it is ready").into());
        }
        let rest = std::thread::spawn(move || {
            let mut rest = String::new();
            lines.read_to_string(&mut rest).map(|_| rest)
        });
        Ok(Served { child, rest })
    }

    /// Stops the server; what it printed after saying it was ready.
    fn stop(mut self) -> Result<String, Failed> {
        drop(self.child.0.stdin.take());
        finish(self.child, "the server")?;
        let rest = self.rest.join().expect("the reading thread");
        Ok(rest.map_err(|e| format!("reading the server: {e}"))?)
    }
}

/// What the two processes printed.
struct Printed {
    server: String,
    client: String,
}

/// Runs a server example until it has served `count` messages, and its client against
/// it; both must succeed.
fn pair(
    (server, server_args): (&str, &[&str]),
    (client, client_args): (&str, &[&str]),
    count: usize,
) -> Result<Printed, Failed> {
    let dir = Scratch::new(server)?;
    let url = format!("uds://{}/example.sock", dir.0.display());

    let mut server = Reaped(
        be(server)
            .args(server_args)
            .args([url.as_str(), &count.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the server: {e}"))?,
    );
    // The client starts once the server says it listens, as a person at two terminals would.
    let mut lines = BufReader::new(server.0.stdout.take().expect("piped"));
    let mut first = String::new();
    lines
        .read_line(&mut first)
        .map_err(|e| format!("reading the server: {e}"))?;
    if !first.starts_with("listening on uds://") {
        return Err(format!("the server printed {first:?}, not where it listens").into());
    }

    let client = be(client)
        .args(client_args)
        .arg(&url)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the client: {e}"))?;
    // Read on a thread, so that a server that hangs meets the deadline in `finish` (which
    // kills it, ending the read) rather than blocking the read forever.
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        lines.read_to_string(&mut rest).map(|_| rest)
    });
    let client = finish(Reaped(client), "the client")?;
    finish(server, "the server")?;
    let rest = rest
        .join()
        .expect("the reading thread")
        .map_err(|e| format!("reading the server: {e}"))?;
    Ok(Printed {
        server: first + &rest,
        client,
    })
}

fn be(example: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this test's path"));
    command.env(BE, example);
    command
}

/// Waits for `child` to exit 0 and returns what it printed.
fn finish(mut child: Reaped, what: &str) -> Result<String, Failed> {
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return Err(format!("{what} did not finish within {PATIENCE:?}").into()),
            Err(e) => return Err(format!("waiting for {what}: {e}").into()),
        }
    };
    let mut printed = String::new();
    if let Some(mut out) = child.0.stdout.take() {
        out.read_to_string(&mut printed)
            .map_err(|e| format!("reading {what}: {e}"))?;
    }
    if !status.success() {
        return Err(format!("{what} exited with {status}, having printed:\n{printed}").into());
    }
    Ok(printed)
}

fn expect(printed: &str, line: &str) -> Result<(), Failed> {
    if printed.contains(line) {
        Ok(())
    } else {
        Err(format!("expected {line:?} in:\n{printed}").into())
    }
}

/// A child killed and reaped if the trial ends before it does.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A directory for one trial's socket, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Scratch, Failed> {
        let dir =
            std::env::temp_dir().join(format!("ipckit-examples-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
