//! The conformance suite every [`Store`] backend runs.
//!
//! A backend implements [`Harness`] (open the same database every time it is called, so a test
//! can close and re-open it) and expands [`conformance_tests!`](crate::conformance_tests) in one
//! of its test files with an expression that builds a fresh harness (its own database) per test:
//!
//! ```text
//! agentplane_store::conformance_tests!(sqlite_harness());
//! ```
//!
//! That expands to one `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` per case,
//! so the backend's test crate needs `tokio` (with `macros` and `rt-multi-thread`) as a
//! dev-dependency. Every case is also a `pub async fn` taking `&dyn Harness`, to run by hand.
//!
//! The cases assert behaviour; none of them sleeps to synchronise. Waiting for a watch event is
//! bounded by [`STEP`], and each whole case by [`CASE_TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::selector::{FieldSelector, LabelSelector};
use agentplane_api::{API_VERSION, Kind};
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};

use agentplane_ledger::{Actor, Checkpoint, Entry, EntryDraft};

use crate::{
    ApiToken, EventType, LedgerQuery, ListQuery, ObjectKey, Precondition, Revision, Store, StoreError, WatchEvent,
    WatchQuery, WatchStream, revision_of,
};

/// How long a case waits for one expected watch event (or the end of a stream).
pub const STEP: Duration = Duration::from_secs(20);
/// How long one whole case may run.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// Opens a backend's database for the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Open the store. Every call on the same harness opens the *same* database: the suite
    /// closes a store and calls this again to check what survived.
    async fn open(&self) -> Arc<dyn Store>;
}

/// Expand to one `#[tokio::test]` per conformance case. The argument is an expression evaluated
/// once per test that yields a fresh value implementing [`Harness`] (a new, empty database).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            create_get_round_trip,
            create_already_exists,
            create_invalid_objects,
            generate_name_is_unique,
            missing_objects_are_not_found,
            update_compare_and_swap,
            update_unconditional_keeps_server_fields,
            generation_bumps_only_on_spec_change,
            delete_returns_last_state,
            revisions_strictly_increase_across_kinds,
            concurrent_writers,
            pagination_is_exact_and_ordered,
            pagination_with_selectors,
            invalid_continue_token,
            list_revision_is_a_watch_start,
            watch_orders_concurrent_writes,
            watch_replays_history,
            watch_filters,
            restart_keeps_objects_and_revisions,
            close_ends_watches,
            calls_after_close_fail_closed,
            ledger_records_every_write,
            ledger_chain_is_contiguous_under_concurrent_writers,
            ledger_append_and_query,
            ledger_survives_restart,
            ledger_checkpoints_round_trip,
            idempotency_keys_are_unique_per_namespace,
            leases_exclude_and_fence,
            leases_survive_restart_and_release,
            api_tokens_round_trip_and_revoke,
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make;
                $crate::conformance::run_case(stringify!($case), $crate::conformance::$case(&harness)).await;
            }
        )+
    };
}

/// Run one case under [`CASE_TIMEOUT`].
pub async fn run_case(name: &str, case: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
        panic!("conformance case {name} did not finish within {CASE_TIMEOUT:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn object(kind: Kind, namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": kind.as_str(),
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// The ledger entry the suite records with each write.
pub fn audit(op: &str) -> EntryDraft {
    let action = match op {
        "create" => "resource.created",
        "update" => "resource.updated",
        _ => "resource.deleted",
    };
    crate::resource_audit(Actor::system("conformance"), action)
}

fn draft(actor: Actor, action: &str, run: Option<&str>, outcome: &str) -> EntryDraft {
    EntryDraft {
        actor,
        action: action.to_string(),
        namespace: Some("ns1".into()),
        target: None,
        run: run.map(str::to_string),
        environment: Some("production".into()),
        takeover_level: Some(2),
        decision: Some("allow".into()),
        outcome: outcome.to_string(),
        params: json!({"tool": "exec", "args": {"cmd": "ls"}}),
        error: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    }
}

/// Every entry, in seq order.
async fn all_entries(store: &dyn Store) -> Vec<Entry> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map(|e: &Entry| e.seq).unwrap_or(0);
        let page = store.ledger_scan(after, 1000).await.expect("ledger scan");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// seq is 1..=n with no gap, each prevHash is the previous hash, each hash recomputes.
fn assert_chain(entries: &[Entry]) {
    let mut prev = agentplane_ledger::GENESIS_HASH.to_string();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seq has no gap");
        assert_eq!(e.prev_hash, prev, "entry {} links to the previous one", e.seq);
        assert_eq!(e.compute_hash(), e.hash, "entry {} hash recomputes", e.seq);
        prev = e.hash.clone();
    }
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, namespace, name)
}

fn key_of(obj: &Value) -> ObjectKey {
    ObjectKey::of(obj).expect("a stored object has a kind")
}

fn rv(obj: &Value) -> Revision {
    revision_of(obj).unwrap_or_else(|| panic!("object without a numeric resourceVersion: {obj}"))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("metadata.{field} is not a string in {obj}"))
}

fn generation(obj: &Value) -> u64 {
    obj.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or_else(|| panic!("no generation in {obj}"))
}

async fn create(store: &dyn Store, obj: Value) -> Value {
    let what = obj.pointer("/metadata/name").cloned();
    store.create(obj, audit("create")).await.unwrap_or_else(|e| panic!("create {what:?}: {e}"))
}

/// The next item of a watch, within [`STEP`].
async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(STEP, stream.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("the watch failed: {e}"),
        Ok(None) => panic!("the watch ended while events were expected"),
        Err(_) => panic!("no watch event within {STEP:?}"),
    }
}

/// Wait (within [`STEP`] per item) for the stream to end; events before the end are returned.
async fn until_end(stream: &mut WatchStream) -> Vec<WatchEvent> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(STEP, stream.next()).await {
            Ok(None) => return seen,
            Ok(Some(Ok(ev))) => seen.push(ev),
            Ok(Some(Err(StoreError::Closed))) => return seen,
            Ok(Some(Err(e))) => panic!("the watch failed instead of ending: {e}"),
            Err(_) => panic!("the watch did not end within {STEP:?} of close"),
        }
    }
}

/// Every item of a list, page by page, checking each page's size and the continue token.
async fn list_all(store: &dyn Store, query: ListQuery) -> Vec<Value> {
    let limit = query.effective_limit();
    let mut query = query;
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let page = store.list(&query).await.expect("list");
        assert!(page.items.len() <= limit, "a page of {} items exceeds the limit {limit}", page.items.len());
        all.extend(page.items);
        match page.continue_token {
            Some(token) => query.continue_token = Some(token),
            None => return all,
        }
    }
    panic!("list did not finish within 10000 pages");
}

fn keys(items: &[Value]) -> Vec<(String, String)> {
    items.iter().map(|o| (meta_str(o, "namespace").to_string(), meta_str(o, "name").to_string())).collect()
}

