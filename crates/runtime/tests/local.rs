#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The local adapter with real processes and real git repositories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agentplane_api::{AgentProviderSpec, EnvVar, EnvVarSource, InputFile, OutputArtifact, RunPhase};
use agentplane_runtime::{
    ErrorKind, LocalAdapter, LocalConfig, RunSpec, RuntimeAdapter, RuntimeRef, RuntimeStatus, SecretValue,
    StatusReason, StepSpec, WorkspaceSpec,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);

fn adapter(base: &Path) -> LocalAdapter {
    LocalAdapter::with_config(
        base,
        LocalConfig {
            grace_period: Duration::from_millis(300),
            adopt_poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    )
}

fn sh(script: &str) -> AgentProviderSpec {
    AgentProviderSpec { binary: "sh".into(), args_template: vec!["-c".into(), script.into()], ..Default::default() }
}

fn spec(name: &str, provider: AgentProviderSpec) -> RunSpec {
    let mut s = RunSpec::new("team-a", name, &format!("uid-{name}"), provider);
    s.agent_name = "coder".into();
    s
}

async fn wait_until(
    a: &LocalAdapter,
    r: &RuntimeRef,
    what: &str,
    done: impl Fn(&RuntimeStatus) -> bool,
) -> RuntimeStatus {
    let start = Instant::now();
    loop {
        let s = a.status(r).await.unwrap();
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < DEADLINE, "{r}: never {what}; last status {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finished(a: &LocalAdapter, r: &RuntimeRef) -> RuntimeStatus {
    wait_until(a, r, "finished", |s| s.phase.is_terminal()).await
}

async fn running(a: &LocalAdapter, r: &RuntimeRef) -> RuntimeStatus {
    wait_until(a, r, "running", |s| s.phase == RunPhase::Running).await
}

fn read(p: impl AsRef<Path>) -> String {
    String::from_utf8_lossy(&std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display())))
        .into_owned()
}

fn status_file(dir: &Path) -> Value {
    serde_json::from_str(&read(dir.join(".agent/status.json"))).unwrap()
}

fn pgid_of(dir: &Path) -> i32 {
    i32::try_from(status_file(dir)["pgid"].as_i64().unwrap()).unwrap()
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

async fn group_gone(pgid: i32) {
    let start = Instant::now();
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "process group {pgid} still has {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn succeeds_with_artifact_log_and_scrubbed_env() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut p = sh("echo hello-{{ agentRun.name }}; env | sort; printf data > \"$AGENT_ARTIFACTS_DIR/out.txt\"; \
                    cat ../task.md");
    p.env_template.insert("MODEL".into(), "{{agent.config.model}}".into());
    p.input_files.push(InputFile { path: "task.md".into(), content: "TASK: {{implementation.text}}".into() });
    p.output_artifacts.push(OutputArtifact { name: "out".into(), path: "artifacts/out.txt".into() });
    let mut s = spec("ok", p);
    s.agent.config.insert("model".into(), "m1".into());
    s.implementation.text = "say hi".into();
    s.gateway_url = Some("http://127.0.0.1:9/gw".into());
    s.agent.env.push(EnvVar { name: "FOO".into(), value: Some("bar".into()), value_from: None });
    s.agent.env.push(EnvVar {
        name: "TOKEN".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: agentplane_api::meta::SecretKeyRef { name: "tok".into(), key: None },
        }),
    });
    s.secrets.insert("tok".into(), SecretValue::new("s3cr3t-value"));
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!(st.phase, RunPhase::Succeeded, "{st:?}");
    assert_eq!(st.exit_code, Some(0));
    assert!(st.reason.is_none());
    assert!(!st.log_truncated);
    assert!(st.started_at.is_some() && st.finished_at.is_some());
    assert_eq!(st.artifacts.len(), 1, "{st:?}");
    let art = &st.artifacts[0];
    assert_eq!((art.name.as_str(), art.path.as_str(), art.size_bytes), ("out", "artifacts/out.txt", Some(4)));
    // sha256("data")
    assert_eq!(art.sha256.as_deref(), Some("3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"));

    let dir = a.run_dir("team-a", "ok");
    let log = read(dir.join(".agent/runner.log"));
    assert!(log.contains("hello-ok\n"), "{log}");
    assert!(log.contains("TASK: say hi"), "{log}");
    let env: Vec<(&str, &str)> = log.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(get("FOO"), Some("bar"));
    assert_eq!(get("TOKEN"), Some("s3cr3t-value"));
    assert_eq!(get("MODEL"), Some("m1"));
    assert_eq!(get("PATH"), Some("/usr/local/bin:/usr/bin:/bin"));
    assert_eq!(get("HOME"), Some(dir.to_str().unwrap()));
    assert_eq!(get("AGENT_RUN_NAME"), Some("ok"));
    assert_eq!(get("AGENT_RUN_UID"), Some("uid-ok"));
    assert_eq!(get("AGENT_RUN_NAMESPACE"), Some("team-a"));
    assert_eq!(get("AGENTPLANE_GATEWAY_URL"), Some("http://127.0.0.1:9/gw"));
    assert_eq!(get("AGENT_RUN_SPEC"), Some(dir.join("run.json").to_str().unwrap()));
    assert_eq!(get("AGENT_RUNNER_SPEC_PATH"), Some(dir.join("agent-runner.json").to_str().unwrap()));
    // Scrubbed: cargo sets CARGO_MANIFEST_DIR for this test process; the agent must not see it.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    assert!(get("CARGO_MANIFEST_DIR").is_none(), "{log}");
    let allowed = [
        "FOO",
        "TOKEN",
        "MODEL",
        "PATH",
        "HOME",
        "PWD",
        "AGENT_RUN_NAME",
        "AGENT_RUN_UID",
        "AGENT_RUN_NAMESPACE",
        "AGENT_RUN_ATTEMPT",
        "AGENT_RUN_SPEC",
        "AGENT_RUNNER_SPEC_PATH",
        "AGENT_ARTIFACTS_DIR",
        "AGENTPLANE_GATEWAY_URL",
    ];
    for (name, _) in &env {
        assert!(allowed.contains(name), "unexpected variable {name} in the agent's environment:\n{log}");
    }

    // The spec files exist and hold no secret.
    let runner: Value = serde_json::from_str(&read(dir.join("agent-runner.json"))).unwrap();
    assert_eq!(runner["agentRun"]["name"], "ok");
    assert_eq!(runner["implementation"]["text"], "say hi");
    assert!(dir.join("run.json").exists());
    for f in ["agent-runner.json", "run.json", ".agent/status.json"] {
        assert!(!read(dir.join(f)).contains("s3cr3t"), "{f} leaks the secret");
    }
    assert_eq!(status_file(&dir)["phase"], "Succeeded");
}

