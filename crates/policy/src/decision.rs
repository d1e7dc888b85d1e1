//! The answer of the decision point: a verdict, the reasons for it, and obligations.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::level::TakeoverLevel;

/// What happens to one tool call.
///
/// The variants are declared in order of **strictness**, and `Ord` follows it:
/// `Allow < RequireApproval < SuggestOnly < Deny`. Strictness is "how little of the call can
/// happen": `allow` executes now; `require_approval` executes the agent's own call once a human
/// approves it; `suggest_only` never executes the call (it is recorded and answered to the agent as
/// a suggestion, a human may act on it by hand); `deny` does nothing. Combining two answers keeps
/// the stricter one ([`Verdict::tighten`]), which is what "may only tighten" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    RequireApproval,
    SuggestOnly,
    Deny,
}

impl Verdict {
    /// Every verdict, least strict first.
    pub const ALL: [Verdict; 4] = [Verdict::Allow, Verdict::RequireApproval, Verdict::SuggestOnly, Verdict::Deny];

    /// The stricter of the two.
    #[must_use]
    pub fn tighten(self, other: Verdict) -> Verdict {
        self.max(other)
    }

    /// 0 (`allow`) to 3 (`deny`).
    pub fn strictness(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::RequireApproval => "require_approval",
            Verdict::SuggestOnly => "suggest_only",
            Verdict::Deny => "deny",
        }
    }

    /// Parse the wire name (`allow`, `require_approval`, `suggest_only`, `deny`).
    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who gave a reason: the built-in level rules, a role contract, or a Rego Policy.
///
/// Serialised as `"builtin"`, `"contract:<name>"` or `"policy:<name>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReasonSource {
    Builtin,
    Contract(String),
    Policy(String),
}

impl fmt::Display for ReasonSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReasonSource::Builtin => f.write_str("builtin"),
            ReasonSource::Contract(n) => write!(f, "contract:{n}"),
            ReasonSource::Policy(n) => write!(f, "policy:{n}"),
        }
    }
}

impl Serialize for ReasonSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReasonSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s == "builtin" {
            Ok(ReasonSource::Builtin)
        } else if let Some(n) = s.strip_prefix("contract:") {
            Ok(ReasonSource::Contract(n.to_owned()))
        } else if let Some(n) = s.strip_prefix("policy:") {
            Ok(ReasonSource::Policy(n.to_owned()))
        } else {
            Err(serde::de::Error::custom(format!("unknown reason source {s:?}")))
        }
    }
}

/// Why a verdict was given. `code` is a stable CamelCase string (see [`codes`]; a Policy may use
/// its own), `message` is for humans and never contains argument values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    pub code: String,
    pub message: String,
    pub source: ReasonSource,
    /// The verdict this reason argues for.
    pub verdict: Verdict,
}

/// Stable reason codes of the built-in rules and role contracts.
pub mod codes {
    /// The level lets this operation execute.
    pub const LEVEL_PERMITS: &str = "LevelPermits";
    /// L1 observe: only reads execute.
    pub const LEVEL_OBSERVE_ONLY: &str = "LevelObserveOnly";
    /// L2 suggest: the call becomes a suggestion for a human.
    pub const LEVEL_SUGGEST_ONLY: &str = "LevelSuggestOnly";
    /// L1–L3: a critical operation needs a human's approval.
    pub const CRITICAL_NEEDS_APPROVAL: &str = "CriticalNeedsApproval";
    /// L4: a critical operation executes and is flagged for review.
    pub const CRITICAL_FLAGGED_FOR_REVIEW: &str = "CriticalFlaggedForReview";
    /// Production: a critical operation needs approval whatever the level.
    pub const PRODUCTION_CRITICAL: &str = "ProductionCriticalNeedsApproval";
    /// The level given was above the environment's cap and was lowered to it.
    pub const LEVEL_CAPPED: &str = "LevelCapped";
    /// An active emergency elevation raised the environment's cap.
    pub const EMERGENCY_ELEVATION: &str = "EmergencyElevation";
    /// An emergency elevation was given for an environment that allows none; it was ignored.
    pub const EMERGENCY_NOT_ALLOWED: &str = "EmergencyNotAllowed";
    /// A rate limit is reached.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// A role contract does not list the tool.
    pub const TOOL_NOT_ALLOWED: &str = "ToolNotAllowed";
    /// A role contract does not allow this operation type.
    pub const OPERATION_TYPE_NOT_ALLOWED: &str = "OperationTypeNotAllowed";
    /// The arguments do not match the role contract's input schema for the tool.
    pub const INVALID_ARGUMENTS: &str = "InvalidArguments";
    /// A role contract lists the tool as always needing approval.
    pub const CONTRACT_REQUIRES_APPROVAL: &str = "ContractRequiresApproval";
    /// A role contract's side-effect bound would be exceeded.
    pub const SIDE_EFFECT_BOUND: &str = "SideEffectBoundExceeded";
    /// A Policy's own reason, when it gives no code.
    pub const POLICY_DECISION: &str = "PolicyDecision";
    /// A Policy failed to evaluate (error, time limit, malformed answer, input too large): deny.
    pub const POLICY_ERROR: &str = "PolicyError";
}

/// Where a rate limit counts calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateScope {
    /// Calls of this tool by this run (`recentCalls.toolLastMinute`).
    Tool,
    /// All calls by this run (`recentCalls.allLastMinute`).
    Run,
}

