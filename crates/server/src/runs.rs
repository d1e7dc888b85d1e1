//! The AgentRun sub-resources: `POST .../agentruns/{name}/cancel`, `GET .../agentruns/{name}/logs`
//! (plain text, or followed as server-sent events) and `GET .../agentruns/{name}/events` (the
//! run's history, read from the ledger).
//!
//! Logs are read from the local runtime's run folder, `<data_dir>/runs/<ns>/<name>/.agent/runner.log`
//! (see `crates/runtime/src/local/log.rs`): an append-only file that the runtime may replace (by
//! rename) with its tail behind a `[agentplane: N bytes of earlier output were dropped]` marker
//! line when it grows past the log cap.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::condition::{Condition, ConditionStatus, set_condition};
use agentplane_api::selector::{FieldSelector, LabelSelector};
use agentplane_api::{AgentRunStatus, Kind, RunPhase};
use agentplane_ledger::{Actor, ActorKind, Entry, actions, outcomes};
use agentplane_store::{
    LedgerQuery, MAX_LIST_LIMIT, ObjectKey, Precondition, Revision, Store, StoreError, WatchQuery, WatchStream,
    resource_audit, revision_of,
};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};

/// Read–modify–write attempts of a cancel before giving up with `409 Conflict`.
const CAS_ATTEMPTS: usize = 8;
/// Largest piece of log text sent in one `log` event (and read from disk at once).
pub const LOG_CHUNK_BYTES: usize = 64 * 1024;
/// How often a followed log is checked for growth.
const FOLLOW_POLL: Duration = Duration::from_millis(150);
/// How often the run is re-read while following when the store's watch is not available.
const FOLLOW_STATUS_POLL: Duration = Duration::from_secs(1);
/// A comment line is sent when nothing else was for this long, so proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Response header of a plain `GET .../logs`: the size of the log file when it was read.
pub const LOG_SIZE_HEADER: &str = "x-agentplane-log-size";

// The marker line `crates/runtime/src/local/log.rs` writes at the start of a log that lost its
// head to the cap. Kept in sync by hand: the server does not depend on the runtime crate.
const MARKER_PREFIX: &str = "[agentplane: ";
const MARKER_SUFFIX: &str = " bytes of earlier output were dropped]\n";

fn path_err(e: PathRejection) -> ApiError {
    ApiError::invalid(format!("bad path: {e}"))
}

fn query_err(e: QueryRejection) -> ApiError {
    ApiError::invalid(format!("bad query string: {e}"))
}

/// `kind:id`, as people read an actor (`user:alice`).
pub fn actor_label(a: &Actor) -> String {
    let kind = match a.kind {
        ActorKind::User => "user",
        ActorKind::Agent => "agent",
        ActorKind::System => "system",
    };
    format!("{kind}:{}", a.id)
}

fn run_key(ns: &str, name: &str) -> Result<ObjectKey, ApiError> {
    // The names become path components of the run folder: refuse anything that is not a name.
    for (field, v) in [("metadata.namespace", ns), ("metadata.name", name)] {
        if agentplane_api::validate_name(field, v).is_some() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("agentrun {name:?} not found in namespace {ns:?}: {v:?} is not a valid name"),
            ));
        }
    }
    Ok(ObjectKey::new(Kind::AgentRun, ns, name))
}

fn status_of(obj: &Value) -> Result<AgentRunStatus, ApiError> {
    match obj.get("status") {
        None | Some(Value::Null) => Ok(AgentRunStatus::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            tracing::error!(error = %e, "stored AgentRun status does not decode");
            ApiError::new(ErrorCode::Internal, "the stored run status cannot be read; see the server log")
        }),
    }
}

fn phase_of(obj: &Value) -> &str {
    obj.pointer("/status/phase").and_then(Value::as_str).filter(|p| !p.is_empty()).unwrap_or("Pending")
}

fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Succeeded" | "Failed" | "Cancelled")
}

fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: chrono::DateTime<Utc>,
) -> Condition {
    Condition::new(type_, status, reason, message, now)
}

// ---------------------------------------------------------------------------------------------
// Cancel

/// What a cancel did; the `result` field of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelResult {
    /// A pending run was ended `Cancelled` at once.
    Cancelled,
    /// A running run was asked to stop; the controller ends it.
    Cancelling,
    /// The run had already ended; nothing changed.
    AlreadyFinished,
}

impl CancelResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelResult::Cancelled => "cancelled",
            CancelResult::Cancelling => "cancelling",
            CancelResult::AlreadyFinished => "alreadyFinished",
        }
    }
    fn status(self) -> StatusCode {
        match self {
            CancelResult::Cancelling => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        }
    }
}

const CANCELLING_MESSAGE: &str = "the run is being stopped (SIGTERM, then SIGKILL after the grace period)";

