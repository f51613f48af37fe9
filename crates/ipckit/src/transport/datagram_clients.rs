//! Who a datagram server's clients are, so that it can push to them: a connectionless
//! socket learns its clients from what they send (docs/PROTOCOL.md, *Datagrams*).
//!
//! An ipckit client says [`HELLO`] from its home socket when it connects (where pushes
//! reach it), [`ALSO`] from the socket its one-way messages leave from and from each
//! request socket it makes, with the same 8-byte token, and [`BYE`] from each socket it
//! closes. A datagram from an address nobody introduced (a foreign program: socat, a
//! script) makes that address a client of its own, whose home is that address. A client
//! leaves when it says goodbye, when a push finds its socket gone, or when the server
//! forgets it ([`ClientHandle::disconnect`]); the server then says [`BYE`] to it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::net::{SendFlags, SocketAddrAny, UCred};

use super::datagram::{BYE, DatagramSink, ESCAPED, Family, HELLO, PUSHED, RESERVED};
use crate::error::{Error, Result};
use crate::message::Peer;
use crate::push::{ClientHandle, Outbox, Roster};

/// The longest a full client's push sleeps between tries: the kernel does not wake a
/// sender waiting on an unconnected datagram socket when the receiver reads (module docs
/// of `unixgram`), so a push polls for room.
const MOST_BACKOFF: Duration = Duration::from_millis(2);

/// One address a client sends from.
pub(super) struct Known {
    creds: Option<UCred>,
    pub(super) peer: Arc<Peer>,
    pub(super) sink: Arc<DatagramSink>,
    pub(super) client: ClientHandle,
    /// The way to the client, on its home's entry (where pushes go); `None` on a request
    /// socket's.
    home: Option<Arc<DatagramOutbox>>,
}

impl Known {
    /// Still the same sender, and a client the server has not forgotten.
    fn current(&self, creds: Option<UCred>) -> bool {
        self.creds == creds && self.client.is_connected()
    }
}

/// The clients of one datagram server.
pub(super) struct Clients {
    roster: Arc<Roster>,
    fd: Arc<OwnedFd>,
    url: Arc<str>,
    max: usize,
    family: Arc<dyn Family>,
    by_addr: HashMap<SocketAddrAny, Arc<Known>>,
    by_token: HashMap<[u8; 8], ClientHandle>,
    /// The last sender: a client sending in a loop costs no hashing.
    last: Option<(SocketAddrAny, Arc<Known>)>,
    /// Clients whose address a new one took over (a crashed client's port or autobound
    /// name, reused), for the server's loop to report gone.
    replaced: Vec<ClientHandle>,
}

impl Clients {
    pub(super) fn new(
        roster: Arc<Roster>,
        fd: Arc<OwnedFd>,
        url: Arc<str>,
        max: usize,
        family: Arc<dyn Family>,
    ) -> Clients {
        Clients {
            roster,
            fd,
            url,
            max,
            family,
            by_addr: HashMap::new(),
            by_token: HashMap::new(),
            last: None,
            replaced: Vec::new(),
        }
    }

    /// A client whose address a new one took over, to report gone.
    #[inline]
    pub(super) fn take_replaced(&mut self) -> Option<ClientHandle> {
        self.replaced.pop()
    }

    pub(super) fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    /// The client sending from `from`; a client that joined with this datagram as well
    /// (an address nobody introduced is a client of its own).
    #[inline]
    pub(super) fn sender(
        &mut self,
        from: &SocketAddrAny,
        creds: Option<UCred>,
    ) -> (Arc<Known>, Option<ClientHandle>) {
        if let Some((addr, known)) = &self.last {
            if addr == from && known.current(creds) {
                return (known.clone(), None);
            }
        }
        if let Some(known) = self.by_addr.get(from) {
            if known.current(creds) {
                let known = known.clone();
                self.last = Some((from.clone(), known.clone()));
                return (known, None);
            }
        }
        let known = self.join(from, creds, None);
        let joined = known.client.clone();
        (known, Some(joined))
    }

    /// A client said hello from its home `from`: its handle, unless it had already.
    pub(super) fn hello(
        &mut self,
        from: &SocketAddrAny,
        creds: Option<UCred>,
        token: [u8; 8],
    ) -> Option<ClientHandle> {
        // The same hello again; another token from the same address is a new client in a
        // crashed one's place.
        let said = self.by_token.get(&token);
        if self
            .by_addr
            .get(from)
            .is_some_and(|k| k.current(creds) && said == Some(&k.client))
        {
            return None;
        }
        Some(self.join(from, creds, Some(token)).client.clone())
    }

