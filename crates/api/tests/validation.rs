//! Table-driven tests of every validation rule and limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentplane_api::{AnyResource, FieldError, Reason, decode, limits::*};
use serde_json::{Value, json};

fn base(kind: &str) -> Value {
    let spec = match kind {
        "AgentProvider" => json!({"binary": "/bin/sh"}),
        "Agent" => json!({"providerRef": {"name": "shell"}}),
        "ImplementationSpec" => json!({"text": "do it"}),
        "ImplementationSource" => json!({"provider": "github", "scope": {"repository": "o/r"}}),
        "AgentRun" => json!({"agentRef": {"name": "a"}, "implementationSpecRef": {"name": "s"}}),
        "Memory" => json!({"type": "sqlite"}),
        "Environment" => json!({"class": "production"}),
        "Tool" => json!({"mcp": {"url": "http://127.0.0.1:9/mcp"}}),
        "Approval" => {
            json!({"subject": "agent:a", "operation": {"tool": "exec"}, "reason": "r", "expiresAt": "2026-11-26T00:00:00Z"})
        }
        "Policy" => json!({"modules": [{"name": "m", "rego": "package agentplane\n"}]}),
        _ => unreachable!(),
    };
    json!({"apiVersion": "agentplane.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})
}

/// Set a value at a JSON pointer, creating objects on the way.
fn set(mut v: Value, ptr: &str, new: Value) -> Value {
    let mut cur = &mut v;
    let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            cur.as_object_mut().unwrap().insert((*p).to_string(), new);
            break;
        }
        cur = cur.as_object_mut().unwrap().entry((*p).to_string()).or_insert_with(|| json!({}));
    }
    v
}

fn remove(mut v: Value, ptr: &str) -> Value {
    let (parent, key) = ptr.rsplit_once('/').unwrap();
    v.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key);
    v
}

fn check(v: Value) -> Result<AnyResource, Vec<FieldError>> {
    decode(v).map_err(|e| e.0)?.default_and_validate().map_err(|e| e.0)
}

fn expect_err(v: Value, field: &str, reason: Reason) -> FieldError {
    let errs = check(v).expect_err("expected a validation error");
    errs.iter()
        .find(|e| e.field == field && e.reason == reason)
        .cloned()
        .unwrap_or_else(|| panic!("no {reason} at {field}; got {errs:#?}"))
}

fn s(n: usize) -> String {
    "a".repeat(n)
}

#[test]
fn every_kind_minimal_is_valid() {
    for k in agentplane_api::Kind::ALL {
        let r = check(base(k.as_str())).unwrap_or_else(|e| panic!("{k}: {e:#?}"));
        assert_eq!(r.kind(), k);
        assert_eq!(r.meta().namespace.as_deref(), Some("default"));
    }
}

#[test]
fn size_limits_name_field_limit_and_actual() {
    let spec = base("ImplementationSpec");
    let run = base("AgentRun");
    let many_params: serde_json::Map<String, Value> =
        (0..=MAX_PARAMETERS).map(|i| (format!("p{i}"), json!("v"))).collect();
    let cases: Vec<(Value, &str, Reason, usize, usize)> = vec![
        (
            set(spec.clone(), "/spec/text", json!(s(MAX_SPEC_TEXT_BYTES + 1))),
            "spec.text",
            Reason::TextTooLarge,
            MAX_SPEC_TEXT_BYTES,
            MAX_SPEC_TEXT_BYTES + 1,
        ),
        (
            set(spec.clone(), "/spec/description", json!(s(MAX_SPEC_TEXT_BYTES + 5))),
            "spec.description",
            Reason::DescriptionTooLarge,
            MAX_SPEC_TEXT_BYTES,
            MAX_SPEC_TEXT_BYTES + 5,
        ),
        (
            set(spec.clone(), "/spec/summary", json!(s(MAX_SUMMARY_BYTES + 1))),
            "spec.summary",
            Reason::SummaryTooLarge,
            MAX_SUMMARY_BYTES,
            MAX_SUMMARY_BYTES + 1,
        ),
        (
            set(spec.clone(), "/spec/acceptanceCriteria", json!(vec!["c"; MAX_ACCEPTANCE_CRITERIA + 1])),
            "spec.acceptanceCriteria",
            Reason::TooManyAcceptanceCriteria,
            MAX_ACCEPTANCE_CRITERIA,
            MAX_ACCEPTANCE_CRITERIA + 1,
        ),
        (
            set(run.clone(), "/spec/parameters", Value::Object(many_params)),
            "spec.parameters",
            Reason::ParametersTooLarge,
            MAX_PARAMETERS,
            MAX_PARAMETERS + 1,
        ),
        (
            set(run.clone(), "/spec/parameters", json!({"big": s(MAX_PARAMETER_VALUE_BYTES + 1)})),
            "spec.parameters.big",
            Reason::ParameterValueTooLarge,
            MAX_PARAMETER_VALUE_BYTES,
            MAX_PARAMETER_VALUE_BYTES + 1,
        ),
        (
            set(run.clone(), "/spec/implementation", json!({"inline": {"text": s(MAX_SPEC_TEXT_BYTES + 1)}}))
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o["spec"].as_object_mut().unwrap().remove("implementationSpecRef");
                    Value::Object(o)
                })
                .unwrap(),
            "spec.implementation.inline.text",
            Reason::TextTooLarge,
            MAX_SPEC_TEXT_BYTES,
            MAX_SPEC_TEXT_BYTES + 1,
        ),
        (
            set(base("Agent"), "/metadata/name", json!(s(MAX_NAME_LEN + 1))),
            "metadata.name",
            Reason::NameTooLong,
            MAX_NAME_LEN,
            MAX_NAME_LEN + 1,
        ),
        (
            set(
                base("Policy"),
                "/spec/modules",
                json!([{"name": "m", "rego": format!("package p\n{}", s(MAX_REGO_BYTES))}]),
            ),
            "spec.modules[0].rego",
            Reason::ValueTooLarge,
            MAX_REGO_BYTES,
            MAX_REGO_BYTES + 10,
        ),
    ];
    for (doc, field, reason, limit, actual) in cases {
        let e = expect_err(doc, field, reason);
        assert_eq!(e.limit, Some(limit as u64), "{field}");
        assert_eq!(e.actual, Some(actual as u64), "{field}");
        assert!(e.message.contains(&limit.to_string()) && e.message.contains(&actual.to_string()), "{e:?}");
    }
}

