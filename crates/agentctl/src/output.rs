//! Everything `agentctl` prints: data on stdout, errors on stderr. Rendering is pure (returns
//! strings) so it can be unit-tested; [`Printer`] does the writing.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{self, Write};

use agentplane_api::Kind;
use agentplane_ledger::{Problem, Summary, VerifyReport};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::cli::OutputFormat;
use crate::error::CliError;

/// Writes to stdout and stderr. A closed stdout (broken pipe) becomes [`CliError::BrokenPipe`],
/// which exits quietly.
#[derive(Debug)]
pub struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Printer {
        Printer { format }
    }

    /// Writes `text` to stdout as is.
    pub fn out(&self, text: &str) -> Result<(), CliError> {
        self.out_bytes(text.as_bytes())
    }

    /// Writes raw bytes to stdout (a chunk of a streamed export).
    pub fn out_bytes(&self, bytes: &[u8]) -> Result<(), CliError> {
        let mut stdout = io::stdout().lock();
        stdout.write_all(bytes).and_then(|()| stdout.flush()).map_err(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                CliError::BrokenPipe
            } else {
                CliError::Other(format!("cannot write to stdout: {e}"))
            }
        })
    }

    /// Writes one line to stdout.
    pub fn line(&self, line: &str) -> Result<(), CliError> {
        self.out(&format!("{line}\n"))
    }

    /// Writes a note (not data) to stderr.
    pub fn note(&self, line: &str) {
        let _ = writeln!(io::stderr().lock(), "{line}");
    }

    /// Replaces the current stderr line with `line` (a spinner); only for terminals.
    pub fn progress(&self, line: &str) {
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
    }

    /// Clears the line [`Printer::progress`] drew.
    pub fn clear_progress(&self) {
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K");
        let _ = stderr.flush();
    }

    /// Writes `error: <prefix><line>` to stderr for each line of the error.
    pub fn error(&self, prefix: &str, err: &CliError) {
        let mut stderr = io::stderr().lock();
        for line in err.lines() {
            let _ = writeln!(stderr, "error: {prefix}{line}");
        }
    }

    /// Writes one object or list as JSON or YAML.
    pub fn value(&self, value: &Value) -> Result<(), CliError> {
        match self.format {
            OutputFormat::Yaml => self.out(&to_yaml(value)),
            _ => self.out(&to_json(value)),
        }
    }

    /// Writes several objects: one as itself, several as a `List`.
    pub fn values(&self, values: Vec<Value>) -> Result<(), CliError> {
        match values.len() {
            0 => Ok(()),
            1 => self.value(&values[0]),
            _ => self.value(&serde_json::json!({
                "apiVersion": agentplane_api::API_VERSION,
                "kind": "List",
                "items": values,
            })),
        }
    }
}

pub fn to_json(value: &Value) -> String {
    // A `Value` always serialises.
    let mut s = serde_json::to_string_pretty(value).unwrap_or_default();
    s.push('\n');
    s
}

pub fn to_yaml(value: &Value) -> String {
    serde_yaml::to_string(value).unwrap_or_default()
}

/// `<singular>/<name>`, as `-o name` prints it.
pub fn kind_name(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.singular())
}

pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

pub fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("")
}

/// Age like kubectl: `5s`, `3m`, `2h`, `4d`, `1y`.
pub fn age(created: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(created) = created else { return "<unknown>".into() };
    let secs = (now - created).num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 60 * 60 => format!("{}m", s / 60),
        s if s < 24 * 60 * 60 => format!("{}h", s / 3600),
        s if s < 365 * 24 * 60 * 60 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

fn timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

fn created(obj: &Value) -> Option<DateTime<Utc>> {
    timestamp(obj.pointer("/metadata/creationTimestamp"))
}

/// A cell: scalars as text, missing as `<none>`, on one line.
fn cell(v: Option<&Value>) -> String {
    let s = match v {
        None | Some(Value::Null) => return "<none>".into(),
        Some(Value::String(s)) if s.is_empty() => return "<none>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    one_line(&s)
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 3).collect();
        t.push_str("...");
        t
    }
}

/// Kind-specific columns between NAME and AGE: header and JSON pointer.
fn columns(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::AgentRun => &[("PHASE", "/status/phase"), ("AGENT", "/spec/agentRef/name")],
        Kind::Agent => &[("PROVIDER", "/spec/providerRef/name"), ("MAX-IN-FLIGHT", "/spec/maxInFlight")],
        Kind::AgentProvider => &[("BINARY", "/spec/binary")],
        Kind::Environment => &[
            ("CLASS", "/spec/class"),
            ("MAX-LEVEL", "/spec/maxTakeoverLevel"),
            ("DEFAULT-LEVEL", "/spec/defaultTakeoverLevel"),
        ],
        Kind::ImplementationSpec => &[("SUMMARY", "/spec/summary")],
        Kind::Approval => &[("PHASE", "/status/phase"), ("SUBJECT", "/spec/subject")],
        _ => &[],
    }
}

