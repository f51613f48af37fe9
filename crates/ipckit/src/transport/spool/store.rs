//! The spool on disk: its directories, opened once and used only through their
//! descriptors, the one way a message is published, and the inboxes and receiver locks
//! that say who is alive.
//!
//! Every operation after [`Spool::open`] is an `*at` call on a directory descriptor opened
//! with `O_NOFOLLOW`: a directory replaced by a symlink later is never followed, and a
//! path is never resolved twice.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{self as rfs, AtFlags, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::names::{self, Name};
use crate::endpoint::{Address, Endpoint};
use crate::error::{Error, Result};

/// The directories of a spool, by what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Area {
    /// Messages being written, under their senders' names.
    Tmp,
    /// Published messages, waiting for a receiver.
    New,
    /// Messages claimed by a receiver, each locked by it.
    Cur,
    /// Messages delivered `max_deliveries` times and never acknowledged.
    Dead,
    /// What does not belong in `new/`: links, directories, FIFOs, foreign names.
    Bad,
    /// One inbox per ipckit client.
    Clients,
    /// One lock file per live receiver.
    Receivers,
}

impl Area {
    const ALL: [Area; 7] = [
        Area::Tmp,
        Area::New,
        Area::Cur,
        Area::Dead,
        Area::Bad,
        Area::Clients,
        Area::Receivers,
    ];

    pub(crate) fn dir_name(self) -> &'static str {
        match self {
            Area::Tmp => "tmp",
            Area::New => "new",
            Area::Cur => "cur",
            Area::Dead => "dead",
            Area::Bad => "bad",
            Area::Clients => "clients",
            Area::Receivers => "receivers",
        }
    }
}

/// An open spool directory.
pub(crate) struct Spool {
    endpoint: Endpoint,
    url: Arc<str>,
    path: PathBuf,
    areas: [OwnedFd; 7],
    file_mode: Mode,
    dir_mode: Mode,
    sync: bool,
}

