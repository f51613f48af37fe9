//! `fifo`: named pipes (`fifo:///tmp/app.fifo`), made with mkfifo.
//!
//! The server makes the FIFO (mkfifo, with the endpoint's mode) and reads it; any number
//! of clients write to it at once. A pipe makes a write atomic only up to PIPE_BUF (4096
//! bytes), so every message goes as chunks of at most that size, each in one write and
//! labelled with its writer and message: whatever the writers do at the same time, no
//! chunk is ever split, and the server puts each writer's message back together. A writer
//! killed in the middle of a message leaves whole chunks behind and never a torn one; the
//! server drops the unfinished message once the writer's pid is gone, and never delivers
//! it. Bytes that are not chunks (`echo hi > app.fifo`) are skipped, with a warning, up to
//! the next chunk header, which carries a check byte to be found again.
//!
//! Duplex: a client that makes a request creates a
//! reply FIFO beside the server's (`app.fifo.PID.N.reply`), named after its writer id,
//! and removes it when dropped; a server removes those left by clients that crashed.
//! Concurrent requests each use a writer id and reply FIFO of their own.
//!
//! A writer with no reader gets [`Error::NotFound`] when connecting and
//! [`Error::Disconnected`] when the reader goes, never a fatal SIGPIPE: where the process
//! has not already ignored SIGPIPE, it is blocked around each write and the pending one
//! taken back. A full pipe makes a write wait up to `?send_timeout_ms=` (10 s), then
//! fail with [`Error::Full`].
//!
//! What a successful `send` promises: the whole message is in the pipe. If the server
//! dies, the pipe and what is in it go with it.
//!
//! # URL and options
//!
//! `fifo:///tmp/app.fifo`: the FIFO at that absolute path, made by the server. Options:
//! `mode`, `send_timeout_ms` and `max_message`, described in
//! [the crate's endpoint table](crate#endpoints).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! let dir = std::env::temp_dir().join(format!("ipckit-doc-fifo-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let url = format!("fifo://{}/app.fifo", dir.display());
//!
//! let server = ipckit::listen(&url)?.spawn(|msg| Some(msg.payload().to_ascii_uppercase()));
//! let client = ipckit::connect(&url)?;
//! client.send(b"a one-way message")?;
//! // A request makes the client a reply FIFO beside the server's, removed with the client.
//! assert_eq!(client.request(b"duplex", Duration::from_secs(5))?, b"DUPLEX");
//!
//! drop(client);
//! drop(server); // stops it and removes the FIFO
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::fs::FileType;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::fs::{Mode, OFlags};

use super::endpoint_file::{EndpointFile, Kind, claim_path};
use super::pool::Pool;
use super::{Capabilities, Connection, Listener, Reclaim, Transport};
use crate::endpoint::{Address, Endpoint};
use crate::error::{Error, Result};
use crate::message::{Message, Peer, ReplySink, ReplyTo};
use crate::sys::wait_ready;

const CHUNK: usize = rustix::pipe::PIPE_BUF;
const HEADER: usize = 20;
const CHUNK_DATA: usize = CHUNK - HEADER;
const MAGIC: [u8; 2] = *b"IQ";
/// The first chunk of a message; its data starts with the message's length (u32).
pub(crate) const FIRST: u8 = 1;
pub(crate) const LAST: u8 = 2;
pub(crate) const REQUEST: u8 = 4;
/// On a reply: the request was refused; the data is the reason.
pub(crate) const REFUSED: u8 = 8;
/// A header-only chunk a server writes into its own FIFO to end a blocking read.
pub(crate) const WAKE: u8 = 16;
/// A header-only chunk the deadline keeper writes into a reply FIFO: the request with
/// this `seq` timed out.
pub(crate) const TIMED_OUT: u8 = 32;
/// The server asks the kernel for a pipe this large, for throughput.
const PIPE_SIZE: usize = 1 << 20;
/// How often partial messages are checked for writers that died.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a reply may wait for room in a reply FIFO.
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A writer: the pid of its process and a number unique within it.
pub(crate) type WriterId = (u32, u32);

