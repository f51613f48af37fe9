//! One-way messages against requests. The client sends a thousand readings one way, each
//! `send` returning as soon as the transport has it, then asks one question, which waits
//! for the server's answer: how many readings it has. On a reliable, ordered transport
//! that tells a one-way message from a request (uds, tcp, fifo, mq, shm) the answer is all
//! of them, as the question came after them. Over udp and unixgram every datagram may be
//! answered (`Message::wants_reply` is true for each), so there the server answers the
//! first reading, and the example does not apply.
//!
//! ```text
//! cargo run -p ipckit --example oneway -- server [URL [COUNT]]   # stop after COUNT messages
//! cargo run -p ipckit --example oneway -- client [URL]
//! ```

use std::time::{Duration, Instant};

/// Where the pair meet unless told otherwise.
pub const DEFAULT_URL: &str = "uds:///tmp/ipckit-oneway.sock";

/// How many one-way messages the client sends before its question.
pub const READINGS: u32 = 1000;

// `pub` only so that tests/examples.rs can run it in a process of its own.
pub fn main() {
    // ipckit's errors say what went wrong and what to do: print them as they are.
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> ipckit::Result<()> {
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_default();
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.to_owned());
    match role.as_str() {
        "server" => {
            let count = args
                .next()
                .map_or(usize::MAX, |n| n.parse().expect("a count"));
            serve(&url, count)
        }
        "client" => report(&url),
        _ => {
            eprintln!("usage: oneway server [URL [COUNT]] | oneway client [URL]");
            std::process::exit(2);
        }
    }
}

fn serve(url: &str, count: usize) -> ipckit::Result<()> {
    let mut server = ipckit::listen(url)?;
    println!("listening on {}", server.endpoint());
    let mut readings = 0u64;
    for msg in server.incoming().take(count) {
        let mut msg = msg?;
        if msg.wants_reply() {
            // The question: answer with what has arrived so far.
            msg.reply(readings.to_string().as_bytes())?;
            println!("asked after {readings} readings");
        } else {
            readings += 1;
        }
    }
    Ok(())
}

fn report(url: &str) -> ipckit::Result<()> {
    let client = ipckit::connect(url)?;

    let started = Instant::now();
    for n in 0..READINGS {
        client.send(format!("reading {n}").as_bytes())?;
    }
    let sending = started.elapsed();

    let started = Instant::now();
    let answer = client.request(b"how many?", Duration::from_secs(5))?;
    let asking = started.elapsed();

    println!("sent {READINGS} readings one way in {sending:.2?}, without waiting for the server");
    println!(
        "asked in {asking:.2?}, waiting for the answer: the server had {} readings",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}
