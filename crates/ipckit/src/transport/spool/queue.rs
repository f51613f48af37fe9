//! The receiving side of a spool: hints from inotify gathered into a set of pending names
//! in delivery order, each claimed by a lock and a rename into `cur/`, acknowledged by an
//! unlink, and the claims of receivers that died given back to `new/` with one more
//! delivery counted (docs/PROTOCOL.md, *spool*).
//!
//! Everything a hint names is looked at again before it is used: a hint says where to
//! look, the directory says what is there.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::names::Name;
use super::store::{Area, Registration, Spool};
use super::watch::{ARRIVALS, COMINGS_AND_GOINGS, Hint, Watch};
use crate::endpoint::{Ack, Endpoint};
use crate::error::{Error, Result};
use crate::message::Settle;

/// The spool's own options, read from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// Whether a send flushes to disk before it returns (`?sync=`).
    pub(crate) sync: bool,
    pub(crate) ack: Ack,
    /// Claims of one message before it goes to `dead/` (`?max_deliveries=`).
    pub(crate) max_deliveries: u32,
    /// Pushes that may wait unread in one client's inbox (`?outbox=`).
    pub(crate) outbox: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: true,
            ack: Ack::Recv,
            max_deliveries: 5,
            outbox: 1000,
        }
    }
}

impl Options {
    /// The options `endpoint` gives.
    pub(crate) fn of(endpoint: &Endpoint) -> Options {
        Options {
            sync: endpoint.sync(),
            ack: endpoint.ack(),
            max_deliveries: endpoint.max_deliveries(),
            outbox: endpoint.outbox(),
        }
    }
}

/// What one try at claiming a pending name came to.
enum Attempt {
    Claimed(Claim),
    /// Taken by another receiver, or moved aside: not pending any more.
    Gone,
    /// Another receiver holds its lock, and may yet die before it renames it.
    Contended,
}

/// How soon a name another receiver was locking is tried again.
const CONTENDED_RETRY: Duration = Duration::from_millis(10);

/// How often cur/ is looked at for claims of receivers that died, while it holds claims
/// of others.
const RECOVER_INTERVAL: Duration = Duration::from_secs(1);

/// A name waiting in `new/`, in delivery order; the raw bytes break ties between names
/// with one base (which only a foreign writer makes).
#[derive(Debug, PartialEq, Eq)]
struct Pending {
    name: Name,
    raw: Vec<u8>,
}

impl Ord for Pending {
    fn cmp(&self, other: &Pending) -> Ordering {
        self.name
            .order(&other.name)
            .then_with(|| self.raw.cmp(&other.raw))
    }
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Pending) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A message this receiver claimed: in `cur/` under its claimed name, locked through
/// the file it was read from until it is acknowledged.
pub(crate) struct Claim {
    /// Its name as it was in `new/`: deliveries before this one, sender, request.
    pub(crate) name: Name,
    pub(crate) payload: Vec<u8>,
    /// The file's owner: who wrote it, as the kernel says.
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) receipt: Receipt,
}

/// What acknowledges a claim. Dropped without [`acknowledge`](Receipt::acknowledge) (a
/// handler that panicked, a read that failed), it gives the message back to `new/`, one
/// delivery counted, for this or another receiver to deliver again.
pub(crate) struct Receipt {
    spool: Arc<Spool>,
    claimed: String,
    /// Its name back in `new/`.
    returned: String,
    /// Holds the claim's lock; `None` once settled.
    file: Option<File>,
}

impl Receipt {
    /// Removes the message for good. Unlinked before the lock is let go, so that a free
    /// lock in cur/ always means a dead holder.
    pub(crate) fn acknowledge(mut self) {
        if let Err(e) = rfs::unlinkat(
            self.spool.area(Area::Cur),
            self.claimed.as_str(),
            AtFlags::empty(),
        ) {
            log::warn!(
                "{}: could not remove the acknowledged cur/{} ({e}); it will be delivered again",
                self.spool.url(),
                self.claimed
            );
        }
        self.file = None;
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if self.file.is_none() {
            return;
        }
        match self.spool.rename(
            Area::Cur,
            OsStr::new(&self.claimed),
            Area::New,
            OsStr::new(&self.returned),
        ) {
            Ok(()) => log::info!(
                "{}: cur/{} was let go before it was done with; back in new/ as {}",
                self.spool.url(),
                self.claimed,
                self.returned
            ),
            // Left locked until the file closes below, then free: recovered as a dead
            // holder's claim.
            Err(e) => log::warn!(
                "{}: could not give back cur/{} ({e}); a receiver's next look at cur/ will",
                self.spool.url(),
                self.claimed
            ),
        }
    }
}

