//! A server speaking first: a handle to one connected client, the roster of them that a
//! broadcast walks, and the events that say when a client comes and goes.
//!
//! Each transport that pushes gives the [`Roster`] one [`Outbox`] per client as the client
//! arrives, and takes it out as the client leaves; everything a user calls (send to one
//! client, broadcast, list, the back-pressure policy) is here, once, for all of them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::endpoint::{Endpoint, Overflow};
use crate::error::{Error, Result};
use crate::message::{Message, Peer};
use crate::sys::lock;

/// The way to one client, as a transport writes to it.
pub(crate) trait Outbox: Send + Sync {
    /// Sends `payload` to the client as a message of the server's own, waiting up to
    /// `patience` for room in its outbox (not at all when zero). Fails with
    /// [`Error::Full`] when there is still no room, with [`Error::Disconnected`] once the
    /// client has gone (at once where the transport knows it), and with
    /// [`Error::MessageTooLarge`] over the client's limit, before anything is written.
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()>;

    /// Closes the way to the client, as the `overflow=disconnect` policy and
    /// [`ClientHandle::disconnect`] ask; its later pushes are `Disconnected`, and the
    /// transport reports its departure as for any other.
    fn disconnect(&self);

    /// Waits until `deadline` for what the transport holds for the client outside the
    /// kernel's buffers and shared rings to be written there: true once nothing waits
    /// (or the client has gone, so that nothing will). Where every push goes straight
    /// into a buffer that outlives the server (a pipe, a queue, a socket, a ring), there
    /// is nothing to wait for.
    fn flush(&self, deadline: Instant) -> bool {
        let _ = deadline;
        true
    }
}

/// One client connected to a server: a handle to push messages to it from any thread, for
/// as long as it stays connected.
///
/// A server gets it from any message the client sent ([`Message::client`]), from the
/// [`Event::Connected`] that announced the client, or from [`Server::clients`]. Cloning it
/// is cheap; every clone reaches the same client. Two handles are equal when they name the
/// same connection.
///
/// Pushes to one client arrive in the order they were sent. What `send` waits for, and
/// what a broadcast does when this client does not keep up, is the server endpoint's
/// policy: see [`send`](ClientHandle::send) and [`Broadcaster::broadcast`].
///
/// ```
/// # use std::time::Duration;
/// let url = format!("uds://@ipckit-doc-client-handle-{}", std::process::id());
/// let mut server = ipckit::listen(&url)?;
/// let subscriber = std::thread::spawn({
///     let url = url.clone();
///     move || -> ipckit::Result<Vec<u8>> {
///         let client = ipckit::connect(&url)?;
///         client.send(b"subscribe")?;
///         Ok(client.recv()?.take_payload())
///     }
/// });
/// let msg = server.recv()?;
/// let client = msg.client().expect("uds pushes").clone();
/// // Later, from any thread:
/// client.send(b"news")?;
/// assert_eq!(subscriber.join().unwrap()?, b"news");
/// # Ok::<(), ipckit::Error>(())
/// ```
///
/// [`Server::clients`]: crate::Server::clients
#[derive(Clone)]
pub struct ClientHandle {
    shared: Arc<Attached>,
}

struct Attached {
    id: u64,
    peer: Arc<Peer>,
    endpoint: Arc<str>,
    outbox: Arc<dyn Outbox>,
    patience: Duration,
    connected: AtomicBool,
    dropped: AtomicU64,
    roster: Weak<Roster>,
}

impl ClientHandle {
    /// A number naming this connection, unique within the process for as long as it runs.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Who the client is, as far as the operating system tells (as [`Message::peer`]).
    pub fn peer(&self) -> &Peer {
        &self.shared.peer
    }

    /// The server's endpoint.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// Sends `payload` to this client, where [`Client::recv`](crate::Client::recv) takes
    /// it. If the client's outbox is full (it is not reading), waits up to the endpoint's
    /// `?send_timeout_ms=` (10 s unless set) for room, then fails with [`Error::Full`],
    /// having sent nothing. Fails with [`Error::Disconnected`] once the client has gone.
    pub fn send(&self, payload: &[u8]) -> Result<()> {
        self.push(payload, self.shared.patience)
    }

    /// Sends `payload` to this client without waiting: [`Error::Full`] at once if its
    /// outbox has no room. For async code, and for loops that must not stall on one
    /// client.
    pub fn try_send(&self, payload: &[u8]) -> Result<()> {
        self.push(payload, Duration::ZERO)
    }

