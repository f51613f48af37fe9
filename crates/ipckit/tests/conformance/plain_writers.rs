//! Plain writers: programs that know nothing of ipckit and write to an endpoint they open
//! as a file (`echo hi > app.fifo`), run as real `sh` processes.

use std::path::Path;
use std::process::Command;

use ipckit::{Endpoint, Error};

use crate::api;
use crate::peer::Role;
use libtest_mimic::Failed;

use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, ensure, opened_as_file, path_of,
};

pub const CHECKS: &[Check] = checks![in plain_writers:
    opened_as_file => foreign_bytes_reported_on_arrival,
    opened_as_file => lines_from_echo_and_printf,
    opened_as_file => lines_of_several_writers_at_once,
    opened_as_file => over_long_line_dropped_and_reported,
    opened_as_file => ipckit_client_writes_lines,
    opened_as_file => line_server_started_and_stopped,
    opened_as_file => default_framing_client_of_a_line_server_named,
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

/// A `Role::Print` server taking lines, with `options` besides.
fn line_server(ctx: &Ctx, options: &[(&str, &str)]) -> Result<(Child, Endpoint), Failed> {
    let mut endpoint = ctx.endpoint_with("lines", "framing", "line");
    for (key, value) in options {
        endpoint.set_option(key, value)?;
    }
    let mut server = Child::spawn(Role::Print, endpoint);
    let url = server.ready()?;
    Ok((server, url))
}

/// The next `n` lines the server printed, each expected to be a message.
fn messages(server: &mut Child, n: usize) -> Result<Vec<String>, Failed> {
    (0..n)
        .map(|_| {
            let line = server.line()?;
            line.strip_prefix("msg ")
                .map(str::to_owned)
                .ok_or_else(|| format!("the server printed {line:?}").into())
        })
        .collect()
}

/// `echo hi` into a server of ipckit chunks is reported as it arrives, naming the
/// endpoint and the framing that would take it, though nothing follows it; it is not
/// delivered, and the server goes on serving.
fn foreign_bytes_reported_on_arrival(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(Role::Print, ctx.endpoint("chunks"));
    let url = server.ready()?;
    let path = path_of(&url).expect("a path");
    sh(r#"echo hi > "$1""#, &path)?;
    server.logged("3 bytes that were not ipckit chunks")?;
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

/// With `?framing=line` every line `echo` writes is a message, and so is a last line
/// without a newline (`printf`) once its writer closes the FIFO.
fn lines_from_echo_and_printf(ctx: &Ctx) -> Outcome {
    let (mut server, url) = line_server(ctx, &[])?;
    let path = path_of(&url).expect("a path");
    sh(r#"echo hi > "$1"; printf 'one\ntwo\n' > "$1""#, &path)?;
    sh(r#"printf 'no newline' > "$1""#, &path)?;
    let got = messages(&mut server, 4)?;
    ensure!(
        got == ["hi", "one", "two", "no newline"],
        "the server delivered {got:?}"
    );
    server.finish()?;
    Ok(())
}

/// Writers writing lines at the same time: each line arrives whole, and each writer's
/// in its order (lines within PIPE_BUF are written atomically).
fn lines_of_several_writers_at_once(ctx: &Ctx) -> Outcome {
    let (mut server, url) = line_server(ctx, &[])?;
    let path = path_of(&url).expect("a path");
    let (writers, per_writer) = (6, 200);
    let script = format!(
        r#"i=1; while [ $i -le {per_writer} ]; do echo "writer $2 line $i"; i=$((i+1)); done > "$1""#
    );
    let children: Vec<_> = (0..writers)
        .map(|w| {
            Command::new("sh")
                .args(["-c", &script, "sh"])
                .arg(&path)
                .arg(w.to_string())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        ensure!(child.wait()?.success(), "a writer failed");
    }
    let mut next = vec![1; writers];
    for line in messages(&mut server, writers * per_writer)? {
        let parsed = line
            .strip_prefix("writer ")
            .and_then(|rest| rest.split_once(" line "))
            .and_then(|(w, i)| Some((w.parse::<usize>().ok()?, i.parse::<usize>().ok()?)));
        let Some((w, i)) = parsed.filter(|&(w, _)| w < writers) else {
            return Err(format!("a torn line: {line:?}").into());
        };
        ensure!(
            i == next[w],
            "writer {w}'s line {i} came where {} was due",
            next[w]
        );
        next[w] += 1;
    }
    server.finish()?;
    Ok(())
}

/// A line over `?max_message=` is dropped and reported; the lines around it, and an
/// ipckit client's after it, are delivered.
fn over_long_line_dropped_and_reported(ctx: &Ctx) -> Outcome {
    let (mut server, url) = line_server(ctx, &[("max_message", "16")])?;
    let path = path_of(&url).expect("a path");
    sh(
        r#"printf '%s\n' before 'a line far longer than sixteen bytes' after > "$1""#,
        &path,
    )?;
    api::connect(&url)?.send(b"from a client")?;
    let got = messages(&mut server, 3)?;
    ensure!(
        got == ["before", "after", "from a client"],
        "the server delivered {got:?}"
    );
    server.logged("a line longer than the limit of 16 bytes")?;
    server.finish()?;
    Ok(())
}

/// An ipckit client of a line-framed FIFO writes lines; it refuses a message with a
/// newline, and a request (a line has no return address), each before writing anything.
fn ipckit_client_writes_lines(ctx: &Ctx) -> Outcome {
    let (mut server, url) = line_server(ctx, &[])?;
    let client = api::connect(&url)?;
    client.send(b"first")?;
    match client.send(b"two\nlines") {
        Err(Error::Unsupported { what, .. }) if what.contains("newline") => {}
        other => return Err(format!("a message with a newline gave {other:?}").into()),
    }
    match client.request(b"a question", PATIENCE) {
        Err(Error::Unsupported { what, .. }) if what.contains("one-way") => {}
        other => return Err(format!("a request gave {other:?}").into()),
    }
    client.send(b"last")?;
    let got = messages(&mut server, 2)?;
    ensure!(got == ["first", "last"], "the server delivered {got:?}");
    server.finish()?;
    Ok(())
}

/// The article's Start/Received/Stop over lines: a running server hears `echo`, and
/// stopping it ends its loop, which waits on the FIFO, and removes the FIFO.
fn line_server_started_and_stopped(ctx: &Ctx) -> Outcome {
    let server = api::listen(ctx.endpoint_with("lines", "framing", "line"))?;
    let path = path_of(server.endpoint()).expect("a path");
    let (heard, hearing) = std::sync::mpsc::channel();
    let heard = std::sync::Mutex::new(heard);
    let guard = server.spawn(move |message| {
        let _ = heard.lock().unwrap().send(message.payload().to_vec());
        None
    });
    sh(r#"echo hi > "$1""#, &path)?;
    let got = hearing.recv_timeout(PATIENCE)?;
    ensure!(got == b"hi", "the server heard {got:?}");
    let (stopped, stopping) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(guard);
        let _ = stopped.send(());
    });
    stopping
        .recv_timeout(PATIENCE)
        .map_err(|_| "the server did not stop")?;
    ensure!(!path.exists(), "the stopped server left {}", path.display());
    Ok(())
}

/// A client of the default framing writing into a line-framed FIFO is named in the
/// server's log with the option it lacks; the server goes on serving.
fn default_framing_client_of_a_line_server_named(ctx: &Ctx) -> Outcome {
    let (mut server, url) = line_server(ctx, &[])?;
    let path = path_of(&url).expect("a path");
    let chunky: Endpoint = ipckit::endpoint::Address::Fifo(path).into();
    api::connect(&chunky)?.send(b"in chunks")?;
    server.logged("an ipckit client of the default framing writes into this line-framed FIFO")?;
    api::connect(&url)?.send(b"after")?;
    // What the chunks were taken for comes first, in as many lines as they held newlines.
    while server.line()? != "msg after" {}
    server.finish()?;
    Ok(())
}
