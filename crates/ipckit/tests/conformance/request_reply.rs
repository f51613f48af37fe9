//! Requests and their replies: each caller gets its own answer, with many in flight, from
//! a handler that is lent them, from `serve_with`, through an exclusive client, and in
//! order where lines carry no id.

use std::ops::ControlFlow;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use ipckit::Error;
use ipckit::endpoint::Address;
use ipckit::transport::{Capabilities, Transport};

use crate::api;
use crate::peer::{Role, TypedJob, TypedReply};
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, byte_stream, checks, duplex, ensure, parse_numbered,
    recv, refuses_unanswered, reliable_ordered, reversed,
};

pub const CHECKS: &[Check] = checks![
    byte_stream => line_framing_in_order,
    duplex => request_reply_concurrent,
    few_descriptors_suffice => concurrent_requests_with_few_descriptors,
    duplex => refusal_reaches_the_caller,
    refuses_unanswered => dropped_request_refused,
    duplex => reply_that_looks_like_a_refusal_is_a_reply,
    duplex => typed_request_and_reply,
    refuses_unanswered => lent_request_answered_or_refused,
    duplex => answer_over_the_client_limit_refused,
    duplex => refusal_names_the_endpoint_once,
    reliable_ordered => served_until_the_handler_stops,
    duplex => exclusive_client,
];

/// With `?framing=line` a message is a line and carries no id: answers are matched to
/// requests by their order, also when requests from several threads are in flight.
fn line_framing_in_order(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(
        Role::ServeEcho,
        ctx.endpoint_with("lines", "framing", "line"),
    );
    let url = server.ready()?;
    // Every line is a request to a line-framed server: even a one-way message is
    // answered, so this client only makes requests.
    let client = Arc::new(api::connect(&url)?);
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..50 {
                    let line = format!("thread {t} line {i}");
                    let answer = client
                        .request(line.as_bytes(), PATIENCE)
                        .map_err(|e| e.to_string())?;
                    if answer != line.as_bytes() {
                        return Err(format!(
                            "'{line}' was answered '{}'",
                            String::from_utf8_lossy(&answer)
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a requesting thread")?;
    }
    match client.request(b"two\nlines", PATIENCE) {
        Err(Error::Unsupported { .. }) => {}
        other => return Err(format!("a payload with a newline gave {other:?}").into()),
    }
    server.kill();
    Ok(())
}

fn request_reply_concurrent(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("rr"))?;
    let (threads, per_thread) = (8u32, 50u32);
    let client = Child::spawn(
        Role::Request {
            threads,
            per_thread,
            spare_fds: None,
        },
        server.endpoint(),
    );
    let (mut answered, mut out_of_order) = (0, false);
    // A peer that stalls or fails says why on its stderr.
    let mut serve = || -> Outcome {
        while answered < threads * per_thread {
            // Gather what is in flight and answer it backwards, so replies cross on the wire.
            let mut batch = vec![recv(&mut server)?];
            while let Some(m) = server.recv_timeout(Duration::from_millis(2))? {
                batch.push(m);
            }
            out_of_order |= batch.len() > 1;
            // One more, lent and answered while the batch is still held: on shm its space is
            // given back before theirs.
            let answer = |payload: &[u8], wants_reply: bool| wants_reply.then(|| reversed(payload));
            if answered + (batch.len() as u32) < threads * per_thread
                && server.answer_lent(Duration::from_millis(2), answer)?
            {
                answered += 1;
            }
            for mut message in batch.into_iter().rev() {
                ensure!(
                    message.wants_reply(),
                    "a request arrived as a one-way message"
                );
                message.reply(&reversed(message.payload()))?;
                answered += 1;
            }
        }
        Ok(())
    };
    serve().map_err(|e| {
        format!(
            "{} (after {answered} of {} answers); the peer's stderr:\n{}",
            e.message().unwrap_or("failed"),
            threads * per_thread,
            client.stderr()
        )
    })?;
    client.finish()?;
    ensure!(
        out_of_order,
        "requests never overlapped, so correlation was not exercised"
    );
    Ok(())
}

/// Duplex transports whose connected client needs at most two more descriptors for any
/// number of concurrent requests: all but datagrams for now, whose client binds sockets
/// as its threads request (and fails with EMFILE when it cannot).
fn few_descriptors_suffice(t: &dyn Transport, caps: &Capabilities) -> bool {
    let ep = t.scratch_endpoint(&std::env::temp_dir(), "probe");
    caps.duplex && !matches!(ep.address(), Address::Udp(_) | Address::Unixgram(_))
}

/// A client that can open only two more descriptors (as one whose user's queues are near
/// RLIMIT_MSGQUEUE, on mq, can make only so many reply queues) still gets every answer to
/// the requests of eight threads: they wait their turn instead of failing.
fn concurrent_requests_with_few_descriptors(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("fewfds"))?;
    let (threads, per_thread) = (8u32, 20u32);
    let client = Child::spawn(
        Role::Request {
            threads,
            per_thread,
            spare_fds: Some(2),
        },
        server.endpoint(),
    );
    let serve = |server: &mut api::Server| -> Outcome {
        for _ in 0..threads * per_thread {
            let mut message = recv(server)?;
            message.reply(&reversed(message.payload()))?;
        }
        Ok(())
    };
    serve(&mut server).map_err(|e| {
        format!(
            "{}; the peer's stderr:\n{}",
            e.message().unwrap_or("failed"),
            client.stderr()
        )
    })?;
    client.finish()?;
    Ok(())
}

/// A refused request fails its caller with the reason as the server gave it, at once: the
/// caller waits up to [`PATIENCE`], so a refusal lost on the way shows as a `Timeout`.
fn refusal_reaches_the_caller(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("refuse"))?;
    let payload = "may I?".to_owned();
    let mut asker = Child::spawn(Role::RequestPrinting { payload }, server.endpoint());
    let mut request = recv(&mut server)?;
    ensure!(
        request.wants_reply(),
        "a request arrived as a one-way message"
    );
    request.refuse("no: the answer is Ünïcode, and final")?;
    let said = asker.line()?;
    ensure!(
        said == "Remote no: the answer is Ünïcode, and final",
        "a refused request gave its caller: {said}"
    );
    asker.finish()?;
    Ok(())
}