#[test]
fn limits_are_inclusive() {
    let spec = base("ImplementationSpec");
    let ok = set(spec.clone(), "/spec/text", json!(s(MAX_SPEC_TEXT_BYTES)));
    let ok = set(ok, "/spec/summary", json!(s(MAX_SUMMARY_BYTES)));
    let ok = set(ok, "/spec/acceptanceCriteria", json!(vec!["c"; MAX_ACCEPTANCE_CRITERIA]));
    check(ok).unwrap();
    let params: serde_json::Map<String, Value> =
        (0..MAX_PARAMETERS).map(|i| (format!("p{i}"), json!(s(MAX_PARAMETER_VALUE_BYTES)))).collect();
    check(set(base("AgentRun"), "/spec/parameters", Value::Object(params))).unwrap();
    check(set(base("Agent"), "/metadata/name", json!(s(MAX_NAME_LEN)))).unwrap();
}

#[test]
fn parameter_values_count_utf8_bytes_not_chars() {
    // 683 three-byte characters = 2049 bytes: over the limit although only 683 characters.
    let v = "€".repeat(683);
    assert_eq!(v.len(), 2049);
    let e = expect_err(
        set(base("AgentRun"), "/spec/parameters", json!({"p": v})),
        "spec.parameters.p",
        Reason::ParameterValueTooLarge,
    );
    assert_eq!(e.actual, Some(2049));
    // Numbers and booleans are accepted and stored as strings.
    let r = check(set(base("AgentRun"), "/spec/parameters", json!({"n": 5, "b": true}))).unwrap();
    assert_eq!(r.spec_value()["parameters"], json!({"b": "true", "n": "5"}));
}

#[test]
fn exactly_one_implementation() {
    let none = remove(base("AgentRun"), "/spec/implementationSpecRef");
    expect_err(none, "spec.implementationSpecRef", Reason::MissingImplementation);
    let both = set(base("AgentRun"), "/spec/implementation", json!({"inline": {"text": "t"}}));
    expect_err(both, "spec.implementation", Reason::AmbiguousImplementation);
    let inline = set(
        remove(base("AgentRun"), "/spec/implementationSpecRef"),
        "/spec/implementation",
        json!({"inline": {"text": "t"}}),
    );
    check(inline).unwrap();
}

