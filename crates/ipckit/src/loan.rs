//! Space to write a message into before sending it: in the ring itself on `shm`.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use crate::error::Result;
use crate::transport::backend::LoanBackend;

/// A buffer for one message, from [`Client::loan`](crate::Client::loan). Write the message
/// into it (it dereferences to `[u8]`), optionally [`truncate`](Loan::truncate) it, then
/// [`send`](Loan::send) or [`request`](Loan::request). Dropping it unsent sends nothing.
///
/// On a zero-copy transport (`shm`) the buffer is space in the shared ring: the message is
/// written once, where the receiver reads it. While a loan is out, other sends on the same
/// client wait for it. Elsewhere it is an ordinary buffer sent with a copy.
///
/// ```no_run
/// let client = ipckit::connect("shm://frames")?;
/// let mut frame = client.loan(1920 * 1080 * 4)?;
/// frame.fill(0x80); // render straight into shared memory
/// frame.send()?;
/// # Ok::<(), ipckit::Error>(())
/// ```
pub struct Loan<'a> {
    backend: LoanBackend<'a>,
    len: usize,
}

impl<'a> Loan<'a> {
    pub(crate) fn new(backend: LoanBackend<'a>) -> Loan<'a> {
        let len = backend.bytes().len();
        Loan { backend, len }
    }

    /// Shortens the message to `len` bytes (a loan can be taken for the most a message
    /// may need).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Whether the buffer is the receiver's shared memory, so that sending copies nothing.
    pub fn is_in_place(&self) -> bool {
        self.backend.is_in_place()
    }

    /// Publishes the message.
    pub fn send(self) -> Result<()> {
        self.backend.send(self.len)
    }

    /// Publishes the message as a request and waits up to `timeout` for the reply.
    pub fn request(self, timeout: Duration) -> Result<Vec<u8>> {
        self.backend.request(self.len, timeout)
    }

    /// Publishes the message as a request and hands the reply to `read`, as
    /// [`Client::request_with`](crate::Client::request_with) does: on `shm`, neither the
    /// request nor the reply is copied.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let url = format!("shm://doc-loan-request-with-{}", std::process::id());
    /// let server = ipckit::listen(url.as_str())?.spawn(|msg| Some(msg.payload().to_vec()));
    /// let client = ipckit::connect(url.as_str())?;
    /// let mut request = client.loan(4)?;
    /// request.copy_from_slice(b"ping");
    /// let echoed = request.request_with(Duration::from_secs(5), |reply| reply == b"ping")?;
    /// assert!(echoed);
    /// # Ok::<(), ipckit::Error>(())
    /// ```
    pub fn request_with<R>(self, timeout: Duration, read: impl FnOnce(&[u8]) -> R) -> Result<R> {
        self.backend.request_with(self.len, timeout, read)
    }
}

impl Deref for Loan<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.backend.bytes()[..self.len]
    }
}

impl DerefMut for Loan<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.backend.bytes_mut()[..self.len]
    }
}

impl std::fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan")
            .field("len", &self.len)
            .field("in_place", &self.is_in_place())
            .finish()
    }
}
