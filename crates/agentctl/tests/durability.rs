//! Durability and process lifecycle through the real binary: an acknowledged create survives
//! `kill -9` of the server; SIGTERM shuts down gracefully and flushes the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, doc};

#[test]
fn acknowledged_creates_survive_kill_9() {
    let server = TestServer::start();
    let n = 200;
    let docs: Vec<String> =
        (0..n).map(|i| doc("Agent", &format!("agent-{i}"), "  providerRef:\n    name: shell\n")).collect();
    let file = server.write("many.yaml", &docs.join("---\n"));
    let out = server.ctl(&["apply", "-f", &file]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().filter(|l| l.ends_with(" created")).count(), n);
    // Every create was acknowledged with 201; kill the server without any chance to flush.
    let dir = server.kill9();
    let server = TestServer::start_in(dir);
    let out = server.ctl(&["get", "agents", "-o", "name"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), n, "every acknowledged create survived kill -9");
    let out = server.ctl(&["get", "agent", "agent-199", "-o", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn sigterm_shuts_down_gracefully_and_flushes() {
    let server = TestServer::start();
    let file = server.write("a.yaml", &doc("Agent", "kept", "  providerRef:\n    name: shell\n"));
    assert_eq!(server.ctl(&["apply", "-f", &file]).code, 0);
    let dir_path = server.dir.path().to_path_buf();
    let (code, log) = server.terminate();
    assert_eq!(code, Some(0), "clean exit on SIGTERM; log:\n{log}");
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains("store flushed and closed"), "{log}");
    // The WAL was checkpointed into the database file at close.
    let wal = dir_path.join("data/agentplane.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0, "WAL left behind after a clean shutdown");
}
