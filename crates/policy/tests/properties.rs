//! Invariants over random inputs, random role contracts and random Policies:
//! contracts and Policies only tighten; no Policy turns a deny into anything else; more autonomy
//! never makes the built-in answer stricter; criticality never makes it looser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::LazyLock;

use agentplane_api::{EnvironmentClass, OperationType};
use agentplane_policy::*;
use proptest::prelude::*;
use serde_json::json;

/// A policy with a time limit of 5 ms for the one that loops, 10 s for the others (a stalled
/// test machine must not make an ordinary policy time out and the determinism check flaky).
fn compile(name: &str, source: &str) -> RegoPolicy {
    let timeout =
        if name.starts_with("loop") { std::time::Duration::from_millis(5) } else { std::time::Duration::from_secs(10) };
    RegoPolicy::compile_with_limits(
        name,
        &[agentplane_api::RegoModule { name: "main".into(), rego: source.into() }],
        &RegoLimits { timeout, ..RegoLimits::default() },
    )
    .unwrap()
}

/// Policies of every kind a Policy can be: a constant answer of each verdict, input-dependent
/// answers, no opinion, an error, a malformed answer, one that adds obligations, one that loops.
static POLICIES: LazyLock<Vec<RegoPolicy>> = LazyLock::new(|| {
    let mut out: Vec<RegoPolicy> = Verdict::ALL
        .iter()
        .map(|v| {
            compile(&format!("always-{v}"), &format!("package agentplane\n\ndecision := {{\"verdict\": \"{v}\"}}\n"))
        })
        .collect();
    let sources = [
        ("undefined", "package agentplane\n\ndecision := {\"verdict\": \"deny\"} if input.action.tool == \"never\"\n"),
        (
            "allow-criticals",
            "package agentplane\n\ndecision := {\"verdict\": \"allow\", \"reasons\": [\"trust me\"]} if input.action.critical\n",
        ),
        (
            "deny-prod-exec",
            "package agentplane\n\nimport rego.v1\n\ndecision := {\"verdict\": \"deny\"} if {\n  input.environment.class == \"production\"\n  input.action.operationType == \"exec\"\n}\n",
        ),
        ("echo-baseline", "package agentplane\n\ndecision := {\"verdict\": input.baseline.verdict}\n"),
        (
            "loosen-baseline",
            "package agentplane\n\nimport rego.v1\n\ndecision := {\"verdict\": \"allow\"} if input.baseline.verdict != \"allow\"\n",
        ),
        (
            "error-on-net",
            "package agentplane\n\nimport rego.v1\n\ndecision := {\"verdict\": \"allow\"} if {\n  input.action.operationType == \"network\"\n  x := no_such_function(1)\n  x\n}\n",
        ),
        (
            "malformed-on-tool-b",
            "package agentplane\n\ndecision := {\"verdict\": \"allow\"} if input.action.tool != \"b.write\"\n\ndecision := {\"verdict\": \"maybe\"} if input.action.tool == \"b.write\"\n",
        ),
        (
            "obligations",
            "package agentplane\n\ndecision := {\"verdict\": \"allow\", \"obligations\": [{\"type\": \"redact\", \"fields\": [\"secret\"]}, {\"type\": \"rateLimit\", \"perMinute\": 7, \"scope\": \"run\"}]}\n",
        ),
        (
            "loop-on-exec",
            "package agentplane\n\nimport rego.v1\n\nr := numbers.range(1, 5000)\n\ndecision := {\"verdict\": \"allow\"} if {\n  input.action.operationType == \"exec\"\n  count([1 | some a in r; some b in r; a == b + 10000]) > 0\n}\n",
        ),
    ];
    for (name, src) in sources {
        out.push(compile(name, src));
    }
    out
});

static CONTRACTS: LazyLock<Vec<CompiledContract>> = LazyLock::new(|| {
    [
        json!({"name": "open"}),
        json!({"name": "a-only", "allowedTools": ["a.*"]}),
        json!({"name": "approve-b", "requireApproval": ["b.*"]}),
        json!({"name": "schema", "inputSchemas": {"a.write": {"type": "object", "required": ["path"]}}}),
        json!({"name": "bounded", "sideEffectBounds": {"maxFilesChanged": 5, "maxCallsPerMinute": 8}}),
        json!({"name": "readers", "sideEffectBounds": {"allowedOperationTypes": ["read", "monitoring_update"]}}),
    ]
    .into_iter()
    .map(|v| CompiledContract::compile(&serde_json::from_value(v).unwrap()).unwrap())
    .collect()
});

