//! The writer thread: the only owner of the read-write connection.
//!
//! It takes one command (blocking), drains up to `max_batch - 1` more that are already queued,
//! runs them in one `BEGIN IMMEDIATE` transaction with each command inside its own savepoint (a
//! command that fails rolls back only its savepoint), commits, and only then publishes the events
//! (in revision order) and replies to the callers. One commit, hence one WAL append, serves the
//! whole batch: that is what makes thousands of durable writes per second possible.

use std::path::PathBuf;
use std::sync::Arc;

use agentplane_api::DEFAULT_NAMESPACE;
use agentplane_store::{
    ApiToken, Checkpoint, Entry, EntryDraft, EventType, Lease, ObjectKey, Precondition, Revision, StoreError, Target,
    WatchEvent, revision_of,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::checkpoint::Checkpointer;
use crate::schema::{META_COMPACTED, META_REVISION, as_i64, meta_get, meta_set, sql_err};

/// How many random names `generateName` tries before giving up.
const GENERATE_NAME_ATTEMPTS: usize = 32;
/// Length of the random suffix `generateName` appends.
const GENERATE_NAME_SUFFIX: usize = 5;

/// Where the result of one write goes.
pub(crate) type Reply = oneshot::Sender<Result<Output, StoreError>>;

/// What a successful write answers: the stored object (`null` for ledger-only commands) and the
/// ledger entries sealed for `Append`.
#[derive(Debug)]
pub(crate) struct Output {
    pub object: Value,
    pub entries: Vec<Entry>,
}

/// One write, with the channel its result goes back on.
#[derive(Debug)]
pub(crate) struct Command {
    pub op: Op,
    pub reply: Reply,
}

#[derive(Debug)]
pub(crate) enum Op {
    Create(Value, EntryDraft),
    Update(Value, Precondition, EntryDraft, Option<Lease>),
    /// Lease operations; the reply's object is the lease as JSON, or `null` when not granted.
    Lease(LeaseOp),
    Delete(ObjectKey, Precondition, EntryDraft),
    /// Ledger entries with no state change; the reply is the sealed entries as a JSON array.
    Append(Vec<EntryDraft>),
    /// A signed checkpoint; the reply is `null`.
    Checkpoint(Checkpoint),
    /// Create an API token record with its audit entry; the reply is the record as JSON.
    CreateToken(ApiToken, EntryDraft),
    /// Revoke an active API token (by id, else by name) with its audit entry; the reply is the
    /// revoked record as JSON.
    RevokeToken(String, chrono::DateTime<chrono::Utc>, EntryDraft),
}

/// A lease operation (see `Store::acquire_lease`).
#[derive(Debug)]
pub(crate) enum LeaseOp {
    Acquire { name: String, holder: String, ttl: std::time::Duration },
    Renew { lease: Lease, ttl: std::time::Duration },
    Release { lease: Lease },
}

/// What the writer thread needs; built by `SqliteStore::open`.
#[derive(Debug)]
pub(crate) struct Writer {
    pub path: PathBuf,
    pub conn: Connection,
    pub commands: mpsc::Receiver<Command>,
    pub events: broadcast::Sender<Arc<WatchEvent>>,
    pub max_batch: usize,
    pub event_history: u64,
    /// Write ledger entries (always, except in benchmarks that measure the ledger's cost).
    pub record_ledger: bool,
}

/// The head of the hash chain as the writer sees it.
#[derive(Debug, Clone)]
struct Chain {
    seq: u64,
    hash: String,
}

/// A command that succeeded inside the (not yet committed) transaction.
struct Applied {
    object: Value,
    /// Sealed entries, for `Append` only.
    entries: Vec<Entry>,
    /// `None` for commands that change no object (ledger appends, checkpoints).
    event: Option<EventType>,
}

impl Writer {
    /// Run until every command sender is gone, then checkpoint the WAL into the database file.
    pub(crate) fn run(mut self) -> Result<(), StoreError> {
        let mut revision = meta_get(&self.conn, META_REVISION)?;
        let mut chain = load_chain(&self.conn)?;
        let mut compacted = meta_get(&self.conn, META_COMPACTED)?;
        // Compact when this many events beyond `event_history` have piled up.
        let slack = (self.event_history / 10).clamp(1, 1_000);
        let max_batch = self.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        let mut checkpointer = Checkpointer::start(&self.path);
        while let Some(first) = self.commands.blocking_recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match self.commands.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let committed = self.run_batch(&mut batch, &mut revision, &mut chain, &mut compacted, slack);
            checkpointer.committed(&self.conn, committed);
        }
        checkpointer.stop();
        tracing::debug!(revision, "sqlite writer stopping; checkpointing the WAL");
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| sql_err("checkpointing the WAL at close", e))?;
        self.conn.close().map_err(|(_, e)| sql_err("closing the write connection", e))
    }

    /// Apply, commit, publish and reply to one batch. Drains `batch`; returns how many writes
    /// were committed.
    fn run_batch(
        &mut self,
        batch: &mut Vec<Command>,
        revision: &mut Revision,
        chain: &mut Chain,
        compacted: &mut Revision,
        slack: u64,
    ) -> u64 {
        let conn = &self.conn;
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = format!("starting a write transaction: {e}");
            tracing::error!(error = %e, "sqlite writer cannot begin a transaction");
            for cmd in batch.drain(..) {
                let _ = cmd.reply.send(Err(StoreError::Unavailable { message: msg.clone(), source: None }));
            }
            return 0;
        }

        let start_revision = *revision;
        let start_chain = chain.clone();
        let record = self.record_ledger;
        let mut results: Vec<(Reply, Result<Applied, StoreError>)> = Vec::with_capacity(batch.len());
        // A failure of the transaction itself (not of one command) rolls the whole batch back;
        // the placeholder results below are then replaced by `Unavailable` for every caller.
        let mut tx_error: Option<rusqlite::Error> = None;
        for cmd in batch.drain(..) {
            if tx_error.is_some() {
                results.push((cmd.reply, Err(StoreError::Closed)));
                continue;
            }
            if let Err(e) = conn.execute_batch("SAVEPOINT cmd") {
                tx_error = Some(e);
                results.push((cmd.reply, Err(StoreError::Closed)));
                continue;
            }
            let next = *revision + 1;
            let mut tentative = chain.clone();
            let (applied, bumps_revision) = match cmd.op {
                Op::Create(obj, audit) => {
                    (create(conn, obj, next).and_then(|a| record_change(conn, record, a, audit, &mut tentative)), true)
                }
                Op::Update(obj, pre, audit, fence) => (
                    check_fence(conn, fence.as_ref())
                        .and_then(|()| update(conn, obj, pre, next))
                        .and_then(|a| record_change(conn, record, a, audit, &mut tentative)),
                    true,
                ),
                Op::Lease(op) => (lease_op(conn, op), false),
                Op::Delete(key, pre, audit) => (
                    delete(conn, &key, pre, next).and_then(|a| record_change(conn, record, a, audit, &mut tentative)),
                    true,
                ),
                Op::Append(drafts) => (append(conn, drafts, &mut tentative), false),
                Op::Checkpoint(cp) => (insert_checkpoint(conn, &cp), false),
                Op::CreateToken(t, audit) => (create_token(conn, record, t, audit, &mut tentative), false),
                Op::RevokeToken(id, at, audit) => (revoke_token(conn, record, &id, at, audit, &mut tentative), false),
            };
            let end = if applied.is_ok() { "RELEASE cmd" } else { "ROLLBACK TO cmd; RELEASE cmd" };
            if let Err(e) = conn.execute_batch(end) {
                tx_error = Some(e);
            } else if applied.is_ok() {
                if bumps_revision {
                    *revision = next;
                }
                *chain = tentative;
            }
            results.push((cmd.reply, applied));
        }

        let compact_to = revision.checked_sub(self.event_history).filter(|&to| to >= *compacted + slack);
        let finish = match tx_error {
            Some(e) => Err(e),
            None => (|| {
                if *revision != start_revision {
                    meta_set(conn, META_REVISION, *revision)?;
                }
                if let Some(to) = compact_to {
                    let removed =
                        conn.prepare_cached("DELETE FROM events WHERE revision <= ?1")?.execute([as_i64(to)])?;
                    meta_set(conn, META_COMPACTED, to)?;
                    tracing::debug!(up_to = to, removed, "compacted the sqlite event history");
                }
                conn.execute_batch("COMMIT")
            })(),
        };
        match finish {
            Ok(()) => {
                if let Some(to) = compact_to {
                    *compacted = to;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite write transaction failed; rolling back the batch");
                let _ = conn.execute_batch("ROLLBACK");
                *revision = start_revision;
                *chain = start_chain;
                let msg = format!("committing a write transaction: {e}");
                for (reply, _) in results {
                    let _ = reply.send(Err(StoreError::Unavailable { message: msg.clone(), source: None }));
                }
                return 0;
            }
        }

        // Committed: publish in revision order, then answer.
        let watched = self.events.receiver_count() > 0;
        for (reply, applied) in results {
            let result = applied.map(|a| {
                if let (true, Some(type_)) = (watched, a.event) {
                    let ev =
                        WatchEvent { type_, revision: revision_of(&a.object).unwrap_or(0), object: a.object.clone() };
                    // An error only means every watcher has gone.
                    let _ = self.events.send(Arc::new(ev));
                }
                Output { object: a.object, entries: a.entries }
            });
            let _ = reply.send(result);
        }
        *revision - start_revision
    }
}

