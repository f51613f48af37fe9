//! The stream wire format (docs/PROTOCOL.md), with no I/O in it.
//!
//! A [`Decoder`] is handed the bytes a stream delivers and gives back whole frames; the
//! blocking transports drive it with `read(2)`, and an async driver can feed it the same
//! way. It never allocates what a peer merely claims: a length is checked against the
//! limit first, and every buffer grows with the bytes that actually arrive.
//!
//! ```
//! use ipckit::frame::{Decoder, Header, Kind};
//! use ipckit::Framing;
//!
//! let mut wire = Header::new(Kind::Request, 1, 4).encode().to_vec();
//! wire.extend_from_slice(b"ping");
//!
//! let mut decoder = Decoder::new(Framing::Length, 1024);
//! let buf = decoder.read_buf(); // where a read(2) would put its bytes
//! buf[..wire.len()].copy_from_slice(&wire);
//! decoder.advance(wire.len());
//! let frame = decoder.next_frame().unwrap().unwrap();
//! assert_eq!((frame.kind, frame.id, &frame.payload[..]), (Kind::Request, 1, &b"ping"[..]));
//! ```

use std::cell::RefCell;

use crate::endpoint::Framing;

/// The four bytes that open both hellos.
pub const MAGIC: [u8; 4] = *b"IPCK";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The size of the client's hello and of the server's welcome.
pub const HELLO_LEN: usize = 12;
/// The size of a frame header.
pub const HEADER_LEN: usize = 16;

/// Welcome status: the version was accepted.
pub const STATUS_OK: u8 = 0;
/// Welcome status: no version in the client's range is spoken here.
pub const STATUS_UNSUPPORTED_VERSION: u8 = 1;
/// Welcome status: the server does not admit this peer. The welcome's `max_message`
/// field is then the length of a UTF-8 reason that follows it, and the server closes.
pub const STATUS_REFUSED: u8 = 2;
/// Welcome status: the server takes no more connections now (it holds as many as it may,
/// or has no descriptor left). A reason follows, as after [`STATUS_REFUSED`].
pub const STATUS_BUSY: u8 = 3;
/// Welcome status: this endpoint speaks `?framing=line`, not the ipckit handshake; a
/// line server sends it to a peer that opened with a whole hello, with a reason as after
/// [`STATUS_REFUSED`], so that a framed client learns at once what to change.
pub const STATUS_LINE: u8 = 4;
/// The longest reason a refusing server sends, and a client reads.
pub const MAX_REFUSAL: usize = 1024;

/// Where to cut UTF-8 `text` to at most `max` bytes without splitting a character: a
/// reason cut to fit a limit stays text.
pub(crate) fn char_cut(text: &[u8], max: usize) -> usize {
    let mut cut = text.len().min(max);
    // A continuation byte (0b10xx_xxxx) at the cut means a character straddles it.
    while cut > 0 && cut < text.len() && text[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    cut
}

/// The staging buffer's size at first; it grows (doubling) while reads fill it.
const SMALL: usize = 4 * 1024;
/// How many drained staging buffers a thread keeps for the next decoder that reads.
const SPARES_KEPT: usize = 16;

thread_local! {
    /// Staging buffers given back by drained decoders ([`Decoder::shrink`]): a connection
    /// between messages holds none, and one that is read takes one here, without
    /// allocating or zeroing, so that the cost of idling is not paid on every message.
    static SPARES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A staging buffer of [`SMALL`] bytes, from this thread's spares if it has one.
fn spare_buffer() -> Vec<u8> {
    SPARES
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; SMALL])
}

/// Keeps a staging buffer of [`SMALL`] bytes for the next decoder on this thread.
fn give_back(buf: Vec<u8>) {
    let _ = SPARES.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < SPARES_KEPT {
            spares.push(buf);
        }
    });
}
/// How large the staging buffer grows for frames; payloads larger than half of it are
/// read into a buffer of their own instead, so they are copied once, from the kernel,
/// and never again.
const STAGING: usize = 64 * 1024;
const LARGE: usize = STAGING / 2;
/// The least room a read is offered: less makes the buffer grow.
const MIN_READ: usize = 1024;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A one-way message; its id is 0.
    Message = 1,
    /// A request; its non-zero id comes back on the reply.
    Request = 2,
    /// The reply to the request with the same id.
    Reply = 3,
    /// A refusal of the request with the same id; the payload is a UTF-8 reason. With id
    /// 0, from a server: why it is closing the connection.
    Error = 4,
}