impl Settle for Receipt {
    fn settle(self: Box<Self>) {
        self.acknowledge();
    }
}

/// A receiver's view of one spool: its registration, its watch and its pending names.
pub(crate) struct Queue {
    spool: Arc<Spool>,
    registration: Registration,
    max_message: usize,
    max_deliveries: u32,
    watch: Watch,
    new_dir: i32,
    cur_dir: i32,
    clients_dir: Option<i32>,
    pending: BTreeSet<Pending>,
    rescan_due: bool,
    /// When cur/ is next looked at for dead claims: set only while it held claims of
    /// other receivers, so that a lone receiver never wakes for it.
    recover_at: Option<Instant>,
    /// Names another receiver was locking when this one looked: tried again shortly, as
    /// that receiver may die between its lock and its rename, and no hint would come.
    contended: Vec<Pending>,
    /// Times a wait returned before the deadline it was given, for tests: an idle
    /// receiver must not wake.
    #[cfg(test)]
    pub(crate) wake_ups: usize,
}

impl Queue {
    /// Registers a receiver on `spool` and watches `new/`, and `clients/` for a server
    /// (`watch_clients`): one descriptor for both, so that a client's arrival is read
    /// before its first message. The first [`refresh`](Queue::refresh) scans both.
    pub(crate) fn open(
        spool: Arc<Spool>,
        max_message: usize,
        max_deliveries: u32,
        watch_clients: bool,
    ) -> Result<Queue> {
        let registration = spool.register_receiver()?;
        let watch_failed = |e| Error::io(&**spool.url(), "watching the spool with inotify", e);
        let watch = Watch::with_waker().map_err(watch_failed)?;
        let new_dir = watch
            .add(spool.area(Area::New), ARRIVALS)
            .map_err(watch_failed)?;
        // Claims arriving in cur/: another receiver's may be left there by its death, with
        // nobody to say so, so each one seen has this receiver look at cur/ a second later.
        let cur_dir = watch
            .add(spool.area(Area::Cur), ARRIVALS)
            .map_err(watch_failed)?;
        let clients_dir = match watch_clients {
            true => Some(
                watch
                    .add(spool.area(Area::Clients), COMINGS_AND_GOINGS)
                    .map_err(watch_failed)?,
            ),
            false => None,
        };
        Ok(Queue {
            spool,
            registration,
            max_message,
            max_deliveries,
            watch,
            new_dir,
            cur_dir,
            clients_dir,
            pending: BTreeSet::new(),
            rescan_due: true,
            recover_at: None,
            contended: Vec::new(),
            #[cfg(test)]
            wake_ups: 0,
        })
    }

    pub(crate) fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// The receiver's id, which marks its claims.
    pub(crate) fn id(&self) -> &str {
        self.registration.id()
    }

    /// Takes the hints queued, without waiting: names in `new/` join the pending set,
    /// hints about `clients/` go to `clients` (with `Hint::Overflow` when events were
    /// lost, which also rescans `new/`). Returns once the spool was looked at again
    /// where due: at the start, after lost events, and once a second while cur/ holds
    /// claims of others.
    pub(crate) fn drain(&mut self, mut clients: impl FnMut(Hint)) -> Result<()> {
        let mut arrived = Vec::new();
        let (new_dir, cur_dir, clients_dir) = (self.new_dir, self.cur_dir, self.clients_dir);
        let mut overflow = false;
        let mut claimed_by_others = false;
        let me = self.registration.id().to_owned();
        self.watch
            .drain(|hint| match hint {
                Hint::Arrived { dir, name } if dir == new_dir => arrived.push(name),
                Hint::Arrived { dir, name } if dir == cur_dir => {
                    claimed_by_others |=
                        Name::parse(&name).is_none_or(|name| name.receiver() != Some(me.as_str()))
                }
                Hint::Overflow => overflow = true,
                hint @ (Hint::Arrived { dir, .. } | Hint::Left { dir, .. })
                    if Some(dir) == clients_dir =>
                {
                    clients(hint)
                }
                _ => {}
            })
            .map_err(|e| Error::io(&**self.spool.url(), "reading the spool's inotify", e))?;
        if claimed_by_others && self.recover_at.is_none() {
            self.recover_at = Some(Instant::now() + RECOVER_INTERVAL);
        }
        if overflow {
            self.rescan_due = true;
            clients(Hint::Overflow);
        }
        for name in arrived {
            self.add_pending(name);
        }
        if self.rescan_due {
            self.refresh()?;
        } else if self.recover_at.is_some_and(|at| Instant::now() >= at) {
            self.recover()?;
        }
        Ok(())
    }

