//! The built-in rules: the level semantics of DESIGN §6, the environment cap, the production rule,
//! the tool's own rate limit and redactions. The table they implement is in `docs/governance.md`
//! ("The decision table"), and a test keeps the two equal.

use agentplane_api::{EnvironmentClass, OperationType};

use crate::decision::{Decision, Obligation, RateScope, ReasonSource, Verdict, codes};
use crate::input::DecisionInput;
use crate::level::{TakeoverLevel, environment_cap};

/// The verdict of the level rules alone, for a level that is already capped.
///
/// | level | read | critical read | other | critical other |
/// |---|---|---|---|---|
/// | L1 | allow | require_approval | deny | deny |
/// | L2 | allow | require_approval | suggest_only | suggest_only |
/// | L3 | allow | require_approval | allow | require_approval |
/// | L4 | allow | allow + review | allow | allow + review |
/// | L5 | allow | allow | allow | allow |
///
/// Only the operation type `read` counts as a read; every other type (including `monitoring_update`
/// and `troubleshooting`) may change something and is "other".
pub fn level_verdict(level: TakeoverLevel, operation_type: OperationType, critical: bool) -> LevelRule {
    use TakeoverLevel::*;
    let read = operation_type == OperationType::Read;
    let (verdict, code) = match (level, read, critical) {
        (_, true, false) => (Verdict::Allow, codes::LEVEL_PERMITS),
        (L1 | L2 | L3, true, true) => (Verdict::RequireApproval, codes::CRITICAL_NEEDS_APPROVAL),
        (L1, false, _) => (Verdict::Deny, codes::LEVEL_OBSERVE_ONLY),
        (L2, false, _) => (Verdict::SuggestOnly, codes::LEVEL_SUGGEST_ONLY),
        (L3, false, true) => (Verdict::RequireApproval, codes::CRITICAL_NEEDS_APPROVAL),
        (L4, _, true) => (Verdict::Allow, codes::CRITICAL_FLAGGED_FOR_REVIEW),
        (L3 | L4 | L5, _, _) => (Verdict::Allow, codes::LEVEL_PERMITS),
    };
    LevelRule { verdict, code, review: level == L4 && critical }
}

/// One cell of the level table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelRule {
    pub verdict: Verdict,
    pub code: &'static str,
    /// Whether the call carries a [`Obligation::Review`].
    pub review: bool,
}

/// Whether the production rule applies: in a `production` environment a critical operation needs
/// at least a human's approval, whatever the level (this matters when an emergency elevation
/// lifts production above its L2 cap).
pub fn production_requires_approval(class: EnvironmentClass, critical: bool) -> bool {
    class == EnvironmentClass::Production && critical
}

fn level_message(level: TakeoverLevel, code: &str) -> String {
    match code {
        codes::LEVEL_OBSERVE_ONLY => format!("{level} observe: nothing executes but reads"),
        codes::LEVEL_SUGGEST_ONLY => format!("{level} suggest: the call is recorded as a suggestion for a human"),
        codes::CRITICAL_NEEDS_APPROVAL => format!("{level}: a critical operation needs a human's approval"),
        codes::CRITICAL_FLAGGED_FOR_REVIEW => {
            format!("{level} auto: a critical operation executes and is flagged for review")
        }
        _ => format!("{level} lets this operation execute"),
    }
}

/// The built-in decision (no role contract, no Policy).
pub fn builtin_decision(input: &DecisionInput) -> Decision {
    let src = ReasonSource::Builtin;
    let env = &input.environment;
    let action = &input.action;

    // The environment's cap, raised by an active elevation where the environment allows one.
    let elevation = input.emergency.as_ref().map(|e| e.level);
    let cap = environment_cap(env.max_level, elevation, env.emergency_max);
    let level = input.level.min(cap);
    let mut d = Decision::new(Verdict::Allow, level);

    if let Some(e) = &input.emergency {
        match env.emergency_max {
            None => d.tighten(
                Verdict::Allow,
                codes::EMERGENCY_NOT_ALLOWED,
                format!(
                    "environment {:?} allows no emergency elevation; the elevation to {} is ignored",
                    env.name, e.level
                ),
                &src,
            ),
            Some(_) if cap > env.max_level => d.tighten(
                Verdict::Allow,
                codes::EMERGENCY_ELEVATION,
                format!("an emergency elevation raises the cap of {:?} from {} to {cap}", env.name, env.max_level),
                &src,
            ),
            Some(_) => {}
        }
    }
    if input.level > cap {
        d.tighten(
            Verdict::Allow,
            codes::LEVEL_CAPPED,
            format!("level {} is above the cap {cap} of environment {:?}; {cap} applies", input.level, env.name),
            &src,
        );
    }

    let rule = level_verdict(level, action.operation_type, action.critical);
    d.tighten(rule.verdict, rule.code, level_message(level, rule.code), &src);
    if rule.review {
        d.oblige(Obligation::Review);
    }

    if production_requires_approval(env.class, action.critical) {
        d.tighten(
            Verdict::RequireApproval,
            codes::PRODUCTION_CRITICAL,
            "production: a critical operation needs a human's approval at every level",
            &src,
        );
    }

    if !action.redact_fields.is_empty() {
        d.oblige(Obligation::Redact { fields: action.redact_fields.clone() });
    }
    if let Some(limit) = action.rate_limit_per_minute {
        rate_limit(&mut d, limit, RateScope::Tool, input, &src);
    }
    d.normalize_obligations();
    d
}

/// Add a rate-limit obligation, and deny when the calls already made reach it.
pub(crate) fn rate_limit(
    d: &mut Decision,
    per_minute: u32,
    scope: RateScope,
    input: &DecisionInput,
    src: &ReasonSource,
) {
    d.oblige(Obligation::RateLimit { per_minute, scope });
    let (count, what) = match scope {
        RateScope::Tool => (input.recent_calls.tool_last_minute, "calls of this tool"),
        RateScope::Run => (input.recent_calls.all_last_minute, "calls"),
    };
    if count >= per_minute {
        d.tighten(
            Verdict::Deny,
            codes::RATE_LIMITED,
            format!("{count} {what} in the last minute; the limit is {per_minute} per minute"),
            src,
        );
    }
}
