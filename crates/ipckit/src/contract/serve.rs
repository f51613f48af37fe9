//! Serving a service from a blocking server: calls are answered on the thread that
//! received them, with no hand-off (a hand-off to another core costs more than a call on
//! these machines), and a call that runs long has its server taken over by another
//! thread, so that it holds up nobody else.
//!
//! The server lies in a slot while its last receiver runs a handler. A watcher notes
//! each time the server is put back; a server left there for [`TAKEOVER_AFTER`] is taken
//! by a new thread. A thread that finds the slot empty when its handler returns is no
//! longer needed and ends, so the threads shrink back to one once the slow calls are
//! done.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    slot: Mutex<Slot>,
    /// Signals the watcher (a server was put back) and the first thread (it ended).
    changed: Condvar,
    /// Counts the times the server was put back, for the watcher to see it move.
    deposits: AtomicU64,
    /// True while the watcher sleeps until the server is put back.
    watcher_asleep: AtomicBool,
    threads: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    server: Option<Server>,
    /// How the service ended, once it has.
    ended: Option<Result<()>>,
}

impl Pool {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receives and answers calls until the service ends or another thread has the
    /// server.
    fn receive(&self) {
        let Some(mut server) = self.slot().server.take() else {
            return;
        };
        loop {
            match server.recv_event() {
                Ok(Event::Message(mut msg)) => {
                    self.put_back(server);
                    self.service.handle(&mut msg);
                    drop(msg);
                    server = match self.slot().server.take() {
                        Some(server) => server,
                        None => return,
                    };
                }
                Ok(Event::Disconnected(client)) => self.service.disconnected(&client),
                Ok(Event::Connected(_)) => {}
                Err(e) => {
                    drop(server); // the endpoint closes before serve returns
                    let ended = match e {
                        Error::Stopped { .. } => Ok(()),
                        e => Err(e),
                    };
                    self.slot().ended = Some(ended);
                    self.changed.notify_all();
                    return;
                }
            }
        }
    }

    fn put_back(&self, server: Server) {
        self.slot().server = Some(server);
        self.deposits.fetch_add(1, Ordering::Release);
        if self.watcher_asleep.swap(false, Ordering::AcqRel) {
            self.changed.notify_all();
        }
    }

    /// Watches for a server left in its slot, and has a new thread take it.
    fn watch(self: &Arc<Pool>) {
        let mut slot = self.slot();
        loop {
            if slot.ended.is_some() {
                return;
            }
            if slot.server.is_none() {
                self.watcher_asleep.store(true, Ordering::Release);
                slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let seen = self.deposits.load(Ordering::Acquire);
            drop(slot);
            std::thread::sleep(TAKEOVER_AFTER);
            slot = self.slot();
            let left = slot.server.is_some() && self.deposits.load(Ordering::Acquire) == seen;
            if left && slot.ended.is_none() {
                if self.threads.load(Ordering::Relaxed) >= MAX_THREADS {
                    log::warn!(
                        "{MAX_THREADS} contract calls are running at once; the next waits for one to return"
                    );
                    continue;
                }
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
}

pub(super) fn serve(service: Service, server: Server) -> Result<()> {
    let pool = Arc::new(Pool {
        service,
        slot: Mutex::new(Slot {
            server: Some(server),
            ended: None,
        }),
        changed: Condvar::new(),
        deposits: AtomicU64::new(0),
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
    // Another thread has the server now, or the service ended: wait for the end.
    let mut slot = pool.slot();
    while slot.ended.is_none() {
        slot = pool.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
    }
    let ended = slot.ended.take().unwrap_or(Ok(()));
    // Left for the watcher to see: the service has ended.
    slot.ended = Some(Ok(()));
    drop(slot);
    pool.changed.notify_all();
    let _ = watcher.join();
    ended
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
