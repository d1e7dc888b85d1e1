//! The experimental run controller (`controller.enabled = true`) against the real server and real
//! `/bin/sh` processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{TestServer, eventually};
use serde_json::{Value, json};

const NS: &str = "default";
const DEADLINE: Duration = Duration::from_secs(60);

async fn server() -> TestServer {
    TestServer::start_with(|c| c.controller.enabled = true).await
}

/// An AgentProvider running `/bin/sh -c SCRIPT` and an Agent using it.
async fn agent(t: &TestServer, name: &str, script: &str, max_in_flight: Option<u32>) {
    let p = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentProvider",
        "metadata": {"name": format!("{name}-sh")},
        "spec": {"binary": "/bin/sh", "argsTemplate": ["-c", script]}});
    let (code, v) = t.post(NS, "agentproviders", &p).await;
    assert_eq!(code, 201, "{v}");
    let mut spec = json!({"providerRef": {"name": format!("{name}-sh")}});
    if let Some(n) = max_in_flight {
        spec["maxInFlight"] = json!(n);
    }
    let a = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name}, "spec": spec});
    let (code, v) = t.post(NS, "agents", &a).await;
    assert_eq!(code, 201, "{v}");
}

async fn submit(t: &TestServer, name: &str, agent: &str, retry_limit: u32) {
    let r = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": name},
        "spec": {"agentRef": {"name": agent}, "implementation": {"inline": {"text": "do it"}}, "retryLimit": retry_limit}});
    let (code, v) = t.post(NS, "agentruns", &r).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"]["phase"], "Pending", "{v}");
}

async fn get_run(t: &TestServer, name: &str) -> Value {
    let (code, v) = t.get(&t.item(NS, "agentruns", name)).await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Waits until the run reaches a terminal phase and returns it.
async fn finished(t: &TestServer, name: &str) -> Value {
    eventually(DEADLINE, || async {
        let v = get_run(t, name).await;
        matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed" | "Cancelled")).then_some(v)
    })
    .await
}

async fn ledger_actions(t: &TestServer, run: &str) -> Vec<(String, String, String)> {
    let (code, v) = t.get(&t.url(&format!("/api/v1/ledger/entries?run={run}"))).await;
    assert_eq!(code, 200, "{v}");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let actor =
                format!("{}:{}", e["actor"]["kind"].as_str().unwrap_or(""), e["actor"]["id"].as_str().unwrap_or(""));
            (e["action"].as_str().unwrap().to_string(), e["outcome"].as_str().unwrap().to_string(), actor)
        })
        .collect()
}

fn condition<'a>(run: &'a Value, type_: &str) -> Option<&'a Value> {
    run["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc)).expect("a time")
}