/// A request received and dropped unanswered is refused, so that its caller learns at
/// once instead of at its timeout.
fn dropped_request_refused(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("drop"))?;
    let payload = "ignore me".to_owned();
    let mut asker = Child::spawn(Role::RequestPrinting { payload }, server.endpoint());
    drop(recv(&mut server)?);
    let said = asker.line()?;
    ensure!(
        said.starts_with("Remote ") && said.contains("without replying"),
        "a request dropped unanswered gave its caller: {said}"
    );
    asker.finish()?;
    Ok(())
}

/// A reply is delivered as it is, even one that starts as a refusal does on the wire of a
/// transport that marks refusals in the answer's first bytes.
fn reply_that_looks_like_a_refusal_is_a_reply(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("lookalike"))?;
    for answer in [&b"\0IPCKNO1not refused"[..], b"\0IPCKOK1", b"\0IPCK", b""] {
        let payload = "ask".to_owned();
        let mut asker = Child::spawn(Role::RequestPrinting { payload }, server.endpoint());
        recv(&mut server)?.reply(answer)?;
        let said = asker.line()?;
        ensure!(
            said == format!("reply {}", answer.escape_ascii()),
            "the reply {:?} reached its caller as: {said}",
            answer.escape_ascii().to_string()
        );
        asker.finish()?;
    }
    Ok(())
}

/// Typed requests answered with `reply_value` reach their caller as the value sent, and a
/// reply of another type is an error there, not a wrong value: an enum read as a `String`
/// was `Ok("")` for a unit variant.
fn typed_request_and_reply(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("typed"))?;
    let mut asker = Child::spawn(Role::RequestValues, server.endpoint());
    for _ in 0..3 {
        let mut request = recv(&mut server)?;
        let job: TypedJob = request.decode()?;
        ensure!(job.tags == ["typed"], "the server decoded {job:?}");
        request.reply_value(&match job.id {
            0 => TypedReply::Done,
            1 => TypedReply::Failed("a String in an enum".into()),
            id => TypedReply::Moved {
                to: u64::from(id) * 2,
            },
        })?;
    }
    let said = asker.line()?;
    ensure!(
        said == "ok Moved { to: 14 }",
        "a typed reply reached its caller as: {said}"
    );
    for _ in 0..2 {
        let said = asker.line()?;
        ensure!(
            said.starts_with("Codec ") && said.contains("holds an enum"),
            "an enum read as a String gave: {said}"
        );
    }
    asker.finish()?;
    Ok(())
}