    /// Sends `value` serialized, as [`Client::send_value`](crate::Client::send_value) does;
    /// [`Client::recv`](crate::Client::recv) returns a message whose
    /// [`decode`](Message::decode) decodes it.
    pub fn send_value<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let bytes = crate::typed::encode(value, &self.shared.endpoint)?;
        self.send(&bytes)
    }

    /// Whether the client is still connected, as far as the server knows (a client that
    /// crashed is noticed by the next push to it, or by the server's loop).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// How many broadcasts skipped this client because its outbox was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` until every message pushed to this client so far has left
    /// the server's process (into the kernel's buffers or a shared ring, from where the
    /// client reads it even after the server has gone): true once it has, false if the
    /// client did not read enough for that in time. A server that pushes and then stops
    /// calls it first: dropping a server drops what still waits in its clients' outboxes.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.shared.outbox.flush(Instant::now() + timeout)
    }

    /// Closes the connection to this client (on connectionless transports, forgets it):
    /// later sends to it fail with `Disconnected`, and the server sees it leave.
    pub fn disconnect(&self) {
        self.shared.outbox.disconnect();
        self.departed();
    }

    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        if !self.is_connected() {
            return Err(self.gone());
        }
        let pushed = self.shared.outbox.push(payload, patience);
        if let Err(Error::Disconnected { .. }) = pushed {
            self.departed();
        }
        pushed
    }

    /// The client left, as a push found out: the server's loop reports it.
    fn departed(&self) {
        if let Some(roster) = self.shared.roster.upgrade() {
            roster.depart(self);
        } else {
            self.shared.connected.store(false, Ordering::Release);
        }
    }

    fn gone(&self) -> Error {
        Error::Disconnected {
            endpoint: self.shared.endpoint.to_string(),
            detail: format!("client {} has gone", self.describe()),
        }
    }

    fn describe(&self) -> String {
        let peer = &self.shared.peer;
        match (peer.pid, &peer.addr) {
            (Some(pid), _) => format!("#{} (pid {pid})", self.shared.id),
            (None, Some(addr)) => format!("#{} ({addr})", self.shared.id),
            (None, None) => format!("#{}", self.shared.id),
        }
    }
}

impl PartialEq for ClientHandle {
    fn eq(&self, other: &ClientHandle) -> bool {
        self.shared.id == other.shared.id
    }
}

impl Eq for ClientHandle {}

impl Hash for ClientHandle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.shared.id.hash(state);
    }
}

impl fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandle")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// What a server's loop receives when it asks for events rather than messages
/// ([`Server::recv_event`]): a message, a client coming or going, or a gap in a
/// broadcast stream.
///
/// A client's `Connected` comes before any message of its own, and its `Disconnected`
/// after the last. Transports with connections (`uds`, `tcp`, `shm`) see a client when it
/// connects; the others when its first datagram or message arrives. A listener of a
/// broadcast that overwrites what its listeners have not read (`events`) learns what it
/// missed from `Lost`, right before the first message after the gap.
///
/// [`Server::recv_event`]: crate::Server::recv_event
#[derive(Debug)]
pub enum Event {
    /// A client connected: a handle to greet it or to remember it by.
    Connected(ClientHandle),
    /// A message, as [`Server::recv`](crate::Server::recv) returns it.
    Message(Message),
    /// A client left (closed, crashed, or was disconnected); its handle no longer sends.
    Disconnected(ClientHandle),
    /// The listener fell behind and `count` messages were overwritten before it read them;
    /// it resumed at the newest message written when it found out, not the oldest still
    /// there (which writers were about to overwrite too), so the next message is that
    /// newest one, or the first after it at the listener's level. `count` includes the
    /// older ones it skipped that way, and on `events` messages of every level, the
    /// listener's or not: what was overwritten cannot say its level. [`Server::lost`]
    /// keeps the total.
    ///
    /// [`Server::lost`]: crate::Server::lost
    Lost {
        /// How many messages it missed, counted exactly.
        count: u64,
    },
}

/// What one broadcast did: how many clients got the message, how many were skipped
/// because their outbox was full, and how many were disconnected (by the
/// `overflow=disconnect` policy, or because they had gone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Clients the message was handed to.
    pub sent: usize,
    /// Clients skipped because their outbox was full (`overflow=drop`).
    pub dropped: usize,
    /// Clients that had gone, or were disconnected for being full (`overflow=disconnect`).
    pub disconnected: usize,
}

