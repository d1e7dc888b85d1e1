//! The controller's leader lease with two controllers over one store and real processes: only
//! the holder dispatches; when it stops, the other takes the lease, rebuilds its state from the
//! store, re-adopts the running agent and finishes the work; nothing is started twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_api::Kind;
use agentplane_control::controller::{ControllerConfig, LEASE_NAME, run_controller};
use agentplane_ledger::Actor;
use agentplane_store::{LedgerQuery, ListQuery, Store, resource_audit};
use agentplane_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(60);

async fn put(store: &Arc<SqliteStore>, kind: &str, name: &str, spec: Value, status: Option<Value>) {
    let mut obj = json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": chrono::Utc::now()}, "spec": spec});
    if let Some(s) = status {
        obj["status"] = s;
    }
    store.create(obj, resource_audit(Actor::user("test"), "resource.created")).await.unwrap();
}

async fn phases(store: &Arc<SqliteStore>) -> Vec<(String, String)> {
    let list = store.list(&ListQuery::new(Kind::AgentRun)).await.unwrap();
    let mut out: Vec<(String, String)> = list
        .items
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap().to_string(),
                r["status"]["phase"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(base: &std::path::Path, holder: &str) -> ControllerConfig {
    let mut c = ControllerConfig::new(base);
    c.holder = holder.into();
    c.lease_ttl = Duration::from_secs(3);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_dispatches_and_the_other_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let store = SqliteStore::open(&dir.path().join("db.sqlite"), SqliteOptions::default()).unwrap();
    // Bounded, and gone with the test's folder, so a failed test leaves no process behind.
    let script = format!(
        "i=0; while [ ! -e {g} ] && [ -d {d} ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done",
        g = gate.display(),
        d = dir.path().display()
    );
    put(&store, "AgentProvider", "gated", json!({"binary": "/bin/sh", "argsTemplate": ["-c", script]}), None).await;
    put(&store, "Agent", "gated", json!({"providerRef": {"name": "gated"}, "maxInFlight": 1}), None).await;
    for i in 0..3 {
        let spec = json!({"agentRef": {"name": "gated"}, "implementation": {"inline": {"text": "x"}}});
        put(&store, "AgentRun", &format!("r{i}"), spec, Some(json!({"phase": "Pending"}))).await;
    }

    let dyn_store: Arc<dyn Store> = store.clone();
    let (stop_a, rx_a) = watch::channel(false);
    let a = tokio::spawn(run_controller(dyn_store.clone(), config(dir.path(), "node-a"), rx_a));
    eventually("r0 to run under node-a", || async {
        (phases(&store).await.iter().filter(|(_, p)| p == "Running").count() == 1).then_some(())
    })
    .await;
    let (stop_b, rx_b) = watch::channel(false);
    let b = tokio::spawn(run_controller(dyn_store.clone(), config(dir.path(), "node-b"), rx_b));
    // node-b waits: were it dispatching too, its own scheduler would start a second run past
    // maxInFlight 1. Give it several lease polls' worth of time to misbehave.
    let probe_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < probe_until {
        let p = phases(&store).await;
        assert_eq!(p.iter().filter(|(_, p)| p == "Running").count(), 1, "{p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.acquire_lease(LEASE_NAME, "probe", Duration::from_secs(1)).await.unwrap().is_none(),
        "the lease is held"
    );

    // node-a stops (releasing the lease, leaving its agent running); node-b takes over.
    stop_a.send_replace(true);
    a.await.unwrap();
    std::fs::write(&gate, "").unwrap();
    eventually("every run to succeed under node-b", || async {
        let p = phases(&store).await;
        p.iter().all(|(_, p)| p == "Succeeded").then_some(())
    })
    .await;

    for i in 0..3 {
        let run = format!("r{i}");
        let entries =
            store.ledger_query(&LedgerQuery { run: Some(run.clone()), ..Default::default() }).await.unwrap().entries;
        let started = entries.iter().filter(|e| e.action == "run.started").count();
        let finished = entries.iter().filter(|e| e.action == "run.finished").count();
        assert_eq!((started, finished), (1, 1), "{run} started and finished once: {entries:?}");
    }
    stop_b.send_replace(true);
    b.await.unwrap();
    store.close().await.unwrap();
}
