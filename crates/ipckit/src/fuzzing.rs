//! Entry points for the fuzz targets in `crates/ipckit/fuzz/` (run by `scripts/fuzz.sh`):
//! one per decoder that a peer can feed, each handing arbitrary bytes to the real code
//! path and checking the decoder's own promises, not only that it does not crash.
//!
//! Built only for fuzzing (`--cfg fuzzing`, which cargo fuzz passes) and for the crate's
//! tests, which run every target on its seeds and keep the crashes found as regression
//! tests. Not part of the API.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::endpoint::{Address, Endpoint, Framing};
use crate::frame::{self, Decoder, HELLO_LEN, Header, Hello, Kind, Violation, Welcome};
use crate::transport::fifo::{
    self, Chunks, FIRST, LAST, REFUSED, REQUEST, Reassembly, TIMED_OUT, WAKE, WriterId,
};
use crate::transport::mq;
use crate::transport::ring::Mapping;
use crate::transport::ring::spsc::{self, Area, Consumer, Control, MORE, Producer, RECORD_ALIGN};
use crate::transport::shm::halves::{Partial, assemble};

/// The fuzz targets, by name: what `scripts/fuzz.sh` runs and `fuzz/seeds/` holds.
pub const TARGETS: [&str; 9] = [
    "frame", "endpoint", "fifo", "mq", "ring", "typed", "contract", "events", "spool",
];

/// Runs the target `name` on `data`; panics on a broken promise.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "frame" => frame(data),
        "endpoint" => endpoint(data),
        "fifo" => fifo(data),
        "mq" => mq(data),
        "ring" => ring(data),
        "typed" => typed(data),
        "contract" => contract(data),
        "events" => events(data),
        "spool" => spool(data),
        _ => panic!("no fuzz target {name}"),
    }
}

/// Reads a fuzz input as numbers and slices; past its end every number is 0 and every
/// slice empty, so that any input is a complete script.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        let got = self.take(8);
        bytes[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(bytes)
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

/// Sizes of successive reads: all at once, byte by byte, or a pattern drawn from `seed`.
fn chunk_size(seed: u8, i: usize) -> usize {
    match seed {
        0 => usize::MAX,
        1 => 1,
        _ => 1 + (usize::from(seed).wrapping_mul(i + 7) ^ (i * 13)) % 4099,
    }
}

// --- frame: the stream decoder and handshake --------------------------------------------

/// Limits a stream side may have, from none to the default.
const FRAME_MAX: [usize; 6] = [
    0,
    16,
    1000,
    40_000,
    1 << 20,
    crate::endpoint::DEFAULT_MAX_MESSAGE,
];

/// What a server made of a stream: the frames it delivered, and why it closed, if it did.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<frame::Frame>,
    violation: Option<Violation>,
}

/// The stream decoder as a stream server drives it (`stream::Session::parse`): a hello
/// first, under length framing, then frames, until a violation closes the connection.
fn decode_stream(framing: Framing, max: usize, stream: &[u8], seed: u8) -> Decoded {
    let mut decoder = Decoder::new(framing, max);
    let mut greeted = framing == Framing::Line;
    let mut out = Decoded {
        frames: Vec::new(),
        violation: None,
    };
    let mut fed = 0;
    let mut reads = 0;
    while fed < stream.len() {
        let buf = decoder.read_buf();
        assert!(!buf.is_empty(), "the decoder offered no room to read into");
        let n = buf
            .len()
            .min(chunk_size(seed, reads))
            .min(stream.len() - fed);
        buf[..n].copy_from_slice(&stream[fed..fed + n]);
        decoder.advance(n);
        fed += n;
        reads += 1;
        // Buffers follow what arrived, never what a peer claimed.
        let staging = 64 * 1024;
        assert!(
            decoder.allocated() <= 4 * fed + 3 * staging,
            "{} bytes held after {fed} received",
            decoder.allocated()
        );
        if !greeted {
            let Some(bytes) = decoder.take_exact::<HELLO_LEN>() else {
                continue;
            };
            match handshake(&bytes, max) {
                Ok(()) => greeted = true,
                Err(violation) => {
                    out.violation = Some(violation);
                    return out;
                }
            }
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= max, "a frame over the limit");
                    out.frames.push(frame);
                }
                Ok(None) => break,
                Err(violation) => {
                    out.violation = Some(violation);
                    return out;
                }
            }
        }
    }
    out
}

/// The server's side of the handshake on the 12 bytes a client opened with, checking that
/// both openings re-encode to the bytes they were read from.
fn handshake(bytes: &[u8; HELLO_LEN], max: usize) -> Result<(), Violation> {
    // The same 12 bytes read as a client reads the server's welcome.
    if let Ok(welcome) = Welcome::decode(bytes) {
        assert_eq!(&welcome.encode(), bytes);
    }
    let hello = Hello::decode(bytes)?;
    assert_eq!(&hello.encode(), bytes);
    let welcome = hello.answer(max);
    let offered = (hello.min_version..=hello.max_version).contains(&frame::VERSION);
    assert_eq!(Welcome::decode(&welcome.encode()).is_ok(), offered);
    if !offered {
        return Err(Violation::Version {
            min: hello.min_version,
            max: hello.max_version,
        });
    }
    Ok(())
}

