//! Peers and endpoints coming and going: peers that disconnect, die or are killed
//! mid-message, servers that die or restart, endpoints that are missing, and the files
//! endpoints live in: private, removed after use, closed to other users.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use ipckit::endpoint::{Address, HostPort, UnixAddr};
use ipckit::transport::{Capabilities, Transport};
use ipckit::{Endpoint, Error};

use crate::api;
use crate::peer::{self, Role};
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, always, checks, duplex, ensure, has_path,
    heard_by_a_printer, one_receiver, parse_numbered, path_of, recv, refuses_transient, reliable,
    reliable_transient, transient_one_receiver,
};

pub const CHECKS: &[Check] = checks![
    reliable => peer_disconnects,
    reliable_transient => send_fails_once_receiver_killed,
    reliable => writer_killed_mid_message,
    reliable_transient => sigpipe_never_kills,
    duplex => crashed_requester_leaves_nothing,
    duplex => crashed_requesters_reclaimed_while_serving,
    duplex => finished_clients_not_held,
    one_receiver => restart_on_same_endpoint,
    transient_one_receiver => missing_endpoint,
    reliable => connect_waits_for_its_server_when_asked,
    placed => listen_where_it_cannot,
    duplex => server_dies_during_request,
    refuses_transient => pending_requests_fail_when_the_server_stops,
    always => spawn_serves_and_stops_on_drop,
    has_path => endpoint_file_private_and_removed,
    has_path => other_user_refused,
];

pub const BLOCKING_CHECKS: &[Check] = checks![
    always => stopper_ends_a_blocked_loop,
];

/// A `Stopper` used from another thread ends a loop blocked in `recv`, `recv_with` or
/// `serve_with` with `Stopped`; `incoming` ends; dropping the server then cleans up.
fn stopper_ends_a_blocked_loop(ctx: &Ctx) -> Outcome {
    let mut server = ipckit::listen(ctx.endpoint("stopped"))?;
    let url = server.endpoint().clone();
    let stop_soon = |stopper: ipckit::Stopper| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stopper.stop();
        })
    };
    let stopping = stop_soon(server.stopper());
    let received = server.incoming().count();
    stopping
        .join()
        .map_err(|_| "the stopping thread panicked")?;
    ensure!(
        received == 0,
        "incoming yielded {received} items, then ended"
    );
    for (call, ended) in [
        ("recv", server.recv().map(drop)),
        ("recv_with", server.recv_with(|_| ())),
        (
            "serve_with",
            server.serve_with(|_| ControlFlow::<()>::Continue(())),
        ),
    ] {
        ensure!(
            matches!(ended, Err(Error::Stopped { .. })),
            "{call} on a stopped server gave {ended:?}"
        );
    }
    // Stopped while blocked in serve_with, on a fresh server: it returns at once.
    drop(server);
    let mut server = ipckit::listen(&url)?;
    let stopping = stop_soon(server.stopper());
    let ended = server.serve_with(|_| ControlFlow::<()>::Continue(()));
    stopping
        .join()
        .map_err(|_| "the stopping thread panicked")?;
    ensure!(
        matches!(ended, Err(Error::Stopped { .. })),
        "serve_with stopped while blocked gave {ended:?}"
    );
    // A durable endpoint keeps what waits in it: its directory stays (spool).
    let path = path_of(&url).filter(|_| !server.capabilities().durable);
    drop(server);
    if let Some(path) = path {
        ensure!(
            !path.exists(),
            "{} is left after the stopped server was dropped",
            path.display()
        );
    }
    Ok(())
}

