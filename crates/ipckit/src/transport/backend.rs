//! The one place above the transports that names them: an enum per role, with a variant
//! per zero-copy flavor and one for every other transport behind the [`Connection`] and
//! [`Listener`] traits.
//!
//! The zero-copy flavors take the caller's closures (a reader of a reply, a handler of a
//! lent message) as generic arguments, so that each closure is compiled into the code
//! that reads the ring, as crossbeam-channel's flavors and tokio's scheduler handle pass
//! theirs. [`ClientSide`] and [`ServerSide`] state those calls once; a zero-copy flavor
//! implements them over its rings, and the boxed transports implement them once, by
//! copying. `lib.rs`, `message.rs`, `exclusive.rs` and `loan.rs` see only these enums.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::events::EventsConnection;
use super::shm::{Lease, ReplyChannel, ShmConnection, ShmExclusive, ShmListener, ShmLoan};
use super::{Connection, Listener, Transport};
use crate::endpoint::{Address, Endpoint};
use crate::error::Result;
use crate::level::Level;
use crate::message::{Message, MessageRef, ReplySink};
use crate::push::{Broadcaster, Event};

/// A client's calls, as each flavor makes them.
pub(crate) trait ClientSide {
    fn send(&self, payload: &[u8]) -> Result<()>;
    /// As [`Connection::send_at`]: a flavor without levels sends.
    fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        let _ = level;
        self.send(payload)
    }
    /// As [`Connection::is_enabled`].
    fn is_enabled(&self, level: Level) -> bool {
        let _ = level;
        true
    }
    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>>;
    /// Hands the reply to `read`: where it lies, on a zero-copy flavor.
    fn request_with<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R>;
    /// The next message the server pushed, until `deadline`.
    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        let _ = deadline;
        Err(super::cannot_push(self.endpoint()))
    }
    fn max_message(&self) -> usize;
    fn endpoint(&self) -> &Endpoint;
}

/// A server's calls, as each flavor makes them.
pub(crate) trait ServerSide {
    /// One wait, until `deadline`, for a message; `None` when the deadline passed or the
    /// waker was called.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>>;
    /// One wait, as [`recv`](Self::recv), for a message or a client coming or going.
    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        Ok(self.recv(deadline)?.map(Event::Message))
    }
    /// The clients connected, where the flavor pushes.
    fn broadcaster(&self) -> Option<Broadcaster> {
        None
    }
    /// As [`Listener::lost`].
    fn lost(&self) -> u64 {
        0
    }
    /// One wait, as [`recv`](Self::recv), for a message to lend to `handle` (taken when
    /// called); what it returned.
    fn recv_with<R, H: FnOnce(&mut MessageRef<'_>) -> R>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut Option<H>,
    ) -> Result<Option<R>>;
    /// Lends every message to `handle` until it breaks; what it broke with. `None` once
    /// the waker was called with `stopped` set.
    fn serve_with<B>(
        &mut self,
        stopped: &AtomicBool,
        handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> Result<Option<B>>;
    fn waker(&self) -> Arc<dyn Fn() + Send + Sync>;
    fn endpoint(&self) -> &Endpoint;
}

/// The copying path, for every transport without a flavor of its own.
impl ClientSide for dyn Connection {
    fn send(&self, payload: &[u8]) -> Result<()> {
        Connection::send(self, payload)
    }

    fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        Connection::send_at(self, level, payload)
    }

    fn is_enabled(&self, level: Level) -> bool {
        Connection::is_enabled(self, level)
    }

    fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        Connection::request(self, payload, timeout)
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        Connection::recv(self, deadline)
    }

    fn request_with<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        Ok(read(&Connection::request(self, payload, timeout)?))
    }

    fn max_message(&self) -> usize {
        Connection::max_message(self)
    }

    fn endpoint(&self) -> &Endpoint {
        Connection::endpoint(self)
    }
}

/// The copying path: a [`Message`] lent for each call.
impl ServerSide for dyn Listener {
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        Listener::recv(self, deadline)
    }

    fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        Listener::recv_event(self, deadline)
    }

    fn broadcaster(&self) -> Option<Broadcaster> {
        Listener::broadcaster(self)
    }

    fn lost(&self) -> u64 {
        Listener::lost(self)
    }

    fn recv_with<R, H: FnOnce(&mut MessageRef<'_>) -> R>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut Option<H>,
    ) -> Result<Option<R>> {
        let mut result = None;
        Listener::recv_with(self, deadline, &mut |message| {
            if let Some(handle) = handle.take() {
                result = Some(handle(message));
            }
        })?;
        Ok(result)
    }

    fn serve_with<B>(
        &mut self,
        stopped: &AtomicBool,
        mut handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> Result<Option<B>> {
        loop {
            match ServerSide::recv_with(self, None, &mut Some(&mut handle))? {
                Some(ControlFlow::Break(value)) => return Ok(Some(value)),
                Some(ControlFlow::Continue(())) => {}
                None if stopped.load(Ordering::Acquire) => return Ok(None),
                None => {}
            }
        }
    }

    fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        Listener::waker(self)
    }

    fn endpoint(&self) -> &Endpoint {
        Listener::endpoint(self)
    }
}

