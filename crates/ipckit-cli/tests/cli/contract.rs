//! `ipckit call` and `ipckit introspect`, and the Python client's contract calls, against
//! a contract server in another process, over uds, tcp and shm.

use std::sync::atomic::{AtomicI64, Ordering};

use ipckit::contract::{Event, Method, NoError, Object, OneWay, Param, Service};
use serde::{Deserialize, Serialize};

use super::*;

/// Set, in the process that is to serve the calculator, to the URL it serves.
const SERVE: &str = "IPCKIT_TEST_CALCULATOR";
/// Set, in the process that is to serve crates/ipckit/examples/calculator.rs, to its URL.
const SERVE_EXAMPLE: &str = "IPCKIT_TEST_CALCULATOR_EXAMPLE";

/// The calculator example of the ipckit crate, compiled into this test so that
/// `ipckit call` is checked against the very server the README points to.
#[path = "../../../ipckit/examples/calculator.rs"]
#[allow(
    dead_code,
    unexpected_cfgs,
    reason = "only its server is run here, and this crate has no tokio feature for its async client"
)]
mod example;

/// A contract server in a process of its own, serving `#calculator` and `#logger` at
/// its URL until dropped. This is the one place that says how to start it.
struct Calculator {
    process: Background,
    url: String,
}

impl Calculator {
    /// Serves at `url` (port 0 lets the kernel choose: `self.url` says which).
    fn serve(url: &str) -> Calculator {
        // This test binary, run as `calculator_peer` below.
        let mut process = Background(
            Command::new(std::env::current_exe().unwrap())
                .args(["contract::calculator_peer", "--exact", "--nocapture"])
                .env(SERVE, url)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            None,
        );
        let mut stderr = BufReader::new(process.0.stderr.take().unwrap());
        let mut said = String::new();
        let url = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("the calculator at {url} did not start: {said}");
            }
            if let Some(url) = line.trim().strip_prefix("ipckit: listening on ") {
                break url.to_owned();
            }
            said.push_str(&line);
        };
        process.1 = Some(stderr);
        Calculator { process, url }
    }

    /// Serves crates/ipckit/examples/calculator.rs at `url`, which prints `ready URL`.
    fn serve_example(url: &str) -> Calculator {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "contract::calculator_example_peer",
                "--exact",
                "--nocapture",
            ])
            .env(SERVE_EXAMPLE, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let process = Background(child, None);
        let url = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!("the calculator example at {url} did not start");
            }
            if let Some(url) = line.trim().strip_prefix("ready ") {
                break url.to_owned();
            }
        };
        // Read on, so that whatever else it prints never fills the pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Calculator { process, url }
    }

    /// The URL of object `name`.
    fn object(&self, name: &str) -> String {
        format!("{}#{name}", self.url)
    }
}

impl Drop for Calculator {
    fn drop(&mut self) {
        // Its standard input closed, it stops and removes what it made (a segment, say);
        // Background's drop then finds it gone, or ends it.
        drop(self.process.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.process.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
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

#[derive(Serialize, Deserialize)]
struct Divide {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize)]
enum MathError {
    DivisionByZero,
}

impl Method for Divide {
    const NAME: &'static str = "divide";
    type Output = i64;
    type Error = MathError;
}

/// Stores `value`, one-way, for `recall` to return.
#[derive(Serialize, Deserialize)]
struct Remember {
    value: i64,
}

impl OneWay for Remember {
    const NAME: &'static str = "remember";
}

#[derive(Serialize, Deserialize)]
struct Recall {}

impl Method for Recall {
    const NAME: &'static str = "recall";
    type Output = i64;
    type Error = NoError;
}

#[derive(Serialize, Deserialize)]
struct Explode {}

impl Method for Explode {
    const NAME: &'static str = "explode";
    type Output = ();
    type Error = NoError;
}

#[derive(Serialize, Deserialize)]
struct Computed {
    result: i64,
}

impl Event for Computed {
    const NAME: &'static str = "computed";
}

#[derive(Serialize, Deserialize)]
struct Log {
    line: String,
}

impl OneWay for Log {
    const NAME: &'static str = "log";
}

/// Not a check: the calculator server, when this test binary is run with
/// IPCKIT_TEST_CALCULATOR=URL ([`Calculator::serve`]); otherwise it returns at once. It
/// serves until its standard input closes.
#[test]
fn calculator_peer() {
    let Ok(url) = std::env::var(SERVE) else {
        return;
    };
    let calculator = Object::new()
        .method(|_: &AtomicI64, args: Add| Ok(args.a + args.b))
        .method(|_: &AtomicI64, args: Divide| {
            args.a.checked_div(args.b).ok_or(MathError::DivisionByZero)
        })
        .oneway(|memory: &AtomicI64, args: Remember| memory.store(args.value, Ordering::Relaxed))
        .method(|memory: &AtomicI64, _: Recall| Ok(memory.load(Ordering::Relaxed)))
        .method(|_: &AtomicI64, _: Explode| -> Result<(), NoError> { panic!("asked to") })
        .event::<Computed>();
    let logger = Object::new().oneway(|_: &(), args: Log| eprintln!("{}", args.line));
    let mut service = Service::new();
    service.shared("calculator", calculator, AtomicI64::new(0));
    service.shared("logger", logger, ());
    let server = ipckit::listen(&url).unwrap();
    eprintln!("ipckit: listening on {}", server.endpoint());
    let stopper = server.stopper();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        stopper.stop();
    });
    service.serve(server).unwrap();
}

