//! A client's inbound FIFO, made at connect: the server writes both the replies to its
//! requests and its pushes there, pushes marked [`PUSH`]. One thread at a time reads it
//! (a pipe's reads may cut a chunk between two readers); whatever it reads that another
//! caller waits for, a reply by its `seq` or a push, it leaves in the shared state for
//! that caller.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustix::fs::OFlags;

use super::chunk::{BYE, CONTROL, HELLO, PUSH, Reassembly, WELCOME, Whole, WriterId, next_writer};
use super::{fifo_path, mkfifo, open_fifo, reply_path};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::sys::lock;

/// The size a client asks the kernel for its inbound pipe (where refused, 64 KiB).
const INBOX_PIPE_SIZE: usize = 256 * 1024;

/// What a caller waits for.
#[derive(Clone, Copy)]
pub(super) enum Want {
    /// The answer to the request of this `seq` (or its time-out).
    Reply(u32),
    /// The next push.
    Push,
}

/// What a caller waited for.
pub(super) enum Taken {
    Reply(Whole),
    Push(Vec<u8>),
}

#[derive(Default)]
pub(super) struct InboxState {
    /// Requests waiting, by `seq`, and their answers once read. A reply to a request no
    /// longer here (it timed out, its caller gave up) is dropped as it is read.
    replies: HashMap<u32, Option<Whole>>,
    pushes: VecDeque<Vec<u8>>,
    /// The server closed the way (said goodbye, stopped or died).
    pub(super) closed: bool,
    /// A thread is reading the FIFO.
    pub(super) reading: bool,
    /// Threads waiting for the reader to leave them something.
    pub(super) waiting: usize,
    /// The client's own writing end, held until the server has opened the FIFO (its
    /// welcome): until then, no writer would read as the server gone.
    placeholder: Option<OwnedFd>,
}

impl InboxState {
    pub(super) fn take(&mut self, want: Want) -> Option<Taken> {
        match want {
            Want::Reply(seq) => self.replies.get_mut(&seq)?.take().map(Taken::Reply),
            Want::Push => self.pushes.pop_front().map(Taken::Push),
        }
    }

    /// Whether the server has not said welcome yet.
    pub(super) fn unwelcomed(&self) -> bool {
        self.placeholder.is_some()
    }
}

pub(super) struct Inbox {
    pub(super) url: String,
    /// The writer id every message of this client goes under; it names the FIFO.
    pub(super) writer: WriterId,
    pub(super) path: Arc<PathBuf>,
    /// The FIFO, for reading (blocking on the blocking side).
    pub(super) fd: Arc<OwnedFd>,
    pub(super) state: Mutex<InboxState>,
    /// Held by the one thread reading.
    pub(super) reader: Mutex<Reassembly>,
    max: usize,
}

impl Inbox {
    /// Makes the client's FIFO beside the server's, named after a new writer id.
    pub(super) fn open(endpoint: &Endpoint) -> Result<Inbox> {
        let writer = next_writer();
        let path = reply_path(fifo_path(endpoint), writer);
        mkfifo(endpoint, &path, 0o600)?;
        let opened = (|| {
            // Read-only, so that the end of every writer reads as the server gone.
            let fd = open_fifo(endpoint, &path, OFlags::RDONLY)?;
            // The outbox the server pushes into: large enough that a reader that a busy
            // machine schedules late takes many messages per wake-up; small enough that
            // many clients stay within the kernel's per-user pipe allowance.
            let _ = rustix::pipe::fcntl_setpipe_size(&fd, INBOX_PIPE_SIZE);
            let placeholder = open_fifo(endpoint, &path, OFlags::WRONLY)?;
            Ok::<_, Error>((fd, placeholder))
        })();
        let (fd, placeholder) = opened.inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
        Ok(Inbox {
            url: endpoint.to_string(),
            writer,
            path: Arc::new(path),
            fd: Arc::new(fd),
            state: Mutex::new(InboxState {
                placeholder: Some(placeholder),
                ..InboxState::default()
            }),
            reader: Mutex::new(Reassembly::new(endpoint.max_message())),
            max: endpoint.max_message(),
        })
    }

    /// The hello that announces this client to the server.
    pub(super) fn hello(&self) -> Vec<u8> {
        let max = u32::try_from(self.max).unwrap_or(u32::MAX);
        super::chunk::control_chunk(HELLO, self.writer, &max.to_le_bytes())
    }

    /// The goodbye that takes this client off the server's list.
    pub(super) fn bye(&self) -> Vec<u8> {
        super::chunk::control_chunk(BYE, self.writer, &[])
    }

    /// Makes the reply to request `seq` wanted, before the request is written.
    pub(super) fn expect(&self, seq: u32) {
        lock(&self.state).replies.insert(seq, None);
    }

    /// Lets a reply to `seq` that comes later be dropped.
    pub(super) fn forget(&self, seq: u32) {
        lock(&self.state).replies.remove(&seq);
    }

    /// Moves everything whole in `read` to where its caller takes it; `eof` when the read
    /// found no writer left.
    pub(super) fn dispatch(&self, read: &mut Reassembly, state: &mut InboxState, eof: bool) {
        while let Some(whole) = read.next(&self.url) {
            if whole.flags & CONTROL != 0 {
                match whole.seq {
                    WELCOME => state.placeholder = None,
                    BYE => state.closed = true,
                    _ => {}
                }
                continue;
            }
            if whole.flags & PUSH != 0 {
                match whole.oversize {
                    Some(size) => log::warn!(
                        "{}: the server pushed a message of {size} bytes, over this client's max_message of {}; dropped",
                        self.url,
                        self.max
                    ),
                    None => state.pushes.push_back(whole.payload),
                }
                continue;
            }
            if let Some(slot @ None) = state.replies.get_mut(&whole.seq) {
                *slot = Some(whole);
            }
        }
        if eof {
            state.closed = true;
        }
    }

    pub(super) fn server_gone(&self) -> Error {
        Error::Disconnected {
            endpoint: self.url.clone(),
            detail: "the server closed this client's FIFO: it stopped, or disconnected this client"
                .into(),
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&*self.path);
    }
}

impl AsFd for Inbox {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
