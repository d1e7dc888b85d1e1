//! The embedded SQLite backend of the agentplane [`Store`].
//!
//! This crate owns the SQLite schema and its numbered migrations, the single writer thread that
//! group-commits every write, the pool of read-only connections, the retained event history and
//! the watch fan-out. It implements exactly the contract documented in `agentplane_store` and
//! nothing more: it does not validate resource specs, authorise callers or know about HTTP.
//!
//! It must never block the async runtime: writes are sent over a bounded channel to the writer
//! thread (a full queue makes callers wait: back-pressure), reads run in `spawn_blocking` on a
//! pooled connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agentplane_store::StoreError> {
//! use agentplane_store::Store;
//! use agentplane_store_sqlite::{SqliteOptions, SqliteStore};
//!
//! let store = SqliteStore::open(std::path::Path::new("data/store.db"), SqliteOptions::default())?;
//! let rev = store.revision().await?;
//! store.close().await?;
//! # let _ = rev;
//! # Ok(())
//! # }
//! ```

mod checkpoint;

/// How ledger timestamps are stored in the `ts` column: fixed-width RFC 3339 with microseconds,
/// so that string order is time order.
pub(crate) fn ledger_ts(ts: &chrono::DateTime<chrono::Utc>) -> String {
    agentplane_ledger::format_ts(ts)
}
mod read;
mod schema;
mod watch;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use agentplane_store::{
    ApiToken, Checkpoint, Entry, EntryDraft, Lease, LedgerPage, LedgerQuery, ListQuery, ObjectKey, ObjectList,
    Precondition, Revision, Store, StoreError, WatchEvent, WatchQuery, WatchStream,
};
use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::read::{ReadPool, lock};
use crate::writer::{Command, LeaseOp, Op, Writer};

/// The schema version (`PRAGMA user_version`) this code migrates databases to.
pub use crate::schema::SCHEMA_VERSION;

/// Events buffered per watcher before it is considered lagging (and re-reads from the table).
const BROADCAST_CAPACITY: usize = 4_096;

/// The `synchronous` PRAGMA. With WAL, `Normal` survives a crash of the process (kill -9) but may
/// lose the last commits on power loss; `Full` also survives power loss, at the cost of an fsync
/// per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    #[default]
    Normal,
    Full,
}

/// Tuning of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// Read-only connections in the pool (at least 1).
    pub read_connections: usize,
    /// Events retained for `watch`; a watch from an older revision fails with `Expired`.
    pub event_history: u64,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Writes queued for the writer before callers wait.
    pub queue_capacity: usize,
    /// Record every write in the ledger (the contract). `false` exists only so that benchmarks
    /// can measure what the ledger costs; never turn it off in a deployment.
    pub record_ledger: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Normal,
            read_connections: 4,
            event_history: 100_000,
            max_batch: 512,
            queue_capacity: 8_192,
            record_ledger: true,
        }
    }
}

