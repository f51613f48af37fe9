//! The command line: what `ipckit` takes, and its help.

use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ipckit",
    version,
    about = "Send, receive and serve messages over local IPC transports",
    after_help = concat!(
        "Endpoints are URLs: uds:///run/app.sock, uds://@name, tcp://127.0.0.1:7000;\n",
        "`ipckit help urls` lists every form and option. URL#OBJECT names an object a\n",
        "contract server hosts, for `call` and `introspect`.\n",
        "\n",
        "Logging: IPCKIT_LOG=info (or debug, or a filter such as ipckit=debug) shows what\n",
        "servers do with their connections; -q and -v, when given, take precedence over it.\n",
        "\n",
        "Exit status:\n",
        "  0  done; also when stopped by SIGINT, SIGTERM or SIGHUP, or when the reader of\n",
        "     standard output went away (`ipckit listen URL | head -1`)\n",
        "  1  any other error\n",
        "  2  bad usage: unknown arguments, an invalid URL, or a method's arguments\n",
        "     (`call`) that are not JSON or do not fit the method\n",
        "  3  nothing listening at the endpoint\n",
        "  4  timed out: no reply within --timeout, a queue or pipe full for its whole\n",
        "     send timeout, or fewer than --count messages within --timeout\n",
        "  5  refused: by the server (a refused connection or request, e.g. by\n",
        "     `serve --exec`) or by the system (permission denied)\n",
        "  6  the method called failed: its error, as JSON, is on stderr\n",
        "  7  no such object or method at the endpoint (`ipckit introspect URL` lists them)",
    )
)]
pub struct Cli {
    /// Log errors only, not warnings; twice, nothing (a command's own failure is still said)
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose", display_order = 100)]
    pub quiet: u8,
    /// Log what servers do (info); twice, debug; three times, trace
    #[arg(short, long, global = true, action = ArgAction::Count, display_order = 100)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print every message that arrives at URL
    ///
    /// Stopped by SIGINT, SIGTERM or SIGHUP, or when the reader of its standard output goes
    /// away (`ipckit listen URL | head -1`), it removes what it made (a socket file, a
    /// FIFO, a shared-memory segment) and exits 0; an mq queue stays, with its messages,
    /// as queues are durable (`ipckit rm mq://NAME` removes one).
    ///
    /// Over events://, any number may listen at once, each printing every event written
    /// after it joined; --level keeps the events at that level and more severe. One that
    /// falls behind by more than the ring misses the oldest events, and says how many on
    /// standard error (`{"lost":N}` on standard output with --format json).
    Listen {
        /// The endpoint to listen on
        url: String,
        /// Only events at this level or more severe: always, critical, error, warning,
        /// info or verbose (the URL's ?level=, for transports that take it)
        #[arg(long, value_parser = parse_level)]
        level: Option<ipckit::Level>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        bounds: Bounds,
    },
    /// Send MESSAGE, or standard input: each line as one message, or as told
    ///
    /// Over mq:// a send needs no receiver: it creates the queue if missing and leaves the
    /// message in it for the next receiver, as queues are durable (`ipckit rm mq://NAME`
    /// removes one). Over other transports, nothing listening is exit status 3.
    Send {
        /// The endpoint to send to
        url: String,
        /// The message; without it, or with `-`, standard input is read
        message: Option<String>,
        /// The level of each message, for transports that carry one (events://):
        /// always, critical, error, warning, info or verbose
        #[arg(long, value_parser = parse_level)]
        level: Option<ipckit::Level>,
        #[command(flatten)]
        split: Split,
    },
    /// Send MESSAGE as a request and print the reply
    Request {
        /// The endpoint to ask
        url: String,
        /// The request; `-` reads it from standard input, all of it, as it is
        message: String,
        /// How long to wait for the reply
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        output: Output,
    },
    /// Call METHOD on the object at URL#OBJECT with ARGS, and print its result as JSON
    ///
    /// The arguments are a JSON object of the method's arguments by name (`ipckit
    /// introspect URL` lists them); `-` reads them from standard input. The result is
    /// printed as the server encoded it, on one line: `5` for `add`. A method that fails
    /// prints its error as JSON on stderr and exits 6; an unknown object or method exits 7,
    /// arguments that do not fit the method exit 2. Without #OBJECT, the server's only
    /// object is called.
    Call {
        /// The endpoint and object, e.g. uds:///run/app.sock#calculator
        url: String,
        /// The method's name
        method: String,
        /// The arguments as a JSON object; `-` reads them from standard input
        #[arg(default_value = "{}")]
        args: String,
        /// Send it as a one-way call: nothing answers, nothing is printed, and a failure
        /// of the server's is not heard of
        #[arg(long)]
        oneway: bool,
        /// How long to wait for the result
        #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print the objects a contract server hosts: methods, arguments, results and events
    ///
    /// As `busctl introspect` does: a table with a row per object and a row per method and
    /// event of it. URL#OBJECT describes that one object; URL alone, every object served.
    Introspect {
        /// The endpoint, with or without #OBJECT
        url: String,
        /// Print a table (text) or the description as JSON
        #[arg(long, value_enum, default_value_t = DescribeFormat::Text)]
        format: DescribeFormat,
        /// How long to wait for the answer
        #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Answer requests at URL: with the request itself, or with what a command prints
    ///
    /// Requests are answered one at a time, in the order they arrive. A client that cannot
    /// take its answer (gone, or with a smaller max_message) is logged and the others are
    /// still served. Stopped by SIGINT, SIGTERM or SIGHUP, it removes what it made and
    /// exits 0, as `listen` does.
    Serve {
        /// The endpoint to serve
        url: String,
        #[command(flatten)]
        answer: Answer,
        /// How long CMD may run for one message, with --exec
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        exec_timeout: Duration,
        #[command(flatten)]
        bounds: Bounds,
    },
    /// Print every message the server at URL pushes to this client
    ///
    /// Connecting subscribes: the server sees the client arrive and its broadcasts reach
    /// it from then on (`ipckit publish URL` is such a server). Ends after --count
    /// messages, after --timeout, when the server goes away (status 0, having printed
    /// everything the server sent; status 1 if --count was not reached), or when SIGINT,
    /// SIGTERM or SIGHUP comes or the reader of standard output goes away (status 0). A
    /// subscriber that does not keep up misses messages rather than slowing the server:
    /// see `publish`.
    Subscribe {
        /// The endpoint to subscribe to
        url: String,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        bounds: Bounds,
    },
    /// Serve URL, sending each line of standard input to every connected client
    ///
    /// Clients connecting and leaving are said on standard error, with their pid or
    /// address where the transport knows it; what they send is printed on standard
    /// output as `listen` prints it (a request is refused: publish answers none). A
    /// broadcast never waits for a slow client: one whose outbox is full misses that line,
    /// and the misses are said on standard error (with ?overflow=disconnect in URL, such a
    /// client is disconnected instead). At the end of standard input it gives the
    /// clients up to ?send_timeout_ms= (10 s) to take what their outboxes still hold,
    /// then exits 0; SIGINT, SIGTERM or SIGHUP stop it at once, with status 0. Either way
    /// it removes what it made, as `listen` does.
    Publish {
        /// The endpoint to serve
        url: String,
        /// Wait until this many clients are connected before reading standard input (a
        /// line read while none is connected reaches nobody)
        #[arg(long, value_name = "N", default_value_t = 0)]
        wait_for: usize,
        #[command(flatten)]
        split: Split,
        #[command(flatten)]
        output: Output,
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
    /// Every endpoint URL form and option of this build, with its default
    ///
    /// Also `ipckit help urls`.
    Urls,
    /// Print a shell completion script, e.g. `ipckit completions bash > /etc/bash_completion.d/ipckit`
    ///
    /// For zsh, write it as `_ipckit` into a directory of $fpath; for fish, into
    /// ~/.config/fish/completions/ipckit.fish.
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Measure every transport between two processes, beside a hand-written baseline
    ///
    /// Stopped by SIGINT, SIGTERM or SIGHUP, it stops its servers, removes what the run
    /// made (temp dir, sockets, queues, segments) and exits 0.
    Bench(Bench),
}

#[derive(Args)]
pub struct Bench {
    /// A run under 20 seconds, with fewer round trips and messages
    #[arg(long)]
    pub quick: bool,
    /// Only these transports, e.g. uds,shm
    #[arg(long, value_delimiter = ',')]
    pub transports: Vec<String>,
    /// Bytes in each round-trip and one-way message
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Round trips per measurement
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Print JSON (every figure of the table) instead of a table
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of a table
    #[arg(long)]
    pub csv: bool,
    /// Also draw the figures, log scale, into this SVG file
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<std::path::PathBuf>,
    /// Also measure as messages grow from 16 B to 16 MiB and clients from 1 to 64
    #[arg(long)]
    pub scaling: bool,
    /// Run on these CPUs, as taskset -c lists them (e.g. 2,3): the client on the first,
    /// the servers on the second. By default, the CPUs the command may use (taskset's)
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// How long the writer sends in each throughput measurement of the events table, for
    /// a longer run [default: 1s, or 300ms with --quick]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub events_time: Option<std::time::Duration>,
    /// Events of each fan-out latency measurement of the events table (one every 10 µs,
    /// then one every 1 ms), and messages of each receive latency measurement of the
    /// spool table [default: 1000, or 300 with --quick]
    #[arg(long, value_name = "N")]
    pub latency_samples: Option<usize>,
}

fn parse_level(text: &str) -> Result<ipckit::Level, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not a level: always, critical, error, warning, info or verbose")
    })
}

