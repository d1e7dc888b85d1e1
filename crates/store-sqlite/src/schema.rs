//! Connections, PRAGMAs and the numbered schema migrations.

use std::path::Path;
use std::time::Duration;

use agentplane_store::{Revision, StoreError};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::Synchronous;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL file is truncated to this size when it rewinds.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The migrations, in order. Migration `i` (0-based) brings the schema to version `i + 1`
/// (`PRAGMA user_version`). Never edit a released migration; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: objects, the event history and the counters.
    "CREATE TABLE objects (
        kind      TEXT    NOT NULL,
        namespace TEXT    NOT NULL,
        name      TEXT    NOT NULL,
        uid       TEXT    NOT NULL,
        revision  INTEGER NOT NULL,
        phase     TEXT,
        body      TEXT    NOT NULL,
        PRIMARY KEY (kind, namespace, name)
    );
    CREATE INDEX objects_kind_phase ON objects (kind, phase, namespace, name);
    CREATE TABLE events (
        revision  INTEGER PRIMARY KEY,
        kind      TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name      TEXT NOT NULL,
        type      TEXT NOT NULL,
        body      TEXT NOT NULL
    );
    CREATE TABLE meta (
        key   TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);",
    // 2: the ledger (hash chain) and its signed checkpoints. `body` is the entry as sealed (the
    // authority for verification); the other columns are indexes for queries.
    "CREATE TABLE ledger (
        seq              INTEGER PRIMARY KEY,
        ts               TEXT    NOT NULL,
        actor_kind       TEXT    NOT NULL,
        actor_id         TEXT    NOT NULL,
        action           TEXT    NOT NULL,
        namespace        TEXT,
        target_kind      TEXT,
        target_namespace TEXT,
        target_name      TEXT,
        run              TEXT,
        outcome          TEXT    NOT NULL,
        hash             TEXT    NOT NULL,
        body             TEXT    NOT NULL
    );
    -- Indexes cost every append; only the lookups that must stay fast at millions of entries
    -- get one: by time (ranges, daily summaries; appended in order, so cheap) and by run (only
    -- entries that belong to a run). Filters by target, actor, action, outcome or namespace are
    -- applied while scanning (within a time range if one is given). A target index cost 25 % of
    -- submission throughput (docs/benchmarks.md), so there is none.
    CREATE INDEX ledger_ts ON ledger (ts);
    CREATE INDEX ledger_run ON ledger (run, seq) WHERE run IS NOT NULL;

    CREATE TABLE ledger_checkpoints (
        seq  INTEGER PRIMARY KEY,
        body TEXT NOT NULL
    );",
    // 3: idempotency keys (`spec.idempotencyKey`), unique per kind and namespace.
    "ALTER TABLE objects ADD COLUMN idem_key TEXT;
    CREATE UNIQUE INDEX objects_idem_key ON objects (kind, namespace, idem_key) WHERE idem_key IS NOT NULL;",
    // 4: leader leases (`Store::acquire_lease`); times in microseconds since the epoch.
    "CREATE TABLE leases (
        name          TEXT    PRIMARY KEY,
        holder        TEXT    NOT NULL,
        epoch         INTEGER NOT NULL,
        expires_at_us INTEGER NOT NULL
    );",
    // 5: API tokens (`Store::create_token`): only the SHA-256 of a token is stored. `body` is the
    // record as JSON; names are unique among active (not revoked) tokens.
    "CREATE TABLE api_tokens (
        id         TEXT    PRIMARY KEY,
        name       TEXT    NOT NULL,
        hash       TEXT    NOT NULL UNIQUE,
        revoked    INTEGER NOT NULL DEFAULT 0,
        created_us INTEGER NOT NULL,
        body       TEXT    NOT NULL
    );
    CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked = 0;",
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The `meta` row holding the latest committed revision.
pub(crate) const META_REVISION: &str = "revision";
/// The `meta` row holding the highest revision whose event was compacted away (0 = none); the
/// oldest retained event is the one after it.
pub(crate) const META_COMPACTED: &str = "compacted";

pub(crate) fn sql_err(context: &str, e: rusqlite::Error) -> StoreError {
    StoreError::unavailable(format!("sqlite: {context}"), e)
}

/// Open the single read-write connection and bring its schema up to date.
pub(crate) fn open_writer(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_err(&format!("opening {} for writing", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| sql_err("setting busy_timeout", e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| sql_err("setting journal_mode=WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable {
            message: format!(
                "sqlite: {} cannot use WAL journal mode (got {mode:?}); use a local filesystem",
                path.display()
            ),
            source: None,
        });
    }
    let sync = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync).map_err(|e| sql_err("setting synchronous", e))?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| sql_err("setting foreign_keys", e))?;
    // Checkpoints run on their own thread (see `checkpoint`), not inside a commit of the writer.
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| sql_err("disabling wal_autocheckpoint", e))?;
    // After a burst, give the disk back when the WAL rewinds.
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(|e| sql_err("setting journal_size_limit", e))?;
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(|e| sql_err("setting temp_store", e))?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Open one read-only connection of the pool.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_err(&format!("opening {} for reading", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| sql_err("setting busy_timeout", e))?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| sql_err("setting foreign_keys", e))?;
    Ok(conn)
}

/// Apply every pending migration in one transaction. A database written by a newer version of
/// agentplane is refused rather than guessed at.
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| sql_err("starting the migration", e))?;
    let result = (|| {
        let current: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| sql_err("reading the schema version", e))?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::Unavailable {
                message: format!(
                    "sqlite: {} has schema version {current}, but this agentplane knows versions up to {SCHEMA_VERSION}; \
                     run a newer agentplane or restore a backup taken before the upgrade",
                    path.display()
                ),
                source: None,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(current).unwrap_or(0)) {
            let version = i + 1;
            conn.execute_batch(sql).map_err(|e| sql_err(&format!("applying migration {version}"), e))?;
            conn.pragma_update(None, "user_version", version as i64)
                .map_err(|e| sql_err("recording the schema version", e))?;
            tracing::info!(version, path = %path.display(), "applied sqlite store migration");
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| sql_err("committing the migration", e)),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Read one counter of the `meta` table.
pub(crate) fn meta_get(conn: &Connection, key: &str) -> Result<Revision, StoreError> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |row| row.get(0)).optional())
        .map_err(|e| sql_err("reading meta", e))?;
    Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
}

/// Write one counter of the `meta` table.
pub(crate) fn meta_set(conn: &Connection, key: &str, value: Revision) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?.execute(rusqlite::params![key, as_i64(value)])?;
    Ok(())
}

/// Revisions are stored as SQLite integers; they never come near `i64::MAX`.
pub(crate) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
