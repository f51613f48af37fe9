//! The server's side of pushing: each known client's inbound queue, which is its outbox,
//! and the table of clients, learnt from their hellos and messages and forgotten at their
//! goodbyes or deaths.

use std::collections::{HashMap, HashSet, VecDeque};

use super::wire::*;
use super::*;
use crate::push::{ClientHandle, Event, Outbox, Roster};

/// How often a server with clients looks whether each is still there: a crashed client
/// says no goodbye.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// How often a push waiting for room in a full inbound queue looks whether its client
/// still runs.
const FULL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A client's inbound queue, as the server writes into it. Blocking, so that a push waits
/// for room in the kernel's line of senders (see [`send_by`]).
struct MqOutbox {
    endpoint: Endpoint,
    name: String,
    pid: i32,
    /// The queue, opened at the first push: a client that is never pushed to costs the
    /// server nothing. `None` once the queue was found gone.
    opened: OnceLock<Option<Opened>>,
    /// Held while a push is written, so that the pieces of one are consecutive; the next
    /// time a push that finds the queue full may look whether the client still runs.
    turn: Mutex<Instant>,
    closed: AtomicBool,
    /// A push found the queue full: later ones wait for it to drain to half, so that a
    /// client that does not read is full for small pushes as for large ones.
    full: AtomicBool,
    /// The server closed the way while the queue was full: the notice is still to send.
    notice_owed: AtomicBool,
}

/// A client's inbound queue, open for writing.
struct Opened {
    queue: Queue,
    /// Its message size, a piece's mark and data, and how many it holds.
    msgsize: usize,
    maxmsg: usize,
}

impl MqOutbox {
    /// The queue, opened if it was not; `None` if it is gone, and with it its client.
    fn opened(&self) -> Option<&Opened> {
        self.opened
            .get_or_init(|| {
                // Never O_CREAT: an inbound queue that is gone means its client is gone.
                let queue = nix::mqueue::mq_open(
                    self.name.as_str(),
                    MQ_OFlag::O_WRONLY | MQ_OFlag::O_CLOEXEC,
                    Mode::empty(),
                    None,
                )
                .map(|queue| Queue(Some(queue)))
                .ok()?;
                let attr = nix::mqueue::mq_getattr(&queue).ok()?;
                Some(Opened {
                    queue,
                    msgsize: attr.msgsize() as usize,
                    maxmsg: attr.maxmsg() as usize,
                })
            })
            .as_ref()
    }

    fn gone(&self) -> Error {
        Error::Disconnected {
            endpoint: self.endpoint.to_string(),
            detail: format!("the client of the inbound queue {} has gone", self.name),
        }
    }

    /// Tells the client that the server closed the way, if its queue has room; otherwise
    /// the notice stays owed.
    fn send_notice(&self) {
        let Some(Opened { queue, .. }) = self.opened() else {
            return;
        };
        let _turn = crate::sys::lock(&self.turn);
        let sent = send_by(&self.endpoint, queue, &[CLOSED], 0, &NOW_OR_NEVER);
        self.notice_owed
            .store(!matches!(sent, Ok(true)), Ordering::Release);
    }
}

