//! `agentctl run` through the built binary against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TestServer, doc};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// An AgentProvider running `/bin/sh -c SCRIPT` and an Agent `agent` using it.
fn shell_agent(s: &TestServer, agent: &str, script: &str) {
    let provider = format!("sh-{agent}");
    let manifest = format!(
        "{}---\n{}",
        doc("AgentProvider", &provider, &format!("  binary: /bin/sh\n  argsTemplate: [\"-c\", \"{script}\"]\n")),
        doc("Agent", agent, &format!("  providerRef:\n    name: {provider}\n")),
    );
    let f = s.write(&format!("{agent}.yaml"), &manifest);
    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn submit_creates_a_pending_run_that_list_filters() {
    let s = TestServer::start_with(&["--no-controller"]);
    shell_agent(&s, "hello", "echo hi");

    let out = s.ctl(&["run", "submit", "--agent", "hello", "--text", "say hi", "--name", "r1"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "agentrun/r1 submitted\n"), "{out:?}");

    let out = s.ctl(&["run", "get", "r1", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = json(&out.stdout);
    assert_eq!(run["spec"]["agentRef"]["name"], "hello");
    assert_eq!(run["spec"]["implementation"]["inline"]["text"], "say hi");
    assert_eq!(run["status"]["phase"], "Pending", "{run}");

    // Without --name the server generates one from the agent's.
    let out = s.ctl(&["run", "submit", "--agent", "hello", "--text", "again", "-o", "name"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("agentrun/hello-"), "{out:?}");

    let out = s.ctl(&["run", "list", "--phase", "Pending"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("NAME"), "{out:?}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("r1 ") && l.contains("Pending") && l.contains("hello")),
        "{out:?}"
    );

    let out = s.ctl(&["run", "list", "--agent", "other"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("r1"), "{out:?}");

    let out = s.ctl(&["run", "list", "--phase", "Running", "--agent", "hello"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("r1"), "{out:?}");

    let out = s.ctl(&["run", "list", "--agent", "hello", "-A", "-o", "name"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.lines().any(|l| l == "agentrun/r1"), "{out:?}");
}

#[test]
fn idempotent_resubmission() {
    let s = TestServer::start();
    shell_agent(&s, "hello", "echo hi");
    let submit = |text: &str, name: &str| {
        s.ctl(&["run", "submit", "--agent", "hello", "--text", text, "--idempotency-key", "k1", "--name", name])
    };

    let out = submit("say hi", "first");
    assert_eq!((out.code, out.stdout.as_str()), (0, "agentrun/first submitted\n"), "{out:?}");

    // The same key and spec answers the run that exists, whatever name the retry carries.
    let out = submit("say hi", "second");
    assert_eq!((out.code, out.stdout.as_str()), (0, "agentrun/first already submitted (idempotent)\n"), "{out:?}");

    // A different spec with the same key is a conflict.
    let out = submit("say something else", "third");
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.starts_with("error: "), "{out:?}");

    let out = s.ctl(&["run", "get", "second"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn a_missing_agent_is_invalid_input() {
    let s = TestServer::start();
    let out = s.ctl(&["run", "submit", "--agent", "nobody", "--text", "say hi"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("MissingAgent"), "{out:?}");
    assert_eq!(out.stdout, "");
}

#[test]
fn wait_on_a_pending_run_times_out() {
    let s = TestServer::start_with(&["--no-controller"]);
    shell_agent(&s, "hello", "echo hi");
    let out = s.ctl(&["run", "submit", "--agent", "hello", "--text", "say hi", "--name", "stuck"]);
    assert_eq!(out.code, 0, "{out:?}");

    let out = s.ctl(&["run", "wait", "stuck", "--timeout", "1s"]);
    assert_eq!(out.code, 11, "{out:?}");
    assert!(out.stderr.contains("timed out after 1s waiting for agentrun/stuck (phase Pending)"), "{out:?}");

    let out = s.ctl(&["run", "wait", "nope", "--timeout", "1s"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn submit_and_wait_with_the_controller() {
    let s = TestServer::start();
    shell_agent(&s, "hello", "echo hi");
    shell_agent(&s, "broken", "exit 3");

    // A generous deadline: the run itself takes well under a second.
    let out = s.ctl(&[
        "run",
        "submit",
        "--agent",
        "hello",
        "--text",
        "say hi",
        "--name",
        "ok",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    assert_eq!(out.code, 0, "{out:?}\nserver log:\n{}", s.log());
    // The outcome, then the run's log.
    assert!(
        out.stdout
            .starts_with("agentrun/ok submitted\nagentrun/ok Succeeded (exit code 0)\n--- log of agentrun/ok ---\n"),
        "{out:?}"
    );
    assert!(out.stdout.ends_with("hi\n"), "{out:?}");

    // Waiting again on a finished run answers at once.
    let out = s.ctl(&["run", "wait", "ok", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(json(&out.stdout)["status"]["phase"], "Succeeded");

    let out = s.ctl(&[
        "run",
        "submit",
        "--agent",
        "broken",
        "--text",
        "fail",
        "--name",
        "bad",
        "--retry-limit",
        "0",
        "--wait",
        "--wait-timeout",
        "60s",
    ]);
    assert_eq!(out.code, 9, "{out:?}\nserver log:\n{}", s.log());
    assert!(out.stdout.contains("agentrun/bad Failed (exit code 3"), "{out:?}");

    let out = s.ctl(&["run", "list", "--phase", "Succeeded", "-o", "name"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "agentrun/ok\n"), "{out:?}");
}

/// Polls `f` until it returns `Some`, failing after [`DEADLINE`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not before the deadline");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn phase(s: &TestServer, name: &str) -> String {
    let out = s.ctl(&["run", "get", name, "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    json(&out.stdout)["status"]["phase"].as_str().unwrap_or("").to_string()
}

fn submit(s: &TestServer, agent: &str, name: &str) {
    let out = s.ctl(&["run", "submit", "--agent", agent, "--text", "go", "--name", name, "--retry-limit", "0"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn cancel_a_pending_run_a_finished_one_and_a_missing_one() {
    let s = TestServer::start_with(&["--no-controller"]);
    shell_agent(&s, "idle", "true");
    submit(&s, "idle", "r1");
    submit(&s, "idle", "r2");

    let out = s.ctl(&["run", "cancel", "r1"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "agentrun/r1 cancelled\n"), "{out:?}");
    assert_eq!(phase(&s, "r1"), "Cancelled");

    let out = s.ctl(&["run", "cancel", "r1"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "agentrun/r1 already finished (phase Cancelled); nothing to cancel\n"),
        "{out:?}"
    );

    let out = s.ctl(&["run", "cancel", "r2", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let reply = json(&out.stdout);
    assert_eq!(reply["result"], "cancelled", "{reply}");
    assert_eq!(reply["run"]["status"]["phase"], "Cancelled", "{reply}");

    let out = s.ctl(&["run", "cancel", "nope"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stderr, "error: agentrun \"nope\" not found in namespace default\n", "{out:?}");

    // The cancelled runs are listed by phase; waiting on one says it was cancelled.
    let out = s.ctl(&["run", "list", "--phase", "Cancelled", "--agent", "idle", "-o", "name"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "agentrun/r1\nagentrun/r2\n"), "{out:?}");
    let out = s.ctl(&["run", "wait", "r1"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (10, "agentrun/r1 Cancelled (Cancelled: cancelled by user:bootstrap-admin)\n"),
        "{out:?}"
    );
}

#[test]
fn cancel_a_running_run() {
    let s = TestServer::start();
    shell_agent(&s, "sleeper", "sleep 30");
    submit(&s, "sleeper", "long");
    eventually("the run is Running", || (phase(&s, "long") == "Running").then_some(()));
    let out = s.ctl(&["run", "cancel", "long"]);
    assert_eq!(out.code, 0, "{out:?}");
    // `cancelling`, or `already finished (phase Cancelled)` if the controller acted between the
    // two requests of a retry; never anything else.
    assert!(
        out.stdout == "agentrun/long cancelling\n"
            || out.stdout == "agentrun/long already finished (phase Cancelled); nothing to cancel\n",
        "{out:?}"
    );
    let out = s.ctl(&["run", "get", "long", "-o", "json"]);
    let run = json(&out.stdout);
    assert_eq!(run["status"]["cancelRequestedBy"], "user:bootstrap-admin", "{run}");
}

#[test]
fn logs_of_a_finished_run_plain_and_followed() {
    let s = TestServer::start();
    shell_agent(&s, "talker", "echo line1; echo line2 >&2");
    shell_agent(&s, "broken", "echo oops; exit 3");
    for (agent, name) in [("talker", "ok"), ("broken", "bad")] {
        let out =
            s.ctl(&["run", "submit", "--agent", agent, "--text", "go", "--name", name, "--retry-limit", "0", "--wait"]);
        assert!(out.code == 0 || out.code == 9, "{out:?}");
    }

    let out = s.ctl(&["run", "logs", "ok"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.ends_with("line1\nline2\n"), "{out:?}");
    let plain = out.stdout;

    // Following a finished run prints the same text and ends with the run's outcome.
    let out = s.ctl(&["run", "logs", "ok", "-f"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, plain.as_str()), "{out:?}");
    let out = s.ctl(&["run", "logs", "bad", "--follow"]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(out.stdout.ends_with("oops\n"), "{out:?}");

    let out = s.ctl(&["run", "logs", "ok", "--tail-bytes", "6"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "line2\n"), "{out:?}");

    let out = s.ctl(&["run", "logs", "nope"]);
    assert_eq!(out.code, 3, "{out:?}");
    let out = s.ctl(&["run", "logs", "nope", "-f"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn logs_follow_prints_lines_as_the_run_writes_them() {
    let s = TestServer::start();
    shell_agent(&s, "ticker", "for i in 1 2 3; do echo line$i; sleep 0.3; done");
    submit(&s, "ticker", "tick");
    let out = s.ctl(&["run", "logs", "tick", "-f"]);
    assert_eq!(out.code, 0, "{out:?}\nserver log:\n{}", s.log());
    assert!(out.stdout.ends_with("line1\nline2\nline3\n"), "{out:?}");
}

#[test]
fn run_watch_prints_changes_until_the_run_ends() {
    let s = TestServer::start();
    shell_agent(&s, "slow", "sleep 1");
    shell_agent(&s, "broken", "exit 3");
    submit(&s, "slow", "w1");
    let out = s.ctl(&["run", "watch", "w1"]);
    assert_eq!(out.code, 0, "{out:?}\nserver log:\n{}", s.log());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("PHASE") && lines[0].contains("ATTEMPT"), "{out:?}");
    let last: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
    assert_eq!(&last[..3], ["w1", "Succeeded", "1"], "{out:?}");
    // One line per change: no line repeats the one before.
    assert!(lines.windows(2).all(|w| w[0] != w[1]), "{out:?}");

    submit(&s, "broken", "w2");
    let out = s.ctl(&["run", "watch", "w2"]);
    assert_eq!(out.code, 9, "{out:?}");
    assert!(out.stdout.lines().last().unwrap().contains("NonZeroExit"), "{out:?}");

    let out = s.ctl(&["run", "watch", "nope"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn run_watch_times_out_on_a_run_that_does_not_move() {
    let s = TestServer::start_with(&["--no-controller"]);
    shell_agent(&s, "idle", "true");
    submit(&s, "idle", "still");
    let out = s.ctl(&["run", "watch", "still", "--timeout", "1s"]);
    assert_eq!(out.code, 11, "{out:?}");
    assert!(out.stderr.contains("timed out after 1s waiting for agentrun/still (phase Pending)"), "{out:?}");
    assert!(out.stdout.lines().nth(1).unwrap().starts_with("still "), "{out:?}");
}

/// Runs `agentctl ARGS` in the background and hands its stdout lines over as they come.
fn spawn_lines(s: &TestServer, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut cmd = s.cmd(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` up to and including the first that satisfies `done`.
fn lines_until(rx: &mpsc::Receiver<String>, done: impl Fn(&str) -> bool) -> Vec<String> {
    let end = Instant::now() + DEADLINE;
    let mut lines = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no matching line before the deadline ({e}); got {lines:?}"));
        let stop = done(&line);
        lines.push(line);
        if stop {
            return lines;
        }
    }
}

#[test]
fn get_watch_streams_one_run_and_a_list_until_interrupted() {
    let s = TestServer::start();
    shell_agent(&s, "slow", "sleep 1");
    submit(&s, "slow", "g1");

    let (mut one, rx) = spawn_lines(&s, &["get", "agentrun", "g1", "-w"]);
    let lines = lines_until(&rx, |l| l.contains("Succeeded"));
    assert!(lines[0].starts_with("NAME"), "{lines:?}");
    assert!(lines[1..].iter().all(|l| l.starts_with("g1 ")), "{lines:?}");
    // It does not end by itself.
    assert!(one.try_wait().unwrap().is_none(), "get -w exited by itself");
    one.kill().unwrap();
    one.wait().unwrap();

    let (mut all, rx) = spawn_lines(&s, &["get", "agentruns", "-w"]);
    let first = lines_until(&rx, |l| l.starts_with("g1 "));
    assert!(first[0].starts_with("NAME"), "{first:?}");
    submit(&s, "slow", "g2");
    let later = lines_until(&rx, |l| l.starts_with("g2 ") && l.contains("Succeeded"));
    assert!(later.iter().all(|l| l.starts_with("g2 ")), "{later:?}");
    all.kill().unwrap();
    all.wait().unwrap();

    let out = s.ctl(&["get", "agentrun", "nope", "-w"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn describe_agentrun_shows_its_events() {
    let s = TestServer::start();
    shell_agent(&s, "hello", "echo hi");
    let out = s.ctl(&["run", "submit", "--agent", "hello", "--text", "go", "--name", "d1", "--wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = s.ctl(&["describe", "run", "d1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let events = out.stdout.split("\nEvents:\n").nth(1).unwrap_or_else(|| panic!("no Events section: {out:?}"));
    let rows: Vec<Vec<&str>> = events.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0][..5], ["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], "{events}");
    let types: Vec<&str> = rows[1..].iter().map(|r| r[0]).collect();
    assert_eq!(types, ["Submitted", "Started", "Succeeded"], "{events}");
    assert_eq!(rows[1][3], "user:bootstrap-admin", "{events}");

    // A run that has not started has one event; an agent has no Events section.
    let s2 = TestServer::start_with(&["--no-controller"]);
    shell_agent(&s2, "idle", "true");
    submit(&s2, "idle", "p1");
    let out = s2.ctl(&["describe", "run", "p1"]);
    assert!(out.stdout.contains("\nEvents:\n  TYPE"), "{out:?}");
    assert!(out.stdout.contains("  Submitted "), "{out:?}");
    let out = s2.ctl(&["describe", "agent", "idle"]);
    assert!(!out.stdout.contains("Events:"), "{out:?}");
}

/// The server starts each agent through `agentplane-runner` (built next to `agentctl`), not the
/// shell fallback: the agent's parent process is the runner.
#[test]
fn agents_are_started_by_the_agent_runner() {
    let s = TestServer::start();
    shell_agent(&s, "parent", "cat /proc/$PPID/comm");
    let out =
        s.ctl(&["run", "submit", "--agent", "parent", "--text", "x", "--name", "p", "--wait", "--wait-timeout", "60s"]);
    assert_eq!(out.code, 0, "{out:?}\nserver log:\n{}", s.log());
    // `comm` is cut to 15 characters.
    assert!(out.stdout.ends_with("agentplane-runn\n"), "{out:?}");
}

/// The server turns transparent huge pages off for itself (page-zeroing bursts after a start
/// stalled run starts), a setting that survives `exec`; the runner gives the agent the host's THP
/// policy back.
#[test]
fn agents_get_the_hosts_huge_page_policy_back() {
    let thp = |status: &str| status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string());
    let Some(ours) = thp(&std::fs::read_to_string("/proc/self/status").unwrap()) else {
        panic!("this kernel has no THP_enabled line in /proc/PID/status (Linux 5.0 or later has one)");
    };
    let s = TestServer::start();
    let server = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert_eq!(thp(&server).as_deref(), Some("0"), "the server keeps THP on:\n{server}");
    shell_agent(&s, "thp", "grep THP_enabled /proc/self/status");
    let out =
        s.ctl(&["run", "submit", "--agent", "thp", "--text", "x", "--name", "t", "--wait", "--wait-timeout", "60s"]);
    assert_eq!(out.code, 0, "{out:?}\nserver log:\n{}", s.log());
    let agent = thp(&out.stdout).unwrap_or_else(|| panic!("no THP_enabled line from the agent: {out:?}"));
    assert_eq!(agent, ours, "the agent did not get the host's THP policy back: {out:?}");
}
