//! `ipckit listen events://NAME` and `ipckit send events://NAME`: ETW from a shell, every
//! party a process of its own.

use super::*;

/// A name no other test or run uses.
fn events_url(tag: &str) -> String {
    format!("events://ipckit-cli-{tag}-{}", std::process::id())
}

/// Starts `ipckit -v listen ARGS...` and waits until it listens.
fn listener(args: &[&str]) -> Background {
    let mut process = Background::start(IPCKIT, &[&["-v", "listen"][..], args].concat());
    let mut stderr = BufReader::new(process.0.stderr.take().unwrap());
    let mut said = Vec::new();
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap();
        assert!(read > 0, "listen {args:?} ended before listening: {said:?}");
        if line.contains("listening") {
            break;
        }
        said.push(line);
    }
    process.1 = Some(stderr);
    process
}

/// Runs `ipckit send ARGS...` to its end and returns its pid.
fn send(args: &[&str]) -> u32 {
    let child = Command::new(IPCKIT)
        .arg("send")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "send {args:?}: {out:?}");
    pid
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// Two listeners at warning and one at every level, in processes of their own: each
/// prints every event at its levels, with its level, sequence number and writer's pid.
#[test]
fn listeners_at_a_level_each_print_every_event_at_it() {
    let url = events_url("levels");
    let warning: Vec<Background> = (0..2)
        .map(|_| {
            listener(&[
                &url,
                "--level",
                "warning",
                "--format",
                "json",
                "--count",
                "2",
                "--timeout",
                "20s",
            ])
        })
        .collect();
    let everything = listener(&[&url, "--format", "json", "--count", "3", "--timeout", "20s"]);
    let pids = [
        send(&[&url, "--level", "error", "disk full"]),
        send(&[&url, "--level", "verbose", "chatter"]),
        send(&[&url, "--level", "warning", "low space"]),
    ];
    let expect = |out: &Output, heard: &[(usize, &str, &str)]| {
        assert!(out.status.success(), "{out:?}");
        let lines = json_lines(out);
        assert_eq!(lines.len(), heard.len(), "{out:?}");
        let mut sequence = None;
        for (line, &(sent_by, text, level)) in lines.iter().zip(heard) {
            assert_eq!(line["text"], text, "{line}");
            assert_eq!(line["level"], level, "{line}");
            assert_eq!(line["peer"]["pid"], pids[sent_by], "{line}");
            let seq = line["sequence"].as_u64().expect("a sequence number");
            assert!(sequence.is_none_or(|s| seq > s), "{lines:?}");
            sequence = Some(seq);
        }
    };
    for listener in warning {
        expect(
            &listener.output(),
            &[(0, "disk full", "error"), (2, "low space", "warning")],
        );
    }
    expect(
        &everything.output(),
        &[
            (0, "disk full", "error"),
            (1, "chatter", "verbose"),
            (2, "low space", "warning"),
        ],
    );
}

/// A listener stopped (SIGSTOP) while a writer overflows a small ring prints
/// `{"lost":N}` when it resumes, then the newest events: N and what it printed add up to
/// what was sent.
#[test]
fn a_listener_that_fell_behind_prints_what_it_lost() {
    const LINES: usize = 500;
    let url = format!("{}?ring=4096", events_url("lost"));
    let mut slow = listener(&[&url, "--format", "json", "--timeout", "20s"]);
    let pid = nix::unistd::Pid::from_raw(slow.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut writer = Command::new(IPCKIT)
        .args(["send", &url])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = (0..LINES).map(|n| format!("event {n}\n")).collect();
    writer
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(writer.wait().unwrap().success());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    send(&[&url, "the end"]);
    let mut out = BufReader::new(slow.0.stdout.take().unwrap());
    let (mut lost, mut heard) = (0, Vec::new());
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "heard {heard:?}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(n) = value["lost"].as_u64() {
            lost += n;
            continue;
        }
        let text = value["text"].as_str().unwrap().to_owned();
        if text == "the end" {
            break;
        }
        heard.push(text);
    }
    assert!(
        lost > 0,
        "a stopped listener lost nothing of {LINES} events in 4 KiB"
    );
    assert_eq!(lost as usize + heard.len(), LINES, "heard {heard:?}");
    let expected: Vec<String> = (LINES - heard.len()..LINES)
        .map(|n| format!("event {n}"))
        .collect();
    assert_eq!(
        heard, expected,
        "what follows a loss is the newest, in order"
    );
}

/// `ipckit transports` lists events with the capabilities the library gives it.
#[test]
fn transports_lists_events_as_it_is() {
    let out = ipckit(&["transports", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scheme"] == "events")
        .unwrap();
    let events = ipckit::transport::find("events").unwrap();
    let caps = events.capabilities(&events.scratch_endpoint(&std::env::temp_dir(), "example"));
    assert_eq!(listed["capabilities"], serde_json::to_value(caps).unwrap());
    assert_eq!(listed["capabilities"]["broadcast"], true);
    let table = stdout(&ipckit(&["transports"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("events "))
        .expect("a row for events");
    assert!(row.contains("yes"), "{row}");
}
