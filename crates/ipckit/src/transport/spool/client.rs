//! A spool's client: it publishes into the spool's `new/`, and takes what receivers put
//! into its own inbox, `clients/ID/new/`: replies (`,q=N`, a refusal `,q=N,e`) for its
//! requests and pushes (no `q=`) for its `recv`.
//!
//! There is no reader thread (docs/DESIGN.md, "No hidden hand-off"): whichever caller
//! waits reads the inbox for everyone ([`Correlator`]), woken by inotify on the inbox's
//! `new/` and on `receivers/`. The same [`Core`] serves the async client
//! (`client_tokio.rs`), which waits on the same inotify descriptor through tokio.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::names::Name;
use super::store::{self, Area, Inbox, Spool};
use super::watch::{ARRIVALS, COMINGS_AND_GOINGS, Hint, Watch};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::transport::Connection;
use crate::transport::correlate::{Correlator, NoAnswer};

/// How often a client that waits looks whether the receivers it knew still hold their
/// locks: a killed receiver leaves its file in `receivers/` and says no goodbye.
const RECEIVER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Opens the spool of `endpoint` (making it where missing: a durable queue takes messages
/// before any receiver runs) and makes this client's inbox.
pub(super) fn connect(endpoint: &Endpoint) -> Result<SpoolConnection> {
    let core = Core::open(endpoint, endpoint.sync())?;
    Ok(SpoolConnection {
        core,
        reader: Mutex::new(None),
    })
}

/// What a file in the inbox holds.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A reply or a push.
    Payload(Vec<u8>),
    /// A refusal of the request, with the receiver's reason.
    Refusal(String),
    /// A file larger than this client's `max_message`, of this many bytes: removed unread.
    Oversized(u64),
}

/// A name in the inbox, in the order the inbox is read.
#[derive(Debug, PartialEq, Eq)]
/// A name in the inbox, with the bytes it has there: a name with its flags in another
/// order than ipckit writes them is still opened as it is.
struct Pending(Name, Vec<u8>);

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.order(&other.0).then_with(|| self.1.cmp(&other.1))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The inbox as the one caller reading it at a time knows it: the watch, the names seen
/// and not yet read, and what it knows of the receivers.
pub(super) struct Reader {
    watch: Watch,
    inbox_dir: i32,
    receivers_dir: i32,
    pending: BTreeSet<Pending>,
    /// The watch may have missed names (at start, after an overflow): list the inbox.
    rescan: bool,
    /// Something came or went in `receivers/`.
    look_at_receivers: bool,
    saw_receiver: bool,
    next_check: Instant,
    /// Every receiver seen has gone; `recv` ends once the pushes before are taken.
    receivers_gone: bool,
    /// The process had no descriptor to spare for reading the inbox: try again then.
    retry_at: Option<Instant>,
}

impl Reader {
    /// When to read again without a hint: the receivers are next to be looked at (while
    /// that still matters), or a read that found no descriptor tries again.
    pub(super) fn next_check(&self) -> Option<Instant> {
        let check = (!self.receivers_gone).then_some(self.next_check);
        match (check, self.retry_at) {
            (Some(check), Some(retry)) => Some(check.min(retry)),
            (check, retry) => check.or(retry),
        }
    }

    /// The watch, whose descriptor an async client polls.
    #[cfg(feature = "tokio")]
    pub(super) fn watch(&self) -> &Watch {
        &self.watch
    }
}

/// What a client of either API holds: the spool it sends into, its inbox, and the books
/// of its requests and pushes.
pub(super) struct Core {
    pub(super) endpoint: Endpoint,
    pub(super) url: String,
    pub(super) max: usize,
    /// Whether a send flushes to disk: the async client runs such sends on the blocking pool.
    #[cfg(feature = "tokio")]
    pub(super) sync: bool,
    pub(super) answers: Correlator<Incoming>,
    next_request: AtomicU64,
    /// Dropped before the spool: the inbox's goodbye (`Inbox::drop`).
    inbox: Inbox,
    spool: Spool,
}

impl Core {
    pub(super) fn open(endpoint: &Endpoint, sync: bool) -> Result<Core> {
        let spool = Spool::open(endpoint, false, sync)?;
        let url = spool.url().to_string();
        let inbox = spool.make_inbox()?;
        Ok(Core {
            endpoint: endpoint.clone(),
            answers: Correlator::new(&url),
            url,
            max: endpoint.max_message(),
            #[cfg(feature = "tokio")]
            sync,
            next_request: AtomicU64::new(0),
            inbox,
            spool,
        })
    }

