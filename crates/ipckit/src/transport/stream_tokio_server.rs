//! The async server of every stream transport (`uds`, `tcp`), on tokio: a task per
//! connection reads and parses it and hands messages, and its client's arrival and
//! departure, to `recv_event` (see the module `stream_tokio`).

use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::access::Access;
use super::reactor::{register, runtime, when_ready};
use super::stream::check_outgoing;
use super::stream_server::OnAccept;
use super::stream_session::{
    Accepted, ConnWrite, InFlight, Session, Spare, accept_one, admitted, describe, went_away,
    write_reply,
};
use super::stream_tokio::{Writer, read_into, register_duplex};
use super::{AsyncListener, BoxFuture};
use crate::endpoint::{Endpoint, Framing};
use crate::error::{Error, Result};
use crate::frame::{Header, Kind};
use crate::message::{Message, Peer, ReplySink};
use crate::push::{Broadcaster, ClientHandle, Event, Outbox, Roster};
use crate::sys::lock;

/// How long replies may wait for a client that does not read before its connection is
/// given up, as on the blocking side.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages read ahead of `recv`; a full channel stops the reading, and the kernel's
/// buffers then hold the clients back.
const QUEUED_MESSAGES: usize = 1024;

/// The writing half of one accepted connection, shared with the messages it delivered.
struct AsyncConnSink {
    out: Arc<Replies>,
    framing: Framing,
    peer_max: AtomicUsize,
    in_flight: InFlight,
    /// How many pushes may wait in the writer (`?outbox=`).
    outbox: usize,
}

/// Replies on their way out: what the socket does not take at once is written by a task.
struct Replies {
    writer: Writer,
    runtime: Handle,
    /// A task is writing the outbox out.
    flushing: AtomicBool,
}

impl Replies {
    /// Writes the outbox out in a task, giving the connection up if the client does not
    /// read for [`REPLY_WRITE_TIMEOUT`].
    fn flush_later(self: &Arc<Self>) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let out = self.clone();
        self.runtime.spawn(async move {
            loop {
                let flushed = tokio::time::timeout(REPLY_WRITE_TIMEOUT, out.writer.flush()).await;
                if flushed.is_err() {
                    if !lock(&out.writer.out).holds_reply() {
                        // Only pushes wait: they wait as long as the client stays, and
                        // its outbox's bound (?outbox=) holds the server's memory.
                        continue;
                    }
                    log::warn!(
                        "{}: closed a connection whose client read no reply for {REPLY_WRITE_TIMEOUT:?}",
                        out.writer.url
                    );
                    out.writer.close("the client stopped reading its replies");
                }
                out.flushing.store(false, Ordering::Release);
                // A frame queued while this task finished found it still flushing.
                let more = !lock(&out.writer.out).is_empty();
                if !more || out.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
}

impl ConnWrite for AsyncConnSink {
    fn write(&self, parts: &[&[u8]]) -> Result<()> {
        if self.out.writer.put(parts)? {
            self.out.flush_later();
        }
        Ok(())
    }

    fn write_now(&self, parts: &[&[u8]]) {
        // What the socket takes at once goes out; the connection's end drops the rest.
        let _ = self.out.writer.put(parts);
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

impl Outbox for AsyncConnSink {
    /// What the socket does not take at once is written by a task; a push waiting for
    /// room blocks the calling thread (async code calls `try_send`, which never waits).
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        let writer = &self.out.writer;
        check_outgoing(&writer.url, self.framing, payload, self.peer_max())?;
        let header = Header::new(Kind::Message, 0, payload.len()).encode();
        let parts: [&[u8]; 2] = match self.framing {
            Framing::Length => [&header, payload],
            Framing::Line => [payload, b"\n"],
        };
        let mut out = lock(&writer.out);
        let mut deadline = None;
        while out.pushes() >= self.outbox && out.broken.is_none() {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + patience);
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Full {
                    endpoint: writer.url.to_string(),
                    detail: format!(
                        "the client's outbox holds its {} messages (?outbox=) and the client is not reading them",
                        self.outbox
                    ),
                    after: patience,
                });
            }
            out.waiting += 1;
            out = writer
                .room
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            out.waiting -= 1;
        }
        let queued = writer.put_locked(&mut out, &parts, true)?;
        drop(out);
        if queued {
            self.out.flush_later();
        }
        Ok(())
    }

    fn disconnect(&self) {
        self.out.writer.close("the server disconnected this client");
    }

    /// The connection's flushing task writes the outbox; this waits for it to be empty.
    fn flush(&self, deadline: Instant) -> bool {
        let writer = &self.out.writer;
        let mut out = lock(&writer.out);
        loop {
            if out.broken.is_some() || out.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            out.waiting += 1;
            out = writer
                .room
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            out.waiting -= 1;
        }
    }
}

impl ReplySink for AsyncConnSink {
    /// Never waits: what the socket does not take at once is written by a task.
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        self.in_flight.end(id);
        let max = self.peer_max.load(Ordering::Relaxed);
        let url = &self.out.writer.url;
        write_reply(url, self.framing, max, id, payload, ok, |parts| {
            self.write(parts)
        })
    }
}

