//! `spool`: a directory of message files, Maildir's way (`spool:///var/spool/app`): the
//! article's "files with exclusive locks", made a durable queue.
//!
//! A message is one file whose contents are exactly the payload; its name says its place
//! in the queue and who sent it (docs/PROTOCOL.md, *Spools*, byte for byte). A sender
//! writes it into `tmp/`, flushes it to disk, renames it into `new/` without replacing
//! anything, and flushes `new/`. Receivers wake on inotify, claim a message by locking it
//! and renaming it into `cur/`, and delete it once it is taken. `ls DIR/new` shows what
//! waits; `inotifywait -m DIR/new` shows it arrive.
//!
//! What a successful `send` promises: with `?sync=true` (the default), the message is on
//! disk and in `new/`, so it survives the crash of any process, a kernel crash and a power
//! loss, on a filesystem that honours `fsync` (ext4, xfs, btrfs; tmpfs keeps nothing
//! across a reboot). With `?sync=false` the fsyncs are skipped: the message survives any
//! process's crash, as the kernel holds it, but a power loss may take it. Either way a
//! message in `new/` is whole: a sender killed mid-send leaves at most a file in `tmp/`,
//! which the next receiver to start removes once its sender is gone.
//!
//! Limits: a message is at most `?max_message=` bytes (16 MiB by default, up to 4 GiB);
//! how many wait is bounded only by the filesystem (`capabilities().queue_limit` is
//! `None`). A send into a full filesystem fails with [`Error::Full`](crate::Error::Full)
//! and leaves nothing in `new/`.
//!
//! # Receiving
//!
//! Any number of servers may receive from one spool at once: each message goes to
//! exactly one of them (work sharing, `capabilities().competing_receivers`). One sender's
//! messages are received in the order it sent them; across senders, in name order, which
//! is time order. An idle receiver sleeps in the kernel and uses no CPU.
//!
//! A message is deleted when `recv` returns it (`?ack=recv`, the default), or, with
//! `?ack=done`, once the application is done with it: the [`Message`](crate::Message)
//! dropped, the `recv_with` handler returned. A receiver killed before then leaves its
//! claim in `cur/`, where the next receiver to look finds its lock free and returns the
//! message to `new/`, one delivery counted: delivery is at least once, and
//! [`Message::deliveries`](crate::Message::deliveries) says which delivery this is (1 for
//! the first), so that an application can recognise a repeat. A message claimed
//! `?max_deliveries=` times (5) goes to `dead/` instead of being delivered again, so one
//! that kills its handler cannot loop forever.
//!
//! What does not belong in `new/` is moved to `bad/` and logged, never delivered: a
//! symlink (never followed), a directory, a FIFO (never opened for reading in a way that
//! could block), a socket or a device, a file whose name is not a message's, and a file
//! over the receiver's `max_message`. A zero-length file is an empty message.
//!
//! A program that is not ipckit sends a message by writing a file into `tmp/` and renaming
//! it into `new/` under a name that starts with the time in seconds and a dot:
//!
//! ```sh
//! n=$(date +%s.%N).$$; cat > DIR/tmp/$n && mv DIR/tmp/$n DIR/new/
//! ```
//!
//! # Requests and pushes
//!
//! Each client makes an inbox, `clients/ID/`, at connect, holds a lock in it while it
//! lives, and removes it when dropped. A server answers a request, and pushes, by putting
//! a file into that inbox (without fsync: an inbox lives only as long as its client), and
//! sees clients come and go as their inboxes appear and leave; a client that crashed is
//! seen within a second, by its free lock, and its inbox removed. A server's push waits up
//! to `?send_timeout_ms=` while `?outbox=` (1000) of its pushes wait unread in the inbox,
//! then fails with [`Error::Full`](crate::Error::Full); a broadcast skips or disconnects
//! such a client (`?overflow=`). A client's [`recv`](crate::Client::recv) fails with
//! [`Error::Disconnected`](crate::Error::Disconnected) once every receiver it saw has gone
//! and it has taken the pushes before; its requests, durable, wait for the next receiver.
//!
//! Each receiver, and each client from its first request or `recv` on, takes one inotify
//! instance, of the user's `fs.inotify.max_user_instances` (128 by default); a client that
//! only sends takes none.
//!
//! # Access
//!
//! The spool's directories are made with `?mode=`'s bits plus search where reading is
//! allowed (0700 for the default 0600; 0770 for `?mode=0660`, to share a spool with a
//! group), its files with `?mode=`. A spool directory owned by another user (unless
//! `?mode=` shares it with group or others), or with bits beyond its mode, is refused with
//! [`Error::PermissionDenied`](crate::Error::PermissionDenied) naming the owner and the
//! mode. Every directory is opened once, without following links, and used through its
//! descriptor.
//!
//! # URL and options
//!
//! `spool:///var/spool/app`. Options: `sync`, `ack`, `max_deliveries`, `mode`,
//! `max_message`, `send_timeout_ms`, `outbox` and `overflow`, described in [the crate's
//! endpoint table](crate#endpoints).
//!
//! # Example
//!
//! A message sent before any receiver runs waits on disk for the first one:
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("ipckit-doc-spool-{}", std::process::id()));
//! let url = format!("spool://{}", dir.display());
//! let client = ipckit::connect(url.as_str())?; // makes the spool
//! client.send(b"wait for me")?;
//!
//! let mut server = ipckit::listen(url.as_str())?;
//! let message = server.recv()?;
//! assert_eq!(message.payload(), b"wait for me");
//! assert_eq!(message.deliveries(), Some(1));
//! # drop((client, server));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), ipckit::Error>(())
//! ```

use std::path::Path;

use crate::endpoint::{Address, Endpoint};
use crate::error::Result;
use crate::transport::{Capabilities, Connection, Listener, Transport};

mod client;
#[cfg(feature = "tokio")]
mod client_tokio;
pub(crate) mod names;
pub(crate) mod queue;
mod server;
#[cfg(test)]
mod server_tests;
#[cfg(feature = "tokio")]
mod server_tokio;
pub(crate) mod store;
pub(crate) mod watch;

/// The spool transport.
pub struct Spool;

crate::transport::sealed!(Spool);

impl Transport for Spool {
    fn scheme(&self) -> &'static str {
        "spool"
    }

    fn summary(&self) -> &'static str {
        "Maildir-style directory: write, fsync, rename; inotify"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            push: true,
            reliable: true,
            ordered: true,
            durable: true,
            broadcast: false,
            connection: false,
            max_message: endpoint.max_message(),
            peer_credentials: false,
            zero_copy: false,
            competing_receivers: true,
            queue_limit: None,
        }
    }

    fn scratch_endpoint(&self, dir: &Path, name: &str) -> Endpoint {
        Address::Spool(dir.join(format!("{name}.spool"))).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(client::connect(endpoint)?))
    }

    fn destroy(&self, endpoint: &Endpoint) -> Result<()> {
        store::Spool::destroy(endpoint)
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        Ok(Box::new(server::listen(endpoint)?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> crate::transport::BoxFuture<'a, Result<Box<dyn crate::transport::AsyncConnection>>> {
        crate::transport::connected(client_tokio::connect_async(endpoint))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn crate::transport::AsyncListener>> {
        Ok(Box::new(server_tokio::listen_async(endpoint)?))
    }
}
