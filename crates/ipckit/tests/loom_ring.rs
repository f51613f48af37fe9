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

#[path = "../src/transport/ring/spsc.rs"]
mod ring;