    /// A request socket of the client with `token` introduced itself.
    pub(super) fn also(&mut self, from: &SocketAddrAny, creds: Option<UCred>, token: [u8; 8]) {
        // An unknown token (its hello lost, over udp) leaves the address to be met as a
        // stranger's by its first message.
        let Some(client) = self.by_token.get(&token).filter(|c| c.is_connected()) else {
            return;
        };
        let known = self.known(from, creds, client.clone(), None);
        self.by_addr.insert(from.clone(), known);
    }

    /// Someone said goodbye from `from`: the client that left, if this was its home and
    /// the server had not already reported it gone.
    pub(super) fn bye(&mut self, from: &SocketAddrAny) -> Option<ClientHandle> {
        let known = self.by_addr.remove(from)?;
        if self.last.as_ref().is_some_and(|(addr, _)| addr == from) {
            self.last = None;
        }
        // A request socket's goodbye: the client stays.
        known.home.as_ref()?;
        let client = known.client.clone();
        self.forget(&client);
        self.roster.leave(&client).then_some(client)
    }

    fn forget(&mut self, client: &ClientHandle) {
        self.by_addr.retain(|_, k| k.client != *client);
        self.by_token.retain(|_, c| c != client);
        self.last = None;
    }

    fn join(
        &mut self,
        from: &SocketAddrAny,
        creds: Option<UCred>,
        token: Option<[u8; 8]>,
    ) -> Arc<Known> {
        // A client the server forgot, or whose address a new socket took over.
        if let Some(stale) = self.by_addr.get(from).map(|k| k.client.clone()) {
            self.forget(&stale);
            if self.roster.leave(&stale) {
                log::debug!("{}: {from:?} is another client now", self.url);
                self.replaced.push(stale);
            }
        }
        let peer = Arc::new(self.family.peer(Some(from), creds));
        // A client that introduced itself takes pushes from a socket of its own, where the
        // family has them; a stranger, from the server's socket.
        let own = token.and_then(|_| self.family.push_socket(from));
        let via = match own {
            Some(fd) => Via::Own(fd),
            None => Via::Shared(self.fd.clone(), from.clone()),
        };
        let outbox = Arc::new(DatagramOutbox {
            via,
            url: self.url.clone(),
            max: self.max,
            closed: AtomicBool::new(false),
        });
        if let (Some(token), Via::Own(fd)) = (token, &outbox.via) {
            // The welcome names the push socket to the client, which takes pushes from
            // nowhere else; it carries the token, which strangers do not know.
            let mut welcome = [0; 16];
            welcome[..8].copy_from_slice(HELLO);
            welcome[8..].copy_from_slice(&token);
            let _ = rustix::net::send(fd, &welcome, SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
        }
        let client = self.roster.join(peer, outbox.clone());
        if let Some(token) = token {
            self.by_token.insert(token, client.clone());
        }
        let known = self.known(from, creds, client, Some(outbox));
        self.by_addr.insert(from.clone(), known.clone());
        self.last = Some((from.clone(), known.clone()));
        known
    }

    fn known(
        &self,
        from: &SocketAddrAny,
        creds: Option<UCred>,
        client: ClientHandle,
        home: Option<Arc<DatagramOutbox>>,
    ) -> Arc<Known> {
        Arc::new(Known {
            creds,
            peer: Arc::new(self.family.peer(Some(from), creds)),
            sink: Arc::new(DatagramSink::new(
                self.fd.clone(),
                from.clone(),
                self.url.clone(),
                self.max,
            )),
            client,
            home,
        })
    }
}

impl Drop for Clients {
    /// Says goodbye to every client still here, so that their `recv` ends.
    fn drop(&mut self) {
        for known in self.by_addr.values() {
            if let Some(outbox) = &known.home {
                if known.client.is_connected() {
                    outbox.say_bye();
                }
            }
        }
    }
}

/// The way to one client's home socket.
pub(super) struct DatagramOutbox {
    via: Via,
    url: Arc<str>,
    /// The largest datagram, mark included.
    max: usize,
    closed: AtomicBool,
}

/// Which socket pushes leave from.
enum Via {
    /// A socket of the server's own for this client, connected to its home: the client's
    /// queue is bounded by this socket's send buffer alone, and `poll` says when it has
    /// room.
    Own(OwnedFd),
    /// The server's socket, to the client's address: the kernel does not wake a sender
    /// waiting on an unconnected datagram socket when the receiver reads, so a full
    /// client is tried again after a pause.
    Shared(Arc<OwnedFd>, SocketAddrAny),
}

impl Via {
    /// What goes before `payload`: from a socket of the client's own, everything is a
    /// push, so only a payload the client would read as a mark is escaped (as a reply
    /// is), and a push carries as much as any datagram; from the server's socket, the
    /// push mark tells it from a reply.
    #[inline]
    fn marker(&self, payload: &[u8]) -> &'static [u8] {
        match self {
            Via::Own(_) if payload.starts_with(RESERVED) => ESCAPED,
            Via::Own(_) => &[],
            Via::Shared(..) => PUSHED,
        }
    }

