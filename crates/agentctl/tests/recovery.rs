//! Crash recovery with real processes: `kill -9` of the server while runs are Pending and
//! Running, then a restart. Every accepted run finishes; a Running run whose process is still
//! alive is re-adopted (not started again); one whose process died is failed as retryable and
//! retried; no run ever executes twice at the same time (each agent holds an exclusive `flock`
//! on a per-run lock file while it runs, and records a `DOUBLE` if it cannot take it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestServer, doc};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

fn runs(server: &TestServer) -> Vec<Value> {
    let out = server.ctl(&["get", "agentruns", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

fn phase_counts(runs: &[Value]) -> (usize, usize, usize) {
    let count = |p: &str| runs.iter().filter(|r| r["status"]["phase"] == p).count();
    (count("Pending"), count("Running"), count("Succeeded"))
}

fn wait_for<T>(server: &TestServer, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = runs(server)
                .iter()
                .map(|r| format!("{} {} {}", r["metadata"]["name"], r["status"]["phase"], r["status"]["conditions"]))
                .collect();
            panic!("timed out waiting for {what}; runs:\n{}\nserver log:\n{}", states.join("\n"), server.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn setup(server: &TestServer, out: &Path) {
    let script = r#"exec 9>>"$OUT_DIR/{{ agentRun.name }}.lock"
flock -n 9 || { echo "DOUBLE {{ agentRun.name }} {{ agentRun.attempt }}" >> "$OUT_DIR/double"; exit 1; }
echo "start {{ agentRun.name }} {{ agentRun.attempt }}" >> "$OUT_DIR/log"
i=0; while [ ! -e "$OUT_DIR/gate" ] && [ -d "$OUT_DIR" ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done
echo "end {{ agentRun.name }} {{ agentRun.attempt }}" >> "$OUT_DIR/log""#;
    let provider = format!(
        "apiVersion: agentplane.dev/v1alpha1\nkind: AgentProvider\nmetadata:\n  name: gated\nspec:\n  binary: /bin/sh\n  argsTemplate: [\"-c\", {}]\n  envTemplate:\n    OUT_DIR: {}\n",
        serde_json::to_string(script).unwrap(),
        serde_json::to_string(&out.display().to_string()).unwrap()
    );
    let agent =
        doc("Agent", "gated", "  providerRef:\n    name: gated\n  maxInFlight: 2\n  defaults:\n    retryLimit: 2\n");
    let file = server.write("setup.yaml", &format!("{provider}---\n{agent}"));
    let res = server.ctl(&["apply", "-f", &file]);
    assert_eq!(res.code, 0, "{res:?}");
}

#[test]
fn kill_9_with_pending_and_running_runs_loses_nothing_and_runs_nothing_twice() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().to_path_buf();
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("server.toml");
    std::fs::write(&cfg, "[controller]\nretry_base_seconds = 0.1\nretry_max_seconds = 0.5\ngrace_seconds = 1\n")
        .unwrap();
    let cfg = cfg.display().to_string();
    let server = TestServer::start_with(&["--config", &cfg]);
    setup(&server, &out);
    for i in 0..5 {
        let name = format!("r{i}");
        let res = server.ctl(&["run", "submit", "--agent", "gated", "--text", "wait for the gate", "--name", &name]);
        assert_eq!(res.code, 0, "{res:?}");
    }
    // Two run (maxInFlight 2), three wait; both running agents have started.
    wait_for(&server, "2 Running and 3 Pending", || {
        let rs = runs(&server);
        let started = std::fs::read_to_string(out.join("log")).unwrap_or_default().lines().count();
        (phase_counts(&rs) == (3, 2, 0) && started == 2).then_some(())
    });
    let running: Vec<String> = runs(&server)
        .iter()
        .filter(|r| r["status"]["phase"] == "Running")
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let dir = server.kill9();

    // While the server is down, one running agent dies (its whole process group).
    let victim = &running[0];
    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(format!("data/runs/default/{victim}/.agent/status.json"))).unwrap(),
    )
    .unwrap();
    let pgid = status["pgid"].as_i64().or(status["pid"].as_i64()).expect("the status file has the process group");
    let killed = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status().unwrap();
    assert!(killed.success());

    let server = TestServer::start_in_with(dir, &["--config", &cfg]);
    // The dead attempt is noticed and scheduled for a retry (it waits for capacity like any
    // pending run); the live one is re-adopted.
    wait_for(&server, "the dead attempt to be failed as retryable", || {
        let rs = runs(&server);
        let v = rs.iter().find(|r| r["metadata"]["name"] == victim.as_str())?;
        assert_ne!(v["status"]["phase"], "Failed", "{victim} must be retried, not failed: {v}");
        let lost =
            v["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "InProgress" && c["reason"] == "Lost");
        lost.then_some(())
    });
    std::fs::write(out.join("gate"), "").unwrap();
    let all = wait_for(&server, "every run to succeed", || {
        let rs = runs(&server);
        (phase_counts(&rs).2 == 5).then_some(rs)
    });

    assert!(
        !out.join("double").exists(),
        "a run executed twice at once: {:?}",
        std::fs::read_to_string(out.join("double"))
    );
    let log = std::fs::read_to_string(out.join("log")).unwrap();
    let starts: Vec<&str> = log.lines().filter(|l| l.starts_with("start ")).collect();
    let mut unique = starts.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), starts.len(), "an attempt was started twice: {log}");
    for r in &all {
        let name = r["metadata"]["name"].as_str().unwrap();
        let attempt = r["status"]["attempt"].as_u64().unwrap();
        if name == victim {
            assert_eq!(attempt, 2, "the attempt that died is retried once: {r}");
        } else {
            assert_eq!(attempt, 1, "{name} ran once (re-adopted or started after the restart): {r}");
            assert_eq!(starts.iter().filter(|l| l.starts_with(&format!("start {name} "))).count(), 1, "{log}");
        }
    }
    // The re-adopted agent's attempt finished normally (its process was never started again).
    let survivor = &running[1];
    assert!(log.contains(&format!("end {survivor} 1")), "{log}");
    let res = server.ctl(&["ledger", "verify"]);
    assert_eq!(res.code, 0, "{res:?}");
}
