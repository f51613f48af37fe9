//! What a server receives: the payload, who sent it, and how to answer.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::level::Level;
use crate::push::ClientHandle;
use crate::transport::backend::{Payload, ReplyBackend};

/// Who sent a message, as far as the operating system tells.
///
/// On `uds` the kernel vouches for pid, uid and gid (SO_PEERCRED, taken when the client
/// connected) and on `unixgram` for each datagram (SCM_CREDENTIALS); on `tcp` and `udp`
/// only the address is known; a pipe or a queue tells nothing.
///
/// ```no_run
/// let mut server = ipckit::listen("uds:///tmp/doc-peer.sock")?;
/// let msg = server.recv()?;
/// if msg.peer().uid != Some(0) {
///     eprintln!("ignoring pid {:?}: only root may ask", msg.peer().pid);
/// }
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    /// The sender's process id.
    pub pid: Option<u32>,
    /// The sender's user id.
    pub uid: Option<u32>,
    /// The sender's group id.
    pub gid: Option<u32>,
    /// The sender's network address, for network transports.
    pub addr: Option<String>,
}

/// The way back to whoever sent a request: implemented by each transport.
pub(crate) trait ReplySink: Send + Sync {
    /// Sends `payload` as the answer to request `id`; `ok == false` makes it a refusal
    /// whose payload is the UTF-8 reason.
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()>;

    /// Request `id` was dropped unanswered: refused by default, so that its caller learns
    /// at once rather than at its timeout. Best effort: the client may be gone.
    fn unanswered(&self, id: u64) {
        let _ = self.send_reply(
            id,
            b"the server dropped the request without replying",
            false,
        );
    }
}

impl<T: ReplySink + ?Sized> ReplySink for Arc<T> {
    #[inline(always)]
    fn send_reply(&self, id: u64, payload: &[u8], ok: bool) -> Result<()> {
        (**self).send_reply(id, payload, ok)
    }

    fn unanswered(&self, id: u64) {
        (**self).unanswered(id)
    }
}

/// The way back for one request, held by a [`Message`] (shared with the connection) or
/// lent to a [`MessageRef`] (borrowed from the server).
pub(crate) struct ReplyTo<S: ReplySink = Arc<dyn ReplySink>> {
    sink: S,
    id: u64,
    answered: bool,
}

impl ReplyTo {
    pub(crate) fn new(sink: Arc<dyn ReplySink>, id: u64) -> ReplyTo {
        ReplyTo::to(sink, id)
    }
}

impl<S: ReplySink> ReplyTo<S> {
    pub(crate) fn to(sink: S, id: u64) -> ReplyTo<S> {
        ReplyTo {
            sink,
            id,
            answered: false,
        }
    }

    #[inline(always)]
    fn answer(mut self, payload: &[u8], ok: bool) -> Result<()> {
        self.answered = true;
        match self.sink.send_reply(self.id, payload, ok) {
            Ok(()) => Ok(()),
            Err(e) => self.answer_failed(e),
        }
    }

    /// Every request is answered exactly once: an answer too large for the client goes
    /// out as a refusal that says so, naming both sizes, so that the caller learns at once
    /// rather than at its timeout. The server still gets the error. (An answer that could
    /// not be sent for any other reason has no client left to take a refusal.)
    #[cold]
    #[inline(never)]
    fn answer_failed(&self, failure: Error) -> Result<()> {
        if let Error::MessageTooLarge {
            size, max, limit, ..
        } = &failure
        {
            let reason =
                format!("an answer of {size} bytes, over the limit of {max} bytes ({limit})");
            // The refusal itself must fit: cut, it still names both sizes for a client that
            // takes 50 bytes.
            let _ =
                self.sink
                    .send_reply(self.id, &reason.as_bytes()[..reason.len().min(*max)], false);
        }
        Err(failure)
    }

