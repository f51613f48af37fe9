//! A spool message's name: its identity, its place in the queue, and what ipckit needs to
//! know about it, so that the file itself holds nothing but the payload (docs/PROTOCOL.md,
//! *spool*).
//!
//! ```text
//! name = base *( "," flag )
//! base = secs "." rest        secs: 1-20 digits; rest: [A-Za-z0-9._-]+
//! flag = "d=" count           deliveries before this one (absent: 0)
//!      / "c=" id              the ipckit client that sent it
//!      / "q=" number          a request's id, or the id a reply answers
//!      / "e"                  a reply that is a refusal
//!      / "r=" id              in cur/: the receiver holding the claim
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest name a spool accepts, less its `,r=` and `,d=` flags: NAME_MAX (255) less
/// the room of those flags at their longest (an id, a count), which a receiver adds as the
/// message moves, so that every name it accepts can still be claimed and returned.
pub(crate) const MAX_NAME: usize = 255 - (3 + MAX_ID) - (3 + 10);
/// The longest client or receiver id.
pub(crate) const MAX_ID: usize = 64;

/// A parsed name. Two names are the same message when their bases are equal; the flags
/// change as the message moves (a delivery counted, a claim marked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Name {
    base: String,
    /// Where the digits of the seconds end in `base`.
    secs_len: usize,
    deliveries: u32,
    client: Option<String>,
    request: Option<u64>,
    refusal: bool,
    receiver: Option<String>,
}

impl Name {
    /// Reads a name as a directory entry gives it; `None` for a foreign name, which the
    /// spool moves aside.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Name> {
        if bytes.is_empty() || bytes.len() > 255 || bytes[0] == b'.' {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(',');
        let base = parts.next()?;
        let secs_len = base.bytes().take_while(u8::is_ascii_digit).count();
        let rest = base.get(secs_len..)?.strip_prefix('.')?;
        if !(1..=20).contains(&secs_len) || rest.is_empty() || !rest.bytes().all(is_base_byte) {
            return None;
        }
        let mut name = Name {
            base: base.to_owned(),
            secs_len,
            deliveries: 0,
            client: None,
            request: None,
            refusal: false,
            receiver: None,
        };
        let (mut seen_d, mut seen_c, mut seen_q, mut seen_e, mut seen_r) =
            (false, false, false, false, false);
        for flag in parts {
            let once = |seen: &mut bool| !std::mem::replace(seen, true);
            match flag.split_once('=') {
                Some(("d", count)) if once(&mut seen_d) => name.deliveries = number(count)?,
                Some(("c", id)) if once(&mut seen_c) => name.client = Some(id_of(id)?),
                Some(("q", id)) if once(&mut seen_q) => name.request = Some(number(id)?),
                Some(("r", id)) if once(&mut seen_r) => name.receiver = Some(id_of(id)?),
                None if flag == "e" && once(&mut seen_e) => name.refusal = true,
                _ => return None,
            }
        }
        (name.fixed_len() <= MAX_NAME).then_some(name)
    }

    /// The length of the name without the flags that change as it moves.
    fn fixed_len(&self) -> usize {
        let digits = |n: u64| n.checked_ilog10().unwrap_or(0) as usize + 1;
        self.base.len()
            + self.client.as_ref().map_or(0, |id| 3 + id.len())
            + self.request.map_or(0, |id| 3 + digits(id))
            + if self.refusal { 2 } else { 0 }
    }

    /// A fresh name of this process's, for a message from `client` (an ipckit client's
    /// id), answering or asking `request`.
    pub(crate) fn fresh(client: Option<&str>, request: Option<u64>) -> Name {
        let (secs, nanos) = next_instant();
        // Made once per send: sized at once, where `format!` would grow it three times.
        let mut base = String::with_capacity(48);
        let _ = fmt::Write::write_fmt(
            &mut base,
            format_args!(
                "{secs}.{nanos:09}.{}.{}",
                std::process::id(),
                NEXT_COUNTER.fetch_add(1, AtomicOrdering::Relaxed)
            ),
        );
        Name {
            secs_len: base.find('.').expect("a dot after the seconds"),
            base,
            deliveries: 0,
            client: client.map(str::to_owned),
            request,
            refusal: false,
            receiver: None,
        }
    }

    /// The name as a directory entry: what `to_string` makes, in one allocation (a send
    /// makes one, where `to_string` would grow it step by step).
    pub(crate) fn file_name(&self) -> String {
        let mut name = String::with_capacity(256);
        let _ = fmt::Write::write_fmt(&mut name, format_args!("{self}"));
        name
    }

