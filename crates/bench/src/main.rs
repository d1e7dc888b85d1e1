//! Scenario benchmarks. Each run prints one JSON line per (scenario, concurrency) with the
//! throughput and latency percentiles; `docs/benchmarks.md` records the results.
//!
//! ```text
//! cargo run --release --locked -p agentplane-bench -- submit      --ops 20000 --concurrency 1,16
//! cargo run --release --locked -p agentplane-bench -- e2e         --runs 2000 --clients 16 --cap 100
//! cargo run --release --locked -p agentplane-bench -- backlog     --waiting 100,100000
//! cargo run --release --locked -p agentplane-bench -- store-write --ops 20000 --concurrency 1,16
//! cargo run --release --locked -p agentplane-bench -- api-create  --ops 20000 --concurrency 1,16
//! cargo run --release --locked -p agentplane-bench -- api-create  --ops 20000 --concurrency 16 --no-ledger
//! cargo run --release --locked -p agentplane-bench -- ledger-append --entries 200000 --batch 100
//! cargo run --release --locked -p agentplane-bench -- ledger-verify --entries 1000000
//! cargo run --release --locked -p agentplane-bench -- ledger-query  --entries 1000000
//! cargo run --release --locked -p agentplane-bench -- jwt-verify    --ops 20000
//! cargo run --release --locked -p agentplane-bench -- sandbox       --runs 500
//! ```
//!
//! The API scenarios authenticate with the server's bootstrap admin token (read from
//! `<data_dir>/admin-token`) and run with the per-token rate limit off.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod backlog;
mod e2e;
mod jwt;
mod sandbox;
mod scratch;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentplane_store::Store;
use agentplane_store_sqlite::{SqliteOptions, SqliteStore, Synchronous};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "agentplane scenario benchmarks (print JSON lines)")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Run submission: `POST .../agentruns` with an `Idempotency-Key` on every request, over
    /// loopback HTTP against an in-process server whose controller is off (submission only).
    Submit(SubmitOpts),
    /// Runs of a trivial agent end to end (submit → controller → local process → terminal status):
    /// runs/s and scheduling delay.
    E2e(e2e::E2eOpts),
    /// Scheduler dispatch cost with a large backlog versus a small one (pure, no server).
    Backlog(backlog::BacklogOpts),
    /// Raw store creates through the Store trait (embedded SQLite, group commit).
    StoreWrite(Opts),
    /// `POST /api/v1/namespaces/{ns}/agentruns` over loopback HTTP against an in-process server
    /// (controller off).
    ApiCreate(Opts),
    /// Durable ledger appends through `Store::append`, in batches.
    LedgerAppend(LedgerOpts),
    /// Verification speed: seal a chain in memory, then verify it (hashes, links, checkpoints).
    LedgerVerify(LedgerOpts),
    /// Query one run's entries among `--entries` entries (p50/p95/p99 over 1,000 queries).
    LedgerQuery(LedgerOpts),
    /// OIDC JWT verification (RS256 and ES256): the signature check of a token seen for the first
    /// time, and a token seen before (verified-token cache); no HTTP.
    JwtVerify(jwt::JwtOpts),
    /// Sandbox set-up overhead: `/bin/true` through `agentplane-runner` with and without
    /// `--sandbox` (every protection on), p50/p95 per run and their difference.
    Sandbox(sandbox::SandboxOpts),
}

#[derive(clap::Args, Debug, Clone)]
struct LedgerOpts {
    /// Entries to write (or verify).
    #[arg(long, default_value_t = 200_000)]
    entries: usize,
    /// Entries per append call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[derive(clap::Args, Debug, Clone)]
struct SubmitOpts {
    /// Submissions per concurrency level.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Comma-separated concurrency levels (clients).
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// SQLite synchronous mode: normal (the default setting) or full.
    #[arg(long, default_value = "normal")]
    synchronous: String,
}

#[derive(clap::Args, Debug, Clone)]
struct Opts {
    /// Operations per concurrency level.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Comma-separated concurrency levels.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// SQLite synchronous mode: normal or full.
    #[arg(long, default_value = "normal")]
    synchronous: String,
    /// Turn the ledger off (to measure what recording every write costs).
    #[arg(long)]
    no_ledger: bool,
    /// Send an `Idempotency-Key` header with every submission (api-create only).
    #[arg(long)]
    idempotency_keys: bool,
}

fn run_manifest(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "agentplane.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": namespace, "labels": {"bench": "true"}},
        "spec": {
            "agentRef": {"name": "shell-agent"},
            "implementationSpecRef": {"name": "hello-world"},
            "parameters": {"greeting": "hello", "attempt": "1"},
            "timeoutSeconds": 600
        }
    })
}

