//! `agentctl takeover get|set` through the built binary against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, doc};

/// A server without the controller, holding Agent `coder` (a shell provider) and a production
/// Environment `prod`.
fn server_with_coder_and_prod() -> TestServer {
    let s = TestServer::start_with(&["--no-controller"]);
    let manifest = format!(
        "{}---\n{}---\n{}",
        doc("AgentProvider", "sh", "  binary: /bin/sh\n"),
        doc("Agent", "coder", "  providerRef:\n    name: sh\n"),
        doc("Environment", "prod", "  class: production\n"),
    );
    let f = s.write("m.yaml", &manifest);
    assert_eq!(s.ctl(&["apply", "-f", &f]).code, 0);
    s
}

#[test]
fn takeover_get_and_set_with_a_reason() {
    let s = server_with_coder_and_prod();

    let out = s.ctl(&["takeover", "get", "--agent", "coder", "--environment", "prod", "--level", "4"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Environment cap:  L2"), "{out:?}");
    assert!(out.stdout.contains("Earned:           L3 (never set"), "{out:?}");
    assert!(out.stdout.contains("Effective:        L2"), "{out:?}");

    // A reason is required (clap refuses before any request: exit 2).
    let out = s.ctl(&["takeover", "set", "--agent", "coder", "--level", "4"]);
    assert_eq!(out.code, 2, "{out:?}");
    // Out of range.
    let out = s.ctl(&["takeover", "set", "--agent", "coder", "--level", "7", "--reason", "x"]);
    assert_eq!(out.code, 2, "{out:?}");
    // An empty reason reaches the server and is refused there: invalid input.
    let out = s.ctl(&["takeover", "set", "--agent", "coder", "--level", "4", "--reason", " "]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("reason"), "{out:?}");

    let out = s.ctl(&["takeover", "set", "--agent", "coder", "--level", "1", "--reason", "new agent on probation"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "agents/coder earned level unset -> L1\n"), "{out:?}");
    let out = s.ctl(&["takeover", "set", "--environment", "prod", "--max-level", "1", "--reason", "freeze"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "environments/prod cap L2 -> L1\n"), "{out:?}");

    let out = s.ctl(&["takeover", "get", "--agent", "coder", "--environment", "prod"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Effective:        L1"), "{out:?}");
    assert!(out.stdout.contains("user:bootstrap-admin  unset -> L1  new agent on probation"), "{out:?}");
    assert!(out.stdout.contains("L2 -> L1  freeze"), "{out:?}");

    // The ledger has both changes.
    let out = s.ctl(&["ledger", "query", "--action", "takeover.changed", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.matches("\"takeover.changed\"").count(), 2, "{out:?}");

    let out = s.ctl(&["takeover", "set", "--agent", "ghost", "--level", "2", "--reason", "r"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn approval_list_approve_and_deny() {
    let s = server_with_coder_and_prod();
    // The admin submits; a second token (an approver) decides.
    for name in ["one", "two"] {
        let out = s.ctl(&[
            "run",
            "submit",
            "--agent",
            "coder",
            "--text",
            "deploy",
            "--environment",
            "prod",
            "--name",
            name,
            "--takeover-level",
            "2",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let out = s.ctl(&["token", "create", "--name", "ann", "--role", "approver"]);
    assert_eq!(out.code, 0, "{out:?}");
    let ann = out.stdout.trim().to_string();

    let out = s.ctl(&["approval", "list"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("NAME"), "{out:?}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("one-start ") && l.contains("Pending") && l.contains("prod")),
        "{out:?}"
    );

    // The submitter (admin) may not approve its own run's start.
    let out = s.ctl(&["approval", "approve", "one-start"]);
    assert_eq!(out.code, 13, "{out:?}");
    assert!(out.stderr.contains("separation of duties"), "{out:?}");

    let out = s.ctl(&["--token", &ann, "approval", "approve", "one-start", "--reason", "ticket 1"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "approval/one-start approved: agentrun/one may start\n"),
        "{out:?}"
    );
    let out = s.ctl(&["--token", &ann, "approval", "deny", "two-start", "--reason", "freeze"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "approval/two-start denied: agentrun/two ends Failed\n"),
        "{out:?}"
    );
    // Decided twice: conflict.
    let out = s.ctl(&["--token", &ann, "approval", "deny", "one-start"]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("already decided"), "{out:?}");
    let out = s.ctl(&["approval", "list", "--pending"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("one-start"), "{out:?}");
    let out = s.ctl(&["run", "get", "two", "-o", "json"]);
    assert!(out.stdout.contains("ApprovalDenied"), "{out:?}");
    let out = s.ctl(&["--token", &ann, "approval", "approve", "ghost"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn elevate_creates_a_request_an_authoriser_grants() {
    let s = TestServer::start_with(&["--no-controller"]);
    let env = "  class: production\n  emergency:\n    allowed: true\n    maxMinutes: 30\n    authorizers: [ann]\n";
    let f = s.write("e.yaml", &doc("Environment", "prod", env));
    assert_eq!(s.ctl(&["apply", "-f", &f]).code, 0);
    let out = s.ctl(&["elevate", "--environment", "prod", "--to", "L9", "--minutes", "5", "--reason", "x"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = s.ctl(&["elevate", "--environment", "prod", "--to", "L4", "--minutes", "90", "--reason", "incident"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("emergency limit of 30 minutes"), "{out:?}");
    let out = s.ctl(&["elevate", "--environment", "prod", "--to", "L4", "--minutes", "20", "--reason", "incident 77"]);
    assert_eq!(out.code, 0, "{out:?}");
    let name = out.stdout.trim().strip_prefix("approval/").unwrap().strip_suffix(" created").unwrap().to_string();
    assert!(out.stderr.contains("agentctl approval approve"), "{out:?}");
    let out = s.ctl(&["token", "create", "--name", "ann", "--role", "approver"]);
    let ann = out.stdout.trim().to_string();
    let out = s.ctl(&["--token", &ann, "approval", "approve", &name]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = s.ctl(&["get", "environment", "prod", "-o", "json"]);
    assert!(out.stdout.contains("\"elevation\""), "{out:?}");
    let out = s.ctl(&["elevate", "--environment", "ghost", "--to", "4", "--minutes", "5", "--reason", "r"]);
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn takeover_get_shows_a_suggested_raise_after_clean_runs() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("server.toml");
    std::fs::write(&cfg, "[governance]\nsuggest_after_clean_runs = 1\n").unwrap();
    let s = TestServer::start_with(&["--config", cfg.to_str().unwrap()]);
    let manifest = format!(
        "{}---\n{}",
        doc("AgentProvider", "sh", "  binary: /bin/sh\n  argsTemplate: [\"-c\", \"true\"]\n"),
        doc("Agent", "coder", "  providerRef:\n    name: sh\n"),
    );
    let f = s.write("m.yaml", &manifest);
    assert_eq!(s.ctl(&["apply", "-f", &f]).code, 0);
    let out = s.ctl(&["run", "submit", "--agent", "coder", "--text", "x", "--name", "one", "--wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = s.ctl(&["takeover", "get", "--agent", "coder"]);
        assert_eq!(out.code, 0, "{out:?}");
        if out.stdout.contains("Suggested:        L4 (pending a human") {
            assert!(out.stdout.contains("1 runs in a row succeeded"), "{out:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no suggestion shown: {out:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
