//! How long a one-way send keeps returning Ok after its server was killed, and how many
//! messages it so sends into the void: the window a successful send leaves open.
//!
//! ```sh
//! cargo run --release -p ipckit-bench --bin send-after-death -- [URL-PREFIX] [KILLS]
//! ```
//!
//! For each of KILLS (30) rounds, a server listens at a fresh endpoint, a client sends
//! 64-byte messages as fast as it can, and the server is killed with SIGKILL; the client
//! counts the sends that returned Ok after `kill` returned, and after the server was
//! reaped (gone for certain), with the time from each to the last of them. URL-PREFIX is
//! `shm://` unless given (the name is added).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROLE: &str = "IPCKIT_DEATH_ROLE";
/// The most recent sends whose times the client keeps: far more than any window.
const KEPT: usize = 1 << 22;

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("server") => serve(&arg(1)),
        Ok("client") => send(&arg(1)),
        _ => measure(),
    }
}

fn arg(n: usize) -> String {
    std::env::args().nth(n).unwrap_or_default()
}

/// Monotonic nanoseconds, comparable between processes.
fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("a clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn serve(url: &str) {
    let mut server = ipckit::listen(url).unwrap_or_else(|e| panic!("{e}"));
    println!("ready");
    loop {
        let _ = server.recv();
    }
}

/// Sends until a send fails, then reads the time of the kill and says how many sends
/// returned Ok after it, and until when.
fn send(url: &str) {
    let client = ipckit::connect(url).unwrap_or_else(|e| panic!("{e}"));
    let mut times = vec![0u64; KEPT];
    let mut n = 0usize;
    println!("sending");
    let error = loop {
        match client.send(&[7u8; 64]) {
            Ok(()) => {
                times[n % KEPT] = now_ns();
                n += 1;
            }
            Err(e) => break e,
        }
    };
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .expect("the kill's time");
    let kept = &times[..n.min(KEPT)];
    let mut said = Vec::new();
    for moment in line.split_whitespace() {
        let moment: u64 = moment.parse().expect("a time");
        let after = kept.iter().filter(|&&t| t > moment);
        let last = after.clone().max().map_or(0, |t| t - moment);
        said.push(format!("{} {last}", after.count()));
    }
    println!("{} {error}", said.join(" "));
}

fn measure() {
    let prefix = std::env::args().nth(1).unwrap_or_else(|| "shm://".into());
    let kills: usize = arg(2).parse().unwrap_or(30);
    let exe = std::env::current_exe().expect("this program");
    // After the kill, and after the reaping.
    let (mut windows, mut lost) = ([Vec::new(), Vec::new()], [0usize; 2]);
    let mut last_error = String::new();
    for round in 0..kills {
        let url = format!("{prefix}ipckit-death-{}-{round}", std::process::id());
        let mut server = Command::new(&exe)
            .env(ROLE, "server")
            .arg(&url)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server");
        let mut said = String::new();
        BufReader::new(server.stdout.as_mut().expect("piped"))
            .read_line(&mut said)
            .expect("the server's line");
        let mut client = Command::new(&exe)
            .env(ROLE, "client")
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the client");
        let mut out = BufReader::new(client.stdout.take().expect("piped"));
        said.clear();
        out.read_line(&mut said).expect("the client's line");
        std::thread::sleep(Duration::from_millis(50));
        server.kill().expect("killing the server");
        let killed = now_ns();
        server.wait().expect("reaping the server");
        let reaped = now_ns();
        writeln!(client.stdin.as_mut().expect("piped"), "{killed} {reaped}")
            .expect("telling the client");
        said.clear();
        out.read_line(&mut said).expect("the client's count");
        client.wait().expect("reaping the client");
        let mut fields = said.trim().splitn(5, ' ');
        for k in 0..2 {
            lost[k] += fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
            windows[k].push(fields.next().and_then(|f| f.parse().ok()).unwrap_or(0u64));
        }
        last_error = fields.next().unwrap_or("").to_owned();
        ipckit_bench::peer::destroy_endpoint(&url);
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    println!("{prefix} over {kills} kills, sends that returned Ok:");
    for (k, after) in ["after kill()", "after the server was reaped"]
        .iter()
        .enumerate()
    {
        windows[k].sort_unstable();
        println!(
            "  {after}: {} messages; for up to {:.1} µs (median {:.1} µs)",
            lost[k],
            us(*windows[k].last().unwrap_or(&0)),
            us(windows[k][windows[k].len() / 2]),
        );
    }
    println!("the failing send said: {last_error}");
}
