//! `ipckit`: talk to ipckit endpoints from a shell.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use ipckit::{Capabilities, Message, Server};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(
    name = "ipckit",
    version,
    about = "Send, receive and serve messages over local IPC transports",
    after_help = "Endpoints are URLs: uds:///run/app.sock, uds://@name, tcp://127.0.0.1:7000.\n\
                  Set IPCKIT_LOG=info (or debug) to see what servers do with their connections."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every message that arrives at URL
    ///
    /// Stopped by SIGINT, SIGTERM or SIGHUP, it removes what it made (a socket file, a
    /// FIFO, a shared-memory segment) and exits 0; an mq queue stays, with its messages,
    /// as queues are durable (`ipckit rm mq://NAME` removes one).
    Listen {
        /// The endpoint to listen on
        url: String,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        bounds: Bounds,
    },
    /// Send MESSAGE, or every line of standard input as one message each
    Send {
        /// The endpoint to send to
        url: String,
        /// The message; without it, each stdin line is sent
        message: Option<String>,
    },
    /// Send MESSAGE as a request and print the reply
    Request {
        /// The endpoint to ask
        url: String,
        /// The request
        message: String,
        /// How long to wait for the reply
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        output: Output,
    },
    /// Answer requests at URL
    ///
    /// A client that cannot take its answer (gone, or with a smaller max_message) is
    /// logged and the others are still served. Stopped by SIGINT, SIGTERM or SIGHUP, it
    /// removes what it made and exits 0, as `listen` does.
    Serve {
        /// The endpoint to serve
        url: String,
        /// Reply to each request with the request itself
        #[arg(long, required = true)]
        echo: bool,
        #[command(flatten)]
        bounds: Bounds,
    },
    /// Remove what an endpoint keeps after its parties are gone
    ///
    /// An mq queue outlives its processes, with its messages, by design: this removes it
    /// and the reply queues of its clients that died (refused while a receiver reads it). It also removes
    /// the shared-memory segment of a killed shm server; other transports keep nothing.
    Rm {
        /// The endpoint, e.g. mq://jobs
        url: String,
    },
    /// List the transports this build has and what each promises
    Transports {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Measure every transport between two processes, beside a hand-written baseline
    ///
    /// Stopped by SIGINT, SIGTERM or SIGHUP, it stops its servers, removes what the run
    /// made (temp dir, sockets, queues, segments) and exits 0.
    Bench {
        /// A run under 20 seconds, with fewer round trips and messages
        #[arg(long)]
        quick: bool,
        /// Only these transports, e.g. uds,shm
        #[arg(long, value_delimiter = ',')]
        transports: Vec<String>,
        /// Bytes in each round-trip and one-way message
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Round trips per measurement
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Print JSON (every figure of the table) instead of a table
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print CSV instead of a table
        #[arg(long)]
        csv: bool,
        /// Also draw the figures, log scale, into this SVG file
        #[arg(long, value_name = "FILE.svg")]
        chart: Option<std::path::PathBuf>,
        /// Also measure as messages grow from 16 B to 16 MiB and clients from 1 to 64
        #[arg(long)]
        scaling: bool,
        /// Run on these CPUs, as taskset -c lists them (e.g. 2,3): the client on the first,
        /// the servers on the second. By default, the CPUs the command may use (taskset's)
        #[arg(long, value_name = "LIST")]
        cpus: Option<String>,
    },
}

#[derive(clap::Args)]
struct Output {
    /// How to print messages
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(clap::Args)]
struct Bounds {
    /// Stop after this many messages
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m)
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// The payload as text, one message per line
    Text,
    /// The payload in hexadecimal, one message per line
    Hex,
    /// One JSON object per line, with the payload and the sender
    Json,
}

