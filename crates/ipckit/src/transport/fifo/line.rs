//! `?framing=line`: each `\n`-ended line written into the FIFO, by any program, is a
//! message, as on a uds or tcp endpoint with the same option.
//!
//! A write of at most PIPE_BUF (4096) bytes is never split by the kernel, so lines up to
//! that size (newline included) from several writers at once each arrive whole; the
//! ipckit client writes each line in one write. A longer line may be written in several
//! pieces, and the pieces of several writers writing such lines at once can interleave:
//! the server cannot tell, and delivers what the pipe holds between newlines. Writers of
//! long lines that share a FIFO take turns, or use the default framing.
//!
//! A line longer than `?max_message=` is dropped up to its newline and reported; the
//! server goes on serving. A last line without a newline (`printf hi > app.fifo`) is
//! delivered once every writer has closed the FIFO, when the pipe reads as ended: a pipe
//! does not say which writer wrote what, so while another writer holds the FIFO open,
//! its next bytes continue that line. (A uds or tcp server, which knows where each
//! connection ends, drops a connection's unended last line instead.)
//!
//! One-way: a line carries no return address, so a server cannot answer it and a client's
//! `request` is refused at once with [`Error::Unsupported`]; messages arrive without a
//! reply handle. For requests, use the default framing.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::OFlags;

use super::chunk::{ChunkHeader, HEADER, SigpipeBlocked, pipe_full, write_pipe};
use super::{PIPE_SIZE, check_size, claim, fifo_path, open_fifo};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, Peer};
use crate::sys::wait_ready;
use crate::transport::endpoint_file::EndpointFile;
use crate::transport::{Connection, Listener};

/// How much one read takes from the pipe.
const READ_SIZE: usize = 64 * 1024;

/// Cuts what the pipe carries into lines of at most `max` bytes.
pub(super) struct Lines {
    max: usize,
    /// The line under way, never more than `max` bytes.
    line: Vec<u8>,
    /// In a line over the limit, reported already: its bytes are dropped to its newline.
    dropping: bool,
}

impl Lines {
    pub(super) fn new(max: usize) -> Lines {
        Lines {
            max,
            line: Vec::new(),
            dropping: false,
        }
    }

    /// Takes bytes read from the pipe; each line they end goes to `out`.
    pub(super) fn push(&mut self, url: &str, mut bytes: &[u8], out: &mut VecDeque<Vec<u8>>) {
        while !bytes.is_empty() {
            let (piece, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(at) => (&bytes[..at], true),
                None => (bytes, false),
            };
            bytes = &bytes[piece.len() + usize::from(ended)..];
            if !self.dropping && self.line.len() + piece.len() > self.max {
                log::warn!(
                    "{url}: a line longer than the limit of {} bytes (max_message); dropped up to its newline",
                    self.max
                );
                self.dropping = true;
                self.line = Vec::new();
            }
            if !self.dropping {
                self.line.extend_from_slice(piece);
            }
            if ended {
                if !std::mem::take(&mut self.dropping) {
                    out.push_back(std::mem::take(&mut self.line));
                }
                self.line = Vec::new();
            }
        }
    }

    /// Every writer has closed the FIFO: a last line without its newline is whole.
    pub(super) fn ended(&mut self, out: &mut VecDeque<Vec<u8>>) {
        if !self.line.is_empty() {
            out.push_back(std::mem::take(&mut self.line));
        }
        self.dropping = false;
    }
}

/// Refuses what a line cannot carry before a byte is written: the text uds gives.
fn check_line(url: &str, max: usize, payload: &[u8]) -> Result<()> {
    check_size(url, max, payload)?;
    if payload.contains(&b'\n') {
        return Err(Error::Unsupported {
            endpoint: url.to_owned(),
            what: "with framing=line a message cannot contain a newline; use the default framing"
                .into(),
        });
    }
    Ok(())
}

fn one_way(url: &str) -> Error {
    Error::Unsupported {
        endpoint: url.to_owned(),
        what: "with framing=line a fifo is one-way: a line carries no return address, so nothing can answer a request; use the default framing for requests".into(),
    }
}