#[tokio::test]
async fn a_run_that_exits_0_succeeds_and_is_recorded_in_the_ledger() {
    let t = server().await;
    agent(&t, "ok", "echo hello; exit 0", None).await;
    submit(&t, "r-ok", "ok", 0).await;
    let v = finished(&t, "r-ok").await;
    let st = &v["status"];
    assert_eq!(st["phase"], "Succeeded", "{v}");
    assert_eq!(st["exitCode"], 0, "{v}");
    assert_eq!(st["attempt"], 1, "{v}");
    assert!(st["runtimeRef"].as_str().is_some_and(|r| r.starts_with("local:")), "{v}");
    assert!(time(&st["startedAt"]) <= time(&st["finishedAt"]), "{v}");
    assert_eq!(condition(&v, "Succeeded").map(|c| c["status"].clone()), Some(json!("True")), "{v}");
    assert_eq!(condition(&v, "InProgress").map(|c| c["status"].clone()), Some(json!("False")), "{v}");
    // The spec is untouched by the status writes.
    assert_eq!(v["spec"]["implementation"]["inline"]["text"], "do it", "{v}");
    assert!(t.data_dir().join("runs").join(NS).join("r-ok").is_dir());

    let actions = ledger_actions(&t, "r-ok").await;
    let started: Vec<_> = actions.iter().filter(|a| a.0 == "run.started").collect();
    let finished: Vec<_> = actions.iter().filter(|a| a.0 == "run.finished").collect();
    assert_eq!(started.len(), 1, "{actions:?}");
    assert_eq!(finished.len(), 1, "{actions:?}");
    assert_eq!(started[0].2, "system:controller", "{actions:?}");
    assert_eq!(finished[0].1, "success", "{actions:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_run_that_exits_3_without_retries_fails() {
    let t = server().await;
    agent(&t, "bad", "exit 3", None).await;
    submit(&t, "r-bad", "bad", 0).await;
    let v = finished(&t, "r-bad").await;
    let st = &v["status"];
    assert_eq!(st["phase"], "Failed", "{v}");
    assert_eq!(st["exitCode"], 3, "{v}");
    assert_eq!(st["attempt"], 1, "{v}");
    assert!(st.get("nextRetryAt").is_none(), "{v}");
    let failed = condition(&v, "Failed").expect("a Failed condition");
    assert_eq!(failed["status"], "True", "{v}");
    assert_eq!(failed["reason"], "NonZeroExit", "{v}");
    let actions = ledger_actions(&t, "r-bad").await;
    assert!(actions.iter().any(|a| a.0 == "run.finished" && a.1 == "failure"), "{actions:?}");
    assert!(!actions.iter().any(|a| a.0 == "run.retried"), "{actions:?}");
    t.stop().await;
}

#[tokio::test]
async fn max_in_flight_1_runs_one_at_a_time_and_all_succeed() {
    let t = server().await;
    agent(&t, "slow", "sleep 1", Some(1)).await;
    let names = ["r-1", "r-2", "r-3"];
    for n in names {
        submit(&t, n, "slow", 0).await;
    }
    let mut max_running = 0;
    let mut saw_blocked = false;
    let end = tokio::time::Instant::now() + DEADLINE;
    let runs: Vec<Value> = loop {
        let (code, v) = t.get(&t.coll(NS, "agentruns")).await;
        assert_eq!(code, 200, "{v}");
        let items = v["items"].as_array().unwrap().clone();
        let running = items.iter().filter(|r| r["status"]["phase"] == "Running").count();
        max_running = max_running.max(running);
        saw_blocked |= items.iter().any(|r| {
            r["status"]["phase"] == "Pending"
                && condition(r, "Blocked").is_some_and(|c| c["reason"] == "ConcurrencyLimit" && c["status"] == "True")
        });
        if items.len() == 3 && items.iter().all(|r| r["status"]["phase"] == "Succeeded") {
            break items;
        }
        assert!(tokio::time::Instant::now() < end, "not all runs succeeded in time: {items:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(max_running <= 1, "saw {max_running} runs Running at once");
    assert!(saw_blocked, "no waiting run had the Blocked condition");
    // Whatever polling missed: the attempts' time intervals do not overlap.
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        runs.iter().map(|r| (time(&r["status"]["startedAt"]), time(&r["status"]["finishedAt"]))).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping runs: {spans:?}");
    }
    for r in &runs {
        assert_eq!(r["status"]["exitCode"], 0, "{r}");
        assert!(condition(r, "Blocked").is_none(), "{r}");
    }
    t.stop().await;
}

/// A server whose retries come quickly and whose grace period is short.
async fn fast_server() -> TestServer {
    TestServer::start_with(|c| {
        c.controller.retry_base_seconds = 0.05;
        c.controller.retry_max_seconds = 0.2;
        c.controller.grace_seconds = 1;
    })
    .await
}

async fn submit_spec(t: &TestServer, name: &str, spec: Value) -> Value {
    let r =
        json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": name}, "spec": spec});
    let (code, v) = t.post(NS, "agentruns", &r).await;
    assert_eq!(code, 201, "{v}");
    v
}

#[tokio::test]
async fn a_failed_attempt_is_retried_with_backoff_and_then_succeeds() {
    let t = fast_server().await;
    // Attempt 1 exits 1; attempt 2 exits 0.
    agent(&t, "flaky", "test {{ agentRun.attempt }} -ge 2", None).await;
    submit(&t, "r-flaky", "flaky", 2).await;
    let v = finished(&t, "r-flaky").await;
    assert_eq!(v["status"]["phase"], "Succeeded", "{v}");
    assert_eq!(v["status"]["attempt"], 2, "{v}");
    assert!(v["status"]["nextRetryAt"].is_null(), "{v}");
    let actions: Vec<String> = ledger_actions(&t, "r-flaky").await.into_iter().map(|(a, _, _)| a).collect();
    assert_eq!(actions, ["run.submitted", "run.started", "run.retried", "run.started", "run.finished"], "{actions:?}");
    let (_, entries) = t.get(&t.url("/api/v1/ledger/entries?run=r-flaky&action=run.retried")).await;
    let p = &entries["entries"][0]["params"];
    assert_eq!(
        (p["attempt"].clone(), p["nextAttempt"].clone(), p["reason"].clone()),
        (json!(1), json!(2), json!("NonZeroExit"))
    );
    assert!(p["nextRetryAt"].is_string(), "{p}");
}

#[tokio::test]
async fn retries_stop_at_the_retry_limit() {
    let t = fast_server().await;
    agent(&t, "bad", "exit 7", None).await;
    submit(&t, "r-bad", "bad", 1).await;
    let v = finished(&t, "r-bad").await;
    assert_eq!((v["status"]["phase"].clone(), v["status"]["attempt"].clone()), (json!("Failed"), json!(2)), "{v}");
    assert_eq!(v["status"]["exitCode"], 7, "{v}");
    assert_eq!(condition(&v, "Failed").unwrap()["reason"], "NonZeroExit", "{v}");
}

#[tokio::test]
async fn a_run_past_its_timeout_is_stopped_and_fails_timed_out() {
    let t = fast_server().await;
    // Ignores SIGTERM: only the SIGKILL after the grace period stops it.
    agent(&t, "slow", "trap '' TERM; sleep 30", None).await;
    submit_spec(
        &t,
        "r-slow",
        json!({"agentRef": {"name": "slow"}, "implementation": {"inline": {"text": "x"}}, "timeoutSeconds": 1, "retryLimit": 0}),
    )
    .await;
    let v = finished(&t, "r-slow").await;
    assert_eq!(v["status"]["phase"], "Failed", "{v}");
    assert_eq!(condition(&v, "Failed").unwrap()["reason"], "TimedOut", "{v}");
    let started = time(&v["status"]["startedAt"]);
    let ended = time(&v["status"]["finishedAt"]);
    assert!(ended - started >= chrono::Duration::seconds(1), "{v}");
    let actions = ledger_actions(&t, "r-slow").await;
    assert!(actions.iter().any(|(a, o, _)| a == "run.finished" && o == "failure"), "{actions:?}");
}

#[tokio::test]
async fn workflow_steps_run_in_order_in_one_workspace() {
    let t = fast_server().await;
    let p = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentProvider", "metadata": {"name": "wf-sh"},
        "spec": {"binary": "/bin/sh", "argsTemplate": ["-c", "{{ parameters.script }}"]}});
    assert_eq!(t.post(NS, "agentproviders", &p).await.0, 201);
    let a = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "wf"},
        "spec": {"providerRef": {"name": "wf-sh"}}});
    assert_eq!(t.post(NS, "agents", &a).await.0, 201);
    submit_spec(
        &t,
        "r-wf",
        json!({"agentRef": {"name": "wf"}, "implementation": {"inline": {"text": "build then test"}},
            "parameters": {"script": "exit 9"},
            "workflow": {"steps": [
                {"name": "build", "parameters": {"script": "echo built > artifact.txt"}},
                // Fails on its first try (no marker yet), succeeds on the retry.
                {"name": "test", "retries": 1, "retryBackoffSeconds": 1,
                 "parameters": {"script": "grep -q built artifact.txt && if [ -e tried ]; then echo ok; else touch tried; exit 4; fi"}}
            ]}}),
    )
    .await;
    let v = finished(&t, "r-wf").await;
    let st = &v["status"];
    assert_eq!(st["phase"], "Succeeded", "{v}");
    assert_eq!(st["attempt"], 3, "build once, test twice: {v}");
    let steps = st["workflow"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{v}");
    assert_eq!(
        (steps[0]["name"].clone(), steps[0]["phase"].clone(), steps[0]["attempts"].clone()),
        (json!("build"), json!("Succeeded"), json!(1))
    );
    assert_eq!(
        (steps[1]["name"].clone(), steps[1]["phase"].clone(), steps[1]["attempts"].clone()),
        (json!("test"), json!("Succeeded"), json!(2))
    );
    assert!(st["workflow"]["currentStep"].is_null(), "{v}");
}