/// A way a peer broke the protocol. Any of them ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The hello did not start with `IPCK`.
    #[error(
        "the peer did not open with the ipckit hello (first bytes {0:02x?}); is it an ipckit peer, or does it want ?framing=line?"
    )]
    BadMagic([u8; 4]),
    /// The server's first bytes are not a welcome (a client's view of [`Violation::BadMagic`]).
    #[error(
        "the server did not answer with the ipckit welcome (first bytes {0:02x?}): it does not speak the ipckit handshake; if it is a ?framing=line listener or a plain socket, add ?framing=line to the URL"
    )]
    NotWelcome(Vec<u8>),
    /// No common protocol version.
    #[error("the peer speaks protocol versions {min}..={max}, this side only {VERSION}")]
    Version {
        /// Lowest version the peer offered.
        min: u8,
        /// Highest version the peer offered.
        max: u8,
    },
    /// A frame longer than this side accepts.
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length the header claimed.
        len: u64,
        /// This side's limit.
        max: usize,
    },
    /// The server refused the connection ([`STATUS_REFUSED`]); its reason follows the
    /// welcome.
    #[error("the server refused the connection")]
    Refused,
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A reserved header field was not zero.
    #[error("reserved header bits are set ({0:#x})")]
    Reserved(u32),
    /// An id that does not fit the frame's kind.
    #[error(
        "a {kind:?} frame with id {id}: messages carry id 0, requests and replies a non-zero id"
    )]
    BadId {
        /// The frame's kind.
        kind: Kind,
        /// The id it carried.
        id: u64,
    },
    /// A line longer than this side accepts.
    #[error("a line longer than the limit of {max} bytes")]
    LineTooLong {
        /// This side's limit.
        max: usize,
    },
}

/// The client's opening: the versions it speaks and the largest message it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version offered.
    pub min_version: u8,
    /// Highest protocol version offered.
    pub max_version: u8,
    /// The largest payload this side accepts.
    pub max_message: u32,
}

/// The server's answer to a [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The chosen version, or 0 when refused.
    pub version: u8,
    /// [`STATUS_OK`] or why the hello was refused.
    pub status: u8,
    /// The largest payload the server accepts.
    pub max_message: u32,
}

fn encode_opening(a: u8, b: u8, max_message: u32) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4] = a;
    out[5] = b;
    out[8..12].copy_from_slice(&max_message.to_le_bytes());
    out
}

fn decode_opening(bytes: &[u8; HELLO_LEN]) -> Result<(u8, u8, u32), Violation> {
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(Violation::BadMagic(magic));
    }
    let reserved = u16::from_le_bytes([bytes[6], bytes[7]]);
    if reserved != 0 {
        return Err(Violation::Reserved(reserved.into()));
    }
    let max = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    Ok((bytes[4], bytes[5], max))
}

impl Hello {
    /// The hello of this build, accepting messages up to `max_message` bytes.
    pub fn new(max_message: usize) -> Hello {
        Hello {
            min_version: VERSION,
            max_version: VERSION,
            max_message: clamp_u32(max_message),
        }
    }

    /// The 12 bytes on the wire.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        encode_opening(self.min_version, self.max_version, self.max_message)
    }

    /// Reads a hello; checks magic and reserved bits, not the versions.
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Hello, Violation> {
        let (min_version, max_version, max_message) = decode_opening(bytes)?;
        Ok(Hello {
            min_version,
            max_version,
            max_message,
        })
    }

    /// The server's answer: the highest common version, or a refusal.
    pub fn answer(&self, server_max_message: usize) -> Welcome {
        let max_message = clamp_u32(server_max_message);
        if (self.min_version..=self.max_version).contains(&VERSION) {
            Welcome {
                version: VERSION,
                status: STATUS_OK,
                max_message,
            }
        } else {
            Welcome {
                version: 0,
                status: STATUS_UNSUPPORTED_VERSION,
                max_message,
            }
        }
    }
}