/// What the caller (the gateway) must do besides following the verdict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Obligation {
    /// Replace the values of these argument/result fields before anything is logged or recorded.
    Redact { fields: Vec<String> },
    /// Count the call against this limit; the decision already denied it if the limit was reached.
    RateLimit { per_minute: u32, scope: RateScope },
    /// Execute, but flag the call for a human's review afterwards (L4 critical operations).
    Review,
}

/// The decision for one tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub verdict: Verdict,
    /// The level the built-in rules applied (the input level, capped by the environment).
    pub level: TakeoverLevel,
    /// Every reason given, in the order the stages ran (built-in, contracts, policies).
    pub reasons: Vec<Reason>,
    /// Normalised: at most one `redact` (fields sorted, unique), one `rateLimit` per scope (the
    /// lowest), one `review`.
    pub obligations: Vec<Obligation>,
}

impl Decision {
    /// A decision with no reasons yet.
    pub fn new(verdict: Verdict, level: TakeoverLevel) -> Self {
        Decision { verdict, level, reasons: Vec::new(), obligations: Vec::new() }
    }

    /// Tighten the verdict to at least `verdict` and record why.
    pub fn tighten(&mut self, verdict: Verdict, code: &str, message: impl Into<String>, source: &ReasonSource) {
        self.verdict = self.verdict.tighten(verdict);
        self.reasons.push(Reason { code: code.to_owned(), message: message.into(), source: source.clone(), verdict });
    }

    /// Whether any reason has this code.
    pub fn has_reason(&self, code: &str) -> bool {
        self.reasons.iter().any(|r| r.code == code)
    }

    /// Add an obligation (normalised by [`Decision::normalize_obligations`]).
    pub fn oblige(&mut self, obligation: Obligation) {
        self.obligations.push(obligation);
    }

    /// Merge redactions, keep the lowest rate limit per scope, keep one review; stable order
    /// (redact, rate limits by scope, review).
    pub fn normalize_obligations(&mut self) {
        let mut fields = BTreeSet::new();
        let mut tool: Option<u32> = None;
        let mut run: Option<u32> = None;
        let mut review = false;
        for o in self.obligations.drain(..) {
            match o {
                Obligation::Redact { fields: f } => fields.extend(f),
                Obligation::RateLimit { per_minute, scope: RateScope::Tool } => {
                    tool = Some(tool.map_or(per_minute, |t| t.min(per_minute)));
                }
                Obligation::RateLimit { per_minute, scope: RateScope::Run } => {
                    run = Some(run.map_or(per_minute, |t| t.min(per_minute)));
                }
                Obligation::Review => review = true,
            }
        }
        if !fields.is_empty() {
            self.obligations.push(Obligation::Redact { fields: fields.into_iter().collect() });
        }
        if let Some(per_minute) = tool {
            self.obligations.push(Obligation::RateLimit { per_minute, scope: RateScope::Tool });
        }
        if let Some(per_minute) = run {
            self.obligations.push(Obligation::RateLimit { per_minute, scope: RateScope::Run });
        }
        if review {
            self.obligations.push(Obligation::Review);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strictness_order_is_allow_approval_suggest_deny() {
        let mut sorted = Verdict::ALL.to_vec();
        sorted.sort();
        assert_eq!(sorted, vec![Verdict::Allow, Verdict::RequireApproval, Verdict::SuggestOnly, Verdict::Deny]);
        for a in Verdict::ALL {
            for b in Verdict::ALL {
                let t = a.tighten(b);
                assert!(t >= a && t >= b);
                assert!(t == a || t == b);
                assert_eq!(t, b.tighten(a));
            }
            assert_eq!(Verdict::parse(a.as_str()), Some(a));
            assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
        }
        assert_eq!(Verdict::parse("Allow"), None);
    }

    #[test]
    fn reason_source_wire_form() {
        for (s, text) in [
            (ReasonSource::Builtin, "builtin"),
            (ReasonSource::Contract("reviewer".into()), "contract:reviewer"),
            (ReasonSource::Policy("no-prod-deletes".into()), "policy:no-prod-deletes"),
        ] {
            assert_eq!(serde_json::to_value(&s).unwrap(), json!(text));
            assert_eq!(serde_json::from_value::<ReasonSource>(json!(text)).unwrap(), s);
        }
        assert!(serde_json::from_value::<ReasonSource>(json!("root")).is_err());
    }

    #[test]
    fn obligations_are_normalised() {
        let mut d = Decision::new(Verdict::Allow, TakeoverLevel::L3);
        d.oblige(Obligation::Review);
        d.oblige(Obligation::Redact { fields: vec!["token".into(), "password".into()] });
        d.oblige(Obligation::RateLimit { per_minute: 30, scope: RateScope::Tool });
        d.oblige(Obligation::Redact { fields: vec!["token".into()] });
        d.oblige(Obligation::RateLimit { per_minute: 10, scope: RateScope::Tool });
        d.oblige(Obligation::RateLimit { per_minute: 100, scope: RateScope::Run });
        d.oblige(Obligation::Review);
        d.normalize_obligations();
        assert_eq!(
            d.obligations,
            vec![
                Obligation::Redact { fields: vec!["password".into(), "token".into()] },
                Obligation::RateLimit { per_minute: 10, scope: RateScope::Tool },
                Obligation::RateLimit { per_minute: 100, scope: RateScope::Run },
                Obligation::Review,
            ]
        );
        assert_eq!(
            serde_json::to_value(&d.obligations[1]).unwrap(),
            json!({"type": "rateLimit", "perMinute": 10, "scope": "tool"})
        );
        assert_eq!(serde_json::to_value(&d.obligations[3]).unwrap(), json!({"type": "review"}));
    }
}
