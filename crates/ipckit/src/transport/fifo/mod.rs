//! `fifo`: named pipes (`fifo:///tmp/app.fifo`), made with mkfifo.
//!
//! The server makes the FIFO (mkfifo, with the endpoint's mode) and reads it; any number
//! of clients write to it at once. A pipe makes a write atomic only up to PIPE_BUF (4096
//! bytes), so every message goes as chunks of at most that size, each in one write and
//! labelled with its writer and message: whatever the writers do at the same time, no
//! chunk is ever split, and the server puts each writer's message back together. A writer
//! killed in the middle of a message leaves whole chunks behind and never a torn one; the
//! server drops the unfinished message once the writer's pid is gone, and never delivers
//! it. Bytes that are not chunks (`echo hi > app.fifo`) are skipped up to the next chunk
//! header, which carries a check byte to be found again, and reported in a warning as
//! they arrive; the server goes on serving.
//!
//! Duplex and push: each client makes an inbound FIFO of its own beside the server's
//! when it connects (`app.fifo.PID.N.reply`, mode 0600), named after its writer id, and
//! announces it with a hello; the server opens it, and reports the client as
//! [`Event::Connected`](crate::Event) before any message of its. The server writes both
//! the replies to the client's requests and its pushes there, pushes marked as such: one
//! thread of the client at a time reads the FIFO, and hands each reply to the caller
//! waiting for it and each push to [`Client::recv`](crate::Client::recv), whatever
//! threads request and receive at once. The server writes one message at a time into a
//! client's FIFO, so a push and a reply of several chunks never interleave.
//!
//! A client's outbox is its inbound pipe's buffer (256 KiB, which the client asks the
//! kernel for; 64 KiB where it refuses): a push finds room there or waits up to `?send_timeout_ms=` for it, then
//! fails with [`Error::Full`] having written nothing; from then on the client counts as
//! full until it has read half of its pipe. A message of several chunks is begun only
//! once all of it fits, where it can: one that is larger than the pipe, and that the
//! client stops reading halfway, is given `?send_timeout_ms=` more, after which the
//! client is disconnected rather than left with half a message. A broadcast never
//! waits: a full client is skipped or disconnected, per `?overflow=`.
//!
//! A client that is dropped says goodbye, and removes its FIFO; the server reports
//! [`Event::Disconnected`](crate::Event). A client that crashed leaves its FIFO without a
//! reader: a push to it fails with [`Error::Disconnected`] at once (EPIPE), and a thread
//! of the server, asleep in `poll` on the clients' FIFOs, wakes the server's loop to
//! report it and remove the FIFO, whether or not anything was pushed. A server that
//! starts removes the FIFOs of clients whose process is gone, as one that serves does
//! now and then. A client learns that its server stopped, crashed or disconnected it when
//! the server's end of its FIFO closes: its `recv`, and a request waiting for its reply,
//! fail with [`Error::Disconnected`] once what was pushed before is taken.
//!
//! A writer with no reader gets [`Error::NotFound`] when connecting and
//! [`Error::Disconnected`] when the reader goes, never a fatal SIGPIPE: where the process
//! has not already ignored SIGPIPE, it is blocked around each write and the pending one
//! taken back. A full pipe makes a write wait up to `?send_timeout_ms=` (10 s), then
//! fail with [`Error::Full`].
//!
//! What a successful `send` promises: the whole message is in the pipe. If the server
//! dies, the pipe and what is in it go with it.
//!
//! With `?framing=line` (`fifo:///tmp/app.fifo?framing=line`) the FIFO takes plain lines
//! instead, one message per line, from any program that can open a file (`echo hi >
//! app.fifo`); it is one-way then, as a line carries no return address, and the client's
//! `request` is refused. Nor does such a server push (`capabilities().push` is false for
//! it): its writers are any program, with no inbound FIFO, and a line does not say whose
//! it is. Lines of up to PIPE_BUF bytes from several writers at once each
//! arrive whole; longer lines written at the same time may interleave. A line over
//! `?max_message=` is dropped and reported, and the server goes on serving. A last line
//! without a newline (`printf hi > app.fifo`) is delivered once every writer has closed
//! the FIFO.
//!
//! # URL and options
//!
//! `fifo:///tmp/app.fifo`: the FIFO at that absolute path, made by the server. Options:
//! `framing`, `mode`, `send_timeout_ms` and `max_message`, described in
//! [the crate's endpoint table](crate#endpoints).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! let dir = std::env::temp_dir().join(format!("ipckit-doc-fifo-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let url = format!("fifo://{}/app.fifo", dir.display());
//!
//! let server = ipckit::listen(&url)?.spawn(|msg| Some(msg.payload().to_ascii_uppercase()));
//! let client = ipckit::connect(&url)?;
//! client.send(b"a one-way message")?;
//! // The client's inbound FIFO, beside the server's, brings the reply; it is removed with
//! // the client.
//! assert_eq!(client.request(b"duplex", Duration::from_secs(5))?, b"DUPLEX");
//!
//! drop(client);
//! drop(server); // stops it and removes the FIFO
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), ipckit::Error>(())
//! ```

