//! The client: messages into the server's FIFO, and what the server writes back (replies
//! and pushes) out of the client's inbound FIFO.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};

use super::chunk::{
    ChunkHeader, HEADER, REFUSED, REQUEST, SigpipeBlocked, TIMED_OUT, Whole, WriterId, pipe_full,
    write_message, write_pipe,
};
use super::inbox::{Inbox, Taken, Want};
use super::{check_size, fifo_path, open_fifo};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::sys::{poll_until, wait_ready};
use crate::transport::Connection;

/// Ends a client's blocking read at its request's deadline. A pipe has no receive
/// timeout, and polling before every read would cost a syscall per request; instead the
/// keeper, one thread per process started on first use, writes a [`TIMED_OUT`] chunk into
/// the inbound FIFO of a request still waiting at its deadline (opening it for that
/// moment only: a writer held open would hide the server's going). Registering and cancelling
/// take a mutex and make no syscall; the thread is woken only for a deadline earlier than
/// the one it sleeps until, which a caller that keeps using one timeout never asks for.
pub(super) struct DeadlineKeeper {
    state: Mutex<KeeperState>,
    earlier: std::sync::Condvar,
}

#[derive(Default)]
pub(super) struct KeeperState {
    pending: Vec<Pending>,
    /// The deadline the thread sleeps until; `None` while it waits for work.
    sleeping_until: Option<Instant>,
    next_ticket: u64,
}

