//! Requests in flight on one client connection whose answers all arrive on one channel (a
//! socket, a reply ring) that one thread at a time reads: leader and followers. Whoever
//! finds the channel free reads it for everyone and hands each answer to the thread that
//! waits for it; the others sleep until an answer or the channel comes their way. A lone
//! caller takes no condition variable and pays no wake-up.
//!
//! The channel may also carry messages the server pushes, which none of the requests
//! waits for: whoever reads one files it with [`Correlator::file_push`], and the client's
//! `recv` takes them in order ([`Correlator::await_push`]), reading the channel itself
//! when nobody else does. So a thread in `recv` and threads in `request` share one
//! reader, whichever it is, and a push is never taken for an answer nor an answer for a
//! push.
//!
//! The async side keeps the same books and adds a waker per request: a future that finds
//! the channel free reads it (registering for readiness), the others wait for whoever
//! reads their answer, and a future that ends hands the channel on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::sys::lock;
use std::time::Instant;

/// Why no answer came.
pub(super) enum NoAnswer {
    /// The channel broke; the reason.
    Broken(String),
    /// The deadline passed.
    TimedOut,
}

struct Waiters<A> {
    /// Requests in flight, and the answer once read. Rarely more than a few, so a vector
    /// beats hashing.
    answers: Vec<(u64, Option<A>)>,
    /// Pushed messages read and not yet taken, oldest first.
    pushes: VecDeque<A>,
    /// Pushes dropped because [`UNREAD_PUSHES`](crate::push::UNREAD_PUSHES) waited.
    dropped_pushes: u64,
    /// Why the channel can no longer be used.
    broken: Option<String>,
    /// Why no more pushes will come, on a channel that still carries answers (a durable
    /// queue's receivers all left): `recv` fails once the pushes filed are taken.
    pushes_ended: Option<String>,
    /// Threads waiting on `answered`: std's `notify_all` makes a syscall even when
    /// nobody waits, which a lone caller should not pay.
    followers: usize,
    /// The futures waiting for answers, by request.
    #[cfg(feature = "tokio")]
    wakers: Vec<(u64, std::task::Waker)>,
    /// The futures waiting for pushes, each by a number of its own.
    #[cfg(feature = "tokio")]
    push_wakers: Vec<(u64, std::task::Waker)>,
}

impl<A> Waiters<A> {
    fn forget(&mut self, id: u64) {
        self.answers.retain(|(i, _)| *i != id);
        #[cfg(feature = "tokio")]
        self.wakers.retain(|(i, _)| *i != id);
    }

    /// How request `id` ended, if it did: its answer (taken out), or the channel broke.
    fn outcome(&mut self, id: u64) -> Option<Result<A, NoAnswer>> {
        if let Some(at) = self
            .answers
            .iter()
            .position(|(i, a)| *i == id && a.is_some())
        {
            return Some(Ok(self.answers.swap_remove(at).1.expect("checked")));
        }
        let detail = self.broken.clone()?;
        self.forget(id);
        Some(Err(NoAnswer::Broken(detail)))
    }

    /// Gives request `id` its answer; false when nobody waits for it any more.
    fn fill(&mut self, id: u64, answer: A) -> bool {
        match self.answers.iter_mut().find(|(i, _)| *i == id) {
            Some((_, slot)) => {
                *slot = Some(answer);
                true
            }
            None => false,
        }
    }
}

pub(super) struct Correlator<A> {
    url: String,
    waiters: Mutex<Waiters<A>>,
    /// Whether `pushes` holds any: read without the lock by a reader that holds the
    /// channel (only a reader files pushes, so none arrive meanwhile).
    queued: AtomicBool,
    answered: Condvar,
}