/// Calls `$call` with `$flavor` bound to whichever flavor `$self` holds, unboxed.
macro_rules! each_flavor {
    ($self:ident, $flavor:ident => $call:expr) => {
        match $self {
            Self::Shm($flavor) => {
                let $flavor = &**$flavor;
                $call
            }
            Self::Boxed($flavor) => {
                let $flavor = &**$flavor;
                $call
            }
        }
    };
    (mut $self:ident, $flavor:ident => $call:expr) => {
        match $self {
            Self::Shm($flavor) => {
                let $flavor = &mut **$flavor;
                $call
            }
            Self::Boxed($flavor) => {
                let $flavor = &mut **$flavor;
                $call
            }
        }
    };
}

/// [`each_flavor`] for a client, whose flavors also include events: its writer's
/// `is_enabled` and a send nobody listens to are a load of shared memory, which an
/// indirect call through the `Connection` trait would double.
macro_rules! each_client_flavor {
    ($self:ident, $flavor:ident => $call:expr) => {
        match $self {
            Self::Shm($flavor) => {
                let $flavor = &**$flavor;
                $call
            }
            Self::Events($flavor) => {
                let $flavor = &**$flavor;
                $call
            }
            Self::Boxed($flavor) => {
                let $flavor = &**$flavor;
                $call
            }
        }
    };
}

/// A client's connection. Flavors are boxed, as the others are, so that a `Client` stays
/// small to move and to hold in a user's own enums.
pub(crate) enum ClientBackend {
    Shm(Box<ShmConnection>),
    Events(Box<EventsConnection>),
    Boxed(Box<dyn Connection>),
}

impl ClientBackend {
    pub(crate) fn connect(transport: &dyn Transport, endpoint: &Endpoint) -> Result<Self> {
        Ok(match endpoint.address() {
            Address::Shm(_) => Self::Shm(Box::new(ShmConnection::connect(endpoint)?)),
            Address::Events(_) => Self::Events(Box::new(EventsConnection::connect(endpoint)?)),
            _ => Self::Boxed(transport.connect(endpoint)?),
        })
    }

    #[inline(always)]
    pub(crate) fn send(&self, payload: &[u8]) -> Result<()> {
        each_client_flavor!(self, c => ClientSide::send(c, payload))
    }

    #[inline]
    pub(crate) fn send_at(&self, level: Level, payload: &[u8]) -> Result<()> {
        each_client_flavor!(self, c => ClientSide::send_at(c, level, payload))
    }

    #[inline]
    pub(crate) fn is_enabled(&self, level: Level) -> bool {
        each_client_flavor!(self, c => ClientSide::is_enabled(c, level))
    }

    #[inline(always)]
    pub(crate) fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        each_client_flavor!(self, c => ClientSide::request(c, payload, timeout))
    }

    #[inline(always)]
    pub(crate) fn request_with<R>(
        &self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        each_client_flavor!(self, c => ClientSide::request_with(c, payload, timeout, read))
    }

    #[inline]
    pub(crate) fn recv(&self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        each_client_flavor!(self, c => ClientSide::recv(c, deadline))
    }

    pub(crate) fn max_message(&self) -> usize {
        each_client_flavor!(self, c => ClientSide::max_message(c))
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        each_client_flavor!(self, c => ClientSide::endpoint(c))
    }

    /// Space for a message of `len` bytes (at most `max_message`): in the ring where the
    /// flavor has one and the message fits a record, else a plain buffer.
    pub(crate) fn loan(&self, len: usize) -> Result<LoanBackend<'_>> {
        if let Self::Shm(shm) = self {
            if let Some(loan) = shm.loan(len)? {
                return Ok(LoanBackend::Shm(loan));
            }
        }
        Ok(LoanBackend::Heap {
            connection: self,
            bytes: vec![0; len],
        })
    }

    /// The connection for one thread's calls; see [`crate::Exclusive`].
    pub(crate) fn exclusive(&mut self) -> ExclusiveBackend<'_> {
        match self {
            Self::Shm(shm) => ExclusiveBackend::Shm(shm.exclusive()),
            Self::Events(_) | Self::Boxed(_) => ExclusiveBackend::Client(self),
        }
    }
}

/// A server's listener, boxed as a client's connection is.
pub(crate) enum ServerBackend {
    Shm(Box<ShmListener>),
    Boxed(Box<dyn Listener>),
}

impl ServerBackend {
    pub(crate) fn listen(transport: &dyn Transport, endpoint: &Endpoint) -> Result<Self> {
        Ok(match endpoint.address() {
            Address::Shm(_) => Self::Shm(Box::new(ShmListener::bind(endpoint)?)),
            _ => Self::Boxed(transport.listen(endpoint)?),
        })
    }

