//! The async pair, on tokio: a server that answers each request in a task of its own,
//! and a client whose requests are in flight together on one connection.
//!
//! ```text
//! cargo run -p ipckit --features tokio --example async_pair -- server [URL [COUNT]]
//! cargo run -p ipckit --features tokio --example async_pair -- client [URL]
//! ```
//!
//! The server stops after COUNT messages when given one; the client sends one one-way
//! message and three requests.

use std::time::Duration;

/// Where the pair meet unless told otherwise.
pub const DEFAULT_URL: &str = "uds:///tmp/ipckit-async.sock";

// `pub` only so that tests/examples.rs can run it in a process of its own.
#[tokio::main(flavor = "current_thread")]
pub async fn main() {
    // ipckit's errors say what went wrong and what to do: print them as they are.
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> ipckit::Result<()> {
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_default();
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.to_owned());
    match role.as_str() {
        "server" => {
            let count = args
                .next()
                .map_or(usize::MAX, |n| n.parse().expect("a count"));
            serve(&url, count).await
        }
        "client" => ask(&url).await,
        _ => {
            eprintln!("usage: async_pair server [URL [COUNT]] | async_pair client [URL]");
            std::process::exit(2);
        }
    }
}

async fn serve(url: &str, count: usize) -> ipckit::Result<()> {
    let mut server = ipckit::tokio::listen(url)?;
    println!("listening on {}", server.endpoint());
    let mut answering = tokio::task::JoinSet::new();
    for _ in 0..count {
        let mut msg = server.recv().await?;
        if !msg.wants_reply() {
            println!("received {:?}", String::from_utf8_lossy(msg.payload()));
            continue;
        }
        // Each request in a task of its own: a slow one holds up no other.
        answering.spawn(async move {
            let n: u64 = String::from_utf8_lossy(msg.payload()).parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(10 * n)).await;
            msg.reply((n * n).to_string().as_bytes())
        });
    }
    // Let the last answers go out before the server is dropped.
    while let Some(answered) = answering.join_next().await {
        answered.expect("an answering task")?;
    }
    Ok(())
}

async fn ask(url: &str) -> ipckit::Result<()> {
    let client = ipckit::tokio::connect(url).await?;
    client.send(b"hello").await?;

    let timeout = Duration::from_secs(5);
    // Three requests at once on one connection; each answer reaches its own caller.
    let (a, b, c) = tokio::join!(
        client.request(b"3", timeout),
        client.request(b"2", timeout),
        client.request(b"1", timeout),
    );
    for (asked, answer) in [(3, a?), (2, b?), (1, c?)] {
        println!("{asked} squared is {}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}
