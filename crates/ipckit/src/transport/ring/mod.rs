//! Building blocks for transports in shared memory, knowing nothing of clients or
//! servers: the single-producer, single-consumer ring ([`spsc`]), the waiter that spins
//! and then sleeps on a futex ([`wait`]), the bell that wakes a task on an async runtime
//! instead ([`bell`]), the mapping they live in, and how a side watches that its peer
//! lives ([`liveness`]).

pub(crate) mod bell;
#[allow(
    dead_code,
    reason = "the events transport uses it in the commits that follow"
)]
pub(crate) mod broadcast;
mod fault;
pub(crate) mod liveness;
mod mapping;
pub(crate) mod segment_file;
pub(crate) mod spsc;
pub(crate) mod wait;

pub(crate) use mapping::{Mapping, Plain, Shared, SharedBytes};

/// The atomics the ring uses; `tests/loom_ring.rs` compiles the ring against loom's.
mod sync {
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
}
