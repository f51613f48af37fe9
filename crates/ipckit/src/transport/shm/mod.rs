//! `shm://NAME`: shared memory, the article's memory-mapped file and named event done as
//! zero-copy libraries do it.
//!
//! **The segment.** A server creates one shared-memory segment, `/dev/shm/ipckit.NAME`
//! (the POSIX name `/ipckit.NAME`), and removes it when it stops. Its mode is 0600, so
//! only processes of the same user can connect, unless `?mode=` widens it. It holds a slot
//! per client, and a slot holds two rings: requests and one-way messages from the client,
//! replies from the server. A second server on the name of a live one fails with
//! [`Error::AddrInUse`]; a file there that is not an ipckit segment is left untouched.
//! The layout is in `docs/PROTOCOL.md`.
//!
//! **Options.** `clients`, `ring` and `mode` are the server's: they shape the segment,
//! and a client takes the segment as it finds it. `max_message` and `send_timeout_ms`
//! apply to each side on its own.
//!
//! - `?clients=N`: how many clients the server takes at once, up to 4096; 64 unless set.
//!   A client that finds every slot taken fails with [`Error::Full`].
//! - `?ring=N`: the bytes of each ring, a power of two from 64 KiB to 1 GiB; 1 MiB unless
//!   set. A message up to half a ring goes as one record, written and read in place; a
//!   larger one goes as a sequence of records, copied in and out, and arrives whole.
//! - `?mode=0660`: the segment's permissions.
//! - `?max_message=N`: the largest message this side accepts, 16 MiB unless set: the
//!   server's limit applies to what clients send, a client's to the replies it gets. The
//!   sender learns [`Error::MessageTooLarge`] before anything is written.
//! - `?send_timeout_ms=N`: how long a send, a request or a reply waits while the ring it
//!   writes to is full, 10 s unless set; then it fails with [`Error::Full`].
//!
//! **Zero copy.** [`Client::loan`](crate::Client::loan) hands out space inside the ring:
//! the message is written once, where the server reads it.
//! [`Message::payload`](crate::Message::payload) on the server is that record, read in
//! place, and its space goes back to the client when the message is dropped. Space comes
//! back in order, so a server that holds on to a message keeps that client from reusing
//! the space of every message sent after it: once the ring is full the client's sends
//! wait, as a publisher waits for a subscriber holding samples in iceoryx2. Copy out what
//! must be kept ([`Message::take_payload`](crate::Message::take_payload)).
//!
//! **Waking.** While both sides are busy, messages pass without a system call. A side
//! that waits spins briefly before it sleeps on a futex in the segment, and whoever
//! publishes wakes the other only if it said it would sleep. The spin is long while the
//! peer answers quickly and short once it pauses, so a server with nothing to do sleeps
//! and uses no CPU, and the first message after a pause pays one wake-up. The server
//! sleeps on one doorbell for all its clients. The async side (`ipckit::tokio`) waits
//! the same way without holding a runtime worker: it looks again between other tasks,
//! then sleeps on a bell the peer rings.
//!
//! **The fastest calls.** Every call works on every transport; on `shm` these four are
//! the fastest. [`Server::recv_with`](crate::Server::recv_with) lends a request to a
//! handler where it lies, and the handler's reply is written straight into the reply
//! ring; [`Server::serve_with`](crate::Server::serve_with) does that in a loop without
//! leaving its wait between messages; [`Client::request_with`](crate::Client::request_with)
//! reads the reply where it lies; and [`Client::exclusive`](crate::Client::exclusive) lets
//! one thread make its requests without coordinating with others. Why these are fast,
//! with the measurements, is in `docs/DESIGN.md`.
//!
//! **What a successful `send` promises:** the message is whole in the client's request
//! ring. A server that dies before taking it loses it, and the client's calls fail with
//! [`Error::Disconnected`] once they notice (a one-way send looks every few
//! milliseconds).
//!
//! **Crashes.** The server holds an exclusive `flock` on its segment, which the kernel
//! releases when the server dies, however it dies: a new server on the name replaces a
//! dead server's segment, and a client that finds one removes it. Each side watches the
//! other's pidfd (or pid, where the kernel has no pidfds) at least every
//! [`LIVENESS_INTERVAL`] while it waits: a client killed with SIGKILL is noticed within
//! that time and its slot emptied for the next client; a request to a server that died
//! fails with [`Error::Disconnected`]. A record becomes visible only when complete, so a
//! sender killed mid-message leaves nothing, and the pieces of a larger message from a
//! dead client are discarded.
//!
//! **Trust.** Everything read from shared memory is checked before use: a peer writing
//! garbage into positions or lengths gets its connection closed with an
//! [`Error::Protocol`] naming the violation, and never makes the other side read out of
//! bounds, allocate what it claims, or hang. A peer can still change the bytes of a
//! message while the receiver reads them in place; only processes of the owner (or those
//! `?mode=` admits) can map the segment at all.
//!
//! **No peer credentials.** A client writes its pid into the segment, and the server
//! gives it as [`Peer::pid`](crate::Peer::pid) once it has checked that the process
//! lives; but the kernel does not vouch for it, so [`Capabilities::peer_credentials`] is
//! false, and uid and gid are unknown.

use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::endpoint::{Address, Endpoint};
use crate::error::{Error, Result};
use crate::message::{Message, MessageRef, Peer, ReplySink, ReplyTo};
use crate::sys::lock;
use crate::transport::backend::{ClientSide, Payload, ReplyBackend, ServerSide};
use crate::transport::correlate::{Correlator, NoAnswer};
use crate::transport::{Capabilities, Connection, Listener, Transport};

mod bell;
#[cfg(feature = "tokio")]
mod on_tokio;
pub(crate) mod ring;
mod segment;
mod wait;

/// The atomics the ring uses; `tests/loom_ring.rs` compiles the ring against loom's.
mod sync {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

use ring::{Area, Consumer, Control, Corrupt, Kind, MORE, Producer, Reservation};
use segment::{Geometry, Header, Mapping, Slot};
use wait::{Spinner, Woke};

/// How often a waiting side checks that its peer still lives.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);

/// How often a sender that never waits checks that its peer still lives.
const LIVENESS_PROBE: Duration = Duration::from_millis(10);

/// CLOCK_MONOTONIC_COARSE: ticks every few milliseconds, read in a few nanoseconds (through
/// libc's vDSO call, which tools such as valgrind understand).
fn coarse_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Shared-memory rings between processes.
///
/// ```
/// # use std::time::Duration;
/// let url = format!("shm://doc-{}", std::process::id());
/// let server = ipckit::listen(url.as_str())?.spawn(|msg| Some(msg.payload().to_vec()));
/// let client = ipckit::connect(url.as_str())?;
/// let mut loan = client.loan(5)?; // space in the ring itself
/// loan.copy_from_slice(b"hello");
/// assert_eq!(loan.request(Duration::from_secs(5))?, b"hello");
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Shm;

crate::transport::sealed!(Shm, ShmConnection, ShmListener);

impl Transport for Shm {
    fn scheme(&self) -> &'static str {
        "shm"
    }

