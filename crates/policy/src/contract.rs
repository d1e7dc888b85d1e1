//! Role contracts (as in the AMAS agent contracts): what an agent of a role may do at most.
//! A contract can only tighten a decision.

use std::collections::BTreeMap;
use std::fmt;

use agentplane_api::{OperationType, RoleContract};
use serde_json::Value;

use crate::builtin::rate_limit;
use crate::decision::{Decision, RateScope, ReasonSource, Verdict, codes};
use crate::error::PolicyError;
use crate::input::{DecisionInput, operation_type_str};

/// The side-effect bounds a contract may set (`sideEffectBounds` keys).
pub const SIDE_EFFECT_BOUNDS: [&str; 3] = ["maxFilesChanged", "maxCallsPerMinute", "allowedOperationTypes"];

/// How many schema violations a reason names.
const MAX_SCHEMA_ERRORS: usize = 3;

/// A role contract compiled once (its JSON Schemas compiled, its bounds checked), applied to many
/// decisions.
pub struct CompiledContract {
    name: String,
    allowed_tools: Vec<String>,
    require_approval: Vec<String>,
    schemas: BTreeMap<String, jsonschema::Validator>,
    max_files_changed: Option<u32>,
    max_calls_per_minute: Option<u32>,
    allowed_operation_types: Option<Vec<OperationType>>,
}

impl fmt::Debug for CompiledContract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledContract")
            .field("name", &self.name)
            .field("allowed_tools", &self.allowed_tools)
            .field("require_approval", &self.require_approval)
            .field("schemas", &self.schemas.keys().collect::<Vec<_>>())
            .field("max_files_changed", &self.max_files_changed)
            .field("max_calls_per_minute", &self.max_calls_per_minute)
            .field("allowed_operation_types", &self.allowed_operation_types)
            .finish()
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (dots included)
/// and everything else is literal: `workspace.*` matches `workspace.read` and
/// `workspace.files.read`, `*` matches every tool, `*.read` matches `workspace.read`.
pub fn tool_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0usize, 0usize);
    // Position of the last `*` seen and the name position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

fn bound_u32(contract: &str, key: &str, v: &Value) -> Result<u32, PolicyError> {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| PolicyError::Contract {
        contract: contract.to_owned(),
        field: format!("sideEffectBounds.{key}"),
        message: format!("must be a whole number from 0 to {}, got {v}", u32::MAX),
    })
}

