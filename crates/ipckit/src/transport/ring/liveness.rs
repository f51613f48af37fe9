//! Whether the other side still lives: how often a waiting side looks, and what it asks.
//! A process's exit is seen through its pidfd (`crate::sys::Process`); what "the other
//! side" is (a server, a client, a listener) is the transport's to say, through [`Link`].

use std::time::Duration;

use crate::error::Result;

/// How often a waiting side checks that its peer still lives.
pub const LIVENESS_INTERVAL: Duration = Duration::from_millis(200);

/// How often a sender that never waits checks that its peer still lives.
pub(crate) const LIVENESS_PROBE: Duration = Duration::from_millis(10);

/// What a sender or receiver needs to know about the other side.
pub(crate) trait Link {
    /// The endpoint, for errors.
    fn url(&self) -> &str;
    /// Err when the peer is gone or the connection was closed.
    fn check(&self) -> Result<()>;
}
