//! The bodies of calls, replies and events (docs/PROTOCOL.md, *Contracts*), in both
//! codecs. A body's first byte says its codec: `{` (or JSON's whitespace) is JSON, 0x01
//! is postcard; so a server answers each call in the codec it came in, and a client
//! learns a JSON-only server from its answer.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How a contract's calls, replies and events are encoded.
///
/// JSON is the default: readable, spoken by shells and every language, and tolerant of
/// change (a new optional argument, a new field, is missing or ignored). postcard is
/// compact and fast, but positional: both sides must have the same arguments and fields
/// in the same order, so keep it for clients built with their server's contract. A
/// [`Proxy`](super::Proxy) that asks for postcard falls back to JSON for the rest of its
/// connection when its server does not speak it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Codec {
    /// JSON text (the default).
    #[default]
    Json,
    /// postcard, behind a first byte of 0x01.
    Postcard,
}

/// The first byte of a postcard body.
const POSTCARD: u8 = 0x01;
/// A postcard reply's status byte after [`POSTCARD`]: the result follows.
const OK: u8 = 0x00;
/// A postcard reply's status byte after [`POSTCARD`]: a [`Failure`] follows.
const FAILED: u8 = 0x01;

/// Names ipckit keeps for itself: no contract's method may start with it.
pub(super) const RESERVED: &str = "ipckit.";
/// The method that returns a [`Description`](super::Description) of the service.
pub(super) const DESCRIBE: &str = "ipckit.describe";
/// The method that subscribes the caller to events of the object.
pub(super) const SUBSCRIBE: &str = "ipckit.subscribe";

impl Codec {
    /// The codec a body is in: JSON when it starts as JSON can, postcard after 0x01.
    pub(super) fn of(body: &[u8]) -> Option<Codec> {
        match body.first() {
            Some(&POSTCARD) => Some(Codec::Postcard),
            Some(b'{' | b' ' | b'\t' | b'\n' | b'\r') => Some(Codec::Json),
            _ => None,
        }
    }

    pub(super) fn encode_into<T: Serialize + ?Sized>(
        self,
        value: &T,
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        match self {
            Codec::Json => serde_json::to_writer(&mut out, value)
                .map(|()| out)
                .map_err(|e| e.to_string()),
            Codec::Postcard => postcard::to_extend(value, out).map_err(|e| e.to_string()),
        }
    }

    /// A `T` from the whole of `bytes`.
    pub(super) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::Postcard => match postcard::take_from_bytes(bytes) {
                Ok((value, [])) => Ok(value),
                Ok((_, rest)) => Err(format!("{} bytes were left over", rest.len())),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// The name the CLI and the docs use.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::Postcard => "postcard",
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Codec, String> {
        match s {
            "json" => Ok(Codec::Json),
            "postcard" => Ok(Codec::Postcard),
            _ => Err(format!("unknown codec '{s}': use json or postcard")),
        }
    }
}

/// A call as the server reads it: which object and method, and the arguments still
/// encoded, for the method's handler to decode as its own type.
#[derive(Debug)]
pub(super) struct Call<'a> {
    pub codec: Codec,
    /// The object's and the method's names as bytes: compared with the names served,
    /// never checked as UTF-8 (a cost that showed in a call's profile), and shown
    /// lossily in an error.
    pub object: Option<Cow<'a, [u8]>>,
    pub method: Cow<'a, [u8]>,
    pub args: &'a [u8],
    /// Read by [`parse_call`]'s shortcut, which takes the arguments to be the rest of the
    /// body without parsing them: when they do not decode, the body may be a call of
    /// another shape (a field after `args`), to be read again by [`parse_call_fully`].
    pub shortcut: bool,
}

#[derive(Serialize, Deserialize)]
struct JsonCall<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    object: Option<Cow<'a, str>>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    args: Option<&'a RawValue>,
}

/// postcard's strings are never escaped: they are borrowed from the body as they lie.
#[derive(Serialize, Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    object: Option<&'a str>,
    name: &'a str,
}

/// Writes `text` as a JSON string: as it is between quotes when nothing in it needs
/// escaping, as names nearly always are, which is several times faster than
/// serde_json's escaping writer.
fn json_str(out: &mut Vec<u8>, text: &str) -> Result<(), String> {
    if text.bytes().all(plain) {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, text).map_err(|e| e.to_string())
    }
}

