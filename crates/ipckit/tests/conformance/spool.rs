//! Spool directories (`spool:///dir`), where a message is a file: what a receiver does
//! with whatever else turns up in `new/` (symlinks, directories, FIFOs, foreign names),
//! a plain program's message, messages redelivered after a receiver's crash
//! (`?ack=done`) until `?max_deliveries=` sends them to `dead/`, a full filesystem, a
//! spool others could tamper with, and sends without fsync (`?sync=false`). The layout
//! is docs of the transport (`tmp/`, `new/`, `cur/`, `dead/`, `bad/`); each check has a
//! receiver or a sender in another process.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipckit::endpoint::Address;
use ipckit::transport::{Capabilities, Transport};
use ipckit::{Endpoint, Error};
use libtest_mimic::Failed;

use crate::api;
use crate::peer::{Role, exit_when_parent_goes, say};
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, ensure, numbered, parse_numbered, recv, spool_dir,
};

pub const CHECKS: &[Check] = checks![in spool:
    spool_dir => symlink_in_new_is_moved_aside,
    spool_dir => odd_entries_follow_the_rules,
    spool_dir => foreign_writer_is_heard,
    spool_dir => ack_done_redelivers_after_a_crash,
    spool_dir_as_root => disk_full_fails_cleanly,
    spool_dir => foreign_owner_or_wide_mode_refused,
    spool_dir => sync_false_still_delivers,
];

/// Spools, when this process may mount a filesystem (root); ignored otherwise.
fn spool_dir_as_root(t: &dyn Transport, caps: &Capabilities) -> bool {
    spool_dir(t, caps) && rustix::process::geteuid().is_root()
}

/// Plays the spool's own roles.
pub fn play(role: Role, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    match role {
        Role::HoldAndSleep => {
            let mut server = api::listen(url)?;
            exit_when_parent_goes();
            let message = server.recv()?;
            let deliveries = message
                .deliveries()
                .map_or("none".to_owned(), |n| n.to_string());
            say(&format!(
                "holding {deliveries} {}",
                String::from_utf8_lossy(message.payload())
            ));
            // Holds the message, unacknowledged, until the check kills this process.
            loop {
                std::thread::park();
            }
        }
        Role::ConnectReporting => match api::connect(url) {
            Ok(_) => say("connected"),
            Err(e @ Error::PermissionDenied { .. }) => say(&format!("PermissionDenied {e}")),
            Err(e) => say(&format!("unexpected {e:?}")),
        },
        other => return Err(format!("{other:?} is no spool role").into()),
    }
    Ok(())
}

fn spool_of(url: &Endpoint) -> PathBuf {
    match url.address() {
        Address::Spool(dir) => dir.clone(),
        other => unreachable!("a spool check on {other:?}"),
    }
}

/// The spool at `url`, laid out as ipckit lays it out: by a client that connects and
/// goes.
fn made(url: &Endpoint) -> Result<PathBuf, Failed> {
    drop(api::connect(url)?);
    let dir = spool_of(url);
    for sub in ["tmp", "new"] {
        ensure!(
            dir.join(sub).is_dir(),
            "a client that connected to {url} left no {sub}/ in {}",
            dir.display()
        );
    }
    Ok(dir)
}

