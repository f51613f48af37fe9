//! Durable transports, whose messages survive the receiver's absence: a message sent is
//! stored until a receiver takes it, whether or not one was there, and a full queue
//! refuses more.

use std::time::Duration;

use ipckit::Error;

use crate::api;
use crate::peer::Role;
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, durable, ensure, numbered, parse_numbered, recv,
};

pub const CHECKS: &[Check] = checks![
    durable => durable_messages_wait_for_a_receiver,
    durable => receiver_killed_loses_nothing_sent,
    durable => full_queue_waits_then_fails,
];

fn durable_messages_wait_for_a_receiver(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint("waiting");
    Child::spawn(
        Role::Send {
            client: 4,
            count: 5,
        },
        &url,
    )
    .finish()?;
    let mut server = api::listen(&url)?;
    for seq in 0..5 {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (4, seq),
            "message {seq} did not wait for the receiver"
        );
    }
    Ok(())
}

/// A durable transport's `send` means "stored": a receiver killed mid-stream loses
/// nothing; what it did not take, the next receiver gets.
fn receiver_killed_loses_nothing_sent(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint("durable");
    let mut first = Child::spawn(Role::Print, &url);
    first.ready()?;
    let client = api::connect(&url)?;
    // Within what one queue holds, so no send waits for the second receiver.
    let total = 12;
    let mut received = Vec::new();
    for seq in 0..total {
        if seq == 3 {
            // The receiver has taken what was sent and waits for more: freeze it there,
            // queue two more, and kill it. A receiver killed just after taking a message
            // loses that one with it, whatever the transport; waiting idle, it holds none.
            for _ in 0..3 {
                received.push(first.line()?);
            }
            let pid = rustix::process::Pid::from_raw(first.pid() as i32).expect("a pid");
            rustix::process::kill_process(pid, rustix::process::Signal::STOP)?;
            client.send(b"durable 3")?;
            client.send(b"durable 4")?;
            first.kill();
            continue;
        }
        if seq == 4 {
            continue;
        }
        client.send(format!("durable {seq}").as_bytes())?;
    }
    // What the first receiver printed before it died counts as received: read its
    // output to the end, which the reader thread reaches once the pipe is closed.
    while let Ok(line) = first.lines.recv_timeout(PATIENCE) {
        received.push(line);
    }
    let mut second = api::listen(&url)?;
    while let Some(message) = second.recv_timeout(Duration::from_millis(500))? {
        received.push(format!(
            "msg {}",
            String::from_utf8_lossy(message.payload())
        ));
    }
    let lost: Vec<_> = (0..total)
        .filter(|seq| !received.contains(&format!("msg durable {seq}")))
        .collect();
    ensure!(lost.is_empty(), "messages lost with the receiver: {lost:?}");
    Ok(())
}

/// A queue that nobody empties fills up; then a send waits for its timeout and fails
/// with `Full`, having sent nothing.
fn full_queue_waits_then_fails(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint_with("full", "send_timeout_ms", "200");
    let client = api::connect(&url)?;
    let mut stored = 0u32;
    let full = loop {
        match client.send(&numbered(0, stored, 8)) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        ensure!(stored < 100_000, "the queue never filled");
    };
    ensure!(
        matches!(full, Error::Full { .. }),
        "a full queue gave {full:?}"
    );
    ensure!(
        full.to_string().contains(&url.to_string()),
        "the error does not name the endpoint: {full}"
    );
    ensure!(
        full.to_string()
            .contains(&format!("holds {stored} messages")),
        "the error does not say the queue holds the {stored} messages it took: {full}"
    );
    let mut server = api::listen(&url)?;
    for seq in 0..stored {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (0, seq),
            "stored message {seq} is missing"
        );
    }
    ensure!(
        server.recv_timeout(Duration::from_millis(100))?.is_none(),
        "the refused message was stored"
    );
    Ok(())
}