fn main() -> ExitCode {
    // `ipckit bench` starts this program again as the other end of each measurement.
    if ipckit_bench::peer::run_if_peer(|_, _| false) {
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("IPCKIT_LOG", "warn"))
        .format_timestamp(None)
        .format_target(false)
        .init();
    let outcome = std::panic::catch_unwind(|| run(Cli::parse()));
    if ipckit_bench::peer::abandoned() {
        // Stopped by a signal mid-run: the thread that took it exits when it has cleaned up.
        loop {
            std::thread::park();
        }
    }
    match outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipckit: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Bench {
            quick,
            transports,
            size,
            count,
            json,
            csv,
            chart,
            scaling,
            cpus,
        } => {
            use ipckit_bench::harness;
            // Refused before the run, rather than after measuring what it cannot keep.
            if let Some(path) = &chart {
                ipckit_bench::chart::check_path(path)?;
            }
            let signals = block_stop_signals()?;
            // Once the run is abandoned, its own thread fails or panics as its servers
            // go: it waits, silent, while the signal's thread cleans up and exits 0.
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !ipckit_bench::peer::abandoned() {
                    report(info);
                }
            }));
            std::thread::spawn(move || {
                if let Ok(signal) = signals.wait() {
                    log::info!("{signal}: stopping the servers and removing what the run made");
                    harness::abandon();
                    std::process::exit(0);
                }
            });
            let cpus = match cpus {
                Some(list) => {
                    ipckit_bench::parse_cpus(&list).map_err(|e| format!("--cpus: {e}"))?
                }
                None => Vec::new(),
            };
            let options = harness::Options {
                transports,
                size,
                count,
                quick,
                cpus,
            };
            let per_transport = 3 + if scaling { 11 } else { 0 };
            let steps = harness::check(&options)?.len() as u64 * per_transport;
            let bar = indicatif::ProgressBar::new(steps).with_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                    .expect("a valid template"),
            );
            let mut step = |what: &str| {
                bar.inc(1);
                bar.set_message(what.to_owned());
            };
            let rows = harness::run(&options, &mut step);
            let points = match (&rows, scaling) {
                (Ok(_), true) => harness::run_scaling(&options, &mut step),
                _ => Ok(Vec::new()),
            };
            bar.finish_and_clear();
            let (rows, points) = (rows?, points?);
            if let Some(path) = &chart {
                ipckit_bench::chart::draw(&rows, &points, path)
                    .map_err(|e| format!("drawing {}: {e}", path.display()))?;
            }
            if json {
                let report = serde_json::json!({
                    "machine": harness::Machine::here(),
                    "rows": rows,
                    "scaling": points,
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if csv {
                print!("{}", harness::csv(&rows));
                if scaling {
                    print!("\n{}", harness::scaling_csv(&points));
                }
            } else {
                let machine = harness::Machine::here();
                println!(
                    "{} CPUs ({}), Linux {}; {}\n",
                    machine.cpus, machine.cpu, machine.kernel, machine.placement
                );
                print!("{}", harness::table(&rows));
                if scaling {
                    print!("\n{}", harness::scaling_table(&points));
                }
            }
            Ok(())
        }
        Command::Listen {
            url,
            output,
            bounds,
        } => {
            let mut out = io::stdout().lock();
            serve_loop(&url, bounds, |message| {
                print_message(&mut out, output.format, message.payload(), Some(message))
                    .map_err(Into::into)
            })
        }
        Command::Send { url, message } => {
            let client = ipckit::connect(url.as_str())?;
            match message {
                Some(message) => client.send(message.as_bytes())?,
                None => {
                    // Messages are bytes: a line need not be UTF-8.
                    for line in io::stdin().lock().split(b'\n') {
                        client.send(&line?)?;
                    }
                }
            }
            Ok(())
        }
        Command::Request {
            url,
            message,
            timeout,
            output,
        } => {
            let client = ipckit::connect(url.as_str())?;
            let reply = client.request(message.as_bytes(), timeout)?;
            print_message(&mut io::stdout().lock(), output.format, &reply, None)?;
            Ok(())
        }
        Command::Serve { url, echo, bounds } => {
            debug_assert!(echo, "clap requires --echo");
            serve_loop(&url, bounds, |message| {
                if message.wants_reply() {
                    let payload = message.take_payload();
                    // One client's failure is not the server's: that client has its
                    // answer or is gone, and the others are still served.
                    if let Err(e) = message.reply(&payload) {
                        eprintln!("ipckit: {e}; serving the other clients");
                    }
                }
                Ok(())
            })
        }
        Command::Rm { url } => {
            let endpoint: ipckit::Endpoint = url.parse()?;
            let transport = ipckit::transport::find(endpoint.scheme()).ok_or_else(|| {
                format!("{url}: this build has no {} transport", endpoint.scheme())
            })?;
            transport.destroy(&endpoint)?;
            Ok(())
        }
        Command::Transports { json } => {
            print_transports(json);
            Ok(())
        }
    }
}

