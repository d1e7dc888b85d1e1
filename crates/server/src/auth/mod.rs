//! Authentication and authorisation of every API call.
//!
//! One middleware ([`middleware`]) runs before every handler: it classifies the request
//! ([`rbac::classify`]), lets the public endpoints through, authenticates the bearer token (an
//! API token, a run token or an OIDC JWT), applies the per-caller rate limit, checks the
//! caller's grants against the RBAC matrix, and hands the caller ([`Principal`]) to the handler.
//! No handler can skip it: it wraps the whole router. See `docs/rbac.md`.

pub mod api;
pub mod oidc;
pub mod ratelimit;
pub mod rbac;
pub mod run_token;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentplane_api::RunPhase;
use agentplane_store::{Actor, ObjectKey, Store, StoreError};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, ErrorCode};
use rbac::{Access, Grant, Perm, Scope};

/// Longest `Authorization` header accepted (a JWT with many claims fits easily).
pub const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;
/// Longest request target (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// A secret string (a token). `Debug` is redacted; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Write a file readable only by its owner (0600), replacing it.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Why a request is not authenticated (401), or could not be checked (503).
#[derive(Debug, Clone)]
pub enum AuthFailure {
    Missing,
    Malformed(String),
    Invalid(String),
    Unavailable(String),
}

impl AuthFailure {
    pub fn malformed(m: impl Into<String>) -> AuthFailure {
        AuthFailure::Malformed(m.into())
    }
    pub fn invalid(m: impl Into<String>) -> AuthFailure {
        AuthFailure::Invalid(m.into())
    }
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        let (msg, error) = match self {
            AuthFailure::Missing => (
                "authentication required: send 'Authorization: Bearer <token>' (agentctl: --token, AGENTCTL_TOKEN or \
                 the config file's token)"
                    .to_string(),
                "invalid_request",
            ),
            AuthFailure::Malformed(m) => (format!("malformed credentials: {m}"), "invalid_request"),
            AuthFailure::Invalid(m) => (format!("invalid credentials: {m}"), "invalid_token"),
            AuthFailure::Unavailable(m) => {
                tracing::warn!(error = %m, "cannot check credentials");
                return ApiError::new(ErrorCode::Unavailable, "cannot check credentials right now; retry later")
                    .into_response();
            }
        };
        let mut r = ApiError::new(ErrorCode::Unauthorized, msg).into_response();
        let value = format!("Bearer realm=\"agentplane\", error=\"{error}\"");
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An API token (its name and id).
    Token { id: String, name: String },
    /// An OIDC subject.
    Oidc { sub: String },
    /// The agent of one run (a run token).
    Run { namespace: String, name: String },
}

/// The authenticated caller and what it is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: Subject,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// The ledger actor: `user:<token-name>`, `user:oidc:<sub>`, `agent:<ns>/<run>`.
    pub fn actor(&self) -> Actor {
        match &self.subject {
            Subject::Token { name, .. } => Actor::user(name.clone()),
            Subject::Oidc { sub } => Actor::user(format!("oidc:{sub}")),
            Subject::Run { namespace, name } => Actor::agent(format!("{namespace}/{name}")),
        }
    }

    /// The subject the decision point sees: the user (token name or `oidc:<sub>`) with the role
    /// names granted in `namespace` or cluster-wide, or the agent of a run.
    pub fn policy_subject(&self, namespace: &str) -> agentplane_policy::Subject {
        let actor = self.actor();
        let mut roles: Vec<String> = self
            .grants
            .iter()
            .filter(|g| g.namespace.as_deref().is_none_or(|n| n == namespace))
            .map(|g| g.role.as_str().to_string())
            .collect();
        roles.sort();
        roles.dedup();
        let kind = match self.subject {
            Subject::Run { .. } => agentplane_policy::SubjectKind::Agent,
            _ => agentplane_policy::SubjectKind::User,
        };
        agentplane_policy::Subject { kind, id: actor.id, roles }
    }

    /// The rate-limit bucket.
    fn rate_key(&self) -> String {
        match &self.subject {
            Subject::Token { id, .. } => format!("token:{id}"),
            Subject::Oidc { sub } => format!("oidc:{sub}"),
            Subject::Run { namespace, name } => format!("run:{namespace}/{name}"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "authentication required"))
    }
}

/// The authentication state of a server.
#[derive(Debug)]
pub struct Auth {
    pub tokens: tokens::TokenCache,
    pub run_tokens: run_token::RunTokenKey,
    pub oidc: Option<oidc::OidcVerifier>,
    pub limiter: ratelimit::Limiter,
    pub metrics_public: bool,
}

impl Auth {
    pub fn new(config: &crate::config::AuthConfig, run_tokens: run_token::RunTokenKey) -> Result<Auth, String> {
        Ok(Auth {
            tokens: tokens::TokenCache::new(Duration::from_secs(config.token_cache_seconds)),
            run_tokens,
            oidc: config.oidc.clone().map(oidc::OidcVerifier::new).transpose()?,
            limiter: ratelimit::Limiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            metrics_public: config.metrics_public,
        })
    }

