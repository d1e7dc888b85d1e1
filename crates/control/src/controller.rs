//! An experimental, minimal run controller: the effects around the pure [`Scheduler`].
//!
//! It lists every AgentRun to rebuild the scheduler, follows the store's watch, dispatches pending
//! runs to the [`LocalAdapter`], polls running attempts, and writes every phase change to the
//! run's status with a compare-and-swap update that records its ledger entry in the same
//! transaction (`run.started`, `run.finished`, `run.retried`; actor `system:controller`).
//!
//! Off by default (server config `controller.enabled`). It assumes it is the only controller
//! (no leader lease yet). What it does not do is listed in `docs/scheduler.md` ("Controller
//! (experimental)").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::condition::{Condition, ConditionStatus};
use agentplane_api::{AgentProviderSpec, AgentRun, AgentRunStatus, AgentSpec, ImplementationSpecSpec, Kind, RunPhase};
use agentplane_ledger::{Actor, EntryDraft};
use agentplane_runtime::{
    LocalAdapter, RunSpec, RuntimeAdapter, RuntimeRef, RuntimeStatus, StatusReason, WorkspaceSpec,
};
use agentplane_store::{
    EventType, ListQuery, ObjectKey, Precondition, Revision, Store, StoreError, WatchEvent, WatchQuery, WatchStream,
    revision_of,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{BackoffPolicy, Caps, OrderKey, QueuedRun, RunKey, RunState, RunningRun, Scheduler, next_retry_at};

/// The ledger actor of every entry the controller writes (`system:controller`).
pub const CONTROLLER_ACTOR: &str = "controller";
/// Condition type of a run whose attempt is executing.
pub const IN_PROGRESS_CONDITION: &str = "InProgress";
/// How many times a status write is re-read and re-applied after a conflict.
const CAS_ATTEMPTS: usize = 20;
/// Page size when listing every AgentRun.
const LIST_PAGE: usize = 1_000;

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Where the local adapter keeps run folders (`<base_dir>/runs/<ns>/<name>/`).
    pub base_dir: PathBuf,
    pub caps: Caps,
    pub backoff: BackoffPolicy,
    /// How often running attempts are polled and delayed retries are checked.
    pub tick: Duration,
    /// Seed of the jitter RNG; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl ControllerConfig {
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        ControllerConfig {
            base_dir: base_dir.into(),
            caps: Caps::default(),
            backoff: BackoffPolicy::default(),
            tick: Duration::from_millis(100),
            seed: None,
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

/// An attempt the controller started (or found running) and polls.
#[derive(Debug, Clone)]
struct Tracked {
    agent: String,
    /// `None` when a `Running` run was found without a ref: it is treated as lost.
    runtime_ref: Option<RuntimeRef>,
    order: OrderKey,
}

/// The controller's state. Build it with [`Controller::new`] and drive it with [`Controller::run`].
pub struct Controller {
    store: Arc<dyn Store>,
    adapter: LocalAdapter,
    cfg: ControllerConfig,
    scheduler: Scheduler,
    tracked: HashMap<RunKey, Tracked>,
    /// Order keys of queued runs (needed to requeue a run whose start failed).
    orders: HashMap<RunKey, (String, OrderKey)>,
    rng: Rng,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cfg", &self.cfg)
            .field("tracked", &self.tracked.len())
            .finish_non_exhaustive()
    }
}

fn run_key_of(run: &AgentRun) -> RunKey {
    RunKey::new(run.metadata.namespace_or_default(), run.metadata.name.clone())
}

fn order_of(run: &AgentRun, obj: &Value) -> OrderKey {
    OrderKey::new(run.metadata.creation_timestamp.unwrap_or(DateTime::<Utc>::UNIX_EPOCH), revision_of(obj).unwrap_or(0))
}

fn decode(obj: &Value) -> Result<AgentRun, ControllerError> {
    serde_json::from_value(obj.clone()).map_err(|e| ControllerError::Decode {
        key: ObjectKey::of(obj).map(|k| k.to_string()).unwrap_or_else(|_| "?".into()),
        message: e.to_string(),
    })
}

fn set_condition(conds: &mut Vec<Condition>, c: Condition) {
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            let same = x.status == c.status && x.reason == c.reason;
            let at = if same { x.last_transition_time.or(c.last_transition_time) } else { c.last_transition_time };
            *x = Condition { last_transition_time: at, ..c };
        }
        None => conds.push(c),
    }
}

fn cond(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    now: DateTime<Utc>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Some(now),
        observed_generation: None,
    }
}

