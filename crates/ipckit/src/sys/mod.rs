//! Thin safe wrappers over what std lacks, shared by the transports.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

/// Locks `mutex`, poisoned or not. A panic elsewhere while holding one of ipckit's locks
/// leaves no broken invariant behind: the protected state is re-checked by every user.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `fd` is ready for `flags`; false when `deadline` passed first.
pub(crate) fn wait_ready(
    fd: BorrowedFd<'_>,
    flags: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    poll_until(&mut [PollFd::new(&fd, flags)], deadline)
}

/// Polls `fds` until one is ready (their `revents` say which), through interruptions;
/// false when `deadline` passed first.
pub(crate) fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                Some(
                    rustix::time::Timespec::try_from(left).unwrap_or(rustix::time::Timespec {
                        tv_sec: i64::MAX,
                        tv_nsec: 0,
                    }),
                )
            }
            None => None,
        };
        match rustix::event::poll(fds, timeout.as_ref()) {
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// mq_timedsend, which nix lacks: sends `message` on the queue `queue`, waiting for room
/// until `deadline` on CLOCK_REALTIME (ETIMEDOUT after it; EAGAIN at once on a
/// non-blocking queue).
pub(crate) fn mq_timedsend(
    queue: BorrowedFd<'_>,
    message: &[u8],
    priority: u32,
    deadline: &nix::sys::time::TimeSpec,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: on Linux a queue descriptor is a file descriptor, here borrowed and so open
    // for the call; the message pointer and length come from one live slice, which the
    // kernel only reads; the deadline is a valid timespec borrowed for the call.
    let sent = unsafe {
        nix::libc::mq_timedsend(
            queue.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            priority,
            deadline.as_ref(),
        )
    };
    nix::errno::Errno::result(sent).map(drop)
}

/// How far past its deadline a blocking receive may return; the price of not setting
/// SO_RCVTIMEO before every receive.
const TIMEOUT_SLACK: Duration = Duration::from_millis(2);

/// A socket's SO_RCVTIMEO, set again only when the value in force could overshoot the
/// caller's deadline by more than [`TIMEOUT_SLACK`]: callers that keep using one timeout
/// pay no extra syscall per receive.
#[derive(Debug, Default)]
pub(crate) struct ReceiveTimeout {
    /// What the socket has now: `None` until first set, `Some(None)` for "forever".
    armed: Option<Option<Duration>>,
}

impl ReceiveTimeout {
    /// Makes the next blocking receive on `fd` return by `deadline` (never, when `None`).
    /// False when the deadline has already passed.
    pub(crate) fn arm(
        &mut self,
        fd: impl AsFd,
        deadline: Option<Instant>,
    ) -> std::io::Result<bool> {
        let wanted = match deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                // Zero means "forever" to the kernel, which counts in microseconds.
                Some(left.max(Duration::from_millis(1)))
            }
        };
        let keep = match (self.armed, wanted) {
            (Some(Some(set)), Some(wanted)) => set <= wanted + TIMEOUT_SLACK,
            (Some(None), None) => true,
            _ => false,
        };
        if !keep {
            rustix::net::sockopt::set_socket_timeout(
                fd,
                rustix::net::sockopt::Timeout::Recv,
                wanted,
            )?;
            self.armed = Some(wanted);
        }
        Ok(true)
    }
}

/// CLOCK_MONOTONIC_COARSE: ticks every few milliseconds, read in a few nanoseconds (through
/// libc's vDSO call, which tools such as valgrind understand).
pub(crate) fn coarse_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(Duration::from)
        .unwrap_or_default()
}

/// A peer process, watched for its exit: through a pidfd where the kernel has them (no
/// confusion with a later process given the same pid), else by testing the pid.
pub(crate) struct Process {
    pid: rustix::process::Pid,
    pidfd: Option<OwnedFd>,
}