fn json_err(context: &str, e: serde_json::Error) -> StoreError {
    StoreError::unavailable(format!("sqlite: {context}"), e)
}

/// The `metadata` map of an object, created if absent.
fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    let map = obj.as_object_mut().ok_or_else(|| StoreError::InvalidObject("the object is not a JSON object".into()))?;
    let meta = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    meta.as_object_mut().ok_or_else(|| StoreError::InvalidObject("metadata is not an object".into()))
}

fn phase_of(obj: &Value) -> Option<&str> {
    obj.pointer("/status/phase").and_then(Value::as_str)
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(GENERATE_NAME_SUFFIX)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn exists(conn: &Connection, key: &ObjectKey) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3")
        .and_then(|mut s| s.query_row(params![key.kind.as_str(), key.namespace, key.name], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(|e| sql_err("looking up an object", e))
}

fn insert_event(
    conn: &Connection,
    revision: Revision,
    key: &ObjectKey,
    event: EventType,
    body: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (revision, kind, namespace, name, type, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![as_i64(revision), key.kind.as_str(), key.namespace, key.name, event.as_str(), body])
    })
    .map(|_| ())
    .map_err(|e| sql_err("recording an event", e))
}

/// The stored revision and body of an object, or `NotFound`.
fn load(conn: &Connection, key: &ObjectKey) -> Result<(Revision, Value), StoreError> {
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT revision, body FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3")
        .and_then(|mut s| {
            s.query_row(params![key.kind.as_str(), key.namespace, key.name], |r| Ok((r.get(0)?, r.get(1)?))).optional()
        })
        .map_err(|e| sql_err("reading an object", e))?;
    let (revision, body) = row.ok_or_else(|| StoreError::NotFound(key.clone()))?;
    let obj = serde_json::from_str(&body).map_err(|e| json_err("a stored object is not valid JSON", e))?;
    Ok((u64::try_from(revision).unwrap_or(0), obj))
}