impl Spool {
    /// Opens the spool of `endpoint`, making it and its directories where missing
    /// (`listening` picks the advice errors give: a server's or a client's). `sync` says
    /// whether a send flushes what it wrote to disk before it returns (`?sync=`).
    pub(crate) fn open(endpoint: &Endpoint, listening: bool, sync: bool) -> Result<Spool> {
        let Address::Spool(path) = endpoint.address() else {
            unreachable!("the registry hands spool endpoints only to spool")
        };
        let url: Arc<str> = endpoint.to_string().into();
        let file_mode = Mode::from_raw_mode(endpoint.mode() & 0o777);
        let dir_mode = dir_mode_for(file_mode);
        let fail = |op: &'static str, e: io::Error| match listening {
            true => Error::listen_io(endpoint, op, e),
            false => Error::io(endpoint, op, e),
        };
        if !path.parent().is_some_and(|parent| parent.is_dir()) {
            let parent = path.parent().unwrap_or(Path::new("/"));
            let reason = format!(
                "the directory {} does not exist; create it, or choose a spool in one that does",
                parent.display()
            );
            return Err(match listening {
                true => Error::CannotListen {
                    endpoint: url.to_string(),
                    reason,
                },
                false => Error::NotFound {
                    endpoint: url.to_string(),
                    detail: reason,
                },
            });
        }
        make_dir(rfs::CWD, path.as_os_str(), dir_mode)
            .map_err(|e| fail("creating the spool", e))?;
        let root = open_dir(rfs::CWD, path.as_os_str())
            .map_err(|e| refused_or(&url, path, e, |e| fail("opening the spool", e)))?;
        check_owner_and_mode(&url, path, &root, dir_mode)?;
        let mut areas = Vec::with_capacity(Area::ALL.len());
        for area in Area::ALL {
            let name = OsStr::new(area.dir_name());
            make_dir(&root, name, dir_mode).map_err(|e| fail("creating a spool directory", e))?;
            let sub_path = path.join(name);
            let dir = open_dir(&root, name).map_err(|e| {
                refused_or(&url, &sub_path, e, |e| fail("opening a spool directory", e))
            })?;
            check_owner_and_mode(&url, &sub_path, &dir, dir_mode)?;
            areas.push(dir);
        }
        Ok(Spool {
            endpoint: endpoint.clone(),
            url,
            path: path.clone(),
            areas: areas.try_into().expect("one descriptor per area"),
            file_mode,
            dir_mode,
            sync,
        })
    }

    /// The endpoint's URL, for errors.
    pub(crate) fn url(&self) -> &Arc<str> {
        &self.url
    }

    /// The permission bits of the spool's files (`?mode=`), for what a server puts in an
    /// inbox.
    pub(crate) fn file_mode(&self) -> Mode {
        self.file_mode
    }

    /// The spool directory.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor of `area`.
    pub(crate) fn area(&self, area: Area) -> BorrowedFd<'_> {
        self.areas[area as usize].as_fd()
    }

    /// Publishes `payload` as the message `name` in `new/`: once this returns, a receiver
    /// can take it, and with `?sync=true` (the default) it survives a power loss too.
    pub(crate) fn publish(&self, name: &Name, payload: &[u8]) -> Result<()> {
        let from = Places {
            tmp: self.area(Area::Tmp),
            new: self.area(Area::New),
        };
        publish(from, &name.file_name(), payload, self.file_mode, self.sync)
            .map_err(|e| self.send_error(e))
    }

    /// The error of a send that failed with `e`: a full filesystem is [`Error::Full`].
    pub(crate) fn send_error(&self, e: io::Error) -> Error {
        if matches!(Errno::from_io_error(&e), Some(Errno::NOSPC | Errno::DQUOT)) {
            Error::Full {
                endpoint: self.url.to_string(),
                detail: format!(
                    "the filesystem of {} ({e}; df -h {0} tells how much room is left)",
                    self.path.display()
                ),
                after: Duration::ZERO,
            }
        } else {
            Error::io(&*self.url, "publishing a message", e)
        }
    }

    /// Renames `name` in `from` to `to_name` in `to`, never over an existing entry.
    pub(crate) fn rename(
        &self,
        from: Area,
        name: &OsStr,
        to: Area,
        to_name: &OsStr,
    ) -> io::Result<()> {
        rename_noreplace(self.area(from), name, self.area(to), to_name)
    }

    /// Moves the entry `name` of `from` (whatever it is: a link is moved, not followed)
    /// into `bad/` or `dead/`, under a fresh suffix if that name is taken there, and logs
    /// why. Nothing happens where another receiver moved it first.
    pub(crate) fn move_aside(&self, from: Area, name: &OsStr, to: Area, why: &str) {
        let mut target = name.to_owned();
        for _ in 0..3 {
            match self.rename(from, name, to, &target) {
                Ok(()) => {
                    log::warn!(
                        "{}: moved {}/{} to {}/{}: {why}",
                        self.url,
                        from.dir_name(),
                        Path::new(name).display(),
                        to.dir_name(),
                        Path::new(&target).display()
                    );
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let mut fresh = name.as_bytes()[..name.len().min(150)].to_vec();
                    fresh.extend_from_slice(format!(".{}", names::fresh_id()).as_bytes());
                    target = OsStr::from_bytes(&fresh).to_owned();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => {
                    log::warn!(
                        "{}: could not move {}/{} to {}/ ({e}); it was to go there because {why}",
                        self.url,
                        from.dir_name(),
                        Path::new(name).display(),
                        to.dir_name()
                    );
                    return;
                }
            }
        }
    }

    /// Removes the spool of `endpoint` with every message in it, once no receiver serves
    /// it ([`Error::AddrInUse`] while one does); nothing where there is no spool. What is
    /// not a spool's own in the directory is left, and the directory with it.
    pub(crate) fn destroy(endpoint: &Endpoint) -> Result<()> {
        let Address::Spool(path) = endpoint.address() else {
            unreachable!("the registry hands spool endpoints only to spool")
        };
        if !path.exists() {
            return Ok(());
        }
        let spool = Spool::open(endpoint, false, false)?;
        let live = spool
            .live_receivers()
            .map_err(|e| Error::io(endpoint, "looking for live receivers", e))?;
        if live > 0 {
            return Err(Error::AddrInUse {
                endpoint: endpoint.to_string(),
                detail: format!(
                    "{live} receiver(s) serve {}; stop them first",
                    path.display()
                ),
            });
        }
        let root = open_dir(rfs::CWD, path.as_os_str())
            .map_err(|e| Error::io(endpoint, "opening the spool", e))?;
        for area in Area::ALL {
            remove_tree(&root, OsStr::new(area.dir_name()))
                .map_err(|e| Error::io(endpoint, "removing the spool", e))?;
        }
        drop((spool, root));
        match std::fs::remove_dir(path) {
            Ok(()) => Ok(()),
            // Something of someone else's is there: it stays, and the directory with it.
            Err(e) if e.raw_os_error() == Some(Errno::NOTEMPTY.raw_os_error()) => Ok(()),
            Err(e) => Err(Error::io(endpoint, "removing the spool", e)),
        }
    }

    /// Removes from `tmp/` what senders that died left half-written: a file whose name
    /// says its sender's pid, when that process no longer runs and the file is ten seconds
    /// old, and any file untouched for 36 hours (Maildir's rule, for names that say no
    /// pid, or a pid since reused).
    pub(crate) fn sweep_tmp(&self) {
        const ABANDONED: Duration = Duration::from_secs(36 * 3600);
        let Ok(names) = self.entries(Area::Tmp) else {
            return;
        };
        let tmp = self.area(Area::Tmp);
        for raw in names {
            let name = OsStr::from_bytes(&raw);
            let age = self.age(Area::Tmp, &raw).unwrap_or_default();
            // A pid is only a claim, and may be another pid namespace's (a spool shared
            // between containers): a file whose pid is not running here is left for a
            // while, longer than any one write takes.
            let sender_died = || {
                Name::parse(&raw)
                    .and_then(|name| name.sender_pid())
                    .is_some_and(process_gone)
            };
            let stale = (age >= MAKER_GRACE && sender_died()) || age > ABANDONED;
            if stale && rfs::unlinkat(tmp, name, AtFlags::empty()).is_ok() {
                log::info!(
                    "{}: removed tmp/{}, which a sender that died left half-written",
                    self.url,
                    Path::new(name).display()
                );
            }
        }
    }

    /// The names in `area` (not `.` and `..`).
    pub(crate) fn entries(&self, area: Area) -> io::Result<Vec<Vec<u8>>> {
        entries(self.area(area))
    }

    /// Makes a fresh inbox for a client of this process.
    pub(crate) fn make_inbox(&self) -> Result<Inbox> {
        let id = names::fresh_id();
        let staging = format!(".{id}.tmp");
        let make = || -> io::Result<Inbox> {
            let clients = self.area(Area::Clients);
            make_dir(clients, OsStr::new(&staging), self.dir_mode)?;
            let dir = open_dir(clients, OsStr::new(&staging))?;
            for sub in ["tmp", "new"] {
                make_dir(&dir, OsStr::new(sub), self.dir_mode)?;
            }
            // Locked before it takes the name servers look for: an inbox's `lock` is
            // always held while its client lives.
            let lock = rfs::openat(
                &dir,
                ".lock",
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                self.file_mode,
            )?;
            rfs::flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
            rename_noreplace(&dir, OsStr::new(".lock"), &dir, OsStr::new("lock"))?;
            let inbox = Inbox {
                tmp: open_dir(&dir, OsStr::new("tmp"))?,
                new: open_dir(&dir, OsStr::new("new"))?,
                id: id.clone(),
                owner: Some(Owner {
                    _lock: lock,
                    clients: rfs::openat(
                        clients,
                        ".",
                        OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?,
                }),
            };
            rename_noreplace(clients, OsStr::new(&staging), clients, OsStr::new(&id))?;
            Ok(inbox)
        };
        make().map_err(|e| {
            let _ = remove_tree(self.area(Area::Clients), OsStr::new(&staging));
            Error::io(&*self.url, "making the client's inbox in clients/", e)
        })
    }

    /// Opens the inbox of the client `id`, to answer and push to it.
    pub(crate) fn open_inbox(&self, id: &str) -> io::Result<Inbox> {
        if !names::is_id(id) {
            return Err(Errno::INVAL.into());
        }
        let dir = open_dir(self.area(Area::Clients), OsStr::new(id))?;
        Ok(Inbox {
            tmp: open_dir(&dir, OsStr::new("tmp"))?,
            new: open_dir(&dir, OsStr::new("new"))?,
            id: id.to_owned(),
            owner: None,
        })
    }

    /// Whether the owner of the entry `name` of `area` still lives: it holds the lock
    /// file there (`clients/ID/lock`, or `receivers/ID` itself). An entry that is gone,
    /// or whose lock nobody holds, is not alive.
    pub(crate) fn is_alive(&self, area: Area, name: &OsStr) -> bool {
        let lock = match area {
            Area::Clients => {
                let mut path = name.as_bytes().to_vec();
                path.extend_from_slice(b"/lock");
                rfs::openat(
                    self.area(area),
                    OsStr::from_bytes(&path),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            }
            _ => rfs::openat(
                self.area(area),
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ),
        };
        let lock = match lock {
            Ok(lock) => lock,
            // Gone, or never whole: its owner left or died.
            Err(Errno::NOENT | Errno::NOTDIR) => return false,
            // Out of descriptors, say: nothing is known, and a live owner must never be
            // taken for dead (its inbox and requests would go).
            Err(e) => {
                log::debug!(
                    "{}: could not look at {}: {e}",
                    self.url,
                    Path::new(name).display()
                );
                return true;
            }
        };
        match rfs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            // Taken: nobody holds it. Closing the descriptor gives it back at once.
            Ok(()) => false,
            Err(_) => true,
        }
    }

    /// Whether the entry `name` of `area` was last changed at least `age` ago.
    pub(crate) fn older_than(&self, area: Area, name: &[u8], age: Duration) -> bool {
        self.age(area, name).is_some_and(|elapsed| elapsed >= age)
    }

    /// How long ago the entry `name` of `area` was last changed; `None` where it is gone
    /// (or changed in the future, by a clock stepped back).
    fn age(&self, area: Area, name: &[u8]) -> Option<Duration> {
        let stat = rfs::statat(
            self.area(area),
            OsStr::from_bytes(name),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .ok()?;
        let changed = std::time::UNIX_EPOCH + Duration::from_secs(stat.st_mtime.max(0) as u64);
        changed.elapsed().ok()
    }

    /// Removes the inbox or staging tree `name` of `clients/` whose client is gone:
    /// renamed out of sight first, so that a server never reports it twice.
    pub(crate) fn remove_inbox(&self, name: &OsStr) -> io::Result<()> {
        let clients = self.area(Area::Clients);
        let gone = if name.as_bytes().starts_with(b".gone-") {
            name.to_owned()
        } else {
            let mut gone = b".gone-".to_vec();
            gone.extend_from_slice(name.as_bytes());
            let gone = OsStr::from_bytes(&gone).to_owned();
            rename_noreplace(clients, name, clients, &gone)?;
            gone
        };
        remove_tree(clients, &gone)
    }

    /// Registers a receiver of this process: a lock file in `receivers/` it holds while
    /// it lives, which clients look for.
    pub(crate) fn register_receiver(&self) -> Result<Registration> {
        let id = names::fresh_id();
        let receivers = self.area(Area::Receivers);
        // Locked under a name nobody counts, then renamed into place: a registration
        // seen is always locked while its receiver lives.
        let staging = format!(".{id}.tmp");
        let lock = rfs::openat(
            receivers,
            staging.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            self.file_mode,
        )
        .and_then(|lock| {
            rfs::flock(&lock, FlockOperation::NonBlockingLockExclusive)?;
            Ok(lock)
        })
        .map_err(io::Error::from)
        .and_then(|lock| {
            rename_noreplace(receivers, OsStr::new(&staging), receivers, OsStr::new(&id))?;
            Ok(lock)
        })
        .map_err(|e| {
            let _ = rfs::unlinkat(receivers, staging.as_str(), AtFlags::empty());
            Error::listen_io(&self.endpoint, "registering in receivers/", e)
        })?;
        Ok(Registration {
            receivers: rfs::openat(
                receivers,
                ".",
                OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io(&*self.url, "registering in receivers/", e.into()))?,
            id,
            _lock: lock,
        })
    }

    /// How many receivers hold their locks in `receivers/`; the files of dead ones are
    /// removed on the way. A registration takes its name only once locked, so a free lock
    /// there is a dead receiver's; a file still under its staging name (`.ID.tmp`) goes
    /// once the process its id names has gone.
    pub(crate) fn live_receivers(&self) -> io::Result<usize> {
        let mut live = 0;
        for name in self.entries(Area::Receivers)? {
            if let Some(staged) = name.strip_prefix(b".") {
                // Being registered, unless its maker died first (and it has waited long
                // enough that no maker of another pid namespace is still at it).
                if maker_gone(staged) && self.older_than(Area::Receivers, &name, MAKER_GRACE) {
                    let _ = rfs::unlinkat(
                        self.area(Area::Receivers),
                        OsStr::from_bytes(&name),
                        AtFlags::empty(),
                    );
                }
                continue;
            }
            if self.is_alive(Area::Receivers, OsStr::from_bytes(&name)) {
                live += 1;
            } else {
                let _ = rfs::unlinkat(
                    self.area(Area::Receivers),
                    OsStr::from_bytes(&name),
                    AtFlags::empty(),
                );
            }
        }
        Ok(live)
    }
}

/// A client's inbox, `clients/ID/`: the way its replies and pushes reach it.
pub(crate) struct Inbox {
    id: String,
    tmp: OwnedFd,
    new: OwnedFd,
    /// The client's, that owns the inbox; `None` in a server's handle to it (two
    /// descriptors per client a server answers).
    owner: Option<Owner>,
}

/// What the client that owns an inbox holds for as long as it lives.
struct Owner {
    /// The inbox's `lock`, locked: a server that can lock it knows the client died.
    _lock: OwnedFd,
    /// `clients/`, to take the inbox away in one rename when the client goes.
    clients: OwnedFd,
}

impl Inbox {
    /// The client's id, as its messages name it (`,c=ID`).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The inbox's `new/`, which its client watches and reads.
    pub(crate) fn new_dir(&self) -> BorrowedFd<'_> {
        self.new.as_fd()
    }

    /// Puts a reply or a push into the inbox. Never fsynced: an inbox lives only as long
    /// as its client, so a power loss takes the client with its messages.
    pub(crate) fn publish(&self, name: &Name, payload: &[u8], file_mode: Mode) -> io::Result<()> {
        let places = Places {
            tmp: self.tmp.as_fd(),
            new: self.new.as_fd(),
        };
        publish(places, &name.file_name(), payload, file_mode, false)
    }
}

impl Drop for Inbox {
    /// The owner's goodbye: the inbox leaves `clients/` in one rename (its servers see
    /// the client go), then its tree is removed.
    fn drop(&mut self) {
        if let Some(owner) = &self.owner {
            let gone = format!(".gone-{}", self.id);
            let clients = &owner.clients;
            if rename_noreplace(clients, OsStr::new(&self.id), clients, OsStr::new(&gone)).is_ok() {
                let _ = remove_tree(clients, OsStr::new(&gone));
            }
        }
    }
}

/// A receiver's entry in `receivers/`, removed when dropped.
pub(crate) struct Registration {
    receivers: OwnedFd,
    id: String,
    _lock: OwnedFd,
}

impl Registration {
    /// The receiver's id, which marks its claims in `cur/` (`,r=ID`).
    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Unlinked before the lock is let go, so nobody sees a free lock of a live one.
        let _ = rfs::unlinkat(&self.receivers, self.id.as_str(), AtFlags::empty());
    }
}