/// Requests that a server has not answered when it stops get an error at once, rather
/// than wait out their timeout. (On mq they stay queued for the next server: durable.)
fn pending_requests_fail_when_the_server_stops(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("stopping"))?;
    let url = server.endpoint().to_string();
    let mut asker = Child::spawn(Role::RequestWhenTold, &url);
    let connected = asker.line_serving(&mut server)?;
    ensure!(connected == "connected", "the asker said {connected}");
    asker.say("go")?;
    let requesting = asker.line()?;
    ensure!(requesting == "requesting", "the asker said {requesting}");
    // Whether the request is written before the server stops or after, its caller must
    // learn at once; this only makes the first case the likely one.
    std::thread::sleep(Duration::from_millis(50));
    drop(server);
    let ended = asker.line()?;
    ensure!(
        !ended.starts_with("Timeout") && ended != "reply",
        "a request pending when its server stopped ended with: {ended}"
    );
    asker.finish()?;
    Ok(())
}

fn peer_disconnects(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("disconnect"))?;
    let url = server.endpoint().to_string();
    // One peer sends and exits; another is killed while connected; a third still works.
    let first = Child::spawn(
        Role::Send {
            client: 1,
            count: 20,
        },
        &url,
    );
    for seq in 0..20 {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (1, seq),
            "lost message {seq} of the first peer"
        );
    }
    first.finish()?;
    let mut idle = Child::spawn(Role::ConnectAndWait, &url);
    idle.line_serving(&mut server)?;
    idle.kill();
    let last = Child::spawn(
        Role::Send {
            client: 3,
            count: 20,
        },
        url,
    );
    for seq in 0..20 {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (3, seq),
            "lost message {seq} after a peer died"
        );
    }
    last.finish()?;
    Ok(())
}

fn send_fails_once_receiver_killed(ctx: &Ctx) -> Outcome {
    let (mut server, client, _) = heard_by_a_printer(ctx, "killed")?;
    server.kill();
    // A stream may take one more send to hear the reset; after that every send fails.
    let outcomes: Vec<_> = (0..3)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            client.send(b"into the void")
        })
        .collect();
    match outcomes.last().expect("three sends") {
        Err(Error::Disconnected { .. } | Error::NotFound { .. }) => Ok(()),
        other => Err(format!("sending to a killed receiver still gives {other:?}").into()),
    }
}

/// A writer killed while its large message is half-sent: the message arrives whole or
/// not at all, and other writers are unaffected.
fn writer_killed_mid_message(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("torn"))?;
    let url = server.endpoint().to_string();
    let mut writer = Child::spawn(Role::SendLarge, &url);
    ensure!(
        writer.line_serving(&mut server)? == "connected",
        "the writer did not connect"
    );
    // The server is not reading now, so the large message fills the buffers and the
    // writer is stuck in the middle of it when it is killed.
    writer.say("go")?;
    ensure!(writer.line()? == "sending", "the writer did not start");
    std::thread::sleep(Duration::from_millis(200));
    writer.kill();
    let other = Child::spawn(
        Role::Send {
            client: 5,
            count: 10,
        },
        url,
    );
    // The large message may have made it whole before the kill; anything else must be
    // the other writer's, in order.
    let is_whole_large = |payload: &[u8]| payload == peer::filled(payload.len()).as_slice();
    let mut seen = 0;
    while seen < 10 {
        let message = recv(&mut server)?;
        if is_whole_large(message.payload()) {
            continue;
        }
        ensure!(
            parse_numbered(message.payload())? == (5, seen),
            "the other writer lost message {seen}"
        );
        seen += 1;
    }
    other.finish()?;
    if let Some(message) = server.recv_timeout(Duration::from_millis(1500))? {
        ensure!(
            is_whole_large(message.payload()),
            "a partial message of {} bytes was delivered",
            message.payload().len()
        );
    }
    Ok(())
}

/// A sender whose SIGPIPE is at its default (fatal) disposition writes after its reader
/// is gone: it gets an error and lives.
fn sigpipe_never_kills(ctx: &Ctx) -> Outcome {
    let server = api::listen(ctx.endpoint("sigpipe"))?;
    let url = server.endpoint().to_string();
    let mut sender = Child::spawn(Role::SendAfterReaderDies, url);
    let mut server = server;
    ensure!(
        sender.line_serving(&mut server)? == "connected",
        "the sender did not connect"
    );
    drop(server);
    sender.say("go")?;
    let line = sender.line()?;
    ensure!(
        line.starts_with("error "),
        "sending to a dead reader said: {line}"
    );
    sender.finish()?;
    Ok(())
}

