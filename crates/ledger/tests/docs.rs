//! Keeps `docs/ledger.md` true: its worked example is recomputed here, and its Python verifier is
//! run against exports made here (python3 must be installed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use agentplane_ledger::{
    Actor, Checkpoint, Entry, EntryDraft, GENESIS_HASH, LedgerKey, Target, export_header, export_line_checkpoint,
    export_line_entry, verify_export,
};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ledger.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the fenced block that follows `marker` in the doc.
fn block_after(doc: &str, marker: &str) -> String {
    let start = doc.find(marker).unwrap_or_else(|| panic!("marker {marker} not in docs/ledger.md"));
    let rest = &doc[start..];
    let open = rest.find("```").unwrap();
    let body_start = open + rest[open..].find('\n').unwrap() + 1;
    let body_len = rest[body_start..].find("\n```").unwrap();
    rest[body_start..body_start + body_len].to_owned()
}

fn example_ts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 30, 0).unwrap() + chrono::Duration::microseconds(123_456)
}

fn example_entry() -> Entry {
    EntryDraft {
        actor: Actor::user("alice"),
        action: "resource.created".into(),
        namespace: Some("team-a".into()),
        target: Some(Target { kind: "Agent".into(), namespace: "team-a".into(), name: "reviewer".into(), uid: None }),
        run: None,
        environment: Some("staging".into()),
        takeover_level: None,
        decision: None,
        outcome: "success".into(),
        params: json!({"spec": {"model": "small", "replicas": 2}, "kind": "Agent"}),
        error: None,
        trace_id: None,
    }
    .seal(1, example_ts(), GENESIS_HASH)
}

#[test]
fn worked_example_in_the_doc_is_true() {
    let doc = doc();
    let e = example_entry();
    let canonical = String::from_utf8(e.canonical_bytes()).unwrap();
    assert_eq!(block_after(&doc, "<!-- example-canonical -->"), canonical, "update the canonical bytes in the doc");
    assert_eq!(block_after(&doc, "<!-- example-hash -->"), e.hash, "update the hash in the doc");
    assert_eq!(block_after(&doc, "<!-- example-export -->"), export_line_entry(&e).trim_end());
}

fn chain(n: u64) -> Vec<Entry> {
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n)
        .map(|seq| {
            let mut e = example_entry();
            e.seq = seq;
            e.actor = Actor::agent(format!("agent \"{seq}\" é ✓ \u{1}\t\n\u{2028}"));
            e.params = json!({"z": seq, "a": [true, null, -5, u64::MAX], "nested": {"b": "x\\y", "a": ""}});
            e.takeover_level = (seq % 2 == 0).then_some(3);
            e.ts = example_ts() + chrono::Duration::seconds(seq as i64);
            e.prev_hash = prev.clone();
            e.hash = e.compute_hash();
            prev = e.hash.clone();
            e
        })
        .collect()
}

fn write_export(dir: &Path, name: &str, entries: &[Entry], cps: &[Checkpoint], key: &LedgerKey) -> PathBuf {
    let mut text = export_header(&key.public_key());
    cps.iter().for_each(|c| text.push_str(&export_line_checkpoint(c)));
    entries.iter().for_each(|e| text.push_str(&export_line_entry(e)));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn python(script: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is needed to test the doc's independent verifier");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn python_verifier_in_the_doc_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("verify_ledger.py");
    std::fs::write(&script, block_after(&doc(), "<!-- verify-ledger.py -->")).unwrap();
    let key = LedgerKey::from_seed(&[11; 32]);
    let pk = key.public_key().to_base64();
    let entries = chain(20);
    let cps: Vec<Checkpoint> =
        [10, 20].iter().map(|&s| key.sign_checkpoint(s, &entries[s as usize - 1].hash, example_ts())).collect();

    let good = write_export(dir.path(), "good.jsonl", &entries, &cps, &key);
    assert!(verify_export(std::io::BufReader::new(std::fs::File::open(&good).unwrap()), None).intact);
    let (ok, out) = python(&script, &[good.to_str().unwrap()]);
    assert!(ok && out.contains("intact: 20 entries, 2 checkpoints"), "{out}");
    let (ok, out) = python(&script, &[good.to_str().unwrap(), &pk]);
    assert!(ok && out.contains("signatures verified"), "{out}");

    // An edited entry.
    let mut edited = entries.clone();
    edited[6].outcome = "failure".into();
    let path = write_export(dir.path(), "edited.jsonl", &edited, &cps, &key);
    let (ok, out) = python(&script, &[path.to_str().unwrap()]);
    assert!(!ok && out.contains("seq 7"), "{out}");

    // A rewritten chain (hashes recomputed) is caught by the checkpoint.
    let mut rewritten = entries.clone();
    rewritten[14].outcome = "failure".into();
    for i in 14..rewritten.len() {
        if i > 14 {
            rewritten[i].prev_hash = rewritten[i - 1].hash.clone();
        }
        rewritten[i].hash = rewritten[i].compute_hash();
    }
    let path = write_export(dir.path(), "rewritten.jsonl", &rewritten, &cps, &key);
    let (ok, out) = python(&script, &[path.to_str().unwrap()]);
    assert!(!ok && out.contains("seq 20"), "{out}");

    // Truncated.
    let path = write_export(dir.path(), "truncated.jsonl", &entries[..15], &cps, &key);
    let (ok, out) = python(&script, &[path.to_str().unwrap()]);
    assert!(!ok && out.contains("checkpoint covers seq 20"), "{out}");

    // Checkpoints signed by another key.
    let other = LedgerKey::from_seed(&[12; 32]);
    let forged: Vec<Checkpoint> = cps.iter().map(|c| other.sign_checkpoint(c.seq, &c.hash, c.ts)).collect();
    let path = write_export(dir.path(), "forged.jsonl", &entries, &forged, &key);
    let (ok, _) = python(&script, &[path.to_str().unwrap()]);
    assert!(ok, "without a key only hashes are checked");
    let (ok, out) = python(&script, &[path.to_str().unwrap(), &pk]);
    assert!(!ok && out.contains("seq 10"), "{out}");

    // Right key id, wrong signature (the checkpoint's time was changed).
    let mut tampered = cps.clone();
    tampered[1].ts += chrono::Duration::seconds(1);
    let path = write_export(dir.path(), "tampered.jsonl", &entries, &tampered, &key);
    let (ok, out) = python(&script, &[path.to_str().unwrap(), &pk]);
    assert!(!ok && out.contains("checkpoint at seq 20: bad signature"), "{out}");
}
