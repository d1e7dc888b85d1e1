//! Throughput and latency of the local adapter alone (no store, no controller).
//!
//! ```text
//! cargo run --release -p agentplane-runtime --example local_throughput -- \
//!     [--runs N] [--concurrency K] [--rate R] [--exit-runs M] [--poll]
//! ```
//!
//! Runs go in a temporary folder under `$TMPDIR`. Without `--rate`, a new run is submitted as soon
//! as one of the K in flight ends (closed loop: the adapter is saturated, and latencies are mostly
//! queueing, about K / throughput). With `--rate R`, runs are submitted at R per second (still at
//! most K in flight), which shows the latencies at that load.
//!
//! `--keep` leaves the run folders behind (see the note in `main`).
//!
//! Phase 1 runs N attempts of `/bin/true` and measures:
//! - `runs_per_s`: N over the wall-clock time from the first submit to the last terminal status;
//! - `submit_ms`: how long one `submit()` call takes to return;
//! - `submit_to_spawn_ms`: from calling `submit()` to `RuntimeStatus.startedAt` (the spawn);
//! - `spawn_to_terminal_ms`: from `startedAt` to the caller learning the terminal status
//!   (includes the agent's own run time: exec of the wrapper and of `/bin/true`).
//!
//! Phase 2 runs `--exit-runs` attempts of `date +%s%N` (the agent prints its clock as its last
//! act) and measures `exit_to_terminal_ms`: from that printed time to the caller learning the
//! terminal status (the agent's and its wrapper's exit, reaping, log drain, artifacts, status
//! write and notification).
//!
//! The caller learns about terminal states from [`RuntimeAdapter::subscribe`] (with a 50 ms poll as
//! a fallback), or only by polling `status()` every millisecond with `--poll`.
//!
//! Prints one JSON line. Times are wall-clock (`Utc::now()`), so the agent's printed clock and
//! ours are the same clock.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentplane_api::AgentProviderSpec;
use agentplane_runtime::{LocalAdapter, RunSpec, RuntimeAdapter, RuntimeRef, RuntimeStatus};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{Semaphore, oneshot};

#[derive(Debug, Clone)]
struct Args {
    runs: usize,
    concurrency: usize,
    exit_runs: usize,
    rate: f64,
    poll: bool,
    keep: bool,
}

fn args() -> Args {
    let mut a = Args { runs: 3000, concurrency: 100, exit_runs: 500, rate: 0.0, poll: false, keep: false };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a number");
                std::process::exit(2)
            })
        };
        match k.as_str() {
            "--runs" => a.runs = num("--runs"),
            "--concurrency" => a.concurrency = num("--concurrency").max(1),
            "--exit-runs" => a.exit_runs = num("--exit-runs"),
            "--rate" => a.rate = num("--rate") as f64,
            "--poll" => a.poll = true,
            "--keep" => a.keep = true,
            other => {
                eprintln!(
                    "unknown argument {other}; use --runs N --concurrency K --rate R --exit-runs M --poll --keep"
                );
                std::process::exit(2)
            }
        }
    }
    a
}

/// Who waits for which ref: the notification dispatcher completes the waiter.
type Waiters = Arc<Mutex<HashMap<RuntimeRef, oneshot::Sender<()>>>>;

struct Bench {
    adapter: Arc<LocalAdapter>,
    waiters: Waiters,
    poll: bool,
}

