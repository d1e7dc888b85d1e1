//! The run controller: the effects around the pure [`Scheduler`].
//!
//! One controller leads at a time: it holds the store's `controller` lease and writes every
//! status change with [`Store::update_fenced`], so a paused or partitioned former leader cannot
//! write. On taking the lease it rebuilds the scheduler from the store; then it follows the
//! store's watch, starts dispatched runs (in tasks, so a slow start does not hold the others),
//! follows running attempts (exit notifications from the runtime, and a periodic poll),
//! enforces deadlines and cancels, retries with backoff, runs workflow steps in order, and
//! records each transition with its ledger entry in the same transaction. The design is in
//! `docs/scheduler.md`.

mod resolve;
mod write;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_api::{AgentRun, AgentSpec, Kind, RunPhase};
use agentplane_runtime::{
    ErrorKind, LocalAdapter, LocalConfig, RuntimeAdapter, RuntimeRef, RuntimeStatus, StatusReason,
};
use agentplane_store::{
    EventType, Lease, ListQuery, ObjectKey, Revision, Store, StoreError, WatchEvent, WatchQuery, WatchStream,
    revision_of,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::{BackoffPolicy, Caps, OrderKey, QueuedRun, RunKey, RunState, RunningRun, Scheduler};

pub use self::write::IN_PROGRESS_CONDITION;
use self::write::{Ended, Writer};

/// The ledger actor of every entry the controller writes (`system:controller`).
pub const CONTROLLER_ACTOR: &str = "controller";
/// The name of the controller's leader lease in the store.
pub const LEASE_NAME: &str = "controller";
/// Page size when listing every AgentRun.
const LIST_PAGE: usize = 1_000;

/// Mints the run-scoped token handed to an attempt's agent (`AGENTPLANE_TOKEN`) from the run's
/// namespace, name, uid and attempt. The server supplies it (it owns the key).
#[derive(Clone)]
pub struct RunTokenMinter(pub Arc<MintFn>);

/// `(namespace, name, uid, attempt) -> token`.
pub type MintFn = dyn Fn(&str, &str, &str, u32) -> String + Send + Sync;

impl std::fmt::Debug for RunTokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunTokenMinter")
    }
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Where the local adapter keeps run folders (`<base_dir>/runs/<ns>/<name>/`).
    pub base_dir: PathBuf,
    pub caps: Caps,
    pub backoff: BackoffPolicy,
    /// How often running attempts are polled, deadlines checked and delayed retries released.
    pub tick: Duration,
    /// Seed of the jitter RNG; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// Who this controller is in the lease (stable across restarts of the same node, so a
    /// restarted node takes its lease back at once).
    pub holder: String,
    /// How long the lease lasts without renewal; it is renewed every third of that.
    pub lease_ttl: Duration,
    /// Between SIGTERM and SIGKILL when a run is cancelled or times out.
    pub grace: Duration,
    /// Folder of secret files (`<dir>/<name>` or `<dir>/<name>/<key>`).
    pub secrets_dir: Option<PathBuf>,
    /// A running attempt whose runtime cannot be asked for its status this long is `Lost`.
    pub stuck_after: Duration,
    /// How often a custom runtime is asked for the status of each of its attempts.
    pub custom_poll: Duration,
    /// Mints each attempt's run-scoped token; none when absent.
    pub run_tokens: Option<RunTokenMinter>,
    /// How the local runtime confines agents (docs/sandbox.md); none: unconfined.
    pub sandbox: Option<agentplane_runtime::SandboxSettings>,
    /// Limits of a run whose Agent does not set them (`[sandbox.defaults]`).
    pub limit_defaults: agentplane_api::AgentLimits,
    /// Limits no Agent may exceed (`[sandbox.maximums]`); a run of an Agent above them fails
    /// with `LimitExceedsMaximum` (admission refuses such Agents, but maximums may be lowered later).
    pub limit_maximums: agentplane_api::AgentLimits,
}

impl ControllerConfig {
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        ControllerConfig {
            base_dir: base_dir.into(),
            caps: Caps::default(),
            backoff: BackoffPolicy::default(),
            tick: Duration::from_millis(100),
            seed: None,
            holder: format!("controller-{}", std::process::id()),
            lease_ttl: Duration::from_secs(15),
            grace: Duration::from_secs(10),
            secrets_dir: None,
            stuck_after: Duration::from_secs(120),
            custom_poll: Duration::from_secs(1),
            run_tokens: None,
            sandbox: None,
            limit_defaults: agentplane_api::AgentLimits::default(),
            limit_maximums: agentplane_api::AgentLimits::default(),
        }
    }
}