    fn summary(&self) -> &'static str {
        "shared-memory rings (shm_open), futex wake-ups, zero copy"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            reliable: true,
            ordered: true,
            durable: false,
            broadcast: false,
            connection: true,
            max_message: endpoint.max_message(),
            peer_credentials: false,
            zero_copy: true,
        }
    }

    fn scratch_endpoint(&self, _dir: &Path, name: &str) -> Endpoint {
        Address::Shm(super::unique_scratch_name(name)).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(ShmConnection::connect(endpoint)?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        Ok(Box::new(ShmListener::bind(endpoint)?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        super::connected(on_tokio::AsyncShmConnection::connect(endpoint))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        Ok(Box::new(on_tokio::AsyncShmListener::bind(endpoint)?))
    }

    /// Removes the segment of a server that died (a live server's stays). A server that
    /// stops removes its own; this is for one that was killed, when no client noticed and
    /// no server is started on the name again.
    fn destroy(&self, endpoint: &Endpoint) -> Result<()> {
        segment::remove_if_abandoned(name_of(endpoint), None);
        Ok(())
    }
}

fn name_of(endpoint: &Endpoint) -> &str {
    match endpoint.address() {
        Address::Shm(name) => name,
        other => unreachable!("shm given {other:?}"),
    }
}

fn corrupt(url: &str, who: &str, c: Corrupt) -> Error {
    Error::Protocol {
        endpoint: url.to_owned(),
        reason: format!("the {who} broke the shared ring: {}", c.0),
    }
}

/// A peer process, watched for its exit: through a pidfd where the kernel has them (no
/// confusion with a later process given the same pid), else by testing the pid.
struct Process {
    pid: rustix::process::Pid,
    pidfd: Option<OwnedFd>,
}

impl Process {
    /// `None` when no process has that pid.
    fn watch(pid: u32) -> Option<Process> {
        let pid = rustix::process::Pid::from_raw(pid as i32)?;
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(pidfd) => Some(Process {
                pid,
                pidfd: Some(pidfd),
            }),
            Err(rustix::io::Errno::SRCH) => None,
            // No pidfds here (an old kernel, a sandbox): test the pid instead.
            Err(_) => {
                let process = Process { pid, pidfd: None };
                (!process.exited()).then_some(process)
            }
        }
    }

    fn exited(&self) -> bool {
        match &self.pidfd {
            Some(pidfd) => {
                let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
                matches!(
                    rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())),
                    Ok(n) if n > 0
                )
            }
            None => rustix::process::test_kill_process(self.pid) == Err(rustix::io::Errno::SRCH),
        }
    }

    fn try_clone(&self) -> Process {
        Process {
            pid: self.pid,
            pidfd: self.pidfd.as_ref().and_then(|fd| fd.try_clone().ok()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The two halves of a ring as each side uses them
// ---------------------------------------------------------------------------------------

/// The writing half of a ring, with how to wait for room and whom to wake.
struct Sender {
    producer: Producer,
    spinner: Spinner,
    /// The ring's word on which this side sleeps waiting for room.
    room: *const AtomicU32,
    /// The word on which the consumer sleeps, and its bell.
    doorbell: *const AtomicU32,
    bell: *const AtomicU64,
    /// When the peer was last seen alive, by the coarse clock.
    checked_at: Duration,
}

// SAFETY: the pointers are into a mapping that the owner of the Sender keeps alive.
unsafe impl Send for Sender {}

impl Sender {
    /// # Safety
    /// `control`, `doorbell` and `bell` stay valid as long as the sender.
    unsafe fn new(control: &Control, area: Area, doorbell: &AtomicU32, bell: &AtomicU64) -> Sender {
        Sender {
            // SAFETY: per this function's contract; one producer per ring is guaranteed
            // by the slot protocol (the client writes requests, the server replies).
            producer: unsafe { Producer::new(control, area) },
            spinner: Spinner::default(),
            room: &control.producer_sleeps,
            doorbell,
            bell,
            checked_at: Duration::ZERO,
        }
    }

    /// Wakes the consumer, if it sleeps.
    #[inline(always)]
    fn wake_consumer(&self) {
        // SAFETY: valid per the constructor's contract.
        let (doorbell, bell) = unsafe { (&*self.doorbell, &*self.bell) };
        wait::wake(doorbell, bell);
    }

    /// Claims room for `len` bytes, waiting up to `patience`. `link` says whether the peer
    /// went away: asked while the ring stays full, and, when `probe`, every
    /// [`LIVENESS_PROBE`] of sending.
    #[inline(always)]
    fn reserve(
        &mut self,
        len: usize,
        patience: Duration,
        link: &dyn Link,
        probe: bool,
    ) -> Result<Reservation> {
        // A ring with room takes messages whether or not anyone reads them; make sure now
        // and then that someone does. The coarse clock costs a few nanoseconds, where
        // looking at the consumer's position would cost a cache miss on every send.
        // Only one-way messages need this: a request, or a reply, is followed by a wait
        // that watches the peer anyway (and a reply to a dead client is simply never read).
        if let Some(r) = self.try_reserve(len, link, probe)? {
            return Ok(r);
        }
        self.wait_for_room(len, patience, link)
    }

    /// [`reserve`](Self::reserve) once the ring is full: out of line, so that a send
    /// into a ring with room stays short.
    #[cold]
    #[inline(never)]
    fn wait_for_room(
        &mut self,
        len: usize,
        patience: Duration,
        link: &dyn Link,
    ) -> Result<Reservation> {
        let deadline = Instant::now() + patience;
        loop {
            let mut outcome = None;
            let Sender {
                producer,
                spinner,
                room,
                ..
            } = self;
            // SAFETY: valid per the constructor's contract.
            let room = unsafe { &**room };
            let slice = (Instant::now() + LIVENESS_INTERVAL).min(deadline);
            spinner.wait(
                room,
                || match producer.try_reserve(len) {
                    Ok(None) => false,
                    other => {
                        outcome = Some(other);
                        true
                    }
                },
                Some(slice),
            );
            match outcome {
                Some(Ok(Some(r))) => return Ok(r),
                Some(Err(c)) => return Err(corrupt(link.url(), "receiver", c)),
                _ => {}
            }
            link.check()?;
            if Instant::now() >= deadline {
                return Err(Error::Full {
                    endpoint: link.url().to_owned(),
                    detail: format!(
                        "the shared ring ({} bytes pending)",
                        self.producer.pending()
                    ),
                    after: patience,
                });
            }
        }
    }

    /// Claims room for `len` bytes if the ring has it now. `probe` as for
    /// [`reserve`](Self::reserve).
    #[inline(always)]
    fn try_reserve(
        &mut self,
        len: usize,
        link: &dyn Link,
        probe: bool,
    ) -> Result<Option<Reservation>> {
        if probe {
            self.probe(link)?;
        }
        self.producer
            .try_reserve(len)
            .map_err(|c| corrupt(link.url(), "receiver", c))
    }

    /// Checks that the peer lives, if that was last done [`LIVENESS_PROBE`] ago: for
    /// one-way messages, which no wait follows.
    #[inline(always)]
    fn probe(&mut self, link: &dyn Link) -> Result<()> {
        let now = coarse_now();
        if now.saturating_sub(self.checked_at) >= LIVENESS_PROBE {
            link.check()?;
            self.checked_at = now;
        }
        Ok(())
    }

    /// Publishes a reservation and wakes the consumer if it sleeps.
    #[inline(always)]
    fn commit(&mut self, r: Reservation, len: usize, kind: Kind, flags: u8, id: u64) {
        self.producer.commit(r, len, kind, flags, id);
        self.wake_consumer();
    }

    /// Sends `payload` as one record, or as several when it is larger than one can be.
    #[inline(always)]
    fn send(
        &mut self,
        kind: Kind,
        id: u64,
        payload: &[u8],
        patience: Duration,
        link: &dyn Link,
    ) -> Result<()> {
        let max_record = self.producer.max_record();
        if payload.len() <= max_record {
            let r = self.reserve(payload.len(), patience, link, kind == Kind::Message)?;
            self.producer.write(&r, 0, payload);
            self.commit(r, payload.len(), kind, 0, id);
            return Ok(());
        }
        // Quarter-ring pieces keep both sides busy: one is written while another is read.
        let piece = max_record / 2;
        let mut chunks = payload.chunks(piece).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_some() { MORE } else { 0 };
            let r = self.reserve(chunk.len(), patience, link, kind == Kind::Message)?;
            self.producer.write(&r, 0, chunk);
            self.commit(r, chunk.len(), kind, flags, id);
        }
        Ok(())
    }
}

/// What a sender or receiver needs to know about the other side.
trait Link {
    fn url(&self) -> &str;
    /// Err when the peer is gone or the connection was closed.
    fn check(&self) -> Result<()>;
}

/// A message being put together from several records.
struct Partial {
    kind: Kind,
    id: u64,
    bytes: Vec<u8>,
}

/// A caller that reads the reply to its request `id` where it lies in the ring
/// ([`Client::request_with`](crate::Client::request_with)) rather than in a copy. `read`
/// is taken once it has been called, and what it returned kept.
///
/// Generic rather than a `dyn FnMut`: a reader known at compile time is inlined between
/// reading a reply and giving its space back, where a call costs a measurable share of a
/// round trip (docs/DESIGN.md, "lending").
pub(super) struct InPlace<F, R> {
    id: u64,
    read: Option<F>,
    result: Option<R>,
}

/// The type of reader of a caller that wants its reply copied out.
type CopyOut = fn(&[u8]);

impl InPlace<CopyOut, ()> {
    /// For a caller that wants the reply copied out.
    pub(super) fn copied() -> InPlace<CopyOut, ()> {
        InPlace {
            id: 0,
            read: None,
            result: None,
        }
    }
}

impl<F: FnOnce(&[u8]) -> R, R> InPlace<F, R> {
    /// What the reader returned: reading the reply in place, or, if the reply came copied
    /// after all (as a reply of several records does, or one read by another thread),
    /// reading `reply`.
    fn into_result(self, reply: &[u8]) -> Option<R> {
        match (self.result, self.read) {
            (Some(result), _) => Some(result),
            (None, Some(read)) => Some(read(reply)),
            (None, None) => None,
        }
    }
}

/// Adds `record` to the message being assembled, checking it belongs there and that the
/// whole stays within `max`; the finished message once the last piece arrived.
#[inline(always)]
fn assemble(
    partial: &mut Option<Partial>,
    consumer: &Consumer,
    record: &ring::Record,
    max: usize,
) -> std::result::Result<Option<Partial>, Corrupt> {
    if partial.is_none() && record.flags & MORE == 0 {
        // A whole message in one record, the common case: one exact allocation.
        if record.len > max {
            return Err(Corrupt(format!(
                "a message of {} bytes is over the limit of {max}",
                record.len
            )));
        }
        // Not vec![0; len]: that is calloc, which glibc serves without its thread cache.
        let mut bytes = Vec::with_capacity(record.len);
        consumer.append_to(record, &mut bytes);
        return Ok(Some(Partial {
            kind: record.kind,
            id: record.id,
            bytes,
        }));
    }
    let p = partial.get_or_insert_with(|| Partial {
        kind: record.kind,
        id: record.id,
        bytes: Vec::new(),
    });
    if p.kind != record.kind || p.id != record.id {
        return Err(Corrupt(format!(
            "a piece of {:?} {} arrived inside {:?} {}",
            record.kind, record.id, p.kind, p.id
        )));
    }
    if p.bytes.len() + record.len > max {
        return Err(Corrupt(format!(
            "a message grew past the limit of {max} bytes"
        )));
    }
    // The buffer grows with what actually arrived, never with what a peer claims.
    consumer.append_to(record, &mut p.bytes);
    Ok(if record.flags & MORE == 0 {
        partial.take()
    } else {
        None
    })
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// The client's reading half: replies.
struct Replies {
    consumer: Consumer,
    spinner: Spinner,
    partial: Option<Partial>,
}

// SAFETY: the consumer's pointers are into the connection's slot mapping.
unsafe impl Send for Replies {}

/// A client's connection: a claimed slot in the server's segment.
pub(crate) struct ShmConnection {
    endpoint: Endpoint,
    url: String,
    name: String,
    fd: OwnedFd,
    header_map: Mapping,
    slot_map: Mapping,
    slot_index: usize,
    server: Process,
    server_max: usize,
    own_max: usize,
    patience: Duration,
    requests: Mutex<Sender>,
    replies: Mutex<Replies>,
    answers: Correlator<Partial>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
}

impl ShmConnection {
    pub(crate) fn connect(endpoint: &Endpoint) -> Result<ShmConnection> {
        let url = endpoint.to_string();
        let name = name_of(endpoint).to_owned();
        let found = segment::find(&url, &name)?;
        let gone = |detail: &str| Error::NotFound {
            endpoint: url.clone(),
            detail: detail.to_owned(),
        };
        let server =
            Process::watch(found.server_pid).ok_or_else(|| gone("the server process is gone"))?;
        // The pid might have been reused between reading it and opening its pidfd; the
        // lock being still held after the open proves the holder is that process.
        if !segment::server_alive(&found.fd) {
            return Err(gone("the server process is gone"));
        }
        // SAFETY: the header mapping starts with the header (checked by `find`).
        let header: &Header = unsafe { found.header.at(0) };
        let me = std::process::id();
        let slot_index = (0..found.geometry.slots)
            .find(|&i| {
                // SAFETY: `find` checked that the header page holds `slots` owner words.
                let owner: &AtomicU32 = unsafe { found.header.at(segment::OWNERS + 4 * i) };
                owner
                    .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or_else(|| Error::Full {
                endpoint: url.clone(),
                detail: format!(
                    "all {} client slots of the server (its ?clients= option sets how many)",
                    found.geometry.slots
                ),
                after: Duration::ZERO,
            })?;
        let release_claim = || {
            // SAFETY: as above.
            let owner: &AtomicU32 = unsafe { found.header.at(segment::OWNERS + 4 * slot_index) };
            owner.store(0, Ordering::SeqCst);
        };
        let slot_map = match segment::map_slot(&found.fd, found.geometry, slot_index) {
            Ok(m) => m,
            Err(e) => {
                release_claim();
                return Err(Error::io(&url, "mapping a client slot", e));
            }
        };
        // SAFETY: the slot mapping starts with the slot's control page.
        let slot: &Slot = unsafe { slot_map.at(0) };
        let own_max = endpoint.max_message();
        slot.client_max.store(own_max as u64, Ordering::Relaxed);
        let capacity = found.geometry.capacity;
        // SAFETY: the slot mapping holds the control page and both data areas, each
        // `capacity` bytes (a power of two), and lives as long as the connection, which
        // owns the sender and the consumer. The slot is ours alone: we claimed its owner
        // word, and the server emptied its rings before freeing it.
        let (requests, consumer) = unsafe {
            let base = slot_map.base().add(segment::ALIGN);
            (
                Sender::new(
                    &slot.requests,
                    Area::new(base, capacity),
                    &header.doorbell,
                    &header.bell,
                ),
                Consumer::new(&slot.replies, Area::new(base.add(capacity), capacity)),
            )
        };
        slot.state.store(segment::OPEN, Ordering::SeqCst);
        header.changes.fetch_add(1, Ordering::SeqCst);
        wait::wake(&header.doorbell, &header.bell);
        Ok(ShmConnection {
            endpoint: endpoint.clone(),
            answers: Correlator::new(&url),
            url,
            name,
            server_max: found.max_message,
            fd: found.fd,
            header_map: found.header,
            slot_map,
            slot_index,
            server,
            own_max,
            patience: endpoint.send_timeout(),
            requests: Mutex::new(requests),
            replies: Mutex::new(Replies {
                consumer,
                spinner: Spinner::default(),
                partial: None,
            }),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
        })
    }

    #[inline(always)]
    fn header(&self) -> &Header {
        // SAFETY: checked by `find` when connecting; the mapping lives with `self`.
        unsafe { self.header_map.at(0) }
    }

    #[inline(always)]
    fn slot(&self) -> &Slot {
        // SAFETY: the slot mapping starts with the control page and lives with `self`.
        unsafe { self.slot_map.at(0) }
    }

    #[inline(always)]
    fn check_size(&self, len: usize) -> Result<()> {
        if len > self.server_max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: len,
                max: self.server_max,
                limit: "the server's max_message".into(),
            });
        }
        Ok(())
    }

    #[inline(always)]
    fn send_kind(&self, kind: Kind, id: u64, payload: &[u8]) -> Result<()> {
        self.send_by(&mut lock(&self.requests), kind, id, payload)
    }

    /// Sends through `requests`, this connection's request ring, already locked.
    #[inline(always)]
    fn send_by(&self, requests: &mut Sender, kind: Kind, id: u64, payload: &[u8]) -> Result<()> {
        self.check_size(payload.len())?;
        self.closed()?;
        requests.send(kind, id, payload, self.patience, self)
    }

    /// Waits for the answer to request `id` while other requests are in flight: one
    /// thread at a time reads the reply ring and hands out what it reads.
    fn await_answer(&self, id: u64, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let answer = self
            .answers
            .await_answer(id, deadline, &self.replies, |replies, deadline| {
                self.read_answer(
                    replies,
                    &mut Some(deadline),
                    timeout,
                    &mut InPlace::copied(),
                )
                .map(|answer| answer.map(|a| (a.id, a)))
                .map_err(|e| e.to_string())
            });
        match answer {
            Ok(answer) => self.outcome(answer),
            Err(NoAnswer::Broken(detail)) => Err(Error::Disconnected {
                endpoint: self.url.clone(),
                detail,
            }),
            Err(NoAnswer::TimedOut) => Err(Error::Timeout {
                endpoint: self.url.clone(),
                after: timeout,
            }),
        }
    }

    /// Reads the next complete answer, waiting until `deadline` (set, from `timeout`, when
    /// the first spin runs out: a busy exchange never reads the clock) and checking that
    /// the server lives while it sleeps.
    #[inline(always)]
    fn read_answer<F: FnOnce(&[u8]) -> R, R>(
        &self,
        replies: &mut Replies,
        deadline: &mut Option<Instant>,
        timeout: Duration,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Option<Partial>> {
        let Replies {
            consumer,
            spinner,
            partial,
        } = replies;
        let slot = self.slot();
        loop {
            if let Some(done) = self.next_answer(consumer, partial, in_place)? {
                return Ok(Some(done));
            }
            let mut ready = || self.reply_or_closed(consumer);
            if spinner.spin(&mut ready) {
                if !consumer.has_data() {
                    self.check()?;
                }
                continue;
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + timeout);
            let woke = spinner.sleep(
                &slot.replies.consumer_sleeps,
                ready,
                Some((now + LIVENESS_INTERVAL).min(deadline)),
            );
            if !consumer.has_data() {
                self.check()?;
                if woke == Woke::TimedOut && Instant::now() >= deadline {
                    return Ok(None);
                }
            }
        }
    }

    /// Whether a waiter for replies has something to look at: a reply, or a connection
    /// the server closed (shared states only, no syscall).
    #[inline(always)]
    fn reply_or_closed(&self, consumer: &Consumer) -> bool {
        consumer.has_data()
            || self.header().state.load(Ordering::Relaxed) != segment::LISTENING
            || self.slot().state.load(Ordering::Relaxed) == segment::REFUSED
    }

    /// The next complete answer already in the reply ring; `None` once the ring is empty.
    /// The reply `in_place` waits for, if it lies whole in one record, is handed to its
    /// reader before the record is released, and comes back without its bytes.
    #[inline(always)]
    fn next_answer<F: FnOnce(&[u8]) -> R, R>(
        &self,
        consumer: &mut Consumer,
        partial: &mut Option<Partial>,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Option<Partial>> {
        while let Some(record) = consumer
            .peek()
            .map_err(|c| corrupt(&self.url, "server", c))?
        {
            if !matches!(record.kind, Kind::Reply | Kind::Refusal) {
                return Err(corrupt(
                    &self.url,
                    "server",
                    Corrupt(format!("it sent a {:?} as a reply", record.kind)),
                ));
            }
            let done = match in_place.read.take() {
                Some(read)
                    if partial.is_none()
                        && record.flags & MORE == 0
                        && record.kind == Kind::Reply
                        && record.id == in_place.id
                        && record.len <= self.own_max =>
                {
                    in_place.result = Some(read(consumer.payload(&record)));
                    Some(Partial {
                        kind: Kind::Reply,
                        id: record.id,
                        bytes: Vec::new(),
                    })
                }
                not_now => {
                    in_place.read = not_now;
                    assemble(partial, consumer, &record, self.own_max)
                        .map_err(|c| corrupt(&self.url, "server", c))?
                }
            };
            consumer.release(record.end);
            wait::wake(&self.slot().replies.producer_sleeps, &self.header().bell);
            if done.is_some() {
                return Ok(done);
            }
        }
        Ok(None)
    }

    /// Waits for the answer to request `id` as the only requester in flight, holding the
    /// reply ring throughout: no waiter list, no condition variable.
    #[inline(always)]
    fn lone_answer<F: FnOnce(&[u8]) -> R, R>(
        &self,
        replies: &mut Replies,
        id: u64,
        timeout: Duration,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Vec<u8>> {
        let mut deadline = None;
        loop {
            match self.read_answer(replies, &mut deadline, timeout, in_place)? {
                Some(answer) if answer.id == id => return self.outcome(answer),
                // Another thread's request went out meanwhile, by the general path.
                Some(other) => self.answers.deliver(other.id, other),
                None => {
                    return Err(Error::Timeout {
                        endpoint: self.url.clone(),
                        after: timeout,
                    });
                }
            }
        }
    }

    #[inline(always)]
    fn outcome(&self, answer: Partial) -> Result<Vec<u8>> {
        match answer.kind {
            Kind::Reply => Ok(answer.bytes),
            _ => Err(Error::Remote {
                endpoint: self.url.clone(),
                reason: String::from_utf8_lossy(&answer.bytes).into_owned(),
            }),
        }
    }

    /// Why the connection cannot be used, judging by the shared states alone (no syscall).
    #[inline(always)]
    fn closed(&self) -> Result<()> {
        let detail = if self.header().state.load(Ordering::Acquire) != segment::LISTENING {
            "the server stopped"
        } else if self.slot().state.load(Ordering::Acquire) == segment::REFUSED {
            "the server dropped this connection for breaking the protocol; see its log"
        } else {
            return Ok(());
        };
        Err(Error::Disconnected {
            endpoint: self.url.clone(),
            detail: detail.into(),
        })
    }

    /// Why the connection cannot be used, if it cannot: [`closed`](Self::closed), or a
    /// server that died (one syscall).
    fn trouble(&self) -> Result<()> {
        self.closed()?;
        if self.server.exited() {
            segment::remove_abandoned(&self.name, &self.fd);
            return Err(Error::Disconnected {
                endpoint: self.url.clone(),
                detail: "the server process died".into(),
            });
        }
        Ok(())
    }

    /// A new request's number, with the reader its reply goes to, if any.
    fn next_request<F, R>(&self, read: Option<F>) -> InPlace<F, R> {
        InPlace {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            read,
            result: None,
        }
    }

    /// Sends `payload` as a request and waits for its reply.
    pub(super) fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.request_by(|id| self.send_kind(Kind::Request, id, payload), timeout)
    }

    /// Sends `payload` as a request and hands its reply to `read`, in place when the
    /// reply lies whole in one record.
    #[inline(always)]
    pub(crate) fn request_in_place<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let publish = |id| self.send_kind(Kind::Request, id, payload);
        self.request_in_place_by(publish, timeout, read)
    }

    /// A request that `publish` puts in the ring, given its number; its reply.
    fn request_by(
        &self,
        publish: impl FnOnce(u64) -> Result<()>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.ask(publish, timeout, None::<CopyOut>)
            .map(|(reply, _)| reply)
    }

    /// A request that `publish` puts in the ring, given its number; what `read` returns
    /// for its reply.
    #[inline(always)]
    fn request_in_place_by<R>(
        &self,
        publish: impl FnOnce(u64) -> Result<()>,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let (_, result) = self.ask(publish, timeout, Some(read))?;
        Ok(result.expect("a reader given is called"))
    }

    /// Numbers a request, has `publish` put it in the ring, and waits for its answer. The
    /// answer goes to `read` if given (in place when it lies whole in one record); it is
    /// returned, empty if read in place, with what `read` returned.
    #[inline(always)]
    fn ask<F: FnOnce(&[u8]) -> R, R>(
        &self,
        publish: impl FnOnce(u64) -> Result<()>,
        timeout: Duration,
        read: Option<F>,
    ) -> Result<(Vec<u8>, Option<R>)> {
        let mut in_place = self.next_request(read);
        let id = in_place.id;
        let reply = self.exchange(|| publish(id), timeout, &mut in_place)?;
        let result = in_place.into_result(&reply);
        Ok((reply, result))
    }

    /// Publishes a request and waits for its answer: by the lone-requester path when
    /// no other request is in flight, else by the general one. The answer is read in
    /// place if `in_place` asks and the lone path finds it whole in one record; else it
    /// is returned.
    #[inline(always)]
    fn exchange<F: FnOnce(&[u8]) -> R, R>(
        &self,
        publish: impl FnOnce() -> Result<()>,
        timeout: Duration,
        in_place: &mut InPlace<F, R>,
    ) -> Result<Vec<u8>> {
        let id = in_place.id;
        let alone = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let result = match self.replies.try_lock() {
            Ok(mut replies) if alone => {
                publish().and_then(|()| self.lone_answer(&mut replies, id, timeout, in_place))
            }
            not_alone => {
                drop(not_alone);
                self.answers.register(id);
                match publish() {
                    Ok(()) => self.await_answer(id, timeout),
                    Err(e) => {
                        self.answers.forget(id);
                        Err(e)
                    }
                }
            }
        };
        // Threads that joined meanwhile may wait for the reply ring this one held.
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) > 1 {
            self.answers.release_followers();
        }
        result
    }
}

/// A connection that one thread holds alone: both rings are locked once, when it is
/// taken, instead of on every call; see [`Client::exclusive`](crate::Client::exclusive).
pub(crate) struct ShmExclusive<'a> {
    connection: &'a ShmConnection,
    requests: MutexGuard<'a, Sender>,
    replies: MutexGuard<'a, Replies>,
}

impl ShmConnection {
    /// Holds both rings until the returned handle is dropped. The caller has the
    /// connection to itself (`Client::exclusive` takes `&mut`), so the locks are free.
    pub(crate) fn exclusive(&self) -> ShmExclusive<'_> {
        ShmExclusive {
            connection: self,
            requests: lock(&self.requests),
            replies: lock(&self.replies),
        }
    }
}

