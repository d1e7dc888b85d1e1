//! `e2e`: runs of a trivial agent end to end — submitted over HTTP, scheduled by the controller,
//! executed by the local runtime as real processes, recorded terminal in the store.
//!
//! The server runs in this process with its controller on, caps raised to `--cap` (the Agent's
//! `maxInFlight`, the namespace cap and the cluster cap). All runs are submitted as fast as
//! `--clients` clients can, then the bench polls until none is left non-terminal and reads every
//! run back. Everything it reports is computed from the runs' stored status after the fact
//! (see `docs/benchmarks.md`, "Scheduling delay", for the definition).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use agentplane_server::storage::{EXT4_WITHOUT_JOURNAL, describe_filesystem};

use crate::{create_fixtures, drive, list_all, run_manifest};

#[derive(clap::Args, Debug, Clone)]
pub struct E2eOpts {
    /// Runs to submit.
    #[arg(long, default_value_t = 2_000)]
    pub runs: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Runs in flight allowed: the Agent's maxInFlight and the namespace and cluster caps.
    #[arg(long, default_value_t = 100)]
    pub cap: u32,
    /// The agent's program (the AgentProvider's `binary`).
    #[arg(long, default_value = "/bin/true")]
    pub binary: String,
    /// Arrival rate in runs per second for the paced phase (0 = skip it): submissions are sent
    /// open-loop at this rate, so that the scheduling delay is measured while the machine keeps up.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Skip the burst phase (all runs submitted as fast as the clients can).
    #[arg(long)]
    pub no_burst: bool,
    /// Run the agents without the local runtime's sandbox (`[sandbox] enabled = false`); by default
    /// they run sandboxed, as the server does. The lifecycle targets (≥ 300 runs/s, scheduling
    /// delay p95 < 5 ms at 300 arrivals/s) are measured with this flag (docs/benchmarks.md).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Where the phases' data directories go (a fresh temporary directory inside it, removed when
    /// the bench ends; default: the system's temporary directory). Every phase keeps its run
    /// folders until the bench ends: on an ext4 file system without a journal, inodes freed in the
    /// last minutes make new files slow to create (ext4 skips recently deleted inodes), so
    /// deleting one phase's 20,000 files would slow the next phase's runs.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Run on a journaled ext4 made for this run (a sparse image in the system's temporary
    /// directory, `mkfs.ext4`, `mount -o loop`; root only), unmounted and deleted at the end, so
    /// that the figures do not depend on what earlier work left on the machine's file systems.
    /// Without `--data-dir`, this happens by itself when the temporary directory is on ext4
    /// without a journal (and falls back to it, with a warning, when the mount is not allowed).
    #[arg(long, conflicts_with = "data_dir")]
    pub scratch_fs: bool,
    /// Give up (with an error) if the runs are not all terminal after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_seconds: u64,
}

const NS: &str = "bench";

/// What the bench reads back from one stored run.
struct Observed {
    name: String,
    phase: String,
    created: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
}

fn time_at(obj: &Value, pointer: &str) -> Result<Option<DateTime<Utc>>> {
    match obj.pointer(pointer).and_then(Value::as_str) {
        None => Ok(None),
        Some(s) => Ok(Some(
            DateTime::parse_from_rfc3339(s).with_context(|| format!("{pointer} {s:?} is not RFC 3339"))?.to_utc(),
        )),
    }
}

