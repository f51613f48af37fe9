//! Waiting for a peer: spin while it is likely to answer soon, then sleep on a futex.
//!
//! Sleeping is cheap in CPU and dear in latency: on a virtual machine whose idle vCPUs
//! halt, the wake-up of a sleeping thread on another core costs many times a whole round
//! trip between spinning peers (docs/DESIGN.md has the figures). Spinning is the
//! opposite. So a waiter spins for as long as recent waits suggest the answer will come,
//! and no longer than one wake-up costs: a spin that long at most doubles the time of a
//! wait that ends up sleeping anyway (the classic competitive bound), while a busy pair
//! never makes a syscall.
//!
//! The budget follows a moving average of how long waits took. While the average is
//! under [`MAX_SPIN`] (a busy peer), the waiter spins up to [`MAX_SPIN`]: a short wait
//! ends within the spin, and a hiccup of the peer (a preemption, a page fault) costs a few
//! microseconds of spinning instead of a wake-up ten times as long. Once the average is
//! above it (a peer that pauses between messages), the waiter spins only [`MIN_SPIN`] and
//! sleeps. An idle server therefore sleeps at once and burns no CPU, and a busy one
//! answers in nanoseconds.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// A sleep word's value while its waiter sleeps in FUTEX_WAIT on it.
pub const FUTEX: u32 = 1;
/// A sleep word's value while its waiter waits for its bell (an async runtime's waiter,
/// which cannot block in a futex): the waker rings the bell named in shared memory.
pub const BELL: u32 = 2;

/// The shortest spin before sleeping.
pub const MIN_SPIN: Duration = Duration::from_micros(1);
/// The longest: about what a cross-core futex wake-up costs on these machines.
pub const MAX_SPIN: Duration = Duration::from_micros(50);

/// How many spin iterations (a pause and a check) pass in a microsecond here, measured
/// once: the spin counts iterations rather than reading the clock, which would cost more
/// than the whole exchange it waits for.
pub(crate) fn iterations_per_micro() -> u64 {
    static MEASURED: OnceLock<u64> = OnceLock::new();
    *MEASURED.get_or_init(|| {
        let probe = AtomicU32::new(0);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_micros(200) {
            for _ in 0..64 {
                std::hint::spin_loop();
                n += u64::from(probe.load(Ordering::Relaxed));
            }
            n += 64;
        }
        (n / start.elapsed().as_micros().max(1) as u64).max(1)
    })
}

/// One waiter's spin budget, in iterations.
#[derive(Debug, Clone, Copy)]
pub struct Spinner {
    average: u64,
    budget: u64,
    min: u64,
    max: u64,
}

impl Default for Spinner {
    fn default() -> Spinner {
        let per_micro = iterations_per_micro();
        let max = per_micro * MAX_SPIN.as_micros() as u64;
        Spinner {
            average: max / 4,
            budget: max / 2,
            min: per_micro * MIN_SPIN.as_micros() as u64,
            max,
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
    fn observe(&mut self, waited: u64) {
        self.average = (self.average * 7 + waited.min(10 * self.max)) / 8;
        self.budget = if self.average <= self.max {
            self.max
        } else {
            self.min
        };
    }

    /// Spins until `ready()` holds or the budget is spent; true when it holds. Reads no
    /// clock and makes no syscall.
    pub fn spin(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        for i in 0..self.budget {
            std::hint::spin_loop();
            if ready() {
                self.observe(i);
                return true;
            }
        }
        false
    }

    /// Sleeps until `ready()` holds or `until` passes. `word` is this waiter's futex word:
    /// it holds 1 while the waiter sleeps, and whoever makes `ready()` true calls [`wake`]
    /// on it afterwards. Only one thread may sleep on a word at a time.
    pub fn sleep(
        &mut self,
        word: &AtomicU32,
        mut ready: impl FnMut() -> bool,
        until: Option<Instant>,
    ) -> Woke {
        let start = Instant::now();
        let woke = loop {
            // Announce the sleep, then look once more: a waker that published before the
            // announcement is seen here, one that published after it sees the 1.
            super::spsc::announce_sleep(word, FUTEX);
            if ready() {
                break Woke::Ready;
            }
            let now = Instant::now();
            let timeout = match until {
                Some(until) if now >= until => break Woke::TimedOut,
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
        };
        word.store(0, Ordering::Relaxed);
        let slept = start.elapsed().as_micros() as u64 * iterations_per_micro();
        self.observe(self.budget + slept);
        woke
    }

    /// Spins, then sleeps: [`spin`](Self::spin) and [`sleep`](Self::sleep).
    pub fn wait(
        &mut self,
        word: &AtomicU32,
        mut ready: impl FnMut() -> bool,
        until: Option<Instant>,
    ) -> Woke {
        if self.spin(&mut ready) {
            return Woke::Ready;
        }
        self.sleep(word, ready, until)
    }
}

/// Wakes the waiter sleeping on `word`, if one announced itself: by FUTEX_WAKE, or by
/// ringing `bell`, the waiter's bell. A waker that finds no sleeper makes no syscall.
/// Call it after publishing what the waiter waits for.
#[inline(always)]
pub fn wake(word: &AtomicU32, bell: &AtomicU64) {
    if super::spsc::sleeper_announced(word) {
        match word.swap(0, Ordering::AcqRel) {
            0 => {}
            BELL => super::bell::ring(bell.load(Ordering::Acquire)),
            _ => {
                let _ = futex::wake(word, futex::Flags::empty(), 1);
            }
        }
    }
}

/// FUTEX_WAKE's count for "every sleeper". The kernel reads the count as an `int`:
/// `u32::MAX` is -1 there, which wakes one sleeper and leaves the rest to their timeouts.
pub const EVERY_SLEEPER: u32 = i32::MAX as u32;

/// Wakes whoever sleeps on `word`, announced or not: for shutdown.
pub fn wake_all(word: &AtomicU32, bell: &AtomicU64) {
    word.store(0, Ordering::SeqCst);
    let _ = futex::wake(word, futex::Flags::empty(), EVERY_SLEEPER);
    super::bell::ring(bell.load(Ordering::Acquire));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_all_wakes_every_sleeper_not_only_the_first() {
        let word = std::sync::Arc::new(AtomicU32::new(1));
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let word = word.clone();
                std::thread::spawn(move || {
                    while word.load(Ordering::SeqCst) == 1 {
                        // No timeout: a sleeper left asleep hangs the test, which the
                        // harness's timeout turns into a failure.
                        let _ = futex::wait(&word, futex::Flags::empty(), 1, None);
                    }
                })
            })
            .collect();
        // Time for all three to fall asleep; one still awake only makes the test easier.
        std::thread::sleep(std::time::Duration::from_millis(200));
        wake_all(&word, &AtomicU64::new(0));
        for sleeper in sleepers {
            sleeper.join().unwrap();
        }
    }
}