fn assert_strictly_ordered(keys: &[(String, String)]) {
    for w in keys.windows(2) {
        assert!(w[0] < w[1], "list order broken or item repeated: {:?} then {:?}", w[0], w[1]);
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

/// create sets uid, resourceVersion, generation, creationTimestamp and the default namespace;
/// get returns exactly what create returned.
pub async fn create_get_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    let before = store.revision().await.expect("revision");
    let mut input = json!({
        "apiVersion": API_VERSION,
        "kind": "Agent",
        "metadata": {
            "name": "alpha",
            "labels": {"team": "a"},
            "uid": "chosen-by-client",
            "resourceVersion": "987654",
            "generation": 42,
        },
        "spec": {"model": "m1", "nested": {"list": [1, 2, 3]}},
    });
    let created = create(&*store, input.clone()).await;
    assert_eq!(created["kind"], "Agent");
    assert_eq!(meta_str(&created, "name"), "alpha");
    assert_eq!(meta_str(&created, "namespace"), "default", "the default namespace is filled in");
    let uid = meta_str(&created, "uid");
    assert!(!uid.is_empty() && uid != "chosen-by-client", "the store sets the uid, got {uid:?}");
    let rev = rv(&created);
    assert!(rev > before, "revision {rev} is not above the previous {before}");
    assert_eq!(store.revision().await.expect("revision"), rev);
    assert_eq!(generation(&created), 1);
    let ts = meta_str(&created, "creationTimestamp");
    assert!(ts.len() >= 20 && ts.as_bytes()[10] == b'T', "creationTimestamp {ts:?} is not RFC 3339");
    assert_eq!(created["spec"], input["spec"]);
    assert_eq!(created["metadata"]["labels"], json!({"team": "a"}));

    let got = store.get(&key(Kind::Agent, "default", "alpha")).await.expect("get");
    assert_eq!(got, created);

    input["metadata"]["name"] = json!("beta");
    let second = create(&*store, input).await;
    assert_ne!(meta_str(&second, "uid"), uid, "uids are unique");
    assert!(rv(&second) > rev);
}

/// A second create of the same key fails and writes nothing; the same name in another namespace
/// or kind is a different object.
pub async fn create_already_exists(h: &dyn Harness) {
    let store = h.open().await;
    let first = create(&*store, object(Kind::Tool, "ns1", "dup", json!({"v": 1}))).await;
    let rev = store.revision().await.expect("revision");
    match store.create(object(Kind::Tool, "ns1", "dup", json!({"v": 2})), audit("create")).await {
        Err(StoreError::AlreadyExists(k)) => assert_eq!(k, key(Kind::Tool, "ns1", "dup")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.revision().await.expect("revision"), rev, "a failed create takes no revision");
    assert_eq!(store.get(&key(Kind::Tool, "ns1", "dup")).await.expect("get"), first);
    create(&*store, object(Kind::Tool, "ns2", "dup", json!({}))).await;
    create(&*store, object(Kind::Agent, "ns1", "dup", json!({}))).await;
}

/// Objects without a kind, a name or a JSON object shape are refused.
pub async fn create_invalid_objects(h: &dyn Harness) {
    let store = h.open().await;
    let rev = store.revision().await.expect("revision");
    for bad in [
        json!({"metadata": {"name": "x"}}),
        json!({"kind": "NoSuchKind", "metadata": {"name": "x"}}),
        json!({"kind": "Agent", "metadata": {}}),
        json!({"kind": "Agent", "metadata": {"generateName": ""}}),
        json!(["kind", "Agent"]),
    ] {
        match store.create(bad.clone(), audit("create")).await {
            Err(StoreError::InvalidObject(_)) => {}
            other => panic!("create of {bad} should be InvalidObject, got {other:?}"),
        }
    }
    assert_eq!(store.revision().await.expect("revision"), rev);
}

/// 50 concurrent creates from one `generateName` get 50 distinct names with that prefix.
pub async fn generate_name_is_unique(h: &dyn Harness) {
    let store = h.open().await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let obj = json!({
                    "apiVersion": API_VERSION,
                    "kind": "AgentRun",
                    "metadata": {"generateName": "run-", "namespace": "gen"},
                    "spec": {"i": i},
                });
                store.create(obj, audit("create")).await.expect("create with generateName")
            })
        })
        .collect();
    let mut names = BTreeSet::new();
    for t in tasks {
        let created = t.await.expect("task");
        let name = meta_str(&created, "name").to_string();
        assert!(name.starts_with("run-") && name.len() > "run-".len(), "generated name {name:?}");
        assert!(created.pointer("/metadata/generateName").is_none(), "generateName is removed once used");
        let got = store.get(&key(Kind::AgentRun, "gen", &name)).await.expect("get generated");
        assert_eq!(got["spec"], created["spec"]);
        names.insert(name);
    }
    assert_eq!(names.len(), 50, "generated names collide");
    let listed = list_all(&*store, ListQuery::new(Kind::AgentRun).namespace("gen")).await;
    assert_eq!(keys(&listed).into_iter().map(|(_, n)| n).collect::<BTreeSet<_>>(), names);
}

