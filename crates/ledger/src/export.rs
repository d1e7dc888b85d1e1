//! Export formats: JSON Lines (verifiable offline) and CSV (for spreadsheets).
//!
//! A JSONL export is, in this order: an optional header line, every checkpoint line, then every
//! entry line in seq order. Checkpoints come first so that a reader can check them while entries
//! stream past in constant memory, and so that cutting entries off the end of the file is detected
//! as a truncation. [`read_export`] rejects any other order.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::canonical::{EntryForm, write_entry, write_value};
use crate::checkpoint::{Checkpoint, LedgerPublicKey};
use crate::entry::{ActorKind, Entry};
use crate::verify::{VerifyReport, verify};

/// The `format` of the export header.
pub const EXPORT_FORMAT: &str = "agentplane.ledger.export.v1";

/// The first line of an export: which format, and the key its checkpoints were signed with
/// (informational: verify with a key obtained independently).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportHeader {
    pub format: String,
    /// Standard base64 of the 32 raw ed25519 public key bytes.
    pub public_key: String,
    pub key_id: String,
}

/// One line of a JSONL export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExportItem {
    Header(ExportHeader),
    Checkpoint(Checkpoint),
    Entry(Box<Entry>),
}

/// A line of an export that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("line {line}: could not be read: {source}")]
    Io {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: not a valid export line: {source}")]
    Parse {
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("line {line}: {message}")]
    Format { line: u64, message: String },
}

impl ExportError {
    /// The 1-based line number.
    pub fn line(&self) -> u64 {
        match self {
            ExportError::Io { line, .. } | ExportError::Parse { line, .. } | ExportError::Format { line, .. } => *line,
        }
    }
}

/// The entry's export line: its canonical JSON plus `"hash"` and `"type":"entry"` (keys sorted,
/// `ts` with six fractional digits), ending in `\n`. Removing `type` and `hash` and re-encoding
/// canonically gives back exactly the bytes the hash covers.
pub fn export_line_entry(entry: &Entry) -> String {
    let mut out = Vec::with_capacity(600);
    write_entry(&mut out, entry, EntryForm { seq: entry.seq, with_hash: true, with_type: true });
    out.push(b'\n');
    into_string(out)
}

/// A checkpoint's export line (`{"type":"checkpoint",…}`), ending in `\n`.
pub fn export_line_checkpoint(cp: &Checkpoint) -> String {
    line(&ExportItem::Checkpoint(cp.clone()))
}

/// The optional first line of an export, ending in `\n`.
pub fn export_header(key: &LedgerPublicKey) -> String {
    line(&ExportItem::Header(ExportHeader {
        format: EXPORT_FORMAT.to_owned(),
        public_key: key.to_base64(),
        key_id: key.key_id().to_owned(),
    }))
}

fn line(item: &ExportItem) -> String {
    // Serializing these plain structs cannot fail.
    let mut s = serde_json::to_string(item).unwrap_or_default();
    s.push('\n');
    s
}

fn into_string(bytes: Vec<u8>) -> String {
    // The canonical writer only produces valid UTF-8.
    String::from_utf8(bytes).unwrap_or_default()
}

/// Read a JSONL export line by line (blank lines are skipped). Enforces the order header?,
/// checkpoints*, entries*. Stops after an I/O error.
pub fn read_export<R: BufRead>(reader: R) -> ExportReader<R> {
    ExportReader { reader, line: 0, buf: String::new(), phase: Phase::Start, done: false }
}

/// The iterator returned by [`read_export`].
#[derive(Debug)]
pub struct ExportReader<R> {
    reader: R,
    line: u64,
    buf: String,
    phase: Phase,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Start,
    Checkpoints,
    Entries,
}

impl<R> ExportReader<R> {
    /// The number of the line last read (1-based).
    pub fn line(&self) -> u64 {
        self.line
    }
}

impl<R: BufRead> Iterator for ExportReader<R> {
    type Item = Result<ExportItem, ExportError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            self.buf.clear();
            self.line += 1;
            let line = self.line;
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(source) => {
                    self.done = true;
                    return Some(Err(ExportError::Io { line, source }));
                }
            }
            let text = self.buf.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let item = match serde_json::from_str::<ExportItem>(text) {
                Ok(item) => item,
                Err(source) => return Some(Err(ExportError::Parse { line, source })),
            };
            let (phase, misplaced) = match &item {
                ExportItem::Header(h) => {
                    if h.format != EXPORT_FORMAT {
                        let message = format!("unsupported export format {:?} (expected {EXPORT_FORMAT})", h.format);
                        return Some(Err(ExportError::Format { line, message }));
                    }
                    (Phase::Checkpoints, (self.phase > Phase::Start).then_some("the header must be the first line"))
                }
                ExportItem::Checkpoint(_) => (
                    Phase::Checkpoints,
                    (self.phase > Phase::Checkpoints).then_some("checkpoint lines must come before all entry lines"),
                ),
                ExportItem::Entry(_) => (Phase::Entries, None),
            };
            if let Some(message) = misplaced {
                return Some(Err(ExportError::Format { line, message: message.to_owned() }));
            }
            self.phase = phase;
            return Some(Ok(item));
        }
    }
}

