//! Endpoint URLs: `uds:///run/app.sock`, `tcp://127.0.0.1:7000`, `shm://app`, …
//!
//! Parsing accepts only the canonical spelling of each form, so that printing a parsed
//! endpoint gives back exactly the string it came from. Where a spelling is valid but not
//! canonical (a port with a leading zero, a needless `%41` escape) the error says which
//! spelling to use instead.
//!
//! Every form and option, with its default, is in [the crate's endpoint
//! table](crate#endpoints).

use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The default and most common limit on one message: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The longest name `mq://` and `shm://` accept: NAME_MAX (255) less the room
/// ipckit needs for the suffixes it derives from a name (reply queues, per-client rings).
pub const MAX_NAME_LEN: usize = 200;

/// The most clients a `shm://` server takes (`?clients=`).
pub const MAX_SHM_CLIENTS: usize = 4096;
/// The most connections a `uds://` or `tcp://` server may be told to hold
/// (`?max_connections=`).
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// How many connections a `uds://` or `tcp://` server holds unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The smallest `shm://` ring (`?ring=`): the largest page size Linux uses.
pub const MIN_SHM_RING: usize = 64 * 1024;
/// The largest `shm://` ring.
pub const MAX_SHM_RING: usize = 1 << 30;

/// The smallest `events://` ring (`?ring=`): a page.
pub const MIN_EVENTS_RING: usize = 4 * 1024;
/// The most listeners an `events://` segment holds at once (`?listeners=`): each level's
/// count of listeners is a 10-bit field of one shared word.
pub const MAX_EVENTS_LISTENERS: usize = 1023;

/// A parsed endpoint URL.
///
/// ```
/// use ipckit::Endpoint;
/// let ep: Endpoint = "uds:///tmp/app.sock?framing=line".parse()?;
/// assert_eq!(ep.scheme(), "uds");
/// assert_eq!(ep.framing(), ipckit::Framing::Line);
/// assert_eq!(ep.to_string(), "uds:///tmp/app.sock?framing=line");
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    address: Address,
    params: Vec<(Param, String)>,
    object: Option<String>,
}

/// Where an endpoint is: one variant per transport.
///
/// ```
/// use ipckit::endpoint::{Address, UnixAddr};
/// let ep: ipckit::Endpoint = "uds://@app".parse()?;
/// assert_eq!(ep.address(), &Address::Uds(UnixAddr::Abstract("app".into())));
/// # Ok::<(), ipckit::Error>(())
/// ```
/// The URL forms of the transports still to come (`dbus`, `x11`, `ws`, `nats`) parse
/// already, into variants hidden here until their transport is built; connecting to one
/// fails with [`Error::Unsupported`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// `uds:///path` or `uds://@abstract`: an AF_UNIX stream socket.
    Uds(UnixAddr),
    /// `tcp://host:port`: TCP, loopback unless `?public=true`.
    Tcp(HostPort),
    /// `udp://host:port`: UDP datagrams.
    Udp(HostPort),
    /// `unixgram:///path` or `unixgram://@abstract`: AF_UNIX datagram sockets.
    Unixgram(UnixAddr),
    /// `fifo:///path`: a named pipe made by mkfifo.
    Fifo(PathBuf),
    /// `mq://name`: a POSIX message queue.
    Mq(String),
    /// `shm://name`: a shared-memory segment with rings.
    Shm(String),
    /// `events://name`: a one-to-many broadcast ring in shared memory.
    Events(String),
    /// `spool:///dir`: a Maildir-style spool directory.
    Spool(PathBuf),
    /// `dbus://session/org.example.App`: a well-known name on a D-Bus bus.
    #[doc(hidden)]
    Dbus {
        /// Which bus.
        bus: Bus,
        /// The well-known bus name.
        name: String,
    },
    /// `x11://Window%20Title`: an X11 window found by its title.
    #[doc(hidden)]
    X11(String),
    /// `ws://host:port/path`: a WebSocket.
    #[doc(hidden)]
    Ws {
        /// Where the server listens.
        at: HostPort,
        /// The path of the WebSocket, starting with `/`.
        path: String,
    },
    /// `nats://host:port/subject`: a subject on a NATS server.
    #[doc(hidden)]
    Nats {
        /// Where the NATS server listens.
        at: HostPort,
        /// The subject.
        subject: String,
    },
}

/// An AF_UNIX address: a filesystem path or a Linux abstract name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    /// A socket file.
    Path(PathBuf),
    /// A name in the Linux abstract namespace (no file; written `@name`).
    Abstract(String),
}

/// A host and a port, as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// An IPv4 literal, a bracketed IPv6 literal, or a host name.
    pub host: String,
    /// The port; 0 asks the kernel for a free one when listening.
    pub port: u16,
}

/// A D-Bus bus, for the `dbus` transport still to come.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bus {
    /// The user's session bus.
    Session,
    /// The system bus.
    System,
}

/// How a byte stream (`uds`, `tcp`) or a FIFO (`fifo`) cuts its bytes into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Framing {
    /// ipckit's length-prefixed frames with a handshake (docs/PROTOCOL.md).
    #[default]
    Length,
    /// One message per `\n`-terminated line, no handshake: for socat, nc and shells.
    Line,
}

/// What a broadcast does to a client whose outbox is full (`?overflow=`), as ZeroMQ's
/// PUB socket at its high-water mark: a broadcast never waits for one slow client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Skips that client for this message and counts the drop (the default).
    #[default]
    Drop,
    /// Disconnects that client: it learns it missed messages by losing its connection.
    Disconnect,
    /// Makes writers wait for the slowest live listener (`events` alone): back-pressure
    /// instead of loss.
    Block,
}

/// When a `spool` receiver acknowledges a message, deleting it for good (`?ack=`).
///
/// ```
/// use ipckit::endpoint::Ack;
/// let ep: ipckit::Endpoint = "spool:///var/spool/app?ack=done".parse()?;
/// assert_eq!(ep.ack(), Ack::Done);
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Ack {
    /// As `recv` returns it (the default): a receiver killed while handling a message
    /// loses that one message.
    #[default]
    Recv,
    /// Once the application is done with it (the [`Message`](crate::Message) is dropped,
    /// or the `recv_with` handler returns): a receiver killed while handling a message
    /// leaves it to be delivered again, up to `?max_deliveries=` times.
    Done,
}

/// The most times `?max_deliveries=` lets one message be claimed.
pub const MAX_DELIVERIES: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Param {
    Framing,
    Mode,
    MaxMessage,
    Public,
    Priority,
    SendTimeoutMs,
    Clients,
    Ring,
    AllowUid,
    AllowGid,
    HandshakeTimeoutMs,
    FrameTimeoutMs,
    MaxConnections,
    ConnectTimeout,
    Outbox,
    Overflow,
    Level,
    Listeners,
    Sync,
    Ack,
    MaxDeliveries,
}

impl Param {
    const ALL: [Param; 21] = [
        Param::Framing,
        Param::Mode,
        Param::MaxMessage,
        Param::Public,
        Param::Priority,
        Param::SendTimeoutMs,
        Param::Clients,
        Param::Ring,
        Param::AllowUid,
        Param::AllowGid,
        Param::HandshakeTimeoutMs,
        Param::FrameTimeoutMs,
        Param::MaxConnections,
        Param::ConnectTimeout,
        Param::Outbox,
        Param::Overflow,
        Param::Level,
        Param::Listeners,
        Param::Sync,
        Param::Ack,
        Param::MaxDeliveries,
    ];