fn sync_mode(s: &str) -> Result<Synchronous> {
    Ok(match s {
        "normal" => Synchronous::Normal,
        "full" => Synchronous::Full,
        other => bail!("--synchronous {other:?}: use normal or full"),
    })
}

fn audit() -> agentplane_store::EntryDraft {
    agentplane_store::resource_audit(agentplane_store::Actor::user("bench"), "resource.created")
}

fn draft(i: usize) -> agentplane_store::EntryDraft {
    agentplane_store::EntryDraft {
        actor: agentplane_store::Actor::agent(format!("agent-{}", i % 50)),
        action: "policy.decided".into(),
        namespace: Some("bench".into()),
        target: None,
        run: Some(format!("run-{}", i / 100)),
        environment: Some("production".into()),
        takeover_level: Some(2),
        decision: Some("allow".into()),
        outcome: "success".into(),
        params: json!({"tool": "workspace.write", "args": {"path": format!("src/file-{i}.rs"), "bytes": 1024}}),
        error: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
    }
}

async fn fill_ledger(store: &Arc<dyn Store>, opts: &LedgerOpts) -> Result<(Duration, Histogram<u64>, usize)> {
    // Drafts are built before the clock starts: building them is the callers' work.
    let batches: Vec<Vec<agentplane_store::EntryDraft>> =
        (0..opts.entries).map(draft).collect::<Vec<_>>().chunks(opts.batch).map(<[_]>::to_vec).collect();
    let batches: Arc<Vec<std::sync::Mutex<Vec<agentplane_store::EntryDraft>>>> =
        Arc::new(batches.into_iter().map(std::sync::Mutex::new).collect());
    let s = store.clone();
    drive(batches.len(), opts.concurrency, move |b| {
        let s = s.clone();
        let drafts = std::mem::take(&mut *batches[b].lock().unwrap_or_else(|e| e.into_inner()));
        async move { s.append(drafts).await.is_ok() }
    })
    .await
}

