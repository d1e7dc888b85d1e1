//! Role contracts: compiled once, applied per call, only tightening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentplane_api::{EnvironmentClass, OperationType, RoleContract};
use agentplane_policy::*;
use common::{dev_write, input};
use serde_json::json;

fn contract(v: serde_json::Value) -> RoleContract {
    serde_json::from_value(v).unwrap()
}

fn compiled(v: serde_json::Value) -> CompiledContract {
    CompiledContract::compile(&contract(v)).unwrap()
}

fn decide(c: &CompiledContract, i: &DecisionInput) -> Decision {
    DecisionPoint::default().decide(i, &[c])
}

fn reason<'a>(d: &'a Decision, code: &str) -> &'a Reason {
    d.reasons.iter().find(|r| r.code == code).unwrap_or_else(|| panic!("no {code} in {d:#?}"))
}

#[test]
fn bad_contracts_are_rejected_with_the_field() {
    for (v, field) in [
        (json!({"name": "r", "inputSchemas": {"exec.run": {"type": "no-such-type"}}}), "inputSchemas[\"exec.run\"]"),
        (json!({"name": "r", "sideEffectBounds": {"maxFilesTouched": 3}}), "sideEffectBounds.maxFilesTouched"),
        (json!({"name": "r", "sideEffectBounds": {"maxFilesChanged": -1}}), "sideEffectBounds.maxFilesChanged"),
        (json!({"name": "r", "sideEffectBounds": {"maxCallsPerMinute": "ten"}}), "sideEffectBounds.maxCallsPerMinute"),
        (
            json!({"name": "r", "sideEffectBounds": {"allowedOperationTypes": ["read", "teleport"]}}),
            "sideEffectBounds.allowedOperationTypes",
        ),
    ] {
        match CompiledContract::compile(&contract(v.clone())) {
            Err(PolicyError::Contract { contract, field: f, .. }) => {
                assert_eq!(contract, "r");
                assert_eq!(f, field, "{v}");
            }
            other => panic!("{v}: {other:?}"),
        }
    }
}

#[test]
fn a_remote_schema_reference_is_not_fetched() {
    let v = json!({"name": "r", "inputSchemas": {"t": {"$ref": "https://example.invalid/schema.json"}}});
    assert!(CompiledContract::compile(&contract(v)).is_err());
}

#[test]
fn only_allowed_tools_may_be_called() {
    let c = compiled(json!({"name": "reviewer", "allowedTools": ["workspace.*", "memory.get"]}));
    for (tool, allowed) in [
        ("workspace.read", true),
        ("workspace.files.write", true),
        ("memory.get", true),
        ("memory.put", false),
        ("exec.run", false),
        ("workspace", false),
    ] {
        let mut i = dev_write();
        i.action.tool = tool.into();
        let d = decide(&c, &i);
        assert_eq!(d.verdict == Verdict::Deny, !allowed, "{tool}");
        if !allowed {
            assert_eq!(reason(&d, codes::TOOL_NOT_ALLOWED).source, ReasonSource::Contract("reviewer".into()));
        }
    }
    // An empty list restricts nothing.
    let open = compiled(json!({"name": "open"}));
    let mut i = dev_write();
    i.action.tool = "anything.at.all".into();
    assert_eq!(decide(&open, &i).verdict, Verdict::Allow);
}

#[test]
fn arguments_must_match_the_input_schema_and_values_never_reach_the_reason() {
    let c = compiled(json!({
        "name": "writer",
        "inputSchemas": {"workspace.write": {
            "type": "object",
            "required": ["path", "content"],
            "properties": {"path": {"type": "string", "pattern": "^src/"}, "content": {"type": "string"}},
            "additionalProperties": false
        }}
    }));
    let mut i = dev_write();
    assert_eq!(decide(&c, &i).verdict, Verdict::Allow, "src/main.rs matches");

    i.action.arguments = json!({"path": "/etc/shadow-SECRET", "content": "x", "token": "hunter2-SECRET"});
    let d = decide(&c, &i);
    assert_eq!(d.verdict, Verdict::Deny);
    let r = reason(&d, codes::INVALID_ARGUMENTS);
    assert!(r.message.contains("/path") && r.message.contains("pattern"), "{}", r.message);
    assert!(r.message.contains("additionalProperties"), "{}", r.message);
    assert!(!r.message.contains("SECRET"), "argument values must not leak: {}", r.message);

    i.action.arguments = json!("not an object");
    assert_eq!(decide(&c, &i).verdict, Verdict::Deny);

    // Other tools have no schema: not checked.
    i.action.tool = "workspace.read".into();
    assert_eq!(decide(&c, &i).verdict, Verdict::Allow);
}

