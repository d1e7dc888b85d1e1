#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Earned levels through the real server and real agent processes: a streak of clean runs
//! suggests a raise (a human decides), a failure rate over the window lowers the level on its
//! own, each recorded with the reason.

mod common;

use std::time::Duration;

use common::{TestServer, eventually, manifest, run_prerequisites};
use serde_json::{Value, json};

const NS: &str = "team-a";

async fn submit(t: &TestServer, name: &str, agent: &str) {
    let mut m = manifest("AgentRun", name);
    m["spec"]["agentRef"]["name"] = json!(agent);
    let (code, v) = t.post(NS, "agentruns", &m).await;
    assert_eq!(code, 201, "{v}");
}

async fn finished(t: &TestServer, name: &str) -> String {
    eventually(Duration::from_secs(60), || async {
        let (_, v) = t.get(&t.item(NS, "agentruns", name)).await;
        v["status"]["phase"].as_str().filter(|p| ["Succeeded", "Failed", "Cancelled"].contains(p)).map(str::to_string)
    })
    .await
}

async fn agent(t: &TestServer, name: &str) -> Value {
    let (code, v) = t.get(&t.item(NS, "agents", name)).await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn ledger(t: &TestServer, action: &str) -> Vec<Value> {
    let (code, l) = t.get(&t.url(&format!("/api/v1/ledger/entries?action={action}"))).await;
    assert_eq!(code, 200, "{l}");
    l["entries"].as_array().unwrap().clone()
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn small_thresholds(c: &mut agentplane_server::config::Config) {
    c.governance.suggest_after_clean_runs = 3;
    c.governance.failure_window_runs = 4;
    c.governance.failure_min_runs = 2;
    c.governance.failure_rate_threshold = 0.5;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_runs_suggest_a_raise_and_failures_lower_the_level_with_a_reason() {
    let t = TestServer::start_with(small_thresholds).await;
    run_prerequisites(&t, NS).await;

    // Three clean runs of agent `a` (its provider runs `true`): a suggestion to go from L3 to L4.
    for i in 0..2 {
        submit(&t, &format!("ok-{i}"), "a").await;
        assert_eq!(finished(&t, &format!("ok-{i}")).await, "Succeeded");
    }
    assert!(agent(&t, "a").await["status"]["levelSuggestion"].is_null(), "two runs are not enough");
    submit(&t, "ok-2", "a").await;
    assert_eq!(finished(&t, "ok-2").await, "Succeeded");
    let a = eventually(Duration::from_secs(30), || async {
        let a = agent(&t, "a").await;
        a["status"]["levelSuggestion"].is_object().then_some(a)
    })
    .await;
    let s = &a["status"]["levelSuggestion"];
    assert_eq!((s["level"].as_u64(), s["cleanRuns"].as_u64()), (Some(4), Some(3)), "{a}");
    assert!(s["reason"].as_str().unwrap().contains("needs a human"), "{s}");
    assert_eq!(condition(&a, "LevelRaiseSuggested").unwrap()["status"], "True", "{a}");
    // The takeover view shows it too.
    let (code, view) = t.get(&t.url(&format!("/api/v1/namespaces/{NS}/takeover?agent=a"))).await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["suggestion"]["level"], 4, "{view}");
    // Suggesting raises nothing: the level is still the initial one.
    assert!(a["status"]["earnedTakeoverLevel"].is_null(), "{a}");
    let suggested = ledger(&t, "takeover.suggested").await;
    assert_eq!(suggested.len(), 1, "{suggested:?}");
    assert_eq!(suggested[0]["actor"], json!({"kind": "system", "id": "earned-levels"}));
    assert_eq!((suggested[0]["takeoverLevel"].as_u64(), suggested[0]["outcome"].as_str()), (Some(4), Some("pending")));

    // A human accepts it: the suggestion is settled.
    let r = t
        .client
        .post(t.url(&format!("/api/v1/namespaces/{NS}/agents/a/takeover")))
        .json(&json!({"level": 4, "reason": "three clean runs, as suggested"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let a = agent(&t, "a").await;
    assert!(a["status"]["levelSuggestion"].is_null() && condition(&a, "LevelRaiseSuggested").is_none(), "{a}");

    // Agent `flaky` (a provider that exits 1, no retries): two failures of two runs reach 50 %.
    let mut p = manifest("AgentProvider", "failing");
    p["spec"] = json!({"binary": "/bin/sh", "argsTemplate": ["-c", "exit 1"]});
    assert_eq!(t.post(NS, "agentproviders", &p).await.0, 201);
    let mut ag = manifest("Agent", "flaky");
    ag["spec"] = json!({"providerRef": {"name": "failing"}, "defaults": {"retryLimit": 0}});
    assert_eq!(t.post(NS, "agents", &ag).await.0, 201);
    submit(&t, "bad-0", "flaky").await;
    assert_eq!(finished(&t, "bad-0").await, "Failed");
    assert!(agent(&t, "flaky").await["status"]["earnedTakeoverLevel"].is_null(), "one run is below the minimum");
    submit(&t, "bad-1", "flaky").await;
    assert_eq!(finished(&t, "bad-1").await, "Failed");
    let f = eventually(Duration::from_secs(30), || async {
        let f = agent(&t, "flaky").await;
        f["status"]["earnedTakeoverLevel"].as_u64().map(|_| f)
    })
    .await;
    assert_eq!(f["status"]["earnedTakeoverLevel"], 2, "lowered by one from the initial L3: {f}");
    let h = f["status"]["takeoverHistory"].as_array().unwrap();
    assert_eq!(h.len(), 1, "{f}");
    assert_eq!(
        (h[0]["by"].as_str(), h[0]["from"].as_u64(), h[0]["to"].as_u64()),
        (Some("system:earned-levels"), Some(3), Some(2))
    );
    let why = h[0]["reason"].as_str().unwrap();
    assert!(why.contains("2 of the last 2 finished runs failed (100%)") && why.contains("50%"), "{why}");
    assert_eq!(condition(&f, "LevelLowered").unwrap()["reason"], "FailureRate");
    let changed: Vec<Value> =
        ledger(&t, "takeover.changed").await.into_iter().filter(|e| e["actor"]["id"] == "earned-levels").collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["params"]["reason"], why);

    // The lowering started a new record: one more failure is one of one, below the minimum.
    // Admission sees the lowered level at once (the task tells the admission cache).
    let mut m = manifest("AgentRun", "bad-2");
    m["spec"]["agentRef"]["name"] = json!("flaky");
    let (code, v) = t.post(NS, "agentruns", &m).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"]["takeover"]["earned"], 2, "{v}");
    assert_eq!(finished(&t, "bad-2").await, "Failed");

    // After a restart the counts are rebuilt from the store: one more failure (2 of 2 since the
    // lowering) lowers again, to L1.
    let t = t.restart_with(small_thresholds).await;
    submit(&t, "bad-3", "flaky").await;
    assert_eq!(finished(&t, "bad-3").await, "Failed");
    let f = eventually(Duration::from_secs(30), || async {
        let f = agent(&t, "flaky").await;
        (f["status"]["earnedTakeoverLevel"] == 1).then_some(f)
    })
    .await;
    let h = f["status"]["takeoverHistory"].as_array().unwrap();
    assert_eq!(h.len(), 2, "{f}");
    // bad-2 and bad-3 counted together, bad-0 and bad-1 (before the first lowering) did not.
    let why = h[1]["reason"].as_str().unwrap();
    assert!(why.contains("2 of the last 2 finished runs failed") && why.contains("from L2 to L1"), "{why}");
    t.stop().await;
}