    fn send(&self, payload: &[u8]) -> rustix::io::Result<usize> {
        let marker = self.marker(payload);
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        if marker.is_empty() {
            if let Via::Own(fd) = self {
                return rustix::net::send(fd, payload, flags);
            }
        }
        let iov = [
            std::io::IoSlice::new(marker),
            std::io::IoSlice::new(payload),
        ];
        let control = &mut rustix::net::SendAncillaryBuffer::default();
        match self {
            Via::Own(fd) => rustix::net::sendmsg(fd, &iov, control, flags),
            Via::Shared(fd, to) => rustix::net::sendmsg_addr(&**fd, to, &iov, control, flags),
        }
    }
}

impl DatagramOutbox {
    /// Tells the client this server is done with it, best effort.
    fn say_bye(&self) {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        let _ = match &self.via {
            Via::Own(fd) => rustix::net::send(fd, BYE, flags),
            Via::Shared(fd, to) => rustix::net::sendto(&**fd, BYE, flags, to),
        };
    }

    fn gone(&self, why: impl std::fmt::Display) -> Error {
        Error::Disconnected {
            endpoint: self.url.to_string(),
            detail: format!("pushing to the client: {why}; it has gone"),
        }
    }
}

impl Outbox for DatagramOutbox {
    fn push(&self, payload: &[u8], patience: Duration) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.gone("the server disconnected it"));
        }
        let marker = self.via.marker(payload);
        if payload.len() + marker.len() > self.max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.to_string(),
                size: payload.len(),
                max: self.max - marker.len(),
                limit: match marker.is_empty() {
                    true => "the largest datagram this endpoint carries".into(),
                    false => "the largest datagram this endpoint carries, less the 8-byte mark this push needs".into(),
                },
            });
        }
        let mut deadline = None::<Instant>;
        let mut backoff = Duration::from_micros(20);
        loop {
            match self.via.send(payload) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + patience);
                    if now >= deadline {
                        return Err(Error::Full {
                            endpoint: self.url.to_string(),
                            detail: "the client's receive queue".into(),
                            after: patience,
                        });
                    }
                    match &self.via {
                        Via::Own(fd) => {
                            let flags = rustix::event::PollFlags::OUT;
                            crate::sys::wait_ready(fd.as_fd(), flags, Some(deadline))
                                .map_err(|e| Error::io(&*self.url, "waiting for room", e))?;
                        }
                        Via::Shared(..) => {
                            std::thread::sleep(backoff.min(deadline - now));
                            backoff = (backoff * 2).min(MOST_BACKOFF);
                        }
                    }
                }
                // The client's socket is closed (unixgram: its name is unbound, or its
                // file removed; udp: an ICMP port unreachable came back for it).
                Err(
                    e @ (rustix::io::Errno::CONNREFUSED
                    | rustix::io::Errno::NOENT
                    | rustix::io::Errno::CONNRESET),
                ) => return Err(self.gone(e)),
                Err(e) => return Err(Error::io(&*self.url, "pushing to a client", e.into())),
            }
        }
    }

    fn disconnect(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.say_bye();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;

    struct NoFamily;

    impl Family for NoFamily {
        fn client_socket(&self, _: &Endpoint) -> Result<OwnedFd> {
            unreachable!()
        }
        fn peer(&self, _: Option<&SocketAddrAny>, _: Option<UCred>) -> Peer {
            Peer::default()
        }
    }

    /// A client that says hello from an address another client still holds (a crashed
    /// one's port, reused) is a new client, and the one it replaced is reported gone; the
    /// same hello again is nothing new.
    #[test]
    fn a_new_hello_from_a_known_address_replaces_its_client() {
        let endpoint: Endpoint = "udp://127.0.0.1:9".parse().unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = SocketAddrAny::from(socket.local_addr().unwrap());
        let mut clients = Clients::new(
            Roster::new(&endpoint),
            Arc::new(socket.into()),
            "udp://127.0.0.1:9".into(),
            100,
            Arc::new(NoFamily),
        );
        let first = clients.hello(&from, None, [1; 8]).expect("a new client");
        assert_eq!(clients.hello(&from, None, [1; 8]), None);
        assert_eq!(clients.take_replaced(), None);
        let second = clients.hello(&from, None, [2; 8]).expect("another client");
        assert_ne!(first, second);
        assert_eq!(clients.take_replaced(), Some(first.clone()));
        assert!(!first.is_connected());
        assert_eq!(clients.roster().clients(), [second]);
    }
}