impl ShmExclusive<'_> {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.connection.endpoint
    }

    pub(crate) fn send(&mut self, payload: &[u8]) -> Result<()> {
        (self.connection).send_by(&mut self.requests, Kind::Message, 0, payload)
    }

    pub(crate) fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.ask(payload, timeout, None::<CopyOut>)
            .map(|(reply, _)| reply)
    }

    #[inline(always)]
    pub(crate) fn request_in_place<R>(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let (_, result) = self.ask(payload, timeout, Some(read))?;
        Ok(result.expect("a reader given is called"))
    }

    /// [`ShmConnection::ask`] as the lone requester, with the rings already in hand. No
    /// request but this one can be waiting (nobody else can ask while this is held), but
    /// the late reply to one that timed out, here or before, can be in the ring: it is
    /// passed over.
    #[inline(always)]
    fn ask<F: FnOnce(&[u8]) -> R, R>(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        read: Option<F>,
    ) -> Result<(Vec<u8>, Option<R>)> {
        let connection = self.connection;
        let mut in_place = connection.next_request(read);
        let id = in_place.id;
        connection.send_by(&mut self.requests, Kind::Request, id, payload)?;
        let reply = connection.lone_answer(&mut self.replies, id, timeout, &mut in_place)?;
        let result = in_place.into_result(&reply);
        Ok((reply, result))
    }
}

