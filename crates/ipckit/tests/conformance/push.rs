//! A server speaking first: pushes to one client at any time, broadcasts to all, the
//! comings and goings of clients, and the back-pressure policy when a client stops
//! reading. For every transport whose capabilities say `push`; the clients (or, where the
//! server's memory is measured, the server) are peer processes.
//!
//! The peers' side of each check is here too ([`play`]), under the [`Role`]s it names.
//! What they agree on: a client says `hello NAME` first; pushed messages are
//! [`numbered`] as from [`PUSHED`], in order from 0; `end` ends a stream of them; a
//! subscriber prints `done NAME got G gaps X next N` (X: numbers it skipped; N: the one
//! after the last it saw), or `disorder`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipckit::transport::{Capabilities, Transport};
use ipckit::{ClientHandle, Error, Event};
use libtest_mimic::Failed;

use crate::api;
use crate::peer::Role;
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, ensure, expect_reversed, numbered,
    parse_numbered, reversed,
};

pub const CHECKS: &[Check] = checks![in push:
    push => one_client_at_any_time,
    push => broadcast_reaches_every_client,
    push => comings_and_goings_are_seen_in_order,
    push => a_killed_client_is_disconnected,
    push_reliable => a_full_outbox_fails_after_the_send_timeout,
    push_reliable => a_broadcast_skips_or_disconnects_a_full_client,
    push => a_client_that_never_reads_stalls_nothing,
    push => pushes_and_replies_never_mix,
    push => pushes_flushed_before_the_server_stops_arrive,
    push => a_late_reader_gets_what_a_gone_server_pushed,
    push => silent_subscribers_are_seen_and_served,
];

/// 64 subscribers in four processes: through the blocking API alone, for the suite's time.
pub const BLOCKING_CHECKS: &[Check] = checks![in push:
    push => sixty_four_subscribers_see_every_broadcast_in_order,
];

/// Futures dropped halfway: through the async API alone.
pub const ASYNC_CHECKS: &[Check] = checks![in push:
    push => a_dropped_recv_loses_nothing,
];

pub fn push(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.push
}

/// Pushing transports that never drop what they accepted, and so can be full.
pub fn push_reliable(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.push && caps.reliable
}

/// The client number of pushed messages.
pub const PUSHED: u32 = 0x5055_5348;
const END: &[u8] = b"end";
const HELLO: &str = "hello ";

fn hello(name: &str) -> Vec<u8> {
    format!("{HELLO}{name}").into_bytes()
}

// ---------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------

fn one_client_at_any_time(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("one"))?;
    let reliable = server.capabilities().reliable;
    let size = push_size(&server);
    let mut subscriber = Child::spawn(subscribe(1, "a"), server.endpoint());
    let handle = greeted(&mut server, &["a-0"])?
        .remove("a-0")
        .expect("greeted");
    // Long after the message that introduced the client was dropped, from another thread.
    const COUNT: u32 = 300;
    let pusher = move || -> Result<(), Error> {
        for seq in 0..COUNT {
            handle.send(&numbered(PUSHED, seq, size(seq)))?;
        }
        end(&handle, reliable)
    };
    serve_while(&mut server, pusher)??;
    let done = done_line(&mut subscriber, &mut server)?;
    expect_all(&done, "a-0", COUNT, reliable, 0)
}

fn broadcast_reaches_every_client(ctx: &Ctx) -> Outcome {
    broadcast_to(ctx, 3, 1, 1000)
}

fn sixty_four_subscribers_see_every_broadcast_in_order(ctx: &Ctx) -> Outcome {
    broadcast_to(ctx, 4, 16, 10_000)
}