    fn key(self) -> &'static str {
        match self {
            Param::Framing => "framing",
            Param::Mode => "mode",
            Param::MaxMessage => "max_message",
            Param::Public => "public",
            Param::Priority => "priority",
            Param::SendTimeoutMs => "send_timeout_ms",
            Param::Clients => "clients",
            Param::Ring => "ring",
            Param::AllowUid => "allow_uid",
            Param::AllowGid => "allow_gid",
            Param::HandshakeTimeoutMs => "handshake_timeout_ms",
            Param::FrameTimeoutMs => "frame_timeout_ms",
            Param::MaxConnections => "max_connections",
            Param::ConnectTimeout => "connect_timeout",
            Param::Outbox => "outbox",
            Param::Overflow => "overflow",
            Param::Level => "level",
            Param::Listeners => "listeners",
            Param::Sync => "sync",
            Param::Ack => "ack",
            Param::MaxDeliveries => "max_deliveries",
        }
    }

    fn applies_to(self, scheme: &str) -> bool {
        match self {
            Param::Framing => matches!(scheme, "uds" | "tcp" | "fifo"),
            Param::Mode => matches!(
                scheme,
                "uds" | "unixgram" | "fifo" | "mq" | "shm" | "events" | "spool"
            ),
            Param::MaxMessage | Param::ConnectTimeout => true,
            Param::Public => matches!(scheme, "tcp" | "udp" | "ws"),
            Param::Priority => scheme == "mq",
            Param::SendTimeoutMs | Param::Overflow => matches!(
                scheme,
                "uds" | "tcp" | "udp" | "unixgram" | "mq" | "fifo" | "shm" | "events" | "spool"
            ),
            Param::Outbox => matches!(scheme, "uds" | "tcp" | "spool"),
            Param::Sync | Param::Ack | Param::MaxDeliveries => scheme == "spool",
            Param::Clients => scheme == "shm",
            Param::Ring => matches!(scheme, "shm" | "events"),
            Param::Level | Param::Listeners => scheme == "events",
            // Every scheme parses them; a server whose transport cannot learn its peers'
            // credentials refuses them when it starts, saying why.
            Param::AllowUid | Param::AllowGid => true,
            Param::HandshakeTimeoutMs | Param::FrameTimeoutMs | Param::MaxConnections => {
                matches!(scheme, "uds" | "tcp")
            }
        }
    }

    /// The value an endpoint has when the option is not given, as the option would be
    /// spelled; `None` where the default is an absence (no extra ids admitted).
    fn default(self) -> Option<&'static str> {
        match self {
            Param::Framing => Some("length"),
            Param::Mode => Some("0600"),
            Param::MaxMessage => Some("16777216"),
            Param::Public => Some("false"),
            Param::Priority => Some("0"),
            Param::SendTimeoutMs => Some("10000"),
            Param::Clients => Some("1024"),
            Param::Ring => Some("1048576"),
            Param::AllowUid | Param::AllowGid | Param::ConnectTimeout => None,
            Param::HandshakeTimeoutMs => Some("5000"),
            Param::FrameTimeoutMs => Some("30000"),
            Param::MaxConnections => Some("4096"),
            Param::Outbox => Some("1000"),
            Param::Overflow => Some("drop"),
            // A writer's default (informational) is not a listener's (verbose).
            Param::Level => None,
            Param::Listeners => Some("64"),
            Param::Sync => Some("true"),
            Param::Ack => Some("recv"),
            Param::MaxDeliveries => Some("5"),
        }
    }

    fn about(self) -> &'static str {
        match self {
            Param::Framing => {
                "length: ipckit frames with a handshake; line: one message per line, for socat and nc"
            }
            Param::Mode => {
                "permission bits of the endpoint's file or object (abstract sockets check peers against them)"
            }
            Param::MaxMessage => "the largest message this side accepts, in bytes",
            Param::Public => "true lets a server bind an address other than loopback",
            Param::Priority => {
                "the priority of messages sent, 0 to 32767; higher is received first"
            }
            Param::SendTimeoutMs => {
                "how long a send, or a server's push to one client, waits for room in a full queue, pipe, ring or outbox"
            }
            Param::Outbox => {
                "how many pushed messages a server queues for one client beyond what the kernel buffers; spool: how many pushes may wait unread in a client's inbox"
            }
            Param::Overflow => {
                "what a broadcast does to a client whose outbox is full: drop (skip it, counting the drop) or disconnect; for events, drop (overwrite the oldest events, telling slow listeners how many they lost) or block (writers wait for the slowest listener)"
            }
            Param::Level => {
                "events: the level a listener enables, or that a writer's send uses: always, critical, error, warning, info or verbose"
            }
            Param::Listeners => "events: how many listeners the segment holds at once",
            Param::Sync => {
                "spool: false skips the fsyncs of a send, which then survives a killed process but not a power loss"
            }
            Param::Ack => {
                "spool: when a message is deleted: recv (as recv returns it) or done (once the application is done with it, so a receiver killed while handling it leaves it to be delivered again)"
            }
            Param::MaxDeliveries => {
                "spool: how many times a message may be claimed without being acknowledged before it goes to dead/"
            }
            Param::Clients => "how many clients a server takes at once",
            Param::Ring => "bytes of each ring, a power of two",
            Param::AllowUid => {
                "user ids admitted besides the owner, e.g. 1000,1001; taken by the servers that learn their peers' credentials (uds, unixgram), refused by the others as they start"
            }
            Param::AllowGid => "group ids admitted besides the owner (as allow_uid)",
            Param::HandshakeTimeoutMs => "how long a server waits for a new connection's hello",
            Param::FrameTimeoutMs => {
                "how long a server waits for the rest of a started frame or line"
            }
            Param::MaxConnections => "how many connections a server holds at once",
            Param::ConnectTimeout => {
                "how long a client waits for its server to appear, e.g. 5s or 500ms; unset, it fails at once"
            }
        }
    }

    /// Checks that `value` is the canonical spelling of a valid value for `scheme`.
    fn check(self, scheme: &str, value: &str) -> std::result::Result<(), String> {
        match self {
            Param::Framing => match value {
                "length" | "line" => Ok(()),
                _ => Err(format!("framing must be 'length' or 'line', not '{value}'")),
            },
            Param::Mode => {
                let ok = value.len() == 4
                    && value.starts_with('0')
                    && value.bytes().all(|b| (b'0'..=b'7').contains(&b));
                ok.then_some(()).ok_or_else(|| {
                    format!("mode must be four octal digits such as 0600 or 0660, not '{value}'")
                })
            }
            Param::MaxMessage => match canonical_decimal(value) {
                Some(n) if n >= 1 && n <= u32::MAX as u64 => Ok(()),
                _ => Err(format!(
                    "max_message must be a whole number of bytes from 1 to {} without leading zeros, not '{value}'",
                    u32::MAX
                )),
            },
            Param::Public | Param::Sync => match value {
                "true" | "false" => Ok(()),
                _ => Err(format!(
                    "{} must be 'true' or 'false', not '{value}'",
                    self.key()
                )),
            },
            Param::Ack => match value {
                "recv" | "done" => Ok(()),
                _ => Err(format!(
                    "ack must be 'recv' (deleted as recv returns it) or 'done' (deleted once the message is dropped), not '{value}'"
                )),
            },
            Param::MaxDeliveries => match canonical_decimal(value) {
                Some(n) if (1..=MAX_DELIVERIES as u64).contains(&n) => Ok(()),
                _ => Err(format!(
                    "max_deliveries must be a number from 1 to {MAX_DELIVERIES} without leading zeros, not '{value}'"
                )),
            },
            Param::Priority => match canonical_decimal(value) {
                Some(n) if n < 32768 => Ok(()),
                _ => Err(format!(
                    "priority must be a number from 0 to 32767, not '{value}'"
                )),
            },
            Param::SendTimeoutMs => match canonical_decimal(value) {
                Some(_) => Ok(()),
                _ => Err(format!(
                    "send_timeout_ms must be a whole number of milliseconds, not '{value}'"
                )),
            },
            Param::Clients => match canonical_decimal(value) {
                Some(n) if (1..=MAX_SHM_CLIENTS as u64).contains(&n) => Ok(()),
                _ => Err(format!(
                    "clients must be a number from 1 to {MAX_SHM_CLIENTS}, not '{value}'"
                )),
            },
            Param::HandshakeTimeoutMs | Param::FrameTimeoutMs => match canonical_decimal(value) {
                Some(n) if n >= 1 => Ok(()),
                _ => Err(format!(
                    "{} must be a whole number of milliseconds from 1, not '{value}'",
                    self.key()
                )),
            },
            Param::ConnectTimeout => match parse_duration(value) {
                Some(_) => Ok(()),
                None => Err(format!(
                    "connect_timeout must be a whole number with its unit, ms or s, such as 500ms or 5s, not '{value}'"
                )),
            },
            Param::Outbox => match canonical_decimal(value) {
                Some(n) if n >= 1 && n <= u32::MAX as u64 => Ok(()),
                _ => Err(format!(
                    "outbox must be a number of messages from 1 to {}, not '{value}'",
                    u32::MAX
                )),
            },
            Param::Overflow if scheme == "events" => match value {
                "drop" | "overwrite" | "block" => Ok(()),
                "disconnect" => Err(
                    "overflow=disconnect does not apply to events, which has no connections: use drop (overwrite the oldest, the default) or block".into(),
                ),
                _ => Err(format!(
                    "overflow must be 'drop' (also spelled 'overwrite') or 'block' for events, not '{value}'"
                )),
            },
            Param::Overflow => match value {
                "drop" | "disconnect" => Ok(()),
                "block" => Err(
                    "overflow=block applies to events only: a server never waits for one slow client; use drop or disconnect".into(),
                ),
                _ => Err(format!(
                    "overflow must be 'drop' or 'disconnect', not '{value}'"
                )),
            },
            Param::Level => value
                .parse::<crate::Level>()
                .map(drop)
                .map_err(|_| {
                    format!(
                        "level must be always, critical, error, warning, info or verbose, not '{value}'"
                    )
                }),
            Param::Listeners => match canonical_decimal(value) {
                Some(n) if (1..=MAX_EVENTS_LISTENERS as u64).contains(&n) => Ok(()),
                _ => Err(format!(
                    "listeners must be a number from 1 to {MAX_EVENTS_LISTENERS}, not '{value}'"
                )),
            },
            Param::MaxConnections => match canonical_decimal(value) {
                Some(n) if (1..=MAX_CONNECTIONS as u64).contains(&n) => Ok(()),
                _ => Err(format!(
                    "max_connections must be a number from 1 to {MAX_CONNECTIONS}, not '{value}'"
                )),
            },
            Param::Ring => {
                let min = if scheme == "events" {
                    MIN_EVENTS_RING
                } else {
                    MIN_SHM_RING
                };
                match canonical_decimal(value) {
                    Some(n)
                        if n.is_power_of_two() && (min as u64..=MAX_SHM_RING as u64).contains(&n) =>
                    {
                        Ok(())
                    }
                    _ => Err(format!(
                        "ring must be a power of two from {min} to {MAX_SHM_RING} bytes, not '{value}'"
                    )),
                }
            }
            Param::AllowUid | Param::AllowGid => {
                let (key, what) = match self {
                    Param::AllowUid => ("allow_uid", "user"),
                    _ => ("allow_gid", "group"),
                };
                let ids: Option<Vec<u64>> = value.split(',').map(canonical_decimal).collect();
                match ids {
                    // u32::MAX is (uid_t)-1, which names nobody.
                    Some(ids) if ids.iter().all(|&id| id < u32::MAX as u64) => {
                        let mut sorted = ids.clone();
                        sorted.sort_unstable();
                        sorted.dedup();
                        if sorted.len() == ids.len() {
                            Ok(())
                        } else {
                            Err(format!("{key} names a {what} twice in '{value}'"))
                        }
                    }
                    _ => Err(format!(
                        "{key} must be numeric {what} ids separated by commas, such as 1000,1001, not '{value}'"
                    )),
                }
            }
        }
    }
}

