//! A stand-in for the receiving half, built on the store, for the clients' tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::names::Name;
use super::super::store::{Area, Registration, Spool};
use crate::endpoint::Endpoint;
use rustix::fs::Mode;

/// Long enough that a test that waits this long has failed.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A spool under a fresh directory of its own, removed when dropped.
pub(crate) struct Scratch {
    pub(crate) dir: PathBuf,
}

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("ipckit-spool-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    pub(crate) fn endpoint(&self, query: &str) -> Endpoint {
        format!("spool://{}{query}", self.spool().display())
            .parse()
            .unwrap()
    }

    pub(crate) fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// The names in a directory of the spool, in the spool's order.
    pub(crate) fn names(&self, under: &str) -> Vec<Name> {
        let mut names: Vec<Name> = std::fs::read_dir(self.spool().join(under))
            .unwrap()
            .map(|entry| {
                let name = entry.unwrap().file_name();
                Name::parse(name.as_encoded_bytes()).expect("a spool name")
            })
            .collect();
        names.sort_by(|a, b| a.order(b));
        names
    }

    pub(crate) fn receiver(&self) -> Receiver {
        let spool = Spool::open(&self.endpoint(""), true, false).unwrap();
        let registration = spool.register_receiver().unwrap();
        Receiver {
            spool,
            registration,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A registered receiver that claims by rename and answers into inboxes.
pub(crate) struct Receiver {
    pub(crate) spool: Spool,
    pub(crate) registration: Registration,
}

impl Receiver {
    /// Claims the first message waiting in `new/`: moved to `cur/`, read and removed.
    pub(crate) fn claim(&self) -> Option<(Name, Vec<u8>)> {
        let dir = self.spool.path().to_owned();
        let mut names: Vec<Name> = self
            .spool
            .entries(Area::New)
            .unwrap()
            .iter()
            .filter_map(|name| Name::parse(name))
            .collect();
        names.sort_by(|a, b| a.order(b));
        let name = names.into_iter().next()?;
        let held = name.claimed_by(self.registration.id());
        let (from, to) = (
            dir.join("new").join(name.to_string()),
            dir.join("cur").join(held.to_string()),
        );
        std::fs::rename(from, &to).unwrap();
        let payload = std::fs::read(&to).unwrap();
        std::fs::remove_file(&to).unwrap();
        Some((name, payload))
    }

    /// Waits for the next message in `new/` and claims it.
    pub(crate) fn next(&self) -> (Name, Vec<u8>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(first) = self.claim() {
                return first;
            }
            assert!(Instant::now() < deadline, "no message came");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Answers `request` with `payload`, or refuses it with `payload` as the reason.
    pub(crate) fn answer(&self, request: &Name, payload: &[u8], refuse: bool) {
        let reply = Name::fresh(None, request.request());
        let reply = if refuse { reply.refusing() } else { reply };
        let inbox = self.spool.open_inbox(request.client().unwrap()).unwrap();
        inbox
            .publish(&reply, payload, Mode::from_raw_mode(0o600))
            .unwrap();
    }

    /// Pushes `payload` to the client `id`.
    pub(crate) fn push(&self, id: &str, payload: &[u8]) {
        push(&self.spool, id, payload)
    }

    /// Answers `count` requests: "refuse:WHY" is refused with WHY, anything else
    /// answered with "re:" and itself.
    pub(crate) fn serve(self, count: usize) -> Receiver {
        for _ in 0..count {
            let (name, payload) = self.next();
            match payload.strip_prefix(b"refuse:") {
                Some(why) => self.answer(&name, why, true),
                None => self.answer(&name, &[b"re:", &payload[..]].concat(), false),
            }
        }
        self
    }
}

/// Pushes `payload` to the client `id` of `spool`.
pub(crate) fn push(spool: &Spool, id: &str, payload: &[u8]) {
    let inbox = spool.open_inbox(id).unwrap();
    inbox
        .publish(
            &Name::fresh(None, None),
            payload,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
}

pub(crate) fn inbox_files(spool: &Path, id: &str) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(spool.join("clients").join(id).join("new"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect()
}