/// Errors of the controller (each is logged; the loop resynchronises and carries on).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("AgentRun {key} cannot be decoded: {message}")]
    Decode { key: String, message: String },
    #[error("status of {key} could not be written: too many conflicting writes")]
    TooManyConflicts { key: String },
}

impl ControllerError {
    fn is_fenced(&self) -> bool {
        matches!(self, ControllerError::Store(StoreError::Fenced { .. }))
    }
}

/// SplitMix64: a small, seedable RNG for retry jitter (not for anything secret).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn sample(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let v = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        v
    }
}

/// Which adapter runs an attempt.
#[derive(Clone)]
pub(crate) enum Adapter {
    Local(Arc<LocalAdapter>),
    Custom(Arc<agentplane_runtime::CustomAdapter>),
}

impl Adapter {
    fn get(&self) -> &dyn RuntimeAdapter {
        match self {
            Adapter::Local(a) => a.as_ref(),
            Adapter::Custom(a) => a.as_ref(),
        }
    }
    fn is_local(&self) -> bool {
        matches!(self, Adapter::Local(_))
    }
}

/// What the start tasks and the loop share.
pub(crate) struct Ctx {
    pub store: Arc<dyn Store>,
    pub cfg: ControllerConfig,
    pub local: Arc<LocalAdapter>,
    customs: std::sync::Mutex<HashMap<String, Arc<agentplane_runtime::CustomAdapter>>>,
}

impl Ctx {
    /// The adapter of a run (`spec.runtime.type`; `custom` needs `spec.runtime.config.url`).
    pub(crate) fn adapter_for(&self, run: &AgentRun) -> Result<Adapter, String> {
        use agentplane_api::RuntimeType;
        let Some(rt) = &run.spec.runtime else { return Ok(Adapter::Local(self.local.clone())) };
        match rt.type_ {
            RuntimeType::Local => Ok(Adapter::Local(self.local.clone())),
            RuntimeType::Custom => {
                let url = rt.config.get("url").and_then(serde_json::Value::as_str).ok_or_else(|| {
                    "spec.runtime.config.url is required for runtime type custom (the runner's base URL)".to_string()
                })?;
                let mut customs = self.customs.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(a) = customs.get(url) {
                    return Ok(Adapter::Custom(a.clone()));
                }
                let a = Arc::new(
                    agentplane_runtime::CustomAdapter::new(url)
                        .map_err(|e| format!("spec.runtime.config.url {url:?}: {e}"))?,
                );
                customs.insert(url.to_string(), a.clone());
                Ok(Adapter::Custom(a))
            }
            RuntimeType::Job => {
                Err("runtime type job (Kubernetes Jobs) is not available in this build; use local or custom".into())
            }
        }
    }
}

/// An attempt the controller started (or found running) and follows.
#[derive(Clone)]
struct Tracked {
    agent: String,
    /// `None` when a `Running` run was found without a ref: it is treated as lost.
    runtime_ref: Option<RuntimeRef>,
    adapter: Option<Adapter>,
    order: OrderKey,
    /// When the controller stops the attempt as timed out (`startedAt + timeoutSeconds` plus a
    /// margin: the local adapter enforces the exact deadline itself).
    deadline: Option<DateTime<Utc>>,
    cancel_sent: bool,
    timed_out: bool,
    /// Since when the runtime could not answer a status call.
    failing_since: Option<Instant>,
    last_polled: Option<Instant>,
    /// Its end is being recorded.
    ending: bool,
}

impl Tracked {
    fn new(
        agent: String,
        runtime_ref: Option<RuntimeRef>,
        adapter: Option<Adapter>,
        order: OrderKey,
        deadline: Option<DateTime<Utc>>,
    ) -> Self {
        Tracked {
            agent,
            runtime_ref,
            adapter,
            order,
            deadline,
            cancel_sent: false,
            timed_out: false,
            failing_since: None,
            last_polled: None,
            ending: false,
        }
    }
}