const SUMMARY_WIDTH: usize = 50;

/// The table `get` prints for a list of objects of one kind.
pub fn table(kind: Kind, items: &[Value], all_namespaces: bool, now: DateTime<Utc>) -> String {
    let cols = columns(kind);
    let mut header = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE".to_string());
    }
    header.push("NAME".to_string());
    header.extend(cols.iter().map(|(h, _)| (*h).to_string()));
    header.push("AGE".to_string());
    let mut rows = vec![header];
    for obj in items {
        let mut row = Vec::new();
        if all_namespaces {
            row.push(one_line(namespace_of(obj)));
        }
        row.push(one_line(name_of(obj)));
        for (h, ptr) in cols {
            let c = cell(obj.pointer(ptr));
            row.push(if *h == "SUMMARY" { truncate(&c, SUMMARY_WIDTH) } else { c });
        }
        row.push(age(created(obj), now));
        rows.push(row);
    }
    layout(&rows)
}

/// Aligns columns, separated by at least three spaces; the last column is not padded.
fn layout(rows: &[Vec<String>]) -> String {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `SEQ TIME ACTOR ACTION TARGET OUTCOME` for ledger entries (as the server sends them):
/// ACTOR as `kind:id`, TARGET as `kind/namespace/name`.
pub fn ledger_table(entries: &[Value]) -> String {
    let mut rows = vec![["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME"].map(String::from).to_vec()];
    for e in entries {
        let time = timestamp(e.get("ts"))
            .map_or_else(|| cell(e.get("ts")), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let actor =
            match (e.pointer("/actor/kind").and_then(Value::as_str), e.pointer("/actor/id").and_then(Value::as_str)) {
                (Some(k), Some(id)) => one_line(&format!("{k}:{id}")),
                (None, Some(id)) => one_line(id),
                _ => "<none>".into(),
            };
        let target = match e.get("target").filter(|t| t.is_object()) {
            Some(t) => one_line(&format!(
                "{}/{}/{}",
                t.get("kind").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase(),
                t.get("namespace").and_then(Value::as_str).unwrap_or(""),
                t.get("name").and_then(Value::as_str).unwrap_or("")
            )),
            None => "<none>".into(),
        };
        rows.push(vec![cell(e.get("seq")), time, actor, cell(e.get("action")), target, cell(e.get("outcome"))]);
    }
    layout(&rows)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn secs(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `ledger intact: 1234 entries (seq 1–1234), last checkpoint seq 1200 at ..., 12 checkpoints
/// verified` — and what the report cannot vouch for (entries after the last checkpoint, or
/// signatures not checked).
pub fn verify_intact(r: &VerifyReport) -> String {
    let mut out = format!("ledger intact: {}", plural(r.entries_checked, "entry", "entries"));
    if let (Some(first), Some(last)) = (r.first_seq, r.last_seq) {
        out.push_str(&format!(" (seq {first}–{last})"));
    }
    match &r.last_checkpoint {
        Some(cp) => {
            out.push_str(&format!(", last checkpoint seq {} at {}, ", cp.seq, secs(&cp.ts)));
            if r.signatures_checked {
                out.push_str(&format!("{} verified", plural(r.checkpoints_checked, "checkpoint", "checkpoints")));
            } else {
                out.push_str(&format!(
                    "{} matched (signatures not checked: no public key)",
                    plural(r.checkpoints_checked, "checkpoint", "checkpoints")
                ));
            }
            if let Some(last) = r.last_seq.filter(|&l| l > cp.seq) {
                out.push_str(&format!(
                    "; {} after it not yet covered by a checkpoint",
                    plural(last - cp.seq, "entry", "entries")
                ));
            }
        }
        None if r.entries_checked > 0 => out.push_str(", no checkpoint yet (no signature covers these entries)"),
        None => out.push_str(", no checkpoint yet"),
    }
    out
}

/// `ProblemKind` as a CamelCase name (`bad_signature` → `BadSignature`), like the API's codes.
fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// `ledger verification FAILED at seq 57: Edited: <message>`.
pub fn verify_failed(p: &Problem) -> String {
    format!("ledger verification FAILED at seq {}: {}: {}", p.seq, camel(p.kind.as_str()), one_line(&p.message))
}

/// `  key   count` rows, most first (ties by key), or `  (none)`.
fn counts<'a>(out: &mut String, title: &str, map: impl IntoIterator<Item = (&'a String, &'a u64)>) {
    out.push_str(title);
    out.push_str(":\n");
    let mut rows: Vec<(&String, &u64)> = map.into_iter().collect();
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![one_line(k), v.to_string()]).collect();
    indent(out, &layout(&rows), 2);
}

fn indent(out: &mut String, text: &str, by: usize) {
    for line in text.lines() {
        out.push_str(&" ".repeat(by));
        out.push_str(line);
        out.push('\n');
    }
}

/// What `ledger summary` prints for people.
pub fn ledger_summary(s: &Summary) -> String {
    let mut out = format!("Ledger summary for {} (UTC): {}", s.day, plural(s.total, "entry", "entries"));
    if let (Some(first), Some(last)) = (s.first_seq, s.last_seq) {
        out.push_str(&format!(" (seq {first}–{last})"));
    }
    out.push_str("\n\n");
    counts(&mut out, "By action", &s.by_action);
    out.push('\n');
    counts(&mut out, "By outcome", &s.by_outcome);
    out.push('\n');
    counts(&mut out, "By actor", &s.by_actor);
    out.push('\n');
    counts(&mut out, "By environment", &s.by_environment);
    out.push('\n');
    counts(&mut out, &format!("Denials ({})", s.denials.total), &s.denials.by_actor);
    out.push('\n');
    let a = &s.approvals;
    out.push_str(&format!(
        "Approvals: {} requested, {} approved, {} rejected, {} expired\n\n",
        a.requested, a.approved, a.rejected, a.expired
    ));
    counts(&mut out, "Top agents", s.top_agents.iter().map(|a| (&a.id, &a.count)));
    out.push('\n');
    if s.anomalies.is_empty() {
        out.push_str("No anomalies.\n");
        return out;
    }
    out.push_str(&format!("Anomalies ({}):\n", s.anomalies.len()));
    let mut rows = vec![["KIND", "ACTOR", "ENVIRONMENT", "COUNT", "FIRST-SEQ", "DETAIL"].map(String::from).to_vec()];
    for an in &s.anomalies {
        let kind = serde_json::to_value(an.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        rows.push(vec![
            kind,
            one_line(&an.actor),
            an.environment.as_deref().map_or_else(|| "<none>".into(), one_line),
            an.count.to_string(),
            an.first_seq.to_string(),
            one_line(&an.detail),
        ]);
    }
    indent(&mut out, &layout(&rows), 2);
    out
}

// ---------------------------------------------------------------------------------------------
// Runs

/// `status.phase` of a run; a run without one is `Pending`.
pub fn run_phase(obj: &Value) -> &str {
    obj.pointer("/status/phase").and_then(Value::as_str).filter(|p| !p.is_empty()).unwrap_or("Pending")
}

/// The condition of type `kind` in `status.conditions`.
fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(kind)))
}

/// `Reason: message` of a condition, on one line (either part may be missing).
fn reason_message(c: &Value) -> Option<String> {
    let reason = c.get("reason").and_then(Value::as_str).filter(|s| !s.is_empty());
    let message = c.get("message").and_then(Value::as_str).filter(|s| !s.is_empty());
    let text = match (reason, message) {
        (Some(r), Some(m)) => format!("{r}: {m}"),
        (Some(r), None) => r.to_string(),
        (None, Some(m)) => m.to_string(),
        (None, None) => return None,
    };
    Some(truncate(&one_line(&text), 200))
}

/// `agentrun/<name> submitted`, or `... already submitted (idempotent)` for a replay.
pub fn run_submitted(name: &str, idempotent: bool) -> String {
    if idempotent {
        format!("{} already submitted (idempotent)", kind_name(Kind::AgentRun, name))
    } else {
        format!("{} submitted", kind_name(Kind::AgentRun, name))
    }
}

/// The final line of a wait: `agentrun/<name> Succeeded (exit code 0)`, or with the reason of a
/// run that did not succeed: `agentrun/<name> Failed (exit code 3; NonZeroExit: ...)`.
pub fn run_result(obj: &Value) -> String {
    let phase = run_phase(obj);
    let mut parts = Vec::new();
    if let Some(code) = obj.pointer("/status/exitCode").and_then(Value::as_i64) {
        parts.push(format!("exit code {code}"));
    }
    if phase != "Succeeded"
        && let Some(text) = condition(obj, phase).or_else(|| condition(obj, "Failed")).and_then(reason_message)
    {
        parts.push(text);
    }
    let mut line = format!("{} {}", kind_name(Kind::AgentRun, name_of(obj)), one_line(phase));
    if !parts.is_empty() {
        line.push_str(&format!(" ({})", parts.join("; ")));
    }
    line
}

/// A progress line of a wait (stderr, on a terminal): the phase, the attempt, a pending retry or
/// the reason a run is blocked.
pub fn run_progress(obj: &Value) -> String {
    let phase = run_phase(obj);
    let mut line = format!("{}: {}", kind_name(Kind::AgentRun, name_of(obj)), one_line(phase));
    let mut parts = Vec::new();
    if let Some(attempt) = obj.pointer("/status/attempt").and_then(Value::as_u64).filter(|&a| a > 0) {
        parts.push(format!("attempt {attempt}"));
    }
    if phase == "Pending" {
        if let Some(at) = obj.pointer("/status/nextRetryAt").and_then(Value::as_str) {
            parts.push(format!("retry at {}", one_line(at)));
        }
        if let Some(c) = condition(obj, "Blocked").filter(|c| c.get("status").and_then(Value::as_str) == Some("True"))
            && let Some(text) = reason_message(c)
        {
            parts.push(format!("blocked: {text}"));
        }
    }
    if !parts.is_empty() {
        line.push_str(&format!(" ({})", parts.join(", ")));
    }
    line
}

/// Why a run is where it is, on one line, for `run watch` and `get runs -w`: the reason and
/// message of the condition that explains its phase (empty when none does).
pub fn run_reason(obj: &Value) -> String {
    let phase = run_phase(obj);
    let is_true = |c: &&Value| c.get("status").and_then(Value::as_str) == Some("True");
    let text = match phase {
        "Succeeded" | "Failed" | "Cancelled" => {
            condition(obj, phase).or_else(|| condition(obj, "Failed")).and_then(reason_message)
        }
        "Running" if obj.pointer("/status/cancelRequestedAt").is_some_and(|v| !v.is_null()) => {
            Some(match obj.pointer("/status/cancelRequestedBy").and_then(Value::as_str) {
                Some(by) => format!("CancelRequested: by {}", one_line(by)),
                None => "CancelRequested".to_string(),
            })
        }
        "Running" => condition(obj, "InProgress").and_then(reason_message),
        _ => condition(obj, "Blocked")
            .filter(is_true)
            .or_else(|| obj.pointer("/status/nextRetryAt").and_then(|_| condition(obj, "InProgress")))
            .or_else(|| condition(obj, "Accepted"))
            .and_then(reason_message),
    };
    text.unwrap_or_default()
}

/// The header of the lines `get -w` and `run watch` print for `kind`.
pub fn watch_header(kind: Kind, all_namespaces: bool) -> Vec<String> {
    let mut h = Vec::new();
    if all_namespaces {
        h.push("NAMESPACE".to_string());
    }
    h.push("NAME".to_string());
    if kind == Kind::AgentRun {
        h.extend(["PHASE", "ATTEMPT", "REASON"].map(String::from));
    } else {
        h.extend(columns(kind).iter().map(|(c, _)| (*c).to_string()));
        h.push("AGE".to_string());
    }
    h
}

/// One line of `get -w` / `run watch`: for a run `NAME PHASE ATTEMPT REASON`, for other kinds
/// the columns of `get`.
pub fn watch_row(kind: Kind, obj: &Value, all_namespaces: bool, now: DateTime<Utc>) -> Vec<String> {
    let mut row = Vec::new();
    if all_namespaces {
        row.push(one_line(namespace_of(obj)));
    }
    row.push(one_line(name_of(obj)));
    if kind == Kind::AgentRun {
        row.push(one_line(run_phase(obj)));
        row.push(obj.pointer("/status/attempt").and_then(Value::as_u64).unwrap_or(0).to_string());
        row.push(run_reason(obj));
    } else {
        for (h, ptr) in columns(kind) {
            let c = cell(obj.pointer(ptr));
            row.push(if *h == "SUMMARY" { truncate(&c, SUMMARY_WIDTH) } else { c });
        }
        row.push(age(created(obj), now));
    }
    row
}

/// The [`StreamTable`] of `get -w` / `run watch` for `kind`, sized by the header, `first` and,
/// for runs, the longest phase.
pub fn watch_table(kind: Kind, all_namespaces: bool, first: &[Vec<String>]) -> (StreamTable, Vec<String>) {
    let header = watch_header(kind, all_namespaces);
    let mut rows = first.to_vec();
    if kind == Kind::AgentRun {
        let mut widest = vec![String::new(); header.len()];
        let phase = usize::from(all_namespaces) + 1;
        widest[phase] = "Succeeded".to_string();
        rows.push(widest);
    }
    (StreamTable::new(&header, &rows), header)
}

/// A table printed a line at a time (`get -w`): the widths are set by the header and the first
/// rows; a later, wider cell pushes its line out of alignment rather than re-printing.
#[derive(Debug, Clone)]
pub struct StreamTable {
    widths: Vec<usize>,
}

impl StreamTable {
    pub fn new(header: &[String], first: &[Vec<String>]) -> StreamTable {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in first {
            for (i, c) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        StreamTable { widths }
    }

    /// A whole table at once: the header and every row, aligned on all of them.
    pub fn render(header: &[String], rows: &[Vec<String>]) -> String {
        let t = StreamTable::new(header, rows);
        let mut out = t.line(header);
        for r in rows {
            out.push_str(&t.line(r));
        }
        out
    }

    /// One line (with its `\n`); at least three spaces between cells, the last one not padded.
    pub fn line(&self, row: &[String]) -> String {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            line.push_str(c);
            if i + 1 < row.len() {
                let w = self.widths.get(i).copied().unwrap_or(0);
                line.push_str(&" ".repeat(w.saturating_sub(c.chars().count()) + 3));
            }
        }
        let mut line = line.trim_end().to_string();
        line.push('\n');
        line
    }
}

/// What `run cancel` prints for the server's answer.
pub fn cancel_result(name: &str, reply: &Value) -> String {
    let run = kind_name(Kind::AgentRun, name);
    match reply.get("result").and_then(Value::as_str).unwrap_or("") {
        "cancelled" => format!("{run} cancelled"),
        "cancelling" => format!("{run} cancelling"),
        "alreadyFinished" => {
            let phase = reply.get("run").map_or("finished", run_phase);
            format!("{run} already finished (phase {}); nothing to cancel", one_line(phase))
        }
        other => format!("{run} {}", one_line(other)),
    }
}

/// The `Events:` section `describe agentrun` ends with (from `GET .../events`).
pub fn run_events(items: &[Value], now: DateTime<Utc>) -> String {
    if items.is_empty() {
        return "Events:           <none>\n".to_string();
    }
    let mut rows = vec![["TYPE", "REASON", "AGE", "FROM", "MESSAGE"].map(String::from).to_vec()];
    for e in items {
        rows.push(vec![
            cell(e.get("type")),
            cell(e.get("reason")),
            age(timestamp(e.get("time")), now),
            cell(e.get("actor")),
            truncate(&cell(e.get("message")), 200),
        ]);
    }
    let mut out = "Events:\n".to_string();
    indent(&mut out, &layout(&rows), 2);
    out
}

/// Frames of the spinner `run wait` shows on a terminal.
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// The spinner line of a wait: `⠹ agentrun/r: Running (attempt 1) 12s`.
pub fn spinner_line(frame: usize, progress: &str, waited: std::time::Duration) -> String {
    let secs = waited.as_secs();
    let waited = if secs < 60 { format!("{secs}s") } else { format!("{}m{:02}s", secs / 60, secs % 60) };
    format!("{} {progress} {waited}", SPINNER[frame % SPINNER.len()])
}

const LABEL_WIDTH: usize = 18;

fn field(out: &mut String, label: &str, value: &str) {
    out.push_str(&format!("{:<width$}{value}\n", format!("{label}:"), width = LABEL_WIDTH));
}

fn map_field(out: &mut String, label: &str, map: Option<&Value>) {
    let entries: Vec<String> = map
        .and_then(Value::as_object)
        .map(|m| {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect()
        })
        .unwrap_or_default();
    if entries.is_empty() {
        field(out, label, "<none>");
        return;
    }
    for (i, e) in entries.iter().enumerate() {
        if i == 0 {
            field(out, label, e);
        } else {
            out.push_str(&format!("{:width$}{e}\n", "", width = LABEL_WIDTH));
        }
    }
}

fn indented_yaml(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    for line in to_yaml(value).lines() {
        out.push_str(&pad);
        out.push_str(line);
        out.push('\n');
    }
}

fn is_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// What `describe` prints.
pub fn describe(kind: Kind, obj: &Value, now: DateTime<Utc>) -> String {
    let meta = obj.get("metadata");
    let m = |k: &str| meta.and_then(|m| m.get(k));
    let mut out = String::new();
    field(&mut out, "Name", &cell(m("name")));
    field(&mut out, "Namespace", &cell(m("namespace")));
    field(&mut out, "Kind", kind.as_str());
    map_field(&mut out, "Labels", m("labels"));
    map_field(&mut out, "Annotations", m("annotations"));
    let created = match created(obj) {
        Some(t) => format!("{} ({} ago)", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), age(Some(t), now)),
        None => "<unknown>".into(),
    };
    field(&mut out, "Created", &created);
    field(&mut out, "Resource Version", &cell(m("resourceVersion")));
    field(&mut out, "Generation", &cell(m("generation")));

    out.push_str("Spec:\n");
    match obj.get("spec") {
        s if is_empty(s) => out.push_str("  <none>\n"),
        Some(s) => indented_yaml(&mut out, s, 2),
        None => {}
    }

    let status = obj.get("status");
    if is_empty(status) {
        out.push_str("Status:           <none>\n");
        return out;
    }
    out.push_str("Status:\n");
    let mut rest = status.and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(phase) = rest.remove("phase") {
        out.push_str(&format!("  {:<width$}{}\n", "Phase:", cell(Some(&phase)), width = LABEL_WIDTH - 2));
    }
    if let Some(conditions) = rest.remove("conditions")
        && let Some(list) = conditions.as_array().filter(|l| !l.is_empty())
    {
        out.push_str("  Conditions:\n");
        let mut rows = vec![["TYPE", "STATUS", "REASON", "MESSAGE", "AGE"].map(String::from).to_vec()];
        for c in list {
            rows.push(vec![
                cell(c.get("type")),
                cell(c.get("status")),
                cell(c.get("reason")),
                cell(c.get("message")),
                c.get("lastTransitionTime").map_or_else(|| "<unknown>".into(), |t| age(timestamp(Some(t)), now)),
            ]);
        }
        for line in layout(&rows).lines() {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
    }
    if !rest.is_empty() {
        indented_yaml(&mut out, &Value::Object(rest), 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    #[test]
    fn age_matches_kubectl() {
        let n = now();
        let ago = |s: i64| age(Some(n - chrono::Duration::seconds(s)), n);
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(60), "1m");
        assert_eq!(ago(3 * 3600 + 5), "3h");
        assert_eq!(ago(4 * 86400), "4d");
        assert_eq!(ago(800 * 86400), "2y");
        assert_eq!(age(Some(n + chrono::Duration::seconds(30)), n), "<invalid>");
        assert_eq!(age(None, n), "<unknown>");
    }

    #[test]
    fn table_aligns_columns_with_three_spaces() {
        let items = vec![
            json!({"metadata": {"name": "a-long-name", "namespace": "x", "creationTimestamp": "2026-01-02T03:04:00Z"},
                   "spec": {"agentRef": {"name": "coder"}}, "status": {"phase": "Running"}}),
            json!({"metadata": {"name": "b", "namespace": "yy", "creationTimestamp": "2026-01-02T01:00:00Z"},
                   "spec": {"agentRef": {"name": "c"}}}),
        ];
        assert_eq!(
            table(Kind::AgentRun, &items, true, now()),
            "NAMESPACE   NAME          PHASE     AGENT   AGE\n\
             x           a-long-name   Running   coder   5s\n\
             yy          b             <none>    c       2h\n"
        );
    }

    #[test]
    fn run_lines() {
        let ok = json!({"metadata": {"name": "r"}, "status": {"phase": "Succeeded", "exitCode": 0,
                        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed"}]}});
        assert_eq!(run_result(&ok), "agentrun/r Succeeded (exit code 0)");
        let failed = json!({"metadata": {"name": "r"}, "status": {"phase": "Failed", "exitCode": 3,
                            "conditions": [{"type": "Failed", "status": "True", "reason": "NonZeroExit",
                                            "message": "the agent exited\nwith 3"}]}});
        assert_eq!(run_result(&failed), "agentrun/r Failed (exit code 3; NonZeroExit: the agent exited with 3)");
        let cancelled = json!({"metadata": {"name": "r"}, "status": {"phase": "Cancelled"}});
        assert_eq!(run_result(&cancelled), "agentrun/r Cancelled");
        let pending = json!({"metadata": {"name": "r"}});
        assert_eq!(run_progress(&pending), "agentrun/r: Pending");
        let blocked = json!({"metadata": {"name": "r"}, "status": {"phase": "Pending", "attempt": 1,
                             "conditions": [{"type": "Blocked", "status": "True", "reason": "ConcurrencyLimit",
                                             "message": "agent cap 5"}]}});
        assert_eq!(run_progress(&blocked), "agentrun/r: Pending (attempt 1, blocked: ConcurrencyLimit: agent cap 5)");
        assert_eq!(run_submitted("r", false), "agentrun/r submitted");
        assert_eq!(run_submitted("r", true), "agentrun/r already submitted (idempotent)");
    }

    #[test]
    fn watch_rows_and_reasons() {
        let t = |s: &str| format!("2026-01-02T03:0{s}Z");
        let pending = json!({"metadata": {"name": "r"}, "status": {"phase": "Pending", "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Admitted", "message": "waiting", "lastTransitionTime": t("0:00")}]}});
        assert_eq!(watch_row(Kind::AgentRun, &pending, false, now()), ["r", "Pending", "0", "Admitted: waiting"]);
        let blocked = json!({"metadata": {"name": "r", "namespace": "ns"}, "status": {"phase": "Pending", "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Admitted"},
            {"type": "Blocked", "status": "True", "reason": "ConcurrencyLimit", "message": "agent cap 1"}]}});
        assert_eq!(
            watch_row(Kind::AgentRun, &blocked, true, now()),
            ["ns", "r", "Pending", "0", "ConcurrencyLimit: agent cap 1"]
        );
        let retry = json!({"metadata": {"name": "r"}, "status": {"phase": "Pending", "attempt": 1, "nextRetryAt": t("1:00"),
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Admitted"},
                           {"type": "InProgress", "status": "False", "reason": "NonZeroExit", "message": "retrying"}]}});
        assert_eq!(run_reason(&retry), "NonZeroExit: retrying");
        let running = json!({"metadata": {"name": "r"}, "status": {"phase": "Running", "attempt": 2,
            "conditions": [{"type": "InProgress", "status": "True", "reason": "Started", "message": "attempt 2 started"}]}});
        assert_eq!(
            watch_row(Kind::AgentRun, &running, false, now()),
            ["r", "Running", "2", "Started: attempt 2 started"]
        );
        let mut stopping = running.clone();
        stopping["status"]["cancelRequestedAt"] = json!(t("2:00"));
        stopping["status"]["cancelRequestedBy"] = json!("user:anonymous");
        assert_eq!(run_reason(&stopping), "CancelRequested: by user:anonymous");
        let failed = json!({"metadata": {"name": "r"}, "status": {"phase": "Failed", "attempt": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "NonZeroExit", "message": "the agent exited 3"}]}});
        assert_eq!(run_reason(&failed), "NonZeroExit: the agent exited 3");
        assert_eq!(run_reason(&json!({"metadata": {"name": "r"}})), "");
        assert_eq!(watch_header(Kind::AgentRun, false), ["NAME", "PHASE", "ATTEMPT", "REASON"]);
        assert_eq!(watch_header(Kind::Agent, true), ["NAMESPACE", "NAME", "PROVIDER", "MAX-IN-FLIGHT", "AGE"]);
    }

    #[test]
    fn stream_table_keeps_the_first_widths() {
        let h: Vec<String> = ["NAME", "PHASE"].map(String::from).to_vec();
        let first = vec![vec!["a-long-name".to_string(), "Running".to_string()]];
        let t = StreamTable::new(&h, &first);
        assert_eq!(t.line(&h), "NAME          PHASE\n");
        assert_eq!(t.line(&first[0]), "a-long-name   Running\n");
        assert_eq!(t.line(&["an-even-longer-name".into(), "Failed".into()]), "an-even-longer-name   Failed\n");
        // A run's PHASE column fits every phase from the start.
        let (t, header) = watch_table(Kind::AgentRun, false, &[["r", "Pending", "0", ""].map(String::from).to_vec()]);
        assert_eq!(t.line(&header), "NAME   PHASE       ATTEMPT   REASON\n");
        assert_eq!(
            t.line(&["r", "Succeeded", "1", "Completed"].map(String::from)),
            "r      Succeeded   1         Completed\n"
        );
    }

    #[test]
    fn cancel_and_events_lines() {
        assert_eq!(cancel_result("r", &json!({"result": "cancelled"})), "agentrun/r cancelled");
        assert_eq!(cancel_result("r", &json!({"result": "cancelling"})), "agentrun/r cancelling");
        assert_eq!(
            cancel_result("r", &json!({"result": "alreadyFinished", "run": {"status": {"phase": "Succeeded"}}})),
            "agentrun/r already finished (phase Succeeded); nothing to cancel"
        );
        assert_eq!(run_events(&[], now()), "Events:           <none>\n");
        let items = vec![
            json!({"type": "Submitted", "reason": "Submitted", "message": "submitted by user:anonymous",
                   "time": "2026-01-02T03:00:05Z", "actor": "user:anonymous", "seq": 3}),
            json!({"type": "Started", "reason": "Started", "message": "attempt 1 started",
                   "time": "2026-01-02T03:04:00Z", "actor": "system:controller", "seq": 4, "attempt": 1}),
        ];
        assert_eq!(
            run_events(&items, now()),
            "Events:\n\
             \x20 TYPE        REASON      AGE   FROM                MESSAGE\n\
             \x20 Submitted   Submitted   4m    user:anonymous      submitted by user:anonymous\n\
             \x20 Started     Started     5s    system:controller   attempt 1 started\n"
        );
        assert_eq!(
            spinner_line(1, "agentrun/r: Running", std::time::Duration::from_secs(75)),
            "⠙ agentrun/r: Running 1m15s"
        );
    }

    #[test]
    fn summary_is_truncated_to_fifty_characters() {
        let long = "x".repeat(80);
        let items = vec![json!({"metadata": {"name": "s"}, "spec": {"summary": long}})];
        let t = table(Kind::ImplementationSpec, &items, false, now());
        let row = t.lines().nth(1).unwrap();
        assert!(row.contains(&format!("{}...", "x".repeat(47))), "{row}");
        assert!(!row.contains(&"x".repeat(48)), "{row}");
    }

    #[test]
    fn describe_prints_phase_conditions_and_rest() {
        let obj = json!({
            "metadata": {"name": "r", "namespace": "default", "labels": {"a": "1", "b": "2"}, "resourceVersion": "7",
                         "generation": 1, "creationTimestamp": "2026-01-02T03:00:05Z"},
            "spec": {"agentRef": {"name": "coder"}},
            "status": {"phase": "Running", "attempt": 1,
                       "conditions": [{"type": "Accepted", "status": "True", "reason": "Valid", "message": "ok",
                                       "lastTransitionTime": "2026-01-02T03:04:00Z"}]}
        });
        let d = describe(Kind::AgentRun, &obj, now());
        assert_eq!(
            d,
            "Name:             r\n\
             Namespace:        default\n\
             Kind:             AgentRun\n\
             Labels:           a=1\n                  b=2\n\
             Annotations:      <none>\n\
             Created:          2026-01-02T03:00:05Z (4m ago)\n\
             Resource Version: 7\n\
             Generation:       1\n\
             Spec:\n  agentRef:\n    name: coder\n\
             Status:\n  Phase:          Running\n  Conditions:\n\
             \x20   TYPE       STATUS   REASON   MESSAGE   AGE\n\
             \x20   Accepted   True     Valid    ok        5s\n\
             \x20 attempt: 1\n"
        );
    }

    fn report() -> VerifyReport {
        serde_json::from_value(json!({
            "intact": true, "entriesChecked": 1234, "firstSeq": 1, "lastSeq": 1234, "lastHash": "ab",
            "lastCheckpoint": {"seq": 1200, "hash": "ab", "ts": "2026-11-26T06:00:00.000000Z", "keyId": "k",
                               "signature": "s"},
            "checkpointsChecked": 12, "signaturesChecked": true, "problem": null
        }))
        .unwrap()
    }

    #[test]
    fn verify_lines() {
        let mut r = report();
        assert_eq!(
            verify_intact(&r),
            "ledger intact: 1234 entries (seq 1–1234), last checkpoint seq 1200 at 2026-11-26T06:00:00Z, \
             12 checkpoints verified; 34 entries after it not yet covered by a checkpoint"
        );
        r.last_seq = Some(1200);
        r.entries_checked = 1200;
        r.checkpoints_checked = 1;
        r.signatures_checked = false;
        assert_eq!(
            verify_intact(&r),
            "ledger intact: 1200 entries (seq 1–1200), last checkpoint seq 1200 at 2026-11-26T06:00:00Z, \
             1 checkpoint matched (signatures not checked: no public key)"
        );
        r.last_checkpoint = None;
        assert!(verify_intact(&r).ends_with(", no checkpoint yet (no signature covers these entries)"));
        let empty = VerifyReport { entries_checked: 0, first_seq: None, last_seq: None, ..r };
        assert_eq!(verify_intact(&empty), "ledger intact: 0 entries, no checkpoint yet");

        let p: Problem = serde_json::from_value(
            json!({"seq": 57, "kind": "bad_signature", "message": "checkpoint at seq 57 does not\nverify"}),
        )
        .unwrap();
        assert_eq!(
            verify_failed(&p),
            "ledger verification FAILED at seq 57: BadSignature: checkpoint at seq 57 does not verify"
        );
    }

    #[test]
    fn ledger_table_shows_actor_and_target() {
        let entries = vec![
            json!({"seq": 1, "ts": "2026-11-26T06:14:42.123456Z", "actor": {"kind": "user", "id": "anonymous"},
                   "action": "resource.created", "target": {"kind": "AgentProvider", "namespace": "default", "name": "shell"},
                   "outcome": "success"}),
            json!({"seq": 12, "ts": "2026-11-26T06:15:00.000000Z", "actor": {"kind": "system", "id": "checkpointer"},
                   "action": "auth.failed", "target": null, "outcome": "failure"}),
        ];
        assert_eq!(
            ledger_table(&entries),
            "SEQ   TIME                   ACTOR                 ACTION             TARGET                        OUTCOME\n\
             1     2026-11-26T06:14:42Z   user:anonymous        resource.created   agentprovider/default/shell   success\n\
             12    2026-11-26T06:15:00Z   system:checkpointer   auth.failed        <none>                        failure\n"
        );
    }

    #[test]
    fn summary_sections() {
        let s: Summary = serde_json::from_value(json!({
            "day": "2026-11-24", "total": 7, "firstSeq": 10, "lastSeq": 16,
            "byAction": {"resource.created": 4, "run.started": 3}, "byOutcome": {"success": 6, "denied": 1},
            "byActor": {"user:ann": 4, "agent:coder": 3}, "byEnvironment": {},
            "denials": {"total": 1, "byActor": {"agent:coder": 1}},
            "approvals": {"requested": 2, "approved": 1, "rejected": 0, "expired": 1},
            "topAgents": [{"id": "coder", "count": 3}],
            "anomalies": [{"kind": "elevation_use", "actor": "user:ann", "environment": "production", "count": 1,
                           "firstSeq": 12, "detail": "elevation.granted in production"}]
        }))
        .unwrap();
        let text = ledger_summary(&s);
        assert_eq!(
            text,
            "Ledger summary for 2026-11-24 (UTC): 7 entries (seq 10–16)\n\n\
             By action:\n  resource.created   4\n  run.started        3\n\n\
             By outcome:\n  success   6\n  denied    1\n\n\
             By actor:\n  user:ann      4\n  agent:coder   3\n\n\
             By environment:\n  (none)\n\n\
             Denials (1):\n  agent:coder   1\n\n\
             Approvals: 2 requested, 1 approved, 0 rejected, 1 expired\n\n\
             Top agents:\n  coder   3\n\n\
             Anomalies (1):\n\
             \x20 KIND            ACTOR      ENVIRONMENT   COUNT   FIRST-SEQ   DETAIL\n\
             \x20 elevation_use   user:ann   production    1       12          elevation.granted in production\n"
        );
        let quiet = Summary { anomalies: vec![], ..s };
        assert!(ledger_summary(&quiet).ends_with("Top agents:\n  coder   3\n\nNo anomalies.\n"));
    }
}
