//! The server side of a spool: the queue's messages made into [`Message`]s, the roster of
//! clients learnt from their inboxes in `clients/`, and the replies and pushes written
//! into those inboxes.
//!
//! A client is in the roster from its inbox's arrival (or, at the start, from the scan of
//! `clients/`) until its inbox leaves (its goodbye) or its lock is found free (it
//! crashed). Both are read from the same inotify descriptor as the messages, so that a
//! client's `Connected` comes before its first message, and its `Disconnected` after the
//! last of its messages that were in `new/` when it left.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags};

use super::names::{self, Name};
use super::queue::{Claim, Options, Queue};
use super::store::{self, Area, Inbox, Spool};
use super::watch::Hint;
use crate::endpoint::Ack;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::message::{Message, Peer, ReplySink, ReplyTo};
use crate::push::{Broadcaster, ClientHandle, Event, Outbox, Roster};
use crate::sys::lock;
use crate::transport::Listener;

/// How often a server with clients looks whether each still holds its inbox's lock: a
/// client that crashed says no goodbye.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a push waiting for room sleeps at most between looks at its client.
pub(super) const RECOUNT_INTERVAL: Duration = Duration::from_millis(20);

/// Starts a server on the spool of `endpoint`.
pub(super) fn listen(endpoint: &Endpoint) -> Result<SpoolListener> {
    listen_with(endpoint, Options::of(endpoint))
}

/// Starts a server with the spool options given.
pub(super) fn listen_with(endpoint: &Endpoint, options: Options) -> Result<SpoolListener> {
    let core = Core::new(endpoint, options)?;
    let stop = Arc::new(AtomicBool::new(false));
    let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(core.queue.waker()?);
    core.roster.set_waker(wake.clone());
    Ok(SpoolListener { core, stop, wake })
}

/// A client's inbox as the server writes into it, for its replies and pushes.
struct Way {
    spool: Arc<Spool>,
    id: String,
    max_message: usize,
    /// Opened at the first reply or push; `None` once found gone.
    inbox: OnceLock<Option<Inbox>>,
}

impl Way {
    fn new(spool: Arc<Spool>, id: &str, max_message: usize) -> Arc<Way> {
        Arc::new(Way {
            spool,
            id: id.to_owned(),
            max_message,
            inbox: OnceLock::new(),
        })
    }

    fn inbox(&self) -> Result<&Inbox> {
        if let Some(found) = self.inbox.get() {
            return found.as_ref().ok_or_else(|| self.gone());
        }
        match self.spool.open_inbox(&self.id) {
            Ok(inbox) => Ok(self
                .inbox
                .get_or_init(|| Some(inbox))
                .as_ref()
                .ok_or_else(|| self.gone())?),
            // Only a missing inbox means a client gone for good; out of descriptors, say,
            // the next push tries again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = self.inbox.set(None);
                Err(self.gone())
            }
            Err(e) => Err(Error::io(
                self.spool.url().to_string(),
                "opening a client's inbox",
                e,
            )),
        }
    }

    fn gone(&self) -> Error {
        Error::Disconnected {
            endpoint: self.spool.url().to_string(),
            detail: format!(
                "client {} has gone: its inbox clients/{0} is no longer there",
                self.id
            ),
        }
    }

    fn put(&self, name: &Name, payload: &[u8]) -> Result<()> {
        self.inbox()?
            .publish(name, payload, self.spool.file_mode())
            .map_err(|e| match e.kind() {
                // The inbox was removed under the descriptors: its client left.
                std::io::ErrorKind::NotFound => self.gone(),
                _ => self.spool.send_error(e),
            })
    }

    fn is_alive(&self) -> bool {
        self.spool.is_alive(Area::Clients, OsStr::new(&self.id))
    }
}

impl ReplySink for Way {
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        if ok && payload.len() > self.max_message {
            return Err(Error::MessageTooLarge {
                endpoint: self.spool.url().to_string(),
                size: payload.len(),
                max: self.max_message,
                limit: "the spool's max_message".into(),
            });
        }
        let name = Name::fresh(None, Some(id));
        match ok {
            true => self.put(&name, payload),
            false => self.put(
                &name.refusing(),
                &payload[..payload.len().min(self.max_message)],
            ),
        }
    }
}