impl Link for ShmConnection {
    fn url(&self) -> &str {
        &self.url
    }

    fn check(&self) -> Result<()> {
        self.trouble()
    }
}

impl ClientSide for ShmConnection {
    #[inline(always)]
    fn send(&self, payload: &[u8]) -> Result<()> {
        self.send_kind(Kind::Message, 0, payload)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        ShmConnection::request(self, payload, timeout)
    }

    #[inline(always)]
    fn request_with<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.request_in_place(payload, timeout, read)
    }

    fn max_message(&self) -> usize {
        self.server_max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// For [`Transport::connect`], which hands out any transport's connection as a trait
/// object; `ipckit::connect` calls the [`ClientSide`] methods directly.
impl Connection for ShmConnection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        ClientSide::send(self, payload)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        ClientSide::request(self, payload, timeout)
    }

    fn max_message(&self) -> usize {
        ClientSide::max_message(self)
    }

    fn endpoint(&self) -> &Endpoint {
        ClientSide::endpoint(self)
    }
}

impl ShmConnection {
    /// Space for `len` bytes in the request ring, or `None` when a message that large
    /// goes in pieces (and is copied).
    pub(crate) fn loan(&self, len: usize) -> Result<Option<ShmLoan<'_>>> {
        let mut requests = lock(&self.requests);
        if len > requests.producer.max_record() {
            // Too large for one record: it will go in pieces, copied.
            return Ok(None);
        }
        self.closed()?;
        // Whether the peer lives is checked when the loan is sent, if it is sent one way.
        let reservation = requests.reserve(len, self.patience, self, false)?;
        Ok(Some(ShmLoan {
            connection: self,
            requests,
            reservation,
        }))
    }
}