/// A byte that stands for itself in a JSON string.
fn plain(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\'
}

/// The body of a call of `method` on `object` with `args`.
pub(super) fn call<A: Serialize + ?Sized>(
    codec: Codec,
    object: Option<&str>,
    method: &str,
    args: &A,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    CallHead::new(object)?.write(&mut out, codec, method, args)?;
    Ok(out)
}

/// What every call to one object begins with, in each codec, made once for a proxy's
/// many calls: what follows is the method's name and the arguments.
pub(super) struct CallHead {
    /// `{"object":"NAME",` (or `{` for no object).
    json: Vec<u8>,
    /// 0x01, then the object as postcard writes an `Option<&str>`.
    postcard: Vec<u8>,
}

impl CallHead {
    pub(super) fn new(object: Option<&str>) -> Result<CallHead, String> {
        let mut json = b"{".to_vec();
        let mut postcard = vec![POSTCARD];
        match object {
            Some(object) => {
                json.extend_from_slice(b"\"object\":");
                json_str(&mut json, object)?;
                json.push(b',');
                postcard.push(1);
                postcard_str(&mut postcard, object);
            }
            None => postcard.push(0),
        }
        Ok(CallHead { json, postcard })
    }

    /// The call of `method` with `args` in `codec`, written into `out` (emptied first),
    /// whose room is kept from call to call.
    pub(super) fn write<A: Serialize + ?Sized>(
        &self,
        out: &mut Vec<u8>,
        codec: Codec,
        method: &str,
        args: &A,
    ) -> Result<(), String> {
        self.write_head(out, codec, method)?;
        write_args(out, codec, args)
    }

    /// What every call of `method` in `codec` begins with, written into `out` (emptied
    /// first): the arguments follow, by [`write_args`].
    pub(super) fn write_head(
        &self,
        out: &mut Vec<u8>,
        codec: Codec,
        method: &str,
    ) -> Result<(), String> {
        out.clear();
        match codec {
            Codec::Json => {
                out.reserve(self.json.len() + method.len() + 40);
                out.extend_from_slice(&self.json);
                out.extend_from_slice(b"\"method\":");
                json_str(out, method)?;
                out.extend_from_slice(b",\"args\":");
            }
            Codec::Postcard => {
                // The head as postcard writes a `Head`, by hand: serde's way costs more
                // than the call.
                out.reserve(self.postcard.len() + method.len() + 24);
                out.extend_from_slice(&self.postcard);
                postcard_str(out, method);
            }
        }
        Ok(())
    }
}

/// The arguments of a call, after its head (from [`CallHead::write_head`]) in `out`:
/// encoded once, in place, with no intermediate value.
pub(super) fn write_args<A: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    codec: Codec,
    args: &A,
) -> Result<(), String> {
    match codec {
        Codec::Json => {
            serde_json::to_writer(&mut *out, args).map_err(|e| e.to_string())?;
            out.push(b'}');
        }
        Codec::Postcard => postcard_into(out, args)?,
    }
    Ok(())
}

/// A call of one method on one object as a proxy writes its head, in each codec, for a
/// service to know it by its first bytes: one comparison in place of reading the head
/// and looking up the object and the method by name.
pub(super) struct Route {
    /// 0x01, then the object and the method as postcard writes a `Head` with an object.
    postcard: Box<[u8]>,
    /// `{"object":"o","method":"m","args":`, for names the [`shortcut`] reads as they
    /// are; `None` for others, which go the long way.
    json: Option<Box<[u8]>>,
}

impl Route {
    pub(super) fn new(object: &str, method: &str) -> Route {
        let mut postcard = vec![POSTCARD, 1];
        postcard_str(&mut postcard, object);
        postcard_str(&mut postcard, method);
        let as_is = |name: &str| name.bytes().all(|b| plain(b) && b < 0x80);
        let json = (as_is(object) && as_is(method)).then(|| {
            format!(r#"{{"object":"{object}","method":"{method}","args":"#)
                .into_bytes()
                .into_boxed_slice()
        });
        Route {
            postcard: postcard.into_boxed_slice(),
            json,
        }
    }

    /// The codec and the arguments of the call in `body`, if it is one of this route's:
    /// what [`parse_call`] reads (a JSON call as its shortcut does).
    #[inline]
    pub(super) fn args<'a>(&self, body: &'a [u8]) -> Option<(Codec, &'a [u8])> {
        if body.first() == Some(&POSTCARD) {
            return Some((Codec::Postcard, body.strip_prefix(&*self.postcard)?));
        }
        let args = body
            .strip_prefix(self.json.as_deref()?)?
            .strip_suffix(b"}")?;
        Some((Codec::Json, args))
    }
}

