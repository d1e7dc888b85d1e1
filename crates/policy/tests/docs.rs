//! Keeps `docs/governance.md` true: its decision tables are parsed and every cell is recomputed
//! (for "other", every operation type but `read`), and its worked example is decided again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use agentplane_api::{EnvironmentClass, OperationType, RoleContract};
use agentplane_policy::*;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/governance.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the fenced block that follows `marker`.
fn block_after(doc: &str, marker: &str) -> String {
    let start = doc.find(marker).unwrap_or_else(|| panic!("marker {marker} not in docs/governance.md"));
    let rest = &doc[start..];
    let open = rest.find("```").unwrap();
    let body_start = open + rest[open..].find('\n').unwrap() + 1;
    let body_len = rest[body_start..].find("\n```").unwrap();
    rest[body_start..body_start + body_len].to_owned()
}

/// The data rows of the markdown table that follows `marker`, split into trimmed cells.
fn table_after(doc: &str, marker: &str) -> Vec<Vec<String>> {
    let start = doc.find(marker).unwrap_or_else(|| panic!("marker {marker} not in docs/governance.md"));
    doc[start + marker.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

fn class(name: &str) -> EnvironmentClass {
    ENVIRONMENT_CLASSES
        .into_iter()
        .find(|c| environment_class_str(*c) == name)
        .unwrap_or_else(|| panic!("unknown class {name:?}"))
}

fn level(cell: &str) -> TakeoverLevel {
    TakeoverLevel::from_u8(cell.strip_prefix('L').unwrap().parse().unwrap()).unwrap()
}

/// `"require_approval + review"` → `(RequireApproval, true)`.
fn verdict_cell(cell: &str) -> (Verdict, bool) {
    let (v, review) = match cell.strip_suffix(" + review") {
        Some(v) => (v, true),
        None => (cell, false),
    };
    (Verdict::parse(v).unwrap_or_else(|| panic!("not a verdict: {cell:?}")), review)
}

fn check_table(marker: &str, elevation: Option<TakeoverLevel>) -> usize {
    let rows = table_after(&doc(), marker);
    assert_eq!(rows.len(), if elevation.is_some() { 5 } else { 20 }, "rows of {marker}");
    let mut checked = 0;
    for row in rows {
        assert_eq!(row.len(), 7, "{row:?}");
        let (name, cap) = row[0].split_once(' ').unwrap();
        let class = class(name);
        let asked = level(&row[1]);
        let applies = level(&row[2]);
        let columns = [(true, false), (true, true), (false, false), (false, true)];
        for ((read, critical), cell) in columns.into_iter().zip(&row[3..]) {
            let (want, review) = verdict_cell(cell);
            let ops: Vec<OperationType> =
                OPERATION_TYPES.into_iter().filter(|t| (*t == OperationType::Read) == read).collect();
            for op in ops {
                let mut i = common::input(class, asked, op, critical);
                if let Some(e) = elevation {
                    i.environment.emergency_max = Some(TakeoverLevel::L5);
                    i.emergency = Some(Emergency { level: e, reason: None, authorized_by: None });
                }
                let d = builtin_decision(&i);
                let what = format!("{marker} {row:?} {op:?} critical={critical}");
                assert_eq!(d.verdict, want, "{what}");
                assert_eq!(d.obligations.contains(&Obligation::Review), review, "{what}");
                assert_eq!(d.level, applies, "{what}");
                assert_eq!(
                    format!("({})", environment_cap(i.environment.max_level, elevation, i.environment.emergency_max)),
                    cap,
                    "{what}"
                );
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn the_decision_table_in_the_doc_is_what_the_code_decides() {
    assert_eq!(check_table("<!-- decision-table -->", None), 20 * (2 + 2 * 11));
}

#[test]
fn the_emergency_table_in_the_doc_is_what_the_code_decides() {
    assert_eq!(check_table("<!-- emergency-table -->", Some(TakeoverLevel::L5)), 5 * (2 + 2 * 11));
}

#[test]
fn the_level_table_in_the_doc_is_level_verdict() {
    let doc = doc();
    let start = doc.find("The **level rules**").unwrap();
    let rows = table_after(&doc[start..], "The **level rules**");
    assert_eq!(rows.len(), 5);
    for row in rows {
        let l = level(&row[0]);
        let columns = [
            (OperationType::Read, false),
            (OperationType::Read, true),
            (OperationType::Exec, false),
            (OperationType::Exec, true),
        ];
        for ((op, critical), cell) in columns.into_iter().zip(&row[1..]) {
            let (want, review) = verdict_cell(cell);
            let rule = level_verdict(l, op, critical);
            assert_eq!((rule.verdict, rule.review), (want, review), "{row:?} {op:?} {critical}");
        }
    }
}

#[test]
fn the_worked_example_is_true() {
    let doc = doc();
    let contract: RoleContract = serde_json::from_str(&block_after(&doc, "<!-- example-contract -->")).unwrap();
    let contract = CompiledContract::compile(&contract).unwrap();
    let policy = common::compile("migrations", &block_after(&doc, "<!-- example-policy -->")).unwrap();
    let input: DecisionInput = serde_json::from_str(&block_after(&doc, "<!-- example-input -->")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&block_after(&doc, "<!-- example-decision -->")).unwrap();

    let point = DecisionPoint::new(vec![policy]);
    let got = point.decide(&input, &[&contract]);
    assert_eq!(
        serde_json::to_value(&got).unwrap(),
        want,
        "update the example decision in the doc:\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );

    // The claims after the example.
    let mut dry = input.clone();
    dry.action.arguments["dryRun"] = serde_json::Value::Bool(true);
    assert_eq!(point.decide(&dry, &[&contract]).verdict, Verdict::Allow);
    let mut observe = input;
    observe.level = TakeoverLevel::L1;
    let d = point.decide(&observe, &[&contract]);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.has_reason(codes::LEVEL_OBSERVE_ONLY));
    assert!(d.reasons.iter().all(|r| r.source == ReasonSource::Builtin), "later stages not consulted");
}

#[test]
fn every_code_in_the_reasons_table_exists() {
    let doc = doc();
    let rows = table_after(&doc, "## Reasons");
    let documented: Vec<String> = rows
        .iter()
        .flat_map(|r| r[0].split(',').map(|c| c.trim().trim_matches('`').to_owned()).collect::<Vec<_>>())
        .collect();
    for code in [
        codes::LEVEL_PERMITS,
        codes::LEVEL_OBSERVE_ONLY,
        codes::LEVEL_SUGGEST_ONLY,
        codes::CRITICAL_NEEDS_APPROVAL,
        codes::CRITICAL_FLAGGED_FOR_REVIEW,
        codes::PRODUCTION_CRITICAL,
        codes::LEVEL_CAPPED,
        codes::EMERGENCY_ELEVATION,
        codes::EMERGENCY_NOT_ALLOWED,
        codes::RATE_LIMITED,
        codes::TOOL_NOT_ALLOWED,
        codes::OPERATION_TYPE_NOT_ALLOWED,
        codes::INVALID_ARGUMENTS,
        codes::CONTRACT_REQUIRES_APPROVAL,
        codes::SIDE_EFFECT_BOUND,
        codes::POLICY_DECISION,
        codes::POLICY_ERROR,
    ] {
        assert!(documented.iter().any(|d| d.starts_with(code)), "{code} is not in the reasons table: {documented:?}");
    }
}
