//! How important an event is: ETW's levels, which a broadcast listener enables and a
//! writer tags its events with.

use std::fmt;
use std::str::FromStr;

/// The importance of an event, as Event Tracing for Windows grades it: a listener enables
/// a level and receives the events at that level and every more important one.
///
/// The values are ETW's (`EventLevel` in .NET), so that a number read off the wire or a
/// log means the same thing there and here. A transport that does not filter by level
/// (every one but `events`) delivers every message whatever its level.
///
/// ```
/// use ipckit::Level;
///
/// let listener: Level = "warning".parse()?;
/// assert!(listener.includes(Level::Error));
/// assert!(!listener.includes(Level::Informational));
/// assert_eq!(Level::Verbose.to_string(), "verbose");
/// # Ok::<(), ipckit::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    /// Always delivered, whatever level a listener enables (ETW's LogAlways).
    LogAlways = 0,
    /// A failure that stops the program or a part of it.
    Critical = 1,
    /// A failure the program survives.
    Error = 2,
    /// Something that may become a failure.
    Warning = 3,
    /// What the program is doing: the level [`Client::send`](crate::Client::send) writes
    /// when the endpoint names none.
    Informational = 4,
    /// Everything, for tracing; the level a listener enables when its endpoint names none.
    Verbose = 5,
}

impl Level {
    /// Every level, most important first.
    pub const ALL: [Level; 6] = [
        Level::LogAlways,
        Level::Critical,
        Level::Error,
        Level::Warning,
        Level::Informational,
        Level::Verbose,
    ];

    /// The level an event is written at when its writer names none.
    pub const DEFAULT_EVENT: Level = Level::Informational;

    /// The level a listener enables when it names none: everything.
    pub const DEFAULT_LISTENER: Level = Level::Verbose;

    /// Whether a listener that enabled `self` receives an event written at `event`.
    ///
    /// ```
    /// use ipckit::Level;
    /// assert!(Level::Critical.includes(Level::LogAlways));
    /// assert!(!Level::Critical.includes(Level::Error));
    /// ```
    pub fn includes(self, event: Level) -> bool {
        event <= self
    }

    /// The level with ETW's number `value`, if there is one.
    ///
    /// ```
    /// assert_eq!(ipckit::Level::from_u8(3), Some(ipckit::Level::Warning));
    /// assert_eq!(ipckit::Level::from_u8(6), None);
    /// ```
    pub fn from_u8(value: u8) -> Option<Level> {
        Level::ALL.get(usize::from(value)).copied()
    }

    /// The name `Display` and `FromStr` use.
    ///
    /// ```
    /// assert_eq!(ipckit::Level::LogAlways.name(), "always");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Level::LogAlways => "always",
            Level::Critical => "critical",
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Informational => "info",
            Level::Verbose => "verbose",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Level {
    type Err = crate::Error;

    /// Reads a level by name, in any case: `always` (or `logalways`), `critical`,
    /// `error`, `warning` (or `warn`), `info` (or `informational`), `verbose`; or by
    /// ETW's number, `0` to `5`.
    fn from_str(text: &str) -> Result<Level, crate::Error> {
        let level = match text.to_ascii_lowercase().as_str() {
            "always" | "logalways" | "0" => Level::LogAlways,
            "critical" | "1" => Level::Critical,
            "error" | "2" => Level::Error,
            "warning" | "warn" | "3" => Level::Warning,
            "info" | "informational" | "4" => Level::Informational,
            "verbose" | "5" => Level::Verbose,
            _ => {
                return Err(crate::Error::InvalidUrl {
                    url: text.to_string(),
                    reason: "not a level; a level is one of always, critical, error, warning, info, verbose (or ETW's 0 to 5)".into(),
                });
            }
        };
        Ok(level)
    }
}

impl serde::Serialize for Level {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Level, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for level in Level::ALL {
            assert_eq!(level.name().parse::<Level>().unwrap(), level);
            assert_eq!(Level::from_u8(level as u8), Some(level));
        }
        assert_eq!("WARN".parse::<Level>().unwrap(), Level::Warning);
        assert!("loud".parse::<Level>().is_err());
    }

    #[test]
    fn a_listener_includes_what_is_at_least_as_important() {
        assert!(Level::Verbose.includes(Level::Critical));
        assert!(Level::Warning.includes(Level::Warning));
        assert!(!Level::Warning.includes(Level::Verbose));
        assert!(Level::LogAlways.includes(Level::LogAlways));
        assert!(!Level::LogAlways.includes(Level::Critical));
    }
}
