//! A blocking client for examples/server.rs: one one-way message, then one request.
//!
//! ```text
//! cargo run -p ipckit --example client                   # to uds:///tmp/ipckit-hello.sock
//! cargo run -p ipckit --example client -- URL            # to the server at URL
//! ```

use std::time::Duration;

/// Where the pair meet unless told otherwise.
pub const DEFAULT_URL: &str = "uds:///tmp/ipckit-hello.sock";

// `pub` only so that tests/examples.rs can run it in a process of its own.
pub fn main() {
    // ipckit's errors say what went wrong and what to do: print them as they are.
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> ipckit::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());

    // Fails at once with NotFound, saying so, when no server listens there.
    let client = ipckit::connect(&url)?;

    // One-way: returns once the transport has it; nobody answers.
    client.send(b"hello")?;

    // A request: waits for the answer, at most this long.
    let reply = client.request(b"how are you?", Duration::from_secs(5))?;
    println!("the server answered {:?}", String::from_utf8_lossy(&reply));
    Ok(())
}