    /// The reader of this client's inbox, made when the client first waits for a reply
    /// or a push: a client that only sends (the usual producer) takes no inotify
    /// instance, of which a user has 128 by default. What arrived before is found by the
    /// reader's first listing.
    pub(super) fn reader(&self) -> std::result::Result<Reader, String> {
        let watching = |e| format!("watching the client's inbox: {e}");
        let watch = Watch::new().map_err(watching)?;
        let inbox_dir = watch
            .add(self.inbox.new_dir(), ARRIVALS)
            .map_err(watching)?;
        let receivers_dir = watch
            .add(self.spool.area(Area::Receivers), COMINGS_AND_GOINGS)
            .map_err(watching)?;
        Ok(Reader {
            watch,
            inbox_dir,
            receivers_dir,
            pending: BTreeSet::new(),
            rescan: true,
            look_at_receivers: true,
            saw_receiver: false,
            next_check: Instant::now(),
            receivers_gone: false,
            retry_at: None,
        })
    }

    /// This client's id, as its messages name it (`,c=ID`).
    pub(super) fn id(&self) -> &str {
        self.inbox.id()
    }

    /// A number for a request (or an async `recv`'s place in the books), never reused.
    pub(super) fn next_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// Refuses a payload over `max_message` before anything is written.
    pub(super) fn check_size(&self, payload: &[u8]) -> Result<()> {
        if payload.len() > self.max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: payload.len(),
                max: self.max,
                limit: "this endpoint's max_message".into(),
            });
        }
        Ok(())
    }

    /// Publishes a message of this client's into the spool: a one-way message, or the
    /// request `request`.
    pub(super) fn publish(&self, request: Option<u64>, payload: &[u8]) -> Result<()> {
        self.spool
            .publish(&Name::fresh(Some(self.id()), request), payload)
    }

    /// The reply to a request, as the caller gets it.
    pub(super) fn outcome(
        &self,
        answer: std::result::Result<Incoming, NoAnswer>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        match answer {
            Ok(Incoming::Payload(reply)) => Ok(reply),
            Ok(Incoming::Refusal(reason)) => Err(Error::Remote {
                endpoint: self.url.clone(),
                reason,
            }),
            Ok(Incoming::Oversized(size)) => Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: size.try_into().unwrap_or(usize::MAX),
                max: self.max,
                limit: "this client's max_message, for the reply, which was removed unread".into(),
            }),
            Err(NoAnswer::TimedOut) => Err(Error::Timeout {
                endpoint: self.url.clone(),
                after: timeout,
            }),
            Err(NoAnswer::Broken(detail)) => Err(self.broken(detail)),
        }
    }

    /// The error of a `recv` that will get no more pushes, or of a client whose inbox
    /// could no longer be read.
    pub(super) fn broken(&self, detail: String) -> Error {
        Error::Disconnected {
            endpoint: self.url.clone(),
            detail,
        }
    }

    /// Reads what the inbox has, without waiting: replies go to their requests, pushes
    /// to `recv`, and `recv` is ended once every receiver seen has gone. True when it
    /// took anything or ended `recv`, so that the callers look at the books again. An
    /// error is why the inbox can no longer be read.
    pub(super) fn read(&self, reader: &mut Reader) -> std::result::Result<bool, String> {
        let Reader {
            inbox_dir,
            receivers_dir,
            ..
        } = *reader;
        let mut foreign = Vec::new();
        let (pending, rescan, look) = (
            &mut reader.pending,
            &mut reader.rescan,
            &mut reader.look_at_receivers,
        );
        reader
            .watch
            .drain(|hint| match hint {
                Hint::Arrived { dir, name } if dir == inbox_dir => match Name::parse(&name) {
                    Some(parsed) => {
                        pending.insert(Pending(parsed, name));
                    }
                    None => foreign.push(name),
                },
                Hint::Arrived { dir, .. } | Hint::Left { dir, .. } if dir == receivers_dir => {
                    *look = true
                }
                Hint::Overflow => {
                    *rescan = true;
                    *look = true;
                }
                _ => {}
            })
            .map_err(|e| format!("reading the inbox's inotify events: {e}"))?;
        let mut progress = false;
        let now = Instant::now();
        reader.retry_at = None;
        let mut ending = !reader.receivers_gone
            && (reader.look_at_receivers || now >= reader.next_check)
            && self.receivers_gone(reader, now);
        if ending {
            // A receiver publishes its pushes before it leaves: a listing now finds them
            // all, whatever the events said.
            reader.rescan = true;
        }
        if std::mem::take(&mut reader.rescan) {
            let names = match store::entries(self.inbox.new_dir()) {
                Err(e) if out_of_descriptors(&e) => {
                    reader.starved(now);
                    Vec::new()
                }
                listed => listed.map_err(|e| format!("listing the client's inbox: {e}"))?,
            };
            for name in names {
                match Name::parse(&name) {
                    Some(parsed) => {
                        reader.pending.insert(Pending(parsed, name));
                    }
                    None => foreign.push(name),
                }
            }
        }
        for name in foreign {
            self.discard(&name, "its name is not a spool message's");
        }
        let mut left_on_disk = Vec::new();
        while let Some(Pending(name, raw)) = reader.pending.pop_first() {
            // A client that takes no pushes leaves them in its inbox, where its server
            // counts them against ?outbox=, rather than in memory past what it says.
            // Once one is left, every later one is too, whatever `recv` took meanwhile:
            // pushes keep their order.
            if name.request().is_none()
                && (!left_on_disk.is_empty() || self.answers.pushes_waiting() >= PUSHES_READ_AHEAD)
            {
                left_on_disk.push(Pending(name, raw));
                continue;
            }
            let incoming = match self.take(&raw) {
                Ok(Some(incoming)) => incoming,
                Ok(None) => continue,
                Err(OutOfDescriptors) => {
                    reader.pending.insert(Pending(name, raw));
                    reader.starved(now);
                    break;
                }
            };
            progress = true;
            match (name.request(), incoming) {
                (Some(request), Incoming::Payload(reply)) if name.is_refusal() => {
                    let reason = String::from_utf8_lossy(&reply).into_owned();
                    self.answers.deliver(request, Incoming::Refusal(reason))
                }
                (Some(request), incoming) => self.answers.deliver(request, incoming),
                (None, Incoming::Oversized(size)) => log::warn!(
                    "{}: removed unread a pushed message of {size} bytes, over this client's max_message of {}",
                    self.url,
                    self.max
                ),
                (None, push) => self.answers.file_push(push),
            }
        }
        if !left_on_disk.is_empty() {
            reader.pending.extend(left_on_disk);
            // They come before the end: look at the receivers again once they are taken.
            ending = false;
            reader.look_at_receivers = true;
            // A `recv` that empties memory meanwhile may find this reader held by a
            // request's caller, which then reads again soon, not at its next check.
            reader.retry_at = Some(now + READ_AHEAD_RETRY);
        }
        // Pushes left unread for want of a descriptor come before the end.
        ending &= reader.retry_at.is_none();
        if ending {
            reader.receivers_gone = true;
            self.answers.end_pushes(
                "every receiver of the spool has gone; messages sent now wait in the spool for the next one (connect again to take its pushes)".into(),
            );
            progress = true;
        }
        Ok(progress)
    }

    /// Whether every receiver this client saw has gone, looking at their locks.
    fn receivers_gone(&self, reader: &mut Reader, now: Instant) -> bool {
        reader.look_at_receivers = false;
        reader.next_check = now + RECEIVER_CHECK_INTERVAL;
        match self.spool.live_receivers() {
            Ok(0) => reader.saw_receiver,
            Ok(_) => {
                reader.saw_receiver = true;
                false
            }
            Err(e) => {
                log::debug!("{}: could not look at receivers/: {e}", self.url);
                false
            }
        }
    }

    /// Reads the inbox file `name` and removes it; `None` when it is gone or unreadable
    /// (logged and removed), an error when the process has no descriptor to open it
    /// with (left for a later read).
    fn take(&self, raw: &[u8]) -> std::result::Result<Option<Incoming>, OutOfDescriptors> {
        let file_name = OsStr::from_bytes(raw);
        let file = match rfs::openat(
            self.inbox.new_dir(),
            file_name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(file) => file,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::MFILE | Errno::NFILE) => return Err(OutOfDescriptors),
            Err(e) => {
                self.discard(file_name.as_bytes(), &format!("it cannot be opened ({e})"));
                return Ok(None);
            }
        };
        let read = (|| -> std::io::Result<Incoming> {
            let stat = rfs::fstat(&file)?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(std::io::Error::other("it is not a regular file"));
            }
            let size = stat.st_size as u64;
            if size > self.max as u64 {
                return Ok(Incoming::Oversized(size));
            }
            let mut payload = Vec::with_capacity(size as usize);
            // Read to the end, never past max_message, whatever the size said.
            std::fs::File::from(file)
                .take(self.max as u64 + 1)
                .read_to_end(&mut payload)?;
            if payload.len() > self.max {
                return Ok(Incoming::Oversized(payload.len() as u64));
            }
            Ok(Incoming::Payload(payload))
        })();
        match read {
            Ok(incoming) => {
                let _ = rfs::unlinkat(self.inbox.new_dir(), file_name, AtFlags::empty());
                Ok(Some(incoming))
            }
            Err(e) => {
                self.discard(file_name.as_bytes(), &e.to_string());
                Ok(None)
            }
        }
    }

    /// Removes what does not belong in the inbox, saying why: nobody else reads it.
    fn discard(&self, name: &[u8], why: &str) {
        let name = OsStr::from_bytes(name);
        let removed = rfs::unlinkat(self.inbox.new_dir(), name, AtFlags::empty())
            .or_else(|_| rfs::unlinkat(self.inbox.new_dir(), name, AtFlags::REMOVEDIR));
        log::warn!(
            "{}: {} {:?} from the client's inbox: {why}",
            self.url,
            if removed.is_ok() {
                "removed"
            } else {
                "could not remove"
            },
            name
        );
    }
}