impl Outbox for MqOutbox {
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.gone());
        }
        let Some(opened) = self.opened() else {
            return Err(self.gone());
        };
        let (queue, maxmsg) = (&opened.queue, opened.maxmsg);
        let piece = opened.msgsize - 1;
        let pieces = payload.len().div_ceil(piece).max(1);
        if pieces > maxmsg {
            return Err(Error::MessageTooLarge {
                endpoint: self.endpoint.to_string(),
                size: payload.len(),
                max: maxmsg * piece,
                limit: "the client's inbound queue".into(),
            });
        }
        let mut turn = crate::sys::lock(&self.turn);
        let deadline = Instant::now() + patience;
        if self.full.load(Ordering::Acquire) {
            let half = maxmsg.div_ceil(2);
            self.wait_for_room(opened, pieces.max(half), deadline, patience, &mut turn)?;
            self.full.store(false, Ordering::Release);
        }
        if pieces == 1 {
            let mut message = [0u8; 512];
            let mut large = Vec::new();
            let message = marked(PIECE_LAST, payload, &mut message, &mut large);
            let send = |until: &TimeSpec| send_by(&self.endpoint, queue, message, 0, until);
            if send(&NOW_OR_NEVER)? {
                return Ok(());
            }
            // Full. A client that died leaves its queue full for good: say so at once, and
            // while waiting for room (in the kernel's line), look again now and then.
            loop {
                if self.died(&mut turn) {
                    return Err(self.gone());
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    self.full.store(true, Ordering::Release);
                    return Err(self.full(maxmsg, patience));
                }
                if send(&realtime_deadline(left.min(FULL_CHECK_INTERVAL)))? {
                    return Ok(());
                }
            }
        }
        // In pieces, all at once or none: this server is the queue's only writer, so room
        // for every piece stays room until they are written.
        self.wait_for_room(opened, pieces, deadline, patience, &mut turn)?;
        let mut large = Vec::with_capacity(opened.msgsize);
        let mut chunks = payload.chunks(piece).peekable();
        while let Some(chunk) = chunks.next() {
            let mark = if chunks.peek().is_some() {
                PIECE_MORE
            } else {
                PIECE_LAST
            };
            let message = marked(mark, chunk, &mut [], &mut large);
            if !send_by(&self.endpoint, queue, message, 0, &NOW_OR_NEVER)? {
                // Only if a process other than the server writes into the queue.
                return Err(self.full(maxmsg, patience));
            }
        }
        Ok(())
    }

    fn disconnect(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.send_notice();
        }
    }
}

impl MqOutbox {
    /// Waits until `deadline` for room for `wanted` messages, looking now and then; `Full`
    /// if there is none by then, `Disconnected` if the client is gone.
    fn wait_for_room(
        &self,
        Opened { queue, maxmsg, .. }: &Opened,
        wanted: usize,
        deadline: Instant,
        patience: Duration,
        next_check: &mut Instant,
    ) -> Result<()> {
        loop {
            let held = nix::mqueue::mq_getattr(queue).map_or(*maxmsg, |a| a.curmsgs() as usize);
            if maxmsg.saturating_sub(held) >= wanted {
                return Ok(());
            }
            if self.died(next_check) {
                return Err(self.gone());
            }
            let now = Instant::now();
            if now >= deadline {
                self.full.store(true, Ordering::Release);
                return Err(self.full(*maxmsg, patience));
            }
            std::thread::sleep((deadline - now).min(Duration::from_micros(500)));
        }
    }

    /// Whether the client is found gone, looking at most once per [`FULL_CHECK_INTERVAL`]
    /// (a few syscalls), as told by `next_check`.
    fn died(&self, next_check: &mut Instant) -> bool {
        let now = Instant::now();
        if now < *next_check {
            return false;
        }
        *next_check = now + FULL_CHECK_INTERVAL;
        !client_alive(self.pid, &self.name)
    }

    fn full(&self, maxmsg: usize, patience: Duration) -> Error {
        Error::Full {
            endpoint: self.endpoint.to_string(),
            detail: format!(
                "the client's inbound queue {}, which holds {} messages, as it does not read them,",
                self.name, maxmsg
            ),
            after: patience,
        }
    }
}

/// `data` after its `mark`, in `small` if it fits, else in `large`.
fn marked<'a>(mark: u8, data: &[u8], small: &'a mut [u8], large: &'a mut Vec<u8>) -> &'a [u8] {
    if data.len() < small.len() {
        small[0] = mark;
        small[1..=data.len()].copy_from_slice(data);
        &small[..=data.len()]
    } else {
        large.clear();
        large.push(mark);
        large.extend_from_slice(data);
        &large[..]
    }
}

/// Whether the client of the inbound queue `name` is there: its process runs, and its
/// queue was not removed (as a client does when dropped).
fn client_alive(pid: i32, name: &str) -> bool {
    let runs = rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
        !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        )
    });
    let open = nix::mqueue::mq_open(
        name,
        MQ_OFlag::O_WRONLY | MQ_OFlag::O_CLOEXEC,
        Mode::empty(),
        None,
    );
    // Only a queue that is not there says so: running out of descriptors says nothing.
    runs && !matches!(
        open.map(|queue| drop(Queue(Some(queue)))),
        Err(Errno::ENOENT)
    )
}

/// The clients a server knows, by inbound queue.
pub(super) struct Clients {
    endpoint: Endpoint,
    /// Inbound queues of this endpoint's clients start with this.
    prefix: String,
    pub(super) roster: Arc<Roster>,
    known: HashMap<String, (ClientHandle, Arc<MqOutbox>)>,
    /// Clients the server closed the way to: their messages come without a handle, until
    /// their goodbye.
    shut: HashSet<String>,
    anonymous: Arc<Peer>,
    next_check: Instant,
}

