//! The read side: a small pool of read-only connections, each use in `spawn_blocking`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agentplane_store::{
    Checkpoint, ContinueToken, Entry, EventType, LedgerPage, LedgerQuery, ListQuery, ObjectKey, ObjectList, Revision,
    StoreError, WatchEvent,
};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::schema::{META_COMPACTED, META_REVISION, as_i64, meta_get, open_reader, sql_err};

/// Rows fetched per query while a filtered list scans.
const FILTERED_CHUNK: usize = 500;
/// Most rows one `list` call examines; past it the page is returned short with a continue token,
/// so a very selective filter cannot hold a connection for long.
const SCAN_BUDGET: usize = 20_000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-only connections, opened lazily up to the semaphore's size.
#[derive(Debug)]
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    closed: AtomicBool,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, size: usize) -> Result<Arc<ReadPool>, StoreError> {
        let size = size.max(1);
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(open_reader(&path)?);
        }
        Ok(Arc::new(ReadPool {
            path,
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(size)),
            closed: AtomicBool::new(false),
        }))
    }

    /// Run `f` on a pooled connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if pool.closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            let pooled = lock(&pool.idle).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => open_reader(&pool.path)?,
            };
            let result = f(&mut conn);
            if !pool.closed.load(Ordering::Acquire) {
                lock(&pool.idle).push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::unavailable("sqlite: a read task failed", e))?
    }

    /// Refuse new reads and drop the idle connections.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        lock(&self.idle).clear();
    }
}

fn parse_body(body: &str) -> Result<Value, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::unavailable("sqlite: a stored object is not valid JSON", e))
}

pub(crate) fn get(conn: &mut Connection, key: &ObjectKey) -> Result<Value, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3")
        .and_then(|mut s| s.query_row(params![key.kind.as_str(), key.namespace, key.name], |r| r.get(0)).optional())
        .map_err(|e| sql_err("reading an object", e))?;
    parse_body(&body.ok_or_else(|| StoreError::NotFound(key.clone()))?)
}

pub(crate) fn get_by_idempotency_key(
    conn: &mut Connection,
    kind: agentplane_api::Kind,
    namespace: &str,
    key: &str,
) -> Result<Option<Value>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM objects WHERE kind = ?1 AND namespace = ?2 AND idem_key = ?3")
        .and_then(|mut s| s.query_row(params![kind.as_str(), namespace, key], |r| r.get(0)).optional())
        .map_err(|e| sql_err("reading an object by idempotency key", e))?;
    body.map(|b| parse_body(&b)).transpose()
}

pub(crate) fn revision(conn: &mut Connection) -> Result<Revision, StoreError> {
    meta_get(conn, META_REVISION)
}

pub(crate) fn ping(conn: &mut Connection) -> Result<(), StoreError> {
    conn.query_row("SELECT 1", [], |_| Ok(())).map_err(|e| sql_err("ping", e))
}

