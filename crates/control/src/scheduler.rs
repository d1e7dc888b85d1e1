//! The scheduler core: which pending runs start now, under which caps, oldest first.
//!
//! Caps are checked in order — per Agent (`maxInFlight`), per namespace, cluster — and a run that
//! cannot start stays queued with a [`Blocked`] naming the first full cap. Dispatch cost does not
//! depend on how many runs wait: starting `k` runs costs `O(k log n)` and a dispatch that starts
//! nothing costs `O(1)` (plus `O(m log n)` for `m` retry delays that expired). See
//! `docs/scheduler.md` for the data structure and the leader-lease model.
//!
//! # Data structure
//!
//! * each Agent keeps its queued (eligible) runs in a `BTreeSet` ordered by [`OrderKey`]: its
//!   *head* is its oldest run;
//! * each namespace keeps a `BTreeSet` of the heads of its agents that are *below their cap*;
//! * the cluster keeps a `BTreeSet` of the oldest such head of every namespace that is *below its
//!   cap*.
//!
//! So the first entry of the cluster index is always the oldest run that may start now. Starting
//! it changes one agent's head and one namespace's head: a constant number of `O(log n)` updates.
//! An agent or a namespace at its cap is simply absent from the index above it (its heads are
//! parked) and comes back when one of its runs finishes. A cluster at cap ends a dispatch at once.
//! Runs waiting for a retry (`not_before`) sit in a separate time-ordered set and join their
//! agent's queue, at their creation position, once `now >= not_before`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use agentplane_api::condition::{Condition, ConditionStatus};
use agentplane_api::limits::DEFAULT_AGENT_MAX_IN_FLIGHT;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Condition type written on a run that waits for capacity.
pub const BLOCKED_CONDITION: &str = "Blocked";
/// Reason of the [`BLOCKED_CONDITION`] when a concurrency cap is full.
pub const CONCURRENCY_LIMIT_REASON: &str = "ConcurrencyLimit";
/// Default runs in flight per namespace.
pub const DEFAULT_PER_NAMESPACE: u32 = 10;
/// Default runs in flight in the whole cluster.
pub const DEFAULT_CLUSTER: u32 = 100;

/// The concurrency caps. A cap of 0 lets nothing start at that level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Caps {
    /// Runs in flight per namespace (default 10).
    pub per_namespace: u32,
    /// Runs in flight in the cluster (default 100).
    pub cluster: u32,
    /// Runs in flight per Agent when the Agent does not say (`maxInFlight`, default 5).
    pub default_per_agent: u32,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            per_namespace: DEFAULT_PER_NAMESPACE,
            cluster: DEFAULT_CLUSTER,
            default_per_agent: DEFAULT_AGENT_MAX_IN_FLIGHT,
        }
    }
}

/// An AgentRun's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub namespace: String,
    pub name: String,
}

impl RunKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        RunKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An Agent's identity. Agents are namespace-scoped: a run's agent lives in the run's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey {
    pub namespace: String,
    pub name: String,
}

impl AgentKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        AgentKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Position of a run in the oldest-first order: its creation timestamp, then a sequence that makes
/// it unique (the store's resourceVersion or row id at creation). Smaller is older.
///
/// Ties (equal keys) are broken by the order in which the scheduler first saw the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderKey {
    pub created_at: DateTime<Utc>,
    pub seq: u64,
}

impl OrderKey {
    pub fn new(created_at: DateTime<Utc>, seq: u64) -> Self {
        OrderKey { created_at, seq }
    }

    /// An order by sequence alone (timestamp fixed at the Unix epoch).
    pub fn from_seq(seq: u64) -> Self {
        OrderKey { created_at: DateTime::<Utc>::UNIX_EPOCH, seq }
    }
}

