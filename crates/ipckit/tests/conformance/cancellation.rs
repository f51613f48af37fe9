//! What only futures can do: be dropped halfway. Run through the async API alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api;
use crate::peer::Role;
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, duplex, ensure, in_pieces, parse_numbered, recv,
    reliable_ordered,
};

pub const ASYNC_CHECKS: &[Check] = checks![in cancellation:
    duplex => request_dropped_while_waiting,
    // A datagram or a queue message leaves in one syscall, whole or not at all: nothing
    // to drop halfway. (A FIFO's pieces are dropped with the future; see fifo.rs.)
    in_pieces => send_dropped_while_writing,
    reliable_ordered => recv_dropped_again_and_again,
];

pub fn request_dropped_while_waiting(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(Role::ServeEchoSlowly, ctx.endpoint("cancel"));
    let url = server.ready()?;
    api::block_on(async {
        let client = ipckit::tokio::connect(&url).await?;
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            client.request(b"slow, and dropped", PATIENCE),
        );
        ensure!(
            dropped.await.is_err(),
            "the slow request was answered within 50 ms"
        );
        // Its reply comes while these wait: each must get its own.
        let mut rng = fastrand::Rng::with_seed(7);
        let deadline = Instant::now() + Duration::from_millis(600);
        let mut n = 0;
        while Instant::now() < deadline {
            n += 1;
            let payload = format!("request {n}");
            // Some are dropped at a random point too, often before their answer.
            let patience = Duration::from_micros(rng.u64(0..400));
            match tokio::time::timeout(patience, client.request(payload.as_bytes(), PATIENCE)).await
            {
                Ok(reply) => ensure!(
                    reply? == payload.as_bytes(),
                    "request {n} got another request's reply"
                ),
                Err(_dropped) => {}
            }
            let payload = format!("kept {n}");
            let reply = client.request(payload.as_bytes(), PATIENCE).await?;
            ensure!(
                reply == payload.as_bytes(),
                "request 'kept {n}' got another's reply"
            );
        }
        // Many at once on the one connection, half of them dropped.
        let client = Arc::new(client);
        let mut tasks = Vec::new();
        // Few enough that a reply queue each (mq) fits RLIMIT_MSGQUEUE's 800 KiB.
        for task in 0..8u64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..60 {
                    let payload = format!("task {task} request {i}");
                    let request = client.request(payload.as_bytes(), PATIENCE);
                    if (task + i) % 2 == 0 {
                        let _ = tokio::time::timeout(Duration::from_micros(50), request).await;
                    } else if request.await.map_err(|e| e.to_string())? != payload.as_bytes() {
                        return Err(format!("'{payload}' got another request's reply"));
                    }
                }
                Ok::<(), String>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
}

pub fn send_dropped_while_writing(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("cancel-send"))?;
    let mut client = Child::spawn(Role::SendDropped, server.endpoint());
    // A stream's client needs the server to take part in its handshake, so the server
    // receives first; shared memory needs nothing of it, so it waits until the send was
    // dropped, which it then cannot have finished (8 MiB is more than its ring).
    let shared_memory = ctx.transport.capabilities(server.endpoint()).zero_copy;
    let dropped = if shared_memory {
        Some(client.line()?)
    } else {
        None
    };
    // Nothing else is sent until we say so: the dropped send is finished on its own,
    // and whole (anything cut short fails to parse).
    let large = recv(&mut server)?;
    ensure!(
        parse_numbered(large.payload())? == (9, 0),
        "the dropped send did not arrive first"
    );
    let dropped = match dropped {
        Some(line) => line,
        None => client.line()?,
    };
    ensure!(
        dropped == "dropped true",
        "the large send completed at once ({dropped}): nothing was tested"
    );
    client.say("go")?;
    ensure!(
        parse_numbered(recv(&mut server)?.payload())? == (9, 1),
        "the send after the dropped one was lost"
    );
    client.finish()?;
    Ok(())
}

pub fn recv_dropped_again_and_again(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("cancel-recv"))?;
    let count = 500u32;
    let sender = Child::spawn(Role::Send { client: 3, count }, server.endpoint());
    let mut rng = fastrand::Rng::with_seed(3);
    let mut next = 0;
    let deadline = Instant::now() + PATIENCE;
    while next < count {
        ensure!(
            Instant::now() < deadline,
            "only {next} of {count} messages arrived"
        );
        // Zero or a few microseconds: most of these futures are dropped unfinished.
        let patience = Duration::from_micros(rng.u64(0..30));
        if let Some(message) = server.recv_timeout(patience)? {
            let (writer, seq) = parse_numbered(message.payload())?;
            ensure!(
                (writer, seq) == (3, next),
                "expected message {next}, got {seq}"
            );
            next += 1;
        }
    }
    sender.finish()?;
    Ok(())
}