impl Bench {
    /// Waits until `r` is terminal; returns the status and when we learned it.
    async fn wait(&self, r: &RuntimeRef) -> (RuntimeStatus, DateTime<Utc>) {
        if self.poll {
            loop {
                let s = self.adapter.status(r).await.unwrap();
                if s.phase.is_terminal() {
                    return (s, Utc::now());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let (tx, mut rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(r.clone(), tx);
        loop {
            // Registered before this check, so a notification cannot slip between them.
            let s = self.adapter.status(r).await.unwrap();
            if s.phase.is_terminal() {
                self.waiters.lock().unwrap().remove(r);
                return (s, Utc::now());
            }
            // The fallback poll covers a lagged receiver.
            let _ = tokio::time::timeout(Duration::from_millis(50), &mut rx).await;
        }
    }
}

/// CPU seconds used so far by this process and by its waited-for children (the agents), from
/// `/proc/self/stat` (clock ticks, assumed 100 per second).
fn cpu_seconds() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    let tick = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    // After the `)`: state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    (tick(11) + tick(12), tick(13) + tick(14))
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    (v[i] * 1000.0).round() / 1000.0
}

fn summary(v: &mut [f64]) -> serde_json::Value {
    json!({"p50": pct(v, 50.0), "p95": pct(v, 95.0), "p99": pct(v, 99.0), "max": pct(v, 100.0)})
}

#[derive(Debug, Default)]
struct Sample {
    submit: f64,
    submit_to_spawn: f64,
    spawn_to_terminal: f64,
    exit_to_terminal: Option<f64>,
    ok: bool,
}

async fn phase(
    b: Arc<Bench>,
    prefix: &'static str,
    a: &Args,
    n: usize,
    provider: AgentProviderSpec,
) -> (Vec<Sample>, f64) {
    let sem = Arc::new(Semaphore::new(a.concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let mut tick = (a.rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for i in 0..n {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (b, provider) = (b.clone(), provider.clone());
        let name = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let spec = RunSpec::new("bench", &name, &format!("uid-{name}"), provider);
            let t0 = Utc::now();
            let r = b.adapter.submit(&spec).await.unwrap();
            let t1 = Utc::now();
            let (st, seen) = b.wait(&r).await;
            drop(permit);
            let started = st.started_at.unwrap_or(seen);
            let mut s = Sample {
                submit: ms(t1 - t0),
                submit_to_spawn: ms(started - t0),
                spawn_to_terminal: ms(seen - started),
                exit_to_terminal: None,
                ok: st.phase == agentplane_api::RunPhase::Succeeded,
            };
            if prefix == "exit" {
                let log = b.adapter.run_dir("bench", &name).join(".agent/runner.log");
                let text = tokio::fs::read_to_string(log).await.unwrap_or_default();
                let printed = text.lines().rev().find_map(|l| l.trim().parse::<i64>().ok());
                s.exit_to_terminal = printed.map(|ns| ms(seen - DateTime::from_timestamp_nanos(ns)));
            }
            s
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    (out, start.elapsed().as_secs_f64())
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let tmp = tempfile::tempdir().unwrap();
        let adapter = Arc::new(LocalAdapter::new(tmp.path()));
        let kept = a.keep.then(|| tmp.path().to_path_buf());
        let waiters: Waiters = Arc::default();
        if !a.poll
            && let Some(mut rx) = adapter.subscribe()
        {
            let w = waiters.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(r) => {
                            if let Some(tx) = w.lock().unwrap().remove(&r) {
                                let _ = tx.send(());
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        let poll = a.poll || adapter.subscribe().is_none();
        let b = Arc::new(Bench { adapter, waiters, poll });

        let t = AgentProviderSpec { binary: "/bin/true".into(), ..Default::default() };
        let cpu0 = cpu_seconds();
        let (mut s1, secs) = phase(b.clone(), "true", &a, a.runs, t).await;
        let cpu1 = cpu_seconds();
        let per_run = |x: f64| ((x * 1000.0 / a.runs.max(1) as f64) * 100.0).round() / 100.0;
        let failed = s1.iter().filter(|s| !s.ok).count();
        let date =
            AgentProviderSpec { binary: "date".into(), args_template: vec!["+%s%N".into()], ..Default::default() };
        let (mut s2, _) = phase(b.clone(), "exit", &a, a.exit_runs, date).await;
        let failed2 = s2.iter().filter(|s| !s.ok).count();

        let col = |v: &mut [Sample], f: fn(&Sample) -> f64| v.iter().map(f).collect::<Vec<_>>();
        let mut exit: Vec<f64> = s2.iter().filter_map(|s| s.exit_to_terminal).collect();
        let out = json!({
            "bench": "local_throughput",
            "runs": a.runs,
            "concurrency": a.concurrency,
            "rate": a.rate,
            "wait": if poll { "poll 1ms" } else { "subscribe" },
            "failed": failed + failed2,
            "runs_per_s": ((a.runs as f64 / secs) * 10.0).round() / 10.0,
            "cpu_ms_per_run": {"adapter": per_run(cpu1.0 - cpu0.0), "agents": per_run(cpu1.1 - cpu0.1)},
            "submit_ms": summary(&mut col(&mut s1, |s| s.submit)),
            "submit_to_spawn_ms": summary(&mut col(&mut s1, |s| s.submit_to_spawn)),
            "spawn_to_terminal_ms": summary(&mut col(&mut s1, |s| s.spawn_to_terminal)),
            "exit_runs": a.exit_runs,
            "exit_to_terminal_ms": summary(&mut exit),
            "exit_phase_submit_to_spawn_ms": summary(&mut col(&mut s2, |s| s.submit_to_spawn)),
        });
        println!("{out}");
        if let Some(dir) = kept {
            // Deleting thousands of run folders makes the next file creations in the same place
            // slow for a while on some filesystems (ext4 without a journal skips recently freed
            // inodes); `--keep` leaves them to be removed later.
            std::mem::forget(tmp);
            eprintln!("kept {}", dir.display());
        }
    });
}