mod chunk;
mod client;
mod inbox;
mod line;
#[cfg(feature = "tokio")]
mod on_tokio;
mod outbox;
mod server;

use std::collections::{HashMap, VecDeque};
use std::fs::FileType;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

#[cfg(any(test, fuzzing))]
pub(crate) use self::chunk::{Chunks, FIRST, LAST, REFUSED, REQUEST, TIMED_OUT, WAKE, Whole};
pub(crate) use self::chunk::{Reassembly, WriterId};
use self::client::FifoConnection;
use self::server::FifoListener;
use super::endpoint_file::{EndpointFile, Kind, claim_path};
use super::{Capabilities, Connection, Listener, Reclaim, Transport};
use crate::endpoint::{Address, Endpoint, Framing};
use crate::error::{Error, Result};
use crate::message::Peer;

/// The server asks the kernel for a pipe this large, for throughput.
const PIPE_SIZE: usize = 1 << 20;
/// How often partial messages are checked for writers that died.
const REAP_INTERVAL: Duration = Duration::from_millis(500);
/// How long a reply may wait for room in a client's FIFO.
const REPLY_SEND_TIMEOUT: Duration = Duration::from_secs(10);

fn fifo_path(endpoint: &Endpoint) -> &Path {
    match endpoint.address() {
        Address::Fifo(path) => path,
        _ => unreachable!("the registry hands fifo endpoints only to fifo"),
    }
}

fn reply_path(fifo: &Path, writer: WriterId) -> PathBuf {
    let mut name = fifo.as_os_str().to_owned();
    name.push(format!(".{}.{}.reply", writer.0, writer.1));
    PathBuf::from(name)
}

fn open_fifo(endpoint: &Endpoint, path: &Path, flags: OFlags) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        flags | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NXIO => Error::NotFound {
            endpoint: endpoint.to_string(),
            detail: "the FIFO exists but nobody reads it".into(),
        },
        e => Error::io(endpoint, "opening the FIFO", e.into()),
    })
}

/// Makes a FIFO no wider than `mode` (the umask only narrows it).
fn mkfifo(endpoint: &Endpoint, path: &Path, mode: u32) -> Result<()> {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::from_raw_mode(mode))
        .map_err(|e| Error::listen_io(endpoint, "making the FIFO", e.into()))
}

/// The `fifo` transport.
pub struct Fifo;

crate::transport::sealed!(Fifo, FifoConnection, FifoListener);

