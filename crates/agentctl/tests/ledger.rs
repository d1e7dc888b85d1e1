//! `agentctl ledger ...` through the built binary against a real server: query with filters,
//! export (JSON Lines and CSV), verify online and offline (intact, corrupted, wrong key), summary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, doc};
use serde_json::Value;

const PROVIDER: &str = "  binary: /bin/sh\n";
const AGENT: &str = "  providerRef:\n    name: shell\n";
const DEADLINE: Duration = Duration::from_secs(30);

/// A server whose checkpoints come only when a test asks for them (never on a timer).
fn quiet_server() -> TestServer {
    TestServer::start_with(&[
        "--ledger-checkpoint-every-entries",
        "1000000",
        "--ledger-checkpoint-interval-seconds",
        "86400",
    ])
}

/// A server that signs a checkpoint after every entry.
fn checkpointing_server() -> TestServer {
    TestServer::start_with(&["--ledger-checkpoint-every-entries", "1", "--ledger-checkpoint-interval-seconds", "1"])
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Applies a provider and two agents in `default` and one agent in `team-a`: four
/// `resource.created` entries (seq 2 to 5; seq 1 is the server's `token.created` for its
/// bootstrap admin token).
fn apply_four(s: &TestServer) {
    let f = s.write(
        "objects.yaml",
        &format!(
            "{}---\n{}---\n{}",
            doc("AgentProvider", "shell", PROVIDER),
            doc("Agent", "coder", AGENT),
            doc("Agent", "reviewer", AGENT)
        ),
    );
    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 0, "{out:?}");
    let f = s.write("team-a.yaml", &doc("Agent", "tester", AGENT));
    let out = s.ctl(&["apply", "-f", &f, "-n", "team-a"]);
    assert_eq!(out.code, 0, "{out:?}");
}

fn entries(s: &TestServer, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["ledger", "query", "-o", "json"];
    all.extend_from_slice(args);
    let out = s.ctl(&all);
    assert_eq!(out.code, 0, "{out:?}");
    json(&out.stdout)["entries"].as_array().cloned().unwrap_or_else(|| panic!("no entries list: {}", out.stdout))
}

