//! The stream wire format (docs/PROTOCOL.md), with no I/O in it.
//!
//! A [`Decoder`] is handed the bytes a stream delivers and gives back whole frames; the
//! blocking transports drive it with `read(2)`, and an async driver can feed it the same
//! way. It never allocates what a peer merely claims: a length is checked against the
//! limit first, and a large payload's buffer grows with the bytes that actually arrive.
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

/// The staging buffer's size; payloads larger than half of it are read into a buffer of
/// their own instead, so they are copied once, from the kernel, and never again.
const STAGING: usize = 64 * 1024;
const LARGE: usize = STAGING / 2;

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
    /// A refusal of the request with the same id; the payload is a UTF-8 reason.
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

    /// Reads a welcome.
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Welcome, Violation> {
        let (version, status, max_message) = decode_opening(bytes)?;
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
        if (kind == Kind::Message) != (id == 0) {
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
pub struct Decoder {
    framing: Framing,
    max: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// With line framing: how far from `start` no newline was found yet.
    scanned: usize,
    large: Option<LargePayload>,
}

impl Decoder {
    /// A decoder that accepts payloads up to `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Decoder {
        Decoder {
            framing,
            max,
            buf: vec![0; STAGING],
            start: 0,
            end: 0,
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
                let grow = remaining.min(large.filled.max(STAGING));
                large.payload.resize(large.filled + grow, 0);
            }
            return &mut large.payload[large.filled..];
        }
        if self.buf.len() - self.end < STAGING / 2 {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // Only a long line outgrows the staging buffer, and only up to the limit.
            if self.buf.len() - self.end < STAGING / 2 {
                let cap = (self.max + 1).max(STAGING);
                let grown = (self.buf.len() * 2).min(cap + STAGING);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`read_buf`](Decoder::read_buf).
    pub fn advance(&mut self, n: usize) {
        match &mut self.large {
            Some(large) => large.filled += n,
            None => self.end += n,
        }
    }

    /// Bytes received that are not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        match &self.large {
            Some(large) => HEADER_LEN + large.filled,
            None => self.end - self.start,
        }
    }

    /// Bytes of buffer held, for checking that they follow what arrived.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn allocated(&self) -> usize {
        self.buf.len() + self.large.as_ref().map_or(0, |l| l.payload.capacity())
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

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
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
