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

    /// Returns an item whose exchange succeeded.
    pub(super) fn give_back(&self, item: T) {
        crate::sys::lock(&self.0).push(item);
    }
}

/// How many reply channels a server keeps open.
const RECENT: usize = 64;

/// The reply channels (queues, FIFOs) a server has open, by client, most recently used
/// last. Past [`RECENT`] the oldest is closed: that is how the channels of clients that
/// went away are let go.
pub(super) struct Recent<K, V>(Mutex<Vec<(K, std::sync::Arc<V>)>>);

impl<K: PartialEq + Clone, V> Recent<K, V> {
    pub(super) fn new() -> Recent<K, V> {
        Recent(Mutex::new(Vec::new()))
    }

    /// The channel for `key`, opened with `open` if it is not open yet.
    pub(super) fn get_or_open(
        &self,
        key: &K,
        open: impl FnOnce() -> Result<V>,
    ) -> Result<std::sync::Arc<V>> {
        let mut items = crate::sys::lock(&self.0);
        if let Some(at) = items.iter().position(|(k, _)| k == key) {
            let entry = items.remove(at);
            let value = entry.1.clone();
            items.push(entry);
            return Ok(value);
        }
        let value = std::sync::Arc::new(open()?);
        if items.len() == RECENT {
            items.remove(0);
        }
        items.push((key.clone(), value.clone()));
        Ok(value)
    }
}
