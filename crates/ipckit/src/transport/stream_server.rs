//! The server of every stream transport (`uds`, `tcp`), blocking: one mio loop waits on
//! the listening socket and every connection at once, and `recv` returns messages parsed
//! on the caller's own thread (see the module `stream`). Each connection's client is in
//! the server's roster from its handshake on, with the connection's outbox as its way in.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustix::event::PollFlags;
use rustix::net::Shutdown;
use slab::Slab;

use super::stream::check_outgoing;
use super::stream_session::{
    Accepted, ConnWrite, InFlight, Pending, Session, Spare, accept_one, admitted, describe,
    send_now, went_away, write_reply,
};
use crate::endpoint::{Endpoint, Framing};
use crate::error::{Error, Result};
use crate::frame::{Header, Kind};
use crate::message::{Message, Peer, ReplySink};
use crate::push::{Broadcaster, ClientHandle, Event, Outbox, Roster};
use crate::sys::{lock, wait_ready};
use crate::transport::Listener;
use crate::transport::access::Access;

/// How long a reply may wait for a client that does not read before its connection is
/// given up: one stuck client must not hold a replying thread forever.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads from one connection before the loop turns to the others.
const READS_PER_TURN: usize = 16;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// The writing half of one accepted connection, shared with the messages it delivered
/// and with the handle that pushes to its client.
struct ConnSink {
    fd: OwnedFd,
    url: Arc<str>,
    framing: Framing,
    /// The largest payload the client accepts; known after its hello.
    peer_max: AtomicUsize,
    /// What the socket has not taken yet; held while writing, which keeps frames whole.
    out: Mutex<Pending>,
    /// How many pushes may wait in `out` (`?outbox=`).
    outbox: usize,
    closed: AtomicBool,
    in_flight: InFlight,
    /// To ask the server's loop to finish writing `out` once the socket takes more.
    registry: Arc<Registry>,
    token: Token,
}

impl ConnSink {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = rustix::net::shutdown(&self.fd, Shutdown::Both);
    }

    fn gone(&self, detail: &str) -> Error {
        Error::Disconnected {
            endpoint: self.url.to_string(),
            detail: detail.to_owned(),
        }
    }

    /// A write failed: the stream may hold half a frame, so it ends here.
    fn failed(&self, op: &'static str, e: io::Error) -> Error {
        self.close();
        Error::io(&*self.url, op, e)
    }

    /// Writes one frame behind what waits, asking the server's loop to finish it if the
    /// socket is full; where the frame ends.
    fn put(&self, out: &mut Pending, parts: &[&[u8]], push: bool) -> Result<u64> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.gone("the client's connection was closed"));
        }
        let op = if push { "pushing" } else { "replying" };
        let end = out
            .write(self.fd.as_fd(), parts, push)
            .map_err(|e| self.failed(op, e))?;
        if !out.is_empty() && !out.watching {
            self.watch(out, true);
        }
        Ok(end)
    }

    /// Asks the server's loop to say (or no longer) when the socket takes more.
    fn watch(&self, out: &mut Pending, writable: bool) {
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        // Fails only for a connection the loop has closed, which is then past caring.
        let _ = self
            .registry
            .reregister(&mut SourceFd(&self.fd.as_raw_fd()), self.token, interest);
        out.watching = writable;
    }

    /// The server's loop: the socket takes more of what waits.
    fn flush_waiting(&self) {
        let mut out = lock(&self.out);
        match out.flush(self.fd.as_fd()) {
            Ok(true) if out.watching => self.watch(&mut out, false),
            Ok(_) => {}
            Err(e) => {
                log::debug!("{}: writing to a client failed: {e}", self.url);
                self.close();
            }
        }
    }

    /// Waits until the socket may take more, or `deadline`, without holding `out`.
    fn wait_writable(&self, deadline: Instant) {
        let now = Instant::now();
        // Looked at again after a while: the server's loop may have made room in `out`
        // while the socket stayed full.
        let _ = wait_ready(
            self.fd.as_fd(),
            PollFlags::OUT,
            Some(deadline.min(now + ROOM_RECHECK)),
        );
    }
}