/// A name read from JSON, as the bytes a [`Call`] holds.
fn bytes(name: Cow<'_, str>) -> Cow<'_, [u8]> {
    match name {
        Cow::Borrowed(name) => Cow::Borrowed(name.as_bytes()),
        Cow::Owned(name) => Cow::Owned(name.into_bytes()),
    }
}

/// A postcard call after its codec byte: its head (its object, if named, and method),
/// read by hand as [`CallHead::write`] writes it, and the arguments after it.
fn postcard_call(body: &[u8]) -> Result<Call<'_>, String> {
    fn string(rest: &[u8]) -> Result<(&[u8], &[u8]), String> {
        // A name's length is one byte: the common case, without the loop.
        if let Some((&len, rest)) = rest.split_first().filter(|(len, _)| **len < 0x80) {
            let len = usize::from(len);
            if rest.len() < len {
                return Err(
                    "the body is not a postcard contract call (cut short in a name)".into(),
                );
            }
            return Ok(rest.split_at(len));
        }
        let mut len = 0usize;
        let mut used = 0;
        loop {
            let Some(&byte) = rest.get(used) else {
                return Err(
                    "the body is not a postcard contract call (cut short in a name's length)"
                        .into(),
                );
            };
            // A name's length fits in 4 varint bytes: anything longer is no call.
            if used == 4 {
                return Err(
                    "the body is not a postcard contract call (a name's length is out of range)"
                        .into(),
                );
            }
            len |= usize::from(byte & 0x7f) << (7 * used);
            used += 1;
            if byte < 0x80 {
                break;
            }
        }
        let rest = &rest[used..];
        if rest.len() < len {
            return Err("the body is not a postcard contract call (cut short in a name)".into());
        }
        Ok(rest.split_at(len))
    }
    let (object, rest) = match body.split_first() {
        Some((0, rest)) => (None, rest),
        Some((1, rest)) => {
            let (object, rest) = string(rest)?;
            (Some(object), rest)
        }
        _ => return Err("the body is not a postcard contract call (a bad object tag)".into()),
    };
    let (method, args) = string(rest)?;
    Ok(Call {
        codec: Codec::Postcard,
        object: object.map(Cow::Borrowed),
        method: Cow::Borrowed(method),
        args,
        shortcut: false,
    })
}

/// `text` as postcard writes a string: its length as a varint, then its bytes.
fn postcard_str(out: &mut Vec<u8>, text: &str) {
    let mut len = text.len();
    if len < 0x80 {
        // A name's length is one byte: the common case, without the loop.
        out.push(len as u8);
        out.extend_from_slice(text.as_bytes());
        return;
    }
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(text.as_bytes());
}

/// The call in `body`, or what is wrong with it.
///
/// A JSON call as proxies write it, `{"object":"o","method":"m","args":…}` with names
/// that need no escaping, is read without parsing: the arguments are the rest of the
/// body but its closing brace, which the method's decoding of them then checks (the
/// shortcut of [`Call`]). Parsing the whole body as JSON cost more than the rest of the
/// call.
pub(super) fn parse_call(body: &[u8]) -> Result<Call<'_>, String> {
    match body {
        [POSTCARD, rest @ ..] => postcard_call(rest),
        _ => shortcut(body).map_or_else(|| parse_call_fully(body), Ok),
    }
}

