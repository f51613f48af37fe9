//! The `ipckit` command as a shell user runs it, including with socat as the other end.
//! Every server started here listens under a temporary directory or on loopback, and is
//! bounded by `--count`/`--timeout` and killed when its test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// The shell-facing behaviours, in a file of their own (not a test target of its own).
#[path = "cli/contract.rs"]
mod contract;
#[path = "cli/events.rs"]
mod events;
#[path = "cli/pipeline.rs"]
mod pipeline;
#[path = "cli/pubsub.rs"]
mod pubsub;

const IPCKIT: &str = env!("CARGO_BIN_EXE_ipckit");

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ipckit-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn sock(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A background process, killed when dropped; with the stderr it was read from, if any.
struct Background(Child, Option<BufReader<std::process::ChildStderr>>);

impl Drop for Background {
    fn drop(&mut self) {
        // Asked to stop first, as a server then removes what it made (a segment, say).
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Background {
    fn start(program: &str, args: &[&str]) -> Background {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e} (scripts/test.sh installs it)"));
        Background(child, None)
    }

    /// Starts `ipckit listen` or `serve` on a URL with port 0, and returns the endpoint
    /// the kernel chose, which the command prints on stderr.
    fn on_any_port(args: &[&str]) -> (Background, String) {
        let mut background = Background::start(IPCKIT, args);
        let mut stderr = BufReader::new(background.0.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("ipckit: listening on ")
            .unwrap_or_else(|| panic!("{args:?} said: {line}"))
            .to_owned();
        // Kept open: the server may log more, and a closed pipe would fail its writes.
        background.1 = Some(stderr);
        (background, url)
    }

    fn output(mut self) -> Output {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                // What it printed says where it stuck.
                let _ = self.0.kill();
                let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
                let output = child.wait_with_output().unwrap();
                panic!(
                    "the process did not finish within 20 s; it printed {:?} and said {:?}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        let mut output = child.wait_with_output().unwrap();
        if let Some(mut stderr) = self.1.take() {
            stderr.read_to_end(&mut output.stderr).unwrap();
        }
        output
    }
}

fn ipckit(args: &[&str]) -> Output {
    Command::new(IPCKIT).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until something accepts connections at `path`.
fn wait_for_socket(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "nothing listens at {path}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn request_until_served(url: &str, message: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ipckit(&["request", url, message, "--timeout", "1s"]);
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_echo_and_request_over_uds() {
    let dir = Scratch::new("echo-uds");
    let url = format!("uds://{}", dir.sock("x.sock"));
    let _server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
    let out = request_until_served(&url, "hello");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "hello\n");
    // A reply that ends its own line is printed without a blank line after it.
    assert_eq!(stdout(&ipckit(&["request", &url, "line\n"])), "line\n");
}

#[test]
fn serve_echo_and_request_over_tcp() {
    let (_server, url) =
        Background::on_any_port(&["serve", "tcp://127.0.0.1:0", "--echo", "--timeout", "30s"]);
    let out = request_until_served(&url, "hello");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "hello\n");
}

/// One client's failure is not the server's: an echo too large for its client is refused to
/// that client, naming both sizes, and the server goes on answering the others.
#[test]
fn serve_keeps_serving_when_one_answer_cannot_be_delivered() {
    let dir = Scratch::new("undeliverable");
    let mut servers = vec![
        {
            let url = format!("uds://{}", dir.sock("x.sock"));
            let server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
            (server, url)
        },
        Background::on_any_port(&["serve", "tcp://127.0.0.1:0", "--echo", "--timeout", "30s"]),
    ];
    let shm = format!("shm://ipckit-cli-undeliverable-{}", std::process::id());
    let server = Background::start(IPCKIT, &["serve", &shm, "--echo", "--timeout", "30s"]);
    servers.push((server, shm));
    for (server, url) in &mut servers {
        assert!(request_until_served(url, "hello").status.success());
        let out = ipckit(&[
            "request",
            &format!("{url}?max_message=64"),
            &"x".repeat(200),
            "--timeout",
            "5s",
        ]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("200 bytes") && said.contains("64 bytes"),
            "{url}: a client of 64 bytes asking for an echo of 200 got {out:?}"
        );
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "{url}: the server stopped"
        );
        let out = ipckit(&["request", url, "after", "--timeout", "5s"]);
        assert_eq!(stdout(&out), "after\n", "{url}: {out:?}");
    }
}

/// A SIGBUS another process sends does what it would without ipckit (a Rust program
/// survives the first: std's handler takes it for a fault and lets it repeat), and does
/// not take away ipckit's handler: a segment shrunk afterwards still does not kill.
#[test]
fn a_sent_sigbus_leaves_the_truncation_guard_in_place() {
    let name = format!("ipckit-cli-sigbus-{}", std::process::id());
    let url = format!("shm://{name}");
    let server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
    assert!(request_until_served(&url, "hello").status.success());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.0.id() as i32),
        nix::sys::signal::Signal::SIGBUS,
    )
    .unwrap();
    let out = ipckit(&["request", &url, "after", "--timeout", "5s"]);
    assert_eq!(stdout(&out), "after\n", "after a sent SIGBUS: {out:?}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/ipckit.{name}"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let out = server.output();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && said.contains("shrank"),
        "a server whose segment was shrunk after a sent SIGBUS: {out:?}"
    );
    let _ = std::fs::remove_file(format!("/dev/shm/ipckit.{name}"));
}

/// Clients that die with a request pending, or send a valid request and then garbage, are
/// logged and dropped: `serve` goes on serving the others.
#[test]
fn serve_survives_clients_that_die_or_break() {
    use nix::sys::signal::{Signal, kill};
    let dir = Scratch::new("dying-clients");
    let mut servers = Vec::new();
    for url in [
        format!("uds://{}", dir.sock("x.sock")),
        format!("fifo://{}", dir.sock("x.fifo")),
    ] {
        let server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "60s"]);
        servers.push((server, url));
    }
    servers.push(Background::on_any_port(&[
        "serve",
        "tcp://127.0.0.1:0",
        "--echo",
        "--timeout",
        "60s",
    ]));
    let big = "x".repeat(20_000);
    for (server, url) in &mut servers {
        assert!(request_until_served(url, "hello").status.success(), "{url}");
        for i in 0..30 {
            let mut requester = Command::new(IPCKIT)
                .args(["request", url, &big, "--timeout", "5s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // At different points of its request: connecting, sending, waiting.
            std::thread::sleep(Duration::from_micros(300 * (i % 10)));
            kill(
                nix::unistd::Pid::from_raw(requester.id() as i32),
                Signal::SIGKILL,
            )
            .unwrap();
            requester.wait().unwrap();
        }
        if let Some(connect) = raw_stream(url) {
            let hello = [
                b"IPCK".as_slice(),
                &[1, 1, 0, 0],
                &(1u32 << 20).to_le_bytes(),
            ]
            .concat();
            let request = |id: u64, payload: &[u8]| {
                let len = (payload.len() as u32).to_le_bytes();
                [&len[..], &[2, 0, 0, 0], &id.to_le_bytes(), payload].concat()
            };
            // Gone with its request pending.
            let mut quitter = connect();
            quitter
                .write_all(&[hello.clone(), request(1, &[b'q'; 100_000])].concat())
                .unwrap();
            drop(quitter);
            // A valid request, then garbage: the server closes the connection.
            let mut breaker = connect();
            breaker
                .write_all(&[hello.clone(), request(1, b"valid"), vec![0xEE; 16]].concat())
                .unwrap();
            let mut rest = Vec::new();
            let _ = breaker.read_to_end(&mut rest);
        }
        assert!(
            server.0.try_wait().unwrap().is_none(),
            "{url}: the server stopped"
        );
        let out = ipckit(&["request", url, "after", "--timeout", "5s"]);
        assert_eq!(stdout(&out), "after\n", "{url}: {out:?}");
    }
}

/// A raw connection to a stream endpoint, for peers that break the protocol.
fn raw_stream(url: &str) -> Option<Box<dyn Fn() -> Box<dyn ReadWrite>>> {
    let timeout = Some(Duration::from_secs(10));
    if let Some(path) = url.strip_prefix("uds://") {
        let path = path.to_owned();
        return Some(Box::new(move || {
            let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.set_read_timeout(timeout).unwrap();
            Box::new(s)
        }));
    }
    let address = url.strip_prefix("tcp://")?.to_owned();
    Some(Box::new(move || {
        let s = std::net::TcpStream::connect(&address).unwrap();
        s.set_read_timeout(timeout).unwrap();
        Box::new(s)
    }))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// `listen` and `serve` stopped by SIGINT, SIGTERM or SIGHUP remove what they made (a
/// socket file, a FIFO, a shared-memory segment) and exit 0.
#[test]
fn stopped_by_a_signal_a_server_cleans_up_and_exits_0() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = Scratch::new("signals");
    let shm = format!("ipckit-cli-signals-{}", std::process::id());
    let cases = [
        (
            "serve",
            format!("uds://{}", dir.sock("x.sock")),
            dir.sock("x.sock"),
            Signal::SIGTERM,
        ),
        (
            "listen",
            format!("fifo://{}", dir.sock("x.fifo")),
            dir.sock("x.fifo"),
            Signal::SIGINT,
        ),
        (
            "serve",
            format!("shm://{shm}"),
            format!("/dev/shm/ipckit.{shm}"),
            Signal::SIGHUP,
        ),
    ];
    for (verb, url, made, signal) in cases {
        let mut args = vec![verb, url.as_str()];
        if verb == "serve" {
            args.push("--echo");
        }
        let server = Background::start(IPCKIT, &args);
        if verb == "serve" {
            assert!(
                request_until_served(&url, "hello").status.success(),
                "{url}"
            );
        } else {
            wait_for_socket_file(&made);
        }
        assert!(
            std::path::Path::new(&made).exists(),
            "{url}: {made} was not made"
        );
        kill(Pid::from_raw(server.0.id() as i32), signal).unwrap();
        let out = server.output();
        assert!(out.status.success(), "{url} stopped by {signal}: {out:?}");
        assert!(
            !std::path::Path::new(&made).exists(),
            "{url} stopped by {signal} left {made}"
        );
    }
}

/// `ipckit bench` stopped by a signal mid-run stops its servers, removes its temp dir and
/// the queues and segments of the run, and exits 0.
#[test]
fn bench_stopped_by_a_signal_cleans_up_and_exits_0() {
    use nix::sys::signal::{Signal, kill};
    let tmp = Scratch::new("bench-signal");
    let mut bench = Background(
        Command::new(IPCKIT)
            .args(["bench", "--quick", "--transports", "uds,fifo,mq,shm"])
            .env("TMPDIR", &tmp.0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        None,
    );
    let pid = bench.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let servers = loop {
        let servers = children(pid);
        if !servers.is_empty() {
            break servers;
        }
        assert!(Instant::now() < deadline, "bench started no server");
        std::thread::sleep(Duration::from_millis(5));
    };
    kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = bench.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "bench did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "bench stopped by SIGTERM: {status}");
    let left: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().flatten().collect();
    assert!(left.is_empty(), "bench left {left:?}");
    for server in servers {
        let state = std::fs::read_to_string(format!("/proc/{server}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        assert!(!running, "bench left its server {server} running");
    }
    for dir in ["/dev/shm", "/dev/mqueue"] {
        let ours: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(&format!("-{pid}-")) || name.contains(&format!("-{pid}.")))
            .collect();
        assert!(ours.is_empty(), "bench left {ours:?} in {dir}");
    }
}

/// The processes `pid` started, from every one of its threads.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// An mq queue outlives its processes, with its messages; `ipckit rm` removes it, but not
/// from under a receiver.
#[test]
fn rm_removes_a_queue_that_no_one_reads() {
    let name = format!("ipckit-cli-rm-{}", std::process::id());
    let url = format!("mq://{name}");
    let queue = std::path::PathBuf::from(format!("/dev/mqueue/{name}"));
    let shown = std::path::Path::new("/dev/mqueue").is_dir();
    assert!(ipckit(&["send", &url, "dropped"]).status.success());
    assert!(!shown || queue.exists(), "send made no queue");
    let removed = ipckit(&["rm", &url]);
    assert!(removed.status.success(), "{removed:?}");
    assert!(!queue.exists(), "rm left {}", queue.display());

    assert!(ipckit(&["send", &url, "kept"]).status.success());
    let mut listener = Background::start(IPCKIT, &["listen", &url, "--count", "2"]);
    let mut first = String::new();
    BufReader::new(listener.0.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first, "kept\n",
        "the message sent before rm was not the one kept"
    );
    let refused = ipckit(&["rm", &url]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("stop it"),
        "rm under a receiver: {refused:?}"
    );
    assert!(ipckit(&["send", &url, "second"]).status.success());
    let out = listener.output();
    assert!(out.status.success(), "{out:?}");
    assert!(!shown || queue.exists(), "the queue went with its receiver");
    let removed = ipckit(&["rm", &url]);
    assert!(removed.status.success(), "{removed:?}");
    assert!(!queue.exists(), "rm left {}", queue.display());
    assert!(
        ipckit(&["rm", &url]).status.success(),
        "rm of a removed queue"
    );
}

/// A spool keeps its messages on disk for whoever reads next, hears a message any shell
/// writes (into tmp/, then renamed into new/), says which delivery each one is, and goes
/// with `ipckit rm` once no receiver serves it.
#[test]
fn a_spool_keeps_messages_hears_a_shell_and_goes_with_rm() {
    let dir = std::env::temp_dir().join(format!("ipckit-cli-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("spool://{}", dir.display());
    assert!(ipckit(&["send", &url, "first"]).status.success());
    let shell = format!(
        "n=$(date +%s.%N).$$; printf 'from a shell' > {d}/tmp/$n && mv {d}/tmp/$n {d}/new/",
        d = dir.display()
    );
    let wrote = Command::new("sh").args(["-c", &shell]).status().unwrap();
    assert!(wrote.success());
    let out = ipckit(&[
        "listen",
        &url,
        "--count",
        "2",
        "--timeout",
        "20s",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let texts: Vec<&str> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["first", "from a shell"], "{lines:?}");
    assert!(lines.iter().all(|l| l["deliveries"] == 1), "{lines:?}");
    assert_eq!(std::fs::read_dir(dir.join("new")).unwrap().count(), 0);
    let removed = ipckit(&["rm", &url]);
    assert!(removed.status.success(), "{removed:?}");
    assert!(!dir.exists(), "rm left {}", dir.display());
}

#[test]
fn socat_lines_reach_a_line_framed_listener() {
    let dir = Scratch::new("socat-in");
    let path = dir.sock("y.sock");
    let listener = Background::start(
        IPCKIT,
        &[
            "listen",
            &format!("uds://{path}?framing=line"),
            "--count",
            "2",
            "--timeout",
            "20s",
        ],
    );
    wait_for_socket(&path);
    let mut socat = Command::new("socat")
        .args(["-", &format!("UNIX-CONNECT:{path}")])
        .stdin(Stdio::piped())
        .spawn()
        .expect("socat (scripts/test.sh installs it)");
    socat.stdin.take().unwrap().write_all(b"a\nb\n").unwrap();
    assert!(socat.wait().unwrap().success());
    let out = listener.output();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "a\nb\n");
}

#[test]
fn socat_listens_to_a_line_framed_client() {
    let dir = Scratch::new("socat-out");
    let path = dir.sock("z.sock");
    let socat = Background::start("socat", &["-u", &format!("UNIX-LISTEN:{path}"), "-"]);
    wait_for_socket_file(&path);
    let out = ipckit(&["send", &format!("uds://{path}?framing=line"), "from ipckit"]);
    assert!(out.status.success(), "{out:?}");
    let out = socat.output();
    assert_eq!(stdout(&out), "from ipckit\n");
}

fn wait_for_socket_file(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(path).exists() {
        assert!(Instant::now() < deadline, "{path} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn send_reads_stdin_lines_and_listen_prints_json_with_the_peer() {
    let dir = Scratch::new("stdin");
    let url = format!("uds://{}", dir.sock("s.sock"));
    let listener = Background::start(
        IPCKIT,
        &[
            "listen",
            &url,
            "--count",
            "3",
            "--format",
            "json",
            "--timeout",
            "20s",
        ],
    );
    wait_for_socket(&dir.sock("s.sock"));
    let mut send = Command::new(IPCKIT)
        .args(["send", &url])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = send.id();
    send.stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\n\xff\n")
        .unwrap();
    assert!(send.wait().unwrap().success());
    let out = listener.output();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["text"], "one");
    assert_eq!(lines[1]["text"], "two");
    assert_eq!(lines[2]["hex"], "ff");
    assert_eq!(lines[0]["peer"]["pid"], pid);
}

#[test]
fn listen_prints_hex() {
    let dir = Scratch::new("hex");
    let url = format!("uds://{}", dir.sock("h.sock"));
    let listener = Background::start(
        IPCKIT,
        &[
            "listen",
            &url,
            "--count",
            "1",
            "--format",
            "hex",
            "--timeout",
            "20s",
        ],
    );
    wait_for_socket(&dir.sock("h.sock"));
    assert!(ipckit(&["send", &url, "AZ"]).status.success());
    assert_eq!(stdout(&listener.output()), "415a\n");
}

#[test]
fn errors_are_one_line_on_stderr_with_a_non_zero_exit() {
    let dir = Scratch::new("errors");
    let missing = format!("uds://{}", dir.sock("missing.sock"));
    for args in [
        vec!["send", missing.as_str(), "x"],
        vec!["request", missing.as_str(), "x"],
        vec!["send", "foo://x", "x"],
        vec!["listen", "tcp://127.0.0.1:99999"],
    ] {
        let out = ipckit(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("ipckit: "), "{args:?}: {stderr}");
    }
    let out = ipckit(&["send", &missing, "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing));
}

#[test]
fn listen_gives_up_after_its_timeout() {
    let dir = Scratch::new("timeout");
    let url = format!("uds://{}", dir.sock("t.sock"));
    let out = ipckit(&["listen", &url, "--count", "1", "--timeout", "100ms"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out after 0 of 1 messages"));
    assert!(
        ipckit(&["listen", &url, "--timeout", "50ms"])
            .status
            .success()
    );
}

#[test]
fn transports_lists_every_registered_transport() {
    let out = ipckit(&["transports"]);
    assert!(out.status.success());
    let table = stdout(&out);
    for scheme in ["uds", "tcp", "udp", "unixgram"] {
        assert!(
            table.lines().any(|l| l.starts_with(scheme)),
            "{scheme} missing:\n{table}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&ipckit(&["transports", "--json"]).stdout).unwrap();
    let uds = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scheme"] == "uds")
        .unwrap();
    assert_eq!(uds["capabilities"]["peer_credentials"], true);
    assert_eq!(uds["capabilities"]["max_message"], 16 * 1024 * 1024);
    // Every transport says whether its receivers compete and how much its queue holds,
    // as the library says.
    for listed in json.as_array().unwrap() {
        let scheme = listed["scheme"].as_str().unwrap();
        let transport = ipckit::transport::find(scheme).unwrap();
        let caps =
            transport.capabilities(&transport.scratch_endpoint(&std::env::temp_dir(), "example"));
        assert_eq!(
            listed["capabilities"]["competing_receivers"], caps.competing_receivers,
            "{scheme}"
        );
        assert_eq!(
            listed["capabilities"]["queue_limit"],
            serde_json::json!(caps.queue_limit),
            "{scheme}"
        );
    }
    let mq = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scheme"] == "mq")
        .unwrap();
    assert!(
        mq["capabilities"]["queue_limit"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{mq}"
    );
    assert_eq!(uds["capabilities"]["queue_limit"], serde_json::Value::Null);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains(" queue ") && header.contains(" competing "),
        "{header}"
    );
    let mq_row = table.lines().find(|l| l.starts_with("mq ")).unwrap();
    let limit = mq["capabilities"]["queue_limit"].to_string();
    let queue_column = header.find(" queue ").unwrap() + 1;
    assert_eq!(
        mq_row.get(queue_column..queue_column + limit.len()),
        Some(limit.as_str()),
        "{table}"
    );
}

#[test]
fn abstract_names_need_no_file() {
    let url = format!("uds://@ipckit-cli-test-{}", std::process::id());
    let _server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
    let out = request_until_served(&url, "abstract");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "abstract\n");
}

#[test]
fn line_framed_request_and_reply() {
    let dir = Scratch::new("line-rr");
    let url = format!("uds://{}?framing=line", dir.sock("l.sock"));
    let _server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
    let out = request_until_served(&url, "one line");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "one line\n");
    // A newline cannot be framed as a line: refused before sending.
    let out = ipckit(&["send", &url, "two\nlines"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot contain a newline"));
}

/// docs/PROTOCOL.md is enough to write a client: the Python one written from it talks to
/// `ipckit serve` over both stream transports.
#[test]
fn the_protocol_document_suffices_for_a_python_client() {
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/client.py");
    let dir = Scratch::new("python");
    let uds = format!("uds://{}", dir.sock("py.sock"));
    let servers = [
        (
            Background::start(IPCKIT, &["serve", &uds, "--echo", "--timeout", "30s"]),
            uds.clone(),
        ),
        Background::on_any_port(&["serve", "tcp://127.0.0.1:0", "--echo", "--timeout", "30s"]),
    ];
    for (_server, url) in &servers {
        request_until_served(url, "ready?");
        let out = Command::new("python3")
            .args([client, url, "from python"])
            .output()
            .expect("python3 (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout(&out), "from python\n", "{url}");
    }
}

/// Datagram transports carry payloads as they are: a datagram from a program that knows
/// nothing of ipckit is one message.
#[test]
fn a_foreign_datagram_is_one_message() {
    let dir = Scratch::new("foreign-dgram");
    let dgram = dir.sock("d.dgram");
    let listen = ["--count", "1", "--format", "json", "--timeout", "20s"];
    let udp = Background::on_any_port(&[&["listen", "udp://127.0.0.1:0"][..], &listen].concat());
    let unixgram = format!("unixgram://{dgram}");
    let listeners = [
        (
            udp.0,
            format!("UDP:{}", udp.1.trim_start_matches("udp://")),
            udp.1,
        ),
        (
            Background::start(
                IPCKIT,
                &[&["listen", unixgram.as_str()][..], &listen].concat(),
            ),
            format!("UNIX-SENDTO:{dgram}"),
            unixgram.clone(),
        ),
    ];
    for (mut listener, socat_address, url) in listeners {
        let deadline = Instant::now() + Duration::from_secs(10);
        let out = loop {
            // The listener may not be up yet: UDP drops, unixgram refuses; try until heard.
            let mut socat = Command::new("socat")
                .args(["-u", "-", &socat_address])
                .stdin(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat (scripts/test.sh installs it)");
            socat
                .stdin
                .take()
                .unwrap()
                .write_all(b"one whole datagram")
                .unwrap();
            socat.wait().unwrap();
            std::thread::sleep(Duration::from_millis(50));
            if listener.0.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break listener.output();
            }
        };
        assert!(out.status.success(), "{url}: {out:?}");
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["text"], "one whole datagram", "{url}");
    }
}

/// A POSIX queue the test removes when it ends.
struct Queue(String);

impl Queue {
    fn new(name: &str) -> Queue {
        Queue(format!("ipckit-cli-{}-{name}", std::process::id()))
    }

    fn url(&self) -> String {
        format!("mq://{}", self.0)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = nix::mqueue::mq_unlink(format!("/{}", self.0).as_str());
    }
}

/// A program that knows nothing of ipckit calls mq_send; `ipckit listen` hears it, and
/// hears higher priorities first.
#[test]
fn a_foreign_mq_send_is_heard_in_priority_order() {
    use nix::mqueue::{MQ_OFlag, MqAttr, mq_close, mq_open, mq_send};
    let queue = Queue::new("foreign");
    let attr = MqAttr::new(0, 10, 128, 0);
    let mq = mq_open(
        format!("/{}", queue.0).as_str(),
        MQ_OFlag::O_CREAT | MQ_OFlag::O_WRONLY,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        Some(&attr),
    )
    .unwrap();
    mq_send(&mq, b"low", 1).unwrap();
    mq_send(&mq, b"high", 7).unwrap();
    mq_close(mq).unwrap();
    // And ipckit's own ?priority= takes its place in the same order.
    let url = queue.url();
    assert!(
        ipckit(&["send", &format!("{url}?priority=4"), "middle"])
            .status
            .success()
    );
    let out = ipckit(&["listen", &url, "--count", "3", "--timeout", "10s"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "high\nmiddle\nlow\n");
}

#[test]
fn an_oversized_mq_message_names_the_kernel_limit() {
    let queue = Queue::new("big");
    let max: usize = std::fs::read_to_string("/proc/sys/fs/mqueue/msgsize_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = ipckit(&["send", &queue.url(), &"x".repeat(max + 1)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("msgsize_max") && stderr.contains(&max.to_string()),
        "{stderr}"
    );
}

#[test]
fn mq_request_and_reply_through_the_cli() {
    let queue = Queue::new("rr");
    let _server = Background::start(
        IPCKIT,
        &["serve", &queue.url(), "--echo", "--timeout", "30s"],
    );
    let out = request_until_served(&queue.url(), "queued");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "queued\n");
}

/// Bytes written into a FIFO by a program that is not ipckit are skipped with a warning;
/// the messages after them arrive whole.
#[test]
fn foreign_bytes_in_a_fifo_are_skipped() {
    let dir = Scratch::new("fifo-foreign");
    let path = dir.sock("app.fifo");
    let url = format!("fifo://{path}");
    let listener = Background::start(
        IPCKIT,
        &["listen", &url, "--count", "2", "--timeout", "20s"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ipckit(&["send", &url, "first"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "the listener never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A shell's echo into the pipe: not ipckit chunks.
    let status = Command::new("sh")
        .args(["-c", &format!("echo 'not a chunk at all' > {path}")])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(ipckit(&["send", &url, "second"]).status.success());
    let out = listener.output();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "first\nsecond\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("were not ipckit chunks"));
}

/// `serve --echo` and `request` over the remaining transports, as over uds and tcp.
#[test]
fn serve_echo_and_request_over_the_datagram_and_pipe_transports() {
    let dir = Scratch::new("echo-more");
    let serve =
        |url: &str| Background::start(IPCKIT, &["serve", url, "--echo", "--timeout", "30s"]);
    let unixgram = format!("unixgram://{}", dir.sock("e.dgram"));
    let fifo = format!("fifo://{}", dir.sock("e.fifo"));
    let servers = [
        Background::on_any_port(&["serve", "udp://127.0.0.1:0", "--echo", "--timeout", "30s"]),
        (serve(&unixgram), unixgram.clone()),
        (serve(&fifo), fifo.clone()),
    ];
    for (_server, url) in &servers {
        let url = url.as_str();
        let out = request_until_served(url, "echo me");
        assert!(out.status.success(), "{url}: {out:?}");
        assert_eq!(stdout(&out), "echo me\n", "{url}");
    }
}

#[test]
fn shm_request_and_reply_and_send_through_the_cli() {
    let url = format!("shm://ipckit-cli-{}", std::process::id());
    let server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
    let out = request_until_served(&url, "in shared memory");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "in shared memory\n");
    // Killed, the server leaves its segment; the next server on the name replaces it.
    drop(server);
    let listener = Command::new(IPCKIT)
        .args(["listen", &url, "--count", "1", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ipckit(&["send", &url, "one-way"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the listener never took a message"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = listener.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "one-way\n");
    assert!(
        !std::path::Path::new(&format!(
            "/dev/shm/ipckit.ipckit-cli-{}",
            std::process::id()
        ))
        .exists(),
        "the listener left its segment behind"
    );
}

#[test]
fn shm_names_that_cannot_be_segments_are_refused() {
    let too_long = format!("shm://{}", "n".repeat(300));
    for (url, says) in [
        ("shm://a/b", "'/'"),
        ("shm://..", "'..'"),
        (too_long.as_str(), "at most 200"),
    ] {
        let out = ipckit(&["listen", url, "--timeout", "1s"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} was accepted");
        assert!(
            stderr.contains(says) && stderr.lines().count() == 1,
            "{url}: {stderr}"
        );
    }
}

#[test]
fn bench_refuses_bad_options_with_what_to_do() {
    for (args, says) in [
        (
            &["--transports", "uds,pigeon"][..],
            "unknown transport 'pigeon'",
        ),
        (&["--transports", "udp", "--size", "100000"][..], "65507"),
        (&["--count", "0"][..], "--count"),
    ] {
        let out = ipckit(&[&["bench"][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_json_carries_every_figure() {
    let dir = Scratch::new("bench-json");
    let chart = dir.0.join("bench.svg");
    let out = ipckit(&[
        "bench",
        "--quick",
        "--transports",
        "uds,shm",
        "--json",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["machine"]["cpus"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    let rows = report["rows"].as_array().unwrap();
    // A push row beside the request rows, and broadcast points, for each that pushes.
    let pushing: Vec<&str> = ["uds", "shm"]
        .into_iter()
        .filter(|s| pubsub::pushes(s))
        .collect();
    assert_eq!(rows.len(), 4 + pushing.len(), "{rows:?}");
    let broadcast = report["broadcast"].as_array().unwrap();
    assert_eq!(broadcast.len(), 3 * pushing.len(), "{broadcast:?}");
    for point in broadcast {
        assert_eq!(point["status"], "ok", "{point}");
        assert!(
            point["msgs_per_sec"].as_f64().is_some_and(|x| x > 0.0),
            "{point}"
        );
        assert!(point["dropped"].as_u64().is_some(), "{point}");
    }
    for row in rows {
        assert_eq!(row["status"], "ok", "{row}");
        if row["variant"] == "push" {
            assert!(pushing.contains(&row["transport"].as_str().unwrap()));
            for figure in ["rtt_median_ns", "rtt_p99_ns", "cpu_ns_per_rtt"] {
                assert!(
                    row[figure].as_u64().is_some_and(|n| n > 0),
                    "{figure}: {row}"
                );
            }
            assert!(row["ratio"].as_f64().is_some_and(|x| x > 0.0), "{row}");
            continue;
        }
        for figure in [
            "rtt_median_ns",
            "rtt_p99_ns",
            "rtt_p999_ns",
            "cpu_ns_per_rtt",
        ] {
            assert!(
                row[figure].as_u64().is_some_and(|n| n > 0),
                "{figure}: {row}"
            );
        }
        // Throughput is measured by hand too; the ratio sits on ipckit's row.
        let mut figures = vec!["msgs_per_sec", "gb_per_sec"];
        if row["variant"] == "ipckit" {
            figures.extend(["ratio", "msgs_ratio", "gb_ratio"]);
        }
        for figure in figures {
            assert!(
                row[figure].as_f64().is_some_and(|x| x > 0.0),
                "{figure}: {row}"
            );
        }
    }
    // A typed call beside a raw request of its bytes, in each codec, on each transport.
    let contracts = report["contracts"].as_array().unwrap();
    let measured: Vec<(&str, &str)> = contracts
        .iter()
        .map(|p| {
            (
                p["transport"].as_str().unwrap(),
                p["codec"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        measured,
        [
            ("uds", "json"),
            ("uds", "postcard"),
            ("shm", "json"),
            ("shm", "postcard")
        ],
        "{contracts:?}"
    );
    for point in contracts {
        assert_eq!(point["status"], "ok", "{point}");
        for figure in [
            "typed_median_ns",
            "typed_p99_ns",
            "typed_cpu_ns",
            "raw_median_ns",
            "raw_p99_ns",
            "raw_cpu_ns",
        ] {
            assert!(
                point[figure].as_u64().is_some_and(|n| n > 0),
                "{figure}: {point}"
            );
        }
        for figure in ["ratio", "cpu_ratio"] {
            assert!(
                point[figure].as_f64().is_some_and(|x| x > 0.0),
                "{figure}: {point}"
            );
        }
    }
    assert_valid_svg(&chart, &["uds", "shm"]);
}

/// The file parses as XML with an `<svg>` root, and names each transport.
fn assert_valid_svg(path: &std::path::Path, names: &[&str]) {
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); \
             sys.exit(0 if r.tag.endswith('svg') else 1)",
            path.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(check.success(), "{} is not a valid SVG", path.display());
    let svg = std::fs::read_to_string(path).unwrap();
    for name in names {
        assert!(svg.contains(name), "{name} is not in the chart");
    }
}

/// events has no round trip: bench measures what it does (one-way throughput to one
/// listener process, beside its hand-written ring) and fills the events table, the
/// writer and its listeners in separate processes.
#[test]
fn bench_measures_a_one_way_broadcast_for_what_it_does() {
    let out = ipckit(&[
        "bench",
        "--quick",
        "--transports",
        "events",
        "--events-time",
        "100ms",
        "--latency-samples",
        "50",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in rows {
        assert_eq!(row["status"], "ok", "{row}");
        assert!(row["rtt_median_ns"].is_null(), "{row}");
        assert!(
            row["msgs_per_sec"].as_f64().is_some_and(|x| x > 0.0),
            "{row}"
        );
    }
    let events = &report["events"];
    let points = events["points"].as_array().unwrap();
    assert_eq!(points.len(), 9, "{points:?}");
    for point in points {
        assert_eq!(point["status"], "ok", "{point}");
        assert!(
            point["writer_ns"].as_f64().is_some_and(|x| x > 0.0),
            "{point}"
        );
        assert!(point["events"].as_u64().is_some_and(|n| n > 0), "{point}");
    }
    let costs = events["costs"].as_array().unwrap();
    assert_eq!(costs.len(), 3, "{costs:?}");
    for cost in costs {
        assert!(cost["ns_per_call"].as_f64().is_some(), "{cost}");
    }
    let latency = events["latency"].as_array().unwrap();
    assert_eq!(latency.len(), 2, "{latency:?}");
    for fan_out in latency {
        assert_eq!(fan_out["complete"], 50, "{fan_out}");
        assert!(fan_out["median_ns"].as_u64().is_some(), "{fan_out}");
    }
}

#[test]
fn bench_scaling_covers_sizes_and_clients() {
    let dir = Scratch::new("bench-scaling");
    let chart = dir.0.join("scaling.svg");
    let out = ipckit(&[
        "bench",
        "--quick",
        "--scaling",
        "--transports",
        "unixgram",
        "--csv",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let csv = stdout(&out);
    for x in [
        "size,16,ok",
        "size,4194304,ok",
        "clients,1,ok",
        "clients,64,ok",
    ] {
        assert!(csv.contains(&format!("unixgram,{x}")), "no {x} in\n{csv}");
    }
    // unixgram's largest datagram is 4 MiB here: 16 MiB is left out, not failed.
    assert!(!csv.contains("unixgram,size,16777216"), "{csv}");
    assert_valid_svg(&chart, &["unixgram"]);
}

/// The peers of a running `ipckit bench`, by the role in their environment.
fn bench_peers(bench: u32, role: &str) -> Vec<u32> {
    let wanted = format!("IPCKIT_BENCH_PEER={role}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            parent == Some(bench)
                && environ
                    .split(|&b| b == 0)
                    .any(|var| var == wanted.as_bytes())
        })
        .collect()
}

#[test]
fn bench_reports_a_server_that_dies_and_goes_on() {
    let bench = Command::new(IPCKIT)
        .args([
            "bench",
            "--transports",
            "uds,shm",
            "--count",
            "20000",
            "--csv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        if let Some(&pid) = bench_peers(bench.id(), "echo").first() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the bench never started its uds server"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // Killed once it serves (it has its socket, and a moment to print where), so that it
    // dies mid-run rather than while starting, which the bench reports otherwise.
    let has_socket = || {
        std::fs::read_dir(format!("/proc/{victim}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
        })
    };
    while !has_socket() {
        assert!(Instant::now() < deadline, "the uds server never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = bench.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let csv = stdout(&out);
    let row = |transport: &str, variant: &str| {
        csv.lines()
            .find(|l| l.starts_with(&format!("{transport},{variant},")))
            .unwrap_or_else(|| panic!("no {transport} {variant} row in\n{csv}"))
            .to_owned()
    };
    let uds = row("uds", "ipckit");
    assert!(
        uds.starts_with("uds,ipckit,failed,") && uds.contains("died"),
        "{uds}"
    );
    assert!(row("shm", "ipckit").starts_with("shm,ipckit,ok,"), "{csv}");
}

/// `ipckit listen` on a line-framed FIFO prints what a shell writes into it: `echo`'s
/// lines, and `printf`'s last line without a newline once the writer closes the FIFO.
#[test]
fn listen_prints_lines_echoed_into_a_line_framed_fifo() {
    let dir = Scratch::new("fifo-lines");
    let path = dir.sock("app.fifo");
    let listener = Background::start(
        IPCKIT,
        &[
            "listen",
            &format!("fifo://{path}?framing=line"),
            "--count",
            "3",
            "--timeout",
            "20s",
        ],
    );
    wait_for_socket_file(&path);
    // A shell's open of a FIFO waits for its reader: no race with the listener.
    let status = Command::new("sh")
        .args([
            "-c",
            r#"echo hi > "$1"; printf 'two\nthree' > "$1""#,
            "sh",
            &path,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let out = listener.output();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "hi\ntwo\nthree\n");
}

// --- ipckit bench: options honoured and checked before the run ---

/// A short `ipckit bench` over `transports`, with `args` added.
#[test]
fn bench_spool_has_its_table_and_leaves_nothing_in_the_temp_dir() {
    let tmp = Scratch::new("bench-spool");
    let out = Command::new(IPCKIT)
        .args([
            "bench",
            "--quick",
            "--count",
            "100",
            "--transports",
            "spool",
            "--json",
        ])
        .env("TMPDIR", &tmp.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spool = &report["spool"];
    assert!(
        spool["filesystem"]
            .as_str()
            .is_some_and(|f| f.contains(" on /")),
        "{spool}"
    );
    let send = spool["send"].as_array().unwrap();
    let rows: Vec<(u64, bool)> = send
        .iter()
        .map(|p| (p["size"].as_u64().unwrap(), p["sync"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        rows,
        [(64, true), (64, false), (1 << 20, true), (1 << 20, false)],
        "{spool}"
    );
    for point in send {
        assert_eq!(point["status"], "ok", "{point}");
        for figure in [
            "ipckit_msgs_per_sec",
            "baseline_msgs_per_sec",
            "ratio",
            "total_ratio",
        ] {
            assert!(
                point[figure].as_f64().is_some_and(|x| x > 0.0),
                "{figure}: {point}"
            );
        }
    }
    let latency = spool["latency"].as_array().unwrap();
    assert_eq!(latency.len(), 2, "{spool}");
    for point in latency {
        assert_eq!(point["status"], "ok", "{point}");
        assert!(
            point["messages"].as_u64().is_some_and(|n| n >= 300),
            "{point}"
        );
        assert!(
            point["median_ns"].as_u64().is_some_and(|n| n > 0),
            "{point}"
        );
        assert!(
            point["p99_ns"].as_u64() >= point["median_ns"].as_u64(),
            "{point}"
        );
    }
    // The spool table's spools, and the other tables', are gone with the run.
    let left: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().flatten().collect();
    assert!(left.is_empty(), "bench left {left:?}");
}

fn short_bench(transports: &str, args: &[&str]) -> Output {
    let base = [
        "bench",
        "--quick",
        "--count",
        "100",
        "--transports",
        transports,
    ];
    ipckit(&[&base[..], args].concat())
}

#[test]
fn bench_refuses_a_bad_chart_path_before_the_run() {
    let dir = Scratch::new("bench-chart");
    let missing = dir.0.join("no-such-dir").join("bench.svg");
    for (path, says) in [
        (dir.0.join("bench.png"), "must end in .svg"),
        (dir.0.clone(), "is a directory"),
        (missing, "does not exist"),
    ] {
        let out = short_bench("uds", &["--chart", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path:?}: {out:?}");
        assert!(stderr.contains(says), "{path:?}: {stderr}");
        // Nothing measured: the run did not start.
        assert!(out.stdout.is_empty(), "{path:?} ran: {}", stdout(&out));
    }
}

#[test]
fn bench_keeps_the_baselines_at_any_size() {
    let all = "uds,tcp,udp,unixgram,fifo,mq,shm";
    let out = short_bench(all, &["--size", "1024", "--csv"]);
    assert!(out.status.success(), "{out:?}");
    let csv = stdout(&out);
    for scheme in all.split(',') {
        let row = format!("{scheme},baseline,ok,,1024,");
        assert!(csv.contains(&row), "no {row} in\n{csv}");
    }
}

#[test]
fn bench_keeps_the_cpus_taskset_allows_and_says_so() {
    let out = Command::new("taskset")
        .args(["-c", "0", IPCKIT, "bench", "--quick", "--count", "100"])
        .args(["--transports", "uds,shm"])
        .output()
        .expect("taskset (util-linux)");
    assert!(out.status.success(), "{out:?}");
    let header = stdout(&out).lines().next().unwrap_or_default().to_owned();
    assert!(
        header.contains("client and servers on CPU 0"),
        "under taskset -c 0: {header}"
    );
    // --cpus chooses among the CPUs allowed, and refuses others.
    let out = short_bench("uds", &["--cpus", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("client and servers on CPU 0, of 0 (--cpus)"));
    let out = Command::new("taskset")
        .args([
            "-c",
            "0",
            IPCKIT,
            "bench",
            "--cpus",
            "1",
            "--transports",
            "uds",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("CPU 1 is not one this process may use (0)"),
        "{stderr}"
    );
}

/// A framed `request` at a line listener, at a plain socket that never answers, or at one
/// that echoes what it is sent, is told
/// that the peer does not speak the ipckit handshake, within its own `--timeout`, and is
/// shown `?framing=line`; it is not told that the server is busy.
#[test]
fn a_framing_mismatch_is_named_within_the_request_timeout() {
    let dir = Scratch::new("mismatch");
    let line = dir.sock("line.sock");
    let _line = Background::start(
        IPCKIT,
        &[
            "listen",
            &format!("uds://{line}?framing=line"),
            "--timeout",
            "30s",
        ],
    );
    wait_for_socket(&line);
    let plain = dir.sock("plain.sock");
    let _plain = Background::start("socat", &["-u", &format!("UNIX-LISTEN:{plain}"), "-"]);
    wait_for_socket_file(&plain);
    let echo = dir.sock("echo.sock");
    let _echo = Background::start("socat", &[&format!("UNIX-LISTEN:{echo},fork"), "EXEC:cat"]);
    wait_for_socket_file(&echo);
    for path in [&line, &plain, &echo] {
        let out = ipckit(&["request", &format!("uds://{path}"), "hi", "--timeout", "2s"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path}: {out:?}");
        assert!(stderr.contains("handshake"), "{path}: {stderr}");
        assert!(stderr.contains("?framing=line"), "{path}: {stderr}");
        assert!(!stderr.contains("busy"), "{path}: {stderr}");
    }
}