fn check(key: &ObjectKey, pre: Precondition, actual: Revision) -> Result<(), StoreError> {
    match pre {
        Precondition::ResourceVersion(expected) if expected != actual => {
            Err(StoreError::Conflict { key: key.clone(), expected, actual })
        }
        _ => Ok(()),
    }
}

fn create(conn: &Connection, mut obj: Value, revision: Revision) -> Result<Applied, StoreError> {
    let mut key = ObjectKey::of(&obj)?;
    let meta = metadata_mut(&mut obj)?;
    if key.name.is_empty() {
        let prefix = meta.get("generateName").and_then(Value::as_str).unwrap_or_default().to_string();
        if prefix.is_empty() {
            return Err(StoreError::InvalidObject("metadata.name or metadata.generateName is required".into()));
        }
        let mut picked = None;
        for _ in 0..GENERATE_NAME_ATTEMPTS {
            key.name = format!("{prefix}{}", random_suffix());
            if !exists(conn, &key)? {
                picked = Some(key.name.clone());
                break;
            }
        }
        if picked.is_none() {
            return Err(StoreError::AlreadyExists(key));
        }
        meta.remove("generateName");
    }
    let uid = uuid::Uuid::new_v4().to_string();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    meta.insert("name".into(), Value::String(key.name.clone()));
    meta.insert("namespace".into(), Value::String(key.namespace.clone()));
    meta.insert("uid".into(), Value::String(uid.clone()));
    meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    meta.insert("generation".into(), Value::from(1u64));
    meta.insert("creationTimestamp".into(), Value::String(now));

    let idem_key = obj.pointer("/spec/idempotencyKey").and_then(Value::as_str).map(str::to_string);
    if let Some(k) = &idem_key {
        let holder: Option<String> = conn
            .prepare_cached("SELECT name FROM objects WHERE kind = ?1 AND namespace = ?2 AND idem_key = ?3")
            .and_then(|mut s| s.query_row(params![key.kind.as_str(), key.namespace, k], |r| r.get(0)).optional())
            .map_err(|e| sql_err("looking up an idempotency key", e))?;
        if let Some(name) = holder {
            return Err(StoreError::IdempotencyKeyInUse {
                existing: ObjectKey::new(key.kind, key.namespace.clone(), name),
                idempotency_key: k.clone(),
            });
        }
    }
    let body = serde_json::to_string(&obj).map_err(|e| json_err("encoding an object", e))?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO objects (kind, namespace, name, uid, revision, phase, body, idem_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (kind, namespace, name) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                key.kind.as_str(),
                key.namespace,
                key.name,
                uid,
                as_i64(revision),
                phase_of(&obj),
                body,
                idem_key
            ])
        })
        .map_err(|e| sql_err("inserting an object", e))?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists(key));
    }
    insert_event(conn, revision, &key, EventType::Added, &body)?;
    Ok(Applied { object: obj, entries: Vec::new(), event: Some(EventType::Added) })
}