/// A `?key=value` option of endpoint URLs, as the parser knows it: for help texts that
/// must not drift from what the parser takes, such as `ipckit help urls`.
///
/// ```
/// use ipckit::endpoint::UrlOption;
/// let framing = UrlOption::all().find(|o| o.key() == "framing").unwrap();
/// assert_eq!(framing.default(), Some("length"));
/// assert!(framing.applies_to("uds") && !framing.applies_to("shm"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlOption(Param);

impl UrlOption {
    /// Every option the parser takes.
    pub fn all() -> impl Iterator<Item = UrlOption> {
        Param::ALL.into_iter().map(UrlOption)
    }

    /// The key, as in `?key=value`.
    pub fn key(self) -> &'static str {
        self.0.key()
    }

    /// The value an endpoint has without the option, spelled as the option; `None` where
    /// the default is an absence (`allow_uid`, `allow_gid`).
    pub fn default(self) -> Option<&'static str> {
        self.0.default()
    }

    /// What the option sets, in a line.
    pub fn about(self) -> &'static str {
        self.0.about()
    }

    /// Whether endpoints of `scheme` take the option.
    pub fn applies_to(self, scheme: &str) -> bool {
        self.0.applies_to(scheme)
    }
}

/// Example URLs of `scheme`, one for each form its addresses take (path and abstract
/// name, IPv4 and IPv6, …); empty for a scheme the parser does not know.
///
/// ```
/// for url in ipckit::endpoint::examples("uds") {
///     assert!(url.parse::<ipckit::Endpoint>().is_ok());
/// }
/// ```
pub fn examples(scheme: &str) -> &'static [&'static str] {
    match scheme {
        "uds" => &["uds:///run/user/1000/app.sock", "uds://@app"],
        "tcp" => &[
            "tcp://127.0.0.1:7000",
            "tcp://[::1]:7000",
            "tcp://localhost:7000",
        ],
        "udp" => &["udp://127.0.0.1:9000", "udp://[::1]:9000"],
        "unixgram" => &["unixgram:///tmp/app.dgram", "unixgram://@app"],
        "fifo" => &["fifo:///tmp/app.fifo"],
        "mq" => &["mq://app"],
        "shm" => &["shm://app"],
        "events" => &["events://app"],
        "spool" => &["spool:///var/spool/app"],
        "dbus" => &[
            "dbus://session/org.example.App",
            "dbus://system/org.example.App",
        ],
        "x11" => &["x11://App%20Window"],
        "ws" => &["ws://127.0.0.1:8080/app"],
        "nats" => &["nats://127.0.0.1:4222/app"],
        _ => &[],
    }
}