#[tokio::test]
async fn a_failing_workflow_step_without_retries_fails_the_run() {
    let t = fast_server().await;
    agent(&t, "wf2", "exit 5", None).await;
    submit_spec(
        &t,
        "r-wf2",
        json!({"agentRef": {"name": "wf2"}, "implementation": {"inline": {"text": "x"}},
            "workflow": {"steps": [{"name": "one"}, {"name": "two"}]}}),
    )
    .await;
    let v = finished(&t, "r-wf2").await;
    assert_eq!(v["status"]["phase"], "Failed", "{v}");
    let steps = v["status"]["workflow"]["steps"].as_array().unwrap();
    assert_eq!(steps[0]["phase"], "Failed", "{v}");
    assert_eq!(steps[0]["exitCode"], 5, "{v}");
    assert_eq!(steps[1]["attempts"], 0, "step two never ran: {v}");
}

#[tokio::test]
async fn allowed_secrets_reach_the_agent_from_the_secrets_dir_and_nowhere_else() {
    use std::os::unix::fs::PermissionsExt;
    let t = fast_server().await;
    let dir = t.data_dir().join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = "s3cret-value-42";
    std::fs::write(dir.join("api-token"), format!("{secret}\n")).unwrap();
    std::fs::set_permissions(dir.join("api-token"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("loose"), "x").unwrap();
    std::fs::set_permissions(dir.join("loose"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentProvider", "metadata": {"name": "sec-sh"},
        "spec": {"binary": "/bin/sh", "argsTemplate": ["-c", "test \"$TOKEN\" = s3cret-value-42"]}});
    assert_eq!(t.post(NS, "agentproviders", &p).await.0, 201);
    let a = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "sec"},
        "spec": {"providerRef": {"name": "sec-sh"},
                 "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api-token"}}}],
                 "security": {"allowedSecrets": ["api-token", "loose"]}}});
    let (code, v) = t.post(NS, "agents", &a).await;
    assert_eq!(code, 201, "{v}");
    submit_spec(
        &t,
        "r-sec",
        json!({"agentRef": {"name": "sec"}, "implementation": {"inline": {"text": "x"}}, "secrets": ["api-token"]}),
    )
    .await;
    let v = finished(&t, "r-sec").await;
    assert_eq!(v["status"]["phase"], "Succeeded", "the agent saw the secret: {v}");
    // A secret file others can read is refused (fail closed), naming the fix.
    submit_spec(&t, "r-loose", json!({"agentRef": {"name": "sec"}, "implementation": {"inline": {"text": "x"}}, "secrets": ["api-token", "loose"]})).await;
    let v = finished(&t, "r-loose").await;
    assert_eq!(v["status"]["phase"], "Failed", "{v}");
    let c = condition(&v, "Failed").unwrap();
    assert_eq!(c["reason"], "SecretNotFound", "{v}");
    assert!(c["message"].as_str().unwrap().contains("chmod 600"), "{v}");
    // The value is in no status and no ledger entry.
    let (_, export) = t.get(&t.url("/api/v1/ledger/entries?limit=1000")).await;
    assert!(!export.to_string().contains(secret));
    let (_, runs) = t.get(&t.coll(NS, "agentruns")).await;
    assert!(!runs.to_string().contains(secret));
}

