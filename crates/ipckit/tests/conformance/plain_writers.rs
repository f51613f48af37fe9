//! Plain writers: programs that know nothing of ipckit and write to an endpoint they open
//! as a file (`echo hi > app.fifo`), run as real `sh` processes.

use std::path::Path;
use std::process::Command;

use crate::api;
use crate::peer::Role;
use crate::support::{Check, Child, Ctx, Outcome, checks, ensure, opened_as_file, path_of};

pub const CHECKS: &[Check] = checks![in plain_writers:
    opened_as_file => foreign_bytes_reported_on_arrival,
];

/// Runs `script` in `sh` with `$1` the endpoint's path, and waits for it.
fn sh(script: &str, path: &Path) -> Outcome {
    let status = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(path)
        .status()?;
    ensure!(status.success(), "sh -c '{script}' exited with {status}");
    Ok(())
}

/// `echo hi` into a server of ipckit chunks is reported as it arrives, naming the
/// endpoint and the framing that would take it, though nothing follows it; it is not
/// delivered, and the server goes on serving.
fn foreign_bytes_reported_on_arrival(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(Role::Print, ctx.endpoint("chunks"));
    let url = server.ready()?;
    let path = path_of(&url).expect("a path");
    sh(r#"echo hi > "$1""#, &path)?;
    server.logged("3 bytes that are not ipckit chunks")?;
    server.logged("?framing=line")?;
    ensure!(
        server.stderr().contains(&url.to_string()),
        "the warning does not name the endpoint:\n{}",
        server.stderr()
    );
    api::connect(&url)?.send(b"after the echo")?;
    let line = server.line()?;
    ensure!(
        line == "msg after the echo",
        "the server delivered {line:?}, expected the client's message alone"
    );
    server.finish()?;
    Ok(())
}
