//! Approvals of run starts (DESIGN §6): a run in a `production` environment above L1 is admitted
//! `Pending` with condition `AwaitingApproval=True`, and an Approval resource is created for it
//! (`approval.requested`). A human decides it — `POST .../approvals/{name}/approve|deny` — which
//! lets the controller start the run, or fails it (`ApprovalDenied`). An approval that is not
//! decided before `spec.expiresAt` expires and counts as denied (`ApprovalExpired`), found by a
//! sweeper every `governance.approval_sweep_seconds` or when someone tries to decide it.
//!
//! Rules: an approval is decided once (a second decision is a 409 naming the first); the decider
//! needs `approvals.decide` (approver, admin), must be in `spec.approvers` when it lists anyone,
//! and may not be who submitted the run (separation of duties).

use std::sync::Arc;
use std::time::Duration;

use agentplane_api::condition::{Condition, ConditionStatus, set_condition};
use agentplane_api::{AgentRunStatus, ApprovalPhase, ApprovalSpec, ApprovalStatus, Kind, RunPhase};
use agentplane_control::controller::AWAITING_APPROVAL_CONDITION;
use agentplane_ledger::{Actor, actions, outcomes};
use agentplane_store::{ListQuery, ObjectKey, Precondition, Store, StoreError, resource_audit, revision_of};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::AppState;
use crate::auth::Principal;
use crate::auth::rbac::may_decide_approval;
use crate::error::{ApiError, ErrorCode};
use crate::resources::SUBMITTED_BY;
use crate::runs::actor_label;

/// The `operation.tool` of an approval to start a run.
pub const START_TOOL: &str = "agentplane.run.start";
/// The `operation.tool` of an emergency elevation request.
pub const ELEVATION_TOOL: &str = "agentplane.elevation";
/// Labels on an elevation request: the level asked for and for how long (seconds).
pub const ELEVATION_LEVEL_LABEL: &str = "agentplane.io/elevation-level";
pub const ELEVATION_SECONDS_LABEL: &str = "agentplane.io/elevation-seconds";
/// The emergency limit when an Environment allows emergencies without `maxMinutes`.
pub const DEFAULT_EMERGENCY_MAX_MINUTES: u32 = 60;
/// Label on an approval naming its run.
pub const RUN_LABEL: &str = "agentplane.io/run";
const CAS_ATTEMPTS: usize = 8;
const MAX_REASON_BYTES: usize = 1024;

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, what, "approvals");
    ApiError::new(ErrorCode::Internal, format!("{what}; see the server log"))
}

/// Replaces one top-level part (`spec`, `status`) of a stored object.
pub(crate) fn set_part(obj: &mut Value, part: &str, v: Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert(part.into(), v);
    }
}

/// The approval's name for a run: `<run>-start`, or `start-<uid>` when that would be too long.
pub fn approval_name(run: &str, uid: &str) -> String {
    let n = format!("{run}-start");
    if n.len() <= 63 { n } else { format!("start-{uid}") }
}

