//! inotify over the spool's directories: the hints that make receiving a wait rather
//! than a poll. An event is only a hint: what it names is looked at again before it is
//! used, and a lost event (`IN_Q_OVERFLOW`) means "look at everything again".

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use crate::sys::poll_until;

/// What one event says happened in a watched directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hint {
    /// The entry `name` appeared in the directory watched as `dir` (moved in, or
    /// created where the mask asks for creations).
    Arrived { dir: i32, name: Vec<u8> },
    /// The entry `name` left the directory watched as `dir` (moved out or removed).
    Left { dir: i32, name: Vec<u8> },
    /// Events were lost: everything watched must be looked at again.
    Overflow,
}

/// One inotify instance, non-blocking, with a waker of its own so that a blocked wait can
/// be ended from another thread.
pub(crate) struct Watch {
    /// Shared with an async runtime's registration, so that it costs no descriptor more.
    inotify: Arc<OwnedFd>,
    /// The waker's eventfd, for a watch that another thread may have to stop waiting.
    wake: Option<OwnedFd>,
    buf: Vec<MaybeUninit<u8>>,
}

/// Arrivals by rename, which is how a message is published. A creation is no hint: it
/// comes as the file is opened, before anything is written, so a file written in place
/// (or linked in, Maildir's older way) is taken at the next listing of the directory.
pub(crate) const ARRIVALS: WatchFlags = WatchFlags::MOVED_TO;
/// Arrivals and departures, for `clients/` and `receivers/`.
pub(crate) const COMINGS_AND_GOINGS: WatchFlags = WatchFlags::MOVED_TO
    .union(WatchFlags::CREATE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE);

impl Watch {
    /// A new instance. Where the process or the user is out of descriptors or inotify
    /// instances, it waits for one to be given back, backing off from 1 to 20 ms, for up
    /// to five seconds (a client whose threads all send at once may be briefly out), and
    /// then fails saying which limits those are.
    pub(crate) fn new() -> io::Result<Watch> {
        Watch::made(false)
    }

    /// A new instance with a [`waker`](Watch::waker), as [`new`](Watch::new) makes one.
    pub(crate) fn with_waker() -> io::Result<Watch> {
        Watch::made(true)
    }

    fn made(waker: bool) -> io::Result<Watch> {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match Watch::try_new(waker) {
                Err(Errno::MFILE | Errno::NFILE) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                }
                Err(e @ (Errno::MFILE | Errno::NFILE)) => {
                    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
                        .map_or_else(|_| "?".into(), |n| n.trim().to_owned());
                    return Err(io::Error::other(format!(
                        "{e}: this process's descriptors or this user's inotify instances (fs.inotify.max_user_instances, {limit} here) are used up; every spool receiver, and every client that waits for replies or pushes, takes one instance (sysctl fs.inotify.max_user_instances=1024 raises the limit)"
                    )));
                }
                made => return Ok(made?),
            }
        }
    }

    fn try_new(waker: bool) -> rustix::io::Result<Watch> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        Ok(Watch {
            inotify: Arc::new(inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?),
            wake: match waker {
                true => Some(rustix::event::eventfd(0, flags)?),
                false => None,
            },
            buf: vec![MaybeUninit::uninit(); 64 * 1024],
        })
    }

    /// Watches the directory open as `dir` for `what`; the number returned is the `dir`
    /// of its hints. The directory is named through /proc/self/fd, so the watch is on the
    /// very directory opened, wherever its path now leads.
    pub(crate) fn add(&self, dir: BorrowedFd<'_>, what: WatchFlags) -> io::Result<i32> {
        let path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        Ok(inotify::add_watch(
            &self.inotify,
            path,
            what | WatchFlags::ONLYDIR | WatchFlags::EXCL_UNLINK,
        )?)
    }

    /// Hands every hint already queued to `hint`, without waiting.
    pub(crate) fn drain(&mut self, mut hint: impl FnMut(Hint)) -> io::Result<()> {
        let mut reader = inotify::Reader::new(&self.inotify, &mut self.buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                hint(Hint::Overflow);
                continue;
            }
            let (Some(name), dir) = (event.file_name(), event.wd()) else {
                continue;
            };
            let name = name.to_bytes().to_vec();
            if flags.intersects(ReadFlags::MOVED_TO | ReadFlags::CREATE) {
                hint(Hint::Arrived { dir, name });
            } else if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::DELETE) {
                hint(Hint::Left { dir, name });
            }
        }
    }

    /// Waits until a hint is queued, the waker is called, or `deadline` passes; true
    /// unless the deadline passed. A wake-up is consumed here.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let Some(wake) = &self.wake else {
            return poll_until(&mut [PollFd::new(&*self.inotify, PollFlags::IN)], deadline);
        };
        let mut fds = [
            PollFd::new(&*self.inotify, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        let ready = poll_until(&mut fds, deadline)?;
        if !fds[1].revents().is_empty() {
            let _ = rustix::io::read(wake, &mut [0u8; 8]);
        }
        Ok(ready)
    }

    /// A function that ends a [`wait`](Watch::wait) in progress, or the next one.
    pub(crate) fn waker(&self) -> io::Result<impl Fn() + Send + Sync + 'static> {
        let wake = self
            .wake
            .as_ref()
            .ok_or_else(|| io::Error::other("a watch made without a waker"))?
            .try_clone()?;
        Ok(move || {
            let _ = rustix::io::write(&wake, &1u64.to_ne_bytes());
        })
    }

    /// The inotify descriptor, readable when a hint is queued, shared: for an async
    /// runtime to register.
    #[cfg(feature = "tokio")]
    pub(crate) fn shared_fd(&self) -> Arc<OwnedFd> {
        self.inotify.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn a_rename_into_a_watched_directory_is_a_hint_and_a_wake_ends_a_wait() {
        let dir = std::env::temp_dir().join(format!("ipckit-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("new")).unwrap();
        let new = std::fs::File::open(dir.join("new")).unwrap();
        let mut watch = Watch::with_waker().unwrap();
        let wd = watch.add(new.as_fd(), ARRIVALS).unwrap();
        std::fs::write(dir.join("msg"), b"x").unwrap();
        std::fs::write(dir.join("linked"), b"x").unwrap();
        // Created or linked in place: no hint, as a creation comes before the data.
        std::fs::hard_link(dir.join("linked"), dir.join("new/linked")).unwrap();
        std::fs::write(dir.join("new/created"), b"x").unwrap();
        std::fs::rename(dir.join("msg"), dir.join("new/msg")).unwrap();
        assert!(
            watch
                .wait(Some(Instant::now() + Duration::from_secs(5)))
                .unwrap()
        );
        let mut hints = Vec::new();
        watch.drain(|hint| hints.push(hint)).unwrap();
        let arrived = |name: &[u8]| Hint::Arrived {
            dir: wd,
            name: name.to_vec(),
        };
        assert_eq!(hints, [arrived(b"msg")]);
        let wake = watch.waker().unwrap();
        wake();
        assert!(watch.wait(None).unwrap());
        assert!(
            !watch
                .wait(Some(Instant::now() + Duration::from_millis(10)))
                .unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
