//! The retention sweeper against a real SQLite store and real run folders, with injected times.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentplane_api::{API_VERSION, Kind};
use agentplane_control::retention::{
    Clock, ManualClock, RetentionPolicy, SWEPT_MARKER, SweepReport, run_retention, sweep,
};
use agentplane_ledger::{Actor, actions};
use agentplane_store::{
    Checkpoint, Entry, EntryDraft, LedgerPage, LedgerQuery, ListQuery, ObjectKey, ObjectList, Precondition, Revision,
    Store, StoreError, WatchQuery, WatchStream, resource_audit, revision_of,
};
use agentplane_store_sqlite::{SqliteOptions, SqliteStore};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);

struct Env {
    dir: TempDir,
    base: PathBuf,
    store: Arc<SqliteStore>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store =
        tokio::task::spawn_blocking(move || SqliteStore::open(&path, SqliteOptions::default())).await.unwrap().unwrap();
    let base = dir.path().join("data");
    fs::create_dir_all(base.join("runs")).unwrap();
    Env { dir, base, store }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A valid AgentRun manifest (checked with the api crate's own validation).
fn manifest(ns: &str, name: &str, phase: Option<&str>, finished: Option<DateTime<Utc>>) -> Value {
    let mut status = json!({});
    if let Some(p) = phase {
        status["phase"] = json!(p);
    }
    if let Some(t) = finished {
        status["startedAt"] = json!(ts(t - TimeDelta::minutes(5)));
        status["finishedAt"] = json!(ts(t));
    }
    let obj = json!({
        "apiVersion": API_VERSION,
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"agentRef": {"name": "coder"}, "implementation": {"inline": {"text": "do it"}}},
        "status": status,
    });
    let decoded = agentplane_api::decode(obj.clone()).expect("the manifest decodes");
    decoded.default_and_validate().expect("the manifest is valid");
    obj
}

async fn create_run(
    store: &dyn Store,
    ns: &str,
    name: &str,
    phase: Option<&str>,
    finished: Option<DateTime<Utc>>,
) -> Value {
    let audit = resource_audit(Actor::system("test"), actions::RESOURCE_CREATED);
    store.create(manifest(ns, name, phase, finished), audit).await.unwrap()
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().unwrap().to_string()
}

fn run_dir(base: &Path, ns: &str, name: &str) -> PathBuf {
    base.join("runs").join(ns).join(name)
}

fn write(path: &Path, body: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, body).unwrap();
}

