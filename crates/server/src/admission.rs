//! Admission of AgentRuns beyond validation: references resolved (Agent → AgentProvider,
//! ImplementationSpec, Memory, Environment), secrets checked against the Agent's
//! `security.allowedSecrets`, the Agent's defaults applied, and the initial status written
//! (`Pending`, condition `Accepted`). Every problem is reported at once, like validation.

use agentplane_api::EnvironmentClass;
use agentplane_api::condition::{Condition, ConditionStatus};
use agentplane_api::{
    AgentRun, AgentRunStatus, AgentSpec, AnyResource, EnvironmentSpec, FieldError, Kind, Reason, RunPhase, RunTakeover,
    ValidationErrors,
};
use agentplane_control::controller::AWAITING_APPROVAL_CONDITION as AWAITING_APPROVAL;
use agentplane_policy::{TakeoverLevel, effective_level};
use agentplane_store::{ObjectKey, Store, StoreError};
use chrono::Utc;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// How long admission trusts a cached Agent, AgentProvider, ImplementationSpec, Memory or
/// Environment. Writes through this server invalidate at once; the TTL bounds staleness from
/// writers elsewhere (other replicas, later). Missing objects are never cached.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX_ENTRIES: usize = 10_000;

/// A small read-through cache of the objects admission resolves, so that a submission does not
/// pay 3–4 store reads. An invalidation bumps an epoch; a read that started before it never
/// inserts its (possibly stale) result.
#[derive(Debug)]
pub struct AdmissionCache {
    inner: Mutex<CacheInner>,
    /// The earned level of an Agent whose level was never set (`governance.initial_earned_level`).
    initial_earned_level: u8,
    /// `governance.production_start_approval`.
    start_approval: bool,
}

impl Default for AdmissionCache {
    fn default() -> Self {
        AdmissionCache::new(&crate::config::GovernanceConfig::default())
    }
}

#[derive(Debug, Default)]
struct CacheInner {
    epoch: u64,
    entries: HashMap<ObjectKey, (Instant, Value)>,
}

impl AdmissionCache {
    pub fn new(g: &crate::config::GovernanceConfig) -> Self {
        AdmissionCache {
            inner: Mutex::default(),
            initial_earned_level: g.initial_earned_level,
            start_approval: g.production_start_approval,
        }
    }