    /// A request nobody answers would leave its caller waiting for its whole timeout;
    /// the transport tells it at once instead, where it can.
    #[cold]
    #[inline(never)]
    fn refuse_unanswered(&self) {
        self.sink.unanswered(self.id);
    }
}

impl<S: ReplySink> Drop for ReplyTo<S> {
    #[inline(always)]
    fn drop(&mut self) {
        if !self.answered {
            self.refuse_unanswered();
        }
    }
}

/// One message received by a server.
///
/// ```
/// # use std::time::Duration;
/// let url = format!("uds://@ipckit-doc-message-{}", std::process::id());
/// let mut server = ipckit::listen(&url)?;
/// # std::thread::spawn({
/// #     let url = url.clone();
/// #     move || ipckit::connect(&url)?.request(b"hi", Duration::from_secs(5))
/// # });
/// let mut msg = server.recv()?;
/// println!("{} bytes from pid {:?}", msg.payload().len(), msg.peer().pid);
/// if msg.wants_reply() {
///     msg.reply(b"got it")?;
/// }
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Message {
    payload: Payload,
    /// `None` when `client` says who sent it: one reference count fewer per message.
    peer: Option<Arc<Peer>>,
    reply_to: Option<ReplyTo>,
    client: Option<ClientHandle>,
    endpoint: Arc<str>,
    stamp: Option<Stamp>,
    /// Which delivery this is, where the transport counts them.
    deliveries: Option<u32>,
    /// What the transport does once the application is done with the message.
    settle: Option<Box<dyn Settle>>,
}

/// What a transport does once the application is done with a message (it was dropped,
/// or the handler it was lent to returned): a durable queue acknowledges it there, so
/// that a receiver killed while handling leaves it to be delivered again. A message
/// dropped while its thread panics is not settled: the box is dropped instead, and the
/// transport gives the message back.
pub(crate) trait Settle: Send + Sync {
    fn settle(self: Box<Self>);
}

/// Where a message stands in a broadcast stream: its level and its number there, for a
/// transport that numbers what it broadcasts (`events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) level: Level,
    pub(crate) sequence: u64,
}

impl Message {
    pub(crate) fn new(
        payload: impl Into<Payload>,
        peer: Arc<Peer>,
        reply_to: Option<ReplyTo>,
        endpoint: Arc<str>,
    ) -> Message {
        Message {
            payload: payload.into(),
            peer: Some(peer),
            reply_to,
            client: None,
            endpoint,
            stamp: None,
            deliveries: None,
            settle: None,
        }
    }

    /// A message from the client behind `client`, who says who sent it: for a transport
    /// that pushes, in place of [`new`](Message::new) and [`with_client`](Message::with_client).
    #[inline]
    pub(crate) fn from_client(
        payload: impl Into<Payload>,
        client: ClientHandle,
        reply_to: Option<ReplyTo>,
        endpoint: Arc<str>,
    ) -> Message {
        Message {
            payload: payload.into(),
            peer: None,
            reply_to,
            client: Some(client),
            endpoint,
            stamp: None,
            deliveries: None,
            settle: None,
        }
    }

