//! Takeover levels (DESIGN §6): an Agent's earned level and an Environment's cap, read and
//! changed with a reason, every change recorded (who, when, from, to, why) in the resource's
//! `status.takeoverHistory` and as a `takeover.changed` ledger entry in the same transaction.
//!
//! - `GET  /api/v1/namespaces/{ns}/takeover?agent=A[&environment=E][&level=N]` — the levels that
//!   apply and the effective level a run of A (in E, asking for N) would get.
//! - `POST /api/v1/namespaces/{ns}/agents/{name}/takeover` `{"level": 1-5, "reason": "..."}`
//! - `POST /api/v1/namespaces/{ns}/environments/{name}/takeover` `{"maxLevel": 1-5, "reason": "..."}`

use std::sync::Arc;

use agentplane_api::{AgentStatus, EnvironmentSpec, EnvironmentStatus, Kind, LevelChange};
use agentplane_ledger::{Target, actions, outcomes};
use agentplane_store::{ObjectKey, Precondition, StoreError, resource_audit};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::admission::run_takeover;
use crate::approvals::set_part;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::runs::actor_label;

/// Changes kept in `status.takeoverHistory` (the ledger keeps every one).
pub const HISTORY_KEPT: usize = 20;
/// Longest reason accepted.
pub const MAX_REASON_BYTES: usize = 1024;
const CAS_ATTEMPTS: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    agent: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    level: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SetBody {
    #[serde(default)]
    level: Option<u8>,
    #[serde(default)]
    max_level: Option<u8>,
    #[serde(default)]
    reason: Option<String>,
}

fn level_in_range(field: &str, v: Option<u8>) -> Result<u8, ApiError> {
    match v {
        Some(l @ 1..=5) => Ok(l),
        Some(l) => Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!("{field} = {l} is not a takeover level; use 1 (observe) to 5 (autonomous)"),
        )
        .with_field(field)),
        None => Err(ApiError::new(ErrorCode::ValidationFailed, format!("{field} is required (1–5)")).with_field(field)),
    }
}

fn reason_of(v: Option<String>) -> Result<String, ApiError> {
    let r = v.unwrap_or_default().trim().to_string();
    if r.is_empty() {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "reason is required: say why the level changes (it is recorded with who and when)",
        )
        .with_field("reason"));
    }
    if r.len() > MAX_REASON_BYTES {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!("reason is {} bytes; at most {MAX_REASON_BYTES} are accepted", r.len()),
        )
        .with_field("reason"));
    }
    Ok(r)
}

fn key(kind: Kind, ns: &str, name: &str) -> Result<ObjectKey, ApiError> {
    for (field, v) in [("namespace", ns), ("name", name)] {
        if agentplane_api::validate_name(field, v).is_some() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("{} {v:?} not found: not a valid name", kind.as_str()),
            ));
        }
    }
    Ok(ObjectKey::new(kind, ns, name))
}

fn decode<T: serde::de::DeserializeOwned + Default>(obj: &Value, part: &str) -> Result<T, ApiError> {
    match obj.get(part) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            tracing::error!(error = %e, part, "stored object does not decode");
            ApiError::new(ErrorCode::Internal, "a stored object cannot be read; see the server log")
        }),
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| {
        tracing::error!(error = %e, "cannot encode");
        ApiError::new(ErrorCode::Internal, "cannot encode the change; see the server log")
    })
}

pub(crate) fn push_history(h: &mut Vec<LevelChange>, change: LevelChange) {
    h.push(change);
    if h.len() > HISTORY_KEPT {
        let drop = h.len() - HISTORY_KEPT;
        h.drain(..drop);
    }
}

/// `GET /api/v1/namespaces/{ns}/takeover?agent=A[&environment=E][&level=N]`.
pub async fn view(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(ns) = path.map_err(|e| ApiError::invalid(format!("bad path: {e}")))?;
    let Query(q) = query.map_err(|e| {
        ApiError::invalid(format!("bad query string: {e}; use ?agent=NAME[&environment=NAME][&level=1-5]"))
    })?;
    if let Some(l) = q.level {
        level_in_range("level", Some(l))?;
    }
    let agent_obj = st.store.get(&key(Kind::Agent, &ns, &q.agent)?).await?;
    let agent_status: AgentStatus = decode(&agent_obj, "status")?;
    let initial = st.admission_cache.initial_earned_level();
    let earned = agent_status.earned_takeover_level.unwrap_or(initial);
    let (env_spec, env_status) = match &q.environment {
        Some(e) => {
            let obj = st.store.get(&key(Kind::Environment, &ns, e)?).await?;
            (Some(decode::<EnvironmentSpec>(&obj, "spec")?), Some(decode::<EnvironmentStatus>(&obj, "status")?))
        }
        None => (None, None),
    };
    let elevation = env_status.as_ref().and_then(|s| s.elevation.as_ref()).and_then(|e| e.active_level(Utc::now()));
    let t = run_takeover(q.level, env_spec.as_ref(), earned, elevation);
    Ok(Json(json!({
        "namespace": ns,
        "agent": q.agent,
        "environment": q.environment,
        "earned": earned,
        "earnedIsDefault": agent_status.earned_takeover_level.is_none(),
        "takeover": t,
        "suggestion": agent_status.level_suggestion,
        "agentHistory": agent_status.takeover_history,
        "environmentHistory": env_status.map(|s| s.takeover_history).unwrap_or_default(),
    }))
    .into_response())
}

