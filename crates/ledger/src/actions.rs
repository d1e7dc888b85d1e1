//! The action names recorded in the ledger: one list, so every feature records the same name for
//! the same thing and queries can rely on it. Names are `<subject>.<past-tense verb>` (lowercase,
//! `_` between words).
//!
//! "Recorded by" names the component that appends the entry, in the same transaction as the state
//! change it records.

/// A resource (any kind: Agent, AgentRun, Policy, Environment, …) was created. Recorded by the
/// API server's resource handlers, with the requesting user or agent as actor and the resource's
/// kind/namespace/name in `target`.
pub const RESOURCE_CREATED: &str = "resource.created";
/// A resource's spec or metadata was changed. Recorded by the API server's resource handlers.
pub const RESOURCE_UPDATED: &str = "resource.updated";
/// A resource was deleted. Recorded by the API server's resource handlers.
pub const RESOURCE_DELETED: &str = "resource.deleted";

/// An AgentRun was submitted (accepted and queued). Recorded by the run submission path, actor =
/// the submitter.
pub const RUN_SUBMITTED: &str = "run.submitted";
/// A run left the queue and began executing. Recorded by the scheduler (actor: system).
pub const RUN_STARTED: &str = "run.started";
/// A failed run attempt was scheduled again. Recorded by the scheduler (actor: system); `params`
/// carries the attempt number.
pub const RUN_RETRIED: &str = "run.retried";
/// A run reached a terminal state (`outcome` success or failure). Recorded by the run executor
/// (actor: system or the agent).
pub const RUN_FINISHED: &str = "run.finished";
/// A run was cancelled. Recorded by the cancellation handler, actor = who cancelled.
pub const RUN_CANCELLED: &str = "run.cancelled";
/// A cancel was asked for a running run (the controller then stops it and records
/// `run.finished` with phase `Cancelled`). Recorded by the cancellation handler, actor = who asked.
pub const RUN_CANCEL_REQUESTED: &str = "run.cancel_requested";
/// A pending run is held back by a concurrency cap (`params.cap` names it). Recorded by the
/// scheduler (actor: system), once per time the run becomes blocked.
pub const RUN_BLOCKED: &str = "run.blocked";

/// The policy engine decided on an action (`decision`: allow, require_approval, suggest_only,
/// deny). Recorded by the governance layer, actor = the agent or user whose action was evaluated.
pub const POLICY_DECIDED: &str = "policy.decided";

/// An action needs a human approval (`outcome` pending). Recorded by the governance layer, actor =
/// the agent that asked.
pub const APPROVAL_REQUESTED: &str = "approval.requested";
/// A human approved (`outcome` success) or rejected (`outcome` denied) a request. Recorded by the
/// approval handler, actor = the approver.
pub const APPROVAL_DECIDED: &str = "approval.decided";
/// A pending approval timed out (`outcome` expired). Recorded by the approval expiry task (actor:
/// system).
pub const APPROVAL_EXPIRED: &str = "approval.expired";

/// A run's or agent's takeover level changed (`takeoverLevel` = the new level). Recorded by the
/// takeover handler, actor = who changed it.
pub const TAKEOVER_CHANGED: &str = "takeover.changed";
/// The server suggests raising an agent's earned level after a streak of clean runs (outcome
/// `pending`; `takeoverLevel` = the level suggested). Actor `system:earned-levels`.
pub const TAKEOVER_SUGGESTED: &str = "takeover.suggested";
/// An environment's definition or class changed, or an agent was moved between environments.
/// Recorded by the environment handlers.
pub const ENVIRONMENT_CHANGED: &str = "environment.changed";

/// Temporary elevated privileges were requested. Recorded by the elevation handler, actor = the
/// requester.
pub const ELEVATION_REQUESTED: &str = "elevation.requested";
/// Elevated privileges were granted. Recorded by the elevation handler, actor = the granter.
pub const ELEVATION_GRANTED: &str = "elevation.granted";
/// An elevation ended because its time ran out. Recorded by the elevation expiry task (actor:
/// system).
pub const ELEVATION_EXPIRED: &str = "elevation.expired";

/// An API token was created (never the token itself nor its hash: its id, role, namespace and
/// expiry in `params`, target `Token/<name>`). Recorded by the token handler (actor: the admin)
/// and by the server's bootstrap on first start (actor `system:bootstrap`), in the same
/// transaction as the token record.
pub const TOKEN_CREATED: &str = "token.created";
/// An API token was revoked (`params.id`, target `Token/<name>`). Recorded by the token handler,
/// actor = the admin, in the same transaction as the revocation.
pub const TOKEN_REVOKED: &str = "token.revoked";

/// A request failed authentication (bad or expired token, bad signature). Recorded by the auth
/// middleware (actor: the claimed identity if any, else `system:anonymous`); `outcome` denied.
pub const AUTH_FAILED: &str = "auth.failed";

/// A signed checkpoint was made (`params`: seq, hash, keyId). Recorded by the ledger's checkpoint
/// task (actor: system).
pub const LEDGER_CHECKPOINTED: &str = "ledger.checkpointed";
/// An anomaly rule fired (`params`: the anomaly). Recorded by the summary/anomaly task (actor:
/// system).
pub const ANOMALY_FLAGGED: &str = "anomaly.flagged";

/// Every action name, in the order above.
pub const ALL: &[&str] = &[
    RESOURCE_CREATED,
    RESOURCE_UPDATED,
    RESOURCE_DELETED,
    RUN_SUBMITTED,
    RUN_STARTED,
    RUN_RETRIED,
    RUN_FINISHED,
    RUN_CANCELLED,
    RUN_CANCEL_REQUESTED,
    RUN_BLOCKED,
    POLICY_DECIDED,
    APPROVAL_REQUESTED,
    APPROVAL_DECIDED,
    APPROVAL_EXPIRED,
    TAKEOVER_CHANGED,
    TAKEOVER_SUGGESTED,
    ENVIRONMENT_CHANGED,
    ELEVATION_REQUESTED,
    ELEVATION_GRANTED,
    ELEVATION_EXPIRED,
    TOKEN_CREATED,
    TOKEN_REVOKED,
    AUTH_FAILED,
    LEDGER_CHECKPOINTED,
    ANOMALY_FLAGGED,
];

/// Whether `name` is one of [`ALL`].
pub fn is_known(name: &str) -> bool {
    ALL.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        for name in ALL {
            assert!(seen.insert(*name), "duplicate {name}");
            let (subject, verb) = name.split_once('.').unwrap_or_default();
            assert!(!subject.is_empty() && !verb.is_empty() && !verb.contains('.'), "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'), "{name}");
        }
        assert_eq!(ALL.len(), 25);
        assert!(is_known("run.finished") && !is_known("run.exploded"));
    }
}
