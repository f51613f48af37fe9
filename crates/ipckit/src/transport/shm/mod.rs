//! `shm://NAME`: shared memory, a memory-mapped segment with futex wake-ups, done as
//! zero-copy libraries do it.
//!
//! **The segment.** A server creates one shared-memory segment, `/dev/shm/ipckit.NAME`
//! (the POSIX name `/ipckit.NAME`), and removes it when it stops. Its mode is 0600, so
//! only processes of the same user can connect, unless `?mode=` widens it. It holds a slot
//! per client, and a slot holds two rings: requests and one-way messages from the client,
//! replies and pushes from the server. A second server on the name of a live one fails with
//! [`Error::AddrInUse`]; a file there that is not an ipckit segment is left untouched.
//! The layout is in `docs/PROTOCOL.md`.
//!
//! **Options.** `clients`, `ring` and `mode` are the server's: they shape the segment,
//! and a client takes the segment as it finds it. `max_message` and `send_timeout_ms`
//! apply to each side on its own.
//!
//! - `?clients=N`: how many clients the server takes at once, up to 4096; 1024 unless
//!   set. A server maps a slot, and its pages are used, only while a client holds it.
//!   A client that finds every slot taken waits for one to free up to its
//!   `send_timeout_ms`, then fails with [`Error::Full`].
//! - `?ring=N`: the bytes of each ring, a power of two from 64 KiB to 1 GiB; 1 MiB unless
//!   set. A message up to half a ring goes as one record, written and read in place; a
//!   larger one goes as a sequence of records, copied in and out, and arrives whole.
//! - `?mode=0660`: the segment's permissions.
//! - `?max_message=N`: the largest message this side accepts, 16 MiB unless set: the
//!   server's limit applies to what clients send, a client's to the replies it gets. The
//!   sender learns [`Error::MessageTooLarge`] before anything is written.
//! - `?send_timeout_ms=N`: how long a send, a request or a reply waits while the ring it
//!   writes to is full, and a connect while every slot is taken, 10 s unless set; then it
//!   fails with [`Error::Full`].
//!
//! **Zero copy.** [`Client::loan`](crate::Client::loan) hands out space inside the ring:
//! the message is written once, where the server reads it.
//! [`Message::payload`](crate::Message::payload) on the server is that record, read in
//! place, and its space goes back to the client when the message is dropped. Space comes
//! back in order, so a server that holds on to a message keeps that client from reusing
//! the space of every message sent after it: once the ring is full the client's sends
//! wait, as a publisher waits for a subscriber holding samples in iceoryx2. Copy out what
//! must be kept ([`Message::take_payload`](crate::Message::take_payload)).
//!
//! **Waking.** While both sides are busy, messages pass without a system call. A side
//! that waits spins briefly before it sleeps on a futex in the segment, and whoever
//! publishes wakes the other only if it said it would sleep. The spin is long while the
//! peer answers quickly and short once it pauses, so a server with nothing to do sleeps
//! and uses no CPU, and the first message after a pause pays one wake-up. The server
//! sleeps on one doorbell for all its clients. The async side (`ipckit::tokio`) waits
//! the same way without holding a runtime worker: it looks again between other tasks,
//! then sleeps on a bell the peer rings.
//!
//! **The fastest calls.** Every call works on every transport; on `shm` these four are
//! the fastest. [`Server::recv_with`](crate::Server::recv_with) lends a request to a
//! handler where it lies, and the handler's reply is written straight into the reply
//! ring; [`Server::serve_with`](crate::Server::serve_with) does that in a loop without
//! leaving its wait between messages; [`Client::request_with`](crate::Client::request_with)
//! reads the reply where it lies; and [`Client::exclusive`](crate::Client::exclusive) lets
//! one thread make its requests without coordinating with others. Why these are fast,
//! with the measurements, is in `docs/DESIGN.md`.
//!
//! **Pushes.** The server's own messages to a client
//! ([`ClientHandle::send`](crate::ClientHandle::send), [`Server::broadcast`](crate::Server::broadcast))
//! go into the client's reply ring, marked as pushes, from any thread; the client's
//! [`Client::recv`](crate::Client::recv) takes them, and a reply never passes for a push
//! nor a push for a reply, however many threads request and receive at once.
//!
//! - *The outbox* is that ring: `?ring=` bytes (1 MiB unless set), shared with the
//!   client's replies; `?outbox=` does not apply. A push goes in whole or not at all.
//! - *When it is full*, a send waits for room up to `?send_timeout_ms=` and fails with
//!   [`Error::Full`]; a broadcast does not wait, and skips the client or disconnects it
//!   as `?overflow=` says. A client whose ring was found full counts as full, for
//!   messages of every size, until it has taken as much as the push that failed needed.
//! - *A departed client* is noticed as it leaves (it marks its slot), or, killed, by the
//!   server's look at its pidfd every [`LIVENESS_INTERVAL`]; a push also checks, within
//!   10 ms of pushing, and at once while the ring is full. From then on pushes to it fail
//!   with [`Error::Disconnected`], and the server's
//!   [`recv_event`](crate::Server::recv_event) says it left after its last message.
//!   A client that connects is announced before its first message.
//!
//! **What a successful `send` promises:** the message is whole in the client's request
//! ring, and the server lived when it was written there; not that the server read it. A
//! server that dies before taking it loses it, as a stream server loses what sits in
//! its socket buffer. The client's next call fails with [`Error::Disconnected`] as soon
//! as the kernel has begun tearing the server down: a thread of the server holds a
//! robust futex in the header, which the kernel marks when the server dies, and every
//! call reads it (one load of a cache line it reads anyway). Measured with
//! `cargo run --release -p ipckit-bench --bin send-after-death`: over 30 SIGKILLs, the
//! sends that still returned Ok once the server was reaped fell from 229 to 2 (the
//! pidfd, polled every 10 ms by a one-way sender, was the only sign before).
//!
//! **Crashes.** The server holds an exclusive `flock` on its segment, which the kernel
//! releases when the server dies, however it dies: a new server on the name replaces a
//! dead server's segment, and a client that finds one removes it. Each side watches the
//! other's pidfd (or pid, where the kernel has no pidfds) at least every
//! [`LIVENESS_INTERVAL`] while it waits: a client killed with SIGKILL is noticed within
//! that time and its slot emptied for the next client; a request to a server that died
//! fails with [`Error::Disconnected`]. A record becomes visible only when complete, so a
//! sender killed mid-message leaves nothing, and the pieces of a larger message from a
//! dead client are discarded.
//!
//! **Trust.** Everything read from shared memory is checked before use: a peer writing
//! garbage into positions or lengths gets its connection closed with an
//! [`Error::Protocol`] naming the violation, and never makes the other side read out of
//! bounds, allocate what it claims, or hang. A peer can still change the bytes of a
//! message while the receiver reads them in place; only processes of the owner (or those
//! `?mode=` admits) can map the segment at all. A process that shrinks the segment's file
//! (`truncate`, a `dd` without `conv=notrunc`) kills no one: a SIGBUS handler that
//! ipckit installs (passing on every fault outside its mappings to the handler before it)
//! puts zeroed private pages in place of the lost ones, and the server's `recv` fails
//! with [`Error::Protocol`], and its clients' calls with [`Error::Disconnected`], saying
//! the segment was shrunk. A memfd with `F_SEAL_SHRINK` would forbid the shrinking
//! instead, but a client could not open it by name.
//!
//! **No peer credentials.** A client writes its pid into the segment, and the server
//! gives it as [`Peer::pid`](crate::Peer::pid) once it has checked that the process
//! lives; but the kernel does not vouch for it, so [`Capabilities::peer_credentials`] is
//! false, and uid and gid are unknown.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! let url = format!("shm://ipckit-doc-shm-{}", std::process::id());
//! let server = ipckit::listen(url.as_str())?.spawn(|msg| Some(msg.payload().to_ascii_uppercase()));
//! let client = ipckit::connect(url.as_str())?;
//!
//! // Written in place: the loan is space in the ring the server reads from.
//! let mut loan = client.loan(5)?;
//! loan.copy_from_slice(b"hello");
//! assert_eq!(loan.request(Duration::from_secs(5))?, b"HELLO");
//!
//! drop(client);
//! drop(server); // stops it and removes the segment
//! # Ok::<(), ipckit::Error>(())
//! ```
//!
//! A server speaking first, to a client that said hello:
//!
//! ```
//! let url = format!("shm://ipckit-doc-shm-push-{}", std::process::id());
//! let mut server = ipckit::listen(url.as_str())?;
//! let client = ipckit::connect(url.as_str())?;
//! client.send(b"hello")?;
//! let hello = server.recv()?;
//! let handle = hello.client().expect("shm pushes").clone();
//! handle.send(b"news")?; // from any thread, for as long as the client stays
//! assert_eq!(client.recv()?.payload(), b"news");
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::path::Path;

