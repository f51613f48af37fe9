//! The server: reads its FIFO, puts messages back together, and answers requests and
//! pushes through its clients' inbound FIFOs.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;
use rustix::fs::OFlags;

use super::chunk::{
    BYE, CONTROL, ChunkHeader, GONE, HEADER, HELLO, REFUSED, REQUEST, Reassembly, SigpipeBlocked,
    WAKE, WELCOME, Whole, WriterId, control_chunk, write_message, write_pipe,
};
use super::outbox::{FifoOutbox, Watcher, server_writer};
use super::{REAP_INTERVAL, REPLY_SEND_TIMEOUT, open_fifo, remove_dead_reply_fifos, reply_path};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, Peer, ReplySink, ReplyTo};
use crate::push::{Broadcaster, ClientHandle, Event, Roster};
use crate::sys::wait_ready;
use crate::transport::Listener;
use crate::transport::Reclaim;
use crate::transport::endpoint_file::EndpointFile;

/// The reply FIFO of a writer that did not say hello (a client of an earlier version, or
/// of another language), opened when it first asks.
pub(super) struct FifoReplySink {
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

pub(super) struct FifoListener {
    pub(super) endpoint: Endpoint,
    pub(super) url: Arc<str>,
    pub(super) path: PathBuf,
    /// The FIFO, read blocking (or through tokio): a [`WAKE`] chunk or a writer's data
    /// ends the wait.
    pub(super) fd: Arc<OwnedFd>,
    pub(super) reassembly: Reassembly,
    /// What was read and not yet returned, in order: a client's `Connected` before its
    /// messages, its `Disconnected` after them.
    pub(super) events: VecDeque<Event>,
    pub(super) stop: Arc<AtomicBool>,
    /// The FIFO again, for writing wake chunks into it.
    pub(super) waker_fd: Arc<OwnedFd>,
    /// The sink of the last request, reused while requests come from the same writer.
    pub(super) last_sink: Option<Arc<FifoReplySink>>,
    /// A pipe says nothing about who wrote: every message has this same nobody.
    pub(super) anonymous: Arc<Peer>,
    pub(super) last_reap: Instant,
    pub(super) reclaim: Reclaim,
    pub(super) roster: Arc<Roster>,
    /// The clients that said hello, by their writer id.
    pub(super) clients: HashMap<WriterId, (ClientHandle, Arc<FifoOutbox>)>,
    /// Started with the first client.
    pub(super) watcher: Option<Watcher>,
    pub(super) _file: EndpointFile,
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