/// Verify a JSONL export: checkpoints are collected (they come first), entries stream through
/// [`verify`]. A line that cannot be read, or is out of order, is a `Corrupt` problem.
pub fn verify_export<R: BufRead>(reader: R, key: Option<&LedgerPublicKey>) -> VerifyReport {
    verify_export_from(reader, key, None)
}

/// [`verify_export`] starting at `from_seq` (see [`verify`]).
pub fn verify_export_from<R: BufRead>(reader: R, key: Option<&LedgerPublicKey>, from_seq: Option<u64>) -> VerifyReport {
    let mut items = read_export(reader);
    let mut checkpoints = Vec::new();
    let mut first: Option<Result<Entry, ExportError>> = None;
    for item in items.by_ref() {
        match item {
            Ok(ExportItem::Header(_)) => {}
            Ok(ExportItem::Checkpoint(cp)) => checkpoints.push(cp),
            Ok(ExportItem::Entry(e)) => {
                first = Some(Ok(*e));
                break;
            }
            Err(e) => {
                first = Some(Err(e));
                break;
            }
        }
    }
    let rest = items.map(|item| match item {
        Ok(ExportItem::Entry(e)) => Ok(*e),
        // `read_export` already turns a misplaced header or checkpoint into an error.
        Ok(_) => Err(ExportError::Format { line: 0, message: "unexpected line".into() }),
        Err(e) => Err(e),
    });
    verify(first.into_iter().chain(rest), &checkpoints, key, from_seq)
}

/// The CSV header line (RFC 4180), ending in `\r\n`.
pub fn csv_header() -> &'static str {
    "seq,ts,actorKind,actorId,action,namespace,targetKind,targetNamespace,targetName,targetUid,run,environment,\
     takeoverLevel,decision,outcome,params,error,traceId,prevHash,hash\r\n"
}