impl CompiledContract {
    /// Compile a contract: each input schema must be a valid JSON Schema (no remote `$ref`: none is
    /// fetched), each side-effect bound must be one of [`SIDE_EFFECT_BOUNDS`] with a valid value.
    /// An unknown bound is an error rather than ignored, since it could not be enforced.
    pub fn compile(contract: &RoleContract) -> Result<Self, PolicyError> {
        let name = contract.name.clone();
        let mut schemas = BTreeMap::new();
        for (tool, schema) in &contract.input_schemas {
            let validator = jsonschema::validator_for(schema).map_err(|e| PolicyError::Contract {
                contract: name.clone(),
                field: format!("inputSchemas[{tool:?}]"),
                message: format!("not a valid JSON Schema: {e}"),
            })?;
            schemas.insert(tool.clone(), validator);
        }
        let mut out = CompiledContract {
            name: name.clone(),
            allowed_tools: contract.allowed_tools.clone(),
            require_approval: contract.require_approval.clone(),
            schemas,
            max_files_changed: None,
            max_calls_per_minute: None,
            allowed_operation_types: None,
        };
        for (key, v) in &contract.side_effect_bounds {
            match key.as_str() {
                "maxFilesChanged" => out.max_files_changed = Some(bound_u32(&name, key, v)?),
                "maxCallsPerMinute" => out.max_calls_per_minute = Some(bound_u32(&name, key, v)?),
                "allowedOperationTypes" => {
                    let types: Vec<OperationType> =
                        serde_json::from_value(v.clone()).map_err(|e| PolicyError::Contract {
                            contract: name.clone(),
                            field: format!("sideEffectBounds.{key}"),
                            message: format!("must be a list of operation types: {e}"),
                        })?;
                    out.allowed_operation_types = Some(types);
                }
                other => {
                    return Err(PolicyError::Contract {
                        contract: name.clone(),
                        field: format!("sideEffectBounds.{other}"),
                        message: format!("unknown side-effect bound; known: {}", SIDE_EFFECT_BOUNDS.join(", ")),
                    });
                }
            }
        }
        Ok(out)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tighten `d` by this contract. In order: the tool must be allowed (an empty `allowedTools`
    /// restricts nothing), the operation type must be allowed, the arguments must match the tool's
    /// input schema, the side-effect bounds must hold, and tools listed in `requireApproval` need
    /// approval.
    pub fn apply(&self, input: &DecisionInput, d: &mut Decision) {
        let src = ReasonSource::Contract(self.name.clone());
        let action = &input.action;
        let tool = action.tool.as_str();

        if !self.allowed_tools.is_empty() && !self.allowed_tools.iter().any(|p| tool_matches(p, tool)) {
            d.tighten(
                Verdict::Deny,
                codes::TOOL_NOT_ALLOWED,
                format!("role {:?} may not call tool {tool:?}", self.name),
                &src,
            );
        }
        if let Some(types) = &self.allowed_operation_types
            && !types.contains(&action.operation_type)
        {
            d.tighten(
                Verdict::Deny,
                codes::OPERATION_TYPE_NOT_ALLOWED,
                format!(
                    "role {:?} may not perform {} operations",
                    self.name,
                    operation_type_str(action.operation_type)
                ),
                &src,
            );
        }
        if let Some(validator) = self.schemas.get(tool)
            && !validator.is_valid(&action.arguments)
        {
            // Name where and which keyword failed, never the offending values (they may be secrets).
            let problems: Vec<String> = validator
                .iter_errors(&action.arguments)
                .take(MAX_SCHEMA_ERRORS)
                .map(|e| {
                    let path = e.instance_path().to_string();
                    let path = if path.is_empty() { "/".to_owned() } else { path };
                    format!("{path} fails `{}`", e.kind().keyword())
                })
                .collect();
            d.tighten(
                Verdict::Deny,
                codes::INVALID_ARGUMENTS,
                format!(
                    "arguments of {tool:?} do not match the input schema of role {:?}: {}",
                    self.name,
                    problems.join("; ")
                ),
                &src,
            );
        }
        if let Some(max) = self.max_files_changed
            && action.operation_type != OperationType::Read
            && input.run_usage.files_changed > max
        {
            d.tighten(
                Verdict::Deny,
                codes::SIDE_EFFECT_BOUND,
                format!(
                    "the run would have changed {} files; role {:?} allows at most {max}",
                    input.run_usage.files_changed, self.name
                ),
                &src,
            );
        }
        if let Some(per_minute) = self.max_calls_per_minute {
            rate_limit(d, per_minute, RateScope::Run, input, &src);
        }
        if self.require_approval.iter().any(|p| tool_matches(p, tool)) {
            d.tighten(
                Verdict::RequireApproval,
                codes::CONTRACT_REQUIRES_APPROVAL,
                format!("role {:?} always needs approval for {tool:?}", self.name),
                &src,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn glob_examples() {
        for (p, n, want) in [
            ("workspace.*", "workspace.read", true),
            ("workspace.*", "workspace.files.read", true),
            ("workspace.*", "workspace", false),
            ("workspace.*", "workspaces.read", false),
            ("workspace.*", "memory.get", false),
            ("*", "anything.at.all", true),
            ("*", "", true),
            ("*.read", "workspace.read", true),
            ("*.read", "workspace.write", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exec", "exec", true),
            ("exec", "exec2", false),
            ("", "", true),
            ("", "x", false),
            ("**", "x", true),
        ] {
            assert_eq!(tool_matches(p, n), want, "{p:?} vs {n:?}");
        }
    }

    proptest! {
        #[test]
        fn glob_without_star_is_equality(p in "[a-z.]{0,8}", n in "[a-z.]{0,8}") {
            prop_assert_eq!(tool_matches(&p, &n), p == n);
        }

        #[test]
        fn prefix_star_matches_every_extension(prefix in "[a-z.]{0,8}", rest in "[a-z.]{0,8}") {
            let pattern = format!("{prefix}*");
            let name = format!("{prefix}{rest}");
            prop_assert!(tool_matches(&pattern, &name));
        }

        #[test]
        fn glob_agrees_with_a_regex(p in "[ab*]{0,6}", n in "[ab]{0,8}") {
            // An independent oracle: translate the glob to a regular expression by hand.
            fn matches(p: &[u8], n: &[u8]) -> bool {
                match (p.first(), n.first()) {
                    (None, None) => true,
                    (None, Some(_)) => false,
                    (Some(b'*'), _) => matches(&p[1..], n) || (!n.is_empty() && matches(p, &n[1..])),
                    (Some(c), Some(d)) if c == d => matches(&p[1..], &n[1..]),
                    _ => false,
                }
            }
            prop_assert_eq!(tool_matches(&p, &n), matches(p.as_bytes(), n.as_bytes()));
        }
    }
}
