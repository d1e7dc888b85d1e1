//! Property test: random sequences of enqueue / dispatch / finished / remove / requeue / rebuild
//! against a plain model. After every step: no cap is exceeded, nothing is lost or duplicated, and
//! every dispatch is oldest-first within what the caps allow and leaves no startable run waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};

use agentplane_control::{AgentKey, CapKind, Caps, OrderKey, QueuedRun, RunKey, RunState, RunningRun, Scheduler};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

const NAMESPACES: usize = 3;
const AGENTS_PER_NS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Enqueue a new run of agent `agent`, created at `created` (so not always in enqueue order),
    /// possibly waiting `delay` seconds first.
    Enqueue {
        agent: usize,
        created: u8,
        delay: Option<u8>,
    },
    Dispatch,
    Finish(usize),
    Remove(usize),
    Requeue {
        pick: usize,
        delay: u8,
    },
    Advance(u8),
    Rebuild,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..NAMESPACES * AGENTS_PER_NS, any::<u8>(), prop::option::weighted(0.2, 0u8..20))
            .prop_map(|(agent, created, delay)| Op::Enqueue { agent, created, delay }),
        4 => Just(Op::Dispatch),
        3 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::Remove),
        1 => (any::<usize>(), 0u8..20).prop_map(|(pick, delay)| Op::Requeue { pick, delay }),
        1 => (0u8..15).prop_map(Op::Advance),
        1 => Just(Op::Rebuild),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Pending { not_before: Option<DateTime<Utc>> },
    InFlight,
}

#[derive(Debug, Clone)]
struct MRun {
    agent: usize,
    order: OrderKey,
    state: MState,
}

struct Model {
    caps: Caps,
    agent_caps: Vec<Option<u32>>,
    runs: BTreeMap<RunKey, MRun>,
    now: DateTime<Utc>,
    next: u64,
    enqueued: u64,
    removed: u64,
    finished: u64,
}

fn ns_of(agent: usize) -> usize {
    agent / AGENTS_PER_NS
}

fn agent_key(agent: usize) -> AgentKey {
    AgentKey::new(format!("ns{}", ns_of(agent)), format!("agent{}", agent % AGENTS_PER_NS))
}

impl Model {
    fn agent_cap(&self, agent: usize) -> u32 {
        self.agent_caps[agent].unwrap_or(self.caps.default_per_agent)
    }

    fn queued_run(&self, key: &RunKey, r: &MRun) -> QueuedRun {
        let mut q = QueuedRun::new(key.clone(), agent_key(r.agent).name, r.order);
        q.max_in_flight = self.agent_caps[r.agent];
        q
    }

    /// Delayed runs whose time has come become eligible (as the scheduler does at a dispatch).
    fn promote(&mut self) {
        let now = self.now;
        for r in self.runs.values_mut() {
            if let MState::Pending { not_before: Some(t) } = r.state
                && t <= now
            {
                r.state = MState::Pending { not_before: None };
            }
        }
    }

    fn in_flight_agent(&self, agent: usize) -> u32 {
        self.runs.values().filter(|r| r.agent == agent && r.state == MState::InFlight).count() as u32
    }

    fn in_flight_ns(&self, ns: usize) -> u32 {
        self.runs.values().filter(|r| ns_of(r.agent) == ns && r.state == MState::InFlight).count() as u32
    }

    fn in_flight(&self) -> u32 {
        self.runs.values().filter(|r| r.state == MState::InFlight).count() as u32
    }

    fn eligible(&self, r: &MRun) -> bool {
        matches!(r.state, MState::Pending { not_before } if not_before.is_none_or(|t| t <= self.now))
    }

    /// The first full cap for a run of `agent`, in the documented order.
    fn first_full_cap(&self, agent: usize) -> Option<CapKind> {
        if self.in_flight_agent(agent) >= self.agent_cap(agent) {
            Some(CapKind::Agent)
        } else if self.in_flight_ns(ns_of(agent)) >= self.caps.per_namespace {
            Some(CapKind::Namespace)
        } else if self.in_flight() >= self.caps.cluster {
            Some(CapKind::Cluster)
        } else {
            None
        }
    }
}