/// The stream frame decoder and handshake. Input: framing, limit and read pattern, then the
/// bytes a client sends. The frames delivered are the same however the stream is cut into
/// reads, stay within the limit, and re-encode to exactly the bytes they came from.
pub fn frame(data: &[u8]) {
    let mut input = Input(data);
    let framing = if input.byte() & 1 == 0 {
        Framing::Length
    } else {
        Framing::Line
    };
    let max = FRAME_MAX[usize::from(input.byte()) % FRAME_MAX.len()];
    let seed = input.byte();
    let stream = input.rest();

    let decoded = decode_stream(framing, max, stream, seed);
    for other in [0, 1] {
        if other != seed {
            assert_eq!(decode_stream(framing, max, stream, other), decoded);
        }
    }

    let mut wire = Vec::new();
    if framing == Framing::Length && stream.len() >= HELLO_LEN {
        wire.extend_from_slice(&stream[..HELLO_LEN]);
    }
    for frame in &decoded.frames {
        match framing {
            Framing::Length => {
                // A MESSAGE has no id, a REQUEST or REPLY has one; an ERROR answers a
                // request, or with id 0 is a server's last word on the connection.
                match frame.kind {
                    Kind::Message => assert_eq!(frame.id, 0),
                    Kind::Request | Kind::Reply => assert_ne!(frame.id, 0),
                    Kind::Error => {}
                }
                let header = Header::new(frame.kind, frame.id, frame.payload.len());
                wire.extend_from_slice(&header.encode());
                wire.extend_from_slice(&frame.payload);
            }
            Framing::Line => {
                assert_eq!((frame.kind, frame.id), (Kind::Message, 0));
                assert!(!frame.payload.contains(&b'\n'));
                wire.extend_from_slice(&frame.payload);
                wire.push(b'\n');
            }
        }
    }
    assert!(
        stream.starts_with(&wire),
        "the frames do not re-encode to the bytes they came from"
    );
}

// --- endpoint: the URL parser -------------------------------------------------------------

/// The endpoint parser. Input: a URL, optionally followed by a newline and `key=value` for
/// [`Endpoint::set_option`]. A URL that parses prints back exactly as given, every option
/// accessor works on it, and the error for one that does not names it.
pub fn endpoint(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (url, option) = match text.split_once('\n') {
        Some((url, option)) => (url, Some(option)),
        None => (text, None),
    };
    let mut ep = match Endpoint::parse(url) {
        Ok(ep) => ep,
        Err(e) => {
            assert_eq!(e.endpoint(), url);
            let _ = e.to_string();
            return;
        }
    };
    check_endpoint(&ep, url);
    if let Some((key, value)) = option.and_then(|o| o.split_once('=')) {
        let before = ep.clone();
        match ep.set_option(key, value) {
            Ok(()) => {
                let printed = ep.to_string();
                check_endpoint(&ep, &printed);
            }
            Err(_) => assert_eq!(ep, before, "a refused option changed the endpoint"),
        }
    }
}

fn check_endpoint(ep: &Endpoint, url: &str) {
    assert_eq!(ep.to_string(), url, "an endpoint does not print as parsed");
    assert_eq!(&Endpoint::parse(url).expect("it parsed once"), ep);
    assert_eq!(&ep.with_address(ep.address().clone()), ep);
    let _ = (ep.scheme(), ep.object(), ep.framing(), ep.mode());
    let _ = (ep.max_message(), ep.priority(), ep.send_timeout());
    let _ = (ep.clients(), ep.ring(), ep.public());
    if let Address::Uds(addr) | Address::Unixgram(addr) = ep.address() {
        if let Err(e) = crate::transport::endpoint_file::socket_addr(ep, addr) {
            assert_eq!(e.endpoint(), url);
        }
    }
}

// --- fifo: chunk reassembly -------------------------------------------------------------

/// Limits a fifo reader may have.
const FIFO_MAX: [usize; 4] = [0, 100, 5000, crate::endpoint::DEFAULT_MAX_MESSAGE];

/// Feeds `pipe` to a reassembly in reads cut by `seed`, checking what each message may be;
/// the whole messages, in the order they completed.
fn reassemble(max: usize, pipe: &[u8], seed: u8) -> Vec<fifo::Whole> {
    let mut reassembly = Reassembly::new(max);
    let mut out = Vec::new();
    let mut fed = 0;
    let mut reads = 0;
    while fed < pipe.len() {
        let spare = reassembly.spare();
        assert!(
            !spare.is_empty(),
            "the reassembly offered no room to read into"
        );
        let n = spare
            .len()
            .min(chunk_size(seed, reads))
            .min(pipe.len() - fed);
        spare[..n].copy_from_slice(&pipe[fed..fed + n]);
        reassembly.filled(n);
        fed += n;
        reads += 1;
        while let Some(whole) = reassembly.next("fifo:///fuzz") {
            if whole.flags & (WAKE | TIMED_OUT) != 0 {
                assert!(whole.payload.is_empty());
            } else if let Some(size) = whole.oversize {
                assert!(size > max && whole.payload.is_empty());
            } else {
                assert!(whole.payload.len() <= max, "a message over the limit");
            }
            out.push(whole);
        }
        // Unfinished messages hold what arrived, not what their first chunk claimed: a
        // buffer at most twice what it holds, and at least 24 bytes of pipe behind each.
        assert!(
            reassembly.held() <= 3 * fed,
            "{} bytes held for unfinished messages after {fed} received",
            reassembly.held()
        );
    }
    out
}