/// An async server on a listening, non-blocking stream socket. `recv` accepts (as the
/// blocking server does while it waits), each connection is read and parsed by a task of
/// its own, and `recv` takes the messages they deliver. The listening socket is the
/// server's own, so it is closed the moment the server is dropped.
pub(super) struct AsyncStreamListener {
    endpoint: Endpoint,
    url: Arc<str>,
    listener: AsyncFd<OwnedFd>,
    spare: Spare,
    on_accept: OnAccept,
    /// Whom the server admits, where the kernel does not decide it already.
    access: Option<Access>,
    runtime: Handle,
    /// Dropped with the server: aborts the connection tasks.
    connections: JoinSet<()>,
    /// Shut down when the server is dropped, at once rather than when the aborted tasks
    /// next run: clients learn that the server has gone before it has finished going.
    sinks: Vec<std::sync::Weak<AsyncConnSink>>,
    deliver: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    roster: Arc<Roster>,
    /// Removes the endpoint's file when the server goes.
    _cleanup: Option<Box<dyn Send>>,
}

impl AsyncStreamListener {
    pub(super) fn new(
        endpoint: Endpoint,
        listener: OwnedFd,
        on_accept: OnAccept,
        cleanup: Option<Box<dyn Send>>,
    ) -> Result<AsyncStreamListener> {
        let url: Arc<str> = endpoint.to_string().into();
        let runtime = runtime(&url)?;
        let listener = register(&url, listener, Interest::READABLE)?;
        let (deliver, events) = mpsc::channel(QUEUED_MESSAGES);
        Ok(AsyncStreamListener {
            access: Access::for_endpoint(&endpoint),
            roster: Roster::new(&endpoint),
            endpoint,
            url,
            listener,
            spare: Spare::new(),
            on_accept,
            runtime,
            connections: JoinSet::new(),
            sinks: Vec::new(),
            deliver,
            events,
            _cleanup: cleanup,
        })
    }

