//! The peer processes. A check starts one with `Child::spawn(role, url)`: this test
//! binary runs again with `IPCKIT_CONFORMANCE_PEER=1` and the [`Role`] as its arguments,
//! plays the role on the endpoint `url` through the API of the check that started it,
//! and reports on stdout, one line at a time. A peer that serves stops when its stdin is
//! closed.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipckit::frame::{Header, Kind};
use ipckit::{Endpoint, Error};

use crate::api;
use crate::bad_input;
use crate::support::{PATIENCE, expect_reversed, numbered, size_for};

type Failure = Box<dyn std::error::Error>;

/// What a peer does on the endpoint it is given. Its arguments are written by
/// [`Role::to_args`] and read by [`Role::from_args`], and nowhere else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends `count` messages, [`numbered`] as from `client`, of the sizes [`size_for`]
    /// gives.
    Send { client: u32, count: u32 },
    /// Prints `sending` and sends one message numbered as from `client`; then prints
    /// `slept N`: how often its threads slept (voluntary context switches) meanwhile.
    SendCountingSleeps { client: u32 },
    /// Async: starts a large send and drops it, printing `dropped true` if it was
    /// unfinished; then, once told on stdin, sends a small one.
    SendDropped,
    /// Async: a server that prints `ready URL` and echoes requests, one that starts with
    /// "slow" after 300 ms.
    ServeEchoSlowly,
    /// Sends `count` messages, numbered as from `writer`, of random sizes up to 1 MiB.
    SendRandom { writer: u32, count: u32 },
    /// Connects and prints `connected`; once told on stdin, prints `sending` and sends
    /// one message as large as it may (up to 16 MiB).
    SendLarge,
    /// With SIGPIPE fatal, connects and prints `connected`; once told on stdin, sends to
    /// the reader that went away meanwhile and prints `error …`.
    SendAfterReaderDies,
    /// Sends one message of each size, made by [`filled`].
    SendSizes { sizes: Vec<usize> },
    /// Expects a message of `size` bytes to be refused as too large, then sends "after".
    SendOversized { size: usize },
    /// Requests from `threads` threads, `per_thread` each, and expects them answered with
    /// their bytes reversed; once connected, with room for only `spare_fds` more file
    /// descriptors if given.
    Request {
        threads: u32,
        per_thread: u32,
        spare_fds: Option<u64>,
    },
    /// Through a client's exclusive handle: a one-way message, a request left to time out,
    /// requests small and large; then one through the client again.
    RequestExclusive,
    /// Connects and requests, printing `NotFound URL` where there is no endpoint.
    Connect,
    /// Prints `connecting`, connects (waiting for the server as its URL's
    /// `?connect_timeout=` says), sends `early` and prints `sent`.
    ConnectEarly,
    /// Connects, as user nobody if `as_nobody`, expecting to be refused: prints
    /// `PermissionDenied`.
    ConnectExpectDenied { as_nobody: bool },
    /// As user `uid` and group `gid` with no other groups, connects and sends one
    /// message, [`numbered`] as from client `uid`; prints `sent`, or `refused MESSAGE`
    /// when the server refuses it, or the error's variant and message.
    SendAs { uid: u32, gid: u32 },
    /// Requests `payload` and prints the reply.
    RequestOnce { payload: String },
    /// Asks [`TypedJob`]s 7, 0 and 1 with `request_value`, the first expecting a
    /// [`TypedReply`] and the others a `String`, and prints `ok VALUE` (its Debug form) or
    /// the error's variant and message for each.
    RequestValues,
    /// Requests `payload` with a timeout of [`PATIENCE`] and prints `reply PAYLOAD` (its
    /// bytes escaped), `Remote REASON`, or the error's variant and message.
    RequestPrinting { payload: String },
    /// Connects and prints `connected`; once told on stdin, prints `requesting`, makes a
    /// request with a long timeout and prints `reply` or the error's variant and message.
    RequestWhenTold,
    /// Connects, prints `connected`, and waits.
    ConnectAndWait,
    /// A shared-memory server that prints `ready URL` and, at the first request,
    /// scribbles on its client's reply ring.
    CorruptReplies,
    /// A server that prints `ready URL` and answers every request with its payload.
    ServeEcho,
    /// A server that prints `ready URL` and dies at the first request.
    DieOnRequest,
    /// A server, in 1 GiB of address space, that prints `ready URL` and then `msg
    /// PAYLOAD` for every message.
    Print,
    /// As [`Role::Print`], but once listening with room for only `spare` more file
    /// descriptors.
    PrintWithFds { spare: u64 },
    /// On a raw byte stream: the handshake, then a frame that claims `len` bytes and holds
    /// half of them; prints `half-written` and waits.
    HalfFrame { len: usize },
    /// A plain stream socket at the endpoint, no ipckit: prints `ready URL`, accepts and
    /// reads, and never writes.
    Mute,
    /// Connects `connections` clients, each saying `hello NAME-C`, and receives what is
    /// pushed to each until `end` (see `push`).
    Subscribe { connections: u32, name: String },
    /// Connects `connections` clients that never send, and receives what is pushed to
    /// each until `end`.
    SubscribeSilently { connections: u32 },
    /// Async: says `hello NAME` and receives pushes until `end` through waits that are
    /// mostly dropped before a message comes.
    SubscribeCancelling { name: String },
    /// Says `hello NAME` and reads nothing until told `read` on stdin; then receives
    /// until `end`.
    HelloAndWait { name: String },
    /// Says `hello NAME` and `bye`, drops its client, and waits, still running.
    HelloAndLeave { name: String },
    /// The server of `push::a_client_that_never_reads_stalls_nothing`.
    PushServer { count: u32, size: usize },
    /// One client: requests from `threads` threads while another receives pushes.
    RequestAndReceive { threads: u32, per_thread: u32 },
    /// A server that prints `ready URL` and serves version `version` of the contract of
    /// `contract_fixture` (see `contract`).
    ServeContract { version: u32 },
    /// A broadcast writer, numbering its events as from `writer`, told on stdin what to
    /// write (see `broadcast`).
    Writer { writer: u32 },
    /// A broadcast listener that prints what it receives until `ends` writers ended, after
    /// a line on stdin if `wait` (see `broadcast`).
    Listener { ends: u32, wait: bool },
    /// A broadcast writer that writes until stdin closes, taking an error as an answer
    /// (see `broadcast_bad_input`).
    WriteThroughDamage { writer: u32 },
    /// A broadcast listener that prints what it receives until an error or a quiet
    /// spell (see `broadcast_bad_input`).
    ListenThroughDamage,
    /// A server that prints `ready URL` and then `got CLIENT SEQ` for every [`numbered`]
    /// message, or `corrupt …` for one that is not.
    ReceiveNumbered,
    /// A server that takes one message, prints `holding DELIVERIES PAYLOAD` and holds it
    /// until killed (see `spool`).
    HoldAndSleep,
    /// Connects and prints `connected`, or the error's variant and message (see `spool`).
    ConnectReporting,
}

