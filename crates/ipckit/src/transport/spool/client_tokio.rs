//! The spool's client driven by tokio: the same [`Core`] as the blocking client, waiting
//! on its inotify descriptor through tokio's reactor rather than in `poll`.
//!
//! A send with `?sync=true` (the default) writes, flushes and renames on tokio's blocking
//! pool, since an fsync can take long enough to stall a runtime worker; with
//! `?sync=false` it runs inline (a few syscalls that never wait on the disk).
//!
//! Cancellation: a send dropped once its write has started on the blocking pool still
//! publishes its message, whole (nothing half-written is ever in `new/`). A request
//! dropped forgets its id: its reply, if one comes, is removed unread. A `recv` dropped
//! loses nothing: a push is taken from the books only by the poll that returns it.

use std::future::{Future, poll_fn};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Sleep;

use super::client::{Core, Incoming, Reader};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::transport::reactor::register;
use crate::transport::{AsyncConnection, BoxFuture};

/// An async client of a spool, on the runtime it was made in.
pub(crate) struct AsyncSpoolConnection {
    core: Arc<Core>,
    /// Made by the first task to wait (see [`Core::reader`]).
    reader: Mutex<Option<AsyncReader>>,
}

/// The blocking client's reader, with what tokio needs to wait for it.
struct AsyncReader {
    /// The watch's inotify descriptor, shared with it, registered with the reactor.
    inotify: AsyncFd<Arc<OwnedFd>>,
    reader: Reader,
    /// Wakes the reader when the receivers are next to be looked at.
    check: Pin<Box<Sleep>>,
}

/// Opens the spool and makes the client's inbox, as [`super::client::connect`] does, on
/// the current runtime.
pub(super) fn connect_async(endpoint: &Endpoint) -> Result<AsyncSpoolConnection> {
    connect_with(endpoint, endpoint.sync())
}

fn connect_with(endpoint: &Endpoint, sync: bool) -> Result<AsyncSpoolConnection> {
    Ok(AsyncSpoolConnection {
        core: Arc::new(Core::open(endpoint, sync)?),
        reader: Mutex::new(None),
    })
}

impl AsyncReader {
    /// The client's reader, registered with the current runtime's reactor.
    fn new(core: &Core) -> std::result::Result<AsyncReader, String> {
        let reader = core.reader()?;
        let registered = register(&core.url, reader.watch().shared_fd(), Interest::READABLE);
        Ok(AsyncReader {
            inotify: registered.map_err(|e| e.to_string())?,
            reader,
            check: Box::pin(tokio::time::sleep(Duration::ZERO)),
        })
    }
}

/// Reads the inbox as the task holding it: `Ready` once it took anything, else `Pending`
/// with this task registered for the next inotify event and the next look at the
/// receivers.
fn poll_read(
    core: &Core,
    slot: &mut Option<AsyncReader>,
    cx: &mut Context<'_>,
) -> Poll<std::result::Result<(), String>> {
    let state = match slot {
        Some(state) => state,
        None => slot.insert(AsyncReader::new(core)?),
    };
    loop {
        if core.read(&mut state.reader)? {
            return Poll::Ready(Ok(()));
        }
        match state.inotify.poll_read_ready(cx) {
            // Whatever made it readable is read by the next pass: clearing first loses
            // nothing.
            Poll::Ready(Ok(mut ready)) => {
                ready.clear_ready();
                continue;
            }
            Poll::Ready(Err(e)) => {
                return Poll::Ready(Err(format!("waiting on the inbox's inotify: {e}")));
            }
            Poll::Pending => {}
        }
        if let Some(at) = state.reader.next_check() {
            state.check.as_mut().reset(at.into());
            if state.check.as_mut().poll(cx).is_ready() {
                continue;
            }
        }
        return Poll::Pending;
    }
}

impl AsyncSpoolConnection {
    /// Publishes one message of this client's: on the blocking pool when it is flushed
    /// to disk.
    async fn publish(&self, request: Option<u64>, payload: &[u8]) -> Result<()> {
        let core = &self.core;
        core.check_size(payload)?;
        if !core.sync {
            return core.publish(request, payload);
        }
        let (shared, payload) = (core.clone(), payload.to_vec());
        tokio::task::spawn_blocking(move || shared.publish(request, &payload))
            .await
            .map_err(|e| Error::io(&core.url, "publishing a message", std::io::Error::other(e)))?
    }

    async fn request(&self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let core = &*self.core;
        core.check_size(payload)?;
        let id = core.next_id();
        core.answers.register(id);
        let _leave = Leave { core, id };
        let exchange = async {
            self.publish(Some(id), payload).await?;
            Ok(poll_fn(|cx| {
                core.answers.poll_answer(id, cx, &self.reader, |state, cx| {
                    match poll_read(core, state, cx) {
                        // What was read went into the books, this request's answer
                        // perhaps: the correlator looks again at the next poll.
                        Poll::Ready(Ok(())) => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                        Poll::Ready(Err(detail)) => Poll::Ready(Err(detail)),
                        Poll::Pending => Poll::Pending,
                    }
                })
            })
            .await)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => core.outcome(answer, timeout),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                endpoint: core.url.clone(),
                after: timeout,
            }),
        }
    }

    async fn recv(&self) -> Result<Vec<u8>> {
        let core = &*self.core;
        let me = core.next_id();
        let _leave = LeavePush { core, me };
        let pushed = poll_fn(|cx| {
            core.answers.poll_push(me, cx, &self.reader, |state, cx| {
                poll_read(core, state, cx).map(|read| read.map(|()| None))
            })
        })
        .await;
        match pushed {
            Ok(Incoming::Payload(push)) => Ok(push),
            Ok(other) => unreachable!("only payloads are filed as pushes: {other:?}"),
            Err(detail) => Err(core.broken(detail)),
        }
    }
}

