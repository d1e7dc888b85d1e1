//! Admission of AgentRuns beyond validation: references resolved (Agent → AgentProvider,
//! ImplementationSpec, Memory, Environment), secrets checked against the Agent's
//! `security.allowedSecrets`, the Agent's defaults applied, and the initial status written
//! (`Pending`, condition `Accepted`). Every problem is reported at once, like validation.

use agentplane_api::EnvironmentClass;
use agentplane_api::condition::{Condition, ConditionStatus};
use agentplane_api::{
    AgentRun, AgentRunStatus, AgentSpec, AnyResource, EnvironmentSpec, FieldError, Kind, OperationType, Reason,
    RunPhase, RunTakeover, ValidationErrors,
};
use agentplane_control::controller::AWAITING_APPROVAL_CONDITION as AWAITING_APPROVAL;
use agentplane_policy::{
    Action, Decision, DecisionInput, DecisionPoint, Emergency, EnvironmentContext, ReasonSource, RecentCalls,
    RegoPolicy, RunUsage, Subject, TakeoverLevel, Verdict, codes, effective_level,
};
use agentplane_store::{ListQuery, ObjectKey, Store, StoreError};
use chrono::Utc;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// How long admission trusts a cached Agent, AgentProvider, ImplementationSpec, Memory or
/// Environment. Writes through this server invalidate at once; the TTL bounds staleness from
/// writers elsewhere (other replicas, later). Missing objects are never cached.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX_ENTRIES: usize = 10_000;

/// The rule code of the built-in run-start rule (`governance.production_start_approval`).
pub const PRODUCTION_START_CODE: &str = "ProductionStartNeedsApproval";

/// The Policies of one namespace, compiled: a decision point, or the reasons it cannot be built
/// (a stored Policy that no longer compiles — then every decision denies: fail closed).
#[derive(Debug, Clone)]
struct PolicySet {
    at: Instant,
    point: Arc<DecisionPoint>,
    broken: Arc<Vec<String>>,
}

/// A small read-through cache of the objects admission resolves, so that a submission does not
/// pay 3–4 store reads. An invalidation bumps an epoch; a read that started before it never
/// inserts its (possibly stale) result.
#[derive(Debug)]
pub struct AdmissionCache {
    inner: Mutex<CacheInner>,
    /// Per namespace: its Policies, compiled. Each compiled Policy is kept by
    /// `(namespace, name)` with its resourceVersion, so a refresh recompiles only what changed.
    policies: Mutex<PolicyCache>,
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
struct PolicyCache {
    epoch: u64,
    sets: HashMap<String, PolicySet>,
    compiled: HashMap<(String, String), (String, RegoPolicy)>,
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
            policies: Mutex::default(),
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
        {
            let mut c = self.lock();
            c.epoch += 1;
            c.entries.remove(key);
        }
        if key.kind == Kind::Policy {
            let mut p = self.policies.lock().unwrap_or_else(|e| e.into_inner());
            p.epoch += 1;
            p.sets.remove(&key.namespace);
        }
    }