impl Role {
    /// The peer's arguments: the role's name, `url`, and the role's own.
    pub fn to_args(&self, url: &str) -> Vec<String> {
        let (name, own): (&str, Vec<String>) = match self {
            Role::Send { client, count } => ("send", vec![client.to_string(), count.to_string()]),
            Role::SendCountingSleeps { client } => {
                ("send-counting-sleeps", vec![client.to_string()])
            }
            Role::SendDropped => ("send-dropped", vec![]),
            Role::ServeEchoSlowly => ("serve-echo-slowly", vec![]),
            Role::SendRandom { writer, count } => {
                ("send-random", vec![writer.to_string(), count.to_string()])
            }
            Role::SendLarge => ("send-large", vec![]),
            Role::SendAfterReaderDies => ("send-after-reader-dies", vec![]),
            Role::SendSizes { sizes } => {
                ("send-sizes", sizes.iter().map(usize::to_string).collect())
            }
            Role::SendOversized { size } => ("send-oversized", vec![size.to_string()]),
            Role::Request {
                threads,
                per_thread,
                spare_fds,
            } => (
                "request",
                vec![
                    threads.to_string(),
                    per_thread.to_string(),
                    spare_fds.map_or("all".into(), |n| n.to_string()),
                ],
            ),
            Role::RequestExclusive => ("request-exclusive", vec![]),
            Role::Connect => ("connect", vec![]),
            Role::ConnectEarly => ("connect-early", vec![]),
            Role::ConnectExpectDenied { as_nobody } => {
                let whom = if *as_nobody { "as-nobody" } else { "as-self" };
                ("connect-expect-denied", vec![whom.to_owned()])
            }
            Role::SendAs { uid, gid } => ("send-as", vec![uid.to_string(), gid.to_string()]),
            Role::RequestOnce { payload } => ("request-once", vec![payload.clone()]),
            Role::RequestPrinting { payload } => ("request-printing", vec![payload.clone()]),
            Role::RequestValues => ("request-values", vec![]),
            Role::RequestWhenTold => ("request-when-told", vec![]),
            Role::ConnectAndWait => ("connect-and-wait", vec![]),
            Role::CorruptReplies => ("corrupt-replies", vec![]),
            Role::ServeEcho => ("serve-echo", vec![]),
            Role::DieOnRequest => ("die-on-request", vec![]),
            Role::Print => ("print", vec![]),
            Role::PrintWithFds { spare } => ("print-with-fds", vec![spare.to_string()]),
            Role::HalfFrame { len } => ("half-frame", vec![len.to_string()]),
            Role::Mute => ("mute", vec![]),
            Role::Subscribe { connections, name } => {
                ("subscribe", vec![connections.to_string(), name.clone()])
            }
            Role::SubscribeSilently { connections } => {
                ("subscribe-silently", vec![connections.to_string()])
            }
            Role::SubscribeCancelling { name } => ("subscribe-cancelling", vec![name.clone()]),
            Role::HelloAndWait { name } => ("hello-and-wait", vec![name.clone()]),
            Role::HelloAndLeave { name } => ("hello-and-leave", vec![name.clone()]),
            Role::PushServer { count, size } => {
                ("push-server", vec![count.to_string(), size.to_string()])
            }
            Role::RequestAndReceive {
                threads,
                per_thread,
            } => (
                "request-and-receive",
                vec![threads.to_string(), per_thread.to_string()],
            ),
            Role::ServeContract { version } => ("serve-contract", vec![version.to_string()]),
            Role::Writer { writer } => ("writer", vec![writer.to_string()]),
            Role::Listener { ends, wait } => ("listener", vec![ends.to_string(), wait.to_string()]),
            Role::WriteThroughDamage { writer } => {
                ("write-through-damage", vec![writer.to_string()])
            }
            Role::ListenThroughDamage => ("listen-through-damage", vec![]),
            Role::ReceiveNumbered => ("receive-numbered", vec![]),
            Role::HoldAndSleep => ("hold-and-sleep", vec![]),
            Role::ConnectReporting => ("connect-reporting", vec![]),
        };
        let args: Vec<String> = [name.to_owned(), url.to_owned()]
            .into_iter()
            .chain(own)
            .collect();
        debug_assert!(
            Role::from_args(&args).is_ok_and(|(role, _)| role == *self),
            "Role::from_args does not read back {args:?} as {self:?}"
        );
        args
    }