impl Welcome {
    /// The 12 bytes on the wire.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        encode_opening(self.version, self.status, self.max_message)
    }

    /// What a server sends a peer it turns away, in place of a welcome: `status`
    /// ([`STATUS_REFUSED`] or [`STATUS_BUSY`]) and `reason`, cut to [`MAX_REFUSAL`] bytes.
    ///
    /// ```
    /// use ipckit::frame::{HELLO_LEN, STATUS_REFUSED, Welcome};
    /// let wire = Welcome::refusal(STATUS_REFUSED, "uid 65534 is not admitted");
    /// let opening: [u8; HELLO_LEN] = wire[..HELLO_LEN].try_into().unwrap();
    /// assert_eq!(
    ///     Welcome::refused(&opening),
    ///     Some((STATUS_REFUSED, wire.len() - HELLO_LEN))
    /// );
    /// assert!(Welcome::decode(&opening).is_err());
    /// ```
    pub fn refusal(status: u8, reason: &str) -> Vec<u8> {
        let cut = char_cut(reason.as_bytes(), MAX_REFUSAL);
        let mut out = encode_opening(0, status, cut as u32).to_vec();
        out.extend_from_slice(&reason.as_bytes()[..cut]);
        out
    }

    /// The status and the length of the reason that follows, if `bytes` turns the client
    /// away; the length at most [`MAX_REFUSAL`], whatever the server claims.
    pub fn refused(bytes: &[u8; HELLO_LEN]) -> Option<(u8, usize)> {
        match decode_opening(bytes) {
            Ok((0, status @ (STATUS_REFUSED | STATUS_BUSY | STATUS_LINE), len)) => {
                Some((status, (len as usize).min(MAX_REFUSAL)))
            }
            _ => None,
        }
    }

    /// Reads a welcome.
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Welcome, Violation> {
        let (version, status, max_message) = decode_opening(bytes)?;
        if matches!(status, STATUS_REFUSED | STATUS_BUSY | STATUS_LINE) {
            return Err(Violation::Refused);
        }
        if status != STATUS_OK || version != VERSION {
            return Err(Violation::Version {
                min: version,
                max: version,
            });
        }
        Ok(Welcome {
            version,
            status,
            max_message,
        })
    }
}

/// Whether `bytes`, the first a peer sent, may still begin an opening (a hello or a
/// welcome): the magic, then two version bytes, then two zero bytes. False as soon as
/// they cannot, so that a peer speaking something else is told at once rather than
/// after twelve bytes that may never come.
pub fn may_open(bytes: &[u8]) -> bool {
    let magic = bytes.len().min(MAGIC.len());
    bytes[..magic] == MAGIC[..magic] && bytes.iter().take(8).skip(6).all(|&b| b == 0)
}

/// Whether the first bytes of a connection are an ipckit hello: `Some(true)` when they
/// are (twelve bytes, well formed), `Some(false)` when they cannot be, `None` while too
/// few have come to tell. A line server asks, to answer a framed client with
/// [`STATUS_LINE`]. A hello has no newline before its limit (byte 8): text that has
/// one there is a line.
pub fn sniff_hello(bytes: &[u8]) -> Option<bool> {
    if !may_open(bytes) || bytes.iter().take(8).any(|&b| b == b'\n') {
        return Some(false);
    }
    let opening: &[u8; HELLO_LEN] = bytes.get(..HELLO_LEN)?.try_into().expect("HELLO_LEN bytes");
    Some(Hello::decode(opening).is_ok())
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A frame header: what follows and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes.
    pub len: u32,
    /// What the frame carries.
    pub kind: Kind,
    /// Correlation id: 0 for messages, the request's id otherwise.
    pub id: u64,
}

impl Header {
    /// A header for a payload of `len` bytes; the caller has checked `len` against the
    /// peer's limit, which is never above `u32::MAX`.
    pub fn new(kind: Kind, id: u64, len: usize) -> Header {
        Header {
            len: u32::try_from(len).expect("length checked against the peer's limit"),
            kind,
            id,
        }
    }

    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.len.to_le_bytes());
        out[4] = self.kind as u8;
        out[8..].copy_from_slice(&self.id.to_le_bytes());
        out
    }

    /// Reads and validates a header against this side's limit.
    pub fn decode(bytes: &[u8; HEADER_LEN], max: usize) -> Result<Header, Violation> {
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        let kind = match bytes[4] {
            1 => Kind::Message,
            2 => Kind::Request,
            3 => Kind::Reply,
            4 => Kind::Error,
            other => return Err(Violation::UnknownKind(other)),
        };
        let reserved = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], 0]);
        if reserved != 0 {
            return Err(Violation::Reserved(reserved));
        }
        let id = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
        // An ERROR with id 0 answers no request: the server says why it ends the connection.
        if kind != Kind::Error && (kind == Kind::Message) != (id == 0) {
            return Err(Violation::BadId { kind, id });
        }
        if len as u64 > max as u64 {
            return Err(Violation::TooLarge {
                len: len.into(),
                max,
            });
        }
        Ok(Header { len, kind, id })
    }
}