fn target_names(entries: &[Value]) -> Vec<String> {
    entries.iter().map(|e| e["target"]["name"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn query_filters_by_action_target_namespace_time_and_limit() {
    let s = quiet_server();
    apply_four(&s);

    let created = entries(&s, &["--action", "resource.created"]);
    assert_eq!(target_names(&created), ["shell", "coder", "reviewer", "tester"]);
    let seqs: Vec<u64> = created.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4, 5]);
    assert_eq!(created[1]["target"]["kind"], "Agent");
    assert_eq!(created[1]["target"]["namespace"], "default");

    // One object, its kind given loosely.
    let coder = entries(&s, &["--target", "agent/default/coder"]);
    assert_eq!(target_names(&coder), ["coder"]);
    assert!(entries(&s, &["--target", "ag/team-a/coder"]).is_empty());

    // -n filters; without it, every namespace.
    assert_eq!(target_names(&entries(&s, &["-n", "team-a"])), ["tester"]);
    assert_eq!(entries(&s, &[]).len(), 5, "with the bootstrap token's entry");
    assert_eq!(entries(&s, &["--actor", "user:bootstrap-admin", "--outcome", "success"]).len(), 4);
    assert!(entries(&s, &["--actor", "user:mallory"]).is_empty());
    assert!(entries(&s, &["--action", "resource.deleted"]).is_empty());

    // Relative and absolute times.
    assert_eq!(entries(&s, &["--since", "1h"]).len(), 5);
    assert!(entries(&s, &["--until", "1h"]).is_empty());
    assert!(entries(&s, &["--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02T00:00:00Z"]).is_empty());

    // Pages are followed to the end; --limit stops early and keeps the token.
    assert_eq!(
        target_names(&entries(&s, &["--chunk-size", "1"])),
        ["bootstrap-admin", "shell", "coder", "reviewer", "tester"]
    );
    let out = s.ctl(&["ledger", "query", "--limit", "3", "--chunk-size", "2", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let page = json(&out.stdout);
    assert_eq!(target_names(page["entries"].as_array().unwrap()), ["bootstrap-admin", "shell", "coder"]);
    assert_eq!(page["continue"], "3");
    let out = s.ctl(&["ledger", "query", "--limit", "10", "-o", "json"]);
    assert!(json(&out.stdout).get("continue").is_none(), "{}", out.stdout);
}

#[test]
fn query_table_output_and_errors() {
    let s = quiet_server();
    apply_four(&s);
    let out = s.ctl(&["ledger", "query", "--target", "agent/default/coder"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "3");
    assert!(row[1].ends_with('Z') && row[1].len() == "2026-11-26T06:00:00Z".len(), "{row:?}");
    assert_eq!(&row[2..], ["user:bootstrap-admin", "resource.created", "agent/default/coder", "success"]);

    let out = s.ctl(&["ledger", "query", "--action", "nothing.such"]);
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (0, "", "No ledger entries found.\n"));

    // A target the server refuses is invalid input; a bad time is a usage error.
    let out = s.ctl(&["ledger", "query", "--target", "agent/coder"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("target"), "{}", out.stderr);
    let out = s.ctl(&["ledger", "query", "--since", "1h", "--until", "2h"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("is after --until"), "{}", out.stderr);
    let out = s.ctl(&["ledger", "query", "--since", "yesterday"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = s.ctl(&["ledger", "query", "-o", "name"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn export_jsonl_and_csv_have_one_line_per_entry() {
    let s = quiet_server();
    apply_four(&s);

    let out = s.ctl(&["ledger", "export", "--format", "jsonl"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.lines().any(|l| l.trim().is_empty()), "blank lines in the JSONL export:\n{}", out.stdout);
    let lines: Vec<Value> = out.stdout.lines().map(json).collect();
    assert_eq!(lines[0]["type"], "header", "{}", out.stdout);
    let entry_lines = lines.iter().filter(|l| is_entry_line(l)).count();
    assert_eq!(entry_lines, 5, "{}", out.stdout);
    assert!(lines.len() == entry_lines + 1 + checkpoint_lines(&out.stdout), "{}", out.stdout);

    // The same to a file.
    let out = s.ctl(&["ledger", "export", "--format", "jsonl", "-f", "ledger.jsonl"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    assert!(out.stderr.contains("ledger exported to ledger.jsonl"), "{}", out.stderr);
    let file = std::fs::read_to_string(s.dir.path().join("ledger.jsonl")).unwrap();
    assert_eq!(export_lines(&file).filter(|l| is_entry_line(&json(l))).count(), 5);
    assert!(!s.dir.path().join("ledger.jsonl.partial").exists());

    let out = s.ctl(&["ledger", "export", "--format", "csv"]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 1 + 5, "one header row and one row per entry, no blank rows:\n{:?}", out.stdout);
    assert!(rows[0].starts_with("seq,"), "csv header: {}", rows[0]);
    assert!(rows[3].starts_with("3,") && rows[3].contains("coder"), "{}", rows[3]);

    let out = s.ctl(&["ledger", "export", "--format", "xml"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn verify_online_says_intact_with_counts() {
    let s = quiet_server();
    apply_four(&s);
    let out = s.ctl(&["ledger", "verify"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("ledger intact: 5 entries (seq 1–5)"), "{}", out.stdout);

    let out = s.ctl(&["ledger", "verify", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let report = json(&out.stdout);
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["entriesChecked"], 5, "{report}");
    assert_eq!(report["lastSeq"], 5, "{report}");

    let out = s.ctl(&["ledger", "verify", "--from", "3", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(json(&out.stdout)["entriesChecked"], 3, "{}", out.stdout);
}

#[test]
fn verify_of_a_fresh_ledger_is_intact() {
    // A fresh server's ledger holds one entry: the bootstrap admin token's creation.
    let s = quiet_server();
    let out = s.ctl(&["ledger", "verify"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("ledger intact: 1 entry (seq 1–1)"), "{}", out.stdout);
}

/// Exports the ledger to `name` in the server's directory and returns its text.
fn export_to(s: &TestServer, name: &str) -> String {
    let out = s.ctl(&["ledger", "export", "--format", "jsonl", "-f", name]);
    assert_eq!(out.code, 0, "{out:?}");
    std::fs::read_to_string(s.dir.path().join(name)).unwrap()
}

/// The server's public key, written to `ledger.pub` (PEM).
fn pin_key(s: &TestServer) -> String {
    let out = s.ctl(&["ledger", "public-key"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("-----BEGIN PUBLIC KEY-----"), "{}", out.stdout);
    s.write("ledger.pub", &out.stdout)
}

#[test]
fn verify_offline_on_an_export_needs_no_server() {
    let s = quiet_server();
    apply_four(&s);
    export_to(&s, "ledger.jsonl");
    let key = pin_key(&s);
    let key_json = s.ctl(&["ledger", "public-key", "-o", "json"]);
    let b64 = json(&key_json.stdout)["publicKey"].as_str().unwrap().to_string();
    let dir = s.kill9();
    let at = |args: &[&str]| {
        let mut cmd = common::agentctl(&dir.path().join("client.toml"));
        // A server URL nobody listens on: offline verify must not need it.
        cmd.args(["--server", "http://127.0.0.1:1"]).args(args).current_dir(dir.path());
        common::run(cmd, None)
    };

    let out = at(&["ledger", "verify", "--export-file", "ledger.jsonl"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("ledger intact: 5 entries (seq 1–5)"), "{}", out.stdout);
    assert!(out.stderr.contains("not pinned"), "unpinned key warning: {}", out.stderr);

    for pinned in [key.as_str(), b64.as_str()] {
        let out = at(&["ledger", "verify", "--export-file", "ledger.jsonl", "--public-key", pinned]);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stderr, "", "no warning with a pinned key");
    }

    let out = at(&["ledger", "verify", "--export-file", "missing.jsonl"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("missing.jsonl"), "{}", out.stderr);
    let out = at(&["ledger", "verify", "--export-file", "ledger.jsonl", "--public-key", "not-a-key"]);
    assert_eq!(out.code, 5, "{out:?}");
    // Online, the dead server is unreachable.
    assert_eq!(at(&["ledger", "verify"]).code, 6);
}

#[test]
fn verify_offline_names_the_seq_of_an_edited_entry() {
    let s = quiet_server();
    apply_four(&s);
    let text = export_to(&s, "ledger.jsonl");
    // Change one character inside the line of entry 4 (the target's name).
    let edited: Vec<String> = export_lines(&text)
        .map(|l| {
            let v = json(l);
            if is_entry_line(&v) && v["seq"] == 4 {
                assert!(l.contains("\"reviewer\""), "{l}");
                l.replacen("\"reviewer\"", "\"reviewes\"", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    let bad = s.write("edited.jsonl", &(edited.join("\n") + "\n"));
    let key = pin_key(&s);
    let out = s.ctl(&["ledger", "verify", "--export-file", &bad, "--public-key", &key]);
    assert_eq!(out.code, 8, "{out:?}");
    assert_eq!(out.stdout, "");
    assert!(out.stderr.starts_with("ledger verification FAILED at seq 4: "), "{}", out.stderr);

    let out = s.ctl(&["ledger", "verify", "--export-file", &bad, "--public-key", &key, "-o", "json"]);
    assert_eq!(out.code, 8, "{out:?}");
    let report = json(&out.stdout);
    assert_eq!(report["intact"], false, "{report}");
    assert_eq!(report["problem"]["seq"], 4, "{report}");

    // A deleted line is caught too.
    let deleted: Vec<&str> =
        export_lines(&text).filter(|l| !(is_entry_line(&json(l)) && json(l)["seq"] == 2)).collect();
    let bad = s.write("deleted.jsonl", &(deleted.join("\n") + "\n"));
    let out = s.ctl(&["ledger", "verify", "--export-file", &bad, "--public-key", &key]);
    assert_eq!(out.code, 8, "{out:?}");
    assert!(out.stderr.contains("FAILED at seq "), "{}", out.stderr);
}

#[test]
fn verify_with_the_wrong_key_fails_on_the_checkpoint_signature() {
    let s = checkpointing_server();
    apply_four(&s);
    // Checkpoints are signed in the background: poll the export until one covers entry 5.
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let text = export_to(&s, "ledger.jsonl");
        if export_lines(&text).map(json).any(|l| is_checkpoint_line(&l) && l["seq"] == 5) {
            break text;
        }
        assert!(Instant::now() < deadline, "no checkpoint at seq 5 in time; export:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(checkpoint_lines(&text) >= 1);

    let out = s.ctl(&["ledger", "verify", "--export-file", "ledger.jsonl", "--public-key", &pin_key(&s)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("last checkpoint seq 5"), "{}", out.stdout);

    // RFC 8032's first test key: a valid ed25519 key, not the server's.
    let other = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let out = s.ctl(&["ledger", "verify", "--export-file", "ledger.jsonl", "--public-key", other]);
    assert_eq!(out.code, 8, "{out:?}");
    assert!(out.stderr.starts_with("ledger verification FAILED at seq "), "{}", out.stderr);
    assert!(out.stderr.contains("BadSignature"), "{}", out.stderr);
    // Online with the wrong key pinned: the same.
    let out = s.ctl(&["ledger", "verify", "--public-key", other]);
    assert_eq!(out.code, 8, "{out:?}");
    assert!(out.stderr.contains("BadSignature"), "{}", out.stderr);
}

#[test]
fn summary_of_today_counts_the_creates() {
    let s = quiet_server();
    apply_four(&s);
    let out = s.ctl(&["ledger", "summary", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let summary = json(&out.stdout);
    assert_eq!(summary_count(&summary, "resource.created"), Some(4), "{summary}");

    let out = s.ctl(&["ledger", "summary"]);
    assert_eq!(out.code, 0, "{out:?}");
    let line = out.stdout.lines().find(|l| l.contains("resource.created")).unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(line.split_whitespace().any(|w| w == "4"), "{line}");
    assert!(out.stdout.contains("No anomalies."), "{}", out.stdout);

    // Another day has nothing.
    let out = s.ctl(&["ledger", "summary", "--day", "2000-01-01", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(summary_count(&json(&out.stdout), "resource.created"), None, "{}", out.stdout);
    let out = s.ctl(&["ledger", "summary", "--day", "2000-13-01"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn help_documents_exit_code_8() {
    let mut cmd = common::agentctl(std::path::Path::new("/nonexistent/client.toml"));
    cmd.arg("--help");
    let out = common::run(cmd, None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("8  ledger verification failed"), "{}", out.stdout);
}

// Export lines (docs/ledger.md): `{"type":"header"|"checkpoint"|"entry", ...}`.

/// The non-blank lines of an export (blank lines are allowed by the format; the export test
/// checks the server writes none).
fn export_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim().is_empty())
}

fn is_entry_line(v: &Value) -> bool {
    v["type"] == "entry"
}

fn is_checkpoint_line(v: &Value) -> bool {
    v["type"] == "checkpoint"
}

fn checkpoint_lines(text: &str) -> usize {
    export_lines(text).filter(|l| is_checkpoint_line(&json(l))).count()
}

fn summary_count(summary: &Value, action: &str) -> Option<u64> {
    summary["byAction"][action].as_u64()
}

#[test]
fn many_entries_stream_through_verify_and_page_through_query() {
    let s = quiet_server();
    let n = 300;
    let docs: Vec<String> = (0..n).map(|i| doc("Agent", &format!("agent-{i}"), AGENT)).collect();
    let f = s.write("many.yaml", &docs.join("---\n"));
    let out = s.ctl(&["apply", "-f", &f, "-o", "name"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The export (~200 KB) arrives in many HTTP chunks that split lines; the verifier sees them all.
    let out = s.ctl(&["ledger", "verify", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    // n writes after the bootstrap token's entry.
    assert_eq!(json(&out.stdout)["entriesChecked"], n + 1, "{}", out.stdout);
    let text = export_to(&s, "many.jsonl");
    assert!(text.len() > 100_000, "export is {} bytes", text.len());
    let out = s.ctl(&["ledger", "verify", "--export-file", "many.jsonl", "--public-key", &pin_key(&s)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with(&format!("ledger intact: {} entries (seq 1–{})", n + 1, n + 1)), "{}", out.stdout);

    let all = entries(&s, &["--chunk-size", "70"]);
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=n + 1).collect::<Vec<u64>>());
    assert_eq!(entries(&s, &["--limit", "150", "--chunk-size", "70"]).len(), 150);
}