fn level() -> impl Strategy<Value = TakeoverLevel> {
    proptest::sample::select(TakeoverLevel::ALL.to_vec())
}

fn class() -> impl Strategy<Value = EnvironmentClass> {
    proptest::sample::select(ENVIRONMENT_CLASSES.to_vec())
}

fn op() -> impl Strategy<Value = OperationType> {
    proptest::sample::select(OPERATION_TYPES.to_vec())
}

prop_compose! {
    fn decision_input()(
        class in class(),
        max in level(),
        emergency_max in proptest::option::of(level()),
        elevation in proptest::option::of(level()),
        lvl in level(),
        op in op(),
        critical in any::<bool>(),
        tool in proptest::sample::select(vec!["a.read", "a.write", "b.write", "c.exec", "never"]),
        args in proptest::sample::select(vec![json!({"path": "x"}), json!({}), json!(null), json!({"path": 3, "secret": "s"})]),
        tool_calls in 0u32..12,
        all_calls in 0u32..12,
        rate in proptest::option::of(0u32..12),
        files in 0u32..8,
        redact in proptest::collection::vec("[a-z]{1,4}", 0..3),
    ) -> DecisionInput {
        DecisionInput {
            subject: Subject { kind: SubjectKind::Agent, id: "ns/agent".into(), roles: vec![] },
            action: Action {
                tool: tool.into(),
                operation: None,
                operation_type: op,
                critical,
                arguments: args,
                rate_limit_per_minute: rate,
                redact_fields: redact,
            },
            resource: None,
            environment: EnvironmentContext { name: "env".into(), class, max_level: max, emergency_max },
            level: lvl,
            emergency: elevation.map(|level| Emergency { level, reason: None, authorized_by: None }),
            recent_calls: RecentCalls { tool_last_minute: tool_calls, all_last_minute: all_calls },
            run_usage: RunUsage { files_changed: files },
        }
    }
}