/// get, update and delete of a missing object fail with NotFound naming the key.
pub async fn missing_objects_are_not_found(h: &dyn Harness) {
    let store = h.open().await;
    let before = store.revision().await.expect("revision");
    let k = key(Kind::Memory, "nowhere", "ghost");
    match store.get(&k).await {
        Err(StoreError::NotFound(got)) => assert_eq!(got, k),
        other => panic!("get: expected NotFound, got {other:?}"),
    }
    for pre in [Precondition::None, Precondition::ResourceVersion(1)] {
        match store.update(object(Kind::Memory, "nowhere", "ghost", json!({})), pre, audit("update")).await {
            Err(StoreError::NotFound(got)) => assert_eq!(got, k),
            other => panic!("update: expected NotFound, got {other:?}"),
        }
        match store.delete(&k, pre, audit("delete")).await {
            Err(StoreError::NotFound(got)) => assert_eq!(got, k),
            other => panic!("delete: expected NotFound, got {other:?}"),
        }
    }
    // A sibling with the same name in another kind does not make it exist.
    create(&*store, object(Kind::Tool, "nowhere", "ghost", json!({}))).await;
    assert!(matches!(store.get(&k).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.revision().await.expect("revision"), before + 1, "only the one create took a revision");
}

/// update and delete with a stale resourceVersion fail with Conflict and write nothing.
pub async fn update_compare_and_swap(h: &dyn Harness) {
    let store = h.open().await;
    let v1 = create(&*store, object(Kind::Agent, "cas", "obj", json!({"n": 1}))).await;
    let r1 = rv(&v1);

    let mut next = v1.clone();
    next["spec"]["n"] = json!(2);
    let v2 = store
        .update(next, Precondition::ResourceVersion(r1), audit("update"))
        .await
        .expect("CAS update with the current version");
    let r2 = rv(&v2);
    assert!(r2 > r1);
    assert_eq!(v2["spec"]["n"], 2);

    let mut stale = v1.clone();
    stale["spec"]["n"] = json!(99);
    match store.update(stale, Precondition::ResourceVersion(r1), audit("update")).await {
        Err(StoreError::Conflict { key: k, expected, actual }) => {
            assert_eq!(k, key(Kind::Agent, "cas", "obj"));
            assert_eq!(expected, r1);
            assert_eq!(actual, r2);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.revision().await.expect("revision"), r2, "a conflicting update takes no revision");
    assert_eq!(store.get(&key_of(&v1)).await.expect("get"), v2, "a conflicting update writes nothing");

    match store.delete(&key_of(&v1), Precondition::ResourceVersion(r1), audit("delete")).await {
        Err(StoreError::Conflict { expected, actual, .. }) => assert_eq!((expected, actual), (r1, r2)),
        other => panic!("expected Conflict on delete, got {other:?}"),
    }
    assert_eq!(store.get(&key_of(&v1)).await.expect("still there"), v2);

    let gone =
        store.delete(&key_of(&v1), Precondition::ResourceVersion(r2), audit("delete")).await.expect("CAS delete");
    assert_eq!(gone["spec"]["n"], 2);
}

/// update without a precondition overwrites whatever is stored but keeps uid and
/// creationTimestamp, whatever the body says.
pub async fn update_unconditional_keeps_server_fields(h: &dyn Harness) {
    let store = h.open().await;
    let v1 = create(&*store, object(Kind::Environment, "u", "env", json!({"a": 1}))).await;
    let _other_write = create(&*store, object(Kind::Environment, "u", "other", json!({}))).await;
    let mut body = v1.clone();
    body["spec"] = json!({"a": 2});
    body["status"] = json!({"ready": true});
    body["metadata"]["uid"] = json!("forged");
    body["metadata"]["creationTimestamp"] = json!("1999-01-01T00:00:00Z");
    body["metadata"]["resourceVersion"] = json!("1");
    body["metadata"]["labels"] = json!({"x": "y"});
    let v2 = store.update(body, Precondition::None, audit("update")).await.expect("unconditional update");
    assert_eq!(meta_str(&v2, "uid"), meta_str(&v1, "uid"));
    assert_eq!(meta_str(&v2, "creationTimestamp"), meta_str(&v1, "creationTimestamp"));
    assert_eq!(rv(&v2), store.revision().await.expect("revision"));
    assert_eq!(v2["spec"], json!({"a": 2}));
    assert_eq!(v2["status"], json!({"ready": true}));
    assert_eq!(v2["metadata"]["labels"], json!({"x": "y"}));
    assert_eq!(store.get(&key_of(&v1)).await.expect("get"), v2);
}

/// generation is 1 at create and increments only when `spec` changes.
pub async fn generation_bumps_only_on_spec_change(h: &dyn Harness) {
    let store = h.open().await;
    let mut cur = create(&*store, object(Kind::Agent, "g", "gen", json!({"model": "a"}))).await;
    assert_eq!(generation(&cur), 1);

    cur["status"] = json!({"phase": "Ready"});
    cur = store.update(cur, Precondition::None, audit("update")).await.expect("status update");
    assert_eq!(generation(&cur), 1, "a status change does not bump generation");

    cur["metadata"]["labels"] = json!({"l": "1"});
    cur = store.update(cur, Precondition::None, audit("update")).await.expect("label update");
    assert_eq!(generation(&cur), 1, "a label change does not bump generation");

    cur["spec"]["model"] = json!("b");
    cur = store.update(cur, Precondition::None, audit("update")).await.expect("spec update");
    assert_eq!(generation(&cur), 2, "a spec change bumps generation");

    cur["metadata"]["generation"] = json!(100);
    cur = store.update(cur, Precondition::None, audit("update")).await.expect("same spec");
    assert_eq!(generation(&cur), 2, "an unchanged spec keeps generation, whatever the body says");

    cur["spec"]["extra"] = json!(true);
    cur = store.update(cur, Precondition::None, audit("update")).await.expect("spec update");
    assert_eq!(generation(&cur), 3);
    assert_eq!(generation(&store.get(&key_of(&cur)).await.expect("get")), 3);
}

/// delete returns the last state with the delete's revision; the object is then gone, and a new
/// object of the same name is a new object.
pub async fn delete_returns_last_state(h: &dyn Harness) {
    let store = h.open().await;
    let v1 = create(&*store, object(Kind::Approval, "d", "ap", json!({"q": 1}))).await;
    let mut body = v1.clone();
    body["status"] = json!({"phase": "Pending"});
    let v2 = store.update(body, Precondition::None, audit("update")).await.expect("update");

    let k = key_of(&v1);
    let gone = store.delete(&k, Precondition::None, audit("delete")).await.expect("delete");
    let r = rv(&gone);
    assert!(r > rv(&v2), "the delete takes a new revision");
    assert_eq!(store.revision().await.expect("revision"), r);
    assert_eq!(gone["status"], json!({"phase": "Pending"}));
    assert_eq!(gone["spec"], v2["spec"]);
    assert_eq!(meta_str(&gone, "uid"), meta_str(&v1, "uid"));

    assert!(matches!(store.get(&k).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete(&k, Precondition::None, audit("delete")).await, Err(StoreError::NotFound(_))));
    let listed = store.list(&ListQuery::new(Kind::Approval)).await.expect("list");
    assert!(listed.items.is_empty(), "a deleted object is still listed");

    let again = create(&*store, object(Kind::Approval, "d", "ap", json!({"q": 2}))).await;
    assert_ne!(meta_str(&again, "uid"), meta_str(&v1, "uid"));
    assert_eq!(generation(&again), 1);
}

/// One counter for every kind: each write's revision is above the previous one.
pub async fn revisions_strictly_increase_across_kinds(h: &dyn Harness) {
    let store = h.open().await;
    let mut last = store.revision().await.expect("revision");
    for (i, kind) in Kind::ALL.iter().copied().enumerate() {
        let ns = if i % 2 == 0 { "even" } else { "odd" };
        let created = create(&*store, object(kind, ns, "r", json!({"i": i}))).await;
        assert!(rv(&created) > last, "{kind}: create revision {} not above {last}", rv(&created));
        last = rv(&created);
        let updated = store.update(created, Precondition::None, audit("update")).await.expect("update");
        assert!(rv(&updated) > last);
        last = rv(&updated);
        if i % 3 == 0 {
            let gone = store.delete(&key_of(&updated), Precondition::None, audit("delete")).await.expect("delete");
            assert!(rv(&gone) > last);
            last = rv(&gone);
        }
        assert_eq!(store.revision().await.expect("revision"), last);
    }
}

/// 16 tasks × 50 creates, and concurrent compare-and-swap increments of one shared object:
/// every create lands once, and the counter equals the number of successful updates.
pub async fn concurrent_writers(h: &dyn Harness) {
    const WRITERS: usize = 16;
    const PER_WRITER: usize = 50;
    const INCREMENTERS: usize = 4;
    const ATTEMPTS: usize = 40;

    let store = h.open().await;
    let before = store.revision().await.expect("revision");
    let counter = create(&*store, object(Kind::Memory, "shared", "counter", json!({"count": 0}))).await;
    let counter_key = key_of(&counter);

    let creators: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut revs = Vec::with_capacity(PER_WRITER);
                for i in 0..PER_WRITER {
                    let obj = object(
                        Kind::AgentRun,
                        &format!("w{}", w % 4),
                        &format!("w{w:02}-{i:03}"),
                        json!({"w": w, "i": i}),
                    );
                    revs.push(rv(&store.create(obj, audit("create")).await.expect("concurrent create")));
                }
                revs
            })
        })
        .collect();
    let incrementers: Vec<_> = (0..INCREMENTERS)
        .map(|_| {
            let store = Arc::clone(&store);
            let counter_key = counter_key.clone();
            tokio::spawn(async move {
                let (mut ok, mut conflicts) = (0u64, 0u64);
                for _ in 0..ATTEMPTS {
                    let mut cur = store.get(&counter_key).await.expect("get counter");
                    let seen = rv(&cur);
                    let n = cur["spec"]["count"].as_u64().expect("count");
                    cur["spec"]["count"] = json!(n + 1);
                    match store.update(cur, Precondition::ResourceVersion(seen), audit("update")).await {
                        Ok(_) => ok += 1,
                        Err(StoreError::Conflict { expected, actual, .. }) => {
                            assert_eq!(expected, seen);
                            assert!(actual > seen, "a conflict reports a newer stored version");
                            conflicts += 1;
                        }
                        Err(e) => panic!("CAS update failed unexpectedly: {e}"),
                    }
                }
                (ok, conflicts)
            })
        })
        .collect();

    let mut all_revs = BTreeSet::new();
    for t in creators {
        for r in t.await.expect("creator task") {
            assert!(all_revs.insert(r), "revision {r} handed out twice");
        }
    }
    let mut successes = 0;
    for t in incrementers {
        let (ok, conflicts) = t.await.expect("incrementer task");
        assert_eq!(ok + conflicts, ATTEMPTS as u64);
        successes += ok;
    }
    assert!(successes > 0, "no CAS update succeeded");

    let final_counter = store.get(&counter_key).await.expect("get counter");
    assert_eq!(final_counter["spec"]["count"], json!(successes), "lost or phantom increments");
    assert_eq!(generation(&final_counter), 1 + successes);

    let listed = list_all(&*store, ListQuery::new(Kind::AgentRun).limit(137)).await;
    let listed_keys = keys(&listed);
    assert_strictly_ordered(&listed_keys);
    assert_eq!(listed_keys.len(), WRITERS * PER_WRITER);
    let expected: BTreeSet<_> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |i| (format!("w{}", w % 4), format!("w{w:02}-{i:03}"))))
        .collect();
    assert_eq!(listed_keys.into_iter().collect::<BTreeSet<_>>(), expected);
    let total = before + (WRITERS * PER_WRITER) as u64 + 1 + successes;
    assert_eq!(store.revision().await.expect("revision"), total, "one revision per successful write");
}