fn cancel_reply(result: CancelResult, message: String, run: Value) -> Response {
    (result.status(), Json(json!({"result": result.as_str(), "message": message, "run": run}))).into_response()
}

/// `POST /api/v1/namespaces/{ns}/agentruns/{name}/cancel`. A `Pending` run becomes `Cancelled`
/// (200 `cancelled`, ledger `run.cancelled`); a `Running` run gets `status.cancelRequestedAt/By`
/// for the controller to act on (202 `cancelling`, ledger `run.cancel_requested`, once); a
/// finished run is left alone (200 `alreadyFinished`, no ledger entry). The body is ignored.
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((ns, name)) = path.map_err(path_err)?;
    let key = run_key(&ns, &name)?;
    let actor = principal.actor();
    let by = actor_label(&actor);
    for _ in 0..CAS_ATTEMPTS {
        let obj = st.store.get(&key).await?;
        let mut status = status_of(&obj)?;
        let phase = status.phase.unwrap_or_default();
        let now = Utc::now();
        let (action, result) = match phase {
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled => {
                let message = format!("agentrun/{name} already finished (phase {}); nothing to cancel", phase.as_str());
                return Ok(cancel_reply(CancelResult::AlreadyFinished, message, obj));
            }
            RunPhase::Running => {
                if status.cancel_requested_at.is_some() {
                    return Ok(cancel_reply(CancelResult::Cancelling, CANCELLING_MESSAGE.into(), obj));
                }
                status.cancel_requested_at = Some(now);
                status.cancel_requested_by = Some(by.clone());
                status.updated_at = Some(now);
                (actions::RUN_CANCEL_REQUESTED, CancelResult::Cancelling)
            }
            RunPhase::Pending => {
                let message = format!("cancelled by {by}");
                status.phase = Some(RunPhase::Cancelled);
                status.finished_at = Some(now);
                status.updated_at = Some(now);
                status.next_retry_at = None;
                status.cancel_requested_at = Some(now);
                status.cancel_requested_by = Some(by.clone());
                status.conditions.retain(|c| c.type_ != "Blocked");
                set_condition(
                    &mut status.conditions,
                    condition("InProgress", ConditionStatus::False, "Cancelled", &message, now),
                );
                set_condition(
                    &mut status.conditions,
                    condition("Cancelled", ConditionStatus::True, "Cancelled", &message, now),
                );
                (actions::RUN_CANCELLED, CancelResult::Cancelled)
            }
        };
        let rv = revision_of(&obj).unwrap_or_default();
        let mut next = obj;
        let encoded = serde_json::to_value(&status).map_err(|e| {
            tracing::error!(error = %e, "cannot encode an AgentRun status");
            ApiError::new(ErrorCode::Internal, "cannot encode the run status; see the server log")
        })?;
        if let Some(o) = next.as_object_mut() {
            o.insert("status".into(), encoded);
        }
        let mut audit = resource_audit(actor.clone(), action);
        audit.namespace = Some(ns.clone());
        audit.run = Some(name.clone());
        audit.outcome = outcomes::SUCCESS.to_string();
        audit.params = json!({"phase": phase.as_str()});
        match st.store.update(next, Precondition::ResourceVersion(rv), audit).await {
            Ok(stored) => {
                let message = match result {
                    CancelResult::Cancelled => format!("agentrun/{name} cancelled before it started"),
                    _ => CANCELLING_MESSAGE.to_string(),
                };
                tracing::info!(namespace = %ns, run = %name, result = result.as_str(), actor = %by, "run cancel");
                return Ok(cancel_reply(result, message, stored));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!("agentrun/{name} kept changing while it was being cancelled ({CAS_ATTEMPTS} attempts); retry"),
    ))
}

// ---------------------------------------------------------------------------------------------
// Events