/// Creates the Approval for a run admitted with `AwaitingApproval` (called right after the run is
/// stored). Returns the run as it now is: unchanged, or `Failed` (`ApprovalUnavailable`) when the
/// approval could not be created — a run is never left waiting for an approval nobody can give.
pub async fn request_for_run(st: &AppState, run: Value, actor: &Actor) -> Value {
    let status: AgentRunStatus =
        run.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
    if !agentplane_control::controller::awaiting_approval(&status) {
        return run;
    }
    let ns = run.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    let name = run.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let uid = run.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let env = run.pointer("/spec/environment").and_then(Value::as_str).map(str::to_string);
    let agent = run.pointer("/spec/agentRef/name").and_then(Value::as_str).unwrap_or_default();
    let level = status.takeover.as_ref().map(|t| t.effective).unwrap_or(1);
    let approvers = match &env {
        Some(e) => st
            .store
            .get(&ObjectKey::new(Kind::Environment, &ns, e))
            .await
            .ok()
            .and_then(|o| o.pointer("/spec/approvers").cloned())
            .unwrap_or_else(|| json!([])),
        None => json!([]),
    };
    let ttl = chrono::Duration::minutes(i64::try_from(st.config.governance.approval_ttl_minutes).unwrap_or(60));
    let expires = Utc::now() + ttl;
    let approval = json!({
        "apiVersion": "agentplane.dev/v1alpha1",
        "kind": "Approval",
        "metadata": {"name": approval_name(&name, &uid), "namespace": ns, "labels": {RUN_LABEL: name}},
        "spec": {
            "subject": actor_label(actor),
            "run": {"name": name},
            "operation": {
                "tool": START_TOOL,
                "type": "exec",
                "critical": true,
                "argumentsSummary": format!("start agentrun/{name} (agent {agent}) at L{level} in environment {}", env.as_deref().unwrap_or("-")),
            },
            "reason": status
                .conditions
                .iter()
                .find(|c| c.type_ == agentplane_control::controller::AWAITING_APPROVAL_CONDITION)
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("starting this run at L{level} needs an approval")),
            "environment": env,
            "approvers": approvers,
            "expiresAt": expires,
        },
        "status": {"phase": "Pending", "updatedAt": Utc::now()},
    });
    let mut audit = resource_audit(actor.clone(), actions::APPROVAL_REQUESTED);
    audit.namespace = Some(ns.clone());
    audit.run = Some(name.clone());
    audit.environment = env.clone();
    audit.takeover_level = Some(level);
    audit.outcome = outcomes::PENDING.to_string();
    audit.params = json!({"approval": approval_name(&name, &uid), "tool": START_TOOL, "expiresAt": expires});
    match st.store.create(approval, audit).await {
        Ok(_) => run,
        Err(e) => {
            tracing::error!(run = %name, error = %e, "cannot create the approval of a run; failing the run");
            let msg = format!("the approval this run needs could not be created: {e}");
            end_run(
                st.store.as_ref(),
                &ns,
                &name,
                "ApprovalUnavailable",
                &msg,
                &Actor::system("approvals"),
                outcomes::FAILURE,
            )
            .await
            .ok()
            .flatten()
            .unwrap_or(run)
        }
    }
}

