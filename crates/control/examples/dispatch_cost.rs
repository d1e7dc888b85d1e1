//! Measures the cost of one `Scheduler::dispatch` with a small and a large backlog, and prints one
//! JSON line per backlog size (with the distribution of single dispatches) plus one with the
//! ratios. The same steady state as the `backlog` scenario of `crates/bench` (which is the figure
//! `docs/benchmarks.md` records), here with the whole distribution, for investigating.
//!
//! ```text
//! cargo run --release -p agentplane-control --example dispatch_cost [-- TRIALS DISPATCHES [WAITING...]]
//! ```
//!
//! `TRIALS` defaults to 21, `DISPATCHES` (per trial and size) to 20,000, `WAITING` to
//! `100 100000`; the ratio line compares the last size with the first.
//!
//! 100 agents in 10 namespaces, caps per Agent 1, per namespace 10, cluster 100: every agent,
//! namespace and the cluster are at their cap, and the waiting runs are shared evenly among the
//! agents. Each step finishes the run in flight longest, enqueues a new run for its agent (the
//! backlog keeps its size) and times `finished`, `enqueue`, the `dispatch` that follows, which starts exactly one run —
//! that agent's oldest — whatever the backlog, and `newly_blocked` (which lists the new run). Sizes are interleaved trial by
//! trial.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use agentplane_control::{Caps, OrderKey, QueuedRun, RunKey, Scheduler};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

const AGENTS: usize = 100;
const NAMESPACES: usize = 10;

struct Bench {
    s: Scheduler,
    seq: u64,
    in_flight: VecDeque<(RunKey, usize)>,
    now: DateTime<Utc>,
}

impl Bench {
    fn new(waiting: usize) -> Self {
        let caps = Caps { per_namespace: (AGENTS / NAMESPACES) as u32, cluster: AGENTS as u32, default_per_agent: 1 };
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let mut b = Bench { s: Scheduler::new(caps), seq: 0, in_flight: VecDeque::new(), now };
        for i in 0..waiting + AGENTS {
            let r = b.queued(i % AGENTS);
            b.s.enqueue(r).unwrap();
        }
        for d in b.s.dispatch(now) {
            let agent = d.agent.name.trim_start_matches("agent").parse().unwrap();
            b.in_flight.push_back((d.key, agent));
        }
        assert_eq!(b.in_flight.len(), AGENTS);
        assert_eq!(b.s.counts().queued, waiting);
        b
    }

    fn queued(&mut self, agent: usize) -> QueuedRun {
        let seq = self.seq;
        self.seq += 1;
        QueuedRun::new(
            RunKey::new(format!("ns{}", agent % NAMESPACES), format!("run-{seq}")),
            format!("agent{agent}"),
            OrderKey::from_seq(seq),
        )
    }

    /// One step; returns the durations (ns) of `finished`, `enqueue`, `dispatch` and
    /// `newly_blocked`.
    fn step(&mut self) -> [u64; 4] {
        let (key, agent) = self.in_flight.pop_front().unwrap();
        let next = self.queued(agent);
        let t0 = Instant::now();
        let done = self.s.finished(&key);
        let t1 = Instant::now();
        self.s.enqueue(next).unwrap();
        let t2 = Instant::now();
        let started = black_box(self.s.dispatch(self.now));
        let t3 = Instant::now();
        let blocked = black_box(self.s.newly_blocked());
        let t4 = Instant::now();
        assert!(done);
        assert_eq!(blocked.len(), 1);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].agent.name, format!("agent{agent}"));
        self.in_flight.push_back((started[0].key.clone(), agent));
        let ns = |a: Instant, b: Instant| (b - a).as_nanos() as u64;
        [ns(t0, t1), ns(t1, t2), ns(t2, t3), ns(t3, t4)]
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let trials: usize = args.next().map_or(21, |a| a.parse().expect("TRIALS is a number"));
    let dispatches: usize = args.next().map_or(20_000, |a| a.parse().expect("DISPATCHES is a number"));
    let mut sizes: Vec<usize> = args.map(|a| a.parse().expect("WAITING is a number")).collect();
    if sizes.is_empty() {
        sizes = vec![100, 100_000];
    }
    assert!(sizes.iter().all(|&n| n >= AGENTS), "every WAITING must be at least {AGENTS}");
    let mut benches: Vec<Bench> = sizes.iter().map(|&n| Bench::new(n)).collect();
    // Per size and operation: per-trial means, and every sample of every trial.
    const OPS: [&str; 4] = ["finished", "enqueue", "dispatch", "newly_blocked"];
    let mut means: Vec<[Vec<f64>; 4]> = vec![Default::default(); sizes.len()];
    let mut all: Vec<Vec<u64>> = vec![Vec::new(); sizes.len()];
    for trial in 0..=trials {
        let order: Vec<usize> =
            if trial % 2 == 0 { (0..sizes.len()).collect() } else { (0..sizes.len()).rev().collect() };
        for i in order {
            let samples: Vec<[u64; 4]> = (0..dispatches).map(|_| benches[i].step()).collect();
            if trial > 0 {
                for (op, m) in means[i].iter_mut().enumerate() {
                    m.push(samples.iter().map(|s| s[op]).sum::<u64>() as f64 / samples.len() as f64);
                }
                all[i].extend(samples.iter().map(|s| s[2]));
            }
        }
    }
    let mut medians = Vec::new();
    for (i, &waiting) in sizes.iter().enumerate() {
        let v = &mut all[i];
        v.sort_unstable();
        let pct = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
        let m = median(means[i][2].clone());
        medians.push((m, pct(0.5) as f64));
        let others: serde_json::Map<String, serde_json::Value> = OPS
            .iter()
            .enumerate()
            .map(|(op, name)| (format!("{name}_ns_median_of_trial_means"), json!(median(means[i][op].clone()).round())))
            .collect();
        println!(
            "{}",
            json!({
                "scenario": "dispatch_cost",
                "waiting": waiting,
                "in_flight": benches[i].s.in_flight(),
                "dispatch_ns": {
                    "median_of_trial_means": m.round(),
                    "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0),
                    "samples": v.len(),
                },
                "per_operation": others,
            })
        );
    }
    let (first, last) = (medians[0], medians[medians.len() - 1]);
    println!(
        "{}",
        json!({
            "scenario": "dispatch_cost_ratio",
            "waiting": [sizes[0], sizes[sizes.len() - 1]],
            "mean_ratio": (last.0 / first.0 * 100.0).round() / 100.0,
            "p50_ratio": (last.1 / first.1 * 100.0).round() / 100.0,
        })
    );
}