impl<A> Correlator<A> {
    /// For the connection to `url` (named in log lines).
    pub(super) fn new(url: &str) -> Correlator<A> {
        Correlator {
            url: url.to_owned(),
            waiters: Mutex::new(Waiters {
                answers: Vec::new(),
                pushes: VecDeque::new(),
                dropped_pushes: 0,
                broken: None,
                pushes_ended: None,
                followers: 0,
                #[cfg(feature = "tokio")]
                wakers: Vec::new(),
                #[cfg(feature = "tokio")]
                push_wakers: Vec::new(),
            }),
            queued: AtomicBool::new(false),
            answered: Condvar::new(),
        }
    }

    /// Whether pushes wait to be taken. Exact for a caller that holds the channel.
    #[inline(always)]
    pub(super) fn has_pushes(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    /// How many pushes wait to be taken.
    pub(super) fn pushes_waiting(&self) -> usize {
        lock(&self.waiters).pushes.len()
    }

    /// Why the channel can no longer be used, if it can't.
    pub(super) fn broken(&self) -> Option<String> {
        lock(&self.waiters).broken.clone()
    }

    /// How many requests the books still expect answers to.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        lock(&self.waiters).answers.len()
    }

    /// Expects an answer to request `id`: call before sending it.
    pub(super) fn register(&self, id: u64) {
        lock(&self.waiters).answers.push((id, None));
    }

    /// No longer expects an answer to `id` (its request could not be sent).
    pub(super) fn forget(&self, id: u64) {
        lock(&self.waiters).forget(id);
    }

    /// Hands an answer read outside [`await_answer`](Self::await_answer) to its waiter.
    pub(super) fn deliver(&self, id: u64, answer: A) {
        let mut waiters = lock(&self.waiters);
        self.fill(&mut waiters, id, answer);
        self.notify(&waiters);
        #[cfg(feature = "tokio")]
        wake(&waiters, |i| i == id);
    }

    /// The channel broke, as a reader outside [`await_answer`](Self::await_answer) found:
    /// every request waiting fails with `detail`.
    pub(super) fn break_off(&self, detail: String) {
        let mut waiters = lock(&self.waiters);
        waiters.broken.get_or_insert(detail);
        self.notify(&waiters);
        #[cfg(feature = "tokio")]
        wake(&waiters, |_| true);
    }

    /// Wakes every request future, so that one of them watches the channel: for a reader
    /// outside the books that let go of it.
    #[cfg(feature = "tokio")]
    pub(super) fn wake_all(&self) {
        wake(&lock(&self.waiters), |_| true);
    }

    /// No more pushes will come, though answers still may: once the pushes already filed
    /// are taken, `recv` fails with `detail`. Call after filing every push read.
    pub(super) fn end_pushes(&self, detail: String) {
        let mut waiters = lock(&self.waiters);
        waiters.pushes_ended.get_or_insert(detail);
        self.notify(&waiters);
        #[cfg(feature = "tokio")]
        wake_pushes(&waiters, |_| true);
    }

    /// Files a message the server pushed, read from the channel, for `recv` to take.
    pub(super) fn file_push(&self, push: A) {
        let mut waiters = lock(&self.waiters);
        let waiters_now = &mut *waiters;
        crate::push::keep_unread(
            &mut waiters_now.pushes,
            push,
            &mut waiters_now.dropped_pushes,
            &self.url,
        );
        self.queued.store(true, Ordering::Release);
        self.notify(&waiters);
        #[cfg(feature = "tokio")]
        wake_pushes(&waiters, |_| true);
    }

    fn pop_push(&self, waiters: &mut Waiters<A>) -> Option<A> {
        let push = waiters.pushes.pop_front()?;
        if waiters.pushes.is_empty() {
            self.queued.store(false, Ordering::Release);
        }
        Some(push)
    }