/// fifo chunk reassembly. Input: a mode byte, the reader's limit and a read pattern, then
/// either raw bytes as a pipe would hold them (even mode), or a script of messages from a
/// few writers whose chunks are interleaved, with foreign bytes between them (odd mode).
/// Raw bytes yield only messages within the limit, holding no more than arrived; scripted
/// messages come out exactly as each writer sent them.
pub fn fifo(data: &[u8]) {
    let mut input = Input(data);
    let scripted = input.byte() & 1 == 1;
    let max = FIFO_MAX[usize::from(input.byte()) % FIFO_MAX.len()];
    let seed = input.byte();
    if !scripted {
        reassemble(max, input.rest(), seed);
        return;
    }

    // Each writer's messages, cut into chunks; then the chunks of all writers interleaved
    // as concurrent writers' atomic writes are.
    const WRITERS: usize = 3;
    let mut sent: [Vec<(u32, u8, Vec<u8>)>; WRITERS] = Default::default();
    let mut chunks: [VecDeque<Vec<u8>>; WRITERS] = Default::default();
    let writer_id = |w: usize| -> WriterId { (1000 + w as u32, 7) };
    let mut pipe = Vec::new();
    // A few chunks' worth of messages: more only makes each run slower.
    let mut planned = 0;
    while !input.is_empty() && planned < 256 * 1024 {
        let op = input.byte();
        let w = usize::from(op >> 4) % WRITERS;
        if op & 1 == 0 {
            // A message from writer w.
            let flags = input.byte() & (REQUEST | REFUSED);
            let seq = u32::from(input.u16());
            // Up to 16 chunks.
            let len = usize::from(input.u16());
            let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ op).collect();
            planned += len;
            let mut cut = Chunks::new((writer_id(w), seq, flags), &payload);
            while let Some(chunk) = cut.next_chunk() {
                chunks[w].push_back(chunk.to_vec());
            }
            sent[w].push((seq, flags | FIRST | LAST, payload));
        } else if op & 2 == 0 {
            // Writer w's next chunk reaches the pipe.
            if let Some(chunk) = chunks[w].pop_front() {
                pipe.extend_from_slice(&chunk);
            }
        } else {
            // Foreign bytes, none of which can begin a chunk (`IQ`).
            let n = usize::from(input.byte());
            pipe.extend(input.take(n).iter().filter(|&&b| b != b'I'));
        }
    }
    for queue in &mut chunks {
        pipe.extend(queue.drain(..).flatten());
    }

    let mut received: [Vec<(u32, u8, Vec<u8>)>; WRITERS] = Default::default();
    for whole in reassemble(max, &pipe, seed) {
        let w = (0..WRITERS)
            .find(|&w| writer_id(w) == whole.writer)
            .expect("a message from a writer that sent none");
        let payload = match whole.oversize {
            // Over the limit: delivered as its size alone.
            Some(size) => vec![0; size],
            None => whole.payload,
        };
        received[w].push((whole.seq, whole.flags, payload));
    }
    for w in 0..WRITERS {
        let expected: Vec<_> = sent[w]
            .iter()
            .map(|(seq, flags, payload)| {
                let payload = if payload.len() > max {
                    vec![0; payload.len()]
                } else {
                    payload.clone()
                };
                (*seq, *flags, payload)
            })
            .collect();
        assert!(
            received[w] == expected,
            "writer {w}: messages were not delivered as sent"
        );
    }
}

// --- typed payloads and datagram answers -------------------------------------------------

/// What a typed payload may hold in [`typed`]: a shape of each kind that postcard can
/// confuse with another.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Answer {
    Done,
    Failed(String),
    Moved { to: u64, why: Option<String> },
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Job {
    id: u32,
    tags: Vec<String>,
    answer: Answer,
}

/// Typed payloads and datagram answers, as a receiver reads them. Input: a payload, read
/// as several types (each decode is a whole value of that type, or a codec error) and as
/// a datagram answer to a client whose limit the first byte gives.
pub fn typed(data: &[u8]) {
    fn whole<T>(data: &[u8])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        match crate::typed::decode::<T>(data, &"fuzz://") {
            Ok(value) => {
                let again = crate::typed::encode(&value, &"fuzz://").expect("re-encoding");
                assert_eq!(again[0], data[0], "{value:?} decoded from another shape");
                let back = crate::typed::decode::<T>(&again, &"fuzz://").expect("decoding");
                assert_eq!(back, value);
            }
            Err(crate::Error::Codec { op: "decode", .. }) => {}
            Err(e) => panic!("a typed payload read as {e:?}"),
        }
    }
    whole::<String>(data);
    whole::<u32>(data);
    whole::<Option<u16>>(data);
    whole::<Vec<u8>>(data);
    whole::<(u8, String)>(data);
    whole::<Answer>(data);
    whole::<Job>(data);
    whole::<()>(data);

    use crate::transport::datagram::{ESCAPED, REFUSED, answer};
    let max = usize::from(data.first().copied().unwrap_or(0));
    let received = &data[..data.len().min(max + 1)];
    match answer("udp://fuzz", max, received, data.len()) {
        Ok(reply) => {
            assert!(!data.starts_with(REFUSED) && data.len() <= max);
            assert!(reply == data || (data.starts_with(ESCAPED) && reply == data[8..]));
        }
        Err(crate::Error::Remote { reason, .. }) => {
            assert!(received.starts_with(REFUSED));
            if let Ok(text) = std::str::from_utf8(&received[REFUSED.len()..]) {
                assert!(text.starts_with(&reason) && reason.len() <= max.saturating_sub(8));
            }
        }
        Err(crate::Error::Protocol { .. }) => assert!(data.len() > max),
        Err(e) => panic!("a datagram answer read as {e:?}"),
    }
}

/// Contract bodies, as a service answers them and a client reads them: see
/// `contract::fuzz`.
pub fn contract(data: &[u8]) {
    crate::contract::fuzz::run(data);
}

// --- events: the broadcast ring's reader over memory anyone may scribble on -------------

