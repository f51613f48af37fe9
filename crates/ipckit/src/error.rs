//! The one error type of ipckit.
//!
//! Every variant carries the endpoint it concerns (as its URL) and its message says what
//! the user can do about it, so that a CLI can print it as the whole explanation.

use std::io;
use std::time::Duration;

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

    /// Nothing is listening at the endpoint.
    #[error("{endpoint}: nothing is listening there ({detail}); is its server running?")]
    NotFound {
        /// The endpoint's URL.
        endpoint: String,
        /// What the operating system said.
        detail: String,
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

    /// The operating system refused access.
    #[error(
        "{endpoint}: permission denied ({detail}); run as the endpoint's owner or have the server widen its mode (?mode=0660)"
    )]
    PermissionDenied {
        /// The endpoint's URL.
        endpoint: String,
        /// What was refused.
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
        "{endpoint}: the connection was closed ({detail}); check that the peer is still running, then reconnect"
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

impl Error {
    /// Maps an OS error from `op` at `endpoint` to the most telling variant.
    pub(crate) fn io(endpoint: impl ToString, op: &'static str, source: io::Error) -> Self {
        let endpoint = endpoint.to_string();
        let detail = format!("{op}: {source}");
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::NotFound { endpoint, detail }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { endpoint, detail },
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

    /// The URL of the endpoint the error concerns.
    pub fn endpoint(&self) -> &str {
        match self {
            Error::InvalidUrl { url, .. } => url,
            Error::NotFound { endpoint, .. }
            | Error::AddrInUse { endpoint, .. }
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
            | Error::Io { endpoint, .. } => endpoint,
        }
    }
}