/// How long a thread waiting for a client to read sleeps before looking again.
const ROOM_RECHECK: Duration = Duration::from_millis(20);

impl ConnWrite for ConnSink {
    /// Returns once the frame is in the socket's buffer, as a reply did before there were
    /// pushes: a client that sends requests without reading answers thus holds its
    /// replying threads back, never the server's memory.
    fn write(&self, parts: &[&[u8]]) -> Result<()> {
        let mut out = lock(&self.out);
        let end = self.put(&mut out, parts, false)?;
        let deadline = Instant::now() + REPLY_WRITE_TIMEOUT;
        while !out.written(end) {
            if Instant::now() >= deadline {
                // The client stopped reading; a half-written frame leaves the stream
                // unusable, so end it.
                self.close();
                return Err(Error::Timeout {
                    endpoint: self.url.to_string(),
                    after: REPLY_WRITE_TIMEOUT,
                });
            }
            drop(out);
            self.wait_writable(deadline);
            out = lock(&self.out);
            if self.closed.load(Ordering::Acquire) {
                return Err(self.gone("the client's connection was closed before the reply"));
            }
            out.flush(self.fd.as_fd())
                .map_err(|e| self.failed("replying", e))?;
        }
        Ok(())
    }

    fn write_now(&self, parts: &[&[u8]]) {
        // Never waits: the server's loop calls this, about a connection it is closing.
        let Ok(out) = self.out.try_lock() else {
            return;
        };
        if out.is_empty() {
            let _ = send_now(self.fd.as_fd(), parts);
        }
    }

    fn set_peer_max(&self, max: usize) {
        self.peer_max.store(max, Ordering::Relaxed);
    }

    fn peer_max(&self) -> usize {
        self.peer_max.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }
}

impl ReplySink for ConnSink {
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        self.in_flight.end(id);
        let max = self.peer_max.load(Ordering::Relaxed);
        write_reply(&self.url, self.framing, max, id, payload, ok, |parts| {
            self.write(parts)
        })
    }
}

impl Outbox for ConnSink {
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        check_outgoing(&self.url, self.framing, payload, self.peer_max())?;
        let header = Header::new(Kind::Message, 0, payload.len()).encode();
        let parts: [&[u8]; 2] = match self.framing {
            Framing::Length => [&header, payload],
            Framing::Line => [payload, b"\n"],
        };
        let mut out = lock(&self.out);
        let mut deadline = None;
        while out.pushes() >= self.outbox {
            if self.closed.load(Ordering::Acquire) {
                return Err(self.gone("the client's connection was closed"));
            }
            out.flush(self.fd.as_fd())
                .map_err(|e| self.failed("pushing", e))?;
            if out.pushes() < self.outbox {
                break;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + patience);
            if Instant::now() >= deadline {
                return Err(Error::Full {
                    endpoint: self.url.to_string(),
                    detail: format!(
                        "the client's outbox holds its {} messages (?outbox=) and the client is not reading them",
                        self.outbox
                    ),
                    after: patience,
                });
            }
            drop(out);
            self.wait_writable(deadline);
            out = lock(&self.out);
        }
        self.put(&mut out, &parts, true).map(drop)
    }

    fn disconnect(&self) {
        self.close();
    }

    fn flush(&self, deadline: Instant) -> bool {
        loop {
            let mut out = lock(&self.out);
            if self.closed.load(Ordering::Acquire) {
                return true;
            }
            match out.flush(self.fd.as_fd()) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    drop(out);
                    log::debug!("{}: writing to a client failed: {e}", self.url);
                    self.close();
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            drop(out);
            self.wait_writable(deadline);
        }
    }
}

