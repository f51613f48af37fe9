//! The server's way to each client: the client's inbound FIFO, which carries both its
//! replies and the server's pushes, and the watcher that notices a client whose FIFO
//! nobody reads any more.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use super::chunk::{
    BYE, CHUNK, CHUNK_DATA, Chunks, GONE, HEADER, PUSH, REFUSED, SigpipeBlocked, WriterId,
    control_chunk, pipe_full, write_chunk, write_pipe,
};
use crate::error::{Error, Result};
use crate::message::ReplySink;
use crate::push::Outbox;
use crate::sys::{lock, poll_until, wait_ready};

/// The writer id of everything a server writes into its clients' FIFOs.
pub(super) fn server_writer() -> WriterId {
    (std::process::id(), 0)
}

/// The bytes a message of `len` bytes takes in a pipe, as chunks.
fn encoded_len(len: usize) -> usize {
    let data = len + 4;
    data + data.div_ceil(CHUNK_DATA).max(1) * HEADER
}

/// One client's inbound FIFO, open for writing. Its pipe buffer is the client's outbox:
/// what the client has not read yet, up to the pipe's size (64 KiB unless the client
/// raised it).
pub(super) struct FifoOutbox {
    url: Arc<str>,
    /// `None` for a client that had gone by the time its hello was read.
    pub(super) fd: Option<Arc<OwnedFd>>,
    /// Held for a whole message: pushes and replies go under one writer id, so the chunks
    /// of two messages must never interleave.
    write: Mutex<()>,
    closed: AtomicBool,
    /// A push found no room: the outbox counts as full, whatever small message might
    /// still squeeze in, until the client has read half of the pipe.
    full: AtomicBool,
    /// Disconnected while full: the goodbye waits for room, which the watcher waits for.
    bye_owed: AtomicBool,
    watched: OnceLock<Weak<Watched>>,
    /// The client's `max_message`, from its hello.
    max: usize,
    pipe_size: usize,
    /// [`server_writer`], asked once: getpid is a syscall.
    writer: WriterId,
    /// How long a message already partly in the pipe may wait for room for its rest before
    /// the client is disconnected: a half-written message would hold its reader forever.
    stall: Duration,
}

impl FifoOutbox {
    pub(super) fn new(
        url: Arc<str>,
        fd: Option<OwnedFd>,
        max: usize,
        stall: Duration,
    ) -> FifoOutbox {
        let pipe_size = fd
            .as_ref()
            .and_then(|fd| rustix::pipe::fcntl_getpipe_size(fd).ok())
            .unwrap_or(CHUNK * 16);
        FifoOutbox {
            url,
            fd: fd.map(Arc::new),
            write: Mutex::new(()),
            closed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            bye_owed: AtomicBool::new(false),
            watched: OnceLock::new(),
            max,
            pipe_size,
            writer: server_writer(),
            stall,
        }
    }

    fn gone(&self, detail: &str) -> Error {
        Error::Disconnected {
            endpoint: self.url.to_string(),
            detail: detail.to_owned(),
        }
    }