/// A `Pending` run to schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRun {
    pub key: RunKey,
    /// The Agent's name, in the run's namespace.
    pub agent: String,
    /// The Agent's `maxInFlight`. `Some` sets the agent's cap; `None` keeps the cap the scheduler
    /// already has for this agent (or [`Caps::default_per_agent`] for an agent it has not seen).
    pub max_in_flight: Option<u32>,
    pub order: OrderKey,
    /// Not eligible before this time (`status.nextRetryAt` of a run waiting for a retry).
    pub not_before: Option<DateTime<Utc>>,
}

impl QueuedRun {
    pub fn new(key: RunKey, agent: impl Into<String>, order: OrderKey) -> Self {
        QueuedRun { key, agent: agent.into(), max_in_flight: None, order, not_before: None }
    }

    pub fn with_max_in_flight(mut self, max_in_flight: u32) -> Self {
        self.max_in_flight = Some(max_in_flight);
        self
    }

    pub fn with_not_before(mut self, not_before: DateTime<Utc>) -> Self {
        self.not_before = Some(not_before);
        self
    }

    pub fn agent_key(&self) -> AgentKey {
        AgentKey::new(self.key.namespace.clone(), self.agent.clone())
    }
}

/// A run that is already `Running` (found in the store when the state is rebuilt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRun {
    pub key: RunKey,
    /// The Agent's name, in the run's namespace.
    pub agent: String,
    /// As [`QueuedRun::max_in_flight`].
    pub max_in_flight: Option<u32>,
}

impl RunningRun {
    pub fn new(key: RunKey, agent: impl Into<String>) -> Self {
        RunningRun { key, agent: agent.into(), max_in_flight: None }
    }

    pub fn with_max_in_flight(mut self, max_in_flight: u32) -> Self {
        self.max_in_flight = Some(max_in_flight);
        self
    }
}

/// A run the scheduler has decided to start now. It counts as in flight from this moment until
/// [`Scheduler::finished`] or [`Scheduler::requeue_at`] is called for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    pub key: RunKey,
    pub agent: AgentKey,
    pub order: OrderKey,
}

/// Which cap keeps a run waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CapKind {
    Agent,
    Namespace,
    Cluster,
}

impl fmt::Display for CapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CapKind::Agent => "Agent",
            CapKind::Namespace => "Namespace",
            CapKind::Cluster => "Cluster",
        })
    }
}

/// Why a queued run does not start: the first full cap, in the order Agent, namespace, cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blocked {
    pub cap: CapKind,
    pub in_flight: u32,
    pub limit: u32,
    /// For people, e.g. `agent default/coder has 5 of 5 runs in flight (maxInFlight)`.
    pub message: String,
}

impl Blocked {
    /// The condition to write on the run; see [`blocked_condition`].
    pub fn condition(&self, now: DateTime<Utc>) -> Condition {
        blocked_condition(self, now)
    }
}

/// The condition to write on a run that waits for capacity: type `Blocked`, status `True`, reason
/// `ConcurrencyLimit`, and a message naming the cap.
pub fn blocked_condition(blocked: &Blocked, now: DateTime<Utc>) -> Condition {
    Condition {
        type_: BLOCKED_CONDITION.to_owned(),
        status: ConditionStatus::True,
        reason: CONCURRENCY_LIMIT_REASON.to_owned(),
        message: blocked.message.clone(),
        last_transition_time: Some(now),
        observed_generation: None,
    }
}

/// Where a run is in the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Eligible, waiting for capacity (or for the next [`Scheduler::dispatch`]).
    Queued,
    /// Waiting for its retry time; not eligible before `not_before`.
    Delayed { not_before: DateTime<Utc> },
    /// Dispatched or registered as running; holds capacity.
    InFlight,
}

impl RunState {
    fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Delayed { .. } => "delayed",
            RunState::InFlight => "in flight",
        }
    }
}

/// Sizes, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerCounts {
    pub queued: usize,
    pub delayed: usize,
    pub in_flight: usize,
    pub agents: usize,
    pub namespaces: usize,
}

type RunId = u64;
type AgentId = u64;
type NsId = u64;