impl Drop for ShmConnection {
    fn drop(&mut self) {
        // The server frees the slot once it has taken what is still in the ring.
        self.slot().state.store(segment::LEFT, Ordering::SeqCst);
        let header = self.header();
        header.changes.fetch_add(1, Ordering::SeqCst);
        wait::wake(&header.doorbell, &header.bell);
        log::debug!("{}: left slot {}", self.url, self.slot_index);
    }
}

/// Space in a client's request ring, written in place and published by `send` or
/// `request`; see [`Client::loan`](crate::Client::loan).
pub(crate) struct ShmLoan<'a> {
    connection: &'a ShmConnection,
    requests: MutexGuard<'a, Sender>,
    reservation: Reservation,
}

impl ShmLoan<'_> {
    fn start(&self) -> *mut u8 {
        let r = &self.reservation;
        self.requests
            .producer
            .area()
            .range(r.payload_at(), r.capacity())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the reservation is space between the ring's tail and the consumer's
        // head, which nobody reads until the tail moves past it, and the guard keeps
        // every other writer out; the mapping outlives the borrow of the connection.
        unsafe { std::slice::from_raw_parts(self.start(), self.reservation.capacity()) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.start(), self.reservation.capacity()) }
    }

    pub(crate) fn send(mut self, len: usize) -> Result<()> {
        self.requests.probe(self.connection)?;
        self.requests
            .commit(self.reservation, len, Kind::Message, 0, 0);
        Ok(())
    }

    pub(crate) fn request(self, len: usize, timeout: Duration) -> Result<Vec<u8>> {
        let connection = self.connection;
        connection.request_by(self.publish_request(len), timeout)
    }

    #[inline(always)]
    pub(crate) fn request_in_place<R>(
        self,
        len: usize,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let connection = self.connection;
        connection.request_in_place_by(self.publish_request(len), timeout, read)
    }

    /// Publishes the loan's `len` bytes as request number `id`, when called.
    fn publish_request(mut self, len: usize) -> impl FnOnce(u64) -> Result<()> {
        move |id| {
            self.requests
                .commit(self.reservation, len, Kind::Request, 0, id);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// Gives a client's request-ring space back as the server's messages are dropped, which
/// may happen out of order and on any thread.
pub(crate) struct Releases {
    state: Mutex<(u64, Vec<(u64, u64)>)>,
    control: *const Control,
    /// The client's bell, for a client that waits for room through an async runtime.
    bell: *const AtomicU64,
    _map: Arc<Mapping>,
}

// SAFETY: `control` points into `_map`, which the Arc keeps mapped; the state is behind
// a mutex and the shared counters are atomics.
unsafe impl Send for Releases {}
// SAFETY: as above.
unsafe impl Sync for Releases {}

impl Releases {
    #[inline(always)]
    fn release(&self, start: u64, end: u64) {
        let mut state = lock(&self.state);
        let (head, done) = &mut *state;
        if start != *head {
            done.push((start, end));
            return;
        }
        *head = end;
        while let Some(at) = done.iter().position(|(s, _)| *s == *head) {
            *head = done.swap_remove(at).1;
        }
        // SAFETY: valid while `_map` lives.
        let (control, bell) = unsafe { (&*self.control, &*self.bell) };
        control.release_to(*head);
        wait::wake(&control.producer_sleeps, bell);
    }
}

/// A message's payload read in place from a client's ring; the space is given back when
/// it is dropped.
pub(crate) struct Lease {
    releases: Arc<Releases>,
    ptr: *const u8,
    len: usize,
    start: u64,
    end: u64,
}

// SAFETY: the bytes are in a mapping kept alive by `releases`, and the producer does not
// write them again before they are released (by this lease's drop).
unsafe impl Send for Lease {}
// SAFETY: as above; the lease only hands out shared references.
unsafe impl Sync for Lease {}

impl Lease {
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: see the Send impl: in bounds of a live mapping and not rewritten
        // before this lease is dropped (barring a misbehaving peer; see the module docs).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.releases.release(self.start, self.end);
    }
}

/// The way back to one client: its reply ring.
pub(crate) struct ReplyChannel {
    url: String,
    sender: Mutex<Sender>,
    client_max: usize,
    client: Option<Process>,
    slot: *const Slot,
    header: *const Header,
    patience: Duration,
    _map: Arc<Mapping>,
}

// SAFETY: the pointers are into `_map`; the sender is behind a mutex.
unsafe impl Send for ReplyChannel {}
// SAFETY: as above.
unsafe impl Sync for ReplyChannel {}

impl Link for ReplyChannel {
    fn url(&self) -> &str {
        &self.url
    }

    fn check(&self) -> Result<()> {
        // SAFETY: valid while `_map` lives.
        let (slot, header) = unsafe { (&*self.slot, &*self.header) };
        let state = slot.state.load(Ordering::Acquire);
        let detail = if header.state.load(Ordering::Acquire) != segment::LISTENING {
            "the server stopped"
        } else if state == segment::LEFT || self.client.as_ref().is_none_or(Process::exited) {
            "the client went away"
        } else if state == segment::REFUSED {
            "the connection was closed for breaking the protocol"
        } else {
            return Ok(());
        };
        Err(Error::Disconnected {
            endpoint: self.url.clone(),
            detail: detail.into(),
        })
    }
}

impl ReplySink for ReplyChannel {
    #[inline(always)]
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        if payload.len() > self.client_max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.clone(),
                size: payload.len(),
                max: self.client_max,
                limit: "the client's max_message".into(),
            });
        }
        let kind = if ok { Kind::Reply } else { Kind::Refusal };
        lock(&self.sender).send(kind, id, payload, self.patience, self)
    }
}