    /// Gives back the dead claims in cur/ and reads `new/` whole into the pending set.
    pub(crate) fn refresh(&mut self) -> Result<()> {
        self.spool.sweep_tmp();
        // Removes the files of receivers that died: nothing else would, if no client waits.
        let _ = self.spool.live_receivers();
        self.recover()?;
        let names = self
            .spool
            .entries(Area::New)
            .map_err(|e| Error::io(&**self.spool.url(), "reading new/", e))?;
        for name in names {
            self.add_pending(name);
        }
        // Only now: a scan that failed is tried again at the next drain.
        self.rescan_due = false;
        Ok(())
    }

    /// A name found in `new/`: pending, or moved aside at once if it is not a name a
    /// message may have there.
    fn add_pending(&mut self, raw: Vec<u8>) {
        let name = Name::parse(&raw).filter(|name| {
            // A request says who waits for its reply; a refusal or a claim mark belongs
            // in an inbox or in cur/.
            (name.request().is_none() || name.client().is_some())
                && !name.is_refusal()
                && name.receiver().is_none()
        });
        match name {
            Some(name) => {
                self.pending.insert(Pending { name, raw });
            }
            None => self.spool.move_aside(
                Area::New,
                OsStr::from_bytes(&raw),
                Area::Bad,
                "its name is not a spool message's (SECONDS.UNIQUE, e.g. $(date +%s.%N).$$)",
            ),
        }
    }

    /// Whether a name from the client `id` waits in the pending set.
    pub(crate) fn has_pending_from(&self, id: &str) -> bool {
        self.pending.iter().any(|p| p.name.client() == Some(id))
    }

    /// Claims the first pending message that is still there to claim; `None` once none
    /// is. What does not belong in new/ is moved aside on the way.
    pub(crate) fn claim(&mut self) -> Result<Option<Claim>> {
        while let Some(pending) = self.pending.pop_first() {
            match self.try_claim(&pending) {
                Ok(Attempt::Claimed(claim)) => return Ok(Some(claim)),
                Ok(Attempt::Gone) => {}
                Ok(Attempt::Contended) => {
                    self.contended.push(pending);
                    let retry = Instant::now() + CONTENDED_RETRY;
                    self.recover_at = Some(self.recover_at.map_or(retry, |at| at.min(retry)));
                }
                Err(e) => {
                    // Tried again at the next call: out of descriptors, say.
                    self.pending.insert(pending);
                    return Err(Error::io(&**self.spool.url(), "claiming a message", e));
                }
            }
        }
        Ok(None)
    }