#[tokio::test]
async fn non_zero_exit_is_failed_and_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let r = a.submit(&spec("nonzero", sh("echo oops >&2; exit 3"))).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason, st.exit_code), (RunPhase::Failed, Some(StatusReason::NonZeroExit), Some(3)));
    assert!(st.retryable);
    assert!(read(a.run_dir("team-a", "nonzero").join(".agent/runner.log")).contains("oops"));
}

#[tokio::test]
async fn missing_binary_is_a_clear_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let p = AgentProviderSpec { binary: "no-such-agent-binary-xyz".into(), ..Default::default() };
    let r = a.submit(&spec("missing", p)).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason), (RunPhase::Failed, Some(StatusReason::MissingBinary)));
    assert!(!st.retryable);
    assert!(st.message.unwrap().contains("no-such-agent-binary-xyz"));
}

#[tokio::test]
async fn unknown_template_variable_is_a_template_error() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut p = sh("true");
    p.args_template.push("{{ parameters.nope }}".into());
    let r = a.submit(&spec("tmpl", p)).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason), (RunPhase::Failed, Some(StatusReason::TemplateError)));
    let msg = st.message.unwrap();
    assert!(msg.contains("argsTemplate[2]") && msg.contains("parameters.nope"), "{msg}");
    assert!(!st.retryable);
    let log = read(a.run_dir("team-a", "tmpl").join(".agent/runner.log"));
    assert!(log.contains("not started: TemplateError: argsTemplate[2]"), "{log}");
}

#[tokio::test]
async fn bad_specs_are_refused_at_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut secret = spec("secret", sh("true"));
    secret.agent.env.push(EnvVar {
        name: "X".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: agentplane_api::meta::SecretKeyRef { name: "other".into(), key: Some("k".into()) },
        }),
    });
    let e = a.submit(&secret).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidSpec);
    assert!(!e.retryable());
    assert!(e.message.contains("other/k"), "{e}");

    let mut escape = sh("true");
    escape.input_files.push(InputFile { path: "../../evil".into(), content: "x".into() });
    let e = a.submit(&spec("escape", escape)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidSpec);

    let mut traversal = spec("x", sh("true"));
    traversal.run.name = "..".into();
    assert_eq!(a.submit(&traversal).await.unwrap_err().kind, ErrorKind::InvalidSpec);

    assert_eq!(a.status(&RuntimeRef("local:team-a/nope/u/1".into())).await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(a.cancel(&RuntimeRef("garbage".into())).await.unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut s = spec("slow", sh("trap '' TERM; sleep 1000 & sleep 1000"));
    s.timeout_seconds = Some(1);
    let r = a.submit(&s).await.unwrap();
    running(&a, &r).await;
    let dir = a.run_dir("team-a", "slow");
    let pgid = pgid_of(&dir);
    // Both sleeps and the shells are in the group while it runs.
    let start = Instant::now();
    while group_members(pgid).len() < 3 {
        assert!(start.elapsed() < DEADLINE, "group never had its members");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason), (RunPhase::Failed, Some(StatusReason::TimedOut)), "{st:?}");
    assert!(st.retryable);
    group_gone(pgid).await;
    assert_eq!(status_file(&dir)["session"], a.has_session_isolation());
}