struct Conn {
    sink: Arc<ConnSink>,
    session: Session,
    peer: Arc<Peer>,
    /// epoll reported the peer's end (or an error): read on to EOF, since no further
    /// edge will come to say so.
    hung_up: bool,
    /// The session's deadline as entered in the listener's `deadlines`.
    deadline: Option<Instant>,
    /// The client in the roster, once its handshake is done.
    handle: Option<ClientHandle>,
}

/// How a transport learns who is on the other end of an accepted socket, and prepares it.
pub(super) type OnAccept = fn(BorrowedFd<'_>) -> io::Result<Peer>;

/// A server on a listening, non-blocking stream socket.
pub(super) struct StreamListener {
    endpoint: Endpoint,
    url: Arc<str>,
    framing: Framing,
    max: usize,
    max_connections: usize,
    poll: Poll,
    events: Events,
    listener: OwnedFd,
    spare: Spare,
    on_accept: OnAccept,
    /// Whom the server admits, where the kernel does not decide it already.
    access: Option<Access>,
    conns: Slab<Conn>,
    /// The connections that must finish a hello or a frame in time, soonest first.
    deadlines: BTreeSet<(Instant, usize)>,
    /// Messages parsed, and clients come and gone, not yet returned by `recv_event`.
    ready: VecDeque<Event>,
    roster: Arc<Roster>,
    /// For the connections to ask for EPOLLOUT from any thread.
    registry: Arc<Registry>,
    /// Connections that may still hold unread bytes (edge-triggered: nobody will say so).
    unread: VecDeque<usize>,
    waker: Arc<Waker>,
    /// Removes the endpoint's file when the server goes.
    _cleanup: Option<Box<dyn Send>>,
}

impl StreamListener {
    pub(super) fn new(
        endpoint: Endpoint,
        listener: OwnedFd,
        on_accept: OnAccept,
        cleanup: Option<Box<dyn Send>>,
    ) -> Result<StreamListener> {
        let url: Arc<str> = endpoint.to_string().into();
        let io_err = |op, e| Error::io(&*url, op, e);
        let poll = Poll::new().map_err(|e| io_err("creating the epoll instance", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(|e| io_err("registering the listening socket", e))?;
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(|e| io_err("creating the waker", e))?;
        let access = Access::for_endpoint(&endpoint);
        let registry = poll
            .registry()
            .try_clone()
            .map_err(|e| io_err("sharing the epoll instance", e))?;
        Ok(StreamListener {
            roster: Roster::new(&endpoint),
            registry: Arc::new(registry),
            framing: endpoint.framing(),
            max: endpoint.max_message(),
            max_connections: endpoint.max_connections(),
            endpoint,
            url,
            poll,
            events: Events::with_capacity(256),
            listener,
            spare: Spare::new(),
            on_accept,
            access,
            conns: Slab::new(),
            deadlines: BTreeSet::new(),
            ready: VecDeque::new(),
            unread: VecDeque::new(),
            waker: Arc::new(waker),
            _cleanup: cleanup,
        })
    }

    fn accept_all(&mut self) {
        loop {
            let accepted = accept_one(
                self.listener.as_fd(),
                &mut self.spare,
                &self.url,
                self.framing,
                self.conns.len(),
                self.max_connections,
            );
            let fd = match accepted {
                Ok(Accepted::Conn(fd)) => fd,
                Ok(Accepted::Again) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of memory, or of descriptors with none in reserve: the client
                    // waits in the backlog and the next connection's event brings us
                    // back here.
                    log::error!("{}: cannot accept a connection: {e}", self.url);
                    return;
                }
            };
            let peer = match (self.on_accept)(fd.as_fd()) {
                Ok(peer) => Arc::new(peer),
                Err(e) => {
                    log::warn!("{}: dropping a new connection: {e}", self.url);
                    continue;
                }
            };
            if !admitted(
                self.access.as_ref(),
                &self.url,
                self.framing,
                fd.as_fd(),
                &peer,
            ) {
                continue;
            }
            let raw = fd.as_raw_fd();
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let registered = self.poll.registry().register(
                &mut SourceFd(&raw),
                Token(key + FIRST_CONNECTION),
                Interest::READABLE,
            );
            if let Err(e) = registered {
                log::error!("{}: cannot watch a new connection: {e}", self.url);
                continue;
            }
            entry.insert(Conn {
                sink: Arc::new(ConnSink {
                    fd,
                    url: self.url.clone(),
                    framing: self.framing,
                    peer_max: AtomicUsize::new(self.max),
                    out: Mutex::default(),
                    outbox: self.endpoint.outbox(),
                    closed: AtomicBool::new(false),
                    in_flight: InFlight::default(),
                    registry: self.registry.clone(),
                    token: Token(key + FIRST_CONNECTION),
                }),
                session: Session::new(&self.endpoint),
                peer,
                hung_up: false,
                deadline: None,
                handle: None,
            });
            self.time(key);
            // A line client has no handshake: it may be pushed to at once.
            self.announce(key);
        }
    }

    /// Enters connection `key`'s deadline, if it changed, in `deadlines`.
    fn time(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let deadline = conn.session.deadline();
        if conn.deadline == deadline {
            return;
        }
        if let Some(old) = std::mem::replace(&mut conn.deadline, deadline) {
            self.deadlines.remove(&(old, key));
        }
        if let Some(new) = deadline {
            self.deadlines.insert((new, key));
        }
    }

    /// Closes the connections whose deadline has passed.
    fn expire(&mut self) {
        let Some(&(first, _)) = self.deadlines.first() else {
            return;
        };
        let now = Instant::now();
        if first > now {
            return;
        }
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let reason = self.conns[key].session.expired();
            self.close(key, Some(reason));
        }
    }

    /// Reads what connection `key` has, parsing messages into `ready`.
    fn service(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let buf = conn.session.decoder.read_buf();
            let wanted = buf.len();
            match rustix::io::read(&conn.sink.fd, buf) {
                // A reset is how a client that closed with the server's greeting or
                // pushes unread says goodbye (the kernel resets where data is left
                // unread): everything it sent before was read first.
                Ok(0) | Err(rustix::io::Errno::CONNRESET) => {
                    let reason = went_away(conn.session.decoder.pending());
                    return self.close(key, reason);
                }
                Ok(n) => {
                    conn.session.decoder.advance(n);
                    if let Err(violation) = self.parse(key) {
                        return self.close(key, Some(violation));
                    }
                    self.time(key);
                    // A short read emptied the socket; Linux raises a new edge for any
                    // later data or hang-up, so there is no need to read until EAGAIN.
                    if n < wanted && !self.conns[key].hung_up {
                        return;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return self.close(key, Some(format!("reading failed: {e}"))),
            }
        }
        self.unread.push_back(key);
    }

    /// Moves every whole frame of connection `key` into `ready`, after the client's
    /// arrival once its handshake is done.
    fn parse(&mut self, key: usize) -> std::result::Result<(), String> {
        let conn = &mut self.conns[key];
        let (ready, roster) = (&mut self.ready, &self.roster);
        let (sink, peer, handle) = (&conn.sink, &conn.peer, &mut conn.handle);
        conn.session.parse(sink, peer, &self.url, |m| {
            let client = handle.get_or_insert_with(|| join(roster, peer, sink, ready));
            ready.push_back(Event::Message(m.with_client(client.clone())));
        })?;
        self.announce(key);
        Ok(())
    }

    /// Puts connection `key`'s client in the roster once its handshake is done.
    fn announce(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.handle.is_none() && conn.session.greeted() {
            conn.handle = Some(join(&self.roster, &conn.peer, &conn.sink, &mut self.ready));
        }
    }

    fn close(&mut self, key: usize, reason: Option<String>) {
        let conn = self.conns.remove(key);
        if let Some(deadline) = conn.deadline {
            self.deadlines.remove(&(deadline, key));
        }
        // Give back the table's room once most of it is vacant: a burst of connections
        // must not leave its high-water mark behind.
        if self.conns.capacity() > 64 && self.conns.len() < self.conns.capacity() / 4 {
            self.conns.shrink_to_fit();
        }
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&conn.sink.fd.as_raw_fd()));
        conn.sink.close();
        if let Some(client) = conn.handle {
            // Taken out of the roster only as the event is taken: a server that lists
            // its clients while it handles the arrival still finds this one there.
            self.ready.push_back(Event::Disconnected(client));
        }
        match reason {
            Some(reason) => log::warn!(
                "{}: closed the connection of {}: {reason}",
                self.url,
                describe(&conn.peer)
            ),
            None => log::debug!("{}: {} disconnected", self.url, describe(&conn.peer)),
        }
    }
}

