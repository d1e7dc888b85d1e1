//! Rego Policies: rejected on apply with the line, evaluated under limits, failing closed, and
//! only ever tightening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agentplane_api::{EnvironmentClass, OperationType, RegoModule};
use agentplane_policy::*;
use common::{compile, constant_policy, dev_write, input};
use serde_json::json;

fn compile_err(source: &str) -> PolicyError {
    compile("p", source).expect_err("the module must be rejected")
}

fn policy_error_reason(d: &Decision) -> &Reason {
    d.reasons.iter().find(|r| r.code == codes::POLICY_ERROR).expect("a PolicyError reason")
}

#[test]
fn a_module_that_does_not_parse_is_rejected_with_its_line() {
    let source = "package agentplane\n\nimport rego.v1\n\ndecision := {\"verdict\": \"deny\" if {\n  input.x\n}\n";
    let e = compile_err(source);
    assert_eq!(e.line(), Some(5), "{e}");
    match &e {
        PolicyError::Rego { policy, module, module_index, column, message, .. } => {
            assert_eq!(policy, "p");
            assert_eq!(module.as_deref(), Some("main"));
            assert_eq!(*module_index, Some(0));
            assert!(column.is_some());
            assert!(!message.is_empty() && !message.contains('\n'), "one line: {message:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.field_path().as_deref(), Some("spec.modules[0].rego"));
    assert!(e.to_string().contains("line 5"), "{e}");
}

#[test]
fn the_failing_module_is_named_among_several() {
    let modules = vec![
        RegoModule { name: "lib".into(), rego: "package agentplane.lib\n\nbig(x) := x > 10\n".into() },
        RegoModule {
            name: "main".into(),
            rego: "package agentplane\n\ndecision := {\n\n\n  \"verdict\" \"deny\"}\n".into(),
        },
    ];
    let e = RegoPolicy::compile("two", &modules).unwrap_err();
    match e {
        PolicyError::Rego { module, module_index, line, .. } => {
            assert_eq!(module.as_deref(), Some("main"));
            assert_eq!(module_index, Some(1));
            assert_eq!(line, Some(6));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_policy_without_the_decision_rule_is_rejected() {
    for source in ["package agentplane\n\nother := 1\n", "package elsewhere\n\ndecision := {\"verdict\": \"deny\"}\n"] {
        let e = compile_err(source);
        assert!(e.to_string().contains(ENTRYPOINT), "{e}");
    }
}

#[test]
fn errors_the_parser_cannot_see_are_rejected_on_apply_with_the_line() {
    // An unknown function on line 4, reached by the sample input.
    let e = compile_err("package agentplane\n\ndecision := {\"verdict\": v} if {\n  v := no_such_function(1)\n}\n");
    assert_eq!(e.line(), Some(4), "{e}");
    // A verdict that is not one of the four.
    let e = compile_err("package agentplane\n\ndecision := {\"verdict\": \"permit\"}\n");
    assert!(e.to_string().contains("verdict"), "{e}");
    // An unknown key in the answer.
    let e = compile_err("package agentplane\n\ndecision := {\"verdict\": \"deny\", \"why\": 1}\n");
    assert!(e.to_string().contains("why"), "{e}");
}

#[test]
fn an_oversized_module_is_rejected() {
    let mut source = String::from("package agentplane\n\ndecision := {\"verdict\": \"deny\"}\n");
    while source.len() <= agentplane_api::limits::MAX_REGO_BYTES {
        source.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let e = compile_err(&source);
    assert!(e.to_string().contains("limit"), "{e}");
}

#[test]
fn a_line_longer_than_1024_characters_is_rejected_with_its_line() {
    let long = format!("x := \"{}\"", "a".repeat(1100));
    let e = compile_err(&format!("package agentplane\n\n{long}\n\ndecision := {{\"verdict\": \"allow\"}}\n"));
    assert_eq!(e.line(), Some(3), "{e}");
}

#[test]
fn debug_output_names_the_policy_without_dumping_it() {
    let p = constant_policy("short", Verdict::Deny);
    let text = format!("{p:?}");
    assert!(text.contains("short") && text.contains("main"), "{text}");
    assert!(!text.contains("verdict"), "{text}");
}

#[test]
fn a_policy_that_loops_is_stopped_by_the_time_limit_and_denies() {
    // Accepted on apply (the sample input does not reach the loop), stopped at decision time.
    let source = r#"package agentplane

import rego.v1

r := numbers.range(1, 10000)

decision := {"verdict": "allow", "reasons": [sprintf("%d", [n])]} if {
  input.action.tool == "spin"
  n := count([1 | some a in r; some b in r; some c in r; a + b + c == -1])
}
"#;
    let limits = RegoLimits { timeout: Duration::from_millis(20), ..RegoLimits::default() };
    let policy =
        RegoPolicy::compile_with_limits("spinner", &[RegoModule { name: "main".into(), rego: source.into() }], &limits)
            .unwrap();
    let point = DecisionPoint::new(vec![policy]);

    // An ordinary call is not affected.
    assert_eq!(point.decide(&dev_write(), &[]).verdict, Verdict::Allow);

    let mut spin = dev_write();
    spin.action.tool = "spin".into();
    let started = Instant::now();
    let d = point.decide(&spin, &[]);
    let took = started.elapsed();
    assert_eq!(d.verdict, Verdict::Deny);
    let r = policy_error_reason(&d);
    assert_eq!(r.source, ReasonSource::Policy("spinner".into()));
    assert!(r.message.contains("time limit"), "{}", r.message);
    // 10^12 iterations would take hours; the limit stops it in about 20 ms (generous bound for a
    // loaded 2-core machine and a debug build).
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_policy_that_loops_on_every_input_is_still_accepted_and_denies() {
    let source = r#"package agentplane

import rego.v1

r := numbers.range(1, 10000)

decision := {"verdict": "allow"} if {
  count([1 | some a in r; some b in r; a == b + 100000]) > 0
}
"#;
    let limits = RegoLimits { timeout: Duration::from_millis(10), ..RegoLimits::default() };
    let policy =
        RegoPolicy::compile_with_limits("slow", &[RegoModule { name: "m".into(), rego: source.into() }], &limits)
            .unwrap();
    let d = DecisionPoint::new(vec![policy]).decide(&dev_write(), &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(policy_error_reason(&d).message.contains("time limit"));
}

#[test]
fn huge_ranges_are_refused_instead_of_allocated() {
    // The stock numbers.range would try to allocate 10^15 elements at once.
    let source = r#"package agentplane

decision := {"verdict": "allow"} if {
  input.action.tool == "big"
  count(numbers.range(0, 1000000000000000)) > 0
}
"#;
    let point = DecisionPoint::new(vec![compile("big", source).unwrap()]);
    let mut big = dev_write();
    big.action.tool = "big".into();
    let d = point.decide(&big, &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    let msg = &policy_error_reason(&d).message;
    assert!(msg.contains("numbers.range") && msg.contains("limit"), "{msg}");

    // A zero step (a division by zero in the stock builtin) is an error, not a crash.
    let source = r#"package agentplane

decision := {"verdict": "allow"} if {
  input.action.tool == "zero"
  count(numbers.range_step(0, 10, 0)) > 0
}
"#;
    let point = DecisionPoint::new(vec![compile("zero", source).unwrap()]);
    let mut zero = dev_write();
    zero.action.tool = "zero".into();
    assert_eq!(point.decide(&zero, &[]).verdict, Verdict::Deny);
}

#[test]
fn an_error_at_decision_time_denies_with_the_reason_and_line() {
    let source = "package agentplane\n\nimport rego.v1\n\ndecision := {\"verdict\": \"allow\"} if {\n  input.action.tool == \"boom\"\n  x := no_such_function(1)\n  x > 0\n}\n";
    let point = DecisionPoint::new(vec![compile("boom", source).unwrap()]);
    let mut boom = dev_write();
    boom.action.tool = "boom".into();
    let d = point.decide(&boom, &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    let r = policy_error_reason(&d);
    assert_eq!(r.source, ReasonSource::Policy("boom".into()));
    assert!(r.message.contains("line 7"), "{}", r.message);
}

#[test]
fn a_malformed_answer_at_decision_time_denies() {
    let source = "package agentplane\n\ndecision := {\"verdict\": \"allow\"}\n\ndecision := {\"verdict\": 7} if input.action.tool == \"odd\"\n";
    // Two definitions of a complete rule conflict only for the input that makes both true, so
    // the sample input does not see it and the call that does is denied.
    let policy = compile("odd", source).unwrap();
    let mut odd = dev_write();
    odd.action.tool = "odd".into();
    let d = DecisionPoint::new(vec![policy]).decide(&odd, &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    let msg = &policy_error_reason(&d).message;
    assert!(msg.contains("line 5") && msg.contains("conflicts"), "{msg}");

    let source = "package agentplane\n\ndecision := {\"verdict\": \"allow\"} if input.action.tool != \"odd\"\n\ndecision := \"deny\" if input.action.tool == \"odd\"\n";
    let point = DecisionPoint::new(vec![compile("odd2", source).unwrap()]);
    let d = point.decide(&odd, &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(policy_error_reason(&d).message.contains("verdict"));
}

#[test]
fn a_panic_inside_the_engine_denies() {
    // regorus's sprintf parses `%²d` as a width and panics on the superscript digit; the policy is
    // accepted (the sample input never reaches it) and the call is denied, the process unharmed.
    let source = "package agentplane\n\ndecision := {\"verdict\": \"allow\", \"reasons\": [sprintf(\"%\u{b2}d\", [1])]} if input.action.tool == \"fmt\"\n";
    let point = DecisionPoint::new(vec![compile("fmt", source).unwrap()]);
    let mut call = dev_write();
    call.action.tool = "fmt".into();
    let d = point.decide(&call, &[]);
    assert_eq!(d.verdict, Verdict::Deny, "{d:?}");
    assert!(d.has_reason(codes::POLICY_ERROR));
}

#[test]
fn undefined_means_no_opinion() {
    let source = "package agentplane\n\ndecision := {\"verdict\": \"deny\"} if input.action.tool == \"never\"\n";
    let point = DecisionPoint::new(vec![compile("quiet", source).unwrap()]);
    let d = point.decide(&dev_write(), &[]);
    assert_eq!(d, builtin_decision(&dev_write()), "an undefined decision changes nothing");
}

#[test]
fn a_policy_cannot_loosen_a_builtin_answer() {
    let allow = DecisionPoint::new(vec![constant_policy("yes", Verdict::Allow)]);
    for (level, op, critical, want) in [
        (TakeoverLevel::L1, OperationType::Exec, false, Verdict::Deny),
        (TakeoverLevel::L2, OperationType::Write, false, Verdict::SuggestOnly),
        (TakeoverLevel::L3, OperationType::Deployment, true, Verdict::RequireApproval),
    ] {
        let i = input(EnvironmentClass::Development, level, op, critical);
        assert_eq!(builtin_decision(&i).verdict, want);
        assert_eq!(allow.decide(&i, &[]).verdict, want, "{level} {op:?} critical={critical}");
    }
}

#[test]
fn a_policy_tightens_and_its_reasons_and_obligations_are_kept() {
    let source = r#"package agentplane

import rego.v1

decision := {
  "verdict": "require_approval",
  "reasons": [{"code": "NoPushToMain", "message": "pushes to main need a reviewer"}, "and a second reason"],
  "obligations": [{"type": "redact", "fields": ["token"]}, {"type": "review"}],
} if {
  input.action.tool == "git.push"
  input.action.arguments.branch == "main"
  input.baseline.verdict == "allow"
  "developer" in input.subject.roles
}
"#;
    let point = DecisionPoint::new(vec![compile("git", source).unwrap()]);
    let mut push = dev_write();
    push.action.tool = "git.push".into();
    push.action.arguments = json!({"branch": "main", "token": "s3cr3t"});
    let d = point.decide(&push, &[]);
    assert_eq!(d.verdict, Verdict::RequireApproval);
    let mine: Vec<_> = d.reasons.iter().filter(|r| r.source == ReasonSource::Policy("git".into())).collect();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].code, "NoPushToMain");
    assert_eq!(mine[1].code, codes::POLICY_DECISION);
    assert_eq!(mine[1].message, "and a second reason");
    assert_eq!(d.obligations, vec![Obligation::Redact { fields: vec!["token".into()] }, Obligation::Review]);

    push.action.arguments = json!({"branch": "feature"});
    assert_eq!(point.decide(&push, &[]).verdict, Verdict::Allow);
}

#[test]
fn a_policy_rate_limit_is_enforced_against_the_counts() {
    let source = r#"package agentplane

decision := {"verdict": "allow", "obligations": [{"type": "rateLimit", "perMinute": 5, "scope": "tool"}]}
"#;
    let point = DecisionPoint::new(vec![compile("slowly", source).unwrap()]);
    let mut call = dev_write();
    call.recent_calls.tool_last_minute = 4;
    let d = point.decide(&call, &[]);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.obligations, vec![Obligation::RateLimit { per_minute: 5, scope: RateScope::Tool }]);
    call.recent_calls.tool_last_minute = 5;
    let d = point.decide(&call, &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    let r = d.reasons.iter().find(|r| r.code == codes::RATE_LIMITED).unwrap();
    assert_eq!(r.source, ReasonSource::Policy("slowly".into()));
}

#[test]
fn policies_run_in_order_and_stop_at_the_first_deny() {
    let point = DecisionPoint::new(vec![
        constant_policy("first", Verdict::SuggestOnly),
        constant_policy("second", Verdict::Deny),
        constant_policy("third", Verdict::RequireApproval),
    ]);
    let d = point.decide(&dev_write(), &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    let sources: Vec<String> = d.reasons.iter().map(|r| r.source.to_string()).collect();
    assert_eq!(sources, vec!["builtin", "policy:first", "policy:second"]);
}

#[test]
fn policies_see_the_documented_input() {
    // Each field of the input document named in docs/governance.md, checked from Rego.
    let source = r#"package agentplane

import rego.v1

decision := {"verdict": "deny", "reasons": ["saw everything"]} if {
  input.subject.kind == "agent"
  input.subject.id == "team-a/fixer"
  input.action.tool == "workspace.write"
  input.action.operationType == "write"
  input.action.critical == false
  input.action.arguments.path == "src/main.rs"
  input.action.argumentsTruncated == false
  input.resource == "file:src/main.rs"
  input.environment.class == "test"
  input.environment.maxLevel == 4
  input.level == 3
  input.recentCalls.toolLastMinute == 2
  input.recentCalls.allLastMinute == 9
  input.runUsage.filesChanged == 1
  input.baseline.verdict == "allow"
  input.baseline.level == 3
  input.baseline.reasons[0].code == "LevelPermits"
  input.baseline.reasons[0].source == "builtin"
}
"#;
    let point = DecisionPoint::new(vec![compile("seer", source).unwrap()]);
    let mut i = input(EnvironmentClass::Test, TakeoverLevel::L3, OperationType::Write, false);
    i.recent_calls = RecentCalls { tool_last_minute: 2, all_last_minute: 9 };
    i.run_usage.files_changed = 1;
    let d = point.decide(&i, &[]);
    assert_eq!(d.verdict, Verdict::Deny, "{d:#?}");
    assert_eq!(d.reasons.last().unwrap().message, "saw everything");
}

#[test]
fn long_argument_strings_are_cut_and_flagged() {
    let source = r#"package agentplane

decision := {"verdict": "require_approval", "reasons": [sprintf("%d", [count(input.action.arguments.content)])]} if {
  input.action.argumentsTruncated
}
"#;
    let point = DecisionPoint::new(vec![compile("big-writes", source).unwrap()]);
    let mut i = dev_write();
    i.action.arguments = json!({"path": "a.bin", "content": "x".repeat(100_000)});
    let d = point.decide(&i, &[]);
    assert_eq!(d.verdict, Verdict::RequireApproval);
    assert_eq!(d.reasons.last().unwrap().message, RegoLimits::default().max_string_bytes.to_string());
}

#[test]
fn an_input_too_large_for_policies_denies() {
    let point = DecisionPoint::new(vec![constant_policy("any", Verdict::Allow)])
        .with_limits(RegoLimits { max_input_bytes: 4096, ..RegoLimits::default() });
    let mut i = dev_write();
    i.action.arguments = json!({"paths": vec!["a/b/c.txt"; 1000]});
    let d = point.decide(&i, &[]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(policy_error_reason(&d).message.contains("4096"));
    // Without policies nothing is encoded and nothing is denied for size.
    assert_eq!(DecisionPoint::default().decide(&i, &[]).verdict, Verdict::Allow);
}

#[test]
fn print_does_not_reach_stderr_or_fail() {
    let source =
        "package agentplane\n\ndecision := {\"verdict\": \"allow\"} if {\n  print(\"hello from a policy\")\n}\n";
    let point = DecisionPoint::new(vec![compile("chatty", source).unwrap()]);
    assert_eq!(point.decide(&dev_write(), &[]).verdict, Verdict::Allow);
}

#[test]
fn builtins_with_side_effects_are_not_compiled_in() {
    // http.send, time.now_ns and net.cidr_expand are left out of the engine.
    for (name, call) in
        [("http", "http.send({})"), ("time", "time.now_ns()"), ("net", "net.cidr_expand(\"10.0.0.0/8\")")]
    {
        let source = format!(
            "package agentplane\n\ndecision := {{\"verdict\": \"allow\", \"reasons\": [x]}} if {{\n  x := {call}\n}}\n"
        );
        assert!(compile(name, &source).is_err(), "{call} must not be available");
    }
}

#[test]
fn the_policy_can_be_compiled_from_a_resource() {
    let policy: agentplane_api::Policy = serde_json::from_value(json!({
        "apiVersion": "agentplane.dev/v1alpha1",
        "kind": "Policy",
        "metadata": {"name": "from-resource"},
        "spec": {"modules": [{"name": "main", "rego": "package agentplane\n\ndecision := {\"verdict\": \"suggest_only\"}\n"}]}
    }))
    .unwrap();
    let p = RegoPolicy::from_resource(&policy).unwrap();
    assert_eq!(p.name(), "from-resource");
    let d = DecisionPoint::new(vec![p]).decide(&dev_write(), &[]);
    assert_eq!(d.verdict, Verdict::SuggestOnly);
    assert_eq!(d.reasons.last().unwrap().source, ReasonSource::Policy("from-resource".into()));
}
