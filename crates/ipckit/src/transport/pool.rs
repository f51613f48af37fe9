//! Resources a client keeps one of per request in flight (a datagram socket, a reply
//! queue), where the transport has no correlation id to share one among requests.

use std::sync::Mutex;

use crate::error::Result;

/// Lends one item per request: a lone caller reuses the same item, concurrent callers get
/// one each. An item whose request failed is dropped rather than returned, since a late
/// answer may still arrive at it and be taken for the next request's.
pub(super) struct Pool<T>(Mutex<Vec<T>>);

impl<T> Pool<T> {
    pub(super) fn new() -> Pool<T> {
        Pool(Mutex::new(Vec::new()))
    }

    /// Runs `exchange` on a pooled item, or on a new one from `make`.
    pub(super) fn with<R>(
        &self,
        make: impl FnOnce() -> Result<T>,
        exchange: impl FnOnce(&mut T) -> Result<R>,
    ) -> Result<R> {
        let mut item = self.take(make)?;
        let answer = exchange(&mut item)?;
        self.give_back(item);
        Ok(answer)
    }

    /// A pooled item, or a new one from `make`: for an exchange that awaits, which gives
    /// it back only once it succeeded (a future dropped halfway drops its item).
    pub(super) fn take(&self, make: impl FnOnce() -> Result<T>) -> Result<T> {
        let pooled = crate::sys::lock(&self.0).pop();
        pooled.map_or_else(make, Ok)
    }

    /// A pooled item, if one is free.
    pub(super) fn pop(&self) -> Option<T> {
        crate::sys::lock(&self.0).pop()
    }

    /// Returns an item whose exchange succeeded.
    pub(super) fn give_back(&self, item: T) {
        crate::sys::lock(&self.0).push(item);
    }
}