/// One entry of `GET .../events`, derived from a ledger entry about the run.
fn event_of(e: &Entry) -> Option<Value> {
    let p = &e.params;
    let s = |k: &str| p.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string);
    let attempt = p.get("attempt").and_then(Value::as_u64);
    let actor = actor_label(&e.actor);
    let (type_, reason, message) = match e.action.as_str() {
        actions::RUN_SUBMITTED => ("Submitted", "Submitted".to_string(), format!("submitted by {actor}")),
        actions::RUN_BLOCKED => {
            let message = s("message").unwrap_or_else(|| match s("cap") {
                Some(cap) => format!("held back by the {cap} concurrency cap"),
                None => "held back by a concurrency cap".into(),
            });
            ("Blocked", s("reason").unwrap_or_else(|| "ConcurrencyLimit".into()), message)
        }
        actions::RUN_STARTED => {
            let m = match attempt {
                Some(a) => format!("attempt {a} started"),
                None => "started".to_string(),
            };
            ("Started", "Started".to_string(), m)
        }
        actions::RUN_RETRIED => {
            let reason = s("reason").unwrap_or_else(|| "Failed".into());
            let mut m = match attempt {
                Some(a) => format!("attempt {a} failed ({reason})"),
                None => format!("an attempt failed ({reason})"),
            };
            if let Some(at) = s("nextRetryAt") {
                m.push_str(&format!("; retrying at {at}"));
            }
            ("Retrying", reason, m)
        }
        actions::RUN_FINISHED => {
            let phase = s("phase").unwrap_or_default();
            let reason = s("reason");
            let type_ = match (phase.as_str(), reason.as_deref()) {
                ("Succeeded", _) => "Succeeded",
                (_, Some("TimedOut")) => "TimedOut",
                ("Cancelled", _) => "Cancelled",
                _ => "Failed",
            };
            let exit = p.get("exitCode").and_then(Value::as_i64);
            let message = e.error.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| match exit {
                Some(c) => format!("the agent exited {c}"),
                None => format!("the run ended {}", if phase.is_empty() { type_ } else { phase.as_str() }),
            });
            (type_, reason.unwrap_or_else(|| type_.to_string()), message)
        }
        actions::RUN_CANCEL_REQUESTED => {
            ("CancelRequested", "CancelRequested".to_string(), format!("cancel requested by {actor}"))
        }
        actions::RUN_CANCELLED => ("Cancelled", "Cancelled".to_string(), format!("cancelled by {actor}")),
        _ => return None,
    };
    let mut ev = json!({
        "type": type_,
        "reason": reason,
        "message": message,
        "time": e.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "actor": actor,
        "seq": e.seq,
    });
    if let Some(a) = attempt {
        ev["attempt"] = json!(a);
    }
    Some(ev)
}

