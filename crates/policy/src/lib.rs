//! The agentplane policy decision point (DESIGN §6): for one tool call, `allow`,
//! `require_approval`, `suggest_only` or `deny`, with the reasons and the obligations (redact,
//! rate-limit, review).
//!
//! This crate owns the takeover levels and the effective-level arithmetic, the built-in level
//! rules for each environment, role contracts (allowed tools, input JSON Schemas, side-effect
//! bounds, tools that always need approval) and Rego Policies evaluated in-process with
//! `regorus` under limits. Contracts and Policies can only tighten the built-in answer, and any
//! failure while deciding is a `deny` with its reason (fail closed).
//!
//! It is pure: no I/O, no async, no wall clock, no randomness. The one clock it reads is the
//! monotonic one behind regorus's execution time limit. It must not look anything up (Environments,
//! Tools, Agents, approvals, call counts): the caller — the gateway, admission — resolves those and
//! passes them in [`DecisionInput`]. Approvals, emergency elevations and promotions are decided
//! elsewhere; this crate only reads their effect (an elevation's level, a level).
//!
//! The rules, the decision table and the contract for Policy authors are in `docs/governance.md`.
//!
//! ```
//! use agentplane_api::{EnvironmentClass, OperationType};
//! use agentplane_policy::*;
//!
//! let input = DecisionInput {
//!     subject: Subject { kind: SubjectKind::Agent, id: "team-a/fixer".into(), roles: vec![] },
//!     action: Action {
//!         tool: "kubectl.apply".into(),
//!         operation: None,
//!         operation_type: OperationType::Deployment,
//!         critical: true,
//!         arguments: serde_json::json!({"manifest": "deploy.yaml"}),
//!         rate_limit_per_minute: None,
//!         redact_fields: vec![],
//!     },
//!     resource: None,
//!     environment: EnvironmentContext::of_class("staging", EnvironmentClass::PreProduction),
//!     level: TakeoverLevel::L3,
//!     emergency: None,
//!     recent_calls: RecentCalls::default(),
//!     run_usage: RunUsage::default(),
//! };
//! // L3: a critical operation needs approval.
//! assert_eq!(builtin_decision(&input).verdict, Verdict::RequireApproval);
//!
//! // A Policy may tighten that to a deny, never loosen it.
//! let policy = RegoPolicy::compile_source(
//!     "no-deploys",
//!     "package agentplane\n\
//!      decision := {\"verdict\": \"deny\", \"reasons\": [\"no deployments this week\"]} if {\n\
//!        input.action.operationType == \"deployment\"\n\
//!      }\n",
//! )
//! .unwrap();
//! let point = DecisionPoint::new(vec![policy]);
//! let d = point.decide(&input, &[]);
//! assert_eq!(d.verdict, Verdict::Deny);
//! assert_eq!(d.reasons.last().unwrap().source, ReasonSource::Policy("no-deploys".into()));
//! ```

mod builtin;
mod contract;
mod decision;
mod error;
mod input;
mod level;
mod point;
mod rego;

pub use builtin::{LevelRule, builtin_decision, level_verdict, production_requires_approval};
pub use contract::{CompiledContract, SIDE_EFFECT_BOUNDS, tool_matches};
pub use decision::{Decision, Obligation, RateScope, Reason, ReasonSource, Verdict, codes};
pub use error::PolicyError;
pub use input::{
    Action, DecisionInput, ENVIRONMENT_CLASSES, Emergency, EnvironmentContext, OPERATION_TYPES, RecentCalls, RunUsage,
    Subject, SubjectKind, environment_class_str, operation_type_str,
};
pub use level::{TakeoverLevel, effective_level, environment_cap};
pub use point::DecisionPoint;
pub use rego::{ENTRYPOINT, RegoLimits, RegoPolicy, sample_input};

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn the_decision_point_can_be_shared_between_threads() {
        assert_send_sync::<super::DecisionPoint>();
        assert_send_sync::<super::CompiledContract>();
    }
}
