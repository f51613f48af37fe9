//! The client's side of the stream handshake, shared by the blocking and tokio clients.
//!
//! A client sends its hello and goes on without waiting for the welcome (docs/PROTOCOL.md):
//! a server greets connections only while it waits for messages, so a client that waited
//! would hang on a server whose thread is busy, or is the client's own. The welcome is
//! taken when it arrives, by whoever reads replies, or by a non-blocking read on each
//! call until it has come; after that, knowing it costs one atomic load.
//!
//! Until then a message is checked against the client's own limit. One that turns out
//! to exceed the server's is not delivered: the server closes the connection, with an
//! ERROR frame of id 0 that names its limit, and the client, which knows by then what
//! it sent, fails its next call saying so.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::endpoint::Framing;
use crate::error::{Error, Result};
use crate::frame::{Decoder, HELLO_LEN, STATUS_LINE, Violation, Welcome, may_open};
use crate::sys::lock;
use crate::transport::stream::{check_outgoing, turned_away};

/// Why a connection's handshake failed; every later call reports it.
#[derive(Clone, Debug)]
pub(super) enum Unwelcome {
    /// A refusal welcome, with its status and reason.
    TurnedAway { status: u8, reason: Vec<u8> },
    /// A welcome this side cannot take, or bytes that are no welcome.
    Protocol(String),
    /// The connection ended before the welcome, or because of what was sent before it.
    Closed(String),
}

impl Unwelcome {
    fn error(&self, url: &str) -> Error {
        match self {
            Unwelcome::TurnedAway { status, reason } if *status == STATUS_LINE => Error::Protocol {
                endpoint: url.to_owned(),
                reason: format!(
                    "the server does not speak the ipckit handshake: {}",
                    String::from_utf8_lossy(reason)
                ),
            },
            Unwelcome::TurnedAway { status, reason } => turned_away(url, *status, reason),
            Unwelcome::Protocol(reason) => Error::Protocol {
                endpoint: url.to_owned(),
                reason: reason.clone(),
            },
            Unwelcome::Closed(detail) => Error::Disconnected {
                endpoint: url.to_owned(),
                detail: detail.clone(),
            },
        }
    }
}

/// What a client knows of its server's welcome.
pub(super) struct Greeting {
    framing: Framing,
    own_max: usize,
    /// The server's limit once welcomed; the client's own until then.
    peer_max: AtomicUsize,
    /// The welcome came and accepted the client: the only state calls look at once set.
    welcomed: AtomicBool,
    /// Set before `welcomed`, or instead of it.
    failed: OnceLock<Unwelcome>,
    /// The largest message written before the welcome came. Recorded and compared under
    /// this lock, so that a message is either counted here or checked against the
    /// server's limit, never neither.
    sent_before: Mutex<usize>,
}

impl Greeting {
    /// The greeting of a connection that has sent its hello (with line framing there is
    /// none to wait for).
    pub(super) fn new(framing: Framing, own_max: usize) -> Greeting {
        Greeting {
            framing,
            own_max,
            peer_max: AtomicUsize::new(own_max),
            welcomed: AtomicBool::new(framing == Framing::Line),
            failed: OnceLock::new(),
            sent_before: Mutex::new(0),
        }
    }

    /// Whether the welcome has come and accepted this client.
    pub(super) fn known(&self) -> bool {
        self.welcomed.load(Ordering::Acquire)
    }

    /// The largest message that may be sent now.
    pub(super) fn limit(&self) -> usize {
        self.peer_max.load(Ordering::Acquire)
    }

    /// The handshake's failure, as the error every call reports.
    pub(super) fn failure(&self, url: &str) -> Option<Error> {
        self.failed.get().map(|f| f.error(url))
    }

    fn fail(&self, url: &str, why: Unwelcome) -> Error {
        let _ = self.failed.set(why);
        self.failure(url).expect("just set")
    }

    /// Before `payload` is written: the handshake's failure, if any, or a payload larger
    /// than may be sent; else, before the welcome, the payload is counted.
    pub(super) fn before_send(&self, url: &str, payload: &[u8]) -> Result<()> {
        if self.known() {
            return check_outgoing(url, self.framing, payload, self.limit());
        }
        let mut sent_before = lock(&self.sent_before);
        if let Some(e) = self.failure(url) {
            return Err(e);
        }
        if self.known() {
            drop(sent_before);
            return check_outgoing(url, self.framing, payload, self.limit());
        }
        if payload.len() > self.own_max {
            return Err(Error::MessageTooLarge {
                endpoint: url.to_owned(),
                size: payload.len(),
                max: self.own_max,
                limit: "this client's max_message (the server's limit is not known yet)".into(),
            });
        }
        *sent_before = (*sent_before).max(payload.len());
        Ok(())
    }