fn check_invariants(s: &Scheduler, m: &Model) -> Result<(), TestCaseError> {
    // Caps are never exceeded.
    for agent in 0..NAMESPACES * AGENTS_PER_NS {
        let n = m.in_flight_agent(agent);
        prop_assert!(n <= m.agent_cap(agent), "agent {agent} has {n} in flight");
        prop_assert_eq!(s.agent_in_flight(&agent_key(agent)), n);
    }
    for ns in 0..NAMESPACES {
        let n = m.in_flight_ns(ns);
        prop_assert!(n <= m.caps.per_namespace, "namespace {ns} has {n} in flight");
        prop_assert_eq!(s.namespace_in_flight(&format!("ns{ns}")), n);
    }
    prop_assert!(m.in_flight() <= m.caps.cluster);
    prop_assert_eq!(s.in_flight(), m.in_flight());
    // Same runs, same states; nothing lost.
    let c = s.counts();
    prop_assert_eq!(c.queued + c.delayed + c.in_flight, m.runs.len());
    prop_assert_eq!(m.runs.len() as u64 + m.finished, m.enqueued - m.removed);
    for (k, r) in &m.runs {
        let want = match r.state {
            MState::InFlight => RunState::InFlight,
            MState::Pending { not_before: None } => RunState::Queued,
            MState::Pending { not_before: Some(t) } => RunState::Delayed { not_before: t },
        };
        prop_assert_eq!(s.state(k), Some(want), "{}", k);
    }
    Ok(())
}

/// After a dispatch: every eligible run still waiting is blocked by a full cap (the first one in
/// order), and none is older than a run just started unless its own agent or namespace is full.
fn check_dispatch(s: &Scheduler, m: &Model, started: &[RunKey]) -> Result<(), TestCaseError> {
    for (k, q) in m.runs.iter().filter(|(_, r)| m.eligible(r)) {
        let want = m.first_full_cap(q.agent);
        prop_assert!(want.is_some(), "{} could start but was left waiting", k);
        prop_assert_eq!(s.blocked_reason(k).map(|b| b.cap), want, "{}", k);
        for d in started {
            let r = &m.runs[d];
            if q.order < r.order {
                let full = m.in_flight_agent(q.agent) >= m.agent_cap(q.agent)
                    || m.in_flight_ns(ns_of(q.agent)) >= m.caps.per_namespace;
                prop_assert!(full, "{} started before older {}", d, k);
                prop_assert!(q.agent != r.agent, "{} started before older {} of the same agent", d, k);
            }
        }
    }
    for (k, b) in s.newly_blocked() {
        prop_assert!(m.eligible(&m.runs[&k]), "{} reported blocked but not waiting", k);
        prop_assert_eq!(Some(b), s.blocked_reason(&k));
    }
    Ok(())
}

fn nth_key<'a>(m: &'a Model, pick: usize, f: impl Fn(&MRun) -> bool) -> Option<RunKey> {
    let keys: Vec<&'a RunKey> = m.runs.iter().filter(|(_, r)| f(r)).map(|(k, _)| k).collect();
    if keys.is_empty() { None } else { Some(keys[pick % keys.len()].clone()) }
}