    /// Moves whole messages and clients' comings and goings into `events`; true when a
    /// wake chunk came.
    pub(super) fn deliver(&mut self) -> bool {
        let mut woken = false;
        while let Some(whole) = self.reassembly.next(&self.url) {
            if whole.flags & WAKE != 0 {
                woken = true;
                continue;
            }
            if whole.flags & CONTROL != 0 {
                self.control(whole);
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
            let client = self.clients.get(&whole.writer).cloned();
            let reply_to = (whole.flags & REQUEST != 0).then(|| {
                let sink: Arc<dyn ReplySink> = match &client {
                    Some((_, outbox)) => outbox.clone(),
                    None => self.sink_for(whole.writer),
                };
                ReplyTo::new(sink, whole.seq.into())
            });
            let message = Message::new(
                whole.payload,
                self.anonymous.clone(),
                reply_to,
                self.url.clone(),
            );
            self.events.push_back(Event::Message(match client {
                Some((handle, _)) => message.with_client(handle),
                None => message,
            }));
        }
        woken
    }

    fn control(&mut self, chunk: Whole) {
        match chunk.seq {
            HELLO => self.hello(chunk.writer, &chunk.payload),
            BYE => self.forget(chunk.writer, false),
            GONE => self.forget(chunk.writer, true),
            _ => {}
        }
    }

    /// A client made its inbound FIFO: the server opens it and welcomes the client.
    fn hello(&mut self, writer: WriterId, max: &[u8]) {
        if self.clients.contains_key(&writer) {
            return;
        }
        if self.reclaim.due() {
            remove_dead_reply_fifos(&self.path);
        }
        let path = reply_path(&self.path, writer);
        let max = match max.try_into() {
            Ok(max) => u32::from_le_bytes(max) as usize,
            Err(_) => self.endpoint.max_message(),
        };
        let send_timeout = self.endpoint.send_timeout();
        let sigpipe = SigpipeBlocked::new();
        let welcome = control_chunk(WELCOME, server_writer(), &[]);
        let fd = open_fifo(&self.endpoint, &path, OFlags::WRONLY)
            .ok()
            .filter(|fd| write_pipe(&self.url, fd.as_fd(), &welcome, &sigpipe).is_ok());
        let outbox = Arc::new(FifoOutbox::new(self.url.clone(), fd, max, send_timeout));
        match &outbox.fd {
            Some(_) => {
                if self.watcher.is_none() {
                    match Watcher::start(self.url.clone(), self.waker_fd.clone()) {
                        Ok(watcher) => self.watcher = Some(watcher),
                        Err(e) => {
                            log::warn!("{e}; a client that crashes is noticed by a push to it")
                        }
                    }
                }
                if let Some(watcher) = &self.watcher {
                    watcher.watch(writer, outbox.clone());
                }
            }
            None => {
                // Gone already (it left, or crashed, before its hello was read): still seen
                // coming, its messages with it, and going, after them. What it wrote is in
                // the pipe before this, and its goodbye, if it said one, too.
                let gone = control_chunk(GONE, writer, &[]);
                let _ = write_pipe(&self.url, self.waker_fd.as_fd(), &gone, &sigpipe);
            }
        }
        let handle = self.roster.join(self.anonymous.clone(), outbox.clone());
        self.clients.insert(writer, (handle.clone(), outbox));
        self.events.push_back(Event::Connected(handle));
    }

    /// A client left: it said goodbye, or its FIFO went unread (`crashed`: then the server
    /// removes the FIFO, as the client could not).
    fn forget(&mut self, writer: WriterId, crashed: bool) {
        let Some((handle, _)) = self.clients.remove(&writer) else {
            return;
        };
        if crashed {
            let _ = std::fs::remove_file(reply_path(&self.path, writer));
        }
        // Taken off the roster as the event is returned, not before: the server's list
        // agrees with the events it has seen.
        self.events.push_back(Event::Disconnected(handle));
    }

    /// The next event that was read, or only the next message.
    pub(super) fn pop(&mut self, events: bool) -> Option<Event> {
        while let Some(event) = self.events.pop_front() {
            if let Event::Disconnected(handle) = &event {
                // Reported already if a push found it gone.
                if !self.roster.leave(handle) {
                    continue;
                }
            }
            if events || matches!(event, Event::Message(_)) {
                return Some(event);
            }
        }
        None
    }

    /// The next event, or only the next message, until `deadline`; `None` when it passed
    /// or the waker was called.
    fn next(&mut self, deadline: Option<Instant>, events: bool) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.pop(events) {
                return Ok(Some(event));
            }
            if self.stop.swap(false, Ordering::AcqRel) || self.deliver() {
                return Ok(None);
            }
            if !self.events.is_empty() {
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
        for event in self.events.drain(..) {
            if let Event::Message(mut message) = event {
                if message.wants_reply() {
                    let _ = message.refuse("the server stopped before it read this request");
                }
            }
        }
        // Clients waiting for pushes learn at once, even while their handles live on.
        for (handle, outbox) in self.clients.values() {
            crate::push::Outbox::disconnect(&**outbox);
            self.roster.leave(handle);
        }
    }
}

impl Listener for FifoListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        match self.next(deadline, false)? {
            Some(Event::Message(message)) => Ok(Some(message)),
            _ => Ok(None),
        }
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.next(deadline, true)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(
            self.roster.clone(),
            self.endpoint.max_message(),
        ))
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
