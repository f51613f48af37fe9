//! Bad input on byte streams: the server runs in a child that logs to stderr, and a raw
//! socket feeds it what no ipckit client would send.

use std::io::{Read, Write};
use std::time::Duration;

use ipckit::Endpoint;
use ipckit::endpoint::{Address, UnixAddr};
use ipckit::frame::{Header, Hello, Kind};
use libtest_mimic::Failed;

use crate::api;
use crate::peer::Role;
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, byte_stream, checks, ensure, parse_numbered, recv,
};

pub const CHECKS: &[Check] = checks![in bad_input:
    byte_stream => random_bytes,
    byte_stream => truncated_frame,
    byte_stream => length_over_limit,
    byte_stream => claimed_length_not_allocated,
    byte_stream => wrong_protocol_version,
    byte_stream => killed_mid_frame,
    byte_stream => request_id_reused_while_in_flight,
];

pub trait RawStream: Read + Write + Send {}
impl<T: Read + Write + Send> RawStream for T {}

pub fn raw_connect(endpoint: &Endpoint) -> Result<Box<dyn RawStream>, Failed> {
    use std::os::linux::net::SocketAddrExt;
    let stream: Box<dyn RawStream> = match endpoint.address() {
        Address::Uds(UnixAddr::Path(path)) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(PATIENCE))?;
            Box::new(s)
        }
        Address::Uds(UnixAddr::Abstract(name)) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            s.set_read_timeout(Some(PATIENCE))?;
            Box::new(s)
        }
        Address::Tcp(at) => {
            let s = std::net::TcpStream::connect((at.bare_host(), at.port))?;
            s.set_read_timeout(Some(PATIENCE))?;
            Box::new(s)
        }
        other => return Err(format!("no raw stream for {other:?}").into()),
    };
    Ok(stream)
}

/// Opens a raw connection and completes the handshake.
pub fn raw_greeted(endpoint: &Endpoint) -> Result<Box<dyn RawStream>, Failed> {
    let mut stream = raw_connect(endpoint)?;
    stream.write_all(&Hello::new(1 << 20).encode())?;
    let mut welcome = [0u8; 12];
    stream.read_exact(&mut welcome)?;
    ipckit::frame::Welcome::decode(&welcome).map_err(|v| v.to_string())?;
    Ok(stream)
}

/// True when the server ended the connection (EOF or reset) rather than going quiet.
pub fn closed_by_server(stream: &mut dyn RawStream) -> Result<(), Failed> {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {} // a welcome or refusal may precede the end
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => {
                return Err(format!("the server did not close the connection: {e}").into());
            }
        }
    }
}

/// Runs `attack` against a server in a child process, then proves the server still
/// serves a good client, delivered nothing of the attack, and logged `reason`.
pub(super) fn survives(
    ctx: &Ctx,
    options: &[(&str, &str)],
    reason: &str,
    attack: impl FnOnce(&Endpoint) -> Outcome,
) -> Outcome {
    let mut endpoint = ctx.endpoint("victim");
    for (key, value) in options {
        endpoint.set_option(key, value)?;
    }
    let mut server = Child::spawn(Role::Print, endpoint);
    let url = server.ready()?;
    // A good client connected before the attack must keep working through it.
    let bystander = api::connect(&url)?;
    attack(&url)?;
    bystander.send(b"after the attack")?;
    api::connect(&url)?.send(b"and a new client")?;
    // Two connections: nothing orders one's message before the other's.
    let mut lines = [server.line()?, server.line()?];
    lines.sort();
    ensure!(
        lines == ["msg after the attack", "msg and a new client"],
        "the server delivered {lines:?}, expected the bystander's and the new client's"
    );
    server.logged(reason)?;
    server.finish()?;
    Ok(())
}

pub fn random_bytes(ctx: &Ctx) -> Outcome {
    survives(ctx, &[], "did not open with the ipckit hello", |url| {
        let mut stream = raw_connect(url)?;
        let mut noise = vec![0u8; 4096];
        fastrand::fill(&mut noise);
        noise[0] = b'X'; // never the magic by chance
        let _ = stream.write_all(&noise);
        closed_by_server(&mut *stream)
    })
}