/// Hashing for the scheduler's own sequential ids: one multiplication instead of SipHash. The ids
/// are not attacker-chosen, so flooding resistance is not needed.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Queued(OrderKey),
    Delayed(OrderKey, DateTime<Utc>),
    InFlight,
}

#[derive(Debug)]
struct Entry {
    key: RunKey,
    agent: AgentId,
    slot: Slot,
}

#[derive(Debug)]
struct AgentState {
    key: AgentKey,
    ns: NsId,
    /// `None`: [`Caps::default_per_agent`].
    cap: Option<u32>,
    in_flight: u32,
    delayed: usize,
    /// Eligible runs, oldest first.
    queue: BTreeSet<(OrderKey, RunId)>,
    /// The head under which this agent is in its namespace's `ready` set, if it is.
    indexed: Option<(OrderKey, RunId)>,
}

#[derive(Debug)]
struct NsState {
    name: String,
    agents: usize,
    in_flight: u32,
    /// Heads of this namespace's agents that are below their cap.
    ready: BTreeSet<(OrderKey, RunId, AgentId)>,
    /// The head under which this namespace is in the cluster index, if it is.
    indexed: Option<(OrderKey, RunId)>,
}

/// The scheduler's in-memory state. See the [module documentation](self).
///
/// Every method is synchronous, takes `now` from the caller when it needs time, and does no I/O.
#[derive(Debug)]
pub struct Scheduler {
    caps: Caps,
    next_id: u64,
    ids: HashMap<RunKey, RunId>,
    entries: IdMap<Entry>,
    agent_ids: HashMap<AgentKey, AgentId>,
    agents: IdMap<AgentState>,
    ns_ids: HashMap<String, NsId>,
    namespaces: IdMap<NsState>,
    /// Oldest startable head of every namespace below its cap.
    index: BTreeSet<(OrderKey, RunId, NsId)>,
    /// Runs waiting for their retry time.
    delayed: BTreeSet<(DateTime<Utc>, OrderKey, RunId)>,
    in_flight: u32,
    /// Runs that became eligible since the last dispatch.
    fresh: Vec<RunId>,
    /// `fresh` as it was at the last dispatch.
    candidates: Vec<RunId>,
}