/// `GET /api/v1/namespaces/{ns}/agentruns/{name}/events`: `{"items": [...]}`, oldest first, from
/// the ledger entries about this run (an earlier run of the same name is left out by its uid).
pub async fn events(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((ns, name)) = path.map_err(path_err)?;
    let key = run_key(&ns, &name)?;
    let obj = st.store.get(&key).await?;
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string);
    let mut q = LedgerQuery {
        namespace: Some(ns.clone()),
        run: Some(name.clone()),
        limit: Some(MAX_LIST_LIMIT),
        ..LedgerQuery::default()
    };
    let mut items = Vec::new();
    loop {
        let page = st.store.ledger_query(&q).await?;
        for e in &page.entries {
            let entry_uid = e.target.as_ref().and_then(|t| t.uid.as_deref());
            if let (Some(want), Some(got)) = (uid.as_deref(), entry_uid)
                && want != got
            {
                continue;
            }
            if let Some(ev) = event_of(e) {
                items.push(ev);
            }
        }
        match page.next_after_seq {
            Some(after) if q.after_seq != Some(after) => q.after_seq = Some(after),
            _ => break,
        }
    }
    Ok(Json(json!({"items": items})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Logs: reading the file

/// Where the local runtime keeps the run's output.
pub fn log_path(data_dir: &FsPath, namespace: &str, name: &str) -> PathBuf {
    data_dir.join("runs").join(namespace).join(name).join(".agent").join("runner.log")
}

/// `(length of the marker line, bytes it says were dropped)`, or `(0, 0)` without a marker.
fn read_marker(file: &mut File) -> io::Result<(u64, u64)> {
    let mut head = Vec::with_capacity(256);
    file.seek(SeekFrom::Start(0))?;
    file.take(256).read_to_end(&mut head)?;
    let Some(end) = head.iter().position(|&b| b == b'\n') else { return Ok((0, 0)) };
    let line = &head[..=end];
    let parsed = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.strip_prefix(MARKER_PREFIX))
        .and_then(|t| t.strip_suffix(MARKER_SUFFIX))
        .and_then(|n| n.parse::<u64>().ok());
    Ok(match parsed {
        Some(n) => (line.len() as u64, n),
        None => (0, 0),
    })
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Where to start reading to get the last `tail` bytes of a file of `len` bytes, moved forward
/// past UTF-8 continuation bytes so the text does not start in the middle of a character.
fn tail_start(file: &mut File, len: u64, tail: u64) -> io::Result<u64> {
    let start = len.saturating_sub(tail);
    if start == 0 {
        return Ok(0);
    }
    let mut buf = [0u8; 3];
    file.seek(SeekFrom::Start(start))?;
    let n = file.read(&mut buf)?;
    let skip = buf[..n].iter().take_while(|b| (**b & 0xC0) == 0x80).count();
    Ok(start + skip as u64)
}

fn read_chunk(file: &mut File, pos: u64, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(max.min(LOG_CHUNK_BYTES));
    file.seek(SeekFrom::Start(pos))?;
    file.take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// An open log file and how far it has been read.
#[derive(Debug)]
struct OpenLog {
    file: File,
    id: (u64, u64),
    pos: u64,
    marker_len: u64,
    dropped: u64,
}

impl OpenLog {
    fn open(path: &FsPath) -> io::Result<Option<OpenLog>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = file_id(&file.metadata()?);
        let (marker_len, dropped) = read_marker(&mut file)?;
        Ok(Some(OpenLog { file, id, pos: 0, marker_len, dropped }))
    }

    /// Position in the agent's whole output (counting what the cap dropped) of `pos`.
    fn stream_pos(&self) -> u64 {
        self.dropped + self.pos.saturating_sub(self.marker_len)
    }
}

/// What one read of a followed log found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// New bytes (at most the asked size).
    Data(Vec<u8>),
    /// The file was rewritten and output that was not sent yet is gone: `lost` bytes of it when
    /// known. Reading goes on at the new file's first byte after the marker (or its start).
    Truncated { lost: Option<u64> },
    /// Nothing new yet (or no log yet).
    Idle,
}

/// Follows `runner.log` from its start across growth and the runtime's compactions. A
/// compaction replaces the file (a rename) with `marker + tail`: the cursor finishes the old
/// file it holds open, then continues in the new one right after what it already returned, so
/// nothing is repeated; only output dropped before it was read is reported as lost.
#[derive(Debug)]
pub struct LogCursor {
    path: PathBuf,
    open: Option<OpenLog>,
    /// Start this many bytes before the end of the file first opened.
    tail: Option<u64>,
}

impl LogCursor {
    pub fn new(path: PathBuf, tail: Option<u64>) -> LogCursor {
        LogCursor { path, open: None, tail }
    }

    /// Reads up to `max` new bytes.
    pub fn step(&mut self, max: usize) -> io::Result<Step> {
        if self.open.is_none() {
            let Some(mut o) = OpenLog::open(&self.path)? else { return Ok(Step::Idle) };
            if let Some(tail) = self.tail.take() {
                let len = o.file.metadata()?.len();
                o.pos = tail_start(&mut o.file, len, tail)?;
            }
            self.open = Some(o);
        }
        // Two rounds at most: the second reads the file that replaced the one just finished.
        for _ in 0..2 {
            let Some(o) = self.open.as_mut() else { return Ok(Step::Idle) };
            let data = read_chunk(&mut o.file, o.pos, max)?;
            if !data.is_empty() {
                o.pos += data.len() as u64;
                return Ok(Step::Data(data));
            }
            // At the end of the file held open: has the path moved on?
            let meta = match std::fs::metadata(&self.path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Step::Idle),
                Err(e) => return Err(e),
            };
            if file_id(&meta) == o.id {
                if meta.len() < o.pos {
                    // Cut in place (not something the runtime does): start over.
                    let Some(new) = OpenLog::open(&self.path)? else { return Ok(Step::Idle) };
                    self.open = Some(new);
                    return Ok(Step::Truncated { lost: None });
                }
                return Ok(Step::Idle);
            }
            let sent = o.stream_pos();
            let Some(mut new) = OpenLog::open(&self.path)? else { return Ok(Step::Idle) };
            let content = new.file.metadata()?.len().saturating_sub(new.marker_len);
            if new.marker_len > 0 && new.dropped <= sent && sent - new.dropped <= content {
                // Everything returned so far is accounted for: go on where we were.
                new.pos = new.marker_len + (sent - new.dropped);
                self.open = Some(new);
                continue;
            }
            if new.marker_len > 0 && new.dropped > sent {
                let lost = new.dropped - sent;
                new.pos = new.marker_len;
                self.open = Some(new);
                return Ok(Step::Truncated { lost: Some(lost) });
            }
            if new.marker_len == 0 && sent == 0 {
                self.open = Some(new);
                continue;
            }
            self.open = Some(new);
            return Ok(Step::Truncated { lost: None });
        }
        Ok(Step::Idle)
    }
}

/// Turns bytes into text across chunk boundaries: a character cut by a chunk waits for the
/// rest; invalid bytes become U+FFFD. Line ends are normalised to `\n` (`\r\n` and a lone `\r`
/// both become `\n`), as server-sent events cannot carry a carriage return.
#[derive(Debug, Default)]
pub struct TextDecoder {
    pending: Vec<u8>,
    after_cr: bool,
}