pub(super) struct Pending {
    ticket: u64,
    deadline: Instant,
    path: Arc<PathBuf>,
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
    fn register(&self, deadline: Instant, path: Arc<PathBuf>, seq: u32) -> u64 {
        let mut state = crate::sys::lock(&self.state);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.pending.push(Pending {
            ticket,
            deadline,
            path,
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
                // A full pipe means a reply is being read; the request is answered. A FIFO
                // gone means its client is.
                let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
                if let Ok(fd) = rustix::fs::open(&**p.path, flags, Mode::empty()) {
                    let _ = rustix::io::write(&fd, &chunk);
                }
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

/// The answer to request `seq` among the replies read, if it came: `None` for a message
/// that answers (or times out) an earlier request.
pub(super) fn answer(
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

pub(super) struct FifoConnection {
    endpoint: Endpoint,
    url: String,
    /// The server's FIFO, for writing.
    fd: OwnedFd,
    /// The writer id and the last message number; locked for a whole message, since the
    /// server puts a writer's chunks together one message at a time.
    sender: Mutex<(WriterId, u32)>,
    inbox: Inbox,
    /// Wakes the threads waiting for what the reader of the inbox read for them.
    turn: Condvar,
    /// The endpoint's options, read once.
    max: usize,
    send_timeout: Duration,
}

impl FifoConnection {
    pub(super) fn new(endpoint: &Endpoint) -> Result<FifoConnection> {
        let fd = open_fifo(endpoint, fifo_path(endpoint), OFlags::WRONLY)?;
        let inbox = Inbox::open(endpoint)?;
        let url = endpoint.to_string();
        let send_timeout = endpoint.send_timeout();
        write_pipe_whole(&url, fd.as_fd(), &inbox.hello(), send_timeout)?;
        // Reads block from here on, as a hand-written reader's do.
        rustix::fs::fcntl_setfl(&*inbox.fd, OFlags::RDONLY)
            .map_err(|e| Error::io(&url, "making the inbound FIFO blocking", e.into()))?;
        Ok(FifoConnection {
            endpoint: endpoint.clone(),
            url,
            fd,
            sender: Mutex::new((inbox.writer, 0)),
            inbox,
            turn: Condvar::new(),
            max: endpoint.max_message(),
            send_timeout,
        })
    }

    fn check_size(&self, payload: &[u8]) -> Result<()> {
        check_size(&self.url, self.max, payload)
    }

    /// Writes one message under the next `seq`, which it returns; a request's reply is
    /// expected before anything is written, as another thread may read it first.
    fn write(&self, payload: &[u8], flags: u8) -> Result<u32> {
        let mut sender = crate::sys::lock(&self.sender);
        // 0 is the keeper's wake-up of a `recv`, never a request's.
        sender.1 = sender.1.checked_add(1).unwrap_or(1);
        let (writer, seq) = *sender;
        let request = flags & REQUEST != 0;
        if request {
            self.inbox.expect(seq);
        }
        let id = (writer, seq, flags);
        let written = write_message(&self.url, self.fd.as_fd(), id, payload, self.send_timeout);
        if written.is_err() && request {
            self.inbox.forget(seq);
        }
        written.map(|()| seq)
    }

    /// Waits until `deadline` for what `want` names, reading the inbox when no other
    /// thread does.
    fn wait(&self, want: Want, deadline: Option<Instant>) -> Result<Option<Taken>> {
        let mut state = crate::sys::lock(&self.inbox.state);
        loop {
            if let Some(taken) = state.take(want) {
                return Ok(Some(taken));
            }
            if state.closed {
                return Err(self.inbox.server_gone());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if state.reading {
                state.waiting += 1;
                state = match deadline {
                    None => self.turn.wait(state).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => {
                        let waited = self.turn.wait_timeout(state, d - now);
                        waited.unwrap_or_else(|e| e.into_inner()).0
                    }
                };
                state.waiting -= 1;
                continue;
            }
            state.reading = true;
            let unwelcomed = state.unwelcomed();
            drop(state);
            // A push's deadline is kept as a request's is, by the keeper, so that each
            // wake-up costs one read rather than a poll and a read.
            let keeper = match (want, deadline) {
                (Want::Push, Some(d)) if !unwelcomed => {
                    let keeper = DeadlineKeeper::get();
                    Some((keeper, keeper.register(d, self.inbox.path.clone(), 0)))
                }
                _ => None,
            };
            let read = self.read(deadline, unwelcomed);
            if let Some((keeper, ticket)) = keeper {
                keeper.cancel(ticket);
            }
            state = crate::sys::lock(&self.inbox.state);
            state.reading = false;
            if state.waiting > 0 {
                self.turn.notify_all();
            }
            if let Err(e) = read {
                state.closed = true;
                return Err(e);
            }
        }
    }

    /// One read of the inbox, whose whole messages go where their callers take them.
    fn read(&self, deadline: Option<Instant>, unwelcomed: bool) -> Result<()> {
        let mut reader = crate::sys::lock(&self.inbox.reader);
        let fd = self.inbox.fd.as_fd();
        if unwelcomed {
            // Before the welcome, a server that died is seen only by polling its FIFO.
            let mut fds = [
                PollFd::new(&fd, PollFlags::IN),
                PollFd::new(&self.fd, PollFlags::empty()),
            ];
            let soon = Instant::now() + super::REAP_INTERVAL;
            let waited = Some(deadline.map_or(soon, |d| d.min(soon)));
            poll_until(&mut fds, waited)
                .map_err(|e| Error::io(&self.url, "waiting for the server", e))?;
            if fds[1].revents().intersects(PollFlags::ERR | PollFlags::HUP) {
                crate::sys::lock(&self.inbox.state).closed = true;
            }
            if fds[0].revents().is_empty() {
                return Ok(());
            }
        }
        let read = reader
            .read(fd)
            .map_err(|e| Error::io(&self.url, "reading the inbound FIFO", e))?;
        let mut state = crate::sys::lock(&self.inbox.state);
        self.inbox
            .dispatch(&mut reader, &mut state, read == Some(0));
        Ok(())
    }
}

impl Drop for FifoConnection {
    fn drop(&mut self) {
        // Best effort: a server that misses it sees the inbound FIFO go unread.
        let sigpipe = SigpipeBlocked::new();
        let _ = write_pipe(&self.url, self.fd.as_fd(), &self.inbox.bye(), &sigpipe);
    }
}

/// Writes `bytes` (one chunk) to a non-blocking pipe, waiting up to `patience` for room.
pub(super) fn write_pipe_whole(
    url: &str,
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    patience: Duration,
) -> Result<()> {
    let sigpipe = SigpipeBlocked::new();
    let deadline = Instant::now() + patience;
    while write_pipe(url, fd, bytes, &sigpipe)?.is_none() {
        let room = wait_ready(fd, PollFlags::OUT, Some(deadline))
            .map_err(|e| Error::io(url, "waiting for room in the pipe", e))?;
        if !room {
            return Err(pipe_full(url, patience));
        }
    }
    Ok(())
}

impl Connection for FifoConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.check_size(payload)?;
        self.write(payload, 0).map(drop)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.check_size(payload)?;
        let deadline = Instant::now() + timeout;
        let seq = self.write(payload, REQUEST)?;
        let keeper = DeadlineKeeper::get();
        let ticket = keeper.register(deadline, self.inbox.path.clone(), seq);
        let waited = self.wait(Want::Reply(seq), Some(deadline));
        keeper.cancel(ticket);
        self.inbox.forget(seq);
        let timed_out = || Error::Timeout {
            endpoint: self.url.clone(),
            after: timeout,
        };
        match waited? {
            Some(Taken::Reply(reply)) => {
                answer(&self.url, reply, seq, timeout, self.max).unwrap_or_else(|| Err(timed_out()))
            }
            _ => Err(timed_out()),
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        match self.wait(Want::Push, deadline)? {
            Some(Taken::Push(payload)) => Ok(Some(payload)),
            _ => Ok(None),
        }
    }

    fn max_message(&self) -> usize {
        self.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}
