//! Who may talk to a server, decided from the credentials the kernel gives for each peer
//! (SO_PEERCRED for a connection, SCM_CREDENTIALS for a datagram), by the stream and
//! datagram servers alike.
//!
//! A socket file lets the kernel apply the endpoint's `?mode=`, but an abstract socket has
//! no file: its server applies the mode to the peer itself, as the kernel would to a
//! file owned by the server's effective uid and gid. `?allow_uid=` and `?allow_gid=`
//! admit more peers, on either kind; a socket file with an allow-list gets the group and
//! other write bits, so that the listed peers reach the check, and the check then applies
//! the mode to everyone else.
//!
//! Root is always admitted: it passes a socket file's mode (CAP_DAC_OVERRIDE), and it can
//! read the server's memory anyway, so refusing it would protect nothing and make an
//! abstract socket stricter than a socket file.

use std::os::fd::BorrowedFd;

use crate::endpoint::{Address, Endpoint, UnixAddr};
use crate::error::{Error, Result};
use crate::message::Peer;

/// The write bits of the owner, group and other classes: what connecting to or sending to
/// a socket file needs.
const OWNER_W: u32 = 0o200;
const GROUP_W: u32 = 0o020;
const OTHER_W: u32 = 0o002;

/// A server's rule for whom it admits.
#[derive(Debug)]
pub(super) struct Access {
    owner_uid: u32,
    owner_gid: u32,
    mode: u32,
    allow_uid: Vec<u32>,
    allow_gid: Vec<u32>,
}

impl Access {
    /// The rule `endpoint` asks for, or `None` when the kernel enforces it already: a
    /// socket file without an allow-list, and every endpoint not on an AF_UNIX socket
    /// (whose transports refuse allow-lists, see [`check_listen`]).
    pub(super) fn for_endpoint(endpoint: &Endpoint) -> Option<Access> {
        let unix = match endpoint.address() {
            Address::Uds(addr) | Address::Unixgram(addr) => addr,
            _ => return None,
        };
        let (allow_uid, allow_gid) = (endpoint.allow_uid(), endpoint.allow_gid());
        let file_decides = matches!(unix, UnixAddr::Path(_));
        if file_decides && allow_uid.is_empty() && allow_gid.is_empty() {
            return None;
        }
        if endpoint.mode() & (GROUP_W | OTHER_W) == GROUP_W | OTHER_W
            && endpoint.mode() & OWNER_W != 0
        {
            return None; // everyone is admitted
        }
        Some(Access {
            owner_uid: rustix::process::geteuid().as_raw(),
            owner_gid: rustix::process::getegid().as_raw(),
            mode: endpoint.mode(),
            allow_uid,
            allow_gid,
        })
    }

    /// Whether a peer of `uid` and primary `gid` is admitted; `groups` gives its
    /// supplementary groups where the kernel can tell them, asked only if they matter.
    /// `Err` is the reason it is not, for the peer and the server's log.
    pub(super) fn admit(
        &self,
        uid: u32,
        gid: u32,
        groups: impl FnOnce() -> Vec<u32>,
    ) -> std::result::Result<(), String> {
        if uid == 0 || self.allow_uid.contains(&uid) {
            return Ok(());
        }
        let owner_class = uid == self.owner_uid;
        if owner_class && self.mode & OWNER_W != 0 {
            return Ok(());
        }
        let needs_groups = !owner_class && self.mode & GROUP_W != 0 || !self.allow_gid.is_empty();
        let groups = if needs_groups { groups() } else { Vec::new() };
        let member = |g: u32| gid == g || groups.contains(&g);
        if self.allow_gid.iter().any(|&g| member(g)) {
            return Ok(());
        }
        if !owner_class {
            let bit = if member(self.owner_gid) {
                GROUP_W
            } else {
                OTHER_W
            };
            if self.mode & bit != 0 {
                return Ok(());
            }
        }
        Err(format!(
            "uid {uid} (gid {gid}) is not admitted by mode {:04o}{}; the server's owner can admit it with ?allow_uid={uid} or ?allow_gid={gid}, or widen ?mode=",
            self.mode,
            self.lists()
        ))
    }

    fn lists(&self) -> String {
        let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let mut out = String::new();
        if !self.allow_uid.is_empty() {
            out += &format!(", allow_uid={}", list(&self.allow_uid));
        }
        if !self.allow_gid.is_empty() {
            out += &format!(", allow_gid={}", list(&self.allow_gid));
        }
        out
    }

