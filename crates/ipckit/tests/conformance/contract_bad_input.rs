//! Bad input to a contract server: bodies no proxy would send, sent as plain requests by
//! the check's process to a peer serving the contract of `contract_fixture`. Each gets an
//! answer naming what was wrong (or, where the sender's transport refuses it, goes
//! nowhere), and the server serves the next connection.
//!
//! A call id reused while the first is in flight is a frame-level fault of byte streams,
//! checked in `bad_input::request_id_reused_while_in_flight`.

use ipckit::Error;
use ipckit::contract::CallError;
use libtest_mimic::Failed;

use crate::api;
use crate::contract::{contract_server, proxy};
use crate::contract_fixture::v1;
use crate::support::{Check, Ctx, Outcome, PATIENCE, checks, duplex, ensure};

pub const CHECKS: &[Check] = checks![in contract_bad_input:
    duplex => malformed_calls_answered,
    duplex => deeply_nested_arguments,
    duplex => arguments_over_the_limit,
];

/// The `kind` of the JSON failure `reply` is.
fn failure_kind(reply: &[u8]) -> Result<String, Failed> {
    let reply: serde_json::Value = serde_json::from_slice(reply).map_err(|e| {
        format!(
            "the answer {:?} is no JSON failure: {e}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        )
    })?;
    let kind = reply["error"]["kind"]
        .as_str()
        .ok_or_else(|| format!("the answer {reply} is no failure"))?;
    ensure!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "the failure {reply} says nothing of what was wrong"
    );
    Ok(kind.to_string())
}

/// Whether the server at `url` still answers a fresh connection.
fn serves_another(url: &ipckit::Endpoint, after: &str) -> Outcome {
    let sum = proxy(url, Some("calculator"))?.call(&v1::Add { a: 2, b: 3 });
    ensure!(
        matches!(sum, Ok(5)),
        "after {after}, add(2, 3) on a new connection returned {sum:?}"
    );
    Ok(())
}

/// Truncated JSON, bytes that are no JSON, a postcard marker before no postcard, an empty
/// body, an object or method name of the wrong JSON type: each is answered with a failure
/// of its kind.
fn malformed_calls_answered(ctx: &Ctx) -> Outcome {
    let (_server, url) = contract_server(ctx, "malformed", 1)?;
    let cases: [(&str, &[u8], &str); 7] = [
        (
            "truncated JSON",
            br#"{"object":"calculator","method":"add","args":{"a":2"#,
            "bad_call",
        ),
        ("bytes that are no JSON", b"hello, calculator", "codec"),
        (
            "0x01 before no postcard",
            b"\x01\xff\xff\xff\xff\xff",
            "bad_call",
        ),
        ("an empty body", b"", "bad_call"),
        (
            "an object named by a number",
            br#"{"object":5,"method":"add","args":{"a":2,"b":3}}"#,
            "bad_call",
        ),
        (
            "a method named by a list",
            br#"{"object":"calculator","method":["add"],"args":{"a":2,"b":3}}"#,
            "bad_call",
        ),
        (
            "arguments of the wrong shape",
            br#"{"object":"calculator","method":"add","args":[[1],{"a":2}]}"#,
            "bad_arguments",
        ),
    ];
    let client = api::connect(&url)?;
    for (what, body, expected) in cases {
        let reply = client
            .request(body, PATIENCE)
            .map_err(|e| format!("{what}: the request failed: {e}"))?;
        let kind = failure_kind(&reply)
            .map_err(|e| format!("{what}: {}", e.message().unwrap_or_default()))?;
        ensure!(
            kind == expected,
            "{what} was answered with a failure of kind {kind}, not {expected}"
        );
        serves_another(&url, what)?;
    }
    Ok(())
}

/// Arguments nested 100,000 deep (or as deep as half a message may be) are refused as a bad
/// call, not followed down until the server's stack runs out.
fn deeply_nested_arguments(ctx: &Ctx) -> Outcome {
    let (server, url) = contract_server(ctx, "nested", 1)?;
    let client = api::connect(&url)?;
    let head = br#"{"object":"calculator","method":"add","args":"#;
    // Half the limit at most: a request's own header counts against it on some
    // transports (mq), though `max_message` does not say so.
    let depth = 100_000.min(client.max_message() / 2 - head.len());
    let mut body = head.to_vec();
    body.resize(head.len() + depth, b'[');
    let reply = client.request(&body, PATIENCE).map_err(|e| {
        format!(
            "the request failed: {e}; the server's stderr:\n{}",
            server.stderr()
        )
    })?;
    let kind = failure_kind(&reply)?;
    ensure!(
        kind == "bad_call",
        "arguments nested {depth} deep were answered with a failure of kind {kind}"
    );
    serves_another(&url, &format!("arguments nested {depth} deep"))
}

/// Arguments larger than a message may be are refused by the caller's transport before
/// anything is sent: `MessageTooLarge`, and the server serves on.
fn arguments_over_the_limit(ctx: &Ctx) -> Outcome {
    let (_server, url) = contract_server(ctx, "oversized", 1)?;
    let calculator = proxy(&url, Some("calculator"))?;
    let limit = api::connect(&url)?.max_message();
    let args = format!(r#"{{"a":2,"b":3,"pad":"{}"}}"#, "x".repeat(limit + 1));
    match calculator.call_json("add", &args) {
        Err(CallError::Ipc(Error::MessageTooLarge { .. })) => {}
        other => {
            return Err(format!(
                "arguments of {} bytes over a limit of {limit} came to {other:?}",
                args.len()
            )
            .into());
        }
    }
    serves_another(&url, "arguments over the limit")?;
    let sum = calculator.call_json("add", r#"{"a":2,"b":3}"#);
    ensure!(
        matches!(sum.as_deref(), Ok("5")),
        "the same proxy's next call returned {sum:?}"
    );
    Ok(())
}