/// The 237 objects of the pagination cases: 3 namespaces, labels `parity` and `group`,
/// `status.phase` cycling through three values, created in a scrambled order, plus objects of
/// another kind that must never show up.
async fn seed_pagination(store: &dyn Store) -> Vec<(String, String, Value)> {
    let phases = ["Pending", "Running", "Succeeded"];
    let mut expected = Vec::new();
    for i in 0..237usize {
        let j = (i * 97) % 237; // a permutation of 0..237
        let ns = ["ns-a", "ns-b", "ns-c"][j % 3];
        let name = format!("obj-{:03}", (j * 7) % 1000);
        let mut obj = object(Kind::AgentRun, ns, &name, json!({"j": j}));
        obj["metadata"]["labels"] =
            json!({"parity": if j % 2 == 0 { "even" } else { "odd" }, "group": format!("g{}", j % 5)});
        obj["status"] = json!({"phase": phases[(j / 3) % 3]});
        let created = create(store, obj).await;
        expected.push((ns.to_string(), name, created));
    }
    for ns in ["ns-a", "ns-b", "ns-c", "ns-0"] {
        create(store, object(Kind::Agent, ns, "obj-000", json!({}))).await;
    }
    expected.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    expected
}

fn expect_keys(
    expected: &[(String, String, Value)],
    keep: impl Fn(&(String, String, Value)) -> bool,
) -> Vec<(String, String)> {
    expected.iter().filter(|e| keep(e)).map(|(ns, n, _)| (ns.clone(), n.clone())).collect()
}

/// 237 objects in 3 namespaces, listed 50 at a time, come back exactly once each, in
/// (namespace, name) order, across namespaces and within each.
pub async fn pagination_is_exact_and_ordered(h: &dyn Harness) {
    let store = h.open().await;
    let expected = seed_pagination(&*store).await;

    let page = store.list(&ListQuery::new(Kind::AgentRun).limit(50)).await.expect("first page");
    assert_eq!(page.items.len(), 50, "an unfiltered page is full");
    assert!(page.continue_token.is_some());
    assert_eq!(page.revision, store.revision().await.expect("revision"));

    let all = list_all(&*store, ListQuery::new(Kind::AgentRun).limit(50)).await;
    let got = keys(&all);
    assert_strictly_ordered(&got);
    assert_eq!(got, expect_keys(&expected, |_| true));
    for (item, (_, _, created)) in all.iter().zip(&expected) {
        assert_eq!(item, created, "listed objects are the stored objects");
    }

    for ns in ["ns-a", "ns-b", "ns-c"] {
        let got = keys(&list_all(&*store, ListQuery::new(Kind::AgentRun).namespace(ns).limit(50)).await);
        assert_eq!(got, expect_keys(&expected, |e| e.0 == ns), "namespace {ns}");
    }
    assert!(list_all(&*store, ListQuery::new(Kind::AgentRun).namespace("ns-0")).await.is_empty());

    // A token is a position: one from an all-namespaces page (pointing into ns-b) used with a
    // namespace continues after that position within the namespace.
    let first = store.list(&ListQuery::new(Kind::AgentRun).limit(100)).await.expect("page of 100");
    let (last_ns, last_name) = keys(&first.items).pop().expect("100 items");
    assert_eq!(last_ns, "ns-b", "the seed puts the 100th object in ns-b");
    for ns in ["ns-a", "ns-b", "ns-c"] {
        let mut q = ListQuery::new(Kind::AgentRun).namespace(ns).limit(500);
        q.continue_token = first.continue_token.clone();
        let got = keys(&list_all(&*store, q).await);
        let want = expect_keys(&expected, |e| e.0 == ns && (e.0.as_str(), e.1.as_str()) > ("ns-b", last_name.as_str()));
        assert_eq!(got, want, "continuing in namespace {ns}");
    }

    // Exact page sizes: 237 = 4 × 50 + 37, and a limit of exactly the total needs no token.
    let mut q = ListQuery::new(Kind::AgentRun).limit(50);
    let mut sizes = Vec::new();
    loop {
        let page = store.list(&q).await.expect("page");
        sizes.push(page.items.len());
        match page.continue_token {
            Some(t) => q.continue_token = Some(t),
            None => break,
        }
    }
    assert_eq!(sizes.iter().sum::<usize>(), 237);
    assert!(sizes.iter().all(|&s| s <= 50));
    let whole = store.list(&ListQuery::new(Kind::AgentRun).limit(237)).await.expect("list all at once");
    assert_eq!(whole.items.len(), 237);
    assert!(whole.continue_token.is_none(), "no continue token when nothing follows");
}

/// Label and `status.phase` selectors: pages may be short, but the union is exact and ordered.
pub async fn pagination_with_selectors(h: &dyn Harness) {
    let store = h.open().await;
    let expected = seed_pagination(&*store).await;
    let label = |o: &Value, k: &str| o["metadata"]["labels"][k].as_str().unwrap_or_default().to_string();
    let phase = |o: &Value| o["status"]["phase"].as_str().unwrap_or_default().to_string();

    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("parity=even", "", None),
        ("group in (g1,g3)", "", None),
        ("", "status.phase=Running", None),
        ("parity=odd", "status.phase=Succeeded", None),
        ("", "status.phase!=Pending", None),
        ("group=g2", "status.phase=Pending", Some("ns-b")),
        ("parity=none", "", None),
    ];
    for (labels, fields, ns) in cases {
        let mut q = ListQuery::new(Kind::AgentRun).limit(50);
        q.labels = LabelSelector::parse(labels).expect("label selector");
        q.fields = FieldSelector::parse(fields).expect("field selector");
        q.namespace = ns.map(str::to_string);
        let got = keys(&list_all(&*store, q.clone()).await);
        assert_strictly_ordered(&got);
        let want = expect_keys(&expected, |(e_ns, _, o)| {
            ns.is_none_or(|n| n == e_ns) && q.labels.matches_object(o) && q.fields.matches_object(o)
        });
        assert_eq!(got, want, "labels {labels:?} fields {fields:?} namespace {ns:?}");
        if labels == "parity=even" {
            assert_eq!(want.len(), expected.iter().filter(|e| label(&e.2, "parity") == "even").count());
        }
        if fields == "status.phase=Running" {
            assert_eq!(want.len(), expected.iter().filter(|e| phase(&e.2) == "Running").count());
            assert!(!want.is_empty());
        }
    }
}

/// A continue token that was not produced by the store is refused.
pub async fn invalid_continue_token(h: &dyn Harness) {
    let store = h.open().await;
    create(&*store, object(Kind::Agent, "default", "a", json!({}))).await;
    for garbage in ["%%%not-a-token", "e30", "bm9wZQ"] {
        let mut q = ListQuery::new(Kind::Agent);
        q.continue_token = Some(garbage.to_string());
        match store.list(&q).await {
            Err(StoreError::InvalidContinueToken(_)) => {}
            other => panic!("token {garbage:?}: expected InvalidContinueToken, got {other:?}"),
        }
    }
}