/// The clients connected to one server, for a transport to keep and the generic layer to
/// broadcast through.
#[allow(
    dead_code,
    reason = "the transports learn to push in the commits that follow"
)]
pub(crate) struct Roster {
    endpoint: Arc<str>,
    patience: Duration,
    overflow: Overflow,
    clients: Mutex<HashMap<u64, ClientHandle>>,
    /// Clients that left as a push found out, for the server's loop to report.
    departed: Mutex<VecDeque<ClientHandle>>,
    any_departed: AtomicBool,
    wake: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

#[allow(
    dead_code,
    reason = "the transports learn to push in the commits that follow"
)]
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// How many pushed messages a client keeps that it has not taken with `recv`, when its
/// requests read them on the way to their replies. A client in `recv` stops reading at one
/// message, so that the server's outbox policy applies to it; but a reply may lie behind
/// any number of pushes, so a requester must read them, and a client that never calls
/// `recv` would hold them all. Beyond this many, newer pushes are dropped (logged), as
/// ZeroMQ's SUB socket drops at its receive high-water mark.
pub(crate) const UNREAD_PUSHES: usize = 4096;

/// A pushed message read for a client: queued for its `recv`, or dropped once
/// [`UNREAD_PUSHES`] wait (`dropped` counts them, logged at the first and every 1024th).
pub(crate) fn keep_unread<A>(queue: &mut VecDeque<A>, push: A, dropped: &mut u64, url: &str) {
    if queue.len() < UNREAD_PUSHES {
        queue.push_back(push);
        return;
    }
    if *dropped % 1024 == 0 {
        log::warn!(
            "{url}: {} pushed messages wait unread (call recv to take them); dropping newer ones ({} so far)",
            UNREAD_PUSHES,
            *dropped + 1
        );
    }
    *dropped += 1;
}

#[allow(
    dead_code,
    reason = "the transports learn to push in the commits that follow"
)]
impl Roster {
    pub(crate) fn new(endpoint: &Endpoint) -> Arc<Roster> {
        Arc::new(Roster {
            endpoint: endpoint.to_string().into(),
            patience: endpoint.send_timeout(),
            overflow: endpoint.overflow(),
            clients: Mutex::new(HashMap::new()),
            departed: Mutex::new(VecDeque::new()),
            any_departed: AtomicBool::new(false),
            wake: Mutex::new(None),
        })
    }

    /// Lets a departure that a push found out wake the server's loop to report it.
    pub(crate) fn set_waker(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *lock(&self.wake) = Some(wake);
    }

    /// A client arrived: its handle, which the transport reports as
    /// [`Event::Connected`] before the client's first message.
    pub(crate) fn join(self: &Arc<Self>, peer: Arc<Peer>, outbox: Arc<dyn Outbox>) -> ClientHandle {
        let handle = ClientHandle {
            shared: Arc::new(Attached {
                id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
                peer,
                endpoint: self.endpoint.clone(),
                outbox,
                patience: self.patience,
                connected: AtomicBool::new(true),
                dropped: AtomicU64::new(0),
                roster: Arc::downgrade(self),
            }),
        };
        lock(&self.clients).insert(handle.id(), handle.clone());
        handle
    }

    /// A client left, as the transport saw: `true` if it was still here, in which case
    /// the transport reports [`Event::Disconnected`]; `false` if a push had already found
    /// it gone (and the server's loop reports it from here).
    pub(crate) fn leave(&self, handle: &ClientHandle) -> bool {
        handle.shared.connected.store(false, Ordering::Release);
        lock(&self.clients).remove(&handle.id()).is_some()
    }

    /// A client left, as a push or a disconnect found out, outside the server's loop.
    fn depart(&self, handle: &ClientHandle) {
        if self.leave(handle) {
            lock(&self.departed).push_back(handle.clone());
            self.any_departed.store(true, Ordering::Release);
            if let Some(wake) = &*lock(&self.wake) {
                wake();
            }
        }
    }

    /// A departure to report that the transport did not see.
    #[inline]
    pub(crate) fn take_departed(&self) -> Option<ClientHandle> {
        if !self.any_departed.load(Ordering::Acquire) {
            return None;
        }
        let mut departed = lock(&self.departed);
        let next = departed.pop_front();
        if departed.is_empty() {
            self.any_departed.store(false, Ordering::Release);
        }
        next
    }

