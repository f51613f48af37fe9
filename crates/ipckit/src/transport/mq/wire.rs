//! The bytes of ipckit's own queue messages (docs/PROTOCOL.md): requests, replies and the
//! waker's message, told apart from a plain payload by their first bytes.

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

/// Writes into `out` the request for `payload` whose answer goes to the queue `name`
/// (at most 255 bytes: NAME_MAX).
pub(crate) fn encode_request(out: &mut Vec<u8>, name: &str, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(REQUEST_MAGIC);
    out.push(u8::try_from(name.len()).expect("a queue name is at most NAME_MAX bytes"));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(payload);
}

/// Splits a request into its reply queue's name and its payload; `None` for a one-way
/// message. The name must start with `reply_prefix`, the prefix of this endpoint's reply
/// queues, followed by digits and dots.
pub(crate) fn parse_request<'a>(
    message: &'a [u8],
    reply_prefix: &str,
) -> std::result::Result<Option<(&'a str, &'a [u8])>, String> {
    let Some(rest) = message.strip_prefix(REQUEST_MAGIC) else {
        return Ok(None);
    };
    let (&len, rest) = rest
        .split_first()
        .ok_or("a request without its reply queue")?;
    let len = len as usize;
    if rest.len() < len {
        return Err("a request cut short in its reply queue's name".into());
    }
    let name =
        std::str::from_utf8(&rest[..len]).map_err(|_| "a reply queue name that is not UTF-8")?;
    // Only this endpoint's reply queues: a sender must not make the server write into any
    // queue it can name.
    let valid = name
        .strip_prefix(reply_prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    if !valid {
        return Err(format!(
            "a reply queue '{name}' that is not this endpoint's"
        ));
    }
    Ok(Some((name, &rest[len..])))
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