#[tokio::test]
async fn cancel_stops_the_group_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let r = a.submit(&spec("cancel-me", sh("sleep 1000 & sleep 1000"))).await.unwrap();
    running(&a, &r).await;
    let pgid = pgid_of(&a.run_dir("team-a", "cancel-me"));
    a.cancel(&r).await.unwrap();
    a.cancel(&r).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason), (RunPhase::Cancelled, Some(StatusReason::Cancelled)));
    assert!(!st.retryable);
    group_gone(pgid).await;
    a.cancel(&r).await.unwrap(); // cancel of a finished run: a no-op
    assert_eq!(a.status(&r).await.unwrap().phase, RunPhase::Cancelled);
}

#[tokio::test]
async fn submit_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec("once", sh("echo ran >> \"$HOME/count\""));
    let r = {
        let a = adapter(tmp.path());
        let (r1, r2) = tokio::join!(a.submit(&s), a.submit(&s));
        let r1 = r1.unwrap();
        assert_eq!(r1, r2.unwrap());
        assert_eq!(finished(&a, &r1).await.phase, RunPhase::Succeeded);
        assert_eq!(a.submit(&s).await.unwrap(), r1);
        r1
    };
    // A new adapter (a restarted server) does not run it again either.
    let b = adapter(tmp.path());
    assert_eq!(b.submit(&s).await.unwrap(), r);
    assert_eq!(b.status(&r).await.unwrap().phase, RunPhase::Succeeded);
    assert_eq!(read(b.run_dir("team-a", "once").join("count")), "ran\n");
}

#[tokio::test]
async fn retry_attempt_reuses_the_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut s = spec("retry", sh("echo try-$AGENT_RUN_ATTEMPT; exit 1"));
    let r1 = a.submit(&s).await.unwrap();
    assert_eq!(finished(&a, &r1).await.reason, Some(StatusReason::NonZeroExit));
    s.attempt = 2;
    let r2 = a.submit(&s).await.unwrap();
    assert_ne!(r1, r2);
    assert_eq!(finished(&a, &r2).await.reason, Some(StatusReason::NonZeroExit));
    let dir = a.run_dir("team-a", "retry");
    let log = read(dir.join(".agent/runner.log"));
    assert!(log.contains("try-1\n--- attempt 2 ---\ntry-2\n"), "{log}");
    assert!(dir.join(".agent/status.attempt-1.json").exists());
    // An older attempt than the recorded one is refused.
    s.attempt = 1;
    let b = adapter(tmp.path());
    assert_eq!(b.submit(&s).await.unwrap_err().kind, ErrorKind::InvalidSpec);
}

#[tokio::test]
async fn status_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (alive, killed) = {
        let a = adapter(tmp.path());
        let alive = a.submit(&spec("survivor", sh("echo before; sleep 1000"))).await.unwrap();
        let killed = a.submit(&spec("victim", sh("sleep 1000"))).await.unwrap();
        running(&a, &alive).await;
        running(&a, &killed).await;
        (alive, killed)
    }; // the adapter is dropped: the server "crashed"; the agents go on.
    let victim_pgid = pgid_of(&tmp.path().join("runs/team-a/victim"));
    let out = Command::new("kill").args(["-KILL", "--", &format!("-{victim_pgid}")]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    group_gone(victim_pgid).await;

    let b = adapter(tmp.path());
    assert_eq!(b.status(&alive).await.unwrap().phase, RunPhase::Running);
    let st = wait_until(&b, &killed, "lost", |s| s.phase.is_terminal()).await;
    assert_eq!((st.phase, st.reason), (RunPhase::Failed, Some(StatusReason::Lost)), "{st:?}");
    assert!(st.retryable);

    // The re-adopted run can still be cancelled, and its group goes.
    let survivor_dir = tmp.path().join("runs/team-a/survivor");
    let pgid = pgid_of(&survivor_dir);
    b.cancel(&alive).await.unwrap();
    let st = finished(&b, &alive).await;
    assert_eq!(st.phase, RunPhase::Cancelled, "{st:?}");
    group_gone(pgid).await;
    assert!(read(survivor_dir.join(".agent/runner.log")).contains("before\n"));
}

#[tokio::test]
async fn readopted_run_finishes_normally() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; echo after-restart; exit 7", gate.display());
    let r = {
        let a = adapter(tmp.path());
        let r = a.submit(&spec("later", sh(&script))).await.unwrap();
        running(&a, &r).await;
        r
    };
    let b = adapter(tmp.path());
    assert_eq!(b.status(&r).await.unwrap().phase, RunPhase::Running);
    std::fs::write(&gate, "").unwrap();
    let st = finished(&b, &r).await;
    assert_eq!((st.phase, st.exit_code, st.reason), (RunPhase::Failed, Some(7), Some(StatusReason::NonZeroExit)));
    let log = read(tmp.path().join("runs/team-a/later/.agent/runner.log"));
    assert!(log.contains("after-restart"), "{log}");
}