    /// Accepts every connection waiting, starting a task for each; `Pending` once none
    /// is left (registered for the next).
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.reap();
        let framing = self.endpoint.framing();
        let max = self.endpoint.max_connections();
        loop {
            // Connections that ended since are not counted against the limit.
            if self.connections.len() >= max {
                self.reap();
            }
            let mut ready = ready!(self.listener.poll_read_ready(cx))
                .map_err(|e| Error::io(&*self.url, "waiting for connections", e))?;
            let (spare, url, held) = (&mut self.spare, &self.url, self.connections.len());
            let accepted = ready.try_io(|fd| {
                accept_one(
                    std::os::fd::AsFd::as_fd(fd.get_ref()),
                    spare,
                    url,
                    framing,
                    held,
                    max,
                )
            });
            match accepted {
                Err(_would_block) => {}
                Ok(Ok(Accepted::Conn(fd))) => self.start(fd),
                Ok(Ok(Accepted::Again)) => {}
                Ok(Err(e)) => {
                    // Out of memory, or of descriptors with none in reserve: the client
                    // waits in the backlog and the next connection's event brings us
                    // back here, as on the blocking side.
                    log::error!("{}: cannot accept a connection: {e}", self.url);
                    ready.clear_ready();
                }
            }
        }
    }

    /// Forgets the connections that have ended.
    fn reap(&mut self) {
        while self.connections.try_join_next().is_some() {}
        if self.sinks.len() > 64 && self.sinks.len() > 2 * self.connections.len() {
            self.sinks.retain(|sink| sink.strong_count() > 0);
            self.sinks.shrink_to(2 * self.connections.len());
        }
    }

    fn start(&mut self, fd: OwnedFd) {
        let peer = match (self.on_accept)(std::os::fd::AsFd::as_fd(&fd)) {
            Ok(peer) => Arc::new(peer),
            Err(e) => return log::warn!("{}: dropping a new connection: {e}", self.url),
        };
        let framing = self.endpoint.framing();
        let fd_ref = std::os::fd::AsFd::as_fd(&fd);
        if !admitted(self.access.as_ref(), &self.url, framing, fd_ref, &peer) {
            return;
        }
        let fd = match register_duplex(&self.url, fd) {
            Ok(fd) => fd,
            Err(e) => return log::error!("{e}"),
        };
        let max = self.endpoint.max_message();
        let session = Session::new(&self.endpoint);
        let sink = Arc::new(AsyncConnSink {
            out: Arc::new(Replies {
                writer: Writer::new(fd.clone(), self.url.clone()),
                runtime: self.runtime.clone(),
                flushing: AtomicBool::new(false),
            }),
            framing,
            peer_max: AtomicUsize::new(max),
            in_flight: InFlight::default(),
            outbox: self.endpoint.outbox(),
        });
        // Pruned when it has doubled: amortised, since `recv` passes here for every message.
        if self.sinks.len() == self.sinks.capacity() {
            self.sinks.retain(|sink| sink.strong_count() > 0);
        }
        self.sinks.push(Arc::downgrade(&sink));
        self.connections.spawn_on(
            serve_connection(
                fd,
                sink,
                peer,
                session,
                self.deliver.clone(),
                self.url.clone(),
                self.roster.clone(),
            ),
            &self.runtime,
        );
    }
}

/// Shuts a connection down when its task ends or is aborted with the server, so that its
/// client learns at once even while messages of it are still held.
struct CloseOnDrop(Arc<AsyncConnSink>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.out.writer.close("the server closed the connection");
    }
}

/// Serves one connection: its client joins the roster once its handshake is done, and
/// leaves it when the connection ends.
async fn serve_connection(
    fd: Arc<AsyncFd<OwnedFd>>,
    sink: Arc<AsyncConnSink>,
    peer: Arc<Peer>,
    session: Session,
    deliver: mpsc::Sender<Event>,
    url: Arc<str>,
    roster: Arc<Roster>,
) {
    let close = CloseOnDrop(sink.clone());
    let mut client = None;
    let conn = Conn {
        sink: &sink,
        peer: &peer,
        deliver: &deliver,
        url: &url,
        roster: &roster,
    };
    read_connection(&fd, conn, session, &mut client).await;
    drop(close);
    if let Some(client) = client {
        // Taken out of the roster as the event is taken, by `recv_event`.
        let _ = deliver.send(Event::Disconnected(client)).await;
    }
}

/// What a connection's task shares with its reading.
struct Conn<'a> {
    sink: &'a Arc<AsyncConnSink>,
    peer: &'a Arc<Peer>,
    deliver: &'a mpsc::Sender<Event>,
    url: &'a Arc<str>,
    roster: &'a Arc<Roster>,
}

impl Conn<'_> {
    /// Puts the client in the roster once its handshake is done; false if the server
    /// has gone.
    async fn announce(&self, session: &Session, client: &mut Option<ClientHandle>) -> bool {
        if client.is_some() || !session.greeted() {
            return true;
        }
        let joined = self.roster.join(self.peer.clone(), self.sink.clone());
        *client = Some(joined.clone());
        self.deliver.send(Event::Connected(joined)).await.is_ok()
    }
}

