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
//! * each Agent keeps its queued (eligible) runs in a `RunQueue` ordered by [`OrderKey`]: its
//!   *head* is its oldest run;
//! * each namespace keeps a `BTreeSet` of the heads of its agents that are *below their cap*;
//! * the cluster keeps a `BTreeSet` of the oldest such head of every namespace that is *below its
//!   cap*.
//!
//! So the first entry of the cluster index is always the oldest run that may start now. Starting
//! it changes one agent's head and one namespace's head: a constant number of `O(log n)` updates.
//! An agent or a namespace at its cap is simply absent from the index above it (its heads are
//! parked) and comes back when one of its runs finishes. A cluster at cap ends a dispatch at once.
//! Runs waiting for a retry (`not_before`) sit in a separate time-ordered map and join their
//! agent's queue, at their creation position, once `now >= not_before`.
//!
//! # Memory touched by a dispatch
//!
//! With a long backlog the run a dispatch starts was enqueued long ago, and whatever was written
//! about it then is no longer in any CPU cache. So starting a run reads only the head slot of its
//! agent's queue (a ring buffer whose front is next to the slot the agent's previous start read)
//! and the small per-agent and per-namespace state; it does not look the run up in the map of all
//! runs: its key is moved out of the queue slot, and it counts as in flight because its id is in
//! the (small) `dispatched` set. Starting a run with 100,000 waiting costs about 1.2× what it
//! costs with 100 waiting (2.5–2.8× before this layout; `docs/scheduler.md`, "Measured cost").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
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
type IdSet = HashSet<u64, std::hash::BuildHasherDefault<IdHasher>>;

/// A run's place in its agent's queue.
type QueueKey = (OrderKey, RunId);

/// An Agent's eligible runs, oldest first, each with its own copy of the run's key: the one
/// [`Scheduler::dispatch`] moves into its answer (the other copy keys `Scheduler::runs`).
///
/// Runs normally arrive youngest (a new run) and leave oldest (dispatched), so most of them live
/// in a ring buffer, `main`, touched only at its two ends: starting a run reads the front slot,
/// next to the one the previous start of this agent read, instead of walking and rebalancing
/// B-tree nodes last written when the run was enqueued — with a long queue that memory is no
/// longer in any cache. A run that arrives older than `main`'s youngest (a retry rejoining at its
/// creation position, a run created before one already queued) goes to the ordered `side` map; the
/// head is the older of the two heads. A run removed from the middle of `main` leaves a hole (its
/// key stays, so `main` stays sorted for binary search); holes at either end are dropped at once,
/// and `main` is compacted when holes outnumber runs, so each operation is `O(log n)` amortised.
#[derive(Debug, Default)]
struct RunQueue {
    main: VecDeque<(QueueKey, Option<RunKey>)>,
    side: BTreeMap<QueueKey, RunKey>,
    /// `None` slots in `main` (never at either end).
    holes: usize,
}

impl RunQueue {
    fn is_empty(&self) -> bool {
        self.main.is_empty() && self.side.is_empty()
    }

    fn first_key(&self) -> Option<QueueKey> {
        let m = self.main.front().map(|&(k, _)| k);
        let s = self.side.first_key_value().map(|(&k, _)| k);
        match (m, s) {
            (Some(m), Some(s)) => Some(m.min(s)),
            (m, s) => m.or(s),
        }
    }

    fn insert(&mut self, k: QueueKey, key: RunKey) {
        if self.main.back().is_none_or(|&(youngest, _)| youngest < k) {
            self.main.push_back((k, Some(key)));
        } else {
            self.side.insert(k, key);
        }
    }

    fn pop_first(&mut self) -> Option<(QueueKey, RunKey)> {
        let m = self.main.front().map(|&(k, _)| k);
        let from_main = match (m, self.side.first_key_value()) {
            (Some(m), Some((&s, _))) => m < s,
            (m, _) => m.is_some(),
        };
        if !from_main {
            return self.side.pop_first();
        }
        let (k, key) = self.main.pop_front()?;
        self.trim();
        if self.main.capacity() > 64 && self.main.len() < self.main.capacity() / 4 {
            self.main.shrink_to(self.main.len() * 2);
        }
        key.map(|key| (k, key))
    }

    fn position(&self, k: &QueueKey) -> Option<usize> {
        // The run looked up most is the youngest (just enqueued): check the ends first.
        match (self.main.front(), self.main.back()) {
            (Some((f, _)), _) if f == k => Some(0),
            (_, Some((b, _))) if b == k => Some(self.main.len() - 1),
            _ => self.main.binary_search_by(|(x, _)| x.cmp(k)).ok(),
        }
    }

