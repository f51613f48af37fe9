//! Bells: how a waiter that cannot block in a futex, a task on an async runtime, is woken.
//!
//! A bell is a datagram socket bound to an abstract name made of a random number, which
//! the waiter publishes in shared memory (in shm, the header's `bell` for the server, the
//! slot's for a client) and puts [`BELL`](super::wait::BELL) in its sleep word. A waker
//! that finds that value sends one empty datagram to the name; the runtime's reactor sees the socket
//! readable and wakes the task, on the thread that polls it: no helper thread, no hop.
//! Abstract names vanish with the process that holds them, so a bell leaves nothing
//! behind, and the random name cannot be guessed by a stranger (a ring it sent anyway
//! would only make the waiter look once more).

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use rustix::net::{AddressFamily, SendFlags, SocketAddrUnix, SocketFlags, SocketType};

fn address(nonce: u64) -> rustix::io::Result<SocketAddrUnix> {
    SocketAddrUnix::new_abstract_name(format!("ipckit-bell-{nonce:016x}").as_bytes())
}

fn datagram_socket() -> rustix::io::Result<OwnedFd> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
}

/// Rings bell `nonce` (0: nobody published one): one empty datagram, never waiting. A
/// full bell has rung already, and a missing one has nobody left to wake.
pub fn ring(nonce: u64) {
    static SOCKET: OnceLock<Option<OwnedFd>> = OnceLock::new();
    if nonce == 0 {
        return;
    }
    let (Some(socket), Ok(to)) = (
        SOCKET.get_or_init(|| datagram_socket().ok()),
        address(nonce),
    ) else {
        return;
    };
    let _ = rustix::net::sendto(socket, &[], SendFlags::DONTWAIT | SendFlags::NOSIGNAL, &to);
}

#[cfg(feature = "tokio")]
pub use self::waiting::Bell;

#[cfg(feature = "tokio")]
mod waiting {
    use std::hash::{BuildHasher, Hasher};
    use std::io;
    use std::task::{Context, Poll};

    use rustix::net::RecvFlags;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    use super::*;
    use crate::error::{Error, Result};

    /// The waiting side of a bell, registered with the current tokio runtime.
    pub struct Bell {
        nonce: u64,
        socket: AsyncFd<OwnedFd>,
    }

    impl Bell {
        pub fn new(url: &str) -> Result<Bell> {
            let io_err = |op, e: rustix::io::Errno| Error::io(url, op, e.into());
            let socket = datagram_socket().map_err(|e| io_err("creating a bell", e))?;
            let nonce = loop {
                // Seeded by the operating system's randomness, per process and call.
                let nonce = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish();
                if nonce == 0 {
                    continue;
                }
                match rustix::net::bind(
                    &socket,
                    &address(nonce).map_err(|e| io_err("naming a bell", e))?,
                ) {
                    Ok(()) => break nonce,
                    Err(rustix::io::Errno::ADDRINUSE) => continue,
                    Err(e) => return Err(io_err("binding a bell", e)),
                }
            };
            let socket = crate::transport::reactor::register(url, socket, Interest::READABLE)?;
            Ok(Bell { nonce, socket })
        }

        /// What to publish in shared memory for wakers to ring.
        pub fn nonce(&self) -> u64 {
            self.nonce
        }

        /// Ready once the bell rang (since it was last polled ready); registers the task
        /// to be woken by the next ring otherwise.
        pub fn poll_rung(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            // Every ring so far counts as this one: empty the socket.
            crate::transport::reactor::poll_read(&self.socket, cx, |socket| {
                let mut rung = false;
                loop {
                    match rustix::net::recv(socket.get_ref(), &mut [0u8; 8], RecvFlags::DONTWAIT) {
                        Ok(_) => rung = true,
                        Err(rustix::io::Errno::AGAIN) if rung => return Ok(()),
                        Err(e) => return Err(io::Error::from(e)),
                    }
                }
            })
        }
    }
}