/// The mode of a spool's directories for `file_mode`: the same bits, and search wherever
/// reading is allowed (0600 → 0700, 0660 → 0770).
pub(crate) fn dir_mode_for(file_mode: Mode) -> Mode {
    let bits = file_mode.as_raw_mode();
    Mode::from_raw_mode(bits | ((bits & 0o444) >> 2))
}

/// The two directories a message passes through.
#[derive(Clone, Copy)]
struct Places<'a> {
    tmp: BorrowedFd<'a>,
    new: BorrowedFd<'a>,
}

/// How long a send waits for a file descriptor when the process has none to spare: as
/// long as a full queue is waited for elsewhere, since other threads give theirs back
/// within a send.
const DESCRIPTOR_PATIENCE: Duration = Duration::from_secs(10);

/// Writes `payload` to `tmp/name`, flushes it to disk when `sync`, moves it into `new/`
/// without replacing anything there, and flushes `new/` when `sync`. What failed leaves
/// nothing in either: a message in `new/` is always whole.
fn publish(
    places: Places<'_>,
    name: &str,
    payload: &[u8],
    mode: Mode,
    sync: bool,
) -> io::Result<()> {
    let file = create_waiting_for_a_descriptor(places.tmp, name, mode)?;
    let written = (|| {
        let mut file = std::fs::File::from(file);
        file.write_all(payload)?;
        if sync {
            file.sync_data()?;
        }
        drop(file);
        rename_noreplace(places.tmp, OsStr::new(name), places.new, OsStr::new(name))
    })();
    if let Err(e) = written {
        let _ = rfs::unlinkat(places.tmp, name, AtFlags::empty());
        return Err(e);
    }
    if sync {
        rfs::fsync(places.new)?;
    }
    Ok(())
}