/// A watch from a list's revision sees every later write and none of the listed ones.
pub async fn list_revision_is_a_watch_start(h: &dyn Harness) {
    let store = h.open().await;
    for i in 0..5 {
        create(&*store, object(Kind::Tool, "lw", &format!("t{i}"), json!({}))).await;
    }
    let listed = store.list(&ListQuery::new(Kind::Tool)).await.expect("list");
    assert_eq!(listed.items.len(), 5);
    let mut watch = store.watch(WatchQuery::all_from(listed.revision)).await.expect("watch");
    let later = create(&*store, object(Kind::Tool, "lw", "t5", json!({}))).await;
    let ev = next_event(&mut watch).await;
    assert_eq!(ev.type_, EventType::Added);
    assert_eq!(ev.revision, rv(&later));
    assert_eq!(ev.object, later);
}

/// What one writer did, by revision.
#[derive(Debug, Clone, PartialEq)]
struct Write {
    key: ObjectKey,
    type_: EventType,
    object: Value,
}

/// Each of 8 concurrent writers does 100 writes (create, update, update, delete per object); a
/// watch started before them delivers all 800 exactly once, in strictly increasing revision
/// order, with the per-object sequence of the writes.
pub async fn watch_orders_concurrent_writes(h: &dyn Harness) {
    const WRITERS: usize = 8;
    const OBJECTS_PER_WRITER: usize = 25; // × 4 writes = 100

    let store = h.open().await;
    create(&*store, object(Kind::Agent, "pre", "existing", json!({}))).await;
    let start = store.revision().await.expect("revision");
    let mut watch = store.watch(WatchQuery::all_from(start)).await.expect("watch");

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut done: Vec<(Revision, Write)> = Vec::new();
                for o in 0..OBJECTS_PER_WRITER {
                    let kind = if o % 2 == 0 { Kind::AgentRun } else { Kind::Memory };
                    let created = store
                        .create(
                            object(kind, &format!("ns{}", w % 3), &format!("w{w}-o{o}"), json!({"step": 0})),
                            audit("create"),
                        )
                        .await
                        .expect("create");
                    let k = key_of(&created);
                    done.push((
                        rv(&created),
                        Write { key: k.clone(), type_: EventType::Added, object: created.clone() },
                    ));
                    let mut cur = created;
                    for step in 1..=2 {
                        cur["spec"]["step"] = json!(step);
                        let pre = if step == 1 { Precondition::ResourceVersion(rv(&cur)) } else { Precondition::None };
                        cur = store.update(cur, pre, audit("update")).await.expect("update");
                        done.push((
                            rv(&cur),
                            Write { key: k.clone(), type_: EventType::Modified, object: cur.clone() },
                        ));
                    }
                    let gone = store.delete(&k, Precondition::None, audit("delete")).await.expect("delete");
                    done.push((rv(&gone), Write { key: k, type_: EventType::Deleted, object: gone }));
                }
                done
            })
        })
        .collect();

    let mut writes: BTreeMap<Revision, Write> = BTreeMap::new();
    for t in writers {
        for (r, w) in t.await.expect("writer task") {
            assert!(writes.insert(r, w).is_none(), "revision {r} returned to two writes");
        }
    }
    assert_eq!(writes.len(), WRITERS * OBJECTS_PER_WRITER * 4);

    let mut last = start;
    let mut per_object: HashMap<ObjectKey, Vec<(EventType, u64)>> = HashMap::new();
    for _ in 0..writes.len() {
        let ev = next_event(&mut watch).await;
        assert!(ev.revision > last, "revision {} delivered after {last} (duplicate or out of order)", ev.revision);
        last = ev.revision;
        let w =
            writes.get(&ev.revision).unwrap_or_else(|| panic!("event at revision {} matches no write", ev.revision));
        assert_eq!(ev.type_, w.type_, "event type at revision {}", ev.revision);
        assert_eq!(ev.object, w.object, "event object at revision {}", ev.revision);
        let step = ev.object["spec"]["step"].as_u64().expect("step");
        per_object.entry(w.key.clone()).or_default().push((ev.type_, step));
    }
    assert_eq!(last, *writes.keys().next_back().expect("writes"), "every write was delivered");
    assert_eq!(per_object.len(), WRITERS * OBJECTS_PER_WRITER);
    for (k, seq) in per_object {
        assert_eq!(
            seq,
            vec![(EventType::Added, 0), (EventType::Modified, 1), (EventType::Modified, 2), (EventType::Deleted, 2)],
            "sequence of {k}"
        );
    }
}

/// A watch from an older revision replays the history after it, then follows live changes.
pub async fn watch_replays_history(h: &dyn Harness) {
    let store = h.open().await;
    let start = store.revision().await.expect("revision");
    let a = create(&*store, object(Kind::Policy, "h", "a", json!({"v": 1}))).await;
    let mut a2 = a.clone();
    a2["spec"]["v"] = json!(2);
    let a2 = store.update(a2, Precondition::None, audit("update")).await.expect("update");
    let b = create(&*store, object(Kind::Tool, "h", "b", json!({}))).await;
    let a3 = store.delete(&key_of(&a), Precondition::None, audit("delete")).await.expect("delete");
    let history =
        [(EventType::Added, &a), (EventType::Modified, &a2), (EventType::Added, &b), (EventType::Deleted, &a3)];

    let mut from_start = store.watch(WatchQuery::all_from(start)).await.expect("watch from start");
    for (type_, obj) in history {
        let ev = next_event(&mut from_start).await;
        assert_eq!((ev.type_, ev.revision, &ev.object), (type_, rv(obj), obj));
    }

    let mut from_middle = store.watch(WatchQuery::all_from(rv(&a2))).await.expect("watch from the middle");
    for (type_, obj) in &history[2..] {
        let ev = next_event(&mut from_middle).await;
        assert_eq!((ev.type_, ev.revision), (*type_, rv(obj)));
    }

    let live = create(&*store, object(Kind::Tool, "h", "live", json!({}))).await;
    for stream in [&mut from_start, &mut from_middle] {
        let ev = next_event(stream).await;
        assert_eq!((ev.type_, ev.revision), (EventType::Added, rv(&live)), "after the replay, live events follow");
    }
}

