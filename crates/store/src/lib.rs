//! The storage contract of agentplane.
//!
//! This crate owns the [`Store`] trait that every backend (embedded SQLite now, PostgreSQL when a
//! team outgrows one machine) implements, the types it speaks, the continue-token format, and a
//! [`conformance`] suite that any backend runs to prove it honours the contract. It performs no
//! I/O itself and knows no SQL.
//!
//! # The contract
//!
//! - Objects are JSON documents of any [`Kind`], keyed by `(kind, namespace, name)`.
//! - Every successful write (create, update, delete) gets a new **revision** from one counter that
//!   is global to the store and strictly increasing. An object's `metadata.resourceVersion` is the
//!   revision of the write that produced it, as a decimal string.
//! - `update` with [`Precondition::ResourceVersion`] is a compare-and-swap: if the stored object's
//!   resourceVersion differs, nothing is written and [`StoreError::Conflict`] is returned.
//! - The store owns `metadata.uid`, `metadata.resourceVersion`, `metadata.generation` and
//!   `metadata.creationTimestamp`: create sets them (generation 1), update keeps `uid` and
//!   `creationTimestamp` and increments `generation` only when `spec` changed.
//! - `watch` from revision `R` delivers every change with a revision greater than `R`, exactly
//!   once, in revision order, then follows new changes live. If `R` is older than the retained
//!   history, it fails with [`StoreError::Expired`] so the caller can re-list.
//! - A write that returned `Ok` survives a crash of the process (kill -9) right after.

pub mod conformance;
mod token;

use std::pin::Pin;

use agentplane_api::Kind;
use agentplane_api::selector::{FieldSelector, LabelSelector};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use agentplane_ledger::{Actor, Checkpoint, Entry, EntryDraft, Target};
pub use token::ContinueToken;

/// A store revision. Revisions start at 1; 0 means "before anything".
pub type Revision = u64;

/// Default page size of `list` when the caller sets none.
pub const DEFAULT_LIST_LIMIT: usize = 500;
/// Largest page `list` returns, whatever the caller asks.
pub const MAX_LIST_LIMIT: usize = 5_000;

/// The identity of one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { kind, namespace: namespace.into(), name: name.into() }
    }

    /// The key of a JSON object, from its `kind`, `metadata.namespace` (default `default`) and
    /// `metadata.name`.
    pub fn of(obj: &Value) -> Result<ObjectKey, StoreError> {
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .and_then(Kind::from_manifest)
            .ok_or_else(|| StoreError::InvalidObject("object has no known kind".into()))?;
        let namespace = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(agentplane_api::DEFAULT_NAMESPACE);
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        Ok(ObjectKey::new(kind, namespace, name))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What `update` and `delete` require of the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is stored.
    None,
    /// Write only if the stored object's resourceVersion is this one.
    ResourceVersion(Revision),
}

/// A leader lease: whoever holds the lease named `name` is the only one doing that job (for
/// example `controller`: dispatching runs). `epoch` grows by one each time the lease is acquired,
/// so a holder that lost the lease (paused, partitioned) cannot write with an old epoch: writes
/// made through [`Store::update_fenced`] check it in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub epoch: u64,
    /// When the lease lapses unless renewed (the store's clock).
    pub expires_at: DateTime<Utc>,
}

/// An API token as stored: its identity, scope and lifetime, and the SHA-256 of the secret
/// (lowercase hex). The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// `viewer`, `submitter`, `approver`, `operator` or `admin` (checked by the server).
    pub role: String,
    /// The namespace the role is granted in; `None` = cluster-wide.
    pub namespace: Option<String>,
    /// SHA-256 of the token, lowercase hex.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    /// Who created it (`user:alice`, `system:bootstrap`).
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiToken {
    /// Not revoked and not expired at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// A `list` request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub kind: Kind,
    /// `None` lists every namespace.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Page size; `None` means [`DEFAULT_LIST_LIMIT`]; capped at [`MAX_LIST_LIMIT`].
    pub limit: Option<usize>,
    /// The `continue` token of the previous page.
    pub continue_token: Option<String>,
}

impl ListQuery {
    pub fn new(kind: Kind) -> Self {
        ListQuery {
            kind,
            namespace: None,
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
            limit: None,
            continue_token: None,
        }
    }
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIST_LIMIT).clamp(1, MAX_LIST_LIMIT)
    }
}

/// One page of a list, ordered by `(namespace, name)`.
#[derive(Debug, Clone, Default)]
pub struct ObjectList {
    pub items: Vec<Value>,
    /// The store's revision when the page was read; a watch from here misses nothing.
    pub revision: Revision,
    /// Present when more items may follow; pass it back as `continue_token`.
    pub continue_token: Option<String>,
}

