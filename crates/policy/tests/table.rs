//! Every cell of (environment class × level asked × operation type × criticality × emergency
//! elevation) against an oracle written here, independently of the crate, from the rules as
//! `docs/governance.md` states them in prose:
//!
//! - the level that applies is min(level asked, cap), the cap being the class's maximum
//!   (development 5, test 4, pre-production 3, production 2), raised to an active elevation's
//!   level when the environment allows emergencies;
//! - a non-critical read is allowed at every level;
//! - L1: a critical read needs approval, anything else is denied;
//! - L2: a critical read needs approval, anything else is a suggestion only;
//! - L3: critical needs approval, the rest executes;
//! - L4: everything executes, critical operations carry a review obligation;
//! - L5: everything executes;
//! - production: a critical operation needs at least approval, whatever the level.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentplane_api::{EnvironmentClass, OperationType};
use agentplane_policy::*;
use common::input;

fn class_cap(class: EnvironmentClass) -> u8 {
    match class {
        EnvironmentClass::Development => 5,
        EnvironmentClass::Test => 4,
        EnvironmentClass::PreProduction => 3,
        EnvironmentClass::Production => 2,
    }
}

/// `(verdict, review, level applied)` by the prose rules.
fn oracle(
    class: EnvironmentClass,
    asked: u8,
    read: bool,
    critical: bool,
    elevation: Option<u8>,
) -> (Verdict, bool, u8) {
    let cap = match elevation {
        Some(e) => class_cap(class).max(e),
        None => class_cap(class),
    };
    let l = asked.min(cap);
    let mut v = if read && !critical {
        Verdict::Allow
    } else {
        match l {
            1 if read => Verdict::RequireApproval,
            1 => Verdict::Deny,
            2 if read => Verdict::RequireApproval,
            2 => Verdict::SuggestOnly,
            3 if critical => Verdict::RequireApproval,
            _ => Verdict::Allow,
        }
    };
    if class == EnvironmentClass::Production && critical && v == Verdict::Allow {
        v = Verdict::RequireApproval;
    }
    (v, l == 4 && critical, l)
}

fn level(n: u8) -> TakeoverLevel {
    TakeoverLevel::from_u8(n).unwrap()
}

