//! `events://NAME`: a broadcast in shared memory, as Event Tracing for Windows is: any
//! number of writers, any number of listeners, each listener enabling a [`Level`]; no
//! server, and a send that nobody listens to costs one load.
//!
//! **The segment.** Writers and listeners of one name share one segment,
//! `/dev/shm/ipckit.events.NAME`, made by whoever opens it first (mode 0600 unless
//! `?mode=` widens it; a segment of another user, or wider than the mode asked for, is
//! refused) and removed by the last to leave. A segment left by parties that all crashed
//! is laid out afresh by the next to open it: each party holds a shared `flock` on it,
//! which the kernel drops however the party dies.
//!
//! **Writing.** [`connect`](crate::connect) gives a writer. [`Client::send`] writes at the
//! URL's `?level=` (informational unless set), [`Client::send_at`] at any level.
//! [`Client::is_enabled`] says whether any listener takes a level, in one load: check it
//! before building an expensive event. A send that no listener's level takes returns at
//! once, having written nothing. Writers take turns under a lock in the segment; a send
//! never waits for a listener, except with `?overflow=block`. `request` is refused: events
//! is one-way.
//!
//! **Listening.** [`listen`](crate::listen) gives a listener that takes every event at
//! its `?level=` or a more important one (everything unless set; see
//! [`Level::includes`]), written by any writer after `listen` returned, with the event's
//! [`level`](crate::Message::level), its [`sequence`](crate::Message::sequence) number in
//! the stream and its writer's [`pid`](crate::Peer::pid) (written by the writer, not
//! vouched for by the kernel). Events written before the listener joined are not seen.
//!
//! **What is promised.**
//! - *Order*: the events of all writers form one sequence, numbered without gaps, and
//!   every listener sees it in that order (a total order, not only per writer).
//! - *Loss* (`?overflow=drop`, the default; `overwrite` is the same): the ring holds
//!   `?ring=` bytes (1 MiB unless set; each event takes its size plus 24 bytes, rounded up
//!   to 8). Writers overwrite the oldest events and never wait for a listener. A listener
//!   lapped by them resumes at the newest event written when it found out (not the
//!   oldest still there), and [`Server::recv_event`] gives [`Event::Lost`] right before
//!   the next event it delivers, with the exact count of events it missed since the last
//!   one it delivered: events of every level, its own or not, as what was overwritten
//!   cannot say its level ([`Server::lost`] keeps the total; `Server::recv` skips the
//!   notice). An event is delivered whole or not at all: never torn, never changed.
//! - *Block* (`?overflow=block`): writers wait for the slowest live listener instead.
//!   Nothing is lost while listeners live; a listener that dies stops holding writers
//!   back at once (a waiting writer reaps dead listeners as it waits).
//! - *Send timeout*: a send that waits for the write lock or, in block mode, for room
//!   gives up `?send_timeout_ms=` (10 s unless set) after it began, time spent behind
//!   other threads of its process included, and fails with [`Error::Full`] having
//!   written nothing.
//! - *Crashes*: a listener killed with SIGKILL stops counting (its level no longer
//!   enables sends, its entry is reused) within about a second, as long as some other
//!   party looks: a writer that writes reaps dead listeners once a second, a waiting
//!   listener every half second, a party that opens the segment and a writer waiting in
//!   block mode at once. With nobody writing or waiting, nobody reaps, and nothing needs
//!   it. A writer killed mid-write, or while holding the write lock, never blocks the
//!   others: its death word shows it dead at once, the next writer takes the lock over,
//!   and the event it was writing is lost (listeners count it in a `Lost`), never
//!   delivered in part.
//! - *Bad memory*: anything in the segment may be scribbled on by a process that can open
//!   it. Each event carries a CRC-32C; a record that fails it, or whose shape is
//!   impossible, is skipped and counted as lost. The configuration (geometry and
//!   overflow) is read once at open; nothing read from the segment later is used for a
//!   bound or a size before it is checked, so a listener never reads out of bounds,
//!   allocates a claimed length or hangs: a receive with a deadline returns by it. A
//!   listener whose registration was undone (its entry, or its level's count) fails with
//!   an error rather than wait for events writers no longer send it.
//! - *Limits*: `?ring=` from 4 KiB to 1 GiB, a power of two; the largest event is a
//!   quarter of the ring less 24 bytes ([`Capabilities::max_message`]; a larger send fails
//!   with [`Error::MessageTooLarge`]); `?listeners=` at once, up to 1023 (64 unless set;
//!   one more fails with [`Error::Full`]); 1024 writers at once (one more fails with
//!   [`Error::Full`]). Each writer and listener keeps a thread of its own, which holds
//!   the word that the kernel marks when the party dies. The first to open a segment
//!   chooses `ring`, `listeners`, `overflow` and `mode`; a party asking for other values
//!   than the live segment's gets [`Error::AddrInUse`].
//!
//! **Waking.** A listener with nothing to read spins briefly, then sleeps on a futex in
//! the segment (an async listener, on its bell); a writer makes a system call to wake
//! listeners only when one sleeps.
//!
//! # Example
//!
//! ```
//! use ipckit::{Event, Level};
//!
//! let url = format!("events://ipckit-doc-events-{}", std::process::id());
//! let mut warnings = ipckit::listen(format!("{url}?level=warning").as_str())?;
//! let writer = ipckit::connect(url.as_str())?;
//!
//! assert!(!writer.is_enabled(Level::Verbose)); // nobody listens to verbose
//! writer.send_at(Level::Verbose, b"skipped at the cost of one load")?;
//! writer.send_at(Level::Error, b"disk full")?;
//!
//! let event = warnings.recv()?;
//! assert_eq!(event.payload(), b"disk full");
//! assert_eq!(event.level(), Some(Level::Error));
//! assert_eq!(event.peer().pid, Some(std::process::id()));
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! [`Level`]: crate::Level
//! [`Level::includes`]: crate::Level::includes
//! [`Client::send`]: crate::Client::send
//! [`Client::send_at`]: crate::Client::send_at
//! [`Client::is_enabled`]: crate::Client::is_enabled
//! [`Server::recv_event`]: crate::Server::recv_event
//! [`Server::lost`]: crate::Server::lost
//! [`Event::Lost`]: crate::Event::Lost
//! [`Error::Full`]: crate::Error::Full
//! [`Error::MessageTooLarge`]: crate::Error::MessageTooLarge
//! [`Error::AddrInUse`]: crate::Error::AddrInUse
//! [`Capabilities::max_message`]: crate::transport::Capabilities::max_message