/// A read of the inbox found no descriptor to spare: as a client whose threads all send
/// at once may be, near its limit. What was not read waits for the next read.
struct OutOfDescriptors;

/// How many pushes a client reads ahead of its `recv`; the rest wait in its inbox.
const PUSHES_READ_AHEAD: usize = 64;

/// How soon a reader that left pushes in the inbox reads again.
const READ_AHEAD_RETRY: Duration = Duration::from_millis(50);

/// How soon a read that found no descriptor tries again.
const STARVED_RETRY: Duration = Duration::from_millis(5);

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

impl Reader {
    fn starved(&mut self, now: Instant) {
        self.rescan = true;
        self.retry_at = Some(now + STARVED_RETRY);
    }
}

/// A blocking client of a spool.
pub(crate) struct SpoolConnection {
    core: Core,
    /// Made by the first caller to wait (see [`Core::reader`]).
    reader: Mutex<Option<Reader>>,
}

impl SpoolConnection {
    /// Reads the inbox as the caller holding it, waiting until `until` for something to
    /// arrive: looks at the receivers when due, and returns once it took anything.
    fn read_until(
        &self,
        slot: &mut Option<Reader>,
        until: Instant,
    ) -> std::result::Result<(), String> {
        let reader = match slot {
            Some(reader) => reader,
            None => slot.insert(self.core.reader()?),
        };
        loop {
            if self.core.read(reader)? {
                return Ok(());
            }
            let wake_at = reader.next_check().map_or(until, |check| check.min(until));
            let woken = reader
                .watch
                .wait(Some(wake_at))
                .map_err(|e| format!("waiting on the inbox's inotify: {e}"))?;
            if !woken && Instant::now() >= until {
                return Ok(());
            }
        }
    }
}

