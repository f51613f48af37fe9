//! An async echo server holding 10,000 concurrent `uds` connections, and a client driver
//! in another process that opens them all, sends requests on every one at once and
//! checks every reply.
//!
//! ```text
//! cargo run --release -p ipckit --features tokio --example echo_10k [-- CONNECTIONS REQUESTS]
//! ```
//!
//! Each process needs a descriptor per connection: the soft limit is raised to the hard
//! one, and a hard limit below the count is a clear error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Set in the server process, to its endpoint.
const SERVER_ENV: &str = "IPCKIT_ECHO_10K_SERVER";
const PATIENCE: Duration = Duration::from_secs(60);

mod common;
use common::allow_descriptors;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// What the driver saw.
pub struct Report {
    pub connections: usize,
    pub replies_checked: u64,
    pub connect_time: Duration,
    pub request_time: Duration,
}

/// Runs the server when this process is the server (and then never returns); `false`
/// otherwise.
pub fn serve_if_asked() -> bool {
    let Ok(url) = std::env::var(SERVER_ENV) else {
        return false;
    };
    let result = runtime().block_on(async {
        let server = ipckit::tokio::listen(&url)?;
        println!("ready");
        server
            .serve(|mut message| async move {
                let echo = message.payload().to_vec();
                if let Err(e) = message.reply(&echo) {
                    eprintln!("{e}");
                }
            })
            .await
    });
    if let Err(e) = result {
        eprintln!("server: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Starts the server process at `url`, then opens `connections` connections to it, waits
/// until every one is established, and sends `requests` requests on each, all at once,
/// checking each reply.
pub fn drive(url: &str, connections: usize, requests: u32) -> Result<Report, Failure> {
    let headroom = 256;
    allow_descriptors((connections + headroom) as u64)?;
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .env(SERVER_ENV, url)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("piped")),
        &mut ready,
    )?;
    if ready.trim() != "ready" {
        let _ = server.kill();
        return Err("the server did not start".into());
    }
    let report = runtime().block_on(drive_clients(url, connections, requests));
    let _ = server.kill();
    let _ = server.wait();
    report
}

async fn drive_clients(url: &str, connections: usize, requests: u32) -> Result<Report, Failure> {
    let started = Instant::now();
    let all_connected = Arc::new(tokio::sync::Barrier::new(connections));
    let connected_at = Arc::new(std::sync::Mutex::new(None));
    let checked = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..connections {
        let (url, all_connected, connected_at, checked) = (
            url.to_owned(),
            all_connected.clone(),
            connected_at.clone(),
            checked.clone(),
        );
        tasks.spawn(async move {
            let client = tokio::time::timeout(PATIENCE, ipckit::tokio::connect(&url))
                .await
                .map_err(|_| format!("connection {n} not established within {PATIENCE:?}"))??;
            // Every connection is open before any request goes out.
            if all_connected.wait().await.is_leader() {
                *connected_at.lock().unwrap() = Some(Instant::now());
            }
            for i in 0..requests {
                let payload = format!("connection {n} request {i}");
                let reply = client.request(payload.as_bytes(), PATIENCE).await?;
                if reply != payload.as_bytes() {
                    return Err(
                        format!("'{payload}' got '{}'", String::from_utf8_lossy(&reply)).into(),
                    );
                }
                checked.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, Failure>(client)
        });
    }
    // The clients are kept until all are done, so that all stay connected throughout.
    let mut clients = Vec::with_capacity(connections);
    while let Some(result) = tasks.join_next().await {
        clients.push(result??);
    }
    let connected_at = connected_at
        .lock()
        .unwrap()
        .expect("every task passed the barrier");
    Ok(Report {
        connections: clients.len(),
        replies_checked: checked.load(Ordering::Relaxed),
        connect_time: connected_at - started,
        request_time: connected_at.elapsed(),
    })
}

#[allow(dead_code)]
fn main() -> Result<(), Failure> {
    serve_if_asked();
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let requests: u32 = args.next().map_or(Ok(3), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("ipckit-echo-10k-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!(
        "uds://{}/echo.sock?max_connections={connections}",
        dir.display()
    );
    let report = drive(&url, connections, requests);
    std::fs::remove_dir_all(&dir)?;
    let report = report?;
    println!(
        "{} connections open at once in {:.2?}; {} requests answered and checked in {:.2?}",
        report.connections, report.connect_time, report.replies_checked, report.request_time
    );
    Ok(())
}
