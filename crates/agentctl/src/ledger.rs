//! `agentctl ledger ...`: verify (online or on an exported file), query, export and summary.
//!
//! Verification happens here, in the client, with `agentplane_ledger`: the server's word is not
//! trusted, every hash, link and checkpoint signature is recomputed. Exports are streamed chunk
//! by chunk (to stdout, a file, or the verifier), so memory stays constant whatever the size.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use agentplane_ledger::{ExportItem, LedgerPublicKey, Summary, VerifyReport};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::cli::{LedgerExportArgs, LedgerQueryArgs, LedgerSummaryArgs, LedgerVerifyArgs, OutputFormat};
use crate::client::Client;
use crate::commands::Ctx;
use crate::error::{CliError, Exit};
use crate::output;

/// Chunks of an export in flight between the HTTP reader and the verifier.
const VERIFY_QUEUE: usize = 8;

// ---------------------------------------------------------------------------------------------
// Times: RFC 3339 or "a duration ago"

/// A `--since` / `--until` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    At(DateTime<Utc>),
    /// Now minus this much.
    Ago(chrono::Duration),
}

impl TimeArg {
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            TimeArg::At(t) => t,
            TimeArg::Ago(d) => now - d,
        }
    }
}

/// Parses `2026-11-24T06:00:00Z` (any RFC 3339 offset) or a duration ago: one or more
/// `<number><unit>` with units `s`, `m`, `h`, `d`, `w` (`90s`, `1h30m`, `7d`).
pub fn parse_time_arg(s: &str) -> Result<TimeArg, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(TimeArg::At(t.with_timezone(&Utc)));
    }
    parse_duration(s).map(TimeArg::Ago).ok_or_else(|| {
        format!("{s:?} is neither an RFC 3339 time (2026-11-24T06:00:00Z) nor a duration ago (30m, 1h, 7d, 1h30m)")
    })
}

pub(crate) fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    if !digits.is_empty() || !any {
        return None;
    }
    // chrono's Duration tops out near 292 billion years; anything that large is a typo.
    (total <= 100 * 365 * 86_400).then(|| chrono::Duration::seconds(total))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

// ---------------------------------------------------------------------------------------------
// query

/// The query parameters of `GET /api/v1/ledger/entries` for these flags (without paging).
fn query_params(args: &LedgerQueryArgs, namespace: Option<&str>, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
    let mut p: Vec<(&'static str, String)> = Vec::new();
    if let Some(t) = args.since {
        p.push(("since", rfc3339(t.resolve(now))));
    }
    if let Some(t) = args.until {
        p.push(("until", rfc3339(t.resolve(now))));
    }
    if let Some(ns) = namespace {
        p.push(("namespace", ns.to_string()));
    }
    let strings = [
        ("run", &args.run),
        ("actor", &args.actor),
        ("action", &args.action),
        ("outcome", &args.outcome),
        ("target", &args.target),
    ];
    for (k, v) in strings {
        if let Some(v) = v {
            p.push((k, v.clone()));
        }
    }
    p
}

/// `ledger query`: follows `continue` pages to the end, or until `--limit` entries.
pub async fn query(ctx: &Ctx, args: LedgerQueryArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let p = &ctx.printer;
    // The ledger is not namespaced by default: only an explicit -n filters.
    let namespace = ctx.settings.namespace_explicit.then_some(ctx.settings.namespace.as_str());
    let now = Utc::now();
    if let (Some(since), Some(until)) = (args.since, args.until)
        && since.resolve(now) > until.resolve(now)
    {
        return Err(CliError::Invalid(format!(
            "--since {} is after --until {}",
            rfc3339(since.resolve(now)),
            rfc3339(until.resolve(now))
        )));
    }
    let base = query_params(&args, namespace, now);

    let mut entries: Vec<Value> = Vec::new();
    let mut token: Option<String> = None;
    let mut left_over: Option<String> = None;
    loop {
        let mut params = base.clone();
        let want = match args.limit {
            Some(limit) => (limit - entries.len() as u64).min(args.chunk_size),
            None => args.chunk_size,
        };
        params.push(("limit", want.to_string()));
        if let Some(t) = &token {
            params.push(("continue", t.clone()));
        }
        let mut page = client.ledger_entries(&params).await?;
        let got = match page.get_mut("entries").map(Value::take) {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(CliError::Other(format!(
                    "the server at {} sent a ledger page without an \"entries\" list",
                    client.server()
                )));
            }
        };
        entries.extend(got);
        let next = page.get("continue").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_string);
        let Some(next) = next else { break };
        if args.limit.is_some_and(|limit| entries.len() as u64 >= limit) {
            left_over = Some(next);
            break;
        }
        if token.as_deref() == Some(next.as_str()) {
            return Err(CliError::Other(format!("the server repeated continue token {next:?}")));
        }
        token = Some(next);
    }

    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let mut body = json!({ "entries": entries });
            if let Some(t) = left_over {
                body["continue"] = json!(t);
            }
            p.value(&body)?;
        }
        OutputFormat::Table | OutputFormat::Name => {
            if entries.is_empty() {
                p.note("No ledger entries found.");
            } else {
                p.out(&output::ledger_table(&entries))?;
            }
        }
    }
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// export

