//! The bytes of ipckit's own queue messages (docs/PROTOCOL.md): requests, replies and the
//! waker's message, a client's comings and goings, and what the server pushes; told apart
//! from a plain payload by their first bytes.

use crate::error::{Error, Result};

/// The first bytes of a request: a one-way message cannot start with them.
pub(crate) const REQUEST_MAGIC: &[u8; 8] = b"\0IPCKRQ1";
/// A reply's first byte.
pub(crate) const REPLY_OK: u8 = 0;
pub(super) const REPLY_REFUSED: u8 = 1;

/// The message a waker puts in the queue, at the highest priority so that it is taken
/// before anything else; receivers skip it.
pub(super) const WAKE: &[u8; 10] = b"\0IPCKWAKE1";
pub(super) const WAKE_PRIORITY: u32 = 32767;

/// What every message of ipckit's own starts with; a one-way message cannot.
pub(super) const OWN: &[u8; 5] = b"\0IPCK";
/// A client announcing its inbound queue to a running server, at connect.
pub(super) const HELLO_MAGIC: &[u8; 8] = b"\0IPCKHI1";
/// A one-way message naming its sender's inbound queue.
pub(super) const FROM_MAGIC: &[u8; 8] = b"\0IPCKFR1";
/// A client leaving: its inbound queue is going.
pub(super) const BYE_MAGIC: &[u8; 8] = b"\0IPCKBY1";

/// The first byte of a message in a client's inbound queue: the last (or only) piece of
/// a push. A push larger than one queue message goes in consecutive pieces.
pub(super) const PIECE_LAST: u8 = 0;
/// The first byte of a piece of a push that more pieces follow.
pub(super) const PIECE_MORE: u8 = 1;
/// The whole of the last message in a client's inbound queue: the server closed the way
/// to it (it exited, or disconnected this client).
pub(super) const CLOSED: u8 = 2;

/// The bytes a header naming the queue `name` takes before a payload.
pub(super) fn header_len(name: &str) -> usize {
    REQUEST_MAGIC.len() + 1 + name.len()
}

/// Writes into `out` the request for `payload` whose answer goes to the queue `name`
/// (at most 255 bytes: NAME_MAX).
pub(crate) fn encode_request(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    encode_named(out, REQUEST_MAGIC, name, payload);
}

/// Writes into `out` the message `magic` naming the queue `name`, then `payload`.
pub(super) fn encode_named(out: &mut Vec<u8>, magic: &[u8; 8], name: &str, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(magic);
    out.push(u8::try_from(name.len()).expect("a queue name is at most NAME_MAX bytes"));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(payload);
}

/// Splits a request into its reply queue's name and its payload; `None` for a one-way
/// message. The name must start with `reply_prefix`, the prefix of this endpoint's reply
/// queues, followed by digits and dots.
#[cfg(any(test, fuzzing))]
pub(crate) fn parse_request<'a>(
    message: &'a [u8],
    reply_prefix: &str,
) -> std::result::Result<Option<(&'a str, &'a [u8])>, String> {
    match message.strip_prefix(REQUEST_MAGIC) {
        Some(rest) => parse_named(rest, reply_prefix).map(Some),
        None => Ok(None),
    }
}

/// Splits what follows a magic into the queue it names and the payload after it.
fn parse_named<'a>(
    rest: &'a [u8],
    prefix: &str,
) -> std::result::Result<(&'a str, &'a [u8]), String> {
    let (&len, rest) = rest
        .split_first()
        .ok_or("a message without the queue it names")?;
    let len = len as usize;
    if rest.len() < len {
        return Err("a message cut short in the name of its queue".into());
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| "a queue name that is not UTF-8")?;
    // Only this endpoint's clients' queues: a sender must not make the server write into
    // any queue it can name.
    let valid = name
        .strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if !valid {
        return Err(format!("a queue '{name}' that is not this endpoint's"));
    }
    Ok((name, &rest[len..]))
}