impl Transport for Fifo {
    fn scheme(&self) -> &'static str {
        "fifo"
    }

    fn summary(&self) -> &'static str {
        "named pipes (mkfifo), atomic chunks"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            // A line carries no return address (see `line`).
            duplex: endpoint.framing() == Framing::Length,
            reliable: true,
            ordered: true,
            durable: false,
            broadcast: false,
            connection: false,
            max_message: endpoint.max_message(),
            peer_credentials: false,
            zero_copy: false,
            competing_receivers: false,
            queue_limit: None,
            // A line names no client to push to (see `line`).
            push: endpoint.framing() == Framing::Length,
        }
    }

    fn scratch_endpoint(&self, dir: &Path, name: &str) -> Endpoint {
        Address::Fifo(dir.join(format!("{name}.fifo"))).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        if endpoint.framing() == Framing::Line {
            return Ok(Box::new(line::LineConnection::new(endpoint)?));
        }
        Ok(Box::new(FifoConnection::new(endpoint)?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        if endpoint.framing() == Framing::Line {
            return Ok(Box::new(line::LineListener::new(endpoint)?));
        }
        let server = server(endpoint)?;
        // Reads block, as a hand-written reader's do; see `recv`.
        rustix::fs::fcntl_setfl(&*server.fd, OFlags::RDWR)
            .map_err(|e| Error::io(endpoint, "making the FIFO blocking", e.into()))?;
        Ok(Box::new(server))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> super::BoxFuture<'a, Result<Box<dyn super::AsyncConnection>>> {
        if endpoint.framing() == Framing::Line {
            return super::connected(line::on_tokio::AsyncLineConnection::new(endpoint));
        }
        super::connected(on_tokio::AsyncFifoConnection::new(endpoint))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(&self, endpoint: &Endpoint) -> Result<Box<dyn super::AsyncListener>> {
        if endpoint.framing() == Framing::Line {
            return Ok(Box::new(line::on_tokio::AsyncLineListener::new(endpoint)?));
        }
        Ok(Box::new(on_tokio::AsyncFifoListener::new(server(
            endpoint,
        )?)?))
    }
}

/// The server's FIFO, made (or a dead server's taken over), without the FIFOs of
/// clients that are gone.
fn claim(endpoint: &Endpoint) -> Result<EndpointFile> {
    let path = fifo_path(endpoint);
    // Opening for writing succeeds only while somebody reads: a live server.
    let alive = || Ok(open_fifo(endpoint, path, OFlags::WRONLY).is_ok());
    let fifo = Kind {
        name: "FIFO",
        is: FileType::is_fifo,
        alive: &alive,
        mode: endpoint.mode(),
    };
    let file = claim_path(endpoint, path, fifo, || {
        mkfifo(endpoint, path, endpoint.mode() & 0o600)
    })?;
    remove_dead_reply_fifos(path);
    Ok(file)
}

/// The server of the default framing, its FIFO open non-blocking.
fn server(endpoint: &Endpoint) -> Result<FifoListener> {
    let file = claim(endpoint)?;
    let path = fifo_path(endpoint);
    // Read and write: the pipe then never reads as ended when writers come and go, and
    // opening does not wait for a writer.
    let fd = open_fifo(endpoint, path, OFlags::RDWR)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_SIZE);
    let waker_fd = open_fifo(endpoint, path, OFlags::WRONLY)?;
    Ok(FifoListener {
        url: endpoint.to_string().into(),
        endpoint: endpoint.clone(),
        path: path.to_owned(),
        fd: Arc::new(fd),
        reassembly: Reassembly::new(endpoint.max_message()),
        events: VecDeque::new(),
        stop: Arc::new(AtomicBool::new(false)),
        waker_fd: Arc::new(waker_fd),
        last_sink: None,
        anonymous: Arc::new(Peer::default()),
        last_reap: Instant::now(),
        reclaim: Reclaim::new(),
        roster: crate::push::Roster::new(endpoint),
        clients: HashMap::new(),
        watcher: None,
        _file: file,
    })
}

/// Removes the FIFOs of clients whose process is gone.
fn remove_dead_reply_fifos(fifo: &Path) {
    let (Some(dir), Some(name)) = (fifo.parent(), fifo.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let Some(writer) = file
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".reply"))
        else {
            continue;
        };
        let Some(pid) = writer.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
        if !alive && entry.file_type().is_ok_and(|t| t.is_fifo()) {
            log::info!(
                "{}: removing the FIFO of a client that is gone",
                entry.path().display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Refuses a message over the endpoint's limit before a chunk of it is written.
fn check_size(url: &str, max: usize, payload: &[u8]) -> Result<()> {
    if payload.len() > max {
        return Err(Error::MessageTooLarge {
            endpoint: url.to_owned(),
            size: payload.len(),
            max,
            limit: "this endpoint's max_message".into(),
        });
    }
    Ok(())
}