impl TextDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.to_vec();
        self.pending = keep;
        self.normalise(&out)
    }

    /// The bytes held back (an incomplete character at the very end), as text.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        let text = String::from_utf8_lossy(&rest).into_owned();
        let out = self.normalise(&text);
        self.after_cr = false;
        out
    }

    fn normalise(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if std::mem::take(&mut self.after_cr) && c == '\n' {
                continue;
            }
            if c == '\r' {
                out.push('\n');
                self.after_cr = true;
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// One server-sent event: `event: NAME`, the data split into `data:` lines, a blank line. `data`
/// must not contain `\r` (see [`TextDecoder`]).
pub fn sse_frame(event: &str, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + event.len() + 16);
    s.push_str("event: ");
    s.push_str(event);
    s.push('\n');
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

// ---------------------------------------------------------------------------------------------
// Logs: the endpoint

#[derive(Debug, Default)]
struct LogParams {
    follow: Option<bool>,
    tail_bytes: Option<u64>,
}

fn parse_log_params(q: &BTreeMap<String, String>) -> Result<LogParams, ApiError> {
    let mut p = LogParams::default();
    for (k, v) in q {
        match k.as_str() {
            "follow" => {
                p.follow = Some(match v.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(
                            ApiError::invalid(format!("follow={v:?} is not true or false")).with_field("follow")
                        );
                    }
                })
            }
            "tailBytes" => {
                p.tail_bytes = Some(v.parse().map_err(|_| {
                    ApiError::invalid(format!("tailBytes={v:?} is not a number of bytes (0 or more)"))
                        .with_field("tailBytes")
                })?)
            }
            other => {
                return Err(ApiError::invalid(format!("unknown query parameter {other:?}; known: follow, tailBytes")));
            }
        }
    }
    Ok(p)
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")))
}

/// Whether the run's output is in the local run folder: no runtime yet (or between attempts),
/// or a `local:` one.
fn log_is_local(obj: &Value) -> bool {
    obj.pointer("/status/runtimeRef").and_then(Value::as_str).is_none_or(|r| r.starts_with("local:"))
}

/// `GET /api/v1/namespaces/{ns}/agentruns/{name}/logs[?follow=true][&tailBytes=N]`.
pub async fn logs(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((ns, name)) = path.map_err(path_err)?;
    let Query(q) = query.map_err(query_err)?;
    let params = parse_log_params(&q)?;
    let key = run_key(&ns, &name)?;
    let obj = st.store.get(&key).await?;
    let file = log_path(&st.config.data_dir, &ns, &name);
    if params.follow.unwrap_or_else(|| wants_event_stream(&headers)) {
        return Ok(follow(st.clone(), key, obj, file, params.tail_bytes));
    }
    if !log_is_local(&obj) {
        return Ok(text_response(Body::empty(), 0));
    }
    let tail = params.tail_bytes;
    let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<(File, u64, u64)>> {
        let mut f = match File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let start = match tail {
            Some(t) => tail_start(&mut f, len, t)?,
            None => 0,
        };
        Ok(Some((f, start, len)))
    })
    .await
    .map_err(|e| log_error(&io::Error::other(e.to_string())))?
    .map_err(|e| log_error(&e))?;
    let Some((f, start, len)) = opened else { return Ok(text_response(Body::empty(), 0)) };
    // The file is read up to the length it had when opened, in chunks: a growing log does not
    // make the reply endless, and memory stays at one chunk.
    let chunks = futures::stream::unfold(Some((f, start)), move |state| async move {
        let (mut f, pos) = state?;
        if pos >= len {
            return None;
        }
        let want = usize::try_from(len - pos).unwrap_or(LOG_CHUNK_BYTES).min(LOG_CHUNK_BYTES);
        let read = tokio::task::spawn_blocking(move || {
            let r = read_chunk(&mut f, pos, want);
            (f, r)
        })
        .await;
        match read {
            Ok((f, Ok(data))) if !data.is_empty() => {
                let next = pos + data.len() as u64;
                Some((Ok::<Bytes, io::Error>(Bytes::from(data)), Some((f, next))))
            }
            Ok((_, Ok(_))) => None,
            Ok((_, Err(e))) => Some((Err(e), None)),
            Err(e) => Some((Err(io::Error::other(e.to_string())), None)),
        }
    });
    Ok(text_response(Body::from_stream(chunks), len))
}

fn log_error(e: &io::Error) -> ApiError {
    tracing::warn!(error = %e, "reading a run log failed");
    ApiError::new(ErrorCode::Internal, format!("reading the run's log failed ({}); see the server log", e.kind()))
}

