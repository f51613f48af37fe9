//! The chunk format of the default framing, and the reassembly that puts a message back
//! together from the chunks of many writers and the foreign bytes between them.

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;

use crate::error::{Error, Result};
use crate::sys::wait_ready;

pub(super) const CHUNK: usize = rustix::pipe::PIPE_BUF;
pub(super) const HEADER: usize = 20;
pub(super) const CHUNK_DATA: usize = CHUNK - HEADER;
pub(super) const MAGIC: [u8; 2] = *b"IQ";
/// The first chunk of a message; its data starts with the message's length (u32).
pub(crate) const FIRST: u8 = 1;
pub(crate) const LAST: u8 = 2;
pub(crate) const REQUEST: u8 = 4;
/// On a reply: the request was refused; the data is the reason.
pub(crate) const REFUSED: u8 = 8;
/// A header-only chunk a server writes into its own FIFO to end a blocking read.
pub(crate) const WAKE: u8 = 16;
/// A header-only chunk the deadline keeper writes into a client's FIFO: the request with
/// this `seq` timed out.
pub(crate) const TIMED_OUT: u8 = 32;
/// On a message in a client's inbound FIFO: the server pushed it; it answers no request.
pub(crate) const PUSH: u8 = 64;
/// A chunk that carries no message but says something about the connection, its `seq`
/// naming what: [`HELLO`], [`BYE`], [`WELCOME`] or [`GONE`].
pub(crate) const CONTROL: u8 = 128;
/// Control, client to server: the client made its inbound FIFO, named after the writer id
/// of this chunk; the data is the client's `max_message` (u32).
pub(crate) const HELLO: u32 = 1;
/// Control, either way: the sender closes the connection (a client dropped, or a server
/// that stops or disconnects the client).
pub(crate) const BYE: u32 = 2;
/// Control, server to client: the server holds the client's inbound FIFO open.
pub(crate) const WELCOME: u32 = 3;
/// Control, a server to its own FIFO: the client of this writer id no longer reads.
pub(crate) const GONE: u32 = 4;

/// A writer: the pid of its process and a number unique within it.
pub(crate) type WriterId = (u32, u32);

pub(super) fn next_writer() -> WriterId {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(super) struct ChunkHeader {
    pub(super) flags: u8,
    pub(super) len: usize,
    pub(super) writer: WriterId,
    pub(super) seq: u32,
}

pub(super) fn check_byte(header: &[u8]) -> u8 {
    header[4..HEADER]
        .iter()
        .fold(header[2] ^ 0x5a, |acc, b| acc.rotate_left(1) ^ b)
}

/// Whether `bytes`, however few, may be the start of a chunk's header: its magic (every
/// flags byte has a meaning).
fn may_begin_chunk(bytes: &[u8]) -> bool {
    let magic = bytes.len().min(MAGIC.len());
    bytes[..magic] == MAGIC[..magic]
}

impl ChunkHeader {
    pub(super) fn encode(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&MAGIC);
        out[2] = self.flags;
        out[4..6].copy_from_slice(&(self.len as u16).to_le_bytes());
        out[6..8].fill(0);
        out[8..12].copy_from_slice(&self.writer.0.to_le_bytes());
        out[12..16].copy_from_slice(&self.writer.1.to_le_bytes());
        out[16..20].copy_from_slice(&self.seq.to_le_bytes());
        out[3] = check_byte(&out[..HEADER]);
    }

    /// A header, if `bytes` start with a valid one.
    pub(super) fn decode(bytes: &[u8]) -> Option<ChunkHeader> {
        let valid = bytes[..2] == MAGIC && bytes[3] == check_byte(&bytes[..HEADER]);
        let len = u16::from_le_bytes([bytes[4], bytes[5]]) as usize;
        (valid && len <= CHUNK_DATA && bytes[6..8] == [0, 0]).then(|| ChunkHeader {
            flags: bytes[2],
            len,
            writer: (
                u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
                u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")),
            ),
            seq: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
        })
    }
}