/// `ledger export`: the server's export, streamed to stdout or a file.
pub async fn export(ctx: &Ctx, args: LedgerExportArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let mut body = client.ledger_export(args.format.as_str()).await?;
    let Some(path) = &args.output_file else {
        while let Some(chunk) = body.chunk().await? {
            ctx.printer.out_bytes(&chunk)?;
        }
        return Ok(Exit::Ok);
    };
    // Written next to the target and renamed when complete: a cut-off export never looks whole.
    let partial = partial_path(path);
    let io_err = |what: &str, p: &Path, e: io::Error| CliError::Other(format!("cannot {what} {}: {e}", p.display()));
    let mut file = tokio::fs::File::create(&partial).await.map_err(|e| io_err("create", &partial, e))?;
    let mut lines: u64 = 0;
    let written = async {
        while let Some(chunk) = body.chunk().await? {
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            file.write_all(&chunk).await.map_err(|e| io_err("write", &partial, e))?;
        }
        file.sync_all().await.map_err(|e| io_err("write", &partial, e))?;
        Ok::<(), CliError>(())
    }
    .await;
    drop(file);
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, path).await.map_err(|e| io_err("rename the export to", path, e))?;
    ctx.printer.note(&format!("ledger exported to {} ({lines} lines, {})", path.display(), args.format.as_str()));
    Ok(Exit::Ok)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

// ---------------------------------------------------------------------------------------------
// summary

/// `ledger summary --day`.
pub async fn summary(ctx: &Ctx, args: LedgerSummaryArgs) -> Result<Exit, CliError> {
    let day = args.day.unwrap_or_else(|| Utc::now().date_naive());
    let client = ctx.client()?;
    let reply = client.ledger_summary(&day.format("%Y-%m-%d").to_string()).await?;
    match ctx.printer.format {
        OutputFormat::Json | OutputFormat::Yaml => ctx.printer.value(&reply)?,
        OutputFormat::Table | OutputFormat::Name => {
            let summary: Summary = serde_json::from_value(reply).map_err(|e| {
                CliError::Other(format!("the server at {} sent a summary agentctl cannot read: {e}", client.server()))
            })?;
            ctx.printer.out(&output::ledger_summary(&summary))?;
        }
    }
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// public-key

/// `ledger public-key`: PEM by default, the endpoint's JSON with `-o json|yaml`.
pub async fn public_key(ctx: &Ctx) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let reply = client.ledger_public_key().await?;
    match ctx.printer.format {
        OutputFormat::Json | OutputFormat::Yaml => ctx.printer.value(&reply)?,
        OutputFormat::Table | OutputFormat::Name => {
            let key = key_of_reply(&client, &reply)?;
            ctx.printer.out(&key.to_pem())?;
        }
    }
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// verify

/// `ledger verify`: online (the server's export, streamed) or offline (`--export-file`).
pub async fn verify(ctx: &Ctx, args: LedgerVerifyArgs) -> Result<Exit, CliError> {
    let pinned = args.public_key.as_deref().map(load_public_key).transpose()?;
    let from = args.from;
    let report = match &args.export_file {
        Some(path) => {
            let path = path.clone();
            let key = match pinned {
                Some(k) => Some(k),
                None => {
                    let key = header_key(&path)?;
                    ctx.printer.note(&match &key {
                        Some(k) => format!(
                            "warning: no --public-key given: checkpoint signatures are checked with the key in the \
                             export's own header (key id {}), which is not pinned; pass --public-key with a key you \
                             trust",
                            k.key_id()
                        ),
                        None => "warning: no --public-key given and the export has no header: checkpoint signatures \
                                 are not checked"
                            .to_string(),
                    });
                    key
                }
            };
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path)
                    .map_err(|e| CliError::Other(format!("cannot open export file {}: {e}", path.display())))?;
                Ok::<_, CliError>(agentplane_ledger::verify_export_from(BufReader::new(file), key.as_ref(), from))
            })
            .await
            .map_err(|e| CliError::Other(format!("the verifier stopped: {e}")))??
        }
        None => {
            let client = ctx.client()?;
            let key = match pinned {
                Some(k) => k,
                None => server_key(&client).await?,
            };
            verify_stream(&client, key, from).await?
        }
    };
    let p = &ctx.printer;
    let structured = matches!(p.format, OutputFormat::Json | OutputFormat::Yaml);
    if structured {
        p.value(&serde_json::to_value(&report).unwrap_or_default())?;
    }
    match &report.problem {
        Some(problem) => {
            p.note(&output::verify_failed(problem));
            Ok(Exit::LedgerBroken)
        }
        None if !report.intact => {
            // Not expected from the verifier; never report such a ledger as intact.
            p.note("ledger verification FAILED: the verifier reported no problem but did not find the ledger intact");
            Ok(Exit::LedgerBroken)
        }
        None => {
            if !structured {
                p.line(&output::verify_intact(&report))?;
            }
            Ok(Exit::Ok)
        }
    }
}