/// What a client makes for its requests (reply FIFOs, reply queues) is gone once a
/// server starts after the client was killed in the middle of a request.
fn crashed_requester_leaves_nothing(ctx: &Ctx) -> Outcome {
    let endpoint = ctx.endpoint("crash");
    let mut server = api::listen(&endpoint)?;
    let url = server.endpoint().clone();
    let mut client = Child::spawn(
        Role::RequestOnce {
            payload: "never answered".into(),
        },
        &url,
    );
    let request = recv(&mut server)?;
    ensure!(
        request.wants_reply(),
        "the request arrived as a one-way message"
    );
    client.kill();
    drop(request);
    drop(server);
    // An async server lets go of its address a moment after it is dropped (its runtime
    // closes the socket), so the restart may first find it taken, as Ctx's clean-up does.
    let mut restarted = api::listen(&url);
    for _ in 0..100 {
        if !matches!(restarted, Err(Error::AddrInUse { .. })) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        restarted = api::listen(&url);
    }
    let _restarted = restarted?;
    let leftovers = leftovers_of(&url);
    ensure!(
        leftovers.is_empty(),
        "left behind by the killed client: {leftovers:?}"
    );
    Ok(())
}

/// What crashed requesters leave (reply FIFOs, reply queues) is removed while the server
/// runs, as requests from other clients come, not only when a server starts.
fn crashed_requesters_reclaimed_while_serving(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("reclaim"))?;
    let url = server.endpoint().clone();
    for _ in 0..3 {
        let payload = "never answered".into();
        let mut client = Child::spawn(Role::RequestOnce { payload }, &url);
        let request = recv(&mut server)?;
        client.kill();
        drop(request);
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let leftovers = leftovers_of(&url);
        if leftovers.is_empty() {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "left behind by killed clients while the server ran: {leftovers:?}"
        );
        // Another client's request: the server looks after its clients on the way.
        let asker = std::thread::spawn({
            let url = url.clone();
            move || api::connect(&url)?.request(b"ping", PATIENCE)
        });
        let mut ping = recv(&mut server)?;
        ping.reply(b"pong")?;
        asker.join().map_err(|_| "the asker panicked")??;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server holds nothing of clients that are done: their reply channels (a FIFO, a
/// queue, which counts against its owner's RLIMIT_MSGQUEUE while open) are closed, but
/// for the one of the client that asked last.
fn finished_clients_not_held(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("done"))?;
    let url = server.endpoint().clone();
    for i in 0..5 {
        let payload = format!("ask {i}");
        let asker = Child::spawn(Role::RequestOnce { payload }, &url);
        let mut request = recv(&mut server)?;
        request.reply(b"answer")?;
        drop(request);
        asker.finish()?;
    }
    let held = held_by_this_process(&url);
    ensure!(
        held.len() <= 1,
        "the server holds the reply channels of finished clients open: {held:?}"
    );
    Ok(())
}

/// What this process has open that is named after `endpoint`, but the endpoint itself.
fn held_by_this_process(endpoint: &Endpoint) -> Vec<String> {
    let stem = match (path_of(endpoint), endpoint.address()) {
        (Some(path), _) => path.display().to_string(),
        (None, Address::Mq(name)) => format!("/{name}"),
        (None, _) => return Vec::new(),
    };
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| target.starts_with(&format!("{stem}.")))
        .collect()
}