/// Whether the process already ignores SIGPIPE (Rust programs do, by default).
pub(super) fn sigpipe_ignored() -> bool {
    static IGNORED: OnceLock<bool> = OnceLock::new();
    *IGNORED.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc_sigpipe() - 1)) != 0)
    })
}

pub(super) fn libc_sigpipe() -> u32 {
    nix::sys::signal::Signal::SIGPIPE as u32
}

/// Blocks SIGPIPE on this thread while it lives, unless the process ignores it, so that
/// writing to a pipe nobody reads is an EPIPE error, not death.
pub(super) struct SigpipeBlocked {
    previous: Option<nix::sys::signal::SigSet>,
}

impl SigpipeBlocked {
    pub(super) fn new() -> SigpipeBlocked {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
        if sigpipe_ignored() {
            return SigpipeBlocked { previous: None };
        }
        let mut previous = SigSet::empty();
        let mut block = SigSet::empty();
        block.add(Signal::SIGPIPE);
        let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&block), Some(&mut previous));
        SigpipeBlocked {
            previous: blocked.ok().map(|()| previous),
        }
    }

    /// Takes back the SIGPIPE a failed write raised, unless the thread blocked it itself.
    pub(super) fn consume_pending(&self) {
        use nix::sys::signal::{SigSet, Signal};
        if let Some(previous) = &self.previous {
            if !previous.contains(Signal::SIGPIPE) {
                let mut pipe = SigSet::empty();
                pipe.add(Signal::SIGPIPE);
                let _ = pipe.wait();
            }
        }
    }
}

impl Drop for SigpipeBlocked {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&previous),
                None,
            );
        }
    }
}

/// One message cut into chunks of at most PIPE_BUF bytes, each written in one `write` and
/// so never split by the kernel, whatever other writers do.
pub(crate) struct Chunks<'a> {
    id: (WriterId, u32, u8),
    total: [u8; 4],
    rest: &'a [u8],
    first: bool,
    done: bool,
    /// A small message needs a small buffer; zeroing 4 KiB per message is measurable.
    small: [u8; 256],
    large: Vec<u8>,
}

impl<'a> Chunks<'a> {
    pub(crate) fn new(id: (WriterId, u32, u8), payload: &'a [u8]) -> Chunks<'a> {
        Chunks {
            id,
            total: (payload.len() as u32).to_le_bytes(),
            rest: payload,
            first: true,
            done: false,
            small: [0; 256],
            large: Vec::new(),
        }
    }

    /// The next chunk to write, encoded; `None` after the last.
    pub(crate) fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.done {
            return None;
        }
        let (writer, seq, flags) = self.id;
        let fits_small = HEADER + 4 + self.rest.len() <= self.small.len();
        let chunk: &mut [u8] = if self.first && fits_small {
            &mut self.small
        } else {
            if self.large.is_empty() {
                self.large.resize(CHUNK, 0);
            }
            &mut self.large
        };
        let mut at = HEADER;
        if self.first {
            chunk[at..at + 4].copy_from_slice(&self.total);
            at += 4;
        }
        let take = self.rest.len().min(chunk.len() - at);
        chunk[at..at + take].copy_from_slice(&self.rest[..take]);
        self.rest = &self.rest[take..];
        let last = self.rest.is_empty();
        let header = ChunkHeader {
            flags: flags | if self.first { FIRST } else { 0 } | if last { LAST } else { 0 },
            len: at + take - HEADER,
            writer,
            seq,
        };
        header.encode(chunk);
        self.first = false;
        self.done = last;
        Some(&chunk[..at + take])
    }
}

/// Writes one chunk to a non-blocking pipe; `Ok(false)` when the pipe has no room for it.
pub(super) fn write_chunk(
    url: &str,
    fd: BorrowedFd<'_>,
    chunk: &[u8],
    sigpipe: &SigpipeBlocked,
) -> Result<bool> {
    // PIPE_BUF makes a write of a chunk all or nothing.
    Ok(write_pipe(url, fd, chunk, sigpipe)?.is_some())
}

