//! `ipckit`: talk to ipckit endpoints from a shell.

mod args;
mod bench;
mod contract;
mod exec;
mod exit;
mod output;
mod pubsub;
mod serve;

use std::io::{self, BufRead, Read};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

use args::{Answer, Cli, Command, Split};
use exit::{CliResult, Failure};
use output::{print, print_lost, print_message};
use serve::serve_loop;

fn main() -> ExitCode {
    // `ipckit bench` starts this program again as the other end of each measurement.
    if ipckit_bench::peer::run_if_peer(|_, _| false) {
        return ExitCode::SUCCESS;
    }
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    init_logging(cli.quiet, cli.verbose);
    let outcome = std::panic::catch_unwind(|| run(cli));
    if ipckit_bench::peer::abandoned() {
        // Stopped by a signal mid-run: the thread that took it exits when it has cleaned up.
        loop {
            std::thread::park();
        }
    }
    match outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// The command line, with the parts of its help made from the library's own lists.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("urls", |urls| {
        urls.long_about(output::urls())
            // `help urls` is the text alone: the command has no options to list.
            .help_template("{about-with-newline}")
    })
}

/// Logs at what `-q`/`-v` ask, or else at what IPCKIT_LOG says (warnings by default):
/// the flags, typed for this one run, take precedence over the environment.
fn init_logging(quiet: u8, verbose: u8) {
    use log::LevelFilter;
    let level = match (quiet, verbose) {
        (0, 0) => None,
        (1, _) => Some(LevelFilter::Error),
        (2.., _) => Some(LevelFilter::Off),
        (_, 1) => Some(LevelFilter::Info),
        (_, 2) => Some(LevelFilter::Debug),
        (_, 3..) => Some(LevelFilter::Trace),
    };
    let mut builder = match level {
        Some(level) => {
            let mut builder = env_logger::Builder::new();
            builder.filter_level(level);
            builder
        }
        None => {
            env_logger::Builder::from_env(env_logger::Env::new().filter_or("IPCKIT_LOG", "warn"))
        }
    };
    builder.format_timestamp(None).format_target(false).init();
}

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Bench(options) => bench::run(options),
        Command::Listen {
            url,
            level,
            output,
            bounds,
        } => {
            let url = match level {
                Some(level) => {
                    let mut endpoint: ipckit::Endpoint = url.parse()?;
                    endpoint.set_option("level", &level.to_string())?;
                    endpoint.to_string()
                }
                None => url,
            };
            let out = std::cell::RefCell::new(io::stdout().lock());
            serve_loop(
                &url,
                bounds,
                true,
                |message| {
                    let payload = message.payload();
                    print_message(
                        &mut *out.borrow_mut(),
                        output.format,
                        payload,
                        Some(message),
                    )
                },
                |count| print_lost(&mut *out.borrow_mut(), output.format, count),
            )
        }
        Command::Send {
            url,
            message,
            level,
            split,
        } => send(&url, message, level, split).map_err(|f| f.for_client("listen")),
        Command::Request {
            url,
            message,
            timeout,
            output,
        } => {
            let asked = || -> Result<Vec<u8>, Failure> {
                let message = match message.as_str() {
                    "-" => read_stdin()?,
                    text => text.as_bytes().to_vec(),
                };
                let client = ipckit::connect(url.as_str())?;
                Ok(client.request(&message, timeout)?)
            };
            let reply = asked().map_err(|f| f.for_client("serve --echo"))?;
            print_message(&mut io::stdout().lock(), output.format, &reply, None)
        }
        Command::Call {
            url,
            method,
            args,
            oneway,
            timeout,
        } => contract::call(&url, &method, &args, oneway, timeout),
        Command::Introspect {
            url,
            format,
            timeout,
        } => contract::introspect(&url, format, timeout),
        Command::Serve {
            url,
            answer,
            exec_timeout,
            bounds,
        } => serve(&url, answer, exec_timeout, bounds),
        Command::Subscribe {
            url,
            output,
            bounds,
        } => pubsub::subscribe(&url, output, bounds),
        Command::Publish {
            url,
            wait_for,
            split,
            output,
        } => pubsub::publish(&url, wait_for, split, output),
        Command::Rm { url } => {
            let endpoint: ipckit::Endpoint = url.parse()?;
            let transport = ipckit::transport::find(endpoint.scheme()).ok_or_else(|| {
                format!("{url}: this build has no {} transport", endpoint.scheme())
            })?;
            transport.destroy(&endpoint)?;
            Ok(())
        }
        Command::Transports { json } => print(&output::transports(json)),
        Command::Urls => print(&output::urls()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "ipckit", &mut script);
            print(&String::from_utf8_lossy(&script))
        }
    }
}

fn send(
    url: &str,
    message: Option<String>,
    level: Option<ipckit::Level>,
    split: Split,
) -> CliResult {
    let from_stdin = message.as_deref().is_none_or(|m| m == "-");
    if !from_stdin && (split.whole || split.null || split.crlf) {
        return Err(Failure::Usage(
            "--whole, --null and --crlf cut standard input: give no MESSAGE, or `-`".into(),
        ));
    }
    let client = ipckit::connect(url)?;
    let send = |payload: &[u8]| match level {
        Some(level) => client.send_at(level, payload),
        None => client.send(payload),
    };
    if !from_stdin {
        send(message.unwrap_or_default().as_bytes())?;
        return Ok(());
    }
    if split.whole {
        send(&read_stdin()?)?;
        return Ok(());
    }
    // Messages are bytes: a piece need not be UTF-8, and with --null may hold newlines.
    let separator = if split.null { 0 } else { b'\n' };
    for piece in io::stdin().lock().split(separator) {
        let mut piece = piece.map_err(|e| format!("reading standard input: {e}"))?;
        if split.crlf && piece.last() == Some(&b'\r') {
            piece.pop();
        }
        send(&piece)?;
    }
    Ok(())
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut all = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut all)
        .map_err(|e| format!("reading standard input: {e}"))?;
    Ok(all)
}

fn serve(url: &str, answer: Answer, exec_timeout: Duration, bounds: args::Bounds) -> CliResult {
    if let Some(cmd) = answer.exec {
        // One message at a time: CMD's runs never overlap, as a shell loop's would not.
        return serve_loop(
            url,
            bounds,
            false,
            |message| {
                exec::answer(&cmd, exec_timeout, message);
                Ok(())
            },
            |_| Ok(()),
        );
    }
    debug_assert!(answer.echo, "clap requires --echo or --exec");
    let echo = |message: &mut ipckit::Message| {
        if message.wants_reply() {
            let payload = message.take_payload();
            // One client's failure is not the server's: that client has its answer or is
            // gone, and the others are still served.
            if let Err(e) = message.reply(&payload) {
                log::warn!("{e}; serving the other clients");
            }
        }
        Ok(())
    };
    serve_loop(url, bounds, false, echo, |_| Ok(()))
}