impl Clients {
    pub(super) fn new(endpoint: &Endpoint, prefix: String, anonymous: Arc<Peer>) -> Clients {
        Clients {
            endpoint: endpoint.clone(),
            prefix,
            roster: Roster::new(endpoint),
            known: HashMap::new(),
            shut: HashSet::new(),
            anonymous,
            next_check: Instant::now() + LIVENESS_INTERVAL,
        }
    }

    /// The handle of the client of the inbound queue `name`, joining it (and putting its
    /// `Connected` in `events`) if it is new; `None` for a client that has gone or whose
    /// way the server closed.
    pub(super) fn of(&mut self, name: &str, events: &mut VecDeque<Event>) -> Option<ClientHandle> {
        if let Some((handle, _)) = self.known.get(name) {
            return Some(handle.clone());
        }
        if self.shut.contains(name) {
            return None;
        }
        let pid = inbound_pid(name, &self.prefix)?;
        let outbox = Arc::new(MqOutbox {
            endpoint: self.endpoint.clone(),
            name: name.to_owned(),
            pid,
            opened: OnceLock::new(),
            turn: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            notice_owed: AtomicBool::new(false),
        });
        let handle = self.roster.join(self.anonymous.clone(), outbox.clone());
        self.known.insert(name.to_owned(), (handle.clone(), outbox));
        events.push_back(Event::Connected(handle.clone()));
        Some(handle)
    }

    /// The client of the inbound queue `name` said goodbye.
    pub(super) fn bye(&mut self, name: &str, events: &mut VecDeque<Event>) {
        self.shut.remove(name);
        if let Some((handle, _)) = self.known.remove(name) {
            if self.roster.leave(&handle) {
                events.push_back(Event::Disconnected(handle));
            }
        }
    }

    /// When the server should next look for clients that left without a word.
    pub(super) fn next_check(&self) -> Option<Instant> {
        (!self.known.is_empty() || !self.shut.is_empty()).then_some(self.next_check)
    }

    /// Looks for clients that crashed or removed their queue without a goodbye, if it is
    /// time: each is reported, and its queue removed if its process is gone.
    pub(super) fn check(&mut self, events: &mut VecDeque<Event>) {
        let now = Instant::now();
        if now < self.next_check {
            return;
        }
        self.next_check = now + LIVENESS_INTERVAL;
        let mut left = Vec::new();
        for (name, (handle, outbox)) in &self.known {
            if !handle.is_connected() {
                // Disconnected by the server, or found gone by a push (which the generic
                // layer reports).
                left.push((name.clone(), None));
            } else if !client_alive(outbox.pid, name) {
                left.push((name.clone(), Some(handle.clone())));
            }
        }
        for (name, handle) in left {
            let (_, outbox) = self.known.remove(&name).expect("listed above");
            match handle {
                Some(handle) => {
                    if self.roster.leave(&handle) {
                        events.push_back(Event::Disconnected(handle));
                    }
                    reclaim(&outbox);
                }
                None if client_alive(outbox.pid, &name) => {
                    if outbox.notice_owed.load(Ordering::Acquire) {
                        outbox.send_notice();
                    }
                    self.shut.insert(name);
                }
                None => reclaim(&outbox),
            }
        }
        // Those shut out that are gone since need no more remembering.
        self.shut.retain(|name| {
            inbound_pid(name, &self.prefix).is_some_and(|pid| client_alive(pid, name))
        });
    }

    /// Tells every client that the server is closing, where its queue has room.
    pub(super) fn close_all(&mut self) {
        for (handle, outbox) in self.known.values() {
            self.roster.leave(handle);
            outbox.disconnect();
        }
        self.known.clear();
    }
}

/// Removes the queue of a client whose process is gone (a live one removes its own).
fn reclaim(outbox: &MqOutbox) {
    let gone = rustix::process::Pid::from_raw(outbox.pid)
        .is_none_or(|pid| rustix::process::test_kill_process(pid).is_err());
    if gone {
        log::info!(
            "{}: removing the inbound queue {} of a client that is gone",
            outbox.endpoint,
            outbox.name
        );
        let _ = nix::mqueue::mq_unlink(outbox.name.as_str());
    }
}
