//! Everything `agentctl` prints: data on stdout, errors on stderr. Rendering is pure (returns
//! strings) so it can be unit-tested; [`Printer`] does the writing.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{self, Write};

use agentplane_api::Kind;
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
        let mut stdout = io::stdout().lock();
        stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(|e| {
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
}
