//! The `ordo` command-line contract (DESIGN.md), checked by running the real
//! `ordo` binary against a real `ordo-broker` process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ordo_broker::testkit::BrokerProcess;

/// How long anything may take on a loaded machine before a test gives up.
/// Never a timing assertion: only a bound on waiting for something that must happen.
const PATIENCE: Duration = Duration::from_secs(30);

fn broker() -> BrokerProcess {
    BrokerProcess::start(&[])
}

/// `ordo` aimed at `broker` through ORDO_SERVER, with no token from the environment.
fn ordo(broker: &BrokerProcess) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ordo"));
    cmd.env("ORDO_SERVER", broker.addr().to_string())
        .env_remove("ORDO_TOKEN");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run ordo")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines of a child's pipe, read on a thread so a test can wait with a bound.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    fn next(&self, what: &str) -> String {
        self.0
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("no line while waiting for {what}: {e}"))
    }

    /// Lines until the pipe closes.
    fn rest(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.0.recv_timeout(PATIENCE) {
            out.push(line);
        }
        out
    }
}

/// A running `ordo sub` whose subscription the broker has confirmed.
struct Sub {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Sub {
    fn start(broker: &BrokerProcess, args: &[&str]) -> Sub {
        let mut child = ordo(broker)
            .arg("sub")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ordo sub");
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        let first = stderr.next("`subscribed`");
        assert_eq!(first, format!("subscribed {}", args[0]));
        Sub {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the process to exit; its exit code and the rest of stderr.
    fn finish(mut self) -> (i32, Vec<String>) {
        let status = wait_bounded(&mut self.child);
        (status, self.stderr.rest())
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_bounded(child: &mut Child) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exited, not killed by a signal");
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pub_template_replaces_n_from_1_to_count() {
    let b = broker();
    let sub = Sub::start(&b, &["ticks", "--count", "3"]);
    let out = run(ordo(&b).args(["pub", "ticks", "tick {n} of {n}", "--count", "3"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sub.stdout.next("tick 1"), "tick 1 of 1");
    assert_eq!(sub.stdout.next("tick 2"), "tick 2 of 2");
    assert_eq!(sub.stdout.next("tick 3"), "tick 3 of 3");
    let (code, _) = sub.finish();
    assert_eq!(code, 0);
}

#[test]
fn pub_confirm_exits_zero_once_confirmed() {
    let b = broker();
    let sub = Sub::start(&b, &["conf", "--count", "50"]);
    let out = run(ordo(&b).args(["pub", "conf", "m{n}", "--count", "50", "--confirm"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for n in 1..=50 {
        assert_eq!(sub.stdout.next("a confirmed message"), format!("m{n}"));
    }
    assert_eq!(sub.finish().0, 0);
}

#[test]
fn pub_from_stdin_publishes_each_line_as_it_arrives() {
    let b = broker();
    let sub = Sub::start(&b, &["lines"]);
    let mut publisher = ordo(&b)
        .args(["pub", "lines"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin: ChildStdin = publisher.stdin.take().unwrap();
    for i in 1..=3 {
        // Each line must reach the subscriber while stdin is still open.
        writeln!(stdin, "line {i}").unwrap();
        stdin.flush().unwrap();
        assert_eq!(sub.stdout.next("a line from stdin"), format!("line {i}"));
    }
    drop(stdin);
    assert_eq!(wait_bounded(&mut publisher), 0);
}

#[test]
fn pub_from_stdin_stops_after_count_lines() {
    let b = broker();
    let sub = Sub::start(&b, &["some", "--count", "2"]);
    let mut publisher = ordo(&b)
        .args(["pub", "some", "--count", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    // Stdin stays open: the publisher must exit on the count alone.
    stdin.write_all(b"a\nb\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(wait_bounded(&mut publisher), 0);
    assert_eq!(sub.stdout.next("a"), "a");
    assert_eq!(sub.stdout.next("b"), "b");
    assert_eq!(sub.finish().0, 0);
    drop(stdin);
}

#[test]
fn sub_json_has_exactly_the_contract_keys() {
    let b = broker();
    let sub = Sub::start(&b, &["j.>", "--json", "--count", "2"]);
    let out = run(ordo(&b).args(["pub", "j.text", "hello"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A payload that is not UTF-8, from stdin.
    let mut publisher = ordo(&b)
        .args(["pub", "j.bin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"\xff\xfe\x00\n")
        .unwrap();
    assert_eq!(wait_bounded(&mut publisher), 0);

    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let first: serde_json::Value = serde_json::from_str(&sub.stdout.next("json")).unwrap();
    assert_eq!(
        keys(&first),
        [
            "incarnation",
            "origin",
            "payload",
            "publisher",
            "seq",
            "topic"
        ]
    );
    assert_eq!(first["topic"], "j.text");
    assert_eq!(first["payload"], "hello");
    assert!(first["seq"].as_u64().unwrap() >= 1);
    let second: serde_json::Value = serde_json::from_str(&sub.stdout.next("json")).unwrap();
    assert_eq!(
        keys(&second),
        [
            "incarnation",
            "origin",
            "payload_b64",
            "publisher",
            "seq",
            "topic"
        ]
    );
    assert_eq!(second["payload_b64"], "//4A");
    assert_eq!(second["origin"], first["origin"]);
    assert_eq!(sub.finish().0, 0);
}

#[test]
fn sub_json_carries_gseq_on_total_topics() {
    let b = broker();
    let out = run(ordo(&b).args(["topic", "create", "tot", "--ordering", "total-seq"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sub = Sub::start(&b, &["tot", "--json", "--count", "2"]);
    let out = run(ordo(&b).args(["pub", "tot", "x{n}", "--count", "2"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let a: serde_json::Value = serde_json::from_str(&sub.stdout.next("json")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&sub.stdout.next("json")).unwrap();
    let (ga, gc) = (a["gseq"].as_u64().unwrap(), c["gseq"].as_u64().unwrap());
    assert_eq!(gc, ga + 1, "gseq grows by one per message");
}

#[test]
fn sub_piped_into_head_exits_zero() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let err = dir.path().join("err");
    // A real pipeline; the shell records `ordo sub`'s own exit status.
    let script = format!(
        "{{ \"$0\" sub piped 2>'{}'; echo $? >'{}'; }} | head -1",
        err.display(),
        status.display()
    );
    let mut pipeline = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_ordo"))
        .env("ORDO_SERVER", b.addr().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&err)
        .unwrap_or_default()
        .contains("subscribed piped")
    {
        assert!(Instant::now() < deadline, "sub never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Keep publishing until `head` has gone and `sub` noticed the closed pipe.
    let mut n = 0;
    while pipeline.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "pipeline did not end");
        n += 1;
        let out = run(ordo(&b).args(["pub", "piped", &format!("m{n}")]));
        assert_eq!(out.status.code(), Some(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut first = String::new();
    pipeline
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut first)
        .unwrap();
    assert_eq!(first, "m1\n");
    let code = std::fs::read_to_string(&status).unwrap();
    assert_eq!(code.trim(), "0", "ordo sub | head -1 must exit 0");
}

#[test]
fn exit_2_on_bad_usage() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_ordo")).arg("pub"));
    assert_eq!(out.status.code(), Some(2));
    let out = run(Command::new(env!("CARGO_BIN_EXE_ordo")).args([
        "topic",
        "create",
        "t",
        "--ordering",
        "sorted",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("total-isis"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exit_3_when_no_broker_listens() {
    // A port nobody listens on: bind, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    for via_env in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ordo"));
        if via_env {
            cmd.env("ORDO_SERVER", &addr).args(["topic", "list"]);
        } else {
            cmd.env_remove("ORDO_SERVER")
                .args(["--server", &addr, "topic", "list"]);
        }
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("cannot connect to {addr}: connection refused")),
            "{err}"
        );
        assert!(
            err.contains("ORDO_SERVER"),
            "the message says what to do: {err}"
        );
    }
}

#[test]
fn exit_4_on_declaration_conflict_naming_both_orderings() {
    let b = broker();
    let create =
        |ordering: &str| run(ordo(&b).args(["topic", "create", "c", "--ordering", ordering]));
    assert_eq!(create("fifo").status.code(), Some(0));
    assert_eq!(
        create("fifo").status.code(),
        Some(0),
        "same declaration again succeeds"
    );
    let out = create("causal");
    assert_eq!(out.status.code(), Some(4));
    let err = text(&out.stderr);
    assert!(err.contains("fifo") && err.contains("causal"), "{err}");
}

#[test]
fn exit_4_when_the_broker_refuses_a_publish() {
    let b = broker();
    // Without --confirm too: pub exits 0 only once the broker took everything.
    for confirm in [false, true] {
        let mut cmd = ordo(&b);
        cmd.args(["pub", "bad.*", "x"]);
        if confirm {
            cmd.arg("--confirm");
        }
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("bad.*"), "{}", text(&out.stderr));
    }
}

#[test]
fn exit_5_when_the_broker_shuts_down_under_a_subscriber() {
    let mut b = broker();
    let sub = Sub::start(&b, &["doomed"]);
    b.terminate();
    let (code, stderr) = sub.finish();
    assert_eq!(code, 5, "{stderr:?}");
    assert!(
        stderr.iter().any(|l| l.contains("disconnected")),
        "{stderr:?}"
    );
}

#[test]
fn exit_6_when_sub_times_out_before_count() {
    let b = broker();
    let sub = Sub::start(&b, &["quiet", "--count", "1", "--timeout", "0.5"]);
    let (code, stderr) = sub.finish();
    assert_eq!(code, 6, "{stderr:?}");
    assert!(stderr.iter().any(|l| l.contains("timed out")), "{stderr:?}");
}

#[test]
fn topic_list_and_cluster_as_json() {
    let b = broker();
    let out = run(ordo(&b).args(["topic", "create", "a.b", "--ordering", "causal", "--safe"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(ordo(&b).args(["topic", "list", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let topics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        topics
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "a.b", "ordering": "causal", "safe": true})),
        "{topics}"
    );
    let out = run(ordo(&b).args(["cluster", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = view["members"].as_array().unwrap();
    assert!(members.contains(&view["this"]), "{view}");
    assert!(
        view["view_id"].is_u64() && view["coordinator"].is_u64(),
        "{view}"
    );
    // A lone broker is a member of its own primary view.
    assert_eq!(
        (&view["state"], &view["primary"]),
        (&"member".into(), &true.into()),
        "{view}"
    );
    let out = run(ordo(&b).args(["cluster"]));
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with("state        member\n") && shown.contains("\nprimary      yes\n"),
        "{shown}"
    );
}

/// A stdin line above the broker's payload limit (here one that never ends)
/// is refused with exit 4 naming the limit, without `pub` reading it all
/// into memory; the lines before it were published.
#[test]
fn pub_refuses_an_endless_stdin_line_with_exit_4() {
    let b = BrokerProcess::start(&["--max-payload", "4KiB", "--max-frame", "64KiB"]);
    let sub = Sub::start(&b, &["huge", "--count", "1"]);
    let mut publisher = ordo(&b)
        .args(["pub", "huge"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    // Writes until `pub` stops reading (the pipe breaks) or 64 MiB went in.
    let writer = std::thread::spawn(move || {
        if stdin.write_all(b"first\n").is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let code = wait_bounded(&mut publisher);
    let mut err = String::new();
    publisher
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("4096"), "{err}");
    assert_eq!(sub.stdout.next("the line before"), "first");
    assert_eq!(sub.finish().0, 0);
    writer.join().unwrap();
}

/// Output commands whose reader went away (`ordo topic list | head -0`)
/// exit 0, like `sub`: the reader is done. They used to panic (exit 101).
#[test]
fn commands_exit_zero_when_stdout_is_closed() {
    let b = broker();
    let out = run(ordo(&b).args(["topic", "create", "closed.out", "--ordering", "fifo"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for args in [
        &["topic", "list"][..],
        &["topic", "list", "--json"],
        &["cluster"],
        &["cluster", "--json"],
        &["topic", "create", "closed.out", "--ordering", "fifo"],
    ] {
        let mut child = ordo(&b)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the command can have written anything.
        drop(child.stdout.take());
        let code = wait_bounded(&mut child);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(code, 0, "ordo {args:?} with stdout closed: {err}");
    }
}

#[test]
fn pub_exits_zero_when_stderr_is_closed() {
    let b = broker();
    let sub = Sub::start(&b, &["closed.err", "--count", "1"]);
    let mut child = ordo(&b)
        .args(["pub", "closed.err", "hello"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `sent 1 message(s)` then goes to a closed pipe: eprintln! would panic (101).
    drop(child.stderr.take());
    assert_eq!(wait_bounded(&mut child), 0);
    assert_eq!(sub.stdout.next("the message"), "hello");
}

#[test]
fn pub_flushes_what_it_read_on_sigint_and_exits_130() {
    let b = broker();
    let sub = Sub::start(&b, &["intr"]);
    let mut publisher = ordo(&b)
        .args(["pub", "intr"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin: ChildStdin = publisher.stdin.take().unwrap();
    let stderr = Lines::new(publisher.stderr.take().unwrap());
    // Once line 1 arrived the publisher is connected and catches signals.
    writeln!(stdin, "line 1").unwrap();
    stdin.flush().unwrap();
    assert_eq!(sub.stdout.next("line 1"), "line 1");
    for i in 2..=20 {
        writeln!(stdin, "line {i}").unwrap();
    }
    stdin.flush().unwrap();
    let killed = Command::new("kill")
        .args(["-INT", &publisher.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(
        wait_bounded(&mut publisher),
        130,
        "exit status after SIGINT"
    );
    // Every line it counted as sent reached the subscriber, in order.
    let report = stderr.next("the sent count");
    let sent: usize = report
        .strip_prefix("sent ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected report {report:?}"));
    assert!((1..=20).contains(&sent), "{report}");
    for i in 2..=sent {
        assert_eq!(
            sub.stdout.next("a line sent before the signal"),
            format!("line {i}")
        );
    }
    let rest: Vec<String> = stderr.rest();
    assert!(
        rest.iter().any(|l| l.contains("interrupted by SIGINT")),
        "{rest:?}"
    );
}
