//! The conformance suite: every check written once, run against every registered
//! transport for which its capabilities say the check applies.
//!
//! Peers are separate processes: this test binary runs itself again with
//! `IPCKIT_CONFORMANCE_PEER=1` and a role (see `peer`), and speaks to it over the
//! transport under test. The peer reports on stdout, one line at a time.
//!
//! Run one transport or one check with the usual filters:
//! `cargo test --test conformance -- uds::`, `… -- request_reply`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipckit::endpoint::{Address, UnixAddr};
use ipckit::frame::{Header, Hello, Kind};
use ipckit::transport::{Capabilities, Transport};
use ipckit::{Endpoint, Error};
use libtest_mimic::{Arguments, Failed, Trial};

#[path = "conformance/api.rs"]
mod api;
use api::Api;

const PEER_ENV: &str = "IPCKIT_CONFORMANCE_PEER";
/// Upper bound on any single wait; a check that needs it has failed.
const PATIENCE: Duration = Duration::from_secs(30);

type Outcome = Result<(), Failed>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

fn main() -> ExitCode {
    if std::env::var_os(PEER_ENV).is_some() {
        return peer::run(std::env::args().skip(1).collect());
    }
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for &transport in ipckit::transport::all() {
        let dir = std::env::temp_dir();
        let caps = transport.capabilities(&transport.scratch_endpoint(&dir, "caps"));
        for api in [Api::Blocking, Api::Async] {
            // The blocking checks keep their plain names: `uds::check`, `uds::async::check`.
            let prefix = match api {
                Api::Blocking => transport.scheme().to_owned(),
                Api::Async => format!("{}::async", transport.scheme()),
            };
            let async_checks = if api == Api::Async { ASYNC_CHECKS } else { &[] };
            for check in CHECKS.iter().chain(async_checks) {
                let name = format!("{prefix}::{}", check.name.replace(' ', ""));
                let run = check.run;
                let applies = (check.applies)(transport, &caps);
                trials.push(
                    Trial::test(name.clone(), move || {
                        api::set(api);
                        run(&Ctx::new(transport, &name))
                    })
                    .with_ignored_flag(!applies),
                );
            }
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}

struct Check {
    name: &'static str,
    applies: fn(&dyn Transport, &Capabilities) -> bool,
    run: fn(&Ctx) -> Outcome,
}

fn always(_: &dyn Transport, _: &Capabilities) -> bool {
    true
}
fn duplex(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.duplex
}
/// Duplex transports whose answers can say "refused": all but datagrams, whose replies
/// carry only a payload (an unanswered caller times out).
fn refuses(t: &dyn Transport, caps: &Capabilities) -> bool {
    let ep = t.scratch_endpoint(&std::env::temp_dir(), "probe");
    caps.duplex && !matches!(ep.address(), Address::Udp(_) | Address::Unixgram(_))
}
fn reliable_ordered(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.reliable && caps.ordered
}
fn reliable(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.reliable
}
fn credentials(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.peer_credentials
}
/// Byte-stream endpoints, which a raw socket can feed with arbitrary bytes.
fn byte_stream(t: &dyn Transport, _: &Capabilities) -> bool {
    let ep = t.scratch_endpoint(&std::env::temp_dir(), "probe");
    matches!(ep.address(), Address::Uds(_) | Address::Tcp(_))
}

/// Transports whose large messages go out in several writes that a future can be
/// dropped between, and are finished after it: byte streams and shared-memory rings.
fn in_pieces(t: &dyn Transport, caps: &Capabilities) -> bool {
    byte_stream(t, caps) || caps.zero_copy
}

fn zero_copy(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.zero_copy
}
fn transient(_: &dyn Transport, caps: &Capabilities) -> bool {
    !caps.durable
}
fn reliable_transient(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.reliable && !caps.durable
}
fn durable(_: &dyn Transport, caps: &Capabilities) -> bool {
    caps.durable
}

/// Endpoints that live in the filesystem.
fn has_path(t: &dyn Transport, _: &Capabilities) -> bool {
    path_of(&t.scratch_endpoint(&std::env::temp_dir(), "probe")).is_some()
}

fn path_of(endpoint: &Endpoint) -> Option<PathBuf> {
    match endpoint.address() {
        Address::Uds(UnixAddr::Path(p)) | Address::Unixgram(UnixAddr::Path(p)) => Some(p.clone()),
        Address::Fifo(p) | Address::Spool(p) => Some(p.clone()),
        // Where glibc's shm_open, and ipckit, put the segment of `shm://NAME`.
        Address::Shm(name) => Some(PathBuf::from(format!("/dev/shm/ipckit.{name}"))),
        _ => None,
    }
}

/// The checks, each as `applies_when => check_function`; a check's name is its path.
macro_rules! checks {
    ($($applies:ident => $($run:ident)::+),* $(,)?) => {
        &[$(Check { name: stringify!($($run)::+), applies: $applies, run: $($run)::+ }),*]
    };
}

const CHECKS: &[Check] = checks![
    reliable_ordered => order_from_one_client,
    reliable => many_concurrent_clients,
    always => empty_and_maximum_size,
    always => oversized_refused_before_sending,
    byte_stream => server_limit_learned_in_handshake,
    byte_stream => line_framing_in_order,
    duplex => request_reply_concurrent,
    refuses => lent_request_answered_or_refused,
    reliable_ordered => served_until_the_handler_stops,
    duplex => exclusive_client,
    credentials => peer_credentials,
    reliable => peer_disconnects,
    reliable_transient => send_fails_once_receiver_killed,
    reliable => many_writers_random_sizes,
    reliable => writer_killed_mid_message,
    reliable_transient => sigpipe_never_kills,
    durable => durable_messages_wait_for_a_receiver,
    durable => receiver_killed_loses_nothing_sent,
    durable => full_queue_waits_then_fails,
    duplex => crashed_requester_leaves_nothing,
    always => restart_on_same_endpoint,
    transient => missing_endpoint,
    duplex => server_dies_during_request,
    always => spawn_serves_and_stops_on_drop,
    has_path => endpoint_file_private_and_removed,
    has_path => other_user_refused,
    byte_stream => bad_input::random_bytes,
    byte_stream => bad_input::truncated_frame,
    byte_stream => bad_input::length_over_limit,
    byte_stream => bad_input::claimed_length_not_allocated,
    byte_stream => bad_input::wrong_protocol_version,
    byte_stream => bad_input::killed_mid_frame,
    zero_copy => shared_memory::loan_written_and_read_in_place,
    zero_copy => shared_memory::garbage_positions,
    zero_copy => shared_memory::garbage_lengths,
    zero_copy => shared_memory::record_over_limit,
    zero_copy => shared_memory::garbage_in_reply_ring,
    zero_copy => shared_memory::killed_client_slot_reclaimed,
    zero_copy => shared_memory::dead_server_segment_removed,
];

/// What only futures can do: be dropped halfway. Run through the async API alone.
const ASYNC_CHECKS: &[Check] = checks![
    duplex => cancellation::request_dropped_while_waiting,
    // A datagram or a queue message leaves in one syscall, whole or not at all: nothing
    // to drop halfway. (A FIFO's pieces are dropped with the future; see fifo.rs.)
    in_pieces => cancellation::send_dropped_while_writing,
    reliable_ordered => cancellation::recv_dropped_again_and_again,
];

/// One check's surroundings: the transport, a private directory, and the endpoints it
/// made, destroyed at the end where the transport keeps them (durable queues).
struct Ctx {
    transport: &'static dyn Transport,
    dir: PathBuf,
    made: std::cell::RefCell<Vec<Endpoint>>,
}

impl Ctx {
    /// `trial` is the trial's name, `scheme::check`.
    fn new(transport: &'static dyn Transport, trial: &str) -> Ctx {
        let dir = std::env::temp_dir().join(format!(
            "ipckit-conf-{}-{}",
            std::process::id(),
            trial.replace("::", "-")
        ));
        std::fs::create_dir_all(&dir).expect("creating the check's directory");
        Ctx {
            transport,
            dir,
            made: Default::default(),
        }
    }

    /// A fresh endpoint for this check.
    fn endpoint(&self, name: &str) -> Endpoint {
        let endpoint = self.transport.scratch_endpoint(&self.dir, name);
        self.made.borrow_mut().push(endpoint.clone());
        endpoint
    }

    fn endpoint_with(&self, name: &str, key: &str, value: &str) -> Endpoint {
        let mut ep = self.endpoint(name);
        ep.set_option(key, value).expect("valid option");
        ep
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for endpoint in self.made.borrow().iter() {
            let _ = self.transport.destroy(endpoint);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Peer processes
// ---------------------------------------------------------------------------------------

/// A peer process, killed when dropped.
struct Child {
    process: std::process::Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stdin: Option<std::process::ChildStdin>,
}

impl Child {
    fn spawn(role: &str, args: &[String]) -> Child {
        let mut process = Command::new(std::env::current_exe().expect("own path"))
            .env(PEER_ENV, "1")
            .env(api::API_ENV, api::current().name())
            .env("RUST_LOG", "info")
            .arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a peer");
        let (tx, lines) = mpsc::channel();
        let stdout = process.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = process.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = process.stdin.take();
        Child {
            process,
            lines,
            stderr,
            stdin,
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The next line the peer prints.
    fn line(&mut self) -> Result<String, Failed> {
        self.lines.recv_timeout(PATIENCE).map_err(|_| {
            format!(
                "peer {} printed nothing within {PATIENCE:?}; its stderr:\n{}",
                self.pid(),
                self.stderr()
            )
            .into()
        })
    }

    /// The next line the peer prints, serving `server` meanwhile so that the peer can
    /// connect; a message arriving meanwhile is an error.
    fn line_serving(&mut self, server: &mut api::Server) -> Result<String, Failed> {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if let Ok(line) = self.lines.try_recv() {
                return Ok(line);
            }
            if let Some(message) = server.recv_timeout(Duration::from_millis(5))? {
                return Err(
                    format!("unexpected message of {} bytes", message.payload().len()).into(),
                );
            }
        }
        Err(format!("peer {} printed nothing within {PATIENCE:?}", self.pid()).into())
    }

    /// Waits for a `ready URL` line and returns the URL.
    fn ready(&mut self) -> Result<Endpoint, Failed> {
        let line = self.line()?;
        let url = line.strip_prefix("ready ").ok_or_else(|| {
            format!(
                "peer said '{line}' instead of ready; stderr:\n{}",
                self.stderr()
            )
        })?;
        Ok(url.parse().expect("the peer prints valid URLs"))
    }

    /// Writes a line to the peer's stdin.
    fn say(&mut self, line: &str) -> Outcome {
        let stdin = self.stdin.as_mut().ok_or("the peer's stdin is closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the peer's log mentions `text`: what a server logs about one
    /// connection is not ordered with what it does for the others.
    fn logged(&self, text: &str) -> Outcome {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !self.stderr().contains(text) {
            ensure!(
                std::time::Instant::now() < deadline,
                "the peer's log does not give the reason '{text}':\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Closes the peer's stdin (servers stop then) and waits for a clean exit.
    fn finish(mut self) -> Result<String, Failed> {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.try_wait().expect("waiting for a peer") {
                // Give the stderr reader a moment to drain the pipe.
                std::thread::sleep(Duration::from_millis(50));
                let stderr = self.stderr();
                ensure!(
                    status.success(),
                    "peer exited with {status}; its stderr:\n{stderr}"
                );
                return Ok(stderr);
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "peer did not exit within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A payload that says who sent it, in which order and how long it is, padded to `size`
/// (at least 12 bytes) with bytes that depend on all three. Built from a 4 KiB block, so
/// that gigabytes of it are made and checked at memcpy speed.
fn numbered(client: u32, seq: u32, size: usize) -> Vec<u8> {
    let size = size.max(12);
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&client.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(size as u32).to_le_bytes());
    let salt = client
        .wrapping_mul(7)
        .wrapping_add(seq)
        .wrapping_add(size as u32);
    let block: Vec<u8> = (0..4096u32)
        .map(|i| i.wrapping_mul(31).wrapping_add(salt) as u8)
        .collect();
    while out.len() < size {
        let take = (size - out.len()).min(block.len());
        out.extend_from_slice(&block[..take]);
    }
    out
}

fn parse_numbered(payload: &[u8]) -> Result<(u32, u32), Failed> {
    ensure!(
        payload.len() >= 12,
        "a message of {} bytes is not numbered",
        payload.len()
    );
    let client = u32::from_le_bytes(payload[..4].try_into().unwrap());
    let seq = u32::from_le_bytes(payload[4..8].try_into().unwrap());
    ensure!(
        payload == numbered(client, seq, payload.len()).as_slice(),
        "message {client}/{seq} of {} bytes arrived corrupted",
        payload.len()
    );
    Ok((client, seq))
}

/// Sizes that cross buffer and frame boundaries: tiny, odd, around 32/64 KiB, large.
fn size_for(seq: u32) -> usize {
    const SIZES: [usize; 8] = [12, 13, 64, 1000, 32 * 1024 + 1, 65 * 1024, 12, 200_000];
    SIZES[seq as usize % SIZES.len()]
}

/// The next message's number, read where the transport lends it (`Server::recv_with`).
fn recv_lent(server: &mut api::Server) -> Result<(u32, u32), Failed> {
    let mut numbered = None;
    let came = server.answer_lent(PATIENCE, |payload, _| {
        numbered = Some(parse_numbered(payload));
        None
    })?;
    ensure!(came, "no message arrived within {PATIENCE:?}");
    numbered.expect("read by the handler")
}

/// How the checks' servers answer a request: its bytes backwards.
fn reversed(payload: &[u8]) -> Vec<u8> {
    payload.iter().rev().copied().collect()
}

/// Whether `reply` answers `request` as the checks' servers do.
fn expect_reversed(request: &[u8], reply: &[u8]) -> Result<(), String> {
    if reply == reversed(request) {
        return Ok(());
    }
    Err(format!(
        "request {:?} got reply {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(reply)
    ))
}

fn recv(server: &mut api::Server) -> Result<ipckit::Message, Failed> {
    server
        .recv_timeout(PATIENCE)?
        .ok_or_else(|| format!("no message arrived within {PATIENCE:?}").into())
}

// ---------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------

fn order_from_one_client(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("order"))?;
    let count = 2000;
    let sender = Child::spawn(
        "send",
        &[server.endpoint().to_string(), "7".into(), count.to_string()],
    );
    for expected in 0..count {
        let (client, seq) = parse_numbered(recv(&mut server)?.payload())?;
        ensure!(
            client == 7 && seq == expected,
            "expected message {expected}, got {client}/{seq}"
        );
    }
    sender.finish()?;
    Ok(())
}

fn many_concurrent_clients(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("many"))?;
    let (clients, count) = (8u32, 250u32);
    let senders: Vec<Child> = (0..clients)
        .map(|c| {
            Child::spawn(
                "send",
                &[
                    server.endpoint().to_string(),
                    c.to_string(),
                    count.to_string(),
                ],
            )
        })
        .collect();
    let mut next: HashMap<u32, u32> = HashMap::new();
    for i in 0..clients * count {
        // Every other message is lent to a handler rather than handed over.
        let (client, seq) = if i % 2 == 0 {
            parse_numbered(recv(&mut server)?.payload())?
        } else {
            recv_lent(&mut server)?
        };
        let expected = next.entry(client).or_default();
        ensure!(
            seq == *expected,
            "client {client}: expected message {expected}, got {seq}"
        );
        *expected += 1;
    }
    ensure!(
        next.len() == clients as usize,
        "heard from {} of {clients} clients",
        next.len()
    );
    for sender in senders {
        sender.finish()?;
    }
    Ok(())
}

fn empty_and_maximum_size(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("sizes"))?;
    let max = server.capabilities().max_message;
    let sender = Child::spawn(
        "send-sizes",
        &[
            server.endpoint().to_string(),
            "0".into(),
            "1".into(),
            max.to_string(),
        ],
    );
    let check = |payload: &[u8], expected: usize| -> Outcome {
        ensure!(
            payload.len() == expected,
            "expected {expected} bytes, got {}",
            payload.len()
        );
        ensure!(
            payload == peer::filled(expected).as_slice(),
            "the {expected}-byte message arrived corrupted"
        );
        Ok(())
    };
    check(recv(&mut server)?.payload(), 0)?;
    // Lent to a handler: in one record and, for the largest, put together from several.
    for expected in [1, max] {
        let mut checked = None;
        let came = server.answer_lent(PATIENCE, |payload, _| {
            checked = Some(check(payload, expected));
            None
        })?;
        ensure!(came, "no message arrived within {PATIENCE:?}");
        checked.expect("checked by the handler")?;
    }
    sender.finish()?;
    Ok(())
}

fn oversized_refused_before_sending(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("oversize"))?;
    let too_big = server.capabilities().max_message + 1;
    refused_then_after(&mut server, too_big)
}

fn server_limit_learned_in_handshake(ctx: &Ctx) -> Outcome {
    // The server's limit is smaller than the client's own: the client must learn it.
    let mut server = api::listen(ctx.endpoint_with("learned", "max_message", "4096"))?;
    refused_then_after(&mut server, 4097)
}

/// With `?framing=line` a message is a line and carries no id: answers are matched to
/// requests by their order, also when requests from several threads are in flight.
fn line_framing_in_order(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn(
        "serve-echo",
        &[ctx.endpoint_with("lines", "framing", "line").to_string()],
    );
    let url = server.ready()?;
    // Every line is a request to a line-framed server: even a one-way message is
    // answered, so this client only makes requests.
    let client = Arc::new(api::connect(&url)?);
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..50 {
                    let line = format!("thread {t} line {i}");
                    let answer = client
                        .request(line.as_bytes(), PATIENCE)
                        .map_err(|e| e.to_string())?;
                    if answer != line.as_bytes() {
                        return Err(format!(
                            "'{line}' was answered '{}'",
                            String::from_utf8_lossy(&answer)
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a requesting thread")?;
    }
    match client.request(b"two\nlines", PATIENCE) {
        Err(Error::Unsupported { .. }) => {}
        other => return Err(format!("a payload with a newline gave {other:?}").into()),
    }
    server.kill();
    Ok(())
}

/// A peer sends `size` bytes, which must be refused before anything is written, then
/// "after", which must be the only thing the server receives.
fn refused_then_after(server: &mut api::Server, size: usize) -> Outcome {
    let args = [server.endpoint().to_string(), size.to_string()];
    let sender = Child::spawn("send-oversized", &args);
    let message = recv(server)?;
    ensure!(
        message.payload() == b"after",
        "first message was {} bytes, not 'after'",
        message.payload().len()
    );
    sender.finish()?;
    ensure!(
        server.recv_timeout(Duration::from_millis(200))?.is_none(),
        "an extra message arrived"
    );
    Ok(())
}

fn request_reply_concurrent(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("rr"))?;
    let (threads, per_thread) = (8u32, 50u32);
    let client = Child::spawn(
        "request",
        &[
            server.endpoint().to_string(),
            threads.to_string(),
            per_thread.to_string(),
        ],
    );
    let mut answered = 0;
    let mut out_of_order = false;
    while answered < threads * per_thread {
        // Gather what is in flight and answer it backwards, so replies cross on the wire.
        let mut batch = vec![recv(&mut server)?];
        while let Some(m) = server.recv_timeout(Duration::from_millis(2))? {
            batch.push(m);
        }
        out_of_order |= batch.len() > 1;
        // One more, lent and answered while the batch is still held: on shm its space is
        // given back before theirs.
        let answer = |payload: &[u8], wants_reply: bool| wants_reply.then(|| reversed(payload));
        if answered + (batch.len() as u32) < threads * per_thread
            && server.answer_lent(Duration::from_millis(2), answer)?
        {
            answered += 1;
        }
        for mut message in batch.into_iter().rev() {
            ensure!(
                message.wants_reply(),
                "a request arrived as a one-way message"
            );
            message.reply(&reversed(message.payload()))?;
            answered += 1;
        }
    }
    client.finish()?;
    ensure!(
        out_of_order,
        "requests never overlapped, so correlation was not exercised"
    );
    Ok(())
}

/// A request lent to a handler is answered from it; one the handler leaves unanswered is
/// refused when the handler returns, so that its caller does not wait out its timeout.
fn lent_request_answered_or_refused(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("lent"))?;
    let url = server.endpoint().to_string();
    let mut asker = Child::spawn("request-once", &[url.clone(), "lend me".into()]);
    let came = server.answer_lent(PATIENCE, |payload, wants_reply| {
        wants_reply.then(|| payload.to_ascii_uppercase())
    })?;
    ensure!(came, "no request arrived within {PATIENCE:?}");
    ensure!(
        asker.line()? == "LEND ME",
        "the lent request was answered wrongly"
    );
    asker.finish()?;
    let ignored = Child::spawn("request-once", &[url, "ignore me".into()]);
    ensure!(
        server.answer_lent(PATIENCE, |_, _| None)?,
        "no request arrived within {PATIENCE:?}"
    );
    match ignored.finish() {
        Err(e) if e.message().is_some_and(|m| m.contains("without replying")) => Ok(()),
        other => Err(format!("a request left unanswered gave its caller {other:?}").into()),
    }
}

/// `serve_with` lends messages until its handler breaks and takes none after that one;
/// on duplex transports it answers requests as it goes.
fn served_until_the_handler_stops(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("serve"))?;
    let url = server.endpoint().to_string();
    let watchdog = Watchdog::start(&url);
    let sender = Child::spawn("send", &[url.clone(), "3".into(), "20".into()]);
    let mut seen = Vec::new();
    let served = server.serve_until(|payload, _| {
        if payload == Watchdog::MESSAGE {
            return (None, ControlFlow::Break(false));
        }
        seen.push(parse_numbered(payload).ok());
        let flow = match seen.len() {
            10 => ControlFlow::Break(true),
            _ => ControlFlow::Continue(()),
        };
        (None, flow)
    })?;
    ensure!(served, "ten messages did not come within {PATIENCE:?}");
    let numbered = |seqs: std::ops::Range<u32>| seqs.map(|seq| Some((3, seq))).collect::<Vec<_>>();
    ensure!(
        seen == numbered(0..10),
        "served {seen:?}, expected messages 0 to 9 of client 3 in order"
    );
    let next = parse_numbered(recv(&mut server)?.payload())?;
    ensure!(
        next == (3, 10),
        "after the handler stopped at message 9, recv got {next:?}: serve_with took more"
    );
    // The rest, and a request among them where there can be one. (On datagram sockets
    // every message from a bound socket can be answered: the request is told by its
    // payload.)
    let duplex = server.capabilities().duplex;
    let mut asker = duplex.then(|| Child::spawn("request-once", &[url, "serve me".into()]));
    let (mut rest, mut answered) = (Vec::new(), !duplex);
    let served = server.serve_until(|payload, wants_reply| {
        let reply = if payload == Watchdog::MESSAGE {
            return (None, ControlFlow::Break(false));
        } else if payload == b"serve me" && wants_reply {
            answered = true;
            Some(b"SERVE ME".to_vec())
        } else {
            rest.push(parse_numbered(payload).ok());
            None
        };
        let flow = match rest.len() == 9 && answered {
            true => ControlFlow::Break(true),
            false => ControlFlow::Continue(()),
        };
        (reply, flow)
    })?;
    ensure!(
        served,
        "within {PATIENCE:?}, served {rest:?} of messages 11 to 19, and the request {}",
        if answered { "answered" } else { "not" }
    );
    ensure!(
        rest == numbered(11..20),
        "served {rest:?}, expected messages 11 to 19 in order"
    );
    sender.finish()?;
    if let Some(asker) = asker.as_mut() {
        ensure!(
            asker.line()? == "SERVE ME",
            "the served request was answered wrongly"
        );
    }
    if let Some(asker) = asker {
        asker.finish()?;
    }
    watchdog.cancel();
    Ok(())
}

/// Sends [`Watchdog::MESSAGE`] to a server after [`PATIENCE`] unless cancelled first, so
/// that a check that serves until some message comes fails instead of hanging.
struct Watchdog {
    cancel: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watchdog {
    const MESSAGE: &'static [u8] = b"watchdog: time is up";

    fn start(url: &str) -> Watchdog {
        let (cancel, cancelled) = mpsc::channel::<()>();
        let url = url.to_owned();
        let thread = std::thread::spawn(move || {
            // Dropping the Watchdog (a check that failed early) disconnects: no message.
            if cancelled.recv_timeout(PATIENCE) == Err(mpsc::RecvTimeoutError::Timeout) {
                if let Ok(client) = ipckit::connect(url.as_str()) {
                    let _ = client.send(Self::MESSAGE);
                }
            }
        });
        Watchdog { cancel, thread }
    }

    fn cancel(self) {
        let _ = self.cancel.send(());
        let _ = self.thread.join();
    }
}

/// A client held by one thread (`Client::exclusive`) sends and asks like any client,
/// passes over the late reply to a request of its own that timed out, and leaves the
/// client working once it is dropped.
fn exclusive_client(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("held"))?;
    let client = Child::spawn("request-exclusive", &[server.endpoint().to_string()]);
    let (mut one_way, mut late) = (false, None);
    loop {
        let mut message = recv(&mut server)?;
        let payload = message.payload().to_vec();
        match &payload[..] {
            b"one-way" => one_way = true,
            // Answered only after its caller gave up and asked again.
            b"late" => late = Some(message),
            _ => {
                if let Some(mut late) = late.take() {
                    // Where each request has a way back of its own (a FIFO, a queue, a
                    // socket), it closed when its caller gave up.
                    match late.reply(b"too late") {
                        Ok(()) | Err(Error::Disconnected { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                ensure!(
                    message.wants_reply(),
                    "a request arrived as a one-way message"
                );
                message.reply(&reversed(&payload))?;
                if payload == b"shared again" {
                    break;
                }
            }
        }
    }
    client.finish()?;
    ensure!(one_way, "the one-way message never arrived");
    Ok(())
}

fn peer_credentials(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("creds"))?;
    let sender = Child::spawn(
        "send",
        &[server.endpoint().to_string(), "1".into(), "1".into()],
    );
    let message = recv(&mut server)?;
    let peer = message.peer();
    ensure!(
        peer.pid == Some(sender.pid()),
        "pid {:?}, expected {}",
        peer.pid,
        sender.pid()
    );
    let uid = rustix::process::getuid().as_raw();
    ensure!(peer.uid == Some(uid), "uid {:?}, expected {uid}", peer.uid);
    sender.finish()?;
    Ok(())
}

fn peer_disconnects(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("disconnect"))?;
    let url = server.endpoint().to_string();
    // One peer sends and exits; another is killed while connected; a third still works.
    let first = Child::spawn("send", &[url.clone(), "1".into(), "20".into()]);
    for seq in 0..20 {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (1, seq),
            "lost message {seq} of the first peer"
        );
    }
    first.finish()?;
    let mut idle = Child::spawn("connect-and-wait", std::slice::from_ref(&url));
    idle.line_serving(&mut server)?;
    idle.kill();
    let last = Child::spawn("send", &[url, "3".into(), "20".into()]);
    for seq in 0..20 {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (3, seq),
            "lost message {seq} after a peer died"
        );
    }
    last.finish()?;
    Ok(())
}

fn restart_on_same_endpoint(ctx: &Ctx) -> Outcome {
    // A server in another process dies without cleaning up; its endpoint is reclaimed.
    let mut dead = Child::spawn("serve-echo", &[ctx.endpoint("restart").to_string()]);
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
        let sender = Child::spawn("send", &[url.to_string(), round.to_string(), "3".into()]);
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
    let mut child = Child::spawn("connect", &[url.to_string()]);
    let line = child.line()?;
    ensure!(
        line == format!("NotFound {url}"),
        "connecting to a missing endpoint said: {line}"
    );
    child.finish()?;
    Ok(())
}

fn server_dies_during_request(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn("die-on-request", &[ctx.endpoint("dies").to_string()]);
    let url = server.ready()?;
    let client = api::connect(&url)?;
    if ctx.transport.capabilities(&url).connection {
        match client.request(b"are you there?", PATIENCE) {
            Err(Error::Disconnected { .. }) => {}
            other => return Err(format!("expected Disconnected, got {other:?}").into()),
        }
        server.kill();
        return match client.request(b"again", PATIENCE) {
            Err(Error::Disconnected { .. }) => Ok(()),
            other => Err(format!("a broken connection must stay broken, got {other:?}").into()),
        };
    }
    // Without a connection nothing tells the client; its timeout must end the wait.
    match client.request(b"are you there?", Duration::from_millis(500)) {
        Err(Error::Timeout { .. }) => Ok(()),
        other => Err(format!("expected Timeout, got {other:?}").into()),
    }
}

fn durable_messages_wait_for_a_receiver(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint("waiting");
    Child::spawn("send", &[url.to_string(), "4".into(), "5".into()]).finish()?;
    let mut server = api::listen(&url)?;
    for seq in 0..5 {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (4, seq),
            "message {seq} did not wait for the receiver"
        );
    }
    Ok(())
}

/// A durable transport's `send` means "stored": a receiver killed mid-stream loses
/// nothing; what it did not take, the next receiver gets.
fn receiver_killed_loses_nothing_sent(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint("durable");
    let mut first = Child::spawn("print", &[url.to_string()]);
    first.ready()?;
    let client = api::connect(&url)?;
    // Within what one queue holds, so no send waits for the second receiver.
    let total = 12;
    let mut received = Vec::new();
    for seq in 0..total {
        if seq == 3 {
            // The receiver has taken what was sent and waits for more: freeze it there,
            // queue two more, and kill it. A receiver killed just after taking a message
            // loses that one with it, whatever the transport; waiting idle, it holds none.
            for _ in 0..3 {
                received.push(first.line()?);
            }
            let pid = rustix::process::Pid::from_raw(first.pid() as i32).expect("a pid");
            rustix::process::kill_process(pid, rustix::process::Signal::STOP)?;
            client.send(b"durable 3")?;
            client.send(b"durable 4")?;
            first.kill();
            continue;
        }
        if seq == 4 {
            continue;
        }
        client.send(format!("durable {seq}").as_bytes())?;
    }
    // What the first receiver printed before it died counts as received: read its
    // output to the end, which the reader thread reaches once the pipe is closed.
    while let Ok(line) = first.lines.recv_timeout(PATIENCE) {
        received.push(line);
    }
    let mut second = api::listen(&url)?;
    while let Some(message) = second.recv_timeout(Duration::from_millis(500))? {
        received.push(format!(
            "msg {}",
            String::from_utf8_lossy(message.payload())
        ));
    }
    let lost: Vec<_> = (0..total)
        .filter(|seq| !received.contains(&format!("msg durable {seq}")))
        .collect();
    ensure!(lost.is_empty(), "messages lost with the receiver: {lost:?}");
    Ok(())
}

/// A queue that nobody empties fills up; then a send waits for its timeout and fails
/// with `Full`, having sent nothing.
fn full_queue_waits_then_fails(ctx: &Ctx) -> Outcome {
    let url = ctx.endpoint_with("full", "send_timeout_ms", "200");
    let client = api::connect(&url)?;
    let mut stored = 0u32;
    let full = loop {
        match client.send(&numbered(0, stored, 8)) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        ensure!(stored < 100_000, "the queue never filled");
    };
    ensure!(
        matches!(full, Error::Full { .. }),
        "a full queue gave {full:?}"
    );
    ensure!(
        full.to_string().contains(&url.to_string()),
        "the error does not name the endpoint: {full}"
    );
    ensure!(
        full.to_string()
            .contains(&format!("holds {stored} messages")),
        "the error does not say the queue holds the {stored} messages it took: {full}"
    );
    let mut server = api::listen(&url)?;
    for seq in 0..stored {
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (0, seq),
            "stored message {seq} is missing"
        );
    }
    ensure!(
        server.recv_timeout(Duration::from_millis(100))?.is_none(),
        "the refused message was stored"
    );
    Ok(())
}

/// Eight writers at once, each 1000 messages of random sizes up to 1 MiB (or the
/// transport's limit): every message whole, in its writer's order, none lost.
fn many_writers_random_sizes(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("writers"))?;
    let (writers, count) = (8u32, 1000u32);
    let url = server.endpoint().to_string();
    let senders: Vec<Child> = (0..writers)
        .map(|w| {
            Child::spawn(
                "send-random",
                &[url.clone(), w.to_string(), count.to_string()],
            )
        })
        .collect();
    let mut next: HashMap<u32, u32> = HashMap::new();
    for _ in 0..writers * count {
        let (writer, seq) = parse_numbered(recv(&mut server)?.payload())?;
        let expected = next.entry(writer).or_default();
        ensure!(
            seq == *expected,
            "writer {writer}: expected message {expected}, got {seq}"
        );
        *expected += 1;
    }
    for sender in senders {
        sender.finish()?;
    }
    Ok(())
}

/// A writer killed while its large message is half-sent: the message arrives whole or
/// not at all, and other writers are unaffected.
fn writer_killed_mid_message(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("torn"))?;
    let url = server.endpoint().to_string();
    let mut writer = Child::spawn("send-large", std::slice::from_ref(&url));
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
    let other = Child::spawn("send", &[url, "5".into(), "10".into()]);
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
    let mut sender = Child::spawn("send-after-reader-dies", &[url]);
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
    let mut client = Child::spawn("request-once", &[url.to_string(), "never answered".into()]);
    let request = recv(&mut server)?;
    ensure!(
        request.wants_reply(),
        "the request arrived as a one-way message"
    );
    client.kill();
    drop(request);
    drop(server);
    let _restarted = api::listen(&url)?;
    let leftovers = leftovers_of(&url);
    ensure!(
        leftovers.is_empty(),
        "left behind by the killed client: {leftovers:?}"
    );
    Ok(())
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

fn send_fails_once_receiver_killed(ctx: &Ctx) -> Outcome {
    let mut server = Child::spawn("print", &[ctx.endpoint("killed").to_string()]);
    let url = server.ready()?;
    let client = api::connect(&url)?;
    client.send(b"before")?;
    ensure!(
        server.line()? == "msg before",
        "the first message did not arrive"
    );
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

fn spawn_serves_and_stops_on_drop(ctx: &Ctx) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let guard = api::listen(ctx.endpoint("spawned"))?.spawn(move |message| {
        tx.send(message.payload().to_vec()).unwrap();
        Some(message.payload().to_ascii_uppercase())
    });
    let url = guard.endpoint().to_string();
    if ctx.transport.capabilities(guard.endpoint()).duplex {
        let mut child = Child::spawn("request-once", &[url.clone(), "shout".into()]);
        ensure!(
            child.line()? == "SHOUT",
            "the handler's reply did not come back"
        );
        child.finish()?;
    } else {
        Child::spawn("send", &[url.clone(), "4".into(), "1".into()]).finish()?;
    }
    ensure!(rx.recv_timeout(PATIENCE).is_ok(), "the handler never ran");
    drop(guard);
    if !ctx.transport.capabilities(&url.parse()?).durable {
        let mut child = Child::spawn("connect", std::slice::from_ref(&url));
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
    let path = path_of(&endpoint).expect("a path endpoint");
    let server = api::listen(&endpoint)?;
    ensure!(
        mode(&path)? == 0o600,
        "created with mode {:o}, not 0600",
        mode(&path)?
    );
    drop(server);
    ensure!(
        !path.exists(),
        "{} is left behind after the server was dropped",
        path.display()
    );

    let wider = ctx.endpoint_with("shared", "mode", "0660");
    let server = api::listen(&wider)?;
    let wide_path = path_of(&wider).unwrap();
    ensure!(
        mode(&wide_path)? == 0o660,
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
    let as_nobody = if root { "as-nobody" } else { "as-self" };
    let mut stranger = Child::spawn(
        "connect-expect-denied",
        &[server.endpoint().to_string(), as_nobody.into()],
    );
    let line = stranger.line_serving(&mut server)?;
    ensure!(
        line == "PermissionDenied",
        "a stranger connecting to a 0600 endpoint got: {line}"
    );
    stranger.finish()?;
    Ok(())
}

// --- bad input on byte streams: the server runs in a child that logs to stderr ---------
/// Checks of a shared-memory segment, which a peer can scribble on. Offsets follow the
/// layout in docs/PROTOCOL.md, for rings of 64 KiB (`?ring=65536`).
mod shared_memory {
    use super::*;
    use std::os::unix::fs::FileExt;

    const RING: usize = 65536;
    const RING_OPTION: (&str, &str) = ("ring", "65536");

    /// Where slot `i` begins: after the 64 KiB header, slots of a 64 KiB control page and
    /// two rings.
    pub fn slot(i: u64) -> u64 {
        65536 + i * (65536 + 2 * RING as u64)
    }
    const REQUEST_TAIL: u64 = 128;
    /// Where the `corrupt-replies` peer scribbles.
    pub const REPLY_TAIL: u64 = 512;
    const REQUEST_DATA: u64 = 65536;

    pub fn segment(url: &Endpoint) -> std::io::Result<std::fs::File> {
        let path = path_of(url).expect("a segment path");
        std::fs::OpenOptions::new().write(true).open(path)
    }

    /// A record header as the ring lays it out: len, kind, flags, id.
    fn record_header(len: u32, kind: u8) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4] = kind;
        h
    }

    pub fn loan_written_and_read_in_place(ctx: &Ctx) -> Outcome {
        let mut server = api::listen(ctx.endpoint("loan"))?;
        // Loans are the blocking client's; the server, read in place, is either API's.
        let client = ipckit::connect(server.endpoint())?;
        let mut loan = client.loan(1000)?;
        ensure!(loan.is_in_place(), "a small loan on shm is not in the ring");
        loan.fill(0xAB);
        loan.truncate(600);
        loan.send()?;
        let message = recv(&mut server)?;
        ensure!(
            message.is_in_place() && message.payload() == [0xABu8; 600].as_slice(),
            "the loaned message arrived as {message:?}"
        );
        drop(message);
        // Lent to a handler (`recv_with`), it is read in the segment too.
        let mut loan = client.loan(100)?;
        loan.fill(0x5A);
        loan.send()?;
        let mut seen = None;
        let came = server.answer_lent(PATIENCE, |payload, _| {
            let intact = payload == [0x5Au8; 100].as_slice();
            seen = Some((intact, mapping_of(payload.as_ptr())));
            None
        })?;
        match seen {
            Some((true, Some(mapping))) if came && mapping.starts_with("/dev/shm/ipckit.") => {}
            other => return Err(format!("a lent message was read as {other:?}").into()),
        }
        // Larger than a record can be: still works, as pieces, copied, while the server
        // takes them.
        let big = client.max_message().min(4 << 20);
        let sender = std::thread::spawn(move || -> Result<ipckit::Client, Error> {
            {
                let mut loan = client.loan(big)?;
                loan.fill(0xCD);
                loan.send()?;
            }
            Ok(client)
        });
        let message = recv(&mut server)?;
        let client = sender.join().expect("the sending thread")?;
        ensure!(
            message.payload().len() == big && message.payload().iter().all(|&b| b == 0xCD),
            "a large loaned message arrived damaged"
        );
        match client.loan(client.max_message() + 1) {
            Err(Error::MessageTooLarge { .. }) => {}
            other => return Err(format!("an oversized loan gave {other:?}").into()),
        }
        // Replies read through `request_with`: where they lie in the segment, or, too large
        // for one record, from a copy.
        let mut client = client;
        for size in [600, 3 << 20] {
            let requester = std::thread::spawn(move || -> Result<_, Error> {
                let mut loan = client.loan(4)?;
                loan.copy_from_slice(b"echo");
                let read = loan.request_with(PATIENCE, |reply| {
                    let intact = reply.len() == size && reply.iter().all(|&b| b == 0xEF);
                    (intact, mapping_of(reply.as_ptr()))
                })?;
                Ok((client, read))
            });
            let mut request = recv(&mut server)?;
            request.reply(&vec![0xEF; size])?;
            let (returned, (intact, mapping)) = requester.join().expect("the requesting thread")?;
            client = returned;
            ensure!(intact, "a reply of {size} bytes was read damaged");
            let in_segment = mapping
                .as_deref()
                .is_some_and(|m| m.starts_with("/dev/shm/ipckit."));
            ensure!(
                in_segment || size > 1 << 20,
                "a reply of {size} bytes was read from {mapping:?}, not the shared segment"
            );
        }
        Ok(())
    }

    /// The file mapped at `address` in this process, from /proc/self/maps.
    fn mapping_of(address: *const u8) -> Option<String> {
        let address = address as usize;
        std::fs::read_to_string("/proc/self/maps")
            .ok()?
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                let (start, end) = fields.next()?.split_once('-')?;
                let (start, end) = (
                    usize::from_str_radix(start, 16).ok()?,
                    usize::from_str_radix(end, 16).ok()?,
                );
                ((start..end).contains(&address)).then(|| fields.nth(4).unwrap_or("").to_owned())
            })
    }

    /// The attacker is a client in slot 1 (the bystander of `survives` took slot 0).
    fn scribble(url: &Endpoint, writes: &[(u64, &[u8])]) -> Outcome {
        let attacker = api::connect(url)?;
        let file = segment(url)?;
        for (offset, bytes) in writes {
            file.write_all_at(bytes, slot(1) + offset)?;
        }
        // Keep the attacker connected until the server has had a look.
        std::thread::sleep(Duration::from_millis(500));
        drop(attacker);
        Ok(())
    }

    pub fn garbage_positions(ctx: &Ctx) -> Outcome {
        bad_input::survives(ctx, &[RING_OPTION], "is impossible", |url| {
            scribble(
                url,
                &[(REQUEST_TAIL, &0xdead_beef_dead_beefu64.to_le_bytes())],
            )
        })
    }

    pub fn garbage_lengths(ctx: &Ctx) -> Outcome {
        bad_input::survives(ctx, &[RING_OPTION], "overruns the ring", |url| {
            scribble(
                url,
                &[
                    (REQUEST_DATA, &record_header(0xFFFF_0000, 1)),
                    (REQUEST_TAIL, &32u64.to_le_bytes()),
                ],
            )
        })
    }

    pub fn record_over_limit(ctx: &Ctx) -> Outcome {
        let options = [RING_OPTION, ("max_message", "1000")];
        bad_input::survives(ctx, &options, "over the limit of 1000", |url| {
            scribble(
                url,
                &[
                    (REQUEST_DATA, &record_header(2000, 1)),
                    (REQUEST_TAIL, &2016u64.to_le_bytes()),
                ],
            )
        })
    }

    /// The server scribbles on the client's reply ring: the request fails with a protocol
    /// error naming the violation, and does not hang.
    pub fn garbage_in_reply_ring(ctx: &Ctx) -> Outcome {
        let mut endpoint = ctx.endpoint("liar");
        endpoint.set_option(RING_OPTION.0, RING_OPTION.1)?;
        let mut server = Child::spawn("corrupt-replies", &[endpoint.to_string()]);
        let url = server.ready()?;
        let client = api::connect(&url)?;
        match client.request(b"tell me", PATIENCE) {
            Err(Error::Protocol { reason, .. }) if reason.contains("broke the shared ring") => {}
            other => return Err(format!("a garbage reply ring gave {other:?}").into()),
        }
        server.kill();
        Ok(())
    }

    /// A client killed with SIGKILL is noticed within a second and its slot reused.
    pub fn killed_client_slot_reclaimed(ctx: &Ctx) -> Outcome {
        let mut server = api::listen(ctx.endpoint_with("one-slot", "clients", "1"))?;
        let url = server.endpoint().to_string();
        let mut holder = Child::spawn("connect-and-wait", std::slice::from_ref(&url));
        ensure!(
            holder.line()? == "connected",
            "the first client did not connect"
        );
        match api::connect(url.as_str()) {
            Err(Error::Full { .. }) => {}
            other => return Err(format!("a second client of a one-slot server: {other:?}").into()),
        }
        holder.kill();
        let killed = Instant::now();
        loop {
            server.recv_timeout(Duration::from_millis(20))?;
            match api::connect(url.as_str()) {
                Ok(_) => return Ok(()),
                Err(Error::Full { .. }) if killed.elapsed() < Duration::from_secs(1) => {}
                other => {
                    return Err(format!(
                        "{:?} after the client was killed, connecting still gives {other:?}",
                        killed.elapsed()
                    )
                    .into());
                }
            }
        }
    }

    /// A server killed with SIGKILL: its client learns it, and removes the segment the
    /// server left, so nothing stays in /dev/shm.
    pub fn dead_server_segment_removed(ctx: &Ctx) -> Outcome {
        let mut server = Child::spawn("print", &[ctx.endpoint("doomed").to_string()]);
        let url = server.ready()?;
        let client = api::connect(&url)?;
        client.send(b"alive")?;
        ensure!(
            server.line()? == "msg alive",
            "the server did not hear the client"
        );
        server.kill();
        match client.request(b"anyone?", PATIENCE) {
            Err(Error::Disconnected { .. }) => {}
            other => return Err(format!("a request to a killed server gave {other:?}").into()),
        }
        let path = path_of(&url).expect("a segment path");
        ensure!(
            !path.exists(),
            "{} is left behind by the killed server",
            path.display()
        );
        Ok(())
    }
}

mod bad_input {
    use super::*;

    pub trait RawStream: Read + Write + Send {}
    impl<T: Read + Write + Send> RawStream for T {}

    pub fn raw_connect(endpoint: &Endpoint) -> Result<Box<dyn RawStream>, Failed> {
        use std::os::linux::net::SocketAddrExt;
        let stream: Box<dyn RawStream> = match endpoint.address() {
            Address::Uds(UnixAddr::Path(path)) => {
                let s = std::os::unix::net::UnixStream::connect(path)?;
                s.set_read_timeout(Some(PATIENCE))?;
                Box::new(s)
            }
            Address::Uds(UnixAddr::Abstract(name)) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
                s.set_read_timeout(Some(PATIENCE))?;
                Box::new(s)
            }
            Address::Tcp(at) => {
                let s = std::net::TcpStream::connect((at.bare_host(), at.port))?;
                s.set_read_timeout(Some(PATIENCE))?;
                Box::new(s)
            }
            other => return Err(format!("no raw stream for {other:?}").into()),
        };
        Ok(stream)
    }

    /// Opens a raw connection and completes the handshake.
    pub fn raw_greeted(endpoint: &Endpoint) -> Result<Box<dyn RawStream>, Failed> {
        let mut stream = raw_connect(endpoint)?;
        stream.write_all(&Hello::new(1 << 20).encode())?;
        let mut welcome = [0u8; 12];
        stream.read_exact(&mut welcome)?;
        ipckit::frame::Welcome::decode(&welcome).map_err(|v| v.to_string())?;
        Ok(stream)
    }

    /// True when the server ended the connection (EOF or reset) rather than going quiet.
    fn closed_by_server(stream: &mut dyn RawStream) -> Result<(), Failed> {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {} // a welcome or refusal may precede the end
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => {
                    return Err(format!("the server did not close the connection: {e}").into());
                }
            }
        }
    }

    /// Runs `attack` against a server in a child process, then proves the server still
    /// serves a good client, delivered nothing of the attack, and logged `reason`.
    pub(super) fn survives(
        ctx: &Ctx,
        options: &[(&str, &str)],
        reason: &str,
        attack: impl FnOnce(&Endpoint) -> Outcome,
    ) -> Outcome {
        let mut endpoint = ctx.endpoint("victim");
        for (key, value) in options {
            endpoint.set_option(key, value)?;
        }
        let mut server = Child::spawn("print", &[endpoint.to_string()]);
        let url = server.ready()?;
        // A good client connected before the attack must keep working through it.
        let bystander = api::connect(&url)?;
        attack(&url)?;
        bystander.send(b"after the attack")?;
        api::connect(&url)?.send(b"and a new client")?;
        // Two connections: nothing orders one's message before the other's.
        let mut lines = [server.line()?, server.line()?];
        lines.sort();
        ensure!(
            lines == ["msg after the attack", "msg and a new client"],
            "the server delivered {lines:?}, expected the bystander's and the new client's"
        );
        server.logged(reason)?;
        server.finish()?;
        Ok(())
    }

    pub fn random_bytes(ctx: &Ctx) -> Outcome {
        survives(ctx, &[], "did not open with the ipckit hello", |url| {
            let mut stream = raw_connect(url)?;
            let mut noise = vec![0u8; 4096];
            fastrand::fill(&mut noise);
            noise[0] = b'X'; // never the magic by chance
            let _ = stream.write_all(&noise);
            closed_by_server(&mut *stream)
        })
    }

    pub fn truncated_frame(ctx: &Ctx) -> Outcome {
        survives(ctx, &[], "went away 66 bytes into a frame", |url| {
            let mut stream = raw_greeted(url)?;
            stream.write_all(&Header::new(Kind::Message, 0, 100).encode())?;
            stream.write_all(&[7u8; 50])?;
            drop(stream);
            Ok(())
        })
    }

    pub fn length_over_limit(ctx: &Ctx) -> Outcome {
        survives(
            ctx,
            &[("max_message", "1000")],
            "exceeds the limit of 1000 bytes",
            |url| {
                let mut stream = raw_greeted(url)?;
                stream.write_all(&Header::new(Kind::Message, 0, 1001).encode())?;
                closed_by_server(&mut *stream)
            },
        )
    }

    pub fn claimed_length_not_allocated(ctx: &Ctx) -> Outcome {
        // The victim accepts messages up to 4 GiB - 1 but may only use 1 GiB of address space
        // (see peer "print"): allocating what the header claims would kill it.
        survives(
            ctx,
            &[("max_message", &u32::MAX.to_string())],
            "went away",
            |url| {
                let mut stream = raw_greeted(url)?;
                stream.write_all(&Header::new(Kind::Message, 0, 3 << 30).encode())?;
                stream.write_all(&[1u8; 100_000])?;
                std::thread::sleep(Duration::from_millis(100));
                drop(stream);
                Ok(())
            },
        )
    }

    pub fn wrong_protocol_version(ctx: &Ctx) -> Outcome {
        survives(ctx, &[], "speaks protocol versions 90..=99", |url| {
            let mut stream = raw_connect(url)?;
            let mut hello = Hello::new(1000).encode();
            hello[4] = 90;
            hello[5] = 99;
            stream.write_all(&hello)?;
            let mut welcome = [0u8; 12];
            stream.read_exact(&mut welcome)?;
            ensure!(
                welcome[4] == 0 && welcome[5] != 0,
                "the server accepted version 90..99: {welcome:?}"
            );
            closed_by_server(&mut *stream)
        })
    }

    pub fn killed_mid_frame(ctx: &Ctx) -> Outcome {
        let mut server = api::listen(ctx.endpoint("killed"))?;
        let url = server.endpoint().to_string();
        let mut writer = Child::spawn("half-frame", &[url.clone(), "1000000".into()]);
        ensure!(
            writer.line_serving(&mut server)? == "half-written",
            "the writer did not get half-way"
        );
        let other = Child::spawn("send", &[url, "5".into(), "10".into()]);
        for seq in 0..10 {
            ensure!(
                parse_numbered(recv(&mut server)?.payload())? == (5, seq),
                "the other client lost message {seq}"
            );
        }
        writer.kill();
        other.finish()?;
        if let Some(message) = server.recv_timeout(Duration::from_millis(300))? {
            return Err(format!(
                "a partial message of {} bytes was delivered",
                message.payload().len()
            )
            .into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Peer roles, run in child processes
// ---------------------------------------------------------------------------------------

mod cancellation {
    use super::*;

    pub fn request_dropped_while_waiting(ctx: &Ctx) -> Outcome {
        let mut server = Child::spawn("serve-echo-slowly", &[ctx.endpoint("cancel").to_string()]);
        let url = server.ready()?;
        api::block_on(async {
            let client = ipckit::tokio::connect(&url).await?;
            let dropped = tokio::time::timeout(
                Duration::from_millis(50),
                client.request(b"slow, and dropped", PATIENCE),
            );
            ensure!(
                dropped.await.is_err(),
                "the slow request was answered within 50 ms"
            );
            // Its reply comes while these wait: each must get its own.
            let mut rng = fastrand::Rng::with_seed(7);
            let deadline = Instant::now() + Duration::from_millis(600);
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let payload = format!("request {n}");
                // Some are dropped at a random point too, often before their answer.
                let patience = Duration::from_micros(rng.u64(0..400));
                match tokio::time::timeout(patience, client.request(payload.as_bytes(), PATIENCE))
                    .await
                {
                    Ok(reply) => ensure!(
                        reply? == payload.as_bytes(),
                        "request {n} got another request's reply"
                    ),
                    Err(_dropped) => {}
                }
                let payload = format!("kept {n}");
                let reply = client.request(payload.as_bytes(), PATIENCE).await?;
                ensure!(
                    reply == payload.as_bytes(),
                    "request 'kept {n}' got another's reply"
                );
            }
            // Many at once on the one connection, half of them dropped.
            let client = Arc::new(client);
            let mut tasks = Vec::new();
            // Few enough that a reply queue each (mq) fits RLIMIT_MSGQUEUE's 800 KiB.
            for task in 0..8u64 {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..60 {
                        let payload = format!("task {task} request {i}");
                        let request = client.request(payload.as_bytes(), PATIENCE);
                        if (task + i) % 2 == 0 {
                            let _ = tokio::time::timeout(Duration::from_micros(50), request).await;
                        } else if request.await.map_err(|e| e.to_string())? != payload.as_bytes() {
                            return Err(format!("'{payload}' got another request's reply"));
                        }
                    }
                    Ok::<(), String>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            Ok(())
        })
    }

    pub fn send_dropped_while_writing(ctx: &Ctx) -> Outcome {
        let mut server = api::listen(ctx.endpoint("cancel-send"))?;
        let mut client = Child::spawn("send-dropped", &[server.endpoint().to_string()]);
        // A stream's client needs the server to take part in its handshake, so the server
        // receives first; shared memory needs nothing of it, so it waits until the send was
        // dropped, which it then cannot have finished (8 MiB is more than its ring).
        let shared_memory = ctx.transport.capabilities(server.endpoint()).zero_copy;
        let dropped = if shared_memory {
            Some(client.line()?)
        } else {
            None
        };
        // Nothing else is sent until we say so: the dropped send is finished on its own,
        // and whole (anything cut short fails to parse).
        let large = recv(&mut server)?;
        ensure!(
            parse_numbered(large.payload())? == (9, 0),
            "the dropped send did not arrive first"
        );
        let dropped = match dropped {
            Some(line) => line,
            None => client.line()?,
        };
        ensure!(
            dropped == "dropped true",
            "the large send completed at once ({dropped}): nothing was tested"
        );
        client.say("go")?;
        ensure!(
            parse_numbered(recv(&mut server)?.payload())? == (9, 1),
            "the send after the dropped one was lost"
        );
        client.finish()?;
        Ok(())
    }

    pub fn recv_dropped_again_and_again(ctx: &Ctx) -> Outcome {
        let mut server = api::listen(ctx.endpoint("cancel-recv"))?;
        let count = 500u32;
        let sender = Child::spawn(
            "send",
            &[server.endpoint().to_string(), "3".into(), count.to_string()],
        );
        let mut rng = fastrand::Rng::with_seed(3);
        let mut next = 0;
        let deadline = Instant::now() + PATIENCE;
        while next < count {
            ensure!(
                Instant::now() < deadline,
                "only {next} of {count} messages arrived"
            );
            // Zero or a few microseconds: most of these futures are dropped unfinished.
            let patience = Duration::from_micros(rng.u64(0..30));
            if let Some(message) = server.recv_timeout(patience)? {
                let (writer, seq) = parse_numbered(message.payload())?;
                ensure!(
                    (writer, seq) == (3, next),
                    "expected message {next}, got {seq}"
                );
                next += 1;
            }
        }
        sender.finish()?;
        Ok(())
    }
}

mod peer {
    use super::*;

    /// The content of a message of `len` bytes sent by `send-sizes`.
    pub fn filled(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn exit_when_parent_goes() {
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(0);
        });
    }

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }

    /// Makes SIGPIPE fatal again, as in a C program (Rust's runtime ignores it).
    fn restore_default_sigpipe() {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: installing SIG_DFL runs no handler code, so no handler can be unsound;
        // this peer has no other threads yet that could race on the disposition.
        unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.expect("resetting SIGPIPE");
    }

    /// Credentials are per thread in the kernel: the calling thread becomes nobody.
    fn become_nobody() -> rustix::io::Result<()> {
        let uid = rustix::process::Uid::from_raw(65534);
        let gid = rustix::process::Gid::from_raw(65534);
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)
    }

    pub fn run(args: Vec<String>) -> ExitCode {
        let _ = env_logger::builder().is_test(false).try_init();
        match role(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("peer {args:?}: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn role(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
        let url = args.get(1).ok_or("missing URL")?.as_str();
        let num = |i: usize| -> u64 { args[i].parse().expect("numeric argument") };
        match args[0].as_str() {
            "send" => {
                let client = api::connect(url)?;
                for seq in 0..num(3) as u32 {
                    let size = size_for(seq).min(client.max_message());
                    client.send(&numbered(num(2) as u32, seq, size))?;
                }
            }
            "send-dropped" => {
                // A large send dropped once it has begun; once told, a small one.
                api::block_on(async {
                    let client = ipckit::tokio::connect(url).await?;
                    let large = numbered(9, 0, client.max_message().min(8 << 20));
                    // Polled once (a zero timeout still polls what it wraps), then dropped.
                    let started = tokio::time::timeout(Duration::ZERO, client.send(&large));
                    say(&format!("dropped {}", started.await.is_err()));
                    let mut go = String::new();
                    std::io::stdin().read_line(&mut go)?;
                    client.send(&numbered(9, 1, 100)).await?;
                    Ok::<(), Box<dyn std::error::Error>>(())
                })?;
            }
            "serve-echo-slowly" => {
                // Echoes requests; one starting with "slow" after 300 ms.
                api::block_on(async {
                    let mut server = ipckit::tokio::listen(url)?;
                    say(&format!("ready {}", server.endpoint()));
                    exit_when_parent_goes();
                    loop {
                        let mut message = server.recv().await?;
                        tokio::spawn(async move {
                            if message.payload().starts_with(b"slow") {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                            }
                            let echo = message.payload().to_vec();
                            let _ = message.reply(&echo);
                        });
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), Error>(())
                })?;
            }
            "send-random" => {
                let client = api::connect(url)?;
                let writer = num(2) as u32;
                let max = client.max_message().min(1 << 20);
                let mut rng = fastrand::Rng::with_seed(writer.into());
                for seq in 0..num(3) as u32 {
                    client.send(&numbered(writer, seq, rng.usize(12..=max)))?;
                }
            }
            "send-large" => {
                let client = api::connect(url)?;
                let size = client.max_message().min(16 << 20);
                let large = filled(size);
                say("connected");
                std::io::stdin().read_line(&mut String::new())?;
                say("sending");
                client.send(&large)?;
                std::thread::sleep(PATIENCE);
            }
            "send-after-reader-dies" => {
                restore_default_sigpipe();
                let client = api::connect(url)?;
                say("connected");
                let mut go = String::new();
                std::io::stdin().read_line(&mut go)?;
                // A stream may need one more write to learn of the reset; a pipe fails at once.
                let outcome = (0..5).try_for_each(|_| {
                    std::thread::sleep(Duration::from_millis(20));
                    client.send(b"anyone?")
                });
                match outcome {
                    Err(e) => say(&format!("error {e}")),
                    Ok(()) => say("sent into the void"),
                }
            }
            "send-sizes" => {
                let client = api::connect(url)?;
                for i in 2..args.len() {
                    client.send(&filled(num(i) as usize))?;
                }
            }
            "send-oversized" => {
                let client = api::connect(url)?;
                match client.send(&vec![0u8; num(2) as usize]) {
                    Err(Error::MessageTooLarge { size, max, .. })
                        if size == num(2) as usize && max < size => {}
                    other => return Err(format!("oversized send gave {other:?}").into()),
                }
                client.send(b"after")?;
            }
            "request" => {
                let client = Arc::new(api::connect(url)?);
                let threads: Vec<_> = (0..num(2))
                    .map(|t| {
                        let client = client.clone();
                        let per_thread = num(3);
                        std::thread::spawn(move || -> Result<(), String> {
                            for i in 0..per_thread {
                                let request = format!("thread {t} request {i}").into_bytes();
                                // Every other reply is read where it lies, where it can be.
                                let reply = if i % 2 == 0 {
                                    client.request(&request, PATIENCE)
                                } else {
                                    client.request_with(&request, PATIENCE, <[u8]>::to_vec)
                                }
                                .map_err(|e| e.to_string())?;
                                expect_reversed(&request, &reply)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for thread in threads {
                    thread
                        .join()
                        .map_err(|_| "a requesting thread panicked")??;
                }
            }
            "request-exclusive" => {
                // Always the blocking client: the async one has no exclusive handle.
                let mut client = ipckit::connect(url)?;
                // Larger than one record of shm's default ring: in pieces both ways. (Half
                // the limit: on mq a request's header takes room from its payload.)
                let large = filled((client.max_message() / 2).min(3 << 20));
                let mut held = client.exclusive();
                held.send(b"one-way")?;
                match held.request(b"late", Duration::from_millis(300)) {
                    Err(Error::Timeout { .. }) => {}
                    other => return Err(format!("an unanswered request gave {other:?}").into()),
                }
                for i in 0..20 {
                    let request = format!("request {i}").into_bytes();
                    let reply = if i % 2 == 0 {
                        held.request(&request, PATIENCE)?
                    } else {
                        held.request_with(&request, PATIENCE, <[u8]>::to_vec)?
                    };
                    expect_reversed(&request, &reply)?;
                }
                let reply = held.request_with(&large, PATIENCE, <[u8]>::to_vec)?;
                expect_reversed(&large, &reply)?;
                drop(held);
                expect_reversed(b"shared again", &client.request(b"shared again", PATIENCE)?)?;
            }
            "connect" => {
                // Connectionless transports learn of a missing server at the first request.
                let outcome =
                    api::connect(url).and_then(|client| client.request(b"probe", PATIENCE));
                match outcome {
                    Err(Error::NotFound { endpoint, .. }) => say(&format!("NotFound {endpoint}")),
                    other => say(&format!("unexpected {other:?}")),
                }
            }
            "connect-expect-denied" => {
                if args[2] == "as-nobody" {
                    become_nobody()?;
                }
                match api::connect(url) {
                    Err(Error::PermissionDenied { endpoint, .. }) if endpoint == url => {
                        say("PermissionDenied")
                    }
                    other => say(&format!("unexpected {other:?}")),
                }
            }
            "request-once" => {
                let reply = api::connect(url)?.request(args[2].as_bytes(), PATIENCE)?;
                say(&String::from_utf8_lossy(&reply));
            }
            "connect-and-wait" => {
                let _client = api::connect(url)?;
                say("connected");
                std::thread::sleep(PATIENCE);
            }
            "corrupt-replies" => {
                use std::os::unix::fs::FileExt;
                let mut server = api::listen(url)?;
                say(&format!("ready {}", server.endpoint()));
                exit_when_parent_goes();
                let message = server.recv()?;
                // The client is in slot 0.
                use super::shared_memory::{REPLY_TAIL, segment, slot};
                segment(server.endpoint())?
                    .write_all_at(&u64::MAX.to_le_bytes(), slot(0) + REPLY_TAIL)?;
                std::thread::sleep(PATIENCE);
                drop(message);
            }
            "serve-echo" => {
                let mut server = api::listen(url)?;
                say(&format!("ready {}", server.endpoint()));
                exit_when_parent_goes();
                loop {
                    let mut message = server.recv()?;
                    let payload = message.take_payload();
                    if message.wants_reply() {
                        message.reply(&payload)?;
                    }
                }
            }
            "die-on-request" => {
                let mut server = api::listen(url)?;
                say(&format!("ready {}", server.endpoint()));
                exit_when_parent_goes();
                let message = server.recv()?;
                if message.wants_reply() {
                    std::process::abort(); // dies with the request unanswered
                }
            }
            "print" => {
                // Room for the runtime, not for a multi-gigabyte allocation.
                rustix::process::setrlimit(
                    rustix::process::Resource::As,
                    rustix::process::Rlimit {
                        current: Some(1 << 30),
                        maximum: Some(1 << 30),
                    },
                )?;
                let mut server = api::listen(url)?;
                say(&format!("ready {}", server.endpoint()));
                exit_when_parent_goes();
                loop {
                    let message = server.recv()?;
                    say(&format!(
                        "msg {}",
                        String::from_utf8_lossy(message.payload())
                    ));
                }
            }
            "half-frame" => {
                let endpoint: Endpoint = url.parse()?;
                let mut stream = bad_input::raw_greeted(&endpoint).map_err(|e| format!("{e:?}"))?;
                let len = num(2) as usize;
                stream.write_all(&Header::new(Kind::Message, 0, len).encode())?;
                stream.write_all(&vec![9u8; len / 2])?;
                say("half-written");
                std::thread::sleep(PATIENCE);
            }
            other => return Err(format!("unknown role {other}").into()),
        }
        Ok(())
    }
}