use std::path::Path;

use crate::endpoint::{Address, Endpoint, Overflow};
use crate::error::Result;
use crate::transport::ring::broadcast::records::max_event;
use crate::transport::{Capabilities, Connection, Listener, Transport};

mod listener;
#[cfg(feature = "tokio")]
mod on_tokio;
mod segment;
#[cfg(all(test, not(ipckit_loom)))]
mod tests;
mod writer;

pub(crate) use listener::EventsListener;
pub(crate) use writer::EventsConnection;

/// A broadcast ring in shared memory, with levels.
///
/// ```
/// let events = ipckit::transport::find("events").unwrap();
/// let caps = events.capabilities(&"events://app?ring=65536".parse()?);
/// assert!(caps.broadcast && !caps.duplex && !caps.reliable);
/// assert_eq!(caps.max_message, 65536 / 4 - 24);
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Events;

crate::transport::sealed!(Events, EventsConnection, EventsListener);

impl Transport for Events {
    fn scheme(&self) -> &'static str {
        "events"
    }

    fn summary(&self) -> &'static str {
        "a broadcast ring in shared memory with levels, as ETW; no server"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: false,
            push: false,
            // Overwriting loses what a slow listener has not read; blocking does not.
            reliable: endpoint.overflow() == Overflow::Block,
            ordered: true,
            durable: false,
            broadcast: true,
            connection: false,
            max_message: max_event(endpoint.ring() as u64) as usize,
            peer_credentials: false,
            zero_copy: false,
            competing_receivers: false,
            queue_limit: None,
        }
    }

    fn scratch_endpoint(&self, _dir: &Path, name: &str) -> Endpoint {
        Address::Events(super::unique_scratch_name(name)).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(EventsConnection::connect(endpoint)?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        Ok(Box::new(EventsListener::bind(endpoint)?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        super::connected(on_tokio::AsyncEventsConnection::connect(endpoint))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        Ok(Box::new(on_tokio::AsyncEventsListener::bind(endpoint)?))
    }

    /// Removes the segment if no writer or listener holds it (the last one to leave
    /// removes it anyway; this is for a segment whose parties all crashed, which the next
    /// to open it would otherwise reclaim).
    fn destroy(&self, endpoint: &Endpoint) -> Result<()> {
        segment::destroy(endpoint);
        Ok(())
    }
}
