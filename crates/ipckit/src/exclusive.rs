//! A client held by one thread, for a loop of requests.

use std::time::Duration;

use crate::Endpoint;
use crate::error::Result;
use crate::transport::backend::ExclusiveBackend;

/// A [`Client`](crate::Client) that one thread has to itself, from
/// [`Client::exclusive`](crate::Client::exclusive): the same calls, for a thread that
/// sends or asks in a loop.
///
/// A `Client` is shared between threads, so every call coordinates with the others: on
/// `shm` it takes the request ring's lock, claims the reply ring, and counts itself among
/// the requests in flight. A handle does that once, when it is taken, and its calls then
/// go straight to the rings, which makes its requests the fastest there are on `shm`
/// (docs/DESIGN.md gives the measurement). On other transports the calls are the
/// client's own.
///
/// It borrows the client mutably, so nothing else can use the client meanwhile, and it is
/// not `Send`: it stays on the thread that took it.
///
/// ```
/// # use std::time::Duration;
/// let url = format!("shm://doc-exclusive-{}", std::process::id());
/// let server = ipckit::listen(url.as_str())?.spawn(|msg| Some(msg.payload().to_vec()));
/// let mut client = ipckit::connect(url.as_str())?;
/// let mut requests = client.exclusive();
/// for i in 0..100u8 {
///     let echoed = requests.request_with(&[i], Duration::from_secs(5), |reply| reply[0])?;
///     assert_eq!(echoed, i);
/// }
/// assert!(format!("{requests:?}").contains("doc-exclusive"));
/// # Ok::<(), ipckit::Error>(())
/// ```
///
/// ```compile_fail
/// fn on_another_thread<T: Send>(_: T) {}
/// let mut client = ipckit::connect("shm://app")?;
/// on_another_thread(client.exclusive()); // a handle stays on its thread
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Exclusive<'a> {
    backend: ExclusiveBackend<'a>,
}

impl<'a> Exclusive<'a> {
    pub(crate) fn new(backend: ExclusiveBackend<'a>) -> Exclusive<'a> {
        Exclusive { backend }
    }

    /// Where the client is connected.
    pub fn endpoint(&self) -> &Endpoint {
        self.backend.endpoint()
    }

    /// Sends one message, as [`Client::send`](crate::Client::send).
    pub fn send(&mut self, payload: &[u8]) -> Result<()> {
        self.backend.send(payload)
    }

    /// Sends a request and waits up to `timeout` for the reply, as
    /// [`Client::request`](crate::Client::request).
    pub fn request(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.backend.request(payload, timeout)
    }

    /// Sends a request and hands the reply to `read`, in place on `shm`, as
    /// [`Client::request_with`](crate::Client::request_with).
    #[inline]
    pub fn request_with<R>(
        &mut self,
        payload: &[u8],
        timeout: Duration,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.backend.request_with(payload, timeout, read)
    }
}

debug_by_endpoint!(Exclusive<'a>);
