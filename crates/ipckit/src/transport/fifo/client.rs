//! The client: one-way messages into the server's FIFO, and requests whose replies come
//! back through a reply FIFO of the client's own.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::fs::OFlags;

use super::chunk::{
    ChunkHeader, HEADER, REFUSED, REQUEST, Reassembly, TIMED_OUT, Whole, WriterId, next_writer,
    write_message,
};
use super::{check_size, fifo_path, mkfifo, open_fifo, reply_path};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::transport::Connection;
use crate::transport::pool::Pool;

/// Ends a client's blocking read at its request's deadline. A pipe has no receive
/// timeout, and polling before every read would cost a syscall per request; instead the
/// keeper, one thread per process started on first use, writes a [`TIMED_OUT`] chunk into
/// the reply FIFO of a request still waiting at its deadline. Registering and cancelling
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

/// A new writer id and its reply FIFO beside the server's, open for reading and writing
/// (so that it never reads as ended) and non-blocking.
pub(super) fn make_reply_fifo(endpoint: &Endpoint) -> Result<(WriterId, PathBuf, OwnedFd)> {
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

pub(super) struct FifoConnection {
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
    pub(super) fn new(endpoint: &Endpoint) -> Result<FifoConnection> {
        let fd = open_fifo(endpoint, fifo_path(endpoint), OFlags::WRONLY)?;
        Ok(FifoConnection {
            endpoint: endpoint.clone(),
            url: endpoint.to_string(),
            fd,
            sender: Mutex::new((next_writer(), 0)),
            channels: Pool::new(),
            max: endpoint.max_message(),
            send_timeout: endpoint.send_timeout(),
        })
    }

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