impl Scheduler {
    pub fn new(caps: Caps) -> Self {
        Scheduler {
            caps,
            next_id: 0,
            ids: HashMap::new(),
            entries: IdMap::default(),
            agent_ids: HashMap::new(),
            agents: IdMap::default(),
            ns_ids: HashMap::new(),
            namespaces: IdMap::default(),
            index: BTreeSet::new(),
            delayed: BTreeSet::new(),
            in_flight: 0,
            fresh: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// Rebuilds the state from the store, as the new leader does when it takes the lease: the
    /// runs that are `Running` hold capacity (even beyond a cap, e.g. after the cap was lowered —
    /// then nothing more starts there until enough finish), the `Pending` ones are queued.
    ///
    /// Every pending run that is still blocked after the next [`dispatch`](Self::dispatch) is
    /// listed by [`newly_blocked`](Self::newly_blocked), so the caller can (re)write its condition.
    pub fn rebuild(
        caps: Caps,
        running: impl IntoIterator<Item = RunningRun>,
        pending: impl IntoIterator<Item = QueuedRun>,
    ) -> Result<Self, Error> {
        let mut s = Scheduler::new(caps);
        for r in running {
            s.running(r)?;
        }
        for p in pending {
            s.enqueue(p)?;
        }
        Ok(s)
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Changes the caps. Costs `O((agents + namespaces) log n)`; runs already in flight keep
    /// running even when they now exceed a lowered cap.
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
        let all: Vec<AgentId> = self.agents.keys().copied().collect();
        for aid in all {
            self.refresh(aid);
        }
    }

    /// Sets an Agent's `maxInFlight` (`None`: the default), e.g. after the Agent was edited.
    /// Does nothing for an agent with no runs in the scheduler (the cap comes with its next run).
    pub fn set_agent_cap(&mut self, agent: &AgentKey, max_in_flight: Option<u32>) {
        if let Some(&aid) = self.agent_ids.get(agent) {
            if let Some(a) = self.agents.get_mut(&aid) {
                a.cap = max_in_flight;
            }
            self.refresh(aid);
        }
    }

    /// Adds a pending run. With `not_before` set it waits for that time first (a retry). `O(log n)`.
    pub fn enqueue(&mut self, run: QueuedRun) -> Result<(), Error> {
        self.check_new(&run.key)?;
        self.insert_pending(run);
        Ok(())
    }

    /// Registers a run that is already running (when rebuilding state): it holds capacity until
    /// [`finished`](Self::finished). `O(log n)`.
    pub fn running(&mut self, run: RunningRun) -> Result<(), Error> {
        self.check_new(&run.key)?;
        let aid = self.agent_for(&run.key.namespace, &run.agent, run.max_in_flight);
        self.new_entry(run.key, aid, Slot::InFlight);
        self.hold(aid);
        self.refresh(aid);
        Ok(())
    }

    /// Forgets a queued or delayed run (cancelled or deleted while pending). Returns whether it was
    /// pending; an in-flight run is left alone (cancel it, then call [`finished`](Self::finished)).
    pub fn remove(&mut self, key: &RunKey) -> bool {
        match self.ids.get(key).and_then(|id| self.entries.get(id)).map(|e| e.slot) {
            Some(Slot::Queued(_) | Slot::Delayed(..)) => {
                self.detach_and_gc(key);
                true
            }
            _ => false,
        }
    }

    /// A run in flight ended (succeeded, failed for good, cancelled, or was lost): frees its
    /// capacity. Returns whether it was in flight; a pending run is left alone (use
    /// [`remove`](Self::remove)).
    pub fn finished(&mut self, key: &RunKey) -> bool {
        match self.ids.get(key).and_then(|id| self.entries.get(id)).map(|e| e.slot) {
            Some(Slot::InFlight) => {
                self.detach_and_gc(key);
                true
            }
            _ => false,
        }
    }

    /// Puts a run back to wait until `not_before` (its `nextRetryAt`), keeping its place in the
    /// oldest-first order (`run.order`) once eligible. If it was in flight its capacity is freed;
    /// if it was pending its wait is replaced; if it was unknown it is added. Returns whether it
    /// was in flight. Also the way to hand back a dispatched run that could not be started
    /// (`not_before = now`). `O(log n)`.
    pub fn requeue_at(&mut self, mut run: QueuedRun, not_before: DateTime<Utc>) -> bool {
        let old = self.detach(&run.key);
        run.not_before = Some(not_before);
        self.insert_pending(run);
        match old {
            Some((slot, aid)) => {
                self.gc(aid);
                slot == Slot::InFlight
            }
            None => false,
        }
    }

    /// The runs to start now, oldest first, and marks them in flight. Delayed runs whose time has
    /// come (`not_before <= now`) become eligible first. Costs `O(k log n)` for `k` runs started
    /// (plus `O(m log n)` for `m` expired retry delays, each paid once per retry), independent of
    /// how many runs keep waiting. With the cluster at its cap it returns after one comparison.
    pub fn dispatch(&mut self, now: DateTime<Utc>) -> Vec<Dispatch> {
        self.promote(now);
        let mut out = Vec::new();
        while self.in_flight < self.caps.cluster {
            let Some(&(order, id, nid)) = self.index.first() else { break };
            let Some(&(_, _, aid)) = self.namespaces.get(&nid).and_then(|ns| ns.ready.first()) else {
                debug_assert!(false, "indexed namespace without a ready agent");
                break;
            };
            let Some(agent) =
                self.agents.get_mut(&aid).and_then(|a| a.queue.remove(&(order, id)).then(|| a.key.clone()))
            else {
                debug_assert!(false, "indexed head is not queued");
                break;
            };
            let Some(entry) = self.entries.get_mut(&id) else {
                debug_assert!(false, "queued run without an entry");
                break;
            };
            entry.slot = Slot::InFlight;
            let key = entry.key.clone();
            self.hold(aid);
            self.refresh(aid);
            out.push(Dispatch { key, agent, order });
        }
        // O(1): the runs that became eligible before this dispatch are kept for `newly_blocked`.
        self.candidates = std::mem::take(&mut self.fresh);
        out
    }

    /// The runs that became eligible (enqueued, or their retry time came) before the last
    /// [`dispatch`](Self::dispatch), that it could not start and that are still blocked, with the
    /// cap that blocks each: the runs on which to write [`blocked_condition`]. Each such run is
    /// listed after one dispatch only, so a caller that asks after every dispatch writes each
    /// condition once. Costs `O(r)` for the `r` runs that became eligible before that dispatch.
    pub fn newly_blocked(&self) -> Vec<(RunKey, Blocked)> {
        let mut out = Vec::new();
        // Ids are never reused (a requeued run gets a new one), so each appears once; ids of runs
        // since removed or started are skipped.
        for &id in &self.candidates {
            let Some(e) = self.entries.get(&id) else { continue };
            if let Slot::Queued(_) = e.slot
                && let Some(b) = self.blocked_agent(e.agent)
            {
                out.push((e.key.clone(), b));
            }
        }
        out
    }

    /// Why a queued run does not start now: the first full cap in the order Agent, namespace,
    /// cluster. `None` for a run that is not queued (unknown, delayed, in flight), or that is
    /// eligible and will start at the next dispatch. `O(1)`.
    pub fn blocked_reason(&self, key: &RunKey) -> Option<Blocked> {
        let e = self.ids.get(key).and_then(|id| self.entries.get(id))?;
        match e.slot {
            Slot::Queued(_) => self.blocked_agent(e.agent),
            _ => None,
        }
    }

    pub fn state(&self, key: &RunKey) -> Option<RunState> {
        let e = self.ids.get(key).and_then(|id| self.entries.get(id))?;
        Some(match e.slot {
            Slot::Queued(_) => RunState::Queued,
            Slot::Delayed(_, not_before) => RunState::Delayed { not_before },
            Slot::InFlight => RunState::InFlight,
        })
    }

    /// The earliest retry time among delayed runs: when to call [`dispatch`](Self::dispatch) next
    /// if nothing else happens.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.delayed.first().map(|&(t, _, _)| t)
    }

    /// Runs in flight in the cluster.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn agent_in_flight(&self, agent: &AgentKey) -> u32 {
        self.agent_ids.get(agent).and_then(|aid| self.agents.get(aid)).map_or(0, |a| a.in_flight)
    }