/// `processes` subscribers of `connections` clients each; `count` broadcasts, each
/// client's drops counted by the server: a reliable transport loses nothing it did not
/// count, and keeps the order.
fn broadcast_to(ctx: &Ctx, processes: u32, connections: u32, count: u32) -> Outcome {
    let mut server = api::listen(ctx.endpoint("all"))?;
    let reliable = server.capabilities().reliable;
    let names: Vec<String> = (0..processes).map(|p| format!("p{p}")).collect();
    let mut subscribers: Vec<Child> = names
        .iter()
        .map(|name| Child::spawn(subscribe(connections, name), server.endpoint()))
        .collect();
    let expected: Vec<String> = names
        .iter()
        .flat_map(|name| (0..connections).map(move |c| format!("{name}-{c}")))
        .collect();
    let expected_refs: Vec<&str> = expected.iter().map(String::as_str).collect();
    let handles = greeted(&mut server, &expected_refs)?;
    let listed: HashSet<u64> = server.clients().iter().map(ClientHandle::id).collect();
    let greeted_ids: HashSet<u64> = handles.values().map(ClientHandle::id).collect();
    ensure!(
        listed == greeted_ids,
        "the server lists clients {listed:?}, not the {} that greeted it",
        greeted_ids.len()
    );
    let broadcaster = server.broadcaster()?;
    let dropped = serve_while(&mut server, move || -> Result<usize, Error> {
        let mut dropped = 0;
        for seq in 0..count {
            let delivery = broadcaster.broadcast(&numbered(PUSHED, seq, 12 + seq as usize % 50))?;
            if delivery.disconnected > 0 {
                return Err(Error::Disconnected {
                    endpoint: "broadcast".into(),
                    detail: format!(
                        "{} subscribers left during the broadcast",
                        delivery.disconnected
                    ),
                });
            }
            if delivery.dropped > 0 {
                // A subscriber fell behind: let it catch up, as a publisher that cares would.
                dropped += delivery.dropped;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(dropped)
    })??;
    // The end goes to each client with a wait: a broadcast could skip one that is full.
    let ends: Vec<ClientHandle> = handles.values().cloned().collect();
    serve_while(&mut server, move || {
        ends.iter().try_for_each(|handle| end(handle, reliable))
    })??;
    let mut counted = 0;
    for subscriber in &mut subscribers {
        for _ in 0..connections {
            let done = done_line(subscriber, &mut server)?;
            let name = done.split(' ').nth(1).unwrap_or_default().to_owned();
            let handle = handles
                .get(&name)
                .ok_or_else(|| format!("a subscriber said {done:?}"))?;
            counted += handle.dropped();
            expect_all(&done, &name, count, reliable, handle.dropped())?;
        }
    }
    ensure!(
        counted == dropped as u64,
        "the broadcasts reported {dropped} drops, the clients count {counted}"
    );
    Ok(())
}

fn comings_and_goings_are_seen_in_order(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("events"))?;
    let peer = Child::spawn(Role::HelloAndLeave { name: "x".into() }, server.endpoint());
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    let mut listed_while_connected = None;
    while !matches!(seen.last(), Some(Event::Disconnected(_))) {
        ensure!(
            Instant::now() < deadline,
            "no departure within {PATIENCE:?}; seen {seen:?}; the peer's stderr:\n{}",
            peer.stderr()
        );
        if let Some(event) = server.recv_event_timeout(Duration::from_millis(20))? {
            if let Event::Connected(_) = &event {
                listed_while_connected = Some(server.clients());
            }
            seen.push(event);
        }
    }
    let [
        Event::Connected(joined),
        Event::Message(first),
        Event::Message(second),
        Event::Disconnected(left),
    ] = &seen[..]
    else {
        return Err(format!("expected connected, hello, bye, disconnected; seen {seen:?}").into());
    };
    ensure!(
        first.payload() == hello("x") && second.payload() == b"bye",
        "the messages were {:?} and {:?}",
        String::from_utf8_lossy(first.payload()),
        String::from_utf8_lossy(second.payload())
    );
    for message in [first, second] {
        ensure!(
            message.client() == Some(joined),
            "a message names client {:?}, not {joined:?} that connected",
            message.client()
        );
    }
    ensure!(left == joined, "{left:?} left, but {joined:?} had come");
    ensure!(
        listed_while_connected.as_deref() == Some(std::slice::from_ref(joined)),
        "while connected the server listed {listed_while_connected:?}"
    );
    ensure!(
        !left.is_connected(),
        "a departed client still says connected"
    );
    ensure!(
        server.clients().is_empty(),
        "the server still lists {:?}",
        server.clients()
    );
    match left.send(b"too late") {
        Err(Error::Disconnected { .. }) => {}
        other => return Err(format!("a push to a departed client gave {other:?}").into()),
    }
    peer.finish()?;
    Ok(())
}

fn a_killed_client_is_disconnected(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("killed"))?;
    let reliable = server.capabilities().reliable;
    let mut victim = Child::spawn(subscribe(1, "victim"), server.endpoint());
    let mut survivor = Child::spawn(subscribe(1, "survivor"), server.endpoint());
    let mut handles = greeted(&mut server, &["victim-0", "survivor-0"])?;
    let doomed = handles.remove("victim-0").expect("greeted");
    let survivor_handle = handles.remove("survivor-0").expect("greeted");
    for seq in 0..10 {
        doomed.send(&numbered(PUSHED, seq, 100))?;
    }
    victim.kill();
    let pushing = doomed.clone();
    let (outcome, departed) = serve_while_departing(&mut server, move || {
        let deadline = Instant::now() + PATIENCE;
        let mut seq = 10;
        loop {
            match pushing.send(&numbered(PUSHED, seq, 100)) {
                Ok(()) if Instant::now() < deadline => {}
                other => return other,
            }
            seq += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    })?;
    ensure!(
        matches!(outcome, Err(Error::Disconnected { .. })),
        "pushing to a killed client ended in {outcome:?}, not Disconnected"
    );
    // The server's loop hears of it once, whoever found out.
    ensure!(
        departed.len() <= 1,
        "the loop reported {} departures",
        departed.len()
    );
    let left = departure(&mut server, departed)?;
    ensure!(left == doomed, "{left:?} left, not the killed client");
    ensure!(
        server.clients() == [survivor_handle.clone()],
        "the server lists {:?}",
        server.clients()
    );
    // Nothing else is affected.
    const COUNT: u32 = 50;
    let pusher = move || -> Result<(), Error> {
        for seq in 0..COUNT {
            survivor_handle.send(&numbered(PUSHED, seq, 100))?;
        }
        end(&survivor_handle, reliable)
    };
    serve_while(&mut server, pusher)??;
    let done = done_line(&mut survivor, &mut server)?;
    expect_all(&done, "survivor-0", COUNT, reliable, 0)
}

fn a_full_outbox_fails_after_the_send_timeout(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint_with("full", "send_timeout_ms", "100"))?;
    let mut slow = Child::spawn(
        Role::HelloAndWait {
            name: "slow".into(),
        },
        server.endpoint(),
    );
    let handle = greeted(&mut server, &["slow"])?
        .remove("slow")
        .expect("greeted");
    let pushing = handle.clone();
    let (sent, full) = serve_while(&mut server, move || {
        let deadline = Instant::now() + PATIENCE;
        let mut seq = 0;
        loop {
            match pushing.send(&numbered(PUSHED, seq, 1024)) {
                Ok(()) if Instant::now() < deadline => seq += 1,
                other => return (seq, other),
            }
        }
    })?;
    ensure!(
        matches!(full, Err(Error::Full { .. })),
        "a client that does not read took {sent} pushes, then {full:?}, not Full"
    );
    match handle.try_send(b"one more") {
        Err(Error::Full { .. }) => {}
        other => return Err(format!("try_send to a full client gave {other:?}").into()),
    }
    ensure!(handle.is_connected(), "a full client is still connected");
    // Nothing that was accepted is lost: the client reads it all, in order, once it reads.
    slow.say("read")?;
    let ending = handle.clone();
    serve_while(&mut server, move || -> Result<(), Error> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match ending.send(END) {
                Err(Error::Full { .. }) if Instant::now() < deadline => {}
                other => return other,
            }
        }
    })??;
    let done = done_line(&mut slow, &mut server)?;
    expect_all(&done, "slow", sent, true, 0)
}