    fn try_claim(&self, pending: &Pending) -> io::Result<Attempt> {
        let raw = OsStr::from_bytes(&pending.raw);
        let aside = |to: Area, why: &str| {
            self.spool.move_aside(Area::New, raw, to, why);
            Ok(Attempt::Gone)
        };
        let file = match rfs::openat(
            self.spool.area(Area::New),
            raw,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(file) => File::from(file),
            Err(Errno::LOOP) => return aside(Area::Bad, "it is a symbolic link"),
            Err(Errno::NXIO) => return aside(Area::Bad, "it is a socket"),
            // Another receiver took it.
            Err(Errno::NOENT) => return Ok(Attempt::Gone),
            Err(e) => return Err(e.into()),
        };
        let stat = rfs::fstat(&file)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return aside(
                Area::Bad,
                &format!("it is not a regular file but a {kind:?}"),
            );
        }
        if stat.st_size as u64 > self.max_message as u64 {
            return aside(
                Area::Bad,
                &format!(
                    "it holds {} bytes, over max_message={}",
                    stat.st_size, self.max_message
                ),
            );
        }
        match rfs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            // Another receiver is claiming it.
            Err(Errno::WOULDBLOCK) => return Ok(Attempt::Contended),
            Err(e) => return Err(e.into()),
        }
        let name = &pending.name;
        if name.deliveries() >= self.max_deliveries {
            return aside(
                Area::Dead,
                &format!(
                    "it was delivered {} times and never acknowledged (max_deliveries={})",
                    name.deliveries(),
                    self.max_deliveries
                ),
            );
        }
        let claimed = name.claimed_by(self.id()).to_string();
        match self
            .spool
            .rename(Area::New, raw, Area::Cur, OsStr::new(&claimed))
        {
            Ok(()) => {}
            // Claimed and acknowledged by another receiver while this one opened it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Attempt::Gone),
            Err(e) if Errno::from_io_error(&e) == Some(Errno::NAMETOOLONG) => {
                return aside(Area::Bad, "its name is too long to mark a claim on");
            }
            Err(e) => return Err(e),
        }
        // From here the claim is the receipt's: a read that fails gives it back.
        let mut receipt = Receipt {
            spool: self.spool.clone(),
            returned: name.returned().to_string(),
            claimed,
            file: Some(file),
        };
        let mut payload = Vec::with_capacity(stat.st_size as usize);
        receipt
            .file
            .as_ref()
            .expect("held until settled")
            .take(self.max_message as u64 + 1)
            .read_to_end(&mut payload)?;
        if payload.len() > self.max_message {
            self.spool.move_aside(
                Area::Cur,
                OsStr::new(&receipt.claimed),
                Area::Bad,
                &format!(
                    "it grew past max_message={} while it was read",
                    self.max_message
                ),
            );
            receipt.file = None;
            return Ok(Attempt::Gone);
        }
        Ok(Attempt::Claimed(Claim {
            name: name.clone(),
            payload,
            uid: stat.st_uid,
            gid: stat.st_gid,
            receipt,
        }))
    }

    /// Gives back to `new/`, one delivery counted, every claim in cur/ whose holder is
    /// dead: its lock is free, as a live holder locks before the file enters cur/ and
    /// unlinks it before letting go. Schedules the next look while others hold claims.
    pub(crate) fn recover(&mut self) -> Result<()> {
        for pending in std::mem::take(&mut self.contended) {
            self.pending.insert(pending);
        }
        let names = self
            .spool
            .entries(Area::Cur)
            .map_err(|e| Error::io(&**self.spool.url(), "reading cur/", e))?;
        let mut others_hold = false;
        for raw in names {
            let raw = OsStr::from_bytes(&raw);
            let Some(name) = Name::parse(raw.as_bytes()) else {
                self.spool.move_aside(
                    Area::Cur,
                    raw,
                    Area::Bad,
                    "its name is not a claimed message's",
                );
                continue;
            };
            // This receiver's own claims are tried too (one it let go is free), but do
            // not keep it looking: it knows when it lets go.
            let mine = name.receiver() == Some(self.id());
            let file = match rfs::openat(
                self.spool.area(Area::Cur),
                raw,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(file) => file,
                Err(Errno::LOOP | Errno::NXIO) => {
                    self.spool
                        .move_aside(Area::Cur, raw, Area::Bad, "it is not a regular file");
                    continue;
                }
                Err(_) => continue,
            };
            if rfs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
                others_hold |= !mine;
                continue;
            }
            let back = name.returned().to_string();
            match self
                .spool
                .rename(Area::Cur, raw, Area::New, OsStr::new(&back))
            {
                Ok(()) => log::info!(
                    "{}: the receiver of cur/{} died before it was done with it; back in new/ as {back}",
                    self.spool.url(),
                    std::path::Path::new(raw).display()
                ),
                // Another receiver gave it back first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!(
                    "{}: could not give back cur/{} of a receiver that died: {e}",
                    self.spool.url(),
                    std::path::Path::new(raw).display()
                ),
            }
            drop(file);
        }
        self.recover_at = others_hold.then(|| Instant::now() + RECOVER_INTERVAL);
        Ok(())
    }

    /// When the queue wants to look at the spool again on its own, if ever.
    #[cfg(feature = "tokio")]
    pub(crate) fn next_look(&self) -> Option<Instant> {
        self.recover_at
    }

    /// Waits until a hint comes, the waker is called, or `until` passes (the caller's
    /// deadline or its own next look, whichever is sooner: see
    /// [`next_look`](Queue::next_look)).
    pub(crate) fn wait(&mut self, until: Option<Instant>) -> Result<()> {
        let sooner = match (until, self.recover_at) {
            (Some(until), Some(at)) => Some(until.min(at)),
            (until, at) => until.or(at),
        };
        self.watch
            .wait(sooner)
            .map_err(|e| Error::io(&**self.spool.url(), "waiting for messages", e))?;
        #[cfg(test)]
        if until.is_none_or(|until| Instant::now() < until) {
            self.wake_ups += 1;
        }
        Ok(())
    }

    /// Ends a wait in progress, or the next, from any thread.
    pub(crate) fn waker(&self) -> Result<impl Fn() + Send + Sync + 'static> {
        self.watch
            .waker()
            .map_err(|e| Error::io(&**self.spool.url(), "making the spool's waker", e))
    }

    /// The inotify descriptor, readable when a hint waits: for tokio.
    #[cfg(feature = "tokio")]
    pub(crate) fn watch_fd(&self) -> std::sync::Arc<std::os::fd::OwnedFd> {
        self.watch.shared_fd()
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("receiver", &self.id())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    pub(crate) fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipckit-queue-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn endpoint(dir: &Path) -> Endpoint {
        format!("spool://{}", dir.join("spool").display())
            .parse()
            .unwrap()
    }

    fn queue(dir: &Path, max_message: usize) -> Queue {
        let spool = Arc::new(Spool::open(&endpoint(dir), true, false).unwrap());
        let mut queue = Queue::open(spool, max_message, 5, false).unwrap();
        queue.drain(|_| {}).unwrap();
        queue
    }

    /// Writes a message as a shell does: into tmp/, then renamed into new/.
    pub(crate) fn shell_send(dir: &Path, name: &str, payload: &[u8]) {
        let spool = dir.join("spool");
        std::fs::write(spool.join("tmp").join(name), payload).unwrap();
        std::fs::rename(spool.join("tmp").join(name), spool.join("new").join(name)).unwrap();
    }

    fn names_in(dir: &Path, area: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("spool").join(area))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn drain_all(queue: &mut Queue) -> Vec<Vec<u8>> {
        queue.drain(|_| {}).unwrap();
        let mut got = Vec::new();
        while let Some(claim) = queue.claim().unwrap() {
            got.push(claim.payload);
            claim.receipt.acknowledge();
        }
        got
    }

    #[test]
    fn messages_come_in_the_order_of_their_names_whoever_wrote_them() {
        let dir = scratch("order");
        let mut queue = queue(&dir, 1024);
        // A shell's names by time, among ipckit's; written out of order.
        shell_send(&dir, "1733360000.500000000.4242", b"shell-2");
        shell_send(&dir, "1733360000.000000001.4242", b"shell-1");
        shell_send(&dir, "900000000.9.1", b"shell-0");
        let spool = queue.spool().clone();
        for i in 0..20 {
            spool
                .publish(&Name::fresh(Some("me"), None), format!("m{i}").as_bytes())
                .unwrap();
        }
        let mut expected: Vec<Vec<u8>> = vec![b"shell-0".to_vec(), b"shell-1".to_vec()];
        expected.push(b"shell-2".to_vec());
        expected.extend((0..20).map(|i| format!("m{i}").into_bytes()));
        assert_eq!(drain_all(&mut queue), expected);
        assert!(names_in(&dir, "new").is_empty() && names_in(&dir, "cur").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_is_not_a_message_goes_to_bad_untouched_and_an_empty_file_is_an_empty_message() {
        let dir = scratch("bad");
        let mut queue = queue(&dir, 8);
        let new = dir.join("spool/new");
        std::fs::write(dir.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), new.join("1.link")).unwrap();
        std::fs::create_dir(new.join("2.dir")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            new.join("3.fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(new.join("4.socket")).unwrap();
        std::fs::write(new.join("notes.txt"), b"foreign").unwrap();
        std::fs::write(new.join("5.big"), b"123456789").unwrap();
        std::fs::write(new.join("6.x,q=1"), b"q").unwrap();
        shell_send(&dir, "7.empty", b"");
        shell_send(&dir, "8.fits", b"12345678");
        queue.refresh().unwrap();
        assert_eq!(drain_all(&mut queue), [b"".to_vec(), b"12345678".to_vec()]);
        assert_eq!(
            names_in(&dir, "bad"),
            [
                "1.link",
                "2.dir",
                "3.fifo",
                "4.socket",
                "5.big",
                "6.x,q=1",
                "notes.txt"
            ]
        );
        let bad = dir.join("spool/bad");
        assert!(
            std::fs::symlink_metadata(bad.join("1.link"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"secret");
        assert_eq!(std::fs::read(bad.join("5.big")).unwrap(), b"123456789");
        assert!(names_in(&dir, "new").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_claim_whose_holder_died_returns_counted_and_goes_dead_at_max_deliveries() {
        let dir = scratch("recover");
        let mut queue = queue(&dir, 1024);
        let cur = dir.join("spool/cur");
        // Left by a receiver that died: in cur/, nobody holding its lock.
        std::fs::write(cur.join("1.a,c=x,r=dead-1"), b"again").unwrap();
        // Held by a live one (this lock): stays.
        std::fs::write(cur.join("2.b,r=live-1"), b"held").unwrap();
        let held = File::open(cur.join("2.b,r=live-1")).unwrap();
        rfs::flock(&held, FlockOperation::NonBlockingLockExclusive).unwrap();
        queue.refresh().unwrap();
        assert_eq!(names_in(&dir, "cur"), ["2.b,r=live-1"]);
        assert!(queue.next_look().is_some(), "another's claim is watched");
        queue.drain(|_| {}).unwrap();
        let claim = queue.claim().unwrap().unwrap();
        assert_eq!(claim.name.to_string(), "1.a,d=1,c=x");
        assert_eq!(claim.payload, b"again");
        // Dropped unacknowledged: the lock goes with the file, and the next look gives
        // it back once more.
        drop(claim);
        drop(held);
        queue.recover().unwrap();
        assert!(queue.next_look().is_none(), "nobody else holds a claim");
        assert_eq!(names_in(&dir, "new"), ["1.a,d=2,c=x", "2.b,d=1"]);
        // Four deliveries before: the fifth is the last allowed.
        std::fs::rename(
            dir.join("spool/new/1.a,d=2,c=x"),
            dir.join("spool/new/1.a,d=4,c=x"),
        )
        .unwrap();
        std::fs::rename(dir.join("spool/new/2.b,d=1"), dir.join("spool/new/2.b,d=5")).unwrap();
        queue.refresh().unwrap();
        let last = queue.claim().unwrap().unwrap();
        assert_eq!(last.name.deliveries(), 4);
        last.receipt.acknowledge();
        assert!(queue.claim().unwrap().is_none());
        assert_eq!(names_in(&dir, "dead"), ["2.b,d=5"]);
        assert_eq!(
            std::fs::read(dir.join("spool/dead/2.b,d=5")).unwrap(),
            b"held"
        );
        assert!(names_in(&dir, "cur").is_empty() && names_in(&dir, "new").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_live_claim_is_locked_until_acknowledged_and_then_gone() {
        let dir = scratch("ack");
        let mut mine = queue(&dir, 1024);
        let mut other = queue(&dir, 1024);
        shell_send(&dir, "1.a", b"a");
        mine.drain(|_| {}).unwrap();
        let claim = mine.claim().unwrap().unwrap();
        let claimed = format!("1.a,r={}", mine.id());
        assert_eq!(names_in(&dir, "cur"), std::slice::from_ref(&claimed));
        other.recover().unwrap();
        assert_eq!(names_in(&dir, "cur"), [claimed], "a live claim stays");
        assert!(other.next_look().is_some());
        claim.receipt.acknowledge();
        assert!(names_in(&dir, "cur").is_empty());
        other.recover().unwrap();
        assert!(other.next_look().is_none());
        assert!(drain_all(&mut other).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_receivers_racing_never_deliver_one_message_twice() {
        let dir = scratch("race");
        let spool = Arc::new(Spool::open(&endpoint(&dir), true, false).unwrap());
        const COUNT: usize = 2000;
        for i in 0..COUNT {
            spool
                .publish(&Name::fresh(None, None), &i.to_le_bytes())
                .unwrap();
        }
        // Both see every name and go for them in the same order: each claim is raced.
        let receivers: Vec<_> = (0..2)
            .map(|_| Queue::open(spool.clone(), 1024, 5, false).unwrap())
            .collect();
        let taken: Vec<Vec<usize>> = std::thread::scope(|scope| {
            let workers: Vec<_> = receivers
                .into_iter()
                .map(|mut queue| {
                    scope.spawn(move || {
                        queue.drain(|_| {}).unwrap();
                        let mut got = Vec::new();
                        while let Some(claim) = queue.claim().unwrap() {
                            got.push(usize::from_le_bytes(claim.payload[..].try_into().unwrap()));
                            claim.receipt.acknowledge();
                        }
                        got
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut all: Vec<usize> = taken.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..COUNT).collect::<Vec<_>>());
        for got in &taken {
            assert!(got.windows(2).all(|w| w[0] < w[1]), "each in order");
        }
        assert!(names_in(&dir, "new").is_empty() && names_in(&dir, "cur").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