/// Forgets a request however its future ends, so that a late reply is dropped.
struct Leave<'a> {
    core: &'a Core,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.core.answers.leave(self.id);
    }
}

/// Takes a `recv` future off the books however it ends.
struct LeavePush<'a> {
    core: &'a Core,
    me: u64,
}

impl Drop for LeavePush<'_> {
    fn drop(&mut self) {
        self.core.answers.leave_push(self.me);
    }
}

crate::transport::sealed!(AsyncSpoolConnection);

impl AsyncConnection for AsyncSpoolConnection {
    /// Dropped once its write has started, the message is still published, whole.
    fn send<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.publish(None, payload))
    }

    /// Dropped at any point, the request's id is forgotten and a late reply removed
    /// unread.
    fn request<'a>(
        &'a self,
        payload: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(AsyncSpoolConnection::request(self, payload, timeout))
    }

    /// Cancel-safe: a pushed message is taken only by the call that returns it.
    fn recv(&self) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(AsyncSpoolConnection::recv(self))
    }

    fn max_message(&self) -> usize {
        self.core.max
    }

    fn endpoint(&self) -> &Endpoint {
        &self.core.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::test_server::*;
    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn async_sends_land_in_order_flushed_or_not() {
        let s = Scratch::new("async-send");
        block_on(async {
            for sync in [true, false] {
                let client = connect_with(&s.endpoint("?max_message=32"), sync).unwrap();
                for i in 0..5 {
                    client.send(format!("{sync} {i}").as_bytes()).await.unwrap();
                }
                let err = client.send(&[0; 33]).await.unwrap_err();
                assert!(matches!(err, Error::MessageTooLarge { .. }), "{err:?}");
            }
        });
        let names = s.names("new");
        let sent: Vec<Vec<u8>> = names
            .iter()
            .map(|name| std::fs::read(s.spool().join("new").join(name.to_string())).unwrap())
            .collect();
        let expected: Vec<Vec<u8>> = [true, false]
            .iter()
            .flat_map(|sync| (0..5).map(move |i| format!("{sync} {i}").into_bytes()))
            .collect();
        assert_eq!(sent, expected);
        assert!(s.names("tmp").is_empty());
    }

    #[test]
    fn async_requests_get_their_replies_and_refusals_and_a_dropped_one_is_forgotten() {
        let s = Scratch::new("async-request");
        let receiver = s.receiver();
        block_on(async {
            let client = connect_async(&s.endpoint("")).unwrap();
            let id = client.core.id().to_owned();
            // Dropped unanswered: its reply, when it comes, is removed unread.
            let dropped = tokio::time::timeout(
                Duration::from_millis(20),
                client.request(b"dropped", PATIENCE),
            )
            .await;
            assert!(dropped.is_err());
            let err = client
                .request(b"times out", Duration::from_millis(20))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
            let (first, _) = receiver.next();
            receiver.answer(&first, b"late", false);
            let (second, _) = receiver.next();
            receiver.answer(&second, b"late too", false);
            let server = std::thread::spawn(move || receiver.serve(5));
            let asked = (0..4).map(|i| format!("{i}"));
            let client = &client;
            let replies = futures_join(
                asked
                    .clone()
                    .map(|a| async move { client.request(a.as_bytes(), PATIENCE).await }),
            )
            .await;
            for (reply, asked) in replies.into_iter().zip(asked) {
                assert_eq!(reply.unwrap(), format!("re:{asked}").into_bytes());
            }
            match client.request(b"refuse:no", PATIENCE).await {
                Err(Error::Remote { reason, .. }) => assert_eq!(reason, "no"),
                other => panic!("{other:?}"),
            }
            let receiver = server.join().unwrap();
            assert!(inbox_files(&s.spool(), &id).is_empty());
            assert_eq!(client.core.answers.in_flight(), 0);
            receiver.push(&id, b"pushed");
            assert_eq!(client.recv().await.unwrap(), b"pushed");
        });
    }

    /// Runs the futures at once on this task, as `join_all` does.
    async fn futures_join<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut futures: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
        let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        poll_fn(|cx| {
            for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
                if let Some(f) = future {
                    if let Poll::Ready(done) = f.as_mut().poll(cx) {
                        *output = Some(done);
                        *future = None;
                    }
                }
            }
            if futures.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        outputs.into_iter().map(Option::unwrap).collect()
    }

    #[test]
    fn async_pushes_arrive_in_order_then_disconnected() {
        let s = Scratch::new("async-pushes");
        let receiver = s.receiver();
        block_on(async {
            let client = connect_async(&s.endpoint("")).unwrap();
            let id = client.core.id().to_owned();
            // Waits while the receiver lives and nothing came; dropping it loses nothing.
            let waited = tokio::time::timeout(Duration::from_millis(20), client.recv()).await;
            assert!(waited.is_err());
            for i in 0..3 {
                receiver.push(&id, format!("push {i}").as_bytes());
            }
            assert_eq!(client.recv().await.unwrap(), b"push 0");
            drop(receiver);
            for i in 1..3 {
                assert_eq!(
                    client.recv().await.unwrap(),
                    format!("push {i}").into_bytes()
                );
            }
            let err = tokio::time::timeout(PATIENCE, client.recv())
                .await
                .unwrap()
                .unwrap_err();
            assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
            drop(client);
        });
        assert_eq!(
            std::fs::read_dir(s.spool().join("clients"))
                .unwrap()
                .count(),
            0
        );
    }
}
