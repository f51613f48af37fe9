//! Serving a service from a blocking server: calls are answered on the thread that
//! received them, with no hand-off (a hand-off to another core costs more than a call on
//! these machines), and a call that runs long has its server taken over by another
//! thread, so that it holds up nobody else.
//!
//! The server sits behind a lock, held by the thread that receives and let go while it
//! runs the handler. A watcher notes each message received; a server left unheld, with
//! no message received, for [`TAKEOVER_AFTER`] is taken by a new thread. Every thread
//! only ever tries the lock: one that finds it held when its handler returns is no
//! longer needed and ends, so the threads shrink back to one once the slow calls are
//! done, and no thread waits on the lock (which would make every release a wake-up).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use super::Service;
use crate::push::Event;
use crate::{Error, Result, Server, ServerGuard};

/// How long a server may wait for its receiver's handler before another thread takes it.
const TAKEOVER_AFTER: Duration = Duration::from_millis(20);

/// At most this many threads serve at once: beyond it, a call waits for a handler to
/// return (or its caller times out).
const MAX_THREADS: usize = 64;

struct Pool {
    service: Service,
    /// The server; `None` once the service has ended.
    server: Mutex<Option<Server>>,
    /// Messages received, written by the lock's holder alone (a load and a store, no
    /// read-modify-write on the hot path), for the watcher to see the server move.
    received: AtomicU64,
    /// True while a thread holds the server to receive.
    receiving: AtomicBool,
    /// How the service ended, once it has; with `changed`, what the watcher and the
    /// first thread wait on.
    ended: Mutex<Option<Result<()>>>,
    changed: Condvar,
    /// True while the watcher sleeps until the server is let go.
    watcher_asleep: AtomicBool,
    threads: AtomicUsize,
}

impl Pool {
    fn ended(&self) -> MutexGuard<'_, Option<Result<()>>> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receives and answers calls until the service ends or another thread has the
    /// server.
    fn receive(&self) {
        loop {
            let mut held = match self.server.try_lock() {
                Ok(held) => held,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            let Some(server) = held.as_mut() else {
                return;
            };
            self.receiving.store(true, Ordering::Relaxed);
            let event = loop {
                match server.recv_event() {
                    Ok(Event::Message(msg)) => break Ok(msg),
                    Ok(Event::Disconnected(client)) => self.service.disconnected(&client),
                    Ok(Event::Connected(_) | Event::Lost { .. }) => {}
                    Err(e) => break Err(e),
                }
            };
            match event {
                Ok(mut msg) => {
                    let received = self.received.load(Ordering::Relaxed);
                    self.received.store(received + 1, Ordering::Relaxed);
                    // Sequentially consistent with the watcher's falling asleep, which
                    // stores its flag and then loads this one: one of the two sees the
                    // other's store, so the watcher never sleeps through a let-go.
                    self.receiving.store(false, Ordering::SeqCst);
                    drop(held);
                    if self.watcher_asleep.load(Ordering::SeqCst)
                        && self.watcher_asleep.swap(false, Ordering::AcqRel)
                    {
                        let _ended = self.ended();
                        self.changed.notify_all();
                    }
                    self.service.handle(&mut msg);
                }
                Err(e) => {
                    // The endpoint closes before serve returns.
                    *held = None;
                    self.receiving.store(false, Ordering::Release);
                    drop(held);
                    let ended = match e {
                        Error::Stopped { .. } => Ok(()),
                        e => Err(e),
                    };
                    *self.ended() = Some(ended);
                    self.changed.notify_all();
                    return;
                }
            }
        }
    }

    /// Watches for a server left unheld while a handler runs, and has a new thread take
    /// it.
    fn watch(self: &Arc<Pool>) {
        let mut warned = false;
        let mut ended = self.ended();
        loop {
            if ended.is_some() {
                return;
            }
            if self.receiving.load(Ordering::Acquire) {
                // Asleep until the receiver lets the server go; checked again after
                // saying so, as the receiver checks the flag after letting go.
                self.watcher_asleep.store(true, Ordering::SeqCst);
                if self.receiving.load(Ordering::SeqCst) {
                    ended = self.changed.wait(ended).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                self.watcher_asleep.store(false, Ordering::Relaxed);
            }
            let seen = self.received.load(Ordering::Relaxed);
            drop(ended);
            std::thread::sleep(TAKEOVER_AFTER);
            ended = self.ended();
            let left = !self.receiving.load(Ordering::Acquire)
                && self.received.load(Ordering::Relaxed) == seen;
            if !left || ended.is_some() {
                continue;
            }
            if self.threads.load(Ordering::Relaxed) >= MAX_THREADS {
                if !warned {
                    log::warn!(
                        "{MAX_THREADS} contract calls are running at once; the next waits for one to return"
                    );
                    warned = true;
                }
                continue;
            }
            warned = false;
            self.threads.fetch_add(1, Ordering::Relaxed);
            let pool = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("ipckit contract".into())
                .spawn(move || {
                    pool.receive();
                    pool.threads.fetch_sub(1, Ordering::Relaxed);
                });
            if let Err(e) = spawned {
                self.threads.fetch_sub(1, Ordering::Relaxed);
                log::warn!("cannot start a thread for another contract call: {e}");
            }
        }
    }
}

pub(super) fn serve(service: Service, server: Server) -> Result<()> {
    let pool = Arc::new(Pool {
        service,
        server: Mutex::new(Some(server)),
        received: AtomicU64::new(0),
        receiving: AtomicBool::new(false),
        ended: Mutex::new(None),
        changed: Condvar::new(),
        watcher_asleep: AtomicBool::new(false),
        threads: AtomicUsize::new(1),
    });
    let watcher = std::thread::Builder::new()
        .name("ipckit contract watcher".into())
        .spawn({
            let pool = Arc::clone(&pool);
            move || pool.watch()
        })
        .map_err(|e| Error::Io {
            endpoint: String::new(),
            op: "starting the contract watcher thread",
            source: e,
        })?;
    pool.receive();
    pool.threads.fetch_sub(1, Ordering::Relaxed);
    // Another thread has the server now, or the service ended: wait for the end.
    let mut ended = pool.ended();
    while ended.is_none() {
        ended = pool.changed.wait(ended).unwrap_or_else(|e| e.into_inner());
    }
    let result = ended.take().unwrap_or(Ok(()));
    // Left for the watcher to see: the service has ended.
    *ended = Some(Ok(()));
    drop(ended);
    pool.changed.notify_all();
    let _ = watcher.join();
    result
}

pub(super) fn spawn(service: Service, server: Server) -> ServerGuard {
    let stopper = server.stopper();
    let endpoint = server.endpoint().clone();
    let thread = std::thread::Builder::new()
        .name(format!("ipckit {endpoint}"))
        .spawn(move || {
            if let Err(e) = serve(service, server) {
                log::error!("{e}; the service stops");
            }
        })
        .expect("spawning the service thread");
    ServerGuard::new(endpoint, Arc::new(move || stopper.stop()), thread)
}
