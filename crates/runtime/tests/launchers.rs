#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Both ways the local adapter starts an agent — the agent-runner (`agentplane-runner`) and the
//! shell fallback (`setsid` + `sh`) — give the same session, group, exit statuses, cancel and
//! re-adoption behaviour.
//!
//! The runner binary is built with `agentctl` (`cargo test --workspace` builds it); running only
//! this crate's tests without it fails here, saying how to build it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentplane_api::{AgentProviderSpec, RunPhase};
use agentplane_runtime::{
    LocalAdapter, LocalConfig, RunSpec, RunnerSetting, RuntimeAdapter, RuntimeRef, RuntimeStatus, StatusReason,
};

const DEADLINE: Duration = Duration::from_secs(120);

fn runner() -> PathBuf {
    agentplane_sandbox::find_runner().unwrap_or_else(|| {
        panic!(
            "agentplane-runner is not built next to the test binaries: run `cargo build -p agentctl --bin \
             agentplane-runner` (or `cargo test --workspace`, which builds it), or set AGENTPLANE_RUNNER"
        )
    })
}

fn settings() -> Vec<RunnerSetting> {
    vec![RunnerSetting::At(runner()), RunnerSetting::ShellFallback]
}

fn adapter(base: &Path, runner: &RunnerSetting) -> LocalAdapter {
    LocalAdapter::with_config(
        base,
        LocalConfig {
            grace_period: Duration::from_millis(300),
            adopt_poll_interval: Duration::from_millis(50),
            runner: runner.clone(),
            ..Default::default()
        },
    )
}

fn sh(name: &str, script: &str) -> RunSpec {
    let p = AgentProviderSpec {
        binary: "sh".into(),
        args_template: vec!["-c".into(), script.into()],
        ..Default::default()
    };
    let mut s = RunSpec::new("team-a", name, &format!("uid-{name}"), p);
    s.agent_name = "coder".into();
    s
}

async fn wait_until(a: &LocalAdapter, r: &RuntimeRef, done: impl Fn(&RuntimeStatus) -> bool) -> RuntimeStatus {
    let start = Instant::now();
    loop {
        let s = a.status(r).await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < DEADLINE, "{r}: last status {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, session, ...
fn stat(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(text[text.rfind(')')? + 1..].split_whitespace().map(str::to_string).collect())
}

fn status_pid(dir: &Path) -> i32 {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(".agent/status.json")).unwrap()).unwrap();
    i32::try_from(v["pid"].as_i64().unwrap()).unwrap()
}

fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().parse::<i32>().ok().and_then(stat).is_some_and(|f| {
            f.first().map(String::as_str) != Some("Z") && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
    })
}

#[tokio::test]
async fn the_launcher_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let runner = runner();
    assert!(adapter(tmp.path(), &RunnerSetting::At(runner.clone())).launcher().contains(&*runner.to_string_lossy()));
    assert!(adapter(tmp.path(), &RunnerSetting::ShellFallback).launcher().contains("sh wrapper"));
    // A runner that is not there falls back rather than failing every run.
    let missing = adapter(tmp.path(), &RunnerSetting::At("/nonexistent/agentplane-runner".into()));
    assert!(missing.launcher().contains("sh wrapper"), "{}", missing.launcher());
    assert!(missing.has_session_isolation());
}

#[tokio::test]
async fn agents_get_their_own_session_and_group() {
    let my_session = stat(i32::try_from(std::process::id()).unwrap()).unwrap()[3].clone();
    for setting in settings() {
        let tmp = tempfile::tempdir().unwrap();
        let a = adapter(tmp.path(), &setting);
        // The agent (this sh) reports its own group and session.
        let r = a.submit(&sh("ids", "cut -d' ' -f5,6 /proc/$$/stat; exit 0")).await.unwrap();
        let st = wait_until(&a, &r, |s| s.phase.is_terminal()).await;
        assert_eq!(st.phase, RunPhase::Succeeded, "{setting:?}: {st:?}");
        let dir = a.run_dir("team-a", "ids");
        let log = std::fs::read_to_string(dir.join(".agent/runner.log")).unwrap();
        let leader = status_pid(&dir).to_string();
        let line = log.lines().find(|l| l.split(' ').count() == 2 && l.chars().all(|c| c.is_ascii_digit() || c == ' '));
        let ids: Vec<&str> = line.unwrap_or_else(|| panic!("{setting:?}: no ids in {log}")).split(' ').collect();
        assert_eq!(
            ids,
            vec![leader.as_str(), leader.as_str()],
            "{setting:?}: group and session are the started process"
        );
        assert_ne!(ids[1], my_session, "{setting:?}");
    }
}

#[tokio::test]
async fn exit_statuses_are_reported_as_a_shell_would() {
    for setting in settings() {
        let tmp = tempfile::tempdir().unwrap();
        let a = adapter(tmp.path(), &setting);
        for (name, script, phase, code) in [
            ("ok", "exit 0", RunPhase::Succeeded, 0),
            ("three", "exit 3", RunPhase::Failed, 3),
            ("killed", "kill -9 $$", RunPhase::Failed, 137),
        ] {
            let r = a.submit(&sh(name, script)).await.unwrap();
            let st = wait_until(&a, &r, |s| s.phase.is_terminal()).await;
            assert_eq!((st.phase, st.exit_code), (phase, Some(code)), "{setting:?} {name}: {st:?}");
            let recorded = std::fs::read_to_string(a.run_dir("team-a", name).join(".agent/exit-code")).unwrap();
            assert_eq!(recorded.trim(), code.to_string(), "{setting:?} {name}");
        }
    }
}

#[tokio::test]
async fn cancel_stops_every_process_of_the_group() {
    for setting in settings() {
        let tmp = tempfile::tempdir().unwrap();
        let a = adapter(tmp.path(), &setting);
        let r = a.submit(&sh("bg", "sleep 1000 & sleep 1000")).await.unwrap();
        wait_until(&a, &r, |s| s.phase == RunPhase::Running).await;
        let pgid = status_pid(&a.run_dir("team-a", "bg"));
        a.cancel(&r).await.unwrap();
        let st = wait_until(&a, &r, |s| s.phase.is_terminal()).await;
        assert_eq!((st.phase, st.reason), (RunPhase::Cancelled, Some(StatusReason::Cancelled)), "{setting:?}");
        let start = Instant::now();
        while group_alive(pgid) {
            assert!(start.elapsed() < DEADLINE, "{setting:?}: group {pgid} survived the cancel");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_restarted_adapter_learns_the_exit_status_of_an_adopted_agent() {
    for setting in settings() {
        let tmp = tempfile::tempdir().unwrap();
        let gate = tmp.path().join("gate");
        let script = format!("while [ ! -e {} ]; do sleep 0.05; done; exit 7", gate.display());
        let r = {
            let a = adapter(tmp.path(), &setting);
            let r = a.submit(&sh("later", &script)).await.unwrap();
            wait_until(&a, &r, |s| s.phase == RunPhase::Running).await;
            r
        };
        let b = adapter(tmp.path(), &setting);
        assert_eq!(b.status(&r).await.unwrap().phase, RunPhase::Running, "{setting:?}");
        std::fs::write(&gate, "").unwrap();
        let st = wait_until(&b, &r, |s| s.phase.is_terminal()).await;
        assert_eq!((st.phase, st.exit_code), (RunPhase::Failed, Some(7)), "{setting:?}: {st:?}");
    }
}