    /// Writes one message whole, or nothing if there is no room within `patience`; a
    /// message begun is finished, or the client disconnected.
    fn write_whole(&self, flags: u8, seq: u32, payload: &[u8], patience: Duration) -> Result<()> {
        let _turn = lock(&self.write);
        let Some(fd) = self
            .fd
            .as_deref()
            .filter(|_| !self.closed.load(Ordering::Acquire))
        else {
            return Err(self.gone("the client has gone, or was disconnected"));
        };
        let fd = fd.as_fd();
        let size = encoded_len(payload.len());
        if self.full.load(Ordering::Relaxed) {
            // Counted in bytes: a pipe whose pages are partly used may refuse even a small
            // chunk, which then finds it full again.
            self.wait_for_room(fd, self.pipe_size / 2, patience)?;
            self.full.store(false, Ordering::Relaxed);
        }
        if size > CHUNK && size + CHUNK <= self.pipe_size {
            // Begun only once all of it fits, so that a client that stopped reading costs
            // a broadcast nothing and holds no message half-written.
            self.wait_for_room(fd, size + CHUNK, patience)?;
        }
        let sigpipe = SigpipeBlocked::new();
        let mut chunks = Chunks::new((self.writer, seq, flags), payload);
        let mut first = true;
        while let Some(chunk) = chunks.next_chunk() {
            let mut deadline = None;
            loop {
                match write_chunk(&self.url, fd, chunk, &sigpipe) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        if let Error::Disconnected { .. } = e {
                            self.closed.store(true, Ordering::Release);
                        }
                        return Err(e);
                    }
                }
                let wait = if first {
                    patience
                } else {
                    self.stall.max(patience)
                };
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
                let room = wait_ready(fd, PollFlags::OUT, Some(deadline)).map_err(|e| {
                    Error::io(&*self.url, "waiting for room in the client's FIFO", e)
                })?;
                if room {
                    continue;
                }
                if first {
                    self.full.store(true, Ordering::Relaxed);
                    return Err(pipe_full(&self.url, patience));
                }
                self.close(fd);
                return Err(self.gone(&format!(
                    "the client read nothing of a message half-written into its FIFO for {wait:?}; it was disconnected"
                )));
            }
            first = false;
        }
        Ok(())
    }

    /// Waits up to `patience` until the pipe has room for `size` bytes.
    fn wait_for_room(&self, fd: BorrowedFd<'_>, size: usize, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let unread = rustix::io::ioctl_fionread(fd)
                .map_err(|e| Error::io(&*self.url, "measuring the client's FIFO", e.into()))?;
            if self.pipe_size.saturating_sub(unread as usize) >= size {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(pipe_full(&self.url, patience));
            }
            // The pipe says when a chunk fits, not when a message does: look again soon.
            std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
        }
    }

    /// Marks the client gone and tells it so; where its FIFO has no room for that (it
    /// was disconnected for not reading), the watcher does once it has.
    fn close(&self, fd: BorrowedFd<'_>) {
        self.closed.store(true, Ordering::Release);
        if !self.say_bye(fd) {
            self.bye_owed.store(true, Ordering::Release);
            if let Some(watched) = self.watched.get().and_then(Weak::upgrade) {
                watched.wake();
            }
        }
    }

    /// Writes the goodbye; false when the FIFO has no room for it.
    fn say_bye(&self, fd: BorrowedFd<'_>) -> bool {
        let sigpipe = SigpipeBlocked::new();
        let bye = control_chunk(BYE, self.writer, &[]);
        !matches!(write_pipe(&self.url, fd, &bye, &sigpipe), Ok(None))
    }
}

impl Outbox for FifoOutbox {
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        if payload.len() > self.max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.to_string(),
                size: payload.len(),
                max: self.max,
                limit: "the client's max_message".into(),
            });
        }
        self.write_whole(PUSH, 0, payload, patience)
    }

    fn disconnect(&self) {
        let _turn = lock(&self.write);
        match &self.fd {
            Some(fd) if !self.closed.load(Ordering::Acquire) => self.close(fd.as_fd()),
            _ => self.closed.store(true, Ordering::Release),
        }
    }
}

impl ReplySink for FifoOutbox {
    /// `id` is the request's message number, which the reply carries back.
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        let flags = if ok { 0 } else { REFUSED };
        self.write_whole(flags, id as u32, payload, super::REPLY_SEND_TIMEOUT)
    }
}

/// Notices clients that no longer read their FIFO (they crashed, or left without a word)
/// and says so in the server's own FIFO, as a [`GONE`] chunk its loop reads like any
/// other: a pipe has no other way to wake a reader blocked in `read`. One thread per
/// server with clients, asleep in `poll` but when a client comes or goes; no message
/// passes through it.
pub(super) struct Watcher {
    shared: Arc<Watched>,
}

struct Watched {
    url: Arc<str>,
    clients: Mutex<Vec<(WriterId, Arc<FifoOutbox>)>>,
    /// An eventfd that wakes the thread when a client is added or the server stops.
    nudge: OwnedFd,
    stop: AtomicBool,
    /// The server's FIFO, for writing.
    server: Arc<OwnedFd>,
}