/// Files and queues named after `endpoint` other than the endpoint itself.
fn leftovers_of(endpoint: &Endpoint) -> Vec<String> {
    let (dir, stem) = match (path_of(endpoint), endpoint.address()) {
        (Some(path), _) => (
            path.parent().unwrap().to_owned(),
            path.file_name().unwrap().to_string_lossy().into_owned(),
        ),
        // Queues are listed under /dev/mqueue where the mqueue filesystem is mounted
        // (scripts/test.sh mounts it); elsewhere there is nothing to look at.
        (None, Address::Mq(name)) => (PathBuf::from("/dev/mqueue"), name.clone()),
        (None, _) => return Vec::new(),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("{stem}.")))
        .collect()
}

fn restart_on_same_endpoint(ctx: &Ctx) -> Outcome {
    // A server in another process dies without cleaning up; its endpoint is reclaimed.
    let mut dead = Child::spawn(Role::ServeEcho, ctx.endpoint("restart"));
    let url = dead.ready()?;
    match api::listen(&url) {
        Err(Error::AddrInUse { .. }) => {}
        other => return Err(format!("a second server on a live endpoint: {other:?}").into()),
    }
    dead.kill();
    for round in 0..2 {
        let mut server = api::listen(&url)?;
        ensure!(
            server.endpoint() == &url,
            "restarted on {} instead of {url}",
            server.endpoint()
        );
        let sender = Child::spawn(
            Role::Send {
                client: round,
                count: 3,
            },
            &url,
        );
        for seq in 0..3 {
            ensure!(
                parse_numbered(recv(&mut server)?.payload())? == (round, seq),
                "round {round}: lost message {seq}"
            );
        }
        sender.finish()?;
    }
    Ok(())
}

fn missing_endpoint(ctx: &Ctx) -> Outcome {
    let url = api::listen(ctx.endpoint("missing"))?.endpoint().clone(); // dropped at once
    let mut child = Child::spawn(Role::Connect, &url);
    let line = child.line()?;
    ensure!(
        line == format!("NotFound {url}"),
        "connecting to a missing endpoint said: {line}"
    );
    child.finish()?;
    // What it says is a client's advice, in the library's words, not a command's.
    let said = api::connect(&url)
        .and_then(|client| client.request(b"probe", PATIENCE))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        said.contains("start the server first") && !said.contains("ipckit "),
        "connecting to a missing endpoint said: {said}"
    );
    // Asked to wait, a client that still finds nothing says how long it waited. (A udp
    // client has no connection to wait for: it learns at its request, as above.)
    let patient = url.with_connect_timeout(Duration::from_millis(20));
    if let Err(e) = api::connect(&patient) {
        let said = e.to_string();
        ensure!(
            matches!(e, Error::NotFound { .. }) && said.contains("after waiting 20ms"),
            "connecting with ?connect_timeout=20ms to a missing endpoint said: {said}"
        );
    }
    Ok(())
}

/// A client asked to wait for its server (`?connect_timeout=`) and started before it
/// connects once the server appears, and what it sends arrives.
fn connect_waits_for_its_server_when_asked(ctx: &Ctx) -> Outcome {
    let mut endpoint = ctx.endpoint("late");
    if let Address::Tcp(at) = endpoint.address() {
        // The client must know the port before the server has it: a free one, now.
        let free = std::net::TcpListener::bind((at.bare_host(), 0))?.local_addr()?;
        endpoint = endpoint.with_address(Address::Tcp(HostPort {
            host: at.host.clone(),
            port: free.port(),
        }));
    }
    let endpoint = endpoint.with_connect_timeout(PATIENCE);
    let mut client = Child::spawn(Role::ConnectEarly, &endpoint);
    let connecting = client.line()?;
    ensure!(connecting == "connecting", "the client said {connecting}");
    // Only makes it likely that the client has found nothing at least once; nothing
    // here depends on how long it took.
    std::thread::sleep(Duration::from_millis(100));
    let mut server = api::listen(&endpoint)?;
    let early = recv(&mut server)?;
    ensure!(
        early.payload() == b"early",
        "the server received {:?}",
        early.payload()
    );
    ensure!(client.line()? == "sent", "the client did not say it sent");
    client.finish()?;
    Ok(())
}