fn a_broadcast_skips_or_disconnects_a_full_client(ctx: &Ctx) -> Outcome {
    for overflow in ["drop", "disconnect"] {
        let mut server = api::listen(ctx.endpoint_with(overflow, "overflow", overflow))?;
        let _slow = Child::spawn(
            Role::HelloAndWait {
                name: "slow".into(),
            },
            server.endpoint(),
        );
        let handle = greeted(&mut server, &["slow"])?
            .remove("slow")
            .expect("greeted");
        let broadcaster = server.broadcaster()?;
        let started = Instant::now();
        let (delivered, departed) = serve_while_departing(&mut server, move || {
            let mut totals = ipckit::Delivery::default();
            let mut seq = 0;
            while started.elapsed() < PATIENCE {
                let delivery = broadcaster.broadcast(&numbered(PUSHED, seq, 1024))?;
                seq += 1;
                totals.sent += delivery.sent;
                totals.dropped += delivery.dropped;
                totals.disconnected += delivery.disconnected;
                if delivery.sent == 0 {
                    return Ok((totals, Some(delivery)));
                }
            }
            Ok::<_, Error>((totals, None))
        })?;
        let (totals, first_miss) = delivered?;
        let miss = first_miss.ok_or_else(|| {
            format!(
                "{overflow}: a client that does not read took {} broadcasts",
                totals.sent
            )
        })?;
        match overflow {
            "drop" => {
                ensure!(
                    miss.dropped == 1 && handle.is_connected() && handle.dropped() == 1,
                    "drop: the full client gave {miss:?}, dropped {}, connected {}",
                    handle.dropped(),
                    handle.is_connected()
                );
                ensure!(
                    server.clients() == [handle.clone()],
                    "drop: a skipped client is still listed"
                );
            }
            _ => {
                ensure!(
                    miss.disconnected == 1 && !handle.is_connected(),
                    "disconnect: the full client gave {miss:?}, connected {}",
                    handle.is_connected()
                );
                ensure!(
                    server.clients().is_empty(),
                    "disconnect: the server still lists {:?}",
                    server.clients()
                );
                let left = departure(&mut server, departed)?;
                ensure!(left == handle, "{left:?} left, not the full client");
            }
        }
    }
    Ok(())
}

