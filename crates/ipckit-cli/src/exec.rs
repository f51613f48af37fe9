//! `serve --exec CMD`: a command run per message, as socat's EXEC address runs one per
//! connection, its standard output the reply.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use ipckit::Message;

/// The most of CMD's first line of stderr that a refusal carries: a reason is cut to the
/// client's limit anyway, and one line says what went wrong.
const REASON_LINE: usize = 200;

/// The process group of the command running now, 0 when none: a server asked to stop
/// ends it rather than wait for it, or leave it running once the server is gone.
static RUNNING: AtomicI32 = AtomicI32::new(0);

/// Ends the command running now, if any, with SIGTERM: its request is refused, saying so.
pub fn stop_running() {
    let group = RUNNING.load(Ordering::Acquire);
    if group != 0 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Runs `cmd` for `message` and answers it: the reply is what `cmd` printed, or a refusal
/// saying how `cmd` failed. A one-way message gets no answer; a failure is logged.
pub fn answer(cmd: &str, timeout: Duration, message: &mut Message) {
    let outcome = run(cmd, timeout, message);
    let answered = match (&outcome, message.wants_reply()) {
        (Ok(stdout), true) => message.reply(stdout),
        (Err(reason), true) => message.refuse(reason),
        (Ok(_), false) => Ok(()),
        (Err(reason), false) => {
            log::warn!("a one-way message: {reason}");
            Ok(())
        }
    };
    // One client's failure is not the server's: that client has its answer or is gone,
    // and the others are still served.
    if let Err(e) = answered {
        log::warn!("{e}; serving the other clients");
    }
}

fn run(cmd: &str, timeout: Duration, message: &Message) -> Result<Vec<u8>, String> {
    let mut command = Command::new("sh");
    command
        .args(["-c", cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills what it started too: a
        // grandchild left holding the pipes would keep the reply from ending.
        .process_group(0);
    let peer = message.peer();
    for (name, value) in [
        ("IPCKIT_PEER_PID", peer.pid.map(|p| p.to_string())),
        ("IPCKIT_PEER_UID", peer.uid.map(|u| u.to_string())),
        ("IPCKIT_PEER_ADDR", peer.addr.clone()),
    ] {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("its command could not start: {e}"))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    RUNNING.store(group.as_raw(), Ordering::Release);
    let mut stdin = child.stdin.take().expect("piped");
    let payload = message.payload().to_vec();
    // Written and read on threads of their own, so that a CMD that prints before it has
    // read all its input cannot deadlock with us; a CMD that reads none of it (EPIPE) is
    // fine.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped")));
    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = exited.recv_timeout(timeout);
    // A stop that comes from here on finds the server's loop free, and stops it at once.
    RUNNING.store(0, Ordering::Release);
    let status = match status {
        Ok(status) => status,
        Err(_) => {
            // The group's id stays ours while sh is unreaped or anything of the group
            // runs; killing the group ends what holds the pipes too. The pipes' threads
            // are left to end on their own: something that left the group may hold them.
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = exited.recv();
            return Err(format!(
                "its command ran past --exec-timeout {} and was killed",
                humantime::format_duration(timeout)
            ));
        }
    };
    let status = status.map_err(|e| format!("waiting for its command: {e}"))?;
    let _ = writer.join();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(signal) => format!("was killed by {signal}"),
            Err(_) => format!("was killed by signal {signal}"),
        },
        _ => format!("ended with {status}"),
    };
    let first = String::from_utf8_lossy(&stderr);
    let first = first.lines().next().unwrap_or("").trim();
    let first: String = first.chars().take(REASON_LINE).collect();
    Err(if first.is_empty() {
        format!("its command {how}")
    } else {
        format!("its command {how}: {first}")
    })
}