impl SpoolConnection {
    /// Reads what the inbox holds without waiting, unless another caller is reading it:
    /// a `recv` whose deadline has passed still takes what has come.
    fn read_now(&self) {
        let Ok(mut slot) = self.reader.try_lock() else {
            return;
        };
        let read = match &mut *slot {
            Some(reader) => self.core.read(reader),
            None => self
                .core
                .reader()
                .and_then(|reader| self.core.read(slot.insert(reader))),
        };
        drop(slot);
        match read {
            Ok(_) => self.core.answers.release_followers(),
            Err(detail) => self.core.answers.break_off(detail),
        }
    }
}

crate::transport::sealed!(SpoolConnection);

impl Connection for SpoolConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.core.check_size(payload)?;
        self.core.publish(None, payload)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let core = &self.core;
        core.check_size(payload)?;
        let deadline = Instant::now() + timeout;
        let id = core.next_id();
        core.answers.register(id);
        if let Err(e) = core.publish(Some(id), payload) {
            core.answers.forget(id);
            return Err(e);
        }
        let answer = core
            .answers
            .await_answer(id, deadline, &self.reader, |reader, until| {
                self.read_until(reader, until).map(|()| None)
            });
        core.outcome(answer, timeout)
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            self.read_now();
        }
        let pushed = self
            .core
            .answers
            .await_push(deadline, &self.reader, |reader, until| {
                self.read_until(reader, until).map(|()| None)
            });
        match pushed {
            Ok(Some(Incoming::Payload(push))) => Ok(Some(push)),
            Ok(Some(other)) => unreachable!("only payloads are filed as pushes: {other:?}"),
            Ok(None) => Ok(None),
            Err(detail) => Err(self.core.broken(detail)),
        }
    }

    fn max_message(&self) -> usize {
        self.core.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}