/// One page of a list, read in one snapshot (the revision comes from the same snapshot).
pub(crate) fn list(conn: &mut Connection, q: &ListQuery) -> Result<ObjectList, StoreError> {
    let start = q.continue_token.as_deref().map(ContinueToken::decode).transpose()?;
    let limit = q.effective_limit();
    let filtered = !q.labels.is_empty() || !q.fields.is_empty();
    let chunk = if filtered { FILTERED_CHUNK.max(limit + 1) } else { limit + 1 };

    // Scan in key order from the continue position. With the namespace pinned, ?2 is that
    // namespace and the position is a name within it, so the index range is `namespace = ? AND
    // name > ?`; across namespaces it is the row value `(namespace, name) > (?, ?)`.
    let mut sql = String::from(if q.namespace.is_some() {
        "SELECT namespace, name, body FROM objects WHERE kind = ?1 AND namespace = ?2 AND name > ?3"
    } else {
        "SELECT namespace, name, body FROM objects WHERE kind = ?1 AND (namespace, name) > (?2, ?3)"
    });
    let phase = q.fields.phase();
    if phase.is_some() {
        sql.push_str(" AND phase = ?5");
    }
    sql.push_str(" ORDER BY namespace, name LIMIT ?4");

    let tx = conn.transaction().map_err(|e| sql_err("starting a read", e))?;
    let revision = meta_get(&tx, META_REVISION)?;
    let mut stmt = tx.prepare_cached(&sql).map_err(|e| sql_err("preparing a list", e))?;
    let (mut after_ns, mut after_name) = start.map(|t| (t.namespace, t.name)).unwrap_or_default();
    if let Some(ns) = &q.namespace {
        match after_ns.as_str().cmp(ns.as_str()) {
            // The token points before this namespace: start at its beginning.
            std::cmp::Ordering::Less => after_name.clear(),
            std::cmp::Ordering::Equal => {}
            // The token points past this namespace: nothing is left.
            std::cmp::Ordering::Greater => return Ok(ObjectList { items: Vec::new(), revision, continue_token: None }),
        }
        after_ns.clone_from(ns);
    }
    let mut items = Vec::new();
    let mut scanned = 0usize;
    let mut more = false;
    'scan: loop {
        let mut args: Vec<rusqlite::types::Value> = vec![
            q.kind.as_str().to_string().into(),
            after_ns.clone().into(),
            after_name.clone().into(),
            as_i64(chunk as u64).into(),
        ];
        if let Some(phase) = phase {
            args.push(phase.to_string().into());
        }
        let mut rows = stmt.query(params_from_iter(args)).map_err(|e| sql_err("listing objects", e))?;
        let mut fetched = 0usize;
        while let Some(row) = rows.next().map_err(|e| sql_err("listing objects", e))? {
            if items.len() >= limit || scanned >= SCAN_BUDGET {
                more = true;
                break 'scan;
            }
            fetched += 1;
            scanned += 1;
            let ns: String = row.get(0).map_err(|e| sql_err("listing objects", e))?;
            let name: String = row.get(1).map_err(|e| sql_err("listing objects", e))?;
            let body: String = row.get(2).map_err(|e| sql_err("listing objects", e))?;
            after_ns = ns;
            after_name = name;
            if filtered {
                let obj = parse_body(&body)?;
                if q.labels.matches_object(&obj) && q.fields.matches_object(&obj) {
                    items.push(obj);
                }
            } else {
                items.push(parse_body(&body)?);
            }
        }
        if fetched < chunk {
            break;
        }
    }
    let continue_token = more.then(|| ContinueToken::after(&after_ns, &after_name).encode());
    Ok(ObjectList { items, revision, continue_token })
}