/// Creates `name` in `tmp`; where the process (or the system) is out of descriptors, as a
/// client whose threads all send at once may be, waits for one to be given back rather
/// than fail, backing off from 1 to 20 ms, up to [`DESCRIPTOR_PATIENCE`].
fn create_waiting_for_a_descriptor(
    tmp: BorrowedFd<'_>,
    name: &str,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let deadline = std::time::Instant::now() + DESCRIPTOR_PATIENCE;
    let mut pause = Duration::from_millis(1);
    loop {
        match rfs::openat(tmp, name, flags, mode) {
            Err(Errno::MFILE | Errno::NFILE) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            done => return Ok(done?),
        }
    }
}

/// `renameat2(RENAME_NOREPLACE)`, or a plain rename on a filesystem without it: names are
/// unique per host (pid, nanosecond, counter), so nothing is there to replace.
fn rename_noreplace(
    from: impl AsFd,
    name: &OsStr,
    to: impl AsFd,
    to_name: &OsStr,
) -> io::Result<()> {
    match rfs::renameat_with(&from, name, &to, to_name, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS) => Ok(rfs::renameat(&from, name, &to, to_name)?),
        done => Ok(done?),
    }
}

/// Makes the directory `name` in `at` with exactly `mode` (the umask does not narrow it);
/// one that exists already is left as it is, to be checked when opened.
fn make_dir(at: impl AsFd, name: &OsStr, mode: Mode) -> io::Result<()> {
    match rfs::mkdirat(&at, name, mode) {
        Ok(()) => {
            let dir = open_dir(&at, name)?;
            rfs::fchmod(&dir, mode)?;
            Ok(())
        }
        Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn open_dir(at: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The error for a spool directory that is a symlink, or something else than a directory
/// (never replaced: it is not ipckit's), or else what `other` makes of `e`.
fn refused_or(
    url: &str,
    path: &Path,
    e: io::Error,
    other: impl FnOnce(io::Error) -> Error,
) -> Error {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_symlink());
    match Errno::from_io_error(&e) {
        Some(Errno::LOOP | Errno::NOTDIR)
            if is_link || Errno::from_io_error(&e) == Some(Errno::LOOP) =>
        {
            Error::PermissionDenied {
                endpoint: url.to_owned(),
                detail: format!(
                    "{} is a symlink; a spool's directories are never followed through links: remove it, or choose another spool",
                    path.display()
                ),
            }
        }
        Some(Errno::NOTDIR) => Error::AddrInUse {
            endpoint: url.to_owned(),
            detail: format!(
                "{} exists and is not a directory, so it is not a spool; ipckit never replaces what is not its own: remove it, or choose another spool",
                path.display()
            ),
        },
        _ => other(e),
    }
}

/// Refuses a spool directory that another user owns (unless `?mode=` shares the spool on
/// purpose) or whose mode allows more than `dir_mode`.
fn check_owner_and_mode(url: &str, path: &Path, dir: &OwnedFd, dir_mode: Mode) -> Result<()> {
    let stat = rfs::fstat(dir)
        .map_err(|e| Error::io(url, "reading the spool's owner and mode", e.into()))?;
    // Permission bits only: a group spool's setgid bit is the usual practice.
    let mode = stat.st_mode & 0o777;
    let me = rustix::process::geteuid().as_raw();
    let shared = dir_mode.as_raw_mode() & 0o077 != 0;
    if stat.st_uid != me && !shared {
        return Err(Error::PermissionDenied {
            endpoint: url.to_owned(),
            detail: format!(
                "{} belongs to {} (mode {mode:04o}), not to this user (uid {me}); a spool is private to its owner: use a spool of your own, or have its owner share it with ?mode=0660 (then each side passes the same ?mode=)",
                path.display(),
                user_name(stat.st_uid)
            ),
        });
    }
    if mode & !dir_mode.as_raw_mode() != 0 {
        return Err(Error::PermissionDenied {
            endpoint: url.to_owned(),
            detail: format!(
                "{} has mode {mode:04o}, wider than this endpoint's {:04o} for directories; anyone it admits could read or plant messages: chmod {:04o} {0}, or pass the mode you mean with ?mode=",
                path.display(),
                dir_mode.as_raw_mode(),
                dir_mode.as_raw_mode()
            ),
        });
    }
    Ok(())
}

/// "uid 1000 (alice)", or just the uid where /etc/passwd does not name it.
fn user_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)?.parse() == Ok(uid)).then(|| name.to_owned())
            })
        });
    match name {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

pub(super) fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// How long what a maker whose pid is not running here left (a staged `.ID.tmp`, a file
/// in `tmp/`) stays before it is removed: its maker may be of another pid namespace,
/// mid-way.
pub(crate) const MAKER_GRACE: Duration = Duration::from_secs(10);

/// Whether the process that made the id `id` (`PID-…`, as [`names::fresh_id`] makes
/// them) no longer runs. A pid since reused reads as alive: what it left then waits.
pub(crate) fn maker_gone(id: &[u8]) -> bool {
    let pid = id.split(|&b| b == b'-').next().unwrap_or_default();
    std::str::from_utf8(pid)
        .ok()
        .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|pid| pid.parse().ok())
        .is_some_and(process_gone)
}