async fn read_connection(
    fd: &Arc<AsyncFd<OwnedFd>>,
    conn: Conn<'_>,
    mut session: Session,
    client: &mut Option<ClientHandle>,
) {
    let Conn {
        sink,
        peer,
        deliver,
        url,
        ..
    } = &conn;
    let mut batch = Vec::new();
    loop {
        if !conn.announce(&session, client).await {
            return; // The server is gone.
        }
        let deadline = session.deadline();
        let read = when_ready(fd, Interest::READABLE, |fd| {
            read_into(fd, &mut session.decoder)
        });
        let read = match deadline {
            None => read.await,
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), read).await {
                Ok(read) => read,
                Err(_) => {
                    return log::warn!(
                        "{url}: closed the connection of {}: {}",
                        describe(peer),
                        session.expired()
                    );
                }
            },
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            // End of stream, or a reset: how a client that closed with the server's
            // greeting or pushes unread says goodbye (see the blocking server); what it
            // sent before was read first.
            Ok(_) => return went_away_said(url, peer, session.decoder.pending()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return went_away_said(url, peer, session.decoder.pending());
            }
            Err(e) => {
                return log::warn!(
                    "{url}: closed the connection of {}: reading failed: {e}",
                    describe(peer)
                );
            }
        };
        session.decoder.advance(n);
        if let Err(violation) = session.parse(sink, peer, url, |m| batch.push(m)) {
            return log::warn!(
                "{url}: closed the connection of {}: {violation}",
                describe(peer)
            );
        }
        if !conn.announce(&session, client).await {
            return;
        }
        for message in batch.drain(..) {
            let message = match client {
                Some(client) => message.with_client(client.clone()),
                None => message,
            };
            if deliver.send(Event::Message(message)).await.is_err() {
                return; // The server is gone.
            }
        }
    }
}

impl Drop for AsyncStreamListener {
    fn drop(&mut self) {
        for sink in self.sinks.iter().filter_map(std::sync::Weak::upgrade) {
            sink.out.writer.close("the server closed the connection");
        }
        for client in self.roster.clients() {
            self.roster.leave(&client);
        }
    }
}

impl AsyncListener for AsyncStreamListener {
    /// Cancel-safe: a message is taken from the queue only when the future completes,
    /// and a connection accepted meanwhile is already being served.
    fn recv(&mut self) -> BoxFuture<'_, Result<Message>> {
        Box::pin(poll_fn(move |cx| {
            if let Poll::Ready(Err(e)) = self.poll_accept(cx) {
                return Poll::Ready(Err(e));
            }
            loop {
                match self.events.poll_recv(cx) {
                    Poll::Ready(Some(Event::Message(message))) => return Poll::Ready(Ok(message)),
                    Poll::Ready(Some(Event::Disconnected(client))) => {
                        self.roster.leave(&client);
                    }
                    Poll::Ready(Some(Event::Connected(_) | Event::Lost { .. })) => {}
                    // The server holds a sender itself, so the queue never closes.
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            }
        }))
    }

    /// Cancel-safe, as `recv`.
    fn recv_event(&mut self) -> BoxFuture<'_, Result<Event>> {
        Box::pin(poll_fn(move |cx| {
            if let Poll::Ready(Err(e)) = self.poll_accept(cx) {
                return Poll::Ready(Err(e));
            }
            loop {
                match self.events.poll_recv(cx) {
                    // Not if a push found it gone first: the roster reports it then.
                    Poll::Ready(Some(Event::Disconnected(client)))
                        if !self.roster.leave(&client) => {}
                    Poll::Ready(Some(event)) => return Poll::Ready(Ok(event)),
                    Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                }
            }
        }))
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(Broadcaster::new(
            self.roster.clone(),
            self.endpoint.max_message(),
        ))
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Logs a client's departure: a warning where it left in the middle of a frame.
fn went_away_said(url: &str, peer: &Peer, pending: usize) {
    match went_away(pending) {
        Some(reason) => log::warn!(
            "{url}: closed the connection of {}: {reason}",
            describe(peer)
        ),
        None => log::debug!("{url}: {} disconnected", describe(peer)),
    }
}