#[tokio::test]
async fn a_run_whose_agent_was_deleted_fails_missing_agent() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    agent(&t, "gone", "exit 0", None).await;
    submit(&t, "r-gone", "gone", 0).await;
    let (code, _) = t.delete(NS, "agents", "gone").await;
    assert_eq!(code, 200);
    let t = t.restart_with(|c| c.controller.enabled = true).await;
    let v = finished(&t, "r-gone").await;
    assert_eq!(v["status"]["phase"], "Failed", "{v}");
    assert_eq!(condition(&v, "Failed").unwrap()["reason"], "MissingAgent", "{v}");
}

/// A small runner implementing the custom runtime protocol (docs/runtime.md): every submitted
/// run is `Running` until the test says how it ends.
mod runner {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::{Value, json};

    #[derive(Clone, Default)]
    pub struct Runner {
        pub runs: Arc<Mutex<HashMap<String, (String, Value)>>>,
        pub fail_submits: bool,
    }

    async fn submit(State(s): State<Runner>, Json(body): Json<Value>) -> axum::response::Response {
        if s.fail_submits {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
        }
        let key = body["idempotencyKey"].as_str().unwrap_or_default().to_string();
        s.runs.lock().unwrap().entry(key.clone()).or_insert_with(|| ("Running".into(), body));
        Json(json!({"ref": key})).into_response()
    }

