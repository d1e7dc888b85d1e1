#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Approvals of production run starts through the real server and controller: the run waits,
//! an Approval is created, a listed approver (not the submitter) decides once, a denial or an
//! expiry fails the run, and every step is in the ledger.

mod common;

use std::time::Duration;

use common::{TestServer, client_with, eventually, manifest, run_prerequisites};
use serde_json::{Value, json};

const NS: &str = "team-a";
const DEADLINE: Duration = Duration::from_secs(60);

async fn env(t: &TestServer, name: &str, spec: Value) {
    let mut m = manifest("Environment", name);
    m["spec"] = spec;
    let (code, v) = t.post(NS, "environments", &m).await;
    assert_eq!(code, 201, "{v}");
}

async fn submit(c: &reqwest::Client, t: &TestServer, name: &str, env: Option<&str>) -> Value {
    let mut m = manifest("AgentRun", name);
    // Production's default level is L1 (no approval needed); ask for L2.
    m["spec"]["takeoverLevel"] = json!(2);
    if let Some(e) = env {
        m["spec"]["environment"] = json!(e);
    }
    let r = c.post(t.coll(NS, "agentruns")).json(&m).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    r.json().await.unwrap()
}

async fn decide(c: &reqwest::Client, t: &TestServer, name: &str, verb: &str, reason: &str) -> (u16, Value) {
    let url = t.url(&format!("/api/v1/namespaces/{NS}/approvals/{name}/{verb}"));
    let r = c.post(url).json(&json!({"reason": reason})).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn condition<'a>(run: &'a Value, type_: &str) -> Option<&'a Value> {
    run["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

async fn phase_becomes(t: &TestServer, name: &str, phase: &str) -> Value {
    eventually(DEADLINE, || async {
        let (_, v) = t.get(&t.item(NS, "agentruns", name)).await;
        (v["status"]["phase"] == phase).then_some(v)
    })
    .await
}

async fn ledger(t: &TestServer, action: &str) -> Vec<Value> {
    let (code, l) = t.get(&t.url(&format!("/api/v1/ledger/entries?action={action}"))).await;
    assert_eq!(code, 200, "{l}");
    l["entries"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_run_waits_for_a_listed_approver_who_is_not_its_submitter() {
    let t = TestServer::start().await;
    run_prerequisites(&t, NS).await;
    env(&t, "prod", json!({"class": "production", "approvers": ["ann"]})).await;
    let sub = client_with(&t.token("sam", "submitter", Some(NS)).await);
    let ann = client_with(&t.token("ann", "approver", Some(NS)).await);
    let bob = client_with(&t.token("bob", "approver", Some(NS)).await);

    let run = submit(&sub, &t, "deploy", Some("prod")).await;
    let c = condition(&run, "AwaitingApproval").unwrap_or_else(|| panic!("{run}"));
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("ApprovalRequired")));
    assert_eq!(run["status"]["takeover"]["effective"], 2);
    let (code, a) = t.get(&t.item(NS, "approvals", "deploy-start")).await;
    assert_eq!(code, 200, "{a}");
    assert_eq!(a["spec"]["run"]["name"], "deploy");
    assert_eq!(a["spec"]["subject"], "user:sam");
    assert_eq!(a["spec"]["approvers"], json!(["ann"]));
    assert_eq!(a["spec"]["operation"]["tool"], "agentplane.run.start");
    assert_eq!(a["status"]["phase"], "Pending");

    // A run without the environment starts and finishes; the production one is still waiting
    // (the controller saw it first and left it alone).
    submit(&sub, &t, "dev-run", None).await;
    phase_becomes(&t, "dev-run", "Succeeded").await;
    let (_, v) = t.get(&t.item(NS, "agentruns", "deploy")).await;
    assert_eq!(v["status"]["phase"], "Pending", "{v}");
    assert!(v["status"].get("startedAt").is_none(), "{v}");

    // The submitter's role cannot decide; an approver not listed cannot either.
    assert_eq!(decide(&sub, &t, "deploy-start", "approve", "mine").await.0, 403);
    let (code, v) = decide(&bob, &t, "deploy-start", "approve", "lgtm").await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("not among this approval's approvers"), "{v}");

    let (code, v) = decide(&ann, &t, "deploy-start", "approve", "change 1234").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["status"]["phase"].as_str(), v["status"]["decidedBy"].as_str()),
        (Some("Approved"), Some("user:ann"))
    );
    assert_eq!(v["status"]["decisionReason"], "change 1234");
    let done = phase_becomes(&t, "deploy", "Succeeded").await;
    assert_eq!(condition(&done, "AwaitingApproval").unwrap()["status"], "False");

    // Decided once: a second decision is a conflict naming the first.
    let (code, v) = decide(&ann, &t, "deploy-start", "deny", "changed my mind").await;
    assert_eq!(code, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("already decided: Approved by user:ann"), "{v}");

    let requested = ledger(&t, "approval.requested").await;
    assert_eq!(requested.len(), 1);
    assert_eq!((requested[0]["run"].as_str(), requested[0]["outcome"].as_str()), (Some("deploy"), Some("pending")));
    let decided = ledger(&t, "approval.decided").await;
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["actor"], json!({"kind": "user", "id": "ann"}));
    assert_eq!((decided[0]["decision"].as_str(), decided[0]["outcome"].as_str()), (Some("approve"), Some("success")));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_expiry_and_separation_of_duties() {
    let t = TestServer::start_with(|c| c.governance.approval_sweep_seconds = 1).await;
    run_prerequisites(&t, NS).await;
    env(&t, "prod", json!({"class": "production"})).await;
    env(&t, "staging", json!({"class": "pre-production"})).await;
    let ann = client_with(&t.token("ann", "approver", Some(NS)).await);
    let ops = client_with(&t.token("olga", "admin", Some(NS)).await);

    // Not production: no approval.
    let run = submit(&t.client, &t, "stage", Some("staging")).await;
    assert!(condition(&run, "AwaitingApproval").is_none(), "{run}");

    // Separation of duties: whoever submitted may not approve, even an admin.
    submit(&ops, &t, "own", Some("prod")).await;
    let (code, v) = decide(&ops, &t, "own-start", "approve", "trust me").await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("separation of duties"), "{v}");

    // Denied: the run ends Failed, ApprovalDenied.
    let (code, v) = decide(&ann, &t, "own-start", "deny", "not during the freeze").await;
    assert_eq!(code, 200, "{v}");
    let failed = phase_becomes(&t, "own", "Failed").await;
    assert_eq!(condition(&failed, "Failed").unwrap()["reason"], "ApprovalDenied");
    let finished = ledger(&t, "run.finished").await;
    assert!(finished.iter().any(|e| e["run"] == "own" && e["outcome"] == "denied"), "{finished:?}");

    // Expired when someone tries to decide it: counts as denied.
    submit(&t.client, &t, "late", Some("prod")).await;
    let (_, mut a) = t.get(&t.item(NS, "approvals", "late-start")).await;
    a["spec"]["expiresAt"] = json!("2020-01-01T00:00:00Z");
    // (The sweeper may expire it first; either way it must end Expired and the run Failed.)
    let (code, _, v) = t.put(NS, "approvals", "late-start", &a).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = decide(&ann, &t, "late-start", "approve", "sorry, late").await;
    assert_eq!(code, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
    let failed = phase_becomes(&t, "late", "Failed").await;
    assert_eq!(condition(&failed, "Failed").unwrap()["reason"], "ApprovalExpired");
    let (_, a) = t.get(&t.item(NS, "approvals", "late-start")).await;
    assert_eq!(a["status"]["phase"], "Expired");

    // Expired by the sweeper without anyone asking.
    submit(&t.client, &t, "forgotten", Some("prod")).await;
    let (_, mut a) = t.get(&t.item(NS, "approvals", "forgotten-start")).await;
    a["spec"]["expiresAt"] = json!("2020-01-01T00:00:00Z");
    let (code, _, v) = t.put(NS, "approvals", "forgotten-start", &a).await;
    assert_eq!(code, 200, "{v}");
    let failed = phase_becomes(&t, "forgotten", "Failed").await;
    assert_eq!(condition(&failed, "Failed").unwrap()["reason"], "ApprovalExpired");
    let expired = ledger(&t, "approval.expired").await;
    assert_eq!(expired.len(), 2, "{expired:?}");
    assert!(expired.iter().all(|e| e["actor"] == json!({"kind": "system", "id": "approvals"})));

    // Unknown approval, unknown verb.
    assert_eq!(decide(&ann, &t, "nope", "approve", "x").await.0, 404);
    assert_eq!(decide(&ann, &t, "late-start", "maybe", "x").await.0, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_elevation_is_requested_granted_by_an_authoriser_and_reverts() {
    let t = TestServer::start_with(|c| {
        c.governance.approval_sweep_seconds = 1;
        c.controller.enabled = false;
    })
    .await;
    run_prerequisites(&t, NS).await;
    env(
        &t,
        "prod",
        json!({"class": "production", "emergency": {"allowed": true, "maxMinutes": 30, "authorizers": ["ann", "adm"]}}),
    )
    .await;
    env(&t, "qa", json!({"class": "test"})).await;
    let ann = client_with(&t.token("ann", "approver", Some(NS)).await);
    let adm = client_with(&t.token("adm", "admin", Some(NS)).await);
    let sub = client_with(&t.token("sam", "submitter", Some(NS)).await);
    // The agent has earned L5, so the environment's cap is what binds.
    let r = t
        .client
        .post(t.url(&format!("/api/v1/namespaces/{NS}/agents/a/takeover")))
        .json(&json!({"level": 5, "reason": "trusted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let elevate = |c: reqwest::Client, env: &'static str, body: Value| {
        let url = t.url(&format!("/api/v1/namespaces/{NS}/environments/{env}/elevation"));
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Bad requests, each naming the problem; nothing is created.
    let (code, v) = elevate(adm.clone(), "prod", json!({"level": 4, "minutes": 45, "reason": "incident"})).await;
    assert_eq!((code, v["field"].as_str()), (400, Some("minutes")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("emergency limit of 30 minutes"), "{v}");
    let (code, v) = elevate(adm.clone(), "prod", json!({"level": 5, "minutes": 5, "reason": "incident"})).await;
    assert_eq!((code, v["field"].as_str()), (400, Some("level")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("emergency limit of L4 (spec.emergency.maxLevel)"), "{v}");
    let (code, v) = elevate(adm.clone(), "prod", json!({"level": 2, "minutes": 5, "reason": "incident"})).await;
    assert_eq!((code, v["field"].as_str()), (400, Some("level")), "{v}");
    let (code, v) = elevate(adm.clone(), "prod", json!({"level": 4, "minutes": 5})).await;
    assert_eq!((code, v["field"].as_str()), (400, Some("reason")), "{v}");
    let (code, v) = elevate(adm.clone(), "qa", json!({"level": 5, "minutes": 5, "reason": "incident"})).await;
    assert_eq!(code, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("does not allow emergency elevation"), "{v}");
    let (code, _) = elevate(sub.clone(), "prod", json!({"level": 4, "minutes": 5, "reason": "incident"})).await;
    assert_eq!(code, 403);

    // A valid request: an Approval for the authorisers.
    let (code, a) = elevate(adm.clone(), "prod", json!({"level": 4, "minutes": 0.05, "reason": "incident 77"})).await;
    assert_eq!(code, 201, "{a}");
    let name = a["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(a["spec"]["operation"]["tool"], "agentplane.elevation");
    assert_eq!(a["spec"]["approvers"], json!(["ann", "adm"]));
    // The requester may not grant it, even as a listed authoriser.
    let (code, v) = decide(&adm, &t, &name, "approve", "me").await;
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("separation of duties"), "{v}");
    let (code, v) = decide(&ann, &t, &name, "approve", "confirmed incident").await;
    assert_eq!(code, 200, "{v}");

    // In force: the cap is L4 for runs admitted now.
    let (_, e) = t.get(&t.item(NS, "environments", "prod")).await;
    assert_eq!(
        (e["status"]["elevation"]["level"].as_u64(), e["status"]["elevation"]["grantedBy"].as_str()),
        (Some(4), Some("user:ann")),
        "{e}"
    );
    let mut m = manifest("AgentRun", "hotfix");
    m["spec"]["environment"] = json!("prod");
    m["spec"]["takeoverLevel"] = json!(5);
    let (code, run) = t.post(NS, "agentruns", &m).await;
    assert_eq!(code, 201, "{run}");
    let tk = &run["status"]["takeover"];
    assert_eq!(
        (tk["environmentCap"].as_u64(), tk["elevation"].as_u64(), tk["effective"].as_u64()),
        (Some(4), Some(4), Some(4)),
        "{run}"
    );

    // It ends on its own (3 s) and the cap reverts.
    eventually(DEADLINE, || async {
        let (_, e) = t.get(&t.item(NS, "environments", "prod")).await;
        e["status"].get("elevation").is_none().then_some(())
    })
    .await;
    let (_, v) = t.get(&t.url(&format!("/api/v1/namespaces/{NS}/takeover?agent=a&environment=prod&level=5"))).await;
    assert_eq!(
        (v["takeover"]["environmentCap"].as_u64(), v["takeover"]["effective"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    for action in ["elevation.requested", "elevation.granted", "elevation.expired"] {
        let entries = ledger(&t, action).await;
        assert_eq!(entries.len(), 1, "{action}: {entries:?}");
        assert_eq!(entries[0]["environment"], "prod", "{action}");
    }
    t.stop().await;
}