    /// [`Access::admit`] for the peer of an accepted stream socket, whose supplementary
    /// groups the kernel keeps (SO_PEERGROUPS).
    pub(super) fn admit_connection(
        &self,
        fd: BorrowedFd<'_>,
        peer: &Peer,
    ) -> std::result::Result<(), String> {
        let (Some(uid), Some(gid)) = (peer.uid, peer.gid) else {
            return Err("the kernel gave no credentials for it".to_owned());
        };
        self.admit(uid, gid, || {
            crate::sys::peer_groups(fd).unwrap_or_else(|e| {
                log::warn!(
                    "cannot read a peer's groups (SO_PEERGROUPS): {e}; judging it by its gid alone"
                );
                Vec::new()
            })
        })
    }
}

/// The mode a socket file at `endpoint` is made with: the endpoint's, with the group and
/// other write bits added when an allow-list must let more peers reach the server's check.
pub(super) fn socket_file_mode(endpoint: &Endpoint) -> u32 {
    if endpoint.allow_uid().is_empty() && endpoint.allow_gid().is_empty() {
        endpoint.mode()
    } else {
        endpoint.mode() | GROUP_W | OTHER_W
    }
}

/// Refuses, before anything is made, an allow-list that `endpoint`'s transport could not
/// keep: one that cannot learn its peers' credentials would otherwise admit everyone the
/// mode admits while the URL says otherwise.
pub(crate) fn check_listen(transport: &dyn super::Transport, endpoint: &Endpoint) -> Result<()> {
    let lists = !endpoint.allow_uid().is_empty() || !endpoint.allow_gid().is_empty();
    if lists && !transport.capabilities(endpoint).peer_credentials {
        let scheme = transport.scheme();
        let has_mode = crate::endpoint::UrlOption::all()
            .any(|option| option.key() == "mode" && option.applies_to(scheme));
        let instead = if has_mode {
            "remove them and choose who may open the endpoint with ?mode=, or use uds or unixgram"
        } else {
            "remove them, or use uds or unixgram, whose servers admit peers by user"
        };
        return Err(Error::Unsupported {
            endpoint: endpoint.to_string(),
            what: format!(
                "{scheme} cannot learn who its peers are, so it cannot admit them by ?allow_uid= or ?allow_gid=; {instead}"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(url: &str) -> Access {
        let mut access = Access::for_endpoint(&url.parse().unwrap()).expect("a rule");
        (access.owner_uid, access.owner_gid) = (1000, 100);
        access
    }

    /// A transport that cannot keep an allow-list says what to use instead, and offers
    /// ?mode= only where the endpoint takes it.
    #[test]
    fn allow_lists_refused_with_advice_that_applies() {
        let refusal = |url: &str| {
            let endpoint: Endpoint = url.parse().unwrap();
            let transport = crate::transport::for_endpoint(&endpoint).unwrap();
            check_listen(transport, &endpoint).unwrap_err().to_string()
        };
        let tcp = refusal("tcp://127.0.0.1:0?allow_uid=1000");
        assert!(
            tcp.contains("use uds or unixgram") && !tcp.contains("?mode="),
            "{tcp}"
        );
        let mq = refusal("mq://x?allow_uid=1000");
        assert!(mq.contains("?mode="), "{mq}");
    }

    #[test]
    fn modes_apply_as_to_a_socket_file() {
        let none = Vec::new;
        let private = access("uds://@x");
        assert!(private.admit(1000, 5, none).is_ok());
        assert!(private.admit(0, 0, none).is_ok());
        let refusal = private.admit(1001, 100, none).unwrap_err();
        assert!(refusal.contains("uid 1001") && refusal.contains("?allow_uid=1001"));

        let group = access("unixgram://@x?mode=0660");
        assert!(group.admit(1001, 100, none).is_ok());
        assert!(group.admit(1001, 5, || vec![7, 100]).is_ok());
        assert!(group.admit(1001, 5, || vec![7]).is_err());
        assert!(Access::for_endpoint(&"uds://@x?mode=0666".parse().unwrap()).is_none());
        // The owner class alone decides for the owner, as the kernel's check does.
        assert!(access("uds://@x?mode=0060").admit(1000, 100, none).is_err());
    }

    #[test]
    fn allow_lists_add_to_the_mode() {
        let none = Vec::new;
        let listed = access("uds:///tmp/x.sock?allow_uid=7,8&allow_gid=50");
        assert!(listed.admit(8, 9, none).is_ok());
        assert!(listed.admit(9, 50, none).is_ok());
        assert!(listed.admit(9, 9, || vec![50]).is_ok());
        assert!(listed.admit(1000, 1, none).is_ok());
        assert!(listed.admit(9, 100, none).is_err());
        assert!(Access::for_endpoint(&"uds:///tmp/x.sock".parse().unwrap()).is_none());
        assert_eq!(
            socket_file_mode(&"uds:///tmp/x.sock?allow_gid=50".parse().unwrap()),
            0o622
        );
    }
}