/// A request lent to a handler is answered from it; one the handler leaves unanswered is
/// refused when the handler returns, so that its caller does not wait out its timeout.
fn lent_request_answered_or_refused(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("lent"))?;
    let url = server.endpoint().to_string();
    let mut asker = Child::spawn(
        Role::RequestOnce {
            payload: "lend me".into(),
        },
        &url,
    );
    let came = server.answer_lent(PATIENCE, |payload, wants_reply| {
        wants_reply.then(|| payload.to_ascii_uppercase())
    })?;
    ensure!(came, "no request arrived within {PATIENCE:?}");
    ensure!(
        asker.line()? == "LEND ME",
        "the lent request was answered wrongly"
    );
    asker.finish()?;
    let ignored = Child::spawn(
        Role::RequestOnce {
            payload: "ignore me".into(),
        },
        url,
    );
    ensure!(
        server.answer_lent(PATIENCE, |_, _| None)?,
        "no request arrived within {PATIENCE:?}"
    );
    match ignored.finish() {
        Err(e) if e.message().is_some_and(|m| m.contains("without replying")) => Ok(()),
        other => Err(format!("a request left unanswered gave its caller {other:?}").into()),
    }
}

/// An answer larger than its client accepts reaches the client as a refusal that names
/// both sizes, at once: a request is answered exactly once. A server that knows the
/// client's limit has `reply` say why.
fn answer_over_the_client_limit_refused(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("small-client"))?;
    let url = server.endpoint().to_string();
    let separator = if url.contains('?') { '&' } else { '?' };
    let asker = Child::spawn(
        Role::RequestOnce {
            payload: "big".into(),
        },
        format!("{url}{separator}max_message=100"),
    );
    let mut request = recv(&mut server)?;
    match request.reply(&[b'x'; 1000]) {
        Err(Error::MessageTooLarge {
            size: 1000,
            max: 100,
            ..
        }) => {}
        // A server that cannot learn its client's limit (a pipe's) sends the answer, and
        // the client refuses it as it arrives.
        Ok(()) => {}
        other => {
            return Err(format!("replying 1000 bytes to a client of 100 gave {other:?}").into());
        }
    }
    match asker.finish() {
        Err(e)
            if e.message()
                .is_some_and(|m| m.contains("1000") && m.contains("100 bytes")) =>
        {
            Ok(())
        }
        other => Err(format!("the client of an answer too large for it got {other:?}").into()),
    }
}

/// A refused caller's error names the endpoint once, then the server's reason as given.
fn refusal_names_the_endpoint_once(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("refusing"))?;
    let url = server.endpoint().to_string();
    let mut asker = Child::spawn(Role::RequestWhenTold, &url);
    let connected = asker.line_serving(&mut server)?;
    ensure!(connected == "connected", "the asker said {connected}");
    asker.say("go")?;
    let mut request = recv(&mut server)?;
    request.refuse("not today")?;
    let requesting = asker.line()?;
    ensure!(requesting == "requesting", "the asker said {requesting}");
    let refused = asker.line()?;
    ensure!(
        refused.starts_with("Remote ") && refused.ends_with("not today"),
        "a refused request ended with: {refused}"
    );
    ensure!(
        refused.matches(url.as_str()).count() == 1,
        "a refusal names its endpoint {} times: {refused}",
        refused.matches(url.as_str()).count()
    );
    asker.finish()?;
    Ok(())
}