fn a_client_that_never_reads_stalls_nothing(ctx: &Ctx) -> Outcome {
    const COUNT: u32 = 100_000;
    const SIZE: usize = 1024;
    let mut server = Child::spawn(
        Role::PushServer {
            count: COUNT,
            size: SIZE,
        },
        ctx.endpoint("stall"),
    );
    let url = server.ready()?;
    let slow = api::connect(&url)?;
    slow.send(&hello("slow"))?;
    let reader = api::connect(&url)?;
    let reliable = reader.capabilities().reliable;
    reader.send(&hello("reader"))?;
    // Requests only once the server has greeted both: it takes no request before.
    let greeted = server.line()?;
    ensure!(greeted == "greeted", "the push server said {greeted:?}");
    let reading = std::thread::scope(|scope| -> Result<String, Failed> {
        let reading = scope.spawn(|| receive_until_end(&reader, "reader"));
        // The server answers requests while it pushes.
        for seq in 0..20 {
            let request = numbered(7, seq, 32);
            let reply = request_patiently(&slow, &request, reliable)?;
            expect_reversed(&request, &reply)?;
        }
        Ok(reading.join().expect("the reader does not panic"))
    })?;
    expect_all(&reading, "reader", COUNT, reliable, 0)?;
    let report = server.line()?;
    let numbers = fields(&report);
    let (full, growth) = (numbers["full"], numbers["rss_growth_kib"]);
    if reliable {
        ensure!(
            full > 0,
            "every push to a client that never reads succeeded: {report}"
        );
    }
    // Unbounded, the slow client's 100,000 pushes of 1 KiB would hold 100 MB.
    ensure!(
        growth < 32 * 1024,
        "the server's memory grew by {growth} KiB while a client did not read: {report}"
    );
    drop(slow);
    server.finish()?;
    Ok(())
}

fn pushes_and_replies_never_mix(ctx: &Ctx) -> Outcome {
    const THREADS: u32 = 4;
    const PER_THREAD: u32 = 1250;
    const PUSHES: u32 = 5000;
    let mut server = api::listen(ctx.endpoint("race"))?;
    let reliable = server.capabilities().reliable;
    let peer = Child::spawn(
        Role::RequestAndReceive {
            threads: THREADS,
            per_thread: PER_THREAD,
        },
        server.endpoint(),
    );
    let handle = greeted(&mut server, &["racer"])?
        .remove("racer")
        .expect("greeted");
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = std::thread::spawn({
        let stop = stop.clone();
        move || -> Result<(), Error> {
            let mut rng = fastrand::Rng::with_seed(19);
            for seq in 0..PUSHES {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                handle.send(&numbered(PUSHED, seq, rng.usize(12..200)))?;
                // Random gaps, so that pushes fall between, before and after replies.
                if rng.u8(..) < 64 {
                    std::thread::yield_now();
                }
                if rng.u8(..) < 8 {
                    std::thread::sleep(Duration::from_micros(rng.u64(1..200)));
                }
            }
            end(&handle, reliable)
        }
    });
    // Answer requests until the peer reports.
    let report = loop {
        if let Ok(line) = peer.lines.try_recv() {
            break line;
        }
        if let Some(Event::Message(mut message)) =
            server.recv_event_timeout(Duration::from_millis(5))?
        {
            if message.wants_reply() {
                let answer = reversed(message.payload());
                let _ = message.reply(&answer);
            }
        }
    };
    stop.store(true, Ordering::Release);
    let pushed = pusher.join().expect("the pusher does not panic");
    let numbers = fields(&report);
    ensure!(
        report.starts_with("mixed ") && numbers["misrouted"] == 0,
        "the peer said: {report}; its stderr:\n{}",
        peer.stderr()
    );
    pushed?;
    if reliable {
        ensure!(
            numbers["replies"] == u64::from(THREADS * PER_THREAD)
                && numbers["pushes"] == u64::from(PUSHES)
                && numbers["gaps"] == 0,
            "not every reply and push arrived: {report}"
        );
    }
    peer.finish()?;
    Ok(())
}

fn pushes_flushed_before_the_server_stops_arrive(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("last"))?;
    let reliable = server.capabilities().reliable;
    let size = push_size(&server);
    let mut subscriber = Child::spawn(subscribe(1, "a"), server.endpoint());
    let handle = greeted(&mut server, &["a-0"])?
        .remove("a-0")
        .expect("greeted");
    const COUNT: u32 = 500;
    let broadcaster = server.broadcaster()?;
    let unflushed = serve_while(&mut server, move || -> Result<usize, Error> {
        for seq in 0..COUNT {
            handle.send(&numbered(PUSHED, seq, size(seq)))?;
        }
        end(&handle, reliable)?;
        Ok(broadcaster.flush(PATIENCE))
    })??;
    ensure!(
        unflushed == 0,
        "{unflushed} clients still held pushes after {PATIENCE:?}"
    );
    // The server goes at once; what it pushed is the client's to read.
    drop(server);
    let done = subscriber.line()?;
    expect_all(&done, "a-0", COUNT, reliable, 0)
}