/// Fails a pending run that waits for an approval (denied, expired, unavailable). `None` when the
/// run is gone or no longer waiting.
async fn end_run(
    store: &dyn Store,
    ns: &str,
    name: &str,
    reason: &str,
    message: &str,
    actor: &Actor,
    outcome: &str,
) -> Result<Option<Value>, StoreError> {
    let key = ObjectKey::new(Kind::AgentRun, ns, name);
    for _ in 0..CAS_ATTEMPTS {
        let obj = match store.get(&key).await {
            Ok(o) => o,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut st: AgentRunStatus =
            obj.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
        if st.phase.unwrap_or_default() != RunPhase::Pending || !agentplane_control::controller::awaiting_approval(&st)
        {
            return Ok(None);
        }
        let now = Utc::now();
        st.phase = Some(RunPhase::Failed);
        st.finished_at = Some(now);
        st.updated_at = Some(now);
        set_condition(
            &mut st.conditions,
            Condition::new(AWAITING_APPROVAL_CONDITION, ConditionStatus::False, reason, message, now),
        );
        set_condition(&mut st.conditions, Condition::new("InProgress", ConditionStatus::False, reason, "", now));
        set_condition(&mut st.conditions, Condition::new("Failed", ConditionStatus::True, reason, message, now));
        let mut next = obj.clone();
        set_part(&mut next, "status", serde_json::to_value(&st).unwrap_or(Value::Null));
        let mut audit = resource_audit(actor.clone(), actions::RUN_FINISHED);
        audit.namespace = Some(ns.to_string());
        audit.run = Some(name.to_string());
        audit.outcome = outcome.to_string();
        audit.params = json!({"attempt": 0, "phase": "Failed", "reason": reason, "started": false});
        audit.error = Some(message.to_string());
        match store.update(next, Precondition::ResourceVersion(revision_of(&obj).unwrap_or_default()), audit).await {
            Ok(v) => return Ok(Some(v)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict { key, expected: 0, actual: 0 })
}

/// Lets the controller start an approved run: `AwaitingApproval` becomes `False/Approved`.
async fn release_run(store: &dyn Store, ns: &str, name: &str, message: &str, actor: &Actor) -> Result<(), StoreError> {
    let key = ObjectKey::new(Kind::AgentRun, ns, name);
    for _ in 0..CAS_ATTEMPTS {
        let obj = match store.get(&key).await {
            Ok(o) => o,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut st: AgentRunStatus =
            obj.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
        if !agentplane_control::controller::awaiting_approval(&st) {
            return Ok(());
        }
        let now = Utc::now();
        st.updated_at = Some(now);
        set_condition(
            &mut st.conditions,
            Condition::new(AWAITING_APPROVAL_CONDITION, ConditionStatus::False, "Approved", message, now),
        );
        let mut next = obj.clone();
        set_part(&mut next, "status", serde_json::to_value(&st).unwrap_or(Value::Null));
        let mut audit = resource_audit(actor.clone(), actions::RESOURCE_UPDATED);
        audit.namespace = Some(ns.to_string());
        audit.run = Some(name.to_string());
        audit.params = json!({"condition": AWAITING_APPROVAL_CONDITION, "reason": "Approved"});
        match store.update(next, Precondition::ResourceVersion(revision_of(&obj).unwrap_or_default()), audit).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict { key, expected: 0, actual: 0 })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    #[serde(default)]
    reason: Option<String>,
}

fn decode_approval(obj: &Value) -> Result<(ApprovalSpec, ApprovalStatus), ApiError> {
    let spec = serde_json::from_value(obj.get("spec").cloned().unwrap_or(Value::Null))
        .map_err(|e| internal("a stored approval cannot be read", e))?;
    let status = match obj.get("status") {
        None | Some(Value::Null) => ApprovalStatus::default(),
        Some(s) => serde_json::from_value(s.clone()).map_err(|e| internal("a stored approval cannot be read", e))?,
    };
    Ok((spec, status))
}

/// Whether `actor` is one of `approvers` (`alice`, `user:alice`, `oidc:sub` or `user:oidc:sub`).
pub fn is_listed(approvers: &[String], actor: &Actor) -> bool {
    let label = actor_label(actor);
    approvers.iter().any(|a| a == &label || a == &actor.id)
}

fn phase_str(p: ApprovalPhase) -> &'static str {
    match p {
        ApprovalPhase::Pending => "Pending",
        ApprovalPhase::Approved => "Approved",
        ApprovalPhase::Denied => "Denied",
        ApprovalPhase::Expired => "Expired",
    }
}

/// `POST /api/v1/namespaces/{ns}/approvals/{name}/{approve|deny}` with an optional
/// `{"reason": "..."}`.
pub async fn decide(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path((ns, name, verb)) = path.map_err(|e| ApiError::invalid(format!("bad path: {e}")))?;
    let approve = match verb.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("approvals have no {verb:?} action; use approve or deny"),
            ));
        }
    };
    let body: DecideBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecideBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("bad body: {e}; send {{\"reason\": \"...\"}} or nothing")))?
    };
    let reason = body.reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
    if let Some(r) = &reason
        && r.len() > MAX_REASON_BYTES
    {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!("reason is {} bytes; at most {MAX_REASON_BYTES} are accepted", r.len()),
        )
        .with_field("reason"));
    }
    if agentplane_api::validate_name("name", &name).is_some()
        || agentplane_api::validate_name("namespace", &ns).is_some()
    {
        return Err(ApiError::new(ErrorCode::NotFound, format!("approval {name:?} not found")));
    }
    let key = ObjectKey::new(Kind::Approval, &ns, &name);
    let actor = principal.actor();
    let by = actor_label(&actor);
    for _ in 0..CAS_ATTEMPTS {
        let obj = st.store.get(&key).await?;
        let (spec, mut status) = decode_approval(&obj)?;
        let phase = status.phase.unwrap_or_default();
        if phase != ApprovalPhase::Pending {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "approval {name} was already decided: {} by {} at {}",
                    phase_str(phase),
                    status.decided_by.as_deref().unwrap_or("-"),
                    status.decided_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
                ),
            )
            .with_details(json!({"phase": phase_str(phase), "decidedBy": status.decided_by})));
        }
        let now = Utc::now();
        if spec.expires_at <= now {
            expire(st.store.as_ref(), &key, now).await?;
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "approval {name} expired at {}; an expired approval counts as denied",
                    spec.expires_at.to_rfc3339()
                ),
            )
            .with_details(json!({"phase": "Expired"})));
        }
        if !spec.approvers.is_empty() && !is_listed(&spec.approvers, &actor) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("{by} is not among this approval's approvers ({})", spec.approvers.join(", ")),
            ));
        }
        let run_name = spec.run.as_ref().map(|r| r.name.clone());
        let submitted_by = match &run_name {
            Some(r) => st
                .store
                .get(&ObjectKey::new(Kind::AgentRun, &ns, r))
                .await
                .ok()
                .and_then(|o| o.pointer(&format!("/metadata/annotations/{}", SUBMITTED_BY.replace('/', "~1"))).cloned())
                .and_then(|v| v.as_str().map(str::to_string))
                .or_else(|| Some(spec.subject.clone())),
            None => Some(spec.subject.clone()),
        };
        may_decide_approval(&by, submitted_by.as_deref()).map_err(|m| ApiError::new(ErrorCode::Forbidden, m))?;

        status.phase = Some(if approve { ApprovalPhase::Approved } else { ApprovalPhase::Denied });
        status.decided_by = Some(by.clone());
        status.decided_at = Some(now);
        status.decision_reason = reason.clone();
        status.updated_at = Some(now);
        let mut next = obj.clone();
        set_part(&mut next, "status", serde_json::to_value(&status).map_err(|e| internal("cannot encode", e))?);
        let mut audit = resource_audit(actor.clone(), actions::APPROVAL_DECIDED);
        audit.namespace = Some(ns.clone());
        audit.run = run_name.clone();
        audit.environment = spec.environment.clone();
        audit.decision = Some(if approve { "approve" } else { "deny" }.into());
        audit.outcome = if approve { outcomes::SUCCESS } else { outcomes::DENIED }.to_string();
        audit.params = json!({"approval": name, "tool": spec.operation.tool, "reason": reason});
        match st.store.update(next, Precondition::ResourceVersion(revision_of(&obj).unwrap_or_default()), audit).await {
            Ok(stored) => {
                if approve
                    && spec.operation.tool == ELEVATION_TOOL
                    && let Err(e) = grant_elevation(st.store.as_ref(), &ns, &obj, &spec, &actor, now).await
                {
                    tracing::error!(approval = %name, error = %e, "elevation approved but not granted");
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        format!("the elevation was approved but could not be put in force: {e}; request it again"),
                    ));
                }
                if let Some(run) = &run_name {
                    let why = reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    let result = if approve {
                        release_run(st.store.as_ref(), &ns, run, &format!("approved by {by}{why}"), &actor).await
                    } else {
                        let msg = format!("approval {name} denied by {by}{why}");
                        end_run(st.store.as_ref(), &ns, run, "ApprovalDenied", &msg, &actor, outcomes::DENIED)
                            .await
                            .map(|_| ())
                    };
                    if let Err(e) = result {
                        tracing::error!(run = %run, error = %e, "approval decided but the run could not be updated");
                    }
                }
                tracing::info!(namespace = %ns, approval = %name, decision = %verb, actor = %by, "approval decided");
                return Ok(Json(stored).into_response());
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(ErrorCode::Conflict, format!("approval {name} kept changing; try again")))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElevateBody {
    #[serde(default)]
    level: Option<u8>,
    #[serde(default)]
    minutes: Option<f64>,
    #[serde(default)]
    reason: Option<String>,
}

