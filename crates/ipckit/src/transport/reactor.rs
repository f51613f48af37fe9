//! What every transport's async side needs from tokio's reactor: its descriptors
//! registered, and each operation retried until the descriptor is really ready. The
//! operations themselves are the transports' own, the same calls their blocking sides
//! make on the same kind of descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;

use crate::error::{Error, Result};

/// The runtime this is called in, or an error saying there must be one.
pub(super) fn runtime(url: &str) -> Result<Handle> {
    Handle::try_current().map_err(|_| Error::Unsupported {
        endpoint: url.to_owned(),
        what: "the async API needs a tokio runtime: call it from within one".into(),
    })
}

/// Registers a non-blocking descriptor with the current runtime's reactor.
pub(super) fn register<T: AsFd + AsRawFd>(
    url: &str,
    fd: T,
    interest: Interest,
) -> Result<AsyncFd<T>> {
    let _entered = runtime(url)?.enter();
    // SAFETY: `T` owns (or shares ownership of) an open descriptor, which stays open and
    // the same for as long as the AsyncFd holding it (our types never swap it).
    unsafe { AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| Error::io(url, "registering with tokio", e.into()))
}

/// Runs `op` once `fd` is readable, again after every would-block or interruption: the
/// poll form, for a future that owns its descriptor's read waker.
pub(super) fn poll_read<T: AsRawFd, R>(
    fd: &AsyncFd<T>,
    cx: &mut Context<'_>,
    mut op: impl FnMut(&AsyncFd<T>) -> io::Result<R>,
) -> Poll<io::Result<R>> {
    loop {
        let mut ready = ready!(fd.poll_read_ready(cx))?;
        match ready.try_io(&mut op) {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(result) => return Poll::Ready(result),
            Err(_would_block) => {}
        }
    }
}

/// Runs `op` once `fd` is ready for `interest`, again after every would-block or
/// interruption. Any number of futures may wait on one descriptor this way.
pub(super) async fn when_ready<T: AsRawFd, R>(
    fd: &AsyncFd<T>,
    interest: Interest,
    mut op: impl FnMut(&AsyncFd<T>) -> io::Result<R>,
) -> io::Result<R> {
    loop {
        let mut ready = fd.ready(interest).await?;
        match ready.try_io(&mut op) {
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(result) => return result,
            Err(_would_block) => {}
        }
    }
}
