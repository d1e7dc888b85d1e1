//! Authentication, RBAC, abuse limits and run tokens against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agentplane_server::auth::rbac::{ENDPOINTS, MATRIX, Perm, Role, allows, is_cluster_endpoint};
use common::{TestServer, client_with, eventually, manifest};
use serde_json::{Value, json};

/// A body that is valid enough for the endpoint (the matrix only cares about 401/403).
fn body_for(method: &str, path: &str, name: &str) -> Option<Value> {
    match (method, path) {
        ("POST", p) if p.ends_with("/tokens") => Some(json!({"name": name, "role": "viewer"})),
        ("POST", p) if p.ends_with("/agents") => Some(manifest("Agent", name)),
        ("PUT", p) if p.contains("/agents/") => Some(manifest("Agent", name)),
        ("POST", p) if p.ends_with("/agentruns") => Some(manifest("AgentRun", name)),
        ("PUT", p) if p.contains("/agentruns/") => Some(manifest("AgentRun", name)),
        _ => None,
    }
}

async fn call(client: &reqwest::Client, base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(m, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Every cell of the matrix: each role, granted cluster-wide and in namespace `team-a`, on every
/// endpoint (in `team-a`, and for namespaced grants also in `team-b`). Allowed calls never answer
/// 401 or 403; forbidden ones answer 403 naming the roles needed; no token answers 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix_is_enforced_cell_by_cell() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    for ns in ["team-a", "team-b"] {
        common::run_prerequisites(&t, ns).await;
    }
    let mut n = 0;
    let mut checked = 0;
    for role in Role::ALL {
        for scope in [None, Some("team-a")] {
            let label = format!("{role}@{}", scope.unwrap_or("cluster"));
            let token = t.token(&format!("m-{role}-{}", scope.unwrap_or("all")), role.as_str(), scope).await;
            let c = client_with(&token);
            let namespaces: &[&str] = if scope.is_some() { &["team-a", "team-b"] } else { &["team-a"] };
            for ns in namespaces {
                for (method, template, perm) in ENDPOINTS {
                    n += 1;
                    let name = format!("x{n}");
                    let path = template.replace("{ns}", ns).replace("{name}", &name);
                    let in_scope = match scope {
                        None => true,
                        Some(g) => *perm == Perm::VersionRead || (!is_cluster_endpoint(&path) && g == *ns),
                    };
                    let expect_ok = allows(role, *perm) && in_scope;
                    let (code, v) = call(&c, &t.base, method, &path, body_for(method, template, &name)).await;
                    if expect_ok {
                        assert!(
                            code != 401 && code != 403,
                            "{label} {method} {path}: expected allowed, got {code} {v}"
                        );
                    } else {
                        assert_eq!(code, 403, "{label} {method} {path}: expected 403, got {v}");
                        assert_eq!(v["code"], "Forbidden");
                        assert_eq!(v["details"]["permission"], perm.id(), "{v}");
                        let needed: Vec<&str> = perm.row().roles.iter().map(|r| r.as_str()).collect();
                        assert_eq!(v["details"]["roles"], json!(needed), "{v}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, ENDPOINTS.len() * Role::ALL.len() * 3);
    // Without a token: 401 with a Bearer challenge, everywhere.
    for (method, template, _) in ENDPOINTS {
        let path = template.replace("{ns}", "team-a").replace("{name}", "x");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = t.anon.request(m, t.url(&path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
        assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "Unauthorized");
    }
    t.stop().await;
}

/// `docs/rbac.md` shows exactly the matrix the server enforces.
#[test]
fn docs_rbac_matrix_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/rbac.md")).unwrap();
    let rows: Vec<Vec<String>> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>())
        .filter(|cells| cells.len() == 3 + Role::ALL.len())
        .collect();
    assert_eq!(rows.len(), MATRIX.len(), "one row per permission in docs/rbac.md");
    for (row, m) in rows.iter().zip(MATRIX) {
        assert_eq!(row[0], format!("`{}`", m.id));
        for (i, role) in Role::ALL.iter().enumerate() {
            let cell = &row[3 + i];
            assert_eq!(cell == "✓", m.roles.contains(role), "{} / {role}: {cell:?}", m.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_endpoints_and_unknown_paths() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    for p in ["/healthz", "/readyz", "/api/openapi.json"] {
        assert_eq!(t.anon.get(t.url(p)).send().await.unwrap().status().as_u16(), 200, "{p}");
    }
    assert_eq!(t.anon.get(t.url("/no/such/thing")).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(t.client.get(t.url("/no/such/thing")).send().await.unwrap().status().as_u16(), 404);
    assert_eq!(t.anon.get(t.url("/metrics")).send().await.unwrap().status().as_u16(), 401);
    t.stop().await;
    let t = TestServer::start_with(|c| c.auth.metrics_public = true).await;
    // Public when configured (404 until a /metrics endpoint exists, but never 401).
    assert_eq!(t.anon.get(t.url("/metrics")).send().await.unwrap().status().as_u16(), 404);
    t.stop().await;
}

async fn status_with(t: &TestServer, auth: &[&[u8]]) -> (u16, Value) {
    let mut req = t.anon.get(t.url("/api/v1/version"));
    for a in auth {
        req = req.header("authorization", reqwest::header::HeaderValue::from_bytes(a).unwrap());
    }
    let r = req.send().await.unwrap();
    let code = r.status().as_u16();
    if code == 401 {
        assert!(r.headers().contains_key("www-authenticate"));
    }
    (code, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_revoked_and_expired_tokens_are_refused() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    let good = format!("Bearer {}", t.admin_token);
    assert_eq!(status_with(&t, &[good.as_bytes()]).await.0, 200);
    let long = format!("Bearer {}", "a".repeat(9000));
    let unknown = format!("Bearer apt_{}", "A".repeat(43));
    for bad in [
        b"Bearer".as_slice(),
        b"Bearer ",
        b"Basic dXNlcjpwYXNz",
        b"Bearer a b",
        b"Bearer \xff\xfe",
        b"Token abc",
        b"Bearer apt_short",
        b"Bearer apr_forged.payload",
        b"Bearer x.y.z",
        long.as_bytes(),
        unknown.as_bytes(),
    ] {
        let (code, v) = status_with(&t, &[bad]).await;
        assert_eq!(code, 401, "{:?}: {v}", String::from_utf8_lossy(bad));
        assert_eq!(v["code"], "Unauthorized");
        assert!(!v.to_string().contains("aaaaaaaaaa"), "the token is not echoed");
    }
    let (code, v) = status_with(&t, &[good.as_bytes(), good.as_bytes()]).await;
    assert_eq!(code, 401, "two Authorization headers: {v}");
    let (code, v) = status_with(&t, &[long.as_bytes()]).await;
    assert!(v["message"].as_str().unwrap().contains("limit"), "{code} {v}");

    // Revoked: refused at once.
    let tok = t.token("ci", "viewer", None).await;
    let c = client_with(&tok);
    assert_eq!(c.get(t.url("/api/v1/agents")).send().await.unwrap().status().as_u16(), 200);
    let r = t.client.delete(t.url("/api/v1/tokens/ci")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.get(t.url("/api/v1/agents")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    assert_eq!(t.client.delete(t.url("/api/v1/tokens/ci")).send().await.unwrap().status().as_u16(), 404);

    // Expired.
    let r = t
        .client
        .post(t.url("/api/v1/tokens"))
        .json(&json!({"name": "short", "role": "viewer", "expiresIn": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    let c = client_with(v["token"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c.get(t.url("/api/v1/agents")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");

    // Bad token requests.
    for (body, field) in [
        (json!({"name": "x", "role": "root"}), "role"),
        (json!({"role": "viewer"}), "name"),
        (json!({"name": "Bad Name", "role": "viewer"}), "name"),
        (json!({"name": "x", "role": "viewer", "expiresIn": "forever"}), "expiresIn"),
        (json!({"name": "x", "role": "viewer", "scopes": []}), "scopes"),
    ] {
        let r = t.client.post(t.url("/api/v1/tokens")).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{v}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_shown_once_listed_without_secrets_and_recorded() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    let tok = t.token("deployer", "submitter", Some("team-a")).await;
    assert!(tok.starts_with("apt_") && tok.len() == 47, "{tok}");
    let (code, list) = t.get(&t.url("/api/v1/tokens")).await;
    assert_eq!(code, 200);
    let text = list.to_string();
    assert!(!text.contains(&tok) && !text.contains(&t.admin_token), "no secrets in the list");
    assert!(!text.contains("hash"), "no hashes either: {text}");
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bootstrap-admin", "deployer"]);
    let d = &list["items"][1];
    assert_eq!(
        (d["role"].as_str(), d["namespace"].as_str(), d["active"].as_bool()),
        (Some("submitter"), Some("team-a"), Some(true))
    );
    assert_eq!(d["createdBy"], "user:bootstrap-admin");
    // A second active token with the same name is a conflict.
    let r = t.client.post(t.url("/api/v1/tokens")).json(&json!({"name": "deployer", "role": "viewer"})).send().await;
    assert_eq!(r.unwrap().status().as_u16(), 409);
    let id = d["id"].as_str().unwrap();
    assert_eq!(t.client.delete(t.url(&format!("/api/v1/tokens/{id}"))).send().await.unwrap().status().as_u16(), 200);
    let (_, v) = t.get(&t.url("/api/v1/ledger/entries")).await;
    let acts: Vec<(&str, &str)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"]["name"] == "deployer")
        .map(|e| (e["action"].as_str().unwrap(), e["actor"]["id"].as_str().unwrap()))
        .collect();
    assert_eq!(acts, [("token.created", "bootstrap-admin"), ("token.revoked", "bootstrap-admin")], "{v}");
    assert!(!v.to_string().contains(&tok));
    // The bootstrap file is private, and a restart keeps using it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.data_dir().join("admin-token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = t.admin_token.clone();
    let t = t.restart().await;
    assert_eq!(t.admin_token, before);
    assert_eq!(t.get(&t.url("/api/v1/version")).await.0, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after_per_token() {
    let t = TestServer::start_with(|c| {
        c.controller.enabled = false;
        c.auth.rate_limit_per_second = 1;
        c.auth.rate_limit_burst = 3;
    })
    .await;
    let tok = t.token("busy", "viewer", None).await;
    let c = client_with(&tok);
    let mut codes = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let r = c.get(t.url("/api/v1/agents")).send().await.unwrap();
        codes.push(r.status().as_u16());
        if r.status().as_u16() == 429 && limited.is_none() {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            let v: Value = r.json().await.unwrap();
            limited = Some((retry, v));
        }
    }
    assert_eq!(&codes[..3], [200, 200, 200], "{codes:?}");
    assert!(codes[3..].contains(&429), "{codes:?}");
    let (retry, v) = limited.unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(v["code"], "RateLimited");
    // Another token has its own budget.
    let other = client_with(&t.admin_token);
    assert_eq!(other.get(t.url("/api/v1/version")).send().await.unwrap().status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.get(t.url("/api/v1/agents")).send().await.unwrap().status().as_u16(), 200, "refilled");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_request_targets_are_refused() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    let r = t.client.get(t.url(&format!("/api/v1/agents?labelSelector={}", "a".repeat(9000)))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 414);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitter_is_recorded_and_cannot_be_forged() {
    let t = TestServer::start_with(|c| c.controller.enabled = false).await;
    common::run_prerequisites(&t, "default").await;
    let sub = client_with(&t.token("alice", "submitter", Some("default")).await);
    let mut m = manifest("AgentRun", "r1");
    m["metadata"]["annotations"] = json!({"agentplane.io/submitted-by": "user:mallory", "note": "x"});
    let r = sub.post(t.coll("default", "agentruns")).json(&m).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["metadata"]["annotations"]["agentplane.io/submitted-by"], "user:alice", "{v}");
    assert_eq!(v["metadata"]["annotations"]["note"], "x");
    // A re-apply by someone else keeps the original submitter.
    let r = t.client.put(t.item("default", "agentruns", "r1")).json(&m).send().await.unwrap();
    assert_eq!(r.headers()["x-agentplane-apply-result"], "unchanged");
    let (_, v) = t.get(&t.item("default", "agentruns", "r1")).await;
    assert_eq!(v["metadata"]["annotations"]["agentplane.io/submitted-by"], "user:alice");
    // Applied (PUT) runs are stamped too.
    let r = sub.put(t.item("default", "agentruns", "r2")).json(&manifest("AgentRun", "r2")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["metadata"]["annotations"]["agentplane.io/submitted-by"], "user:alice");
    // The ledger names her.
    let (_, e) = t.get(&t.url("/api/v1/ledger/entries?action=run.submitted")).await;
    assert_eq!(e["entries"][0]["actor"], json!({"kind": "user", "id": "alice"}));
    t.stop().await;
}

/// The agent of a run reads its own run with `$AGENTPLANE_TOKEN` (curl against the server), but
/// not another run nor a list; once the run ended, the token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tokens_read_only_their_own_run_and_die_with_it() {
    let t = TestServer::start_with(|c| c.controller.enabled = true).await;
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().display().to_string();
    let base = t.base.clone();
    let script = format!(
        r#"c() {{ curl -s -o /dev/null -w '%{{http_code}}' -H "Authorization: Bearer $AGENTPLANE_TOKEN" "$1"; }}
own=$(c {base}/api/v1/namespaces/default/agentruns/$AGENT_RUN_NAME)
logs=$(c {base}/api/v1/namespaces/default/agentruns/$AGENT_RUN_NAME/events)
other=$(c {base}/api/v1/namespaces/default/agentruns/other)
list=$(c {base}/api/v1/namespaces/default/agentruns)
agents=$(c {base}/api/v1/namespaces/default/agents)
printf '%s' "$AGENTPLANE_TOKEN" > {out_dir}/token
echo "own=$own events=$logs other=$other list=$list agents=$agents" > {out_dir}/codes"#
    );
    let p = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentProvider", "metadata": {"name": "curl"},
        "spec": {"binary": "/bin/sh", "argsTemplate": ["-c", script]}});
    assert_eq!(t.post("default", "agentproviders", &p).await.0, 201);
    let a = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "curler"},
        "spec": {"providerRef": {"name": "curl"}}});
    assert_eq!(t.post("default", "agents", &a).await.0, 201);
    let run = |name: &str| {
        json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": name},
            "spec": {"agentRef": {"name": "curler"}, "implementation": {"inline": {"text": "look"}}, "retryLimit": 0}})
    };
    assert_eq!(t.post("default", "agentruns", &run("mine")).await.0, 201);
    let done = eventually(Duration::from_secs(60), || async {
        let (_, v) = t.get(&t.item("default", "agentruns", "mine")).await;
        matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(v)
    })
    .await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    let codes = std::fs::read_to_string(out.path().join("codes")).unwrap();
    assert_eq!(codes.trim(), "own=200 events=200 other=403 list=403 agents=403");
    let token = std::fs::read_to_string(out.path().join("token")).unwrap();
    assert!(token.starts_with("apr_"), "{token}");
    // The run has ended: the token is dead.
    let c = client_with(&token);
    let r = c.get(t.item("default", "agentruns", "mine")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("ended"), "{v}");
    // The token never reached the run's log, its stored object or the ledger.
    let logs = t.client.get(t.url("/api/v1/namespaces/default/agentruns/mine/logs")).send().await.unwrap();
    let logs = logs.text().await.unwrap();
    assert!(!logs.contains(&token));
    let (_, ledger) = t.get(&t.url("/api/v1/ledger/entries?run=mine")).await;
    assert!(!ledger.to_string().contains(&token));
    assert!(!done.to_string().contains(&token));
    t.stop().await;
}
