//! A test server: the real server on a random loopback port with its own temp data directory.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use agentplane_server::{Config, RunningServer, start};
use serde_json::{Value, json};

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub base: String,
    /// Sends the bootstrap admin token with every request.
    pub client: reqwest::Client,
    /// The bootstrap admin token (from `<data_dir>/admin-token`).
    pub admin_token: String,
    /// No credentials.
    pub anon: reqwest::Client,
}

/// A client that sends `Authorization: Bearer <token>` with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    v.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, v);
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, |_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), f).await
    }

    pub async fn start_in(dir: tempfile::TempDir, f: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            shutdown_grace_seconds: 10,
            ..Config::default()
        };
        // Tests make many requests quickly; the rate limit has its own test.
        config.auth.rate_limit_per_second = 0;
        // Their agents write outside their run folders on purpose; the sandbox has its own tests
        // (crates/agentctl/tests/sandbox.rs).
        config.sandbox.enabled = false;
        f(&mut config);
        let token_file = config.data_dir.join("admin-token");
        let server = start(config).await.unwrap();
        let base = format!("http://{}", server.addr);
        let admin_token = std::fs::read_to_string(token_file).unwrap().trim().to_string();
        TestServer {
            dir,
            server: Some(server),
            base,
            client: client_with(&admin_token),
            admin_token,
            anon: reqwest::Client::new(),
        }
    }

    /// Create an API token with `role` (cluster-wide when `namespace` is `None`); returns it.
    pub async fn token(&self, name: &str, role: &str, namespace: Option<&str>) -> String {
        let r = self
            .client
            .post(self.url("/api/v1/tokens"))
            .json(&json!({"name": name, "role": role, "namespace": namespace}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stop gracefully and start again on the same data directory.
    pub async fn restart(self) -> TestServer {
        self.restart_with(|_| {}).await
    }

    pub async fn restart_with(mut self, f: impl FnOnce(&mut Config)) -> TestServer {
        self.server.take().unwrap().shutdown().await.unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        TestServer::start_in(dir, f).await
    }

    pub async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn coll(&self, ns: &str, plural: &str) -> String {
        self.url(&format!("/api/v1/namespaces/{ns}/{plural}"))
    }

    pub fn item(&self, ns: &str, plural: &str, name: &str) -> String {
        self.url(&format!("/api/v1/namespaces/{ns}/{plural}/{name}"))
    }

    pub async fn post(&self, ns: &str, plural: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.coll(ns, plural)).json(body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn put(&self, ns: &str, plural: &str, name: &str, body: &Value) -> (u16, Option<String>, Value) {
        let r = self.client.put(self.item(ns, plural, name)).json(body).send().await.unwrap();
        let h = r.headers().get("x-agentplane-apply-result").map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), h, r.json().await.unwrap())
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        let r = self.client.get(url).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn delete(&self, ns: &str, plural: &str, name: &str) -> (u16, Value) {
        let r = self.client.delete(self.item(ns, plural, name)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

/// What runs in `ns` need to be admitted by the `manifest("AgentRun", …)`s: provider `shell`,
/// agent `a`, spec `s` (created without the `app=test` label so label-filtered lists skip them).
pub async fn run_prerequisites(t: &TestServer, ns: &str) {
    for (kind, plural, name) in [
        ("AgentProvider", "agentproviders", "shell"),
        ("Agent", "agents", "a"),
        ("ImplementationSpec", "implementationspecs", "s"),
    ] {
        let mut m = manifest(kind, name);
        m["metadata"].as_object_mut().unwrap().remove("labels");
        let (code, v) = t.post(ns, plural, &m).await;
        assert_eq!(code, 201, "{v}");
    }
}

/// A minimal valid manifest of each kind.
pub fn manifest(kind: &str, name: &str) -> Value {
    let spec = match kind {
        "AgentProvider" => json!({"binary": "/bin/sh", "argsTemplate": ["-c", "true"]}),
        "Agent" => json!({"providerRef": {"name": "shell"}}),
        "ImplementationSpec" => json!({"text": "do the thing", "summary": "thing"}),
        "ImplementationSource" => json!({"provider": "github", "scope": {"repository": "o/r"}}),
        "AgentRun" => json!({"agentRef": {"name": "a"}, "implementationSpecRef": {"name": "s"}}),
        "Memory" => json!({"type": "sqlite", "capabilities": ["kv"]}),
        "Environment" => json!({"class": "test"}),
        "Tool" => json!({"mcp": {"url": "http://127.0.0.1:9/mcp"}, "operations": [{"name": "read", "type": "read"}]}),
        "Approval" => {
            json!({"subject": "agent:a", "operation": {"tool": "exec"}, "reason": "needs a human", "expiresAt": "2026-12-01T00:00:00Z"})
        }
        "Policy" => {
            json!({"modules": [{"name": "m", "rego": "package agentplane\n\ndecision := {\"verdict\": \"deny\", \"reasons\": [\"never\"]} if {\n  input.action.tool == \"never.used\"\n}\n"}]})
        }
        other => panic!("no manifest for {other}"),
    };
    json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "labels": {"app": "test"}}, "spec": spec})
}

/// Poll `f` until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "condition not met before the deadline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