/// Writes what is left of `line` to a non-blocking pipe; `Ok(false)` when it has no
/// room. A line of at most PIPE_BUF bytes goes in one write or not at all.
fn write_some(url: &str, fd: BorrowedFd<'_>, line: &mut &[u8]) -> Result<bool> {
    let sigpipe = SigpipeBlocked::new();
    while !line.is_empty() {
        match write_pipe(url, fd, line, &sigpipe)? {
            Some(n) => *line = &line[n..],
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// A client of a line-framed FIFO: each message is written as one line.
pub(super) struct LineConnection {
    endpoint: Endpoint,
    url: String,
    fd: OwnedFd,
    /// Held for a whole line, so that one client's long lines do not interleave.
    writing: Mutex<()>,
    max: usize,
    send_timeout: Duration,
}

impl LineConnection {
    pub(super) fn new(endpoint: &Endpoint) -> Result<LineConnection> {
        Ok(LineConnection {
            fd: open_fifo(endpoint, fifo_path(endpoint), OFlags::WRONLY)?,
            endpoint: endpoint.clone(),
            url: endpoint.to_string(),
            writing: Mutex::new(()),
            max: endpoint.max_message(),
            send_timeout: endpoint.send_timeout(),
        })
    }
}

impl Connection for LineConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        check_line(&self.url, self.max, payload)?;
        let line = [payload, b"\n"].concat();
        let mut rest = &line[..];
        let _writing = crate::sys::lock(&self.writing);
        let deadline = Instant::now() + self.send_timeout;
        while !write_some(&self.url, self.fd.as_fd(), &mut rest)? {
            let room = wait_ready(self.fd.as_fd(), PollFlags::OUT, Some(deadline))
                .map_err(|e| Error::io(&*self.url, "waiting for room in the pipe", e))?;
            if !room {
                return Err(pipe_full(&self.url, self.send_timeout));
            }
        }
        Ok(())
    }

    fn request(&self, _: &[u8], _: Duration) -> Result<Vec<u8>> {
        Err(one_way(&self.url))
    }

    fn max_message(&self) -> usize {
        self.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// The reading side of a line-framed FIFO, shared by the blocking and tokio servers.
pub(super) struct LineReader {
    pub(super) endpoint: Endpoint,
    pub(super) url: Arc<str>,
    path: PathBuf,
    lines: Lines,
    ready: VecDeque<Vec<u8>>,
    buf: Box<[u8]>,
    anonymous: Arc<Peer>,
    /// A client of the default framing was reported since the FIFO last read as ended.
    chunks_reported: bool,
    _file: EndpointFile,
}

/// What one read of the FIFO found.
pub(super) enum Read {
    /// Bytes, taken into lines.
    Some,
    /// Every writer has closed the FIFO: the caller reads a fresh descriptor from now on.
    Ended(OwnedFd),
}

impl LineReader {
    /// The server's FIFO, made (or a dead server's taken over), and its descriptor, open
    /// for reading alone and non-blocking: the pipe reads as ended once its writers have
    /// all closed it, which is when a last line without a newline is whole.
    pub(super) fn open(endpoint: &Endpoint) -> Result<(LineReader, OwnedFd)> {
        let file = claim(endpoint)?;
        let path = fifo_path(endpoint).to_owned();
        let fd = open_fifo(endpoint, &path, OFlags::RDONLY)?;
        let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_SIZE);
        let reader = LineReader {
            url: endpoint.to_string().into(),
            endpoint: endpoint.clone(),
            path,
            lines: Lines::new(endpoint.max_message()),
            ready: VecDeque::new(),
            buf: vec![0; READ_SIZE].into_boxed_slice(),
            anonymous: Arc::new(Peer::default()),
            chunks_reported: false,
            _file: file,
        };
        Ok((reader, fd))
    }

    /// The next message read, if any.
    pub(super) fn next(&mut self) -> Option<Message> {
        let line = self.ready.pop_front()?;
        Some(Message::new(
            line,
            self.anonymous.clone(),
            None,
            self.url.clone(),
        ))
    }

    /// Reads once from `fd`; WouldBlock when the pipe is empty and has writers.
    pub(super) fn read(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<Read> {
        loop {
            match rustix::io::read(fd, &mut self.buf[..]) {
                Ok(0) => {
                    self.lines.ended(&mut self.ready);
                    self.chunks_reported = false;
                    // A descriptor opened now reads as ended only after a writer comes and
                    // goes again; opened before the old one closes, the FIFO always has a
                    // reader, so no writer is refused meanwhile.
                    let fresh = open_fifo(&self.endpoint, &self.path, OFlags::RDONLY)
                        .map_err(std::io::Error::other)?;
                    return Ok(Read::Ended(fresh));
                }
                Ok(n) => {
                    let read = &self.buf[..n];
                    let chunk = read.len() >= HEADER && ChunkHeader::decode(read).is_some();
                    if chunk && !std::mem::replace(&mut self.chunks_reported, true) {
                        // A client of the default framing: its chunks make no sense as
                        // lines, and its author would not know why.
                        log::warn!(
                            "{}: an ipckit client of the default framing writes into this line-framed FIFO, and its chunks are taken as lines; connect with ?framing=line",
                            self.url
                        );
                    }
                    self.lines.push(&self.url, read, &mut self.ready);
                    return Ok(Read::Some);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The blocking server of a line-framed FIFO. It waits in `poll` on the FIFO and an
/// eventfd for its waker, as no chunk can be written into a FIFO of plain lines to end a
/// blocking read.
pub(super) struct LineListener {
    reader: LineReader,
    fd: OwnedFd,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
}

impl LineListener {
    pub(super) fn new(endpoint: &Endpoint) -> Result<LineListener> {
        let (reader, fd) = LineReader::open(endpoint)?;
        let wake = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
            .map_err(|e| Error::io(endpoint, "making the server's waker", e.into()))?;
        Ok(LineListener {
            reader,
            fd,
            wake: Arc::new(wake),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Waits until the FIFO or the waker is ready, or `deadline` passes; false then.
    fn wait(&self, deadline: Option<Instant>) -> Result<bool> {
        let mut fds = [
            PollFd::new(&self.fd, PollFlags::IN),
            PollFd::new(&*self.wake, PollFlags::IN),
        ];
        let ready = crate::sys::poll_until(&mut fds, deadline)
            .map_err(|e| Error::io(&*self.reader.url, "waiting for lines", e))?;
        if ready && !fds[1].revents().is_empty() {
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&*self.wake, &mut count);
        }
        Ok(ready)
    }
}

impl Listener for LineListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        loop {
            if let Some(message) = self.reader.next() {
                return Ok(Some(message));
            }
            if self.stop.swap(false, Ordering::AcqRel) || !self.wait(deadline)? {
                return Ok(None);
            }
            if self.stop.load(Ordering::Acquire) {
                continue;
            }
            match self.reader.read(self.fd.as_fd()) {
                Ok(Read::Some) => {}
                Ok(Read::Ended(fresh)) => self.fd = fresh,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::io(&*self.reader.url, "reading", e)),
            }
        }
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let (stop, wake) = (self.stop.clone(), self.wake.clone());
        Arc::new(move || {
            stop.store(true, Ordering::Release);
            let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.reader.endpoint
    }
}

crate::transport::sealed!(LineConnection, LineListener);

/// The same client and server driven by tokio.
#[cfg(feature = "tokio")]
pub(super) mod on_tokio {
    use std::future::poll_fn;
    use std::task::{Poll, ready};

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    use super::*;
    use crate::transport::{AsyncConnection, AsyncListener, BoxFuture, reactor};

    pub(in crate::transport::fifo) struct AsyncLineConnection {
        endpoint: Endpoint,
        url: String,
        fd: AsyncFd<OwnedFd>,
        /// Held for a whole line, so that one client's long lines do not interleave.
        writing: tokio::sync::Mutex<()>,
        max: usize,
        send_timeout: Duration,
    }

    impl AsyncLineConnection {
        pub(in crate::transport::fifo) fn new(endpoint: &Endpoint) -> Result<AsyncLineConnection> {
            let url = endpoint.to_string();
            let fd = open_fifo(endpoint, fifo_path(endpoint), OFlags::WRONLY)?;
            Ok(AsyncLineConnection {
                fd: reactor::register(&url, fd, Interest::WRITABLE)?,
                endpoint: endpoint.clone(),
                url,
                writing: tokio::sync::Mutex::new(()),
                max: endpoint.max_message(),
                send_timeout: endpoint.send_timeout(),
            })
        }

        /// Dropped before it completes, a line of at most PIPE_BUF bytes is written whole
        /// or not at all; a longer one may be cut, and the server then takes what follows
        /// as its rest.
        async fn send(&self, payload: &[u8]) -> Result<()> {
            check_line(&self.url, self.max, payload)?;
            let line = [payload, b"\n"].concat();
            let mut rest = &line[..];
            let _writing = self.writing.lock().await;
            let patience = self.send_timeout;
            let written = async {
                while !write_some(&self.url, self.fd.get_ref().as_fd(), &mut rest)? {
                    self.fd
                        .writable()
                        .await
                        .map_err(|e| Error::io(&*self.url, "waiting for room in the pipe", e))?
                        .clear_ready();
                }
                Ok(())
            };
            tokio::time::timeout(patience, written)
                .await
                .map_err(|_| pipe_full(&self.url, patience))?
        }
    }

    impl AsyncConnection for AsyncLineConnection {
        fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
            Box::pin(AsyncLineConnection::send(self, payload))
        }

        fn request<'a>(&'a self, _: &'a [u8], _: Duration) -> BoxFuture<'a, Result<Vec<u8>>> {
            Box::pin(std::future::ready(Err(one_way(&self.url))))
        }

        fn max_message(&self) -> usize {
            self.max
        }

        fn endpoint(&self) -> &Endpoint {
            &self.endpoint
        }
    }

    pub(in crate::transport::fifo) struct AsyncLineListener {
        reader: LineReader,
        fd: AsyncFd<OwnedFd>,
    }

    impl AsyncLineListener {
        pub(in crate::transport::fifo) fn new(endpoint: &Endpoint) -> Result<AsyncLineListener> {
            let (reader, fd) = LineReader::open(endpoint)?;
            Ok(AsyncLineListener {
                fd: reactor::register(&reader.url, fd, Interest::READABLE)?,
                reader,
            })
        }
    }

    impl AsyncListener for AsyncLineListener {
        /// Cancel-safe: lines read but not returned wait for the next call.
        fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
            Box::pin(poll_fn(move |cx| {
                loop {
                    if let Some(message) = self.reader.next() {
                        return Poll::Ready(Ok(message));
                    }
                    let reader = &mut self.reader;
                    let read = reactor::poll_read(&self.fd, cx, |fd| reader.read(fd.as_fd()));
                    match ready!(read) {
                        Ok(Read::Some) => {}
                        Ok(Read::Ended(fresh)) => {
                            self.fd =
                                reactor::register(&self.reader.url, fresh, Interest::READABLE)?;
                        }
                        Err(e) => {
                            let url = &self.reader.url;
                            return Poll::Ready(Err(Error::io(&**url, "reading", e)));
                        }
                    }
                }
            }))
        }

        fn endpoint(&self) -> &Endpoint {
            &self.reader.endpoint
        }
    }

    crate::transport::sealed!(AsyncLineConnection, AsyncLineListener);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(max: usize, reads: &[&[u8]], end: bool) -> Vec<Vec<u8>> {
        let mut lines = Lines::new(max);
        let mut out = VecDeque::new();
        for read in reads {
            lines.push("fifo:///test", read, &mut out);
        }
        if end {
            lines.ended(&mut out);
        }
        out.into()
    }

    #[test]
    fn lines_across_reads() {
        let got = cut(10, &[b"one\ntw", b"o\n\nthr", b"ee"], false);
        assert_eq!(got, [&b"one"[..], b"two", b""]);
        let got = cut(10, &[b"one\ntw", b"o\n\nthr", b"ee"], true);
        assert_eq!(got, [&b"one"[..], b"two", b"", b"three"]);
    }

    /// However the pipe's bytes are cut into reads, the lines within the limit come out
    /// as written, and the others not at all.
    #[test]
    fn lines_survive_any_cutting() {
        let mut rng = fastrand::Rng::with_seed(18);
        for _ in 0..200 {
            let max = rng.usize(0..40);
            let written: Vec<Vec<u8>> = (0..rng.usize(0..30))
                .map(|_| {
                    let len = rng.usize(0..60);
                    (0..len).map(|_| rng.alphanumeric() as u8).collect()
                })
                .collect();
            let mut pipe = written.join(&b'\n');
            let ended = rng.bool();
            if ended && !written.is_empty() {
                pipe.push(b'\n');
            }
            let mut reads = Vec::new();
            let mut rest = &pipe[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len());
                reads.push(&rest[..n]);
                rest = &rest[n..];
            }
            // Every line within the limit, but an empty last one without its newline,
            // which is no line.
            let last = written.len().saturating_sub(1);
            let expected: Vec<Vec<u8>> = written
                .iter()
                .enumerate()
                .filter(|(i, line)| line.len() <= max && (ended || *i < last || !line.is_empty()))
                .map(|(_, line)| line.clone())
                .collect();
            let got = cut(max, &reads, true);
            assert_eq!(
                got,
                expected,
                "max {max}, pipe {:?}",
                String::from_utf8_lossy(&pipe)
            );
        }
    }

    /// A line over the limit is dropped to its newline, however it is cut, and holds
    /// no more than the limit meanwhile; the lines around it arrive.
    #[test]
    fn over_long_lines_dropped() {
        let got = cut(4, &[b"ok\n12345", b"678\nfour\nfive5\n", b"last"], true);
        assert_eq!(got, [&b"ok"[..], b"four", b"last"]);
        let got = cut(4, &[b"12345"], true);
        assert!(got.is_empty(), "{got:?}");
    }
}
