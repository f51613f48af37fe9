//! `ipckit publish` and `ipckit subscribe`: shell pub/sub, each party a process of its
//! own, over every transport the issue names. A transport whose capabilities do not say
//! push yet is skipped with a message, so that its checks run once it pushes.

use super::*;

/// Whether this build's `scheme` pushes, as `ipckit transports --json` says.
pub(super) fn pushes(scheme: &str) -> bool {
    let out = ipckit(&["transports", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pushes = list
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["scheme"] == scheme && t["capabilities"]["push"] == true);
    if !pushes {
        eprintln!("skipped for {scheme}: its capabilities do not say push yet");
    }
    pushes
}

/// A running `ipckit publish`, its stderr read line by line as it says who comes and goes.
struct Publisher {
    process: Background,
    url: String,
    said: Vec<String>,
}

impl Publisher {
    /// Starts `ipckit -v publish URL ARGS...` and waits until it publishes.
    fn start(url: &str, args: &[&str]) -> Publisher {
        let mut process = Background::start(IPCKIT, &[&["-v", "publish", url][..], args].concat());
        process.1 = Some(BufReader::new(process.0.stderr.take().unwrap()));
        let mut publisher = Publisher {
            process,
            url: url.to_owned(),
            said: Vec::new(),
        };
        let line = publisher.wait_for("publishing standard input");
        // Given port 0, it says the port the kernel chose first.
        if let Some(chosen) = publisher
            .said
            .iter()
            .find_map(|l| l.strip_prefix("ipckit: listening on "))
        {
            publisher.url = chosen.to_owned();
        }
        let _ = line;
        publisher
    }

    /// Reads its stderr until a line contains `text`, and returns that line.
    fn wait_for(&mut self, text: &str) -> String {
        let stderr = self.process.1.as_mut().unwrap();
        loop {
            let mut line = String::new();
            let read = stderr.read_line(&mut line).unwrap();
            assert!(
                read > 0,
                "publish ended before saying {text:?}: {:?}",
                self.said
            );
            self.said.push(line.trim_end().to_owned());
            if line.contains(text) {
                return line;
            }
        }
    }

    fn stdin(&mut self) -> &mut std::process::ChildStdin {
        self.process.0.stdin.as_mut().unwrap()
    }
}

fn subscribe(url: &str, args: &[&str]) -> Background {
    Background::start(IPCKIT, &[&["subscribe", url][..], args].concat())
}

/// Reads one line of a subscriber's standard output.
fn next_line(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line
}

/// The URL of each transport the "Done when" names, in `dir`.
fn pubsub_urls(dir: &Scratch, tag: &str) -> Vec<(&'static str, String)> {
    let shm = format!("ipckit-cli-pubsub-{tag}-{}", std::process::id());
    vec![
        ("uds", format!("uds://{}", dir.sock("news.sock"))),
        ("tcp", "tcp://127.0.0.1:0".to_owned()),
        ("unixgram", format!("unixgram://{}", dir.sock("news.dgram"))),
        ("shm", format!("shm://{shm}")),
    ]
}

/// `ipckit publish URL` in one process and two `ipckit subscribe URL` in others: each
/// line of the publisher's standard input reaches both, and when its input ends the
/// publisher exits 0, which ends both subscribers with status 0, everything printed.
#[test]
fn publish_reaches_two_subscribers_over_every_transport_that_pushes() {
    let dir = Scratch::new("pubsub");
    for (scheme, url) in pubsub_urls(&dir, "two") {
        if !pushes(scheme) {
            continue;
        }
        let mut publisher = Publisher::start(&url, &["--wait-for", "2"]);
        let url = publisher.url.clone();
        let counted = subscribe(&url, &["--count", "3", "--timeout", "20s"]);
        let until_the_end = subscribe(&url, &["--timeout", "20s"]);
        publisher.wait_for("connected");
        publisher.wait_for("connected");
        assert!(
            publisher
                .said
                .iter()
                .any(|l| l.contains("(pid ") || l.contains("127.0.0.1") || scheme == "shm"),
            "{scheme}: who connected is said: {:?}",
            publisher.said
        );
        publisher.stdin().write_all(b"one\ntwo\nthree\n").unwrap();
        drop(publisher.process.0.stdin.take());
        for subscriber in [counted, until_the_end] {
            let out = subscriber.output();
            assert!(out.status.success(), "{scheme}: {out:?}");
            assert_eq!(stdout(&out), "one\ntwo\nthree\n", "{scheme}: {out:?}");
        }
        let out = publisher.process.output();
        assert!(out.status.success(), "{scheme}: {out:?}");
    }
}

/// A subscriber SIGKILLed while lines flow is seen leaving; the publisher goes on and the
/// other subscriber gets every line.
#[test]
fn a_subscriber_killed_mid_stream_does_not_stop_the_publisher() {
    let dir = Scratch::new("pubsub-kill");
    for (scheme, url) in pubsub_urls(&dir, "kill") {
        if !pushes(scheme) {
            continue;
        }
        let mut publisher = Publisher::start(&url, &["--wait-for", "2"]);
        let url = publisher.url.clone();
        let mut doomed = subscribe(&url, &["--timeout", "20s"]);
        let mut survivor = subscribe(&url, &["--count", "100", "--timeout", "20s"]);
        publisher.wait_for("connected");
        publisher.wait_for("connected");
        publisher.stdin().write_all(b"0\n").unwrap();
        let mut doomed_out = BufReader::new(doomed.0.stdout.take().unwrap());
        assert_eq!(next_line(&mut doomed_out), "0\n", "{scheme}");
        // The survivor reads before the burst too: a unixgram subscriber that has not yet
        // read the server's welcome takes net.unix.max_dgram_qlen pushes at most (module
        // docs of unixgram), and a broadcast skips it when full. Under load it once had
        // not by line 10, and printed 0 to 9 alone.
        let mut survivor_out = BufReader::new(survivor.0.stdout.take().unwrap());
        assert_eq!(next_line(&mut survivor_out), "0\n", "{scheme}");
        doomed.0.kill().unwrap();
        doomed.0.wait().unwrap();
        for n in 1..100 {
            publisher
                .stdin()
                .write_all(format!("{n}\n").as_bytes())
                .unwrap();
        }
        let out = survivor.output();
        assert!(out.status.success(), "{scheme}: {out:?}");
        let mut rest = String::new();
        survivor_out.read_to_string(&mut rest).unwrap();
        let lines: Vec<String> = (1..100).map(|n| format!("{n}\n")).collect();
        assert_eq!(rest, lines.concat(), "{scheme}");
        publisher.wait_for("left");
        drop(publisher.process.0.stdin.take());
        let out = publisher.process.output();
        assert!(out.status.success(), "{scheme}: {out:?}");
    }
}

/// Nothing publishing is status 3 with the command that would; too few pushes within
/// --timeout is 4; a signal ends a subscriber with 0.
#[test]
fn subscribe_exits_as_the_cli_says() {
    let dir = Scratch::new("pubsub-exit");
    let url = format!("uds://{}", dir.sock("none.sock"));
    let out = ipckit(&["subscribe", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        stderr.contains(&format!("ipckit publish '{url}'")),
        "{stderr}"
    );
    assert_eq!(ipckit(&["subscribe", "uds://"]).status.code(), Some(2));
    if !pushes("uds") {
        return;
    }
    let publisher = Publisher::start(&url, &[]);
    let out = subscribe(&url, &["--count", "1", "--timeout", "300ms"]).output();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 of 1"),
        "{out:?}"
    );
    let mut waiting = subscribe(&url, &[]);
    let mut publisher = publisher;
    // The first "connected" was the subscriber that timed out; the second is this one,
    // which has its signals in hand by then.
    publisher.wait_for("connected");
    publisher.wait_for("connected");
    let pid = nix::unistd::Pid::from_raw(waiting.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = waiting.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The publisher, its input ended, exits 0 too and removes its socket.
    drop(publisher.process.0.stdin.take());
    let out = publisher.process.output();
    assert!(out.status.success(), "{out:?}");
    assert!(!std::path::Path::new(&dir.sock("none.sock")).exists());
}

#[test]
fn help_says_what_publish_and_subscribe_do() {
    let top = stdout(&ipckit(&["--help"]));
    assert!(
        top.contains("subscribe") && top.contains("publish"),
        "{top}"
    );
    let help = stdout(&ipckit(&["subscribe", "--help"]));
    for says in ["--count", "--format", "server goes away", "publish"] {
        assert!(
            help.contains(says),
            "subscribe --help lacks {says:?}: {help}"
        );
    }
    let help = stdout(&ipckit(&["publish", "--help"]));
    for says in [
        "--wait-for",
        "overflow=disconnect",
        "standard error",
        "exits 0",
    ] {
        assert!(help.contains(says), "publish --help lacks {says:?}: {help}");
    }
}
