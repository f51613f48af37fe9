//! The shared-memory ring, model-checked with loom: every interleaving of producer and
//! consumer that loom can build, with every byte access tracked.
//!
//! Run with `RUSTFLAGS="--cfg ipckit_loom" cargo test -p ipckit --release --test loom_ring`
//! (`scripts/test.sh` does); without the flag this file is empty.
#![cfg(ipckit_loom)]
#![allow(dead_code)]

/// The ring's atomics, from loom instead of std.
mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}

/// The ring's handle on its control block: in the library, memory in a mapping that the
/// handle keeps mapped; here, an `Arc` that loom tracks.
pub struct Shared<T>(loom::sync::Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(loom::sync::Arc::new(value))
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[path = "../src/transport/ring/spsc.rs"]
mod ring;
