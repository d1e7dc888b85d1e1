//! Outcome and decision values recorded in entries.

/// The action happened.
pub const SUCCESS: &str = "success";
/// The action was attempted and failed (`error` says why).
pub const FAILURE: &str = "failure";
/// The action was refused (by policy, RBAC, authentication or a human).
pub const DENIED: &str = "denied";
/// The action waits for something (e.g. an approval).
pub const PENDING: &str = "pending";
/// The thing waited for timed out (an approval, an elevation).
pub const EXPIRED: &str = "expired";

/// Every outcome.
pub const ALL: &[&str] = &[SUCCESS, FAILURE, DENIED, PENDING, EXPIRED];

/// Policy decisions (`decision` of a `policy.decided` entry, and of any entry a decision applied to).
pub mod decisions {
    pub const ALLOW: &str = "allow";
    pub const REQUIRE_APPROVAL: &str = "require_approval";
    pub const SUGGEST_ONLY: &str = "suggest_only";
    pub const DENY: &str = "deny";
    /// Every decision.
    pub const ALL: &[&str] = &[ALLOW, REQUIRE_APPROVAL, SUGGEST_ONLY, DENY];
}