    /// The earned level of an Agent whose level was never set.
    pub fn initial_earned_level(&self) -> u8 {
        self.initial_earned_level
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget `key` (call after any write to it).
    pub fn invalidate(&self, key: &ObjectKey) {
        let mut c = self.lock();
        c.epoch += 1;
        c.entries.remove(key);
    }

    async fn get(&self, store: &dyn Store, key: ObjectKey) -> Result<Option<Value>, ApiError> {
        let epoch = {
            let c = self.lock();
            if let Some((at, v)) = c.entries.get(&key)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(Some(v.clone()));
            }
            c.epoch
        };
        let v = match store.get(&key).await {
            Ok(v) => v,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut c = self.lock();
        if c.epoch == epoch {
            if c.entries.len() >= CACHE_MAX_ENTRIES {
                c.entries.clear();
            }
            c.entries.insert(key, (Instant::now(), v.clone()));
        }
        Ok(Some(v))
    }
}

fn missing(field: &str, reason: Reason, kind: Kind, ns: &str, name: &str) -> FieldError {
    FieldError::new(
        field,
        reason,
        format!("{kind} {name:?} does not exist in namespace {ns:?}; create it first (agentctl get {})", kind.plural()),
    )
}

async fn exists(
    cache: &AdmissionCache,
    store: &dyn Store,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    cache.get(store, ObjectKey::new(kind, ns, name)).await
}

/// Resolve and default a new AgentRun in place. Other kinds pass through untouched.
pub async fn admit_new(store: &dyn Store, cache: &AdmissionCache, res: &mut AnyResource) -> Result<(), ApiError> {
    let AnyResource::AgentRun(run) = res else { return Ok(()) };
    admit_run(store, cache, run).await
}

async fn admit_run(store: &dyn Store, cache: &AdmissionCache, run: &mut AgentRun) -> Result<(), ApiError> {
    let ns = run.metadata.namespace_or_default().to_string();
    let mut errs = Vec::new();
    let agent_name = run.spec.agent_ref.name.clone();
    // Independent lookups run concurrently; the provider depends on the agent.
    let spec_ref = run.spec.implementation_spec_ref.as_ref().map(|r| r.name.clone());
    let env = run.spec.environment.clone();
    let (agent_v, spec_v, env_v) = futures::join!(
        exists(cache, store, Kind::Agent, &ns, &agent_name),
        async {
            match &spec_ref {
                Some(n) => exists(cache, store, Kind::ImplementationSpec, &ns, n).await.map(Some),
                None => Ok(None),
            }
        },
        async {
            match &env {
                Some(n) => exists(cache, store, Kind::Environment, &ns, n).await.map(Some),
                None => Ok(None),
            }
        },
    );
    let agent_v = agent_v?;
    let earned = agent_v
        .as_ref()
        .and_then(|v| v.pointer("/status/earnedTakeoverLevel"))
        .and_then(Value::as_u64)
        .and_then(|l| u8::try_from(l).ok())
        .unwrap_or(cache.initial_earned_level);
    let agent: Option<AgentSpec> = match agent_v {
        Some(v) => v.get("spec").cloned().and_then(|s| serde_json::from_value(s).ok()),
        None => {
            errs.push(missing("spec.agentRef.name", Reason::MissingAgent, Kind::Agent, &ns, &agent_name));
            None
        }
    };
    if let (Some(name), Some(None)) = (&spec_ref, spec_v?) {
        errs.push(missing(
            "spec.implementationSpecRef.name",
            Reason::MissingImplementation,
            Kind::ImplementationSpec,
            &ns,
            name,
        ));
    }
    let env_v = env_v?;
    if let (Some(name), Some(None)) = (&env, &env_v) {
        errs.push(missing("spec.environment", Reason::MissingEnvironment, Kind::Environment, &ns, name));
    }
    let env_v = env_v.flatten();
    let env_spec: Option<EnvironmentSpec> =
        env_v.as_ref().and_then(|v| v.get("spec").cloned()).and_then(|s| serde_json::from_value(s).ok());
    let elevation = env_v
        .as_ref()
        .and_then(|v| v.pointer("/status/elevation").cloned())
        .and_then(|e| serde_json::from_value::<agentplane_api::Elevation>(e).ok())
        .and_then(|e| e.active_level(Utc::now()));
    let takeover = run_takeover(run.spec.takeover_level, env_spec.as_ref(), earned, elevation);
    if let Some(agent) = &agent {
        let provider = &agent.provider_ref.name;
        if exists(cache, store, Kind::AgentProvider, &ns, provider).await?.is_none() {
            let mut e = missing("spec.agentRef.name", Reason::MissingProvider, Kind::AgentProvider, &ns, provider);
            e.message = format!("agent {agent_name:?} uses {}", e.message);
            errs.push(e);
        }
        for (i, secret) in run.spec.secrets.iter().enumerate() {
            if !agent.security.allowed_secrets.contains(secret) {
                errs.push(FieldError::new(
                    format!("spec.secrets[{i}]"),
                    Reason::SecretNotAllowed,
                    format!(
                        "secret {secret:?} is not in agent {agent_name:?}'s spec.security.allowedSecrets; add it there or drop it from the run"
                    ),
                ));
            }
        }
        if run.spec.timeout_seconds.is_none() {
            run.spec.timeout_seconds = agent.defaults.timeout_seconds;
        }
        if run.spec.retry_limit.is_none() {
            run.spec.retry_limit = agent.defaults.retry_limit;
        }
        if run.spec.memory_ref.is_none() {
            run.spec.memory_ref = agent.memory_ref.clone();
        }
    }
    if let Some(m) = &run.spec.memory_ref
        && exists(cache, store, Kind::Memory, &ns, &m.name).await?.is_none()
    {
        errs.push(missing("spec.memoryRef.name", Reason::MissingMemory, Kind::Memory, &ns, &m.name));
    }
    if !errs.is_empty() {
        return Err(ValidationErrors(errs).into());
    }
    let now = Utc::now();
    let mut conditions = vec![Condition {
        type_: "Accepted".into(),
        status: ConditionStatus::True,
        reason: "Admitted".into(),
        message: "references resolved; waiting to be scheduled".into(),
        last_transition_time: Some(now),
        observed_generation: Some(1),
    }];
    if cache.start_approval && takeover.environment_class == EnvironmentClass::Production && takeover.effective > 1 {
        conditions.push(Condition::new(
            AWAITING_APPROVAL,
            ConditionStatus::True,
            "ApprovalRequired",
            format!(
                "starting a run in production at L{} needs an approval (agentctl approval list / approve)",
                takeover.effective
            ),
            now,
        ));
    }
    run.status = Some(AgentRunStatus {
        phase: Some(RunPhase::Pending),
        conditions,
        attempt: Some(0),
        observed_generation: Some(1),
        updated_at: Some(now),
        takeover: Some(takeover),
        ..AgentRunStatus::default()
    });
    Ok(())
}

/// A run's takeover level (DESIGN §6): requested = `spec.takeoverLevel`, else the environment's
/// default; cap = the environment's `maxTakeoverLevel`; both default by the environment's class
/// (`development` when the run names no environment); effective = min(requested, cap, earned).
///
/// An emergency `elevation` in force raises the cap (never lowers it), not the earned level.
pub fn run_takeover(
    requested: Option<u8>,
    env: Option<&EnvironmentSpec>,
    earned: u8,
    elevation: Option<u8>,
) -> RunTakeover {
    let class = env.map(|e| e.class).unwrap_or_default();
    let (class_max, class_default) = class.default_levels();
    let base_cap = env.and_then(|e| e.max_takeover_level).unwrap_or(class_max);
    let requested = requested.or(env.and_then(|e| e.default_takeover_level)).unwrap_or(class_default);
    let clamp = |l: u8| TakeoverLevel::from_u8(l.clamp(1, 5)).unwrap_or(TakeoverLevel::L1);
    let elev = elevation.map(clamp);
    let cap = agentplane_policy::environment_cap(clamp(base_cap), elev, elev);
    let effective = effective_level(clamp(requested), clamp(base_cap), clamp(earned), elev);
    RunTakeover {
        requested,
        environment_cap: cap.as_u8(),
        elevation,
        earned,
        effective: effective.as_u8(),
        environment_class: class,
    }
}