/// One whole frame (or, with line framing, one line as a [`Kind::Message`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Its correlation id.
    pub id: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

struct LargePayload {
    header: Header,
    payload: Vec<u8>,
    filled: usize,
}

/// Turns a stream of bytes into frames. Feed it with [`read_buf`](Decoder::read_buf) and
/// [`advance`](Decoder::advance), then take frames with [`next_frame`](Decoder::next_frame).
///
/// Its memory follows what has arrived, never what a header claims: it starts with none,
/// reads into a few KiB, grows while reads fill what it offers, and gives it all back
/// through [`shrink`](Decoder::shrink) once the stream is drained.
pub struct Decoder {
    framing: Framing,
    max: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// What the last [`read_buf`](Decoder::read_buf) offered, and whether the read that
    /// followed took all of it (more is likely waiting).
    offered: usize,
    filled: bool,
    /// With line framing: how far from `start` no newline was found yet.
    scanned: usize,
    large: Option<LargePayload>,
}

impl Decoder {
    /// A decoder that accepts payloads up to `max` bytes. It allocates nothing until it
    /// is first read into.
    pub fn new(framing: Framing, max: usize) -> Decoder {
        Decoder {
            framing,
            max,
            buf: Vec::new(),
            start: 0,
            end: 0,
            offered: 0,
            filled: false,
            scanned: 0,
            large: None,
        }
    }