impl StreamListener {
    /// One wait, until `deadline`, for the next event; with `messages_only`, clients
    /// coming and going are passed over.
    fn next_event(
        &mut self,
        deadline: Option<Instant>,
        messages_only: bool,
    ) -> Result<Option<Event>> {
        // Kept across turns: a wake-up that comes with events this call passes over
        // (with `messages_only`, a client leaving) must still end the wait.
        let mut woken = false;
        let mut polled = false;
        loop {
            while let Some(event) = self.ready.pop_front() {
                if let Event::Disconnected(client) = &event {
                    // Not if a push found it gone first: the roster reports it then.
                    if !self.roster.leave(client) {
                        continue;
                    }
                }
                if !messages_only || matches!(event, Event::Message(_)) {
                    return Ok(Some(event));
                }
            }
            if woken || (polled && deadline.is_some_and(|d| Instant::now() >= d)) {
                return Ok(None);
            }
            let timeout = if self.unread.is_empty() {
                // Wake for the soonest of the caller's and the connections' deadlines.
                let first = self.deadlines.first().map(|&(d, _)| d);
                let wake = match (deadline, first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                wake.map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(&*self.url, "waiting for messages", e)),
            }
            polled = true;
            let mut accept = false;
            for event in self.events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => woken = true,
                    Token(t) => {
                        let key = t - FIRST_CONNECTION;
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue;
                        };
                        if event.is_writable() {
                            conn.sink.flush_waiting();
                            if !(event.is_readable() || event.is_read_closed() || event.is_error())
                            {
                                continue;
                            }
                        }
                        if event.is_read_closed() || event.is_error() {
                            conn.hung_up = true;
                        }
                        self.unread.push_back(key);
                    }
                }
            }
            if accept {
                self.accept_all();
            }
            for _ in 0..self.unread.len() {
                let key = self.unread.pop_front().expect("counted");
                self.service(key);
            }
            self.expire();
        }
    }
}

/// Puts a connection's client in `roster` and announces it in `ready`.
fn join(
    roster: &Arc<Roster>,
    peer: &Arc<Peer>,
    sink: &Arc<ConnSink>,
    ready: &mut VecDeque<Event>,
) -> ClientHandle {
    let client = roster.join(peer.clone(), sink.clone());
    ready.push_back(Event::Connected(client.clone()));
    client
}

impl Listener for StreamListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        match self.next_event(deadline, true)? {
            Some(Event::Message(message)) => Ok(Some(message)),
            _ => Ok(None),
        }
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.next_event(deadline, false)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(self.roster.clone(), self.max))
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let waker = self.waker.clone();
        Arc::new(move || {
            let _ = waker.wake();
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        // Messages still held elsewhere keep their connection's descriptor open; shut the
        // sockets down now so every client sees the end at once.
        for conn in self.conns.drain() {
            conn.sink.close();
            if let Some(client) = conn.handle {
                self.roster.leave(&client);
            }
        }
    }
}