fn update(conn: &Connection, mut obj: Value, pre: Precondition, revision: Revision) -> Result<Applied, StoreError> {
    let key = ObjectKey::of(&obj)?;
    if key.name.is_empty() {
        return Err(StoreError::InvalidObject("metadata.name is required".into()));
    }
    let (stored_revision, old) = load(conn, &key)?;
    check(&key, pre, stored_revision)?;
    let old_generation = old.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1);
    let generation = if obj.get("spec") != old.get("spec") { old_generation + 1 } else { old_generation };
    let uid = old.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let created = old.pointer("/metadata/creationTimestamp").cloned();

    let meta = metadata_mut(&mut obj)?;
    meta.insert("namespace".into(), Value::String(key.namespace.clone()));
    meta.insert("uid".into(), Value::String(uid.clone()));
    meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    meta.insert("generation".into(), Value::from(generation));
    match created {
        Some(ts) => meta.insert("creationTimestamp".into(), ts),
        None => meta.remove("creationTimestamp"),
    };

    let body = serde_json::to_string(&obj).map_err(|e| json_err("encoding an object", e))?;
    conn.prepare_cached(
        "UPDATE objects SET uid = ?4, revision = ?5, phase = ?6, body = ?7
         WHERE kind = ?1 AND namespace = ?2 AND name = ?3",
    )
    .and_then(|mut s| {
        s.execute(params![key.kind.as_str(), key.namespace, key.name, uid, as_i64(revision), phase_of(&obj), body])
    })
    .map_err(|e| sql_err("updating an object", e))?;
    insert_event(conn, revision, &key, EventType::Modified, &body)?;
    Ok(Applied { object: obj, entries: Vec::new(), event: Some(EventType::Modified) })
}