/// A call in the shape proxies write it, read without a parser; `None` for any other.
fn shortcut(body: &[u8]) -> Option<Call<'_>> {
    /// A JSON string of plain bytes at the start of `rest`, and what follows it.
    fn name(rest: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = rest.iter().position(|&b| !plain(b) || b >= 0x80)?;
        (rest[end] == b'"').then(|| (&rest[..end], &rest[end + 1..]))
    }
    let rest = body.strip_prefix(br#"{"object":""#)?;
    let (object, rest) = name(rest)?;
    let rest = rest.strip_prefix(br#","method":""#)?;
    let (method, rest) = name(rest)?;
    let args = rest.strip_prefix(br#","args":"#)?.strip_suffix(b"}")?;
    Some(Call {
        codec: Codec::Json,
        object: Some(Cow::Borrowed(object)),
        method: Cow::Borrowed(method),
        args,
        shortcut: true,
    })
}

/// The call in `body`, or what is wrong with it, parsed in full.
pub(super) fn parse_call_fully(body: &[u8]) -> Result<Call<'_>, String> {
    match Codec::of(body) {
        Some(Codec::Json) => {
            let call: JsonCall<'_> = serde_json::from_slice(body).map_err(|e| {
                format!("the body is not a contract call ({e}); a call is a JSON object with \"method\", and \"object\" and \"args\" where needed")
            })?;
            Ok(Call {
                codec: Codec::Json,
                object: call.object.map(bytes),
                method: bytes(call.method),
                args: call.args.map_or(b"{}", |raw| raw.get().as_bytes()),
                shortcut: false,
            })
        }
        Some(Codec::Postcard) => postcard_call(&body[1..]),
        None => Err(match body.first() {
            None => "the body is empty, not a contract call".to_string(),
            Some(byte) => format!(
                "the body is not a contract call: it starts with {byte:#04x}, neither JSON's '{{' nor postcard's 0x01"
            ),
        }),
    }
}

/// Why a call failed, as it travels back: `kind` says which [`Error`](crate::Error) or
/// [`CallError::App`](super::CallError::App) the caller makes of it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Failure {
    pub kind: Kind,
    pub message: String,
    /// The names served: the objects for `unknown_object`, the methods for
    /// `unknown_method`. (Always written: postcard has no missing fields.)
    #[serde(default)]
    pub served: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Kind {
    /// The application's error: its value is the reply's `data`.
    App,
    UnknownObject,
    UnknownMethod,
    BadArguments,
    Panicked,
    /// The body was no call.
    BadCall,
    /// The server does not speak the call's codec.
    Codec,
}

#[derive(Serialize)]
struct JsonFailure<'a, D: Serialize + ?Sized> {
    error: &'a Failure,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a D>,
}

/// The body of a successful reply.
pub(super) fn ok<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    ok_into(&mut out, codec, value)?;
    Ok(out)
}

/// As [`ok`], into `out` (emptied first), whose room is kept from call to call.
pub(super) fn ok_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    codec: Codec,
    value: &T,
) -> Result<(), String> {
    out.clear();
    match codec {
        Codec::Json => {
            out.extend_from_slice(OK_JSON);
            serde_json::to_writer(&mut *out, value).map_err(|e| e.to_string())?;
            out.push(b'}');
        }
        Codec::Postcard => {
            out.push(POSTCARD);
            out.push(OK);
            postcard_into(out, value)?;
        }
    }
    Ok(())
}

/// `value` as postcard, after what `out` holds.
#[inline]
fn postcard_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), String> {
    postcard::serialize_with_flavor(value, Extend(out)).map_err(|e| e.to_string())
}

/// postcard's output written straight into a buffer: `to_extend` takes the buffer and
/// gives it back, which moved it twice a call.
struct Extend<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Extend<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The body of a failed reply; `data` is the application's error, for [`Kind::App`].
pub(super) fn failed<D: Serialize + ?Sized>(
    codec: Codec,
    failure: &Failure,
    data: Option<&D>,
) -> Vec<u8> {
    let encoded = match codec {
        Codec::Json => serde_json::to_vec(&JsonFailure {
            error: failure,
            data,
        })
        .map_err(|e| e.to_string()),
        Codec::Postcard => postcard::to_extend(failure, vec![POSTCARD, FAILED])
            .map_err(|e| e.to_string())
            .and_then(|out| match data {
                Some(data) => Codec::Postcard.encode_into(data, out),
                None => Ok(out),
            }),
    };
    encoded.unwrap_or_else(|e| {
        // Only the application's error can fail to encode: say so instead.
        let failure = Failure {
            kind: Kind::Panicked,
            message: format!("its error could not be encoded: {e}"),
            served: Vec::new(),
        };
        failed::<()>(codec, &failure, None)
    })
}