/// The events ring, read by a listener while writers append and anyone scribbles on the
/// data or the control words. Input: the ring's size, then a script of appends, scribbles,
/// recoveries after a dead writer, and reads at a level. Every read returns; an event
/// read is one that was appended, whole (its sequence number, level, writer and payload);
/// none above the reader's level. While nobody scribbled, the reader gets every event at
/// its level in order, and its lost counts add up to the events overwritten.
pub fn events(data: &[u8]) {
    use crate::transport::ring::broadcast::records::{Control, Next, Reader, Ring, max_event};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;

    let mut input = Input(data);
    // 256 bytes to 4 KiB: the arithmetic of a real ring, wrapping within a short input.
    let capacity = 256u64 << (input.byte() % 5);
    let control = Control::new();
    let words: Vec<AtomicU64> = (0..capacity / 8).map(|_| AtomicU64::new(0)).collect();
    let ring = Ring {
        control: &control,
        data: &words,
        capacity,
    };
    let level = input.byte() % 6;
    let mut reader = Reader::new(0, Some(0), level);
    // What was appended, by sequence number: level, writer, payload (several under one
    // number once a scribbled next_seq made writers reuse it).
    let mut written: HashMap<u64, Vec<(u8, u32, Vec<u8>)>> = HashMap::new();
    let mut tampered = false;
    // The last event read and the events since then above the reader's level, while
    // nobody scribbled: what a lost count must account for.
    let mut last: Option<u64> = None;
    let mut out = Vec::new();

    while !input.is_empty() {
        match input.byte() % 8 {
            0..=2 => {
                let event_level = input.byte() % 6;
                let len = usize::from(input.u16()) % (max_event(capacity) as usize + 1);
                let seq_hint = written.len() as u8;
                let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ seq_hint).collect();
                let pid = u32::from(input.byte());
                let seq = ring
                    .append::<()>(event_level, pid, &payload, |_| Ok(()))
                    .expect("no block mode here");
                written
                    .entry(seq)
                    .or_default()
                    .push((event_level, pid, payload));
            }
            3 => {
                // Bytes anywhere in the data.
                let at = u64::from(input.u16());
                let n = usize::from(input.byte() % 32);
                for (i, &b) in input.take(n).iter().enumerate() {
                    let byte = (at + i as u64) % capacity;
                    let word = &words[(byte / 8) as usize];
                    let shift = (byte % 8) * 8;
                    let old = word.load(Ordering::Relaxed);
                    let new = (old & !(0xff << shift)) | (u64::from(b) << shift);
                    word.store(new, Ordering::Relaxed);
                }
                tampered = true;
            }
            4 => {
                // A control word set to anything, or near where it was.
                let which = input.byte() % 4;
                let v = input.u64();
                let word = [
                    &control.tail_intent,
                    &control.tail,
                    &control.latest,
                    &control.next_seq,
                ][usize::from(which)];
                let value = if v & 1 == 0 {
                    word.load(Ordering::Relaxed).wrapping_add(v >> 56)
                } else {
                    v
                };
                word.store(value, Ordering::Relaxed);
                tampered = true;
            }
            5 => {
                // A writer died holding the lock: the next one mends the ring.
                ring.recover();
            }
            _ => {
                out.clear();
                let Next::Event { stamp, lost } = reader.next(&ring, &mut out) else {
                    continue;
                };
                assert!(stamp.level <= level, "an event above the reader's level");
                let appended = written
                    .get(&stamp.seq)
                    .unwrap_or_else(|| panic!("event {} was never appended", stamp.seq));
                assert!(
                    appended
                        .iter()
                        .any(|(l, p, bytes)| (*l, *p, bytes) == (stamp.level, stamp.pid, &out)),
                    "event {} is not what was appended: {:?}",
                    stamp.seq,
                    (stamp.level, stamp.pid, &out)
                );
                if !tampered {
                    let expected = last.map_or(0, |l| l + 1);
                    assert!(stamp.seq >= expected, "event {} read twice", stamp.seq);
                    // Events between the last one read and this one: each either lost
                    // or skipped for its level, and every one not at this level skipped.
                    let between = expected..stamp.seq;
                    let above = between
                        .clone()
                        .filter(|s| written.get(s).is_some_and(|w| w[0].0 > level))
                        .count() as u64;
                    assert!(
                        lost <= stamp.seq - expected && lost + above >= stamp.seq - expected,
                        "event {}: told of {lost} lost of {} between, {above} above its level",
                        stamp.seq,
                        stamp.seq - expected
                    );
                }
                last = Some(stamp.seq);
            }
        }
    }
}

// --- mq: request parsing ------------------------------------------------------------------

/// mq request parsing, on both sides. Input: a queue message as the server receives it;
/// also read as a reply the client receives, and used as a script for a request that must
/// survive encoding. A parsed request re-encodes to the message and names only this
/// endpoint's reply queues.
pub fn mq(data: &[u8]) {
    const PREFIX: &str = "/app.r.";
    match mq::parse_request(data, PREFIX) {
        Ok(None) => assert!(!data.starts_with(mq::REQUEST_MAGIC)),
        Ok(Some((name, payload))) => {
            assert!(name.starts_with(PREFIX) && name.len() > PREFIX.len());
            let mut again = Vec::new();
            mq::encode_request(&mut again, name, payload);
            assert_eq!(again, data, "a request does not re-encode as received");
        }
        Err(reason) => {
            assert!(data.starts_with(mq::REQUEST_MAGIC));
            assert!(!reason.is_empty());
        }
    }

    match mq::answer("mq://app", data) {
        Ok(payload) => assert!(data[0] == mq::REPLY_OK && payload == data[1..]),
        Err(crate::Error::Remote { .. }) => assert!(data[0] != mq::REPLY_OK),
        Err(crate::Error::Protocol { .. }) => assert!(data.is_empty()),
        Err(e) => panic!("a reply read as {e:?}"),
    }

    // A request made by a client, from the same bytes: reply queue number, then payload.
    let mut input = Input(data);
    let name = format!("{PREFIX}{}.{}", input.u64(), input.u16());
    let payload = input.rest();
    let mut request = Vec::new();
    mq::encode_request(&mut request, &name, payload);
    assert_eq!(
        mq::parse_request(&request, PREFIX),
        Ok(Some((name.as_str(), payload)))
    );
}