    pub fn namespace_in_flight(&self, namespace: &str) -> u32 {
        self.ns_ids.get(namespace).and_then(|nid| self.namespaces.get(nid)).map_or(0, |n| n.in_flight)
    }

    pub fn counts(&self) -> SchedulerCounts {
        let delayed = self.delayed.len();
        let in_flight = self.in_flight as usize;
        SchedulerCounts {
            queued: self.entries.len() - delayed - in_flight,
            delayed,
            in_flight,
            agents: self.agents.len(),
            namespaces: self.namespaces.len(),
        }
    }

    // ---- internals ----

    fn check_new(&self, key: &RunKey) -> Result<(), Error> {
        match self.state(key) {
            Some(s) => Err(Error::DuplicateRun { key: key.clone(), state: s.as_str() }),
            None => Ok(()),
        }
    }

    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn new_entry(&mut self, key: RunKey, agent: AgentId, slot: Slot) -> RunId {
        let id = self.alloc_id();
        self.ids.insert(key.clone(), id);
        self.entries.insert(id, Entry { key, agent, slot });
        id
    }

    /// The agent's id, creating the agent (and its namespace) on first sight.
    fn agent_for(&mut self, namespace: &str, agent: &str, cap: Option<u32>) -> AgentId {
        let key = AgentKey::new(namespace, agent);
        if let Some(&aid) = self.agent_ids.get(&key) {
            if let (Some(c), Some(a)) = (cap, self.agents.get_mut(&aid)) {
                a.cap = Some(c);
            }
            return aid;
        }
        let nid = match self.ns_ids.get(namespace) {
            Some(&nid) => nid,
            None => {
                let nid = self.alloc_id();
                self.ns_ids.insert(namespace.to_owned(), nid);
                self.namespaces.insert(
                    nid,
                    NsState {
                        name: namespace.to_owned(),
                        agents: 0,
                        in_flight: 0,
                        ready: BTreeSet::new(),
                        indexed: None,
                    },
                );
                nid
            }
        };
        if let Some(ns) = self.namespaces.get_mut(&nid) {
            ns.agents += 1;
        }
        let aid = self.alloc_id();
        self.agent_ids.insert(key.clone(), aid);
        self.agents.insert(
            aid,
            AgentState { key, ns: nid, cap, in_flight: 0, delayed: 0, queue: BTreeSet::new(), indexed: None },
        );
        aid
    }

