//! `backlog`: what one `Scheduler::dispatch` costs with many runs waiting versus few.
//!
//! Pure scheduler (`agentplane_control::Scheduler`), no store, no server. The steady state is
//! built so that every timed dispatch does the same work whatever the backlog:
//!
//! * `--agents` agents spread evenly over `--namespaces` namespaces; caps per Agent 1, per
//!   namespace `agents / namespaces`, cluster `agents` — so every agent, every namespace and the
//!   cluster are at their cap, each agent holding exactly one run in flight;
//! * the waiting runs are shared evenly among the agents (`waiting / agents` each);
//! * one step finishes the run that has been in flight longest (its agent, its namespace and the
//!   cluster each get one slot back), enqueues one new run for that agent (the backlog keeps its
//!   size), then calls `dispatch`, which must start exactly one run: that agent's oldest.
//!
//! Only the `dispatch` call is timed for `dispatch_ns`; `cycle_ns` times the whole step the
//! controller does per started run (`finished` + `enqueue` + `dispatch` + `newly_blocked`), with
//! the new run's key built before the clock starts. Backlog sizes are measured in interleaved
//! trials (alternating which size goes first) after one untimed warm-up trial; each trial gives a
//! mean and a median per size, and the report gives the median over trials and the ratio of the
//! largest backlog to the smallest.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use agentplane_control::{Caps, OrderKey, QueuedRun, RunKey, Scheduler};
use anyhow::{Result, bail};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct BacklogOpts {
    /// Waiting runs per configuration, comma-separated; ratios compare the last with the first.
    #[arg(long, default_value = "100,100000", value_delimiter = ',')]
    pub waiting: Vec<usize>,
    /// Agents; each holds one run in flight and an equal share of the waiting runs.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Namespaces the agents are spread over (must divide --agents).
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    /// Timed trials (after one warm-up trial). Many short trials let the median skip the ones a
    /// busy machine preempted.
    #[arg(long, default_value_t = 201)]
    pub trials: usize,
    /// Timed dispatches per trial and backlog size.
    #[arg(long, default_value_t = 2_000)]
    pub dispatches: usize,
}

struct Bench {
    s: Scheduler,
    namespaces: usize,
    seq: u64,
    /// Runs in flight, longest-running first, with their agent.
    in_flight: VecDeque<(RunKey, usize)>,
    now: DateTime<Utc>,
}

impl Bench {
    fn new(waiting: usize, opts: &BacklogOpts, now: DateTime<Utc>) -> Result<Self> {
        let per_ns = u32::try_from(opts.agents / opts.namespaces)?;
        let caps = Caps { per_namespace: per_ns, cluster: u32::try_from(opts.agents)?, default_per_agent: 1 };
        let mut b =
            Bench { s: Scheduler::new(caps), namespaces: opts.namespaces, seq: 0, in_flight: VecDeque::new(), now };
        for i in 0..waiting + opts.agents {
            let run = b.queued(i % opts.agents);
            b.s.enqueue(run)?;
        }
        let started = b.s.dispatch(now);
        if started.len() != opts.agents {
            bail!("backlog set-up: the first dispatch started {} runs, expected {}", started.len(), opts.agents);
        }
        for d in started {
            let agent = agent_index(&d.agent.name)?;
            b.in_flight.push_back((d.key, agent));
        }
        if b.s.counts().queued != waiting {
            bail!("backlog set-up: {} runs wait, expected {waiting}", b.s.counts().queued);
        }
        Ok(b)
    }

    /// The next run of `agent` (its key is built here, outside any timed section).
    fn queued(&mut self, agent: usize) -> QueuedRun {
        let seq = self.seq;
        self.seq += 1;
        QueuedRun::new(
            RunKey::new(format!("ns{}", agent % self.namespaces), format!("run-{seq}")),
            format!("agent{agent}"),
            OrderKey::from_seq(seq),
        )
    }

    /// One step; returns (dispatch ns, whole cycle ns).
    fn step(&mut self) -> Result<(u64, u64)> {
        let Some((key, agent)) = self.in_flight.pop_front() else { bail!("backlog: nothing in flight") };
        let next = self.queued(agent);
        let cycle = Instant::now();
        if !self.s.finished(&key) {
            bail!("backlog: {key} was not in flight");
        }
        self.s.enqueue(next)?;
        let t = Instant::now();
        let started = black_box(self.s.dispatch(self.now));
        let dispatch_ns = t.elapsed().as_nanos();
        let blocked = black_box(self.s.newly_blocked());
        let cycle_ns = cycle.elapsed().as_nanos();
        // The new run waits behind its agent's older runs, blocked by the agent's cap.
        if blocked.len() != 1 {
            bail!("backlog: newly_blocked listed {} runs, expected 1", blocked.len());
        }
        let [d] = started.as_slice() else { bail!("backlog: a dispatch started {} runs, expected 1", started.len()) };
        if agent_index(&d.agent.name)? != agent {
            bail!("backlog: the dispatch started a run of {}, expected agent{agent}", d.agent);
        }
        self.in_flight.push_back((d.key.clone(), agent));
        Ok((u64::try_from(dispatch_ns)?, u64::try_from(cycle_ns)?))
    }
}