/// Endpoints a server places: at a path, whose directory may be missing, or at a host,
/// which may not be this machine.
fn placed(t: &dyn Transport, _: &Capabilities) -> bool {
    unusable(&t.scratch_endpoint(&std::env::temp_dir(), "probe")).is_some()
}

/// Where a server cannot listen, for an endpoint placed as `endpoint` is.
fn unusable(endpoint: &Endpoint) -> Option<Endpoint> {
    let missing = PathBuf::from("/nonexistent-ipckit-dir/x");
    let elsewhere = HostPort {
        host: "8.8.8.8".into(),
        port: 0,
    };
    Some(endpoint.with_address(match endpoint.address() {
        Address::Uds(UnixAddr::Path(_)) => Address::Uds(UnixAddr::Path(missing)),
        Address::Unixgram(UnixAddr::Path(_)) => Address::Unixgram(UnixAddr::Path(missing)),
        Address::Fifo(_) => Address::Fifo(missing),
        Address::Tcp(_) => Address::Tcp(elsewhere),
        Address::Udp(_) => Address::Udp(elsewhere),
        _ => return None,
    }))
}

/// A server asked to listen in a missing directory, or at an address of another machine,
/// is told so with a server's advice: never to start a server, never an `ipckit` command.
fn listen_where_it_cannot(ctx: &Ctx) -> Outcome {
    let endpoint = unusable(&ctx.endpoint("nowhere")).expect("a placed endpoint");
    let said = match api::listen(&endpoint) {
        Err(e @ Error::CannotListen { .. }) => e.to_string(),
        other => return Err(format!("listening at {endpoint} gave {other:?}").into()),
    };
    ensure!(
        !said.contains("ipckit ") && !said.contains("start the server") && !said.contains("?mode"),
        "listening at {endpoint} said: {said}"
    );
    let advice = match endpoint.address() {
        Address::Tcp(_) | Address::Udp(_) => "this machine has no address 8.8.8.8",
        _ => "the directory /nonexistent-ipckit-dir does not exist",
    };
    ensure!(
        said.contains(advice),
        "listening at {endpoint} said: {said}"
    );
    Ok(())
}

fn server_dies_during_request(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(Role::DieOnRequest, ctx.endpoint("dies"));
    let url = server.ready()?;
    let client = api::connect(&url)?;
    if ctx.transport.capabilities(&url).connection {
        match client.request(b"are you there?", PATIENCE) {
            // Why it broke is told once, with the endpoint once.
            Err(e @ Error::Disconnected { .. }) => {
                let said = e.to_string();
                let url = url.to_string();
                ensure!(
                    said.matches(url.as_str()).count() == 1,
                    "a request whose server died said: {said}"
                );
            }
            other => return Err(format!("expected Disconnected, got {other:?}").into()),
        }
        server.kill();
        return match client.request(b"again", PATIENCE) {
            Err(Error::Disconnected { .. }) => Ok(()),
            other => Err(format!("a broken connection must stay broken, got {other:?}").into()),
        };
    }
    // Without a connection the client may not learn it (a FIFO's client does, from its
    // inbound FIFO); at the latest, its timeout must end the wait.
    match client.request(b"are you there?", Duration::from_millis(500)) {
        Err(Error::Timeout { .. } | Error::Disconnected { .. }) => Ok(()),
        other => Err(format!("expected Timeout, got {other:?}").into()),
    }
}