/// A message in the endpoint's queue, as the server reads it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind<'a> {
    /// A one-way message from a program that is not an ipckit client, or too large to
    /// name its sender.
    Plain(&'a [u8]),
    /// A request whose reply goes to the queue `reply`.
    Request {
        reply: &'a str,
        payload: &'a [u8],
    },
    /// A one-way message from the client whose inbound queue is `inbound`.
    From {
        inbound: &'a str,
        payload: &'a [u8],
    },
    Hello(&'a str),
    Bye(&'a str),
    Wake,
}

/// Reads a message of the endpoint's queue, whose clients' queues start with `prefix`.
pub(super) fn classify<'a>(
    message: &'a [u8],
    prefix: &str,
) -> std::result::Result<Kind<'a>, String> {
    if !message.starts_with(OWN) {
        return Ok(Kind::Plain(message));
    }
    if message == WAKE {
        return Ok(Kind::Wake);
    }
    let (magic, rest) = message.split_at(REQUEST_MAGIC.len().min(message.len()));
    let inbound = |name: &'a str| {
        if inbound_pid(name, prefix).is_some() {
            Ok(name)
        } else {
            Err(format!("'{name}' is not a client's inbound queue"))
        }
    };
    match <&[u8; 8]>::try_from(magic) {
        Ok(REQUEST_MAGIC) => {
            let (reply, payload) = parse_named(rest, prefix)?;
            Ok(Kind::Request { reply, payload })
        }
        Ok(FROM_MAGIC) => {
            let (name, payload) = parse_named(rest, prefix)?;
            Ok(Kind::From {
                inbound: inbound(name)?,
                payload,
            })
        }
        Ok(HELLO_MAGIC) => Ok(Kind::Hello(inbound(parse_named(rest, prefix)?.0)?)),
        Ok(BYE_MAGIC) => Ok(Kind::Bye(inbound(parse_named(rest, prefix)?.0)?)),
        _ => Err("a message of ipckit's own of no known kind".into()),
    }
}

/// The pid in a client's inbound queue name, `PREFIX` then `PID.N`; `None` for any other
/// name (a reply queue is `PREFIX` then `PID.N.M`).
pub(super) fn inbound_pid(name: &str, prefix: &str) -> Option<i32> {
    let (pid, n) = name.strip_prefix(prefix)?.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| pid.parse().ok())?
}

/// The inbound queue of the client that made the reply queue `reply` (its name then
/// `.M`); `None` for a reply queue of a client that has none.
pub(super) fn inbound_of_reply<'a>(reply: &'a str, prefix: &str) -> Option<&'a str> {
    let (inbound, m) = reply.rsplit_once('.')?;
    (!m.is_empty()
        && m.bytes().all(|b| b.is_ascii_digit())
        && inbound_pid(inbound, prefix).is_some())
    .then_some(inbound)
}

/// The caller's result from a reply: a status byte, then the payload or the reason.
pub(crate) fn answer(url: &str, reply: &[u8]) -> Result<Vec<u8>> {
    match reply.split_first() {
        None => Err(Error::Protocol {
            endpoint: url.to_owned(),
            reason: "an empty reply, without its status byte".into(),
        }),
        Some((&REPLY_OK, payload)) => Ok(payload.to_vec()),
        Some((_, reason)) => Err(Error::Remote {
            endpoint: url.to_owned(),
            reason: String::from_utf8_lossy(reason).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/app.r.";

    #[test]
    fn each_kind_of_message_is_told_apart_and_names_its_client() {
        let mut out = Vec::new();
        encode_named(&mut out, FROM_MAGIC, "/app.r.12.3", b"\0IPCK anything");
        assert_eq!(
            classify(&out, PREFIX),
            Ok(Kind::From {
                inbound: "/app.r.12.3",
                payload: b"\0IPCK anything"
            })
        );
        encode_named(&mut out, HELLO_MAGIC, "/app.r.12.3", b"");
        assert_eq!(classify(&out, PREFIX), Ok(Kind::Hello("/app.r.12.3")));
        encode_named(&mut out, BYE_MAGIC, "/app.r.12.3", b"");
        assert_eq!(classify(&out, PREFIX), Ok(Kind::Bye("/app.r.12.3")));
        encode_request(&mut out, "/app.r.12.3.0", b"ping");
        assert_eq!(
            classify(&out, PREFIX),
            Ok(Kind::Request {
                reply: "/app.r.12.3.0",
                payload: b"ping"
            })
        );
        assert_eq!(
            inbound_of_reply("/app.r.12.3.0", PREFIX),
            Some("/app.r.12.3")
        );
        // A reply queue of a client without an inbound queue names nobody.
        assert_eq!(inbound_of_reply("/app.r.12.3", PREFIX), None);
        assert_eq!(classify(b"plain", PREFIX), Ok(Kind::Plain(b"plain")));
        assert_eq!(classify(WAKE, PREFIX), Ok(Kind::Wake));
    }

    #[test]
    fn a_hello_must_name_an_inbound_queue_of_this_endpoint() {
        let mut out = Vec::new();
        for name in ["/app.r.12.3.4", "/other.r.12.3", "/app.r.12", "/app.r.x.3"] {
            encode_named(&mut out, HELLO_MAGIC, name, b"");
            assert!(classify(&out, PREFIX).is_err(), "{name} was taken");
        }
        assert!(classify(b"\0IPCKZZ9", PREFIX).is_err());
        assert!(classify(b"\0IPCK", PREFIX).is_err());
    }
}