/// Up to `limit` events after `after`, in revision order, or `Expired` if some of them were
/// compacted away.
pub(crate) fn events_after(
    conn: &mut Connection,
    after: Revision,
    limit: usize,
) -> Result<Vec<WatchEvent>, StoreError> {
    let tx = conn.transaction().map_err(|e| sql_err("starting a read", e))?;
    let compacted = meta_get(&tx, META_COMPACTED)?;
    if after < compacted {
        return Err(StoreError::Expired { requested: after, oldest: compacted + 1 });
    }
    let mut stmt = tx
        .prepare_cached("SELECT revision, type, body FROM events WHERE revision > ?1 ORDER BY revision LIMIT ?2")
        .map_err(|e| sql_err("reading events", e))?;
    let rows = stmt
        .query_map(params![as_i64(after), as_i64(limit as u64)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })
        .map_err(|e| sql_err("reading events", e))?;
    let mut out = Vec::new();
    for row in rows {
        let (revision, type_, body) = row.map_err(|e| sql_err("reading events", e))?;
        let type_ = match type_.as_str() {
            "ADDED" => EventType::Added,
            "MODIFIED" => EventType::Modified,
            "DELETED" => EventType::Deleted,
            other => {
                return Err(StoreError::Unavailable {
                    message: format!("sqlite: event {revision} has unknown type {other:?}"),
                    source: None,
                });
            }
        };
        out.push(WatchEvent { type_, revision: u64::try_from(revision).unwrap_or(0), object: parse_body(&body)? });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The ledger

fn parse_entry(body: &str) -> Result<Entry, StoreError> {
    serde_json::from_str(body)
        .map_err(|e| StoreError::unavailable("sqlite: a stored ledger entry is not valid JSON", e))
}

pub(crate) fn ledger_head(conn: &mut Connection) -> Result<(u64, String), StoreError> {
    let row: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| sql_err("reading the ledger head", e))?;
    Ok(match row {
        Some((seq, hash)) => (u64::try_from(seq).unwrap_or(0), hash),
        None => (0, agentplane_ledger::GENESIS_HASH.to_string()),
    })
}

pub(crate) fn ledger_scan(conn: &mut Connection, after_seq: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT body FROM ledger WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .map_err(|e| sql_err("scanning the ledger", e))?;
    let rows = stmt
        .query_map(params![as_i64(after_seq), as_i64(limit.clamp(1, 100_000) as u64)], |r| r.get::<_, String>(0))
        .map_err(|e| sql_err("scanning the ledger", e))?;
    let mut out = Vec::with_capacity(limit.min(10_000));
    for body in rows {
        out.push(parse_entry(&body.map_err(|e| sql_err("scanning the ledger", e))?)?);
    }
    Ok(out)
}

pub(crate) fn ledger_query(conn: &mut Connection, q: &LedgerQuery) -> Result<LedgerPage, StoreError> {
    let mut sql = String::from("SELECT seq, body FROM ledger WHERE seq > ?");
    let mut args: Vec<rusqlite::types::Value> = vec![as_i64(q.after_seq.unwrap_or(0)).into()];
    let mut add = |cond: &str, v: String| {
        sql.push_str(" AND ");
        sql.push_str(cond);
        args.push(v.into());
    };
    if let Some(t) = &q.since {
        add("ts >= ?", crate::ledger_ts(t));
    }
    if let Some(t) = &q.until {
        add("ts < ?", crate::ledger_ts(t));
    }
    if let Some(v) = &q.namespace {
        add("namespace = ?", v.clone());
    }
    if let Some(v) = &q.run {
        add("run = ?", v.clone());
    }
    if let Some(v) = &q.actor {
        match v.split_once(':') {
            Some((kind, id)) if matches!(kind, "user" | "agent" | "system") => {
                add("actor_kind = ?", kind.to_string());
                add("actor_id = ?", id.to_string());
            }
            _ => add("actor_id = ?", v.clone()),
        }
    }
    if let Some(v) = &q.action {
        add("action = ?", v.clone());
    }
    if let Some(v) = &q.outcome {
        add("outcome = ?", v.clone());
    }
    if let Some((kind, ns, name)) = &q.target {
        add("target_kind = ?", kind.clone());
        add("target_namespace = ?", ns.clone());
        add("target_name = ?", name.clone());
    }
    let limit = q.effective_limit();
    sql.push_str(" ORDER BY seq LIMIT ?");
    args.push(as_i64(limit as u64 + 1).into());
    let mut stmt = conn.prepare_cached(&sql).map_err(|e| sql_err("querying the ledger", e))?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map_err(|e| sql_err("querying the ledger", e))?;
    let mut entries = Vec::new();
    let mut more = false;
    for row in rows {
        let (_, body) = row.map_err(|e| sql_err("querying the ledger", e))?;
        if entries.len() == limit {
            more = true;
            break;
        }
        entries.push(parse_entry(&body)?);
    }
    let next_after_seq = if more { entries.last().map(|e: &Entry| e.seq) } else { None };
    Ok(LedgerPage { entries, next_after_seq })
}

pub(crate) fn checkpoints(conn: &mut Connection) -> Result<Vec<Checkpoint>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT body FROM ledger_checkpoints ORDER BY seq")
        .map_err(|e| sql_err("reading checkpoints", e))?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(|e| sql_err("reading checkpoints", e))?;
    let mut out = Vec::new();
    for body in rows {
        let body = body.map_err(|e| sql_err("reading checkpoints", e))?;
        out.push(
            serde_json::from_str(&body)
                .map_err(|e| StoreError::unavailable("sqlite: a stored checkpoint is not valid JSON", e))?,
        );
    }
    Ok(out)
}

fn tokens_where(
    conn: &mut Connection,
    sql: &str,
    arg: Option<&str>,
) -> Result<Vec<agentplane_store::ApiToken>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| sql_err("reading tokens", e))?;
    let rows = stmt
        .query_map(params_from_iter(arg.iter()), |r| r.get::<_, String>(0))
        .map_err(|e| sql_err("reading tokens", e))?;
    let mut out = Vec::new();
    for body in rows {
        let body = body.map_err(|e| sql_err("reading tokens", e))?;
        out.push(
            serde_json::from_str(&body)
                .map_err(|e| StoreError::unavailable("sqlite: a stored token is not valid JSON", e))?,
        );
    }
    Ok(out)
}

pub(crate) fn list_tokens(conn: &mut Connection) -> Result<Vec<agentplane_store::ApiToken>, StoreError> {
    tokens_where(conn, "SELECT body FROM api_tokens ORDER BY created_us, id", None)
}

pub(crate) fn token_by_hash(
    conn: &mut Connection,
    hash: &str,
) -> Result<Option<agentplane_store::ApiToken>, StoreError> {
    Ok(tokens_where(conn, "SELECT body FROM api_tokens WHERE hash = ?1", Some(hash))?.into_iter().next())
}