/// How `send` cuts standard input into messages: by lines unless told otherwise.
#[derive(Args)]
pub struct Split {
    /// Send all of standard input as one message, as it is
    #[arg(long, conflicts_with_all = ["null", "crlf"])]
    pub whole: bool,
    /// Split standard input on NUL bytes instead of newlines (as from `find -print0`)
    #[arg(short = '0', long, conflicts_with = "crlf")]
    pub null: bool,
    /// Strip a `\r` that ends a line, for CRLF input
    #[arg(long)]
    pub crlf: bool,
}

/// What `serve` answers with: one of the two.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Answer {
    /// Reply to each request with the request itself
    #[arg(long)]
    pub echo: bool,
    /// Run CMD through `sh -c` for each message, as socat's EXEC does: the payload on its
    /// standard input, its standard output the reply
    ///
    /// The reply is the output byte for byte, a final newline included (`printf` leaves
    /// none). Each run is in a process group of its own, ended when the server is stopped.
    /// A CMD that exits non-zero, is killed by a signal or runs past --exec-timeout (then
    /// killed, with its process group) refuses the request with its exit status and the
    /// first line of its standard error; the client exits with status 5. A one-way message
    /// runs CMD too, its output discarded and its failures logged. IPCKIT_PEER_PID,
    /// IPCKIT_PEER_UID and IPCKIT_PEER_ADDR tell CMD who sent it, where known.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
}

#[derive(Args)]
pub struct Output {
    /// How to print messages
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Args)]
pub struct Bounds {
    /// Stop after this many messages
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m)
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// The payload as text, one message per line
    Text,
    /// The payload in hexadecimal, one message per line
    Hex,
    /// One JSON object per line, with the payload and the sender (and an event's level
    /// and sequence number, a spool message's delivery count; `{"lost":N}` for N events
    /// a listener missed)
    Json,
}

/// How `introspect` prints a description.
#[derive(Clone, Copy, ValueEnum)]
pub enum DescribeFormat {
    /// A table, as `busctl introspect` prints one
    Text,
    /// The description as JSON, as `ipckit.describe` returns it
    Json,
}