/// Kind, namespace and label filters deliver exactly the matching events.
pub async fn watch_filters(h: &dyn Harness) {
    let store = h.open().await;
    let start = store.revision().await.expect("revision");

    let by_kind = WatchQuery { kind: Some(Kind::AgentRun), ..WatchQuery::all_from(start) };
    let by_ns = WatchQuery { namespace: Some("team-b".into()), ..WatchQuery::all_from(start) };
    let by_label =
        WatchQuery { labels: LabelSelector::parse("tier=gold").expect("selector"), ..WatchQuery::all_from(start) };
    let combined = WatchQuery {
        kind: Some(Kind::AgentRun),
        namespace: Some("team-a".into()),
        labels: LabelSelector::parse("tier=gold").expect("selector"),
        ..WatchQuery::all_from(start)
    };
    let queries = [by_kind, by_ns, by_label, combined];
    let mut streams = Vec::new();
    for q in &queries {
        streams.push(store.watch(q.clone()).await.expect("watch"));
    }

    let mut all_events = Vec::new();
    for (i, kind) in [Kind::AgentRun, Kind::Agent, Kind::Tool].into_iter().enumerate() {
        for ns in ["team-a", "team-b"] {
            for tier in ["gold", "silver"] {
                let mut obj = object(kind, ns, &format!("{}-{tier}", kind.singular()), json!({"i": i}));
                obj["metadata"]["labels"] = json!({"tier": tier});
                let created = create(&*store, obj).await;
                all_events.push(WatchEvent {
                    type_: EventType::Added,
                    revision: rv(&created),
                    object: created.clone(),
                });
                let gone = store.delete(&key_of(&created), Precondition::None, audit("delete")).await.expect("delete");
                all_events.push(WatchEvent { type_: EventType::Deleted, revision: rv(&gone), object: gone });
            }
        }
    }
    // A final write every query matches: once it arrives, nothing else may have come first.
    let mut sentinel = object(Kind::AgentRun, "team-b", "sentinel", json!({}));
    sentinel["metadata"]["labels"] = json!({"tier": "gold"});
    let sentinel = create(&*store, sentinel).await;
    let mut sentinel_b = object(Kind::AgentRun, "team-a", "sentinel", json!({}));
    sentinel_b["metadata"]["labels"] = json!({"tier": "gold"});
    let sentinel_b = create(&*store, sentinel_b).await;

    for (q, stream) in queries.iter().zip(streams.iter_mut()) {
        let want: Vec<&WatchEvent> = all_events.iter().filter(|e| q.matches(e)).collect();
        assert!(!want.is_empty());
        for w in want {
            let ev = next_event(stream).await;
            assert_eq!(&ev, w, "query kind={:?} ns={:?} labels={:?}", q.kind, q.namespace, q.labels);
        }
        let ev = next_event(stream).await;
        let expected_sentinel = if q.namespace.as_deref() == Some("team-a") { &sentinel_b } else { &sentinel };
        assert_eq!(&ev.object, expected_sentinel, "an event that does not match the filter was delivered");
    }
}

/// Objects and the revision counter survive close and re-open; new revisions continue above.
pub async fn restart_keeps_objects_and_revisions(h: &dyn Harness) {
    let store = h.open().await;
    let mut kept = Vec::new();
    for i in 0..20 {
        let created = create(&*store, object(Kind::Agent, "dur", &format!("a{i:02}"), json!({"i": i}))).await;
        kept.push(created);
    }
    let mut updated = kept[3].clone();
    updated["spec"]["i"] = json!(333);
    kept[3] = store.update(updated, Precondition::None, audit("update")).await.expect("update");
    let deleted = kept.remove(7);
    store.delete(&key_of(&deleted), Precondition::None, audit("delete")).await.expect("delete");
    // The last write deletes, so the revision is not any stored object's resourceVersion.
    let tmp = create(&*store, object(Kind::Tool, "dur", "tmp", json!({}))).await;
    let last = rv(&store.delete(&key_of(&tmp), Precondition::None, audit("delete")).await.expect("delete"));
    assert_eq!(store.revision().await.expect("revision"), last);
    store.close().await.expect("close");

    let store = h.open().await;
    assert_eq!(store.revision().await.expect("revision after re-open"), last, "the revision counter survives");
    for obj in &kept {
        assert_eq!(&store.get(&key_of(obj)).await.expect("get after re-open"), obj);
    }
    assert!(matches!(store.get(&key_of(&deleted)).await, Err(StoreError::NotFound(_))));
    let listed = list_all(&*store, ListQuery::new(Kind::Agent).limit(7)).await;
    assert_eq!(listed, kept);

    let new = create(&*store, object(Kind::Agent, "dur", "after", json!({}))).await;
    assert!(rv(&new) > last, "new revision {} is not above the pre-restart {last}", rv(&new));

    let mut watch = store.watch(WatchQuery::all_from(last - 1)).await.expect("watch across the restart");
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.type_, ev.revision), (EventType::Deleted, last));
    let ev = next_event(&mut watch).await;
    assert_eq!((ev.type_, ev.revision), (EventType::Added, rv(&new)));
    store.close().await.expect("close");
}

/// close ends open watches.
pub async fn close_ends_watches(h: &dyn Harness) {
    let store = h.open().await;
    let a = create(&*store, object(Kind::Agent, "c", "a", json!({}))).await;
    let mut idle = store.watch(WatchQuery::all_from(rv(&a))).await.expect("watch");
    let mut busy = store.watch(WatchQuery::all_from(0)).await.expect("watch");
    let ev = next_event(&mut busy).await;
    assert_eq!(ev.revision, rv(&a));
    store.close().await.expect("close");
    assert!(until_end(&mut idle).await.is_empty());
    assert!(until_end(&mut busy).await.is_empty());
}

/// Every call after close fails with Closed.
pub async fn calls_after_close_fail_closed(h: &dyn Harness) {
    let store = h.open().await;
    let a = create(&*store, object(Kind::Agent, "c", "a", json!({}))).await;
    store.close().await.expect("close");
    let k = key_of(&a);
    let closed = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::Closed) => {}
        other => panic!("{what} after close: expected Closed, got {other:?}"),
    };
    closed("create", store.create(object(Kind::Agent, "c", "b", json!({})), audit("create")).await.map(drop));
    closed("get", store.get(&k).await.map(drop));
    closed("list", store.list(&ListQuery::new(Kind::Agent)).await.map(drop));
    closed("update", store.update(a.clone(), Precondition::None, audit("update")).await.map(drop));
    closed("delete", store.delete(&k, Precondition::None, audit("delete")).await.map(drop));
    closed("watch", store.watch(WatchQuery::all_from(0)).await.map(drop));
    closed("revision", store.revision().await.map(drop));
    closed("ping", store.ping().await);

    // Nothing was written by the refused calls.
    let store = h.open().await;
    store.ping().await.expect("ping after re-open");
    assert_eq!(store.get(&k).await.expect("get after re-open"), a);
    assert_eq!(store.revision().await.expect("revision"), rv(&a));
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// The ledger

/// Every successful write has exactly one entry, written with it; failed writes have none.
pub async fn ledger_records_every_write(h: &dyn Harness) {
    let store = h.open().await;
    let a = create(store.as_ref(), object(Kind::Agent, "ns1", "a", json!({"v": 1}))).await;
    // Failed writes leave no entry: AlreadyExists, a stale CAS, NotFound.
    assert!(store.create(object(Kind::Agent, "ns1", "a", json!({})), audit("create")).await.is_err());
    let mut next = a.clone();
    next["spec"] = json!({"v": 2});
    let a2 = store.update(next.clone(), Precondition::ResourceVersion(rv(&a)), audit("update")).await.expect("update");
    assert!(store.update(next, Precondition::ResourceVersion(rv(&a)), audit("update")).await.is_err());
    assert!(store.delete(&key(Kind::Agent, "ns1", "ghost"), Precondition::None, audit("delete")).await.is_err());
    store.delete(&key_of(&a2), Precondition::None, audit("delete")).await.expect("delete");

    let entries = all_entries(store.as_ref()).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["resource.created", "resource.updated", "resource.deleted"]);
    assert_chain(&entries);
    for e in &entries {
        let t = e.target.as_ref().expect("a resource write names its target");
        assert_eq!((t.kind.as_str(), t.namespace.as_str(), t.name.as_str()), ("Agent", "ns1", "a"));
        assert_eq!(t.uid.as_deref(), Some(meta_str(&a, "uid")));
        assert_eq!(e.namespace.as_deref(), Some("ns1"));
        assert_eq!(e.actor, Actor::system("conformance"));
    }
    let (seq, hash) = store.ledger_head().await.expect("head");
    assert_eq!((seq, hash.as_str()), (3, entries[2].hash.as_str()));
    store.close().await.expect("close");
}