fn text_response(body: Body, size: u64) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        h.insert(LOG_SIZE_HEADER, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Logs: following

/// The state of one followed log (`?follow=true`). Dropped when the client goes away: the file,
/// the store watch and everything else go with it.
struct Follow {
    store: Arc<dyn Store>,
    key: ObjectKey,
    cursor: Option<LogCursor>,
    text: TextDecoder,
    phase: String,
    exit_code: Option<i64>,
    local: bool,
    deleted: bool,
    watch: Option<WatchStream>,
    last_status_read: Instant,
    queue: VecDeque<Bytes>,
    last_sent: Instant,
    done: bool,
}

impl Follow {
    fn observe(&mut self, obj: &Value) {
        self.phase = phase_of(obj).to_string();
        self.exit_code = obj.pointer("/status/exitCode").and_then(Value::as_i64);
        self.local = log_is_local(obj);
    }

    fn terminal(&self) -> bool {
        self.deleted || is_terminal(&self.phase)
    }

    fn push_text(&mut self, text: String) {
        if !text.is_empty() {
            self.queue.push_back(sse_frame("log", &text));
        }
    }

    async fn read(&mut self) -> io::Result<Step> {
        if !self.local {
            return Ok(Step::Idle);
        }
        let Some(mut cursor) = self.cursor.take() else { return Ok(Step::Idle) };
        let (cursor, step) = tokio::task::spawn_blocking(move || {
            let step = cursor.step(LOG_CHUNK_BYTES);
            (cursor, step)
        })
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
        self.cursor = Some(cursor);
        step
    }

    /// Waits for the log to grow or the run to change (whichever is noticed first).
    async fn wait(&mut self) {
        let tick = tokio::time::sleep(FOLLOW_POLL);
        tokio::pin!(tick);
        match self.watch.as_mut() {
            Some(w) => {
                tokio::select! {
                    ev = w.next() => match ev {
                        Some(Ok(ev)) => {
                            if ev.type_ == agentplane_store::EventType::Deleted {
                                self.deleted = true;
                            }
                            self.observe(&ev.object);
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "log follow: the run watch failed; polling the run instead");
                            self.watch = None;
                        }
                        None => self.watch = None,
                    },
                    _ = &mut tick => {}
                }
            }
            None => {
                tick.await;
                if self.last_status_read.elapsed() >= FOLLOW_STATUS_POLL {
                    self.last_status_read = Instant::now();
                    match self.store.get(&self.key).await {
                        Ok(obj) => self.observe(&obj),
                        Err(StoreError::NotFound(_)) => self.deleted = true,
                        Err(e) => tracing::debug!(error = %e, "log follow: cannot read the run"),
                    }
                }
            }
        }
        if self.last_sent.elapsed() >= KEEP_ALIVE {
            self.queue.push_back(Bytes::from_static(b": keep-alive\n\n"));
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                self.last_sent = Instant::now();
                return Some(b);
            }
            if self.done {
                return None;
            }
            // Terminal is decided before the read: a run seen finished ends only after a read
            // that found nothing more.
            let terminal = self.terminal();
            match self.read().await {
                Ok(Step::Data(bytes)) => {
                    let text = self.text.push(&bytes);
                    self.push_text(text);
                    continue;
                }
                Ok(Step::Truncated { lost }) => {
                    let text = self.text.finish();
                    self.push_text(text);
                    let message = match lost {
                        Some(n) => format!("{n} bytes of output were dropped by the log cap before they were sent"),
                        None => "the log was rewritten; following from its new beginning".to_string(),
                    };
                    self.queue.push_back(sse_frame(
                        "truncated",
                        &json!({"droppedBytes": lost, "message": message}).to_string(),
                    ));
                    continue;
                }
                Ok(Step::Idle) => {}
                Err(e) => {
                    tracing::warn!(run = %self.key, error = %e, "log follow: reading the log failed");
                    let msg = format!("reading the run's log failed ({})", e.kind());
                    self.queue.push_back(sse_frame("error", &json!({"message": msg}).to_string()));
                    self.done = true;
                    continue;
                }
            }
            if terminal {
                let text = self.text.finish();
                self.push_text(text);
                let mut end = json!({"phase": self.phase, "exitCode": self.exit_code});
                if self.deleted {
                    end["deleted"] = json!(true);
                }
                self.queue.push_back(sse_frame("end", &end.to_string()));
                self.done = true;
                continue;
            }
            self.wait().await;
        }
    }
}

fn follow(st: Arc<AppState>, key: ObjectKey, obj: Value, file: PathBuf, tail: Option<u64>) -> Response {
    let store = st.store.clone();
    let from = revision_of(&obj).unwrap_or(0);
    let mut state = Follow {
        store: store.clone(),
        key: key.clone(),
        cursor: Some(LogCursor::new(file, tail)),
        text: TextDecoder::default(),
        phase: String::new(),
        exit_code: None,
        local: true,
        deleted: false,
        watch: None,
        last_status_read: Instant::now(),
        queue: VecDeque::new(),
        last_sent: Instant::now(),
        done: false,
    };
    state.observe(&obj);
    let stream = futures::stream::unfold((state, Some((store, key, from))), |(mut s, watch_from)| async move {
        if let Some((store, key, from)) = watch_from {
            s.watch = open_watch(store.as_ref(), &key, from).await;
        }
        let b = s.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(b), (s, None)))
    });
    let mut shutdown = st.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let body = Body::from_stream(stream.take_until(stopped));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// A watch of the one run, from the revision it was read at; `None` (poll instead) when the