fn caps() -> impl Strategy<Value = (Caps, Vec<Option<u32>>)> {
    (0u32..7, 0u32..5, 0u32..4, prop::collection::vec(prop::option::of(0u32..4), NAMESPACES * AGENTS_PER_NS)).prop_map(
        |(cluster, per_namespace, default_per_agent, agent_caps)| {
            (Caps { per_namespace, cluster, default_per_agent }, agent_caps)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn caps_never_exceeded_and_nothing_lost((caps, agent_caps) in caps(), ops in prop::collection::vec(op(), 1..80)) {
        let mut m = Model {
            caps,
            agent_caps,
            runs: BTreeMap::new(),
            now: Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
            next: 0,
            enqueued: 0,
            removed: 0,
            finished: 0,
        };
        let mut s = Scheduler::new(caps);
        for op in ops {
            match op {
                Op::Enqueue { agent, created, delay } => {
                    m.next += 1;
                    let key = RunKey::new(format!("ns{}", ns_of(agent)), format!("run{}", m.next));
                    let order = OrderKey::new(m.now - Duration::seconds(i64::from(created)), m.next);
                    let not_before = delay.map(|d| m.now + Duration::seconds(i64::from(d)));
                    let r = MRun { agent, order, state: MState::Pending { not_before } };
                    let mut q = m.queued_run(&key, &r);
                    q.not_before = not_before;
                    s.enqueue(q).unwrap();
                    m.runs.insert(key, r);
                    m.enqueued += 1;
                }
                Op::Dispatch => {
                    let started = s.dispatch(m.now);
                    m.promote();
                    let mut seen = HashSet::new();
                    let mut keys = Vec::new();
                    for d in &started {
                        prop_assert!(seen.insert(d.key.clone()), "{} dispatched twice", d.key);
                        let r = m.runs.get_mut(&d.key).expect("dispatched an unknown run");
                        prop_assert_eq!(r.state, MState::Pending { not_before: None }, "{} was not waiting", d.key);
                        prop_assert_eq!(&d.agent, &agent_key(r.agent));
                        prop_assert_eq!(d.order, r.order);
                        r.state = MState::InFlight;
                        keys.push(d.key.clone());
                    }
                    // Within one dispatch, oldest first.
                    prop_assert!(started.windows(2).all(|w| w[0].order < w[1].order));
                    check_invariants(&s, &m)?;
                    check_dispatch(&s, &m, &keys)?;
                }
                Op::Finish(pick) => {
                    if let Some(k) = nth_key(&m, pick, |r| r.state == MState::InFlight) {
                        prop_assert!(s.finished(&k));
                        prop_assert!(!s.finished(&k));
                        m.runs.remove(&k);
                        m.finished += 1;
                    }
                }
                Op::Remove(pick) => {
                    if let Some(k) = nth_key(&m, pick, |_| true) {
                        let pending = m.runs[&k].state != MState::InFlight;
                        prop_assert_eq!(s.remove(&k), pending);
                        if pending {
                            m.runs.remove(&k);
                            m.removed += 1;
                        }
                    }
                }
                Op::Requeue { pick, delay } => {
                    if let Some(k) = nth_key(&m, pick, |_| true) {
                        let not_before = m.now + Duration::seconds(i64::from(delay));
                        let q = m.queued_run(&k, &m.runs[&k]);
                        let r = m.runs.get_mut(&k).unwrap();
                        let was = r.state == MState::InFlight;
                        r.state = MState::Pending { not_before: Some(not_before) };
                        prop_assert_eq!(s.requeue_at(q, not_before), was);
                    }
                }
                Op::Advance(secs) => m.now += Duration::seconds(i64::from(secs)),
                Op::Rebuild => {
                    let running: Vec<RunningRun> = m
                        .runs
                        .iter()
                        .filter(|(_, r)| r.state == MState::InFlight)
                        .map(|(k, r)| RunningRun {
                            key: k.clone(),
                            agent: agent_key(r.agent).name,
                            max_in_flight: m.agent_caps[r.agent],
                        })
                        .collect();
                    let pending: Vec<QueuedRun> = m
                        .runs
                        .iter()
                        .filter_map(|(k, r)| match r.state {
                            MState::Pending { not_before } => {
                                let mut q = m.queued_run(k, r);
                                q.not_before = not_before;
                                Some(q)
                            }
                            MState::InFlight => None,
                        })
                        .collect();
                    s = Scheduler::rebuild(caps, running, pending).unwrap();
                }
            }
            check_invariants(&s, &m)?;
        }
        // Drain: finishing everything and dispatching far in the future starts every run exactly once.
        m.now += Duration::days(1);
        loop {
            let in_flight: Vec<RunKey> =
                m.runs.iter().filter(|(_, r)| r.state == MState::InFlight).map(|(k, _)| k.clone()).collect();
            for k in &in_flight {
                prop_assert!(s.finished(k));
                m.runs.remove(k);
                m.finished += 1;
            }
            let started = s.dispatch(m.now);
            m.promote();
            for d in &started {
                let r = m.runs.get_mut(&d.key).expect("dispatched an unknown run");
                prop_assert!(r.state != MState::InFlight);
                r.state = MState::InFlight;
            }
            check_invariants(&s, &m)?;
            if started.is_empty() {
                break;
            }
        }
        // Only runs that some zero cap keeps out may remain.
        for r in m.runs.values() {
            prop_assert!(m.agent_cap(r.agent) == 0 || m.caps.per_namespace == 0 || m.caps.cluster == 0);
        }
        if m.runs.is_empty() {
            prop_assert_eq!(s.counts(), Default::default());
        }
    }
}