/// Peak memory of this test process (all tests in it).
fn peak_rss_bytes() -> u64 {
    let status = read("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// 1 GiB to stdout: the log keeps the last 10 MiB and says what was dropped; memory stays flat
/// because the output is streamed.
#[tokio::test]
async fn huge_output_is_truncated_to_the_cap() {
    const TOTAL: u64 = 1024 * 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let p = AgentProviderSpec {
        binary: "head".into(),
        args_template: vec!["-c".into(), TOTAL.to_string(), "/dev/zero".into()],
        ..Default::default()
    };
    let s = spec("flood", p);
    let cap = s.log_cap_bytes;
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!(st.phase, RunPhase::Succeeded, "{st:?}");
    assert!(st.log_truncated);
    let log = std::fs::read(a.run_dir("team-a", "flood").join(".agent/runner.log")).unwrap();
    let marker = format!("[agentplane: {} bytes of earlier output were dropped]\n", TOTAL - cap);
    assert!(log.starts_with(marker.as_bytes()), "{:?}", String::from_utf8_lossy(&log[..80.min(log.len())]));
    assert_eq!(log.len() as u64, marker.len() as u64 + cap);
    assert!(log[marker.len()..].iter().all(|b| *b == 0));
    // Streamed, never held in memory: the peak RSS of this whole test process stays far below it.
    let peak = peak_rss_bytes();
    assert!(peak < TOTAL / 2, "peak RSS {peak} bytes: the output was buffered");
}

// ------------------------------------------------------------------------------------------
// git workspaces

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A repository with `a.txt` = "one" tagged `v1`, then "two" on main.
fn make_repo(root: &Path) -> (PathBuf, String) {
    let repo = root.join("origin");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    git(&repo, &["add", "a.txt"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    let v1 = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("a.txt"), "two\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    (repo, v1)
}

#[tokio::test]
async fn git_workspace_is_cloned_at_ref_and_diffed() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, v1) = make_repo(tmp.path());
    let a = adapter(&tmp.path().join("data"));
    let mut s = spec("gitrun", sh("cat a.txt; echo changed > a.txt; echo brand-new > new.txt"));
    s.workspace = Some(WorkspaceSpec { repository: repo.display().to_string(), ref_: Some("v1".into()) });
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!(st.phase, RunPhase::Succeeded, "{st:?}");
    assert_eq!(st.base_commit.as_deref(), Some(v1.as_str()));
    let dir = a.run_dir("team-a", "gitrun");
    assert!(read(dir.join(".agent/runner.log")).starts_with("one\n"));
    let names: Vec<&str> = st.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["diff.stat", "changes.patch"]);
    assert!(st.artifacts.iter().all(|a| a.sha256.as_ref().is_some_and(|h| h.len() == 64)));
    let stat = read(dir.join("artifacts/diff.stat"));
    assert!(stat.contains("a.txt") && stat.contains("new.txt") && stat.contains("2 files changed"), "{stat}");
    let patch = read(dir.join("artifacts/changes.patch"));
    assert!(patch.contains("-one\n+changed\n") && patch.contains("+brand-new\n"), "{patch}");
}

#[tokio::test]
async fn git_default_branch_without_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = make_repo(tmp.path());
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let a = adapter(&tmp.path().join("data"));
    let mut s = spec("gitmain", sh("cat a.txt"));
    s.workspace = Some(WorkspaceSpec { repository: repo.display().to_string(), ref_: None });
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!(st.phase, RunPhase::Succeeded, "{st:?}");
    assert_eq!(st.base_commit, Some(head));
    assert_eq!(read(a.run_dir("team-a", "gitmain").join(".agent/runner.log")), "two\n");
    let stat = read(a.run_dir("team-a", "gitmain").join("artifacts/diff.stat"));
    assert_eq!(stat, "", "no change, empty stat");
}

#[tokio::test]
async fn unreachable_repository_is_a_workspace_error() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(&tmp.path().join("data"));
    let mut s = spec("norepo", sh("true"));
    s.workspace = Some(WorkspaceSpec { repository: tmp.path().join("nope.git").display().to_string(), ref_: None });
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason), (RunPhase::Failed, Some(StatusReason::WorkspaceError)), "{st:?}");
    let msg = st.message.unwrap();
    assert!(msg.contains("git clone") && msg.contains("nope.git"), "{msg}");

    let (repo, _) = make_repo(tmp.path());
    let mut s = spec("badref", sh("true"));
    s.workspace = Some(WorkspaceSpec { repository: repo.display().to_string(), ref_: Some("no-such-ref".into()) });
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!(st.reason, Some(StatusReason::WorkspaceError));
    assert!(st.message.unwrap().contains("no-such-ref"));
}