/// One CSV row (RFC 4180: a field containing `,`, `"`, CR or LF is quoted, `"` doubled), ending in
/// `\r\n`. Absent values are empty fields; `params` is its canonical JSON in one field.
pub fn csv_row(e: &Entry) -> String {
    let mut row = String::with_capacity(512);
    let target = e.target.as_ref();
    let mut params = Vec::with_capacity(128);
    write_value(&mut params, &e.params);
    let params = into_string(params);
    let fields: [&str; 20] = [
        &e.seq.to_string(),
        &crate::canonical::format_ts(&e.ts),
        match e.actor.kind {
            ActorKind::User => "user",
            ActorKind::Agent => "agent",
            ActorKind::System => "system",
        },
        &e.actor.id,
        &e.action,
        e.namespace.as_deref().unwrap_or(""),
        target.map_or("", |t| &t.kind),
        target.map_or("", |t| &t.namespace),
        target.map_or("", |t| &t.name),
        target.and_then(|t| t.uid.as_deref()).unwrap_or(""),
        e.run.as_deref().unwrap_or(""),
        e.environment.as_deref().unwrap_or(""),
        &e.takeover_level.map(|l| l.to_string()).unwrap_or_default(),
        e.decision.as_deref().unwrap_or(""),
        &e.outcome,
        &params,
        e.error.as_deref().unwrap_or(""),
        e.trace_id.as_deref().unwrap_or(""),
        &e.prev_hash,
        &e.hash,
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            row.push(',');
        }
        if field.contains([',', '"', '\r', '\n']) {
            row.push('"');
            row.push_str(&field.replace('"', "\"\""));
            row.push('"');
        } else {
            row.push_str(field);
        }
    }
    row.push_str("\r\n");
    row
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testutil::{chain, checkpoints_every, sample_draft};
    use crate::verify::ProblemKind;
    use crate::{GENESIS_HASH, LedgerKey};
    use chrono::{TimeZone, Utc};
    use serde_json::Value;

    fn export(entries: &[Entry], cps: &[Checkpoint], key: &LedgerKey) -> String {
        let mut s = export_header(&key.public_key());
        cps.iter().for_each(|c| s.push_str(&export_line_checkpoint(c)));
        entries.iter().for_each(|e| s.push_str(&export_line_entry(e)));
        s
    }

    fn setup() -> (Vec<Entry>, Vec<Checkpoint>, LedgerKey) {
        let key = LedgerKey::from_seed(&[5; 32]);
        let entries = chain(30);
        let cps = checkpoints_every(&entries, 10, &key);
        (entries, cps, key)
    }

    #[test]
    fn entry_line_is_canonical_with_hash_and_type() {
        let (entries, _, _) = setup();
        let line = export_line_entry(&entries[0]);
        assert!(line.ends_with("\"type\":\"entry\"}\n") && line.starts_with("{\"action\":"), "{line}");
        let mut v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["hash"], entries[0].hash.as_str());
        let obj = v.as_object_mut().unwrap();
        obj.remove("type");
        obj.remove("hash");
        assert_eq!(crate::canonical::canonical_json(&v).into_bytes(), entries[0].canonical_bytes());
    }

    #[test]
    fn export_round_trips_and_verifies() {
        let (entries, cps, key) = setup();
        let text = export(&entries, &cps, &key);
        let items: Vec<ExportItem> = read_export(text.as_bytes()).map(Result::unwrap).collect();
        assert_eq!(items.len(), 1 + 3 + 30);
        assert!(matches!(&items[0], ExportItem::Header(h) if h.key_id == key.key_id()));
        assert_eq!(items[1], ExportItem::Checkpoint(cps[0].clone()));
        assert_eq!(items[4], ExportItem::Entry(Box::new(entries[0].clone())));
        let r = verify_export(text.as_bytes(), Some(&key.public_key()));
        assert!(r.intact, "{r:?}");
        assert_eq!((r.entries_checked, r.checkpoints_checked), (30, 3));
        // CRLF line endings and blank lines are fine.
        let crlf = text.replace('\n', "\r\n\r\n");
        assert!(verify_export(crlf.as_bytes(), Some(&key.public_key())).intact);
    }

    #[test]
    fn corrupted_export_line_is_named() {
        let (entries, cps, key) = setup();
        let text = export(&entries, &cps, &key);
        let mut lines: Vec<&str> = text.lines().collect();
        lines[10] = "{\"type\":\"entry\",\"seq\":";
        let bad = lines.join("\n");
        let r = verify_export(bad.as_bytes(), Some(&key.public_key()));
        let p = r.problem.unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Corrupt, 7));
        assert!(p.message.contains("line 11"), "{}", p.message);
        // An edited byte inside an entry line is an edit, not corruption.
        let edited = text.replacen("\"outcome\":\"success\"", "\"outcome\":\"sucress\"", 1);
        let p = verify_export(edited.as_bytes(), None).problem.unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Edited, 1));
        // Invalid UTF-8.
        let mut bytes = text.clone().into_bytes();
        let pos = text.find("deployer-7").unwrap();
        bytes[pos] = 0xff;
        let p = verify_export(bytes.as_slice(), None).problem.unwrap();
        assert_eq!(p.kind, ProblemKind::Corrupt);
    }

    #[test]
    fn truncated_export_file_is_detected() {
        let (entries, cps, key) = setup();
        let text = export(&entries[..25], &cps, &key);
        let p = verify_export(text.as_bytes(), Some(&key.public_key())).problem.unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Truncated, 26));
    }

    #[test]
    fn out_of_order_lines_are_rejected_with_their_line_number() {
        let (entries, cps, key) = setup();
        let mut text = export(&entries[..3], &[], &key);
        text.push_str(&export_line_checkpoint(&cps[0]));
        let errs: Vec<ExportError> = read_export(text.as_bytes()).filter_map(Result::err).collect();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line(), 5);
        assert!(errs[0].to_string().contains("before all entry lines"));
        let p = verify_export(text.as_bytes(), None).problem.unwrap();
        assert_eq!(p.kind, ProblemKind::Corrupt);

        let text = format!("{}{}", export_line_checkpoint(&cps[0]), export_header(&key.public_key()));
        let errs: Vec<ExportError> = read_export(text.as_bytes()).filter_map(Result::err).collect();
        assert_eq!(errs[0].line(), 2);
        let text = export_header(&key.public_key()).replace(EXPORT_FORMAT, "other.v9");
        assert!(read_export(text.as_bytes()).next().unwrap().unwrap_err().to_string().contains("unsupported"));
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let mut d = sample_draft();
        d.error = Some("bad \"quote\", and\nnewline".into());
        d.params = serde_json::json!({"b": "x,y", "a": 1});
        let e = d.seal(1, Utc.with_ymd_and_hms(2026, 11, 24, 1, 2, 3).unwrap(), GENESIS_HASH);
        let row = csv_row(&e);
        assert!(row.ends_with("\r\n"));
        assert!(row.starts_with("1,2026-11-24T01:02:03.000000Z,agent,deployer-7,resource.updated,team-a,Deployment,team-a,web,,run-1,production,2,allow,success,"), "{row}");
        assert!(row.contains(r#","{""a"":1,""b"":""x,y""}","#), "{row}");
        assert!(row.contains("\"bad \"\"quote\"\", and\nnewline\""), "{row}");
        assert_eq!(csv_header().split(',').count(), 20);
        // Parse it back with a minimal RFC 4180 reader: 20 fields, values intact.
        let fields = parse_csv_row(row.trim_end_matches("\r\n"));
        assert_eq!(fields.len(), 20);
        assert_eq!(fields[16], "bad \"quote\", and\nnewline");
        assert_eq!(fields[15], r#"{"a":1,"b":"x,y"}"#);
        assert_eq!(fields[19], e.hash);
    }

    fn parse_csv_row(row: &str) -> Vec<String> {
        let mut fields = vec![String::new()];
        let mut quoted = false;
        let mut chars = row.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', false) => quoted = true,
                ('"', true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    fields.last_mut().unwrap().push('"');
                }
                ('"', true) => quoted = false,
                (',', false) => fields.push(String::new()),
                (c, _) => fields.last_mut().unwrap().push(c),
            }
        }
        fields
    }
}