/// The names in `dir`, none where it does not exist (yet).
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to [`PATIENCE`] until `done` says so; fails saying `what` was awaited.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Outcome {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        ensure!(
            Instant::now() < deadline,
            "{what} did not happen within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// What `bad/` holds under `name` (or a name it was given on the way, starting with it).
fn moved_aside(dir: &Path, name: &str) -> Option<PathBuf> {
    names_in(&dir.join("bad"))
        .into_iter()
        .find(|n| n.starts_with(name))
        .map(|n| dir.join("bad").join(n))
}

/// A symlink in `new/` with a valid name, to a file elsewhere, is never followed: the
/// receiver moves the link itself to `bad/` (logging it), delivers nothing of what it
/// points at, leaves the target as it was, and goes on to the next message.
fn symlink_in_new_is_moved_aside(ctx: &Ctx) -> Outcome {
    const SECRET: &[u8] = b"the secret";
    let url = ctx.endpoint("links");
    let dir = made(&url)?;
    let secret = ctx.dir.join("secret.txt");
    std::fs::write(&secret, SECRET)?;
    let name = "1000000000.planted-link";
    std::os::unix::fs::symlink(&secret, dir.join("new").join(name))?;
    let mut receiver = Child::spawn(Role::Print, &url);
    receiver.ready()?;
    let client = api::connect(&url)?;
    client.send(b"real after the link")?;
    let heard = receiver.line()?;
    ensure!(
        heard == "msg real after the link",
        "with a symlink in new/, the receiver's first message was {heard:?}"
    );
    wait_until("the link's move to bad/", || {
        moved_aside(&dir, name).is_some_and(|moved| {
            moved.symlink_metadata().is_ok_and(|m| m.is_symlink())
                && std::fs::read_link(&moved).is_ok_and(|to| to == secret)
        })
    })?;
    ensure!(
        dir.join("new").join(name).symlink_metadata().is_err(),
        "the link is still in new/ besides bad/"
    );
    let target = secret.symlink_metadata()?;
    ensure!(
        target.is_file() && std::fs::read(&secret)? == SECRET,
        "the link's target was changed: {target:?}"
    );
    receiver.logged(name)?;
    drop(client);
    let rest = receiver.finish_reading()?;
    ensure!(
        rest.iter()
            .all(|line| !line.contains(&*String::from_utf8_lossy(SECRET))),
        "the receiver delivered what the link points at: {rest:?}"
    );
    Ok(())
}

/// In `new/`: an empty file with a valid name is an empty message; a directory, a FIFO
/// (which must not block the receiver) and a file with a foreign name go to `bad/`; and
/// a message sent after them all is delivered.
fn odd_entries_follow_the_rules(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint("odd");
    let dir = made(&url)?;
    let new = dir.join("new");
    let (empty, subdir, fifo, foreign) = (
        "1000000001.empty",
        "1000000002.directory",
        "1000000003.fifo",
        "notes.txt",
    );
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(new.join(empty))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(new.join(subdir))?;
    let made_fifo = Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(new.join(fifo))
        .status()?;
    ensure!(made_fifo.success(), "mkfifo failed: {made_fifo}");
    std::fs::write(new.join(foreign), b"not a message")?;

    let mut receiver = Child::spawn(Role::Print, &url);
    receiver.ready()?;
    let heard = receiver.line()?;
    ensure!(
        heard == "msg ",
        "the empty file was not delivered as an empty message first: {heard:?}"
    );
    let client = api::connect(&url)?;
    client.send(b"after the odd ones")?;
    let heard = receiver.line()?;
    ensure!(
        heard == "msg after the odd ones",
        "after the odd entries the receiver said {heard:?}"
    );
    wait_until("the directory, the FIFO and notes.txt in bad/", || {
        let is = |name, kind: fn(&std::fs::FileType) -> bool| {
            moved_aside(&dir, name)
                .and_then(|p| p.symlink_metadata().ok())
                .is_some_and(|m| kind(&m.file_type()))
        };
        use std::os::unix::fs::FileTypeExt;
        is(subdir, std::fs::FileType::is_dir)
            && is(fifo, std::fs::FileType::is_fifo)
            && is(foreign, std::fs::FileType::is_file)
    })?;
    let left = names_in(&new);
    ensure!(left.is_empty(), "new/ still holds {left:?}");
    drop(client);
    let rest = receiver.finish_reading()?;
    ensure!(rest.is_empty(), "the receiver delivered more: {rest:?}");
    Ok(())
}

/// A message written by a plain program, as the transport's docs say to (write it in
/// `tmp/`, then move it into `new/`), is received with exactly its bytes.
fn foreign_writer_is_heard(ctx: &Ctx) -> Outcome {
    const PAYLOAD: &[u8] = b"written by sh\n\x00\xff, no ipckit\n";
    let mut server = api::listen(ctx.endpoint("foreign"))?;
    let dir = spool_of(server.endpoint());
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(r#"n=$(date +%s.%N).$$; cat > "$1/tmp/$n" && mv "$1/tmp/$n" "$1/new/""#)
        .arg("sh")
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()?;
    writer.stdin.take().expect("piped").write_all(PAYLOAD)?;
    let status = writer.wait()?;
    ensure!(status.success(), "the shell's write failed: {status}");
    let message = recv(&mut server)?;
    ensure!(
        message.payload() == PAYLOAD,
        "the shell wrote {PAYLOAD:?}; the server received {:?}",
        message.payload()
    );
    Ok(())
}

/// With `?ack=done`, a receiver killed while it holds a message leaves it to the next,
/// which is told it is the second delivery; with `?max_deliveries=2`, a message whose
/// two receivers were both killed holding it goes to `dead/`, not to a third.
fn ack_done_redelivers_after_a_crash(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint_with("again", "ack", "done");
    let client = api::connect(&url)?;
    client.send(b"handle me")?;
    let mut holder = Child::spawn(Role::HoldAndSleep, &url);
    let held = holder.line()?;
    ensure!(
        held == "holding 1 handle me",
        "the first receiver said {held:?}"
    );
    holder.kill();
    client.send(b"after the crash")?;
    let mut server = api::listen(&url)?;
    let again = recv(&mut server)?;
    ensure!(
        again.payload() == b"handle me" && again.deliveries() == Some(2),
        "after its receiver was killed, the message came as {:?}, delivery {:?}",
        String::from_utf8_lossy(again.payload()),
        again.deliveries()
    );
    drop(again);
    let next = recv(&mut server)?;
    ensure!(
        next.payload() == b"after the crash" && next.deliveries() == Some(1),
        "the next message came as {:?}, delivery {:?}",
        String::from_utf8_lossy(next.payload()),
        next.deliveries()
    );
    drop(next);
    drop(server);

    let mut url = ctx.endpoint_with("doomed", "ack", "done");
    url.set_option("max_deliveries", "2")?;
    let dir = spool_of(&url);
    let client = api::connect(&url)?;
    client.send(b"doomed")?;
    for delivery in 1..=2 {
        let mut holder = Child::spawn(Role::HoldAndSleep, &url);
        let held = holder.line()?;
        ensure!(
            held == format!("holding {delivery} doomed"),
            "receiver {delivery} said {held:?}"
        );
        holder.kill();
    }
    client.send(b"after the dead one")?;
    let mut server = api::listen(&url)?;
    let next = recv(&mut server)?;
    ensure!(
        next.payload() == b"after the dead one",
        "a message claimed max_deliveries=2 times was delivered a third time: {:?}",
        String::from_utf8_lossy(next.payload())
    );
    drop(next);
    let dead = dir.join("dead");
    wait_until("the doomed message's move to dead/", || {
        names_in(&dead)
            .iter()
            .any(|name| std::fs::read(dead.join(name)).is_ok_and(|b| b == b"doomed"))
    })?;
    Ok(())
}

/// A tmpfs mounted for one check, unmounted when dropped (also when the check fails).
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: PathBuf, size: &str) -> Result<Mounted, Failed> {
        std::fs::create_dir_all(&at)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()?;
        ensure!(
            status.success(),
            "mount -t tmpfs on {} failed: {status}",
            at.display()
        );
        Ok(Mounted(at))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Lazily: a peer still dying may hold a file open there.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A sender that fills the filesystem gets `Full` naming the endpoint; nothing half
/// written is left (`tmp/` empty, each file in `new/` a whole message); and a receiver,
/// paused meanwhile, goes on to receive every message stored, after which sends succeed
/// again.
fn disk_full_fails_cleanly(ctx: &Ctx) -> Outcome {
    const SIZE: usize = 20_000;
    let mount = Mounted::tmpfs(ctx.dir.join("small"), "256k")?;
    let url = ctx
        .endpoint("full")
        .with_address(Address::Spool(mount.0.join("spool")));
    let dir = spool_of(&url);
    let mut receiver = Child::spawn(Role::ReceiveNumbered, &url);
    receiver.ready()?;
    let pid = rustix::process::Pid::from_raw(receiver.pid() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP)?;
    let client = api::connect(&url)?;
    let mut stored = 0u32;
    let full = loop {
        match client.send(&numbered(0, stored, SIZE)) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        ensure!(
            stored < 1000,
            "256 KiB took {stored} messages of {SIZE} bytes"
        );
    };
    ensure!(
        matches!(full, Error::Full { .. }) && full.to_string().contains(&url.to_string()),
        "a full filesystem gave {full:?}"
    );
    let half = names_in(&dir.join("tmp"));
    ensure!(half.is_empty(), "the failed send left {half:?} in tmp/");
    let mut waiting = names_in(&dir.join("new"));
    waiting.sort();
    for name in &waiting {
        let bytes = std::fs::read(dir.join("new").join(name))?;
        ensure!(
            bytes.len() == SIZE && parse_numbered(&bytes).is_ok(),
            "new/{name} holds {} bytes, not a whole message",
            bytes.len()
        );
    }
    ensure!(
        waiting.len() == stored as usize,
        "{stored} sends succeeded; new/ holds {} messages",
        waiting.len()
    );
    // Looked at while the receiver was held, which would otherwise be taking them.
    rustix::process::kill_process(pid, rustix::process::Signal::CONT)?;
    for seq in 0..stored {
        let line = receiver.line()?;
        ensure!(
            line == format!("got 0 {seq}"),
            "after the filesystem filled, the receiver said {line:?} for message {seq}"
        );
    }
    client.send(&numbered(0, stored, SIZE))?;
    let line = receiver.line()?;
    ensure!(
        line == format!("got 0 {stored}"),
        "the send after the room was made came as {line:?}"
    );
    drop(client);
    receiver.finish()?;
    drop(mount);
    Ok(())
}

/// A spool others may write into (mode 0777), or, as root, one owned by another user, is
/// refused to a client and to a server, saying what is wrong and what to do.
fn foreign_owner_or_wide_mode_refused(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint("wide");
    let dir = made(&url)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    let told = |what: &str, said: &str, needs: &[&str], advice: &[&str]| -> Outcome {
        ensure!(
            needs.iter().all(|n| said.contains(n)) && advice.iter().any(|a| said.contains(a)),
            "{what}: {said}"
        );
        Ok(())
    };
    let refusals = |whom: &str, needs: &[&str], advice: &[&str]| -> Outcome {
        let mut client = Child::spawn(Role::ConnectReporting, &url);
        let said = client.line()?;
        ensure!(
            said.starts_with("PermissionDenied "),
            "a client of a spool {whom} said: {said}"
        );
        told(
            &format!("a client of a spool {whom} was told"),
            &said,
            needs,
            advice,
        )?;
        client.finish()?;
        match api::listen(&url) {
            Err(e @ Error::PermissionDenied { .. }) => told(
                &format!("a server of a spool {whom} was told"),
                &e.to_string(),
                needs,
                advice,
            ),
            other => Err(format!("a server of a spool {whom} got {other:?}").into()),
        }
    };
    refusals("of mode 0777", &["0777"], &["chmod", "?mode="])?;
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: not root, so the spool owned by another user is not tried");
        return Ok(());
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
    refusals("owned by uid 65534", &["65534"], &["chown", "?mode="])?;
    let me = rustix::process::geteuid().as_raw();
    std::os::unix::fs::chown(&dir, Some(me), Some(me))?;
    Ok(())
}

/// `?sync=false` skips the fsyncs and nothing else: 100 messages from another process
/// arrive whole and in order.
fn sync_false_still_delivers(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint_with("unsynced", "sync", "false");
    let mut server = api::listen(&url)?;
    let sender = Child::spawn(
        Role::Send {
            client: 5,
            count: 100,
        },
        &url,
    );
    for seq in 0..100 {
        let (client, got) = parse_numbered(recv(&mut server)?.payload())?;
        ensure!(
            (client, got) == (5, seq),
            "message {seq} came as {client}/{got}"
        );
    }
    sender.finish()?;
    Ok(())
}