    /// The message, as the `deliveries`th delivery of what the transport queued.
    #[allow(
        dead_code,
        reason = "the spool transport counts deliveries; it is registered in the commits that follow"
    )]
    pub(crate) fn with_deliveries(mut self, deliveries: u32) -> Message {
        self.deliveries = Some(deliveries);
        self
    }

    /// The message, with what the transport does once the application is done with it.
    #[allow(
        dead_code,
        reason = "the spool transport settles its messages; it is registered in the commits that follow"
    )]
    pub(crate) fn with_settle(mut self, settle: Box<dyn Settle>) -> Message {
        self.settle = Some(settle);
        self
    }

    /// Which delivery of the message this is, 1 for the first, where the transport
    /// counts them: a durable queue (`spool`) delivers again what a receiver took and
    /// died before it was done with, and counts each time. A handler that must not run
    /// twice for one message (it charges a card) checks it. `None` where the transport
    /// delivers once.
    ///
    /// ```
    /// let url = format!("uds://@ipckit-doc-message-deliveries-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// ipckit::connect(&url)?.send(b"job")?;
    /// let msg = server.recv()?;
    /// assert_eq!(msg.deliveries(), None); // uds delivers each message once
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn deliveries(&self) -> Option<u32> {
        self.deliveries
    }

    /// The message, with its place in a broadcast stream.
    #[allow(
        dead_code,
        reason = "the events transport stamps its messages in the commits that follow"
    )]
    pub(crate) fn with_stamp(mut self, stamp: Stamp) -> Message {
        self.stamp = Some(stamp);
        self
    }

    /// The level its writer gave it, where the transport carries levels (`events`; see
    /// [`Client::send_at`](crate::Client::send_at)); `None` elsewhere.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let url = format!("uds://@ipckit-doc-message-level-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// ipckit::connect(&url)?.send_at(ipckit::Level::Error, b"disk full")?;
    /// let msg = server.recv()?;
    /// assert_eq!(msg.level(), None); // uds carries no levels
    /// assert_eq!(msg.sequence(), None);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn level(&self) -> Option<Level> {
        self.stamp.map(|stamp| stamp.level)
    }

    /// Its number in a broadcast stream, counting from 0 at the stream's start, where the
    /// transport numbers what it broadcasts (`events`): consecutive for a listener that
    /// missed nothing, so that a gap is the count of events it lost
    /// ([`Event::Lost`](crate::Event::Lost) says so too). `None` elsewhere.
    pub fn sequence(&self) -> Option<u64> {
        self.stamp.map(|stamp| stamp.sequence)
    }

    /// The message, from the client behind `client`: for a transport that pushes.
    #[inline]
    #[allow(
        dead_code,
        reason = "the transports learn to push in the commits that follow"
    )]
    pub(crate) fn with_client(mut self, client: ClientHandle) -> Message {
        self.client = Some(client);
        self
    }

    /// The client that sent it, to push messages to later from any thread (see
    /// [`ClientHandle`]); `None` where the transport cannot push
    /// ([`Capabilities::push`](crate::Capabilities::push)), and on a message a client
    /// received from its server.
    pub fn client(&self) -> Option<&ClientHandle> {
        self.client.as_ref()
    }

    /// The bytes that were sent. On `shm` they are read in place, in the sender's ring:
    /// no copy was made, and the space returns to the sender when the message is dropped.
    pub fn payload(&self) -> &[u8] {
        self.payload.bytes()
    }

    /// Takes the payload out, leaving the message empty (on `shm`, this copies it out of
    /// shared memory and gives the space back at once).
    pub fn take_payload(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.payload, Payload::Owned(Vec::new())).into_vec()
    }

    /// Whether the payload is read in place from shared memory rather than copied.
    ///
    /// ```no_run
    /// let mut server = ipckit::listen("shm://doc-in-place")?;
    /// let msg = server.recv()?;
    /// // Hold it briefly: until it is dropped, its space in the sender's ring stays taken.
    /// assert!(msg.is_in_place() || msg.payload().len() > 512 * 1024);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn is_in_place(&self) -> bool {
        self.payload.is_in_place()
    }

    /// Who sent it.
    pub fn peer(&self) -> &Peer {
        match (&self.peer, &self.client) {
            (Some(peer), _) => peer,
            (None, Some(client)) => client.peer(),
            (None, None) => unreachable!("a message without a peer has a client"),
        }
    }

    /// Whether the sender waits for an answer (it called `request`) that was not given yet.
    ///
    /// Over `udp` and `unixgram` a datagram carries no mark of one-way or request, so that
    /// any program's datagram is heard as it is: every datagram from a socket with an
    /// address can be answered, and this is true for a one-way [`send`](crate::Client::send)
    /// too. A server that must tell them apart there does so by what the payload says.
    pub fn wants_reply(&self) -> bool {
        self.reply_to.is_some()
    }

    /// Answers the request. Works from any thread; answering twice, or answering a
    /// one-way message, is [`Error::NoReplyExpected`].
    ///
    /// Every request is answered once, and what its caller learns when the server does
    /// not answer it depends on what the transport can tell:
    ///
    /// - A request dropped unanswered is refused at once ("the server dropped the request
    ///   without replying") on `uds` and `tcp` (with the default `?framing=length`),
    ///   `fifo`, `mq` and `shm`: its caller's `request` returns [`Error::Remote`].
    /// - On `udp` and `unixgram` every message from a bound socket can be answered and the
    ///   server cannot tell a request from a one-way message, so one dropped unanswered is
    ///   not refused: its caller waits out its timeout.
    /// - With `?framing=line` a line cannot say "refused": neither a refusal nor a dropped
    ///   request reaches the caller, which waits out its timeout.
    /// - An answer too large for its client is refused instead, naming both sizes, where
    ///   the server knows the client's limit (`uds`, `tcp`, `mq`, `shm`: `reply` returns
    ///   [`Error::MessageTooLarge`]); elsewhere the client fails the request as the answer
    ///   arrives.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let url = format!("uds://@ipckit-doc-reply-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// let client = std::thread::spawn({
    ///     let url = url.clone();
    ///     move || ipckit::connect(&url)?.request(b"ping", Duration::from_secs(5))
    /// });
    /// let mut msg = server.recv()?;
    /// assert!(msg.wants_reply());
    /// // The message carries its way back: answer from another thread, or later.
    /// std::thread::spawn(move || msg.reply(b"pong")).join().unwrap()?;
    /// assert_eq!(client.join().unwrap()?, b"pong");
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    #[inline]
    pub fn reply(&mut self, payload: &[u8]) -> Result<()> {
        self.take_reply_to()?.answer(payload, true)
    }

    /// Refuses the request: the caller's `request` returns [`Error::Remote`] with `reason`,
    /// at once, on every transport but `?framing=line` streams (whose caller times out; see
    /// [`reply`](Self::reply)). A reason longer than the client takes reaches it cut to fit
    /// (on `shm` and `fifo`, the caller learns instead that the answer was too large).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let url = format!("uds://@ipckit-doc-refuse-{}", std::process::id());
    /// let mut server = ipckit::listen(&url)?;
    /// let client = std::thread::spawn({
    ///     let url = url.clone();
    ///     move || ipckit::connect(&url)?.request(b"format disk", Duration::from_secs(5))
    /// });
    /// server.recv()?.refuse("unknown command")?;
    /// match client.join().unwrap() {
    ///     Err(ipckit::Error::Remote { reason, .. }) => assert_eq!(reason, "unknown command"),
    ///     other => panic!("expected the refusal, got {other:?}"),
    /// }
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn refuse(&mut self, reason: &str) -> Result<()> {
        self.take_reply_to()?.answer(reason.as_bytes(), false)
    }

    /// Answers the request with a serde value, for the caller's
    /// [`request_value`](crate::Client::request_value); otherwise as [`reply`](Self::reply)
    /// does.
    ///
    /// ```no_run
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Job { id: u32 }
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// enum Done { Ok, Failed(String) }
    /// let mut server = ipckit::listen("uds:///tmp/jobs.sock")?;
    /// let mut msg = server.recv()?;
    /// let job: Job = msg.decode()?;
    /// msg.reply_value(&if job.id > 0 { Done::Ok } else { Done::Failed("no id".into()) })?;
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn reply_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let payload = crate::typed::encode(value, &self.endpoint)?;
        self.reply(&payload)
    }

    #[inline]
    fn take_reply_to(&mut self) -> Result<ReplyTo> {
        take_reply_to(&mut self.reply_to, &self.endpoint)
    }

    /// Decodes a payload sent with [`Client::send_value`](crate::Client::send_value) or
    /// [`request_value`](crate::Client::request_value). The payload must hold a whole `T`:
    /// a value of another shape (an enum where a `String` is expected), bytes left over, or
    /// a payload sent with plain `send` is [`Error::Codec`], never a wrong value.
    ///
    /// ```no_run
    /// #[derive(serde::Deserialize)]
    /// struct Job { id: u32 }
    /// let mut server = ipckit::listen("uds:///tmp/doc-jobs.sock")?;
    /// let job: Job = server.recv()?.decode()?;
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        crate::typed::decode(self.payload(), &self.endpoint)
    }

    /// The endpoint the message arrived on.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The message as a [`MessageRef`], for a transport that cannot lend its messages in
    /// place: the reference answers the request (or refuses it when dropped unanswered).
    pub(crate) fn lend(&mut self) -> MessageRef<'_> {
        if let Some(reply_to) = &mut self.reply_to {
            reply_to.answered = true;
        }
        MessageRef {
            payload: self.payload(),
            in_place: self.is_in_place(),
            peer: Message::peer(self),
            reply_to: self
                .reply_to
                .as_ref()
                .map(|r| ReplyTo::to(ReplyBackend::Boxed(&*r.sink), r.id)),
            client: self.client.as_ref(),
            endpoint: &self.endpoint,
            stamp: self.stamp,
            deliveries: self.deliveries,
            gives_back: self.settle.is_some(),
        }
    }
}