/// How a successful JSON reply begins, as [`ok`] writes it.
const OK_JSON: &[u8] = br#"{"ok":"#;

/// The result in a JSON reply as [`ok`] writes it, `{"ok":…}`, found without a parser:
/// the rest of the body but its closing brace, which decoding it as the result then
/// checks. When that decoding fails, the body may be a reply of another shape (a field
/// after `ok`), for [`parse_reply`] to read.
pub(super) fn ok_shortcut(body: &[u8]) -> Option<&[u8]> {
    body.strip_prefix(OK_JSON)?.strip_suffix(b"}")
}

/// The result in a successful postcard reply, found with no parse of the reply.
pub(super) fn postcard_ok(body: &[u8]) -> Option<&[u8]> {
    body.strip_prefix(&[POSTCARD, OK])
}

/// A reply as the client reads it: the result still encoded, or why it failed.
pub(super) enum Reply<'a> {
    Ok(&'a [u8]),
    Failed(Failure, Option<&'a [u8]>),
}

#[derive(Deserialize)]
struct JsonReply<'a> {
    /// `Some` whenever the member is there, `null` included (a unit result), so that a
    /// body with neither `ok` nor `error` (an echo of the call, say) is no reply.
    #[serde(borrow, default, deserialize_with = "present")]
    ok: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<Failure>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The reply in `body`, which answers a call in `codec` (a server that does not speak
/// postcard answers in JSON).
pub(super) fn parse_reply(body: &[u8]) -> Result<Reply<'_>, String> {
    match Codec::of(body) {
        Some(Codec::Json) => {
            let reply: JsonReply<'_> = serde_json::from_slice(body)
                .map_err(|e| format!("the reply is not a contract reply ({e})"))?;
            match reply.error {
                Some(failure) => Ok(Reply::Failed(
                    failure,
                    reply.data.map(|raw| raw.get().as_bytes()),
                )),
                None => match reply.ok {
                    Some(raw) => Ok(Reply::Ok(raw.get().as_bytes())),
                    None => Err(
                        "the reply is not a contract reply (it has neither \"ok\" nor \"error\")"
                            .into(),
                    ),
                },
            }
        }
        Some(Codec::Postcard) => match body.get(1) {
            Some(&OK) => Ok(Reply::Ok(&body[2..])),
            Some(&FAILED) => {
                let (failure, data) = postcard::take_from_bytes::<Failure>(&body[2..])
                    .map_err(|e| format!("the reply's error does not decode ({e})"))?;
                // Empty data is an error that encodes to nothing (a unit struct), not none.
                Ok(Reply::Failed(failure, Some(data)))
            }
            _ => Err("the reply is not a contract reply (a bad postcard status byte)".into()),
        },
        None => Err("the reply is not a contract reply (neither JSON nor postcard)".into()),
    }
}

/// An event as pushed: the object it comes from, its name, and its data still encoded.
pub(super) struct Pushed<'a> {
    pub codec: Codec,
    pub object: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    pub data: &'a [u8],
}

#[derive(Serialize, Deserialize)]
struct JsonEvent<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    object: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The body of event `name` of `object` with `data`.
pub(super) fn event<D: Serialize + ?Sized>(
    codec: Codec,
    object: &str,
    name: &str,
    data: &D,
) -> Result<Vec<u8>, String> {
    match codec {
        Codec::Json => {
            let mut out = b"{\"object\":".to_vec();
            serde_json::to_writer(&mut out, object).map_err(|e| e.to_string())?;
            out.extend_from_slice(b",\"event\":");
            serde_json::to_writer(&mut out, name).map_err(|e| e.to_string())?;
            out.extend_from_slice(b",\"data\":");
            let mut out = Codec::Json.encode_into(data, out)?;
            out.push(b'}');
            Ok(out)
        }
        Codec::Postcard => {
            let head = Head {
                object: Some(object),
                name,
            };
            let out = postcard::to_extend(&head, vec![POSTCARD]).map_err(|e| e.to_string())?;
            Codec::Postcard.encode_into(data, out)
        }
    }
}

