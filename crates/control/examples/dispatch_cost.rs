//! Measures the cost of one `Scheduler::dispatch` with a small and a large backlog, and prints one
//! JSON line per backlog size plus one with the ratios.
//!
//! ```text
//! cargo run --release -p agentplane-control --example dispatch_cost [-- ITERATIONS [QUEUED...]]
//! ```
//!
//! `QUEUED` defaults to `100 100000`; the ratio line compares the last size with the first.
//!
//! Steady state with default caps (agent 5, namespace 10, cluster 100): 1,000 agents in 50
//! namespaces, the cluster full (100 in flight), `queued` runs waiting. Each step finishes the run
//! that has been in flight longest, enqueues a new run (so the backlog stays the same size) and
//! times the `dispatch` that follows, which starts exactly one run. Also timed: a dispatch that
//! starts 100 runs after 100 finished, and a dispatch with the cluster full (starts nothing).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use agentplane_control::{Caps, OrderKey, QueuedRun, RunKey, Scheduler};
use chrono::{TimeZone, Utc};
use serde_json::json;

const AGENTS: u64 = 1_000;
const NAMESPACES: u64 = 50;

struct Bench {
    s: Scheduler,
    seq: u64,
    in_flight: VecDeque<RunKey>,
}

impl Bench {
    fn new(queued: u64) -> Self {
        let mut b = Bench { s: Scheduler::new(Caps::default()), seq: 0, in_flight: VecDeque::new() };
        for _ in 0..queued + 100 {
            b.enqueue();
        }
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        for d in b.s.dispatch(now) {
            b.in_flight.push_back(d.key);
        }
        assert_eq!(b.in_flight.len(), 100);
        assert_eq!(b.s.counts().queued as u64, queued);
        b
    }

    fn enqueue(&mut self) {
        let agent = self.seq % AGENTS;
        let ns = format!("ns{}", agent % NAMESPACES);
        let run = QueuedRun::new(
            RunKey::new(ns, format!("run-{}", self.seq)),
            format!("agent{agent}"),
            OrderKey::from_seq(self.seq),
        );
        self.s.enqueue(run).unwrap();
        self.seq += 1;
    }

    fn finish(&mut self, n: usize) {
        for _ in 0..n {
            let k = self.in_flight.pop_front().unwrap();
            assert!(self.s.finished(&k));
            self.enqueue();
        }
    }

    /// Times one dispatch, in nanoseconds, and records what it started.
    fn timed_dispatch(&mut self, expect: usize) -> u64 {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let t = Instant::now();
        let started = black_box(self.s.dispatch(now));
        let ns = t.elapsed().as_nanos() as u64;
        assert_eq!(started.len(), expect);
        self.in_flight.extend(started.into_iter().map(|d| d.key));
        ns
    }
}

fn summary(mut v: Vec<u64>) -> serde_json::Value {
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
    let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
    json!({"mean": mean.round(), "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "samples": v.len()})
}

fn main() {
    let iterations: usize = std::env::args().nth(1).map_or(200_000, |a| a.parse().expect("ITERATIONS is a number"));
    let mut sizes: Vec<u64> = std::env::args().skip(2).map(|a| a.parse().expect("QUEUED is a number")).collect();
    if sizes.is_empty() {
        sizes = vec![100, 100_000];
    }
    let mut benches: Vec<Bench> = sizes.iter().map(|&n| Bench::new(n)).collect();
    let mut one = vec![Vec::new(); sizes.len()];
    let mut batch = vec![Vec::new(); sizes.len()];
    let mut noop = vec![Vec::new(); sizes.len()];
    // Interleave the two sizes in rounds so that machine noise hits both alike.
    let rounds = 20;
    for _ in 0..rounds {
        for (i, b) in benches.iter_mut().enumerate() {
            for _ in 0..iterations / rounds {
                b.finish(1);
                one[i].push(b.timed_dispatch(1));
            }
            for _ in 0..iterations / rounds / 100 {
                b.finish(100);
                batch[i].push(b.timed_dispatch(100));
                noop[i].push(b.timed_dispatch(0));
            }
        }
    }
    let mut means = Vec::new();
    for (i, &queued) in sizes.iter().enumerate() {
        let o = summary(std::mem::take(&mut one[i]));
        means.push((o["mean"].as_f64().unwrap(), o["p50"].as_u64().unwrap()));
        println!(
            "{}",
            json!({
                "scenario": "dispatch_cost",
                "queued": queued,
                "in_flight": benches[i].s.in_flight(),
                "dispatch_one_ns": o,
                "dispatch_100_ns": summary(std::mem::take(&mut batch[i])),
                "dispatch_cluster_full_ns": summary(std::mem::take(&mut noop[i])),
            })
        );
    }
    println!(
        "{}",
        json!({
            "scenario": "dispatch_cost_ratio",
            "queued": [sizes[0], sizes[sizes.len() - 1]],
            "mean_ratio": (means[means.len() - 1].0 / means[0].0 * 100.0).round() / 100.0,
            "p50_ratio": (means[means.len() - 1].1 as f64 / means[0].1 as f64 * 100.0).round() / 100.0,
        })
    );
}