fn draft(action: &str, key: &RunKey, outcome: &str, params: Value) -> EntryDraft {
    let mut d = agentplane_store::resource_audit(Actor::system(CONTROLLER_ACTOR), action);
    d.namespace = Some(key.namespace.clone());
    d.run = Some(key.name.clone());
    d.outcome = outcome.to_string();
    d.params = params;
    d
}

fn is_terminal(p: RunPhase) -> bool {
    matches!(p, RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled)
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, cfg: ControllerConfig) -> Self {
        let seed = cfg.seed.unwrap_or_else(|| {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            #[allow(clippy::cast_sign_loss)]
            let n = nanos as u64;
            n ^ u64::from(std::process::id()).rotate_left(32)
        });
        Controller {
            adapter: LocalAdapter::new(cfg.base_dir.clone()),
            scheduler: Scheduler::new(cfg.caps),
            store,
            cfg,
            tracked: HashMap::new(),
            orders: HashMap::new(),
            rng: Rng(seed),
        }
    }

    /// Runs until `shutdown` turns `true`. Running agents are left running (a later start
    /// re-adopts them through their `runtimeRef`).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let stream = match self.resync().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "controller: cannot rebuild state from the store; retrying");
                    tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if self.follow(stream, &mut shutdown).await {
                return;
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
            let page = self.store.list(&q).await?;
            items.extend(page.items);
            match page.continue_token {
                Some(t) => token = Some(t),
                None => break page.revision,
            }
        };
        let mut agent_caps: HashMap<(String, String), Option<u32>> = HashMap::new();
        let mut pending = Vec::new();
        let mut running = Vec::new();
        self.tracked.clear();
        self.orders.clear();
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
            let ak = (key.namespace.clone(), agent.clone());
            let cap = match agent_caps.get(&ak) {
                Some(c) => *c,
                None => {
                    let c = self.agent_cap(&key.namespace, &agent).await;
                    agent_caps.insert(ak, c);
                    c
                }
            };
            let status = run.status.clone().unwrap_or_default();
            let order = order_of(&run, obj);
            match status.phase.unwrap_or_default() {
                RunPhase::Pending => {
                    let mut q = QueuedRun::new(key.clone(), agent.clone(), order);
                    q.max_in_flight = cap;
                    q.not_before = status.next_retry_at;
                    self.orders.insert(key, (agent, order));
                    pending.push(q);
                }
                RunPhase::Running => {
                    let mut r = RunningRun::new(key.clone(), agent.clone());
                    r.max_in_flight = cap;
                    running.push(r);
                    self.tracked.insert(key, Tracked { agent, runtime_ref: status.runtime_ref.map(RuntimeRef), order });
                }
                _ => {}
            }
        }
        pending.sort_by_key(|q| q.order);
        self.scheduler = match Scheduler::rebuild(self.cfg.caps, running, pending) {
            Ok(s) => s,
            Err(e) => {
                // Only a duplicate key can fail, which a list never returns; start empty rather
                // than crash.
                tracing::error!(error = %e, "controller: rebuilding the scheduler failed");
                Scheduler::new(self.cfg.caps)
            }
        };
        tracing::info!(
            pending = self.orders.len(),
            running = self.tracked.len(),
            revision,
            "controller: state rebuilt from the store"
        );
        let query = WatchQuery { kind: Some(Kind::AgentRun), ..WatchQuery::all_from(revision) };
        Ok(self.store.watch(query).await?)
    }

    /// Follows the watch and ticks; returns `true` on shutdown, `false` to resynchronise.
    async fn follow(&mut self, mut stream: WatchStream, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stopped(shutdown) => return true,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        self.on_event(ev).await;
                        self.dispatch().await;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "controller: watch failed; rebuilding state");
                        return false;
                    }
                    None => {
                        tracing::warn!("controller: watch ended; rebuilding state");
                        return false;
                    }
                },
                _ = tick.tick() => {
                    self.poll().await;
                    self.dispatch().await;
                }
            }
        }
    }

    async fn agent_cap(&self, namespace: &str, agent: &str) -> Option<u32> {
        let obj = self.store.get(&ObjectKey::new(Kind::Agent, namespace, agent)).await.ok()?;
        let spec: AgentSpec = serde_json::from_value(obj.get("spec")?.clone()).ok()?;
        spec.max_in_flight
    }

    async fn on_event(&mut self, ev: WatchEvent) {
        let Ok(run) = decode(&ev.object) else { return };
        let key = run_key_of(&run);
        match ev.type_ {
            EventType::Deleted => {
                self.scheduler.remove(&key);
                self.orders.remove(&key);
                if let Some(t) = self.tracked.remove(&key) {
                    if let Some(r) = &t.runtime_ref
                        && let Err(e) = self.adapter.cancel(r).await
                    {
                        tracing::warn!(run = %key, error = %e, "controller: cannot cancel a deleted run");
                    }
                    self.scheduler.finished(&key);
                }
            }
            _ => {
                let phase = run.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
                // Only runs the scheduler does not know yet; our own writes come back here too.
                if phase == RunPhase::Pending
                    && self.scheduler.state(&key).is_none()
                    && !self.tracked.contains_key(&key)
                {
                    let agent = run.spec.agent_ref.name.clone();
                    let order = order_of(&run, &ev.object);
                    let mut q = QueuedRun::new(key.clone(), agent.clone(), order);
                    q.max_in_flight = self.agent_cap(&key.namespace, &agent).await;
                    q.not_before = run.status.as_ref().and_then(|s| s.next_retry_at);
                    if self.scheduler.enqueue(q).is_ok() {
                        self.orders.insert(key, (agent, order));
                    }
                }
            }
        }
    }

    /// Starts what the scheduler allows, and writes `Blocked` on the runs a cap newly holds back.
    async fn dispatch(&mut self) {
        let now = Utc::now();
        let started = self.scheduler.dispatch(now);
        let blocked = self.scheduler.newly_blocked();
        for d in started {
            self.start(d.key, d.agent.name, d.order).await;
        }
        for (key, b) in blocked {
            let c = b.condition(now);
            let res = self
                .update_status(&key, None, |st| {
                    if st.phase.unwrap_or_default() != RunPhase::Pending {
                        return false;
                    }
                    set_condition(&mut st.conditions, c.clone());
                    true
                })
                .await;
            if let Err(e) = res {
                tracing::warn!(run = %key, error = %e, "controller: cannot write the Blocked condition");
            }
        }
    }

    /// Starts one dispatched run: resolve, submit, write `Running`.
    async fn start(&mut self, key: RunKey, agent: String, order: OrderKey) {
        self.orders.remove(&key);
        let obj = match self.store.get(&ObjectKey::new(Kind::AgentRun, &key.namespace, &key.name)).await {
            Ok(o) => o,
            Err(StoreError::NotFound(_)) => {
                self.scheduler.finished(&key);
                return;
            }
            Err(e) => {
                tracing::warn!(run = %key, error = %e, "controller: cannot read a dispatched run; requeued");
                self.requeue_soon(key, agent, order);
                return;
            }
        };
        let Ok(run) = decode(&obj) else {
            self.scheduler.finished(&key);
            return;
        };
        let status = run.status.clone().unwrap_or_default();
        if status.phase.unwrap_or_default() != RunPhase::Pending {
            // A stale event queued a run that has moved on.
            self.scheduler.finished(&key);
            return;
        }
        let attempt = status.attempt.unwrap_or(0) + 1;
        let spec = match self.resolve(&run, attempt).await {
            Ok(s) => s,
            Err(message) => {
                self.fail_without_start(&key, attempt, "ResolveFailed", &message).await;
                return;
            }
        };
        let runtime_ref = match self.adapter.submit(&spec).await {
            Ok(r) => r,
            Err(e) if e.retryable() => {
                tracing::warn!(run = %key, error = %e, "controller: submit failed; requeued");
                self.requeue_soon(key, agent, order);
                return;
            }
            Err(e) => {
                self.fail_without_start(&key, attempt, "SubmitFailed", &e.to_string()).await;
                return;
            }
        };
        let now = Utc::now();
        let r = runtime_ref.clone();
        let res = self
            .update_status(
                &key,
                Some(draft(
                    agentplane_ledger::actions::RUN_STARTED,
                    &key,
                    agentplane_ledger::outcomes::SUCCESS,
                    json!({"attempt": attempt, "runtimeRef": r.as_str()}),
                )),
                |st| {
                    if st.phase.unwrap_or_default() != RunPhase::Pending {
                        return false;
                    }
                    st.phase = Some(RunPhase::Running);
                    st.started_at = Some(now);
                    st.finished_at = None;
                    st.exit_code = None;
                    st.next_retry_at = None;
                    st.attempt = Some(attempt);
                    st.runtime_ref = Some(r.0.clone());
                    st.updated_at = Some(now);
                    st.conditions.retain(|c| c.type_ != crate::scheduler::BLOCKED_CONDITION);
                    set_condition(
                        &mut st.conditions,
                        cond(
                            IN_PROGRESS_CONDITION,
                            ConditionStatus::True,
                            "Started",
                            format!("attempt {attempt} started"),
                            now,
                        ),
                    );
                    true
                },
            )
            .await;
        match res {
            Ok(true) => {
                tracing::info!(run = %key, attempt, runtime_ref = %runtime_ref, "controller: run started");
                self.tracked.insert(key, Tracked { agent, runtime_ref: Some(runtime_ref), order });
            }
            Ok(false) => {
                // The run changed under us (deleted, or no longer pending): stop what we started.
                let _ = self.adapter.cancel(&runtime_ref).await;
                self.scheduler.finished(&key);
            }
            Err(e) => {
                tracing::warn!(run = %key, error = %e, "controller: cannot record the start; cancelling and requeueing");
                let _ = self.adapter.cancel(&runtime_ref).await;
                self.requeue_soon(key, agent, order);
            }
        }
    }

    fn requeue_soon(&mut self, key: RunKey, agent: String, order: OrderKey) {
        let at = Utc::now() + chrono::Duration::seconds(1);
        self.orders.insert(key.clone(), (agent.clone(), order));
        self.scheduler.requeue_at(QueuedRun::new(key, agent, order), at);
    }

    async fn fail_without_start(&mut self, key: &RunKey, attempt: u32, reason: &str, message: &str) {
        tracing::warn!(run = %key, reason, message, "controller: run cannot start");
        let status = RuntimeStatus {
            phase: RunPhase::Failed,
            reason: None,
            message: Some(message.to_string()),
            finished_at: Some(Utc::now()),
            ..Default::default()
        };
        self.scheduler.finished(key);
        if let Err(e) = self.write_final(key, attempt, &status, reason, true).await {
            tracing::warn!(run = %key, error = %e, "controller: cannot record the failure");
        }
    }

    /// Builds the adapter's spec from the run and the Agent, AgentProvider and implementation it
    /// references. An `Err` is a message for the run's `Failed` condition.
    async fn resolve(&self, run: &AgentRun, attempt: u32) -> Result<RunSpec, String> {
        let ns = run.metadata.namespace_or_default();
        let get_spec = |kind: Kind, name: String| async move {
            let obj = self.store.get(&ObjectKey::new(kind, ns, &name)).await.map_err(|e| e.to_string())?;
            Ok::<Value, String>(obj.get("spec").cloned().unwrap_or(Value::Null))
        };
        let agent_name = run.spec.agent_ref.name.clone();
        let agent: AgentSpec = serde_json::from_value(get_spec(Kind::Agent, agent_name.clone()).await?)
            .map_err(|e| format!("agent {agent_name:?}: {e}"))?;
        let provider_name = agent.provider_ref.name.clone();
        let provider: AgentProviderSpec =
            serde_json::from_value(get_spec(Kind::AgentProvider, provider_name.clone()).await?)
                .map_err(|e| format!("agent provider {provider_name:?}: {e}"))?;
        let implementation: ImplementationSpecSpec = match (&run.spec.implementation, &run.spec.implementation_spec_ref)
        {
            (Some(inline), _) => inline.inline.clone(),
            (None, Some(r)) => serde_json::from_value(get_spec(Kind::ImplementationSpec, r.name.clone()).await?)
                .map_err(|e| format!("implementation spec {:?}: {e}", r.name))?,
            (None, None) => return Err("the run has neither implementation.inline nor implementationSpecRef".into()),
        };
        if !run.spec.secrets.is_empty() {
            return Err("secrets are not supported by the experimental controller yet".into());
        }
        let uid = run.metadata.uid.clone().unwrap_or_else(|| format!("{ns}-{}", run.metadata.name));
        let mut spec = RunSpec::new(ns, &run.metadata.name, &uid, provider);
        spec.attempt = attempt;
        spec.run_spec = run.spec.clone();
        spec.provider_name = provider_name;
        spec.agent_name = agent_name;
        spec.agent = agent;
        spec.implementation = implementation;
        spec.parameters = run.spec.parameters.clone();
        spec.workspace = run
            .spec
            .workspace
            .as_ref()
            .map(|w| WorkspaceSpec { repository: w.repository.clone(), ref_: w.ref_.clone() });
        spec.timeout_seconds = run.spec.timeout_seconds;
        Ok(spec)
    }

    /// Polls every tracked attempt; records the terminal ones.
    async fn poll(&mut self) {
        let keys: Vec<RunKey> = self.tracked.keys().cloned().collect();
        for key in keys {
            let Some(t) = self.tracked.get(&key).cloned() else { continue };
            let status = match &t.runtime_ref {
                Some(r) => match self.adapter.status(r).await {
                    Ok(s) => s,
                    Err(e) if e.kind == agentplane_runtime::ErrorKind::NotFound => {
                        RuntimeStatus::failed(StatusReason::Lost, format!("the runtime no longer knows {r}: {e}"))
                    }
                    Err(e) => {
                        tracing::debug!(run = %key, error = %e, "controller: status not available yet");
                        continue;
                    }
                },
                None => RuntimeStatus::failed(StatusReason::Lost, "the run was Running without a runtimeRef"),
            };
            if !is_terminal(status.phase) {
                continue;
            }
            if let Err(e) = self.on_terminal(&key, &t, status).await {
                tracing::warn!(run = %key, error = %e, "controller: cannot record the end of an attempt; will retry");
            }
        }
    }

    async fn on_terminal(&mut self, key: &RunKey, t: &Tracked, status: RuntimeStatus) -> Result<(), ControllerError> {
        let obj = match self.store.get(&ObjectKey::new(Kind::AgentRun, &key.namespace, &key.name)).await {
            Ok(o) => o,
            Err(StoreError::NotFound(_)) => {
                self.tracked.remove(key);
                self.scheduler.finished(key);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let run = decode(&obj)?;
        let cur = run.status.clone().unwrap_or_default();
        let attempt = cur.attempt.unwrap_or(1).max(1);
        let retry_limit = run.spec.retry_limit.unwrap_or(0);
        let retry = status.phase == RunPhase::Failed && status.retryable && attempt <= retry_limit;
        if retry {
            let now = Utc::now();
            let at = next_retry_at(now, attempt, &self.cfg.backoff, self.rng.sample());
            let reason = status.reason.map_or("Failed", StatusReason::as_str).to_string();
            let message = status.message.clone().unwrap_or_default();
            let written = self
                .update_status(
                    key,
                    Some(draft(
                        agentplane_ledger::actions::RUN_RETRIED,
                        key,
                        agentplane_ledger::outcomes::SUCCESS,
                        json!({"attempt": attempt, "nextAttempt": attempt + 1, "nextRetryAt": at, "reason": reason}),
                    )),
                    |st| {
                        if st.phase != Some(RunPhase::Running) {
                            return false;
                        }
                        st.phase = Some(RunPhase::Pending);
                        st.next_retry_at = Some(at);
                        st.exit_code = status.exit_code;
                        st.finished_at = None;
                        st.runtime_ref = None;
                        st.updated_at = Some(now);
                        set_condition(
                            &mut st.conditions,
                            cond(
                                IN_PROGRESS_CONDITION,
                                ConditionStatus::False,
                                &reason,
                                format!("attempt {attempt} failed ({message}); retrying at {}", at.to_rfc3339()),
                                now,
                            ),
                        );
                        true
                    },
                )
                .await?;
            self.tracked.remove(key);
            if written {
                tracing::info!(run = %key, attempt, next_retry_at = %at, "controller: attempt failed; retry scheduled");
                self.orders.insert(key.clone(), (t.agent.clone(), t.order));
                let mut q = QueuedRun::new(key.clone(), t.agent.clone(), t.order);
                q.max_in_flight = self.agent_cap(&key.namespace, &t.agent).await;
                self.scheduler.requeue_at(q, at);
            } else {
                self.scheduler.finished(key);
            }
            return Ok(());
        }
        let reason = status.reason.map_or(
            match status.phase {
                RunPhase::Succeeded => "Completed",
                RunPhase::Cancelled => "Cancelled",
                _ => "Failed",
            },
            StatusReason::as_str,
        );
        self.write_final(key, attempt, &status, reason, false).await?;
        self.tracked.remove(key);
        self.scheduler.finished(key);
        Ok(())
    }

    /// Writes a terminal phase with `run.finished`. `from_pending`: the run never started.
    async fn write_final(
        &self,
        key: &RunKey,
        attempt: u32,
        status: &RuntimeStatus,
        reason: &str,
        from_pending: bool,
    ) -> Result<bool, ControllerError> {
        let now = Utc::now();
        let phase = status.phase;
        let outcome = if phase == RunPhase::Succeeded {
            agentplane_ledger::outcomes::SUCCESS
        } else {
            agentplane_ledger::outcomes::FAILURE
        };
        let message = status.message.clone().unwrap_or_else(|| match (phase, status.exit_code) {
            (RunPhase::Succeeded, _) => "the agent exited 0".to_string(),
            (_, Some(c)) => format!("the agent exited {c}"),
            _ => format!("the run ended {}", phase.as_str()),
        });
        let mut d = draft(
            agentplane_ledger::actions::RUN_FINISHED,
            key,
            outcome,
            json!({"attempt": attempt, "phase": phase.as_str(), "exitCode": status.exit_code, "reason": reason}),
        );
        if outcome == agentplane_ledger::outcomes::FAILURE {
            d.error = Some(message.clone());
        }
        self.update_status(key, Some(d), |st| {
            let expected = if from_pending { RunPhase::Pending } else { RunPhase::Running };
            if st.phase.unwrap_or_default() != expected {
                return false;
            }
            st.phase = Some(phase);
            st.finished_at = Some(status.finished_at.unwrap_or(now));
            st.exit_code = status.exit_code;
            st.next_retry_at = None;
            st.attempt = Some(attempt);
            st.updated_at = Some(now);
            if !status.artifacts.is_empty() {
                st.artifacts = status.artifacts.clone();
            }
            st.conditions.retain(|c| c.type_ != crate::scheduler::BLOCKED_CONDITION);
            set_condition(&mut st.conditions, cond(IN_PROGRESS_CONDITION, ConditionStatus::False, reason, "", now));
            let (type_, other) =
                if phase == RunPhase::Succeeded { ("Succeeded", "Failed") } else { ("Failed", "Succeeded") };
            st.conditions.retain(|c| c.type_ != other);
            set_condition(&mut st.conditions, cond(type_, ConditionStatus::True, reason, message.clone(), now));
            true
        })
        .await
    }

    /// Read–modify–write of a run's `status` with a resourceVersion precondition, re-read and
    /// re-applied on conflict. `apply` returns `false` to skip the write (the run is no longer in
    /// the expected state). `spec` and `metadata` are written back as read. Returns whether it
    /// wrote.
    async fn update_status(
        &self,
        key: &RunKey,
        audit: Option<EntryDraft>,
        apply: impl Fn(&mut AgentRunStatus) -> bool,
    ) -> Result<bool, ControllerError> {
        let okey = ObjectKey::new(Kind::AgentRun, &key.namespace, &key.name);
        for _ in 0..CAS_ATTEMPTS {
            let mut obj = match self.store.get(&okey).await {
                Ok(o) => o,
                Err(StoreError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let mut st: AgentRunStatus = match obj.get("status") {
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|e| ControllerError::Decode { key: key.to_string(), message: e.to_string() })?,
                None => AgentRunStatus::default(),
            };
            if !apply(&mut st) {
                return Ok(false);
            }
            let rv = revision_of(&obj).unwrap_or(0);
            let st = serde_json::to_value(&st)
                .map_err(|e| ControllerError::Decode { key: key.to_string(), message: e.to_string() })?;
            if let Some(m) = obj.as_object_mut() {
                m.insert("status".into(), st);
            }
            let audit = audit.clone().unwrap_or_else(|| {
                draft(
                    agentplane_ledger::actions::RESOURCE_UPDATED,
                    key,
                    agentplane_ledger::outcomes::SUCCESS,
                    json!({}),
                )
            });
            match self.store.update(obj, Precondition::ResourceVersion(rv), audit).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::TooManyConflicts { key: key.to_string() })
    }

    /// What the scheduler holds for `key` (for diagnostics).
    pub fn state(&self, key: &RunKey) -> Option<RunState> {
        self.scheduler.state(key)
    }
}

/// Resolves once `shutdown` is `true` (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
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
    fn set_condition_replaces_by_type_and_keeps_transition_time_when_unchanged() {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        let t1 = t0 + chrono::Duration::seconds(5);
        let mut conds = vec![cond("Blocked", ConditionStatus::True, "ConcurrencyLimit", "a", t0)];
        set_condition(&mut conds, cond("Blocked", ConditionStatus::True, "ConcurrencyLimit", "b", t1));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].message, "b");
        assert_eq!(conds[0].last_transition_time, Some(t0));
        set_condition(&mut conds, cond("Blocked", ConditionStatus::False, "Started", "", t1));
        assert_eq!(conds[0].last_transition_time, Some(t1));
        set_condition(&mut conds, cond("InProgress", ConditionStatus::True, "Started", "", t1));
        assert_eq!(conds.len(), 2);
    }
}
