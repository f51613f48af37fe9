//! The command in a shell's pipelines and scripts: standard input cut as told, standard
//! output whose reader leaves, exit statuses, logging flags, completions and help.

use super::*;

/// Sends `message` until the server at `url` takes it (it may not be up yet).
fn send_until_heard(url: &str, message: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ipckit(&["send", url, message]).status.success() {
        assert!(Instant::now() < deadline, "{url} never took a message");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ipckit` with `input` on its standard input.
fn ipckit_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(IPCKIT)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `ipckit listen URL | head -1` ends when head does, with status 0 and nothing said,
/// whether it learns it from the pipe or from a write that fails, and removes what it
/// made.
#[test]
fn listen_into_head_ends_quietly_and_cleans_up() {
    let dir = Scratch::new("head");
    let shm = format!("ipckit-cli-head-{}", std::process::id());
    let cases = [
        (format!("uds://{}", dir.sock("h.sock")), dir.sock("h.sock")),
        (format!("fifo://{}", dir.sock("h.fifo")), dir.sock("h.fifo")),
        (format!("shm://{shm}"), format!("/dev/shm/ipckit.{shm}")),
    ];
    for (url, made) in cases {
        let mut head = Command::new("head")
            .arg("-1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let listen = Background(
            Command::new(IPCKIT)
                .args(["listen", &url, "--timeout", "60s"])
                .stdout(head.stdin.take().unwrap())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            None,
        );
        send_until_heard(&url, "one");
        let mut first = String::new();
        head.stdout
            .take()
            .unwrap()
            .read_to_string(&mut first)
            .unwrap();
        assert_eq!(first, "one\n", "{url}");
        assert!(head.wait().unwrap().success());
        // Heard or not (the listener may be gone already), it must not be a failure.
        let _ = ipckit(&["send", &url, "two"]);
        let out = listen.output();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{url}: listen | head -1 ended with {out:?}"
        );
        assert!(
            !std::path::Path::new(&made).exists(),
            "{url}: listen | head -1 left {made}"
        );
    }
}

#[test]
fn request_reads_its_message_from_stdin() {
    let dir = Scratch::new("request-stdin");
    let url = format!("uds://{}", dir.sock("r.sock"));
    let _server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
    assert!(request_until_served(&url, "ready?").status.success());
    let out = ipckit_with_stdin(
        &["request", &url, "-", "--format", "hex"],
        b"two\nlines\0and a nul",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "74776f0a6c696e657300616e642061206e756c\n");
}

/// `send` cuts standard input at newlines, at NULs with -0, not at all with --whole, and
/// strips a line's `\r` with --crlf.
#[test]
fn send_cuts_stdin_as_told() {
    let dir = Scratch::new("send-cuts");
    let url = format!("uds://{}", dir.sock("c.sock"));
    for (flags, input, expected) in [
        (&["--whole"][..], &b"a\nb\0c\n"[..], "610a6200630a\n"),
        (&["-0"][..], &b"x\ny\0z\0"[..], "780a79\n7a\n"),
        (&["--null"][..], &b"\xff\n\0"[..], "ff0a\n"),
        (&["--crlf"][..], &b"p\r\nq\r\n"[..], "70\n71\n"),
    ] {
        let count = expected.lines().count().to_string();
        let listener = Background::start(
            IPCKIT,
            &[
                "listen",
                &url,
                "--count",
                &count,
                "--format",
                "hex",
                "--timeout",
                "20s",
            ],
        );
        wait_for_socket(&dir.sock("c.sock"));
        let sent = ipckit_with_stdin(&[&["send", url.as_str()][..], flags].concat(), input);
        assert!(sent.status.success(), "{flags:?}: {sent:?}");
        let out = listener.output();
        assert!(out.status.success(), "{flags:?}: {out:?}");
        assert_eq!(stdout(&out), expected, "{flags:?}");
    }
    let out = ipckit(&["send", &url, "text", "--whole"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `serve --exec CMD` runs CMD per message through `sh -c`, its stdout the reply; a CMD
/// that fails or runs too long refuses the request, saying how, and the server goes on.
#[test]
fn serve_exec_answers_with_what_the_command_prints() {
    let dir = Scratch::new("exec");
    let url = format!("uds://{}", dir.sock("e.sock"));
    let cmd = r#"x=$(cat)
        if [ "$x" = slow ]; then sleep 30; fi
        if [ "$x" = fail ]; then echo "no good: $x" >&2; echo more >&2; exit 3; fi
        printf '%s!' "$x" | tr a-z A-Z"#;
    let _server = Background::start(
        IPCKIT,
        &["serve", &url, "--exec", cmd, "--exec-timeout", "1s"],
    );
    let out = request_until_served(&url, "hello");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "HELLO!\n");

    let out = ipckit(&["request", &url, "fail", "--timeout", "10s"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        said.contains("its command exited with status 3: no good: fail") && !said.contains("more"),
        "{said}"
    );

    let out = ipckit(&["request", &url, "slow", "--timeout", "20s"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        said.contains("--exec-timeout") && said.contains("killed"),
        "{said}"
    );

    let out = ipckit(&["request", &url, "after", "--timeout", "10s"]);
    assert_eq!(stdout(&out), "AFTER!\n", "{out:?}");

    // A one-way message runs CMD too.
    let log = dir.sock("one-way.log");
    let oneway = format!("uds://{}", dir.sock("o.sock"));
    let _logger = Background::start(
        IPCKIT,
        &["serve", &oneway, "--exec", &format!("cat >> '{log}'")],
    );
    send_until_heard(&oneway, "one-way");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log).unwrap_or_default() != "one-way" {
        assert!(
            Instant::now() < deadline,
            "CMD never ran for a one-way message"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_without_an_answer_says_what_it_can_do() {
    let out = ipckit(&["serve", "uds://@ipckit-cli-no-answer"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(said.contains("--echo") && said.contains("--exec"), "{said}");
}

/// Exit statuses tell nothing listening (3), timed out (4) and refused (5) apart, and
/// `--help` lists them; a client's hint names a command to start a server, a server's
/// error does not.
#[test]
fn exit_codes_tell_nothing_listening_timed_out_and_refused_apart() {
    let dir = Scratch::new("exit-codes");
    let missing = format!("uds://{}", dir.sock("missing.sock"));
    let out = ipckit(&["send", &missing, "x"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        said.contains(&format!("`ipckit listen '{missing}'`")),
        "{said}"
    );
    // The server's URL in the hint drops what only a client takes.
    let waited = format!("{missing}?connect_timeout=10ms");
    let said = String::from_utf8_lossy(&ipckit(&["send", &waited, "x"]).stderr).into_owned();
    assert!(
        said.contains(&format!("). To start one: `ipckit listen '{missing}'`")),
        "{said}"
    );
    let out = ipckit(&["request", &missing, "x"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`ipckit serve --echo '"));

    let out = ipckit(&[
        "listen",
        "uds:///nonexistent-ipckit-dir/x.sock",
        "--timeout",
        "1s",
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("`ipckit"),
        "{out:?}"
    );

    assert_eq!(ipckit(&["send", "foo://x", "x"]).status.code(), Some(2));
    let out = ipckit(&["listen", &missing, "--count", "1", "--timeout", "50ms"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    let slow = format!("uds://{}", dir.sock("slow.sock"));
    let _slow = Background::start(
        IPCKIT,
        &["serve", &slow, "--exec", "sleep 30", "--exec-timeout", "3s"],
    );
    let refusing = format!("uds://{}", dir.sock("refusing.sock"));
    let _refusing = Background::start(IPCKIT, &["serve", &refusing, "--exec", "exit 1"]);
    wait_for_socket(&dir.sock("slow.sock"));
    let out = ipckit(&["request", &slow, "x", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    wait_for_socket(&dir.sock("refusing.sock"));
    let out = ipckit(&["request", &refusing, "x", "--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    let help = stdout(&ipckit(&["--help"]));
    for line in [
        "Exit status:",
        "  3  nothing listening",
        "  4  timed out",
        "  5  refused",
        "  6  the method called failed",
        "  7  no such object or method",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
}

/// -q and -v set the log level, over IPCKIT_LOG when given.
#[test]
fn quiet_and_verbose_set_the_log_level_over_ipckit_log() {
    let dir = Scratch::new("log-level");
    let url = format!("uds://{}", dir.sock("l.sock"));
    let said = |flags: &[&str], env: Option<&str>| {
        let mut command = Command::new(IPCKIT);
        command
            .args(flags)
            .args(["listen", &url, "--timeout", "50ms"]);
        command.env_remove("IPCKIT_LOG");
        if let Some(env) = env {
            command.env("IPCKIT_LOG", env);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{flags:?} {env:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(!said(&[], None).contains("listening"));
    assert!(said(&["-v"], None).contains("listening"));
    assert!(said(&[], Some("info")).contains("listening"));
    assert!(said(&["-q"], Some("info")).is_empty());
    assert!(said(&["-vv"], Some("error")).contains("listening"));
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, says) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ipckit"),
        ("fish", "complete -c ipckit"),
    ] {
        let out = ipckit(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = stdout(&out);
        assert!(
            script.contains(says)
                && ["serve", "call", "introspect"]
                    .iter()
                    .all(|command| script.contains(command)),
            "{shell}: {script}"
        );
    }
    let dir = Scratch::new("completions");
    let script = dir.0.join("ipckit.bash");
    std::fs::write(&script, ipckit(&["completions", "bash"]).stdout).unwrap();
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("source '{}' && complete -p ipckit", script.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "bash could not load it: {out:?}");
}

/// `ipckit help urls` (and `ipckit urls`) gives every transport's forms and every option
/// with its default, from the library's own lists.
#[test]
fn help_urls_lists_every_form_and_option() {
    for args in [&["help", "urls"][..], &["urls"][..]] {
        let out = ipckit(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = stdout(&out);
        for transport in ipckit::transport::all() {
            for url in ipckit::endpoint::examples(transport.scheme()) {
                assert!(text.contains(url), "{args:?} lacks {url}:\n{text}");
            }
        }
        assert!(
            text.contains("#OBJECT"),
            "{args:?} does not name objects:\n{text}"
        );
        for option in ipckit::endpoint::UrlOption::all() {
            let setting = format!("{}={}", option.key(), option.default().unwrap_or(""));
            assert!(text.contains(&setting), "{args:?} lacks {setting}:\n{text}");
        }
    }
}

/// A `serve --exec` stopped by a signal ends the command it is running, whose client is
/// told, rather than wait for it or leave it behind.
#[test]
fn stopped_serve_exec_ends_its_command() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = Scratch::new("exec-stop");
    let url = format!("uds://{}", dir.sock("s.sock"));
    let server = Background::start(IPCKIT, &["serve", &url, "--exec", "sleep 60"]);
    wait_for_socket(&dir.sock("s.sock"));
    let request = Background::start(IPCKIT, &["request", &url, "x", "--timeout", "30s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let group = loop {
        if let Some(&pid) = children(server.0.id()).first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    kill(Pid::from_raw(server.0.id() as i32), Signal::SIGTERM).unwrap();
    let out = server.output();
    assert!(out.status.success(), "{out:?}");
    let out = request.output();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SIGTERM"),
        "{out:?}"
    );
    // Killed, its last members are reaped by init in a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(Pid::from_raw(-(group as i32)), None) != Err(nix::errno::Errno::ESRCH) {
        assert!(
            Instant::now() < deadline,
            "the command's process group outlived its server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Output into a pipe nobody reads is no failure: the command ends with status 0 and
/// says nothing, as `yes | head -1` does; a listener ends without waiting for a message.
#[test]
fn writing_into_a_closed_pipe_is_no_failure() {
    let dir = Scratch::new("closed-pipe");
    let url = format!("uds://{}", dir.sock("p.sock"));
    let _server = Background::start(IPCKIT, &["serve", &url, "--echo", "--timeout", "30s"]);
    assert!(request_until_served(&url, "ready?").status.success());
    let listened = format!("uds://{}", dir.sock("l.sock"));
    for args in [
        &["request", url.as_str(), "x"][..],
        &["transports"][..],
        &["completions", "bash"][..],
        &["listen", listened.as_str(), "--timeout", "20s"][..],
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Background(
            Command::new(IPCKIT)
                .args(args)
                .stdout(Stdio::from(write))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            None,
        )
        .output();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{args:?} into a closed pipe: {out:?}"
        );
    }
    assert!(!std::path::Path::new(&dir.sock("l.sock")).exists());
}
