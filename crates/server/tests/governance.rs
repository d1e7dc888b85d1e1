#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Takeover levels through the real server: the effective level at admission, changes with a
//! reason, recorded in the resource and the ledger.

mod common;

use common::{TestServer, client_with, manifest, run_prerequisites};
use serde_json::{Value, json};

const NS: &str = "team-a";

async fn submit(t: &TestServer, name: &str, env: Option<&str>, level: Option<u8>) -> Value {
    let mut m = manifest("AgentRun", name);
    if let Some(e) = env {
        m["spec"]["environment"] = json!(e);
    }
    if let Some(l) = level {
        m["spec"]["takeoverLevel"] = json!(l);
    }
    let (code, v) = t.post(NS, "agentruns", &m).await;
    assert_eq!(code, 201, "{v}");
    v["status"]["takeover"].clone()
}

async fn env(t: &TestServer, name: &str, spec: Value) {
    let mut m = manifest("Environment", name);
    m["spec"] = spec;
    let (code, v) = t.post(NS, "environments", &m).await;
    assert_eq!(code, 201, "{v}");
}

async fn set(t: &TestServer, plural: &str, name: &str, body: Value) -> (u16, Value) {
    let r = t
        .client
        .post(t.url(&format!("/api/v1/namespaces/{NS}/{plural}/{name}/takeover")))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn levels(v: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    (n("requested"), n("environmentCap"), n("earned"), n("effective"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effective_level_is_the_minimum_of_requested_cap_and_earned() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    run_prerequisites(&t, NS).await;
    env(&t, "prod", json!({"class": "production"})).await;
    env(&t, "dev", json!({"class": "development", "defaultTakeoverLevel": 4})).await;

    // No environment: development defaults (asks L3, cap L5), earned = the initial level (3).
    let no_env = submit(&t, "r1", None, None).await;
    assert_eq!(levels(&no_env), (3, 5, 3, 3), "{no_env}");
    assert_eq!(no_env["environmentClass"], "development");
    // Production caps at L2 whatever is asked.
    let prod = submit(&t, "r2", Some("prod"), Some(5)).await;
    assert_eq!(levels(&prod), (5, 2, 3, 2), "{prod}");
    assert_eq!(prod["environmentClass"], "production");
    // The environment's default request, bounded by what the agent earned.
    assert_eq!(levels(&submit(&t, "r3", Some("dev"), None).await), (4, 5, 3, 3));

    // Raise the agent's earned level: later runs get it, earlier ones keep theirs.
    let (code, v) = set(&t, "agents", "a", json!({"level": 5, "reason": "40 clean runs"})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["result"].as_str(), v["from"].clone(), v["to"].as_u64()), (Some("changed"), Value::Null, Some(5)));
    assert_eq!(levels(&submit(&t, "r4", Some("dev"), None).await), (4, 5, 5, 4));
    let (_, r1) = t.get(&t.item(NS, "agentruns", "r1")).await;
    assert_eq!(r1["status"]["takeover"]["effective"], 3);

    // Lower the production cap to L1 (its default follows), recorded on the environment.
    let (code, v) = set(&t, "environments", "prod", json!({"maxLevel": 1, "reason": "release freeze"})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["from"].as_u64(), v["to"].as_u64()), (Some(2), Some(1)));
    assert_eq!(levels(&submit(&t, "r5", Some("prod"), Some(2)).await), (2, 1, 5, 1));
    let (_, e) = t.get(&t.item(NS, "environments", "prod")).await;
    assert_eq!(e["spec"]["maxTakeoverLevel"], 1);
    let h = &e["status"]["takeoverHistory"];
    assert_eq!(h.as_array().unwrap().len(), 1, "{e}");
    assert_eq!(
        (h[0]["from"].as_u64(), h[0]["to"].as_u64(), h[0]["reason"].as_str()),
        (Some(2), Some(1), Some("release freeze"))
    );
    assert_eq!(h[0]["by"], "user:bootstrap-admin");

    // The same level again changes nothing and records nothing.
    let (code, v) = set(&t, "agents", "a", json!({"level": 5, "reason": "again"})).await;
    assert_eq!((code, v["result"].as_str()), (200, Some("unchanged")), "{v}");

    // The view answers what a run would get.
    let (code, v) = t.get(&t.url(&format!("/api/v1/namespaces/{NS}/takeover?agent=a&environment=prod&level=4"))).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(levels(&v["takeover"]), (4, 1, 5, 1));
    assert_eq!(v["agentHistory"].as_array().unwrap().len(), 1);

    // Every change is in the ledger: who, from, to, why.
    let (code, l) = t.get(&t.url("/api/v1/ledger/entries?action=takeover.changed")).await;
    assert_eq!(code, 200, "{l}");
    let items = l["entries"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{l}");
    assert_eq!(items[0]["actor"], json!({"kind": "user", "id": "bootstrap-admin"}));
    assert_eq!(items[0]["params"], json!({"field": "level", "from": null, "to": 5, "reason": "40 clean runs"}));
    assert_eq!(items[0]["takeoverLevel"], 5);
    assert_eq!(items[1]["params"]["reason"], "release freeze");
    assert_eq!(items[1]["environment"], "prod");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_a_reason_or_out_of_range_are_refused() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    run_prerequisites(&t, NS).await;
    env(&t, "prod", json!({"class": "production"})).await;
    for (plural, name, body, field) in [
        ("agents", "a", json!({"level": 4}), "reason"),
        ("agents", "a", json!({"level": 4, "reason": "   "}), "reason"),
        ("agents", "a", json!({"level": 4, "reason": "x".repeat(1025)}), "reason"),
        ("agents", "a", json!({"level": 9, "reason": "r"}), "level"),
        ("agents", "a", json!({"reason": "r"}), "level"),
        ("agents", "a", json!({"maxLevel": 2, "reason": "r"}), "maxLevel"),
        ("environments", "prod", json!({"level": 2, "reason": "r"}), "level"),
        ("environments", "prod", json!({"maxLevel": 0, "reason": "r"}), "maxLevel"),
    ] {
        let (code, v) = set(&t, plural, name, body.clone()).await;
        assert_eq!((code, v["field"].as_str()), (400, Some(field)), "{body}: {v}");
    }
    let (code, v) = set(&t, "agents", "nobody", json!({"level": 2, "reason": "r"})).await;
    assert_eq!(code, 404, "{v}");
    let (code, v) = set(&t, "agentproviders", "shell", json!({"level": 2, "reason": "r"})).await;
    assert_eq!(code, 404, "{v}");
    // Nothing was recorded.
    let (_, l) = t.get(&t.url("/api/v1/ledger/entries?action=takeover.changed")).await;
    assert_eq!(l["entries"].as_array().unwrap().len(), 0, "{l}");
    let (_, a) = t.get(&t.item(NS, "agents", "a")).await;
    assert!(a["status"].get("earnedTakeoverLevel").is_none(), "{a}");

    // An operator may change levels; a submitter may not.
    let op = client_with(&t.token("ops", "operator", Some(NS)).await);
    let sub = client_with(&t.token("ci", "submitter", Some(NS)).await);
    let url = t.url(&format!("/api/v1/namespaces/{NS}/agents/a/takeover"));
    let body = json!({"level": 2, "reason": "probation"});
    assert_eq!(sub.post(&url).json(&body).send().await.unwrap().status().as_u16(), 403);
    let r = op.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["changedBy"], "user:ops");
    t.stop().await;
}