pub fn truncated_frame(ctx: &Ctx) -> Outcome {
    survives(ctx, &[], "went away 66 bytes into a frame", |url| {
        let mut stream = raw_greeted(url)?;
        stream.write_all(&Header::new(Kind::Message, 0, 100).encode())?;
        stream.write_all(&[7u8; 50])?;
        drop(stream);
        Ok(())
    })
}

pub fn length_over_limit(ctx: &Ctx) -> Outcome {
    survives(
        ctx,
        &[("max_message", "1000")],
        "exceeds the limit of 1000 bytes",
        |url| {
            let mut stream = raw_greeted(url)?;
            stream.write_all(&Header::new(Kind::Message, 0, 1001).encode())?;
            closed_by_server(&mut *stream)
        },
    )
}

pub fn claimed_length_not_allocated(ctx: &Ctx) -> Outcome {
    // The victim accepts messages up to 4 GiB - 1 but may only use 1 GiB of address space
    // (see `Role::Print`): allocating what the header claims would kill it.
    survives(
        ctx,
        &[("max_message", &u32::MAX.to_string())],
        "went away",
        |url| {
            let mut stream = raw_greeted(url)?;
            stream.write_all(&Header::new(Kind::Message, 0, 3 << 30).encode())?;
            stream.write_all(&[1u8; 100_000])?;
            std::thread::sleep(Duration::from_millis(100));
            drop(stream);
            Ok(())
        },
    )
}

pub fn wrong_protocol_version(ctx: &Ctx) -> Outcome {
    survives(ctx, &[], "speaks protocol versions 90..=99", |url| {
        let mut stream = raw_connect(url)?;
        let mut hello = Hello::new(1000).encode();
        hello[4] = 90;
        hello[5] = 99;
        stream.write_all(&hello)?;
        let mut welcome = [0u8; 12];
        stream.read_exact(&mut welcome)?;
        ensure!(
            welcome[4] == 0 && welcome[5] != 0,
            "the server accepted version 90..99: {welcome:?}"
        );
        closed_by_server(&mut *stream)
    })
}

pub fn killed_mid_frame(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("killed"))?;
    let url = server.endpoint().to_string();
    let mut writer = Child::spawn(Role::HalfFrame { len: 1000000 }, &url);
    ensure!(
        writer.line_serving(&mut server)? == "half-written",
        "the writer did not get half-way"
    );
    let other = Child::spawn(
        Role::Send {
            client: 5,
            count: 10,
        },
        url,
    );
    for seq in 0..10 {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (5, seq),
            "the other client lost message {seq}"
        );
    }
    writer.kill();
    other.finish()?;
    if let Some(message) = server.recv_timeout(Duration::from_millis(300))? {
        return Err(format!(
            "a partial message of {} bytes was delivered",
            message.payload().len()
        )
        .into());
    }
    Ok(())
}

/// A second REQUEST with an id still in flight on its connection breaks the protocol, as
/// its answer could not be told from the first's: the server closes that connection,
/// delivers nothing more of it, and serves the others.
pub fn request_id_reused_while_in_flight(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("reused-id"))?;
    let url = server.endpoint().clone();
    let request = |payload: &[u8]| {
        let header = Header::new(Kind::Request, 7, payload.len()).encode();
        [header.as_slice(), payload].concat()
    };
    // Clients on threads of their own: the server greets them while it waits in `recv`.
    let attacker = std::thread::spawn({
        let (url, first) = (url.clone(), request(b"first"));
        move || -> Result<Box<dyn RawStream>, Failed> {
            let mut stream = raw_greeted(&url)?;
            stream.write_all(&first)?;
            Ok(stream)
        }
    });
    // Held unanswered: request 7 stays in flight.
    let first = recv(&mut server)?;
    ensure!(
        first.payload() == b"first",
        "the first request arrived as {first:?}"
    );
    let mut stream = attacker.join().map_err(|_| "the attacker panicked")??;
    stream.write_all(&request(b"second"))?;
    let bystander = std::thread::spawn(move || api::connect(&url)?.send(b"after"));
    let next = recv(&mut server)?;
    ensure!(
        next.payload() == b"after",
        "the server delivered {:?} where the other client's message was due",
        String::from_utf8_lossy(next.payload())
    );
    bystander.join().map_err(|_| "the bystander panicked")??;
    if let Some(more) = server.recv_timeout(Duration::from_millis(100))? {
        return Err(format!("the server delivered {more:?} after the violation").into());
    }
    closed_by_server(&mut *stream)
}