/// What a start task reports back to the loop.
pub(crate) enum StartOutcome {
    /// The attempt runs and `Running` is recorded.
    Started { key: RunKey, runtime_ref: RuntimeRef, adapter: Adapter, deadline: Option<DateTime<Utc>> },
    /// The run ended without starting (failed, cancelled) — recorded.
    Ended { key: RunKey },
    /// The run is not startable any more (deleted, not pending): forget it.
    Skipped { key: RunKey },
    /// Try again at `at` (a transient error; `submit_failed`: the runtime refused it).
    Requeue { key: RunKey, at: DateTime<Utc>, submit_failed: bool },
    /// The lease was lost while starting.
    Fenced { key: RunKey },
    /// The end of an attempt was recorded (`Err(true)`: fenced; `Err(false)`: not recorded, try
    /// again).
    AttemptEnded { key: RunKey, result: Result<Ended, bool> },
}

/// The controller's state. Build it with [`Controller::new`] and drive it with [`Controller::run`].
pub struct Controller {
    ctx: Arc<Ctx>,
    scheduler: Scheduler,
    tracked: HashMap<RunKey, Tracked>,
    /// Agent and order of queued runs (needed to requeue a run whose start failed).
    orders: HashMap<RunKey, (String, OrderKey)>,
    /// Runs whose start task is in flight.
    starting: HashSet<RunKey>,
    /// Retryable submit failures in a row, per run (cleared when it starts or ends).
    submit_failures: HashMap<RunKey, u32>,
    agent_caps: HashMap<(String, String), (Option<u32>, Instant)>,
    rng: Rng,
    lease: Option<Lease>,
    outcomes_tx: mpsc::UnboundedSender<StartOutcome>,
    outcomes_rx: mpsc::UnboundedReceiver<StartOutcome>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("holder", &self.ctx.cfg.holder)
            .field("tracked", &self.tracked.len())
            .field("leading", &self.lease.is_some())
            .finish_non_exhaustive()
    }
}

fn run_key_of(run: &AgentRun) -> RunKey {
    RunKey::new(run.metadata.namespace_or_default(), run.metadata.name.clone())
}

fn order_of(run: &AgentRun, obj: &serde_json::Value) -> OrderKey {
    OrderKey::new(run.metadata.creation_timestamp.unwrap_or(DateTime::<Utc>::UNIX_EPOCH), revision_of(obj).unwrap_or(0))
}

/// The condition a run waiting for a human approval carries (`True` while it waits).
pub const AWAITING_APPROVAL_CONDITION: &str = "AwaitingApproval";

/// Whether a pending run waits for an approval before it may be scheduled.
pub fn awaiting_approval(status: &agentplane_api::AgentRunStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == AWAITING_APPROVAL_CONDITION && c.status == agentplane_api::condition::ConditionStatus::True)
}

pub(crate) fn decode(obj: &serde_json::Value) -> Result<AgentRun, ControllerError> {
    serde_json::from_value(obj.clone()).map_err(|e| ControllerError::Decode {
        key: ObjectKey::of(obj).map(|k| k.to_string()).unwrap_or_else(|_| "?".into()),
        message: e.to_string(),
    })
}

/// How much later than the runtime's own deadline the controller stops a timed-out attempt.
const DEADLINE_MARGIN: chrono::Duration = chrono::Duration::seconds(2);

pub(crate) fn deadline_of(run: &AgentRun, started: DateTime<Utc>, grace: Duration) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(run.spec.timeout_seconds?).ok()?;
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    started.checked_add_signed(chrono::Duration::seconds(secs) + grace + DEADLINE_MARGIN)
}