/// `POST /api/v1/namespaces/{ns}/agents/{name}/takeover` and
/// `POST /api/v1/namespaces/{ns}/environments/{name}/takeover`.
pub async fn set(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Json<SetBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path((ns, plural, name)) = path.map_err(|e| ApiError::invalid(format!("bad path: {e}")))?;
    let kind = match plural.as_str() {
        "agents" => Kind::Agent,
        "environments" => Kind::Environment,
        _ => return Err(ApiError::new(ErrorCode::NotFound, format!("{plural} have no takeover level"))),
    };
    let Json(body) = body.map_err(|e| {
        ApiError::invalid(format!(
            "bad body: {}; send {{\"level\": 1-5, \"reason\": \"...\"}} for an agent or {{\"maxLevel\": 1-5, \"reason\": \"...\"}} for an environment",
            e.body_text()
        ))
    })?;
    let (field, wrong) = match kind {
        Kind::Agent => ("level", body.max_level.is_some().then_some("maxLevel")),
        _ => ("maxLevel", body.level.is_some().then_some("level")),
    };
    if let Some(w) = wrong {
        return Err(ApiError::new(ErrorCode::ValidationFailed, format!("{w} does not apply to {plural}; use {field}"))
            .with_field(w));
    }
    let to = level_in_range(field, if kind == Kind::Agent { body.level } else { body.max_level })?;
    let reason = reason_of(body.reason)?;
    let k = key(kind, &ns, &name)?;
    let actor = principal.actor();
    let by = actor_label(&actor);
    for _ in 0..CAS_ATTEMPTS {
        let obj = st.store.get(&k).await?;
        let rv = agentplane_store::revision_of(&obj).unwrap_or_default();
        let now = Utc::now();
        let mut next = obj.clone();
        let (from, environment) = match kind {
            Kind::Agent => {
                let mut status: AgentStatus = decode(&obj, "status")?;
                let from = status.earned_takeover_level;
                if from == Some(to) {
                    return Ok(unchanged(kind, &name, to, obj));
                }
                status.earned_takeover_level = Some(to);
                status.updated_at = Some(now);
                // A human decided: a pending suggestion and an automatic lowering are settled.
                status.level_suggestion = None;
                status.conditions.retain(|c| {
                    c.type_ != crate::earned::SUGGESTED_CONDITION && c.type_ != crate::earned::LOWERED_CONDITION
                });
                let change = LevelChange { at: now, by: by.clone(), from, to, reason: reason.clone() };
                push_history(&mut status.takeover_history, change);
                set_part(&mut next, "status", encode(&status)?);
                (from, None)
            }
            _ => {
                let mut spec: EnvironmentSpec = decode(&obj, "spec")?;
                let mut status: EnvironmentStatus = decode(&obj, "status")?;
                let from = Some(spec.max_takeover_level.unwrap_or(spec.class.default_levels().0));
                if from == Some(to) {
                    return Ok(unchanged(kind, &name, to, obj));
                }
                spec.max_takeover_level = Some(to);
                if let Some(d) = spec.default_takeover_level
                    && d > to
                {
                    // The default may not exceed the cap it lives under.
                    spec.default_takeover_level = Some(to);
                }
                status.updated_at = Some(now);
                let change = LevelChange { at: now, by: by.clone(), from, to, reason: reason.clone() };
                push_history(&mut status.takeover_history, change);
                set_part(&mut next, "spec", encode(&spec)?);
                set_part(&mut next, "status", encode(&status)?);
                (from, Some(name.clone()))
            }
        };
        let mut audit = resource_audit(actor.clone(), actions::TAKEOVER_CHANGED);
        audit.namespace = Some(ns.clone());
        audit.target =
            Some(Target { kind: kind.as_str().into(), namespace: ns.clone(), name: name.clone(), uid: None });
        audit.environment = environment;
        audit.takeover_level = Some(to);
        audit.outcome = outcomes::SUCCESS.to_string();
        audit.params = json!({"field": field, "from": from, "to": to, "reason": reason});
        match st.store.update(next, Precondition::ResourceVersion(rv), audit).await {
            Ok(stored) => {
                st.admission_cache.invalidate(&k);
                tracing::info!(namespace = %ns, kind = kind.as_str(), name = %name, ?from, to, actor = %by, "takeover level changed");
                return Ok(Json(json!({
                    "result": "changed",
                    "kind": kind.as_str(),
                    "name": name,
                    "field": field,
                    "from": from,
                    "to": to,
                    "reason": reason,
                    "changedBy": by,
                    "object": stored,
                }))
                .into_response());
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(ErrorCode::Conflict, format!("{} {name} kept changing; try again", kind.as_str())))
}

fn unchanged(kind: Kind, name: &str, level: u8, obj: Value) -> Response {
    Json(json!({"result": "unchanged", "kind": kind.as_str(), "name": name, "to": level, "object": obj}))
        .into_response()
}
