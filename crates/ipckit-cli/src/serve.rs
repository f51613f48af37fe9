//! The receiving loop of `listen` and `serve`, and what stops it cleanly: a signal, a
//! bound, or the reader of standard output going away.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ipckit::{Event, Message, Server};
use nix::sys::signal::{SigSet, Signal};

use crate::args::Bounds;
use crate::exit::{CliResult, Failure};

/// Receives at `url` within `bounds`, handing each message to `handle` and each count of
/// events a listener missed to `lost` (only a broadcast listener misses any). With
/// `stdout_read`, the loop also ends when whoever reads standard output goes away, at once
/// rather than at the next message, so that `listen URL | head -1` ends with `head`.
pub fn serve_loop(
    url: &str,
    bounds: Bounds,
    stdout_read: bool,
    mut handle: impl FnMut(&mut Message) -> CliResult,
    mut lost: impl FnMut(u64) -> CliResult,
) -> CliResult {
    let signals = block_stop_signals()?;
    let mut server: Server = ipckit::listen(url)?;
    let stopper = server.stopper();
    on_stop_signal(signals, move || stopper.stop());
    let reader_gone = Arc::new(AtomicBool::new(false));
    if stdout_read {
        let (stopper, gone) = (server.stopper(), reader_gone.clone());
        when_stdout_closes(move || {
            gone.store(true, Ordering::Release);
            stopper.stop();
        });
    }
    if server.endpoint().to_string() != url {
        // The kernel chose the port: say which, or nobody can reach the server.
        eprintln!("ipckit: listening on {}", server.endpoint());
    }
    log::info!("{}: listening", server.endpoint());
    let deadline = bounds.timeout.map(|t| Instant::now() + t);
    let mut received = 0u64;
    while bounds.count.is_none_or(|n| received < n) {
        let event = match deadline {
            None => server.recv_event().map(Some),
            Some(deadline) => {
                server.recv_event_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        let event = match event {
            // Stopped: dropping the server removes what it made.
            Err(ipckit::Error::Stopped { .. }) if reader_gone.load(Ordering::Acquire) => {
                return Err(Failure::ReaderGone);
            }
            Err(ipckit::Error::Stopped { .. }) => return Ok(()),
            other => other?,
        };
        let mut message = match event {
            Some(Event::Message(message)) => message,
            Some(Event::Lost { count }) => {
                lost(count)?;
                continue;
            }
            // Clients coming and going are the business of `publish`, not of these loops.
            Some(_) => continue,
            None => {
                return match bounds.count {
                    Some(n) => Err(Failure::TimedOut(format!(
                        "{url}: timed out after {received} of {n} messages"
                    ))),
                    None => Ok(()),
                };
            }
        };
        // A failure here (standard output gone, say) returns through the server's drop,
        // which removes what it made.
        handle(&mut message)?;
        received += 1;
    }
    Ok(())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread, and so in every thread it starts,
/// so that they are taken by the one thread that waits for them (`on_stop_signal`) rather than
/// kill the process before it removes what it made.
pub fn block_stop_signals() -> io::Result<SigSet> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().map_err(io::Error::from)?;
    Ok(signals)
}

/// Calls `stop` when one of `signals` comes (it stops a server, which then cleans up and
/// exits 0).
pub fn on_stop_signal(signals: SigSet, stop: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            log::info!("{signal}: stopping");
            stop();
            crate::exec::stop_running();
        }
    });
}

/// Calls `stop` when standard output is a pipe or socket whose reader has gone: the
/// kernel reports POLLERR (a pipe) or POLLHUP (a socket) on the writing end, even to a
/// poll that asks for nothing else, so this thread sleeps until then.
pub fn when_stdout_closes(stop: impl FnOnce() + Send + 'static) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    std::thread::spawn(move || {
        let stdout = io::stdout();
        let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
                Ok(_) => break,
            }
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
            log::info!("the reader of standard output went away: stopping");
            stop();
        }
    });
}