#[test]
fn rule_table() {
    let cases: Vec<(Value, &str, Reason)> = vec![
        (set(base("Agent"), "/metadata/name", json!("Bad_Name")), "metadata.name", Reason::InvalidName),
        (set(base("Agent"), "/metadata/name", json!("-x")), "metadata.name", Reason::InvalidName),
        (set(base("Agent"), "/metadata/name", json!("")), "metadata.name", Reason::Required),
        (set(base("Agent"), "/metadata/namespace", json!("Team A")), "metadata.namespace", Reason::InvalidName),
        (
            set(base("Agent"), "/metadata/labels", json!({"bad key!": "v"})),
            "metadata.labels.bad key!",
            Reason::InvalidLabel,
        ),
        (set(base("Agent"), "/metadata/labels", json!({"k": "bad value!"})), "metadata.labels.k", Reason::InvalidLabel),
        (
            set(base("Agent"), "/metadata/annotations", json!({"a": s(MAX_ANNOTATIONS_BYTES)})),
            "metadata.annotations",
            Reason::AnnotationsTooLarge,
        ),
        (
            set(remove(base("Agent"), "/metadata/name"), "/metadata/generateName", json!("UPPER-")),
            "metadata.generateName",
            Reason::InvalidName,
        ),
        (remove(base("Agent"), "/metadata/name"), "metadata.name", Reason::Required),
        (set(base("AgentProvider"), "/spec/binary", json!("")), "spec.binary", Reason::Required),
        (
            set(base("AgentProvider"), "/spec/inputFiles", json!([{"path": "/etc/passwd", "content": "x"}])),
            "spec.inputFiles[0].path",
            Reason::InvalidValue,
        ),
        (
            set(base("AgentProvider"), "/spec/inputFiles", json!([{"path": "../x", "content": "x"}])),
            "spec.inputFiles[0].path",
            Reason::InvalidValue,
        ),
        (
            set(base("AgentProvider"), "/spec/envTemplate", json!({"1BAD": "x"})),
            "spec.envTemplate.1BAD",
            Reason::InvalidValue,
        ),
        (
            set(
                base("AgentProvider"),
                "/spec/outputArtifacts",
                json!([{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]),
            ),
            "spec.outputArtifacts[1].name",
            Reason::Duplicate,
        ),
        (set(base("Agent"), "/spec/providerRef/name", json!("")), "spec.providerRef.name", Reason::Required),
        (set(base("Agent"), "/spec/maxInFlight", json!(0)), "spec.maxInFlight", Reason::OutOfRange),
        (
            set(base("Agent"), "/spec/defaults", json!({"timeoutSeconds": 0})),
            "spec.defaults.timeoutSeconds",
            Reason::OutOfRange,
        ),
        (set(base("Agent"), "/spec/env", json!([{"name": "A"}])), "spec.env[0]", Reason::Required),
        (
            set(base("Agent"), "/spec/env", json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}])),
            "spec.env[0].valueFrom.secretKeyRef.name",
            Reason::InvalidValue,
        ),
        (set(base("AgentRun"), "/spec/takeoverLevel", json!(6)), "spec.takeoverLevel", Reason::OutOfRange),
        (set(base("AgentRun"), "/spec/takeoverLevel", json!(0)), "spec.takeoverLevel", Reason::OutOfRange),
        (set(base("AgentRun"), "/spec/timeoutSeconds", json!(0)), "spec.timeoutSeconds", Reason::OutOfRange),
        (
            set(base("AgentRun"), "/spec/parameters", json!({"bad name": "v"})),
            "spec.parameters.bad name",
            Reason::InvalidParameterName,
        ),
        (set(base("AgentRun"), "/spec/environment", json!("Prod")), "spec.environment", Reason::InvalidName),
        (set(base("AgentRun"), "/spec/idempotencyKey", json!("")), "spec.idempotencyKey", Reason::Required),
        (set(base("AgentRun"), "/spec/workflow", json!({"steps": []})), "spec.workflow.steps", Reason::Required),
        (
            set(base("AgentRun"), "/spec/workspace", json!({"repository": ""})),
            "spec.workspace.repository",
            Reason::Required,
        ),
        (set(base("ImplementationSpec"), "/spec/text", json!("  ")), "spec.text", Reason::Required),
        (set(base("ImplementationSpec"), "/spec/riskTier", json!(4)), "spec.riskTier", Reason::OutOfRange),
        (
            set(base("ImplementationSpec"), "/spec/acceptanceCriteria", json!([s(MAX_ACCEPTANCE_CRITERION_BYTES + 1)])),
            "spec.acceptanceCriteria[0]",
            Reason::AcceptanceCriterionTooLarge,
        ),
        (set(base("ImplementationSource"), "/spec/scope", json!({})), "spec.scope", Reason::Required),
        (
            set(base("ImplementationSource"), "/spec/webhook", json!({"enabled": true})),
            "spec.webhook.secretRef",
            Reason::Required,
        ),
        (set(base("Memory"), "/spec/type", json!("postgres")), "spec.connection.secretRef", Reason::Required),
        (set(base("Environment"), "/spec/maxTakeoverLevel", json!(7)), "spec.maxTakeoverLevel", Reason::OutOfRange),
        (
            set(set(base("Environment"), "/spec/maxTakeoverLevel", json!(2)), "/spec/defaultTakeoverLevel", json!(3)),
            "spec.defaultTakeoverLevel",
            Reason::OutOfRange,
        ),
        (
            set(base("Environment"), "/spec/emergency", json!({"allowed": true})),
            "spec.emergency.authorizers",
            Reason::Required,
        ),
        (set(base("Tool"), "/spec/mcp", json!({})), "spec.mcp", Reason::Required),
        (set(base("Tool"), "/spec/mcp", json!({"url": "ftp://x"})), "spec.mcp.url", Reason::InvalidValue),
        (
            set(base("Tool"), "/spec/mcp", json!({"url": "http://x", "command": ["x"]})),
            "spec.mcp",
            Reason::InvalidValue,
        ),
        (set(base("Approval"), "/spec/reason", json!("")), "spec.reason", Reason::Required),
        (set(base("Policy"), "/spec/modules", json!([])), "spec.modules", Reason::Required),
        (
            set(base("Policy"), "/spec/modules", json!([{"name": "m", "rego": "allow = true"}])),
            "spec.modules[0].rego",
            Reason::InvalidValue,
        ),
    ];
    for (doc, field, reason) in cases {
        expect_err(doc, field, reason);
    }
}