impl Endpoint {
    /// Parses an endpoint URL.
    ///
    /// ```
    /// let ep = ipckit::Endpoint::parse("tcp://127.0.0.1:7000")?;
    /// assert_eq!(ep.to_string(), "tcp://127.0.0.1:7000");
    /// assert!(ipckit::Endpoint::parse("tcp://127.0.0.1:70000").is_err());
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn parse(url: &str) -> Result<Endpoint> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            invalid(format!(
                "expected SCHEME://ADDRESS, e.g. uds:///run/app.sock; schemes of this build: {}",
                built_schemes()
            ))
        })?;
        let (rest, object) = match rest.split_once('#') {
            Some((rest, object)) => (rest, Some(object)),
            None => (rest, None),
        };
        let (body, query) = match rest.split_once('?') {
            Some((body, query)) => (body, Some(query)),
            None => (rest, None),
        };
        let address = parse_address(scheme, body).map_err(invalid)?;
        let params = match query {
            Some(query) => parse_query(scheme, query).map_err(invalid)?,
            None => Vec::new(),
        };
        let object = object
            .map(|o| {
                check_name(o, "object name after '#'")?;
                Ok(o.to_owned())
            })
            .transpose()
            .map_err(invalid)?;
        Ok(Endpoint {
            address,
            params,
            object,
        })
    }

    /// The endpoint's scheme, which names its transport: `"uds"`, `"tcp"`, …
    pub fn scheme(&self) -> &'static str {
        match &self.address {
            Address::Uds(_) => "uds",
            Address::Tcp(_) => "tcp",
            Address::Udp(_) => "udp",
            Address::Unixgram(_) => "unixgram",
            Address::Fifo(_) => "fifo",
            Address::Mq(_) => "mq",
            Address::Shm(_) => "shm",
            Address::Events(_) => "events",
            Address::Spool(_) => "spool",
            Address::Dbus { .. } => "dbus",
            Address::X11(_) => "x11",
            Address::Ws { .. } => "ws",
            Address::Nats { .. } => "nats",
        }
    }

    /// Where the endpoint is.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The endpoint with its address replaced, keeping its options; used when a server
    /// learns its real address (a TCP port chosen by the kernel).
    pub fn with_address(&self, address: Address) -> Endpoint {
        Endpoint {
            address,
            ..self.clone()
        }
    }

    /// The named object after `#`, if any.
    pub fn object(&self) -> Option<&str> {
        self.object.as_deref()
    }

    /// The endpoint without its `#object`: where the server that hosts the object listens.
    pub fn without_object(&self) -> Endpoint {
        Endpoint {
            object: None,
            ..self.clone()
        }
    }

    fn param(&self, param: Param) -> Option<&str> {
        self.params
            .iter()
            .find(|(p, _)| *p == param)
            .map(|(_, v)| v.as_str())
    }

    /// How a `uds`, `tcp` or `fifo` endpoint frames messages (`?framing=`); `Length`
    /// (ipckit's own framing) unless set.
    pub fn framing(&self) -> Framing {
        match self.param(Param::Framing) {
            Some("line") => Framing::Line,
            _ => Framing::Length,
        }
    }

    /// The permission bits for the endpoint's file or object (`?mode=`); 0600 unless set.
    ///
    /// An abstract socket (`uds://@name`, `unixgram://@name`) has no file, so its server
    /// applies the mode to each peer's credentials as the kernel applies a socket file's
    /// mode: a peer needs the write bit of its class (owner, group, others), where the
    /// owner is the server's effective uid and the group its effective gid. Root is
    /// admitted, as root passes a socket file's mode.
    pub fn mode(&self) -> u32 {
        self.param(Param::Mode)
            .map(|m| u32::from_str_radix(m, 8).expect("validated when parsed"))
            .unwrap_or(0o600)
    }

    /// The largest message this side accepts (`?max_message=`); 16 MiB unless set.
    pub fn max_message(&self) -> usize {
        self.param(Param::MaxMessage)
            .map(|m| m.parse().expect("validated when parsed"))
            .unwrap_or(DEFAULT_MAX_MESSAGE)
    }

    /// The priority of messages sent to a queue (`?priority=`, 0 to 32767); 0 unless set.
    pub fn priority(&self) -> u32 {
        self.param(Param::Priority)
            .map(|p| p.parse().expect("validated when parsed"))
            .unwrap_or(0)
    }

    /// How long a send may wait for room in a full queue or pipe (`?send_timeout_ms=`); 10 s
    /// unless set.
    pub fn send_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.param(Param::SendTimeoutMs)
                .map(|t| t.parse().expect("validated when parsed"))
                .unwrap_or(10_000),
        )
    }

    /// How many pushed messages a stream server queues for one client beyond what the
    /// kernel buffers (`?outbox=`, `uds` and `tcp`), or how many pushes may wait unread in
    /// a `spool` client's inbox; 1000 unless set, as ZeroMQ's high-water mark.
    pub fn outbox(&self) -> usize {
        self.param(Param::Outbox)
            .map(|n| n.parse().expect("validated when parsed"))
            .unwrap_or(1000)
    }

    /// What a broadcast does to a client whose outbox is full (`?overflow=`): skip it and
    /// count the drop, unless set to `disconnect`.
    ///
    /// ```
    /// use ipckit::endpoint::Overflow;
    /// let ep: ipckit::Endpoint = "uds:///run/app.sock?overflow=disconnect".parse()?;
    /// assert_eq!(ep.overflow(), Overflow::Disconnect);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn overflow(&self) -> Overflow {
        match self.param(Param::Overflow) {
            Some("disconnect") => Overflow::Disconnect,
            Some("block") => Overflow::Block,
            _ => Overflow::Drop,
        }
    }

    /// The level an `events` listener enables, or that a writer's `send` uses
    /// (`?level=`); `None` unless set, when a listener takes everything and a writer
    /// writes [`Level::DEFAULT_EVENT`](crate::Level::DEFAULT_EVENT).
    ///
    /// ```
    /// let ep: ipckit::Endpoint = "events://app?level=warning".parse()?;
    /// assert_eq!(ep.level(), Some(ipckit::Level::Warning));
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn level(&self) -> Option<crate::Level> {
        self.param(Param::Level)
            .map(|l| l.parse().expect("validated when parsed"))
    }

    /// How many listeners an `events` segment holds at once (`?listeners=`); 64 unless
    /// set. The first party to open the segment chooses it.
    ///
    /// ```
    /// let ep: ipckit::Endpoint = "events://app?listeners=4".parse()?;
    /// assert_eq!(ep.listeners(), 4);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn listeners(&self) -> usize {
        self.param(Param::Listeners)
            .map(|n| n.parse().expect("validated when parsed"))
            .unwrap_or(64)
    }

    /// Whether a `spool` send fsyncs the message and the directory it enters (`?sync=`);
    /// true unless set. Without, a message sent survives the sender's being killed but
    /// not a power loss.
    ///
    /// ```
    /// let ep: ipckit::Endpoint = "spool:///var/spool/app?sync=false".parse()?;
    /// assert!(!ep.sync());
    /// assert!("spool:///var/spool/app".parse::<ipckit::Endpoint>()?.sync());
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn sync(&self) -> bool {
        self.param(Param::Sync) != Some("false")
    }

    /// When a `spool` receiver deletes a message it took (`?ack=`): [`Ack::Recv`] unless
    /// set.
    ///
    /// ```
    /// use ipckit::endpoint::Ack;
    /// let ep: ipckit::Endpoint = "spool:///var/spool/app".parse()?;
    /// assert_eq!(ep.ack(), Ack::Recv);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn ack(&self) -> Ack {
        match self.param(Param::Ack) {
            Some("done") => Ack::Done,
            _ => Ack::Recv,
        }
    }

    /// How many times a `spool` message may be claimed without being acknowledged
    /// (`?max_deliveries=`, 1 to 1,000,000); 5 unless set. Claimed once more, it goes to
    /// the spool's `dead/` instead of to a receiver.
    ///
    /// ```
    /// let ep: ipckit::Endpoint = "spool:///var/spool/app?ack=done&max_deliveries=2".parse()?;
    /// assert_eq!(ep.max_deliveries(), 2);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn max_deliveries(&self) -> u32 {
        self.param(Param::MaxDeliveries)
            .map(|n| n.parse().expect("validated when parsed"))
            .unwrap_or(5)
    }

    /// Whether the option `key` was given: a shape that a live segment must then match.
    #[allow(
        dead_code,
        reason = "the events transport uses it in the commits that follow"
    )]
    pub(crate) fn has_option(&self, key: &str) -> bool {
        self.params.iter().any(|(p, _)| p.key() == key)
    }

    /// How many clients a shared-memory server takes at once (`?clients=`); 1024 unless
    /// set. A slot's memory is used only while a client holds it.
    ///
    /// ```
    /// let ep: ipckit::Endpoint = "shm://app?clients=8&ring=65536".parse()?;
    /// assert_eq!((ep.clients(), ep.ring()), (8, 65536));
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn clients(&self) -> usize {
        self.param(Param::Clients)
            .map(|n| n.parse().expect("validated when parsed"))
            .unwrap_or(1024)
    }

    /// How long a stream server waits for a new connection's hello
    /// (`?handshake_timeout_ms=`, `uds` and `tcp`); 5 s unless set. A connection that has
    /// not sent it by then is closed, so that silent connections cannot pile up.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        self.millis(Param::HandshakeTimeoutMs, 5_000)
    }

    /// How long a stream server waits for the rest of a frame (or, with
    /// `framing=line`, of a line) once its first byte has been read
    /// (`?frame_timeout_ms=`, `uds` and `tcp`); 30 s unless set. A connection that has
    /// not finished it by then is closed and the frame dropped, so that unfinished
    /// frames cannot hold the server's memory. A connection between frames is never
    /// timed out. Raise it for very large messages over slow links.
    ///
    /// ```
    /// let ep: ipckit::Endpoint = "uds://@app?frame_timeout_ms=500".parse()?;
    /// assert_eq!(ep.frame_timeout(), std::time::Duration::from_millis(500));
    /// assert_eq!(ep.handshake_timeout(), std::time::Duration::from_secs(5));
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn frame_timeout(&self) -> std::time::Duration {
        self.millis(Param::FrameTimeoutMs, 30_000)
    }

    fn millis(&self, param: Param, default: u64) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.param(param)
                .map(|t| t.parse().expect("validated when parsed"))
                .unwrap_or(default),
        )
    }

    /// How many connections a stream server holds at once (`?max_connections=`, `uds`
    /// and `tcp`); 4096 unless set. A client beyond it is refused at once with an error
    /// that names the limit.
    pub fn max_connections(&self) -> usize {
        self.param(Param::MaxConnections)
            .map(|n| n.parse().expect("validated when parsed"))
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// How long [`connect`](crate::connect) waits for a server that is not there yet
    /// (`?connect_timeout=`, a whole number with its unit: `500ms`, `5s`); zero unless
    /// set, so that a missing server is [`Error::NotFound`] at once.
    ///
    /// While nothing listens, connect tries again (after 1 ms, then twice as long each
    /// time, up to 100 ms apart) until the server appears or the time is up, as ZeroMQ's
    /// connect does: a client started before its server need not poll by hand. Any other
    /// error ends the wait at once. A transport whose connect needs no server changes
    /// nothing: `mq` creates the queue, whose messages wait for their receiver (its
    /// durable promise), and a `udp` client has no connection to wait for, so what it
    /// sends before its server binds is lost.
    ///
    /// The other timeouts are whole milliseconds (`send_timeout_ms`,
    /// `handshake_timeout_ms`), as they were first written; this one, for people to
    /// type, carries its unit.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ep: ipckit::Endpoint = "uds:///run/app.sock?connect_timeout=5s".parse()?;
    /// assert_eq!(ep.connect_timeout(), Duration::from_secs(5));
    /// let ep = ep.with_connect_timeout(Duration::from_millis(1500));
    /// assert_eq!(ep.to_string(), "uds:///run/app.sock?connect_timeout=1500ms");
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.param(Param::ConnectTimeout)
            .map(|t| parse_duration(t).expect("validated when parsed"))
            .unwrap_or_default()
    }

    /// The endpoint with `?connect_timeout=` set to `timeout` (rounded up to whole
    /// milliseconds): a client connecting to it waits that long for its server to appear.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let endpoint = ipckit::Endpoint::parse("uds:///run/app.sock")?
    ///     .with_connect_timeout(Duration::from_secs(5));
    /// let client = ipckit::connect(&endpoint)?; // waits up to 5 s for the server
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn with_connect_timeout(mut self, timeout: std::time::Duration) -> Endpoint {
        let millis = timeout.as_nanos().div_ceil(1_000_000);
        let value = if millis % 1000 == 0 {
            format!("{}s", millis / 1000)
        } else {
            format!("{millis}ms")
        };
        self.set_option("connect_timeout", &value)
            .expect("a canonical duration");
        self
    }

    /// The bytes of each shared-memory ring (`?ring=`, a power of two); 1 MiB unless set.
    /// A message up to half of it is written in place; a larger one goes in pieces.
    pub fn ring(&self) -> usize {
        self.param(Param::Ring)
            .map(|n| n.parse().expect("validated when parsed"))
            .unwrap_or(1 << 20)
    }

    /// Users admitted besides the owner (`?allow_uid=1000,1001`): a server checks each
    /// peer's uid as the kernel gives it (SO_PEERCRED, SCM_CREDENTIALS). Only transports
    /// whose [`Capabilities::peer_credentials`](crate::transport::Capabilities) is true take
    /// it; the others refuse it when listening. Empty unless set.
    ///
    /// ```
    /// let ep: ipckit::Endpoint = "uds://@app?allow_uid=1000,1001&allow_gid=100".parse()?;
    /// assert_eq!((ep.allow_uid(), ep.allow_gid()), (vec![1000, 1001], vec![100]));
    /// assert!("uds://@app?allow_uid=alice".parse::<ipckit::Endpoint>().is_err());
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn allow_uid(&self) -> Vec<u32> {
        self.ids(Param::AllowUid)
    }

    /// Groups admitted besides the owner (`?allow_gid=100`): a peer is admitted when its
    /// gid is one of them, or, over a stream socket, when it is a member of one (the
    /// kernel gives a datagram's sender's gid alone). Empty unless set.
    pub fn allow_gid(&self) -> Vec<u32> {
        self.ids(Param::AllowGid)
    }

    fn ids(&self, param: Param) -> Vec<u32> {
        self.param(param).map_or_else(Vec::new, |ids| {
            ids.split(',')
                .map(|id| id.parse().expect("validated when parsed"))
                .collect()
        })
    }

    /// Whether a network endpoint may be bound to a non-loopback address (`?public=`).
    pub fn public(&self) -> bool {
        self.param(Param::Public) == Some("true")
    }

    /// Sets (or replaces) an option, validating it as the parser would.
    ///
    /// ```
    /// let mut ep = ipckit::Endpoint::parse("uds://@app")?;
    /// ep.set_option("max_message", "1024")?;
    /// assert_eq!(ep.to_string(), "uds://@app?max_message=1024");
    /// assert!(ep.set_option("max_message", "0").is_err());
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn set_option(&mut self, key: &str, value: &str) -> Result<()> {
        let invalid = |reason| Error::InvalidUrl {
            url: self.to_string(),
            reason,
        };
        let param = lookup_param(self.scheme(), key).map_err(invalid)?;
        param.check(self.scheme(), value).map_err(invalid)?;
        match self.params.iter_mut().find(|(p, _)| *p == param) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.params.push((param, value.to_owned())),
        }
        Ok(())
    }
}