    pub(crate) fn clients(&self) -> Vec<ClientHandle> {
        let mut clients: Vec<_> = lock(&self.clients).values().cloned().collect();
        clients.sort_unstable_by_key(ClientHandle::id);
        clients
    }

    /// Pushes `payload` to every client without waiting on any, applying the overflow
    /// policy to those that are full.
    pub(crate) fn broadcast(&self, payload: &[u8]) -> Delivery {
        let mut delivery = Delivery::default();
        for client in self.clients() {
            match client.push(payload, Duration::ZERO) {
                Ok(()) => delivery.sent += 1,
                Err(Error::Full { .. }) => match self.overflow {
                    // Block is refused for servers when the endpoint is parsed.
                    Overflow::Drop | Overflow::Block => {
                        client.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        delivery.dropped += 1;
                    }
                    Overflow::Disconnect => {
                        log::warn!(
                            "{}: client {} did not keep up with broadcasts; disconnecting it (overflow=disconnect)",
                            self.endpoint,
                            client.describe()
                        );
                        client.disconnect();
                        delivery.disconnected += 1;
                    }
                },
                Err(Error::Disconnected { .. }) => delivery.disconnected += 1,
                Err(e) => {
                    // Over this client's own limit (it declared a smaller one than the
                    // server's): the others still get the message.
                    log::warn!("{e}");
                    client.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    delivery.dropped += 1;
                }
            }
        }
        delivery
    }
}

/// Broadcasts and lists clients for a [`Server`](crate::Server) from any thread, while the
/// server's own loop receives: a handle from [`Server::broadcaster`](crate::Server::broadcaster).
///
/// ```
/// let url = format!("uds://@ipckit-doc-broadcaster-{}", std::process::id());
/// let mut server = ipckit::listen(&url)?;
/// let broadcaster = server.broadcaster()?;
/// std::thread::spawn(move || {
///     // Every second, to every connected client:
///     # return;
///     loop {
///         let delivery = broadcaster.broadcast(b"tick");
///         # let _ = delivery;
///         std::thread::sleep(std::time::Duration::from_secs(1));
///     }
/// });
/// // ... the server's loop goes on receiving (and thereby accepting clients).
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone)]
pub struct Broadcaster {
    roster: Arc<Roster>,
    max_message: usize,
}

#[allow(
    dead_code,
    reason = "the transports learn to push in the commits that follow"
)]
impl Broadcaster {
    pub(crate) fn new(roster: Arc<Roster>, max_message: usize) -> Broadcaster {
        Broadcaster {
            roster,
            max_message,
        }
    }

    pub(crate) fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    /// Sends `payload` to every connected client, never waiting on one: a client whose
    /// outbox is full is skipped and the drop counted (`?overflow=drop`, the default, as
    /// ZeroMQ's PUB at its high-water mark), or disconnected (`?overflow=disconnect`).
    /// Fails only for a payload over the server's `max_message`, before sending anything.
    pub fn broadcast(&self, payload: &[u8]) -> Result<Delivery> {
        if payload.len() > self.max_message {
            return Err(Error::MessageTooLarge {
                endpoint: self.roster.endpoint.to_string(),
                size: payload.len(),
                max: self.max_message,
                limit: "the server's max_message".into(),
            });
        }
        Ok(self.roster.broadcast(payload))
    }

    /// Broadcasts `value` serialized, as [`ClientHandle::send_value`] sends it.
    pub fn broadcast_value<T: Serialize + ?Sized>(&self, value: &T) -> Result<Delivery> {
        let bytes = crate::typed::encode(value, &self.roster.endpoint)?;
        self.broadcast(&bytes)
    }

    /// The clients connected now, oldest first.
    pub fn clients(&self) -> Vec<ClientHandle> {
        self.roster.clients()
    }

    /// Waits up to `timeout` until what was pushed to every client has left the server's
    /// process, as [`ClientHandle::flush`] does for one; how many clients still held
    /// messages then (0: none). Call it before dropping a server whose last broadcasts
    /// must reach the clients that are reading.
    ///
    /// ```
    /// let url = format!("uds://@ipckit-doc-flush-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// let client = ipckit::connect(&url)?;
    /// client.send(b"subscribe")?;
    /// server.recv()?;
    /// server.broadcast(b"last words")?;
    /// assert_eq!(server.broadcaster()?.flush(std::time::Duration::from_secs(5)), 0);
    /// drop(server);
    /// assert_eq!(client.recv()?.payload(), b"last words");
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn flush(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        self.clients()
            .iter()
            .filter(|client| !client.shared.outbox.flush(deadline))
            .count()
    }
}