impl Process {
    /// `None` when no process has that pid.
    pub(crate) fn watch(pid: u32) -> Option<Process> {
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

    pub(crate) fn exited(&self) -> bool {
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

    pub(crate) fn try_clone(&self) -> Process {
        Process {
            pid: self.pid,
            pidfd: self.pidfd.as_ref().and_then(|fd| fd.try_clone().ok()),
        }
    }
}

/// Set by the kernel in a [`DeathNotice`]'s word when the process that held it died
/// (`FUTEX_OWNER_DIED`).
pub(crate) const OWNER_DIED: u32 = 0x4000_0000;

/// A word in shared memory that the kernel marks with [`OWNER_DIED`] the moment this
/// process dies, however it dies: a robust futex (set_robust_list(2)) held by a thread of
/// its own that does nothing else, so that others learn of the death with one load,
/// where a pidfd costs a system call. The word is 0 again once the notice is dropped.
pub(crate) struct DeathNotice {
    /// The process the thread runs in: a child forked since has no such thread.
    pid: u32,
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The kernel's `struct robust_list`.
#[repr(C)]
struct RobustList {
    next: *const RobustList,
}

/// The kernel's `struct robust_list_head`.
#[repr(C)]
struct RobustListHead {
    list: RobustList,
    futex_offset: std::ffi::c_long,
    list_op_pending: *const RobustList,
}

impl DeathNotice {
    /// Holds `word` until dropped. The word must stay mapped for as long.
    pub(crate) fn hold(
        word: crate::transport::ring::Shared<std::sync::atomic::AtomicU32>,
    ) -> io::Result<DeathNotice> {
        DeathNotice::hold_from(word, None)
    }

    /// Holds `word`, which this process claimed by writing `claimed` into it, unless
    /// someone took the claim back meanwhile (a reaper that found it stalled too long):
    /// then an error, and the word is left to whoever holds it now.
    pub(crate) fn hold_claimed(
        word: crate::transport::ring::Shared<std::sync::atomic::AtomicU32>,
        claimed: u32,
    ) -> io::Result<DeathNotice> {
        DeathNotice::hold_from(word, Some(claimed))
    }

    fn hold_from(
        word: crate::transport::ring::Shared<std::sync::atomic::AtomicU32>,
        claimed: Option<u32>,
    ) -> io::Result<DeathNotice> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (held, holding) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("ipckit death notice".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                use std::sync::atomic::Ordering;
                let futex: *const std::sync::atomic::AtomicU32 = &*word;
                // Boxed, so that the kernel's pointers to them stay valid however the
                // thread's stack moves on.
                let mut entry = Box::new(RobustList {
                    next: std::ptr::null(),
                });
                let head = Box::new(RobustListHead {
                    list: RobustList { next: &*entry },
                    // The kernel adds it to the entry's address, modulo the word size.
                    futex_offset: (futex as isize)
                        .wrapping_sub(&*entry as *const RobustList as isize)
                        as std::ffi::c_long,
                    list_op_pending: std::ptr::null(),
                });
                entry.next = &head.list;
                let Some(previous) = swap_robust_list(&head) else {
                    let _ = held.send(Err(io::Error::last_os_error()));
                    return;
                };
                let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
                if let Some(claimed) = claimed {
                    let taken = word
                        .compare_exchange(claimed, tid, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                    if !taken {
                        // SAFETY: `previous` is the list this thread had, which its owner
                        // keeps.
                        let _ = unsafe { set_robust_list(previous) };
                        let _ = held.send(Err(io::Error::other(
                            "the entry was taken back while being claimed (this process stalled for over a second); try again",
                        )));
                        return;
                    }
                } else {
                    word.store(tid, Ordering::Release);
                }
                let _ = held.send(Ok(()));
                // Until dropped (or the process dies, in this wait).
                let _ = stopped.recv();
                word.store(0, Ordering::Release);
                // The thread's own list again (the C library's), before `head` goes.
                // SAFETY: `previous` is the list this thread had, which its owner keeps.
                let _ = unsafe { set_robust_list(previous) };
                drop((head, entry));
            })?;
        holding
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the death notice's thread ended")))?;
        Ok(DeathNotice {
            pid: std::process::id(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DeathNotice {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            return;
        }
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Registers `head` as the calling thread's robust list; the list it replaces, or `None`
/// if the kernel refused.
fn swap_robust_list(head: &RobustListHead) -> Option<*const RobustListHead> {
    let mut previous: *const RobustListHead = std::ptr::null();
    let mut len: nix::libc::size_t = 0;
    // SAFETY: get_robust_list(0, ...) writes the calling thread's head and its size into
    // the two locals.
    let got = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_get_robust_list,
            0,
            &mut previous as *mut *const RobustListHead,
            &mut len as *mut nix::libc::size_t,
        )
    };
    // SAFETY: `head` is a well-formed circular list that the caller keeps alive until it
    // registers another.
    (got == 0 && unsafe { set_robust_list(head) } == 0).then_some(previous)
}

/// # Safety
/// `head` is null or a robust list head that stays valid while registered.
unsafe fn set_robust_list(head: *const RobustListHead) -> std::ffi::c_long {
    // SAFETY: per the contract; the kernel reads the list only when the thread exits.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_set_robust_list,
            head,
            size_of::<RobustListHead>(),
        )
    }
}

/// The supplementary groups of the process at the other end of a connected AF_UNIX stream
/// socket, as they were when it connected (SO_PEERGROUPS, Linux 4.13).
pub(crate) fn peer_groups(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    // NGROUPS_MAX is 65536; start small and grow to what the kernel says it needs.
    let mut groups: Vec<nix::libc::gid_t> = vec![0; 32];
    loop {
        let mut len =
            (groups.len() * std::mem::size_of::<nix::libc::gid_t>()) as nix::libc::socklen_t;
        // SAFETY: `groups` is a live buffer of `len` bytes that the kernel fills, and `len`
        // is a valid socklen_t it updates with the bytes written or needed.
        let rc = unsafe {
            nix::libc::getsockopt(
                fd.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<nix::libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(nix::libc::ERANGE) || count <= groups.len() {
            return Err(error);
        }
        groups.resize(count, 0);
    }
}
