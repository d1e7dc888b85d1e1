//! `agentctl run` through the built binary against a real server.

mod common;

use common::{TestServer, doc};
use serde_json::Value;

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
    assert_eq!(out.stdout, "agentrun/ok submitted\nagentrun/ok Succeeded (exit code 0)\n", "{out:?}");

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
