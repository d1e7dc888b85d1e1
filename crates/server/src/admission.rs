//! Admission of AgentRuns beyond validation: references resolved (Agent → AgentProvider,
//! ImplementationSpec, Memory, Environment), secrets checked against the Agent's
//! `security.allowedSecrets`, the Agent's defaults applied, and the initial status written
//! (`Pending`, condition `Accepted`). Every problem is reported at once, like validation.

use agentplane_api::condition::{Condition, ConditionStatus};
use agentplane_api::{
    AgentRun, AgentRunStatus, AgentSpec, AnyResource, FieldError, Kind, Reason, RunPhase, ValidationErrors,
};
use agentplane_store::{ObjectKey, Store, StoreError};
use chrono::Utc;
use serde_json::Value;

use crate::error::ApiError;

async fn exists(store: &dyn Store, kind: Kind, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
    match store.get(&ObjectKey::new(kind, ns, name)).await {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn missing(field: &str, reason: Reason, kind: Kind, ns: &str, name: &str) -> FieldError {
    FieldError::new(
        field,
        reason,
        format!("{kind} {name:?} does not exist in namespace {ns:?}; create it first (agentctl get {})", kind.plural()),
    )
}

/// Resolve and default a new AgentRun in place. Other kinds pass through untouched.
pub async fn admit_new(store: &dyn Store, res: &mut AnyResource) -> Result<(), ApiError> {
    let AnyResource::AgentRun(run) = res else { return Ok(()) };
    admit_run(store, run).await
}

async fn admit_run(store: &dyn Store, run: &mut AgentRun) -> Result<(), ApiError> {
    let ns = run.metadata.namespace_or_default().to_string();
    let mut errs = Vec::new();
    let agent_name = run.spec.agent_ref.name.clone();
    // Independent lookups run concurrently; the provider depends on the agent.
    let spec_ref = run.spec.implementation_spec_ref.as_ref().map(|r| r.name.clone());
    let env = run.spec.environment.clone();
    let (agent_v, spec_v, env_v) = futures::join!(
        exists(store, Kind::Agent, &ns, &agent_name),
        async {
            match &spec_ref {
                Some(n) => exists(store, Kind::ImplementationSpec, &ns, n).await.map(Some),
                None => Ok(None),
            }
        },
        async {
            match &env {
                Some(n) => exists(store, Kind::Environment, &ns, n).await.map(Some),
                None => Ok(None),
            }
        },
    );
    let agent: Option<AgentSpec> = match agent_v? {
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
    if let (Some(name), Some(None)) = (&env, env_v?) {
        errs.push(missing("spec.environment", Reason::MissingEnvironment, Kind::Environment, &ns, name));
    }
    if let Some(agent) = &agent {
        let provider = &agent.provider_ref.name;
        if exists(store, Kind::AgentProvider, &ns, provider).await?.is_none() {
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
        && exists(store, Kind::Memory, &ns, &m.name).await?.is_none()
    {
        errs.push(missing("spec.memoryRef.name", Reason::MissingMemory, Kind::Memory, &ns, &m.name));
    }
    if !errs.is_empty() {
        return Err(ValidationErrors(errs).into());
    }
    let now = Utc::now();
    run.status = Some(AgentRunStatus {
        phase: Some(RunPhase::Pending),
        conditions: vec![Condition {
            type_: "Accepted".into(),
            status: ConditionStatus::True,
            reason: "Admitted".into(),
            message: "references resolved; waiting to be scheduled".into(),
            last_transition_time: Some(now),
            observed_generation: Some(1),
        }],
        attempt: Some(0),
        observed_generation: Some(1),
        updated_at: Some(now),
        ..AgentRunStatus::default()
    });
    Ok(())
}