impl Message {
    /// Drops the message unsettled, for the transport to deliver again: a handler that
    /// panicked did not finish with it, nor did a server dropped with it still queued.
    /// Its request is not refused, as its caller will get the answer of the next
    /// delivery.
    pub(crate) fn give_back(&mut self, settle: Box<dyn Settle>) {
        if let Some(reply_to) = &mut self.reply_to {
            reply_to.answered = true;
        }
        drop(settle);
    }

    /// Takes the message's settlement away, to drop it unsettled (see
    /// [`give_back`](Message::give_back)).
    pub(crate) fn unsettled(mut self) {
        if let Some(settle) = self.settle.take() {
            self.give_back(settle);
        }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            if std::thread::panicking() {
                self.give_back(settle);
            } else {
                settle.settle();
            }
        }
    }
}

/// One message lent by [`Server::recv_with`](crate::Server::recv_with) for as long as
/// its handler runs: nothing is copied, counted or allocated to hand it over, and on
/// `shm` both the message and the reply stay in the shared rings.
///
/// It answers as a [`Message`] does; a request left unanswered is refused when the
/// handler returns.
///
/// ```no_run
/// let mut server = ipckit::listen("shm://doc-message-ref")?;
/// loop {
///     server.recv_with(|msg| {
///         if msg.wants_reply() {
///             let sum: u32 = msg.payload().iter().map(|&b| u32::from(b)).sum();
///             msg.reply(&sum.to_le_bytes())
///         } else {
///             Ok(())
///         }
///     })??;
/// }
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct MessageRef<'a> {
    payload: &'a [u8],
    in_place: bool,
    peer: &'a Peer,
    reply_to: Option<ReplyTo<ReplyBackend<'a>>>,
    client: Option<&'a ClientHandle>,
    endpoint: &'a str,
    stamp: Option<Stamp>,
    deliveries: Option<u32>,
    /// Lent from a message its transport delivers again if its handler panics (see
    /// [`Message::give_back`]): its request is then not refused.
    gives_back: bool,
}