    /// Authenticate the bearer token of a request.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        headers: &axum::http::HeaderMap,
    ) -> Result<Principal, AuthFailure> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::malformed("more than one Authorization header"));
        }
        if value.len() > MAX_AUTHORIZATION_BYTES {
            return Err(AuthFailure::malformed(format!(
                "the Authorization header is {} bytes; the limit is {MAX_AUTHORIZATION_BYTES}",
                value.len()
            )));
        }
        let text = value.to_str().map_err(|_| AuthFailure::malformed("the Authorization header is not ASCII"))?;
        let (scheme, token) =
            text.split_once(' ').ok_or_else(|| AuthFailure::malformed("expected 'Bearer <token>'"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthFailure::malformed("expected 'Bearer <token>'"));
        }
        let token = token.trim();
        if token.is_empty() || token.contains(' ') {
            return Err(AuthFailure::malformed("expected 'Bearer <token>'"));
        }
        if token.starts_with(tokens::PREFIX) {
            let t = self.tokens.verify(store, token).await?;
            let role =
                rbac::Role::parse(&t.role).ok_or_else(|| AuthFailure::invalid("the token has an unknown role"))?;
            return Ok(Principal {
                subject: Subject::Token { id: t.id, name: t.name },
                grants: vec![Grant { role, namespace: t.namespace }],
            });
        }
        if token.starts_with(run_token::PREFIX) {
            return self.run_principal(store, token).await;
        }
        if token.split('.').count() == 3 {
            let Some(oidc) = &self.oidc else {
                return Err(AuthFailure::invalid("this server does not accept JWTs (auth.oidc is not configured)"));
            };
            let id = oidc.verify(token).await?;
            return Ok(Principal { subject: Subject::Oidc { sub: id.subject }, grants: id.grants });
        }
        Err(AuthFailure::malformed("the bearer token is neither an API token, a run token nor a JWT"))
    }

    async fn run_principal(&self, store: &dyn Store, token: &str) -> Result<Principal, AuthFailure> {
        let claims =
            self.run_tokens.verify(token).ok_or_else(|| AuthFailure::invalid("the run token does not verify"))?;
        let key = ObjectKey::new(agentplane_api::Kind::AgentRun, &claims.namespace, &claims.name);
        let run = match store.get(&key).await {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => return Err(AuthFailure::invalid("the run of this token no longer exists")),
            Err(e) => return Err(AuthFailure::Unavailable(e.to_string())),
        };
        let uid = run.pointer("/metadata/uid").and_then(|v| v.as_str()).unwrap_or_default();
        if uid != claims.uid {
            return Err(AuthFailure::invalid("the run of this token no longer exists"));
        }
        let phase = run.pointer("/status/phase").and_then(|v| serde_json::from_value::<RunPhase>(v.clone()).ok());
        if matches!(phase, Some(RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled)) {
            return Err(AuthFailure::invalid("the run of this token has ended"));
        }
        let current = run.pointer("/status/attempt").and_then(serde_json::Value::as_u64).unwrap_or(0);
        if u64::from(claims.attempt) < current {
            return Err(AuthFailure::invalid("the token belongs to an earlier attempt of the run"));
        }
        Ok(Principal { subject: Subject::Run { namespace: claims.namespace, name: claims.name }, grants: Vec::new() })
    }
}

fn forbidden(principal: &Principal, perm: Perm, scope: &Scope) -> Response {
    let row = perm.row();
    let roles: Vec<&str> = row.roles.iter().map(|r| r.as_str()).collect();
    let where_ = match scope {
        Scope::Cluster => "cluster-wide".to_string(),
        Scope::Namespace(ns) => format!("in namespace {ns:?} (or cluster-wide)"),
    };
    let msg = match &principal.subject {
        Subject::Run { namespace, name } => {
            format!("a run token may only read its own run ({namespace}/{name}), its logs and events")
        }
        _ => format!(
            "forbidden: {} ({} on {}) needs role {} {where_}",
            row.id,
            row.verbs,
            row.resource,
            roles.join(" or ")
        ),
    };
    let has: Vec<String> = principal
        .grants
        .iter()
        .map(|g| match &g.namespace {
            Some(ns) => format!("{ns}:{}", g.role),
            None => g.role.to_string(),
        })
        .collect();
    ApiError::new(ErrorCode::Forbidden, msg)
        .with_details(json!({"permission": row.id, "roles": roles, "scope": where_, "granted": has}))
        .into_response()
}

fn rate_limited(wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = ApiError::new(ErrorCode::RateLimited, format!("too many requests for this token; retry in {secs} s"))
        .with_details(json!({"retryAfterSeconds": secs}))
        .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// The middleware around every route.
pub async fn middleware(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return (
            StatusCode::URI_TOO_LONG,
            axum::Json(json!({"code": "InvalidRequest", "message": format!("the request target is {uri_len} bytes; the limit is {MAX_URI_BYTES}")})),
        )
            .into_response();
    }
    let access = rbac::classify(req.method(), req.uri().path(), st.auth.metrics_public);
    let Access::Protected { perm, scope, run } = access else { return next.run(req).await };
    let principal = match st.auth.authenticate(st.store.as_ref(), req.headers()).await {
        Ok(p) => p,
        Err(f) => return f.into_response(),
    };
    if let Err(wait) = st.auth.limiter.check(&principal.rate_key(), Instant::now()) {
        return rate_limited(wait);
    }
    let allowed = match &principal.subject {
        Subject::Run { namespace, name } => {
            matches!(perm, Perm::ResourcesRead | Perm::RunsLogs | Perm::RunsEvents)
                && run.as_ref().is_some_and(|(ns, n)| ns == namespace && n == name)
        }
        _ => rbac::permits(&principal.grants, perm, &scope),
    };
    if !allowed {
        return forbidden(&principal, perm, &scope);
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}