fn ledger_report(scenario: &str, opts: &LedgerOpts, extra: Value) {
    let mut line = json!({
        "scenario": scenario,
        "entries": opts.entries,
        "batch": opts.batch,
        "concurrency": opts.concurrency,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    if let (Some(l), Value::Object(e)) = (line.as_object_mut(), extra) {
        l.extend(e);
    }
    println!("{line}");
}

async fn ledger_append(opts: LedgerOpts) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = SqliteStore::open(&dir.path().join("bench.db"), SqliteOptions::default())?;
    let (elapsed, hist, errors) = fill_ledger(&store, &opts).await?;
    store.close().await?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    ledger_report(
        "ledger-append",
        &opts,
        json!({"errors": errors, "seconds": elapsed.as_secs_f64(), "entries_per_sec": (opts.entries as f64 / elapsed.as_secs_f64()).round(),
               "batch_latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99)}}),
    );
    Ok(())
}

fn ledger_verify(opts: LedgerOpts) -> Result<()> {
    let key = agentplane_ledger::LedgerKey::from_seed(&[7u8; 32]);
    let mut prev = agentplane_ledger::GENESIS_HASH.to_string();
    let mut entries = Vec::with_capacity(opts.entries);
    let mut checkpoints = Vec::new();
    let ts = chrono::Utc::now();
    for i in 0..opts.entries {
        let e = draft(i).seal(i as u64 + 1, ts, &prev);
        prev = e.hash.clone();
        if (i + 1) % 1000 == 0 {
            checkpoints.push(key.sign_checkpoint(e.seq, &e.hash, ts));
        }
        entries.push(e);
    }
    let public = key.public_key();
    let start = Instant::now();
    let report = agentplane_ledger::verify(
        entries.into_iter().map(Ok::<_, std::convert::Infallible>),
        &checkpoints,
        Some(&public),
        None,
    );
    let elapsed = start.elapsed();
    if !report.intact {
        bail!("the generated chain did not verify: {report:?}");
    }
    ledger_report(
        "ledger-verify",
        &opts,
        json!({"checkpoints": checkpoints.len(), "seconds": elapsed.as_secs_f64(), "entries_per_sec": (opts.entries as f64 / elapsed.as_secs_f64()).round()}),
    );
    Ok(())
}

async fn ledger_query(opts: LedgerOpts) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = SqliteStore::open(&dir.path().join("bench.db"), SqliteOptions::default())?;
    fill_ledger(&store, &opts).await?;
    let runs = opts.entries.div_ceil(100);
    let mut hist = Histogram::<u64>::new(3)?;
    let mut found = 0;
    for q in 0..1_000 {
        let run = format!("run-{}", (q * 7919) % runs);
        let query = agentplane_store::LedgerQuery { run: Some(run), ..Default::default() };
        let t = Instant::now();
        let page = store.ledger_query(&query).await?;
        let _ = hist.record(t.elapsed().as_micros() as u64);
        found += page.entries.len();
    }
    store.close().await?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    ledger_report(
        "ledger-query",
        &opts,
        json!({"queries": 1000, "entries_per_run": found / 1000, "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0}}),
    );
    Ok(())
}

fn report(scenario: &str, opts: &Opts, concurrency: usize, elapsed: Duration, hist: &Histogram<u64>, errors: usize) {
    report_with(scenario, opts, concurrency, elapsed, hist, errors, json!({}));
}

fn report_with(
    scenario: &str,
    opts: &Opts,
    concurrency: usize,
    elapsed: Duration,
    hist: &Histogram<u64>,
    errors: usize,
    extra: Value,
) {
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut line = json!({
        "scenario": scenario,
        "concurrency": concurrency,
        "ops": hist.len(),
        "errors": errors,
        "synchronous": opts.synchronous,
        "ledger": !opts.no_ledger,
        "idempotency_keys": opts.idempotency_keys,
        "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "ops_per_sec": (hist.len() as f64 / elapsed.as_secs_f64()).round(),
        "latency_ms": {"p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0},
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    if let (Some(l), Value::Object(e)) = (line.as_object_mut(), extra) {
        l.extend(e);
    }
    println!("{line}");
}

/// Run `ops` calls of `op` from `concurrency` tasks; return elapsed time, latencies (µs), errors.
async fn drive<F, Fut>(ops: usize, concurrency: usize, op: F) -> Result<(Duration, Histogram<u64>, usize)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next, errors) = (op.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("valid histogram precision");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let t = Instant::now();
                if !op(i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = h.record(t.elapsed().as_micros() as u64);
            }
            h
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await?)?;
    }
    Ok((start.elapsed(), hist, errors.load(Ordering::Relaxed)))
}

async fn store_write(opts: Opts) -> Result<()> {
    for &c in &opts.concurrency {
        let dir = tempfile::tempdir()?;
        let options = SqliteOptions {
            synchronous: sync_mode(&opts.synchronous)?,
            record_ledger: !opts.no_ledger,
            ..SqliteOptions::default()
        };
        let store: Arc<dyn Store> = SqliteStore::open(&dir.path().join("bench.db"), options)?;
        let s = store.clone();
        let (elapsed, hist, errors) = drive(opts.ops, c, move |i| {
            let s = s.clone();
            async move { s.create(run_manifest("bench", &format!("run-{i}")), audit()).await.is_ok() }
        })
        .await?;
        store.close().await?;
        report("store-write", &opts, c, elapsed, &hist, errors);
    }
    Ok(())
}

/// Creates what the benchmark's runs reference (admission resolves it): AgentProvider `shell`
/// running `binary`, Agent `shell-agent` (with `maxInFlight` if given), ImplementationSpec
/// `hello-world`, in the namespace at `base` (`http://…/api/v1/namespaces/{ns}`).
async fn create_fixtures(client: &reqwest::Client, base: &str, binary: &str, max_in_flight: Option<u32>) -> Result<()> {
    let mut agent = json!({"providerRef": {"name": "shell"}});
    if let (Some(n), Some(a)) = (max_in_flight, agent.as_object_mut()) {
        a.insert("maxInFlight".into(), json!(n));
    }
    for (plural, body) in [
        ("agentproviders", json!({"kind": "AgentProvider", "metadata": {"name": "shell"}, "spec": {"binary": binary}})),
        ("agents", json!({"kind": "Agent", "metadata": {"name": "shell-agent"}, "spec": agent})),
        (
            "implementationspecs",
            json!({"kind": "ImplementationSpec", "metadata": {"name": "hello-world"}, "spec": {"text": "say hi"}}),
        ),
    ] {
        let r = client.post(format!("{base}/{plural}")).json(&body).send().await?;
        if r.status().as_u16() != 201 {
            bail!("setting up {plural}: {}", r.text().await.unwrap_or_default());
        }
    }
    Ok(())
}

/// Lists `url` page by page (`limit` per page, optional field selector). With `first_only`,
/// stops at the first page that holds an item.
async fn list_all(
    client: &reqwest::Client,
    url: &str,
    field_selector: Option<&str>,
    limit: usize,
    first_only: bool,
) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(f) = field_selector {
            query.push(("fieldSelector", f.to_string()));
        }
        if let Some(t) = token.take() {
            query.push(("continue", t));
        }
        let r = client.get(url).query(&query).send().await?;
        if !r.status().is_success() {
            bail!("listing {url}: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        let mut page: Value = r.json().await?;
        if let Some(Value::Array(a)) = page.get_mut("items").map(Value::take) {
            items.extend(a);
        }
        token = page.pointer("/metadata/continue").and_then(Value::as_str).map(str::to_string);
        if token.is_none() || (first_only && !items.is_empty()) {
            return Ok(items);
        }
    }
}

/// `POST .../agentruns` from `concurrency` clients against an in-process server with the
/// controller off (so only submission is measured); reports one line per concurrency level.
async fn api_create(opts: Opts, scenario: &str) -> Result<()> {
    for &c in &opts.concurrency {
        let dir = tempfile::tempdir()?;
        let mut config = agentplane_server::Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            log_level: "warn".into(),
            bench_disable_ledger: opts.no_ledger,
            ..Default::default()
        };
        config.controller.enabled = false;
        config.store.synchronous = match opts.synchronous.as_str() {
            "normal" => agentplane_server::config::SyncMode::Normal,
            "full" => agentplane_server::config::SyncMode::Full,
            other => bail!("--synchronous {other:?}: use normal or full"),
        };
        config.auth.rate_limit_per_second = 0;
        let data_dir = config.data_dir.clone();
        let server = agentplane_server::start(config).await.context("starting the server")?;
        let url = format!("http://{}/api/v1/namespaces/bench/agentruns", server.addr);
        let client = authed_client(&data_dir, c)?;
        let base = format!("http://{}/api/v1/namespaces/bench", server.addr);
        create_fixtures(&client, &base, "/bin/true", None).await?;
        // Bodies are serialised before the clock starts: the client's work is not the server's.
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..opts.ops)
                .map(|i| serde_json::to_vec(&run_manifest("bench", &format!("run-{i}"))))
                .collect::<Result<_, _>>()?,
        );
        let idem = opts.idempotency_keys;
        let (cl, u) = (client.clone(), url.clone());
        let (elapsed, hist, errors) = drive(opts.ops, c, move |i| {
            let (client, url, bodies) = (cl.clone(), u.clone(), bodies.clone());
            async move {
                let mut req = client.post(&url).header("content-type", "application/json").body(bodies[i].clone());
                if idem {
                    req = req.header("idempotency-key", format!("submit-{i}"));
                }
                match req.send().await {
                    Ok(r) => r.status().as_u16() == 201,
                    Err(_) => false,
                }
            }
        })
        .await?;
        // After the clock: every acknowledged submission is stored (and no other run is).
        let stored = list_all(&client, &url, None, 5_000, false).await?.len();
        server.shutdown().await?;
        if stored != opts.ops - errors {
            bail!("{scenario}: {stored} runs stored, {} acknowledged", opts.ops - errors);
        }
        report_with(scenario, &opts, c, elapsed, &hist, errors, json!({"controller": false, "stored": stored}));
    }
    Ok(())
}

async fn submit(o: SubmitOpts) -> Result<()> {
    let opts = Opts {
        ops: o.ops,
        concurrency: o.concurrency,
        synchronous: o.synchronous,
        no_ledger: false,
        idempotency_keys: true,
    };
    api_create(opts, "submit").await
}

/// An HTTP client that sends the server's bootstrap admin token (`<data_dir>/admin-token`).
fn authed_client(data_dir: &std::path::Path, pool: usize) -> Result<reqwest::Client> {
    let file = data_dir.join("admin-token");
    let token = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder().pool_max_idle_per_host(pool).default_headers(headers).build()?)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.scenario {
            Scenario::Submit(o) => submit(o).await,
            Scenario::E2e(o) => e2e::run(o).await,
            Scenario::Backlog(o) => backlog::run(o),
            Scenario::StoreWrite(o) => store_write(o).await,
            Scenario::ApiCreate(o) => api_create(o, "api-create").await,
            Scenario::LedgerAppend(o) => ledger_append(o).await,
            Scenario::LedgerVerify(o) => ledger_verify(o),
            Scenario::LedgerQuery(o) => ledger_query(o).await,
            Scenario::JwtVerify(o) => jwt::run(o).await,
            Scenario::Sandbox(o) => sandbox::run(o),
        }
    })
}