/// Resolves once `shutdown` is `true` (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, cfg: ControllerConfig) -> Self {
        let seed = cfg.seed.unwrap_or_else(|| {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            #[allow(clippy::cast_sign_loss)]
            let n = nanos as u64;
            n ^ u64::from(std::process::id()).rotate_left(32)
        });
        let local = LocalAdapter::with_config(
            cfg.base_dir.clone(),
            LocalConfig { grace_period: cfg.grace, sandbox: cfg.sandbox.clone(), ..LocalConfig::default() },
        );
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        Controller {
            scheduler: Scheduler::new(cfg.caps),
            ctx: Arc::new(Ctx { store, local: Arc::new(local), customs: std::sync::Mutex::new(HashMap::new()), cfg }),
            tracked: HashMap::new(),
            orders: HashMap::new(),
            starting: HashSet::new(),
            submit_failures: HashMap::new(),
            agent_caps: HashMap::new(),
            rng: Rng(seed),
            lease: None,
            outcomes_tx,
            outcomes_rx,
        }
    }

    /// Runs until `shutdown` turns `true`: waits for the lease, leads while it holds it, and
    /// waits again if it loses it. Running agents are left running at shutdown (the next leader
    /// re-adopts them through their `runtimeRef`); the lease is released so it can start at once.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let cfg = self.ctx.cfg.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.ctx.store.acquire_lease(LEASE_NAME, &cfg.holder, cfg.lease_ttl).await {
                Ok(Some(lease)) => {
                    tracing::info!(holder = %lease.holder, epoch = lease.epoch, "controller: took the leader lease");
                    self.lease = Some(lease);
                    let stop = self.lead(&mut shutdown).await;
                    self.step_down();
                    if stop {
                        return;
                    }
                }
                Ok(None) => tracing::debug!("controller: another controller holds the lease; waiting"),
                Err(StoreError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "controller: cannot ask for the lease; retrying"),
            }
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                () = tokio::time::sleep(cfg.lease_ttl / 3) => {}
            }
        }
    }

    /// Forgets the leader's state (the agents keep running; the next leader re-adopts them).
    fn step_down(&mut self) {
        self.scheduler = Scheduler::new(self.ctx.cfg.caps);
        self.tracked.clear();
        self.orders.clear();
        self.starting.clear();
        self.submit_failures.clear();
        self.lease = None;
    }

    /// Leads until shutdown (`true`; the lease is released) or until the lease is lost (`false`).
    async fn lead(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        loop {
            if *shutdown.borrow() {
                self.release().await;
                return true;
            }
            let stream = match self.resync().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "controller: cannot rebuild state from the store; retrying");
                    tokio::select! {
                        () = stopped(shutdown) => { self.release().await; return true; }
                        () = tokio::time::sleep(Duration::from_secs(1)) => {
                            if !self.renew().await { return false; }
                            continue;
                        }
                    }
                }
            };
            match self.follow(stream, shutdown).await {
                Follow::Shutdown => {
                    self.release().await;
                    return true;
                }
                Follow::LeaseLost => {
                    tracing::warn!("controller: lost the leader lease; stepping down");
                    return false;
                }
                Follow::Resync => {}
            }
        }
    }

    async fn release(&mut self) {
        if let Some(l) = &self.lease
            && let Err(e) = self.ctx.store.release_lease(l).await
        {
            tracing::debug!(error = %e, "controller: cannot release the lease");
        }
    }

    /// Renews the lease; `false` when it is lost (or cannot be renewed before it lapses).
    async fn renew(&mut self) -> bool {
        let Some(l) = self.lease.clone() else { return false };
        match self.ctx.store.renew_lease(&l, self.ctx.cfg.lease_ttl).await {
            Ok(Some(l)) => {
                self.lease = Some(l);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "controller: cannot renew the lease");
                Utc::now() < l.expires_at
            }
        }
    }

    /// Lists every AgentRun and rebuilds the scheduler; returns the watch from the list's revision.
    async fn resync(&mut self) -> Result<WatchStream, ControllerError> {
        let mut items = Vec::new();
        let mut token = None;
        let revision: Revision = loop {
            let mut q = ListQuery::new(Kind::AgentRun).limit(LIST_PAGE);
            q.continue_token = token.take();
            let page = self.ctx.store.list(&q).await?;
            items.extend(page.items);
            match page.continue_token {
                Some(t) => token = Some(t),
                None => break page.revision,
            }
        };
        let mut pending = Vec::new();
        let mut running = Vec::new();
        self.tracked.clear();
        self.orders.clear();
        self.starting.clear();
        self.agent_caps.clear();
        for obj in &items {
            let run = match decode(obj) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "controller: skipping an AgentRun");
                    continue;
                }
            };
            let key = run_key_of(&run);
            let agent = run.spec.agent_ref.name.clone();
            let status = run.status.clone().unwrap_or_default();
            match status.phase.unwrap_or_default() {
                RunPhase::Pending if awaiting_approval(&status) => {}
                RunPhase::Pending => {
                    let cap = self.agent_cap(&key.namespace, &agent).await;
                    let order = order_of(&run, obj);
                    let mut q = QueuedRun::new(key.clone(), agent.clone(), order);
                    q.max_in_flight = cap;
                    q.not_before = status.next_retry_at;
                    self.orders.insert(key, (agent, order));
                    pending.push(q);
                }
                RunPhase::Running => {
                    let cap = self.agent_cap(&key.namespace, &agent).await;
                    let mut r = RunningRun::new(key.clone(), agent.clone());
                    r.max_in_flight = cap;
                    running.push(r);
                    let adapter = self.ctx.adapter_for(&run).ok();
                    let deadline = status.started_at.and_then(|s| deadline_of(&run, s, self.ctx.cfg.grace));
                    let t =
                        Tracked::new(agent, status.runtime_ref.map(RuntimeRef), adapter, order_of(&run, obj), deadline);
                    self.tracked.insert(key, t);
                }
                _ => {}
            }
        }
        pending.sort_by_key(|q| q.order);
        self.scheduler = match Scheduler::rebuild(self.ctx.cfg.caps, running, pending) {
            Ok(s) => s,
            Err(e) => {
                // Only a duplicate key can fail, which a list never returns; start empty rather
                // than crash.
                tracing::error!(error = %e, "controller: rebuilding the scheduler failed");
                Scheduler::new(self.ctx.cfg.caps)
            }
        };
        tracing::info!(
            pending = self.orders.len(),
            running = self.tracked.len(),
            revision,
            "controller: state rebuilt from the store"
        );
        let query = WatchQuery { kind: Some(Kind::AgentRun), ..WatchQuery::all_from(revision) };
        Ok(self.ctx.store.watch(query).await?)
    }

    /// Follows the watch, start outcomes, exit notifications and ticks.
    async fn follow(&mut self, mut stream: WatchStream, shutdown: &mut watch::Receiver<bool>) -> Follow {
        let mut tick = tokio::time::interval(self.ctx.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_every = self.ctx.cfg.lease_ttl / 3;
        let mut last_renew = Instant::now();
        let mut exits = RuntimeAdapter::subscribe(self.ctx.local.as_ref());
        loop {
            // Something happened (or this is the first pass): dispatch before waiting again.
            self.dispatch().await;
            if self.lease.is_none() {
                return Follow::LeaseLost;
            }
            tokio::select! {
                biased;
                () = stopped(shutdown) => return Follow::Shutdown,
                out = self.outcomes_rx.recv() => {
                    let lost = match out {
                        Some(StartOutcome::AttemptEnded { key, result }) => self.on_attempt_ended(key, result).await,
                        Some(out) => self.on_start_outcome(out),
                        None => false,
                    };
                    if lost {
                        return Follow::LeaseLost;
                    }
                }
                r = recv_exit(&mut exits) => {
                    match r {
                        Some(r) => self.poll_ref(&r).await,
                        // Missed some notifications: look at every attempt now.
                        None => self.poll().await,
                    }
                }
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        self.on_event(ev).await;
                        }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "controller: watch failed; rebuilding state");
                        return Follow::Resync;
                    }
                    None => {
                        tracing::warn!("controller: watch ended; rebuilding state");
                        return Follow::Resync;
                    }
                },
                _ = tick.tick() => {
                    if last_renew.elapsed() >= renew_every {
                        if !self.renew().await {
                            return Follow::LeaseLost;
                        }
                        last_renew = Instant::now();
                    }
                    self.poll().await;
                }
            }
        }
    }

    async fn agent_cap(&mut self, namespace: &str, agent: &str) -> Option<u32> {
        let k = (namespace.to_string(), agent.to_string());
        if let Some((cap, at)) = self.agent_caps.get(&k)
            && at.elapsed() < Duration::from_secs(2)
        {
            return *cap;
        }
        let cap = async {
            let obj = self.ctx.store.get(&ObjectKey::new(Kind::Agent, namespace, agent)).await.ok()?;
            let spec: AgentSpec = serde_json::from_value(obj.get("spec")?.clone()).ok()?;
            spec.max_in_flight
        }
        .await;
        self.agent_caps.insert(k, (cap, Instant::now()));
        cap
    }

    async fn on_event(&mut self, ev: WatchEvent) {
        let Ok(run) = decode(&ev.object) else { return };
        let key = run_key_of(&run);
        if ev.type_ == EventType::Deleted {
            self.scheduler.remove(&key);
            self.orders.remove(&key);
            if let Some(t) = self.tracked.remove(&key) {
                if let (Some(r), Some(a)) = (&t.runtime_ref, &t.adapter)
                    && let Err(e) = a.get().cancel(r).await
                {
                    tracing::warn!(run = %key, error = %e, "controller: cannot cancel a deleted run");
                }
                self.scheduler.finished(&key);
            }
            return;
        }
        let status = run.status.clone().unwrap_or_default();
        match status.phase.unwrap_or_default() {
            // Not startable until a human approves (the approval handler clears the condition).
            RunPhase::Pending if awaiting_approval(&status) => {}
            RunPhase::Pending => {
                // Only runs the scheduler does not know yet; our own writes come back here too.
                if self.scheduler.state(&key).is_none()
                    && !self.tracked.contains_key(&key)
                    && !self.starting.contains(&key)
                {
                    let agent = run.spec.agent_ref.name.clone();
                    let order = order_of(&run, &ev.object);
                    let mut q = QueuedRun::new(key.clone(), agent.clone(), order);
                    q.max_in_flight = self.agent_cap(&key.namespace, &agent).await;
                    q.not_before = status.next_retry_at;
                    if self.scheduler.enqueue(q).is_ok() {
                        self.orders.insert(key, (agent, order));
                    }
                }
            }
            RunPhase::Running => {
                if status.cancel_requested_at.is_some()
                    && let Some(t) = self.tracked.get_mut(&key)
                    && !t.cancel_sent
                {
                    t.cancel_sent = true;
                    if let (Some(r), Some(a)) = (t.runtime_ref.clone(), t.adapter.clone()) {
                        tracing::info!(run = %key, "controller: cancelling on request");
                        if let Err(e) = a.get().cancel(&r).await {
                            tracing::warn!(run = %key, error = %e, "controller: cancel failed; will retry");
                            if let Some(t) = self.tracked.get_mut(&key) {
                                t.cancel_sent = false;
                            }
                        }
                    }
                }
            }
            _ => {
                // Ended elsewhere (for example a pending run cancelled through the API).
                if matches!(self.scheduler.state(&key), Some(RunState::Queued | RunState::Delayed { .. })) {
                    self.scheduler.remove(&key);
                    self.orders.remove(&key);
                }
            }
        }
    }

    /// Starts what the scheduler allows (in tasks), and records `Blocked` on the runs a cap newly
    /// holds back.
    async fn dispatch(&mut self) {
        let Some(lease) = self.lease.clone() else { return };
        let now = Utc::now();
        let started = self.scheduler.dispatch(now);
        let blocked = self.scheduler.newly_blocked();
        for d in started {
            // `orders` keeps the run's agent and order until the start task reports back.
            self.orders.insert(d.key.clone(), (d.agent.name.clone(), d.order));
            self.starting.insert(d.key.clone());
            let (ctx, tx, lease) = (self.ctx.clone(), self.outcomes_tx.clone(), lease.clone());
            let failures = self.submit_failures.get(&d.key).copied().unwrap_or(0);
            tokio::spawn(async move {
                let out = resolve::start(&ctx, &lease, d.key, &d.agent.name, failures).await;
                let _ = tx.send(out);
            });
        }
        if !blocked.is_empty() {
            // Written in a task: a burst of submissions blocks many runs at once, and the loop
            // must keep dispatching meanwhile.
            let (ctx, tx) = (self.ctx.clone(), self.outcomes_tx.clone());
            tokio::spawn(async move {
                let w = Writer { store: ctx.store.as_ref(), lease: &lease };
                for (key, b) in blocked {
                    if let Err(e) = w.blocked(&key, &b, now).await {
                        if e.is_fenced() {
                            let _ = tx.send(StartOutcome::Fenced { key });
                            return;
                        }
                        tracing::warn!(run = %key, error = %e, "controller: cannot write the Blocked condition");
                    }
                }
            });
        }
    }

    /// Applies a start task's outcome; `true` when the lease was lost.
    fn on_start_outcome(&mut self, out: StartOutcome) -> bool {
        match out {
            StartOutcome::Started { key, runtime_ref, adapter, deadline } => {
                self.starting.remove(&key);
                self.submit_failures.remove(&key);
                let (agent, order) = self.orders.remove(&key).unwrap_or((String::new(), OrderKey::from_seq(0)));
                tracing::info!(run = %key, runtime_ref = %runtime_ref, "controller: run started");
                self.tracked.insert(key, Tracked::new(agent, Some(runtime_ref), Some(adapter), order, deadline));
            }
            StartOutcome::Ended { key } | StartOutcome::Skipped { key } => {
                self.starting.remove(&key);
                self.submit_failures.remove(&key);
                self.orders.remove(&key);
                self.tracked.remove(&key);
                self.scheduler.finished(&key);
            }
            StartOutcome::Requeue { key, at, submit_failed } => {
                self.starting.remove(&key);
                if submit_failed {
                    *self.submit_failures.entry(key.clone()).or_default() += 1;
                }
                self.tracked.remove(&key);
                self.requeue(key, at);
            }
            StartOutcome::Fenced { key } => {
                self.starting.remove(&key);
                self.lease = None;
                return true;
            }
            // Handled by `on_attempt_ended`.
            StartOutcome::AttemptEnded { .. } => {}
        }
        false
    }

    /// Hands a run whose start failed back to the queue, to be dispatched at `at`.
    fn requeue(&mut self, key: RunKey, at: DateTime<Utc>) {
        let Some((agent, order)) = self.orders.get(&key).cloned() else {
            self.scheduler.finished(&key);
            return;
        };
        let cap = self.agent_caps.get(&(key.namespace.clone(), agent.clone())).and_then(|(c, _)| *c);
        self.orders.insert(key.clone(), (agent.clone(), order));
        let mut q = QueuedRun::new(key, agent, order);
        q.max_in_flight = cap;
        self.scheduler.requeue_at(q, at);
    }

    /// Checks every followed attempt: deadlines, pending cancels, and their status.
    async fn poll(&mut self) {
        let now = Utc::now();
        let keys: Vec<RunKey> = self.tracked.keys().cloned().collect();
        for key in keys {
            let Some(t) = self.tracked.get_mut(&key) else { continue };
            if let Some(d) = t.deadline
                && now >= d
                && !t.cancel_sent
                && let (Some(r), Some(a)) = (t.runtime_ref.clone(), t.adapter.clone())
            {
                tracing::warn!(run = %key, "controller: deadline passed; stopping the attempt");
                t.cancel_sent = true;
                t.timed_out = true;
                if let Err(e) = a.get().cancel(&r).await {
                    tracing::warn!(run = %key, error = %e, "controller: cannot stop a timed-out attempt");
                    if let Some(t) = self.tracked.get_mut(&key) {
                        t.cancel_sent = false;
                    }
                }
            }
            let Some(t) = self.tracked.get(&key) else { continue };
            let local = t.adapter.as_ref().is_none_or(Adapter::is_local);
            if !local && t.last_polled.is_some_and(|p| p.elapsed() < self.ctx.cfg.custom_poll) {
                continue;
            }
            if let Some(r) = t.runtime_ref.clone() {
                self.poll_one(&key, &r).await;
            } else {
                self.poll_one_lost(&key).await;
            }
            if self.lease.is_none() {
                return;
            }
        }
    }

    async fn poll_ref(&mut self, r: &RuntimeRef) {
        let key = self.tracked.iter().find(|(_, t)| t.runtime_ref.as_ref() == Some(r)).map(|(k, _)| k.clone());
        if let Some(key) = key {
            self.poll_one(&key, r).await;
        }
    }

    async fn poll_one_lost(&mut self, key: &RunKey) {
        let status = RuntimeStatus::failed(StatusReason::Lost, "the run was Running without a runtimeRef");
        self.on_terminal(key, status).await;
    }

    async fn poll_one(&mut self, key: &RunKey, r: &RuntimeRef) {
        let Some(t) = self.tracked.get_mut(key) else { return };
        t.last_polled = Some(Instant::now());
        let Some(adapter) = t.adapter.clone() else {
            let status = RuntimeStatus::failed(StatusReason::Lost, "the run's runtime is not available in this build");
            self.on_terminal(key, status).await;
            return;
        };
        let status = match adapter.get().status(r).await {
            Ok(s) => {
                if let Some(t) = self.tracked.get_mut(key) {
                    t.failing_since = None;
                }
                s
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                RuntimeStatus::failed(StatusReason::Lost, format!("the runtime no longer knows {r}: {e}"))
            }
            Err(e) => {
                let stuck_after = self.ctx.cfg.stuck_after;
                let Some(t) = self.tracked.get_mut(key) else { return };
                let since = *t.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < stuck_after {
                    tracing::debug!(run = %key, error = %e, "controller: status not available yet");
                    return;
                }
                RuntimeStatus::failed(
                    StatusReason::Lost,
                    format!("the runtime could not report on {r} for {}s: {e}", stuck_after.as_secs()),
                )
            }
        };
        if status.phase.is_terminal() {
            self.on_terminal(key, status).await;
        }
    }

    /// Records the end of an attempt: the next workflow step, a retry, or the run's end.
    async fn on_terminal(&mut self, key: &RunKey, status: RuntimeStatus) {
        let Some(lease) = self.lease.clone() else { return };
        let Some(t) = self.tracked.get_mut(key) else { return };
        if t.ending {
            return;
        }
        // Recorded in a task; the outcome comes back as `AttemptEnded`.
        t.ending = true;
        let timed_out = t.timed_out;
        let sample = self.rng.sample();
        let (ctx, tx, key) = (self.ctx.clone(), self.outcomes_tx.clone(), key.clone());
        tokio::spawn(async move {
            let w = Writer { store: ctx.store.as_ref(), lease: &lease };
            let res = w.attempt_ended(&key, status, timed_out, &ctx.cfg.backoff, sample).await;
            let result = match res {
                Ok(e) => Ok(e),
                Err(e) if e.is_fenced() => Err(true),
                Err(e) => {
                    tracing::warn!(run = %key, error = %e, "controller: cannot record the end of an attempt; will retry");
                    Err(false)
                }
            };
            let _ = tx.send(StartOutcome::AttemptEnded { key, result });
        });
    }

    /// Applies a recorded attempt end.
    async fn on_attempt_ended(&mut self, key: RunKey, result: Result<Ended, bool>) -> bool {
        match result {
            Ok(Ended::Final | Ended::Gone) => {
                self.tracked.remove(&key);
                self.scheduler.finished(&key);
            }
            Ok(Ended::Retry { at }) => {
                let Some(t) = self.tracked.remove(&key) else { return false };
                tracing::info!(run = %key, next_retry_at = %at, "controller: attempt ended; run requeued");
                self.scheduler.finished(&key);
                self.orders.insert(key.clone(), (t.agent.clone(), t.order));
                let mut q = QueuedRun::new(key.clone(), t.agent.clone(), t.order);
                q.max_in_flight = self.agent_cap(&key.namespace, &t.agent).await;
                self.scheduler.requeue_at(q, at);
            }
            Err(true) => {
                self.lease = None;
                return true;
            }
            Err(false) => {
                if let Some(t) = self.tracked.get_mut(&key) {
                    t.ending = false;
                }
            }
        }
        false
    }

    /// What the scheduler holds for `key` (for diagnostics).
    pub fn state(&self, key: &RunKey) -> Option<RunState> {
        self.scheduler.state(key)
    }
}

