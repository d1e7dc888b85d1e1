//! One ledger entry.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `prevHash` of the first entry (seq 1): 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Agent,
    System,
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn user(id: impl Into<String>) -> Self {
        Actor { kind: ActorKind::User, id: id.into() }
    }
    pub fn agent(id: impl Into<String>) -> Self {
        Actor { kind: ActorKind::Agent, id: id.into() }
    }
    pub fn system(id: impl Into<String>) -> Self {
        Actor { kind: ActorKind::System, id: id.into() }
    }
}

/// What it was done to: a resource's kind, namespace and name (and uid when known), so a reader
/// can find every entry about one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// An entry before the ledger gives it its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryDraft {
    pub actor: Actor,
    /// One of [`crate::actions`].
    pub action: String,
    pub namespace: Option<String>,
    pub target: Option<Target>,
    /// The AgentRun this action belongs to, if any.
    pub run: Option<String>,
    pub environment: Option<String>,
    pub takeover_level: Option<u8>,
    /// `allow`, `require_approval`, `suggest_only`, `deny` — for policy decisions.
    pub decision: Option<String>,
    /// `success`, `failure`, `denied`, `pending`, …
    pub outcome: String,
    /// Parameters, already redacted: never a secret.
    pub params: Value,
    pub error: Option<String>,
    pub trace_id: Option<String>,
}

/// A sealed entry: `seq` increases by one with no gap, `prevHash` is the previous entry's
/// `hash`, and `hash` covers every other field (see `docs/ledger.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    pub actor: Actor,
    pub action: String,
    pub namespace: Option<String>,
    pub target: Option<Target>,
    pub run: Option<String>,
    pub environment: Option<String>,
    pub takeover_level: Option<u8>,
    pub decision: Option<String>,
    pub outcome: String,
    pub params: Value,
    pub error: Option<String>,
    pub trace_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}