fn spawn_serves_and_stops_on_drop(ctx: &Ctx) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let guard = api::listen(ctx.endpoint("spawned"))?.spawn(move |message| {
        tx.send(message.payload().to_vec()).unwrap();
        Some(message.payload().to_ascii_uppercase())
    });
    let url = guard.endpoint().to_string();
    if ctx.transport.capabilities(guard.endpoint()).duplex {
        let mut child = Child::spawn(
            Role::RequestOnce {
                payload: "shout".into(),
            },
            &url,
        );
        ensure!(
            child.line()? == "SHOUT",
            "the handler's reply did not come back"
        );
        child.finish()?;
    } else {
        Child::spawn(
            Role::Send {
                client: 4,
                count: 1,
            },
            &url,
        )
        .finish()?;
    }
    ensure!(rx.recv_timeout(PATIENCE).is_ok(), "the handler never ran");
    drop(guard);
    let caps = ctx.transport.capabilities(&url.parse()?);
    // A broadcast endpoint has no server whose absence a client would notice.
    if !caps.durable && !caps.broadcast {
        let mut child = Child::spawn(Role::Connect, &url);
        let line = child.line()?;
        ensure!(
            line == format!("NotFound {url}"),
            "after the guard was dropped, connecting said: {line}"
        );
    }
    // Stopped and cleaned up: the endpoint is free for the next server.
    api::listen(url.as_str())?;
    Ok(())
}

fn endpoint_file_private_and_removed(ctx: &Ctx) -> Outcome {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &PathBuf| std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
    let endpoint = ctx.endpoint("private");
    let durable = ctx.transport.capabilities(&endpoint).durable;
    let path = path_of(&endpoint).expect("a path endpoint");
    let server = api::listen(&endpoint)?;
    // A directory (a spool) may also be searched wherever it may be read.
    let is_dir = path.is_dir();
    let searchable = |bits: u32| match is_dir {
        true => bits | ((bits & 0o444) >> 2),
        false => bits,
    };
    ensure!(
        mode(&path)? == searchable(0o600),
        "created with mode {:o}, not {:o}",
        mode(&path)?,
        searchable(0o600)
    );
    drop(server);
    if durable {
        // Its messages outlive every process, and wait for the next receiver.
        ensure!(
            path.exists(),
            "{} went with its server, and the messages it keeps with it",
            path.display()
        );
        std::fs::remove_dir_all(&path)?;
    } else {
        ensure!(
            !path.exists(),
            "{} is left behind after the server was dropped",
            path.display()
        );
    }

    let wider = ctx.endpoint_with("shared", "mode", "0660");
    let server = api::listen(&wider)?;
    let wide_path = path_of(&wider).unwrap();
    ensure!(
        mode(&wide_path)? == searchable(0o660),
        "?mode=0660 gave mode {:o}",
        mode(&wide_path)?
    );
    drop(server);

    // Something that is not ours is never removed.
    std::fs::write(&path, b"precious")?;
    match api::listen(&endpoint) {
        Err(Error::AddrInUse { detail, .. }) if detail.contains("exists and is not a") => {}
        other => return Err(format!("listening over a regular file gave {other:?}").into()),
    }
    ensure!(
        std::fs::read(&path)? == b"precious",
        "the regular file was touched"
    );
    // Outside the scratch directory (a segment's path is in /dev/shm) nobody else would.
    std::fs::remove_file(&path)?;
    Ok(())
}

fn other_user_refused(ctx: &Ctx) -> Outcome {
    let root = rustix::process::getuid().is_root();
    // Root passes every permission check, so the stranger is a child that becomes nobody;
    // an ordinary user is refused by a mode that shuts out even the owner.
    let endpoint = if root {
        ctx.endpoint("owned")
    } else {
        ctx.endpoint_with("owned", "mode", "0000")
    };
    let mut server = api::listen(&endpoint)?;
    std::fs::set_permissions(
        &ctx.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut stranger = Child::spawn(
        Role::ConnectExpectDenied { as_nobody: root },
        server.endpoint(),
    );
    let line = stranger.line_serving(&mut server)?;
    ensure!(
        line == "PermissionDenied",
        "a stranger connecting to a 0600 endpoint got: {line}"
    );
    stranger.finish()?;
    Ok(())
}