/// A client the server serves.
struct Client {
    pid: u32,
    process: Option<Process>,
    consumer: Consumer,
    partial: Option<Partial>,
    releases: Arc<Releases>,
    replies: Arc<ReplyChannel>,
    peer: Arc<Peer>,
    /// It left or died: take what it sent, then free the slot.
    leaving: bool,
    /// Dropped for breaking the protocol: nothing more is read.
    refused: bool,
}

// SAFETY: the consumer points into the listener's mapping, which outlives its clients.
unsafe impl Send for Client {}

/// A server: the segment, and the clients in its slots.
pub(crate) struct ShmListener {
    endpoint: Endpoint,
    url: Arc<str>,
    map: Arc<Mapping>,
    _fd: OwnedFd,
    inode: u64,
    name: String,
    geometry: Geometry,
    max_message: usize,
    clients: Vec<Option<Client>>,
    serving: Vec<usize>,
    cursor: usize,
    changes_seen: u32,
    next_check: Instant,
    rounds: u32,
    spinner: Spinner,
    woken: Arc<AtomicBool>,
}

impl ShmListener {
    pub(crate) fn bind(endpoint: &Endpoint) -> Result<ShmListener> {
        let url = endpoint.to_string();
        let name = name_of(endpoint).to_owned();
        let geometry = Geometry {
            slots: endpoint.clients(),
            capacity: endpoint.ring(),
        };
        let max_message = endpoint.max_message();
        let created = segment::create(&url, &name, endpoint.mode(), geometry, max_message)?;
        Ok(ShmListener {
            endpoint: endpoint.clone(),
            url: url.into(),
            map: Arc::new(created.map),
            _fd: created.fd,
            inode: created.inode,
            name,
            geometry,
            max_message,
            clients: (0..geometry.slots).map(|_| None).collect(),
            serving: Vec::new(),
            cursor: 0,
            changes_seen: 0,
            next_check: Instant::now() + LIVENESS_INTERVAL,
            rounds: 0,
            spinner: Spinner::default(),
            woken: Arc::new(AtomicBool::new(false)),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the segment begins with the header we wrote.
        unsafe { self.map.at(0) }
    }

    fn slot(&self, i: usize) -> &Slot {
        // SAFETY: slot offsets are page-aligned and inside the segment (`Geometry`).
        unsafe { self.map.at(self.geometry.slot_offset(i)) }
    }

    fn owner(&self, i: usize) -> &AtomicU32 {
        // SAFETY: the owner table fits in the header page for any valid slot count.
        unsafe { self.map.at(segment::OWNERS + 4 * i) }
    }

    /// Takes in clients that attached or left since the last look.
    fn rescan(&mut self) {
        for i in 0..self.geometry.slots {
            let owner = self.owner(i).load(Ordering::Acquire);
            let state = self.slot(i).state.load(Ordering::Acquire);
            match &mut self.clients[i] {
                Some(client) if state == segment::LEFT => client.leaving = true,
                Some(_) => {}
                None if owner != 0 && matches!(state, segment::OPEN | segment::LEFT) => {
                    self.accept(i, owner, state == segment::LEFT);
                }
                None => {}
            }
        }
    }

    fn accept(&mut self, i: usize, owner: u32, left: bool) {
        let capacity = self.geometry.capacity;
        let slot = self.slot(i);
        let _ = slot.state.compare_exchange(
            segment::OPEN,
            segment::ACCEPTED,
            Ordering::SeqCst,
            Ordering::Relaxed,
        );
        let client_max = (slot.client_max.load(Ordering::Acquire) as usize).max(1);
        let process = Process::watch(owner);
        let leaving = left || process.is_none();
        let base = self.map.base();
        let offset = self.geometry.slot_offset(i) + segment::ALIGN;
        // SAFETY: both data areas lie inside the segment (`Geometry`), which `self.map`
        // keeps mapped for as long as the consumer, releases and reply channel exist (the
        // latter two hold the Arc). One consumer per ring: this server; one producer of
        // replies: the channel's sender.
        let (consumer, sender) = unsafe {
            (
                Consumer::new(&slot.requests, Area::new(base.add(offset), capacity)),
                Sender::new(
                    &slot.replies,
                    Area::new(base.add(offset + capacity), capacity),
                    &slot.replies.consumer_sleeps,
                    &slot.bell,
                ),
            )
        };
        let releases = Arc::new(Releases {
            state: Mutex::new((consumer.position(), Vec::new())),
            control: &slot.requests,
            bell: &slot.room_bell,
            _map: self.map.clone(),
        });
        let replies = Arc::new(ReplyChannel {
            url: self.url.to_string(),
            sender: Mutex::new(sender),
            client_max,
            client: process.as_ref().map(Process::try_clone),
            slot,
            header: self.header(),
            patience: self.endpoint.send_timeout(),
            _map: self.map.clone(),
        });
        log::debug!("{}: client pid {owner} attached in slot {i}", self.url);
        self.clients[i] = Some(Client {
            pid: owner,
            process,
            consumer,
            partial: None,
            releases,
            replies,
            peer: Arc::new(Peer {
                pid: Some(owner),
                ..Peer::default()
            }),
            leaving,
            refused: false,
        });
        self.serving.push(i);
    }

    /// Notices dead clients, frees slots whose clients are done, and slots claimed by a
    /// process that died before it attached.
    fn check_clients(&mut self) {
        for &i in &self.serving {
            let client = self.clients[i].as_mut().expect("serving");
            if !client.leaving && client.process.as_ref().is_none_or(Process::exited) {
                log::debug!("{}: client pid {} died", self.url, client.pid);
                client.leaving = true;
            }
        }
        for i in 0..self.geometry.slots {
            let owner = self.owner(i).load(Ordering::Acquire);
            if self.clients[i].is_none()
                && owner != 0
                && self.slot(i).state.load(Ordering::Acquire) == segment::FREE
                && Process::watch(owner).is_none()
            {
                log::debug!(
                    "{}: slot {i} was claimed by pid {owner}, which died",
                    self.url
                );
                self.free_slot(i);
            }
        }
    }

    /// Frees the slots of clients that are gone once nothing of theirs is pending.
    fn free_finished(&mut self) {
        let mut k = 0;
        while k < self.serving.len() {
            let i = self.serving[k];
            let client = self.clients[i].as_ref().expect("serving");
            let drained = client.refused || !client.consumer.has_data();
            // Messages still held by the application point into the slot.
            let unheld =
                Arc::strong_count(&client.releases) == 1 && Arc::strong_count(&client.replies) == 1;
            if client.leaving && drained && unheld {
                if client.partial.is_some() {
                    log::warn!(
                        "{}: client pid {} went away in the middle of a message, which is discarded",
                        self.url,
                        client.pid
                    );
                }
                self.clients[i] = None;
                self.serving.swap_remove(k);
                self.free_slot(i);
            } else {
                k += 1;
            }
        }
    }

    fn free_slot(&self, i: usize) {
        let slot = self.slot(i);
        slot.requests.reset();
        slot.replies.reset();
        slot.client_max.store(0, Ordering::Relaxed);
        slot.state.store(segment::FREE, Ordering::Release);
        // Give the ring pages back to the system; a slot's next client starts clean.
        let offset = self.geometry.slot_offset(i) + segment::ALIGN;
        let _ = rustix::fs::fallocate(
            &self._fd,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            offset as u64,
            2 * self.geometry.capacity as u64,
        );
        self.owner(i).store(0, Ordering::Release);
    }

    fn housekeeping(&mut self, changes: u32) {
        self.changes_seen = changes;
        self.rescan();
        let now = Instant::now();
        if now >= self.next_check {
            self.check_clients();
            self.next_check = now + LIVENESS_INTERVAL;
        }
        self.free_finished();
    }

    /// The next message from any client, round robin; closes the connections of clients
    /// that break the protocol.
    #[inline(always)]
    fn poll(&mut self) -> Option<Message> {
        self.poll_with(next_message)
    }

    /// The next message from any client, round robin, taken by `take` (which hands it
    /// out, as a [`Message`] or lent); closes the connections of clients that break the
    /// protocol.
    #[inline(always)]
    fn poll_with<R>(
        &mut self,
        mut take: impl FnMut(&mut Client, usize, &Arc<str>) -> std::result::Result<Option<R>, Corrupt>,
    ) -> Option<R> {
        let n = self.serving.len();
        if self.cursor >= n {
            self.cursor = 0;
        }
        for k in 0..n {
            let at = if self.cursor + k >= n {
                self.cursor + k - n
            } else {
                self.cursor + k
            };
            let i = self.serving[at];
            let client = self.clients[i].as_mut().expect("serving");
            if client.refused {
                continue;
            }
            match take(client, self.max_message, &self.url) {
                Ok(Some(taken)) => {
                    self.cursor = if at + 1 == n { 0 } else { at + 1 };
                    return Some(taken);
                }
                Ok(None) => {}
                Err(c) => {
                    log::error!(
                        "{}: closing the connection of client pid {} (slot {i}): it broke the shared ring: {}",
                        self.url,
                        client.pid,
                        c.0
                    );
                    client.refused = true;
                    client.partial = None;
                    let slot = self.slot(i);
                    slot.state.store(segment::REFUSED, Ordering::SeqCst);
                    wait::wake_all(&slot.replies.consumer_sleeps, &slot.bell);
                    wait::wake_all(&slot.requests.producer_sleeps, &slot.room_bell);
                }
            }
        }
        None
    }

    /// Waits until `deadline` for a message and lends it to `handle` (taken when called),
    /// returning what `handle` returned; `None` when the deadline passed or the waker was
    /// called. Generic, so that `handle` and the reply it writes are inlined between
    /// reading the request and giving its space back (see [`InPlace`] for why).
    #[inline(always)]
    pub(crate) fn recv_in_place<H: FnOnce(&mut MessageRef<'_>) -> R, R>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut Option<H>,
    ) -> Option<R> {
        self.wait_for(deadline, |listener| {
            listener
                .poll_with(|client, max, url| lend_next(client, max, url, handle))
                .map(ControlFlow::Break)
        })
    }

    /// Lends every message to `handle` until it breaks; what it broke with. The loop never
    /// leaves [`wait_for`](Self::wait_for) between messages: returning from it and
    /// entering it again for each message, as a loop over `recv_in_place` does, costs a
    /// measurable share of a round trip (docs/DESIGN.md).
    #[inline(always)]
    pub(crate) fn serve_in_place<B>(
        &mut self,
        mut handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> B {
        loop {
            let served = self.wait_for(None, |listener| {
                listener.poll_with(|client, max, url| {
                    lend_next(client, max, url, &mut Some(&mut handle))
                })
            });
            if let Some(value) = served {
                return value;
            }
        }
    }

    /// Waits until `deadline` while `poll` takes messages, looking after the clients
    /// meanwhile: `poll` returns `None` when there was nothing to take, `Continue` when it
    /// took one and wants more, `Break` when it is done. What it broke with; `None` when
    /// the deadline passed or the waker was called.
    #[inline(always)]
    fn wait_for<R>(
        &mut self,
        deadline: Option<Instant>,
        mut poll: impl FnMut(&mut ShmListener) -> Option<ControlFlow<R>>,
    ) -> Option<R> {
        loop {
            if self.woken.load(Ordering::Relaxed) && self.woken.swap(false, Ordering::AcqRel) {
                return None;
            }
            // Clients that attach, leave or die are looked at even while others keep the
            // server busy; the clock is read only every so often.
            self.rounds = self.rounds.wrapping_add(1);
            let changes = self.header().changes.load(Ordering::Acquire);
            if changes != self.changes_seen
                || (self.rounds % 64 == 0 && Instant::now() >= self.next_check)
            {
                self.housekeeping(changes);
            }
            // Spin first, polling: a busy client's next message is taken the moment it is
            // seen, and then not even the clock is read. (Spinning on a cheaper test and
            // polling afterwards costs 15 ns a message: measured.) A wake-up, or a client
            // that attached or left, ends the spin too, to be seen to at the top.
            let mut done = None;
            let mut take = |listener: &mut ShmListener| match poll(listener) {
                None => woken_or_changed(&listener.woken, listener.header(), listener.changes_seen),
                Some(ControlFlow::Continue(())) => true,
                Some(ControlFlow::Break(value)) => {
                    done = Some(value);
                    true
                }
            };
            let mut spinner = self.spinner;
            let busy = take(self) || spinner.spin(|| take(self));
            self.spinner = spinner;
            if let Some(value) = done {
                return Some(value);
            }
            if busy {
                continue;
            }
            let now = Instant::now();
            if now >= self.next_check {
                self.housekeeping(changes);
                continue;
            }
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            let until = deadline.map_or(self.next_check, |d| d.min(self.next_check));
            // SAFETY: the segment begins with the header; the Arc keeps it mapped.
            let header: &Header = unsafe { &*self.map.base().cast::<Header>() };
            let (clients, serving, woken) = (&self.clients, &self.serving, &self.woken);
            let seen = self.changes_seen;
            self.spinner.sleep(
                &header.doorbell,
                || work_waiting(woken, header, seen, serving, clients),
                Some(until),
            );
        }
    }
}

/// Whether the server has something to do: a wake-up, a client that attached or left, or
/// a message.
#[inline(always)]
fn work_waiting(
    woken: &AtomicBool,
    header: &Header,
    changes_seen: u32,
    serving: &[usize],
    clients: &[Option<Client>],
) -> bool {
    woken_or_changed(woken, header, changes_seen)
        || serving.iter().any(|&i| {
            clients[i]
                .as_ref()
                .is_some_and(|c| !c.refused && c.consumer.has_data())
        })
}

/// Whether the server was woken, or a client attached or left since `changes_seen`.
#[inline(always)]
fn woken_or_changed(woken: &AtomicBool, header: &Header, changes_seen: u32) -> bool {
    woken.load(Ordering::Relaxed) || header.changes.load(Ordering::Relaxed) != changes_seen
}

/// A complete message from a client's ring.
enum Whole {
    /// In one record, read where it lies.
    InRing(ring::Record),
    /// Put together from several records.
    Assembled(Partial),
}

impl Whole {
    fn kind_and_id(&self) -> (Kind, u64) {
        match self {
            Whole::InRing(record) => (record.kind, record.id),
            Whole::Assembled(whole) => (whole.kind, whole.id),
        }
    }
}

/// The next complete message in a client's ring.
#[inline(always)]
fn next_whole(client: &mut Client, max: usize) -> std::result::Result<Option<Whole>, Corrupt> {
    loop {
        let Some(record) = client.consumer.peek()? else {
            return Ok(None);
        };
        if !matches!(record.kind, Kind::Message | Kind::Request) {
            return Err(Corrupt(format!("it sent a {:?}", record.kind)));
        }
        if client.partial.is_none() && record.flags & MORE == 0 {
            if record.len > max {
                return Err(Corrupt(format!(
                    "a message of {} bytes is over the limit of {max}",
                    record.len
                )));
            }
            return Ok(Some(Whole::InRing(record)));
        }
        let done = assemble(&mut client.partial, &client.consumer, &record, max)?;
        client.releases.release(record.start, record.end);
        if let Some(whole) = done {
            return Ok(Some(Whole::Assembled(whole)));
        }
    }
}

/// The next complete message in a client's ring, as a [`Message`].
#[inline(always)]
fn next_message(
    client: &mut Client,
    max: usize,
    url: &Arc<str>,
) -> std::result::Result<Option<Message>, Corrupt> {
    let Some(whole) = next_whole(client, max)? else {
        return Ok(None);
    };
    let (kind, id) = whole.kind_and_id();
    let payload = match whole {
        Whole::InRing(record) => Payload::Shm(Lease {
            releases: client.releases.clone(),
            ptr: client.consumer.area().range(record.payload_at, record.len),
            len: record.len,
            start: record.start,
            end: record.end,
        }),
        Whole::Assembled(whole) => Payload::Owned(whole.bytes),
    };
    let reply_to = (kind == Kind::Request).then(|| ReplyTo::new(client.replies.clone(), id));
    Ok(Some(Message::new(
        payload,
        client.peer.clone(),
        reply_to,
        url.clone(),
    )))
}

/// Lends the next complete message in a client's ring to `handle` (taking it), then
/// gives its space back; what `handle` returned, when there was a message.
#[inline(always)]
fn lend_next<H: FnOnce(&mut MessageRef<'_>) -> R, R>(
    client: &mut Client,
    max: usize,
    url: &str,
    handle: &mut Option<H>,
) -> std::result::Result<Option<R>, Corrupt> {
    let record = match next_whole(client, max)? {
        None => return Ok(None),
        Some(Whole::InRing(record)) => record,
        Some(Whole::Assembled(whole)) => {
            let reply_to = (whole.kind == Kind::Request)
                .then(|| ReplyTo::to(ReplyBackend::Shm(&client.replies), whole.id));
            let handle = handle.take().expect("a message is lent to a handler once");
            return Ok(Some(handle(&mut MessageRef::new(
                &whole.bytes,
                false,
                &client.peer,
                reply_to,
                url,
            ))));
        }
    };
    // In this order (the payload, then the way back, then the guard, then the handler):
    // measured in a loop serving one client, the order in which the older version built
    // them cost 30 ns a message.
    let payload = client.consumer.payload(&record);
    let reply_to = (record.kind == Kind::Request)
        .then(|| ReplyTo::to(ReplyBackend::Shm(&client.replies), record.id));
    // Given back even if the handler panics: the ring must not lose the space.
    let returned = Returned {
        releases: &client.releases,
        start: record.start,
        end: record.end,
    };
    let handle = handle.take().expect("a message is lent to a handler once");
    let result = handle(&mut MessageRef::new(
        payload,
        true,
        &client.peer,
        reply_to,
        url,
    ));
    drop(returned);
    Ok(Some(result))
}

/// Gives a lent record's space back when dropped.
struct Returned<'a> {
    releases: &'a Releases,
    start: u64,
    end: u64,
}

impl Drop for Returned<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.releases.release(self.start, self.end);
    }
}

