//! Shared test helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{Actor, Checkpoint, Entry, EntryDraft, GENESIS_HASH, LedgerKey, Target};

pub fn sample_draft() -> EntryDraft {
    EntryDraft {
        actor: Actor::agent("deployer-7"),
        action: "resource.updated".into(),
        namespace: Some("team-a".into()),
        target: Some(Target { kind: "Deployment".into(), namespace: "team-a".into(), name: "web".into(), uid: None }),
        run: Some("run-1".into()),
        environment: Some("production".into()),
        takeover_level: Some(2),
        decision: Some("allow".into()),
        outcome: "success".into(),
        params: json!({"spec": {"replicas": 3, "image": "web:1.2"}, "tags": ["a", "b"], "dryRun": false}),
        error: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    }
}

/// A draft whose content varies with `b`, `params` and `s`.
pub fn draft_from(b: u8, params: Value, s: String) -> EntryDraft {
    let mut d = sample_draft();
    d.actor = match b % 3 {
        0 => Actor::user(format!("u{s}")),
        1 => Actor::agent(format!("a{b}")),
        _ => Actor::system("scheduler"),
    };
    d.action = crate::actions::ALL[usize::from(b) % crate::actions::ALL.len()].into();
    d.namespace = (b & 4 != 0).then(|| s.clone());
    if b & 8 != 0 {
        d.target = None;
    }
    d.run = (b & 16 != 0).then(|| format!("run-{b}"));
    d.takeover_level = (b & 32 != 0).then_some(b % 5);
    d.decision = (b & 64 != 0).then(|| "deny".into());
    d.outcome = crate::outcomes::ALL[usize::from(b) % crate::outcomes::ALL.len()].into();
    d.params = params;
    d.error = (b & 128 != 0).then(|| format!("error: {s}"));
    d
}

/// A valid chain of `n` entries, one second apart.
pub fn chain(n: usize) -> Vec<Entry> {
    let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap();
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n as u64)
        .map(|seq| {
            let mut d = sample_draft();
            d.params["i"] = json!(seq);
            let e = d.seal(seq, t0 + chrono::Duration::seconds(seq as i64), &prev);
            prev = e.hash.clone();
            e
        })
        .collect()
}

/// A checkpoint at every `every`-th entry.
pub fn checkpoints_every(entries: &[Entry], every: u64, key: &LedgerKey) -> Vec<Checkpoint> {
    entries
        .iter()
        .filter(|e| e.seq % every == 0)
        .map(|e| key.sign_checkpoint(e.seq, &e.hash, e.ts + chrono::Duration::milliseconds(1)))
        .collect()
}

/// JSON without floats (floats do not round-trip through serde_json's default parser).
pub fn arb_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,8}|[\\x00-\\x1f\"\\\\]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z_é]{0,6}", inner), 0..4)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}