enum Follow {
    Shutdown,
    LeaseLost,
    Resync,
}

/// The next exit notification (`None`: some were missed); never resolves when there is no
/// subscription.
async fn recv_exit(rx: &mut Option<tokio::sync::broadcast::Receiver<RuntimeRef>>) -> Option<RuntimeRef> {
    loop {
        let Some(r) = rx.as_mut() else { return std::future::pending().await };
        match r.recv().await {
            Ok(r) => return Some(r),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return None,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => *rx = None,
        }
    }
}

/// A holder id for this node that survives restarts: read from `<data_dir>/node-id`, created on
/// first use. A restarted node then takes its lease back at once instead of waiting for it to
/// lapse.
pub fn node_holder_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let id = format!("{}-{}", host.trim().chars().take(40).collect::<String>(), uuid::Uuid::new_v4().simple());
    let id = id.trim_start_matches('-').to_string();
    std::fs::write(&path, &id)?;
    Ok(id)
}

/// Builds a controller for `store` and runs it until `shutdown` turns `true`.
pub async fn run_controller(store: Arc<dyn Store>, cfg: ControllerConfig, shutdown: watch::Receiver<bool>) {
    Controller::new(store, cfg).run(shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_samples_are_in_unit_interval_and_seeded() {
        let mut a = Rng(42);
        let mut b = Rng(42);
        for _ in 0..1000 {
            let x = a.sample();
            assert!((0.0..1.0).contains(&x), "{x}");
            assert_eq!(x.to_bits(), b.sample().to_bits());
        }
    }

    #[test]
    fn node_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = node_holder_id(dir.path()).unwrap();
        assert!(!a.is_empty());
        assert_eq!(node_holder_id(dir.path()).unwrap(), a);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(node_holder_id(other.path()).unwrap(), a);
    }
}
