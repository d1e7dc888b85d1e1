//! The server side of the ledger: the signing key, the checkpointer, and the read endpoints
//! (`/api/v1/ledger/...`). Entries themselves are written by the store in the same transaction
//! as the change they record; this module never writes an entry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_ledger::LedgerKey;
use agentplane_store::{LedgerQuery, Store, StoreError};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::{AppState, ServerError};

/// File name of the signing key under the data directory.
pub const KEY_FILE: &str = "ledger.key";

/// Load the ledger signing key from `<data_dir>/ledger.key`, creating it (mode 0600) on first
/// start. A key file readable by group or others is refused: fail closed.
pub fn load_or_create_key(data_dir: &Path) -> Result<LedgerKey, ServerError> {
    let path = data_dir.join(KEY_FILE);
    let err = |what: &str, e: std::io::Error| ServerError::Key(format!("{what} {}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).map_err(|e| err("reading", e))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(ServerError::Key(format!(
                        "{} is readable by others (mode {:o}); run `chmod 600 {}`",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    )));
                }
            }
            let seed = decode_seed(text.trim())
                .ok_or_else(|| ServerError::Key(format!("{} is not a 64-hex-digit ed25519 seed", path.display())))?;
            Ok(LedgerKey::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed)
                .map_err(|e| ServerError::Key(format!("no randomness for a new ledger key: {e}")))?;
            let key = LedgerKey::from_seed(&seed);
            write_private(&path, &encode_seed(&seed)).map_err(|e| err("writing", e))?;
            tracing::info!(key_id = %key.key_id(), path = %path.display(), "generated the ledger signing key");
            Ok(key)
        }
        Err(e) => Err(err("reading", e)),
    }
}

fn encode_seed(seed: &[u8; 32]) -> String {
    seed.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n"
}

fn decode_seed(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Signs checkpoints every `every` new entries or `interval`, whichever comes first, and once
/// more at shutdown.
pub async fn run_checkpointer(
    store: Arc<dyn Store>,
    key: Arc<LedgerKey>,
    every: u64,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = match store.checkpoints().await {
        Ok(cps) => cps.last().map(|c| c.seq).unwrap_or(0),
        Err(e) => {
            tracing::error!(error = %e, "cannot read ledger checkpoints; the checkpointer is not running");
            return;
        }
    };
    let mut last_at = Instant::now();
    let poll = interval.min(Duration::from_millis(500));
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(poll) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        match store.ledger_head().await {
            Ok((seq, hash)) if seq > last && (stopping || seq - last >= every || last_at.elapsed() >= interval) => {
                match checkpoint(store.as_ref(), &key, seq, &hash).await {
                    Ok(()) => {
                        last = seq;
                        last_at = Instant::now();
                    }
                    Err(e) => tracing::error!(error = %e, seq, "cannot store a ledger checkpoint"),
                }
            }
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, "cannot read the ledger head"),
        }
        if stopping {
            return;
        }
    }
}

async fn checkpoint(store: &dyn Store, key: &LedgerKey, seq: u64, hash: &str) -> Result<(), StoreError> {
    let cp = key.sign_checkpoint(seq, hash, Utc::now());
    store.put_checkpoint(cp).await?;
    tracing::debug!(seq, "signed a ledger checkpoint");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Endpoints

pub async fn public_key(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "algorithm": "ed25519",
        "keyId": st.ledger_key.key_id(),
        "publicKey": st.ledger_key.public_key_base64(),
        "pem": st.ledger_key.public_key_pem(),
    }))
}

pub async fn checkpoints(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "checkpoints": st.store.checkpoints().await? })))
}

fn time_param(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        ApiError::invalid(format!("{field}={v:?} is not an RFC 3339 time like 2026-11-24T00:00:00Z")).with_field(field)
    })
}

const QUERY_PARAMS: &str = "since, until, namespace, run, actor, action, outcome, target, limit, continue";