    /// Where the next read should put its bytes; never empty.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if let Some(large) = &mut self.large {
            if large.filled == large.payload.len() {
                // Grow with what has arrived, never by what was claimed: at most double.
                let remaining = large.header.len as usize - large.filled;
                let grow = remaining.min(large.filled.max(SMALL));
                large.payload.resize(large.filled + grow, 0);
            }
            self.offered = large.payload.len() - large.filled;
            return &mut large.payload[large.filled..];
        }
        if self.buf.is_empty() {
            self.buf = spare_buffer();
        }
        if self.start > 0 && self.buf.len() - self.end < MIN_READ {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let free = self.buf.len() - self.end;
        if free < MIN_READ || (self.filled && self.buf.len() < STAGING) {
            // Frames never need more than a large payload's start beside a whole staging
            // buffer; only a long line outgrows it, and only up to the limit.
            let limit = match self.framing {
                Framing::Length => 2 * STAGING,
                Framing::Line => (self.max + 1).max(STAGING) + STAGING,
            };
            let grown = (self.buf.len() * 2).clamp(SMALL, limit);
            self.buf.resize(grown, 0);
        }
        self.offered = self.buf.len() - self.end;
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`read_buf`](Decoder::read_buf).
    pub fn advance(&mut self, n: usize) {
        self.filled = n == self.offered;
        match &mut self.large {
            Some(large) => large.filled += n,
            None => self.end += n,
        }
    }

    /// Gives the staging buffer back (to be reused by the next decoder on this thread
    /// that reads) when no bytes are pending and the last read did not fill what it was
    /// offered (the stream is drained); otherwise does nothing. Call it after taking the
    /// frames of a read: a connection between messages then holds no buffer at all.
    pub fn shrink(&mut self) {
        if self.filled || self.large.is_some() || self.start != self.end || self.buf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        if buf.len() > SMALL {
            buf.truncate(SMALL);
            buf.shrink_to_fit();
        }
        give_back(buf);
    }

    /// The bytes of memory this decoder holds, for those who bound it.
    pub fn allocated(&self) -> usize {
        self.buf.capacity() + self.large.as_ref().map_or(0, |l| l.payload.capacity())
    }

    /// Bytes received that are not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        match &self.large {
            Some(large) => HEADER_LEN + large.filled,
            None => self.end - self.start,
        }
    }

    /// The bytes received and not yet taken, as far as the staging buffer holds them (a
    /// hello or welcome being looked at before it is whole).
    pub fn peek(&self) -> &[u8] {
        if self.large.is_some() {
            return &[];
        }
        &self.buf[self.start..self.end]
    }

    /// Takes `N` raw bytes (a hello) if that many have arrived.
    pub fn take_exact<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.large.is_some() || self.end - self.start < N {
            return None;
        }
        let out: [u8; N] = self.buf[self.start..self.start + N]
            .try_into()
            .expect("N bytes");
        self.consume(N);
        Some(out)
    }

    /// Takes every byte received and not yet taken (what a refusing server wrote after
    /// its welcome).
    pub fn take_all(&mut self) -> Vec<u8> {
        let out = self.buf[self.start..self.end].to_vec();
        self.consume(self.end - self.start);
        out
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Up to `max` of the bytes read so far that no frame has taken, such as the reason
    /// after a refusal; `max` must not exceed the staging buffer (64 KiB).
    pub fn take_available(&mut self, max: usize) -> Vec<u8> {
        if self.large.is_some() {
            return Vec::new();
        }
        let n = max.min(self.end - self.start);
        let out = self.buf[self.start..self.start + n].to_vec();
        self.consume(n);
        out
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Violation> {
        if let Some(large) = &self.large {
            if large.filled < large.header.len as usize {
                return Ok(None);
            }
            let LargePayload {
                header, payload, ..
            } = self.large.take().expect("checked above");
            return Ok(Some(Frame {
                kind: header.kind,
                id: header.id,
                payload,
            }));
        }
        match self.framing {
            Framing::Length => self.next_length_frame(),
            Framing::Line => self.next_line(),
        }
    }

    fn next_length_frame(&mut self) -> Result<Option<Frame>, Violation> {
        let available = self.end - self.start;
        if available < HEADER_LEN {
            return Ok(None);
        }
        let header_bytes = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("HEADER_LEN bytes");
        let header = Header::decode(header_bytes, self.max)?;
        let len = header.len as usize;
        let body = self.start + HEADER_LEN;
        if available >= HEADER_LEN + len {
            let payload = self.buf[body..body + len].to_vec();
            self.consume(HEADER_LEN + len);
            return Ok(Some(Frame {
                kind: header.kind,
                id: header.id,
                payload,
            }));
        }
        if len > LARGE {
            let payload = self.buf[body..self.end].to_vec();
            let filled = payload.len();
            self.consume(available);
            self.large = Some(LargePayload {
                header,
                payload,
                filled,
            });
        }
        Ok(None)
    }

    fn next_line(&mut self) -> Result<Option<Frame>, Violation> {
        let from = self.start + self.scanned;
        match self.buf[from..self.end].iter().position(|&b| b == b'\n') {
            Some(at) => {
                let len = self.scanned + at;
                if len > self.max {
                    return Err(Violation::LineTooLong { max: self.max });
                }
                let payload = self.buf[self.start..self.start + len].to_vec();
                self.scanned = 0;
                self.consume(len + 1);
                Ok(Some(Frame {
                    kind: Kind::Message,
                    id: 0,
                    payload,
                }))
            }
            None => {
                self.scanned = self.end - self.start;
                if self.scanned > self.max {
                    return Err(Violation::LineTooLong { max: self.max });
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(decoder: &mut Decoder, mut bytes: &[u8], chunk: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let buf = decoder.read_buf();
            let n = buf.len().min(chunk).min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            decoder.advance(n);
            bytes = &bytes[n..];
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        frames
    }

    fn encoded(kind: Kind, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Header::new(kind, id, payload.len()).encode().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_survive_any_chunking() {
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = encoded(Kind::Message, 0, b"");
        wire.extend(encoded(Kind::Request, 7, b"hello"));
        wire.extend(encoded(Kind::Reply, 7, &big));
        wire.extend(encoded(Kind::Error, 9, b"no"));
        for chunk in [1, 3, 16, 17, 4096, 1 << 20] {
            let mut decoder = Decoder::new(Framing::Length, 1 << 20);
            let frames = feed(&mut decoder, &wire, chunk);
            assert_eq!(frames.len(), 4, "chunk {chunk}");
            assert_eq!(frames[0].payload, b"");
            assert_eq!((frames[1].kind, frames[1].id), (Kind::Request, 7));
            assert_eq!(frames[2].payload, big);
            assert_eq!(frames[3].kind, Kind::Error);
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn a_claimed_length_is_not_allocated() {
        let mut decoder = Decoder::new(Framing::Length, usize::MAX);
        let header = Header {
            len: u32::MAX,
            kind: Kind::Message,
            id: 0,
        };
        let mut wire = header.encode().to_vec();
        wire.extend([1u8; 40_000]);
        assert!(feed(&mut decoder, &wire, 1 << 20).is_empty());
        let buffered = decoder.read_buf().len() + decoder.pending();
        assert!(buffered < 200_000, "buffer grew to {buffered}");
    }

    #[test]
    fn a_frame_claiming_16_mib_with_1_byte_holds_little() {
        let mut decoder = Decoder::new(Framing::Length, 16 << 20);
        let mut wire = Header::new(Kind::Message, 0, 16 << 20).encode().to_vec();
        wire.push(1);
        assert!(feed(&mut decoder, &wire, 1 << 20).is_empty());
        decoder.read_buf(); // as a reader waiting for the rest would
        let held = decoder.allocated();
        assert!(
            held <= 16 * 1024,
            "a 1-byte start of a frame holds {held} bytes"
        );
    }

    #[test]
    fn a_drained_decoder_holds_no_buffer() {
        let mut decoder = Decoder::new(Framing::Length, 1 << 20);
        assert_eq!(decoder.allocated(), 0, "nothing before the first read");
        // A burst of frames in full reads grows the buffer...
        let mut wire = Vec::new();
        for i in 1..=200 {
            wire.extend(encoded(Kind::Request, i, &[5u8; 1000]));
        }
        let frames = feed(&mut decoder, &wire, usize::MAX);
        assert_eq!(frames.len(), 200);
        assert!(decoder.allocated() > SMALL);
        // ...and a short read that drains the stream gives the growth back.
        let buf = decoder.read_buf();
        let n = encoded(Kind::Message, 0, b"last").len();
        buf[..n].copy_from_slice(&encoded(Kind::Message, 0, b"last"));
        decoder.advance(n);
        assert!(decoder.next_frame().unwrap().is_some());
        decoder.shrink();
        assert_eq!(decoder.allocated(), 0, "a drained decoder holds a buffer");
        // The next read reuses the buffer given back.
        let mut other = Decoder::new(Framing::Length, 1 << 20);
        let given_back = other.read_buf().as_ptr();
        assert_eq!(other.allocated(), SMALL);
        decoder.read_buf();
        assert_ne!(decoder.read_buf().as_ptr(), given_back);
    }

    #[test]
    fn violations_are_reported() {
        let check = |bytes: [u8; HEADER_LEN], max| Header::decode(&bytes, max).unwrap_err();
        let mut h = Header::new(Kind::Message, 0, 10).encode();
        assert!(matches!(
            check(h, 9),
            Violation::TooLarge { len: 10, max: 9 }
        ));
        h[4] = 9;
        assert_eq!(check(h, 100), Violation::UnknownKind(9));
        let mut h = Header::new(Kind::Message, 0, 1).encode();
        h[6] = 1;
        assert!(matches!(check(h, 100), Violation::Reserved(_)));
        let h = Header::new(Kind::Message, 5, 1).encode();
        assert!(matches!(check(h, 100), Violation::BadId { .. }));
        let h = Header::new(Kind::Request, 0, 1).encode();
        assert!(matches!(check(h, 100), Violation::BadId { .. }));
    }

    #[test]
    fn hello_negotiates_versions() {
        let hello = Hello::decode(&Hello::new(1000).encode()).unwrap();
        assert_eq!(hello.max_message, 1000);
        let welcome = Welcome::decode(&hello.answer(2000).encode()).unwrap();
        assert_eq!((welcome.version, welcome.max_message), (VERSION, 2000));
        let future = Hello {
            min_version: 7,
            max_version: 9,
            max_message: 1,
        };
        assert!(Welcome::decode(&future.answer(1).encode()).is_err());
        assert!(matches!(
            Hello::decode(b"GET / HTTP/1"),
            Err(Violation::BadMagic(_))
        ));
    }

    #[test]
    fn lines_are_messages() {
        let mut decoder = Decoder::new(Framing::Line, 5);
        let frames = feed(&mut decoder, b"a\n\nhello\n", 2);
        let payloads: Vec<_> = frames.iter().map(|f| f.payload.as_slice()).collect();
        assert_eq!(payloads, [&b"a"[..], b"", b"hello"]);
        let mut decoder = Decoder::new(Framing::Line, 5);
        let buf = decoder.read_buf();
        buf[..7].copy_from_slice(b"toolong");
        decoder.advance(7);
        assert_eq!(decoder.next_frame(), Err(Violation::LineTooLong { max: 5 }));
    }
}