/// Writes what of `bytes` a non-blocking pipe takes: how much, or `None` when it has no
/// room; a pipe nobody reads any more is [`Error::Disconnected`], its SIGPIPE taken back.
pub(super) fn write_pipe(
    url: &str,
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    sigpipe: &SigpipeBlocked,
) -> Result<Option<usize>> {
    loop {
        match rustix::io::write(fd, bytes) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::PIPE) => {
                sigpipe.consume_pending();
                return Err(Error::Disconnected {
                    endpoint: url.to_owned(),
                    detail: "nobody reads the pipe any more".into(),
                });
            }
            Err(e) => return Err(Error::io(url, "writing", e.into())),
        }
    }
}

pub(super) fn pipe_full(url: &str, patience: Duration) -> Error {
    Error::Full {
        endpoint: url.to_owned(),
        detail: "the pipe".into(),
        after: patience,
    }
}

/// A control chunk of `kind` (see [`CONTROL`]) from `writer`, carrying `data`.
pub(super) fn control_chunk(kind: u32, writer: WriterId, data: &[u8]) -> Vec<u8> {
    let mut chunk = vec![0u8; HEADER + data.len()];
    ChunkHeader {
        flags: CONTROL,
        len: data.len(),
        writer,
        seq: kind,
    }
    .encode(&mut chunk);
    chunk[HEADER..].copy_from_slice(data);
    chunk
}

/// Writes one message as atomic chunks to a non-blocking pipe, waiting for room up to
/// `patience`.
pub(super) fn write_message(
    url: &str,
    fd: BorrowedFd<'_>,
    id: (WriterId, u32, u8),
    payload: &[u8],
    patience: Duration,
) -> Result<()> {
    let sigpipe = SigpipeBlocked::new();
    let mut deadline = None;
    let mut chunks = Chunks::new(id, payload);
    while let Some(chunk) = chunks.next_chunk() {
        while !write_chunk(url, fd, chunk, &sigpipe)? {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + patience);
            let room = wait_ready(fd, PollFlags::OUT, Some(deadline))
                .map_err(|e| Error::io(url, "waiting for room in the pipe", e))?;
            if !room {
                return Err(pipe_full(url, patience));
            }
        }
    }
    Ok(())
}

/// A message being put back together from its chunks.
pub(super) struct Partial {
    seq: u32,
    total: usize,
    flags: u8,
    data: Vec<u8>,
    /// Over the reader's limit: the chunks are counted, not kept.
    oversize: bool,
    /// Bytes that arrived, kept or not.
    arrived: usize,
}

/// A whole message.
pub(crate) struct Whole {
    pub(crate) writer: WriterId,
    pub(crate) seq: u32,
    pub(crate) flags: u8,
    pub(crate) payload: Vec<u8>,
    /// The size of a message over the reader's limit, whose bytes were not kept: a reader
    /// of replies turns it into an error for its request rather than wait out its timeout.
    pub(crate) oversize: Option<usize>,
}

/// Turns the bytes of a pipe into whole messages, whatever chunks of other writers and
/// foreign bytes come between.
pub(crate) struct Reassembly {
    pub(super) max: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub(super) partial: HashMap<WriterId, Partial>,
    /// Foreign bytes skipped and not yet reported, which `next` reports before it returns.
    skipped: usize,
}

impl Reassembly {
    pub(crate) fn new(max: usize) -> Reassembly {
        Reassembly {
            max,
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            partial: HashMap::new(),
            skipped: 0,
        }
    }

