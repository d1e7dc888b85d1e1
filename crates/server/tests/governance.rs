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

fn policy(name: &str, rego: &str) -> Value {
    let mut m = manifest("Policy", name);
    m["spec"] = json!({"modules": [{"name": "main", "rego": rego}]});
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_compiled_on_apply_and_tighten_run_starts() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    run_prerequisites(&t, NS).await;
    env(&t, "prod", json!({"class": "production", "approvers": ["ann"]})).await;

    // A module that does not parse is rejected on apply, with its line; nothing is stored.
    let bad = policy("broken", "package agentplane\n\ndecision := {\"verdict\": \"deny\"} if {\n  input.x ==\n}\n");
    let (code, v) = t.post(NS, "policies", &bad).await;
    assert_eq!(code, 400, "{v}");
    let e = &v["details"]["errors"][0];
    assert_eq!(
        (e["field"].as_str(), e["reason"].as_str()),
        (Some("spec.modules[0].rego"), Some("InvalidPolicy")),
        "{v}"
    );
    assert!(e["message"].as_str().unwrap().contains("line "), "{v}");
    assert_eq!(t.get(&t.item(NS, "policies", "broken")).await.0, 404);
    // So is one that defines no decision, through PUT too.
    let (code, _, v) = t.put(NS, "policies", "nodecision", &policy("nodecision", "package agentplane\nx := 1\n")).await;
    assert_eq!(code, 400, "{v}");

    // A policy that denies runs of agent `a` started by anyone but an admin.
    let deny = policy(
        "only-admins-start-a",
        "package agentplane\n\ndecision := {\"verdict\": \"deny\", \"reasons\": [{\"code\": \"AdminsOnly\", \"message\": \"only admins start agent a\"}]} if {\n  input.action.tool == \"agentplane.run.start\"\n  input.action.arguments.agent == \"a\"\n  not \"admin\" in input.subject.roles\n}\n",
    );
    assert_eq!(t.post(NS, "policies", &deny).await.0, 201);
    let sub = client_with(&t.token("sam", "submitter", Some(NS)).await);
    let r = sub.post(t.coll(NS, "agentruns")).json(&manifest("AgentRun", "by-sam")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "PolicyDenied", "{v}");
    assert!(v["message"].as_str().unwrap().contains("only admins start agent a"), "{v}");
    assert_eq!(v["details"]["decision"]["reasons"][0]["source"], "policy:only-admins-start-a", "{v}");
    assert_eq!(t.get(&t.item(NS, "agentruns", "by-sam")).await.0, 404, "nothing was created");
    let (_, l) = t.get(&t.url("/api/v1/ledger/entries?action=policy.decided")).await;
    let denied = l["entries"].as_array().unwrap();
    assert_eq!(denied.len(), 1, "{l}");
    assert_eq!((denied[0]["outcome"].as_str(), denied[0]["run"].as_str()), (Some("denied"), Some("by-sam")));
    assert_eq!(denied[0]["actor"]["id"], "sam");
    // The admin (the test client) may.
    assert_eq!(t.post(NS, "agentruns", &manifest("AgentRun", "by-admin")).await.0, 201);

    // A policy that asks for approval in test environments: the run waits like a production one.
    let approve = policy(
        "approve-in-test",
        "package agentplane\n\ndecision := {\"verdict\": \"require_approval\", \"reasons\": [\"runs in qa need a look\"]} if {\n  input.environment.class == \"test\"\n}\n",
    );
    assert_eq!(t.post(NS, "policies", &approve).await.0, 201);
    env(&t, "qa", json!({"class": "test"})).await;
    let mut m = manifest("AgentRun", "in-qa");
    m["spec"]["environment"] = json!("qa");
    let (code, v) = t.post(NS, "agentruns", &m).await;
    assert_eq!(code, 201, "{v}");
    let waiting =
        v["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "AwaitingApproval").cloned();
    let waiting = waiting.unwrap_or_else(|| panic!("no AwaitingApproval in {v}"));
    assert!(waiting["message"].as_str().unwrap().contains("runs in qa need a look"), "{waiting}");
    let (code, a) = t.get(&t.item(NS, "approvals", "in-qa-start")).await;
    assert_eq!(code, 200, "{a}");
    assert!(a["spec"]["reason"].as_str().unwrap().contains("runs in qa need a look"), "{a}");

    // A policy that loops is accepted (the sample input may not reach the loop) but denies when
    // it runs out of time: fail closed, with the reason.
    let looping = policy(
        "loops",
        "package agentplane\n\nn := count([x | some x in numbers.range(1, 99999); some y in numbers.range(1, 99999); x == y])\n\ndecision := {\"verdict\": \"allow\"} if {\n  input.action.tool == \"agentplane.run.start\"\n  n > 0\n}\n",
    );
    assert_eq!(t.post(NS, "policies", &looping).await.0, 201, "a slow policy is not a syntax error");
    let (code, v) = t.post(NS, "agentruns", &manifest("AgentRun", "slow")).await;
    assert_eq!(code, 422, "{v}");
    let reasons = v["details"]["decision"]["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r["code"] == "PolicyError" && r["source"] == "policy:loops"), "{v}");
    // Deleting the policies lets runs start again.
    for p in ["loops", "approve-in-test", "only-admins-start-a"] {
        assert_eq!(t.delete(NS, "policies", p).await.0, 200);
    }
    assert_eq!(t.post(NS, "agentruns", &manifest("AgentRun", "free")).await.0, 201);
    t.stop().await;
}
