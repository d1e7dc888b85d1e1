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
