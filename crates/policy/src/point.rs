//! The decision point: built-in rules, then role contracts, then Rego policies; each stage can
//! only tighten, and any failure denies.

use crate::builtin::{builtin_decision, rate_limit};
use crate::contract::CompiledContract;
use crate::decision::{Decision, Obligation, ReasonSource, Verdict, codes};
use crate::input::DecisionInput;
use crate::rego::{RegoLimits, RegoPolicy, rego_input};

/// The policy decision point for tool calls. Cheap to share (`Send + Sync`): build it when the
/// Policy resources change, keep it in an `Arc`, call [`DecisionPoint::decide`] from any thread.
#[derive(Debug, Clone, Default)]
pub struct DecisionPoint {
    policies: Vec<RegoPolicy>,
    limits: RegoLimits,
}

impl DecisionPoint {
    /// A decision point with these Policies (evaluated in this order) and the default input limits.
    pub fn new(policies: Vec<RegoPolicy>) -> Self {
        DecisionPoint { policies, limits: RegoLimits::default() }
    }

    /// Use these limits for the `input` document given to policies (`max_input_bytes`,
    /// `max_string_bytes`). Time and range limits are fixed when a policy is compiled
    /// ([`RegoPolicy::compile_with_limits`]).
    #[must_use]
    pub fn with_limits(mut self, limits: RegoLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn policies(&self) -> &[RegoPolicy] {
        &self.policies
    }

    /// Decide one call.
    ///
    /// 1. The built-in rules ([`builtin_decision`]).
    /// 2. Each role contract in `contracts`, in order.
    /// 3. Each Policy, in order, given the input document with `baseline` = the decision so far.
    ///
    /// Every stage can only make the verdict stricter ([`Verdict::tighten`]). Once the verdict is
    /// `deny` the later stages are skipped (nothing can change it). A Policy that fails in any way
    /// (error, time limit, panic, answer of the wrong shape, input too large) denies, with a
    /// `PolicyError` reason naming it.
    pub fn decide(&self, input: &DecisionInput, contracts: &[&CompiledContract]) -> Decision {
        let mut d = builtin_decision(input);
        for c in contracts {
            if d.verdict == Verdict::Deny {
                break;
            }
            c.apply(input, &mut d);
        }
        self.refine(input, d)
    }

    /// Step 3 of [`DecisionPoint::decide`] alone: let the Policies tighten a decision the caller
    /// made by other rules. Admission uses it for run starts, whose built-in rule is not the tool
    /// table (see `docs/governance.md`, "Run starts"). Same guarantees: only tighter, fail closed.
    pub fn refine(&self, input: &DecisionInput, mut d: Decision) -> Decision {
        if d.verdict != Verdict::Deny && !self.policies.is_empty() {
            d.normalize_obligations();
            match rego_input(input, &d, &self.limits) {
                Err(message) => {
                    d.tighten(Verdict::Deny, codes::POLICY_ERROR, message, &ReasonSource::Builtin);
                }
                Ok(doc) => {
                    for p in &self.policies {
                        let src = ReasonSource::Policy(p.name().to_owned());
                        match p.evaluate(&doc) {
                            Ok(None) => {}
                            Ok(Some(answer)) => {
                                let mut gave_reason = false;
                                for r in answer.bounded_reasons() {
                                    let (code, message) = r.parts();
                                    let code = code.unwrap_or_else(|| codes::POLICY_DECISION.to_owned());
                                    d.tighten(answer.verdict, &code, message, &src);
                                    gave_reason = true;
                                }
                                if !gave_reason && answer.verdict != Verdict::Allow {
                                    d.tighten(
                                        answer.verdict,
                                        codes::POLICY_DECISION,
                                        format!("policy {:?} answered {}", p.name(), answer.verdict),
                                        &src,
                                    );
                                }
                                for o in answer.obligations {
                                    match o {
                                        Obligation::RateLimit { per_minute, scope } => {
                                            rate_limit(&mut d, per_minute, scope, input, &src);
                                        }
                                        other => d.oblige(other),
                                    }
                                }
                            }
                            Err(message) => d.tighten(Verdict::Deny, codes::POLICY_ERROR, message, &src),
                        }
                        if d.verdict == Verdict::Deny {
                            break;
                        }
                    }
                }
            }
        }
        d.normalize_obligations();
        d
    }
}