fn delete(conn: &Connection, key: &ObjectKey, pre: Precondition, revision: Revision) -> Result<Applied, StoreError> {
    let key = ObjectKey {
        namespace: if key.namespace.is_empty() { DEFAULT_NAMESPACE.to_string() } else { key.namespace.clone() },
        ..key.clone()
    };
    let (stored_revision, mut obj) = load(conn, &key)?;
    check(&key, pre, stored_revision)?;
    conn.prepare_cached("DELETE FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3")
        .and_then(|mut s| s.execute(params![key.kind.as_str(), key.namespace, key.name]))
        .map_err(|e| sql_err("deleting an object", e))?;
    metadata_mut(&mut obj)?.insert("resourceVersion".into(), Value::String(revision.to_string()));
    let body = serde_json::to_string(&obj).map_err(|e| json_err("encoding an object", e))?;
    insert_event(conn, revision, &key, EventType::Deleted, &body)?;
    Ok(Applied { object: obj, entries: Vec::new(), event: Some(EventType::Deleted) })
}

// ---------------------------------------------------------------------------------------------
// Leases. The store's clock decides expiry, so holders on different machines agree.

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn ttl_us(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 4)
}

fn load_lease(conn: &Connection, name: &str) -> Result<Option<(String, i64, i64)>, StoreError> {
    conn.prepare_cached("SELECT holder, epoch, expires_at_us FROM leases WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
        .map_err(|e| sql_err("reading a lease", e))
}

fn save_lease(conn: &Connection, name: &str, holder: &str, epoch: i64, expires_us: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO leases (name, holder, epoch, expires_at_us) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET holder = ?2, epoch = ?3, expires_at_us = ?4",
    )
    .and_then(|mut s| s.execute(params![name, holder, epoch, expires_us]))
    .map(|_| ())
    .map_err(|e| sql_err("writing a lease", e))
}

fn lease_json(name: &str, holder: &str, epoch: i64, expires_us: i64) -> Result<Value, StoreError> {
    let lease = Lease {
        name: name.to_string(),
        holder: holder.to_string(),
        epoch: u64::try_from(epoch).unwrap_or(0),
        expires_at: chrono::DateTime::from_timestamp_micros(expires_us).unwrap_or_default(),
    };
    serde_json::to_value(lease).map_err(|e| json_err("encoding a lease", e))
}

fn lease_op(conn: &Connection, op: LeaseOp) -> Result<Applied, StoreError> {
    let now = now_us();
    let object = match op {
        LeaseOp::Acquire { name, holder, ttl } => {
            let current = load_lease(conn, &name)?;
            let free = match &current {
                None => true,
                Some((h, _, expires)) => *expires <= now || *h == holder,
            };
            if free {
                let epoch = current.map_or(0, |(_, e, _)| e) + 1;
                let expires = now.saturating_add(ttl_us(ttl));
                save_lease(conn, &name, &holder, epoch, expires)?;
                lease_json(&name, &holder, epoch, expires)?
            } else {
                Value::Null
            }
        }
        LeaseOp::Renew { lease, ttl } => match load_lease(conn, &lease.name)? {
            Some((h, e, _)) if h == lease.holder && u64::try_from(e).ok() == Some(lease.epoch) => {
                let expires = now.saturating_add(ttl_us(ttl));
                save_lease(conn, &lease.name, &h, e, expires)?;
                lease_json(&lease.name, &h, e, expires)?
            }
            _ => Value::Null,
        },
        LeaseOp::Release { lease } => {
            conn.prepare_cached("UPDATE leases SET expires_at_us = 0 WHERE name = ?1 AND holder = ?2 AND epoch = ?3")
                .and_then(|mut s| s.execute(params![lease.name, lease.holder, as_i64(lease.epoch)]))
                .map_err(|e| sql_err("releasing a lease", e))?;
            Value::Null
        }
    };
    Ok(Applied { object, entries: Vec::new(), event: None })
}

