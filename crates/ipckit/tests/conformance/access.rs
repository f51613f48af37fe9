//! Who a server admits: by default its owner (and root) alone, also on an abstract socket,
//! which has no file for the kernel to check; more with `?mode=`, `?allow_uid=` and
//! `?allow_gid=`, which a transport that cannot learn its peers' credentials refuses.
//!
//! A stranger is a peer that becomes another user, which only root can do: as anyone else
//! the checks that need one are ignored (libtest lists them as such), never passed.

use ipckit::endpoint::{Address, UnixAddr};
use ipckit::{Endpoint, Error};

use crate::api;
use crate::peer::Role;
use crate::support::{Check, Child, Ctx, Outcome, checks, ensure, parse_numbered, recv};
use ipckit::transport::{Capabilities, Transport};

pub const CHECKS: &[Check] = checks![in access:
    strangers => abstract_refuses_a_stranger,
    strangers => abstract_mode_0660_admits_the_group,
    strangers => abstract_mode_0666_admits_a_stranger,
    strangers => abstract_allow_uid_admits_a_stranger,
    strangers => abstract_allow_gid_admits_a_stranger,
    strangers => path_allow_uid_admits_only_those_listed,
    no_credentials => allow_lists_refused_at_listen,
];

/// The user a stranger becomes (nobody), and another one.
const STRANGER: u32 = 65534;
const OTHER_STRANGER: u32 = 65533;

/// Transports that know their peers' credentials and have abstract names, when this
/// process may start peers as other users (root).
fn strangers(t: &dyn Transport, caps: &Capabilities) -> bool {
    let unix = matches!(
        t.scratch_endpoint(&std::env::temp_dir(), "probe").address(),
        Address::Uds(_) | Address::Unixgram(_)
    );
    caps.peer_credentials && unix && rustix::process::geteuid().is_root()
}

fn no_credentials(_: &dyn Transport, caps: &Capabilities) -> bool {
    !caps.peer_credentials
}

/// The check's endpoint under an abstract name instead of its path, with `options`.
fn abstract_endpoint(ctx: &Ctx, options: &[(&str, &str)]) -> Endpoint {
    let scratch = ctx.endpoint("access");
    let name = format!("{}-access", ctx.dir.file_name().unwrap().to_string_lossy());
    let mut endpoint = scratch.with_address(match scratch.address() {
        Address::Uds(_) => Address::Uds(UnixAddr::Abstract(name)),
        Address::Unixgram(_) => Address::Unixgram(UnixAddr::Abstract(name)),
        other => unreachable!("no abstract form of {other:?}"),
    });
    for (key, value) in options {
        endpoint.set_option(key, value).expect("a valid option");
    }
    endpoint
}

/// A stranger of `uid` (in the group of the same number) sends a message; the server
/// must receive it, from that uid.
fn admitted(server: &mut api::Server, uid: u32) -> Outcome {
    admitted_in(server, uid, uid)
}

fn admitted_in(server: &mut api::Server, uid: u32, gid: u32) -> Outcome {
    let mut stranger = Child::spawn(Role::SendAs { uid, gid }, server.endpoint());
    let message = recv(server)?;
    let (client, _) = parse_numbered(message.payload())?;
    ensure!(client == uid, "a message from client {client} came first");
    ensure!(
        message.peer().uid == Some(uid),
        "the message came from uid {:?}, not {uid}",
        message.peer().uid
    );
    // Dropped unanswered, a request (as the stranger sends it on a connection) ends.
    drop(message);
    let line = stranger.line()?;
    ensure!(line == "sent", "the admitted stranger said: {line}");
    stranger.finish()?;
    Ok(())
}

/// A stranger of `uid` tries to send a message: a connection is refused with a reason
/// naming the uid and how to admit it; a datagram is dropped (it cannot be answered). The
/// owner's message, sent after, must be the first the server receives.
fn refused(ctx: &Ctx, server: &mut api::Server, uid: u32) -> Outcome {
    let caps = ctx.transport.capabilities(server.endpoint());
    let gid = uid;
    let mut stranger = Child::spawn(Role::SendAs { uid, gid }, server.endpoint());
    let line = stranger.line_serving(server)?;
    if caps.connection {
        ensure!(
            line.starts_with("refused ")
                && line.contains(&format!("uid {uid}"))
                && line.contains(&format!("?allow_uid={uid}")),
            "a refused stranger said: {line}"
        );
    } else {
        ensure!(
            line == "sent" || line.starts_with("refused "),
            "the stranger said: {line}"
        );
    }
    stranger.finish()?;
    let owner = Child::spawn(
        Role::Send {
            client: 7,
            count: 1,
        },
        server.endpoint(),
    );
    let (client, _) = parse_numbered(recv(server)?.payload())?;
    ensure!(
        client == 7,
        "the server received client {client}'s message, not only the owner's"
    );
    owner.finish()?;
    Ok(())
}

fn abstract_refuses_a_stranger(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(abstract_endpoint(ctx, &[]))?;
    refused(ctx, &mut server, STRANGER)
}

fn abstract_mode_0660_admits_the_group(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(abstract_endpoint(ctx, &[("mode", "0660")]))?;
    // The server's group is root's: a stranger in it is admitted, one outside is not.
    let group = rustix::process::getegid().as_raw();
    admitted_in(&mut server, STRANGER, group)?;
    refused(ctx, &mut server, OTHER_STRANGER)
}

fn abstract_mode_0666_admits_a_stranger(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(abstract_endpoint(ctx, &[("mode", "0666")]))?;
    admitted(&mut server, STRANGER)
}

fn abstract_allow_uid_admits_a_stranger(ctx: &Ctx) -> Outcome {
    let allow = STRANGER.to_string();
    let mut server = api::listen(abstract_endpoint(ctx, &[("allow_uid", &allow)]))?;
    admitted(&mut server, STRANGER)?;
    refused(ctx, &mut server, OTHER_STRANGER)
}

fn abstract_allow_gid_admits_a_stranger(ctx: &Ctx) -> Outcome {
    // The stranger's group is its uid (SendAs).
    let allow = STRANGER.to_string();
    let mut server = api::listen(abstract_endpoint(ctx, &[("allow_gid", &allow)]))?;
    admitted(&mut server, STRANGER)?;
    refused(ctx, &mut server, OTHER_STRANGER)
}

fn path_allow_uid_admits_only_those_listed(ctx: &Ctx) -> Outcome {
    let endpoint = ctx.endpoint_with("listed", "allow_uid", &STRANGER.to_string());
    let mut server = api::listen(&endpoint)?;
    std::fs::set_permissions(
        &ctx.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    admitted(&mut server, STRANGER)?;
    refused(ctx, &mut server, OTHER_STRANGER)
}

fn allow_lists_refused_at_listen(ctx: &Ctx) -> Outcome {
    for key in ["allow_uid", "allow_gid"] {
        match api::listen(ctx.endpoint_with(key, key, "1000")) {
            Err(Error::Unsupported { what, .. }) if what.contains(key) => {}
            Err(e) => return Err(format!("?{key}= gave {e}").into()),
            Ok(_) => return Err(format!("a server took ?{key}= without knowing its peers").into()),
        }
    }
    Ok(())
}