impl fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcaster")
            .field("endpoint", &self.roster.endpoint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A client that takes `room` messages, then is full.
    struct Counted {
        room: usize,
        taken: AtomicUsize,
        closed: AtomicBool,
    }

    impl Outbox for Counted {
        fn push(&self, _payload: &[u8], _patience: Duration) -> Result<()> {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Disconnected {
                    endpoint: "test".into(),
                    detail: "closed".into(),
                });
            }
            if self.taken.load(Ordering::Acquire) == self.room {
                return Err(Error::Full {
                    endpoint: "test".into(),
                    detail: "the outbox".into(),
                    after: Duration::ZERO,
                });
            }
            self.taken.fetch_add(1, Ordering::AcqRel);
            Ok(())
        }

        fn disconnect(&self) {
            self.closed.store(true, Ordering::Release);
        }
    }

    fn client(roster: &Arc<Roster>, room: usize) -> (ClientHandle, Arc<Counted>) {
        let outbox = Arc::new(Counted {
            room,
            taken: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        (roster.join(Arc::default(), outbox.clone()), outbox)
    }

    #[test]
    fn a_full_client_is_skipped_and_counted_while_the_others_get_every_broadcast() {
        let roster = Roster::new(&"uds:///tmp/x.sock".parse().unwrap());
        let (slow, _) = client(&roster, 2);
        let (fast, fast_box) = client(&roster, usize::MAX);
        let deliveries: Vec<_> = (0..5).map(|_| roster.broadcast(b"m")).collect();
        assert_eq!(deliveries[0].sent, 2);
        assert_eq!(
            deliveries[4],
            Delivery {
                sent: 1,
                dropped: 1,
                disconnected: 0
            }
        );
        assert_eq!(slow.dropped(), 3);
        assert_eq!(fast.dropped(), 0);
        assert_eq!(fast_box.taken.load(Ordering::Acquire), 5);
        assert!(slow.is_connected());
        assert!(roster.take_departed().is_none());
    }

    #[test]
    fn overflow_disconnect_drops_the_full_client_and_reports_it_once() {
        let roster = Roster::new(&"uds:///tmp/x.sock?overflow=disconnect".parse().unwrap());
        let (slow, slow_box) = client(&roster, 1);
        let (_fast, _) = client(&roster, usize::MAX);
        assert_eq!(roster.broadcast(b"m").sent, 2);
        let full = roster.broadcast(b"m");
        assert_eq!((full.sent, full.disconnected), (1, 1));
        assert!(slow_box.closed.load(Ordering::Acquire));
        assert!(!slow.is_connected());
        assert!(matches!(
            slow.send(b"late"),
            Err(Error::Disconnected { .. })
        ));
        assert_eq!(roster.clients().len(), 1);
        assert_eq!(roster.take_departed(), Some(slow.clone()));
        assert_eq!(roster.take_departed(), None);
        // The transport noticing the same client closing later reports nothing twice.
        assert!(!roster.leave(&slow));
    }

    #[test]
    fn a_client_keeps_a_bounded_number_of_unread_pushes_and_counts_the_rest() {
        let mut queue = VecDeque::new();
        let mut dropped = 0;
        for n in 0..UNREAD_PUSHES + 10 {
            keep_unread(&mut queue, n, &mut dropped, "uds:///tmp/x.sock");
        }
        assert_eq!((queue.len(), dropped), (UNREAD_PUSHES, 10));
        // The oldest are kept, in order: what was dropped is the newest, as a gap.
        assert_eq!(queue.back(), Some(&(UNREAD_PUSHES - 1)));
    }

    #[test]
    fn a_push_that_finds_the_client_gone_wakes_the_server_to_report_it() {
        let roster = Roster::new(&"uds:///tmp/x.sock".parse().unwrap());
        let woken = Arc::new(AtomicUsize::new(0));
        roster.set_waker(Arc::new({
            let woken = woken.clone();
            move || {
                woken.fetch_add(1, Ordering::AcqRel);
            }
        }));
        let (gone, outbox) = client(&roster, usize::MAX);
        outbox.disconnect();
        assert!(matches!(gone.send(b"x"), Err(Error::Disconnected { .. })));
        assert!(matches!(gone.send(b"x"), Err(Error::Disconnected { .. })));
        assert_eq!(woken.load(Ordering::Acquire), 1);
        assert_eq!(roster.take_departed(), Some(gone));
    }
}
