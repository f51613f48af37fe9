//! Messages arrive: whole, in their sender's order, from many senders at once, at every
//! size up to the limit and refused above it, saying who sent them.

use std::collections::HashMap;
use std::time::Duration;

use crate::api;
use crate::peer::{self, Role};
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, always, byte_stream, checks, credentials, ensure,
    parse_numbered, recv, recv_lent, reliable, reliable_ordered,
};

pub const CHECKS: &[Check] = checks![
    reliable_ordered => order_from_one_client,
    reliable => many_concurrent_clients,
    always => empty_and_maximum_size,
    always => oversized_refused_before_sending,
    byte_stream => server_limit_learned_in_handshake,
    credentials => peer_credentials,
    reliable => many_writers_random_sizes,
    always => connect_then_send_from_the_servers_thread,
];

/// A client is usable as soon as `connect` returns, whether or not its server is inside
/// `recv`: here the server's own thread connects and sends before it receives (a client
/// that waited for a stream server's welcome hung here). The peer process is not needed:
/// the point is one thread.
fn connect_then_send_from_the_servers_thread(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("same-thread"))?;
    let client = api::connect(server.endpoint())?;
    client.send(b"hi")?;
    let message = recv(&mut server)?;
    ensure!(
        message.payload() == b"hi",
        "the server received {:?}",
        String::from_utf8_lossy(message.payload())
    );
    Ok(())
}

fn order_from_one_client(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("order"))?;
    let count = 2000;
    let sender = Child::spawn(Role::Send { client: 7, count }, server.endpoint());
    for expected in 0..count {
        let (client, seq) = parse_numbered(recv(&mut server)?.payload())?;
        ensure!(
            client == 7 && seq == expected,
            "expected message {expected}, got {client}/{seq}"
        );
    }
    sender.finish()?;
    Ok(())
}

fn many_concurrent_clients(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("many"))?;
    let (clients, count) = (8u32, 250u32);
    let senders: Vec<Child> = (0..clients)
        .map(|c| Child::spawn(Role::Send { client: c, count }, server.endpoint()))
        .collect();
    let mut next: HashMap<u32, u32> = HashMap::new();
    for i in 0..clients * count {
        // Every other message is lent to a handler rather than handed over.
        let (client, seq) = if i % 2 == 0 {
            parse_numbered(recv(&mut server)?.payload())?
        } else {
            recv_lent(&mut server)?
        };
        let expected = next.entry(client).or_default();
        ensure!(
            seq == *expected,
            "client {client}: expected message {expected}, got {seq}"
        );
        *expected += 1;
    }
    ensure!(
        next.len() == clients as usize,
        "heard from {} of {clients} clients",
        next.len()
    );
    for sender in senders {
        sender.finish()?;
    }
    Ok(())
}

fn empty_and_maximum_size(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("sizes"))?;
    let max = server.capabilities().max_message;
    let sender = Child::spawn(
        Role::SendSizes {
            sizes: vec![0, 1, max],
        },
        server.endpoint(),
    );
    let check = |payload: &[u8], expected: usize| -> Outcome {
        ensure!(
            payload.len() == expected,
            "expected {expected} bytes, got {}",
            payload.len()
        );
        ensure!(
            payload == peer::filled(expected).as_slice(),
            "the {expected}-byte message arrived corrupted"
        );
        Ok(())
    };
    check(recv(&mut server)?.payload(), 0)?;
    // Lent to a handler: in one record and, for the largest, put together from several.
    for expected in [1, max] {
        let mut checked = None;
        let came = server.answer_lent(PATIENCE, |payload, _| {
            checked = Some(check(payload, expected));
            None
        })?;
        ensure!(came, "no message arrived within {PATIENCE:?}");
        checked.expect("checked by the handler")?;
    }
    sender.finish()?;
    Ok(())
}

fn oversized_refused_before_sending(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("oversize"))?;
    let too_big = server.capabilities().max_message + 1;
    refused_then_after(&mut server, too_big)
}

fn server_limit_learned_in_handshake(ctx: &Ctx) -> Outcome {
    // The server's limit is smaller than the client's own: the client must learn it.
    let mut server = api::listen(ctx.endpoint_with("learned", "max_message", "4096"))?;
    refused_then_after(&mut server, 4097)
}

/// A peer sends `size` bytes, which must be refused before anything is written, then
/// "after", which must be the only thing the server receives.
fn refused_then_after(server: &mut api::Server, size: usize) -> Outcome {
    let sender = Child::spawn(Role::SendOversized { size }, server.endpoint());
    let message = recv(server)?;
    ensure!(
        message.payload() == b"after",
        "first message was {} bytes, not 'after'",
        message.payload().len()
    );
    sender.finish()?;
    ensure!(
        server.recv_timeout(Duration::from_millis(200))?.is_none(),
        "an extra message arrived"
    );
    Ok(())
}

fn peer_credentials(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("creds"))?;
    let sender = Child::spawn(
        Role::Send {
            client: 1,
            count: 1,
        },
        server.endpoint(),
    );
    let message = recv(&mut server)?;
    let peer = message.peer();
    ensure!(
        peer.pid == Some(sender.pid()),
        "pid {:?}, expected {}",
        peer.pid,
        sender.pid()
    );
    let uid = rustix::process::getuid().as_raw();
    ensure!(peer.uid == Some(uid), "uid {:?}, expected {uid}", peer.uid);
    sender.finish()?;
    Ok(())
}

/// Eight writers at once, each 1000 messages of random sizes up to 1 MiB (or the
/// transport's limit): every message whole, in its writer's order, none lost.
fn many_writers_random_sizes(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("writers"))?;
    let (writers, count) = (8u32, 1000u32);
    let url = server.endpoint().to_string();
    let senders: Vec<Child> = (0..writers)
        .map(|w| Child::spawn(Role::SendRandom { writer: w, count }, &url))
        .collect();
    let mut next: HashMap<u32, u32> = HashMap::new();
    for _ in 0..writers * count {
        let (writer, seq) = parse_numbered(recv(&mut server)?.payload())?;
        let expected = next.entry(writer).or_default();
        ensure!(
            seq == *expected,
            "writer {writer}: expected message {expected}, got {seq}"
        );
        *expected += 1;
    }
    for sender in senders {
        sender.finish()?;
    }
    Ok(())
}