    /// Reads what `fd` has; false when it had nothing.
    pub(super) fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        Ok(self.read(fd)?.is_some_and(|n| n > 0))
    }

    /// Reads what `fd` has: how many bytes (0 at the end: no writer holds the FIFO), or
    /// `None` when a non-blocking `fd` had nothing.
    pub(super) fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<Option<usize>> {
        loop {
            match rustix::io::read(fd, self.spare()) {
                Ok(n) => {
                    self.filled(n);
                    return Ok(Some(n));
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Bytes held for unfinished messages, for checking that they follow what arrived.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn held(&self) -> usize {
        self.partial.values().map(|p| p.data.capacity()).sum()
    }

    /// Where the next bytes read go: the room after what is buffered, which `next` leaves
    /// short of one chunk, so never empty.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`spare`](Self::spare).
    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// The next whole message in what was read; `url` names the endpoint in warnings.
    pub(crate) fn next(&mut self, url: &str) -> Option<Whole> {
        let whole = self.next_chunk_message(url);
        // Foreign bytes are reported as they arrive, not when a later chunk does: a plain
        // writer's `echo hi` may be the last thing the pipe ever carries.
        if self.skipped > 0 {
            log::warn!(
                "{url}: skipped {} bytes that were not ipckit chunks (a plain writer, such as `echo hi > FIFO`?); a server that takes lines from plain writers listens with ?framing=line",
                self.skipped
            );
            self.skipped = 0;
        }
        whole
    }

    fn next_chunk_message(&mut self, url: &str) -> Option<Whole> {
        while self.start < self.end {
            let available = &self.buf[self.start..self.end];
            if !may_begin_chunk(available) {
                self.start += 1;
                self.skipped += 1;
                continue;
            }
            if available.len() < HEADER {
                return None; // perhaps a chunk's header, cut by the read
            }
            let Some(header) = ChunkHeader::decode(available) else {
                self.start += 1;
                self.skipped += 1;
                continue;
            };
            if available.len() < HEADER + header.len {
                return None;
            }
            let data_at = self.start + HEADER;
            self.start = data_at + header.len;
            if let Some(whole) = self.take_chunk(url, &header, data_at) {
                return Some(whole);
            }
        }
        None
    }

    fn take_chunk(&mut self, url: &str, header: &ChunkHeader, data_at: usize) -> Option<Whole> {
        let mut data = &self.buf[data_at..data_at + header.len];
        if header.flags & (WAKE | TIMED_OUT | CONTROL) != 0 {
            return Some(Whole {
                writer: header.writer,
                seq: header.seq,
                flags: header.flags,
                payload: data.to_vec(),
                oversize: None,
            });
        }
        let whole_chunk = header.flags & (FIRST | LAST) == FIRST | LAST;
        if whole_chunk && !self.partial.contains_key(&header.writer) {
            // The common case, a message in one chunk, needs no putting together.
            let total = u32::from_le_bytes(data.get(..4)?.try_into().expect("4 bytes")) as usize;
            if total != data.len() - 4 {
                log::warn!(
                    "{url}: writer {:?} sent a malformed message; dropped",
                    header.writer
                );
                return None;
            }
            let oversize = (total > self.max).then_some(total);
            return Some(Whole {
                writer: header.writer,
                seq: header.seq,
                flags: header.flags,
                payload: if oversize.is_some() {
                    Vec::new()
                } else {
                    data[4..].to_vec()
                },
                oversize,
            });
        }
        if header.flags & FIRST != 0 {
            if let Some(old) = self.partial.remove(&header.writer) {
                log::warn!(
                    "{url}: writer {:?} began a new message before finishing message {}; {} bytes of it dropped",
                    header.writer,
                    old.seq,
                    old.data.len()
                );
            }
            let total = u32::from_le_bytes(data.get(..4)?.try_into().expect("4 bytes")) as usize;
            let oversize = total > self.max;
            data = &data[4..];
            self.partial.insert(
                header.writer,
                Partial {
                    seq: header.seq,
                    total,
                    flags: header.flags,
                    // Grows with what arrives, never by what was claimed: a writer can
                    // open any number of messages with a few bytes each.
                    data: Vec::new(),
                    oversize,
                    arrived: 0,
                },
            );
        }
        let Some(partial) = self.partial.get_mut(&header.writer) else {
            log::warn!(
                "{url}: a chunk of writer {:?} without its beginning; dropped",
                header.writer
            );
            return None;
        };
        if partial.seq != header.seq || partial.arrived + data.len() > partial.total {
            log::warn!(
                "{url}: writer {:?} broke its message {}; dropped",
                header.writer,
                partial.seq
            );
            self.partial.remove(&header.writer);
            return None;
        }
        partial.arrived += data.len();
        if !partial.oversize {
            partial.data.extend_from_slice(data);
        }
        if header.flags & LAST == 0 {
            return None;
        }
        let partial = self.partial.remove(&header.writer).expect("present");
        if partial.arrived != partial.total {
            log::warn!(
                "{url}: writer {:?} ended message {} short; dropped",
                header.writer,
                partial.seq
            );
            return None;
        }
        Some(Whole {
            writer: header.writer,
            seq: partial.seq,
            flags: partial.flags | header.flags,
            payload: partial.data,
            oversize: partial.oversize.then_some(partial.total),
        })
    }

    /// Drops the unfinished messages of writers whose process is gone.
    pub(super) fn reap(&mut self, url: &str) {
        self.partial.retain(|writer, partial| {
            let alive = rustix::process::Pid::from_raw(writer.0 as i32)
                .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
            if !alive {
                log::warn!(
                    "{url}: writer pid {} died in the middle of a message; its {} bytes were not delivered",
                    writer.0,
                    partial.data.len()
                );
            }
            alive
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first chunk of a message claims its length; the reader holds what arrived. A
    /// thousand writers each opening a 1 MiB message with 4 bytes of it made the reader
    /// reserve 64 KiB for each.
    #[test]
    fn unfinished_messages_hold_what_arrived() {
        let mut pipe = Vec::new();
        for n in 0..1000 {
            let mut chunk = [0u8; HEADER + 8];
            ChunkHeader {
                flags: FIRST,
                len: 8,
                writer: (1, n),
                seq: 0,
            }
            .encode(&mut chunk);
            chunk[HEADER..HEADER + 4].copy_from_slice(&(1u32 << 20).to_le_bytes());
            pipe.extend_from_slice(&chunk);
        }
        let mut reassembly = Reassembly::new(usize::MAX);
        for piece in pipe.chunks(4096) {
            reassembly.spare()[..piece.len()].copy_from_slice(piece);
            reassembly.filled(piece.len());
            assert!(reassembly.next("fifo:///test").is_none());
        }
        assert!(
            reassembly.held() <= 3 * pipe.len(),
            "{} bytes held for {} received",
            reassembly.held(),
            pipe.len()
        );
    }

    /// A plain writer's line is skipped as soon as it is read, with nothing after it, and
    /// a chunk cut by a read after its first bytes is waited for.
    #[test]
    fn foreign_bytes_skipped_on_arrival() {
        let mut reassembly = Reassembly::new(100);
        let mut pipe = b"hi\n".to_vec();
        let mut chunks = Chunks::new(((1, 1), 1, 0), b"whole");
        pipe.extend_from_slice(chunks.next_chunk().expect("one chunk"));
        let (line, chunk) = pipe.split_at(3 + 2);
        reassembly.spare()[..line.len()].copy_from_slice(line);
        reassembly.filled(line.len());
        assert!(reassembly.next("fifo:///test").is_none());
        assert_eq!(
            reassembly.end - reassembly.start,
            2,
            "the chunk's magic is kept"
        );
        reassembly.spare()[..chunk.len()].copy_from_slice(chunk);
        reassembly.filled(chunk.len());
        let whole = reassembly
            .next("fifo:///test")
            .expect("the chunk's message");
        assert_eq!(whole.payload, b"whole");
    }
}