/// The pushes to one client: files in its inbox, as many unread at most as `?outbox=`.
struct SpoolOutbox {
    way: Arc<Way>,
    bound: usize,
    /// What the server knows of the inbox, held while a push is written, so that one
    /// client's pushes keep their order.
    room: Mutex<Room>,
    closed: AtomicBool,
}

/// The pushes the server believes unread: counted on the way, and, once they reach the
/// bound, counted again in the inbox (the client unlinks each push it reads), at most
/// once per [`RECOUNT_INTERVAL`]: a broadcast to a client that never reads costs a full
/// push nothing more than a look at the clock, and no inotify instance is spent on it.
#[derive(Default)]
struct Room {
    unread: usize,
    counted_at: Option<Instant>,
}

impl Outbox for SpoolOutbox {
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        let way = &self.way;
        if self.closed.load(Ordering::Acquire) {
            return Err(way.gone());
        }
        if payload.len() > way.max_message {
            return Err(Error::MessageTooLarge {
                endpoint: way.spool.url().to_string(),
                size: payload.len(),
                max: way.max_message,
                limit: "the spool's max_message".into(),
            });
        }
        let mut room = lock(&self.room);
        if room.unread >= self.bound {
            self.wait_for_room(&mut room, patience)?;
        }
        way.put(&Name::fresh(None, None), payload)?;
        room.unread += 1;
        Ok(())
    }

    fn disconnect(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl SpoolOutbox {
    /// Waits up to `patience` until the client has read enough pushes to leave room for
    /// one more.
    fn wait_for_room(&self, room: &mut Room, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        let inbox = self.way.inbox()?;
        loop {
            let now = Instant::now();
            if room
                .counted_at
                .is_none_or(|at| now.duration_since(at) >= RECOUNT_INTERVAL)
            {
                room.unread = count_pushes(inbox);
                room.counted_at = Some(now);
            }
            if room.unread < self.bound {
                return Ok(());
            }
            if !self.way.is_alive() {
                return Err(self.way.gone());
            }
            if now >= deadline {
                return Err(Error::Full {
                    endpoint: self.way.spool.url().to_string(),
                    detail: format!(
                        "the inbox of client {}, which holds {} unread pushes (?outbox=), as it does not read them,",
                        self.way.id, self.bound
                    ),
                    after: patience,
                });
            }
            std::thread::sleep(RECOUNT_INTERVAL.min(deadline - now));
        }
    }
}

/// The pushes in an inbox: its files that answer no request.
fn count_pushes(inbox: &Inbox) -> usize {
    let Ok(dir) = rfs::Dir::read_from(inbox.new_dir()) else {
        return 0;
    };
    dir.filter_map(|entry| entry.ok())
        .filter(|entry| {
            Name::parse(entry.file_name().to_bytes()).is_some_and(|name| name.request().is_none())
        })
        .count()
}

/// A client in the roster.
struct Known {
    handle: ClientHandle,
    outbox: Arc<SpoolOutbox>,
}

/// The server's state, stepped without blocking by the blocking and the tokio listener.
pub(super) struct Core {
    pub(super) endpoint: Endpoint,
    url: Arc<str>,
    options: Options,
    max_message: usize,
    pub(super) queue: Queue,
    roster: Arc<Roster>,
    known: HashMap<String, Known>,
    /// Clients the server disconnected: their messages come without a handle until they
    /// leave.
    shut: HashSet<String>,
    /// Clients seen leaving, reported once none of their messages is pending.
    departing: Vec<String>,
    /// Clients among them that a push found gone (the roster let them go already).
    left_by_push: HashSet<String>,
    /// The way back to requesters outside the roster (disconnected by the server).
    ways: HashMap<String, Arc<Way>>,
    events: VecDeque<Event>,
    next_liveness: Instant,
    /// The last sender's credentials, shared while they stay the same.
    peer: Arc<Peer>,
}

impl Core {
    pub(super) fn new(endpoint: &Endpoint, options: Options) -> Result<Core> {
        let spool = Arc::new(Spool::open(endpoint, true, options.sync)?);
        let max_message = endpoint.max_message();
        let queue = Queue::open(spool, max_message, options.max_deliveries, true)?;
        let mut core = Core {
            endpoint: endpoint.clone(),
            url: endpoint.to_string().into(),
            options,
            max_message,
            queue,
            roster: Roster::new(endpoint),
            known: HashMap::new(),
            shut: HashSet::new(),
            departing: Vec::new(),
            left_by_push: HashSet::new(),
            ways: HashMap::new(),
            events: VecDeque::new(),
            next_liveness: Instant::now() + LIVENESS_INTERVAL,
            peer: Arc::default(),
        };
        core.scan_clients();
        Ok(core)
    }

    fn spool(&self) -> &Arc<Spool> {
        self.queue.spool()
    }

    pub(super) fn broadcaster(&self) -> Broadcaster {
        Broadcaster::new(self.roster.clone(), self.max_message)
    }

    /// The next event, without waiting: one already known, a client coming or going, or
    /// the next message claimed.
    pub(super) fn step(&mut self) -> Result<Option<Event>> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        while let Some(handle) = self.roster.take_departed() {
            self.departed_by_push(handle);
        }
        let mut hints = Vec::new();
        self.queue.drain(|hint| hints.push(hint))?;
        for hint in hints {
            self.client_hint(hint);
        }
        self.check_liveness();
        self.report_departures();
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        while let Some(claim) = self.queue.claim()? {
            if let Some(message) = self.message(claim) {
                // After the `Connected` of a client first seen through it.
                self.events.push_back(Event::Message(message));
                return Ok(self.events.pop_front());
            }
        }
        self.report_departures();
        Ok(self.events.pop_front())
    }

    /// The deadline of one wait: the caller's, or sooner when clients are to be looked
    /// at (the queue adds its own).
    pub(super) fn wait_until(&self, deadline: Option<Instant>) -> Option<Instant> {
        let check = (!self.known.is_empty()).then_some(self.next_liveness);
        match (deadline, check) {
            (Some(deadline), Some(check)) => Some(deadline.min(check)),
            (deadline, check) => deadline.or(check),
        }
    }

    /// When the core wants to be stepped again on its own, if ever.
    #[cfg(feature = "tokio")]
    pub(super) fn next_look(&self) -> Option<Instant> {
        match (self.wait_until(None), self.queue.next_look()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn message(&mut self, claim: Claim) -> Option<Message> {
        let Claim {
            name,
            payload,
            uid,
            gid,
            receipt,
        } = claim;
        let client = name.client().and_then(|id| self.client_of(id));
        let reply_to = match (name.request(), name.client()) {
            (Some(request), Some(id)) => {
                let way = match self.known.get(id) {
                    Some(known) => known.outbox.way.clone(),
                    None => self
                        .ways
                        .entry(id.to_owned())
                        .or_insert_with(|| {
                            Way::new(self.queue.spool().clone(), id, self.max_message)
                        })
                        .clone(),
                };
                if client.is_none() && !way.is_alive() {
                    // Nobody waits for the answer any more: the request is done with.
                    log::debug!("{}: dropped request {name}: its client has gone", self.url);
                    self.ways.remove(id);
                    receipt.acknowledge();
                    return None;
                }
                Some(ReplyTo::new(way, request))
            }
            _ => None,
        };
        if self.peer.uid != Some(uid) || self.peer.gid != Some(gid) {
            self.peer = Arc::new(Peer {
                uid: Some(uid),
                gid: Some(gid),
                ..Peer::default()
            });
        }
        let mut message = Message::new(payload, self.peer.clone(), reply_to, self.url.clone())
            .with_deliveries(name.deliveries().saturating_add(1));
        if let Some(client) = client {
            message = message.with_client(client);
        }
        match self.options.ack {
            Ack::Recv => receipt.acknowledge(),
            Ack::Done => message = message.with_settle(Box::new(receipt)),
        }
        Some(message)
    }

    /// The handle of the client `id`, joining it if it lives and was not seen yet (its
    /// arrival hint lost with others); `None` for a client that has gone or was
    /// disconnected.
    fn client_of(&mut self, id: &str) -> Option<ClientHandle> {
        if let Some(known) = self.known.get(id) {
            return Some(known.handle.clone());
        }
        if self.shut.contains(id) || !self.spool().is_alive(Area::Clients, OsStr::new(id)) {
            return None;
        }
        Some(self.join(id))
    }

    /// Puts the client `id` in the roster and its `Connected` among the events.
    fn join(&mut self, id: &str) -> ClientHandle {
        let owner = rfs::statat(
            self.spool().area(Area::Clients),
            id,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .ok();
        let peer = Arc::new(Peer {
            uid: owner.as_ref().map(|stat| stat.st_uid),
            gid: owner.as_ref().map(|stat| stat.st_gid),
            ..Peer::default()
        });
        let way = self
            .ways
            .remove(id)
            .unwrap_or_else(|| Way::new(self.spool().clone(), id, self.max_message));
        let outbox = Arc::new(SpoolOutbox {
            way,
            bound: self.options.outbox,
            room: Mutex::new(Room::default()),
            closed: AtomicBool::new(false),
        });
        if self.known.is_empty() {
            self.next_liveness = Instant::now() + LIVENESS_INTERVAL;
        }
        let handle = self.roster.join(peer, outbox.clone());
        self.known.insert(
            id.to_owned(),
            Known {
                handle: handle.clone(),
                outbox,
            },
        );
        self.events.push_back(Event::Connected(handle.clone()));
        handle
    }

    /// What a hint about `clients/` says: an inbox arrived or left, or events were lost.
    fn client_hint(&mut self, hint: Hint) {
        match hint {
            Hint::Arrived { name, .. } => {
                if let Some(id) = client_id(&name) {
                    if !self.known.contains_key(id) && !self.shut.contains(id) {
                        self.join(id);
                    }
                }
            }
            Hint::Left { name, .. } => {
                if let Some(id) = client_id(&name) {
                    self.shut.remove(id);
                    self.ways.remove(id);
                    self.depart(id);
                }
            }
            Hint::Overflow => self.scan_clients(),
        }
    }

    /// Reads `clients/` whole: live inboxes not in the roster join it, those of the
    /// roster no longer there leave, and what dead clients left is removed.
    fn scan_clients(&mut self) {
        let spool = self.spool().clone();
        let Ok(entries) = spool.entries(Area::Clients) else {
            return;
        };
        let mut present = HashSet::new();
        for entry in entries {
            let name = OsStr::from_bytes(&entry);
            let id = client_id(&entry);
            if let Some(id) = id {
                present.insert(id.to_owned());
                if self.known.contains_key(id) || self.shut.contains(id) {
                    continue;
                }
            }
            if spool.is_alive(Area::Clients, name) {
                if let Some(id) = id {
                    self.join(id);
                }
            } else if id.is_some() || left_by_the_dead(&spool, &entry) {
                // An inbox, half-made inbox or leftover of a client that is gone.
                if let Err(e) = spool.remove_inbox(name) {
                    log::debug!(
                        "{}: could not remove clients/{}: {e}",
                        self.url,
                        std::path::Path::new(name).display()
                    );
                }
            }
        }
        let left: Vec<String> = self
            .known
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in left {
            self.depart(&id);
        }
    }

    /// Looks, once a second while there are clients, whether each still holds its lock;
    /// the inbox of one that does not is removed and the client leaves.
    fn check_liveness(&mut self) {
        let now = Instant::now();
        if self.known.is_empty() || now < self.next_liveness {
            return;
        }
        self.next_liveness = now + LIVENESS_INTERVAL;
        let spool = self.spool().clone();
        let dead: Vec<String> = self
            .known
            .keys()
            .filter(|id| !self.departing.contains(id))
            .filter(|id| !spool.is_alive(Area::Clients, OsStr::new(id.as_str())))
            .cloned()
            .collect();
        for id in dead {
            log::info!(
                "{}: client {id} died without a goodbye; removing its inbox",
                self.url
            );
            let _ = spool.remove_inbox(OsStr::new(&id));
            self.depart(&id);
        }
    }

    fn depart(&mut self, id: &str) {
        if self.known.contains_key(id) && !self.departing.iter().any(|d| d == id) {
            self.departing.push(id.to_owned());
        }
    }

    /// Reports each client seen leaving once none of its messages is pending.
    fn report_departures(&mut self) {
        let mut index = 0;
        while index < self.departing.len() {
            if self.queue.has_pending_from(&self.departing[index]) {
                index += 1;
                continue;
            }
            let id = self.departing.remove(index);
            let pushed_out = self.left_by_push.remove(&id);
            if let Some(known) = self.known.remove(&id) {
                if self.roster.leave(&known.handle) || pushed_out {
                    self.events.push_back(Event::Disconnected(known.handle));
                }
            }
        }
    }

    /// A client that a push found gone, or that the server disconnected: the roster
    /// has let it go, and its departure is reported here.
    fn departed_by_push(&mut self, handle: ClientHandle) {
        let id = self
            .known
            .iter()
            .find(|(_, known)| known.handle == handle)
            .map(|(id, _)| id.clone());
        let Some(id) = id else {
            self.events.push_back(Event::Disconnected(handle));
            return;
        };
        let way = self.known[&id].outbox.way.clone();
        if way.is_alive() {
            // Disconnected by the server: its messages come without a handle from now.
            self.known.remove(&id);
            self.departing.retain(|d| *d != id);
            self.shut.insert(id.clone());
            self.ways.insert(id, way);
            self.events.push_back(Event::Disconnected(handle));
        } else {
            // Gone: reported after its messages, as for a goodbye.
            let _ = self.spool().remove_inbox(OsStr::new(&id));
            self.left_by_push.insert(id.clone());
            self.depart(&id);
        }
    }
}

impl Drop for Core {
    /// The clients' handles stop pushing with the server, as on every transport.
    fn drop(&mut self) {
        for known in self.known.values() {
            known.outbox.disconnect();
            self.roster.leave(&known.handle);
        }
        // Claimed and never handed out: given back, not acknowledged.
        for event in self.events.drain(..) {
            if let Event::Message(message) = event {
                message.unsettled();
            }
        }
    }
}

/// Whether the entry `name` of `clients/` has its lock file.
/// Whether the hidden entry `name` of `clients/`, whose lock nobody holds, was left by
/// the dead. A half-made inbox (`.ID.tmp`): once its maker has gone, as its lock is
/// made before it is locked. A removed one (`.gone-ID`): if its lock is still there
/// (its client let go of it), or once its client has gone (its remover, killed midway,
/// may have taken the lock file already).
fn left_by_the_dead(spool: &Spool, name: &[u8]) -> bool {
    if let Some(id) = name.strip_prefix(b".gone-") {
        let id = id.strip_prefix(b".").unwrap_or(id);
        has_lock(spool, name) || store::maker_gone(id)
    } else if let Some(id) = name
        .strip_prefix(b".")
        .and_then(|n| n.strip_suffix(b".tmp"))
    {
        store::maker_gone(id) && spool.older_than(Area::Clients, name, store::MAKER_GRACE)
    } else {
        false
    }
}

fn has_lock(spool: &Spool, name: &[u8]) -> bool {
    let mut lock = name.to_vec();
    lock.extend_from_slice(b"/lock");
    rfs::statat(
        spool.area(Area::Clients),
        OsStr::from_bytes(&lock),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .is_ok()
}

/// The client id an entry of `clients/` names, if it is a visible inbox.
fn client_id(name: &[u8]) -> Option<&str> {
    std::str::from_utf8(name).ok().filter(|id| names::is_id(id))
}

/// A server on a spool: one of any number of receivers sharing its messages.
pub(crate) struct SpoolListener {
    core: Core,
    /// Set by the waker: the wait in progress, or the next, returns nothing.
    stop: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl SpoolListener {
    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.core.step()? {
                return Ok(Some(event));
            }
            if self.stop.swap(false, Ordering::AcqRel)
                || deadline.is_some_and(|deadline| Instant::now() >= deadline)
            {
                return Ok(None);
            }
            let until = self.core.wait_until(deadline);
            self.core.queue.wait(until)?;
        }
    }

    #[cfg(test)]
    pub(super) fn core(&mut self) -> &mut Core {
        &mut self.core
    }
}

crate::transport::sealed!(SpoolListener);

impl Listener for SpoolListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        crate::transport::next_message(|| self.next_event(deadline))
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        self.next_event(deadline)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Some(self.core.broadcaster())
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let (stop, wake) = (self.stop.clone(), self.wake.clone());
        Arc::new(move || {
            stop.store(true, Ordering::Release);
            wake();
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}