fn parse_query(q: &BTreeMap<String, String>) -> Result<LedgerQuery, ApiError> {
    let mut out = LedgerQuery::default();
    for (k, v) in q {
        match k.as_str() {
            "since" => out.since = Some(time_param(k, v)?),
            "until" => out.until = Some(time_param(k, v)?),
            "namespace" => out.namespace = Some(v.clone()),
            "run" => out.run = Some(v.clone()),
            "actor" => out.actor = Some(v.clone()),
            "action" => out.action = Some(v.clone()),
            "outcome" => out.outcome = Some(v.clone()),
            "target" => {
                let parts: Vec<&str> = v.split('/').collect();
                let [kind, ns, name] = parts.as_slice() else {
                    return Err(ApiError::invalid(format!(
                        "target={v:?} must be KIND/NAMESPACE/NAME, e.g. Agent/default/shell-agent"
                    ))
                    .with_field("target"));
                };
                let kind = agentplane_api::Kind::parse_loose(kind)
                    .map_err(|e| ApiError::invalid(e.to_string()).with_field("target"))?;
                out.target = Some((kind.as_str().to_string(), (*ns).to_string(), (*name).to_string()));
            }
            "limit" => {
                let n: usize =
                    v.parse().ok().filter(|n| (1..=agentplane_store::MAX_LIST_LIMIT).contains(n)).ok_or_else(|| {
                        ApiError::invalid(format!("limit={v:?}: use 1 to {}", agentplane_store::MAX_LIST_LIMIT))
                            .with_field("limit")
                    })?;
                out.limit = Some(n);
            }
            "continue" => {
                out.after_seq = Some(v.parse().map_err(|_| {
                    ApiError::invalid(format!("continue={v:?} is not a sequence number")).with_field("continue")
                })?)
            }
            other => {
                return Err(ApiError::invalid(format!("unknown query parameter {other:?}; known: {QUERY_PARAMS}")));
            }
        }
    }
    Ok(out)
}

pub async fn entries(
    State(st): State<Arc<AppState>>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query string: {e}")))?;
    let page = st.store.ledger_query(&parse_query(&q)?).await?;
    let mut body = json!({ "entries": page.entries });
    if let Some(seq) = page.next_after_seq {
        body["continue"] = json!(seq.to_string());
    }
    Ok(Json(body))
}

/// Entries read per store call while streaming an export or a summary.
const SCAN_CHUNK: usize = 2_000;

/// `GET /api/v1/ledger/export?format=jsonl|csv`: the whole ledger, streamed in chunks (constant
/// memory whatever its size). JSON Lines: a header with the public key, every checkpoint, then
/// every entry in seq order.
pub async fn export(
    State(st): State<Arc<AppState>>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query string: {e}")))?;
    let mut csv = false;
    for (k, v) in &q {
        match (k.as_str(), v.as_str()) {
            ("format", "jsonl") => csv = false,
            ("format", "csv") => csv = true,
            ("format", other) => {
                return Err(ApiError::invalid(format!("format={other:?}: use jsonl or csv")).with_field("format"));
            }
            (other, _) => return Err(ApiError::invalid(format!("unknown query parameter {other:?}; known: format"))),
        }
    }
    let mut head = String::new();
    if csv {
        head.push_str(agentplane_ledger::csv_header());
    } else {
        head.push_str(&agentplane_ledger::export_header(&st.ledger_key.public_key()));
        for cp in st.store.checkpoints().await? {
            head.push_str(&agentplane_ledger::export_line_checkpoint(&cp));
        }
    }
    let store = Arc::clone(&st.store);
    let body = futures::stream::unfold((Some(head), 0u64, false), move |(head, after, done)| {
        let store = Arc::clone(&store);
        async move {
            if let Some(h) = head {
                return Some((Ok::<Bytes, std::io::Error>(Bytes::from(h)), (None, after, false)));
            }
            if done {
                return None;
            }
            match store.ledger_scan(after, SCAN_CHUNK).await {
                Ok(chunk) if chunk.is_empty() => None,
                Ok(chunk) => {
                    let last = chunk.last().map(|e| e.seq).unwrap_or(after);
                    let mut buf = String::with_capacity(chunk.len() * 512);
                    for e in &chunk {
                        if csv {
                            buf.push_str(&agentplane_ledger::csv_row(e));
                        } else {
                            buf.push_str(&agentplane_ledger::export_line_entry(e));
                        }
                    }
                    Some((Ok(Bytes::from(buf)), (None, last, false)))
                }
                Err(e) => {
                    tracing::error!(error = %e, "ledger export failed mid-stream");
                    Some((Err(std::io::Error::other(e.to_string())), (None, after, true)))
                }
            }
        }
    });
    let content_type = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
}

/// `GET /api/v1/ledger/summary?day=YYYY-MM-DD` (default today, UTC).
pub async fn summary(
    State(st): State<Arc<AppState>>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(format!("bad query string: {e}")))?;
    let mut day = Utc::now().date_naive();
    for (k, v) in &q {
        match k.as_str() {
            "day" => {
                day = NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                    ApiError::invalid(format!("day={v:?} is not a date like 2026-11-24")).with_field("day")
                })?
            }
            other => return Err(ApiError::invalid(format!("unknown query parameter {other:?}; known: day"))),
        }
    }
    let summary = compute_summary(&st.store, day).await?;
    Ok(Json(serde_json::to_value(summary).unwrap_or_default()))
}

