//! inotify over the spool's directories: the hints that make receiving a wait rather
//! than a poll. An event is only a hint: what it names is looked at again before it is
//! used, and a lost event (`IN_Q_OVERFLOW`) means "look at everything again".

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
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
    inotify: OwnedFd,
    wake: OwnedFd,
    buf: Vec<MaybeUninit<u8>>,
}

/// Arrivals by rename, which is how a message is published: a message is never created
/// in place, so a creation in `new/` is a writer breaking the protocol and is not a hint.
pub(crate) const ARRIVALS: WatchFlags = WatchFlags::MOVED_TO;
/// Arrivals and departures, for `clients/` and `receivers/`.
pub(crate) const COMINGS_AND_GOINGS: WatchFlags = WatchFlags::MOVED_TO
    .union(WatchFlags::CREATE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE);
/// Removals only: a reader making room.
pub(crate) const REMOVALS: WatchFlags = WatchFlags::MOVED_FROM.union(WatchFlags::DELETE);

impl Watch {
    /// A new instance. Where the process or the user is out of descriptors or inotify
    /// instances, it waits for one to be given back, backing off from 1 to 20 ms, for up
    /// to five seconds (a client whose threads all send at once may be briefly out), and
    /// then fails saying which limits those are.
    pub(crate) fn new() -> io::Result<Watch> {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match Watch::try_new() {
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

    fn try_new() -> rustix::io::Result<Watch> {
        Ok(Watch {
            inotify: inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?,
            wake: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )?,
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
        let mut fds = [
            PollFd::new(&self.inotify, PollFlags::IN),
            PollFd::new(&self.wake, PollFlags::IN),
        ];
        let ready = poll_until(&mut fds, deadline)?;
        if !fds[1].revents().is_empty() {
            let _ = rustix::io::read(&self.wake, &mut [0u8; 8]);
        }
        Ok(ready)
    }

    /// A function that ends a [`wait`](Watch::wait) in progress, or the next one.
    pub(crate) fn waker(&self) -> io::Result<impl Fn() + Send + Sync + 'static> {
        let wake = self.wake.try_clone()?;
        Ok(move || {
            let _ = rustix::io::write(&wake, &1u64.to_ne_bytes());
        })
    }

    /// The inotify descriptor, readable when a hint is queued: for an async runtime.
    #[cfg(feature = "tokio")]
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.inotify)
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
        let mut watch = Watch::new().unwrap();
        let wd = watch.add(new.as_fd(), ARRIVALS).unwrap();
        std::fs::write(dir.join("msg"), b"x").unwrap();
        // Created in place: not a hint.
        std::fs::write(dir.join("new/created"), b"x").unwrap();
        std::fs::rename(dir.join("msg"), dir.join("new/msg")).unwrap();
        assert!(
            watch
                .wait(Some(Instant::now() + Duration::from_secs(5)))
                .unwrap()
        );
        let mut hints = Vec::new();
        watch.drain(|hint| hints.push(hint)).unwrap();
        assert_eq!(
            hints,
            [Hint::Arrived {
                dir: wd,
                name: b"msg".to_vec()
            }]
        );
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