/// A client that starts reading only after its server pushed and went gets every push
/// and the end: on unixgram it has not yet read the welcome that names where pushes come
/// from, and can no longer connect its home to that socket, which went with the server.
fn a_late_reader_gets_what_a_gone_server_pushed(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("went"))?;
    let reliable = server.capabilities().reliable;
    let mut late = Child::spawn(
        Role::HelloAndWait {
            name: "late".into(),
        },
        server.endpoint(),
    );
    let handle = greeted(&mut server, &["late"])?
        .remove("late")
        .expect("greeted");
    // Few enough to wait in queues that their reader has not made room in: mq's holds 4,
    // unixgram's net.unix.max_dgram_qlen (10 by default) with the welcome among them.
    const COUNT: u32 = 3;
    for seq in 0..COUNT {
        handle.send(&numbered(PUSHED, seq, 100))?;
    }
    end(&handle, reliable)?;
    // Every socket of the server's goes: the handle holds the client's push socket.
    drop((handle, server));
    late.say("read")?;
    let done = late.line()?;
    expect_all(&done, "late", COUNT, reliable, 0)
}

/// Subscribers that never send, connecting all at once (on mq, into a queue that fills):
/// each is seen connect, and gets what is pushed to it.
fn silent_subscribers_are_seen_and_served(ctx: &Ctx) -> Outcome {
    const PER_PROCESS: u32 = 8;
    const COUNT: u32 = 100;
    let mut server = api::listen(ctx.endpoint("silent"))?;
    let reliable = server.capabilities().reliable;
    let mut subscribers: Vec<Child> = (0..2)
        .map(|_| {
            Child::spawn(
                Role::SubscribeSilently {
                    connections: PER_PROCESS,
                },
                server.endpoint(),
            )
        })
        .collect();
    let mut connected = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while connected.len() < 2 * PER_PROCESS as usize {
        ensure!(
            Instant::now() < deadline,
            "only {} of {} silent subscribers were seen connecting",
            connected.len(),
            2 * PER_PROCESS
        );
        match server.recv_event_timeout(Duration::from_millis(20))? {
            Some(Event::Connected(client)) => connected.push(client),
            Some(Event::Message(message)) => {
                return Err(format!("a silent subscriber sent {:?}", message.payload()).into());
            }
            Some(Event::Disconnected(client)) => {
                return Err(format!("{client:?} left before being served").into());
            }
            Some(Event::Lost { count }) => {
                return Err(format!("a server that pushes lost {count} messages").into());
            }
            None => {}
        }
    }
    serve_while(&mut server, move || -> Result<(), Error> {
        for seq in 0..COUNT {
            for client in &connected {
                client.send(&numbered(PUSHED, seq, 64))?;
            }
        }
        connected
            .iter()
            .try_for_each(|client| end(client, reliable))
    })??;
    for subscriber in &mut subscribers {
        for _ in 0..PER_PROCESS {
            let done = done_line(subscriber, &mut server)?;
            let name = done.split(' ').nth(1).unwrap_or_default().to_owned();
            expect_all(&done, &name, COUNT, reliable, 0)?;
        }
    }
    Ok(())
}

fn a_dropped_recv_loses_nothing(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("cancel"))?;
    let reliable = server.capabilities().reliable;
    let mut subscriber = Child::spawn(
        Role::SubscribeCancelling { name: "c".into() },
        server.endpoint(),
    );
    let handle = greeted(&mut server, &["c"])?.remove("c").expect("greeted");
    const COUNT: u32 = 2000;
    let pusher = move || -> Result<(), Error> {
        for seq in 0..COUNT {
            handle.send(&numbered(PUSHED, seq, 12 + seq as usize % 300))?;
            if seq % 16 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        end(&handle, reliable)
    };
    serve_while(&mut server, pusher)??;
    let done = done_line(&mut subscriber, &mut server)?;
    expect_all(&done, "c", COUNT, reliable, 0)
}

// ---------------------------------------------------------------------------------------
// What the checks share
// ---------------------------------------------------------------------------------------

fn subscribe(connections: u32, name: &str) -> Role {
    Role::Subscribe {
        connections,
        name: name.into(),
    }
}

/// Sizes up to 64 KiB, within what the server takes.
fn push_size(server: &api::Server) -> impl Fn(u32) -> usize + Send + 'static {
    let max = server.capabilities().max_message.min(64 * 1024);
    move |seq| [12, 13, 100, 1000, 4097, 32 * 1024 + 1, 64 * 1024][seq as usize % 7].min(max)
}

/// Ends a stream of pushes: once where nothing is lost, a few times where it may be.
fn end(handle: &ClientHandle, reliable: bool) -> Result<(), Error> {
    handle.send(END)?;
    for _ in 1..if reliable { 1 } else { 5 } {
        match handle.send(END) {
            // A subscriber that got an earlier end may have left already.
            Err(Error::Disconnected { .. }) => return Ok(()),
            other => other?,
        }
    }
    Ok(())
}

