//! A peer that speaks the other framing, or no ipckit at all, is named as such within the
//! client's own timeout: a framed client at a `?framing=line` listener or at a plain
//! socket, a line client at a framed server.

use std::time::Duration;

use ipckit::Error;

use crate::api;
use crate::peer::Role;
use crate::support::{Check, Child, Ctx, Outcome, PATIENCE, byte_stream, checks};

pub const CHECKS: &[Check] = checks![in handshake:
    byte_stream => framed_client_told_by_a_line_listener,
    byte_stream => framed_client_at_a_plain_socket,
    byte_stream => line_client_at_a_framed_server,
];

/// The line server answers the hello with a refusal (status 4): the client's request
/// fails at once, not at its timeout, saying what to add.
fn framed_client_told_by_a_line_listener(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(Role::Print, ctx.endpoint_with("lines", "framing", "line"));
    let mut url = server.ready()?;
    url.set_option("framing", "length")?;
    let outcome = api::connect(&url).and_then(|client| client.request(b"hi", PATIENCE));
    match outcome {
        Err(e @ Error::Protocol { .. })
            if e.to_string().contains("ipckit handshake")
                && e.to_string().contains("?framing=line") => {}
        other => return Err(format!("a framed client at a line listener got {other:?}").into()),
    }
    server.logged("speaks ?framing=line")?;
    Ok(())
}

/// A socket that reads and never answers: the request's own timeout ends the wait, with
/// an error that says no ipckit welcome came, not that the server is busy.
fn framed_client_at_a_plain_socket(ctx: &Ctx) -> Outcome {
    let mut mute = Child::spawn(Role::Mute, ctx.endpoint("plain"));
    let url = mute.ready()?;
    let outcome =
        api::connect(&url).and_then(|client| client.request(b"hi", Duration::from_millis(500)));
    match outcome {
        Err(e @ Error::Protocol { .. })
            if e.to_string().contains("no ipckit welcome")
                && e.to_string().contains("?framing=line")
                && !e.to_string().contains("busy") => {}
        other => return Err(format!("a framed client at a plain socket got {other:?}").into()),
    }
    Ok(())
}

/// A framed server closes a connection whose first bytes cannot begin a hello: the line
/// client, answered no line, is told to drop `?framing=line`.
fn line_client_at_a_framed_server(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(Role::Print, ctx.endpoint("framed"));
    let mut url = server.ready()?;
    url.set_option("framing", "line")?;
    let outcome = api::connect(&url).and_then(|client| client.request(b"hi", PATIENCE));
    match outcome {
        Err(e @ Error::Disconnected { .. }) if e.to_string().contains("drop ?framing=line") => {}
        other => return Err(format!("a line client at a framed server got {other:?}").into()),
    }
    Ok(())
}
