//! `subscribe` and `publish`: shell pub/sub over any transport that pushes.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ipckit::{Broadcaster, ClientHandle, Event};

use crate::args::{Bounds, Output, Split};
use crate::exit::{CliResult, Failure};
use crate::output::print_message;
use crate::serve::{block_stop_signals, on_stop_signal, when_stdout_closes};

/// Prints what the server at `url` pushes until `bounds`, the server or a signal ends it.
pub fn subscribe(url: &str, output: Output, bounds: Bounds) -> CliResult {
    let signals = block_stop_signals()?;
    // A client has nothing to remove: the process ends where it stands, its output
    // flushed message by message, and the server sees the connection close.
    on_stop_signal(signals, || std::process::exit(0));
    when_stdout_closes(|| std::process::exit(0));
    let client = ipckit::connect(url).map_err(|e| Failure::from(e).for_client("publish"))?;
    let deadline = bounds.timeout.map(|t| Instant::now() + t);
    let mut out = io::stdout().lock();
    let mut received = 0u64;
    while bounds.count.is_none_or(|n| received < n) {
        let pushed = match deadline {
            None => client.recv().map(Some),
            Some(deadline) => {
                client.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match pushed {
            Ok(Some(message)) => {
                print_message(&mut out, output.format, message.payload(), None)?;
                received += 1;
            }
            Ok(None) => {
                return match bounds.count {
                    Some(n) => Err(Failure::TimedOut(format!(
                        "{url}: timed out after {received} of {n} messages"
                    ))),
                    None => Ok(()),
                };
            }
            // The end of the stream: everything the server sent was printed.
            Err(ipckit::Error::Disconnected { .. }) => {
                return match bounds.count {
                    Some(n) => Err(Failure::Other(format!(
                        "{url}: the server went away after {received} of {n} messages"
                    ))),
                    None => Ok(()),
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Serves `url`, broadcasting each piece of standard input (cut as `split` says) to every
/// connected client, until standard input ends or a signal comes.
pub fn publish(url: &str, wait_for: usize, split: Split, output: Output) -> CliResult {
    let signals = block_stop_signals()?;
    let mut server = ipckit::listen(url)?;
    let broadcaster = server.broadcaster()?;
    let stopper = server.stopper();
    on_stop_signal(signals, move || stopper.stop());
    if server.endpoint().to_string() != url {
        // The kernel chose the port: say which, or nobody can subscribe.
        eprintln!("ipckit: listening on {}", server.endpoint());
    }
    log::info!("{}: publishing standard input", server.endpoint());
    let clients = Arc::new((Mutex::new(0usize), Condvar::new()));
    let ended = Arc::new(AtomicBool::new(false));
    let linger = server.endpoint().send_timeout();
    let reader = std::thread::spawn({
        let (clients, ended, stopper) = (clients.clone(), ended.clone(), server.stopper());
        move || {
            wait_for_clients(&clients, wait_for);
            let published = broadcast_stdin(&broadcaster, &split);
            // What waits in the outboxes of subscribers that are behind would go with the
            // server: give them the send timeout to take it.
            let behind = broadcaster.flush(linger);
            if behind > 0 {
                eprintln!(
                    "ipckit: {behind} subscribers did not take their last lines within {linger:?}"
                );
            }
            // The receiving loop ends with the server, which closes every connection.
            ended.store(true, Ordering::Release);
            stopper.stop();
            published
        }
    });
    let mut out = io::stdout().lock();
    loop {
        match server.recv_event() {
            Ok(Event::Connected(client)) => {
                eprintln!("ipckit: {} connected", describe(&client));
                let (count, changed) = &*clients;
                *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                changed.notify_all();
            }
            Ok(Event::Disconnected(client)) => {
                eprintln!("ipckit: {} left", describe(&client));
            }
            Ok(Event::Lost { count }) => eprintln!("ipckit: {count} messages were lost"),
            Ok(Event::Message(message)) => {
                // A request is refused as the message drops: publish answers nothing.
                print_message(&mut out, output.format, message.payload(), Some(&message))?;
            }
            Err(ipckit::Error::Stopped { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if ended.load(Ordering::Acquire) {
        return reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }
    // Stopped by a signal: the reader may be blocked on standard input, and ends with
    // the process.
    Ok(())
}

fn wait_for_clients(clients: &(Mutex<usize>, Condvar), wanted: usize) {
    let (count, changed) = clients;
    let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
    while *count < wanted {
        count = changed.wait(count).unwrap_or_else(|e| e.into_inner());
    }
}

/// "client #3 (pid 1234)", with what the transport knows of it.
fn describe(client: &ClientHandle) -> String {
    let peer = client.peer();
    match (peer.pid, &peer.addr) {
        (Some(pid), _) => format!("client #{} (pid {pid})", client.id()),
        (None, Some(addr)) => format!("client #{} ({addr})", client.id()),
        (None, None) => format!("client #{}", client.id()),
    }
}

fn broadcast_stdin(broadcaster: &Broadcaster, split: &Split) -> CliResult {
    let mut drops = Drops::default();
    if split.whole {
        let mut all = Vec::new();
        io::stdin()
            .lock()
            .read_to_end(&mut all)
            .map_err(|e| format!("reading standard input: {e}"))?;
        drops.broadcast(broadcaster, &all);
    } else {
        // Messages are bytes: a piece need not be UTF-8, and with --null may hold newlines.
        let separator = if split.null { 0 } else { b'\n' };
        for piece in io::stdin().lock().split(separator) {
            let mut piece = piece.map_err(|e| format!("reading standard input: {e}"))?;
            if split.crlf && piece.last() == Some(&b'\r') {
                piece.pop();
            }
            drops.broadcast(broadcaster, &piece);
        }
    }
    drops.finish();
    Ok(())
}

/// The deliveries that broadcasts missed, said on stderr at most once a second while they
/// go on, and in total at the end, rather than once for every line.
#[derive(Default)]
struct Drops {
    lines: u64,
    dropped: u64,
    disconnected: u64,
    unsaid: (u64, u64),
    said_at: Option<Instant>,
}

impl Drops {
    fn broadcast(&mut self, broadcaster: &Broadcaster, piece: &[u8]) {
        let delivery = match broadcaster.broadcast(piece) {
            Ok(delivery) => delivery,
            // Too large for the server: said, and the next lines still go out.
            Err(e) => {
                log::warn!("{e}; skipping it");
                return;
            }
        };
        self.lines += 1;
        self.dropped += delivery.dropped as u64;
        self.disconnected += delivery.disconnected as u64;
        self.unsaid.0 += delivery.dropped as u64;
        self.unsaid.1 += delivery.disconnected as u64;
        if self.unsaid != (0, 0)
            && self
                .said_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.say();
        }
    }

    fn say(&mut self) {
        let (dropped, disconnected) = std::mem::take(&mut self.unsaid);
        if dropped > 0 {
            eprintln!(
                "ipckit: {dropped} line(s) not sent to clients that do not keep up (their outbox was full)"
            );
        }
        if disconnected > 0 {
            eprintln!("ipckit: {disconnected} client(s) gone or disconnected for not keeping up");
        }
        self.said_at = Some(Instant::now());
    }

    fn finish(&mut self) {
        self.say();
        if self.dropped > 0 {
            eprintln!(
                "ipckit: {} line(s) published; {} deliveries dropped in all",
                self.lines, self.dropped
            );
        }
    }
}