    /// Adds a run known not to be tracked, as queued or delayed.
    fn insert_pending(&mut self, run: QueuedRun) {
        let aid = self.agent_for(&run.key.namespace, &run.agent, run.max_in_flight);
        match run.not_before {
            Some(t) => {
                let id = self.new_entry(run.key, aid, Slot::Delayed(run.order, t));
                self.delayed.insert((t, run.order, id));
                if let Some(a) = self.agents.get_mut(&aid) {
                    a.delayed += 1;
                }
            }
            None => {
                let id = self.new_entry(run.key, aid, Slot::Queued(run.order));
                if let Some(a) = self.agents.get_mut(&aid) {
                    a.queue.insert((run.order, id));
                }
                self.fresh.push(id);
                self.refresh(aid);
            }
        }
    }

    /// Counts one more run in flight for the agent, its namespace and the cluster.
    fn hold(&mut self, aid: AgentId) {
        if let Some(a) = self.agents.get_mut(&aid) {
            a.in_flight = a.in_flight.saturating_add(1);
            if let Some(ns) = self.namespaces.get_mut(&a.ns) {
                ns.in_flight = ns.in_flight.saturating_add(1);
            }
        }
        self.in_flight = self.in_flight.saturating_add(1);
    }

    fn release(&mut self, aid: AgentId) {
        if let Some(a) = self.agents.get_mut(&aid) {
            a.in_flight = a.in_flight.saturating_sub(1);
            if let Some(ns) = self.namespaces.get_mut(&a.ns) {
                ns.in_flight = ns.in_flight.saturating_sub(1);
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Takes a run out of every structure (freeing its capacity if in flight), keeping its agent.
    fn detach(&mut self, key: &RunKey) -> Option<(Slot, AgentId)> {
        let id = self.ids.remove(key)?;
        let e = self.entries.remove(&id)?;
        let aid = e.agent;
        match e.slot {
            Slot::Queued(order) => {
                if let Some(a) = self.agents.get_mut(&aid) {
                    a.queue.remove(&(order, id));
                }
            }
            Slot::Delayed(order, t) => {
                self.delayed.remove(&(t, order, id));
                if let Some(a) = self.agents.get_mut(&aid) {
                    a.delayed = a.delayed.saturating_sub(1);
                }
            }
            Slot::InFlight => self.release(aid),
        }
        self.refresh(aid);
        Some((e.slot, aid))
    }

    fn detach_and_gc(&mut self, key: &RunKey) {
        if let Some((_, aid)) = self.detach(key) {
            self.gc(aid);
        }
    }

    /// Drops an agent with no runs (and its namespace once it has no agents).
    fn gc(&mut self, aid: AgentId) {
        let idle = self.agents.get(&aid).is_some_and(|a| a.in_flight == 0 && a.delayed == 0 && a.queue.is_empty());
        if !idle {
            return;
        }
        let Some(a) = self.agents.remove(&aid) else { return };
        debug_assert!(a.indexed.is_none());
        self.agent_ids.remove(&a.key);
        let drop_ns = match self.namespaces.get_mut(&a.ns) {
            Some(ns) => {
                ns.agents -= 1;
                ns.agents == 0
            }
            None => false,
        };
        if drop_ns && let Some(ns) = self.namespaces.remove(&a.ns) {
            debug_assert!(ns.indexed.is_none() && ns.ready.is_empty() && ns.in_flight == 0);
            self.ns_ids.remove(&ns.name);
        }
    }

    /// Re-files the agent's head in its namespace's ready set, and the namespace's head in the
    /// cluster index, after anything about the agent or its namespace changed. `O(log n)`.
    fn refresh(&mut self, aid: AgentId) {
        let Some(a) = self.agents.get_mut(&aid) else { return };
        let cap = a.cap.unwrap_or(self.caps.default_per_agent);
        let want = if a.in_flight < cap { a.queue.first().copied() } else { None };
        let old = std::mem::replace(&mut a.indexed, want);
        let nid = a.ns;
        let Some(ns) = self.namespaces.get_mut(&nid) else { return };
        if old != want {
            if let Some((o, r)) = old {
                ns.ready.remove(&(o, r, aid));
            }
            if let Some((o, r)) = want {
                ns.ready.insert((o, r, aid));
            }
        }
        let want_ns =
            if ns.in_flight < self.caps.per_namespace { ns.ready.first().map(|&(o, r, _)| (o, r)) } else { None };
        let old_ns = std::mem::replace(&mut ns.indexed, want_ns);
        if old_ns != want_ns {
            if let Some((o, r)) = old_ns {
                self.index.remove(&(o, r, nid));
            }
            if let Some((o, r)) = want_ns {
                self.index.insert((o, r, nid));
            }
        }
    }

    /// Moves delayed runs whose time has come into their agents' queues.
    fn promote(&mut self, now: DateTime<Utc>) {
        while let Some(&(t, order, id)) = self.delayed.first() {
            if t > now {
                break;
            }
            self.delayed.pop_first();
            let Some(e) = self.entries.get_mut(&id) else { continue };
            e.slot = Slot::Queued(order);
            let aid = e.agent;
            if let Some(a) = self.agents.get_mut(&aid) {
                a.delayed = a.delayed.saturating_sub(1);
                a.queue.insert((order, id));
            }
            self.fresh.push(id);
            self.refresh(aid);
        }
    }

    fn blocked_agent(&self, aid: AgentId) -> Option<Blocked> {
        let a = self.agents.get(&aid)?;
        let cap = a.cap.unwrap_or(self.caps.default_per_agent);
        if a.in_flight >= cap {
            return Some(Blocked {
                cap: CapKind::Agent,
                in_flight: a.in_flight,
                limit: cap,
                message: format!("agent {} has {} of {} runs in flight (maxInFlight)", a.key, a.in_flight, cap),
            });
        }
        let ns = self.namespaces.get(&a.ns)?;
        if ns.in_flight >= self.caps.per_namespace {
            return Some(Blocked {
                cap: CapKind::Namespace,
                in_flight: ns.in_flight,
                limit: self.caps.per_namespace,
                message: format!(
                    "namespace {} has {} of {} runs in flight",
                    ns.name, ns.in_flight, self.caps.per_namespace
                ),
            });
        }
        if self.in_flight >= self.caps.cluster {
            return Some(Blocked {
                cap: CapKind::Cluster,
                in_flight: self.in_flight,
                limit: self.caps.cluster,
                message: format!("cluster has {} of {} runs in flight", self.in_flight, self.caps.cluster),
            });
        }
        None
    }
}