    /// The order messages are received in: by the seconds as a number, then by the rest
    /// of the base as bytes. A sender's own names therefore sort in its send order, and
    /// a shell's `$(date +%s.%N)` sorts among them by time. Equal only for one base.
    pub(crate) fn order(&self, other: &Name) -> Ordering {
        let secs = |name: &Name| {
            name.base[..name.secs_len]
                .trim_start_matches('0')
                .to_owned()
        };
        let (mine, theirs) = (secs(self), secs(other));
        mine.len()
            .cmp(&theirs.len())
            .then_with(|| mine.cmp(&theirs))
            .then_with(|| self.base[self.secs_len..].cmp(&other.base[other.secs_len..]))
            .then_with(|| self.base.cmp(&other.base))
    }

    /// The process that made the name, where ipckit made it (`SECS.NANOS.PID.COUNTER`);
    /// only a claim, as any program may write such a name.
    pub(crate) fn sender_pid(&self) -> Option<u32> {
        let mut rest = self.base[self.secs_len + 1..].split('.');
        let (nanos, pid, counter) = (rest.next()?, rest.next()?, rest.next()?);
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        (rest.next().is_none() && nanos.len() == 9 && digits(nanos) && digits(counter))
            .then(|| number(pid))
            .flatten()
    }

    /// The part that stays the same wherever the message moves.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// How many times it was delivered before and never acknowledged.
    pub(crate) fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// The ipckit client that sent it, if one did.
    pub(crate) fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// The request it asks or answers.
    pub(crate) fn request(&self) -> Option<u64> {
        self.request
    }

    /// Whether it is a refusal of its request, its payload the reason.
    pub(crate) fn is_refusal(&self) -> bool {
        self.refusal
    }

    /// The receiver holding its claim, in `cur/`.
    pub(crate) fn receiver(&self) -> Option<&str> {
        self.receiver.as_deref()
    }

    /// The name as a refusal.
    pub(crate) fn refusing(mut self) -> Name {
        self.refusal = true;
        self
    }

    /// The name claimed by `receiver`, as it stands in `cur/`.
    pub(crate) fn claimed_by(&self, receiver: &str) -> Name {
        Name {
            receiver: Some(receiver.to_owned()),
            ..self.clone()
        }
    }

    /// The name of a claim whose holder died, back in `new/`: one more delivery counted.
    pub(crate) fn returned(&self) -> Name {
        Name {
            receiver: None,
            deliveries: self.deliveries.saturating_add(1),
            ..self.clone()
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)?;
        if self.deliveries > 0 {
            write!(f, ",d={}", self.deliveries)?;
        }
        if let Some(client) = &self.client {
            write!(f, ",c={client}")?;
        }
        if let Some(request) = self.request {
            write!(f, ",q={request}")?;
        }
        if self.refusal {
            f.write_str(",e")?;
        }
        if let Some(receiver) = &self.receiver {
            write!(f, ",r={receiver}")?;
        }
        Ok(())
    }
}

/// Whether `id` can name a client or a receiver: it goes into names and directory names.
pub(crate) fn is_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A fresh id for a client or a receiver of this process: unique on the host while the
/// process lives, and never reused by it.
pub(crate) fn fresh_id() -> String {
    let (secs, nanos) = next_instant();
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        u128::from(secs) * 1_000_000_000 + u128::from(nanos),
        NEXT_COUNTER.fetch_add(1, AtomicOrdering::Relaxed)
    )
}

static NEXT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The time for the next name: the wall clock, but never less than a nanosecond past the
/// previous one this process took, so that a clock stepped back cannot reorder one
/// sender's messages.
fn next_instant() -> (u64, u32) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos().min(u128::from(u64::MAX)) as u64);
    let mut last = LAST.load(AtomicOrdering::Relaxed);
    let taken = loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(
            last,
            next,
            AtomicOrdering::Relaxed,
            AtomicOrdering::Relaxed,
        ) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    (taken / 1_000_000_000, (taken % 1_000_000_000) as u32)
}

fn is_base_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// A canonical decimal: digits, no leading zero, within its type.
fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

