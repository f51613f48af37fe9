//! Durable transports, whose messages survive the receiver's absence: a message sent is
//! stored until a receiver takes it, whether or not one was there, and a full queue
//! refuses more. Where receivers compete, they share the messages, each taken once.

use std::time::Duration;

use ipckit::Error;

use crate::api;
use crate::peer::Role;
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, bounded_queue, checks, competing, durable, ensure,
    numbered, parse_numbered, recv,
};

pub const CHECKS: &[Check] = checks![
    durable => durable_messages_wait_for_a_receiver,
    durable => receiver_killed_loses_nothing_sent,
    bounded_queue => full_queue_waits_then_fails,
    bounded_queue => full_queue_lets_waiting_senders_in_turn,
    competing => competing_receivers_share_the_work,
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
    let limit = ctx.transport.capabilities(&url).queue_limit;
    ensure!(
        limit == Some(stored as usize),
        "the queue took {stored} messages where the transport's queue_limit says {limit:?}"
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

/// Senders waiting for room in a full queue are let through one per message received, in
/// the order they began to wait, and each is woken about once: a receive that woke every
/// waiting sender to race for the one free place made N senders cost N² wake-ups (200
/// senders took 50 times as long as plain `mq_send`).
///
/// Each sender counts the times it slept during its send. After every receive, the check
/// waits until every sender has gone back to sleep or is done, so that each wake-up a
/// receive caused is seen, and none is merged with the next.
fn full_queue_lets_waiting_senders_in_turn(ctx: &Ctx) -> Outcome {
    const SENDERS: u32 = 32;
    let url = ctx.endpoint_with(
        "turns",
        "send_timeout_ms",
        &PATIENCE.as_millis().to_string(),
    );
    let mut server = api::listen(&url)?;
    let mut at_once = url.clone();
    at_once.set_option("send_timeout_ms", "0")?;
    let filler = api::connect(&at_once)?;
    let mut held = 0u32;
    let full = loop {
        match filler.send(&numbered(0, held, 16)) {
            Ok(()) => held += 1,
            Err(e) => break e,
        }
        ensure!(held < 100_000, "the queue never filled");
    };
    ensure!(
        matches!(full, Error::Full { .. }),
        "a full queue gave {full:?}"
    );
    let mut senders = Vec::new();
    for client in 1..=SENDERS {
        let mut sender = Child::spawn(Role::SendCountingSleeps { client }, &url);
        ensure!(sender.line()? == "sending", "sender {client} did not start");
        // Waiting for room: the next sender comes after it.
        sender.settled()?;
        senders.push(sender);
    }
    let mut order = Vec::new();
    for _ in 0..held + SENDERS {
        let (client, _) = parse_numbered(recv(&mut server)?.payload())?;
        if client != 0 {
            order.push(client);
        }
        for sender in &senders {
            sender.settled()?;
        }
    }
    let mut slept = Vec::new();
    for mut sender in senders {
        let line = sender.line()?;
        let times: u32 = line
            .strip_prefix("slept ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("a sender said '{line}'"))?;
        slept.push(times);
        sender.finish()?;
    }
    ensure!(
        slept.iter().all(|&times| times <= SENDERS / 3),
        "senders slept {slept:?} times while {SENDERS} receives made room: each receive \
         woke senders it did not let through"
    );
    ensure!(
        order == (1..=SENDERS).collect::<Vec<_>>(),
        "waiting senders were let through in the order {order:?}, not the order they came"
    );
    Ok(())
}

/// Receivers that compete share the work: three receiver processes on one endpoint and
/// two senders; every message is received exactly once in all, every receiver gets some,
/// and what one receiver gets of one sender comes in the order it was sent.
fn competing_receivers_share_the_work(ctx: &Ctx) -> Outcome {
    const RECEIVERS: usize = 3;
    const PER_SENDER: u32 = 150;
    let url = ctx.endpoint("shared");
    let mut receivers = Vec::new();
    for _ in 0..RECEIVERS {
        let mut receiver = Child::spawn(Role::ReceiveNumbered, &url);
        let ready = receiver.line()?;
        ensure!(ready.starts_with("ready "), "a receiver said {ready}");
        receivers.push(receiver);
    }
    let senders: Vec<Child> = (1..=2)
        .map(|client| {
            Child::spawn(
                Role::Send {
                    client,
                    count: PER_SENDER,
                },
                &url,
            )
        })
        .collect();
    // got[receiver] lists (client, seq) in the order that receiver printed them.
    let mut got: Vec<Vec<(u32, u32)>> = vec![Vec::new(); RECEIVERS];
    let total = 2 * PER_SENDER as usize;
    let deadline = std::time::Instant::now() + PATIENCE;
    while got.iter().map(Vec::len).sum::<usize>() < total {
        ensure!(
            std::time::Instant::now() < deadline,
            "{} of {total} messages arrived within {PATIENCE:?}",
            got.iter().map(Vec::len).sum::<usize>()
        );
        for (which, receiver) in receivers.iter_mut().enumerate() {
            while let Ok(line) = receiver.lines.try_recv() {
                got[which].push(numbers_in(&line)?);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for sender in senders {
        sender.finish()?;
    }
    // A message received twice may come after the count is reached: each receiver's
    // output is read to its end before the counting.
    for (which, receiver) in receivers.into_iter().enumerate() {
        for line in receiver.finish_reading()? {
            got[which].push(numbers_in(&line)?);
        }
    }
    let mut all: Vec<(u32, u32)> = got.iter().flatten().copied().collect();
    all.sort_unstable();
    let twice: Vec<_> = all
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    ensure!(
        twice.is_empty(),
        "messages received more than once: {twice:?}"
    );
    let expected: Vec<(u32, u32)> = (1..=2)
        .flat_map(|client| (0..PER_SENDER).map(move |seq| (client, seq)))
        .collect();
    ensure!(
        all == expected,
        "{} messages received where {total} were sent, each once",
        all.len()
    );
    let shares: Vec<usize> = got.iter().map(Vec::len).collect();
    ensure!(
        shares.iter().all(|&n| n > 0),
        "the receivers took {shares:?} of the {total} messages: one took none"
    );
    for (which, taken) in got.iter().enumerate() {
        for client in 1..=2 {
            let order: Vec<u32> = taken
                .iter()
                .filter(|(c, _)| *c == client)
                .map(|&(_, seq)| seq)
                .collect();
            ensure!(
                order.windows(2).all(|w| w[0] < w[1]),
                "receiver {which} got sender {client}'s messages in the order {order:?}"
            );
        }
    }
    Ok(())
}

/// The numbers in a `Role::ReceiveNumbered` line, `got CLIENT SEQ`.
fn numbers_in(line: &str) -> Result<(u32, u32), libtest_mimic::Failed> {
    line.strip_prefix("got ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(client, seq)| Some((client.parse().ok()?, seq.parse().ok()?)))
        .ok_or_else(|| format!("a receiver said {line:?}").into())
}