/// A stand-in for the receiving half, built on the store, for the clients' tests.
#[cfg(test)]
pub(super) mod test_server;

#[cfg(test)]
mod tests {
    use super::test_server::*;
    use super::*;

    #[test]
    fn a_send_lands_whole_in_new_naming_its_client_in_send_order() {
        let s = Scratch::new("send");
        let client = connect(&s.endpoint("")).unwrap();
        let payloads: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("message {i}").into_bytes())
            .collect();
        for payload in &payloads {
            client.send(payload).unwrap();
        }
        client.send(b"").unwrap();
        let names = s.names("new");
        assert_eq!(names.len(), payloads.len() + 1);
        for (name, payload) in names.iter().zip(payloads.iter().chain([&Vec::new()])) {
            assert_eq!(name.client(), Some(client.core.id()));
            assert_eq!(name.request(), None);
            let file = s.spool().join("new").join(name.to_string());
            assert_eq!(&std::fs::read(file).unwrap(), payload);
        }
        assert!(s.names("tmp").is_empty());
    }

    #[test]
    fn an_oversized_message_is_refused_before_anything_is_written() {
        let s = Scratch::new("oversized");
        let client = connect(&s.endpoint("?max_message=16")).unwrap();
        assert_eq!(client.max_message(), 16);
        for refused in [
            client.send(&[7; 17]),
            client.request(&[7; 17], PATIENCE).map(drop),
        ] {
            let err = refused.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::MessageTooLarge {
                        size: 17,
                        max: 16,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        assert!(s.names("new").is_empty() && s.names("tmp").is_empty());
        client.send(&[7; 16]).unwrap();
        assert_eq!(s.names("new").len(), 1);
    }

    #[test]
    fn requests_from_many_threads_each_get_their_own_reply_and_a_refusal_is_remote() {
        let s = Scratch::new("requests");
        let client = connect(&s.endpoint("")).unwrap();
        let receiver = s.receiver();
        let (threads, each) = (4, 10);
        std::thread::scope(|scope| {
            let server = scope.spawn(move || receiver.serve(threads * each + 1));
            for t in 0..threads {
                let client = &client;
                scope.spawn(move || {
                    for i in 0..each {
                        let asked = format!("{t}/{i}");
                        let reply = client.request(asked.as_bytes(), PATIENCE).unwrap();
                        assert_eq!(reply, format!("re:{asked}").into_bytes());
                    }
                });
            }
            let refused = client.request(b"refuse:not today", PATIENCE);
            match refused {
                Err(Error::Remote { reason, .. }) => assert_eq!(reason, "not today"),
                other => panic!("{other:?}"),
            }
            server.join().unwrap();
        });
        assert!(inbox_files(&s.spool(), client.core.id()).is_empty());
    }

    #[test]
    fn a_request_times_out_and_its_late_reply_is_removed_unread() {
        let s = Scratch::new("late");
        let client = connect(&s.endpoint("")).unwrap();
        let receiver = s.receiver();
        let err = client
            .request(b"slow", Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        let (late, _) = receiver.next();
        receiver.answer(&late, b"too late", false);
        let receiver = std::thread::scope(|scope| {
            let server = scope.spawn(|| receiver.serve(1));
            assert_eq!(client.request(b"next", PATIENCE).unwrap(), b"re:next");
            server.join().unwrap()
        });
        assert!(inbox_files(&s.spool(), client.core.id()).is_empty());
        assert_eq!(client.core.answers.in_flight(), 0);
        // Nor is it taken for a push.
        receiver.push(client.core.id(), b"pushed");
        assert_eq!(client.recv(None).unwrap().unwrap(), b"pushed");
    }

    /// A client that makes requests and takes no pushes reads only so many ahead of its
    /// `recv`: the rest stay in its inbox, where the server counts them against its
    /// outbox, and every one arrives, in order, when `recv` comes.
    #[test]
    fn pushes_not_taken_stay_in_the_inbox_past_the_read_ahead() {
        let s = Scratch::new("read-ahead");
        let client = connect(&s.endpoint("")).unwrap();
        let receiver = s.receiver();
        let count = PUSHES_READ_AHEAD + 36;
        for seq in 0..count {
            receiver.push(client.core.id(), seq.to_string().as_bytes());
        }
        let receiver = std::thread::scope(|scope| {
            let server = scope.spawn(|| receiver.serve(1));
            assert_eq!(client.request(b"q", PATIENCE).unwrap(), b"re:q");
            server.join().unwrap()
        });
        let on_disk = inbox_files(&s.spool(), client.core.id()).len();
        assert_eq!(on_disk, count - PUSHES_READ_AHEAD);
        for seq in 0..count {
            assert_eq!(
                client.recv(None).unwrap().unwrap(),
                seq.to_string().as_bytes()
            );
        }
        drop(receiver);
    }

    #[test]
    fn a_request_waits_for_a_receiver_that_starts_later() {
        let s = Scratch::new("durable");
        let client = connect(&s.endpoint("")).unwrap();
        client.send(b"before").unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // Started once the request is in the spool.
                let deadline = Instant::now() + PATIENCE;
                while s.names("new").len() < 2 {
                    assert!(Instant::now() < deadline);
                    std::thread::sleep(Duration::from_millis(1));
                }
                let receiver = s.receiver();
                assert_eq!(receiver.next().1, b"before");
                receiver.serve(1);
            });
            assert_eq!(client.request(b"later", PATIENCE).unwrap(), b"re:later");
        });
    }

    #[test]
    fn pushes_arrive_in_order_then_disconnected_once_the_receiver_left() {
        let s = Scratch::new("pushes");
        let client = connect(&s.endpoint("")).unwrap();
        let receiver = s.receiver();
        let id = client.core.id().to_owned();
        assert_eq!(client.recv(Some(Instant::now())).unwrap(), None);
        receiver.push(&id, b"first");
        // A deadline already passed still takes what has come.
        assert_eq!(
            client.recv(Some(Instant::now())).unwrap().unwrap(),
            b"first"
        );
        for i in 0..5 {
            receiver.push(&id, format!("push {i}").as_bytes());
        }
        drop(receiver);
        for i in 0..5 {
            assert_eq!(
                client.recv(None).unwrap().unwrap(),
                format!("push {i}").into_bytes()
            );
        }
        for _ in 0..2 {
            let err = client.recv(Some(Instant::now() + PATIENCE)).unwrap_err();
            assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
        }
        assert!(inbox_files(&s.spool(), &id).is_empty());
    }

    #[test]
    fn a_receiver_whose_lock_is_free_has_gone() {
        let s = Scratch::new("killed");
        let client = connect(&s.endpoint("")).unwrap();
        // A receiver's lock as a killed one leaves it: the file stays, the lock goes,
        // and so does the process its id names.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let path = s.spool().join(format!("receivers/{}-dead-0", child.id()));
        let lock = std::fs::File::create(&path).unwrap();
        rfs::flock(&lock, rfs::FlockOperation::NonBlockingLockExclusive).unwrap();
        let Receiver {
            spool,
            registration,
        } = s.receiver();
        drop(registration);
        let id = client.core.id().to_owned();
        push(&spool, &id, b"while it lived");
        assert_eq!(client.recv(None).unwrap().unwrap(), b"while it lived");
        push(&spool, &id, b"last words");
        drop(lock);
        child.wait().unwrap();
        assert_eq!(client.recv(None).unwrap().unwrap(), b"last words");
        let err = client.recv(Some(Instant::now() + PATIENCE)).unwrap_err();
        assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
        assert!(!path.exists());
    }

    #[test]
    fn recv_waits_before_any_receiver_appears() {
        let s = Scratch::new("no-receiver");
        let client = connect(&s.endpoint("")).unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(client.recv(Some(soon)).unwrap(), None);
    }

    #[test]
    fn dropping_the_client_removes_its_inbox() {
        let s = Scratch::new("goodbye");
        let client = connect(&s.endpoint("")).unwrap();
        let receiver = s.receiver();
        receiver.push(client.core.id(), b"unread");
        assert_eq!(
            std::fs::read_dir(s.spool().join("clients"))
                .unwrap()
                .count(),
            1
        );
        drop(client);
        assert_eq!(
            std::fs::read_dir(s.spool().join("clients"))
                .unwrap()
                .count(),
            0
        );
    }
}