/// Receives events until every client named in `names` said hello; checks that each was
/// announced as connected before its hello, and returns their handles by name.
fn greeted(
    server: &mut api::Server,
    names: &[&str],
) -> Result<HashMap<String, ClientHandle>, Failed> {
    let mut connected = HashSet::new();
    let mut greeted = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    while greeted.len() < names.len() {
        ensure!(
            Instant::now() < deadline,
            "only {:?} of {names:?} said hello within {PATIENCE:?}",
            greeted.keys().collect::<Vec<_>>()
        );
        match server.recv_event_timeout(Duration::from_millis(20))? {
            Some(Event::Connected(client)) => {
                connected.insert(client.id());
            }
            Some(Event::Message(message)) => {
                let text = String::from_utf8_lossy(message.payload()).into_owned();
                let name = text
                    .strip_prefix(HELLO)
                    .ok_or_else(|| format!("a client said {text:?} before hello"))?;
                let client = message
                    .client()
                    .ok_or("a message from a client carries no handle")?;
                ensure!(
                    connected.contains(&client.id()),
                    "{name} said hello before the server saw it connect"
                );
                greeted.insert(name.to_owned(), client.clone());
            }
            Some(Event::Disconnected(client)) => {
                return Err(format!("{client:?} left before every client said hello").into());
            }
            Some(Event::Lost { count }) => {
                return Err(format!("a server that pushes lost {count} messages").into());
            }
            None => {}
        }
    }
    Ok(greeted)
}

/// Runs `work` on another thread while this one keeps the server's loop going (which is
/// where clients are accepted and outboxes flushed); messages that arrive meanwhile are
/// dropped.
fn serve_while<R: Send>(
    server: &mut api::Server,
    work: impl FnOnce() -> R + Send,
) -> Result<R, Failed> {
    Ok(serve_while_departing(server, work)?.0)
}

/// [`serve_while`], returning also the clients the loop saw leave meanwhile (a push that
/// finds its client gone wakes the loop to report it at once).
fn serve_while_departing<R: Send>(
    server: &mut api::Server,
    work: impl FnOnce() -> R + Send,
) -> Result<(R, Vec<ClientHandle>), Failed> {
    let mut departed = Vec::new();
    let done = std::thread::scope(|scope| -> Result<R, Failed> {
        let worker = scope.spawn(work);
        while !worker.is_finished() {
            if let Some(Event::Disconnected(client)) =
                server.recv_event_timeout(Duration::from_millis(5))?
            {
                departed.push(client);
            }
        }
        Ok(worker.join().expect("the worker does not panic"))
    })?;
    Ok((done, departed))
}

/// The first client to leave: one the loop already saw, or the next it sees.
fn departure(server: &mut api::Server, seen: Vec<ClientHandle>) -> Result<ClientHandle, Failed> {
    if let Some(first) = seen.into_iter().next() {
        return Ok(first);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        ensure!(
            Instant::now() < deadline,
            "the server's loop never said the client left"
        );
        match server.recv_event_timeout(Duration::from_millis(20))? {
            Some(Event::Disconnected(left)) => return Ok(left),
            Some(Event::Message(message)) => {
                return Err(format!("unexpected message {:?}", message.payload()).into());
            }
            _ => {}
        }
    }
}

/// The subscriber's `done` line, serving meanwhile.
fn done_line(subscriber: &mut Child, server: &mut api::Server) -> Result<String, Failed> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(line) = subscriber.lines.try_recv() {
            return Ok(line);
        }
        ensure!(
            Instant::now() < deadline,
            "the subscriber said nothing within {PATIENCE:?}; its stderr:\n{}",
            subscriber.stderr()
        );
        server.recv_event_timeout(Duration::from_millis(5))?;
    }
}

/// Checks a `done NAME got G gaps X` line: all `count` in order where the transport is
/// reliable, less exactly the `dropped` the server counted; some, in order, where not.
fn expect_all(done: &str, name: &str, count: u32, reliable: bool, dropped: u64) -> Outcome {
    ensure!(
        done.starts_with(&format!("done {name} ")),
        "{name} said: {done}"
    );
    let numbers = fields(done);
    // Missing: the numbers skipped, and those after the last that came.
    let (got, missing) = (
        numbers["got"],
        numbers["gaps"] + u64::from(count).saturating_sub(numbers["next"]),
    );
    if reliable {
        ensure!(
            got + dropped == u64::from(count) && missing == dropped,
            "{name} got {got} of {count} pushes with {missing} missing, where the server dropped {dropped}"
        );
    } else {
        ensure!(got > 0, "{name} got none of {count} pushes");
    }
    Ok(())
}

