//! Decision latency: the built-in rules alone, with a role contract, and with one ordinary Rego
//! Policy. Criterion reports the mean per call; afterwards each case is timed call by call
//! (200,000 calls, after 20,000 warm-up calls) into a histogram and its percentiles are printed,
//! since the targets are p99 (built-in < 5 µs, one Rego module < 100 µs).
//!
//! Run: `cargo bench -p agentplane-policy --bench decide`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentplane_api::{EnvironmentClass, OperationType, RoleContract};
use agentplane_policy::*;
use criterion::Criterion;
use hdrhistogram::Histogram;
use serde_json::json;

/// An ordinary policy: a few conditions on the operation, the environment, the arguments and the
/// subject's roles, one answer object with a reason and an obligation.
const ORDINARY_POLICY: &str = r#"package agentplane

import rego.v1

risky_types := {"data_migration", "permission_change", "deployment"}

decision := {
  "verdict": "require_approval",
  "reasons": [{"code": "RiskyOutsideDevelopment", "message": sprintf("%s outside development needs a reviewer", [input.action.operationType])}],
  "obligations": [{"type": "redact", "fields": ["connectionString"]}],
} if {
  input.action.operationType in risky_types
  input.environment.class != "development"
  not input.action.arguments.dryRun
  not "dba" in input.subject.roles
}
"#;

fn call(op: OperationType, class: EnvironmentClass, level: TakeoverLevel) -> DecisionInput {
    DecisionInput {
        subject: Subject { kind: SubjectKind::Agent, id: "team-a/migrator".into(), roles: vec!["migrator".into()] },
        action: Action {
            tool: "db.migrate".into(),
            operation: Some("apply".into()),
            operation_type: op,
            critical: false,
            arguments: json!({"database": "orders", "connectionString": "postgres://db/orders", "dryRun": false, "steps": 3}),
            rate_limit_per_minute: Some(60),
            redact_fields: vec!["connectionString".into()],
        },
        resource: Some("postgres:orders".into()),
        environment: EnvironmentContext::of_class("staging", class),
        level,
        emergency: None,
        recent_calls: RecentCalls { tool_last_minute: 3, all_last_minute: 17 },
        run_usage: RunUsage { files_changed: 2 },
    }
}

fn contract() -> CompiledContract {
    let c: RoleContract = serde_json::from_value(json!({
        "name": "migrator",
        "allowedTools": ["db.*", "workspace.*"],
        "requireApproval": ["db.drop"],
        "inputSchemas": {"db.migrate": {
            "type": "object",
            "required": ["database"],
            "properties": {"database": {"type": "string"}, "dryRun": {"type": "boolean"}, "steps": {"type": "integer", "minimum": 1}}
        }},
        "sideEffectBounds": {"maxCallsPerMinute": 120, "maxFilesChanged": 50}
    }))
    .unwrap();
    CompiledContract::compile(&c).unwrap()
}

struct Case {
    name: &'static str,
    run: Box<dyn Fn() -> Decision>,
    expect: Verdict,
}

fn cases() -> Vec<Case> {
    let builtin_in = call(OperationType::DataMigration, EnvironmentClass::PreProduction, TakeoverLevel::L3);
    let contract = contract();
    let with_contract_in = builtin_in.clone();
    let policy = RegoPolicy::compile_source("risky", ORDINARY_POLICY).unwrap();
    let point = DecisionPoint::new(vec![policy]);
    let point2 = point.clone();
    let contract2 = self::contract();
    let matching = builtin_in.clone();
    let not_matching = call(OperationType::Write, EnvironmentClass::PreProduction, TakeoverLevel::L3);
    vec![
        Case {
            name: "builtin",
            run: Box::new(move || builtin_decision(black_box(&builtin_in))),
            expect: Verdict::Allow,
        },
        Case {
            name: "builtin+contract",
            run: Box::new(move || DecisionPoint::default().decide(black_box(&with_contract_in), &[&contract])),
            expect: Verdict::Allow,
        },
        Case {
            name: "builtin+contract+rego(matches)",
            run: Box::new(move || point.decide(black_box(&matching), &[&contract2])),
            expect: Verdict::RequireApproval,
        },
        Case {
            name: "builtin+rego(undefined)",
            run: Box::new(move || point2.decide(black_box(&not_matching), &[])),
            expect: Verdict::Allow,
        },
    ]
}

fn percentiles(cases: &[Case]) {
    println!();
    println!("per-call latency (Instant around each call; 20,000 warm-up, 200,000 timed):");
    println!("{:<32} {:>9} {:>9} {:>9} {:>9} {:>9}", "case", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs");
    for case in cases {
        for _ in 0..20_000 {
            black_box((case.run)());
        }
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
        for _ in 0..200_000 {
            let t = Instant::now();
            let d = (case.run)();
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            black_box(d);
            h.saturating_record(ns.max(1));
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<32} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            case.name,
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0
        );
    }
}

fn main() {
    let cases = cases();
    for case in &cases {
        let d = (case.run)();
        assert_eq!(d.verdict, case.expect, "{}: {d:#?}", case.name);
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    {
        let mut group = c.benchmark_group("decide");
        for case in &cases {
            group.bench_function(case.name, |b| b.iter(|| black_box((case.run)())));
        }
        group.finish();
    }
    c.final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion then runs each
    // benchmark once as a smoke test, and so do we: no percentile pass).
    if std::env::args().any(|a| a == "--bench") {
        percentiles(&cases);
    }
}