/// A run folder as the local runtime leaves it (docs/runtime.md), plus litter in the agent's HOME.
fn make_folder(base: &Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    let dir = run_dir(base, ns, name);
    write(&dir.join("workspace/src/main.rs"), "fn main() {}\n");
    write(&dir.join("run.json"), "{\"agentRef\":{\"name\":\"coder\"}}\n");
    write(&dir.join("agent-runner.json"), "{}\n");
    write(&dir.join(".agent/status.json"), &format!("{{\"uid\":\"{uid}\",\"attempt\":2,\"phase\":\"Succeeded\"}}\n"));
    write(&dir.join(".agent/status.attempt-1.json"), &format!("{{\"uid\":\"{uid}\",\"attempt\":1}}\n"));
    write(&dir.join(".agent/runner.log"), &"output line\n".repeat(100));
    write(&dir.join(".agent/exit-code"), "0\n");
    write(&dir.join("artifacts/diff.stat"), " 1 file changed\n");
    write(&dir.join(".cache/tool/blob"), "cached");
    let fifo = dir.join(".agent/output.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    dir
}

fn set_age(path: &Path, age: Duration) {
    let f = fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn present(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

async fn exists(store: &dyn Store, ns: &str, name: &str) -> bool {
    match store.get(&ObjectKey::new(Kind::AgentRun, ns, name)).await {
        Ok(_) => true,
        Err(StoreError::NotFound(_)) => false,
        Err(e) => panic!("get {ns}/{name}: {e}"),
    }
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    while !f().await {
        assert!(tokio::time::Instant::now() < end, "{what}: not before the deadline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_past_runs_ttl_are_deleted_with_their_folders_and_recorded() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    let now = Utc::now();
    let old = create_run(store, "default", "old", Some("Succeeded"), Some(now - days(31))).await;
    let cancelled = create_run(store, "team-b", "cancelled-old", Some("Cancelled"), Some(now - days(31))).await;
    let kept = create_run(store, "default", "failed-29", Some("Failed"), Some(now - days(29))).await;
    let renamed = create_run(store, "default", "reused", Some("Succeeded"), Some(now - days(40))).await;
    make_folder(&e.base, "default", "old", &uid(&old));
    make_folder(&e.base, "team-b", "cancelled-old", &uid(&cancelled));
    make_folder(&e.base, "default", "failed-29", &uid(&kept));
    // The folder of "reused" already belongs to a newer run of that name (another uid).
    make_folder(&e.base, "default", "reused", "uid-of-a-newer-run");

    let report = sweep(store, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(report.runs_deleted, 3, "{report:?}");
    assert_eq!(report.run_folders_cleaned, 1, "failed-29 is past files_ttl: {report:?}");
    assert_eq!(report.orphan_folders_removed, 0, "{report:?}");

    assert!(!exists(store, "default", "old").await);
    assert!(!exists(store, "team-b", "cancelled-old").await);
    assert!(!exists(store, "default", "reused").await);
    assert!(exists(store, "default", "failed-29").await);
    assert!(!present(&run_dir(&e.base, "default", "old")));
    assert!(!present(&run_dir(&e.base, "team-b", "cancelled-old")));
    assert!(present(&run_dir(&e.base, "default", "failed-29").join("run.json")));
    assert!(present(&run_dir(&e.base, "default", "reused").join("workspace/src/main.rs")), "another run's folder");

    // One resource.deleted entry by system:retention per deleted run, naming it and why.
    let page = store
        .ledger_query(&LedgerQuery {
            actor: Some("system:retention".into()),
            action: Some(actions::RESOURCE_DELETED.into()),
            ..LedgerQuery::default()
        })
        .await
        .unwrap();
    let mut got: Vec<(String, String, String, String)> = page
        .entries
        .iter()
        .map(|en| {
            let t = en.target.as_ref().expect("target");
            assert_eq!(t.kind, "AgentRun");
            assert_eq!(en.actor, Actor::system("retention"));
            assert_eq!(en.params["reason"], "retention");
            assert_eq!(en.run.as_deref(), Some(t.name.as_str()));
            (
                t.namespace.clone(),
                t.name.clone(),
                t.uid.clone().unwrap_or_default(),
                en.params["finishedAt"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        ("default".to_string(), "old".to_string(), uid(&old), ts(now - days(31))),
        ("default".to_string(), "reused".to_string(), uid(&renamed), ts(now - days(40))),
        ("team-b".to_string(), "cancelled-old".to_string(), uid(&cancelled), ts(now - days(31))),
    ];
    want.sort();
    assert_eq!(got, want);

    // Nothing left to do: a second sweep changes nothing.
    let again = sweep(store, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(again, SweepReport::default());
    drop(e.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_past_files_ttl_are_removed_but_the_run_and_its_status_stay() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    let now = Utc::now();
    let eight = create_run(store, "default", "eight", Some("Succeeded"), Some(now - days(8))).await;
    let six = create_run(store, "default", "six", Some("Failed"), Some(now - days(6))).await;
    let d8 = make_folder(&e.base, "default", "eight", &uid(&eight));
    let d6 = make_folder(&e.base, "default", "six", &uid(&six));
    let status_before = fs::read_to_string(d8.join(".agent/status.json")).unwrap();

    let report = sweep(store, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!((report.runs_deleted, report.run_folders_cleaned, report.orphan_folders_removed), (0, 1, 0));

    let stored = e.store.get(&ObjectKey::new(Kind::AgentRun, "default", "eight")).await.unwrap();
    assert_eq!(stored, eight, "the run object is untouched");
    for kept in
        ["run.json", "agent-runner.json", ".agent/status.json", ".agent/status.attempt-1.json", ".agent/exit-code"]
    {
        assert!(present(&d8.join(kept)), "{kept} kept");
    }
    assert_eq!(fs::read_to_string(d8.join(".agent/status.json")).unwrap(), status_before);
    for gone in ["workspace", "artifacts", ".agent/runner.log", ".agent/output.fifo", ".cache"] {
        assert!(!present(&d8.join(gone)), "{gone} removed");
    }
    let marker: Value =
        serde_json::from_str(&fs::read_to_string(d8.join(".agent").join(SWEPT_MARKER)).unwrap()).unwrap();
    assert!(marker["sweptAt"].is_string(), "{marker}");

    for kept in ["workspace/src/main.rs", "artifacts/diff.stat", ".agent/runner.log", ".agent/output.fifo", ".cache"] {
        assert!(present(&d6.join(kept)), "six days: {kept} kept");
    }
    assert!(!present(&d6.join(".agent").join(SWEPT_MARKER)));

    // The marker makes later sweeps skip the folder: a file written after it stays.
    write(&d8.join("artifacts/late.txt"), "late");
    let again = sweep(store, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(again, SweepReport::default());
    assert!(present(&d8.join("artifacts/late.txt")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_planted_before_the_run_finished_does_not_stop_the_cleanup() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    // Injected times: the run finishes a day from now (after the agent planted the marker, now)
    // and is swept nine days from now.
    let finished = Utc::now() + days(1);
    let run = create_run(store, "default", "sly", Some("Succeeded"), Some(finished)).await;
    let d = make_folder(&e.base, "default", "sly", &uid(&run));
    write(&d.join(".agent").join(SWEPT_MARKER), "{\"sweptAt\":\"2000-01-01T00:00:00Z\"}");

    let report = sweep(store, &e.base, &RetentionPolicy::default(), finished + days(8)).await;
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(report.run_folders_cleaned, 1, "{report:?}");
    assert!(!present(&d.join("workspace")));
    assert!(!present(&d.join(".agent/runner.log")));
    let marker = fs::read_to_string(d.join(".agent").join(SWEPT_MARKER)).unwrap();
    assert!(!marker.contains("2000-01-01"), "the marker was written again: {marker}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_and_running_runs_are_never_touched() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    let long_ago = Utc::now() - days(100);
    let runs = [
        create_run(store, "default", "pending", Some("Pending"), None).await,
        create_run(store, "default", "running", Some("Running"), None).await,
        // A stale finishedAt does not make a running run finished.
        create_run(store, "default", "running-stale", Some("Running"), Some(long_ago)).await,
        create_run(store, "default", "no-phase", None, None).await,
    ];
    let mut dirs = Vec::new();
    for r in &runs {
        let name = r["metadata"]["name"].as_str().unwrap();
        let dir = make_folder(&e.base, "default", name, &uid(r));
        set_age(&dir.join(".agent/status.json"), 100 * DAY);
        set_age(&dir, 100 * DAY);
        dirs.push(dir);
    }
    // Swept a year later: still nothing to do.
    let report = sweep(store, &e.base, &RetentionPolicy::default(), Utc::now() + days(365)).await;
    assert_eq!(report, SweepReport::default());
    for r in &runs {
        let name = r["metadata"]["name"].as_str().unwrap();
        assert_eq!(&e.store.get(&ObjectKey::new(Kind::AgentRun, "default", name)).await.unwrap(), r);
    }
    for dir in &dirs {
        for kept in ["workspace/src/main.rs", "artifacts/diff.stat", ".agent/runner.log", ".agent/output.fifo"] {
            assert!(present(&dir.join(kept)), "{}: {kept}", dir.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_orphan_folders_are_removed_and_fresh_ones_kept() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    let now = Utc::now();
    let old = make_folder(&e.base, "default", "orphan-old", "gone-1");
    set_age(&old.join(".agent/status.json"), 8 * DAY);
    let fresh = make_folder(&e.base, "default", "orphan-fresh", "gone-2");
    // A folder without status.json is judged by its own mtime.
    let bare = run_dir(&e.base, "team-c", "orphan-bare");
    write(&bare.join("workspace/file"), "x");
    set_age(&bare, 8 * DAY);
    // An old status.json in a folder whose run exists is not an orphan.
    let live = create_run(store, "default", "live", Some("Succeeded"), Some(now - days(2))).await;
    let live_dir = make_folder(&e.base, "default", "live", &uid(&live));
    set_age(&live_dir.join(".agent/status.json"), 30 * DAY);
    // Not a folder: left alone.
    write(&e.base.join("runs/default/stray.txt"), "stray");

    let report = sweep(store, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!((report.runs_deleted, report.run_folders_cleaned, report.orphan_folders_removed), (0, 0, 2));
    assert!(!present(&old));
    assert!(!present(&bare));
    assert!(present(&fresh.join("workspace/src/main.rs")));
    assert!(present(&live_dir.join(".agent/runner.log")));
    assert!(present(&e.base.join("runs/default/stray.txt")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_are_removed_as_links_and_never_followed() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    let now = Utc::now();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    write(&precious.join("keep.txt"), "keep me");
    write(&precious.join("sub/deep.txt"), "keep me too");
    let agent_dir = outside.path().join("agent-dir");
    write(&agent_dir.join("runner.log"), "not ours");
    write(&agent_dir.join("status.json"), "{}");
    let victim = outside.path().join("victim-ns/victim");
    write(&victim.join(".agent/status.json"), "{}");
    set_age(&victim.join(".agent/status.json"), 60 * DAY);
    set_age(&victim, 60 * DAY);

    // Files cleanup (8 days): links in the folder, in artifacts/, and in place of workspace/.
    let links = create_run(store, "default", "links", Some("Succeeded"), Some(now - days(8))).await;
    let d = make_folder(&e.base, "default", "links", &uid(&links));
    fs::remove_dir_all(d.join("workspace")).unwrap();
    symlink(&precious, d.join("workspace")).unwrap();
    symlink(precious.join("keep.txt"), d.join("artifacts/out")).unwrap();
    symlink(&precious, d.join("home-link")).unwrap();
    // .agent itself a link out of the folder.
    let al = create_run(store, "default", "agent-link", Some("Succeeded"), Some(now - days(8))).await;
    let d_al = make_folder(&e.base, "default", "agent-link", &uid(&al));
    fs::remove_dir_all(d_al.join(".agent")).unwrap();
    symlink(&agent_dir, d_al.join(".agent")).unwrap();
    // Deleted run (31 days) whose folder holds a link out, and one whose folder *is* a link.
    let gone = create_run(store, "default", "gone", Some("Failed"), Some(now - days(31))).await;
    let d_gone = make_folder(&e.base, "default", "gone", &uid(&gone));
    symlink(&precious, d_gone.join("workspace/escape")).unwrap();
    create_run(store, "default", "gone-link", Some("Failed"), Some(now - days(31))).await;
    symlink(&precious, run_dir(&e.base, "default", "gone-link")).unwrap();
    // A namespace folder that is a link out, and a run-level link without a run.
    symlink(outside.path().join("victim-ns"), e.base.join("runs/evil-ns")).unwrap();
    symlink(&precious, run_dir(&e.base, "default", "linked-orphan")).unwrap();

    let report = sweep(store, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!((report.runs_deleted, report.run_folders_cleaned, report.orphan_folders_removed), (2, 2, 0));

    for link in ["workspace", "artifacts", "home-link"] {
        assert!(!present(&d.join(link)), "{link} removed");
    }
    assert!(present(&d.join(".agent/status.json")));
    let agent_meta = fs::symlink_metadata(d_al.join(".agent")).unwrap();
    assert!(agent_meta.is_dir() && !agent_meta.file_type().is_symlink(), "the .agent link became a real folder");
    assert!(present(&d_al.join(".agent").join(SWEPT_MARKER)));
    assert!(!present(&d_gone));
    assert!(!present(&run_dir(&e.base, "default", "gone-link")), "the folder link was removed");
    // Untouched outside base_dir.
    assert_eq!(fs::read_to_string(precious.join("keep.txt")).unwrap(), "keep me");
    assert_eq!(fs::read_to_string(precious.join("sub/deep.txt")).unwrap(), "keep me too");
    assert_eq!(fs::read_to_string(agent_dir.join("runner.log")).unwrap(), "not ours");
    assert!(present(&victim.join(".agent/status.json")));
    assert!(fs::symlink_metadata(e.base.join("runs/evil-ns")).unwrap().file_type().is_symlink());
    assert!(fs::symlink_metadata(run_dir(&e.base, "default", "linked-orphan")).unwrap().file_type().is_symlink());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_folder_that_is_a_link_is_refused() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    let now = Utc::now();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("elsewhere");
    let old = create_run(store, "default", "old", Some("Succeeded"), Some(now - days(31))).await;
    make_folder(&target, "default", "old", &uid(&old));
    let orphan = make_folder(&target, "default", "orphan", "gone");
    set_age(&orphan.join(".agent/status.json"), 60 * DAY);
    fs::remove_dir_all(e.base.join("runs")).unwrap();
    symlink(target.join("runs"), e.base.join("runs")).unwrap();

    let report = sweep(store, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(report.runs_deleted, 1, "{report:?}");
    assert!(!report.errors.is_empty() && report.errors[0].contains("is not a directory"), "{report:?}");
    assert!(present(&run_dir(&target, "default", "old").join("workspace/src/main.rs")));
    assert!(present(&orphan.join(".agent/runner.log")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_while_paging_skips_no_run() {
    let e = env().await;
    let store: &dyn Store = &*e.store;
    let now = Utc::now();
    let mut expired = BTreeSet::new();
    let mut kept = BTreeSet::new();
    for ns in ["ns-a", "ns-b", "ns-c"] {
        for i in 0..12 {
            let name = format!("run-{i:02}");
            if i % 3 == 2 {
                create_run(store, ns, &name, Some("Succeeded"), Some(now - days(1))).await;
                kept.insert((ns.to_string(), name));
            } else {
                create_run(store, ns, &name, Some("Failed"), Some(now - days(45))).await;
                expired.insert((ns.to_string(), name));
            }
        }
    }
    let policy = RetentionPolicy { page_size: 3, ..RetentionPolicy::default() };
    let report = sweep(store, &e.base, &policy, now).await;
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(report.runs_deleted, expired.len() as u64);
    let mut left = BTreeSet::new();
    let mut q = ListQuery::new(Kind::AgentRun).limit(100);
    loop {
        let page = store.list(&q).await.unwrap();
        for o in &page.items {
            left.insert((
                o["metadata"]["namespace"].as_str().unwrap().to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
            ));
        }
        match page.continue_token {
            Some(t) => q.continue_token = Some(t),
            None => break,
        }
    }
    assert_eq!(left, kept);
}

/// A store that races the sweeper: its `list` hands out stale copies of the runs named
/// `touched*` (it updates them right after reading the page, as a concurrent writer would) and,
/// after the first page, creates the runs in `late` (as if submitted after the sweeper listed).
/// It counts `get` calls.
struct RacingStore {
    inner: Arc<SqliteStore>,
    late: std::sync::Mutex<Vec<Value>>,
    gets: std::sync::atomic::AtomicUsize,
}

impl RacingStore {
    fn new(inner: &Arc<SqliteStore>, late: Vec<Value>) -> Self {
        RacingStore { inner: Arc::clone(inner), late: std::sync::Mutex::new(late), gets: Default::default() }
    }
    fn gets(&self) -> usize {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for RacingStore {
    async fn create(&self, obj: Value, audit: EntryDraft) -> Result<Value, StoreError> {
        self.inner.create(obj, audit).await
    }
    async fn get(&self, key: &ObjectKey) -> Result<Value, StoreError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn get_by_idempotency_key(&self, kind: Kind, ns: &str, key: &str) -> Result<Option<Value>, StoreError> {
        self.inner.get_by_idempotency_key(kind, ns, key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        let page = self.inner.list(query).await?;
        for obj in &page.items {
            if obj["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("touched")) {
                let mut changed = obj.clone();
                changed["metadata"]["labels"] = json!({"touched": "yes"});
                let rv = revision_of(obj).unwrap();
                let audit = resource_audit(Actor::user("someone"), actions::RESOURCE_UPDATED);
                self.inner.update(changed, Precondition::ResourceVersion(rv), audit).await?;
            }
        }
        let late = std::mem::take(&mut *self.late.lock().unwrap());
        for obj in late {
            self.inner.create(obj, resource_audit(Actor::user("someone"), actions::RESOURCE_CREATED)).await?;
        }
        Ok(page)
    }
    async fn update(&self, obj: Value, pre: Precondition, audit: EntryDraft) -> Result<Value, StoreError> {
        self.inner.update(obj, pre, audit).await
    }
    async fn create_token(
        &self,
        t: agentplane_store::ApiToken,
        audit: EntryDraft,
    ) -> Result<agentplane_store::ApiToken, StoreError> {
        self.inner.create_token(t, audit).await
    }
    async fn list_tokens(&self) -> Result<Vec<agentplane_store::ApiToken>, StoreError> {
        self.inner.list_tokens().await
    }
    async fn get_token_by_hash(&self, hash: &str) -> Result<Option<agentplane_store::ApiToken>, StoreError> {
        self.inner.get_token_by_hash(hash).await
    }
    async fn revoke_token(
        &self,
        id: &str,
        at: chrono::DateTime<chrono::Utc>,
        audit: EntryDraft,
    ) -> Result<agentplane_store::ApiToken, StoreError> {
        self.inner.revoke_token(id, at, audit).await
    }
    async fn delete(&self, key: &ObjectKey, pre: Precondition, audit: EntryDraft) -> Result<Value, StoreError> {
        self.inner.delete(key, pre, audit).await
    }
    async fn update_fenced(
        &self,
        obj: Value,
        pre: Precondition,
        audit: EntryDraft,
        fence: &agentplane_store::Lease,
    ) -> Result<Value, StoreError> {
        self.inner.update_fenced(obj, pre, audit, fence).await
    }
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<agentplane_store::Lease>, StoreError> {
        self.inner.acquire_lease(name, holder, ttl).await
    }
    async fn renew_lease(
        &self,
        lease: &agentplane_store::Lease,
        ttl: std::time::Duration,
    ) -> Result<Option<agentplane_store::Lease>, StoreError> {
        self.inner.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &agentplane_store::Lease) -> Result<(), StoreError> {
        self.inner.release_lease(lease).await
    }
    async fn append(&self, drafts: Vec<EntryDraft>) -> Result<Vec<Entry>, StoreError> {
        self.inner.append(drafts).await
    }
    async fn ledger_head(&self) -> Result<(u64, String), StoreError> {
        self.inner.ledger_head().await
    }
    async fn ledger_query(&self, query: &LedgerQuery) -> Result<LedgerPage, StoreError> {
        self.inner.ledger_query(query).await
    }
    async fn ledger_scan(&self, after_seq: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.ledger_scan(after_seq, limit).await
    }
    async fn put_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        self.inner.put_checkpoint(checkpoint).await
    }
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.inner.checkpoints().await
    }
    async fn watch(&self, query: WatchQuery) -> Result<WatchStream, StoreError> {
        self.inner.watch(query).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_changed_since_the_list_is_skipped() {
    let e = env().await;
    let now = Utc::now();
    let touched = create_run(&*e.store, "default", "touched", Some("Succeeded"), Some(now - days(31))).await;
    create_run(&*e.store, "default", "untouched", Some("Succeeded"), Some(now - days(31))).await;
    let d = make_folder(&e.base, "default", "touched", &uid(&touched));
    let racing = RacingStore::new(&e.store, Vec::new());

    let report = sweep(&racing, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(report.errors, Vec::<String>::new(), "a conflict is not an error");
    assert_eq!(report.runs_deleted, 1);
    let still = e.store.get(&ObjectKey::new(Kind::AgentRun, "default", "touched")).await.unwrap();
    assert_eq!(still["metadata"]["labels"]["touched"], "yes");
    assert!(!exists(&*e.store, "default", "untouched").await);
    assert!(present(&d.join("workspace/src/main.rs")), "its folder stays with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_sweeps_with_its_clock_and_stops_on_shutdown() {
    let e = env().await;
    let t0 = Utc::now();
    create_run(&*e.store, "default", "a", Some("Succeeded"), Some(t0 - days(31))).await;
    create_run(&*e.store, "default", "b", Some("Succeeded"), Some(t0 - days(29))).await;
    let clock = Arc::new(ManualClock::new(t0));
    let store: Arc<dyn Store> = e.store.clone();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(run_retention(
        Arc::clone(&store),
        e.base.clone(),
        RetentionPolicy::default(),
        Duration::from_millis(10),
        Arc::clone(&clock) as Arc<dyn Clock>,
        shutdown,
    ));
    eventually("a deleted", || async { !exists(&*store, "default", "a").await }).await;
    assert!(exists(&*store, "default", "b").await, "b is 29 days old by the clock");
    // Only the injected clock says that time passed.
    clock.advance(days(2));
    eventually("b deleted", || async { !exists(&*store, "default", "b").await }).await;
    stop.send(true).unwrap();
    tokio::time::timeout(DEADLINE, handle).await.expect("the loop stops on shutdown").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_sweeps_at_start_and_shutdown_ends_its_wait() {
    let e = env().await;
    let t0 = Utc::now();
    create_run(&*e.store, "default", "a", Some("Cancelled"), Some(t0 - days(31))).await;
    let store: Arc<dyn Store> = e.store.clone();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(run_retention(
        Arc::clone(&store),
        e.base.clone(),
        RetentionPolicy::default(),
        Duration::from_secs(3600),
        Arc::new(ManualClock::new(t0)) as Arc<dyn Clock>,
        shutdown,
    ));
    eventually("a deleted by the first sweep", || async { !exists(&*store, "default", "a").await }).await;
    // The loop now waits an hour; dropping the sender stops it as well as `true` would.
    drop(stop);
    tokio::time::timeout(DEADLINE, handle).await.expect("the loop stops when shutdown is gone").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orphan_walk_asks_the_store_only_about_unowned_folders_and_spares_late_runs() {
    let e = env().await;
    let now = Utc::now();
    // Listed runs with old status files: owned, so the walk does not even ask about them.
    for i in 0..5 {
        let name = format!("listed-{i}");
        let r = create_run(&*e.store, "default", &name, Some("Succeeded"), Some(now - days(2))).await;
        let d = make_folder(&e.base, "default", &name, &uid(&r));
        set_age(&d.join(".agent/status.json"), 20 * DAY);
    }
    // A run submitted after the sweeper listed, reusing an old folder of that name: the walk sees
    // no listed run for it, asks the store again, and keeps the folder.
    let late = make_folder(&e.base, "default", "late", "uid-of-a-deleted-run");
    set_age(&late.join(".agent/status.json"), 20 * DAY);
    // A real orphan.
    let orphan = make_folder(&e.base, "default", "orphan", "gone");
    set_age(&orphan.join(".agent/status.json"), 20 * DAY);
    let racing = RacingStore::new(&e.store, vec![manifest("default", "late", Some("Pending"), None)]);

    let report = sweep(&racing, &e.base, &RetentionPolicy::default(), now).await;
    assert_eq!(report.errors, Vec::<String>::new());
    assert_eq!(report.orphan_folders_removed, 1, "{report:?}");
    assert!(!present(&orphan));
    assert!(present(&late.join("workspace/src/main.rs")), "the late run's folder is kept");
    assert!(exists(&*e.store, "default", "late").await);
    assert_eq!(racing.gets(), 2, "one get for `late`, one for `orphan`");
}