/// The public key in an export's header line, if its first line is a header.
fn header_key(path: &Path) -> Result<Option<LedgerPublicKey>, CliError> {
    let file = std::fs::File::open(path)
        .map_err(|e| CliError::Other(format!("cannot open export file {}: {e}", path.display())))?;
    let mut first = String::new();
    // A header is short; do not read a whole corrupted file looking for a newline.
    io::BufRead::read_line(&mut BufReader::new(file.take(64 * 1024)), &mut first)
        .map_err(|e| CliError::Other(format!("cannot read export file {}: {e}", path.display())))?;
    match serde_json::from_str::<ExportItem>(first.trim()) {
        Ok(ExportItem::Header(h)) => LedgerPublicKey::from_base64(&h.public_key).map(Some).map_err(|e| {
            CliError::Other(format!("export file {}: the header's public key is not usable: {e}", path.display()))
        }),
        _ => Ok(None),
    }
}

/// The server's public key (`GET /api/v1/ledger/public-key`).
async fn server_key(client: &Client) -> Result<LedgerPublicKey, CliError> {
    key_of_reply(client, &client.ledger_public_key().await?)
}

fn key_of_reply(client: &Client, reply: &Value) -> Result<LedgerPublicKey, CliError> {
    let b64 = reply.get("publicKey").and_then(Value::as_str).ok_or_else(|| {
        CliError::Other(format!("the server at {} sent a public key reply without \"publicKey\"", client.server()))
    })?;
    LedgerPublicKey::from_base64(b64).map_err(|e| {
        CliError::Other(format!(
            "the server at {} sent a public key that is not a valid ed25519 key: {e}",
            client.server()
        ))
    })
}

/// `--public-key`: a file (PEM, base64, or the JSON of the public-key endpoint) or base64 text.
fn load_public_key(arg: &str) -> Result<LedgerPublicKey, CliError> {
    let path = Path::new(arg);
    let (text, from) = if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Other(format!("cannot read public key file {}: {e}", path.display())))?;
        (text, format!("public key file {}", path.display()))
    } else {
        (arg.to_string(), "--public-key".to_string())
    };
    parse_public_key(&text).map_err(|e| CliError::Invalid(format!("{from}: {e}")))
}

fn parse_public_key(text: &str) -> Result<LedgerPublicKey, String> {
    let text = text.trim();
    if text.contains("-----BEGIN") {
        return LedgerPublicKey::from_pem(text).map_err(|e| format!("not an ed25519 public key in PEM: {e}"));
    }
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let b64 = v.get("publicKey").and_then(Value::as_str).ok_or("JSON without a \"publicKey\" field")?;
        return LedgerPublicKey::from_base64(b64).map_err(|e| format!("publicKey is not an ed25519 key: {e}"));
    }
    LedgerPublicKey::from_base64(text).map_err(|e| {
        format!("not a file, and not a base64 ed25519 public key ({e}); give a PEM or base64 file, or the base64 key")
    })
}