    #[inline(always)]
    pub(crate) fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        each_flavor!(mut self, l => ServerSide::recv(l, deadline))
    }

    #[inline(always)]
    pub(crate) fn recv_with<R, H: FnOnce(&mut MessageRef<'_>) -> R>(
        &mut self,
        deadline: Option<Instant>,
        handle: &mut Option<H>,
    ) -> Result<Option<R>> {
        each_flavor!(mut self, l => ServerSide::recv_with(l, deadline, handle))
    }

    #[inline(always)]
    pub(crate) fn serve_with<B>(
        &mut self,
        stopped: &AtomicBool,
        handle: impl FnMut(&mut MessageRef<'_>) -> ControlFlow<B>,
    ) -> Result<Option<B>> {
        each_flavor!(mut self, l => ServerSide::serve_with(l, stopped, handle))
    }

    #[inline]
    pub(crate) fn recv_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        each_flavor!(mut self, l => ServerSide::recv_event(l, deadline))
    }

    pub(crate) fn broadcaster(&self) -> Option<Broadcaster> {
        each_flavor!(self, l => ServerSide::broadcaster(l))
    }

    pub(crate) fn lost(&self) -> u64 {
        each_flavor!(self, l => ServerSide::lost(l))
    }

    pub(crate) fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        each_flavor!(self, l => ServerSide::waker(l))
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        each_flavor!(self, l => ServerSide::endpoint(l))
    }
}

/// The way back from a lent message: a client's reply ring, called directly so that the
/// reply is written inline, or any other transport's sink.
#[derive(Clone, Copy)]
pub(crate) enum ReplyBackend<'a> {
    Shm(&'a ReplyChannel),
    Boxed(&'a (dyn ReplySink + 'a)),
}

impl ReplySink for ReplyBackend<'_> {
    #[inline(always)]
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        match self {
            Self::Shm(ring) => ring.send_reply(id, payload, ok),
            Self::Boxed(sink) => sink.send_reply(id, payload, ok),
        }
    }

    fn unanswered(&self, id: u64) {
        match self {
            Self::Shm(ring) => ring.unanswered(id),
            Self::Boxed(sink) => sink.unanswered(id),
        }
    }
}

/// Where a received message's bytes are: copied out, or in place in a sender's ring.
pub(crate) enum Payload {
    Owned(Vec<u8>),
    Shm(Lease),
}

impl Payload {
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Payload::Owned(bytes) => bytes,
            Payload::Shm(lease) => lease.bytes(),
        }
    }

    #[inline]
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Owned(bytes) => bytes,
            Payload::Shm(lease) => lease.bytes().to_vec(),
        }
    }

    #[inline]
    pub(crate) fn is_in_place(&self) -> bool {
        !matches!(self, Payload::Owned(_))
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload::Owned(bytes)
    }
}

/// Space for one message: in a ring, or a buffer sent with a copy.
pub(crate) enum LoanBackend<'a> {
    Shm(ShmLoan<'a>),
    Heap {
        connection: &'a ClientBackend,
        bytes: Vec<u8>,
    },
}

impl LoanBackend<'_> {
    #[inline]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Shm(loan) => loan.bytes_mut(),
            Self::Heap { bytes, .. } => bytes,
        }
    }

    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Shm(loan) => loan.bytes(),
            Self::Heap { bytes, .. } => bytes,
        }
    }

    #[inline]
    pub(crate) fn is_in_place(&self) -> bool {
        !matches!(self, Self::Heap { .. })
    }

    /// Publishes the first `len` bytes.
    #[inline]
    pub(crate) fn send(self, len: usize) -> Result<()> {
        match self {
            Self::Shm(loan) => loan.send(len),
            Self::Heap { connection, bytes } => connection.send(&bytes[..len]),
        }
    }

    #[inline]
    pub(crate) fn request(self, len: usize, timeout: Duration) -> Result<Vec<u8>> {
        match self {
            Self::Shm(loan) => loan.request(len, timeout),
            Self::Heap { connection, bytes } => connection.request(&bytes[..len], timeout),
        }
    }

    #[inline]
    pub(crate) fn request_with<R>(
        self,
        len: usize,
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        match self {
            Self::Shm(loan) => loan.request_in_place(len, timeout, read),
            Self::Heap { connection, bytes } => {
                connection.request_with(&bytes[..len], timeout, read)
            }
        }
    }
}

/// A connection held by one thread: a flavor's own handle, or the client itself.
pub(crate) enum ExclusiveBackend<'a> {
    Shm(ShmExclusive<'a>),
    Client(&'a ClientBackend),
}

impl ExclusiveBackend<'_> {
    #[inline]
    pub(crate) fn endpoint(&self) -> &Endpoint {
        match self {
            Self::Shm(shm) => shm.endpoint(),
            Self::Client(client) => client.endpoint(),
        }
    }

    #[inline]
    pub(crate) fn send(&mut self, payload: &[u8]) -> Result<()> {
        match self {
            Self::Shm(shm) => shm.send(payload),
            Self::Client(client) => client.send(payload),
        }
    }

    #[inline]
    pub(crate) fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        match self {
            Self::Shm(shm) => shm.request(payload, timeout),
            Self::Client(client) => client.request(payload, timeout),
        }
    }

    #[inline(always)]
    pub(crate) fn request_with<R>(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        match self {
            Self::Shm(shm) => shm.request_in_place(payload, timeout, read),
            Self::Client(client) => client.request_with(payload, timeout, read),
        }
    }
}