impl Watcher {
    pub(super) fn start(url: Arc<str>, server: Arc<OwnedFd>) -> Result<Watcher> {
        let nudge = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::io(&*url, "making the client watcher's eventfd", e.into()))?;
        let shared = Arc::new(Watched {
            url,
            clients: Mutex::new(Vec::new()),
            nudge,
            stop: AtomicBool::new(false),
            server,
        });
        std::thread::Builder::new()
            .name("ipckit fifo clients".into())
            .spawn({
                let shared = shared.clone();
                move || shared.run()
            })
            .map_err(|e| Error::io(&*shared.url, "starting the client watcher", e))?;
        Ok(Watcher { shared })
    }

    /// Watches the inbound FIFO of the client `writer`, which `outbox` holds open.
    pub(super) fn watch(&self, writer: WriterId, outbox: Arc<FifoOutbox>) {
        let _ = outbox.watched.set(Arc::downgrade(&self.shared));
        lock(&self.shared.clients).push((writer, outbox));
        self.shared.wake();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
    }
}

impl Watched {
    fn wake(&self) {
        let _ = rustix::io::write(&self.nudge, &1u64.to_ne_bytes());
    }

    fn run(&self) {
        while !self.stop.load(Ordering::Acquire) {
            let watched = lock(&self.clients).clone();
            let mut fds = Vec::with_capacity(watched.len() + 1);
            fds.push(PollFd::new(&self.nudge, PollFlags::IN));
            // A pipe's writing end reports POLLERR, asked or not, once nobody reads.
            // A goodbye owed waits for room.
            fds.extend(watched.iter().filter_map(|(_, outbox)| {
                let fd = outbox.fd.as_deref()?;
                let owed = outbox.bye_owed.load(Ordering::Acquire);
                Some(PollFd::new(
                    fd,
                    if owed {
                        PollFlags::OUT
                    } else {
                        PollFlags::empty()
                    },
                ))
            }));
            if poll_until(&mut fds, None).is_err() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            if !fds[0].revents().is_empty() {
                let _ = rustix::io::read(&self.nudge, &mut [0u8; 8]);
            }
            let watched: Vec<_> = watched.iter().filter(|(_, o)| o.fd.is_some()).collect();
            for ((_, outbox), fd) in watched.iter().zip(&fds[1..]) {
                if fd.revents().contains(PollFlags::OUT) {
                    let fd = outbox.fd.as_deref().expect("watched").as_fd();
                    let _turn = lock(&outbox.write);
                    if outbox.say_bye(fd) {
                        outbox.bye_owed.store(false, Ordering::Release);
                    }
                }
            }
            let gone: Vec<WriterId> = watched
                .iter()
                .zip(&fds[1..])
                .filter(|(_, fd)| fd.revents().intersects(PollFlags::ERR | PollFlags::HUP))
                .map(|((writer, _), _)| *writer)
                .collect();
            drop(fds);
            if gone.is_empty() {
                continue;
            }
            lock(&self.clients).retain(|(writer, _)| !gone.contains(writer));
            for writer in gone {
                if !self.report(writer) {
                    return;
                }
            }
        }
    }

    /// Writes a [`GONE`] chunk for `writer` into the server's FIFO; false once the server
    /// has stopped.
    fn report(&self, writer: WriterId) -> bool {
        let chunk = control_chunk(GONE, writer, &[]);
        let sigpipe = SigpipeBlocked::new();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            match write_pipe(&self.url, self.server.as_fd(), &chunk, &sigpipe) {
                Ok(Some(_)) => return true,
                Ok(None) => {
                    // A busy server: it reads, and makes room, soon.
                    let soon = Instant::now() + Duration::from_millis(100);
                    let _ = wait_ready(self.server.as_fd(), PollFlags::OUT, Some(soon));
                }
                Err(_) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_counts_every_chunk_header() {
        let mut chunks = Chunks::new(((1, 1), 1, 0), &[7u8; 3 * CHUNK_DATA]);
        let mut total = 0;
        while let Some(chunk) = chunks.next_chunk() {
            total += chunk.len();
        }
        assert_eq!(encoded_len(3 * CHUNK_DATA), total);
        assert_eq!(encoded_len(0), HEADER + 4);
    }
}