fn pick<T>(all: &'static [T], idx: &[usize]) -> Vec<&'static T> {
    idx.iter().map(|&i| &all[i % all.len()]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn contracts_and_policies_only_tighten(
        input in decision_input(),
        contract_idx in proptest::collection::vec(0usize..64, 0..3),
        policy_idx in proptest::collection::vec(0usize..64, 0..4),
    ) {
        let contracts = pick(&CONTRACTS, &contract_idx);
        let policies: Vec<RegoPolicy> = pick(&POLICIES, &policy_idx).into_iter().cloned().collect();
        let builtin = builtin_decision(&input);
        let with_contracts = DecisionPoint::default().decide(&input, &contracts);
        let full = DecisionPoint::new(policies.clone()).decide(&input, &contracts);

        prop_assert!(with_contracts.verdict >= builtin.verdict);
        prop_assert!(full.verdict >= with_contracts.verdict);
        prop_assert!(full.verdict >= builtin.verdict);
        if builtin.verdict == Verdict::Deny {
            prop_assert_eq!(full.verdict, Verdict::Deny, "a deny was turned into {:?}", full.verdict);
        }
        // A constant Policy's verdict is a floor.
        for p in &policies {
            if let Some(v) = p.name().strip_prefix("always-").and_then(Verdict::parse) {
                prop_assert!(full.verdict >= v, "{} answered {v}, final {:?}", p.name(), full.verdict);
            }
        }
        // The built-in reasons and obligations survive the later stages.
        for r in &builtin.reasons {
            prop_assert!(full.reasons.contains(r));
        }
        for o in &builtin.obligations {
            let kept = full.obligations.iter().any(|f| match (o, f) {
                (Obligation::Redact { fields: a }, Obligation::Redact { fields: b }) => a.iter().all(|x| b.contains(x)),
                (Obligation::RateLimit { per_minute: a, scope: s }, Obligation::RateLimit { per_minute: b, scope: t }) => s == t && b <= a,
                (a, b) => a == b,
            });
            prop_assert!(kept, "{o:?} lost: {:?}", full.obligations);
        }
        // Every verdict is explained by a reason that argues for it.
        prop_assert!(full.reasons.iter().any(|r| r.verdict == full.verdict), "{full:#?}");
        // Obligations are normalised: at most one of each kind and scope.
        let mut kinds: Vec<String> = full.obligations.iter().map(|o| match o {
            Obligation::Redact { .. } => "redact".to_owned(),
            Obligation::RateLimit { scope, .. } => format!("rate-{scope:?}"),
            Obligation::Review => "review".to_owned(),
        }).collect();
        let n = kinds.len();
        kinds.dedup();
        prop_assert_eq!(kinds.len(), n);
    }

    #[test]
    fn no_policy_turns_a_deny_into_anything_else(
        input in decision_input(),
        policy_idx in proptest::collection::vec(0usize..64, 1..4),
    ) {
        // Force a built-in deny (observe level, a change), then throw any Policies at it.
        let mut input = input;
        input.level = TakeoverLevel::L1;
        if input.action.operation_type == OperationType::Read {
            input.action.operation_type = OperationType::Write;
        }
        prop_assert_eq!(builtin_decision(&input).verdict, Verdict::Deny);
        let policies: Vec<RegoPolicy> = pick(&POLICIES, &policy_idx).into_iter().cloned().collect();
        let d = DecisionPoint::new(policies).decide(&input, &[]);
        prop_assert_eq!(d.verdict, Verdict::Deny);
    }

    #[test]
    fn more_autonomy_never_tightens_the_builtin_answer(input in decision_input(), a in level(), b in level()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let mut low = input.clone();
        low.level = lo;
        let mut high = input;
        high.level = hi;
        prop_assert!(builtin_decision(&high).verdict <= builtin_decision(&low).verdict);
    }

    #[test]
    fn criticality_never_loosens_the_builtin_answer(input in decision_input()) {
        let mut plain = input.clone();
        plain.action.critical = false;
        let mut critical = input;
        critical.action.critical = true;
        prop_assert!(builtin_decision(&critical).verdict >= builtin_decision(&plain).verdict);
    }

    #[test]
    fn production_is_never_looser_than_any_other_class(input in decision_input(), other in class()) {
        // Each environment at its class's default cap.
        let mut prod = input.clone();
        prod.environment.class = EnvironmentClass::Production;
        prod.environment.max_level = TakeoverLevel::class_defaults(EnvironmentClass::Production).0;
        let mut elsewhere = input;
        elsewhere.environment.class = other;
        elsewhere.environment.max_level = TakeoverLevel::class_defaults(other).0;
        prop_assert!(builtin_decision(&prod).verdict >= builtin_decision(&elsewhere).verdict);
    }

    #[test]
    fn the_level_applied_never_exceeds_the_cap(input in decision_input()) {
        let d = builtin_decision(&input);
        let elevation = input.emergency.as_ref().map(|e| e.level);
        prop_assert!(d.level <= input.level);
        prop_assert!(d.level <= environment_cap(input.environment.max_level, elevation, input.environment.emergency_max));
    }

    #[test]
    fn decisions_are_deterministic(input in decision_input(), policy_idx in proptest::collection::vec(0usize..64, 0..3)) {
        let policies: Vec<RegoPolicy> = pick(&POLICIES, &policy_idx).into_iter().cloned().collect();
        // The looping policy may stop at a different point, but always with a deny.
        let point = DecisionPoint::new(policies);
        let a = point.decide(&input, &[]);
        let b = point.decide(&input, &[]);
        prop_assert_eq!(a.verdict, b.verdict);
        prop_assert_eq!(a.obligations, b.obligations);
    }

    #[test]
    fn the_decision_round_trips_through_json(input in decision_input()) {
        let d = DecisionPoint::new(vec![POLICIES[4 + 3].clone()]).decide(&input, &[]);
        let back: Decision = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        prop_assert_eq!(back, d);
        let back: DecisionInput = serde_json::from_value(serde_json::to_value(&input).unwrap()).unwrap();
        prop_assert_eq!(back, input);
    }
}