    async fn status(State(s): State<Runner>, Path(r): Path<String>) -> axum::response::Response {
        match s.runs.lock().unwrap().get(&r) {
            None => (StatusCode::NOT_FOUND, "no such run").into_response(),
            Some((phase, _)) if phase == "Succeeded" => {
                Json(json!({"phase": "Succeeded", "exitCode": 0})).into_response()
            }
            Some((phase, _)) => Json(json!({"phase": phase})).into_response(),
        }
    }

    async fn cancel(State(s): State<Runner>, Path(r): Path<String>) -> StatusCode {
        match s.runs.lock().unwrap().get_mut(&r) {
            None => StatusCode::NOT_FOUND,
            Some((phase, _)) => {
                *phase = "Cancelled".into();
                StatusCode::NO_CONTENT
            }
        }
    }

    pub async fn serve(state: Runner) -> String {
        let router = Router::new().nest(
            "/v1",
            Router::new()
                .route("/runs", post(submit))
                .route("/runs/{r}", get(status))
                .route("/runs/{r}/cancel", post(cancel))
                .with_state(state),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}/v1")
    }
}

#[tokio::test]
async fn a_run_on_a_custom_runtime_is_submitted_followed_and_finished() {
    let t = fast_server().await;
    let state = runner::Runner::default();
    let url = runner::serve(state.clone()).await;
    agent(&t, "remote", "unused locally", None).await;
    submit_spec(
        &t,
        "r-remote",
        json!({"agentRef": {"name": "remote"}, "implementation": {"inline": {"text": "x"}},
               "runtime": {"type": "custom", "config": {"url": url}}}),
    )
    .await;
    let key = eventually(DEADLINE, || async {
        let v = get_run(&t, "r-remote").await;
        (v["status"]["phase"] == "Running").then(|| v["status"]["runtimeRef"].as_str().unwrap().to_string())
    })
    .await;
    {
        let runs = state.runs.lock().unwrap();
        let (_, body) = runs.get(&key).expect("the runner got the run");
        assert_eq!(body["run"]["name"], "r-remote", "{body}");
    }
    state.runs.lock().unwrap().get_mut(&key).unwrap().0 = "Succeeded".into();
    let v = finished(&t, "r-remote").await;
    assert_eq!((v["status"]["phase"].clone(), v["status"]["exitCode"].clone()), (json!("Succeeded"), json!(0)), "{v}");
}