impl From<Address> for Endpoint {
    /// An endpoint at `address` with default options.
    ///
    /// ```
    /// use ipckit::endpoint::{Address, Endpoint, UnixAddr};
    /// let ep = Endpoint::from(Address::Uds(UnixAddr::Abstract("app".into())));
    /// assert_eq!(ep.to_string(), "uds://@app");
    /// ```
    fn from(address: Address) -> Endpoint {
        Endpoint {
            address,
            params: Vec::new(),
            object: None,
        }
    }
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Endpoint> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme())?;
        match &self.address {
            Address::Uds(addr) | Address::Unixgram(addr) => match addr {
                UnixAddr::Path(p) => f.write_str(&escape(p.as_os_str().as_bytes()))?,
                UnixAddr::Abstract(name) => write!(f, "@{}", escape(name.as_bytes()))?,
            },
            Address::Fifo(p) | Address::Spool(p) => {
                f.write_str(&escape(p.as_os_str().as_bytes()))?
            }
            Address::Tcp(at) | Address::Udp(at) => write!(f, "{at}")?,
            Address::Mq(name) | Address::Shm(name) | Address::Events(name) => f.write_str(name)?,
            Address::Dbus { bus, name } => {
                let bus = match bus {
                    Bus::Session => "session",
                    Bus::System => "system",
                };
                write!(f, "{bus}/{name}")?
            }
            Address::X11(title) => f.write_str(&escape(title.as_bytes()))?,
            Address::Ws { at, path } => write!(f, "{at}{}", escape(path.as_bytes()))?,
            Address::Nats { at, subject } => write!(f, "{at}/{subject}")?,
        }
        for (i, (param, value)) in self.params.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{}={value}", param.key())?;
        }
        if let Some(object) = &self.object {
            write!(f, "#{object}")?;
        }
        Ok(())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl HostPort {
    /// The host without IPv6 brackets, as the resolver wants it.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Anything that names an endpoint: a URL string or an [`Endpoint`].
pub trait ToEndpoint {
    /// Parses or clones into an [`Endpoint`].
    fn to_endpoint(&self) -> Result<Endpoint>;
}

impl ToEndpoint for Endpoint {
    fn to_endpoint(&self) -> Result<Endpoint> {
        Ok(self.clone())
    }
}

impl ToEndpoint for str {
    fn to_endpoint(&self) -> Result<Endpoint> {
        Endpoint::parse(self)
    }
}

impl ToEndpoint for String {
    fn to_endpoint(&self) -> Result<Endpoint> {
        Endpoint::parse(self)
    }
}

impl<T: ToEndpoint + ?Sized> ToEndpoint for &T {
    fn to_endpoint(&self) -> Result<Endpoint> {
        (**self).to_endpoint()
    }
}

/// The schemes whose transports this build has, for error texts: those of transports
/// still to come parse, but naming them would invite a URL that cannot be served.
fn built_schemes() -> String {
    crate::transport::all()
        .iter()
        .map(|t| t.scheme())
        .collect::<Vec<_>>()
        .join(", ")
}

type Parsed<T> = std::result::Result<T, String>;

fn parse_address(scheme: &str, body: &str) -> Parsed<Address> {
    Ok(match scheme {
        "uds" => Address::Uds(parse_unix(scheme, body)?),
        "unixgram" => Address::Unixgram(parse_unix(scheme, body)?),
        "tcp" => Address::Tcp(parse_host_port(body)?),
        "udp" => Address::Udp(parse_host_port(body)?),
        "fifo" => Address::Fifo(parse_path(scheme, body)?),
        "spool" => Address::Spool(parse_path(scheme, body)?),
        "mq" => Address::Mq(parse_name(body)?),
        "shm" => Address::Shm(parse_name(body)?),
        "events" => Address::Events(parse_name(body)?),
        "dbus" => {
            let (bus, name) = body.split_once('/').ok_or_else(|| {
                "expected dbus://session/NAME or dbus://system/NAME, e.g. dbus://session/org.example.App".to_owned()
            })?;
            let bus = match bus {
                "session" => Bus::Session,
                "system" => Bus::System,
                other => return Err(format!("unknown bus '{other}': use 'session' or 'system'")),
            };
            check_bus_name(name)?;
            Address::Dbus {
                bus,
                name: name.to_owned(),
            }
        }
        "x11" => {
            if body.is_empty() {
                return Err("missing window title, e.g. x11://App%20Window".to_owned());
            }
            let title = String::from_utf8(unescape(body)?)
                .map_err(|_| "the window title is not valid UTF-8".to_owned())?;
            Address::X11(title)
        }
        "ws" => {
            let slash = body.find('/').ok_or_else(|| {
                "missing path after host:port, e.g. ws://127.0.0.1:8080/app".to_owned()
            })?;
            let path = String::from_utf8(unescape(&body[slash..])?)
                .map_err(|_| "the WebSocket path is not valid UTF-8".to_owned())?;
            Address::Ws {
                at: parse_host_port(&body[..slash])?,
                path,
            }
        }
        "nats" => {
            let (at, subject) = body.split_once('/').ok_or_else(|| {
                "missing subject after host:port, e.g. nats://127.0.0.1:4222/app".to_owned()
            })?;
            let valid = !subject.is_empty()
                && subject.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-*>".contains(&b))
                });
            if !valid {
                return Err(format!(
                    "'{subject}' is not a NATS subject: dot-separated tokens of letters, digits, '_', '-'"
                ));
            }
            Address::Nats {
                at: parse_host_port(at)?,
                subject: subject.to_owned(),
            }
        }
        "" => return Err("missing scheme before '://'".to_owned()),
        other => {
            return Err(format!(
                "unknown scheme '{other}'; schemes of this build: {}",
                built_schemes()
            ));
        }
    })
}