impl ServerSide for ShmListener {
    #[inline(always)]
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        Ok(self.wait_for(deadline, |listener| listener.poll().map(ControlFlow::Break)))
    }

    #[inline(always)]
    fn recv_with<R, H: FnOnce(&mut MessageRef<'_>) -> R>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut Option<H>,
    ) -> Result<Option<R>> {
        Ok(self.recv_in_place(deadline, handle))
    }

    #[inline(always)]
    fn serve_with<B>(
        &mut self,
        handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> Result<B> {
        Ok(self.serve_in_place(handle))
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let woken = self.woken.clone();
        let map = self.map.clone();
        Arc::new(move || {
            woken.store(true, Ordering::SeqCst);
            // SAFETY: the segment begins with the header; the Arc keeps it mapped.
            let header: &Header = unsafe { map.at(0) };
            wait::wake(&header.doorbell, &header.bell);
        })
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// For [`Transport::listen`], which hands out any transport's listener as a trait object;
/// `ipckit::listen` calls the [`ServerSide`] methods directly.
impl Listener for ShmListener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        ServerSide::recv(self, deadline)
    }

    fn recv_with(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut dyn FnMut(&mut MessageRef<'_>),
    ) -> Result<bool> {
        let mut handle = Some(handle);
        Ok(ServerSide::recv_with(self, deadline, &mut handle)?.is_some())
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        ServerSide::waker(self)
    }

    fn endpoint(&self) -> &Endpoint {
        ServerSide::endpoint(self)
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        self.header().state.store(segment::CLOSED, Ordering::SeqCst);
        for i in 0..self.geometry.slots {
            if self.owner(i).load(Ordering::Acquire) != 0 {
                let slot = self.slot(i);
                wait::wake_all(&slot.replies.consumer_sleeps, &slot.bell);
                wait::wake_all(&slot.requests.producer_sleeps, &slot.room_bell);
            }
        }
        let path = segment::path(&self.name);
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&path);
        }
    }
}