/// The event in a pushed `body`, or what is wrong with it.
pub(super) fn parse_event(body: &[u8]) -> Result<Pushed<'_>, String> {
    match Codec::of(body) {
        Some(Codec::Json) => {
            let event: JsonEvent<'_> = serde_json::from_slice(body)
                .map_err(|e| format!("the push is not a contract event ({e})"))?;
            Ok(Pushed {
                codec: Codec::Json,
                object: event.object,
                name: event.event,
                data: event.data.get().as_bytes(),
            })
        }
        Some(Codec::Postcard) => {
            let (head, data) = postcard::take_from_bytes::<Head<'_>>(&body[1..])
                .map_err(|e| format!("the push is not a postcard contract event ({e})"))?;
            Ok(Pushed {
                codec: Codec::Postcard,
                object: head.object.map(Cow::Borrowed),
                name: Cow::Borrowed(head.name),
                data,
            })
        }
        None => Err("the push is not a contract event (neither JSON nor postcard)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_call_round_trips_with_its_arguments_untouched() {
        let body = call(Codec::Json, Some("calc"), "add", &(2, 3)).unwrap();
        assert_eq!(body, br#"{"object":"calc","method":"add","args":[2,3]}"#);
        let parsed = parse_call(&body).unwrap();
        assert_eq!(parsed.object.as_deref(), Some(&b"calc"[..]));
        assert_eq!(&*parsed.method, b"add");
        assert_eq!(parsed.args, b"[2,3]");
    }

    #[test]
    fn the_shortcut_reads_what_a_full_parse_reads() {
        let body = call(Codec::Json, Some("calc"), "add", &(2, 3)).unwrap();
        let (short, full) = (parse_call(&body).unwrap(), parse_call_fully(&body).unwrap());
        assert!(short.shortcut && !full.shortcut);
        assert_eq!(
            (short.object, short.method, short.args),
            (full.object, full.method, full.args)
        );
        // Names with escapes, spaces or no object go the long way.
        for body in [
            &br#"{"object":"c\u0061lc","method":"add","args":[2,3]}"#[..],
            br#"{"object": "calc","method":"add","args":[2,3]}"#,
            br#"{"method":"add","args":[2,3]}"#,
            br#"{"object":"calc","method":"add","args":[2,3]} "#,
        ] {
            let read = parse_call(body).unwrap();
            assert!(!read.shortcut, "{}", String::from_utf8_lossy(body));
            assert_eq!(read.args, b"[2,3]");
        }
        // What follows `args` is taken for them, for their decoding to refuse.
        let read = parse_call(br#"{"object":"calc","method":"add","args":[2,3],"x":1}"#).unwrap();
        assert_eq!(read.args, br#"[2,3],"x":1"#);
        assert!(Codec::Json.decode::<(i64, i64)>(read.args).is_err());
    }

    #[test]
    fn the_ok_shortcut_finds_the_result_of_a_plain_reply() {
        assert_eq!(
            ok_shortcut(&ok(Codec::Json, &5i64).unwrap()),
            Some(&b"5"[..])
        );
        assert_eq!(ok_shortcut(br#"{"error":{}}"#), None);
    }

    #[test]
    fn a_postcard_call_round_trips() {
        let body = call(Codec::Postcard, None, "add", &(2i64, 3i64)).unwrap();
        let parsed = parse_call(&body).unwrap();
        assert_eq!(parsed.codec, Codec::Postcard);
        assert_eq!(parsed.object, None);
        assert_eq!(
            Codec::Postcard.decode::<(i64, i64)>(parsed.args),
            Ok((2, 3))
        );
    }

    #[test]
    fn a_call_without_arguments_has_an_empty_object_of_them() {
        let parsed = parse_call(br#" {"method":"ping"}"#).unwrap();
        assert_eq!(parsed.args, b"{}");
    }

    #[test]
    fn bodies_that_are_no_call_say_why() {
        for body in [
            &b""[..],
            b"\x00",
            b"[1]",
            b"{\"object\":1}",
            b"{",
            b"\x01\xff",
        ] {
            assert!(parse_call(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn a_deep_nesting_is_an_error_not_a_stack_overflow() {
        for depth in [200, 100_000] {
            let mut body = br#"{"method":"add","args":"#.to_vec();
            body.extend(std::iter::repeat_n(b'[', depth));
            body.extend(std::iter::repeat_n(b']', depth));
            body.push(b'}');
            // The call is read without recursing into its arguments (a `RawValue` is
            // skipped iteratively); the method's decoder then refuses them, within
            // serde_json's recursion limit, whatever their type.
            let call = parse_call(&body).unwrap();
            assert!(Codec::Json.decode::<(i64, i64)>(call.args).is_err());
            assert!(Codec::Json.decode::<serde_json::Value>(call.args).is_err());
        }
    }

    #[test]
    fn replies_round_trip_in_both_codecs() {
        for codec in [Codec::Json, Codec::Postcard] {
            let body = ok(codec, &5i64).unwrap();
            let Ok(Reply::Ok(value)) = parse_reply(&body) else {
                panic!("{codec:?}")
            };
            assert_eq!(codec.decode::<i64>(value), Ok(5));
            let failure = Failure {
                kind: Kind::App,
                message: "no".into(),
                served: vec![],
            };
            let body = failed(codec, &failure, Some("why"));
            let Ok(Reply::Failed(back, Some(data))) = parse_reply(&body) else {
                panic!("{codec:?}")
            };
            assert_eq!(back.kind, Kind::App);
            assert_eq!(codec.decode::<String>(data).unwrap(), "why");
        }
        assert!(matches!(
            parse_reply(b"{\"ok\":null}"),
            Ok(Reply::Ok(b"null"))
        ));
        // An echo of the call is no answer to it.
        let echo = call(Codec::Json, None, "add", &(2, 3)).unwrap();
        assert!(parse_reply(&echo).is_err());
    }

    #[test]
    fn an_application_error_that_encodes_to_nothing_comes_back() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct NotFound;
        let failure = Failure {
            kind: Kind::App,
            message: "no".into(),
            served: vec![],
        };
        for codec in [Codec::Json, Codec::Postcard] {
            let body = failed(codec, &failure, Some(&NotFound));
            let Ok(Reply::Failed(_, data)) = parse_reply(&body) else {
                panic!("{codec:?}: no failure")
            };
            // As a proxy reads it: JSON's `"data":null` is no data, and null.
            let data = data.unwrap_or(b"null");
            assert_eq!(codec.decode::<NotFound>(data), Ok(NotFound), "{codec:?}");
        }
    }

    #[test]
    fn events_round_trip_in_both_codecs() {
        for codec in [Codec::Json, Codec::Postcard] {
            let body = event(codec, "calc", "computed", &7u8).unwrap();
            let pushed = parse_event(&body).unwrap();
            assert_eq!(
                (pushed.object.as_deref(), &*pushed.name),
                (Some("calc"), "computed")
            );
            assert_eq!(codec.decode::<u8>(pushed.data), Ok(7));
        }
    }

    /// The bytes docs/PROTOCOL.md (*Contracts*) shows, which a client in another
    /// language is written from.
    #[test]
    fn the_protocol_documents_examples_hold() {
        #[derive(Serialize)]
        struct Add {
            a: i64,
            b: i64,
        }
        let args = Add { a: 2, b: 3 };
        let body = call(Codec::Json, Some("calculator"), "add", &args).unwrap();
        assert_eq!(
            body,
            br#"{"object":"calculator","method":"add","args":{"a":2,"b":3}}"#
        );
        assert_eq!(ok(Codec::Json, &5i64).unwrap(), br#"{"ok":5}"#);
        let body = call(Codec::Postcard, Some("calculator"), "add", &args).unwrap();
        assert_eq!(body, b"\x01\x01\x0acalculator\x03add\x04\x06");
        assert_eq!(ok(Codec::Postcard, &5i64).unwrap(), [0x01, 0x00, 0x0a]);
        let failure = Failure {
            kind: Kind::Codec,
            message: "m".into(),
            served: vec!["x".into()],
        };
        assert_eq!(
            failed::<()>(Codec::Postcard, &failure, None),
            [0x01, 0x01, 6, 1, b'm', 1, 1, b'x']
        );
        assert_eq!(
            failed::<()>(Codec::Json, &failure, None),
            br#"{"error":{"kind":"codec","message":"m","served":["x"]}}"#
        );
    }
}