/// The type of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. For `Deleted`, `object` is the last state, with the deleting write's revision as
/// its resourceVersion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub type_: EventType,
    pub revision: Revision,
    pub object: Value,
}

/// A `watch` request.
#[derive(Debug, Clone)]
pub struct WatchQuery {
    /// `None` watches every kind.
    pub kind: Option<Kind>,
    /// `None` watches every namespace.
    pub namespace: Option<String>,
    /// Deliver changes with a revision strictly greater than this.
    pub from_revision: Revision,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl WatchQuery {
    pub fn all_from(from_revision: Revision) -> Self {
        WatchQuery {
            kind: None,
            namespace: None,
            from_revision,
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        }
    }

    /// Whether an event passes this query's kind, namespace and selectors.
    pub fn matches(&self, ev: &WatchEvent) -> bool {
        let Ok(key) = ObjectKey::of(&ev.object) else { return false };
        self.kind.is_none_or(|k| k == key.kind)
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
            && self.labels.matches_object(&ev.object)
            && self.fields.matches_object(&ev.object)
    }
}

/// The stream `watch` returns. It ends only on error or when the store closes.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// Errors of any store. `is_retryable` tells "the caller sent something wrong" from "something we
/// depend on failed".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    #[error("idempotency key {idempotency_key:?} is already used by {existing}")]
    IdempotencyKeyInUse { existing: ObjectKey, idempotency_key: String },
    #[error(
        "{key} was modified: expected resourceVersion {expected}, the stored one is {actual}; get it again and retry"
    )]
    Conflict { key: ObjectKey, expected: Revision, actual: Revision },
    #[error(
        "revision {requested} is no longer retained (oldest retained is {oldest}); list again and watch from the list's revision"
    )]
    Expired { requested: Revision, oldest: Revision },
    #[error("invalid continue token: {0}")]
    InvalidContinueToken(String),
    #[error("invalid object: {0}")]
    InvalidObject(String),
    #[error("store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("store is closed")]
    Closed,
    /// No active API token has this id or name.
    #[error("no active token {0:?}")]
    TokenNotFound(String),
    /// An active API token already has this name.
    #[error("an active token named {0:?} already exists; revoke it first or pick another name")]
    TokenExists(String),
    /// A fenced write by a holder that no longer holds the lease (another holder took it, or it
    /// lapsed): the caller must stop doing the lease's job.
    #[error("lease {lease:?} is no longer held by {holder:?} at epoch {epoch}: {reason}")]
    Fenced { lease: String, holder: String, epoch: u64, reason: String },
}

impl StoreError {
    pub fn unavailable<E: std::error::Error + Send + Sync + 'static>(message: impl Into<String>, e: E) -> Self {
        StoreError::Unavailable { message: format!("{}: {e}", message.into()), source: Some(Box::new(e)) }
    }
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. } | StoreError::Conflict { .. })
    }
}

