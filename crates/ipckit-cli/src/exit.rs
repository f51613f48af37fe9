//! How a command fails: the message on stderr and the exit status, which `--help` lists
//! (the `after_help` in args.rs), so that a script can tell nothing listening, a timeout
//! and a refusal apart as it can curl's failures.

use std::fmt;
use std::process::ExitCode;

/// Any failure not listed below.
pub const OTHER: u8 = 1;
/// Bad usage: clap's own status for arguments it rejects, and ours for an invalid URL
/// and for a contract method's arguments that do not fit it (`Error::BadArguments`).
pub const USAGE: u8 = 2;
/// Nothing listens at the endpoint (`Error::NotFound`).
pub const NOT_LISTENING: u8 = 3;
/// No answer, room or message in time (`Error::Timeout`, `Error::Full`, a `--count` not
/// reached within `--timeout`).
pub const TIMED_OUT: u8 = 4;
/// The server or the system said no (`Error::Refused`, `Error::Remote`,
/// `Error::PermissionDenied`).
pub const REFUSED: u8 = 5;
/// The contract method called failed with the application's own error.
pub const METHOD_FAILED: u8 = 6;
/// The contract server hosts no such object, or the object has no such method
/// (`Error::UnknownObject`, `Error::UnknownMethod`).
pub const NO_SUCH_METHOD: u8 = 7;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// An ipckit call failed; `hint` is the CLI's own advice, for the command that failed.
    Ipc {
        error: ipckit::Error,
        hint: Option<String>,
    },
    /// The command's own bound ran out (`--count` within `--timeout`).
    TimedOut(String),
    /// A contract method failed with its own error: what was called, and the error's
    /// JSON.
    MethodFailed { called: String, error: String },
    /// Arguments that clap cannot tell are at odds.
    Usage(String),
    /// Anything else, said in full.
    Other(String),
    /// Whoever read standard output went away: the output is no longer wanted, which is no
    /// failure (`ipckit listen URL | head -1`).
    ReaderGone,
}

/// The URL a server would listen at for a client's `url`: without the options only a
/// client takes.
fn server_url(url: &str) -> String {
    let Some((address, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|option| !option.starts_with("connect_timeout="))
        .collect();
    if kept.is_empty() {
        address.to_owned()
    } else {
        format!("{address}?{}", kept.join("&"))
    }
}

impl Failure {
    /// Adds the advice a client command gives when nothing listens: the library's text
    /// names no command, as an application's users have none to run.
    pub fn for_client(self, server_command: &str) -> Failure {
        match self {
            Failure::Ipc {
                error: error @ ipckit::Error::NotFound { .. },
                hint: None,
            } => {
                let hint = format!(
                    "To start one: `ipckit {server_command} '{}'`",
                    server_url(error.endpoint())
                );
                Failure::Ipc {
                    error,
                    hint: Some(hint),
                }
            }
            other => other,
        }
    }

    fn code(&self) -> u8 {
        use ipckit::Error;
        match self {
            Failure::Ipc { error, .. } => match error {
                Error::InvalidUrl { .. } | Error::BadArguments { .. } => USAGE,
                Error::UnknownObject { .. } | Error::UnknownMethod { .. } => NO_SUCH_METHOD,
                Error::NotFound { .. } => NOT_LISTENING,
                Error::Timeout { .. } | Error::Full { .. } => TIMED_OUT,
                Error::Refused { .. } | Error::Remote { .. } | Error::PermissionDenied { .. } => {
                    REFUSED
                }
                _ => OTHER,
            },
            Failure::TimedOut(_) => TIMED_OUT,
            Failure::MethodFailed { .. } => METHOD_FAILED,
            Failure::Usage(_) => USAGE,
            Failure::Other(_) => OTHER,
            Failure::ReaderGone => 0,
        }
    }

    /// Says what failed, on one line of stderr, and gives the status to exit with.
    pub fn report(self) -> ExitCode {
        if !matches!(self, Failure::ReaderGone) {
            eprintln!("ipckit: {self}");
        }
        ExitCode::from(self.code())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Ipc { error, hint: None } => write!(f, "{error}"),
            Failure::Ipc {
                error,
                hint: Some(hint),
            } => write!(f, "{error}. {hint}"),
            // The error's JSON ends the line, for a script to take.
            Failure::MethodFailed { called, error } => write!(f, "{called} failed: {error}"),
            Failure::TimedOut(what) | Failure::Usage(what) | Failure::Other(what) => {
                f.write_str(what)
            }
            Failure::ReaderGone => f.write_str("the reader of standard output went away"),
        }
    }
}

impl From<ipckit::Error> for Failure {
    fn from(error: ipckit::Error) -> Failure {
        Failure::Ipc { error, hint: None }
    }
}

impl From<String> for Failure {
    fn from(what: String) -> Failure {
        Failure::Other(what)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Other(e.to_string())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Failure {
        Failure::Other(e.to_string())
    }
}

/// What a command returns.
pub type CliResult = Result<(), Failure>;

/// Maps a failed write to standard output: a reader gone is [`Failure::ReaderGone`].
pub fn stdout_error(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::ReaderGone
    } else {
        Failure::Other(format!("writing to standard output: {e}"))
    }
}
