//! The one error type of ipckit.
//!
//! Every variant carries the endpoint it concerns (as its URL) and its message says what
//! the user can do about it, so that a CLI can print it as the whole explanation.
//!
//! The advice is for the side that met the error: a server that cannot start is told
//! where it may listen ([`Error::CannotListen`], or what it cannot create), a client
//! that finds nothing is told to start the server ([`Error::NotFound`]) or to ask its
//! owner for access. It names no command: the program around the library knows its own
//! (the `ipckit` CLI adds its hints, matching on the variant).

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::endpoint::{Address, Endpoint, UnixAddr};

/// A specialised `Result` for ipckit operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ipckit.
///
/// ```
/// let err = ipckit::connect("uds:///nonexistent/dir/app.sock").unwrap_err();
/// assert!(matches!(err, ipckit::Error::NotFound { .. }));
/// assert!(err.to_string().contains("uds:///nonexistent/dir/app.sock"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed; `reason` says which part is wrong.
    #[error("invalid endpoint '{url}': {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Which part is wrong and what a valid one looks like.
        reason: String,
    },

    /// Nothing is listening at the endpoint: a client's error (a server that cannot
    /// start where it was asked to fails with [`Error::CannotListen`]).
    #[error(
        "{endpoint}: nothing is listening there ({detail}); start the server first (a client given ?connect_timeout= waits for it)"
    )]
    NotFound {
        /// The endpoint's URL.
        endpoint: String,
        /// What the operating system said, and how long the client waited if it did.
        detail: String,
    },

    /// A server cannot listen at the endpoint: its directory does not exist, or the
    /// address is not one of this machine's. `reason` says which and what to do.
    #[error("{endpoint}: cannot listen there: {reason}")]
    CannotListen {
        /// The endpoint's URL.
        endpoint: String,
        /// What is wrong with the place, and what to choose instead.
        reason: String,
    },

    /// Another live server already owns the endpoint.
    #[error(
        "{endpoint}: the address is taken ({detail}); stop what holds it or choose another address"
    )]
    AddrInUse {
        /// The endpoint's URL.
        endpoint: String,
        /// What holds it.
        detail: String,
    },

    /// The operating system, or the server's access rule, refused access.
    #[error("{endpoint}: permission denied: {detail}")]
    PermissionDenied {
        /// The endpoint's URL.
        endpoint: String,
        /// What was refused, and what the side that failed can do about it: a client is
        /// told to have the server's owner admit it, a server where it may create its
        /// endpoint.
        detail: String,
    },

    /// A message is larger than the receiver accepts; nothing was sent.
    #[error(
        "{endpoint}: a message of {size} bytes exceeds {limit}, {max} bytes; nothing was sent (send less, or raise that limit)"
    )]
    MessageTooLarge {
        /// The endpoint's URL.
        endpoint: String,
        /// The size of the refused message.
        size: usize,
        /// The largest message that can go.
        max: usize,
        /// Which limit that is, e.g. "the server's max_message".
        limit: String,
    },

    /// No answer came in time.
    #[error(
        "{endpoint}: no answer within {after:?}; is the server busy or stuck? retry or allow a longer timeout"
    )]
    Timeout {
        /// The endpoint's URL.
        endpoint: String,
        /// How long was waited.
        after: Duration,
    },

    /// A queue or pipe stayed full for the whole send timeout; nothing was sent.
    #[error(
        "{endpoint}: {detail} stayed full for {after:?}; nothing was sent (is the receiver running and keeping up? ?send_timeout_ms= waits longer)"
    )]
    Full {
        /// The endpoint's URL.
        endpoint: String,
        /// What was full, and how much it holds.
        detail: String,
        /// How long the send waited.
        after: Duration,
    },

    /// The server took no more connections and said why (`reason`): it holds as many
    /// as it may (`?max_connections=`), or it is out of file descriptors.
    #[error("{endpoint}: the server refused the connection: {reason}")]
    Refused {
        /// The endpoint's URL.
        endpoint: String,
        /// The server's reason.
        reason: String,
    },

    /// The peer went away.
    #[error(
        "{endpoint}: the connection was closed ({detail}); is the peer still running? a client can connect again once its server is back"
    )]
    Disconnected {
        /// The endpoint's URL.
        endpoint: String,
        /// What was under way when it closed.
        detail: String,
    },

    /// The peer broke the wire protocol (docs/PROTOCOL.md).
    #[error("{endpoint}: protocol error: {reason}")]
    Protocol {
        /// The endpoint's URL.
        endpoint: String,
        /// The rule that was broken.
        reason: String,
    },

    /// The server answered a request with an error instead of a reply.
    #[error("{endpoint}: the server answered with an error: {reason}")]
    Remote {
        /// The endpoint's URL.
        endpoint: String,
        /// The server's explanation.
        reason: String,
    },

    /// The server was stopped through a [`Stopper`](crate::Stopper): its receiving calls
    /// end with this, and [`Server::incoming`](crate::Server::incoming) ends.
    #[error("{endpoint}: the server was stopped")]
    Stopped {
        /// The endpoint's URL.
        endpoint: String,
    },

    /// The operation is not available on this transport or endpoint.
    #[error("{endpoint}: {what}")]
    Unsupported {
        /// The endpoint's URL.
        endpoint: String,
        /// What is unavailable and what to use instead.
        what: String,
    },

    /// A typed message could not be encoded or decoded.
    #[error("{endpoint}: cannot {op} a typed message: {detail}; do both sides use the same type?")]
    Codec {
        /// The endpoint's URL.
        endpoint: String,
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// What the codec said.
        detail: String,
    },

    /// A contract call named an object the server does not host
    /// ([`contract`](mod@crate::contract)).
    #[error("{endpoint}: {}", unknown_object(object, served))]
    UnknownObject {
        /// The endpoint's URL.
        endpoint: String,
        /// The name asked for (empty when the call named none and the server hosts more
        /// than one object).
        object: String,
        /// The names the server hosts.
        served: Vec<String>,
    },

    /// A contract call named a method its object does not have: most often a client built
    /// from a newer version of the contract than its server's.
    #[error(
        "{endpoint}: the object '{object}' has no method '{method}' (it has: {}); the server may run an older version of the contract",
        methods.join(", ")
    )]
    UnknownMethod {
        /// The endpoint's URL.
        endpoint: String,
        /// The object called.
        object: String,
        /// The method asked for.
        method: String,
        /// The methods the object has.
        methods: Vec<String>,
    },

    /// A contract call's arguments did not decode as the method's: `detail` names what
    /// failed.
    #[error("{endpoint}: the arguments of '{method}' do not fit it: {detail}")]
    BadArguments {
        /// The endpoint's URL.
        endpoint: String,
        /// The method called.
        method: String,
        /// What the decoder said.
        detail: String,
    },

    /// The handler of a contract call panicked; the server caught it and serves on.
    #[error(
        "{endpoint}: the handler of '{method}' panicked: {detail}; the server survived, its log has more"
    )]
    Panicked {
        /// The endpoint's URL.
        endpoint: String,
        /// The method called.
        method: String,
        /// The panic's message.
        detail: String,
    },

    /// The message was already answered.
    #[error("{endpoint}: this message was already answered, or its sender expects no reply")]
    NoReplyExpected {
        /// The endpoint's URL.
        endpoint: String,
    },

    /// Any other operating-system error.
    #[error("{endpoint}: {op} failed: {source}")]
    Io {
        /// The endpoint's URL.
        endpoint: String,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// What an [`Error::UnknownObject`] says after its endpoint: a call that named no object
/// is told to name one.
fn unknown_object(object: &str, served: &[String]) -> String {
    let served = served.join(", ");
    if object.is_empty() {
        format!(
            "the call names no object and more than one is served there ({served}); add #NAME to the URL for one of them"
        )
    } else {
        format!(
            "no object named '{object}' is served there (served: {served}); connect to the endpoint with #NAME for one of them"
        )
    }
}

impl Error {
    /// Maps an OS error from `op` at `endpoint` to the most telling variant, with the
    /// advice for a client, or for a server already running. A server starting up uses
    /// [`Error::listen_io`], whose advice is a server's.
    pub(crate) fn io(endpoint: impl ToString, op: &'static str, source: io::Error) -> Self {
        let endpoint = endpoint.to_string();
        let detail = format!("{op}: {source}");
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::NotFound { endpoint, detail }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                endpoint,
                detail: format!(
                    "{detail}; ask the server's owner to widen its mode (?mode=0660), or, where its transport knows its peers (uds, unixgram), to admit this user (?allow_uid=)"
                ),
            },
            io::ErrorKind::AddrInUse => Error::AddrInUse { endpoint, detail },
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof => Error::Disconnected { endpoint, detail },
            _ => Error::Io {
                endpoint,
                op,
                source,
            },
        }
    }

    /// Maps an OS error from `op` while a server starts at `endpoint` to the most telling
    /// variant, with a server's advice: where it may listen instead, never that a server
    /// should be started.
    pub(crate) fn listen_io(endpoint: &Endpoint, op: &'static str, source: io::Error) -> Self {
        let url = endpoint.to_string();
        let path = match endpoint.address() {
            Address::Uds(UnixAddr::Path(path))
            | Address::Unixgram(UnixAddr::Path(path))
            | Address::Fifo(path)
            | Address::Spool(path) => Some(path.as_path()),
            _ => None,
        };
        let dir = path.map(|p| match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("/"),
        });
        let host_port = match endpoint.address() {
            Address::Tcp(at) | Address::Udp(at) => Some(at),
            _ => None,
        };
        match (source.kind(), path, dir) {
            (io::ErrorKind::NotFound, Some(_), Some(dir)) if !dir.exists() => Error::CannotListen {
                endpoint: url,
                reason: format!(
                    "the directory {} does not exist; create it or choose another path",
                    dir.display()
                ),
            },
            // A directory that exists and still says ENOENT makes no files (procfs).
            (io::ErrorKind::NotFound, Some(_), Some(_)) => Error::CannotListen {
                endpoint: url,
                reason: format!("{op}: {source}; choose a path in an ordinary directory"),
            },
            (io::ErrorKind::PermissionDenied, Some(path), Some(dir)) => Error::PermissionDenied {
                endpoint: url,
                detail: format!(
                    "the server cannot create {}: the directory {} is not writable by this user ({op}: {source}); choose a directory this user can write to",
                    path.display(),
                    dir.display()
                ),
            },
            (io::ErrorKind::PermissionDenied, None, _) => {
                let advice = match host_port {
                    Some(at) => format!(
                        "this user may not bind port {} (ports below 1024 need CAP_NET_BIND_SERVICE); choose a port from 1024 up",
                        at.port
                    ),
                    None => "it is held by another user; choose another name, or have its owner remove it".to_owned(),
                };
                Error::PermissionDenied {
                    endpoint: url,
                    detail: format!("{op}: {source}; {advice}"),
                }
            }
            (io::ErrorKind::AddrNotAvailable, _, _) if host_port.is_some() => {
                let host = host_port.map_or("", |at| at.bare_host());
                Error::CannotListen {
                    endpoint: url,
                    reason: format!(
                        "this machine has no address {host}; listen on 127.0.0.1 or an address of this host"
                    ),
                }
            }
            (io::ErrorKind::NotFound, _, _) => Error::CannotListen {
                endpoint: url,
                reason: format!("{op}: {source}"),
            },
            _ => Error::io(url, op, source),
        }
    }

    /// What went wrong, for another error of the same endpoint to carry as its detail
    /// (a connection broken by it, say), which names the endpoint itself: a
    /// [`Disconnected`](Error::Disconnected)'s own detail, or the text after the endpoint.
    pub(crate) fn as_detail(&self) -> String {
        if let Error::Disconnected { detail, .. } = self {
            return detail.clone();
        }
        let text = self.to_string();
        match text
            .strip_prefix(self.endpoint())
            .and_then(|t| t.strip_prefix(": "))
        {
            Some(rest) => rest.to_owned(),
            None => text,
        }
    }

    /// The URL of the endpoint the error concerns.
    pub fn endpoint(&self) -> &str {
        match self {
            Error::InvalidUrl { url, .. } => url,
            Error::NotFound { endpoint, .. }
            | Error::AddrInUse { endpoint, .. }
            | Error::CannotListen { endpoint, .. }
            | Error::PermissionDenied { endpoint, .. }
            | Error::MessageTooLarge { endpoint, .. }
            | Error::Timeout { endpoint, .. }
            | Error::Full { endpoint, .. }
            | Error::Refused { endpoint, .. }
            | Error::Disconnected { endpoint, .. }
            | Error::Protocol { endpoint, .. }
            | Error::Remote { endpoint, .. }
            | Error::Unsupported { endpoint, .. }
            | Error::Stopped { endpoint }
            | Error::Codec { endpoint, .. }
            | Error::NoReplyExpected { endpoint }
            | Error::UnknownObject { endpoint, .. }
            | Error::UnknownMethod { endpoint, .. }
            | Error::BadArguments { endpoint, .. }
            | Error::Panicked { endpoint, .. }
            | Error::Io { endpoint, .. } => endpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every variant, as the library makes them.
    fn every_variant() -> Vec<Error> {
        let at = "uds:///run/app.sock";
        let s = || at.to_owned();
        let ep: Endpoint = at.parse().unwrap();
        let os = |kind: io::ErrorKind| io::Error::new(kind, "what the OS said");
        let mut errors = vec![
            Error::InvalidUrl {
                url: s(),
                reason: "a reason".into(),
            },
            Error::MessageTooLarge {
                endpoint: s(),
                size: 2,
                max: 1,
                limit: "the server's max_message".into(),
            },
            Error::Timeout {
                endpoint: s(),
                after: Duration::from_secs(1),
            },
            Error::Full {
                endpoint: s(),
                detail: "the queue".into(),
                after: Duration::from_secs(1),
            },
            Error::Refused {
                endpoint: s(),
                reason: "a reason".into(),
            },
            Error::Protocol {
                endpoint: s(),
                reason: "a reason".into(),
            },
            Error::Remote {
                endpoint: s(),
                reason: "a reason".into(),
            },
            Error::Stopped { endpoint: s() },
            Error::Unsupported {
                endpoint: s(),
                what: "a reason".into(),
            },
            Error::Codec {
                endpoint: s(),
                op: "decode",
                detail: "a reason".into(),
            },
            Error::NoReplyExpected { endpoint: s() },
            Error::UnknownObject {
                endpoint: s(),
                object: "calculator".into(),
                served: vec!["logger".into()],
            },
            Error::UnknownMethod {
                endpoint: s(),
                object: "calculator".into(),
                method: "sub".into(),
                methods: vec!["add".into()],
            },
            Error::BadArguments {
                endpoint: s(),
                method: "add".into(),
                detail: "a reason".into(),
            },
            Error::Panicked {
                endpoint: s(),
                method: "add".into(),
                detail: "a reason".into(),
            },
        ];
        for kind in [
            io::ErrorKind::NotFound,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::AddrInUse,
            io::ErrorKind::AddrNotAvailable,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::Other,
        ] {
            errors.push(Error::io(&ep, "connecting", os(kind)));
            for server in [
                "uds:///nonexistent-dir/x.sock",
                "tcp://8.8.8.8:0",
                "mq://app",
            ] {
                errors.push(Error::listen_io(
                    &server.parse().unwrap(),
                    "binding",
                    os(kind),
                ));
            }
        }
        errors
    }

    #[test]
    fn no_error_tells_users_to_run_ipckit() {
        for error in every_variant() {
            let text = error.to_string();
            for command in ["ipckit listen", "`ipckit", "ipckit serve", "'ipckit"] {
                assert!(!text.contains(command), "{error:?} says: {text}");
            }
        }
    }

    #[test]
    fn every_error_names_its_endpoint_once() {
        for error in every_variant() {
            let text = error.to_string();
            let url = error.endpoint();
            assert_eq!(text.matches(url).count(), 1, "{error:?} says: {text}");
        }
    }

    #[test]
    fn an_error_carried_by_another_names_no_endpoint() {
        // An invalid URL never gets as far as a connection.
        let connected = every_variant()
            .into_iter()
            .filter(|e| !matches!(e, Error::InvalidUrl { .. }));
        for error in connected {
            let url = error.endpoint().to_owned();
            let debug = format!("{error:?}");
            let carried = Error::Disconnected {
                endpoint: url.clone(),
                detail: error.as_detail(),
            };
            let text = carried.to_string();
            assert_eq!(text.matches(&url).count(), 1, "{debug} carried: {text}");
        }
    }

    #[test]
    fn a_server_that_cannot_start_gets_a_servers_advice() {
        let missing: Endpoint = "uds:///nonexistent-dir/x.sock".parse().unwrap();
        let error = Error::listen_io(&missing, "binding", io::ErrorKind::NotFound.into());
        assert!(matches!(error, Error::CannotListen { .. }), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains(
                "the directory /nonexistent-dir does not exist; create it or choose another path"
            ),
            "{text}"
        );
        let elsewhere: Endpoint = "tcp://8.8.8.8:0".parse().unwrap();
        let text = Error::listen_io(
            &elsewhere,
            "binding",
            io::ErrorKind::AddrNotAvailable.into(),
        )
        .to_string();
        assert!(
            text.contains("this machine has no address 8.8.8.8; listen on 127.0.0.1"),
            "{text}"
        );
        let denied = Error::listen_io(&missing, "binding", io::ErrorKind::PermissionDenied.into())
            .to_string();
        assert!(
            denied.contains("the server cannot create /nonexistent-dir/x.sock")
                && !denied.contains("?mode"),
            "{denied}"
        );
        for text in [text, denied] {
            assert!(!text.contains("start the server"), "{text}");
        }
    }

    #[test]
    fn a_client_gets_a_clients_advice() {
        let ep: Endpoint = "uds:///run/app.sock".parse().unwrap();
        let missing = Error::io(&ep, "connecting", io::ErrorKind::NotFound.into()).to_string();
        assert!(missing.contains("start the server first"), "{missing}");
        let denied =
            Error::io(&ep, "connecting", io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(
            denied.contains("server's owner")
                && denied.contains("?mode=0660")
                && denied.contains("?allow_uid="),
            "{denied}"
        );
    }
}