/// The storage contract; see the crate documentation for the guarantees.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Create an object. If `metadata.name` is empty and `metadata.generateName` is set, the store
    /// picks a unique name from that prefix. Returns the object as stored.
    async fn create(&self, obj: Value, audit: EntryDraft) -> Result<Value, StoreError>;

    /// Read one object.
    async fn get(&self, key: &ObjectKey) -> Result<Value, StoreError>;

    /// The object of `kind` in `namespace` whose `spec.idempotencyKey` is `idempotency_key`.
    /// Keys are unique per kind and namespace: `create` of a second object with a key in use fails
    /// with [`StoreError::IdempotencyKeyInUse`] naming the holder; the key of an object never
    /// changes after create.
    async fn get_by_idempotency_key(
        &self,
        kind: Kind,
        namespace: &str,
        idempotency_key: &str,
    ) -> Result<Option<Value>, StoreError>;

    /// List objects of one kind, ordered by `(namespace, name)`, one page at a time.
    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError>;

    /// Replace an existing object (spec, status, labels, annotations).
    async fn update(&self, obj: Value, precondition: Precondition, audit: EntryDraft) -> Result<Value, StoreError>;

    /// Delete an object, returning its last state.
    /// `update`, only if `fence` is still the current, unexpired holder of its lease (checked
    /// in the same transaction); otherwise [`StoreError::Fenced`] and nothing is written.
    async fn update_fenced(
        &self,
        obj: Value,
        precondition: Precondition,
        audit: EntryDraft,
        fence: &Lease,
    ) -> Result<Value, StoreError>;

    /// Takes the lease `name` for `holder` for `ttl` if nobody holds it, it has lapsed, or
    /// `holder` holds it already (a restarted process with the same holder id takes over at
    /// once). Each acquisition increments the epoch. `None`: another holder has it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// Extends `lease` by `ttl` from now if it is still the holder at the same epoch (even if it
    /// lapsed, as long as nobody else acquired it). `None`: it is lost.
    async fn renew_lease(&self, lease: &Lease, ttl: std::time::Duration) -> Result<Option<Lease>, StoreError>;

    /// Gives the lease up (so another holder can take it at once). A lease no longer held is Ok.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    async fn delete(&self, key: &ObjectKey, precondition: Precondition, audit: EntryDraft)
    -> Result<Value, StoreError>;

    /// Append ledger entries that record actions without a state change here (authentication
    /// failures, policy decisions, …), in one transaction, in order. Returns them sealed.
    async fn append(&self, drafts: Vec<EntryDraft>) -> Result<Vec<Entry>, StoreError>;

    /// The last entry's `(seq, hash)`; `(0, GENESIS_HASH)` for an empty ledger.
    async fn ledger_head(&self) -> Result<(u64, String), StoreError>;

    /// Ledger entries matching `query`, in seq order, one page at a time.
    async fn ledger_query(&self, query: &LedgerQuery) -> Result<LedgerPage, StoreError>;

    /// Up to `limit` entries with seq greater than `after_seq`, in seq order (export and verify
    /// read the whole ledger this way, in constant memory).
    async fn ledger_scan(&self, after_seq: u64, limit: usize) -> Result<Vec<Entry>, StoreError>;

    /// Create an API token record (only its hash: the store never sees a token). Names are unique
    /// among tokens that are not revoked: a second active token with the same name fails with
    /// [`StoreError::TokenExists`]. `audit` (`token.created`) commits in the same transaction.
    async fn create_token(&self, token: ApiToken, audit: EntryDraft) -> Result<ApiToken, StoreError>;

    /// Every API token record, revoked ones included, ordered by creation time.
    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// The token whose `hash` this is, revoked or not.
    async fn get_token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError>;

    /// Revoke the active token with this id or (if no id matches) this name, at `at`; returns it
    /// as revoked. [`StoreError::TokenNotFound`] when no active token matches. `audit`
    /// (`token.revoked`) commits in the same transaction.
    async fn revoke_token(
        &self,
        id_or_name: &str,
        at: DateTime<Utc>,
        audit: EntryDraft,
    ) -> Result<ApiToken, StoreError>;

    /// Store a signed checkpoint (idempotent for the same seq).
    async fn put_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError>;

    /// Every checkpoint, in seq order.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;

    /// Follow changes after `query.from_revision`.
    async fn watch(&self, query: WatchQuery) -> Result<WatchStream, StoreError>;

    /// The latest committed revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// A cheap round trip to the database, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finish pending writes, flush to disk and stop. Later calls fail with `Closed`; open
    /// watches end.
    async fn close(&self) -> Result<(), StoreError>;
}

/// Filters of a ledger query; all given filters must hold.
#[derive(Debug, Clone, Default)]
pub struct LedgerQuery {
    /// Entries at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Entries before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub namespace: Option<String>,
    pub run: Option<String>,
    /// Actor id (`alice`, `agent:shell-agent` matches kind and id).
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// `(kind, namespace, name)` of the target.
    pub target: Option<(String, String, String)>,
    /// Continue after this seq.
    pub after_seq: Option<u64>,
    /// Page size (default 500, at most 5000).
    pub limit: Option<usize>,
}

impl LedgerQuery {
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIST_LIMIT).clamp(1, MAX_LIST_LIMIT)
    }
}

/// One page of ledger entries.
#[derive(Debug, Clone, Default)]
pub struct LedgerPage {
    pub entries: Vec<Entry>,
    /// Present when more entries may follow: pass it as `after_seq`.
    pub next_after_seq: Option<u64>,
}

/// The ledger entry recording a write to a resource; the store fills in the target (kind,
/// namespace, name, uid) from the object it stored.
pub fn resource_audit(actor: Actor, action: &str) -> EntryDraft {
    EntryDraft {
        actor,
        action: action.to_string(),
        namespace: None,
        target: None,
        run: None,
        environment: None,
        takeover_level: None,
        decision: None,
        outcome: "success".to_string(),
        params: Value::Object(serde_json::Map::new()),
        error: None,
        trace_id: None,
    }
}

/// Parse a resourceVersion string.
pub fn parse_revision(s: &str) -> Option<Revision> {
    s.parse().ok()
}

/// The resourceVersion of a JSON object, if present and numeric.
pub fn revision_of(obj: &Value) -> Option<Revision> {
    obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(parse_revision)
}
