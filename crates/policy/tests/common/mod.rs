//! Builders shared by the integration tests.
#![allow(dead_code)]

use agentplane_api::{EnvironmentClass, OperationType};
use agentplane_policy::*;
use serde_json::json;

/// An agent writing a file, non-critical, in an environment of `class` (its default cap), at `level`.
pub fn input(class: EnvironmentClass, level: TakeoverLevel, op: OperationType, critical: bool) -> DecisionInput {
    DecisionInput {
        subject: Subject { kind: SubjectKind::Agent, id: "team-a/fixer".into(), roles: vec!["developer".into()] },
        action: Action {
            tool: "workspace.write".into(),
            operation: None,
            operation_type: op,
            critical,
            arguments: json!({"path": "src/main.rs", "content": "fn main() {}"}),
            rate_limit_per_minute: None,
            redact_fields: vec![],
        },
        resource: Some("file:src/main.rs".into()),
        environment: EnvironmentContext::of_class(environment_class_str(class), class),
        level,
        emergency: None,
        recent_calls: RecentCalls::default(),
        run_usage: RunUsage::default(),
    }
}

pub fn dev_write() -> DecisionInput {
    input(EnvironmentClass::Development, TakeoverLevel::L3, OperationType::Write, false)
}

/// Limits for tests whose subject is not the time limit: a stalled test machine must not turn an
/// ordinary evaluation into a timeout (and so a deny, or an accepted dry run).
pub fn patient() -> RegoLimits {
    RegoLimits { timeout: std::time::Duration::from_secs(10), ..RegoLimits::default() }
}

/// Compile a one-module Policy (module `main`) with [`patient`] limits.
pub fn compile(name: &str, source: &str) -> Result<RegoPolicy, PolicyError> {
    RegoPolicy::compile_with_limits(
        name,
        &[agentplane_api::RegoModule { name: "main".into(), rego: source.into() }],
        &patient(),
    )
}

/// A policy whose decision is always `verdict`.
pub fn constant_policy(name: &str, verdict: Verdict) -> RegoPolicy {
    compile(
        name,
        &format!(
            "package agentplane\n\ndecision := {{\"verdict\": \"{}\", \"reasons\": [\"always {}\"]}}\n",
            verdict.as_str(),
            verdict.as_str()
        ),
    )
    .unwrap()
}