fn bad(field: &str, msg: String) -> ApiError {
    ApiError::new(ErrorCode::ValidationFailed, msg).with_field(field)
}

/// `POST /api/v1/namespaces/{ns}/environments/{name}/elevation` `{"level", "minutes", "reason"}`:
/// asks to raise the environment's cap for a while. Creates an Approval (tool
/// `agentplane.elevation`) that one of the Environment's `emergency.authorizers` — not the
/// requester — must approve; approving puts the elevation in force (`status.elevation`).
pub async fn request_elevation(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path((ns, env)) = path.map_err(|e| ApiError::invalid(format!("bad path: {e}")))?;
    let body: ElevateBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(format!("bad body: {e}; send {{\"level\": 1-5, \"minutes\": N, \"reason\": \"...\"}}"))
    })?;
    let reason = body
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("reason", "reason is required: say why the emergency needs a higher level".into()))?;
    if reason.len() > MAX_REASON_BYTES {
        return Err(bad(
            "reason",
            format!("reason is {} bytes; at most {MAX_REASON_BYTES} are accepted", reason.len()),
        ));
    }
    let level = match body.level {
        Some(l @ 1..=5) => l,
        Some(l) => return Err(bad("level", format!("level = {l} is not a takeover level; use 1 to 5"))),
        None => return Err(bad("level", "level is required (1–5)".into())),
    };
    let minutes = body.minutes.ok_or_else(|| bad("minutes", "minutes is required".into()))?;
    if !minutes.is_finite() || minutes <= 0.0 {
        return Err(bad("minutes", format!("minutes = {minutes} must be positive")));
    }
    if agentplane_api::validate_name("name", &env).is_some()
        || agentplane_api::validate_name("namespace", &ns).is_some()
    {
        return Err(ApiError::new(ErrorCode::NotFound, format!("environment {env:?} not found")));
    }
    let env_obj = st.store.get(&ObjectKey::new(Kind::Environment, &ns, &env)).await?;
    let env_spec: agentplane_api::EnvironmentSpec =
        serde_json::from_value(env_obj.get("spec").cloned().unwrap_or(Value::Null))
            .map_err(|e| internal("a stored environment cannot be read", e))?;
    let emergency = env_spec.emergency.clone().unwrap_or_default();
    if !emergency.allowed {
        return Err(ApiError::new(
            ErrorCode::PolicyDenied,
            format!("environment {env} does not allow emergency elevation (spec.emergency.allowed is not true)"),
        ));
    }
    if emergency.authorizers.is_empty() {
        return Err(ApiError::new(
            ErrorCode::PolicyDenied,
            format!("environment {env} lists no spec.emergency.authorizers: nobody could grant an elevation"),
        ));
    }
    let max_minutes = emergency.max_minutes.unwrap_or(DEFAULT_EMERGENCY_MAX_MINUTES);
    if minutes > f64::from(max_minutes) {
        return Err(bad(
            "minutes",
            format!(
                "minutes = {minutes} is above environment {env}'s emergency limit of {max_minutes} minutes (spec.emergency.maxMinutes)"
            ),
        ));
    }
    let max_level = emergency.max_level_or_default();
    if level > max_level {
        return Err(bad(
            "level",
            format!(
                "level = {level} is above environment {env}'s emergency limit of L{max_level} (spec.emergency.maxLevel); ask for L{max_level} or less"
            ),
        ));
    }
    let cap = env_spec.max_takeover_level.unwrap_or(env_spec.class.default_levels().0);
    if level <= cap {
        return Err(bad("level", format!("environment {env} already allows L{cap}; an elevation must ask for more")));
    }
    let actor = principal.actor();
    let by = actor_label(&actor);
    let now = Utc::now();
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    let approval_name = format!("{env}-elevation-{}", now.timestamp_millis());
    let ttl = chrono::Duration::minutes(i64::try_from(st.config.governance.approval_ttl_minutes).unwrap_or(60));
    let approval = json!({
        "apiVersion": "agentplane.dev/v1alpha1",
        "kind": "Approval",
        "metadata": {"name": approval_name, "namespace": ns, "labels": {
            ELEVATION_LEVEL_LABEL: level.to_string(), ELEVATION_SECONDS_LABEL: seconds.to_string()}},
        "spec": {
            "subject": by,
            "operation": {"tool": ELEVATION_TOOL, "type": "permission_change", "critical": true,
                "argumentsSummary": format!("raise environment {env}'s cap from L{cap} to L{level} for {minutes} minutes")},
            "reason": reason,
            "environment": env,
            "approvers": emergency.authorizers,
            "expiresAt": now + ttl,
        },
        "status": {"phase": "Pending", "updatedAt": now},
    });
    let mut audit = resource_audit(actor.clone(), actions::ELEVATION_REQUESTED);
    audit.namespace = Some(ns.clone());
    audit.environment = Some(env.clone());
    audit.takeover_level = Some(level);
    audit.outcome = outcomes::PENDING.to_string();
    audit.params = json!({"approval": approval_name, "from": cap, "to": level, "minutes": minutes, "reason": reason});
    let stored = st.store.create(approval, audit).await?;
    tracing::info!(namespace = %ns, environment = %env, level, minutes, actor = %by, "elevation requested");
    Ok((axum::http::StatusCode::CREATED, Json(stored)).into_response())
}