/// `Ok` when there is no fence, or `fence` still holds its lease unexpired.
fn check_fence(conn: &Connection, fence: Option<&Lease>) -> Result<(), StoreError> {
    let Some(f) = fence else { return Ok(()) };
    let fenced =
        |reason: String| StoreError::Fenced { lease: f.name.clone(), holder: f.holder.clone(), epoch: f.epoch, reason };
    match load_lease(conn, &f.name)? {
        None => Err(fenced("nobody holds it".into())),
        Some((h, e, _)) if h != f.holder || u64::try_from(e).ok() != Some(f.epoch) => {
            Err(fenced(format!("{h:?} holds it at epoch {e}")))
        }
        Some((_, _, expires)) if expires <= now_us() => Err(fenced("it lapsed without renewal".into())),
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger: entries are sealed and inserted inside the same savepoint as the change they
// record, so a change and its entry commit or roll back together.

fn load_chain(conn: &Connection) -> Result<Chain, StoreError> {
    let row: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| sql_err("reading the ledger head", e))?;
    Ok(match row {
        Some((seq, hash)) => Chain { seq: u64::try_from(seq).unwrap_or(0), hash },
        None => Chain { seq: 0, hash: agentplane_ledger::GENESIS_HASH.to_string() },
    })
}

/// Seal `draft` as the next entry of `chain` and insert it.
fn seal_and_insert(conn: &Connection, draft: EntryDraft, chain: &mut Chain) -> Result<Entry, StoreError> {
    let entry = draft.seal(chain.seq + 1, chrono::Utc::now(), &chain.hash);
    let body = serde_json::to_string(&entry).map_err(|e| json_err("encoding a ledger entry", e))?;
    let target = entry.target.as_ref();
    conn.prepare_cached(
        "INSERT INTO ledger (seq, ts, actor_kind, actor_id, action, namespace, target_kind, target_namespace,
                             target_name, run, outcome, hash, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut s| {
        s.execute(params![
            as_i64(entry.seq),
            agentplane_ledger::format_ts(&entry.ts),
            actor_kind(&entry),
            entry.actor.id,
            entry.action,
            entry.namespace,
            target.map(|t| t.kind.as_str()),
            target.map(|t| t.namespace.as_str()),
            target.map(|t| t.name.as_str()),
            entry.run,
            entry.outcome,
            entry.hash,
            body
        ])
    })
    .map_err(|e| sql_err("appending a ledger entry", e))?;
    chain.seq = entry.seq;
    chain.hash = entry.hash.clone();
    Ok(entry)
}

fn actor_kind(entry: &Entry) -> &'static str {
    match entry.actor.kind {
        agentplane_ledger::ActorKind::User => "user",
        agentplane_ledger::ActorKind::Agent => "agent",
        agentplane_ledger::ActorKind::System => "system",
    }
}

/// Record the change `applied` made: the target is the stored object.
fn record_change(
    conn: &Connection,
    record: bool,
    applied: Applied,
    mut audit: EntryDraft,
    chain: &mut Chain,
) -> Result<Applied, StoreError> {
    if !record {
        return Ok(applied);
    }
    let key = ObjectKey::of(&applied.object)?;
    let uid = applied.object.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string);
    if audit.namespace.is_none() {
        audit.namespace = Some(key.namespace.clone());
    }
    if audit.run.is_none() && key.kind == agentplane_api::Kind::AgentRun {
        audit.run = Some(key.name.clone());
    }
    audit.target = Some(Target { kind: key.kind.as_str().to_string(), namespace: key.namespace, name: key.name, uid });
    seal_and_insert(conn, audit, chain)?;
    Ok(applied)
}