/// Not a check: the calculator example's server, when this test binary is run with
/// IPCKIT_TEST_CALCULATOR_EXAMPLE=URL ([`Calculator::serve_example`]); otherwise it
/// returns at once. It serves until its standard input closes.
#[test]
fn calculator_example_peer() {
    let Ok(url) = std::env::var(SERVE_EXAMPLE) else {
        return;
    };
    example::serve(&url).unwrap();
}

/// The issue's promise: `ipckit call URL#calculator add '{"a":2,"b":3}'` prints `5`, and
/// `ipckit introspect` describes the example, over uds, tcp and shm.
#[test]
fn the_calculator_example_answers_ipckit_call_over_uds_tcp_and_shm() {
    let dir = Scratch::new("calculator-example");
    let shm = format!("shm://cli-example-{}", std::process::id());
    for url in [
        format!("uds://{}", dir.sock("example.sock")),
        "tcp://127.0.0.1:0".to_owned(),
        shm,
    ] {
        let server = Calculator::serve_example(&url);
        let calculator = server.object("calculator");
        let out = ipckit(&["call", &calculator, "add", r#"{"a":2,"b":3}"#]);
        assert_eq!(stdout(&out), "5\n", "{url}: {out:?}");
        let out = ipckit(&["call", &calculator, "divide", r#"{"a":1,"b":0}"#]);
        assert_eq!(out.status.code(), Some(6), "{url}: {out:?}");
        let table = stdout(&ipckit(&["introspect", &server.url]));
        for row in ["#calculator", "#session", ".add", ".divide"] {
            assert!(table.contains(row), "{url}: no {row} in\n{table}");
        }
    }
}

/// Runs `ipckit` with `input` on its standard input.
fn ipckit_reading(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(IPCKIT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Calls `method` with `args` until it prints `expected`: a one-way call before it may be
/// run after it.
fn call_until(url: &str, method: &str, args: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ipckit(&["call", url, method, args]);
        if stdout(&out) == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} {method} {args} never printed {expected:?}; last {out:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn call_and_introspect_over_uds_tcp_and_shm() {
    let dir = Scratch::new("contract");
    let shm = format!("shm://ipckit-cli-contract-{}", std::process::id());
    for url in [
        format!("uds://{}", dir.sock("c.sock")),
        "tcp://127.0.0.1:0".to_owned(),
        shm,
    ] {
        let server = Calculator::serve(&url);
        let calculator = server.object("calculator");
        let out = ipckit(&["call", &calculator, "add", r#"{"a":2,"b":3}"#]);
        assert!(out.status.success(), "{url}: {out:?}");
        assert_eq!(stdout(&out), "5\n", "{url}");
        let out = ipckit_reading(&["call", &calculator, "add", "-"], r#"{"a":40,"b":2}"#);
        assert_eq!(stdout(&out), "42\n", "{url}: {out:?}");

        let out = ipckit(&[
            "call",
            "--oneway",
            &calculator,
            "remember",
            r#"{"value":7}"#,
        ]);
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{url}: {out:?}"
        );
        call_until(&calculator, "recall", "{}", "7\n");
        // Called as a two-way call, a one-way method answers once it has run.
        let out = ipckit(&["call", &calculator, "remember", r#"{"value":8}"#]);
        assert_eq!(stdout(&out), "null\n", "{url}: {out:?}");
        let out = ipckit(&["call", &calculator, "recall", "{}"]);
        assert_eq!(stdout(&out), "8\n", "{url}: {out:?}");

        // Every object, then one, as a table.
        let table = stdout(&ipckit(&["introspect", &server.url]));
        for row in ["#calculator", "#logger", ".add", ".log", ".computed"] {
            assert!(table.contains(row), "{url}: no {row} in\n{table}");
        }
        let table = stdout(&ipckit(&["introspect", &calculator]));
        assert!(!table.contains("#logger"), "{url}:\n{table}");
        let add = table.lines().find(|l| l.starts_with(".add")).unwrap();
        assert!(
            add.contains("method") && add.contains("a: i64, b: i64") && add.contains("i64"),
            "{url}: {add}"
        );
        let remember = table.lines().find(|l| l.starts_with(".remember")).unwrap();
        assert!(remember.contains("oneway"), "{url}: {remember}");
        let divide = table.lines().find(|l| l.starts_with(".divide")).unwrap();
        assert!(divide.contains("Result<i64, MathError>"), "{url}: {divide}");

        let out = ipckit(&["introspect", &calculator, "--format", "json"]);
        assert!(out.status.success(), "{url}: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let objects = json["objects"].as_array().unwrap();
        assert_eq!(objects.len(), 1, "{url}: {json}");
        assert_eq!(objects[0]["name"], "calculator");
        assert_eq!(objects[0]["instance"], "shared");
        let method = |name: &str| {
            objects[0]["methods"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{url}: no {name} in {json}"))
        };
        assert_eq!(
            method("add")["args"],
            serde_json::json!([{"name": "a", "type": "i64"}, {"name": "b", "type": "i64"}])
        );
        assert_eq!(method("add")["oneway"], false);
        assert_eq!(method("remember")["oneway"], true);
        assert_eq!(objects[0]["events"][0]["name"], "computed");
    }
    assert!(
        !std::path::Path::new(&format!(
            "/dev/shm/ipckit.ipckit-cli-contract-{}",
            std::process::id()
        ))
        .exists(),
        "the shm server left its segment"
    );
}

/// Each way a call goes wrong is one line on stderr that says what to do, and a status of
/// its own; the server serves on.
#[test]
fn call_errors_are_told_with_their_own_exit_codes() {
    let dir = Scratch::new("contract-errors");
    let server = Calculator::serve(&format!("uds://{}", dir.sock("e.sock")));
    let calculator = server.object("calculator");
    let failed = |args: &[&str], code: i32, says: &[&str]| {
        let out = ipckit(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("ipckit: "), "{args:?}: {stderr}");
        for said in says {
            assert!(
                stderr.contains(said),
                "{args:?} does not say {said:?}: {stderr}"
            );
        }
        stderr.into_owned()
    };
    // The application's error, its JSON last.
    let said = failed(
        &["call", &calculator, "divide", r#"{"a":1,"b":0}"#],
        6,
        &["'divide' failed"],
    );
    assert!(said.trim_end().ends_with(r#""DivisionByZero""#), "{said}");
    failed(
        &["call", &server.object("abacus"), "add", "{}"],
        7,
        &["'abacus'", "calculator, logger"],
    );
    // Naming no object, where there are two.
    failed(
        &["call", &server.url, "add", "{}"],
        7,
        &["names no object", "calculator, logger"],
    );
    failed(
        &["call", &calculator, "multiply", "{}"],
        7,
        &["'multiply'", "add, divide", "ipckit introspect"],
    );
    failed(
        &["call", &calculator, "add", r#"{"a":"two","b":3}"#],
        2,
        &["'add'", "ipckit introspect"],
    );
    failed(&["call", &calculator, "add", "{a:2}"], 2, &["not JSON"]);
    failed(
        &["call", &calculator, "explode"],
        1,
        &["panicked", "asked to"],
    );
    let missing = format!("uds://{}#calculator", dir.sock("missing.sock"));
    failed(&["call", &missing, "add", "{}"], 3, &[]);
    failed(&["introspect", &missing], 3, &[]);
    // A server that is no contract server: its echo of the call is no answer to it.
    let echo = format!("uds://{}", dir.sock("echo.sock"));
    let _echo = Background::start(IPCKIT, &["serve", &echo, "--echo", "--timeout", "30s"]);
    wait_for_socket(&dir.sock("echo.sock"));
    failed(
        &["call", &format!("{echo}#calculator"), "add", "{}"],
        1,
        &["not a contract reply", "Is it a contract server"],
    );
    // A one-way call hears of nothing, not even a method that is not there.
    let out = ipckit(&["call", "--oneway", &calculator, "multiply", "{}"]);
    assert!(out.status.success(), "{out:?}");
    // Through all of it, the server served on.
    assert_eq!(
        stdout(&ipckit(&["call", &calculator, "add", r#"{"a":2,"b":3}"#])),
        "5\n"
    );
}

/// docs/PROTOCOL.md's *Contracts* is enough to call a method and a one-way method from
/// another language: the Python client written from it calls the calculator over both
/// stream transports.
#[test]
fn the_python_client_calls_a_method_and_a_one_way_method() {
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/client.py");
    let python = |args: &[&str]| {
        Command::new("python3")
            .arg(client)
            .args(args)
            .output()
            .expect("python3 (scripts/test.sh installs it)")
    };
    let dir = Scratch::new("python-contract");
    for url in [
        format!("uds://{}", dir.sock("p.sock")),
        "tcp://127.0.0.1:0".to_owned(),
    ] {
        let server = Calculator::serve(&url);
        let url = &server.url;
        let out = python(&[url, "--call", "calculator", "add", r#"{"a":2,"b":3}"#]);
        assert!(out.status.success(), "{url}: {out:?}");
        assert_eq!(stdout(&out), "5\n", "{url}");

        let out = python(&[url, "--notify", "calculator", "remember", r#"{"value":9}"#]);
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{url}: {out:?}"
        );
        call_until(&server.object("calculator"), "recall", "{}", "9\n");

        let out = python(&[url, "--call", "calculator", "divide", r#"{"a":1,"b":0}"#]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("app:") && said.contains("\"DivisionByZero\""),
            "{url}: {out:?}"
        );
        let out = python(&[url, "--call", "calculator", "multiply", "{}"]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("unknown_method"),
            "{url}: {out:?}"
        );
    }
}