fn parse_unix(scheme: &str, body: &str) -> Parsed<UnixAddr> {
    if let Some(name) = body.strip_prefix('@') {
        if name.is_empty() {
            return Err(format!(
                "missing abstract socket name after '@', e.g. {scheme}://@app"
            ));
        }
        let name = String::from_utf8(unescape(name)?)
            .map_err(|_| "the abstract name is not valid UTF-8".to_owned())?;
        // The kernel's sun_path is 108 bytes; the abstract namespace uses one for the NUL.
        if name.len() > 107 {
            return Err(format!(
                "abstract name of {} bytes is longer than the 107 the kernel allows",
                name.len()
            ));
        }
        return Ok(UnixAddr::Abstract(name));
    }
    let path = parse_path(scheme, body)?;
    if path.as_os_str().len() > 107 {
        return Err(format!(
            "socket path of {} bytes is longer than the 107 the kernel allows; use a shorter path or an abstract name ({scheme}://@name)",
            path.as_os_str().len()
        ));
    }
    Ok(UnixAddr::Path(path))
}

fn parse_path(scheme: &str, body: &str) -> Parsed<PathBuf> {
    if body.is_empty() {
        return Err(format!(
            "missing path, e.g. {scheme}:///tmp/app (three slashes: the path is absolute)"
        ));
    }
    if !body.starts_with('/') {
        return Err(format!(
            "the path must be absolute and the URL takes no host: write {scheme}:///{body}"
        ));
    }
    let bytes = unescape(body)?;
    if bytes.contains(&0) {
        return Err("a path cannot contain a NUL byte".to_owned());
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

fn parse_host_port(body: &str) -> Parsed<HostPort> {
    let (host, port) = body.rsplit_once(':').ok_or_else(|| {
        format!("missing port: expected HOST:PORT, e.g. 127.0.0.1:7000, not '{body}'")
    })?;
    if host.is_empty() {
        return Err("missing host before ':PORT', e.g. 127.0.0.1".to_owned());
    }
    let port = match canonical_decimal(port) {
        Some(p) if p <= u16::MAX as u64 => p as u16,
        _ => {
            return Err(format!(
                "bad port '{port}': expected a number from 0 to 65535 without leading zeros"
            ));
        }
    };
    let valid_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.to_string() == v6)
    } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        host.parse::<std::net::Ipv4Addr>().is_ok()
    } else {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !host.starts_with(['-', '.'])
    };
    if !valid_host {
        return Err(format!(
            "bad host '{host}': expected an IPv4 address, a bracketed canonical IPv6 address such as [::1], or a host name"
        ));
    }
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