// ------------------------------------------------------------------------------------------
// bad input

#[tokio::test]
async fn missing_or_unusable_binaries_are_missing_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    // An absolute path that does not exist.
    let abs = AgentProviderSpec { binary: "/nonexistent/dir/agent".into(), ..Default::default() };
    // A file that exists in the workspace but is not executable (written there as an input file).
    let mut noexec = AgentProviderSpec { binary: "./not-executable".into(), ..Default::default() };
    noexec.input_files.push(InputFile { path: "workspace/not-executable".into(), content: "#!/bin/sh\n".into() });
    // A directory on PATH with the binary's name is not a binary either.
    let mut dir_on_path = AgentProviderSpec { binary: "agent-dir".into(), ..Default::default() };
    dir_on_path.env_template.insert("PATH".into(), tmp.path().display().to_string());
    std::fs::create_dir(tmp.path().join("agent-dir")).unwrap();
    for (name, p, needle) in [
        ("abs", abs, "/nonexistent/dir/agent"),
        ("noexec", noexec, "./not-executable"),
        ("dironpath", dir_on_path, "agent-dir"),
    ] {
        let r = a.submit(&spec(name, p)).await.unwrap();
        let st = finished(&a, &r).await;
        assert_eq!((st.phase, st.reason, st.retryable), (RunPhase::Failed, Some(StatusReason::MissingBinary), false));
        assert!(st.started_at.is_none(), "{name}: never started: {st:?}");
        let msg = st.message.unwrap();
        assert!(msg.contains(needle), "{name}: {msg}");
        let log = read(a.run_dir("team-a", name).join(".agent/runner.log"));
        assert!(log.contains("not started: MissingBinary"), "{name}: {log}");
    }
}

#[tokio::test]
async fn unknown_variables_in_env_and_input_file_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut env = sh("true");
    env.env_template.insert("MODEL".into(), "{{ agent.config.nope }}".into());
    let mut input = sh("true");
    input.input_files.push(InputFile { path: "task.md".into(), content: "x {{ implementation.nope }}".into() });
    // `step` is null outside a workflow: `step.name` names nothing.
    let no_step = sh("echo {{ step.name }}");
    for (name, p, want) in [
        ("env", env, "envTemplate.MODEL: unknown template variable `agent.config.nope`"),
        ("input", input, "inputFiles[0] (task.md): unknown template variable `implementation.nope`"),
        ("nostep", no_step, "argsTemplate[1]: unknown template variable `step.name`"),
    ] {
        let r = a.submit(&spec(name, p)).await.unwrap();
        let st = finished(&a, &r).await;
        assert_eq!((st.phase, st.reason, st.retryable), (RunPhase::Failed, Some(StatusReason::TemplateError), false));
        assert_eq!(st.message.as_deref(), Some(want), "{name}");
    }
    assert!(!a.run_dir("team-a", "input").join("task.md").exists());
}

#[tokio::test]
async fn unreachable_or_non_repositories_are_workspace_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(&tmp.path().join("data"));
    let not_a_repo = tmp.path().join("plain-folder");
    std::fs::create_dir(&not_a_repo).unwrap();
    std::fs::write(not_a_repo.join("file.txt"), "x").unwrap();
    for (name, repo) in
        [("fileurl", "file:///nonexistent/repo.git".to_string()), ("plain", not_a_repo.display().to_string())]
    {
        let mut s = spec(name, sh("echo ran"));
        s.workspace = Some(WorkspaceSpec { repository: repo.clone(), ref_: None });
        let r = a.submit(&s).await.unwrap();
        let st = finished(&a, &r).await;
        assert_eq!((st.phase, st.reason, st.retryable), (RunPhase::Failed, Some(StatusReason::WorkspaceError), true));
        let msg = st.message.unwrap();
        assert!(msg.contains("git clone") && msg.contains(&repo), "{name}: {msg}");
        let dir = a.run_dir("team-a", name);
        let log = read(dir.join(".agent/runner.log"));
        assert!(log.contains("not started: WorkspaceError") && !log.contains("ran"), "{name}: {log}");
        assert!(!dir.join("workspace").exists(), "{name}: a failed clone leaves no workspace");
    }
}

/// `timeoutSeconds: 1` with `sleep 30`: the group is stopped by SIGTERM; the shell never gets to
/// the line after the sleep.
#[tokio::test]
async fn timeout_stops_a_sleeping_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut s = spec("sleepy", sh("echo started; sleep 30; echo slept-through"));
    s.timeout_seconds = Some(1);
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason, st.retryable), (RunPhase::Failed, Some(StatusReason::TimedOut), true));
    assert_eq!(st.message.as_deref(), Some("timed out after 1s; process group stopped"));
    assert!(st.exit_code.is_none());
    let dir = a.run_dir("team-a", "sleepy");
    group_gone(pgid_of(&dir)).await;
    let log = read(dir.join(".agent/runner.log"));
    assert!(log.contains("started") && !log.contains("slept-through"), "{log}");
}