// --- ring: the shared-memory ring reader --------------------------------------------------

/// Where the ring's data area begins in the fuzz mapping, after its control block.
const RING_DATA: usize = 4096;

/// The shm ring reader over memory a peer writes. Input: the ring's size and the reader's
/// limit, then a script of what the peer does (publish messages as a real producer does,
/// write any bytes anywhere in the data area, set either counter to anything) and when the
/// reader reads. The reader yields only records that lie within the ring, moves only
/// forward, assembles only messages within its limit, and until the peer writes anything
/// by hand, gives back exactly the messages the producer sent.
pub fn ring(data: &[u8]) {
    let mut input = Input(data);
    // 64 bytes to 4 KiB: real rings are larger, but the reader's arithmetic is the same,
    // and a small ring wraps within a short input.
    let capacity = 64usize << (input.byte() % 7);
    let max = usize::from(input.u16());
    let map = Arc::new(Mapping::anonymous(RING_DATA + capacity).expect("anonymous memory"));
    let control = map.get::<Control>(0);
    let area = || Area::new(map.bytes(RING_DATA, capacity));
    // SAFETY: the ring's one producer and one consumer, on this thread, over the control
    // block of this data area; the peer's hand-written bytes go through atomics.
    let (mut producer, consumer) = unsafe {
        (
            Producer::new(control.clone(), area()),
            Consumer::new(control.clone(), area()),
        )
    };
    let mut reader = RingReader {
        consumer,
        capacity,
        max,
        partial: None,
        expected: VecDeque::new(),
        tampered: false,
    };

    while !input.is_empty() {
        match input.byte() % 8 {
            0..=2 => {
                // The peer sends a message as a client or server does: in pieces of a
                // quarter ring when larger than a record may be.
                let kind = [spsc::Kind::Message, spsc::Kind::Request, spsc::Kind::Reply]
                    [usize::from(input.byte()) % 3];
                let id = input.u64();
                // Up to a few rings' worth, in pieces when over half a ring.
                let len = usize::from(input.u16()) % (max.min(4 * capacity) + 1);
                let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(id as u8)).collect();
                if !send(&mut producer, &mut reader, kind, id, &payload) {
                    return;
                }
            }
            3 => {
                let at = usize::from(input.u16());
                let n = usize::from(input.byte());
                for (i, &b) in input.take(n).iter().enumerate() {
                    map.at::<AtomicU8>(RING_DATA + (at + i) % capacity)
                        .store(b, Ordering::Relaxed);
                }
                reader.tampered = true;
            }
            4 => {
                // Near where the reader is, or anywhere.
                let v = input.u64();
                let tail = if v & 1 == 0 {
                    reader.consumer.position().wrapping_add(v >> 48)
                } else {
                    v
                };
                control.tail_word().store(tail, Ordering::Release);
                reader.tampered = true;
            }
            5 => {
                control.head_word().store(input.u64(), Ordering::Release);
                reader.tampered = true;
            }
            _ => {
                if reader.read_one().is_err() {
                    return;
                }
            }
        }
    }
    while let Ok(true) = reader.read_one() {}
}

/// The reading side of the fuzzed ring, as a client or server reads its peer's ring.
struct RingReader {
    consumer: Consumer,
    capacity: usize,
    max: usize,
    partial: Option<Partial>,
    /// Messages sent and not yet read, while the peer has written nothing by hand.
    expected: VecDeque<(spsc::Kind, u64, Vec<u8>)>,
    tampered: bool,
}

impl RingReader {
    /// Reads one record: true if there was one, `Err` when the reader found the ring
    /// corrupt and would drop the peer.
    fn read_one(&mut self) -> Result<bool, ()> {
        let before = self.consumer.position();
        let record = match self.consumer.peek() {
            Ok(Some(record)) => record,
            Ok(None) => {
                // Padding at the end of the area is passed over, and released with the
                // record after it.
                // An honest producer pads less than a ring (never from the area's start);
                // a peer writing by hand can claim padding from the start, a whole ring,
                // which the reader passes over without reading anything.
                let moved = self.consumer.position().wrapping_sub(before);
                let most = if self.tampered {
                    self.capacity
                } else {
                    self.capacity - 1
                };
                assert!(
                    moved <= most as u64,
                    "the reader moved {moved} bytes (tampered: {})",
                    self.tampered
                );
                return Ok(false);
            }
            Err(_) => {
                assert!(
                    self.tampered,
                    "a ring written only by its producer is corrupt"
                );
                return Err(());
            }
        };
        let capacity = self.capacity;
        assert!(record.kind != spsc::Kind::Pad && record.flags & !MORE == 0);
        assert!(record.payload_at >= spsc::RECORD_HEADER);
        assert_eq!((record.payload_at - spsc::RECORD_HEADER) % RECORD_ALIGN, 0);
        assert!(record.len <= capacity && record.payload_at <= capacity - record.len);
        assert_eq!(record.start, before);
        assert!(record.end > record.start && record.end - record.start <= capacity as u64);
        assert_eq!(record.end, self.consumer.position());
        assert_eq!(self.consumer.payload(&record).len(), record.len);
        let assembled = assemble(&mut self.partial, &self.consumer, &record, self.max);
        self.consumer.release(record.end);
        match assembled {
            Ok(Some(message)) => {
                assert!(message.bytes.len() <= self.max, "a message over the limit");
                if !self.tampered {
                    let expected = self.expected.pop_front();
                    assert!(
                        expected == Some((message.kind, message.id, message.bytes)),
                        "a message was not read as it was sent"
                    );
                }
                Ok(true)
            }
            Ok(None) => Ok(true),
            Err(_) => {
                assert!(self.tampered, "an honest message was refused");
                Err(())
            }
        }
    }
}