fn parse_name(body: &str) -> Parsed<String> {
    check_name(body, "name")?;
    Ok(body.to_owned())
}

/// Whether `name` may follow `#` in a URL, to name an object; the error says why not.
pub(crate) fn check_object_name(name: &str) -> Result<(), String> {
    check_name(name, "object name")
}

fn check_name(name: &str, what: &str) -> Parsed<()> {
    if name.is_empty() {
        return Err(format!("missing {what}"));
    }
    if name.contains('/') {
        return Err(format!(
            "the {what} '{name}' contains '/'; use letters, digits, '.', '_' and '-' only"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("the {what} cannot be '.' or '..'"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the {what} is {} bytes long; at most {MAX_NAME_LEN} are allowed (NAME_MAX less room for derived names)",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err(format!(
            "the {what} '{name}' contains '{bad}'; use letters, digits, '.', '_' and '-' only"
        ));
    }
    Ok(())
}

fn check_bus_name(name: &str) -> Parsed<()> {
    let elements: Vec<&str> = name.split('.').collect();
    let valid = name.len() <= 255
        && elements.len() >= 2
        && elements.iter().all(|e| {
            !e.is_empty()
                && !e.starts_with(|c: char| c.is_ascii_digit())
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    valid
        .then_some(())
        .ok_or_else(|| format!("'{name}' is not a D-Bus well-known name such as org.example.App"))
}

fn lookup_param(scheme: &str, key: &str) -> Parsed<Param> {
    let param = Param::ALL
        .into_iter()
        .find(|p| p.key() == key)
        .ok_or_else(|| {
            let known: Vec<_> = Param::ALL
                .iter()
                .filter(|p| p.applies_to(scheme))
                .map(|p| p.key())
                .collect();
            format!(
                "unknown option '{key}'; {scheme} takes: {}",
                known.join(", ")
            )
        })?;
    if !param.applies_to(scheme) {
        return Err(format!(
            "option '{key}' does not apply to {scheme} endpoints"
        ));
    }
    Ok(param)
}

fn parse_query(scheme: &str, query: &str) -> Parsed<Vec<(Param, String)>> {
    let mut params: Vec<(Param, String)> = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("option '{pair}' needs a value: write KEY=VALUE"))?;
        let param = lookup_param(scheme, key)?;
        param.check(scheme, value)?;
        if params.iter().any(|(p, _)| *p == param) {
            return Err(format!("option '{key}' is given twice"));
        }
        params.push((param, value.to_owned()));
    }
    Ok(params)
}

/// A duration spelled canonically: a whole number of milliseconds (`500ms`) or of
/// seconds (`5s`).
fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        canonical_decimal(ms).map(std::time::Duration::from_millis)
    } else {
        s.strip_suffix('s')
            .and_then(canonical_decimal)
            .map(std::time::Duration::from_secs)
    }
}

/// A decimal number spelled canonically (no sign, no leading zeros).
fn canonical_decimal(s: &str) -> Option<u64> {
    // Digits alone: `u64::from_str` also takes a leading '+'.
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// Bytes that must be percent-escaped inside an address: controls, space and the URL
/// delimiters that would otherwise end the address.
fn must_escape(b: u8) -> bool {
    b <= b' ' || b == 0x7f || b == b'%' || b == b'?' || b == b'#'
}

fn escape(bytes: &[u8]) -> String {
    // Non-ASCII stays as it is when the whole is UTF-8, and is escaped byte by byte when not,
    // so that any path round-trips.
    let utf8 = std::str::from_utf8(bytes).is_ok();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if must_escape(b) || (!utf8 && b >= 0x80) {
            out.push_str(&format!("%{b:02X}"));
        } else if b < 0x80 {
            out.push(b as char);
        } else if let Some(c) = std::str::from_utf8(&bytes[i..])
            .ok()
            .and_then(|s| s.chars().next())
        {
            out.push(c);
        }
        // Continuation bytes of a UTF-8 character were pushed with its first byte.
    }
    out
}

