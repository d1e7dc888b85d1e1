//! Time `verify` over a chain of typical entries (not a test: run by hand).
//!
//! `cargo run --release -p agentplane-ledger --example verify_speed [N]`
//!
//! Uses mimalloc, as the agentplane binary does.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::Instant;

use agentplane_ledger::{Actor, EntryDraft, GENESIS_HASH, LedgerKey, Target, verify};
use chrono::{TimeZone, Utc};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(200_000, |a| a.parse().expect("N"));
    bench(n, false);
    bench(n, true);
}

/// `large`: bigger params and a uid (about 620 canonical bytes instead of about 430).
fn bench(n: u64, large: bool) {
    let key = LedgerKey::from_seed(&[1; 32]);
    let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap();
    let mut prev = GENESIS_HASH.to_owned();
    let mut entries = Vec::with_capacity(n as usize);
    let mut checkpoints = Vec::new();
    let started = Instant::now();
    for seq in 1..=n {
        let draft = EntryDraft {
            actor: Actor::agent(format!("deployer-{}", seq % 17)),
            action: "run.finished".into(),
            namespace: Some("team-payments".into()),
            target: Some(Target {
                kind: "AgentRun".into(),
                namespace: "team-payments".into(),
                name: format!("nightly-reconcile-{seq}"),
                uid: large.then(|| "4f1c2b7e-3a5d-4e8f-9b0a-1c2d3e4f5a6b".into()),
            }),
            run: Some(format!("nightly-reconcile-{seq}")),
            environment: Some("production".into()),
            takeover_level: Some(1),
            decision: Some("allow".into()),
            outcome: "success".into(),
            params: if large {
                json!({"attempt": 1, "durationMs": seq % 5000, "exitCode": 0, "tool": "kubectl", "args": ["rollout", "status"]})
            } else {
                json!({"attempt": 1, "exitCode": 0})
            },
            error: None,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        };
        let e = draft.seal(seq, t0 + chrono::Duration::milliseconds(seq as i64), &prev);
        prev.clone_from(&e.hash);
        if seq % 10_000 == 0 {
            checkpoints.push(key.sign_checkpoint(seq, &e.hash, e.ts));
        }
        entries.push(e);
    }
    let seal_secs = started.elapsed().as_secs_f64();
    let avg = entries.iter().take(1000).map(|e| e.canonical_bytes().len()).sum::<usize>() / 1000;
    let pk = key.public_key();
    // Borrowed entries: verification alone.
    let mut best_borrowed = f64::MAX;
    // Owned entries: verification plus dropping each entry (as when entries stream from storage).
    let mut best_owned = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let report = verify(entries.iter().map(Ok::<_, Infallible>), &checkpoints, Some(&pk), None);
        best_borrowed = best_borrowed.min(started.elapsed().as_secs_f64());
        assert!(report.intact && report.entries_checked == n, "{report:?}");

        let input = entries.clone();
        let started = Instant::now();
        let report = verify(input.into_iter().map(Ok::<_, Infallible>), &checkpoints, Some(&pk), None);
        best_owned = best_owned.min(started.elapsed().as_secs_f64());
        assert!(report.intact && report.entries_checked == n, "{report:?}");
    }
    println!(
        "{{\"entries\":{n},\"avgCanonicalBytes\":{avg},\"checkpoints\":{},\"sealPerSec\":{:.0},\
         \"verifyPerSec\":{:.0},\"verifyOwnedPerSec\":{:.0}}}",
        checkpoints.len(),
        n as f64 / seal_secs,
        n as f64 / best_borrowed,
        n as f64 / best_owned
    );
}
