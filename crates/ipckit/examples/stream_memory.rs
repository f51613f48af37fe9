//! What a stream server's clients cost it: the resident memory of a `uds` server process
//! holding idle connections, and holding unfinished frames, before and after they close.
//!
//! ```text
//! cargo run --release -p ipckit --features tokio --example stream_memory [-- blocking|async [CONNECTIONS]]
//! ```
//!
//! The server runs in a child process (this program again) through the blocking or the
//! async API; this process opens raw connections to it, completes each handshake, and
//! reads the server's VmRSS from /proc after each step. Partial frames are sent as a
//! hostile client would: a header claiming 16 MiB, then 15 MiB of it, or a single byte.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ipckit::frame::{Header, Hello, Kind, Welcome};

/// Set in the server process, to its endpoint; `SERVER_API_ENV` says which API it uses.
const SERVER_ENV: &str = "IPCKIT_STREAM_MEMORY_SERVER";
const SERVER_API_ENV: &str = "IPCKIT_STREAM_MEMORY_API";
/// Time for the server to take in what the clients did before its memory is read.
const SETTLE: Duration = Duration::from_millis(500);

mod common;
use common::allow_descriptors;

type Failure = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Failure> {
    if let Ok(url) = std::env::var(SERVER_ENV) {
        return serve(
            &url,
            std::env::var(SERVER_API_ENV).as_deref() == Ok("async"),
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let api = args.first().map_or("blocking", String::as_str);
    let connections: usize = args.get(1).map_or(Ok(2000), |n| n.parse())?;
    if !matches!(api, "blocking" | "async") {
        return Err(format!("the API is 'blocking' or 'async', not '{api}'").into());
    }
    measure(api, connections)
}

/// Echoes requests and drops messages, until killed.
fn serve(url: &str, async_api: bool) -> Result<(), Failure> {
    if async_api {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            let mut server = ipckit::tokio::listen(url)?;
            println!("ready");
            loop {
                let mut message = server.recv().await?;
                if message.wants_reply() {
                    let echo = message.take_payload();
                    message.reply(&echo)?;
                }
            }
        });
    }
    let mut server = ipckit::listen(url)?;
    println!("ready");
    loop {
        let mut message = server.recv()?;
        if message.wants_reply() {
            let echo = message.take_payload();
            message.reply(&echo)?;
        }
    }
}

fn measure(api: &str, connections: usize) -> Result<(), Failure> {
    allow_descriptors(connections as u64 + 256)?;
    let dir = std::env::temp_dir().join(format!("ipckit-stream-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("server.sock");
    let url = format!("uds://{}", path.display());
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .env(SERVER_ENV, &url)
        .env(SERVER_API_ENV, api)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = server.id();
    let mut ready = [0u8; 6];
    server
        .stdout
        .take()
        .expect("piped")
        .read_exact(&mut ready)?;
    let result = (|| -> Result<(), Failure> {
        let rss = || rss_kib(pid);
        let probe = || -> Result<(), Failure> {
            let reply = ipckit::connect(&url)?.request(b"probe", Duration::from_secs(30))?;
            assert_eq!(reply, b"probe");
            std::thread::sleep(SETTLE);
            Ok(())
        };
        println!("{api} server, uds, {connections} idle connections:");
        probe()?;
        let start = rss()?;
        println!("  RSS at start:                        {start:>8} KiB");

        let idle = (0..connections)
            .map(|_| greeted(&path))
            .collect::<Result<Vec<_>, _>>()?;
        probe()?;
        let held = rss()?;
        println!(
            "  RSS with {connections} idle connections:     {held:>8} KiB  ({:.1} KiB per connection)",
            held.saturating_sub(start) as f64 / connections as f64
        );
        drop(idle);
        probe()?;
        let after = rss()?;
        println!(
            "  RSS after they closed:               {after:>8} KiB  ({:+} KiB from the start)",
            after as i64 - start as i64
        );
        // What stays after they closed is the server's to reuse, or it grows again.
        let again = (0..connections)
            .map(|_| greeted(&path))
            .collect::<Result<Vec<_>, _>>()?;
        probe()?;
        println!(
            "  RSS with {connections} idle connections again: {:>8} KiB",
            rss()?
        );
        drop(again);
        probe()?;
        println!("  RSS after they closed:               {:>8} KiB", rss()?);

        const CLAIM: usize = 16 << 20;
        let partial = (0..20)
            .map(|_| {
                let mut s = greeted(&path)?;
                s.write_all(&Header::new(Kind::Message, 0, CLAIM).encode())?;
                s.write_all(&vec![7u8; 15 << 20])?;
                Ok(s)
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        probe()?;
        let fifteen = rss()?;
        println!("  RSS with 20 clients each 15 MiB into a 16 MiB frame: {fifteen:>8} KiB");
        drop(partial);
        probe()?;
        println!("  RSS after they closed:               {:>8} KiB", rss()?);

        let claims = (0..100)
            .map(|_| {
                let mut s = greeted(&path)?;
                s.write_all(&Header::new(Kind::Message, 0, CLAIM).encode())?;
                s.write_all(&[7u8])?;
                Ok(s)
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        probe()?;
        println!(
            "  RSS with 100 clients each 1 byte into a 16 MiB frame: {:>8} KiB",
            rss()?
        );
        drop(claims);
        probe()?;
        println!("  RSS after they closed:               {:>8} KiB", rss()?);
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A raw connection to the server at `path`, past the handshake.
fn greeted(path: &std::path::Path) -> Result<UnixStream, Failure> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(&Hello::new(1 << 20).encode())?;
    let mut welcome = [0u8; 12];
    stream.read_exact(&mut welcome)?;
    Welcome::decode(&welcome)?;
    Ok(stream)
}

fn rss_kib(pid: u32) -> Result<u64, Failure> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/PID/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("no VmRSS value")?
        .parse()?)
}
