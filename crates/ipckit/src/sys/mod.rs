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
        let mut fds = [PollFd::new(&fd, flags)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
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