impl Drop for MessageRef<'_> {
    fn drop(&mut self) {
        if self.gives_back && std::thread::panicking() {
            if let Some(reply_to) = &mut self.reply_to {
                reply_to.answered = true;
            }
        }
    }
}

impl<'a> MessageRef<'a> {
    #[inline(always)]
    pub(crate) fn new(
        payload: &'a [u8],
        in_place: bool,
        peer: &'a Peer,
        reply_to: Option<ReplyTo<ReplyBackend<'a>>>,
        endpoint: &'a str,
    ) -> MessageRef<'a> {
        MessageRef {
            payload,
            in_place,
            peer,
            reply_to,
            client: None,
            endpoint,
            stamp: None,
            deliveries: None,
            gives_back: false,
        }
    }

    /// The message, from the client behind `client`: for a transport that pushes.
    #[inline(always)]
    #[allow(
        dead_code,
        reason = "the transports learn to push in the commits that follow"
    )]
    pub(crate) fn with_client(mut self, client: &'a ClientHandle) -> MessageRef<'a> {
        self.client = Some(client);
        self
    }

    /// The client that sent it, as [`Message::client`] says; clone the handle to keep it.
    pub fn client(&self) -> Option<&ClientHandle> {
        self.client
    }

    /// The level its writer gave it, as [`Message::level`] says.
    pub fn level(&self) -> Option<Level> {
        self.stamp.map(|stamp| stamp.level)
    }

    /// Its number in a broadcast stream, as [`Message::sequence`] says.
    pub fn sequence(&self) -> Option<u64> {
        self.stamp.map(|stamp| stamp.sequence)
    }

    /// Which delivery of the message this is, as [`Message::deliveries`] says.
    pub fn deliveries(&self) -> Option<u32> {
        self.deliveries
    }

    /// The bytes that were sent; on `shm`, where they lie in the sender's ring.
    pub fn payload(&self) -> &[u8] {
        self.payload
    }

    /// Whether the payload is read in place from shared memory rather than copied.
    pub fn is_in_place(&self) -> bool {
        self.in_place
    }

    /// Who sent it.
    pub fn peer(&self) -> &Peer {
        self.peer
    }

    /// Whether the sender waits for an answer that was not given yet, as
    /// [`Message::wants_reply`] says (true for every datagram over `udp` and `unixgram`).
    pub fn wants_reply(&self) -> bool {
        self.reply_to.is_some()
    }

    /// Answers the request, as [`Message::reply`] does.
    #[inline(always)]
    pub fn reply(&mut self, payload: &[u8]) -> Result<()> {
        take_reply_to(&mut self.reply_to, self.endpoint)?.answer(payload, true)
    }

    /// Refuses the request, as [`Message::refuse`] does.
    pub fn refuse(&mut self, reason: &str) -> Result<()> {
        take_reply_to(&mut self.reply_to, self.endpoint)?.answer(reason.as_bytes(), false)
    }

    /// Answers the request with a serde value, as [`Message::reply_value`] does.
    ///
    /// ```no_run
    /// let mut server = ipckit::listen("uds:///tmp/doc-lent-value.sock")?;
    /// server.recv_with(|msg| msg.reply_value(&(msg.payload().len() as u64, "bytes")))??;
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn reply_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let payload = crate::typed::encode(value, &self.endpoint)?;
        self.reply(&payload)
    }

    /// Decodes a payload sent with [`Client::send_value`](crate::Client::send_value), as
    /// [`Message::decode`] does.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        crate::typed::decode(self.payload, &self.endpoint)
    }

    /// The endpoint the message arrived on.
    pub fn endpoint(&self) -> &str {
        self.endpoint
    }
}

impl fmt::Debug for MessageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRef")
            .field("len", &self.payload.len())
            .field("peer", &self.peer)
            .field("wants_reply", &self.wants_reply())
            .finish()
    }
}

#[inline(always)]
fn take_reply_to<S: ReplySink>(
    reply_to: &mut Option<ReplyTo<S>>,
    endpoint: &str,
) -> Result<ReplyTo<S>> {
    reply_to.take().ok_or_else(|| Error::NoReplyExpected {
        endpoint: endpoint.to_owned(),
    })
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.payload().len())
            .field("peer", self.peer())
            .field("wants_reply", &self.wants_reply())
            .finish()
    }
}