/// Sends `payload` as `halves::Sender::send` does, reading to make room when the ring is
/// full; false when either side found the ring corrupt.
fn send(
    producer: &mut Producer,
    reader: &mut RingReader,
    kind: spsc::Kind,
    id: u64,
    payload: &[u8],
) -> bool {
    let max_record = producer.max_record();
    let pieces: Vec<&[u8]> = if payload.len() <= max_record {
        vec![payload]
    } else {
        payload.chunks(max_record / 2).collect()
    };
    let mut pieces = pieces.into_iter().peekable();
    if !reader.tampered {
        reader.expected.push_back((kind, id, payload.to_vec()));
    }
    while let Some(chunk) = pieces.next() {
        let flags = if pieces.peek().is_some() { MORE } else { 0 };
        let r = loop {
            match producer.try_reserve(chunk.len()) {
                Ok(Some(r)) => break r,
                Ok(None) => match reader.read_one() {
                    Ok(true) => {}
                    // A full ring with nothing to read: only a peer's tampering does that.
                    Ok(false) | Err(()) => {
                        assert!(reader.tampered, "a full ring had nothing to read");
                        return false;
                    }
                },
                Err(_) => {
                    assert!(reader.tampered, "the producer found an honest ring corrupt");
                    return false;
                }
            }
        };
        producer.write(&r, 0, chunk);
        producer.commit(r, chunk.len(), kind, flags, id);
    }
    true
}

// --- seeds --------------------------------------------------------------------------------

/// Spool names, as any program may put them in `new/`, up to three separated by `/` (which
/// no name holds): a name that parses prints as one that parses back to it, keeps its base
/// through every move a receiver makes (claimed, returned) and still fits a
/// directory entry after each, and the delivery order is a total order that is equal only
/// for one base.
pub fn spool(data: &[u8]) {
    use crate::transport::spool::names::Name;
    use std::cmp::Ordering;
    let names: Vec<Name> = data
        .split(|&b| b == b'/')
        .take(3)
        .filter_map(|part| {
            let name = Name::parse(part)?;
            let printed = name.to_string();
            assert!(
                printed.len() <= part.len(),
                "{printed} is longer than its input"
            );
            assert_eq!(Name::parse(printed.as_bytes()).as_ref(), Some(&name));
            let claimed = name.returned().claimed_by("1234567-18bd2f4b8c1a2e00-99");
            for moved in [name.returned(), claimed] {
                assert_eq!(moved.base(), name.base());
                let printed = moved.to_string();
                assert!(
                    printed.len() <= 255,
                    "{printed} does not fit a directory entry"
                );
                assert_eq!(Name::parse(printed.as_bytes()).as_ref(), Some(&moved));
            }
            assert_eq!(name.order(&name), Ordering::Equal);
            Some(name)
        })
        .collect();
    for a in &names {
        for b in &names {
            assert_eq!(a.order(b), b.order(a).reverse(), "{a} and {b}");
            assert_eq!(a.order(b) == Ordering::Equal, a.base() == b.base());
            for c in &names {
                if a.order(b).is_le() && b.order(c).is_le() {
                    assert!(a.order(c).is_le(), "{a} <= {b} <= {c} but not {a} <= {c}");
                }
            }
        }
    }
}