use crate::endpoint::{Address, Endpoint};
use crate::error::{Error, Result};
use crate::transport::ring::spsc::Corrupt;
use crate::transport::{Capabilities, Connection, Listener, Transport};

mod client;
pub(crate) mod halves;
#[cfg(feature = "tokio")]
mod on_tokio;
mod segment;
mod server;

pub use crate::transport::ring::liveness::LIVENESS_INTERVAL;
pub(crate) use client::{ShmConnection, ShmExclusive, ShmLoan};
pub(crate) use server::{Lease, ReplyChannel, ShmListener};

/// Shared-memory rings between processes.
///
/// ```
/// # use std::time::Duration;
/// let url = format!("shm://doc-{}", std::process::id());
/// let server = ipckit::listen(url.as_str())?.spawn(|msg| Some(msg.payload().to_vec()));
/// let client = ipckit::connect(url.as_str())?;
/// let mut loan = client.loan(5)?; // space in the ring itself
/// loan.copy_from_slice(b"hello");
/// assert_eq!(loan.request(Duration::from_secs(5))?, b"hello");
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Shm;

crate::transport::sealed!(Shm, ShmConnection, ShmListener);

impl Transport for Shm {
    fn scheme(&self) -> &'static str {
        "shm"
    }

    fn summary(&self) -> &'static str {
        "shared-memory rings (shm_open), futex wake-ups, zero copy"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            reliable: true,
            ordered: true,
            durable: false,
            broadcast: false,
            connection: true,
            max_message: endpoint.max_message(),
            peer_credentials: false,
            zero_copy: true,
            competing_receivers: false,
            queue_limit: None,
            push: true,
        }
    }

    fn scratch_endpoint(&self, _dir: &Path, name: &str) -> Endpoint {
        Address::Shm(super::unique_scratch_name(name)).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(ShmConnection::connect(endpoint)?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        Ok(Box::new(ShmListener::bind(endpoint)?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        // A slot free now is taken at once; waiting for one to free is done off the
        // runtime's workers.
        match on_tokio::AsyncShmConnection::connect(endpoint, std::time::Duration::ZERO) {
            Err(Error::Full { .. }) => {}
            made => return super::connected(made),
        }
        let endpoint = endpoint.clone();
        Box::pin(async move {
            let url = endpoint.to_string();
            let patience = endpoint.send_timeout();
            let connect = move || on_tokio::AsyncShmConnection::connect(&endpoint, patience);
            let made = tokio::task::spawn_blocking(connect)
                .await
                .map_err(|e| Error::io(&url, "connecting", std::io::Error::other(e)))??;
            Ok(Box::new(made) as Box<dyn super::AsyncConnection>)
        })
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        Ok(Box::new(on_tokio::AsyncShmListener::bind(endpoint)?))
    }

    /// Removes the segment of a server that died (a live server's stays). A server that
    /// stops removes its own; this is for one that was killed, when no client noticed and
    /// no server is started on the name again.
    fn destroy(&self, endpoint: &Endpoint) -> Result<()> {
        segment::remove_if_abandoned(name_of(endpoint), None);
        Ok(())
    }
}

fn name_of(endpoint: &Endpoint) -> &str {
    match endpoint.address() {
        Address::Shm(name) => name,
        other => unreachable!("shm given {other:?}"),
    }
}

fn corrupt(url: &str, who: &str, c: Corrupt) -> Error {
    Error::Protocol {
        endpoint: url.to_owned(),
        reason: format!("the {who} broke the shared ring: {}", c.0),
    }
}