    /// The role and the URL in a peer's arguments, as [`Role::to_args`] wrote them.
    pub fn from_args(args: &[String]) -> Result<(Role, String), Failure> {
        let url = args.get(1).ok_or("missing URL")?.clone();
        let role = match args[0].as_str() {
            "send" => Role::Send {
                client: arg(args, 2)?,
                count: arg(args, 3)?,
            },
            "send-counting-sleeps" => Role::SendCountingSleeps {
                client: arg(args, 2)?,
            },
            "send-dropped" => Role::SendDropped,
            "serve-echo-slowly" => Role::ServeEchoSlowly,
            "send-random" => Role::SendRandom {
                writer: arg(args, 2)?,
                count: arg(args, 3)?,
            },
            "send-large" => Role::SendLarge,
            "send-after-reader-dies" => Role::SendAfterReaderDies,
            "send-sizes" => Role::SendSizes {
                sizes: (2..args.len())
                    .map(|i| arg(args, i))
                    .collect::<Result<_, _>>()?,
            },
            "send-oversized" => Role::SendOversized {
                size: arg(args, 2)?,
            },
            "request" => Role::Request {
                threads: arg(args, 2)?,
                per_thread: arg(args, 3)?,
                spare_fds: match arg::<String>(args, 4)?.as_str() {
                    "all" => None,
                    n => Some(
                        n.parse()
                            .map_err(|e| format!("spare descriptors {n}: {e}"))?,
                    ),
                },
            },
            "request-exclusive" => Role::RequestExclusive,
            "connect" => Role::Connect,
            "connect-early" => Role::ConnectEarly,
            "connect-expect-denied" => Role::ConnectExpectDenied {
                as_nobody: match arg::<String>(args, 2)?.as_str() {
                    "as-nobody" => true,
                    "as-self" => false,
                    other => {
                        return Err(format!("connect {other}: not as-nobody or as-self").into());
                    }
                },
            },
            "send-as" => Role::SendAs {
                uid: arg(args, 2)?,
                gid: arg(args, 3)?,
            },
            "request-once" => Role::RequestOnce {
                payload: arg(args, 2)?,
            },
            "request-values" => Role::RequestValues,
            "request-printing" => Role::RequestPrinting {
                payload: arg(args, 2)?,
            },
            "request-when-told" => Role::RequestWhenTold,
            "connect-and-wait" => Role::ConnectAndWait,
            "corrupt-replies" => Role::CorruptReplies,
            "serve-echo" => Role::ServeEcho,
            "die-on-request" => Role::DieOnRequest,
            "print" => Role::Print,
            "print-with-fds" => Role::PrintWithFds {
                spare: arg(args, 2)?,
            },
            "half-frame" => Role::HalfFrame { len: arg(args, 2)? },
            "mute" => Role::Mute,
            "subscribe" => Role::Subscribe {
                connections: arg(args, 2)?,
                name: arg(args, 3)?,
            },
            "subscribe-silently" => Role::SubscribeSilently {
                connections: arg(args, 2)?,
            },
            "subscribe-cancelling" => Role::SubscribeCancelling {
                name: arg(args, 2)?,
            },
            "hello-and-wait" => Role::HelloAndWait {
                name: arg(args, 2)?,
            },
            "hello-and-leave" => Role::HelloAndLeave {
                name: arg(args, 2)?,
            },
            "push-server" => Role::PushServer {
                count: arg(args, 2)?,
                size: arg(args, 3)?,
            },
            "request-and-receive" => Role::RequestAndReceive {
                threads: arg(args, 2)?,
                per_thread: arg(args, 3)?,
            },
            "serve-contract" => Role::ServeContract {
                version: arg(args, 2)?,
            },
            "writer" => Role::Writer {
                writer: arg(args, 2)?,
            },
            "listener" => Role::Listener {
                ends: arg(args, 2)?,
                wait: arg(args, 3)?,
            },
            "write-through-damage" => Role::WriteThroughDamage {
                writer: arg(args, 2)?,
            },
            "listen-through-damage" => Role::ListenThroughDamage,
            "receive-numbered" => Role::ReceiveNumbered,
            "hold-and-sleep" => Role::HoldAndSleep,
            "connect-reporting" => Role::ConnectReporting,
            other => return Err(format!("unknown role {other}").into()),
        };
        Ok((role, url))
    }
}