    /// Waits until `deadline` (without end when `None`) for the next pushed message,
    /// reading the channel with `read` while nobody else holds it, as
    /// [`await_answer`](Self::await_answer) does: `read` files the pushes it reads and
    /// returns the answers, which go to their requests. `Ok(None)` once the deadline
    /// passed; why the channel broke once it did and every push was taken.
    pub(super) fn await_push<R>(
        &self,
        deadline: Option<Instant>,
        channel: &Mutex<R>,
        mut read: impl FnMut(&mut R, Instant) -> Result<Option<(u64, A)>, String>,
    ) -> Result<Option<A>, String> {
        let mut waiters = lock(&self.waiters);
        loop {
            if let Some(push) = self.pop_push(&mut waiters) {
                return Ok(Some(push));
            }
            if let Some(detail) = waiters.broken.as_ref().or(waiters.pushes_ended.as_ref()) {
                return Err(detail.clone());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            // A read without end is cut every so often, to look at the books again.
            let until = deadline.unwrap_or(now + std::time::Duration::from_secs(60));
            let Ok(mut reader) = channel.try_lock() else {
                waiters.followers += 1;
                waiters = self
                    .answered
                    .wait_timeout(waiters, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                waiters.followers -= 1;
                continue;
            };
            drop(waiters);
            let outcome = read(&mut reader, until);
            // As in `await_answer`: the books first, then the channel.
            waiters = lock(&self.waiters);
            drop(reader);
            match outcome {
                Ok(Some((answered, answer))) => self.fill(&mut waiters, answered, answer),
                Ok(None) => {}
                Err(detail) => waiters.broken = Some(detail),
            }
            self.notify(&waiters);
        }
    }

    /// Wakes the followers, if any: for a reader that lets go of the channel.
    pub(super) fn release_followers(&self) {
        self.notify(&lock(&self.waiters));
    }

    fn fill(&self, waiters: &mut Waiters<A>, id: u64, answer: A) {
        if !waiters.fill(id, answer) {
            log::debug!("{}: dropping a late answer to request {id}", self.url);
        }
    }

    fn notify(&self, waiters: &Waiters<A>) {
        if waiters.followers > 0 {
            self.answered.notify_all();
        }
    }

    /// Waits until `deadline` for the answer to request `id`. While nobody else holds
    /// `channel`, this thread reads it with `read`, which returns an answer and the
    /// request it belongs to, nothing (it waited and none came), or why the channel broke.
    pub(super) fn await_answer<R>(
        &self,
        id: u64,
        deadline: Instant,
        channel: &Mutex<R>,
        mut read: impl FnMut(&mut R, Instant) -> Result<Option<(u64, A)>, String>,
    ) -> Result<A, NoAnswer> {
        let mut waiters = lock(&self.waiters);
        loop {
            if let Some(outcome) = waiters.outcome(id) {
                return outcome;
            }
            let now = Instant::now();
            if now >= deadline {
                waiters.forget(id);
                return Err(NoAnswer::TimedOut);
            }
            // Trying the channel while holding `waiters` means a reader that lets go (and
            // then notifies under `waiters`) cannot slip between this check and the wait.
            let Ok(mut reader) = channel.try_lock() else {
                waiters.followers += 1;
                waiters = self
                    .answered
                    .wait_timeout(waiters, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                waiters.followers -= 1;
                continue;
            };
            drop(waiters);
            let outcome = read(&mut reader, deadline);
            // The books first, then the channel: a thread that took the channel before
            // the answer just read was filed could miss it and block in `read` for data
            // that never comes (its answer already taken), until its deadline.
            waiters = lock(&self.waiters);
            drop(reader);
            match outcome {
                Ok(Some((answered, answer))) => self.fill(&mut waiters, answered, answer),
                Ok(None) => {}
                Err(detail) => waiters.broken = Some(detail),
            }
            self.notify(&waiters);
        }
    }

    /// The async [`await_answer`](Self::await_answer): polls for the answer to request
    /// `id`. While nobody else is reading `channel`, this task reads it with `read`, which
    /// returns an answer and the request it belongs to, why the channel broke, or
    /// `Pending` having registered for readiness. Call [`leave`](Self::leave) when the
    /// future ends, however it ends.
    #[cfg(feature = "tokio")]
    pub(super) fn poll_answer<R>(
        &self,
        id: u64,
        cx: &mut std::task::Context<'_>,
        channel: &Mutex<R>,
        mut read: impl FnMut(
            &mut R,
            &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(u64, A), String>>,
    ) -> std::task::Poll<Result<A, NoAnswer>> {
        use std::task::Poll;
        let mut waiters = lock(&self.waiters);
        loop {
            if let Some(outcome) = waiters.outcome(id) {
                return Poll::Ready(outcome);
            }
            // Whoever reads our answer wakes us with this.
            match waiters.wakers.iter_mut().find(|(i, _)| *i == id) {
                Some((_, waker)) => waker.clone_from(cx.waker()),
                None => waiters.wakers.push((id, cx.waker().clone())),
            }
            // Held only while polling, never across an await: a failed try means another
            // thread is reading this instant and will wake us with what it finds.
            let Ok(mut reader) = channel.try_lock() else {
                return Poll::Pending;
            };
            drop(waiters);
            let outcome = read(&mut reader, cx);
            // As in `await_answer`: file what was read before letting go of the channel.
            waiters = lock(&self.waiters);
            drop(reader);
            match outcome {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((answered, answer))) => {
                    self.fill(&mut waiters, answered, answer);
                    if answered != id {
                        wake(&waiters, |i| i == answered);
                    }
                }
                Poll::Ready(Err(detail)) => {
                    waiters.broken = Some(detail);
                    wake(&waiters, |i| i != id);
                    wake_pushes(&waiters, |_| true);
                }
            }
        }
    }

    /// The async [`await_push`](Self::await_push): polls for the next pushed message for
    /// the future numbered `me`. While nobody else is reading `channel`, this task reads
    /// it with `read`, which files the pushes it reads (returning `Ready(Ok(None))`) and
    /// returns the answers, or why the channel broke, or `Pending` having registered for
    /// readiness. A push leaves the books only in the poll that returns it. Call
    /// [`leave_push`](Self::leave_push) when the future ends, however it ends.
    #[cfg(feature = "tokio")]
    pub(super) fn poll_push<R>(
        &self,
        me: u64,
        cx: &mut std::task::Context<'_>,
        channel: &Mutex<R>,
        mut read: impl FnMut(
            &mut R,
            &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<Option<(u64, A)>, String>>,
    ) -> std::task::Poll<Result<A, String>> {
        use std::task::Poll;
        let mut waiters = lock(&self.waiters);
        loop {
            if let Some(push) = self.pop_push(&mut waiters) {
                return Poll::Ready(Ok(push));
            }
            if let Some(detail) = waiters.broken.as_ref().or(waiters.pushes_ended.as_ref()) {
                return Poll::Ready(Err(detail.clone()));
            }
            match waiters.push_wakers.iter_mut().find(|(i, _)| *i == me) {
                Some((_, waker)) => waker.clone_from(cx.waker()),
                None => waiters.push_wakers.push((me, cx.waker().clone())),
            }
            let Ok(mut reader) = channel.try_lock() else {
                return Poll::Pending;
            };
            drop(waiters);
            let outcome = read(&mut reader, cx);
            waiters = lock(&self.waiters);
            drop(reader);
            match outcome {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(None)) => {}
                Poll::Ready(Ok(Some((answered, answer)))) => {
                    self.fill(&mut waiters, answered, answer);
                    wake(&waiters, |i| i == answered);
                }
                Poll::Ready(Err(detail)) => {
                    waiters.broken = Some(detail);
                    wake(&waiters, |_| true);
                    wake_pushes(&waiters, |i| i != me);
                }
            }
        }
    }

    /// The `recv` future numbered `me` ended: the others are woken so that one of them
    /// watches the channel, as [`leave`](Self::leave) does for a request.
    #[cfg(feature = "tokio")]
    pub(super) fn leave_push(&self, me: u64) {
        let mut waiters = lock(&self.waiters);
        waiters.push_wakers.retain(|(i, _)| *i != me);
        wake(&waiters, |_| true);
        wake_pushes(&waiters, |_| true);
    }

    /// The future of request `id` ended, answered or not: its answer is no longer
    /// expected, and the others are woken so that one of them watches the channel (this
    /// one may have been the one registered for readiness).
    #[cfg(feature = "tokio")]
    pub(super) fn leave(&self, id: u64) {
        let mut waiters = lock(&self.waiters);
        waiters.forget(id);
        wake(&waiters, |_| true);
        wake_pushes(&waiters, |_| true);
    }
}

#[cfg(feature = "tokio")]
fn wake_pushes<A>(waiters: &Waiters<A>, which: impl Fn(u64) -> bool) {
    for (_, waker) in waiters.push_wakers.iter().filter(|(i, _)| which(*i)) {
        waker.wake_by_ref();
    }
}

#[cfg(feature = "tokio")]
fn wake<A>(waiters: &Waiters<A>, which: impl Fn(u64) -> bool) {
    for (_, waker) in waiters.wakers.iter().filter(|(i, _)| which(*i)) {
        waker.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Whoever reads the channel sorts what it reads: an answer read while waiting for a
    /// push goes to its request, a push read while waiting for an answer goes to `recv`.
    #[test]
    fn pushes_and_answers_reach_their_own_callers() {
        let correlator = &Correlator::<&str>::new("test://correlate");
        let channel = &Mutex::new(0u32);
        let later = Instant::now() + Duration::from_secs(10);
        correlator.register(1);
        let pushed = correlator.await_push(Some(later), channel, |reads, _| {
            *reads += 1;
            match *reads {
                1 => Ok(Some((1, "answer"))),
                _ => {
                    correlator.file_push("push");
                    Ok(None)
                }
            }
        });
        assert_eq!(pushed, Ok(Some("push")));
        assert!(!correlator.has_pushes());
        let unread = |_: &mut u32, _| -> Result<Option<(u64, &str)>, String> {
            panic!("the answer was filed: nothing to read")
        };
        assert!(matches!(
            correlator.await_answer(1, later, channel, unread),
            Ok("answer")
        ));
        correlator.register(2);
        let answered = correlator.await_answer(2, later, channel, |_, _| {
            correlator.file_push("second push");
            Ok(Some((2, "second answer")))
        });
        assert!(matches!(answered, Ok("second answer")));
        assert!(correlator.has_pushes());
        let none = |_: &mut u32, _| -> Result<Option<(u64, &str)>, String> { Ok(None) };
        assert_eq!(
            correlator.await_push(Some(later), channel, none),
            Ok(Some("second push"))
        );
        let now = Some(Instant::now());
        assert_eq!(correlator.await_push(now, channel, none), Ok(None));
    }

    /// A reader lets go of the channel only once the answer it read is on the books. Else
    /// the thread that answer is for could take the channel in between and block reading
    /// for data that never comes (this made a conformance check hang now and then).
    #[test]
    fn channel_is_released_only_after_the_answer_is_filed() {
        let correlator = &Correlator::<u32>::new("test://correlate");
        correlator.register(1);
        correlator.register(2);
        let channel = &Mutex::new(0u32);
        let (reading, started) = mpsc::channel();
        let (go, release) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let leader = scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                correlator.await_answer(1, deadline, channel, |reads, _| {
                    *reads += 1;
                    if *reads == 1 {
                        // The answer to the other request, handed over once the books
                        // are held below.
                        reading.send(()).unwrap();
                        release.recv().unwrap();
                        Ok(Some((2, 20)))
                    } else {
                        Ok(Some((1, 10)))
                    }
                })
            });
            started.recv().unwrap();
            let books = lock(&correlator.waiters);
            go.send(()).unwrap();
            // Time for the leader to come back from reading and wait for the books.
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                channel.try_lock().is_err(),
                "the channel was free while an answer read from it was not yet filed"
            );
            drop(books);
            assert!(matches!(leader.join().unwrap(), Ok(10)));
        });
        let deadline = Instant::now() + Duration::from_secs(1);
        let other = correlator.await_answer(2, deadline, channel, |_, _| Ok(None));
        assert!(matches!(other, Ok(20)));
    }
}