fn agent_index(name: &str) -> Result<usize> {
    match name.strip_prefix("agent").map(str::parse) {
        Some(Ok(i)) => Ok(i),
        _ => bail!("backlog: unexpected agent name {name:?}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Mean and median of one trial's samples.
fn trial_stats(samples: &mut [u64]) -> (f64, f64) {
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    let p50 = samples.get(samples.len() / 2).copied().unwrap_or(0) as f64;
    (mean, p50)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Default)]
struct Series {
    means: Vec<f64>,
    p50s: Vec<f64>,
    /// Every timed sample of every trial.
    all: Vec<u64>,
}

impl Series {
    fn push_trial(&mut self, samples: &mut [u64]) {
        let (mean, p50) = trial_stats(samples);
        self.means.push(mean);
        self.p50s.push(p50);
        self.all.extend_from_slice(samples);
    }

    fn summary(&mut self) -> Value {
        let mut m = self.means.clone();
        let mut p = self.p50s.clone();
        self.all.sort_unstable();
        let all = &self.all;
        let pct = |q: f64| all.get(((all.len().saturating_sub(1)) as f64 * q) as usize).copied().unwrap_or(0);
        json!({
            "median_of_trial_means": round2(median(&mut m)),
            "median_of_trial_p50s": round2(median(&mut p)),
            "min_trial_mean": round2(m.first().copied().unwrap_or(f64::NAN)),
            "max_trial_mean": round2(m.last().copied().unwrap_or(f64::NAN)),
            "all_samples": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999), "count": all.len()},
        })
    }
}

/// Per-trial ratios of `big` to `small` (trials are paired), summarised.
fn ratios(big: &[f64], small: &[f64]) -> Value {
    let mut r: Vec<f64> = big.iter().zip(small).map(|(b, s)| b / s).collect();
    let med = median(&mut r);
    json!({"median": round2(med), "min": round2(r.first().copied().unwrap_or(f64::NAN)), "max": round2(r.last().copied().unwrap_or(f64::NAN))})
}

pub fn run(opts: BacklogOpts) -> Result<()> {
    if opts.agents == 0 || opts.namespaces == 0 || !opts.agents.is_multiple_of(opts.namespaces) {
        bail!(
            "--agents {} and --namespaces {}: both must be at least 1 and --namespaces must divide --agents \
             (every namespace gets the same number of agents)",
            opts.agents,
            opts.namespaces
        );
    }
    if let Some(&n) = opts.waiting.iter().find(|&&n| n < opts.agents) {
        bail!(
            "--waiting {n}: every size must be at least --agents ({}) so that each agent always has a run waiting",
            opts.agents
        );
    }
    if opts.waiting.is_empty() || opts.trials == 0 || opts.dispatches == 0 {
        bail!("--waiting, --trials and --dispatches must not be empty or 0");
    }
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).single().unwrap_or_else(Utc::now);
    let mut benches = opts.waiting.iter().map(|&n| Bench::new(n, &opts, now)).collect::<Result<Vec<_>>>()?;
    let sizes = benches.len();
    let mut dispatch: Vec<Series> = (0..sizes).map(|_| Series::default()).collect();
    let mut cycle: Vec<Series> = (0..sizes).map(|_| Series::default()).collect();
    let mut d_samples = vec![0u64; opts.dispatches];
    let mut c_samples = vec![0u64; opts.dispatches];
    for trial in 0..=opts.trials {
        // Alternate which backlog goes first so that neither always runs after the other.
        let order: Vec<usize> = if trial % 2 == 0 { (0..sizes).collect() } else { (0..sizes).rev().collect() };
        for i in order {
            for k in 0..opts.dispatches {
                let (d, c) = benches[i].step()?;
                d_samples[k] = d;
                c_samples[k] = c;
            }
            if trial == 0 {
                continue; // warm-up
            }
            dispatch[i].push_trial(&mut d_samples);
            cycle[i].push_trial(&mut c_samples);
        }
    }
    for b in &benches {
        let c = b.s.counts();
        if c.in_flight != opts.agents {
            bail!("backlog: {} runs in flight at the end, expected {}", c.in_flight, opts.agents);
        }
    }
    let results: Vec<Value> = opts
        .waiting
        .iter()
        .enumerate()
        .map(|(i, &n)| json!({"waiting": n, "dispatch_ns": dispatch[i].summary(), "cycle_ns": cycle[i].summary()}))
        .collect();
    let (first, last) = (0, sizes - 1);
    let median_of = |s: &Series, p50: bool| median(&mut if p50 { s.p50s.clone() } else { s.means.clone() });
    let line = json!({
        "scenario": "backlog",
        "agents": opts.agents,
        "namespaces": opts.namespaces,
        "caps": {"per_agent": 1, "per_namespace": opts.agents / opts.namespaces, "cluster": opts.agents},
        "trials": opts.trials,
        "dispatches_per_trial": opts.dispatches,
        "results": results,
        "ratio": {
            "waiting": [opts.waiting[first], opts.waiting[last]],
            "dispatch_mean": round2(median_of(&dispatch[last], false) / median_of(&dispatch[first], false)),
            "dispatch_p50": round2(median_of(&dispatch[last], true) / median_of(&dispatch[first], true)),
            "dispatch_mean_per_trial": ratios(&dispatch[last].means, &dispatch[first].means),
            "cycle_mean": round2(median_of(&cycle[last], false) / median_of(&cycle[first], false)),
        },
        "target_ratio": 1.5,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    println!("{line}");
    Ok(())
}