/// What [`Role::RequestValues`] asks.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TypedJob {
    pub id: u32,
    pub tags: Vec<String>,
}

/// What a server answers a [`TypedJob`] with.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TypedReply {
    Done,
    Failed(String),
    Moved { to: u64 },
}

/// Argument `i` of a peer's arguments, parsed.
fn arg<T: FromStr>(args: &[String], i: usize) -> Result<T, Failure>
where
    T::Err: std::fmt::Display,
{
    let arg = args.get(i).ok_or_else(|| format!("missing argument {i}"))?;
    arg.parse()
        .map_err(|e| format!("argument {i} '{arg}': {e}").into())
}

/// The content of a message of `len` bytes sent by [`Role::SendSizes`].
pub fn filled(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

pub fn exit_when_parent_goes() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
}

pub fn say(line: &str) {
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
    become_user(65534, 65534)
}

/// The calling thread becomes user `uid` and group `gid`, in no other group: the
/// credentials the kernel then reports for its connections and datagrams.
fn become_user(uid: u32, gid: u32) -> rustix::io::Result<()> {
    let uid = rustix::process::Uid::from_raw(uid);
    let gid = rustix::process::Gid::from_raw(gid);
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)
}

pub fn run(args: Vec<String>) -> ExitCode {
    let _ = env_logger::builder().is_test(false).try_init();
    match Role::from_args(&args).and_then(|(role, url)| play(role, &url)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer {args:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Plays `role` on the endpoint `url`.
fn play(role: Role, url: &str) -> Result<(), Failure> {
    match role {
        Role::Subscribe { .. }
        | Role::SubscribeSilently { .. }
        | Role::SubscribeCancelling { .. }
        | Role::HelloAndWait { .. }
        | Role::HelloAndLeave { .. }
        | Role::PushServer { .. }
        | Role::RequestAndReceive { .. } => return crate::push::play(role, url),
        Role::ServeContract { version } => return crate::contract::serve(version, url),
        Role::Writer { .. } | Role::Listener { .. } => return crate::broadcast::play(role, url),
        Role::WriteThroughDamage { .. } | Role::ListenThroughDamage => {
            return crate::broadcast_bad_input::play(role, url);
        }
        Role::HoldAndSleep | Role::ConnectReporting => return crate::spool::play(role, url),
        Role::ReceiveNumbered => {
            let mut server = api::listen(url)?;
            say(&format!("ready {}", server.endpoint()));
            exit_when_parent_goes();
            loop {
                let message = server.recv()?;
                match crate::support::parse_numbered(message.payload()) {
                    Ok((client, seq)) => say(&format!("got {client} {seq}")),
                    Err(e) => say(&format!("corrupt {e:?}")),
                }
            }
        }
        Role::Send {
            client: sender,
            count,
        } => {
            let client = api::connect(url)?;
            for seq in 0..count {
                let size = size_for(seq).min(client.max_message());
                client.send(&numbered(sender, seq, size))?;
            }
        }
        Role::SendCountingSleeps { client: sender } => {
            let message = numbered(sender, 0, 16);
            // The whole process's count: an async send may wait on a thread of its own.
            let sleeps = || {
                nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
                    .map(|usage| usage.voluntary_context_switches())
            };
            let before = match api::current() {
                api::Api::Blocking => {
                    let client = ipckit::connect(url)?;
                    say("sending");
                    let before = sleeps()?;
                    client.send(&message)?;
                    before
                }
                // On a runtime of one thread, whose idle workers cannot add sleeps of
                // their own to the count.
                api::Api::Async => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(async {
                        let client = ipckit::tokio::connect(url).await?;
                        say("sending");
                        let before = sleeps()?;
                        client.send(&message).await?;
                        Ok::<_, Failure>(before)
                    })?,
            };
            say(&format!("slept {}", sleeps()? - before));
        }
        Role::SendDropped => {
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
        Role::ServeEchoSlowly => {
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
        Role::SendRandom { writer, count } => {
            let client = api::connect(url)?;
            let max = client.max_message().min(1 << 20);
            let mut rng = fastrand::Rng::with_seed(writer.into());
            for seq in 0..count {
                client.send(&numbered(writer, seq, rng.usize(12..=max)))?;
            }
        }
        Role::SendLarge => {
            let client = api::connect(url)?;
            let size = client.max_message().min(16 << 20);
            let large = filled(size);
            say("connected");
            std::io::stdin().read_line(&mut String::new())?;
            say("sending");
            client.send(&large)?;
            std::thread::sleep(PATIENCE);
        }
        Role::SendAfterReaderDies => {
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
        Role::SendSizes { sizes } => {
            let client = api::connect(url)?;
            for size in sizes {
                client.send(&filled(size))?;
            }
        }
        Role::SendOversized { size: oversized } => {
            let client = api::connect(url)?;
            match client.send(&vec![0u8; oversized]) {
                Err(Error::MessageTooLarge { size, max, .. })
                    if size == oversized && max < size => {}
                other => return Err(format!("oversized send gave {other:?}").into()),
            }
            client.send(b"after")?;
        }
        Role::Request {
            threads,
            per_thread,
            spare_fds,
        } => {
            let client = Arc::new(api::connect(url)?);
            if let Some(spare) = spare_fds {
                leave_fds(spare)?;
            }
            let threads: Vec<_> = (0..threads)
                .map(|t| {
                    let client = client.clone();
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
        Role::RequestExclusive => {
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
        Role::ConnectEarly => {
            say("connecting");
            api::connect(url)?.send(b"early")?;
            say("sent");
        }
        Role::Connect => {
            // Connectionless transports learn of a missing server at the first request.
            let outcome = api::connect(url).and_then(|client| client.request(b"probe", PATIENCE));
            match outcome {
                Err(Error::NotFound { endpoint, .. }) => say(&format!("NotFound {endpoint}")),
                other => say(&format!("unexpected {other:?}")),
            }
        }
        Role::ConnectExpectDenied { as_nobody } => {
            if as_nobody {
                become_nobody()?;
            }
            match api::connect(url) {
                Err(Error::PermissionDenied { endpoint, .. }) if endpoint == url => {
                    say("PermissionDenied")
                }
                other => say(&format!("unexpected {other:?}")),
            }
        }
        Role::SendAs { uid, gid } => {
            become_user(uid, gid)?;
            // A connection's refusal comes with its welcome, which a client does not
            // wait for: a request reads it (the server drops the admitted one unanswered).
            let sent = api::connect(url).and_then(|client| {
                let message = numbered(uid, 0, 12);
                match client.capabilities().connection {
                    true => match client.request(&message, PATIENCE) {
                        Err(Error::Remote { .. }) => Ok(()),
                        other => other.map(drop),
                    },
                    false => client.send(&message),
                }
            });
            match sent {
                Ok(()) => say("sent"),
                Err(Error::PermissionDenied { endpoint, detail }) if endpoint == url => {
                    say(&format!("refused {detail}"))
                }
                Err(e) => say(&format!("{} {e}", variant(&e))),
            }
        }
        Role::RequestOnce { payload } => {
            let reply = api::connect(url)?.request(payload.as_bytes(), PATIENCE)?;
            say(&String::from_utf8_lossy(&reply));
        }
        Role::RequestValues => {
            let client = api::connect(url)?;
            let job = |id| TypedJob {
                id,
                tags: vec!["typed".into()],
            };
            match client.request_value::<_, TypedReply>(&job(7), PATIENCE) {
                Ok(reply) => say(&format!("ok {reply:?}")),
                Err(e) => say(&format!("{} {e}", variant(&e))),
            }
            for id in [0, 1] {
                match client.request_value::<_, String>(&job(id), PATIENCE) {
                    Ok(reply) => say(&format!("ok {reply:?}")),
                    Err(e) => say(&format!("{} {e}", variant(&e))),
                }
            }
        }
        Role::RequestPrinting { payload } => {
            match api::connect(url)?.request(payload.as_bytes(), PATIENCE) {
                Ok(reply) => say(&format!("reply {}", reply.escape_ascii())),
                Err(Error::Remote { reason, .. }) => say(&format!("Remote {reason}")),
                Err(e) => say(&format!("{} {e}", variant(&e))),
            }
        }
        Role::RequestWhenTold => {
            let client = api::connect(url)?;
            say("connected");
            std::io::stdin().read_line(&mut String::new())?;
            say("requesting");
            match client.request(b"pending", PATIENCE) {
                Ok(_) => say("reply"),
                Err(e) => say(&format!("{} {e}", variant(&e))),
            }
        }
        Role::ConnectAndWait => {
            let _client = api::connect(url)?;
            say("connected");
            std::thread::sleep(PATIENCE);
        }
        Role::CorruptReplies => {
            use std::os::unix::fs::FileExt;
            let mut server = api::listen(url)?;
            say(&format!("ready {}", server.endpoint()));
            exit_when_parent_goes();
            let message = server.recv()?;
            // The client is in slot 0.
            use crate::shared_memory::{REPLY_TAIL, segment, slot};
            segment(server.endpoint())?
                .write_all_at(&u64::MAX.to_le_bytes(), slot(0) + REPLY_TAIL)?;
            std::thread::sleep(PATIENCE);
            drop(message);
        }
        Role::ServeEcho => {
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
        Role::DieOnRequest => {
            let mut server = api::listen(url)?;
            say(&format!("ready {}", server.endpoint()));
            exit_when_parent_goes();
            let message = server.recv()?;
            if message.wants_reply() {
                std::process::abort(); // dies with the request unanswered
            }
        }
        Role::Print | Role::PrintWithFds { .. } => {
            // Room for the runtime, not for a multi-gigabyte allocation.
            rustix::process::setrlimit(
                rustix::process::Resource::As,
                rustix::process::Rlimit {
                    current: Some(1 << 30),
                    maximum: Some(1 << 30),
                },
            )?;
            let mut server = api::listen(url)?;
            if let Role::PrintWithFds { spare } = role {
                leave_fds(spare)?;
            }
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
        Role::Mute => {
            let endpoint: Endpoint = url.parse()?;
            type Accept = Box<dyn Fn() -> std::io::Result<Box<dyn Read + Send>>>;
            let (accept, url): (Accept, String) = match endpoint.address() {
                ipckit::endpoint::Address::Uds(ipckit::endpoint::UnixAddr::Path(path)) => {
                    let listener = std::os::unix::net::UnixListener::bind(path)?;
                    let accept = move || Ok(Box::new(listener.accept()?.0) as Box<_>);
                    (Box::new(accept), url.to_owned())
                }
                ipckit::endpoint::Address::Tcp(at) => {
                    let listener = std::net::TcpListener::bind((at.bare_host(), at.port))?;
                    // Port 0 asks for any: the URL names the one given.
                    let url = format!("tcp://{}", listener.local_addr()?);
                    let accept = move || Ok(Box::new(listener.accept()?.0) as Box<_>);
                    (Box::new(accept), url)
                }
                other => return Err(format!("no plain socket for {other:?}").into()),
            };
            exit_when_parent_goes();
            say(&format!("ready {url}"));
            loop {
                let mut conn = accept()?;
                std::thread::spawn(move || std::io::copy(&mut conn, &mut std::io::sink()));
            }
        }
        Role::HalfFrame { len } => {
            let endpoint: Endpoint = url.parse()?;
            let mut stream = bad_input::raw_greeted(&endpoint).map_err(|e| format!("{e:?}"))?;
            stream.write_all(&Header::new(Kind::Message, 0, len).encode())?;
            stream.write_all(&vec![9u8; len / 2])?;
            say("half-written");
            std::thread::sleep(PATIENCE);
        }
    }
    Ok(())
}

/// Lowers the descriptor limit so that `spare` more descriptors can be opened. The
/// limit bounds descriptor numbers, and a new descriptor takes the lowest free one: the
/// free numbers below the highest open one are taken first, and held.
fn leave_fds(spare: u64) -> Result<(), Failure> {
    let listed: Vec<u64> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own descriptor is closed by now.
    let open = listed
        .into_iter()
        .filter(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok())
        .collect::<Vec<u64>>();
    let highest = open.iter().copied().max().unwrap_or(0);
    for _ in 0..highest + 1 - open.len() as u64 {
        std::mem::forget(std::fs::File::open("/dev/null")?);
    }
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = Some(highest + 1 + spare);
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
    Ok(())
}

/// The name of `error`'s variant, for a check to match on.
fn variant(error: &Error) -> String {
    format!("{error:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}