/// A child that ignores SIGTERM is killed with SIGKILL after the grace period (300 ms here); it
/// would otherwise sleep far past the test's deadline.
#[tokio::test]
async fn timeout_kills_an_agent_that_ignores_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut s = spec("stubborn", sh("trap '' TERM; echo trapped; sleep 300; echo slept-through"));
    s.timeout_seconds = Some(1);
    let r = a.submit(&s).await.unwrap();
    running(&a, &r).await;
    let dir = a.run_dir("team-a", "stubborn");
    let pgid = pgid_of(&dir);
    let st = finished(&a, &r).await;
    assert_eq!((st.phase, st.reason), (RunPhase::Failed, Some(StatusReason::TimedOut)), "{st:?}");
    group_gone(pgid).await;
    assert!(!read(dir.join(".agent/runner.log")).contains("slept-through"));
}

#[tokio::test]
async fn cancel_of_a_finished_attempt_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let r = a.submit(&spec("done", sh("echo hi"))).await.unwrap();
    let before = finished(&a, &r).await;
    assert_eq!(before.phase, RunPhase::Succeeded);
    let path = a.run_dir("team-a", "done").join(".agent/status.json");
    let on_disk = read(&path);
    let mut events = a.subscribe().unwrap();
    a.cancel(&r).await.unwrap();
    a.cancel(&r).await.unwrap();
    assert_eq!(a.status(&r).await.unwrap(), before);
    assert_eq!(read(&path), on_disk, "status.json untouched");
    assert_eq!(status_file(&a.run_dir("team-a", "done"))["cancelRequested"], false);
    assert!(matches!(events.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Empty)));
    // The same from an adapter that has not seen the attempt (after a restart).
    let b = adapter(tmp.path());
    b.cancel(&r).await.unwrap();
    assert_eq!(b.status(&r).await.unwrap(), before);
    assert_eq!(read(&path), on_disk);
}

/// A cap far below the output: the tail is kept (compacted many times while streaming), the head
/// is gone, and the file stays near the cap.
#[tokio::test]
async fn small_cap_keeps_the_tail() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let p = AgentProviderSpec {
        binary: "sh".into(),
        args_template: vec!["-c".into(), format!("echo first-line; head -c {TOTAL} /dev/zero; echo; echo last-line")],
        ..Default::default()
    };
    let mut s = spec("flood2", p);
    s.log_cap_bytes = 64 * 1024;
    let r = a.submit(&s).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!(st.phase, RunPhase::Succeeded, "{st:?}");
    assert!(st.log_truncated);
    let log = std::fs::read(a.run_dir("team-a", "flood2").join(".agent/runner.log")).unwrap();
    let written = "first-line\n".len() as u64 + TOTAL + "\nlast-line\n".len() as u64;
    let marker = format!("[agentplane: {} bytes of earlier output were dropped]\n", written - s.log_cap_bytes);
    assert!(log.starts_with(marker.as_bytes()), "{:?}", String::from_utf8_lossy(&log[..80.min(log.len())]));
    assert_eq!(log.len() as u64, marker.len() as u64 + s.log_cap_bytes);
    assert!(log.ends_with(b"\0\0\nlast-line\n"));
}

/// When the agent exits and nothing else holds its output, the drain ends at once: a
/// `log_drain_timeout` of an hour does not delay the terminal status.
#[tokio::test]
async fn normal_exit_does_not_wait_for_the_log_drain_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let a = LocalAdapter::with_config(
        tmp.path(),
        LocalConfig { log_drain_timeout: Duration::from_secs(3600), ..Default::default() },
    );
    for i in 0..3 {
        let r = a.submit(&spec(&format!("quick-{i}"), sh("echo out; echo err >&2"))).await.unwrap();
        let st = finished(&a, &r).await;
        assert_eq!(st.phase, RunPhase::Succeeded);
        let log = read(a.run_dir("team-a", &format!("quick-{i}")).join(".agent/runner.log"));
        assert_eq!(log, "out\nerr\n");
    }
}

// ------------------------------------------------------------------------------------------
// exit notifications