    /// The namespace's enabled Policies, compiled (cached for [`CACHE_TTL`]; a write through
    /// this server refreshes at once).
    async fn policy_set(&self, store: &dyn Store, ns: &str) -> Result<PolicySet, ApiError> {
        let epoch = {
            let p = self.policies.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(set) = p.sets.get(ns)
                && set.at.elapsed() < CACHE_TTL
            {
                return Ok(set.clone());
            }
            p.epoch
        };
        let mut items = Vec::new();
        let mut q = ListQuery::new(Kind::Policy).namespace(ns).limit(agentplane_store::MAX_LIST_LIMIT);
        loop {
            let page = store.list(&q).await?;
            items.extend(page.items);
            match page.continue_token {
                Some(t) => q.continue_token = Some(t),
                None => break,
            }
        }
        let mut policies = Vec::new();
        let mut broken = Vec::new();
        let mut p = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        for item in items {
            let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            let rv = item.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default().to_string();
            let key = (ns.to_string(), name.clone());
            if let Some((have, compiled)) = p.compiled.get(&key)
                && *have == rv
            {
                policies.push(compiled.clone());
                continue;
            }
            let policy: agentplane_api::Policy = match serde_json::from_value(item) {
                Ok(policy) => policy,
                Err(e) => {
                    broken.push(format!("policy {name:?} cannot be read: {e}"));
                    continue;
                }
            };
            if !policy.spec.enabled {
                continue;
            }
            match RegoPolicy::from_resource(&policy) {
                Ok(compiled) => {
                    if p.compiled.len() >= CACHE_MAX_ENTRIES {
                        p.compiled.clear();
                    }
                    p.compiled.insert(key, (rv, compiled.clone()));
                    policies.push(compiled);
                }
                Err(e) => broken.push(format!("{e}")),
            }
        }
        let set =
            PolicySet { at: Instant::now(), point: Arc::new(DecisionPoint::new(policies)), broken: Arc::new(broken) };
        if p.epoch == epoch {
            p.sets.insert(ns.to_string(), set.clone());
        }
        Ok(set)
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
pub async fn admit_new(
    store: &dyn Store,
    cache: &AdmissionCache,
    res: &mut AnyResource,
    subject: &Subject,
) -> Result<(), ApiError> {
    let AnyResource::AgentRun(run) = res else { return Ok(()) };
    admit_run(store, cache, run, subject).await
}

async fn admit_run(
    store: &dyn Store,
    cache: &AdmissionCache,
    run: &mut AgentRun,
    subject: &Subject,
) -> Result<(), ApiError> {
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
    let mut takeover = run_takeover(run.spec.takeover_level, env_spec.as_ref(), earned, elevation);
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
    // The decision point: the built-in run-start rule, then the namespace's Policies (which can
    // only tighten it).
    let policies = cache.policy_set(store, &ns).await?;
    let decision = run_start_decision(cache, &policies, run, env_spec.as_ref(), &takeover, subject);
    match decision.verdict {
        Verdict::Deny => {
            let why = reasons_text(&decision, Verdict::Deny);
            return Err(ApiError::new(
                crate::error::ErrorCode::PolicyDenied,
                format!("starting this run is denied: {why}; nothing was created"),
            )
            .with_details(serde_json::json!({"decision": decision})));
        }
        Verdict::SuggestOnly => {
            // Only suggestions: the run may start at L2 (suggest) at most.
            takeover.effective = takeover.effective.min(2);
        }
        Verdict::Allow | Verdict::RequireApproval => {}
    }
    let needs_approval = decision.reasons.iter().any(|r| r.verdict == Verdict::RequireApproval);
    let now = Utc::now();
    let mut conditions = vec![Condition {
        type_: "Accepted".into(),
        status: ConditionStatus::True,
        reason: "Admitted".into(),
        message: "references resolved; waiting to be scheduled".into(),
        last_transition_time: Some(now),
        observed_generation: Some(1),
    }];
    if decision.verdict == Verdict::SuggestOnly {
        conditions.push(Condition::new(
            "LevelCapped",
            ConditionStatus::True,
            "SuggestOnly",
            format!(
                "the run may only suggest (L{}): {}",
                takeover.effective,
                reasons_text(&decision, Verdict::SuggestOnly)
            ),
            now,
        ));
    }
    if needs_approval {
        conditions.push(Condition::new(
            AWAITING_APPROVAL,
            ConditionStatus::True,
            "ApprovalRequired",
            format!("{} (agentctl approval list / approve)", reasons_text(&decision, Verdict::RequireApproval)),
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

/// The decision for starting a run (governance.md, "Run starts"). The built-in rule: a run in a
/// `production` environment whose effective level is above L1 needs an approval
/// (`governance.production_start_approval`); anything else may start. The namespace's Policies
/// then see the call as tool `agentplane.run.start` (operation type `exec`, critical in
/// production) and may only tighten it. A stored Policy that does not compile denies.
fn run_start_decision(
    cache: &AdmissionCache,
    policies: &PolicySet,
    run: &AgentRun,
    env: Option<&EnvironmentSpec>,
    takeover: &RunTakeover,
    subject: &Subject,
) -> Decision {
    let clamp = |l: u8| TakeoverLevel::from_u8(l.clamp(1, 5)).unwrap_or(TakeoverLevel::L1);
    let level = clamp(takeover.effective);
    let production = takeover.environment_class == EnvironmentClass::Production;
    let mut d = Decision::new(Verdict::Allow, level);
    if cache.start_approval && production && takeover.effective > 1 {
        d.tighten(
            Verdict::RequireApproval,
            PRODUCTION_START_CODE,
            format!("starting a run in production at L{} needs an approval", takeover.effective),
            &ReasonSource::Builtin,
        );
    }
    if !policies.broken.is_empty() {
        for b in policies.broken.iter() {
            d.tighten(Verdict::Deny, codes::POLICY_ERROR, b.clone(), &ReasonSource::Builtin);
        }
        return d;
    }
    if policies.point.policies().is_empty() {
        return d;
    }
    let env_name = run.spec.environment.clone().unwrap_or_default();
    let environment = match env {
        Some(spec) => EnvironmentContext::from_spec(env_name, spec)
            .unwrap_or_else(|_| EnvironmentContext::of_class("", takeover.environment_class)),
        None => EnvironmentContext::of_class(env_name, EnvironmentClass::Development),
    };
    let input = DecisionInput {
        subject: subject.clone(),
        action: Action {
            tool: crate::approvals::START_TOOL.into(),
            operation: None,
            operation_type: OperationType::Exec,
            critical: production,
            arguments: serde_json::json!({
                "agent": run.spec.agent_ref.name,
                "implementationSpec": run.spec.implementation_spec_ref.as_ref().map(|r| r.name.clone()),
                "inline": run.spec.implementation.is_some(),
                "environment": run.spec.environment,
                "requestedLevel": takeover.requested,
                "earnedLevel": takeover.earned,
                "secrets": run.spec.secrets,
                "workspace": run.spec.workspace.as_ref().map(|w| w.repository.clone()),
            }),
            rate_limit_per_minute: None,
            redact_fields: vec![],
        },
        resource: Some(format!("agentplane:{}/agentruns/{}", run.metadata.namespace_or_default(), run.metadata.name)),
        environment,
        level,
        emergency: takeover.elevation.map(|l| Emergency { level: clamp(l), reason: None, authorized_by: None }),
        recent_calls: RecentCalls::default(),
        run_usage: RunUsage::default(),
    };
    policies.point.refine(&input, d)
}

/// Record a refused run start in the ledger (`policy.decided`, outcome `denied`, the decision in
/// `params`), so that a denial leaves a trace even though nothing was created.
pub async fn record_denied(store: &dyn Store, actor: &agentplane_ledger::Actor, ns: &str, run: &str, err: &ApiError) {
    if err.code != crate::error::ErrorCode::PolicyDenied {
        return;
    }
    let mut draft = agentplane_store::resource_audit(actor.clone(), agentplane_ledger::actions::POLICY_DECIDED);
    draft.namespace = Some(ns.to_string());
    draft.run = (!run.is_empty()).then(|| run.to_string());
    draft.outcome = agentplane_ledger::outcomes::DENIED.to_string();
    draft.params = serde_json::json!({
        "tool": crate::approvals::START_TOOL,
        "verdict": "deny",
        "decision": err.details.as_deref().and_then(|d| d.get("decision")).cloned(),
    });
    if let Err(e) = store.append(vec![draft]).await {
        tracing::warn!(error = %e, namespace = ns, run, "cannot record a denied run start in the ledger");
    }
}

/// The messages of the reasons that argue for `verdict`, joined.
fn reasons_text(d: &Decision, verdict: Verdict) -> String {
    let parts: Vec<String> = d
        .reasons
        .iter()
        .filter(|r| r.verdict == verdict)
        .map(|r| format!("{} ({}, {})", r.message, r.code, r.source))
        .collect();
    if parts.is_empty() { verdict.as_str().to_string() } else { parts.join("; ") }
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
    // An elevation counts only while the environment allows emergencies, and never above its
    // emergency ceiling (`spec.emergency.maxLevel`).
    let ceiling = env.and_then(|e| e.emergency.as_ref()).filter(|e| e.allowed).map(|e| clamp(e.max_level_or_default()));
    let elev = match (elevation.map(clamp), ceiling) {
        (Some(e), Some(c)) => Some(e.min(c)),
        _ => None,
    };
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
