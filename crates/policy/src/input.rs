//! What the decision point is asked about. The same document, as JSON, is `input` for Rego
//! policies (see `docs/governance.md`).

use agentplane_api::{EnvironmentClass, EnvironmentSpec, OperationType};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::PolicyError;
use crate::level::TakeoverLevel;

/// Every operation type, in the order of DESIGN §6.
pub const OPERATION_TYPES: [OperationType; 12] = [
    OperationType::Deployment,
    OperationType::ConfigurationChange,
    OperationType::DataMigration,
    OperationType::Rollback,
    OperationType::MonitoringUpdate,
    OperationType::Troubleshooting,
    OperationType::FeedbackResponse,
    OperationType::PermissionChange,
    OperationType::Read,
    OperationType::Write,
    OperationType::Exec,
    OperationType::Network,
];

/// The wire name of an operation type (`configuration_change`, …).
pub fn operation_type_str(t: OperationType) -> &'static str {
    match t {
        OperationType::Deployment => "deployment",
        OperationType::ConfigurationChange => "configuration_change",
        OperationType::DataMigration => "data_migration",
        OperationType::Rollback => "rollback",
        OperationType::MonitoringUpdate => "monitoring_update",
        OperationType::Troubleshooting => "troubleshooting",
        OperationType::FeedbackResponse => "feedback_response",
        OperationType::PermissionChange => "permission_change",
        OperationType::Read => "read",
        OperationType::Write => "write",
        OperationType::Exec => "exec",
        OperationType::Network => "network",
    }
}

/// The wire name of an environment class (`pre-production`, …).
pub fn environment_class_str(c: EnvironmentClass) -> &'static str {
    c.as_str()
}

/// Every environment class, least guarded first.
pub const ENVIRONMENT_CLASSES: [EnvironmentClass; 4] = [
    EnvironmentClass::Development,
    EnvironmentClass::Test,
    EnvironmentClass::PreProduction,
    EnvironmentClass::Production,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    User,
    Agent,
}

/// Who makes the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    pub kind: SubjectKind,
    /// A user name, or `namespace/agent` for an agent.
    pub id: String,
    /// Role names (RBAC roles of a user, the role contract name of an agent). Informational for
    /// the built-in rules; Rego policies may use them.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The call being decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Action {
    /// Tool name as the agent sees it, e.g. `workspace.write` or `github.create_pull_request`.
    pub tool: String,
    /// The Tool resource's operation name, when the tool declares operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    pub operation_type: OperationType,
    /// The Tool resource's `operations[].critical`. "Critical" is a yes/no property of an
    /// operation, as in the Tool resource: there are no grades in between.
    #[serde(default)]
    pub critical: bool,
    /// The call's arguments, as sent. Validated against role contracts' input schemas; Rego
    /// policies see a summary (long strings cut, see [`crate::RegoLimits`]).
    #[serde(default)]
    pub arguments: Value,
    /// The Tool resource's `rateLimit.requestsPerMinute`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// The Tool resource's `redact.fields`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact_fields: Vec<String>,
}

/// The environment the run is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentContext {
    pub name: String,
    pub class: EnvironmentClass,
    /// The Environment's `maxTakeoverLevel` (its class default when unset).
    pub max_level: TakeoverLevel,
    /// The highest level an emergency elevation may raise the cap to; `None` when the Environment
    /// allows no emergency elevation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_max: Option<TakeoverLevel>,
}

impl EnvironmentContext {
    /// An environment with its class's default cap and no emergency elevation.
    pub fn of_class(name: impl Into<String>, class: EnvironmentClass) -> Self {
        EnvironmentContext {
            name: name.into(),
            class,
            max_level: TakeoverLevel::class_defaults(class).0,
            emergency_max: None,
        }
    }

    /// From an Environment resource's spec. `emergency.allowed: true` lets an elevation raise the
    /// cap as far as `emergency.maxLevel` (default L4).
    pub fn from_spec(name: impl Into<String>, spec: &EnvironmentSpec) -> Result<Self, PolicyError> {
        let (class_max, _) = TakeoverLevel::class_defaults(spec.class);
        let max_level = match spec.max_takeover_level {
            Some(l) => TakeoverLevel::from_u8(l)?,
            None => class_max,
        };
        let emergency_max = match spec.emergency.as_ref().filter(|e| e.allowed) {
            Some(e) => Some(TakeoverLevel::from_u8(e.max_level_or_default())?),
            None => None,
        };
        Ok(EnvironmentContext { name: name.into(), class: spec.class, max_level, emergency_max })
    }
}

/// An active emergency elevation (requested with a reason, authorised, not yet expired: the caller
/// passes only live ones — the decision point reads no clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Emergency {
    pub level: TakeoverLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_by: Option<String>,
}

/// Calls already made in the trailing 60 seconds, not counting this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecentCalls {
    /// Calls of this tool by this run.
    #[serde(default)]
    pub tool_last_minute: u32,
    /// Calls of any tool by this run.
    #[serde(default)]
    pub all_last_minute: u32,
}

/// What the run has done so far, for side-effect bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunUsage {
    /// Distinct files the run will have changed if this call executes (the gateway counts the
    /// call's target when it is a write to a file not changed yet).
    #[serde(default)]
    pub files_changed: u32,
}

/// Everything one decision depends on. Build it, then ask [`crate::DecisionPoint::decide`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionInput {
    pub subject: Subject,
    pub action: Action,
    /// What the call acts on, as the gateway names it (`file:src/main.rs`,
    /// `https://api.github.com/...`, `agentplane:team-a/agentruns/fix-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub environment: EnvironmentContext,
    /// The run's effective level ([`crate::effective_level`]). The decision point caps it again
    /// by the environment (with any elevation) so a caller's mistake cannot raise it.
    pub level: TakeoverLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency: Option<Emergency>,
    #[serde(default)]
    pub recent_calls: RecentCalls,
    #[serde(default)]
    pub run_usage: RunUsage,
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentplane_api::EmergencySettings;

    #[test]
    fn operation_type_names_match_the_api_serde() {
        for t in OPERATION_TYPES {
            assert_eq!(serde_json::to_value(t).unwrap(), Value::String(operation_type_str(t).to_owned()));
        }
    }

    #[test]
    fn environment_from_spec() {
        let spec = EnvironmentSpec { class: EnvironmentClass::Production, ..Default::default() };
        let env = EnvironmentContext::from_spec("prod", &spec).unwrap();
        assert_eq!(env.max_level, TakeoverLevel::L2);
        assert_eq!(env.emergency_max, None);

        let spec = EnvironmentSpec {
            class: EnvironmentClass::Test,
            max_takeover_level: Some(3),
            emergency: Some(EmergencySettings { allowed: true, ..Default::default() }),
            ..Default::default()
        };
        let env = EnvironmentContext::from_spec("t", &spec).unwrap();
        assert_eq!(env.max_level, TakeoverLevel::L3);
        assert_eq!(env.emergency_max, Some(TakeoverLevel::L4), "the default emergency ceiling");
        let mut spec = spec;
        spec.emergency = Some(EmergencySettings { allowed: true, max_level: Some(5), ..Default::default() });
        assert_eq!(EnvironmentContext::from_spec("t", &spec).unwrap().emergency_max, Some(TakeoverLevel::L5));

        let bad = EnvironmentSpec { max_takeover_level: Some(7), ..Default::default() };
        assert_eq!(EnvironmentContext::from_spec("x", &bad), Err(PolicyError::InvalidLevel { value: 7 }));
    }
}