/// `serve_with` lends messages until its handler breaks and takes none after that one;
/// on duplex transports it answers requests as it goes.
fn served_until_the_handler_stops(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("serve"))?;
    let url = server.endpoint().to_string();
    let watchdog = Watchdog::start(&url);
    let sender = Child::spawn(
        Role::Send {
            client: 3,
            count: 20,
        },
        &url,
    );
    let mut seen = Vec::new();
    let served = server.serve_until(|payload, _| {
        if payload == Watchdog::MESSAGE {
            return (None, ControlFlow::Break(false));
        }
        seen.push(parse_numbered(payload).ok());
        let flow = match seen.len() {
            10 => ControlFlow::Break(true),
            _ => ControlFlow::Continue(()),
        };
        (None, flow)
    })?;
    ensure!(served, "ten messages did not come within {PATIENCE:?}");
    let numbered = |seqs: std::ops::Range<u32>| seqs.map(|seq| Some((3, seq))).collect::<Vec<_>>();
    ensure!(
        seen == numbered(0..10),
        "served {seen:?}, expected messages 0 to 9 of client 3 in order"
    );
    let next = parse_numbered(recv(&mut server)?.payload())?;
    ensure!(
        next == (3, 10),
        "after the handler stopped at message 9, recv got {next:?}: serve_with took more"
    );
    // The rest, and a request among them where there can be one. (On datagram sockets
    // every message from a bound socket can be answered: the request is told by its
    // payload.)
    let duplex = server.capabilities().duplex;
    let mut asker = duplex.then(|| {
        let payload = "serve me".into();
        Child::spawn(Role::RequestOnce { payload }, url)
    });
    let (mut rest, mut answered) = (Vec::new(), !duplex);
    let served = server.serve_until(|payload, wants_reply| {
        let reply = if payload == Watchdog::MESSAGE {
            return (None, ControlFlow::Break(false));
        } else if payload == b"serve me" && wants_reply {
            answered = true;
            Some(b"SERVE ME".to_vec())
        } else {
            rest.push(parse_numbered(payload).ok());
            None
        };
        let flow = match rest.len() == 9 && answered {
            true => ControlFlow::Break(true),
            false => ControlFlow::Continue(()),
        };
        (reply, flow)
    })?;
    ensure!(
        served,
        "within {PATIENCE:?}, served {rest:?} of messages 11 to 19, and the request {}",
        if answered { "answered" } else { "not" }
    );
    ensure!(
        rest == numbered(11..20),
        "served {rest:?}, expected messages 11 to 19 in order"
    );
    sender.finish()?;
    if let Some(asker) = asker.as_mut() {
        ensure!(
            asker.line()? == "SERVE ME",
            "the served request was answered wrongly"
        );
    }
    if let Some(asker) = asker {
        asker.finish()?;
    }
    watchdog.cancel();
    Ok(())
}

/// Sends [`Watchdog::MESSAGE`] to a server after [`PATIENCE`] unless cancelled first, so
/// that a check that serves until some message comes fails instead of hanging.
struct Watchdog {
    cancel: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watchdog {
    const MESSAGE: &'static [u8] = b"watchdog: time is up";

    fn start(url: &str) -> Watchdog {
        let (cancel, cancelled) = mpsc::channel::<()>();
        let url = url.to_owned();
        let thread = std::thread::spawn(move || {
            // Dropping the Watchdog (a check that failed early) disconnects: no message.
            if cancelled.recv_timeout(PATIENCE) == Err(mpsc::RecvTimeoutError::Timeout) {
                if let Ok(client) = ipckit::connect(url.as_str()) {
                    let _ = client.send(Self::MESSAGE);
                }
            }
        });
        Watchdog { cancel, thread }
    }

    fn cancel(self) {
        let _ = self.cancel.send(());
        let _ = self.thread.join();
    }
}

/// A client held by one thread (`Client::exclusive`) sends and asks like any client,
/// passes over the late reply to a request of its own that timed out, and leaves the
/// client working once it is dropped.
fn exclusive_client(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("held"))?;
    let client = Child::spawn(Role::RequestExclusive, server.endpoint());
    let (mut one_way, mut late) = (false, None);
    loop {
        let mut message = recv(&mut server)?;
        let payload = message.payload().to_vec();
        match &payload[..] {
            b"one-way" => one_way = true,
            // Answered only after its caller gave up and asked again.
            b"late" => late = Some(message),
            _ => {
                if let Some(mut late) = late.take() {
                    // Where each request has a way back of its own (a FIFO, a queue, a
                    // socket), it closed when its caller gave up.
                    match late.reply(b"too late") {
                        Ok(()) | Err(Error::Disconnected { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                ensure!(
                    message.wants_reply(),
                    "a request arrived as a one-way message"
                );
                message.reply(&reversed(&payload))?;
                if payload == b"shared again" {
                    break;
                }
            }
        }
    }
    client.finish()?;
    ensure!(one_way, "the one-way message never arrived");
    Ok(())
}