    fn get(&self, k: &QueueKey) -> Option<&RunKey> {
        match self.position(k) {
            Some(i) => self.main.get(i).and_then(|(_, key)| key.as_ref()),
            None => self.side.get(k),
        }
    }

    fn remove(&mut self, k: &QueueKey) -> Option<RunKey> {
        let Some(i) = self.position(k) else { return self.side.remove(k) };
        let key = self.main.get_mut(i).and_then(|(_, key)| key.take())?;
        self.holes += 1;
        self.trim();
        if self.holes > 32 && self.holes * 2 > self.main.len() {
            self.main.retain(|(_, key)| key.is_some());
            self.holes = 0;
        }
        Some(key)
    }

    /// Drops holes at both ends of `main`.
    fn trim(&mut self) {
        while self.main.front().is_some_and(|(_, key)| key.is_none()) {
            self.main.pop_front();
            self.holes -= 1;
        }
        while self.main.back().is_some_and(|(_, key)| key.is_none()) {
            self.main.pop_back();
            self.holes -= 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Eligible: queued in its agent's queue under `(order, id)` — or, once a dispatch has taken
    /// it out of that queue and put its id in `Scheduler::dispatched`, in flight. A dispatch does
    /// not touch the entry (with a long queue, memory last used when the run was enqueued).
    Pending(OrderKey),
    /// Waiting for its retry time; in `Scheduler::delayed` under `(not_before, order, id)`.
    Delayed(OrderKey, DateTime<Utc>),
    /// Registered with [`Scheduler::running`]: in flight, never queued here.
    Running,
}

#[derive(Debug)]
struct Entry {
    /// Unique for the life of the scheduler: a run that is requeued gets a new one.
    id: RunId,
    agent: AgentId,
    slot: Slot,
}

/// A run that became eligible, kept for [`Scheduler::newly_blocked`].
#[derive(Debug, Clone, Copy)]
struct Fresh {
    agent: AgentId,
    order: OrderKey,
    id: RunId,
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
    queue: RunQueue,
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
    /// Every run the scheduler tracks.
    runs: HashMap<RunKey, Entry>,
    /// Ids of the runs a dispatch started (their entries stay `Pending`) that have not finished.
    dispatched: IdSet,
    agent_ids: HashMap<AgentKey, AgentId>,
    agents: IdMap<AgentState>,
    ns_ids: HashMap<String, NsId>,
    namespaces: IdMap<NsState>,
    /// Oldest startable head of every namespace below its cap.
    index: BTreeSet<(OrderKey, RunId, NsId)>,
    /// Runs waiting for their retry time, with their agent and key (moved to the agent's queue
    /// when the time comes).
    delayed: BTreeMap<(DateTime<Utc>, OrderKey, RunId), (AgentId, RunKey)>,
    in_flight: u32,
    /// Runs that became eligible since the last dispatch.
    fresh: Vec<Fresh>,
    /// `fresh` as it was at the last dispatch.
    candidates: Vec<Fresh>,
}

impl Scheduler {
    pub fn new(caps: Caps) -> Self {
        Scheduler {
            caps,
            next_id: 0,
            runs: HashMap::new(),
            dispatched: IdSet::default(),
            agent_ids: HashMap::new(),
            agents: IdMap::default(),
            ns_ids: HashMap::new(),
            namespaces: IdMap::default(),
            index: BTreeSet::new(),
            delayed: BTreeMap::new(),
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
        let id = self.alloc_id();
        self.runs.insert(run.key, Entry { id, agent: aid, slot: Slot::Running });
        self.hold(aid);
        self.refresh(aid);
        Ok(())
    }

    /// Forgets a queued or delayed run (cancelled or deleted while pending). Returns whether it was
    /// pending; an in-flight run is left alone (cancel it, then call [`finished`](Self::finished)).
    pub fn remove(&mut self, key: &RunKey) -> bool {
        match self.state(key) {
            Some(RunState::Queued | RunState::Delayed { .. }) => {
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
        match self.state(key) {
            Some(RunState::InFlight) => {
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
            Some((was, aid)) => {
                self.gc(aid);
                was == RunState::InFlight
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
            // The indexed head is the agent's oldest queued run. Its entry in `runs` is not read
            // (with a long queue that memory is cold): taking it out of the queue and recording
            // its id in `dispatched` makes it in flight, and its key is moved out, not copied.
            let Some(a) = self.agents.get_mut(&aid) else {
                debug_assert!(false, "indexed agent is unknown");
                break;
            };
            if a.queue.first_key() != Some((order, id)) {
                debug_assert!(false, "indexed head is not the agent's oldest queued run");
                break;
            }
            let Some((_, key)) = a.queue.pop_first() else { break };
            let agent = a.key.clone();
            self.dispatched.insert(id);
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
        // Ids are never reused (a requeued run gets a new one), so each appears once; runs since
        // removed, started or requeued are no longer in their agent's queue under that id.
        for c in &self.candidates {
            if self.dispatched.contains(&c.id) {
                continue;
            }
            let Some(key) = self.agents.get(&c.agent).and_then(|a| a.queue.get(&(c.order, c.id))) else { continue };
            if let Some(b) = self.blocked_agent(c.agent) {
                out.push((key.clone(), b));
            }
        }
        out
    }

    /// Why a queued run does not start now: the first full cap in the order Agent, namespace,
    /// cluster. `None` for a run that is not queued (unknown, delayed, in flight), or that is
    /// eligible and will start at the next dispatch. `O(1)`.
    pub fn blocked_reason(&self, key: &RunKey) -> Option<Blocked> {
        let e = self.runs.get(key)?;
        match e.slot {
            Slot::Pending(_) if !self.dispatched.contains(&e.id) => self.blocked_agent(e.agent),
            _ => None,
        }
    }

    pub fn state(&self, key: &RunKey) -> Option<RunState> {
        let e = self.runs.get(key)?;
        Some(match e.slot {
            Slot::Pending(_) if !self.dispatched.contains(&e.id) => RunState::Queued,
            Slot::Pending(_) | Slot::Running => RunState::InFlight,
            Slot::Delayed(_, not_before) => RunState::Delayed { not_before },
        })
    }

    /// The earliest retry time among delayed runs: when to call [`dispatch`](Self::dispatch) next
    /// if nothing else happens.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.delayed.first_key_value().map(|(&(t, _, _), _)| t)
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
            queued: self.runs.len().saturating_sub(delayed + in_flight),
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
            AgentState { key, ns: nid, cap, in_flight: 0, delayed: 0, queue: RunQueue::default(), indexed: None },
        );
        aid
    }

    /// Adds a run known not to be tracked, as queued or delayed.
    fn insert_pending(&mut self, run: QueuedRun) {
        let aid = self.agent_for(&run.key.namespace, &run.agent, run.max_in_flight);
        let id = self.alloc_id();
        match run.not_before {
            Some(t) => {
                self.runs.insert(run.key.clone(), Entry { id, agent: aid, slot: Slot::Delayed(run.order, t) });
                self.delayed.insert((t, run.order, id), (aid, run.key));
                if let Some(a) = self.agents.get_mut(&aid) {
                    a.delayed += 1;
                }
            }
            None => {
                self.runs.insert(run.key.clone(), Entry { id, agent: aid, slot: Slot::Pending(run.order) });
                if let Some(a) = self.agents.get_mut(&aid) {
                    a.queue.insert((run.order, id), run.key);
                }
                self.fresh.push(Fresh { agent: aid, order: run.order, id });
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
    /// Returns where the run was, and its agent.
    fn detach(&mut self, key: &RunKey) -> Option<(RunState, AgentId)> {
        let e = self.runs.remove(key)?;
        let (id, aid) = (e.id, e.agent);
        let was = match e.slot {
            Slot::Pending(order) => {
                if self.dispatched.remove(&id) {
                    self.release(aid);
                    RunState::InFlight
                } else {
                    if let Some(a) = self.agents.get_mut(&aid) {
                        a.queue.remove(&(order, id));
                    }
                    RunState::Queued
                }
            }
            Slot::Delayed(order, t) => {
                self.delayed.remove(&(t, order, id));
                if let Some(a) = self.agents.get_mut(&aid) {
                    a.delayed = a.delayed.saturating_sub(1);
                }
                RunState::Delayed { not_before: t }
            }
            Slot::Running => {
                self.release(aid);
                RunState::InFlight
            }
        };
        self.refresh(aid);
        Some((was, aid))
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
        let want = if a.in_flight < cap { a.queue.first_key() } else { None };
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
        while self.delayed.first_key_value().is_some_and(|(&(t, _, _), _)| t <= now) {
            let Some(((_, order, id), (aid, key))) = self.delayed.pop_first() else { break };
            if let Some(e) = self.runs.get_mut(&key) {
                e.slot = Slot::Pending(order);
            }
            if let Some(a) = self.agents.get_mut(&aid) {
                a.delayed = a.delayed.saturating_sub(1);
                a.queue.insert((order, id), key);
            }
            self.fresh.push(Fresh { agent: aid, order, id });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn k(seq: u64) -> QueueKey {
        (OrderKey::from_seq(seq), seq)
    }

    fn rk(seq: u64) -> RunKey {
        RunKey::new("ns", format!("r{seq}"))
    }

    /// Pops everything, checking that it comes out oldest first with the right keys.
    fn drain(q: &mut RunQueue) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some((key, run)) = q.pop_first() {
            assert_eq!(run, rk(key.1));
            out.push(key.1);
        }
        assert!(q.is_empty());
        out
    }

    #[test]
    fn run_queue_keeps_order_when_runs_arrive_out_of_order() {
        let mut q = RunQueue::default();
        for s in [10, 20, 30, 5, 25, 40, 1] {
            q.insert(k(s), rk(s));
        }
        // 5, 25 and 1 arrived older than the youngest run: they wait in `side`.
        assert_eq!(q.side.len(), 3);
        assert_eq!(q.first_key(), Some(k(1)));
        assert_eq!(q.get(&k(25)), Some(&rk(25)));
        assert_eq!(drain(&mut q), vec![1, 5, 10, 20, 25, 30, 40]);
    }

    #[test]
    fn run_queue_removes_from_the_middle_and_the_ends() {
        let mut q = RunQueue::default();
        for s in 0..10 {
            q.insert(k(s), rk(s));
        }
        assert_eq!(q.remove(&k(4)), Some(rk(4)));
        assert_eq!(q.holes, 1);
        assert_eq!(q.get(&k(4)), None);
        assert_eq!(q.remove(&k(4)), None, "removing twice");
        assert_eq!(q.remove(&k(0)), Some(rk(0)));
        assert_eq!(q.remove(&k(9)), Some(rk(9)));
        assert_eq!(q.first_key(), Some(k(1)));
        // Holes never stay at an end: popping up to the hole drops it.
        assert_eq!(q.pop_first().map(|(key, _)| key), Some(k(1)));
        assert_eq!(q.pop_first().map(|(key, _)| key), Some(k(2)));
        assert_eq!(q.pop_first().map(|(key, _)| key), Some(k(3)));
        assert_eq!(q.holes, 0);
        assert_eq!(q.first_key(), Some(k(5)));
        assert_eq!(drain(&mut q), vec![5, 6, 7, 8]);
    }

    #[test]
    fn run_queue_compacts_when_holes_outnumber_runs() {
        let mut q = RunQueue::default();
        for s in 0..1000 {
            q.insert(k(s), rk(s));
        }
        // Remove every run but the first, the last and every tenth, from the middle.
        for s in 1..999 {
            if s % 10 != 0 {
                assert_eq!(q.remove(&k(s)), Some(rk(s)));
                assert!(q.holes * 2 <= q.main.len().max(64), "holes {} of {}", q.holes, q.main.len());
            }
        }
        let left: Vec<u64> = std::iter::once(0).chain((10..999).step_by(10)).chain([999]).collect();
        for &s in &left {
            assert_eq!(q.get(&k(s)), Some(&rk(s)));
        }
        assert_eq!(drain(&mut q), left);
    }

    #[test]
    fn dispatch_leaves_the_entry_alone_but_the_run_is_in_flight() {
        let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 10, default_per_agent: 1 });
        let a = RunKey::new("ns", "a");
        let b = RunKey::new("ns", "b");
        s.enqueue(QueuedRun::new(a.clone(), "x", OrderKey::from_seq(1))).unwrap();
        s.enqueue(QueuedRun::new(b.clone(), "x", OrderKey::from_seq(2))).unwrap();
        let now = Utc::now();
        assert_eq!(s.dispatch(now).len(), 1);
        assert_eq!(s.state(&a), Some(RunState::InFlight));
        assert_eq!(s.state(&b), Some(RunState::Queued));
        assert!(s.blocked_reason(&a).is_none());
        assert!(!s.remove(&a), "an in-flight run is not removed");
        assert!(matches!(
            s.enqueue(QueuedRun::new(a.clone(), "x", OrderKey::from_seq(1))),
            Err(Error::DuplicateRun { state: "in flight", .. })
        ));
        // Requeued while in flight: frees the slot, and the run waits again (after b, by order 3).
        assert!(s.requeue_at(QueuedRun::new(a.clone(), "x", OrderKey::from_seq(3)), now));
        assert!(s.dispatched.is_empty());
        assert_eq!(s.dispatch(now)[0].key, b);
        assert!(s.finished(&b));
        assert_eq!(s.dispatch(now)[0].key, a);
        assert!(s.finished(&a));
        assert!(!s.finished(&a));
        assert_eq!(s.counts(), SchedulerCounts::default());
    }
}