/// Entries with `since <= ts < until`, paged out of the store by an async task into a bounded
/// channel and consumed by `f` on a blocking thread: constant memory whatever the volume.
async fn fold_entries<T: Send + 'static>(
    store: &Arc<dyn Store>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    f: impl FnOnce(&mut dyn Iterator<Item = agentplane_ledger::Entry>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<agentplane_ledger::Entry>(SCAN_CHUNK);
    let consumer = tokio::task::spawn_blocking(move || f(&mut std::iter::from_fn(move || rx.blocking_recv())));
    let mut q = LedgerQuery { since: Some(since), until: Some(until), limit: Some(SCAN_CHUNK), ..Default::default() };
    let producer = async {
        loop {
            let page = store.ledger_query(&q).await?;
            for e in page.entries {
                // The consumer only goes away early if it panicked; then stop producing.
                if tx.send(e).await.is_err() {
                    return Ok::<(), StoreError>(());
                }
            }
            match page.next_after_seq {
                Some(seq) => q.after_seq = Some(seq),
                None => return Ok(()),
            }
        }
    };
    let produced = producer.await;
    drop(tx);
    let out =
        consumer.await.map_err(|e| ApiError::new(crate::error::ErrorCode::Internal, format!("summary failed: {e}")))?;
    produced?;
    Ok(out)
}

/// The summary of one UTC day, with the previous 7 days as each actor's baseline.
pub async fn compute_summary(store: &Arc<dyn Store>, day: NaiveDate) -> Result<agentplane_ledger::Summary, ApiError> {
    let start = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or_else(Utc::now);
    let end = start + chrono::Duration::days(1);
    let baseline = fold_entries(store, start - chrono::Duration::days(7), start, |it| {
        agentplane_ledger::Baseline::from_entries(it, 7)
    })
    .await?;
    fold_entries(store, start, end, move |it| {
        agentplane_ledger::summarize(day, it, &baseline, &agentplane_ledger::AnomalyRules::default())
    })
    .await
}

/// Every `interval`, compute today's summary and record each anomaly not yet recorded today as
/// an `anomaly.flagged` ledger entry (actor `system:anomaly-detector`), so that flags are events
/// a reader can query, not only lines in a summary.
pub async fn run_anomaly_scanner(store: Arc<dyn Store>, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = flag_anomalies(&store, Utc::now().date_naive()).await {
            tracing::warn!(error = %e.message, "anomaly scan failed");
        }
    }
}

/// Record today's new anomalies; returns how many were recorded.
pub async fn flag_anomalies(store: &Arc<dyn Store>, day: NaiveDate) -> Result<usize, ApiError> {
    let summary = compute_summary(store, day).await?;
    if summary.anomalies.is_empty() {
        return Ok(0);
    }
    let start = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or_else(Utc::now);
    let mut seen = std::collections::BTreeSet::new();
    let mut q = LedgerQuery {
        since: Some(start),
        until: Some(start + chrono::Duration::days(1)),
        action: Some(agentplane_ledger::actions::ANOMALY_FLAGGED.to_string()),
        limit: Some(SCAN_CHUNK),
        ..Default::default()
    };
    loop {
        let page = store.ledger_query(&q).await?;
        for e in &page.entries {
            if let Some(k) = e.params.get("key").and_then(|v| v.as_str()) {
                seen.insert(k.to_string());
            }
        }
        match page.next_after_seq {
            Some(seq) => q.after_seq = Some(seq),
            None => break,
        }
    }
    let mut drafts = Vec::new();
    for a in &summary.anomalies {
        let kind = serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let key = format!("{day}/{kind}/{}/{}", a.actor, a.environment.as_deref().unwrap_or("-"));
        if seen.contains(&key) {
            continue;
        }
        drafts.push(agentplane_ledger::EntryDraft {
            actor: agentplane_ledger::Actor::system("anomaly-detector"),
            action: agentplane_ledger::actions::ANOMALY_FLAGGED.to_string(),
            namespace: None,
            target: None,
            run: None,
            environment: a.environment.clone(),
            takeover_level: None,
            decision: None,
            outcome: agentplane_ledger::outcomes::SUCCESS.to_string(),
            params: json!({"key": key, "kind": kind, "actor": a.actor, "count": a.count, "firstSeq": a.first_seq, "detail": a.detail}),
            error: None,
            trace_id: None,
        });
    }
    let n = drafts.len();
    store.append(drafts).await?;
    if n > 0 {
        tracing::warn!(count = n, %day, "ledger anomalies flagged");
    }
    Ok(n)
}