#[tokio::test]
async fn subscribers_hear_of_every_terminal_attempt_after_its_status_is_final() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let mut events = a.subscribe().unwrap();
    let mut ok = sh("printf data > \"$AGENT_ARTIFACTS_DIR/out.txt\"");
    ok.output_artifacts.push(OutputArtifact { name: "out".into(), path: "artifacts/out.txt".into() });
    let r_ok = a.submit(&spec("n-ok", ok)).await.unwrap();
    let r_fail = a.submit(&spec("n-fail", sh("exit 4"))).await.unwrap();
    let r_tmpl = a.submit(&spec("n-tmpl", sh("{{ nope }}"))).await.unwrap();
    let r_cancel = a.submit(&spec("n-cancel", sh("sleep 1000"))).await.unwrap();
    running(&a, &r_cancel).await;
    a.cancel(&r_cancel).await.unwrap();

    let mut seen = std::collections::HashMap::new();
    while seen.len() < 4 {
        let r = tokio::time::timeout(DEADLINE, events.recv()).await.expect("a notification").unwrap();
        // At the notification the status is final, in memory and on disk.
        let st = a.status(&r).await.unwrap();
        assert!(st.phase.is_terminal(), "{r}: {st:?}");
        let parts: Vec<&str> = r.as_str().split('/').collect();
        let on_disk = status_file(&a.run_dir("team-a", parts[1]));
        assert_eq!(on_disk["phase"], st.phase.as_str(), "{r}");
        assert!(seen.insert(r.clone(), st).is_none(), "{r} announced twice");
    }
    assert_eq!(seen[&r_ok].phase, RunPhase::Succeeded);
    assert_eq!(seen[&r_ok].artifacts.len(), 1, "artifacts are collected before the notification");
    assert_eq!(seen[&r_fail].exit_code, Some(4));
    assert_eq!(seen[&r_tmpl].reason, Some(StatusReason::TemplateError));
    assert_eq!(seen[&r_cancel].phase, RunPhase::Cancelled);
    assert!(matches!(events.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Empty)));
}

#[tokio::test]
async fn a_slow_subscriber_lags_and_must_poll() {
    let tmp = tempfile::tempdir().unwrap();
    let a = LocalAdapter::with_config(tmp.path(), LocalConfig { events_capacity: 2, ..Default::default() });
    let mut events = a.subscribe().unwrap();
    let mut refs = Vec::new();
    for i in 0..4 {
        let r = a.submit(&spec(&format!("lag-{i}"), sh("true"))).await.unwrap();
        finished(&a, &r).await;
        refs.push(r);
    }
    // Four notifications into a channel of two: the receiver missed the first two.
    match events.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 2),
        other => panic!("expected Lagged, got {other:?}"),
    }
    assert_eq!(events.recv().await.unwrap(), refs[2]);
    assert_eq!(events.recv().await.unwrap(), refs[3]);
}

#[tokio::test]
async fn forgotten_attempts_are_read_back_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let a = LocalAdapter::with_config(tmp.path(), LocalConfig { finished_cache: 1, ..Default::default() });
    let mut s = spec("forget", sh("echo try-$AGENT_RUN_ATTEMPT; exit $AGENT_RUN_ATTEMPT"));
    let r1 = a.submit(&s).await.unwrap();
    let st1 = finished(&a, &r1).await;
    s.attempt = 2;
    let r2 = a.submit(&s).await.unwrap();
    let st2 = finished(&a, &r2).await;
    let other = a.submit(&spec("other", sh("true"))).await.unwrap();
    finished(&a, &other).await;
    // Attempt 1 was dropped from memory; its status comes from its archive, attempt 2's from
    // status.json, and neither changes.
    assert_eq!(a.status(&r1).await.unwrap(), st1);
    assert_eq!(a.status(&r2).await.unwrap(), st2);
    assert_eq!((st1.exit_code, st2.exit_code), (Some(1), Some(2)));
    // A resubmit of the current attempt still starts nothing.
    assert_eq!(a.submit(&s).await.unwrap(), r2);
    let log = read(a.run_dir("team-a", "forget").join(".agent/runner.log"));
    assert_eq!(log, "try-1\n--- attempt 2 ---\ntry-2\n");
}

// ------------------------------------------------------------------------------------------
// workflow steps

fn step(mut s: RunSpec, attempt: u32, index: u32, name: &str, count: u32, script: &str) -> RunSpec {
    s.attempt = attempt;
    s.step = Some(StepSpec { index, name: name.into(), count });
    s.provider = sh(script);
    s
}