    /// Takes the welcome from the first bytes `decoder` holds: `Ok(true)` once known,
    /// `Ok(false)` while more bytes are needed, the failure otherwise. Bytes that cannot
    /// begin a welcome fail at once.
    pub(super) fn take(&self, url: &str, decoder: &mut Decoder) -> Result<bool> {
        if self.known() {
            return Ok(true);
        }
        if let Some(e) = self.failure(url) {
            return Err(e);
        }
        let opening = decoder.peek();
        if !may_open(opening) {
            let first = opening[..opening.len().min(HELLO_LEN)].to_vec();
            return Err(self.fail(
                url,
                Unwelcome::Protocol(Violation::NotWelcome(first).to_string()),
            ));
        }
        let Some(bytes) = opening.get(..HELLO_LEN) else {
            return Ok(false);
        };
        let bytes: [u8; HELLO_LEN] = bytes.try_into().expect("HELLO_LEN bytes");
        if let Some((status, len)) = Welcome::refused(&bytes) {
            if opening.len() < HELLO_LEN + len {
                return Ok(false); // The reason is on its way, written with the welcome.
            }
            decoder.take_exact::<HELLO_LEN>();
            let reason = decoder.take_available(len);
            return Err(self.fail(url, Unwelcome::TurnedAway { status, reason }));
        }
        decoder.take_exact::<HELLO_LEN>();
        if bytes == crate::frame::Hello::new(self.own_max).encode() {
            // An echo server (`socat … SYSTEM:cat`) sends the hello back, which reads as
            // a welcome declining every version.
            return Err(self.fail(
                url,
                Unwelcome::Protocol(
                    "the peer sent this client's own hello back: it echoes what it is sent and does not speak the ipckit handshake; if it is a plain socket, add ?framing=line to the URL".into(),
                ),
            ));
        }
        let welcome = match Welcome::decode(&bytes) {
            Ok(welcome) => welcome,
            Err(v) => return Err(self.fail(url, Unwelcome::Protocol(v.to_string()))),
        };
        let server_max = welcome.max_message as usize;
        let sent_before = lock(&self.sent_before);
        if *sent_before > server_max {
            return Err(self.fail(
                url,
                Unwelcome::Closed(format!(
                    "a message of {} bytes, sent before the server's welcome, exceeds its limit of {server_max} bytes (its max_message), so the server ended the connection; send less, or raise ?max_message= on the server",
                    *sent_before
                )),
            ));
        }
        self.peer_max.store(server_max, Ordering::Release);
        self.welcomed.store(true, Ordering::Release);
        Ok(true)
    }

    /// The failure of a connection that ended before its welcome was whole: a refusal
    /// whose reason was cut short, or no welcome at all.
    pub(super) fn ended(&self, url: &str, decoder: &mut Decoder) -> Error {
        if let Some(e) = self.failure(url) {
            return e;
        }
        if let Some(bytes) = decoder.take_exact::<HELLO_LEN>() {
            if let Some((status, len)) = Welcome::refused(&bytes) {
                let reason = decoder.take_available(len);
                return self.fail(url, Unwelcome::TurnedAway { status, reason });
            }
        }
        self.fail(
            url,
            Unwelcome::Closed(
                "the server closed it without an ipckit welcome; if it does not speak the ipckit handshake (a ?framing=line listener, a plain socket), add ?framing=line to the URL".into(),
            ),
        )
    }

    /// The error of a call that waited `after` for an answer: a server that never
    /// welcomed the client is told apart from one that did and then did not answer.
    pub(super) fn timed_out(&self, url: &str, after: Duration) -> Error {
        if let Some(e) = self.failure(url) {
            return e;
        }
        if self.known() {
            return Error::Timeout {
                endpoint: url.to_owned(),
                after,
            };
        }
        Error::Protocol {
            endpoint: url.to_owned(),
            reason: format!(
                "no ipckit welcome came within {after:?}: the peer may not speak the ipckit handshake (a ?framing=line listener or a plain socket: add ?framing=line to the URL), or its server has not taken the connection yet"
            ),
        }
    }

    /// The error for a failed hello or write, which may have met a server that wrote a
    /// refusal and closed: the refusal, if `decoder` holds it.
    pub(super) fn refusal_or(&self, url: &str, decoder: &mut Decoder, e: Error) -> Error {
        match self.take(url, decoder) {
            Err(refusal) => refusal,
            Ok(_) => e,
        }
    }
}

/// How long a closing TCP client waits for a welcome that has not come.
const CLOSING_WAIT: Duration = Duration::from_secs(1);

/// Reads and drops what the server sent and the client did not read (a welcome, most
/// often), before the socket is closed: over TCP, closing with unread bytes, or being
/// sent a welcome once closed, resets the connection, and the reset discards what the
/// client wrote and the server has not read. So a TCP client whose welcome has not come
/// ends its writing (the server reads all of it, then the end) and waits a little for
/// the welcome before it closes.
pub(super) fn drain_before_close(fd: std::os::fd::BorrowedFd<'_>, tcp_unwelcomed: bool) {
    let deadline = tcp_unwelcomed.then(|| {
        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Write);
        std::time::Instant::now() + CLOSING_WAIT
    });
    let mut scratch = [0u8; 1024];
    for _ in 0..64 {
        match rustix::net::recv(fd, &mut scratch, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) if n > 0 => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) if deadline.is_some() => {
                if !matches!(
                    crate::sys::wait_ready(fd, rustix::event::PollFlags::IN, deadline),
                    Ok(true)
                ) {
                    return;
                }
            }
            _ => return,
        }
    }
}