/// The SQLite implementation of [`Store`]. Open it with [`SqliteStore::open`]; call
/// [`Store::close`] to flush and stop (dropping it without closing also stops the writer once its
/// queue is empty, and loses nothing that was committed).
pub struct SqliteStore {
    path: PathBuf,
    closed: AtomicBool,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    events: Mutex<Option<broadcast::Sender<Arc<WatchEvent>>>>,
    writer: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    reads: Arc<ReadPool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating the file and its parent directory if needed) and migrate the database at
    /// `path`, and start its writer thread. This does blocking I/O; from async code call it in
    /// `spawn_blocking` (or once at startup).
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Arc<SqliteStore>, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::unavailable(format!("sqlite: creating {}", parent.display()), e))?;
        }
        let conn = schema::open_writer(path, options.synchronous)?;
        let reads = ReadPool::new(path.to_path_buf(), options.read_connections)?;
        let (command_tx, command_rx) = mpsc::channel(options.queue_capacity.max(1));
        let (event_tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let writer = Writer {
            path: path.to_path_buf(),
            conn,
            commands: command_rx,
            events: event_tx.clone(),
            max_batch: options.max_batch,
            event_history: options.event_history,
            record_ledger: options.record_ledger,
        };
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let result = writer.run();
                if let Err(e) = &result {
                    tracing::error!(error = %e, "sqlite writer stopped with an error");
                }
                result
            })
            .map_err(|e| StoreError::unavailable("sqlite: starting the writer thread", e))?;
        tracing::info!(path = %path.display(), "opened sqlite store");
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            closed: AtomicBool::new(false),
            commands: Mutex::new(Some(command_tx)),
            events: Mutex::new(Some(event_tx)),
            writer: Mutex::new(Some(handle)),
            reads,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { Ok(()) }
    }

    /// The error for a writer that went away: `Closed` after `close`, otherwise the writer died.
    fn writer_gone(&self) -> StoreError {
        if self.closed.load(Ordering::Acquire) {
            StoreError::Closed
        } else {
            StoreError::Unavailable { message: "sqlite: the writer thread has stopped".into(), source: None }
        }
    }

    async fn write(&self, op: Op) -> Result<Value, StoreError> {
        self.write_output(op).await.map(|o| o.object)
    }

    async fn write_output(&self, op: Op) -> Result<writer::Output, StoreError> {
        self.check_open()?;
        let sender = lock(&self.commands).clone().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        sender.send(Command { op, reply }).await.map_err(|_| self.writer_gone())?;
        drop(sender);
        answer.await.map_err(|_| self.writer_gone())?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, obj: Value, audit: EntryDraft) -> Result<Value, StoreError> {
        self.write(Op::Create(obj, audit)).await
    }

    async fn get(&self, key: &ObjectKey) -> Result<Value, StoreError> {
        self.check_open()?;
        let key = key.clone();
        self.reads.run(move |conn| read::get(conn, &key)).await
    }

    async fn get_by_idempotency_key(
        &self,
        kind: agentplane_api::Kind,
        namespace: &str,
        idempotency_key: &str,
    ) -> Result<Option<Value>, StoreError> {
        self.check_open()?;
        let (ns, k) = (namespace.to_string(), idempotency_key.to_string());
        self.reads.run(move |conn| read::get_by_idempotency_key(conn, kind, &ns, &k)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        self.check_open()?;
        let query = query.clone();
        self.reads.run(move |conn| read::list(conn, &query)).await
    }

    async fn update(&self, obj: Value, precondition: Precondition, audit: EntryDraft) -> Result<Value, StoreError> {
        self.write(Op::Update(obj, precondition, audit, None)).await
    }

    async fn update_fenced(
        &self,
        obj: Value,
        precondition: Precondition,
        audit: EntryDraft,
        fence: &Lease,
    ) -> Result<Value, StoreError> {
        self.write(Op::Update(obj, precondition, audit, Some(fence.clone()))).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let op = LeaseOp::Acquire { name: name.to_string(), holder: holder.to_string(), ttl };
        lease_reply(self.write_output(Op::Lease(op)).await?.object)
    }

    async fn renew_lease(&self, lease: &Lease, ttl: std::time::Duration) -> Result<Option<Lease>, StoreError> {
        lease_reply(self.write_output(Op::Lease(LeaseOp::Renew { lease: lease.clone(), ttl })).await?.object)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.write_output(Op::Lease(LeaseOp::Release { lease: lease.clone() })).await.map(|_| ())
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        precondition: Precondition,
        audit: EntryDraft,
    ) -> Result<Value, StoreError> {
        self.write(Op::Delete(key.clone(), precondition, audit)).await
    }

    async fn append(&self, drafts: Vec<EntryDraft>) -> Result<Vec<Entry>, StoreError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.write_output(Op::Append(drafts)).await?.entries)
    }

    async fn ledger_head(&self) -> Result<(u64, String), StoreError> {
        self.check_open()?;
        self.reads.run(read::ledger_head).await
    }

    async fn ledger_query(&self, query: &LedgerQuery) -> Result<LedgerPage, StoreError> {
        self.check_open()?;
        let query = query.clone();
        self.reads.run(move |conn| read::ledger_query(conn, &query)).await
    }

    async fn ledger_scan(&self, after_seq: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.check_open()?;
        self.reads.run(move |conn| read::ledger_scan(conn, after_seq, limit)).await
    }

    async fn create_token(&self, token: ApiToken, audit: EntryDraft) -> Result<ApiToken, StoreError> {
        token_reply(self.write(Op::CreateToken(token, audit)).await?)
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        self.check_open()?;
        self.reads.run(read::list_tokens).await
    }

    async fn get_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        self.check_open()?;
        let hash = hash.to_string();
        self.reads.run(move |conn| read::token_by_hash(conn, &hash)).await
    }

    async fn revoke_token(
        &self,
        id_or_name: &str,
        at: chrono::DateTime<chrono::Utc>,
        audit: EntryDraft,
    ) -> Result<ApiToken, StoreError> {
        token_reply(self.write(Op::RevokeToken(id_or_name.to_string(), at, audit)).await?)
    }

    async fn put_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        self.write(Op::Checkpoint(checkpoint)).await.map(|_| ())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.check_open()?;
        self.reads.run(read::checkpoints).await
    }

    async fn watch(&self, query: WatchQuery) -> Result<WatchStream, StoreError> {
        self.check_open()?;
        // Subscribe first, then read the history: see the `watch` module.
        let events = lock(&self.events).as_ref().map(broadcast::Sender::subscribe).ok_or(StoreError::Closed)?;
        let from = query.from_revision;
        let first = self.reads.run(move |conn| read::events_after(conn, from, watch::CATCH_UP_CHUNK)).await?;
        Ok(watch::stream(Arc::clone(&self.reads), events, query, first))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.check_open()?;
        self.reads.run(read::revision).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_open()?;
        self.reads.run(read::ping).await
    }

    /// Idempotent: a second `close` returns `Ok` at once.
    async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Dropping the last command sender lets the writer drain its queue and stop; dropping
        // our event sender (the writer drops its own on exit) ends the watches.
        lock(&self.commands).take();
        lock(&self.events).take();
        let handle = lock(&self.writer).take();
        let result = match handle {
            Some(handle) => match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => {
                    Err(StoreError::Unavailable { message: "sqlite: the writer thread panicked".into(), source: None })
                }
                Err(e) => Err(StoreError::unavailable("sqlite: waiting for the writer thread", e)),
            },
            None => Ok(()),
        };
        self.reads.close();
        tracing::info!(path = %self.path.display(), "closed sqlite store");
        result
    }
}

fn lease_reply(v: Value) -> Result<Option<Lease>, StoreError> {
    if v.is_null() {
        return Ok(None);
    }
    serde_json::from_value(v).map(Some).map_err(|e| StoreError::unavailable("sqlite: decoding a lease", e))
}

fn token_reply(v: Value) -> Result<ApiToken, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::unavailable("sqlite: decoding a token", e))
}
