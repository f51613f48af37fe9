//! Waiting for a peer: spin while it is likely to answer soon, then sleep on a futex.
//!
//! Sleeping is cheap in CPU and dear in latency: on these virtual machines the wake-up of
//! a sleeping thread on another core costs 20-30 µs each way, a hundred times a whole
//! round trip between spinning peers. Spinning is the opposite. So a waiter spins for as
//! long as recent waits suggest the answer will come, and no longer than one wake-up
//! costs: a spin that long at most doubles the time of a wait that ends up sleeping
//! anyway (the classic competitive bound), while a busy pair never makes a syscall.
//!
//! The budget follows a moving average of how long waits took: twice the average, between
//! [`MIN_SPIN`] and [`MAX_SPIN`]; once the average is above [`MAX_SPIN`] (a peer that
//! pauses between messages), only [`MIN_SPIN`]. An idle server therefore sleeps at once
//! and burns no CPU, and a busy one answers in nanoseconds.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// The shortest spin before sleeping.
pub const MIN_SPIN: Duration = Duration::from_micros(1);
/// The longest: about what a cross-core futex wake-up costs on these machines.
pub const MAX_SPIN: Duration = Duration::from_micros(50);

/// One waiter's spin budget.
#[derive(Debug)]
pub struct Spinner {
    average_ns: u64,
    budget: Duration,
}

impl Default for Spinner {
    fn default() -> Spinner {
        Spinner {
            average_ns: MAX_SPIN.as_nanos() as u64 / 4,
            budget: MAX_SPIN / 2,
        }
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The condition holds.
    Ready,
    /// `until` passed first.
    TimedOut,
}

impl Spinner {
    fn observe(&mut self, waited: Duration) {
        let waited = (waited.as_nanos() as u64).min(10 * MAX_SPIN.as_nanos() as u64);
        self.average_ns = (self.average_ns * 7 + waited) / 8;
        let average = Duration::from_nanos(self.average_ns);
        self.budget = if average <= MAX_SPIN {
            (2 * average + MIN_SPIN).min(MAX_SPIN)
        } else {
            MIN_SPIN
        };
    }

    /// Waits until `ready()` holds or `until` passes. `word` is this waiter's futex word:
    /// it holds 1 while the waiter sleeps, and whoever makes `ready()` true calls [`wake`]
    /// on it afterwards. Only one thread may wait on a word at a time.
    pub fn wait(
        &mut self,
        word: &AtomicU32,
        mut ready: impl FnMut() -> bool,
        until: Option<Instant>,
    ) -> Woke {
        if ready() {
            return Woke::Ready;
        }
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            std::hint::spin_loop();
            if ready() {
                self.observe(start.elapsed());
                return Woke::Ready;
            }
            spins += 1;
            // Reading the clock costs more than a check; look at it now and then.
            if spins % 64 == 0 && start.elapsed() >= self.budget {
                break;
            }
        }
        loop {
            // Announce the sleep, then look once more: a waker that published before the
            // announcement is seen here, one that published after it sees the 1.
            super::ring::announce_sleep(word);
            if ready() {
                word.store(0, Ordering::Relaxed);
                self.observe(start.elapsed());
                return Woke::Ready;
            }
            let now = Instant::now();
            let timeout = match until {
                Some(until) if now >= until => {
                    word.store(0, Ordering::Relaxed);
                    self.observe(now - start);
                    return Woke::TimedOut;
                }
                Some(until) => Some(rustix::time::Timespec::try_from(until - now).unwrap_or(
                    rustix::time::Timespec {
                        tv_sec: i64::MAX,
                        tv_nsec: 0,
                    },
                )),
                None => None,
            };
            // Not FUTEX_PRIVATE: the word is in memory shared with another process.
            // EAGAIN (the word changed), EINTR and ETIMEDOUT all lead back to the checks.
            let _ = futex::wait(word, futex::Flags::empty(), 1, timeout.as_ref());
        }
    }
}

/// Wakes the waiter sleeping on `word`, if one announced itself; a waker that finds no
/// sleeper makes no syscall. Call it after publishing what the waiter waits for.
pub fn wake(word: &AtomicU32) {
    if super::ring::sleeper_announced(word) && word.swap(0, Ordering::AcqRel) != 0 {
        let _ = futex::wake(word, futex::Flags::empty(), 1);
    }
}

/// Wakes whoever sleeps on `word`, announced or not: for shutdown.
pub fn wake_all(word: &AtomicU32) {
    word.store(0, Ordering::SeqCst);
    let _ = futex::wake(word, futex::Flags::empty(), u32::MAX);
}