fn observe(obj: &Value) -> Result<Observed> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let created = time_at(obj, "/metadata/creationTimestamp")?
        .with_context(|| format!("run {name} has no metadata.creationTimestamp"))?;
    Ok(Observed {
        phase: obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending").to_string(),
        started: time_at(obj, "/status/startedAt")?,
        finished: time_at(obj, "/status/finishedAt")?,
        created,
        name,
    })
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn from_nanos(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(n)
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// p50/p95/p99/max of millisecond values.
fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        (v[i] * 1000.0).round() / 1000.0
    };
    json!({"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0), "mean": ((v.iter().sum::<f64>() / v.len() as f64) * 1000.0).round() / 1000.0})
}

/// The `ts` of every `run.submitted` ledger entry in the bench's namespace, by run name.
async fn accepted_times(
    client: &reqwest::Client,
    url: &str,
) -> Result<std::collections::HashMap<String, DateTime<Utc>>> {
    let mut out = std::collections::HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut query =
            vec![("namespace", NS.to_string()), ("action", "run.submitted".into()), ("limit", "5000".into())];
        if let Some(a) = after.take() {
            query.push(("continue", a));
        }
        let r = client.get(url).query(&query).send().await?;
        if !r.status().is_success() {
            bail!("reading the ledger ({url}): {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        let page: Value = r.json().await?;
        for e in page.get("entries").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let (Some(run), Some(ts)) = (e.get("run").and_then(Value::as_str), time_at(e, "/ts")?) else {
                bail!("a run.submitted ledger entry without run or ts: {e}");
            };
            out.insert(run.to_string(), ts);
        }
        match page.get("continue").and_then(Value::as_str) {
            Some(c) => after = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

/// Scheduling delays (ms), in start order, given each run's earliest possible creation time.
///
/// Runs sorted by `startedAt`: the i-th (0-based) could not start before `cap` earlier-started
/// runs minus one had finished, i.e. before the (i − cap)-th finish in `finishedAt` order; so
/// `ready_i = max(created_i, finished_sorted[i − cap])` (`created_i` for i < cap) and
/// `delay_i = startedAt_i − ready_i`. Returns the delays and how many came out negative (clamped
/// to 0; a negative delay means a timestamp is later than the moment it records).
fn scheduling_delays(
    runs: &[(DateTime<Utc>, DateTime<Utc>)], // (created, started), any order
    finished: &[DateTime<Utc>],
    cap: usize,
) -> (Vec<f64>, usize) {
    let mut by_start = runs.to_vec();
    by_start.sort_by_key(|&(_, s)| s);
    let mut fin = finished.to_vec();
    fin.sort();
    let mut negative = 0;
    let delays = by_start
        .iter()
        .enumerate()
        .map(|(i, &(created, started))| {
            let ready = match i.checked_sub(cap).and_then(|j| fin.get(j)) {
                Some(&f) => created.max(f),
                None => created,
            };
            let d = ms(started - ready);
            if d < 0.0 {
                negative += 1;
            }
            d.max(0.0)
        })
        .collect();
    (delays, negative)
}

pub async fn run(opts: E2eOpts) -> Result<()> {
    if opts.runs == 0 || opts.clients == 0 || opts.cap == 0 {
        bail!("--runs, --clients and --cap must be at least 1");
    }
    if !opts.rate.is_finite() || opts.rate < 0.0 {
        bail!("--rate must be a number of runs per second, 0 or more (0 skips the paced phase)");
    }
    if opts.no_burst && opts.rate == 0.0 {
        bail!("--no-burst with --rate 0 leaves nothing to run");
    }
    let scratch = if opts.scratch_fs {
        Some(crate::scratch::ScratchFs::create()?)
    } else if opts.data_dir.is_none() && describe_filesystem(&std::env::temp_dir()) == EXT4_WITHOUT_JOURNAL {
        // The default place would give figures of the file system's past, not of the code: use a
        // fresh journaled ext4 when this process may make one.
        match crate::scratch::ScratchFs::create() {
            Ok(s) => {
                eprintln!(
                    "note: the system's temporary directory is on ext4 without a journal; running on a \
                     journaled ext4 made for this run instead (choose with --data-dir)"
                );
                Some(s)
            }
            Err(e) => {
                eprintln!("note: cannot make a scratch file system ({e:#}); using the temporary directory");
                None
            }
        }
    } else {
        None
    };
    let base = scratch.as_ref().map(|s| s.path().to_path_buf()).or_else(|| opts.data_dir.clone());
    // Dropped before `scratch` (declared after it): the folder goes before the unmount.
    let root = match &base {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    // Traversable, as a server's data dir must be for the sandbox's agent user (a private
    // temporary folder would make the server run agents without that protection).
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let fs = describe_filesystem(root.path());
    if fs == EXT4_WITHOUT_JOURNAL {
        eprintln!(
            "warning: {} is on ext4 without a journal, where file creation slows down for good after \
             many files were deleted nearby (earlier runs, test suites); figures may be far worse than \
             the code's: use --scratch-fs (root) or --data-dir on a journaled file system",
            root.path().display()
        );
    }
    if !opts.no_burst {
        phase(&opts, None, &root.path().join("burst"), &fs, scratch.is_some()).await?;
        if opts.rate > 0.0 {
            // The burst server is gone, but the kernel is still writing its 2,000 run folders
            // back to disk; flush them first so the paced phase measures the scheduler, not the
            // previous phase's writeback.
            let started = std::time::Instant::now();
            let synced = tokio::process::Command::new("sync").status().await.map(|s| s.success()).unwrap_or(false);
            eprintln!(
                "between phases: sync ({}) took {} ms",
                if synced { "ok" } else { "failed" },
                started.elapsed().as_millis()
            );
        }
    }
    if opts.rate > 0.0 {
        phase(&opts, Some(opts.rate), &root.path().join("paced"), &fs, scratch.is_some()).await?;
    }
    Ok(())
}

/// One phase on a fresh server: `rate` None submits as fast as the clients can (burst), Some(r)
/// sends submission i at `i / r` seconds after the first (open-loop arrivals).
async fn phase(opts: &E2eOpts, rate: Option<f64>, dir: &std::path::Path, fs: &str, scratch: bool) -> Result<()> {
    let mut config = agentplane_server::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.join("data"),
        log_level: "warn".into(),
        ..Default::default()
    };
    config.controller.enabled = true;
    config.sandbox.enabled = !opts.no_sandbox;
    config.controller.namespace_max_in_flight = opts.cap;
    config.controller.cluster_max_in_flight = opts.cap;
    let tick_millis = config.controller.tick_millis;
    config.auth.rate_limit_per_second = 0;
    let data_dir = config.data_dir.clone();
    let server = agentplane_server::start(config).await.context("starting the server")?;
    let base = format!("http://{}/api/v1/namespaces/{NS}", server.addr);
    let client = crate::authed_client(&data_dir, opts.clients + 2)?;
    create_fixtures(&client, &base, &opts.binary, Some(opts.cap)).await?;

    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..opts.runs).map(|i| serde_json::to_vec(&run_manifest(NS, &format!("e2e-{i}")))).collect::<Result<_, _>>()?,
    );
    // Per submission: when the request was sent and when its answer arrived (Unix nanoseconds).
    let sent: Arc<Vec<AtomicI64>> = Arc::new((0..opts.runs).map(|_| AtomicI64::new(0)).collect());
    let answered: Arc<Vec<AtomicI64>> = Arc::new((0..opts.runs).map(|_| AtomicI64::new(0)).collect());
    let url = format!("{base}/agentruns");
    let (c, s, a) = (client.clone(), sent.clone(), answered.clone());
    let t0 = tokio::time::Instant::now();
    let (submit_elapsed, _, submit_errors) = drive(opts.runs, opts.clients, move |i| {
        let (client, url, bodies, sent, answered) = (c.clone(), url.clone(), bodies.clone(), s.clone(), a.clone());
        async move {
            if let Some(r) = rate {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / r)).await;
            }
            sent[i].store(nanos(Utc::now()), Ordering::Relaxed);
            let req = client
                .post(&url)
                .header("content-type", "application/json")
                .header("idempotency-key", format!("e2e-{i}"))
                .body(bodies[i].clone());
            let ok = matches!(req.send().await, Ok(r) if r.status().as_u16() == 201);
            answered[i].store(nanos(Utc::now()), Ordering::Relaxed);
            ok
        }
    })
    .await?;
    if submit_errors > 0 {
        bail!("{submit_errors} of {} submissions were not answered 201", opts.runs);
    }

    // Wait until no run is left non-terminal. The pause between polls only decides how soon the
    // bench notices; every figure comes from the stored timestamps.
    let deadline = Instant::now() + Duration::from_secs(opts.timeout_seconds);
    let pending_selector = "status.phase!=Succeeded,status.phase!=Failed,status.phase!=Cancelled";
    loop {
        let left = list_all(&client, &format!("{base}/agentruns"), Some(pending_selector), 1, true).await?;
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "runs still not terminal after --timeout-seconds {} (e.g. {}); raise it or look at the server",
                opts.timeout_seconds,
                left[0].pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let items = list_all(&client, &format!("{base}/agentruns"), None, 5_000, false).await?;
    let accepted = accepted_times(&client, &format!("http://{}/api/v1/ledger/entries", server.addr)).await?;
    server.shutdown().await?;

    let runs: Vec<Observed> = items.iter().map(observe).collect::<Result<_>>()?;
    if runs.len() != opts.runs {
        bail!("{} runs stored, {} submitted", runs.len(), opts.runs);
    }
    let count = |p: &str| runs.iter().filter(|r| r.phase == p).count();
    let (succeeded, failed, cancelled) = (count("Succeeded"), count("Failed"), count("Cancelled"));
    let index = |name: &str| name.strip_prefix("e2e-").and_then(|n| n.parse::<usize>().ok());
    let first_sent = from_nanos(sent.iter().map(|t| t.load(Ordering::Relaxed)).min().unwrap_or(0));
    let last_answered = from_nanos(answered.iter().map(|t| t.load(Ordering::Relaxed)).max().unwrap_or(0));
    let Some(last_finished) = runs.iter().filter_map(|r| r.finished).max() else {
        bail!("no run has status.finishedAt");
    };
    let span = last_finished - first_sent;
    let terminal = succeeded + failed + cancelled;

    // When each run became ready: the timestamp of its `run.submitted` ledger entry, sealed in
    // the transaction that stored the run, before that transaction commits — so never later than
    // the moment the controller could first see the run, and delays computed from it are never
    // understated. For comparison, two coarser starting points: the moment its POST was sent
    // (adds the HTTP request, admission and the commit), and the stored creationTimestamp
    // (whole seconds).
    let mut from_accepted = Vec::new();
    let mut refined = Vec::new();
    let mut stored = Vec::new();
    let mut finished = Vec::new();
    let mut durations = Vec::new();
    let mut submit_to_start = Vec::new();
    for r in &runs {
        let Some(i) = index(&r.name) else { bail!("unexpected run {}", r.name) };
        let sent_at = from_nanos(sent[i].load(Ordering::Relaxed));
        let created = r.created.max(sent_at);
        if let Some(f) = r.finished {
            finished.push(f);
        }
        if let Some(s) = r.started {
            let Some(&acc) = accepted.get(&r.name) else { bail!("run {} has no run.submitted ledger entry", r.name) };
            from_accepted.push((acc, s));
            refined.push((created, s));
            stored.push((r.created, s));
            submit_to_start.push(ms(s - created));
            if let Some(f) = r.finished {
                durations.push(ms(f - s));
            }
        }
    }
    let cap = opts.cap as usize;
    let (delays, negative) = scheduling_delays(&from_accepted, &finished, cap);
    let (delays_sent, _) = scheduling_delays(&refined, &finished, cap);
    let (delays_stored, _) = scheduling_delays(&stored, &finished, cap);
    let busy_ms: f64 = durations.iter().sum();
    let line = json!({
        "scenario": "e2e",
        "phase": if rate.is_some() { "paced" } else { "burst" },
        "arrival_rate_per_sec": rate,
        "runs": opts.runs,
        "clients": opts.clients,
        "cap": opts.cap,
        "binary": opts.binary,
        "controller_tick_ms": tick_millis,
        "sandbox": !opts.no_sandbox,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
        "never_started": runs.len() - refined.len(),
        "seconds": (span.num_milliseconds() as f64) / 1000.0,
        "runs_per_sec": (terminal as f64 / (ms(span) / 1000.0)).round(),
        "submit": {
            "seconds": submit_elapsed.as_secs_f64(),
            "per_sec": (opts.runs as f64 / submit_elapsed.as_secs_f64()).round(),
            "latency_ms": percentiles(
                sent.iter()
                    .zip(answered.iter())
                    .map(|(s, a)| (a.load(Ordering::Relaxed) - s.load(Ordering::Relaxed)) as f64 / 1e6)
                    .collect()
            ),
            "last_answer_after_ms": ms(last_answered - first_sent),
        },
        "scheduling_delay_ms": percentiles(delays),
        "scheduling_delay_negative_clamped": negative,
        "scheduling_delay_ms_from_post_sent": percentiles(delays_sent),
        "scheduling_delay_ms_stored_creation_timestamp": percentiles(delays_stored),
        "submit_to_start_ms": percentiles(submit_to_start),
        "run_duration_ms": percentiles(durations),
        "mean_in_flight": ((busy_ms / ms(span)) * 100.0).round() / 100.0,
        "launcher": agentplane_sandbox::find_runner()
            .map(|p| format!("agentplane-runner ({})", p.display()))
            .unwrap_or_else(|| "setsid + sh wrapper (agentplane-runner not found next to the bench)".into()),
        "ready_source": "the run's run.submitted ledger entry (sealed before its transaction commits), or the (cap)-th earlier finish",
        "started_at_source": "status.startedAt: the later of the controller's record of the start and the runtime's spawn time",
        "data_dir_filesystem": if scratch { format!("{fs}, made for this run") } else { fs.to_string() },
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap_or_default()
    }

    #[test]
    fn delay_counts_from_creation_below_the_cap_and_from_the_freeing_finish_above_it() {
        // cap 2: runs a, b start at once; c must wait for the first finish (at 10).
        let runs = [(t(0), t(1)), (t(0), t(2)), (t(0), t(13))];
        let finished = [t(20), t(10), t(30)];
        let (d, neg) = scheduling_delays(&runs, &finished, 2);
        assert_eq!(d, vec![1.0, 2.0, 3.0]);
        assert_eq!(neg, 0);
        // A run created after the slot was freed counts from its creation.
        let runs = [(t(0), t(1)), (t(0), t(2)), (t(15), t(16))];
        assert_eq!(scheduling_delays(&runs, &finished, 2).0, vec![1.0, 2.0, 1.0]);
    }

    #[test]
    fn impossible_timestamps_are_counted_not_hidden() {
        let runs = [(t(5), t(1))];
        let (d, neg) = scheduling_delays(&runs, &[], 1);
        assert_eq!(d, vec![0.0]);
        assert_eq!(neg, 1);
    }

    #[test]
    fn percentiles_pick_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!(p["p50"], 50.0);
        assert_eq!(p["p95"], 95.0);
        assert_eq!(p["max"], 100.0);
    }
}