#[tokio::test]
async fn a_custom_runtime_that_keeps_answering_500_fails_the_run_submit_failed() {
    let t = TestServer::start_with(|c| c.controller.tick_millis = 20).await;
    let url = runner::serve(runner::Runner { fail_submits: true, ..Default::default() }).await;
    agent(&t, "broken", "unused", None).await;
    submit_spec(
        &t,
        "r-broken",
        json!({"agentRef": {"name": "broken"}, "implementation": {"inline": {"text": "x"}},
               "runtime": {"type": "custom", "config": {"url": url}}}),
    )
    .await;
    let v = eventually(Duration::from_secs(120), || async {
        let v = get_run(&t, "r-broken").await;
        (v["status"]["phase"] == "Failed").then_some(v)
    })
    .await;
    let c = condition(&v, "Failed").unwrap();
    assert_eq!(c["reason"], "SubmitFailed", "{v}");
    assert!(c["message"].as_str().unwrap().contains("500"), "{v}");
}

#[tokio::test]
async fn an_agent_writing_1_gib_to_stdout_is_truncated_and_the_server_is_unharmed() {
    let t = fast_server().await;
    agent(&t, "loud", "yes agentplane | head -c 1073741824; echo; echo the-end", None).await;
    submit(&t, "r-loud", "loud", 0).await;
    let v = finished(&t, "r-loud").await;
    assert_eq!(v["status"]["phase"], "Succeeded", "{v}");
    assert_eq!(v["status"]["logTruncated"], true, "{v}");
    let log = std::fs::metadata(t.data_dir().join("runs/default/r-loud/.agent/runner.log")).unwrap().len();
    assert!(log <= 11 * 1024 * 1024, "the log is capped near 10 MiB, not {log} bytes");
    let tail = std::fs::read(t.data_dir().join("runs/default/r-loud/.agent/runner.log")).unwrap();
    assert!(String::from_utf8_lossy(&tail[tail.len().saturating_sub(64)..]).contains("the-end"), "the tail is kept");
    // The server still answers.
    let (code, _) = t.get(&t.url("/healthz")).await;
    assert_eq!(code, 200);
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_workspace_repository_is_cloned_at_its_ref_and_the_change_recorded() {
    let t = fast_server().await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join("README"), "v1\n").unwrap();
    git(repo.path(), &["add", "README"]);
    git(repo.path(), &["commit", "-q", "-m", "one"]);
    let base = git(repo.path(), &["rev-parse", "HEAD"]);
    std::fs::write(repo.path().join("README"), "v2\n").unwrap();
    git(repo.path(), &["commit", "-q", "-am", "two"]);
    agent(&t, "editor", "test \"$(cat README)\" = v1 && echo edited > README && echo new > NEW", None).await;
    submit_spec(
        &t,
        "r-git",
        json!({"agentRef": {"name": "editor"}, "implementation": {"inline": {"text": "edit"}},
               "workspace": {"repository": repo.path().display().to_string(), "ref": base}}),
    )
    .await;
    let v = finished(&t, "r-git").await;
    assert_eq!(v["status"]["phase"], "Succeeded", "the agent saw the checked-out ref: {v}");
    assert_eq!(v["status"]["baseCommit"], base.as_str(), "{v}");
    let names: Vec<&str> =
        v["status"]["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"changes.patch") || names.iter().any(|n| n.contains("patch")), "{v}");
    let patch = std::fs::read_to_string(t.data_dir().join("runs/default/r-git/artifacts/changes.patch")).unwrap();
    assert!(patch.contains("+edited") && patch.contains("NEW"), "{patch}");

    // An unreachable repository fails the run with WorkspaceError (retryable, so a retry limit
    // of 0 ends it).
    submit_spec(
        &t,
        "r-nogit",
        json!({"agentRef": {"name": "editor"}, "implementation": {"inline": {"text": "edit"}},
               "workspace": {"repository": "file:///nonexistent/repo.git"}}),
    )
    .await;
    let v = finished(&t, "r-nogit").await;
    assert_eq!(v["status"]["phase"], "Failed", "{v}");
    assert_eq!(condition(&v, "Failed").unwrap()["reason"], "WorkspaceError", "{v}");
}