fn id_of(text: &str) -> Option<String> {
    is_id(text).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_parse_back_and_sort_in_the_order_they_were_made() {
        let names: Vec<Name> = (0..1000)
            .map(|i| Name::fresh(Some("42-abc-7"), (i % 2 == 0).then_some(i)))
            .collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                Name::parse(name.file_name().as_bytes()).as_ref(),
                Some(name)
            );
            if i > 0 {
                assert_eq!(
                    names[i - 1].order(name),
                    Ordering::Less,
                    "{} {name}",
                    names[i - 1]
                );
            }
        }
    }

    #[test]
    fn every_flag_round_trips_and_moves_keep_the_base() {
        let name = Name::parse(b"1733360000.123456789.77.5,d=2,c=a-b_1,q=9,e,r=x").unwrap();
        assert_eq!(name.deliveries(), 2);
        assert_eq!(name.client(), Some("a-b_1"));
        assert_eq!(name.request(), Some(9));
        assert!(name.is_refusal());
        assert_eq!(name.receiver(), Some("x"));
        assert_eq!(
            name.to_string(),
            "1733360000.123456789.77.5,d=2,c=a-b_1,q=9,e,r=x"
        );
        assert_eq!(name.file_name(), name.to_string());
        let returned = name.returned();
        assert_eq!(
            returned.to_string(),
            "1733360000.123456789.77.5,d=3,c=a-b_1,q=9,e"
        );
        assert_eq!(returned.base(), name.base());
        assert_eq!(returned.claimed_by("me").receiver(), Some("me"));
        // Flags in any order are read; written back in the canonical order.
        let shuffled = Name::parse(b"1.x,q=1,c=c").unwrap();
        assert_eq!(shuffled.to_string(), "1.x,c=c,q=1");
    }

    #[test]
    fn a_shells_date_name_sorts_by_time_among_ipckits_own() {
        let shell = Name::parse(b"1733360000.500000000.4242").unwrap();
        let before = Name::parse(b"1733360000.400000000.1.0").unwrap();
        let after = Name::parse(b"1733360001.000000000.1.1").unwrap();
        let padded = Name::parse(b"0001733360001.0").unwrap();
        assert_eq!(before.order(&shell), Ordering::Less);
        assert_eq!(shell.order(&after), Ordering::Less);
        assert_eq!(Name::parse(b"9.x").unwrap().order(&shell), Ordering::Less);
        assert_eq!(shell.order(&padded), Ordering::Less);
    }

    #[test]
    fn foreign_names_are_refused() {
        for foreign in [
            &b""[..],
            b".hidden",
            b"notes.txt",
            b"1733360000",
            b"1733360000.",
            b"1733360000.x/y",
            b"1733360000.x y",
            b"123456789012345678901.x",
            b"1.x,d=1,d=2",
            b"1.x,d=01",
            b"1.x,d=-1",
            b"1.x,d=99999999999",
            b"1.x,z=1",
            b"1.x,e,e",
            b"1.x,c=",
            b"1.x,c=a.b",
            b"1.x,",
            b"1.\xff",
        ] {
            assert!(
                Name::parse(foreign).is_none(),
                "{:?}",
                String::from_utf8_lossy(foreign)
            );
        }
        assert!(Name::parse(&[b'1'; 256]).is_none());
        let longest = format!("1.{},q=12345", "x".repeat(MAX_NAME - 10));
        assert!(Name::parse(longest.as_bytes()).is_some());
        let claimed = Name::parse(longest.as_bytes()).unwrap().returned();
        let claimed = claimed.claimed_by(&"r".repeat(MAX_ID)).to_string();
        assert!(claimed.len() <= 255, "{}", claimed.len());
        assert!(
            Name::parse(claimed.as_bytes()).is_some(),
            "a claim's name parses"
        );
        assert!(Name::parse(format!("1x{longest}").as_bytes()).is_none());
        let long_id = format!("1.x,c={}", "a".repeat(MAX_ID + 1));
        assert!(Name::parse(long_id.as_bytes()).is_none());
    }

    #[test]
    fn the_sender_of_ipckits_own_names_is_known() {
        let mine = Name::fresh(Some("x"), Some(1));
        assert_eq!(mine.sender_pid(), Some(std::process::id()));
        for shell in [
            &b"1733360000.123456789.4242"[..],
            b"1.x.1.2",
            b"1.123456789.01.2",
        ] {
            assert_eq!(Name::parse(shell).unwrap().sender_pid(), None);
        }
    }

    #[test]
    fn ids_are_fresh_and_fit_names() {
        let a = fresh_id();
        let b = fresh_id();
        assert_ne!(a, b);
        assert!(is_id(&a) && is_id(&b));
        assert!(Name::parse(format!("1.x,c={a}").as_bytes()).is_some());
    }
}