/// store cannot give one.
async fn open_watch(store: &dyn Store, key: &ObjectKey, from: Revision) -> Option<WatchStream> {
    let fields = FieldSelector::parse(&format!("metadata.name={}", key.name)).ok()?;
    let q = WatchQuery {
        kind: Some(Kind::AgentRun),
        namespace: Some(key.namespace.clone()),
        from_revision: from,
        labels: LabelSelector::default(),
        fields,
    };
    match store.watch(q).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::debug!(error = %e, "log follow: no watch; polling the run instead");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn marker(n: u64) -> String {
        format!("{MARKER_PREFIX}{n}{MARKER_SUFFIX}")
    }

    fn drain(c: &mut LogCursor, max: usize) -> (Vec<u8>, Vec<Step>) {
        let mut data = Vec::new();
        let mut other = Vec::new();
        loop {
            match c.step(max).unwrap() {
                Step::Data(d) => data.extend(d),
                Step::Idle => return (data, other),
                s => other.push(s),
            }
        }
    }

    fn append(p: &FsPath, s: &str) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    /// What the runtime's compaction does: a new file with the marker and the tail, renamed over.
    fn compact(p: &FsPath, dropped_total: u64, tail: &str) {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, format!("{}{tail}", marker(dropped_total))).unwrap();
        std::fs::rename(&tmp, p).unwrap();
    }

    #[test]
    fn cursor_follows_growth_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        let mut c = LogCursor::new(p.clone(), None);
        assert_eq!(c.step(4).unwrap(), Step::Idle, "no file yet");
        append(&p, "hello\n");
        assert_eq!(c.step(4).unwrap(), Step::Data(b"hell".to_vec()));
        assert_eq!(c.step(4).unwrap(), Step::Data(b"o\n".to_vec()));
        assert_eq!(c.step(4).unwrap(), Step::Idle);
        append(&p, "world\n");
        assert_eq!(drain(&mut c, 4), (b"world\n".to_vec(), vec![]));
    }

    #[test]
    fn compaction_after_everything_was_read_is_seamless() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        append(&p, "0123456789");
        let mut c = LogCursor::new(p.clone(), None);
        assert_eq!(drain(&mut c, 100).0, b"0123456789");
        // The cap keeps the last 4 bytes; then more output arrives.
        compact(&p, 6, "6789");
        append(&p, "abc");
        assert_eq!(drain(&mut c, 100), (b"abc".to_vec(), vec![]));
    }

    #[test]
    fn compaction_of_unread_output_finishes_the_old_file_then_continues() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        append(&p, "0123");
        let mut c = LogCursor::new(p.clone(), None);
        assert_eq!(c.step(100).unwrap(), Step::Data(b"0123".to_vec()));
        // More arrives in the file the cursor holds, then it is compacted away (the new file
        // holds the last 5 bytes: 56789), then more output.
        append(&p, "456789");
        compact(&p, 5, "56789");
        append(&p, "X");
        // The old file is read to its end: nothing is lost or repeated.
        assert_eq!(drain(&mut c, 100), (b"456789X".to_vec(), vec![]));
    }

    #[test]
    fn output_dropped_before_it_was_read_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        append(&p, "ab");
        let mut c = LogCursor::new(p.clone(), None);
        assert_eq!(c.step(100).unwrap(), Step::Data(b"ab".to_vec()));
        // Two compactions while the cursor slept: the first file it never saw.
        compact(&p, 10, "klmno");
        compact(&p, 20, "uvwxyz");
        // The cursor's old file ("ab") has nothing more; the new one starts at output byte 20.
        assert_eq!(c.step(100).unwrap(), Step::Truncated { lost: Some(18) });
        assert_eq!(drain(&mut c, 100), (b"uvwxyz".to_vec(), vec![]));
    }

    #[test]
    fn a_log_that_starts_with_a_marker_is_sent_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        compact(&p, 7, "tail\n");
        let mut c = LogCursor::new(p.clone(), None);
        let (data, _) = drain(&mut c, 100);
        assert_eq!(String::from_utf8(data).unwrap(), format!("{}tail\n", marker(7)));
        compact(&p, 9, "il\nmore\n");
        assert_eq!(drain(&mut c, 100), (b"more\n".to_vec(), vec![]));
    }

    #[test]
    fn a_file_cut_in_place_or_replaced_without_marker_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        append(&p, "abcdef");
        let mut c = LogCursor::new(p.clone(), None);
        drain(&mut c, 100);
        std::fs::OpenOptions::new().write(true).truncate(true).open(&p).unwrap();
        append(&p, "xy");
        assert_eq!(c.step(100).unwrap(), Step::Truncated { lost: None });
        assert_eq!(drain(&mut c, 100).0, b"xy");
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, "new").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(c.step(100).unwrap(), Step::Truncated { lost: None });
        assert_eq!(drain(&mut c, 100).0, b"new");
    }

    #[test]
    fn tail_starts_on_a_character_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        append(&p, "aé€z"); // a(1) é(2) €(3) z(1)
        let mut c = LogCursor::new(p.clone(), Some(3));
        // 3 bytes back is the middle of '€': start after it.
        assert_eq!(drain(&mut c, 100).0, b"z");
        let mut c = LogCursor::new(p.clone(), Some(4));
        assert_eq!(drain(&mut c, 100).0, "€z".as_bytes());
        let mut c = LogCursor::new(p, Some(1000));
        assert_eq!(drain(&mut c, 100).0, "aé€z".as_bytes());
    }

    #[test]
    fn decoder_keeps_split_characters_and_normalises_line_ends() {
        let mut d = TextDecoder::default();
        let bytes = "é€".as_bytes();
        assert_eq!(d.push(&bytes[..1]), "");
        assert_eq!(d.push(&bytes[1..3]), "é");
        assert_eq!(d.push(&bytes[3..]), "€");
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"1\r"), "1\n");
        assert_eq!(d.push(b"\n2\r3\r\n"), "2\n3\n");
        assert_eq!(d.push(&"€".as_bytes()[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn sse_frames_split_data_into_lines() {
        assert_eq!(sse_frame("log", "a\nb\n"), Bytes::from("event: log\ndata: a\ndata: b\ndata: \n\n"));
        assert_eq!(sse_frame("end", "{}"), Bytes::from("event: end\ndata: {}\n\n"));
        assert_eq!(sse_frame("log", " x"), Bytes::from("event: log\ndata:  x\n\n"));
    }

    fn entry(action: &str, params: Value, error: Option<&str>) -> Entry {
        Entry {
            seq: 7,
            ts: chrono::DateTime::parse_from_rfc3339("2026-11-26T06:00:00Z").unwrap().with_timezone(&Utc),
            actor: Actor::system("controller"),
            action: action.into(),
            namespace: Some("default".into()),
            target: None,
            run: Some("r".into()),
            environment: None,
            takeover_level: None,
            decision: None,
            outcome: "success".into(),
            params,
            error: error.map(str::to_string),
            trace_id: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn ledger_entries_map_to_events() {
        let ty = |a: &str, p: Value| event_of(&entry(a, p, None)).map(|e| e["type"].as_str().unwrap().to_string());
        assert_eq!(ty("run.submitted", json!({})).as_deref(), Some("Submitted"));
        assert_eq!(ty("run.finished", json!({"phase": "Succeeded", "exitCode": 0})).as_deref(), Some("Succeeded"));
        assert_eq!(ty("run.finished", json!({"phase": "Failed", "reason": "TimedOut"})).as_deref(), Some("TimedOut"));
        assert_eq!(
            ty("run.finished", json!({"phase": "Cancelled", "reason": "Cancelled"})).as_deref(),
            Some("Cancelled")
        );
        assert_eq!(ty("run.finished", json!({"phase": "Failed", "reason": "NonZeroExit"})).as_deref(), Some("Failed"));
        assert_eq!(ty("run.cancel_requested", json!({})).as_deref(), Some("CancelRequested"));
        assert_eq!(ty("run.cancelled", json!({})).as_deref(), Some("Cancelled"));
        assert_eq!(ty("resource.updated", json!({})), None);

        let started = event_of(&entry("run.started", json!({"attempt": 2, "runtimeRef": "local:x"}), None)).unwrap();
        assert_eq!(
            started,
            json!({"type": "Started", "reason": "Started", "message": "attempt 2 started",
                   "time": "2026-11-26T06:00:00.000000Z", "actor": "system:controller", "seq": 7, "attempt": 2})
        );
        let failed = event_of(&entry(
            "run.finished",
            json!({"phase": "Failed", "reason": "NonZeroExit", "exitCode": 3}),
            Some("the agent exited 3"),
        ))
        .unwrap();
        assert_eq!(
            (failed["reason"].as_str(), failed["message"].as_str()),
            (Some("NonZeroExit"), Some("the agent exited 3"))
        );
        let retry = event_of(&entry(
            "run.retried",
            json!({"attempt": 1, "reason": "NonZeroExit", "nextRetryAt": "2026-11-26T06:00:05Z"}),
            None,
        ))
        .unwrap();
        assert_eq!(retry["type"], "Retrying");
        assert_eq!(retry["message"], "attempt 1 failed (NonZeroExit); retrying at 2026-11-26T06:00:05Z");
        let blocked = event_of(&entry("run.blocked", json!({"cap": "agent"}), None)).unwrap();
        assert_eq!(blocked["message"], "held back by the agent concurrency cap");
    }
}