/// Whether no process `pid` runs in this pid namespace (0 and pids past `i32::MAX` name
/// none that could have made anything).
fn process_gone(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process(pid) == Err(Errno::SRCH))
}

/// Removes the tree `name` in `at`, never following a link: a spool's `clients/` is three
/// levels deep, and a deeper tree is not one of ipckit's, so it stops there.
fn remove_tree(at: impl AsFd, name: &OsStr) -> io::Result<()> {
    fn remove(at: BorrowedFd<'_>, name: &OsStr, depth: u32) -> io::Result<()> {
        match rfs::unlinkat(at, name, AtFlags::empty()) {
            Err(Errno::ISDIR | Errno::PERM) if depth < 4 => {}
            done => return Ok(done?),
        }
        let dir = open_dir(at, name)?;
        for entry in entries(dir.as_fd())? {
            remove(dir.as_fd(), OsStr::from_bytes(&entry), depth + 1)?;
        }
        Ok(rfs::unlinkat(at, name, AtFlags::REMOVEDIR)?)
    }
    remove(at.as_fd(), name, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_at(dir: &Path, query: &str) -> Endpoint {
        format!("spool://{}{query}", dir.join("spool").display())
            .parse()
            .unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipckit-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn open_makes_every_directory_private_and_publish_leaves_a_whole_file_in_new() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("open");
        let spool = Spool::open(&spool_at(&dir, ""), true, true).unwrap();
        for area in Area::ALL {
            let meta = std::fs::metadata(dir.join("spool").join(area.dir_name())).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{area:?}");
        }
        let name = Name::fresh(None, None);
        spool.publish(&name, b"hello").unwrap();
        let file = dir.join("spool/new").join(name.to_string());
        assert_eq!(std::fs::read(&file).unwrap(), b"hello");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(spool.entries(Area::Tmp).unwrap().is_empty());
        // Opening again finds it as it is.
        Spool::open(&spool_at(&dir, ""), false, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wide_or_linked_spool_is_refused_naming_what_is_wrong() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("wide");
        std::fs::create_dir(dir.join("spool")).unwrap();
        std::fs::set_permissions(dir.join("spool"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = Spool::open(&spool_at(&dir, ""), true, true).err().unwrap();
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
        assert!(
            err.to_string().contains("0777") && err.to_string().contains("chmod 0700"),
            "{err}"
        );
        // The mode it was given is the mode it accepts.
        std::fs::set_permissions(dir.join("spool"), std::fs::Permissions::from_mode(0o770))
            .unwrap();
        Spool::open(&spool_at(&dir, "?mode=0660"), true, true).unwrap();
        std::fs::remove_dir_all(dir.join("spool")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("spool")).unwrap();
        let err = Spool::open(&spool_at(&dir, ""), false, true).err().unwrap();
        assert!(err.to_string().contains("symlink"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_inbox_is_alive_while_its_owner_holds_it_and_leaves_nothing() {
        let dir = scratch("inbox");
        let spool = Spool::open(&spool_at(&dir, ""), false, true).unwrap();
        let inbox = spool.make_inbox().unwrap();
        let id = OsStr::new(inbox.id()).to_owned();
        assert!(spool.is_alive(Area::Clients, &id));
        let answer = spool.open_inbox(inbox.id()).unwrap();
        let reply = Name::fresh(None, Some(3));
        answer
            .publish(&reply, b"reply", Mode::from_raw_mode(0o600))
            .unwrap();
        assert_eq!(
            entries(inbox.new_dir()).unwrap(),
            vec![reply.to_string().into_bytes()]
        );
        drop(inbox);
        assert!(!spool.is_alive(Area::Clients, &id));
        assert!(spool.entries(Area::Clients).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_receivers_lock_counts_while_it_lives() {
        let dir = scratch("receivers");
        let spool = Spool::open(&spool_at(&dir, ""), true, true).unwrap();
        assert_eq!(spool.live_receivers().unwrap(), 0);
        let registration = spool.register_receiver().unwrap();
        assert!(names::is_id(registration.id()));
        assert_eq!(spool.live_receivers().unwrap(), 1);
        // A file left by a receiver that died holds no lock: it is not counted, and goes.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(dir.join(format!("spool/receivers/{dead}-dead-0")), b"").unwrap();
        // One that a live process is registering (locked, not yet renamed into place) is
        // not counted, and stays.
        let making = format!(".{}-making-0.tmp", std::process::id());
        std::fs::write(dir.join("spool/receivers").join(&making), b"").unwrap();
        assert_eq!(spool.live_receivers().unwrap(), 1);
        let mut left = spool.entries(Area::Receivers).unwrap();
        left.sort();
        let mut expected = [making.clone().into_bytes(), registration.id().into()];
        expected.sort();
        assert_eq!(left, expected);
        std::fs::remove_file(dir.join("spool/receivers").join(making)).unwrap();
        drop(registration);
        assert_eq!(spool.live_receivers().unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sweep_tmp_removes_what_dead_senders_left_and_nothing_else() {
        let dir = scratch("sweep");
        let spool = Spool::open(&spool_at(&dir, ""), true, true).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_name = format!("1733360000.000000001.{dead}.0");
        let live_name = Name::fresh(None, None).to_string();
        let young_dead_name = format!("1733360000.000000002.{dead}.1");
        for name in [
            &dead_name,
            &young_dead_name,
            &live_name,
            &"notes.txt".to_owned(),
        ] {
            std::fs::write(dir.join("spool/tmp").join(name), b"half").unwrap();
        }
        // The dead sender's file is a minute old; the other, just written, may be a live
        // sender's of another pid namespace.
        let a_minute_ago = rfs::Timespec {
            tv_sec: rfs::statat(spool.area(Area::Tmp), dead_name.as_str(), AtFlags::empty())
                .unwrap()
                .st_mtime
                - 60,
            tv_nsec: 0,
        };
        let times = rfs::Timestamps {
            last_access: a_minute_ago,
            last_modification: a_minute_ago,
        };
        rfs::utimensat(
            spool.area(Area::Tmp),
            dead_name.as_str(),
            &times,
            AtFlags::empty(),
        )
        .unwrap();
        spool.sweep_tmp();
        let mut left = spool.entries(Area::Tmp).unwrap();
        left.sort();
        let mut kept = vec![
            young_dead_name.into_bytes(),
            live_name.into_bytes(),
            b"notes.txt".to_vec(),
        ];
        kept.sort();
        assert_eq!(left, kept);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn move_aside_moves_a_link_itself_and_keeps_both_of_two_same_names() {
        let dir = scratch("aside");
        let spool = Spool::open(&spool_at(&dir, ""), true, true).unwrap();
        std::fs::write(dir.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("spool/new/notes.txt")).unwrap();
        spool.move_aside(Area::New, OsStr::new("notes.txt"), Area::Bad, "a symlink");
        std::fs::write(dir.join("spool/new/notes.txt"), b"second").unwrap();
        spool.move_aside(
            Area::New,
            OsStr::new("notes.txt"),
            Area::Bad,
            "a foreign name",
        );
        assert_eq!(spool.entries(Area::Bad).unwrap().len(), 2);
        assert!(
            std::fs::symlink_metadata(dir.join("spool/bad/notes.txt"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"secret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