/// Streams the server's JSON Lines export into the verifier running on a blocking thread: a
/// bounded queue of chunks between them keeps memory constant.
async fn verify_stream(client: &Client, key: LedgerPublicKey, from: Option<u64>) -> Result<VerifyReport, CliError> {
    let mut body = client.ledger_export("jsonl").await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(VERIFY_QUEUE);
    let verifier = tokio::task::spawn_blocking(move || {
        agentplane_ledger::verify_export_from(BufReader::new(ChunkReader::new(rx)), Some(&key), from)
    });
    let mut transport: Option<CliError> = None;
    loop {
        match body.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // the verifier has finished
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                transport = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let report = verifier.await.map_err(|e| CliError::Other(format!("the verifier stopped: {e}")))?;
    // A body cut short must never pass for an intact (shorter) ledger, nor for a corrupt one.
    match transport {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// A blocking [`Read`] over chunks sent by the async side; the end of the channel is the end
/// of the body, an `Err` chunk a transport failure.
#[derive(Debug)]
struct ChunkReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Result<Bytes, String>>) -> ChunkReader {
        ChunkReader { rx, current: Bytes::new() }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        let at = |s: &str| parse_time_arg(s).unwrap().resolve(now);
        assert_eq!(at("1h"), Utc.with_ymd_and_hms(2026, 11, 26, 11, 0, 0).unwrap());
        assert_eq!(at("30m"), Utc.with_ymd_and_hms(2026, 11, 26, 11, 30, 0).unwrap());
        assert_eq!(at("7d"), Utc.with_ymd_and_hms(2026, 11, 19, 12, 0, 0).unwrap());
        assert_eq!(at("1w"), at("7d"));
        assert_eq!(at("1h30m"), Utc.with_ymd_and_hms(2026, 11, 26, 10, 30, 0).unwrap());
        assert_eq!(at("45s"), Utc.with_ymd_and_hms(2026, 11, 26, 11, 59, 15).unwrap());
        assert_eq!(at("2026-11-24T06:00:00Z"), Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap());
        assert_eq!(at("2026-11-24T08:00:00+02:00"), Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap());
        for bad in ["", "1", "h", "1x", "-1h", "1h30", "yesterday", "2026-11-24", "99999999999999999999d"] {
            assert!(parse_time_arg(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn query_params_carry_every_filter() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        let args = LedgerQueryArgs {
            since: Some(TimeArg::Ago(chrono::Duration::hours(2))),
            until: Some(TimeArg::At(now)),
            run: Some("r1".into()),
            actor: Some("user:alice".into()),
            action: Some("resource.created".into()),
            outcome: Some("success".into()),
            target: Some("agent/default/coder".into()),
            limit: Some(3),
            chunk_size: 1000,
            client: Default::default(),
        };
        let p = query_params(&args, Some("team-a"), now);
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("since"), Some("2026-11-26T10:00:00Z"));
        assert_eq!(get("until"), Some("2026-11-26T12:00:00Z"));
        assert_eq!(get("namespace"), Some("team-a"));
        assert_eq!(get("run"), Some("r1"));
        assert_eq!(get("actor"), Some("user:alice"));
        assert_eq!(get("action"), Some("resource.created"));
        assert_eq!(get("outcome"), Some("success"));
        assert_eq!(get("target"), Some("agent/default/coder"));
        assert_eq!(get("limit"), None, "paging adds the limit");
        assert_eq!(query_params(&args, None, now).iter().filter(|(k, _)| *k == "namespace").count(), 0);
    }

    #[test]
    fn chunk_reader_reassembles_chunks_and_reports_a_cut() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"hel"))).unwrap();
        tx.try_send(Ok(Bytes::from_static(b""))).unwrap();
        tx.try_send(Ok(Bytes::from_static(b"lo\nworld"))).unwrap();
        drop(tx);
        let mut s = String::new();
        ChunkReader::new(rx).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello\nworld");

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"partial"))).unwrap();
        tx.try_send(Err("connection reset".into())).unwrap();
        drop(tx);
        let err = ChunkReader::new(rx).read_to_string(&mut String::new()).unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
    }

    #[test]
    fn partial_file_sits_next_to_the_target() {
        assert_eq!(partial_path(Path::new("/tmp/x/ledger.jsonl")), PathBuf::from("/tmp/x/ledger.jsonl.partial"));
        assert_eq!(partial_path(Path::new("out.csv")), PathBuf::from("out.csv.partial"));
    }
}