/// Puts an approved elevation in force on its Environment (`elevation.granted`).
async fn grant_elevation(
    store: &dyn Store,
    ns: &str,
    approval: &Value,
    spec: &ApprovalSpec,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let label =
        |k: &str| approval.pointer(&format!("/metadata/labels/{}", k.replace('/', "~1"))).and_then(Value::as_str);
    let level: u8 = label(ELEVATION_LEVEL_LABEL).and_then(|v| v.parse().ok()).unwrap_or(1);
    let seconds: i64 = label(ELEVATION_SECONDS_LABEL).and_then(|v| v.parse().ok()).unwrap_or(60);
    let env = spec.environment.clone().unwrap_or_default();
    let name = approval.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let key = ObjectKey::new(Kind::Environment, ns, &env);
    for _ in 0..CAS_ATTEMPTS {
        let obj = store.get(&key).await?;
        let mut status: agentplane_api::EnvironmentStatus =
            obj.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
        let until = now + chrono::Duration::seconds(seconds);
        status.elevation = Some(agentplane_api::Elevation {
            level,
            until,
            requested_by: spec.subject.clone(),
            granted_by: actor_label(actor),
            granted_at: now,
            reason: spec.reason.clone(),
            approval: name.clone(),
        });
        status.updated_at = Some(now);
        let mut next = obj.clone();
        set_part(&mut next, "status", serde_json::to_value(&status).unwrap_or(Value::Null));
        let mut audit = resource_audit(actor.clone(), actions::ELEVATION_GRANTED);
        audit.namespace = Some(ns.to_string());
        audit.environment = Some(env.clone());
        audit.takeover_level = Some(level);
        audit.params = json!({"approval": name, "level": level, "until": until, "requestedBy": spec.subject});
        match store.update(next, Precondition::ResourceVersion(revision_of(&obj).unwrap_or_default()), audit).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict { key, expected: 0, actual: 0 })
}

