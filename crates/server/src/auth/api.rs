//! The token endpoints: `POST /api/v1/tokens` (the token is in the reply, once),
//! `GET /api/v1/tokens` (never secrets), `DELETE /api/v1/tokens/{id-or-name}` (revoke).

use std::sync::Arc;

use agentplane_ledger::{Target, actions};
use agentplane_store::{Actor, ApiToken, EntryDraft, resource_audit};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::rbac::Role;
use super::{Principal, tokens};
use crate::AppState;
use crate::error::ApiError;

/// Longest lifetime a token may be given.
const MAX_EXPIRY_DAYS: i64 = 3650;

/// The ledger entry of a token change: target `Token/<name>`, never the token or its hash.
pub fn token_audit(actor: Actor, action: &str, t: &ApiToken) -> EntryDraft {
    let mut d = resource_audit(actor, action);
    d.namespace = t.namespace.clone();
    d.target = Some(Target {
        kind: "Token".into(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name: t.name.clone(),
        uid: None,
    });
    d.params = json!({"id": t.id, "role": t.role, "namespace": t.namespace, "expiresAt": t.expires_at});
    d
}

/// A token record as the API shows it: no hash.
pub fn view(t: &ApiToken) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "namespace": t.namespace,
        "createdAt": t.created_at,
        "createdBy": t.created_by,
        "expiresAt": t.expires_at,
        "revokedAt": t.revoked_at,
        "active": t.is_active(Utc::now()),
    })
}

/// `30d`, `12h`, `90m`, `45s` or a number of seconds.
pub fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: i64 = num.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs <= MAX_EXPIRY_DAYS * 86_400).then(|| chrono::Duration::seconds(secs))
}

fn field(body: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(format!("{name} must be a string")).with_field(name)),
    }
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = crate::body::read_document(&headers, body, st.config.max_body_bytes).await?;
    if let Some(o) = body.as_object()
        && let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "name" | "role" | "namespace" | "expiresIn"))
    {
        return Err(ApiError::invalid(format!("unknown field {k:?}; known: name, role, namespace, expiresIn"))
            .with_field(k.clone()));
    }
    let name = field(&body, "name")?.ok_or_else(|| ApiError::invalid("name is required").with_field("name"))?;
    if let Some(e) = agentplane_api::validate_name("name", &name) {
        return Err(ApiError::invalid(e.message).with_field("name"));
    }
    let role_s = field(&body, "role")?.ok_or_else(|| ApiError::invalid("role is required").with_field("role"))?;
    let role = Role::parse(&role_s).ok_or_else(|| {
        ApiError::invalid(format!("role {role_s:?} is unknown; use viewer, submitter, approver, operator or admin"))
            .with_field("role")
    })?;
    let namespace = field(&body, "namespace")?.filter(|s| !s.is_empty());
    if let Some(ns) = &namespace
        && let Some(e) = agentplane_api::validate_name("namespace", ns)
    {
        return Err(ApiError::invalid(e.message).with_field("namespace"));
    }
    let now = Utc::now();
    let expires_at: Option<DateTime<Utc>> = match field(&body, "expiresIn")? {
        None => None,
        Some(s) => Some(
            now + parse_duration(&s).ok_or_else(|| {
                ApiError::invalid(format!(
                    "expiresIn {s:?} is not a duration like 30d, 12h, 90m or 3600 (at most {MAX_EXPIRY_DAYS}d)"
                ))
                .with_field("expiresIn")
            })?,
        ),
    };
    let secret = tokens::generate().map_err(|e| ApiError::new(crate::error::ErrorCode::Internal, e))?;
    let actor = principal.actor();
    let record = ApiToken {
        id: tokens::new_id().map_err(|e| ApiError::new(crate::error::ErrorCode::Internal, e))?,
        name,
        role: role.as_str().into(),
        namespace,
        hash: tokens::hash(secret.expose()),
        created_at: now,
        created_by: crate::runs::actor_label(&actor),
        expires_at,
        revoked_at: None,
    };
    let audit = token_audit(actor, actions::TOKEN_CREATED, &record);
    let stored = st.store.create_token(record, audit).await?;
    let mut out = view(&stored);
    out["token"] = Value::String(secret.expose().to_string());
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub async fn list(State(st): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let items: Vec<Value> = st.store.list_tokens().await?.iter().map(view).collect();
    Ok(Json(json!({"items": items})).into_response())
}

pub async fn revoke(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut audit = resource_audit(principal.actor(), actions::TOKEN_REVOKED);
    audit.target = Some(Target { kind: "Token".into(), namespace: String::new(), name: id.clone(), uid: None });
    let revoked = st.store.revoke_token(&id, Utc::now(), audit).await?;
    // Immediate on this server: the cached record is replaced by the revoked one.
    st.auth.tokens.put(revoked.clone());
    Ok(Json(view(&revoked)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Some(chrono::Duration::days(30)));
        assert_eq!(parse_duration("12h"), Some(chrono::Duration::hours(12)));
        assert_eq!(parse_duration("90"), Some(chrono::Duration::seconds(90)));
        assert_eq!(parse_duration("0d"), None);
        assert_eq!(parse_duration("3651d"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration(""), None);
    }
}