#[test]
fn listed_tools_need_approval_but_stricter_answers_stay() {
    let c = compiled(json!({"name": "ops", "requireApproval": ["kubectl.*"]}));
    let mut i = input(EnvironmentClass::Development, TakeoverLevel::L5, OperationType::Deployment, false);
    i.action.tool = "kubectl.apply".into();
    let d = decide(&c, &i);
    assert_eq!(d.verdict, Verdict::RequireApproval);
    assert_eq!(reason(&d, codes::CONTRACT_REQUIRES_APPROVAL).verdict, Verdict::RequireApproval);

    // At L2 the call is a suggestion; approval is looser, so it stays a suggestion.
    i.level = TakeoverLevel::L2;
    assert_eq!(decide(&c, &i).verdict, Verdict::SuggestOnly);
    // At L1 it is denied and the contract is not even consulted.
    i.level = TakeoverLevel::L1;
    let d = decide(&c, &i);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(!d.has_reason(codes::CONTRACT_REQUIRES_APPROVAL));

    i.level = TakeoverLevel::L5;
    i.action.tool = "workspace.write".into();
    assert_eq!(decide(&c, &i).verdict, Verdict::Allow);
}

#[test]
fn calls_per_minute_are_bounded_across_tools() {
    let c = compiled(json!({"name": "busy", "sideEffectBounds": {"maxCallsPerMinute": 10}}));
    let mut i = dev_write();
    i.recent_calls = RecentCalls { tool_last_minute: 0, all_last_minute: 9 };
    let d = decide(&c, &i);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.obligations, vec![Obligation::RateLimit { per_minute: 10, scope: RateScope::Run }]);
    i.recent_calls.all_last_minute = 10;
    let d = decide(&c, &i);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(reason(&d, codes::RATE_LIMITED).source, ReasonSource::Contract("busy".into()));
}

#[test]
fn files_changed_are_bounded_for_changes_not_reads() {
    let c = compiled(json!({"name": "small", "sideEffectBounds": {"maxFilesChanged": 3}}));
    let mut i = dev_write();
    for (n, want) in [(0, Verdict::Allow), (3, Verdict::Allow), (4, Verdict::Deny)] {
        i.run_usage.files_changed = n;
        assert_eq!(decide(&c, &i).verdict, want, "{n} files");
    }
    i.action.operation_type = OperationType::Read;
    assert_eq!(decide(&c, &i).verdict, Verdict::Allow, "a read changes nothing");
}

#[test]
fn operation_types_can_be_restricted() {
    let c =
        compiled(json!({"name": "reader", "sideEffectBounds": {"allowedOperationTypes": ["read", "troubleshooting"]}}));
    for op in OPERATION_TYPES {
        let i = input(EnvironmentClass::Development, TakeoverLevel::L5, op, false);
        let allowed = matches!(op, OperationType::Read | OperationType::Troubleshooting);
        let d = decide(&c, &i);
        assert_eq!(d.verdict == Verdict::Deny, !allowed, "{op:?}");
        assert_eq!(d.has_reason(codes::OPERATION_TYPE_NOT_ALLOWED), !allowed);
    }
}

#[test]
fn several_contracts_all_apply() {
    let a = compiled(json!({"name": "a", "requireApproval": ["workspace.write"]}));
    let b = compiled(json!({"name": "b", "allowedTools": ["workspace.read"]}));
    let i = dev_write();
    let only_a = DecisionPoint::default().decide(&i, &[&a]);
    assert_eq!(only_a.verdict, Verdict::RequireApproval);
    let both = DecisionPoint::default().decide(&i, &[&a, &b]);
    assert_eq!(both.verdict, Verdict::Deny);
    assert!(both.has_reason(codes::CONTRACT_REQUIRES_APPROVAL) && both.has_reason(codes::TOOL_NOT_ALLOWED));
}

#[test]
fn the_agent_resource_contract_compiles() {
    let agent: agentplane_api::Agent = serde_json::from_value(json!({
        "apiVersion": "agentplane.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "fixer"},
        "spec": {
            "providerRef": {"name": "claude"},
            "role": {
                "name": "fixer",
                "allowedTools": ["workspace.*"],
                "requireApproval": ["workspace.delete"],
                "inputSchemas": {"workspace.delete": {"type": "object", "required": ["path"]}},
                "sideEffectBounds": {"maxFilesChanged": 20, "maxCallsPerMinute": 120}
            }
        }
    }))
    .unwrap();
    let c = CompiledContract::compile(agent.spec.role.as_ref().unwrap()).unwrap();
    assert_eq!(c.name(), "fixer");
    let mut i = dev_write();
    i.action.tool = "workspace.delete".into();
    i.action.arguments = json!({"path": "old.txt"});
    assert_eq!(decide(&c, &i).verdict, Verdict::RequireApproval);
}