/// Clears elevations whose time ran out (`elevation.expired`, actor `system:approvals`); the cap
/// reverts. Returns how many.
pub async fn expire_elevations(store: &dyn Store, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut q = ListQuery::new(Kind::Environment);
    q.limit = Some(500);
    let mut n = 0;
    let system = Actor::system("approvals");
    loop {
        let page = store.list(&q).await?;
        for obj in &page.items {
            let Some(e) = obj
                .pointer("/status/elevation")
                .cloned()
                .and_then(|e| serde_json::from_value::<agentplane_api::Elevation>(e).ok())
            else {
                continue;
            };
            if e.active_level(now).is_some() {
                continue;
            }
            let Ok(key) = ObjectKey::of(obj) else { continue };
            let mut status: agentplane_api::EnvironmentStatus =
                obj.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
            status.elevation = None;
            status.updated_at = Some(now);
            let mut next = obj.clone();
            set_part(&mut next, "status", serde_json::to_value(&status).unwrap_or(Value::Null));
            let mut audit = resource_audit(system.clone(), actions::ELEVATION_EXPIRED);
            audit.namespace = Some(key.namespace.clone());
            audit.environment = Some(key.name.clone());
            audit.outcome = outcomes::EXPIRED.to_string();
            audit.params =
                json!({"approval": e.approval, "level": e.level, "until": e.until, "grantedBy": e.granted_by});
            match store.update(next, Precondition::ResourceVersion(revision_of(obj).unwrap_or_default()), audit).await {
                Ok(_) => n += 1,
                // Changed meanwhile: the next sweep looks again.
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match page.continue_token {
            Some(c) => q.continue_token = Some(c),
            None => return Ok(n),
        }
    }
}

/// Marks a pending approval `Expired` (`approval.expired`) and fails its run (`ApprovalExpired`).
async fn expire(store: &dyn Store, key: &ObjectKey, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let system = Actor::system("approvals");
    for _ in 0..CAS_ATTEMPTS {
        let obj = match store.get(key).await {
            Ok(o) => o,
            Err(StoreError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Ok((spec, mut status)) = decode_approval(&obj) else { return Ok(false) };
        if status.phase.unwrap_or_default() != ApprovalPhase::Pending || spec.expires_at > now {
            return Ok(false);
        }
        status.phase = Some(ApprovalPhase::Expired);
        status.decided_by = Some("system:approvals".into());
        status.decided_at = Some(now);
        status.decision_reason = Some("not decided before spec.expiresAt; counts as denied".into());
        status.updated_at = Some(now);
        let mut next = obj.clone();
        set_part(&mut next, "status", serde_json::to_value(&status).unwrap_or(Value::Null));
        let mut audit = resource_audit(system.clone(), actions::APPROVAL_EXPIRED);
        audit.namespace = Some(key.namespace.clone());
        audit.run = spec.run.as_ref().map(|r| r.name.clone());
        audit.environment = spec.environment.clone();
        audit.outcome = outcomes::EXPIRED.to_string();
        audit.params = json!({"approval": key.name, "expiresAt": spec.expires_at});
        match store.update(next, Precondition::ResourceVersion(revision_of(&obj).unwrap_or_default()), audit).await {
            Ok(_) => {
                if let Some(r) = &spec.run {
                    let msg =
                        format!("approval {} expired at {} (counts as denied)", key.name, spec.expires_at.to_rfc3339());
                    end_run(store, &key.namespace, &r.name, "ApprovalExpired", &msg, &system, outcomes::EXPIRED)
                        .await?;
                }
                return Ok(true);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Expires every pending approval past its `expiresAt`; returns how many.
pub async fn expire_due(store: &dyn Store, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut q = ListQuery::new(Kind::Approval);
    q.limit = Some(500);
    let mut n = 0;
    loop {
        let page = store.list(&q).await?;
        for obj in &page.items {
            let pending = obj.pointer("/status/phase").and_then(Value::as_str).is_none_or(|p| p == "Pending");
            let due = obj
                .pointer("/spec/expiresAt")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t <= now);
            if pending
                && due
                && let Ok(key) = ObjectKey::of(obj)
                && expire(store, &key, now).await?
            {
                n += 1;
            }
        }
        match page.continue_token {
            Some(c) => q.continue_token = Some(c),
            None => return Ok(n),
        }
    }
}

/// The expiry sweeper: every `interval` until shutdown.
pub async fn run_expiry(store: Arc<dyn Store>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match expire_due(store.as_ref(), Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "approvals expired"),
            Err(e) => tracing::warn!(error = %e, "approval expiry sweep failed"),
        }
        match expire_elevations(store.as_ref(), Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "emergency elevations ended"),
            Err(e) => tracing::warn!(error = %e, "elevation expiry sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit() {
        assert_eq!(approval_name("r1", "u"), "r1-start");
        let long = "a".repeat(60);
        assert_eq!(approval_name(&long, "0123"), "start-0123");
    }

    #[test]
    fn approvers_match_by_label_or_id() {
        let a = Actor::user("alice");
        assert!(is_listed(&["alice".into()], &a));
        assert!(is_listed(&["user:alice".into()], &a));
        assert!(!is_listed(&["bob".into()], &a));
    }
}