fn append(conn: &Connection, drafts: Vec<EntryDraft>, chain: &mut Chain) -> Result<Applied, StoreError> {
    let mut sealed = Vec::with_capacity(drafts.len());
    for d in drafts {
        sealed.push(seal_and_insert(conn, d, chain)?);
    }
    Ok(Applied { object: Value::Null, entries: sealed, event: None })
}

fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> Result<Applied, StoreError> {
    let body = serde_json::to_string(cp).map_err(|e| json_err("encoding a checkpoint", e))?;
    conn.prepare_cached("INSERT INTO ledger_checkpoints (seq, body) VALUES (?1, ?2) ON CONFLICT (seq) DO NOTHING")
        .and_then(|mut s| s.execute(params![as_i64(cp.seq), body]))
        .map_err(|e| sql_err("storing a ledger checkpoint", e))?;
    Ok(Applied { object: Value::Null, entries: Vec::new(), event: None })
}

// ---------------------------------------------------------------------------------------------
// API tokens: the record and its ledger entry commit together.

fn token_json(t: &ApiToken) -> Result<String, StoreError> {
    serde_json::to_string(t).map_err(|e| json_err("encoding a token", e))
}

fn create_token(
    conn: &Connection,
    record: bool,
    token: ApiToken,
    audit: EntryDraft,
    chain: &mut Chain,
) -> Result<Applied, StoreError> {
    let active: Option<String> = conn
        .prepare_cached("SELECT id FROM api_tokens WHERE name = ?1 AND revoked = 0")
        .and_then(|mut s| s.query_row([&token.name], |r| r.get(0)).optional())
        .map_err(|e| sql_err("reading tokens", e))?;
    if active.is_some() {
        return Err(StoreError::TokenExists(token.name));
    }
    let body = token_json(&token)?;
    conn.prepare_cached(
        "INSERT INTO api_tokens (id, name, hash, revoked, created_us, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            token.id,
            token.name,
            token.hash,
            i64::from(token.revoked_at.is_some()),
            token.created_at.timestamp_micros(),
            body
        ])
    })
    .map_err(|e| sql_err("inserting a token", e))?;
    if record {
        seal_and_insert(conn, audit, chain)?;
    }
    let object = serde_json::to_value(&token).map_err(|e| json_err("encoding a token", e))?;
    Ok(Applied { object, entries: Vec::new(), event: None })
}

fn revoke_token(
    conn: &Connection,
    record: bool,
    id_or_name: &str,
    at: chrono::DateTime<chrono::Utc>,
    audit: EntryDraft,
    chain: &mut Chain,
) -> Result<Applied, StoreError> {
    let found: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT id, body FROM api_tokens WHERE revoked = 0 AND (id = ?1 OR name = ?1)
             ORDER BY (id = ?1) DESC LIMIT 1",
        )
        .and_then(|mut s| s.query_row([id_or_name], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(|e| sql_err("reading tokens", e))?;
    let Some((id, body)) = found else { return Err(StoreError::TokenNotFound(id_or_name.to_string())) };
    let mut token: ApiToken =
        serde_json::from_str(&body).map_err(|e| StoreError::unavailable("sqlite: a stored token is not valid", e))?;
    token.revoked_at = Some(at);
    let body = token_json(&token)?;
    conn.prepare_cached("UPDATE api_tokens SET revoked = 1, body = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, body]))
        .map_err(|e| sql_err("revoking a token", e))?;
    if record {
        let mut audit = audit;
        if let Some(t) = audit.target.as_mut() {
            t.name.clone_from(&token.name);
        }
        if let Some(p) = audit.params.as_object_mut() {
            p.insert("id".into(), Value::String(token.id.clone()));
        }
        seal_and_insert(conn, audit, chain)?;
    }
    let object = serde_json::to_value(&token).map_err(|e| json_err("encoding a token", e))?;
    Ok(Applied { object, entries: Vec::new(), event: None })
}
