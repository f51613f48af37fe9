//! What a client can hold of a stream server: a connection that never says hello, a frame
//! never finished, connections beyond the server's limit or its descriptors. Each is let
//! go or refused, and the other clients are served throughout.

use std::io::Write;

use ipckit::Error;
use ipckit::frame::{Header, Kind};

use crate::api;
use crate::bad_input::{closed_by_server, raw_connect, raw_greeted, survives};
use crate::peer::Role;
use crate::support::{Check, Child, Ctx, Outcome, PATIENCE, byte_stream, checks, ensure};

pub const CHECKS: &[Check] = checks![in limits:
    byte_stream => silent_connection_dropped_after_handshake_timeout,
    byte_stream => unfinished_frame_dropped_after_frame_timeout,
    byte_stream => unfinished_line_dropped_after_frame_timeout,
    byte_stream => client_beyond_max_connections_refused,
    byte_stream => client_beyond_descriptors_refused,
    byte_stream => idle_connections_cost_little,
];

/// What an idle connection may cost its server, in resident memory.
const IDLE_CONNECTION_BYTES: u64 = 8 * 1024;

/// A connection that never sends its hello is closed once the handshake timeout passes.
pub fn silent_connection_dropped_after_handshake_timeout(ctx: &Ctx) -> Outcome {
    survives(
        ctx,
        &[("handshake_timeout_ms", "100")],
        "sent no hello within 100ms",
        |url| closed_by_server(&mut *raw_connect(url)?),
    )
}

/// A frame that claims 16 MiB and brings one byte is dropped, with its connection, once
/// the frame timeout passes (what it may cost meanwhile: `frame`'s unit tests).
pub fn unfinished_frame_dropped_after_frame_timeout(ctx: &Ctx) -> Outcome {
    survives(
        ctx,
        &[("frame_timeout_ms", "100")],
        "did not finish a frame within 100ms",
        |url| {
            let mut stream = raw_greeted(url)?;
            stream.write_all(&Header::new(Kind::Message, 0, 16 << 20).encode())?;
            stream.write_all(&[1])?;
            closed_by_server(&mut *stream)
        },
    )
}

/// The same for a line never ended, with `framing=line`.
pub fn unfinished_line_dropped_after_frame_timeout(ctx: &Ctx) -> Outcome {
    survives(
        ctx,
        &[("framing", "line"), ("frame_timeout_ms", "100")],
        "did not finish a frame within 100ms",
        |url| {
            let mut stream = raw_connect(url)?;
            stream.write_all(b"a line that never ends")?;
            closed_by_server(&mut *stream)
        },
    )
}

/// The third client of a server that takes two is refused at once, told why, and the
/// two are served; once one leaves, a new client is taken.
pub fn client_beyond_max_connections_refused(ctx: &Ctx) -> Outcome {
    let endpoint = ctx.endpoint_with("limited", "max_connections", "2");
    refused_beyond_two(
        Role::Print,
        endpoint,
        "limit of 2 connections (max_connections)",
    )
}

/// A server out of file descriptors refuses the next client at once, as at its limit.
pub fn client_beyond_descriptors_refused(ctx: &Ctx) -> Outcome {
    let endpoint = ctx.endpoint("few-fds");
    refused_beyond_two(
        Role::PrintWithFds { spare: 2 },
        endpoint,
        "out of file descriptors",
    )
}

fn refused_beyond_two(role: Role, endpoint: ipckit::Endpoint, reason: &str) -> Outcome {
    let mut server = Child::spawn(role, endpoint);
    let url = server.ready()?;
    let first = api::connect(&url)?;
    let second = api::connect(&url)?;
    // A client does not wait for its welcome: the refusal fails the connect if it is
    // there already, else the first call that reads (a request).
    let third = |payload: &[u8]| api::connect(&url)?.request(payload, PATIENCE);
    match third(b"refused") {
        Err(Error::Refused {
            endpoint,
            reason: why,
        }) if endpoint == url.to_string() && why.contains(reason) => {}
        other => {
            return Err(format!(
                "a third client got {other:?}, not a refusal saying '{reason}'; the server's log:\n{}",
                server.stderr()
            )
            .into());
        }
    }
    server.logged("refused a connection")?;
    first.send(b"first")?;
    second.send(b"second")?;
    let mut lines = [server.line()?, server.line()?];
    lines.sort();
    ensure!(
        lines == ["msg first", "msg second"],
        "the server delivered {lines:?}, expected both held clients' messages"
    );
    // Its place is free once the server has seen it go: until then a client is refused.
    drop(first);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match third(b"third") {
            Err(Error::Refused { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // The server prints the request and drops it unanswered.
            Err(Error::Remote { .. }) => break,
            other => return Err(format!("the client taken after one left got {other:?}").into()),
        }
    }
    ensure!(
        server.line()? == "msg third",
        "the client taken after one left was not served"
    );
    drop(second);
    server.finish()?;
    Ok(())
}

/// Connections that said hello and send nothing hold at most a few KiB of the server's
/// memory each: no buffer waits for them.
pub fn idle_connections_cost_little(ctx: &Ctx) -> Outcome {
    const IDLE: u64 = 500;
    let mut server = Child::spawn(Role::Print, ctx.endpoint("idle"));
    let url = server.ready()?;
    let bystander = api::connect(&url)?;
    // A message through the server before each reading: it has done all it was given.
    let settled = |server: &mut Child, n: u32| -> Result<u64, libtest_mimic::Failed> {
        bystander.send(format!("settled {n}").as_bytes())?;
        ensure!(
            server.line()? == format!("msg settled {n}"),
            "the bystander's message did not come"
        );
        resident_bytes(server.pid())
    };
    let before = settled(&mut server, 0)?;
    let idle = (0..IDLE)
        .map(|_| raw_greeted(&url))
        .collect::<Result<Vec<_>, _>>()?;
    let after = settled(&mut server, 1)?;
    let each = after.saturating_sub(before) / IDLE;
    ensure!(
        each <= IDLE_CONNECTION_BYTES,
        "{IDLE} idle connections cost the server {each} bytes each (RSS {before} -> {after})"
    );
    drop(idle);
    Ok(())
}

/// The resident memory of process `pid`.
fn resident_bytes(pid: u32) -> Result<u64, libtest_mimic::Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}