/// Receives at `url` within `bounds`, handing each message to `handle`.
fn serve_loop(
    url: &str,
    bounds: Bounds,
    mut handle: impl FnMut(&mut Message) -> CliResult,
) -> CliResult {
    let signals = block_stop_signals()?;
    let mut server: Server = ipckit::listen(url)?;
    stop_on(signals, server.stopper());
    if server.endpoint().to_string() != url {
        // The kernel chose the port: say which, or nobody can reach the server.
        eprintln!("ipckit: listening on {}", server.endpoint());
    }
    let deadline = bounds.timeout.map(|t| Instant::now() + t);
    let mut received = 0u64;
    while bounds.count.is_none_or(|n| received < n) {
        let message = match deadline {
            None => server.recv().map(Some),
            Some(deadline) => {
                server.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        let message = match message {
            // Stopped by a signal: dropping the server removes what it made.
            Err(ipckit::Error::Stopped { .. }) => return Ok(()),
            other => other?,
        };
        let Some(mut message) = message else {
            return match bounds.count {
                Some(n) => Err(format!("{url}: timed out after {received} of {n} messages").into()),
                None => Ok(()),
            };
        };
        handle(&mut message)?;
        received += 1;
    }
    Ok(())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread, and so in every thread it starts,
/// so that they are taken by the one thread that waits for them (`stop_on`) rather than
/// kill the process before it removes what it made.
fn block_stop_signals() -> io::Result<SigSet> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().map_err(io::Error::from)?;
    Ok(signals)
}

/// Stops the server when one of `signals` comes; the command then cleans up and exits 0.
fn stop_on(signals: SigSet, stopper: ipckit::Stopper) {
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            log::info!("{signal}: stopping");
            stopper.stop();
        }
    });
}

fn print_message(
    out: &mut impl Write,
    format: Format,
    payload: &[u8],
    message: Option<&Message>,
) -> io::Result<()> {
    match format {
        Format::Text => {
            out.write_all(payload)?;
            out.write_all(b"\n")?;
        }
        Format::Hex => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{hex}")?;
        }
        Format::Json => {
            let mut value = serde_json::json!({ "len": payload.len() });
            match std::str::from_utf8(payload) {
                Ok(text) => value["text"] = text.into(),
                Err(_) => {
                    value["hex"] = payload
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                        .into()
                }
            }
            if let Some(message) = message {
                value["peer"] = serde_json::to_value(message.peer()).expect("plain data");
            }
            writeln!(out, "{value}")?;
        }
    }
    out.flush()
}

/// A column of `ipckit transports`: its header and how to fill it.
type Column = (&'static str, fn(&Capabilities) -> String);

fn print_transports(json: bool) {
    let dir = std::env::temp_dir();
    let rows: Vec<_> = ipckit::transport::all()
        .iter()
        .map(|t| (t, t.capabilities(&t.scratch_endpoint(&dir, "example"))))
        .collect();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(t, caps)| {
                serde_json::json!({
                    "scheme": t.scheme(),
                    "summary": t.summary(),
                    "capabilities": caps,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    fn yes(b: bool) -> String {
        if b { "yes" } else { "-" }.to_owned()
    }
    let columns: [Column; 9] = [
        ("duplex", |c| yes(c.duplex)),
        ("reliable", |c| yes(c.reliable)),
        ("ordered", |c| yes(c.ordered)),
        ("durable", |c| yes(c.durable)),
        ("broadcast", |c| yes(c.broadcast)),
        ("connection", |c| yes(c.connection)),
        ("max message", |c| human_size(c.max_message)),
        ("creds", |c| yes(c.peer_credentials)),
        ("zero-copy", |c| yes(c.zero_copy)),
    ];
    let mut header = format!("{:<9}", "transport");
    for (name, _) in &columns {
        header.push_str(&format!(" {name}"));
    }
    println!("{header} summary");
    for (t, caps) in rows {
        let mut line = format!("{:<9}", t.scheme());
        for (name, value) in &columns {
            line.push_str(&format!(" {:<width$}", value(&caps), width = name.len()));
        }
        println!("{line} {}", t.summary());
    }
}

fn human_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