#[test]
fn every_error_is_returned_at_once() {
    let doc = set(
        set(set(base("ImplementationSpec"), "/spec/text", json!("")), "/spec/summary", json!(s(300))),
        "/metadata/name",
        json!("BAD"),
    );
    let errs = check(doc).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"spec.text") && fields.contains(&"spec.summary") && fields.contains(&"metadata.name"),
        "{fields:?}"
    );
}

#[test]
fn envelope_errors() {
    let e = decode(set(base("Agent"), "/apiVersion", json!("v1"))).unwrap_err();
    assert!(e.has(Reason::UnknownApiVersion));
    let e = decode(set(base("Agent"), "/kind", json!("Pod"))).unwrap_err();
    assert!(e.has(Reason::UnknownKind));
    assert!(e.0[0].message.contains("AgentRun"), "lists known kinds: {}", e.0[0].message);
    let e = decode(remove(base("Agent"), "/kind")).unwrap_err();
    assert_eq!(e.0[0].field, "kind");
    let e = decode(json!([1, 2])).unwrap_err();
    assert!(e.has(Reason::InvalidType));
}

#[test]
fn unknown_fields_are_rejected_and_named() {
    let cases = [
        (set(base("Agent"), "/spec/providerRef/nmae", json!("x")), "spec.providerRef.nmae"),
        (set(base("Agent"), "/spec/colour", json!("x")), "spec.colour"),
        (set(base("Agent"), "/metadata/lables", json!({})), "metadata.lables"),
        (set(base("Agent"), "/extra", json!(1)), "extra"),
    ];
    for (doc, field) in cases {
        let e = decode(doc).unwrap_err();
        assert_eq!(e.0[0].reason, Reason::UnknownField, "{e}");
        assert_eq!(e.0[0].field, field, "{e}");
    }
}

#[test]
fn wrong_types_and_missing_required_fields() {
    let e = decode(set(base("AgentRun"), "/spec/timeoutSeconds", json!("ten"))).unwrap_err();
    assert_eq!(e.0[0].reason, Reason::InvalidType);
    assert_eq!(e.0[0].field, "spec.timeoutSeconds");
    let e = decode(remove(base("AgentProvider"), "/spec/binary")).unwrap_err();
    assert_eq!(e.0[0].reason, Reason::Required);
    assert_eq!(e.0[0].field, "spec.binary");
    let e = decode(set(base("Environment"), "/spec/class", json!("staging"))).unwrap_err();
    assert_eq!(e.0[0].field, "spec.class");
}

#[test]
fn defaults_are_applied() {
    let r = check(base("Environment")).unwrap();
    assert_eq!(r.spec_value()["maxTakeoverLevel"], json!(2));
    assert_eq!(r.spec_value()["defaultTakeoverLevel"], json!(1));
    for (class, max, def) in [("development", 5, 3), ("test", 4, 2), ("pre-production", 3, 2), ("production", 2, 1)] {
        let r = check(set(base("Environment"), "/spec/class", json!(class))).unwrap();
        assert_eq!(
            (r.spec_value()["maxTakeoverLevel"].clone(), r.spec_value()["defaultTakeoverLevel"].clone()),
            (json!(max), json!(def)),
            "{class}"
        );
    }
    // A lowered cap pulls the class default down with it.
    let r =
        check(set(set(base("Environment"), "/spec/class", json!("development")), "/spec/maxTakeoverLevel", json!(2)))
            .unwrap();
    assert_eq!(r.spec_value()["defaultTakeoverLevel"], json!(2));
    let r = check(base("Agent")).unwrap();
    assert_eq!(r.spec_value()["maxInFlight"], json!(DEFAULT_AGENT_MAX_IN_FLIGHT));
}