#[test]
fn every_cell_follows_the_documented_rules() {
    let mut cells = 0;
    for class in ENVIRONMENT_CLASSES {
        for asked in 1..=5u8 {
            for op in OPERATION_TYPES {
                for critical in [false, true] {
                    for elevation in [None, Some(1), Some(2), Some(3), Some(4), Some(5)] {
                        let mut i = input(class, level(asked), op, critical);
                        if let Some(e) = elevation {
                            i.environment.emergency_max = Some(TakeoverLevel::L5);
                            i.emergency = Some(Emergency { level: level(e), reason: None, authorized_by: None });
                        }
                        let d = builtin_decision(&i);
                        let (want, review, applied) =
                            oracle(class, asked, op == OperationType::Read, critical, elevation);
                        let cell =
                            format!("{class:?} asked L{asked} {op:?} critical={critical} elevation={elevation:?}");
                        assert_eq!(d.verdict, want, "{cell}: {d:#?}");
                        assert_eq!(d.level.as_u8(), applied, "{cell}");
                        assert_eq!(d.obligations.contains(&Obligation::Review), review, "{cell}");
                        assert_eq!(d.has_reason(codes::LEVEL_CAPPED), asked > applied, "{cell}");
                        assert_eq!(
                            d.has_reason(codes::PRODUCTION_CRITICAL),
                            class == EnvironmentClass::Production && critical,
                            "{cell}"
                        );
                        assert_eq!(
                            d.has_reason(codes::EMERGENCY_ELEVATION),
                            elevation.is_some_and(|e| e > class_cap(class)),
                            "{cell}"
                        );
                        // Every verdict is explained by a reason that argues for it.
                        assert!(d.reasons.iter().any(|r| r.verdict == d.verdict), "{cell}");
                        assert!(d.reasons.iter().all(|r| r.source == ReasonSource::Builtin));
                        cells += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cells, 4 * 5 * 12 * 2 * 6);
}

#[test]
fn an_elevation_is_ignored_where_emergencies_are_not_allowed() {
    for class in ENVIRONMENT_CLASSES {
        let mut i = input(class, TakeoverLevel::L5, OperationType::Deployment, false);
        i.emergency =
            Some(Emergency { level: TakeoverLevel::L5, reason: Some("incident".into()), authorized_by: None });
        let d = builtin_decision(&i);
        assert_eq!(d.level.as_u8(), class_cap(class));
        assert!(d.has_reason(codes::EMERGENCY_NOT_ALLOWED));
        assert_eq!(d.verdict, oracle(class, 5, false, false, None).0);
    }
}

#[test]
fn an_elevation_is_bounded_by_the_environment_ceiling() {
    let mut i = input(EnvironmentClass::Production, TakeoverLevel::L5, OperationType::Write, false);
    i.environment.emergency_max = Some(TakeoverLevel::L3);
    i.emergency = Some(Emergency { level: TakeoverLevel::L5, reason: None, authorized_by: Some("oncall".into()) });
    let d = builtin_decision(&i);
    assert_eq!(d.level, TakeoverLevel::L3);
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(d.has_reason(codes::EMERGENCY_ELEVATION));
}

#[test]
fn an_environment_with_a_lower_cap_than_its_class_is_obeyed() {
    // A development environment configured with maxTakeoverLevel 2.
    let mut i = input(EnvironmentClass::Development, TakeoverLevel::L5, OperationType::Write, false);
    i.environment.max_level = TakeoverLevel::L2;
    let d = builtin_decision(&i);
    assert_eq!(d.level, TakeoverLevel::L2);
    assert_eq!(d.verdict, Verdict::SuggestOnly);
    assert!(d.has_reason(codes::LEVEL_CAPPED));
}

#[test]
fn the_tool_rate_limit_denies_at_the_limit() {
    let mut i = input(EnvironmentClass::Development, TakeoverLevel::L5, OperationType::Network, false);
    i.action.rate_limit_per_minute = Some(3);
    for (count, want) in [(0, Verdict::Allow), (2, Verdict::Allow), (3, Verdict::Deny), (50, Verdict::Deny)] {
        i.recent_calls.tool_last_minute = count;
        i.recent_calls.all_last_minute = 0;
        let d = builtin_decision(&i);
        assert_eq!(d.verdict, want, "{count} calls");
        assert_eq!(d.has_reason(codes::RATE_LIMITED), want == Verdict::Deny);
        assert_eq!(d.obligations, vec![Obligation::RateLimit { per_minute: 3, scope: RateScope::Tool }]);
    }
    // The tool's limit counts this tool's calls only.
    i.recent_calls = RecentCalls { tool_last_minute: 0, all_last_minute: 1000 };
    assert_eq!(builtin_decision(&i).verdict, Verdict::Allow);
    // A limit of zero stops every call.
    i.action.rate_limit_per_minute = Some(0);
    assert_eq!(builtin_decision(&i).verdict, Verdict::Deny);
}

#[test]
fn tool_redactions_become_an_obligation_at_every_verdict() {
    for lvl in TakeoverLevel::ALL {
        let mut i = input(EnvironmentClass::Development, lvl, OperationType::Exec, false);
        i.action.redact_fields = vec!["env.API_KEY".into(), "password".into(), "env.API_KEY".into()];
        let d = builtin_decision(&i);
        assert_eq!(d.obligations, vec![Obligation::Redact { fields: vec!["env.API_KEY".into(), "password".into()] }]);
    }
}

#[test]
fn level_verdict_is_the_documented_small_table() {
    use TakeoverLevel::*;
    let a = Verdict::Allow;
    let r = Verdict::RequireApproval;
    let s = Verdict::SuggestOnly;
    let x = Verdict::Deny;
    // rows: level; columns: read, critical read, other, critical other
    let table = [(L1, [a, r, x, x]), (L2, [a, r, s, s]), (L3, [a, r, a, r]), (L4, [a, a, a, a]), (L5, [a, a, a, a])];
    for (lvl, row) in table {
        let cols = [
            (OperationType::Read, false),
            (OperationType::Read, true),
            (OperationType::Write, false),
            (OperationType::Write, true),
        ];
        for ((op, critical), want) in cols.into_iter().zip(row) {
            let rule = level_verdict(lvl, op, critical);
            assert_eq!(rule.verdict, want, "{lvl} {op:?} critical={critical}");
            assert_eq!(rule.review, lvl == L4 && critical);
        }
    }
}