pub async fn ledger_chain_is_contiguous_under_concurrent_writers(h: &dyn Harness) {
    let store = h.open().await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let obj = object(Kind::AgentRun, "ns1", &format!("w{w}-{i}"), json!({}));
                store.create(obj, audit("create")).await.expect("create");
                if i % 10 == 0 {
                    store
                        .append(vec![draft(Actor::agent(format!("w{w}")), "policy.decided", None, "success")])
                        .await
                        .expect("append");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let entries = all_entries(store.as_ref()).await;
    assert_eq!(entries.len(), 8 * 40 + 8 * 4);
    assert_chain(&entries);
    store.close().await.expect("close");
}

pub async fn ledger_append_and_query(h: &dyn Harness) {
    let store = h.open().await;
    let before = chrono::Utc::now();
    let sealed = store
        .append(vec![
            draft(Actor::user("alice"), "run.submitted", Some("run-1"), "success"),
            draft(Actor::agent("coder"), "policy.decided", Some("run-1"), "denied"),
            draft(Actor::user("bob"), "run.submitted", Some("run-2"), "success"),
        ])
        .await
        .expect("append");
    assert_eq!(sealed.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(sealed[0].params, json!({"tool": "exec", "args": {"cmd": "ls"}}));
    assert!(store.append(vec![]).await.expect("empty append").is_empty());
    create(store.as_ref(), object(Kind::Agent, "ns2", "x", json!({}))).await;

    let q = |f: &dyn Fn(&mut LedgerQuery)| {
        let mut q = LedgerQuery::default();
        f(&mut q);
        q
    };
    let seqs = |p: crate::LedgerPage| p.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    let page = store.ledger_query(&q(&|q| q.run = Some("run-1".into()))).await.expect("query");
    assert_eq!(seqs(page), [1, 2]);
    let page = store.ledger_query(&q(&|q| q.actor = Some("alice".into()))).await.expect("query");
    assert_eq!(seqs(page), [1]);
    let page = store.ledger_query(&q(&|q| q.actor = Some("agent:coder".into()))).await.expect("query");
    assert_eq!(seqs(page), [2]);
    let page = store.ledger_query(&q(&|q| q.outcome = Some("denied".into()))).await.expect("query");
    assert_eq!(seqs(page), [2]);
    let page = store.ledger_query(&q(&|q| q.action = Some("run.submitted".into()))).await.expect("query");
    assert_eq!(seqs(page), [1, 3]);
    let page = store.ledger_query(&q(&|q| q.namespace = Some("ns2".into()))).await.expect("query");
    assert_eq!(seqs(page), [4]);
    let page =
        store.ledger_query(&q(&|q| q.target = Some(("Agent".into(), "ns2".into(), "x".into())))).await.expect("query");
    assert_eq!(seqs(page), [4]);
    let page = store.ledger_query(&q(&|q| q.since = Some(before - chrono::Duration::seconds(5)))).await.expect("query");
    assert_eq!(seqs(page), [1, 2, 3, 4]);
    let page = store.ledger_query(&q(&|q| q.until = Some(before - chrono::Duration::seconds(5)))).await.expect("query");
    assert!(page.entries.is_empty());
    // Pagination.
    let page = store.ledger_query(&q(&|q| q.limit = Some(3))).await.expect("query");
    assert_eq!(page.next_after_seq, Some(3));
    assert_eq!(seqs(page), [1, 2, 3]);
    let page = store
        .ledger_query(&q(&|q| {
            q.limit = Some(3);
            q.after_seq = Some(3);
        }))
        .await
        .expect("query");
    assert_eq!(page.next_after_seq, None);
    assert_eq!(seqs(page), [4]);
    store.close().await.expect("close");
}

pub async fn ledger_survives_restart(h: &dyn Harness) {
    let store = h.open().await;
    create(store.as_ref(), object(Kind::Agent, "ns1", "a", json!({}))).await;
    store.append(vec![draft(Actor::user("alice"), "auth.failed", None, "failure")]).await.expect("append");
    let head = store.ledger_head().await.expect("head");
    store.close().await.expect("close");
    let store = h.open().await;
    assert_eq!(store.ledger_head().await.expect("head"), head);
    create(store.as_ref(), object(Kind::Agent, "ns1", "b", json!({}))).await;
    let entries = all_entries(store.as_ref()).await;
    assert_eq!(entries.len(), 3);
    assert_chain(&entries);
    store.close().await.expect("close");
}

pub async fn ledger_checkpoints_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    assert!(store.checkpoints().await.expect("checkpoints").is_empty());
    create(store.as_ref(), object(Kind::Agent, "ns1", "a", json!({}))).await;
    let (seq, hash) = store.ledger_head().await.expect("head");
    let cp = Checkpoint {
        seq,
        hash: hash.clone(),
        ts: chrono::Utc::now(),
        key_id: "0123456789abcdef".into(),
        signature: "c2lnbmF0dXJl".into(),
    };
    store.put_checkpoint(cp.clone()).await.expect("checkpoint");
    store.put_checkpoint(cp.clone()).await.expect("the same checkpoint again is fine");
    store.close().await.expect("close");
    let store = h.open().await;
    let cps = store.checkpoints().await.expect("checkpoints");
    assert_eq!(cps.len(), 1);
    assert_eq!((cps[0].seq, cps[0].hash.as_str(), cps[0].signature.as_str()), (seq, hash.as_str(), "c2lnbmF0dXJl"));
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys

pub async fn idempotency_keys_are_unique_per_namespace(h: &dyn Harness) {
    let store = h.open().await;
    let with_key = |ns: &str, name: &str, k: &str| object(Kind::AgentRun, ns, name, json!({"idempotencyKey": k}));
    let first = create(store.as_ref(), with_key("ns1", "run-a", "key-1")).await;
    match store.create(with_key("ns1", "run-b", "key-1"), audit("create")).await {
        Err(StoreError::IdempotencyKeyInUse { existing, idempotency_key }) => {
            assert_eq!(existing, key(Kind::AgentRun, "ns1", "run-a"));
            assert_eq!(idempotency_key, "key-1");
        }
        other => panic!("a second create with the same key must fail naming the holder, got {other:?}"),
    }
    // Another namespace, or another kind, may use the same key.
    create(store.as_ref(), with_key("ns2", "run-b", "key-1")).await;
    create(store.as_ref(), object(Kind::Agent, "ns1", "agent", json!({"idempotencyKey": "key-1"}))).await;
    let found = store.get_by_idempotency_key(Kind::AgentRun, "ns1", "key-1").await.expect("lookup");
    assert_eq!(found.as_ref().map(|v| meta_str(v, "uid")), Some(meta_str(&first, "uid")));
    assert!(store.get_by_idempotency_key(Kind::AgentRun, "ns1", "nope").await.expect("lookup").is_none());

    // Concurrent creates with one key: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.create(with_key("ns3", &format!("dup-{i}"), "shared"), audit("create")).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.expect("task"));
    }
    assert_eq!(wins, 1, "exactly one create per idempotency key");

    // Deleting the holder frees the key.
    store.delete(&key(Kind::AgentRun, "ns1", "run-a"), Precondition::None, audit("delete")).await.expect("delete");
    create(store.as_ref(), with_key("ns1", "run-c", "key-1")).await;
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// Leases

/// Polls `f` until it returns `Some`, with a deadline well inside [`CASE_TIMEOUT`].
async fn poll_until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An update audit entry carrying `params.tag`, to find it in the ledger.
fn tagged(tag: &str) -> EntryDraft {
    let mut d = audit("update");
    d.params = json!({ "tag": tag });
    d
}

pub async fn leases_exclude_and_fence(h: &dyn Harness) {
    let store = h.open().await;
    let long = Duration::from_secs(60);
    let a = store.acquire_lease("controller", "node-a", long).await.expect("acquire").expect("free lease is granted");
    assert_eq!((a.name.as_str(), a.holder.as_str(), a.epoch), ("controller", "node-a", 1));
    assert!(store.acquire_lease("controller", "node-b", long).await.expect("acquire").is_none(), "held: not granted");
    // Another lease name is independent.
    assert!(store.acquire_lease("retention", "node-b", long).await.expect("acquire").is_some());
    let renewed = store.renew_lease(&a, long).await.expect("renew").expect("the holder renews");
    assert_eq!(renewed.epoch, a.epoch);
    assert!(renewed.expires_at >= a.expires_at);

    // A fenced write by the holder succeeds and records its ledger entry.
    let obj = create(store.as_ref(), object(Kind::AgentRun, "ns", "r", json!({"x": 1}))).await;
    let mut next = obj.clone();
    next["status"] = json!({"phase": "Running"});
    let rv = revision_of(&obj).expect("rv");
    let written = store
        .update_fenced(next.clone(), Precondition::ResourceVersion(rv), tagged("fenced"), &a)
        .await
        .expect("fenced");
    let rv = revision_of(&written).expect("rv");

    // A short lease lapses; another holder takes it with a higher epoch.
    let short = store.renew_lease(&a, Duration::from_millis(1)).await.expect("renew").expect("still held");
    let b = poll_until("node-b to take the lapsed lease", || {
        let store = Arc::clone(&store);
        async move { store.acquire_lease("controller", "node-b", long).await.expect("acquire") }
    })
    .await;
    assert_eq!(b.epoch, short.epoch + 1);
    // The old holder can neither renew nor write; nothing is written.
    assert!(store.renew_lease(&short, long).await.expect("renew").is_none(), "a lost lease is not renewed");
    next["status"] = json!({"phase": "Succeeded"});
    match store.update_fenced(next.clone(), Precondition::ResourceVersion(rv), tagged("stale"), &short).await {
        Err(StoreError::Fenced { lease, holder, epoch, .. }) => {
            assert_eq!((lease.as_str(), holder.as_str(), epoch), ("controller", "node-a", short.epoch));
        }
        other => panic!("a write with a lost lease must be fenced, got {other:?}"),
    }
    let stored = store.get(&key(Kind::AgentRun, "ns", "r")).await.expect("get");
    assert_eq!(stored["status"]["phase"], "Running", "the fenced write changed nothing");
    let actions: Vec<String> = store
        .ledger_query(&LedgerQuery { run: Some("r".into()), ..Default::default() })
        .await
        .expect("query")
        .entries
        .into_iter()
        .filter_map(|e| e.params.get("tag").and_then(Value::as_str).map(str::to_string))
        .collect();
    assert_eq!(actions, ["fenced"], "only the holder's write is in the ledger");
    // The new holder writes.
    store.update_fenced(next, Precondition::ResourceVersion(rv), tagged("new-holder"), &b).await.expect("new holder");
    // A lapsed fence fails even if nobody else took the lease.
    let lapsed = store.renew_lease(&b, Duration::from_millis(1)).await.expect("renew").expect("held");
    let stored = poll_until("the lease to lapse", || {
        let (store, lapsed) = (Arc::clone(&store), lapsed.clone());
        async move {
            let cur = store.get(&key(Kind::AgentRun, "ns", "r")).await.expect("get");
            let rv = revision_of(&cur).expect("rv");
            match store.update_fenced(cur.clone(), Precondition::ResourceVersion(rv), tagged("late"), &lapsed).await {
                Err(StoreError::Fenced { .. }) => Some(cur),
                Ok(_) => None,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    })
    .await;
    assert_eq!(stored["status"]["phase"], "Succeeded");
    store.close().await.expect("close");
}

pub async fn leases_survive_restart_and_release(h: &dyn Harness) {
    let store = h.open().await;
    let long = Duration::from_secs(60);
    let a = store.acquire_lease("controller", "node-a", long).await.expect("acquire").expect("granted");
    store.close().await.expect("close");
    let store = h.open().await;
    assert!(store.acquire_lease("controller", "node-b", long).await.expect("acquire").is_none(), "still held");
    // The same holder (a restarted process) takes over at once, with a new epoch that fences the
    // old one.
    let again = store.acquire_lease("controller", "node-a", long).await.expect("acquire").expect("same holder");
    assert_eq!(again.epoch, a.epoch + 1);
    assert!(store.renew_lease(&a, long).await.expect("renew").is_none(), "the previous epoch is fenced");
    store.release_lease(&again).await.expect("release");
    store.release_lease(&again).await.expect("a second release is Ok");
    let b = store.acquire_lease("controller", "node-b", long).await.expect("acquire").expect("released");
    assert_eq!(b.epoch, again.epoch + 1);
    store.close().await.expect("close");
}

fn token(id: &str, name: &str, hash: &str) -> ApiToken {
    ApiToken {
        id: id.into(),
        name: name.into(),
        role: "viewer".into(),
        namespace: Some("ns1".into()),
        hash: hash.into(),
        created_at: chrono::Utc::now(),
        created_by: "user:conformance".into(),
        expires_at: None,
        revoked_at: None,
    }
}

fn token_audit(action: &str, name: &str) -> EntryDraft {
    let mut d = crate::resource_audit(Actor::user("conformance"), action);
    d.target = Some(agentplane_ledger::Target {
        kind: "Token".into(),
        namespace: String::new(),
        name: name.into(),
        uid: None,
    });
    d
}

/// API tokens: create, look up by hash, names unique among active tokens, revoke by id or
/// name, records survive a restart, and each create/revoke is in the ledger.
pub async fn api_tokens_round_trip_and_revoke(h: &dyn Harness) {
    let store = h.open().await;
    let (head, _) = store.ledger_head().await.expect("head");
    let a = store.create_token(token("id-a", "ci", "aa"), token_audit("token.created", "ci")).await.expect("create");
    assert_eq!(a.name, "ci");
    let e =
        store.create_token(token("id-b", "ci", "bb"), token_audit("token.created", "ci")).await.expect_err("must fail");
    assert!(matches!(e, StoreError::TokenExists(ref n) if n == "ci"), "{e:?}");
    assert_eq!(store.get_token_by_hash("aa").await.expect("get").map(|t| t.id), Some("id-a".into()));
    assert_eq!(store.get_token_by_hash("zz").await.expect("get"), None);
    let at = chrono::Utc::now();
    let revoked = store.revoke_token("ci", at, token_audit("token.revoked", "ci")).await.expect("revoke by name");
    assert_eq!(revoked.id, "id-a");
    assert!(revoked.revoked_at.is_some());
    assert!(!revoked.is_active(chrono::Utc::now()));
    let e = store.revoke_token("ci", at, token_audit("token.revoked", "ci")).await.expect_err("must fail");
    assert!(matches!(e, StoreError::TokenNotFound(_)), "{e:?}");
    // The name is free again once revoked.
    store.create_token(token("id-c", "ci", "cc"), token_audit("token.created", "ci")).await.expect("reuse name");
    store.revoke_token("id-c", at, token_audit("token.revoked", "ci")).await.expect("revoke by id");
    store.close().await.expect("close");
    let store = h.open().await;
    let all = store.list_tokens().await.expect("list");
    assert_eq!(all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["id-a", "id-c"]);
    assert!(all.iter().all(|t| t.revoked_at.is_some()));
    let page = store.ledger_scan(head, 100).await.expect("scan");
    let actions: Vec<&str> = page.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token.created", "token.revoked", "token.created", "token.revoked"]);
    store.close().await.expect("close");
}
