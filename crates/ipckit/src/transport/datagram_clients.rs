//! Who a datagram server's clients are, so that it can push to them: a connectionless
//! socket learns its clients from what they send (docs/PROTOCOL.md, *Datagrams*).
//!
//! An ipckit client says [`HELLO`] from its home socket when it connects (the socket its
//! one-way messages leave from, and pushes reach), [`ALSO`] from each request socket it
//! makes, with the same 8-byte token, and [`BYE`] from each socket it closes. A datagram
//! from an address nobody introduced (a foreign program: socat, a script) makes that
//! address a client of its own, whose home is that address. A client leaves when it says
//! goodbye, when a push finds its socket gone, or when the server forgets it
//! ([`ClientHandle::disconnect`]); the server then says [`BYE`] to it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::net::{SendFlags, SocketAddrAny, UCred};

use super::datagram::{BYE, DatagramSink, Family, PUSHED};
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
    /// Whether this is the client's home (where pushes go) rather than a request socket.
    home: bool,
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
        }
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
        if self.by_addr.get(from).is_some_and(|k| k.current(creds)) {
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
        let known = self.known(from, creds, client.clone(), false);
        self.by_addr.insert(from.clone(), known);
    }

    /// Someone said goodbye from `from`: the client that left, if this was its home and
    /// the server had not already reported it gone.
    pub(super) fn bye(&mut self, from: &SocketAddrAny) -> Option<ClientHandle> {
        let known = self.by_addr.remove(from)?;
        if self.last.as_ref().is_some_and(|(addr, _)| addr == from) {
            self.last = None;
        }
        if !known.home {
            return None;
        }
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
            }
        }
        let peer = Arc::new(self.family.peer(Some(from), creds));
        let outbox = Arc::new(DatagramOutbox {
            fd: self.fd.clone(),
            to: from.clone(),
            url: self.url.clone(),
            max: self.max.saturating_sub(PUSHED.len()),
            closed: AtomicBool::new(false),
        });
        let client = self.roster.join(peer, outbox);
        if let Some(token) = token {
            self.by_token.insert(token, client.clone());
        }
        let known = self.known(from, creds, client, true);
        self.by_addr.insert(from.clone(), known.clone());
        self.last = Some((from.clone(), known.clone()));
        known
    }

    fn known(
        &self,
        from: &SocketAddrAny,
        creds: Option<UCred>,
        client: ClientHandle,
        home: bool,
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
        for (addr, known) in &self.by_addr {
            if known.home && known.client.is_connected() {
                let _ = rustix::net::sendto(
                    &*self.fd,
                    BYE,
                    SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                    addr,
                );
            }
        }
    }
}

/// The way to one client's home socket.
struct DatagramOutbox {
    fd: Arc<OwnedFd>,
    to: SocketAddrAny,
    url: Arc<str>,
    /// The largest push: a datagram less the mark.
    max: usize,
    closed: AtomicBool,
}

impl DatagramOutbox {
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
        if payload.len() > self.max {
            return Err(Error::MessageTooLarge {
                endpoint: self.url.to_string(),
                size: payload.len(),
                max: self.max,
                limit: "the largest datagram this endpoint carries, less the 8-byte push mark"
                    .into(),
            });
        }
        let mut deadline = None::<Instant>;
        let mut backoff = Duration::from_micros(20);
        loop {
            let sent = rustix::net::sendmsg_addr(
                &*self.fd,
                &self.to,
                &[
                    std::io::IoSlice::new(PUSHED),
                    std::io::IoSlice::new(payload),
                ],
                &mut rustix::net::SendAncillaryBuffer::default(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            );
            match sent {
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
                    std::thread::sleep(backoff.min(deadline - now));
                    backoff = (backoff * 2).min(MOST_BACKOFF);
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
            // Best effort: tells the client's `recv` that this server is done with it.
            let _ = rustix::net::sendto(
                &*self.fd,
                BYE,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                &self.to,
            );
        }
    }
}
