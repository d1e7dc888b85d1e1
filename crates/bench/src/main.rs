//! Scenario benchmarks. Each run prints one JSON line per (scenario, concurrency) with the
//! throughput and latency percentiles; `docs/benchmarks.md` records the results.
//!
//! ```text
//! cargo run --release --locked -p agentplane-bench -- store-write --ops 20000 --concurrency 1,16
//! cargo run --release --locked -p agentplane-bench -- api-create  --ops 20000 --concurrency 1,16
//! ```

#![allow(clippy::print_stdout)]

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
    /// Raw store creates through the Store trait (embedded SQLite, group commit).
    StoreWrite(Opts),
    /// `POST /api/v1/namespaces/{ns}/agentruns` over loopback HTTP against an in-process server.
    ApiCreate(Opts),
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
}

fn run_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "agentplane.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": "bench", "labels": {"bench": "true"}},
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

fn report(scenario: &str, opts: &Opts, concurrency: usize, elapsed: Duration, hist: &Histogram<u64>, errors: usize) {
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let line = json!({
        "scenario": scenario,
        "concurrency": concurrency,
        "ops": hist.len(),
        "errors": errors,
        "synchronous": opts.synchronous,
        "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "ops_per_sec": (hist.len() as f64 / elapsed.as_secs_f64()).round(),
        "latency_ms": {"p50": ms(0.50), "p95": ms(0.95), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0},
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
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
        let options = SqliteOptions { synchronous: sync_mode(&opts.synchronous)?, ..SqliteOptions::default() };
        let store: Arc<dyn Store> = SqliteStore::open(&dir.path().join("bench.db"), options)?;
        let s = store.clone();
        let (elapsed, hist, errors) = drive(opts.ops, c, move |i| {
            let s = s.clone();
            async move { s.create(run_manifest(&format!("run-{i}"))).await.is_ok() }
        })
        .await?;
        store.close().await?;
        report("store-write", &opts, c, elapsed, &hist, errors);
    }
    Ok(())
}

async fn api_create(opts: Opts) -> Result<()> {
    for &c in &opts.concurrency {
        let dir = tempfile::tempdir()?;
        let mut config = agentplane_server::Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            log_level: "warn".into(),
            ..Default::default()
        };
        config.store.synchronous = match opts.synchronous.as_str() {
            "full" => agentplane_server::config::SyncMode::Full,
            _ => agentplane_server::config::SyncMode::Normal,
        };
        let server = agentplane_server::start(config).await.context("starting the server")?;
        let url = format!("http://{}/api/v1/namespaces/bench/agentruns", server.addr);
        let client = reqwest::Client::builder().pool_max_idle_per_host(c).build()?;
        // Bodies are serialised before the clock starts: the client's work is not the server's.
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..opts.ops).map(|i| serde_json::to_vec(&run_manifest(&format!("run-{i}")))).collect::<Result<_, _>>()?,
        );
        let (elapsed, hist, errors) = drive(opts.ops, c, move |i| {
            let (client, url, bodies) = (client.clone(), url.clone(), bodies.clone());
            async move {
                let req = client.post(&url).header("content-type", "application/json").body(bodies[i].clone());
                match req.send().await {
                    Ok(r) => r.status().as_u16() == 201,
                    Err(_) => false,
                }
            }
        })
        .await?;
        server.shutdown().await?;
        report("api-create", &opts, c, elapsed, &hist, errors);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.scenario {
            Scenario::StoreWrite(o) => store_write(o).await,
            Scenario::ApiCreate(o) => api_create(o).await,
        }
    })
}