/// The `key value` pairs of a report line.
fn fields(line: &str) -> HashMap<String, u64> {
    let words: Vec<&str> = line.split(' ').collect();
    words
        .windows(2)
        .filter_map(|pair| Some((pair[0].to_owned(), pair[1].parse().ok()?)))
        .collect()
}

/// A request, asked again where the transport may drop it.
fn request_patiently(
    client: &api::Client,
    request: &[u8],
    reliable: bool,
) -> Result<Vec<u8>, Failed> {
    let tries = if reliable { 1 } else { 5 };
    let timeout = if reliable {
        PATIENCE
    } else {
        Duration::from_secs(2)
    };
    let mut last = None;
    for _ in 0..tries {
        match client.request(request, timeout) {
            Ok(reply) => return Ok(reply),
            Err(e @ Error::Timeout { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.expect("tried").into())
}

// ---------------------------------------------------------------------------------------
// The peers' side
// ---------------------------------------------------------------------------------------

/// Receives pushes until `end`: `done NAME got G gaps X`, or what went wrong.
pub fn receive_until_end(client: &api::Client, name: &str) -> String {
    let mut tally = Tally::default();
    // A hang guard, not a time limit: PATIENCE without a message.
    let mut deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match client.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(message)) => {
                deadline = Instant::now() + PATIENCE;
                if message.wants_reply() {
                    return format!("error {name}: a pushed message wants a reply");
                }
                if message.payload() == END {
                    return tally.done(name);
                }
                if let Err(e) = tally.take(message.payload()) {
                    return format!("disorder {name}: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => return format!("error {name}: {e} after {}", tally.done(name)),
        }
    }
    format!(
        "error {name}: nothing for {PATIENCE:?} after {}",
        tally.done(name)
    )
}

/// Pushed messages received in order, with the numbers skipped counted.
#[derive(Default)]
struct Tally {
    got: u64,
    gaps: u64,
    next: u32,
}

impl Tally {
    fn take(&mut self, payload: &[u8]) -> Result<(), String> {
        let (from, seq) = parse_numbered(payload).map_err(|e| format!("{e:?}"))?;
        ensure!(
            from == PUSHED,
            "a message numbered as from {from} was taken for a push"
        );
        ensure!(seq >= self.next, "push {seq} came after {}", self.next - 1);
        self.gaps += u64::from(seq - self.next);
        self.got += 1;
        self.next = seq + 1;
        Ok(())
    }

    fn done(&self, name: &str) -> String {
        format!(
            "done {name} got {} gaps {} next {}",
            self.got, self.gaps, self.next
        )
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_for_stdin_line() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line
}

/// Plays one of the push roles on the endpoint `url`.
pub fn play(role: Role, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    match role {
        Role::Subscribe { connections, name } => {
            let clients = (0..connections)
                .map(|c| {
                    let client = api::connect(url)?;
                    client.send(&hello(&format!("{name}-{c}")))?;
                    Ok(client)
                })
                .collect::<Result<Vec<_>, Error>>()?;
            std::thread::scope(|scope| {
                for (c, client) in clients.iter().enumerate() {
                    let name = format!("{name}-{c}");
                    scope.spawn(move || say(&receive_until_end(client, &name)));
                }
            });
        }
        Role::SubscribeSilently { connections } => {
            let clients = (0..connections)
                .map(|_| api::connect(url))
                .collect::<Result<Vec<_>, Error>>()?;
            std::thread::scope(|scope| {
                for (c, client) in clients.iter().enumerate() {
                    let name = format!("silent-{}-{c}", std::process::id());
                    scope.spawn(move || say(&receive_until_end(client, &name)));
                }
            });
        }
        Role::SubscribeCancelling { name } => {
            api::block_on(async {
                let client = ipckit::tokio::connect(url).await?;
                client.send(&hello(&name)).await?;
                let mut tally = Tally::default();
                let mut rng = fastrand::Rng::with_seed(7);
                let deadline = Instant::now() + PATIENCE;
                while Instant::now() < deadline {
                    // Most waits are dropped before a message comes: none may be lost.
                    let wait = Duration::from_micros(rng.u64(0..300));
                    if let Ok(pushed) = tokio::time::timeout(wait, client.recv()).await {
                        let pushed = pushed?;
                        if pushed.payload() == END {
                            say(&tally.done(&name));
                            return Ok(());
                        }
                        if let Err(e) = tally.take(pushed.payload()) {
                            say(&format!("disorder {name}: {e}"));
                            return Ok(());
                        }
                    }
                }
                say(&format!("error {name}: no end after {}", tally.done(&name)));
                Ok::<(), Box<dyn std::error::Error>>(())
            })?;
        }
        Role::HelloAndWait { name } => {
            let client = api::connect(url)?;
            client.send(&hello(&name))?;
            if wait_for_stdin_line().trim() == "read" {
                say(&receive_until_end(&client, &name));
                wait_for_stdin_line();
            }
        }
        Role::HelloAndLeave { name } => {
            let client = api::connect(url)?;
            client.send(&hello(&name))?;
            client.send(b"bye")?;
            drop(client);
            // Still running: the server must learn of the departure from the client's
            // going, not from the process's end.
            wait_for_stdin_line();
        }
        Role::PushServer { count, size } => push_server(url, count, size)?,
        Role::RequestAndReceive {
            threads,
            per_thread,
        } => {
            let client = api::connect(url)?;
            client.send(&hello("racer"))?;
            let reliable = client.capabilities().reliable;
            let misrouted = std::sync::atomic::AtomicU64::new(0);
            let replies = std::sync::atomic::AtomicU64::new(0);
            let note = |what: String| {
                misrouted.fetch_add(1, Ordering::Relaxed);
                eprintln!("{what}");
            };
            let received = std::thread::scope(|scope| {
                let receiving = scope.spawn(|| {
                    let mut tally = Tally::default();
                    let deadline = Instant::now() + PATIENCE;
                    while Instant::now() < deadline {
                        match client.recv_timeout(Duration::from_millis(100)) {
                            Ok(Some(pushed)) if pushed.payload() == END => break,
                            Ok(Some(pushed)) => {
                                if let Err(e) = tally.take(pushed.payload()) {
                                    note(format!("recv took {e}"));
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                note(format!("recv failed: {e}"));
                                break;
                            }
                        }
                    }
                    tally
                });
                for thread in 0..threads {
                    let (client, replies, note) = (&client, &replies, &note);
                    scope.spawn(move || {
                        for seq in 0..per_thread {
                            let request = numbered(thread, seq, 12 + seq as usize % 100);
                            match client.request(
                                &request,
                                if reliable {
                                    PATIENCE
                                } else {
                                    Duration::from_secs(1)
                                },
                            ) {
                                Ok(reply) => match expect_reversed(&request, &reply) {
                                    Ok(()) => {
                                        replies.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => note(format!("misrouted reply: {e}")),
                                },
                                Err(Error::Timeout { .. }) if !reliable => {}
                                Err(e) => note(format!("request failed: {e}")),
                            }
                        }
                    });
                }
                receiving.join().expect("the receiver does not panic")
            });
            say(&format!(
                "mixed replies {} pushes {} gaps {} misrouted {}",
                replies.load(Ordering::Relaxed),
                received.got,
                received.gaps,
                misrouted.load(Ordering::Relaxed)
            ));
            wait_for_stdin_line();
        }
        other => return Err(format!("{other:?} is not a push role").into()),
    }
    Ok(())
}

/// The server of [`a_client_that_never_reads_stalls_nothing`], in a process of its own so
/// that its memory is its own: pushes `count` messages of `size` bytes to `reader`
/// (waiting for room) and to `slow` (never waiting), answers requests meanwhile, and
/// prints `pushed N full F gone G rss_growth_kib K`.
fn push_server(url: &str, count: u32, size: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut server = api::listen(url)?;
    say(&format!("ready {}", server.endpoint()));
    let reliable = server.capabilities().reliable;
    let mut clients = greeted(&mut server, &["slow", "reader"]).map_err(|e| format!("{e:?}"))?;
    let slow = clients.remove("slow").expect("greeted");
    let reader = clients.remove("reader").expect("greeted");
    say("greeted");
    let before = rss_kib();
    let pushing = std::thread::spawn(move || -> Result<String, Error> {
        let (mut full, mut gone, mut peak) = (0u64, 0u64, 0u64);
        for seq in 0..count {
            let message = numbered(PUSHED, seq, size);
            reader.send(&message)?;
            match slow.try_send(&message) {
                Ok(()) => {}
                Err(Error::Full { .. }) => full += 1,
                Err(Error::Disconnected { .. }) => gone += 1,
                Err(e) => return Err(e),
            }
            if seq % 1024 == 0 {
                peak = peak.max(rss_kib());
            }
        }
        end(&reader, reliable)?;
        peak = peak.max(rss_kib());
        Ok(format!(
            "pushed {count} full {full} gone {gone} rss_growth_kib {}",
            peak.saturating_sub(before)
        ))
    });
    while !pushing.is_finished() {
        if let Some(Event::Message(mut message)) =
            server.recv_event_timeout(Duration::from_millis(5))?
        {
            if message.wants_reply() {
                let answer = reversed(message.payload());
                message.reply(&answer)?;
            }
        }
    }
    say(&pushing.join().expect("the pusher does not panic")?);
    // Serve until told to stop, so that the clients' goodbyes find a server.
    exit_on_stdin_close();
    loop {
        server.recv_event_timeout(Duration::from_millis(100))?;
    }
}

fn exit_on_stdin_close() {
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
}

/// This process's resident memory.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