fn unescape(text: &str) -> Parsed<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("bad escape at '{}': expected %XX", &text[i..]))?;
            out.push(u8::from_str_radix(hex, 16).expect("checked hex digits"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let canonical = escape(&out);
    if canonical != text {
        return Err(format!(
            "'{text}' is not in canonical form: write it as '{canonical}'"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an endpoint's accessors say, for comparing endpoints option by option.
    fn settings(ep: &Endpoint) -> String {
        format!(
            "{:?}",
            (
                (ep.framing(), ep.mode(), ep.max_message()),
                ep.public(),
                ep.priority(),
                ep.send_timeout(),
                ep.clients(),
                ep.ring(),
                (ep.allow_uid(), ep.allow_gid()),
                (ep.handshake_timeout(), ep.frame_timeout()),
                ep.max_connections(),
                (ep.sync(), ep.ack(), ep.max_deliveries()),
                (ep.outbox(), ep.overflow(), ep.connect_timeout()),
            )
        )
    }

    /// `ipckit help urls` prints these: every scheme has examples that parse, and every
    /// option's documented default is what an endpoint has without it.
    #[test]
    fn url_options_and_examples_match_the_parser() {
        for scheme in crate::transport::all().iter().map(|t| t.scheme()) {
            assert!(!examples(scheme).is_empty(), "{scheme} has no example");
            for url in examples(scheme) {
                let ep = Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
                assert_eq!(ep.scheme(), scheme);
                for option in UrlOption::all().filter(|o| o.applies_to(scheme)) {
                    let Some(default) = option.default() else {
                        continue;
                    };
                    let mut set = ep.clone();
                    set.set_option(option.key(), default).unwrap();
                    assert_eq!(settings(&set), settings(&ep), "{set}");
                }
            }
        }
    }

    #[test]
    fn every_design_form_round_trips() {
        for url in [
            "uds:///run/user/1000/app.sock",
            "uds://@app",
            "uds:///run/app.sock#calculator",
            "uds:///tmp/my%20app.sock?framing=line&mode=0660",
            "uds:///tmp/caf\u{e9}.sock",
            "udp://127.0.0.1:9000",
            "unixgram:///tmp/app.dgram",
            "tcp://127.0.0.1:7000",
            "tcp://[::1]:7000?public=false",
            "tcp://localhost:0",
            "mq://app",
            "mq://app?max_message=8192",
            "fifo:///tmp/app.fifo",
            "shm://app",
            "events://app",
            "spool:///var/spool/app",
            "dbus://session/org.example.App",
            "dbus://system/org.example.App",
            "x11://App%20Window",
            "ws://127.0.0.1:8080/app",
            "nats://127.0.0.1:4222/app",
            "tcp://127.0.0.1:7000?connect_timeout=5s",
            "mq://app?connect_timeout=250ms",
        ] {
            let ep = Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(ep.to_string(), url);
            assert_eq!(Endpoint::parse(&ep.to_string()).unwrap(), ep);
        }
    }

    #[test]
    fn decoded_parts_are_what_the_os_sees() {
        let ep = Endpoint::parse("uds:///tmp/my%20app.sock").unwrap();
        assert_eq!(
            ep.address(),
            &Address::Uds(UnixAddr::Path("/tmp/my app.sock".into()))
        );
        let ep = Endpoint::parse("x11://App%20Window").unwrap();
        assert_eq!(ep.address(), &Address::X11("App Window".into()));
    }

    fn reason(url: &str) -> String {
        match Endpoint::parse(url) {
            Err(Error::InvalidUrl { url: u, reason }) => {
                assert_eq!(u, url);
                reason
            }
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn unknown_schemes_are_told_only_the_transports_built() {
        for url in ["foo://x", "uds:/tmp/x"] {
            let reason = reason(url);
            assert!(reason.contains("uds, tcp"), "{url}: {reason}");
            assert!(!reason.contains("nats"), "{url}: {reason}");
        }
    }

    #[test]
    fn bad_urls_say_which_part_is_wrong() {
        assert!(reason("foo://x").contains("unknown scheme 'foo'"));
        let built = "schemes of this build: uds, tcp, udp, unixgram, fifo, mq, shm, events, spool";
        assert!(reason("foo://x").ends_with(built), "{}", reason("foo://x"));
        assert!(reason("uds:/tmp/x").ends_with(built));
        assert!(reason("uds:/tmp/x").contains("SCHEME://"));
        assert!(reason("uds://").contains("missing path"));
        assert!(reason("uds://tmp/x.sock").contains("uds:///tmp/x.sock"));
        assert!(reason("tcp://127.0.0.1:99999").contains("bad port"));
        assert!(reason("tcp://127.0.0.1:07000").contains("leading zeros"));
        assert!(reason("ws://127.0.0.1:+80/app").contains("bad port"));
        assert!(reason("uds:///x?max_message=+5").contains("max_message"));
        assert!(reason("tcp://127.0.0.1").contains("missing port"));
        assert!(reason("tcp://:7000").contains("missing host"));
        assert!(reason("tcp://300.1.1.1:7").contains("bad host"));
        assert!(reason("shm://a/b").contains("'/'"));
        assert!(reason("shm://..").contains("'..'"));
        assert!(reason(&format!("mq://{}", "a".repeat(201))).contains("at most 200"));
        assert!(reason("uds:///x?bogus=1").contains("unknown option 'bogus'"));
        assert!(reason("mq://x?framing=line").contains("does not apply"));
        assert!(reason("uds:///x?framing=line&framing=line").contains("twice"));
        assert!(reason("uds:///x?mode=777").contains("four octal digits"));
        assert!(reason("uds://@x?allow_uid=1000,").contains("numeric user ids"));
        assert!(reason("uds://@x?allow_uid=01000").contains("numeric user ids"));
        assert!(reason("uds://@x?allow_uid=4294967295").contains("numeric user ids"));
        assert!(reason("uds://@x?allow_gid=root").contains("numeric group ids"));
        assert!(reason("uds://@x?allow_gid=5,5").contains("names a group twice"));
        assert!(reason("uds:///x?max_message=0").contains("max_message"));
        assert!(reason("uds:///tmp/%41.sock").contains("write it as '/tmp/A.sock'"));
        assert!(reason("uds:///tmp/%4").contains("bad escape"));
        assert!(reason("dbus://bus/org.x.Y").contains("unknown bus"));
        assert!(reason("dbus://session/nodots").contains("well-known name"));
        assert!(reason("ws://127.0.0.1:80").contains("missing path"));
        for bad in ["5", "5 s", "05s", "1.5s", "5m", "s", "ms", "-1s"] {
            let url = format!("uds:///x?connect_timeout={bad}");
            assert!(reason(&url).contains("such as 500ms or 5s"), "{url}");
        }
    }

    /// The spool's options: each round-trips, has the default it documents, is refused
    /// in any other spelling with a message that says what to write, and belongs to spool
    /// alone; and the options spool shares with the others apply to it.
    #[test]
    fn spool_options() {
        let ep = Endpoint::parse("spool:///var/spool/app").unwrap();
        assert_eq!(
            (ep.sync(), ep.ack(), ep.max_deliveries()),
            (true, Ack::Recv, 5)
        );
        for url in [
            "spool:///var/spool/app?sync=false&ack=done&max_deliveries=1",
            "spool:///var/spool/app?max_deliveries=1000000&sync=true&ack=recv",
            "spool:///var/spool/app?mode=0660&max_message=1024&send_timeout_ms=0&outbox=1&overflow=disconnect&connect_timeout=5s",
        ] {
            let ep = Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(ep.to_string(), url);
        }
        let ep = Endpoint::parse("spool:///s?sync=false&ack=done&max_deliveries=1").unwrap();
        assert_eq!(
            (ep.sync(), ep.ack(), ep.max_deliveries()),
            (false, Ack::Done, 1)
        );
        let ep =
            Endpoint::parse("spool:///s?outbox=7&overflow=disconnect&send_timeout_ms=5").unwrap();
        assert_eq!(ep.outbox(), 7);
        assert_eq!(ep.overflow(), Overflow::Disconnect);
        assert_eq!(ep.send_timeout(), std::time::Duration::from_millis(5));

        let base = Endpoint::parse("spool:///s").unwrap();
        for option in UrlOption::all().filter(|o| o.applies_to("spool")) {
            if let Some(default) = option.default() {
                let mut set = base.clone();
                set.set_option(option.key(), default).unwrap();
                assert_eq!(settings(&set), settings(&base), "{set}");
            }
        }
        for key in [
            "mode",
            "max_message",
            "send_timeout_ms",
            "outbox",
            "overflow",
            "connect_timeout",
            "sync",
            "ack",
            "max_deliveries",
        ] {
            let option = UrlOption::all().find(|o| o.key() == key).unwrap();
            assert!(option.applies_to("spool"), "{key}");
            assert!(!option.about().is_empty(), "{key}");
        }

        for (bad, says) in [
            ("sync=yes", "sync must be 'true' or 'false', not 'yes'"),
            ("sync=TRUE", "sync must be 'true' or 'false'"),
            ("sync=", "sync must be 'true' or 'false'"),
            (
                "ack=received",
                "ack must be 'recv' (deleted as recv returns it) or 'done'",
            ),
            ("ack=Done", "ack must be 'recv'"),
            (
                "max_deliveries=0",
                "max_deliveries must be a number from 1 to 1000000",
            ),
            ("max_deliveries=1000001", "from 1 to 1000000"),
            ("max_deliveries=05", "without leading zeros, not '05'"),
            ("max_deliveries=+5", "max_deliveries must be"),
            ("max_deliveries=5&max_deliveries=5", "given twice"),
            ("overflow=block", "applies to events only"),
            (
                "framing=line",
                "option 'framing' does not apply to spool endpoints",
            ),
            ("priority=1", "does not apply to spool"),
        ] {
            let url = format!("spool:///s?{bad}");
            let reason = reason(&url);
            assert!(reason.contains(says), "{url}: {reason}");
        }
        for scheme_url in [
            "uds:///x",
            "tcp://127.0.0.1:1",
            "mq://x",
            "events://x",
            "fifo:///x",
        ] {
            for option in ["sync=true", "ack=recv", "max_deliveries=5"] {
                let url = format!("{scheme_url}?{option}");
                assert!(reason(&url).contains("does not apply"), "{url}");
            }
        }
        let mut ep = Endpoint::parse("spool:///s").unwrap();
        assert!(ep.set_option("ack", "later").is_err());
        ep.set_option("ack", "done").unwrap();
        assert_eq!(ep.to_string(), "spool:///s?ack=done");
    }

    #[test]
    fn options_have_defaults() {
        let ep = Endpoint::parse("uds://@x").unwrap();
        assert_eq!(ep.framing(), Framing::Length);
        assert_eq!(ep.mode(), 0o600);
        assert_eq!(ep.max_message(), DEFAULT_MAX_MESSAGE);
        assert!(!ep.public());
        assert_eq!(ep.connect_timeout(), std::time::Duration::ZERO);
        let ep = Endpoint::parse("uds://@x?mode=0660&max_message=10").unwrap();
        assert_eq!(ep.mode(), 0o660);
        assert_eq!(ep.max_message(), 10);
    }
}