#[tokio::test]
async fn workflow_steps_share_the_workspace_and_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let base = spec("wf", sh("true"));
    let s0 = step(
        base.clone(),
        1,
        0,
        "build",
        2,
        "echo \"in {{ step.name }} {{ step.index }}/{{ step.count }} env $AGENT_STEP_NAME $AGENT_STEP_INDEX \
         $AGENT_STEP_COUNT\"; echo built > out.txt",
    );
    let r0 = a.submit(&s0).await.unwrap();
    assert_eq!(finished(&a, &r0).await.phase, RunPhase::Succeeded);
    let dir = a.run_dir("team-a", "wf");
    let runner: Value = serde_json::from_str(&read(dir.join("agent-runner.json"))).unwrap();
    assert_eq!(runner["step"], serde_json::json!({"index": 0, "name": "build", "count": 2}));

    let s1 = step(base, 2, 1, "test", 2, "cat out.txt; echo seen-by-$AGENT_STEP_NAME; echo more >> out.txt");
    let r1 = a.submit(&s1).await.unwrap();
    let st = finished(&a, &r1).await;
    assert_eq!(st.phase, RunPhase::Succeeded, "{st:?}");
    assert_eq!(read(dir.join("workspace/out.txt")), "built\nmore\n");
    let log = read(dir.join(".agent/runner.log"));
    assert_eq!(
        log,
        "--- attempt 1 (step build 1/2) ---\nin build 0/2 env build 0 2\n--- attempt 2 (step test 2/2) ---\nbuilt\n\
         seen-by-test\n"
    );
    let archived: Value = serde_json::from_str(&read(dir.join(".agent/status.attempt-1.json"))).unwrap();
    assert_eq!((archived["attempt"].as_u64(), archived["phase"].as_str()), (Some(1), Some("Succeeded")));
    let runner: Value = serde_json::from_str(&read(dir.join("agent-runner.json"))).unwrap();
    assert_eq!(runner["step"]["name"], "test");
    assert_eq!(runner["agentRun"]["attempt"], 2);
}

#[tokio::test]
async fn a_step_without_a_workspace_sets_one_up() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    let base = spec("wf-gone", sh("true"));
    let r0 = a.submit(&step(base.clone(), 1, 0, "one", 2, "echo x > left.txt")).await.unwrap();
    finished(&a, &r0).await;
    let ws = a.run_dir("team-a", "wf-gone").join("workspace");
    std::fs::remove_dir_all(&ws).unwrap();
    let r1 = a.submit(&step(base, 2, 1, "two", 2, "ls -A; echo in-$PWD")).await.unwrap();
    assert_eq!(finished(&a, &r1).await.phase, RunPhase::Succeeded);
    assert!(ws.is_dir());
    let log = read(a.run_dir("team-a", "wf-gone").join(".agent/runner.log"));
    assert!(log.ends_with(&format!("--- attempt 2 (step two 2/2) ---\nin-{}\n", ws.display())), "{log}");
}

#[tokio::test]
async fn git_workflow_steps_keep_the_clone_and_retries_keep_it_too() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = make_repo(tmp.path());
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let a = adapter(&tmp.path().join("data"));
    let mut base = spec("wf-git", sh("true"));
    base.workspace = Some(WorkspaceSpec { repository: repo.display().to_string(), ref_: None });
    let dir = a.run_dir("team-a", "wf-git");

    // Step 0, first try: changes a.txt and fails.
    let r = a.submit(&step(base.clone(), 1, 0, "edit", 2, "echo one-more >> a.txt; exit 1")).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!((st.reason, st.base_commit.as_deref()), (Some(StatusReason::NonZeroExit), Some(head.as_str())));
    // Step 0, retry (attempt 2): like any retry, the completed clone is kept as the failed try
    // left it (not reset).
    let r = a.submit(&step(base.clone(), 2, 0, "edit", 2, "cat a.txt; echo new > b.txt")).await.unwrap();
    assert_eq!(finished(&a, &r).await.phase, RunPhase::Succeeded);
    // Upstream moves on; step 1 must not re-clone.
    std::fs::write(repo.join("a.txt"), "three\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "three"]);
    let r = a.submit(&step(base, 3, 1, "check", 2, "cat a.txt b.txt")).await.unwrap();
    let st = finished(&a, &r).await;
    assert_eq!(st.phase, RunPhase::Succeeded, "{st:?}");
    assert_eq!(st.base_commit.as_deref(), Some(head.as_str()));
    let log = read(dir.join(".agent/runner.log"));
    assert_eq!(
        log,
        "--- attempt 1 (step edit 1/2) ---\n--- attempt 2 (step edit 1/2) ---\ntwo\none-more\n\
         --- attempt 3 (step check 2/2) ---\ntwo\none-more\nnew\n"
    );
    // The diff after the last step holds every step's changes, against the base commit.
    let patch = read(dir.join("artifacts/changes.patch"));
    assert!(patch.contains("+one-more\n") && patch.contains("+new\n") && !patch.contains("three"), "{patch}");
}

#[tokio::test]
async fn bad_step_specs_are_refused_at_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let a = adapter(tmp.path());
    for (index, name, count) in [(2, "x", 2), (0, "x", 0), (0, "", 1), (0, "a\nb", 1)] {
        let s = step(spec("bad-step", sh("true")), 1, index, name, count, "true");
        let e = a.submit(&s).await.unwrap_err();
        assert_eq!((e.kind, e.retryable), (ErrorKind::InvalidSpec, false), "{index} {name:?} {count}: {e}");
        assert!(e.message.contains("step."), "{e}");
    }
    assert!(!a.run_dir("team-a", "bad-step").exists());
}
