//! The ledger through the real server: every write recorded atomically with its entry,
//! checkpoints signed with the server's key, and tampering of the database detected by verifying
//! the export.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agentplane_ledger::{LedgerPublicKey, ProblemKind, VerifyReport, verify_export};
use common::{TestServer, eventually, manifest};
use serde_json::{Value, json};

fn db(t: &TestServer) -> rusqlite::Connection {
    rusqlite::Connection::open(t.data_dir().join("agentplane.db")).unwrap()
}

async fn entries(t: &TestServer, query: &str) -> Vec<Value> {
    let (code, v) = t.get(&t.url(&format!("/api/v1/ledger/entries?{query}"))).await;
    assert_eq!(code, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

async fn public_key(t: &TestServer) -> LedgerPublicKey {
    let (_, v) = t.get(&t.url("/api/v1/ledger/public-key")).await;
    LedgerPublicKey::from_base64(v["publicKey"].as_str().unwrap()).unwrap()
}

async fn verify(t: &TestServer, key: &LedgerPublicKey) -> VerifyReport {
    let body = t.client.get(t.url("/api/v1/ledger/export?format=jsonl")).send().await.unwrap().text().await.unwrap();
    verify_export(std::io::Cursor::new(body), Some(key))
}

async fn start_checkpointing() -> TestServer {
    TestServer::start_with(|c| {
        c.ledger.checkpoint_every_entries = 5;
        c.ledger.checkpoint_interval_seconds = 1;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_write_is_recorded_with_actor_and_target() {
    let t = TestServer::start().await;
    let (_, created) = t.post("team-a", "agents", &manifest("Agent", "a")).await;
    let m = manifest("Agent", "a");
    assert_eq!(t.put("team-a", "agents", "a", &m).await.1.as_deref(), Some("unchanged"));
    let mut changed = m.clone();
    changed["spec"]["maxInFlight"] = json!(2);
    assert_eq!(t.put("team-a", "agents", "a", &changed).await.1.as_deref(), Some("configured"));
    assert_eq!(t.delete("team-a", "agents", "a").await.0, 200);
    // Failed writes are not recorded.
    assert_eq!(t.delete("team-a", "agents", "a").await.0, 404);

    let all = entries(&t, "").await;
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["token.created", "resource.created", "resource.updated", "resource.deleted"],
        "the bootstrap token, then the writes; unchanged apply writes nothing"
    );
    assert_eq!(all[0]["actor"], json!({"kind": "system", "id": "bootstrap"}));
    assert_eq!(all[0]["target"]["name"], "bootstrap-admin");
    assert!(!all[0].to_string().contains(&t.admin_token), "the ledger never holds a token");
    let all = &all[1..];
    for e in all {
        assert_eq!(e["actor"], json!({"kind": "user", "id": "bootstrap-admin"}), "the authenticated caller");
        assert_eq!(e["target"]["kind"], "Agent");
        assert_eq!(e["target"]["namespace"], "team-a");
        assert_eq!(e["target"]["name"], "a");
        assert_eq!(e["target"]["uid"], created["metadata"]["uid"]);
    }
    // Query by target finds every entry about one object.
    assert_eq!(entries(&t, "target=agent/team-a/a").await.len(), 3);
    assert_eq!(entries(&t, "action=resource.deleted").await.len(), 1);
    assert_eq!(entries(&t, "namespace=other").await.len(), 0);
    let (code, e) = t.get(&t.url("/api/v1/ledger/entries?since=yesterday")).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("since")));
    let (code, e) = t.get(&t.url("/api/v1/ledger/entries?target=agent/a")).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("target")));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_and_its_entry_commit_together() {
    let t = TestServer::start().await;
    assert_eq!(t.post("default", "agents", &manifest("Agent", "first")).await.0, 201);
    // Inject a failure on the ledger side: the entry cannot be written, so the change must not
    // happen either.
    db(&t)
        .execute_batch(
            "CREATE TRIGGER fail_ledger BEFORE INSERT ON ledger WHEN NEW.target_name = 'doomed'
             BEGIN SELECT RAISE(ABORT, 'injected ledger failure'); END;",
        )
        .unwrap();
    let (code, e) = t.post("default", "agents", &manifest("Agent", "doomed")).await;
    assert_eq!(code, 503, "{e}");
    assert_eq!(t.get(&t.item("default", "agents", "doomed")).await.0, 404, "no change without its entry");
    // Inject a failure on the change side: no entry for a change that did not happen.
    db(&t)
        .execute_batch(
            "CREATE TRIGGER fail_object BEFORE INSERT ON objects WHEN NEW.name = 'broken'
             BEGIN SELECT RAISE(ABORT, 'injected store failure'); END;",
        )
        .unwrap();
    let (code, _) = t.post("default", "agents", &manifest("Agent", "broken")).await;
    assert_eq!(code, 503);
    // Other writes in the same moments are unaffected, and the chain is intact.
    assert_eq!(t.post("default", "agents", &manifest("Agent", "after")).await.0, 201);
    let all = entries(&t, "").await;
    let names: Vec<&str> = all.iter().map(|e| e["target"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bootstrap-admin", "first", "after"]);
    let key = public_key(&t).await;
    let report = verify(&t, &key).await;
    assert!(report.intact, "{report:?}");
    assert_eq!(report.entries_checked, 3);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_signed_and_verify() {
    let t = start_checkpointing().await;
    // 11 writes after the bootstrap token's entry: 12 entries.
    for i in 0..11 {
        assert_eq!(t.post("default", "agents", &manifest("Agent", &format!("a{i}"))).await.0, 201);
    }
    let cps = eventually(Duration::from_secs(20), || async {
        let (_, v) = t.get(&t.url("/api/v1/ledger/checkpoints")).await;
        let cps = v["checkpoints"].as_array().unwrap().clone();
        (cps.last().and_then(|c| c["seq"].as_u64()) == Some(12)).then_some(cps)
    })
    .await;
    let (_, pk) = t.get(&t.url("/api/v1/ledger/public-key")).await;
    assert_eq!(pk["algorithm"], "ed25519");
    assert!(cps.iter().all(|c| c["keyId"] == pk["keyId"]));
    let key = public_key(&t).await;
    let report = verify(&t, &key).await;
    assert!(report.intact, "{report:?}");
    assert_eq!(report.entries_checked, 12);
    assert_eq!(report.last_checkpoint.as_ref().map(|c| c.seq), Some(12));
    // The key file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.data_dir().join("ledger.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    t.stop().await;
}

/// Write 12 entries (the bootstrap token's and 11 agents), wait for a checkpoint at 10 or more, stop; apply `tamper` to the database
/// (and data dir); restart and verify with the ORIGINAL public key.
async fn tampered(tamper: impl FnOnce(&rusqlite::Connection, &std::path::Path)) -> VerifyReport {
    tampered_then(tamper, false).await
}

/// As [`tampered`]; with `resign`, the restarted server signs a fresh checkpoint (with whatever
/// key it now has) before the export is verified.
async fn tampered_then(tamper: impl FnOnce(&rusqlite::Connection, &std::path::Path), resign: bool) -> VerifyReport {
    let t = start_checkpointing().await;
    for i in 0..11 {
        assert_eq!(t.post("default", "agents", &manifest("Agent", &format!("a{i:02}"))).await.0, 201);
    }
    eventually(Duration::from_secs(20), || async {
        let (_, v) = t.get(&t.url("/api/v1/ledger/checkpoints")).await;
        (v["checkpoints"].as_array().unwrap().last().and_then(|c| c["seq"].as_u64()) == Some(12)).then_some(())
    })
    .await;
    let key = public_key(&t).await;
    assert!(verify(&t, &key).await.intact);
    let t = {
        let mut t = t;
        t.server.take().unwrap().shutdown().await.unwrap();
        tamper(&db(&t), &t.data_dir());
        let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
        TestServer::start_in(dir, |c| {
            c.ledger.checkpoint_interval_seconds = if resign { 1 } else { 3600 };
            c.ledger.checkpoint_every_entries = if resign { 1 } else { 1000 };
        })
        .await
    };
    if resign {
        eventually(Duration::from_secs(20), || async {
            let (_, v) = t.get(&t.url("/api/v1/ledger/checkpoints")).await;
            (!v["checkpoints"].as_array().unwrap().is_empty()).then_some(())
        })
        .await;
    }
    let report = verify(&t, &key).await;
    t.stop().await;
    report
}

fn problem(r: &VerifyReport) -> (u64, ProblemKind) {
    let p = r.problem.as_ref().unwrap_or_else(|| panic!("tampering was not detected: {r:?}"));
    (p.seq, p.kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_and_located() {
    // Edit one byte of an entry.
    let r = tampered(|db, _| {
        db.execute_batch("UPDATE ledger SET body = replace(body, '\"a03\"', '\"a04\"') WHERE seq = 5").unwrap();
    })
    .await;
    assert_eq!(problem(&r), (5, ProblemKind::Edited), "{r:?}");

    // Delete an entry.
    let r = tampered(|db, _| {
        db.execute_batch("DELETE FROM ledger WHERE seq = 7").unwrap();
    })
    .await;
    assert_eq!(problem(&r), (7, ProblemKind::Deleted), "{r:?}");

    // Swap two entries.
    let r = tampered(|db, _| {
        db.execute_batch(
            "UPDATE ledger SET seq = -1 WHERE seq = 3; UPDATE ledger SET seq = 3 WHERE seq = 4;
             UPDATE ledger SET seq = 4 WHERE seq = -1;",
        )
        .unwrap();
    })
    .await;
    assert_eq!(problem(&r).1, ProblemKind::Reordered, "{r:?}");

    // Truncate the tail after a checkpoint.
    let r = tampered(|db, _| {
        db.execute_batch("DELETE FROM ledger WHERE seq > 9").unwrap();
    })
    .await;
    assert_eq!(problem(&r).1, ProblemKind::Truncated, "{r:?}");

    // Replace the signing key and re-sign: checkpoints signed with the new key fail against the
    // original (pinned) public key.
    let r = tampered_then(
        |db, dir| {
            std::fs::remove_file(dir.join("ledger.key")).unwrap();
            db.execute_batch("DELETE FROM ledger_checkpoints").unwrap();
        },
        true,
    )
    .await;
    assert_eq!(problem(&r).1, ProblemKind::BadSignature, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_show_in_the_summary_and_are_recorded_once() {
    let t = TestServer::start_with(|c| c.ledger.anomaly_scan_interval_seconds = 1).await;
    // No history, then 60 writes in one hour: a burst for this actor.
    for i in 0..60 {
        assert_eq!(t.post("default", "agents", &manifest("Agent", &format!("b{i}"))).await.0, 201);
    }
    let today = chrono::Utc::now().date_naive().to_string();
    let (code, summary) = t.get(&t.url(&format!("/api/v1/ledger/summary?day={today}"))).await;
    assert_eq!(code, 200, "{summary}");
    assert_eq!(summary["byAction"]["resource.created"], 60, "{summary}");
    let anomalies = summary["anomalies"].as_array().unwrap();
    assert!(anomalies.iter().any(|a| a["kind"] == "burst" && a["actor"] == "user:bootstrap-admin"), "{summary}");
    // The scanner records it as an event, once.
    let flagged = eventually(Duration::from_secs(20), || async {
        let e = entries(&t, "action=anomaly.flagged").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(flagged[0]["actor"], json!({"kind": "system", "id": "anomaly-detector"}));
    assert_eq!(flagged[0]["params"]["kind"], "burst");
    let (code, e) = t.get(&t.url("/api/v1/ledger/summary?day=24-11-2026")).await;
    assert_eq!((code, e["field"].as_str()), (400, Some("day")));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_anomaly_is_flagged_once_per_day() {
    use agentplane_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> =
        agentplane_store_sqlite::SqliteStore::open(&dir.path().join("db"), Default::default()).unwrap();
    let drafts = (0..5)
        .map(|_| agentplane_ledger::EntryDraft {
            actor: agentplane_ledger::Actor::agent("coder"),
            action: "elevation.requested".into(),
            namespace: Some("default".into()),
            target: None,
            run: None,
            environment: Some("production".into()),
            takeover_level: Some(2),
            decision: Some("deny".into()),
            outcome: "denied".into(),
            params: json!({}),
            error: None,
            trace_id: None,
        })
        .collect();
    store.append(drafts).await.unwrap();
    let today = chrono::Utc::now().date_naive();
    let first = agentplane_server::ledger::flag_anomalies(&store, today).await.unwrap();
    assert!(first >= 2, "elevation use and repeated denials: {first}");
    assert_eq!(agentplane_server::ledger::flag_anomalies(&store, today).await.unwrap(), 0, "no duplicates");
    let page = store
        .ledger_query(&agentplane_store::LedgerQuery { action: Some("anomaly.flagged".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), first);
    let kinds: Vec<&str> = page.entries.iter().filter_map(|e| e.params["kind"].as_str()).collect();
    assert!(kinds.contains(&"elevation_use") && kinds.contains(&"repeated_denials"), "{kinds:?}");
    store.close().await.unwrap();
}
