//! Behaviour specific to the SQLite backend: compaction, lagging watchers, schema versions,
//! dropping without close, and tuning options.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::{API_VERSION, Kind};
use agentplane_store::conformance::audit;
use agentplane_store::{
    EventType, ListQuery, ObjectKey, Precondition, Revision, Store, StoreError, WatchEvent, WatchQuery, WatchStream,
    revision_of,
};
use agentplane_store_sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore, Synchronous};
use futures::StreamExt;
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(20);

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nested").join("store.db")
}

async fn open(path: &Path, options: SqliteOptions) -> Result<Arc<SqliteStore>, StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || SqliteStore::open(&path, options)).await.expect("the open task")
}

fn agent(ns: &str, name: &str) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "Agent", "metadata": {"name": name, "namespace": ns}, "spec": {}})
}

fn rv(obj: &Value) -> Revision {
    revision_of(obj).expect("resourceVersion")
}

async fn next_item(stream: &mut WatchStream) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(STEP, stream.next()).await.expect("a watch item within the deadline").expect("the watch ended")
}

/// `count` creates from 16 concurrent tasks; returns the revision after them.
async fn create_many(store: &Arc<SqliteStore>, prefix: &str, count: usize) -> Revision {
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = Arc::clone(store);
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                for i in (t..count).step_by(16) {
                    store.create(agent("bulk", &format!("{prefix}-{i:05}")), audit("create")).await.expect("create");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("create task");
    }
    store.revision().await.expect("revision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_is_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions { event_history: 10, ..SqliteOptions::default() };
    let store = open(&db(&dir), options.clone()).await.expect("open");
    for i in 0..50 {
        store.create(agent("c", &format!("a{i:02}")), audit("create")).await.expect("create");
    }
    let rev = store.revision().await.expect("revision");
    assert_eq!(rev, 50);

    match store.watch(WatchQuery::all_from(0)).await {
        Err(StoreError::Expired { requested, oldest }) => {
            assert_eq!(requested, 0);
            assert!(oldest > 1 && oldest <= rev - 9, "oldest retained {oldest}");
        }
        Ok(_) => panic!("a watch from revision 0 should be Expired after compaction"),
        Err(e) => panic!("expected Expired, got {e}"),
    }
    // The last `event_history` events are always retained.
    let mut watch = store.watch(WatchQuery::all_from(rev - 10)).await.expect("watch within the history");
    for expected in rev - 9..=rev {
        let ev = next_item(&mut watch).await.expect("event");
        assert_eq!((ev.type_, ev.revision), (EventType::Added, expected));
    }
    store.close().await.expect("close");

    // The compaction point survives a restart.
    let store = open(&db(&dir), options).await.expect("re-open");
    assert!(matches!(store.watch(WatchQuery::all_from(5)).await, Err(StoreError::Expired { .. })));
    let mut watch = store.watch(WatchQuery::all_from(rev - 10)).await.expect("watch within the history after re-open");
    assert_eq!(next_item(&mut watch).await.expect("event").revision, rev - 9);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watch_catches_up_from_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&db(&dir), SqliteOptions::default()).await.expect("open");
    let start = store.revision().await.expect("revision");
    let mut watch = store.watch(WatchQuery::all_from(start)).await.expect("watch");
    // More writes than the broadcast buffer holds, while the watcher does not read.
    let end = create_many(&store, "lag", 5_000).await;
    assert_eq!(end, start + 5_000);
    let mut names = std::collections::HashSet::new();
    for expected in start + 1..=end {
        let ev = next_item(&mut watch).await.expect("event");
        assert_eq!(ev.revision, expected, "gap or duplicate after lagging");
        assert!(names.insert(ev.object["metadata"]["name"].as_str().expect("name").to_string()));
    }
    let live = store.create(agent("bulk", "live"), audit("create")).await.expect("create");
    assert_eq!(next_item(&mut watch).await.expect("event").revision, rv(&live));
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watch_overtaken_by_compaction_is_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions { event_history: 100, ..SqliteOptions::default() };
    let store = open(&db(&dir), options).await.expect("open");
    let mut watch = store.watch(WatchQuery::all_from(0)).await.expect("watch");
    create_many(&store, "lag", 4_500).await;
    let mut delivered = 0u64;
    loop {
        match next_item(&mut watch).await {
            Ok(ev) => {
                delivered += 1;
                assert_eq!(ev.revision, delivered, "events before the lag arrive in order");
            }
            Err(StoreError::Expired { requested, oldest }) => {
                assert_eq!(requested, delivered);
                assert!(oldest > delivered + 1);
                break;
            }
            Err(e) => panic!("expected Expired, got {e}"),
        }
    }
    let end = tokio::time::timeout(STEP, watch.next()).await.expect("the stream ends after Expired");
    assert!(end.is_none(), "nothing follows Expired");
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path, SqliteOptions::default()).await.expect("open");
    store.close().await.expect("close");
    {
        let conn = rusqlite::Connection::open(&path).expect("open directly");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("user_version");
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("journal_mode");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).expect("bump user_version");
    }
    match open(&path, SqliteOptions::default()).await {
        Err(StoreError::Unavailable { message, .. }) => {
            assert!(message.contains("schema version") && message.contains("newer"), "unclear message: {message}");
        }
        Ok(_) => panic!("a database from a newer version was opened"),
        Err(e) => panic!("expected Unavailable, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_without_close_keeps_committed_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&db(&dir), SqliteOptions::default()).await.expect("open");
    let end = create_many(&store, "drop", 300).await;
    let mut watch = store.watch(WatchQuery::all_from(end)).await.expect("watch");
    drop(store);
    // The watch ends once the writer has drained and stopped.
    let next = tokio::time::timeout(STEP, watch.next()).await.expect("the watch ends after drop");
    assert!(next.is_none());

    let store = open(&db(&dir), SqliteOptions::default()).await.expect("re-open");
    assert_eq!(store.revision().await.expect("revision"), end);
    let listed = store.list(&ListQuery::new(Kind::Agent).limit(5_000)).await.expect("list");
    assert_eq!(listed.items.len(), 300);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_batches_and_queue_still_serialise_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteOptions {
        synchronous: Synchronous::Full,
        read_connections: 1,
        event_history: 1_000,
        max_batch: 1,
        queue_capacity: 1,
        record_ledger: true,
    };
    let store = open(&db(&dir), options).await.expect("open");
    let end = create_many(&store, "tiny", 200).await;
    assert_eq!(end, 200);
    // A failing command inside a batch does not disturb the others.
    let dup = store.create(agent("bulk", "tiny-00000"), audit("create")).await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(_))));
    let got = store.get(&ObjectKey::new(Kind::Agent, "bulk", "tiny-00199")).await.expect("get");
    assert!(rv(&got) <= end);
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_inside_a_batch_roll_back_only_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&db(&dir), SqliteOptions::default()).await.expect("open");
    let base = store.create(agent("b", "base"), audit("create")).await.expect("create");
    // Fire many commands at once so they share batches: half conflict, half succeed.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            let base = base.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store.create(agent("b", &format!("ok-{i}")), audit("create")).await.map(|_| true)
                } else {
                    match store.update(base, Precondition::ResourceVersion(999_999), audit("update")).await {
                        Err(StoreError::Conflict { .. }) => Ok(false),
                        other => panic!("expected Conflict, got {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("task").expect("write") {
            ok += 1;
        }
    }
    assert_eq!(ok, 32);
    assert_eq!(store.revision().await.expect("revision"), rv(&base) + 32, "revisions stay contiguous");
    let mut watch = store.watch(WatchQuery::all_from(rv(&base))).await.expect("watch");
    for expected in rv(&base) + 1..=rv(&base) + 32 {
        assert_eq!(next_item(&mut watch).await.expect("event").revision, expected);
    }
    store.close().await.expect("close");
}