/// Valid inputs for target `name`, made by the code's own encoders: the checked-in seed
/// corpus (`fuzz/seeds/NAME/`).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let framed = |kind, id, payload: &[u8]| {
        let mut out = Header::new(kind, id, payload.len()).encode().to_vec();
        out.extend_from_slice(payload);
        out
    };
    match name {
        "frame" => {
            let mut session = vec![0, 2, 2];
            session.extend_from_slice(&Hello::new(1000).encode());
            session.extend(framed(Kind::Message, 0, b""));
            session.extend(framed(Kind::Request, 1, b"ping"));
            session.extend(framed(Kind::Reply, 1, b"pong"));
            session.extend(framed(Kind::Error, 2, b"refused"));
            let mut claim = vec![0, 4, 0];
            claim.extend_from_slice(&Hello::new(1 << 20).encode());
            claim.extend(&Header::new(Kind::Message, 0, 50_000).encode());
            claim.extend([7u8; 300]);
            vec![session, claim, b"\x01\x02\x03hello\n\nworld\n".to_vec()]
        }
        "endpoint" => [
            "uds:///run/app.sock#calculator",
            "uds://@app?framing=line&mode=0660",
            "uds:///tmp/my%20app.sock\nmax_message=1024",
            "tcp://[::1]:7000?public=false",
            "udp://127.0.0.1:9000",
            "unixgram:///tmp/app.dgram",
            "fifo:///tmp/app.fifo?send_timeout_ms=100",
            "mq://app?priority=3",
            "shm://app?clients=8&ring=65536",
            "dbus://session/org.example.App",
            "x11://App%20Window",
            "ws://127.0.0.1:8080/app",
            "nats://127.0.0.1:4222/app",
        ]
        .iter()
        .map(|url| url.as_bytes().to_vec())
        .collect(),
        "fifo" => {
            // A pipe as writers fill it, and scripts of interleaved writers.
            let mut pipe = vec![0, 2, 0];
            let large = vec![5u8; 5000];
            for (i, payload) in [&b"hello"[..], b"", &large].into_iter().enumerate() {
                let mut cut = Chunks::new(((1000, 7), i as u32, REQUEST), payload);
                while let Some(chunk) = cut.next_chunk() {
                    pipe.extend_from_slice(chunk);
                }
            }
            let script = vec![
                1, 2, 9, //
                0x00, REQUEST, 1, 0, 0x10, 0x20, // writer 0: 8208 bytes
                0x10, 0, 2, 0, 5, 0, // writer 1: 5 bytes
                0x01, 0x11, 0x03, 3, b'x', b'y', b'z', 0x01, 0x01,
            ];
            vec![pipe, script]
        }
        "mq" => {
            let mut request = Vec::new();
            mq::encode_request(&mut request, "/app.r.123.4", b"ping");
            vec![
                request,
                b"\0pong".to_vec(),
                b"\x01no".to_vec(),
                b"one-way".to_vec(),
            ]
        }
        "ring" => vec![
            // A 256-byte ring: messages of several sizes, some in pieces, read between.
            vec![3, 0x00, 0x04, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 10, 0, 7],
            vec![
                3, 0x00, 0x04, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0x90, 0x01, 2, 0, 3, 0, 0, 0, 0, 0, 0,
                0, 200, 0, 7, 7, 7,
            ],
            // Then a peer that moves the tail.
            vec![
                3, 0x00, 0x04, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 10, 0, 4, 0, 0, 0, 0, 0, 0, 0x10, 0, 7,
            ],
        ],
        "typed" => {
            let job = Job {
                id: 7,
                tags: vec!["a".into()],
                answer: Answer::Moved {
                    to: 9,
                    why: Some("full".into()),
                },
            };
            let encode = |value: &dyn erased::Encode| value.encode();
            vec![
                encode(&job),
                encode(&Answer::Done),
                encode(&"text".to_owned()),
                encode(&(1u8, "x".to_owned())),
                encode(&Some(3u16)),
                b"\0IPCKNO1refused".to_vec(),
                b"\x10\0IPCKOK1\0IPCK".to_vec(),
            ]
        }
        "contract" => crate::contract::fuzz::seeds(),
        "events" => vec![
            // A 256-byte ring, a reader at verbose: events of several sizes and levels,
            // read between, then more than a ring's worth before the next read.
            vec![
                0, 5, 0, 4, 10, 0, 1, 7, 4, 1, 3, 40, 0, 2, 7, 1, 0, 60, 0, 0, 7, 0, 5, 0, 0, 0, 2,
                3, 50, 0, 3, 1, 3, 50, 0, 3, 2, 3, 50, 0, 3, 7, 7,
            ],
            // A reader at warning; a writer that dies and one that mends; a scribble.
            vec![
                1, 3, 0, 2, 8, 0, 1, 1, 4, 8, 0, 1, 7, 5, 0, 1, 6, 0, 2, 7, 3, 9, 0, 4, 1, 2, 3, 4,
                7, 0, 2, 5, 0, 9, 7,
            ],
        ],
        "spool" => {
            vec![
                b"1733360000.000000001.4242.0,c=4242-18bd2f4b8c1a2e00-1,q=7/1733360000.000000001.4242.1,d=1,c=4242-18bd2f4b8c1a2e00-1/1733360000.5.77".to_vec(),
                b"1733360000.123456789.4242/0001733360000.9,d=3,c=x,q=1,e,r=y/notes.txt".to_vec(),
            ]
        }
        _ => panic!("no fuzz target {name}"),
    }
}