fn next_writer() -> WriterId {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

struct ChunkHeader {
    flags: u8,
    len: usize,
    writer: WriterId,
    seq: u32,
}

fn check_byte(header: &[u8]) -> u8 {
    header[4..HEADER]
        .iter()
        .fold(header[2] ^ 0x5a, |acc, b| acc.rotate_left(1) ^ b)
}

impl ChunkHeader {
    fn encode(&self, out: &mut [u8]) {
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
    fn decode(bytes: &[u8]) -> Option<ChunkHeader> {
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
fn sigpipe_ignored() -> bool {
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

fn libc_sigpipe() -> u32 {
    nix::sys::signal::Signal::SIGPIPE as u32
}

/// Blocks SIGPIPE on this thread while it lives, unless the process ignores it, so that
/// writing to a pipe nobody reads is an EPIPE error, not death.
struct SigpipeBlocked {
    previous: Option<nix::sys::signal::SigSet>,
}

impl SigpipeBlocked {
    fn new() -> SigpipeBlocked {
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
    fn consume_pending(&self) {
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
fn write_chunk(
    url: &str,
    fd: BorrowedFd<'_>,
    chunk: &[u8],
    sigpipe: &SigpipeBlocked,
) -> Result<bool> {
    loop {
        match rustix::io::write(fd, chunk) {
            // PIPE_BUF makes a write of a chunk all or nothing.
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(false),
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

fn pipe_full(url: &str, patience: Duration) -> Error {
    Error::Full {
        endpoint: url.to_owned(),
        detail: "the pipe".into(),
        after: patience,
    }
}

/// Writes one message as atomic chunks to a non-blocking pipe, waiting for room up to
/// `patience`.
fn write_message(
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
struct Partial {
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
    max: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    partial: HashMap<WriterId, Partial>,
    /// Foreign bytes skipped since the last chunk, reported once per run.
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
    fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        loop {
            match rustix::io::read(fd, self.spare()) {
                Ok(n) => {
                    self.filled(n);
                    return Ok(n > 0);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
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
        while self.end - self.start >= HEADER {
            let Some(header) = ChunkHeader::decode(&self.buf[self.start..]) else {
                self.start += 1;
                self.skipped += 1;
                continue;
            };
            if self.end - self.start < HEADER + header.len {
                return None;
            }
            if self.skipped > 0 {
                log::warn!(
                    "{url}: skipped {} bytes that were not ipckit chunks",
                    self.skipped
                );
                self.skipped = 0;
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
        if header.flags & (WAKE | TIMED_OUT) != 0 {
            return Some(Whole {
                writer: header.writer,
                seq: header.seq,
                flags: header.flags,
                payload: Vec::new(),
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
    fn reap(&mut self, url: &str) {
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

/// Ends a client's blocking read at its request's deadline. A pipe has no receive
/// timeout, and polling before every read would cost a syscall per request; instead the
/// keeper, one thread per process started on first use, writes a [`TIMED_OUT`] chunk into
/// the reply FIFO of a request still waiting at its deadline. Registering and cancelling
/// take a mutex and make no syscall; the thread is woken only for a deadline earlier than
/// the one it sleeps until, which a caller that keeps using one timeout never asks for.
struct DeadlineKeeper {
    state: Mutex<KeeperState>,
    earlier: std::sync::Condvar,
}

#[derive(Default)]
struct KeeperState {
    pending: Vec<Pending>,
    /// The deadline the thread sleeps until; `None` while it waits for work.
    sleeping_until: Option<Instant>,
    next_ticket: u64,
}

struct Pending {
    ticket: u64,
    deadline: Instant,
    fd: Arc<OwnedFd>,
    seq: u32,
}

impl DeadlineKeeper {
    fn get() -> &'static DeadlineKeeper {
        static KEEPER: OnceLock<&'static DeadlineKeeper> = OnceLock::new();
        KEEPER.get_or_init(|| {
            let keeper: &'static DeadlineKeeper = Box::leak(Box::new(DeadlineKeeper {
                state: Mutex::new(KeeperState::default()),
                earlier: std::sync::Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("ipckit fifo deadlines".into())
                .spawn(move || keeper.run())
                .expect("spawning the fifo deadline keeper");
            keeper
        })
    }

    /// Arranges for a [`TIMED_OUT`] chunk for `seq` to be written to `fd` at `deadline`.
    fn register(&self, deadline: Instant, fd: Arc<OwnedFd>, seq: u32) -> u64 {
        let mut state = crate::sys::lock(&self.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.pending.push(Pending {
            ticket,
            deadline,
            fd,
            seq,
        });
        if state.sleeping_until.is_none_or(|t| deadline < t) {
            self.earlier.notify_one();
        }
        ticket
    }

    fn cancel(&self, ticket: u64) {
        let mut state = crate::sys::lock(&self.state);
        if let Some(at) = state.pending.iter().position(|p| p.ticket == ticket) {
            state.pending.swap_remove(at);
        }
    }

    fn run(&self) {
        let mut state = crate::sys::lock(&self.state);
        loop {
            let now = Instant::now();
            state.pending.retain(|p| {
                if p.deadline > now {
                    return true;
                }
                let mut chunk = [0u8; HEADER];
                let header = ChunkHeader {
                    flags: TIMED_OUT,
                    len: 0,
                    writer: (0, 0),
                    seq: p.seq,
                };
                header.encode(&mut chunk);
                // A full reply pipe means a reply is being read; the request is answered.
                let _ = rustix::io::write(&*p.fd, &chunk);
                false
            });
            state.sleeping_until = state.pending.iter().map(|p| p.deadline).min();
            state = match state.sleeping_until {
                None => self.earlier.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let waited = self.earlier.wait_timeout(state, t - now);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

fn fifo_path(endpoint: &Endpoint) -> &Path {
    match endpoint.address() {
        Address::Fifo(path) => path,
        _ => unreachable!("the registry hands fifo endpoints only to fifo"),
    }
}

fn reply_path(fifo: &Path, writer: WriterId) -> PathBuf {
    let mut name = fifo.as_os_str().to_owned();
    name.push(format!(".{}.{}.reply", writer.0, writer.1));
    PathBuf::from(name)
}

fn open_fifo(endpoint: &Endpoint, path: &Path, flags: OFlags) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        flags | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NXIO => Error::NotFound {
            endpoint: endpoint.to_string(),
            detail: "the FIFO exists but nobody reads it".into(),
        },
        e => Error::io(endpoint, "opening the FIFO", e.into()),
    })
}

/// Makes a FIFO no wider than `mode` (the umask only narrows it).
fn mkfifo(endpoint: &Endpoint, path: &Path, mode: u32) -> Result<()> {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::from_raw_mode(mode))
        .map_err(|e| Error::listen_io(endpoint, "making the FIFO", e.into()))
}

/// The `fifo` transport.
pub struct Fifo;

crate::transport::sealed!(Fifo, FifoConnection, FifoListener);

impl Transport for Fifo {
    fn scheme(&self) -> &'static str {
        "fifo"
    }

    fn summary(&self) -> &'static str {
        "named pipes (mkfifo), atomic chunks"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            reliable: true,
            ordered: true,
            durable: false,
            broadcast: false,
            connection: false,
            max_message: endpoint.max_message(),
            peer_credentials: false,
            zero_copy: false,
        }
    }

    fn scratch_endpoint(&self, dir: &Path, name: &str) -> Endpoint {
        Address::Fifo(dir.join(format!("{name}.fifo"))).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        let path = fifo_path(endpoint);
        let fd = open_fifo(endpoint, path, OFlags::WRONLY)?;
        Ok(Box::new(FifoConnection {
            endpoint: endpoint.clone(),
            url: endpoint.to_string(),
            fd,
            sender: Mutex::new((next_writer(), 0)),
            channels: Pool::new(),
            max: endpoint.max_message(),
            send_timeout: endpoint.send_timeout(),
        }))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        let server = server(endpoint)?;
        // Reads block, as a hand-written reader's do; see `recv`.
        rustix::fs::fcntl_setfl(&*server.fd, OFlags::RDWR)
            .map_err(|e| Error::io(endpoint, "making the FIFO blocking", e.into()))?;
        Ok(Box::new(server))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        super::connected(on_tokio::AsyncFifoConnection::new(endpoint))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        Ok(Box::new(on_tokio::AsyncFifoListener::new(server(
            endpoint,
        )?)?))
    }
}

/// The server, its FIFO made (or a dead server's taken over) and open non-blocking.
fn server(endpoint: &Endpoint) -> Result<FifoListener> {
    let path = fifo_path(endpoint);
    // Opening for writing succeeds only while somebody reads: a live server.
    let alive = || Ok(open_fifo(endpoint, path, OFlags::WRONLY).is_ok());
    let fifo = Kind {
        name: "FIFO",
        is: FileType::is_fifo,
        alive: &alive,
        mode: endpoint.mode(),
    };
    let file = claim_path(endpoint, path, fifo, || {
        mkfifo(endpoint, path, endpoint.mode() & 0o600)
    })?;
    remove_dead_reply_fifos(path);
    // Read and write: the pipe then never reads as ended when writers come and go, and
    // opening does not wait for a writer.
    let fd = open_fifo(endpoint, path, OFlags::RDWR)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_SIZE);
    let waker_fd = open_fifo(endpoint, path, OFlags::WRONLY)?;
    Ok(FifoListener {
        url: endpoint.to_string().into(),
        endpoint: endpoint.clone(),
        path: path.to_owned(),
        fd: Arc::new(fd),
        reassembly: Reassembly::new(endpoint.max_message()),
        ready: VecDeque::new(),
        stop: Arc::new(AtomicBool::new(false)),
        waker_fd: Arc::new(waker_fd),
        last_sink: None,
        anonymous: Arc::new(Peer::default()),
        last_reap: Instant::now(),
        reclaim: Reclaim::new(),
        _file: file,
    })
}

/// Removes the reply FIFOs of clients whose process is gone.
fn remove_dead_reply_fifos(fifo: &Path) {
    let (Some(dir), Some(name)) = (fifo.parent(), fifo.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let Some(writer) = file
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".reply"))
        else {
            continue;
        };
        let Some(pid) = writer.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
        if !alive && entry.file_type().is_ok_and(|t| t.is_fifo()) {
            log::info!(
                "{}: removing the reply FIFO of a client that is gone",
                entry.path().display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Refuses a message over the endpoint's limit before a chunk of it is written.
fn check_size(url: &str, max: usize, payload: &[u8]) -> Result<()> {
    if payload.len() > max {
        return Err(Error::MessageTooLarge {
            endpoint: url.to_owned(),
            size: payload.len(),
            max,
            limit: "this endpoint's max_message".into(),
        });
    }
    Ok(())
}

/// A new writer id and its reply FIFO beside the server's, open for reading and writing
/// (so that it never reads as ended) and non-blocking.
fn make_reply_fifo(endpoint: &Endpoint) -> Result<(WriterId, PathBuf, OwnedFd)> {
    let writer = next_writer();
    let path = reply_path(fifo_path(endpoint), writer);
    mkfifo(endpoint, &path, 0o600)?;
    match open_fifo(endpoint, &path, OFlags::RDWR) {
        Ok(fd) => Ok((writer, path, fd)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// The answer to request `seq` among the replies read, if it came: `None` for a message
/// that answers (or times out) an earlier request.
fn answer(
    url: &str,
    reply: Whole,
    seq: u32,
    timeout: Duration,
    max: usize,
) -> Option<Result<Vec<u8>>> {
    if reply.seq != seq {
        return None;
    }
    if reply.flags & TIMED_OUT != 0 {
        return Some(Err(Error::Timeout {
            endpoint: url.to_owned(),
            after: timeout,
        }));
    }
    if let Some(size) = reply.oversize {
        // What the server of a pipe cannot know, the client says: the request is
        // answered, at once, as the other transports' servers refuse such an answer.
        return Some(Err(Error::Remote {
            endpoint: url.to_owned(),
            reason: format!(
                "an answer of {size} bytes, over the limit of {max} bytes (this client's max_message)"
            ),
        }));
    }
    if reply.flags & REFUSED != 0 {
        return Some(Err(Error::Remote {
            endpoint: url.to_owned(),
            reason: String::from_utf8_lossy(&reply.payload).into_owned(),
        }));
    }
    Some(Ok(reply.payload))
}

/// What one request at a time needs: a writer id and the reply FIFO named after it.
struct Channel {
    writer: WriterId,
    seq: u32,
    path: PathBuf,
    /// The reply FIFO, read blocking.
    fd: OwnedFd,
    /// The reply FIFO again, for the deadline keeper to write into.
    timeout_fd: Arc<OwnedFd>,
    replies: Reassembly,
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct FifoConnection {
    endpoint: Endpoint,
    url: String,
    fd: OwnedFd,
    /// One-way messages: their writer, and the last message number; locked for a whole
    /// message so that one writer's messages follow each other.
    sender: Mutex<(WriterId, u32)>,
    channels: Pool<Channel>,
    /// The endpoint's options, read once.
    max: usize,
    send_timeout: Duration,
}

impl FifoConnection {
    fn check_size(&self, payload: &[u8]) -> Result<()> {
        check_size(&self.url, self.max, payload)
    }

    fn new_channel(&self) -> Result<Channel> {
        let (writer, path, fd) = make_reply_fifo(&self.endpoint)?;
        let opened = (|| {
            rustix::fs::fcntl_setfl(&fd, OFlags::RDWR)
                .map_err(|e| Error::io(&self.url, "making the reply FIFO blocking", e.into()))?;
            open_fifo(&self.endpoint, &path, OFlags::WRONLY)
        })();
        match opened {
            Ok(timeout_fd) => Ok(Channel {
                writer,
                seq: 0,
                path,
                fd,
                timeout_fd: Arc::new(timeout_fd),
                replies: Reassembly::new(self.max),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn exchange(
        &self,
        channel: &mut Channel,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        channel.seq = channel.seq.wrapping_add(1);
        let seq = channel.seq;
        let keeper = DeadlineKeeper::get();
        let ticket = keeper.register(Instant::now() + timeout, channel.timeout_fd.clone(), seq);
        let answer = self.await_reply(channel, payload, timeout);
        keeper.cancel(ticket);
        answer
    }

    fn await_reply(
        &self,
        channel: &mut Channel,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let seq = channel.seq;
        write_message(
            &self.url,
            self.fd.as_fd(),
            (channel.writer, seq, REQUEST),
            payload,
            self.send_timeout,
        )?;
        loop {
            while let Some(reply) = channel.replies.next(&self.url) {
                if let Some(answer) = answer(&self.url, reply, seq, timeout, self.max) {
                    return answer;
                }
            }
            channel
                .replies
                .fill(channel.fd.as_fd())
                .map_err(|e| Error::io(&self.url, "reading the reply", e))?;
        }
    }
}

impl Connection for FifoConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.check_size(payload)?;
        let mut sender = crate::sys::lock(&self.sender);
        sender.1 = sender.1.wrapping_add(1);
        let id = (sender.0, sender.1, 0);
        write_message(&self.url, self.fd.as_fd(), id, payload, self.send_timeout)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.check_size(payload)?;
        self.channels.with(
            || self.new_channel(),
            |channel| self.exchange(channel, payload, timeout),
        )
    }

    fn max_message(&self) -> usize {
        self.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Reply FIFOs a server has open, by writer.
struct FifoReplySink {
    endpoint: Endpoint,
    url: Arc<str>,
    path: PathBuf,
    writer: WriterId,
    /// The reply FIFO once opened, for later replies through this sink. It is closed with
    /// the sink, when no request of that client is held and another client has asked:
    /// a server holds nothing of clients that are done.
    fd: OnceLock<Arc<OwnedFd>>,
}

impl FifoReplySink {
    fn reply_fifo(&self) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.fd.get() {
            return Ok(fd.clone());
        }
        let path = reply_path(&self.path, self.writer);
        let fd =
            open_fifo(&self.endpoint, &path, OFlags::WRONLY).map_err(|e| Error::Disconnected {
                endpoint: self.url.to_string(),
                detail: format!(
                    "opening the reply FIFO {}: {}; the requester has gone",
                    path.display(),
                    e.as_detail()
                ),
            })?;
        let fd = Arc::new(fd);
        let _ = self.fd.set(fd.clone());
        Ok(fd)
    }
}

impl ReplySink for FifoReplySink {
    /// `id` is the request's message number, which the reply carries back.
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        let fd = self.reply_fifo()?;
        let flags = if ok { 0 } else { REFUSED };
        let id = ((std::process::id(), 0), id as u32, flags);
        write_message(&self.url, fd.as_fd(), id, payload, REPLY_SEND_TIMEOUT)
    }
}

struct FifoListener {
    endpoint: Endpoint,
    url: Arc<str>,
    path: PathBuf,
    /// The FIFO, read blocking (or through tokio): a [`WAKE`] chunk or a writer's data
    /// ends the wait.
    fd: Arc<OwnedFd>,
    reassembly: Reassembly,
    ready: VecDeque<Message>,
    stop: Arc<AtomicBool>,
    /// The FIFO again, for writing wake chunks into it.
    waker_fd: Arc<OwnedFd>,
    /// The sink of the last request, reused while requests come from the same writer.
    last_sink: Option<Arc<FifoReplySink>>,
    /// A pipe says nothing about who wrote: every message has this same nobody.
    anonymous: Arc<Peer>,
    last_reap: Instant,
    reclaim: Reclaim,
    _file: EndpointFile,
}

impl FifoListener {
    fn sink_for(&mut self, writer: WriterId) -> Arc<FifoReplySink> {
        match &self.last_sink {
            Some(sink) if sink.writer == writer => sink.clone(),
            _ => {
                // A new client: those that crashed leave reply FIFOs to remove.
                if self.reclaim.due() {
                    remove_dead_reply_fifos(&self.path);
                }
                let sink = Arc::new(FifoReplySink {
                    endpoint: self.endpoint.clone(),
                    url: self.url.clone(),
                    path: self.path.clone(),
                    writer,
                    fd: OnceLock::new(),
                });
                self.last_sink = Some(sink.clone());
                sink
            }
        }
    }

    /// Moves whole messages into `ready`; true when a wake chunk came.
    fn deliver(&mut self) -> bool {
        let mut woken = false;
        while let Some(whole) = self.reassembly.next(&self.url) {
            if whole.flags & WAKE != 0 {
                woken = true;
                continue;
            }
            if let Some(size) = whole.oversize {
                log::warn!(
                    "{}: writer {:?} sent a message of {size} bytes, over the limit of {}; dropped",
                    self.url,
                    whole.writer,
                    self.reassembly.max
                );
                continue;
            }
            let reply_to = (whole.flags & REQUEST != 0)
                .then(|| ReplyTo::new(self.sink_for(whole.writer), whole.seq.into()));
            self.ready.push_back(Message::new(
                whole.payload,
                self.anonymous.clone(),
                reply_to,
                self.url.clone(),
            ));
        }
        woken
    }

    /// Waits until the FIFO is readable or `wait` passes; false when it passed.
    fn wait_readable(&self, wait: Duration) -> Result<bool> {
        wait_ready(self.fd.as_fd(), PollFlags::IN, Some(Instant::now() + wait))
            .map_err(|e| Error::io(&*self.url, "waiting for messages", e))
    }
}

impl Drop for FifoListener {
    /// Requests still in the pipe would wait out their callers' timeouts: they are taken
    /// and refused, so that each caller learns at once that the server stopped. (One
    /// written between this and the end of the drop is lost with the pipe.)
    fn drop(&mut self) {
        let fd = self.fd.clone();
        let nonblocking = rustix::fs::fcntl_getfl(&*fd)
            .and_then(|flags| rustix::fs::fcntl_setfl(&*fd, flags | OFlags::NONBLOCK));
        if nonblocking.is_err() {
            return;
        }
        while self.reassembly.fill(fd.as_fd()).unwrap_or(false) {
            self.deliver();
        }
        self.deliver();
        for mut message in self.ready.drain(..) {
            if message.wants_reply() {
                let _ = message.refuse("the server stopped before it read this request");
            }
        }
    }
}

impl Listener for FifoListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(Some(message));
            }
            if self.stop.swap(false, Ordering::AcqRel) || self.deliver() {
                return Ok(None);
            }
            if !self.ready.is_empty() {
                continue;
            }
            let unfinished = !self.reassembly.partial.is_empty();
            if unfinished && self.last_reap.elapsed() >= REAP_INTERVAL {
                self.reassembly.reap(&self.url);
                self.last_reap = Instant::now();
            }
            // Block in read, as a hand-written reader does, unless there is a deadline to
            // keep or unfinished messages whose writers must be watched.
            if deadline.is_some() || unfinished {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return Ok(None);
                }
                let mut wait = deadline.map_or(REAP_INTERVAL, |d| d - now);
                if unfinished {
                    wait = wait.min(REAP_INTERVAL);
                }
                if !self.wait_readable(wait)? {
                    continue;
                }
            }
            self.reassembly
                .fill(self.fd.as_fd())
                .map_err(|e| Error::io(&*self.url, "reading", e))?;
        }
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let (stop, fd) = (self.stop.clone(), self.waker_fd.clone());
        Arc::new(move || {
            stop.store(true, Ordering::Release);
            let mut chunk = [0u8; HEADER];
            let wake = ChunkHeader {
                flags: WAKE,
                len: 0,
                writer: (0, 0),
                seq: 0,
            };
            wake.encode(&mut chunk);
            // A full pipe means a busy server, which sees the flag before it blocks again.
            let _ = rustix::io::write(&*fd, &chunk);
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The same client and server driven by tokio: the FIFOs stay non-blocking and tokio's
/// reactor says when they are readable or have room. Chunks, reassembly, reply FIFOs and
/// their names are the blocking side's.
///
/// Cancellation: a dropped `send` may have written some chunks of its message; the
/// server never delivers them (the writer's next message, or its death, discards them),
/// so the message arrives whole or not at all. A dropped `request` drops its reply FIFO
/// with it, so a late reply cannot be taken for another request's.
///
/// A reply larger than the client's reply pipe (64 KiB) waits in [`Message::reply`] while
/// the client reads it, as on the blocking side.
#[cfg(feature = "tokio")]
mod on_tokio {
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::task::{Poll, ready};

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    use super::*;
    use crate::transport::{AsyncConnection, AsyncListener, BoxFuture, reactor};

    fn register<T: AsFd + std::os::fd::AsRawFd>(url: &str, fd: T) -> Result<AsyncFd<T>> {
        reactor::register(url, fd, Interest::READABLE | Interest::WRITABLE)
    }

    /// Writes one message chunk by chunk, waiting for room up to `patience` each time the
    /// pipe is full.
    async fn write_message(
        url: &str,
        fd: &AsyncFd<OwnedFd>,
        id: (WriterId, u32, u8),
        payload: &[u8],
        patience: Duration,
    ) -> Result<()> {
        let mut chunks = Chunks::new(id, payload);
        while let Some(chunk) = chunks.next_chunk() {
            loop {
                let written = {
                    let sigpipe = SigpipeBlocked::new();
                    write_chunk(url, fd.get_ref().as_fd(), chunk, &sigpipe)?
                };
                if written {
                    break;
                }
                let room = tokio::time::timeout(patience, fd.writable())
                    .await
                    .map_err(|_| pipe_full(url, patience))?;
                // Not written since the wait: the room it saw may be gone again.
                room.map_err(|e| Error::io(url, "waiting for room in the pipe", e))?
                    .clear_ready();
            }
        }
        Ok(())
    }

    /// Reads what `fd` has into `reassembly`, as `try_io` wants it: WouldBlock when empty.
    fn fill(reassembly: &mut Reassembly, fd: &OwnedFd) -> io::Result<()> {
        match reassembly.fill(fd.as_fd()) {
            Ok(true) => Ok(()),
            Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => Err(e),
        }
    }

    struct AsyncChannel {
        writer: WriterId,
        seq: u32,
        path: PathBuf,
        fd: AsyncFd<OwnedFd>,
        replies: Reassembly,
    }

    impl Drop for AsyncChannel {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    pub(super) struct AsyncFifoConnection {
        endpoint: Endpoint,
        url: String,
        fd: AsyncFd<OwnedFd>,
        /// One-way messages: their writer and last message number, held for a whole
        /// message so that its chunks follow the previous message's.
        sender: tokio::sync::Mutex<(WriterId, u32)>,
        channels: Pool<AsyncChannel>,
        max: usize,
        send_timeout: Duration,
    }

    impl AsyncFifoConnection {
        pub(super) fn new(endpoint: &Endpoint) -> Result<AsyncFifoConnection> {
            let url = endpoint.to_string();
            let fd = open_fifo(endpoint, fifo_path(endpoint), OFlags::WRONLY)?;
            Ok(AsyncFifoConnection {
                fd: register(&url, fd)?,
                endpoint: endpoint.clone(),
                url,
                sender: tokio::sync::Mutex::new((next_writer(), 0)),
                channels: Pool::new(),
                max: endpoint.max_message(),
                send_timeout: endpoint.send_timeout(),
            })
        }

        async fn send(&self, payload: &[u8]) -> Result<()> {
            check_size(&self.url, self.max, payload)?;
            let mut sender = self.sender.lock().await;
            sender.1 = sender.1.wrapping_add(1);
            let id = (sender.0, sender.1, 0);
            write_message(&self.url, &self.fd, id, payload, self.send_timeout).await
        }

        async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
            check_size(&self.url, self.max, payload)?;
            let mut channel = self.channels.take(|| {
                let (writer, path, fd) = make_reply_fifo(&self.endpoint)?;
                Ok(AsyncChannel {
                    writer,
                    seq: 0,
                    fd: register(&self.url, fd)?,
                    path,
                    replies: Reassembly::new(self.max),
                })
            })?;
            channel.seq = channel.seq.wrapping_add(1);
            let exchange = async {
                let seq = channel.seq;
                let id = (channel.writer, seq, REQUEST);
                write_message(&self.url, &self.fd, id, payload, self.send_timeout).await?;
                loop {
                    while let Some(reply) = channel.replies.next(&self.url) {
                        if let Some(answer) = answer(&self.url, reply, seq, timeout, self.max) {
                            return answer;
                        }
                    }
                    let replies = &mut channel.replies;
                    reactor::when_ready(&channel.fd, Interest::READABLE, |fd| {
                        fill(replies, fd.get_ref())
                    })
                    .await
                    .map_err(|e| Error::io(&self.url, "reading the reply", e))?;
                }
            };
            let answer = tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| Error::Timeout {
                    endpoint: self.url.clone(),
                    after: timeout,
                })??;
            self.channels.give_back(channel);
            Ok(answer)
        }
    }

    crate::transport::sealed!(AsyncFifoConnection, AsyncFifoListener);

    impl AsyncConnection for AsyncFifoConnection {
        /// Dropped before it completes, the message arrives whole or not at all.
        fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
            Box::pin(AsyncFifoConnection::send(self, payload))
        }

        /// Dropped at any point, the request's reply FIFO goes with it.
        fn request<'a>(
            &'a self,
            payload: &'a [u8],
            timeout: Duration,
        ) -> BoxFuture<'a, Result<Vec<u8>>> {
            Box::pin(AsyncFifoConnection::request(self, payload, timeout))
        }

        fn max_message(&self) -> usize {
            self.max
        }

        fn endpoint(&self) -> &Endpoint {
            &self.endpoint
        }
    }

    /// The blocking server's FIFO and reassembly, read when tokio says it is readable.
    pub(super) struct AsyncFifoListener {
        server: FifoListener,
        fd: AsyncFd<Arc<OwnedFd>>,
        /// When unfinished messages are next checked for writers that died.
        reap: Pin<Box<tokio::time::Sleep>>,
    }

    impl AsyncFifoListener {
        pub(super) fn new(server: FifoListener) -> Result<AsyncFifoListener> {
            Ok(AsyncFifoListener {
                fd: register(&server.url, server.fd.clone())?,
                server,
                reap: Box::pin(tokio::time::sleep(REAP_INTERVAL)),
            })
        }
    }

    impl AsyncListener for AsyncFifoListener {
        /// Cancel-safe: messages read but not returned wait for the next call.
        fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
            Box::pin(poll_fn(move |cx| {
                loop {
                    let server = &mut self.server;
                    server.deliver(); // wake chunks are the blocking side's alone
                    if let Some(message) = server.ready.pop_front() {
                        return Poll::Ready(Ok(message));
                    }
                    if !server.reassembly.partial.is_empty()
                        && self.reap.as_mut().poll(cx).is_ready()
                    {
                        self.server.reassembly.reap(&self.server.url);
                        let next = tokio::time::Instant::now() + REAP_INTERVAL;
                        self.reap.as_mut().reset(next);
                    }
                    let reassembly = &mut self.server.reassembly;
                    let filled =
                        reactor::poll_read(&self.fd, cx, |fd| fill(reassembly, fd.get_ref()));
                    if let Err(e) = ready!(filled) {
                        let url = &self.server.url;
                        return Poll::Ready(Err(Error::io(&**url, "reading", e)));
                    }
                }
            }))
        }

        fn endpoint(&self) -> &Endpoint {
            &self.server.endpoint
        }
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
}