/// Seeds of several types through one closure.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            crate::typed::encode(self, &"fuzz://").expect("encoding a seed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn seed_dir(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(name)
    }

    /// Inputs on which a fuzz target failed, each with what it found.
    const FOUND: &[(&str, &[u8])] = &[
        // A name of 142 bytes, within the limit, whose claim (`,d=1,r=ID`) was longer than
        // the limit and so no longer parsed in cur/: the limit is on the part that does
        // not change as the message moves.
        ("spool", b"173336000000001.333163274242.--------------------------------------------------------------------------------------------------1,c=423f4b8c1a7"),
        // A tail scribbled far ahead of a ring of events all above the reader's level:
        // the reader walked lap after lap of them in one read (a hang).
        ("events", b"\xc8\x00\x00\x8f\x7a\xff\xff\xff\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\xfa\x9e\x0a\x0b\x08\x09\x0e\x0f\x0c\x0d\x01\x03\x00\xff\xa6\xfe\xfb\x01\x04\x01\x04\x00\x00\x00\x8f\x7a\xff\xff\xff\x7a\x7a\x7a\x7a\x7a\x04\x00\x00\x00\x8f\x7a\xff\x0c\x0f\x0c\x0d\x01\x03\x60\x00\xff\xa6\xfe\x09\xfe\x04\x00\x04\x01\x00\x00\x8f\x7a\x00\xff\xa6\xfe\x09\xfe\x04\x00\x04\x01\x00\x00\x8f\x7a\xff\xff\xff\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\x7a\xfa\x9e\x0a\x0b\x08\x09\x0e\x0f\x0c\x0d\x01\x03\x00\xff\xa6\xfe\xfb\x01\x04\x01\x04\x00\x00\x00\x8f\x7a\xff\xff\xff\x06\xff\xff\x08\x01\x01\xea\xea\x0c\x0d\x7a\x7a\x7a\x7a\x7a\xfe\x09\xfe\x0f\x0c\x0d\x01\x03\x00\x00\x8f\x7a\xff\xff\xff\x00\x8f\x7a\xff\x05\x00\x04\x01\x00\x00\x02\x0e\x0e\x0e\x0e\x0e\x07\x00\x03\x00\x00\x07\x69\xc4\xa9\x07"),
        // Writers reusing a sequence number after a scribble on next_seq, each event read
        // whole (the target's check kept one event per number).
        ("events", b"\x01\x13\x2b\x02\xfb\xb4\xb4\xb4\xb4\xb4\xb4\xb4\xb4\xb4\x3c\x05\x00\x00\x8b\x56\x16\xf8\x4e\x22\x40\x00\x00\x02\x03\x13\x31\x00\x03\xee\x29\x03\x04\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xb4\xb4\xb4\x3c\x05\x00\x00\x8b\x56\x16\xf8\x4e\x22\x40\x00\x00\x02\x03\x13\x31\x00\x03\xee\x29\x03\x04\xff\xff\xff\xff\xff\xff\xff\xff\xff\x21\x00\xff\xfb\x01\x07\x03\x11\x04\x05\x02\x07\x00\x00\x93\x93\x09\x07"),
        // A next_seq scribbled to the last number, which a writer's increment overflowed
        // (a panic where overflow is checked).
        ("events", b"\x00\xfd\xff\x84\x13\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\xfd\xff\xff\xff\xff\xff\x01\x04"),
        // An ERROR frame with id 0, which the decoder takes since a server may close with
        // one (the target's check was wrong).
        (
            "frame",
            b"\x00\x02\x02IPCK\x01\x01\x00\x00\xe8\x03\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ),
        // A port with a sign parsed, as 80, and printed back without it.
        ("endpoint", b"ws://1ZZZZZ:+080/app"),
        // Writers' first chunks reserved what their messages claimed, up to 64 KiB each,
        // before any more of them arrived.
        ("fifo", b"\x01\x5b\x09\x00\x04\x78\x79\x7a\x81"),
        // Padding at the end of the area, passed over by a read that found no record
        // after it (the reader was right; the target's check was wrong).
        (
            "ring",
            &[
                0x31, 0x00, 0x04, 0x00, 0x01, 0x01, 0x00, 0x00, 0xff, 0x40, 0xff, 0x1c, 0x1c, 0xe3,
                0xe3, 0xe3, 0xe3, 0x56, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
                0xff, 0x40, 0xff, 0x1c, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
                0xff, 0x40, 0xff, 0x1c, 0x1c, 0xe3, 0xe3, 0xe3, 0xe3, 0x56, 0x07, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        // A peer that writes a padding record as long as the whole ring, from the start of
        // the area: the reader passes over it, a whole ring's length, which only a
        // tampering peer can make it do (the target's check allowed less).
        (
            "ring",
            &[
                0x00, 0x00, 0x04, 0x00, 0x01, 0x0a, 0x00, 0x04, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x00,
                0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x04, 0x08, 0x00,
                0x00, 0x00, 0x7a, 0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0xe6, 0xf1, 0x00, 0x0a, 0x00, 0x00, 0x00, 0xb8, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x04, 0x08, 0x00, 0x00, 0x00, 0x7a,
                0x00, 0x10, 0x00, 0x00, 0x01, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x08,
                0x00, 0x00, 0x1a, 0x0a, 0x00, 0x91, 0x00, 0x00, 0x00, 0x00, 0xd7, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x08, 0x00, 0x00, 0x91, 0x91, 0x91, 0x91, 0x91,
                0x00, 0x00, 0x00, 0x7a, 0x00, 0x10, 0x00, 0x00, 0x00, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x2b,
                0x2b, 0x2b, 0x2b, 0x2b, 0x2b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x1a, 0x0a, 0x00, 0x91, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x62, 0x00, 0xd7,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x31, 0x00, 0x00, 0x00, 0x00, 0x7a, 0x00, 0x10, 0x00,
            ],
        ),
    ];

    #[test]
    fn crashes_found_stay_fixed() {
        for (name, input) in FOUND {
            run(name, input);
        }
    }

    /// Every target keeps its promises on its seeds, and the seeds checked in are those
    /// the encoders make today (`IPCKIT_WRITE_SEEDS=1` rewrites them).
    #[test]
    fn seeds_pass_and_are_current() {
        let write = std::env::var_os("IPCKIT_WRITE_SEEDS").is_some();
        for name in TARGETS {
            let seeds = seeds(name);
            for seed in &seeds {
                run(name, seed);
            }
            let dir = seed_dir(name);
            if write {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                for (i, seed) in seeds.iter().enumerate() {
                    std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
                }
            }
            for (i, seed) in seeds.iter().enumerate() {
                let file = dir.join(format!("seed-{i}"));
                let stored = std::fs::read(&file).unwrap_or_else(|e| {
                    panic!("{}: {e}; IPCKIT_WRITE_SEEDS=1 writes it", file.display())
                });
                assert!(
                    &stored == seed,
                    "{} is out of date; IPCKIT_WRITE_SEEDS=1 rewrites it",
                    file.display()
                );
            }
        }
    }
}
