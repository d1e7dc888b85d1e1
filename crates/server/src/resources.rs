//! Admission and the resource endpoints: create, apply, get, list, watch, delete for every kind.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::selector::{FieldSelector, LabelSelector};
pub use agentplane_api::wire::{APPLY_RESULT_HEADER, ApplyResult};
use agentplane_api::{API_VERSION, AnyResource, FieldError, Kind, Reason, ValidationErrors, decode};
use agentplane_ledger::actions;
use agentplane_store::{
    Actor, ListQuery, ObjectKey, Precondition, Revision, Store, StoreError, WatchQuery, parse_revision, resource_audit,
    revision_of,
};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::AppState;
use crate::admission::AdmissionCache;
use crate::auth::Principal;
use crate::body::read_document;
use crate::error::{ApiError, ErrorCode};

/// The annotation recording who submitted an AgentRun (`user:alice`, `user:oidc:<sub>`,
/// `agent:<ns>/<run>`). Set by the server on create; a client cannot set or change it.
pub const SUBMITTED_BY: &str = "agentplane.io/submitted-by";

/// Set `metadata.annotations["agentplane.io/submitted-by"]` of a new run to `actor`.
fn stamp_submitter(obj: &mut Value, actor: &Actor) {
    if obj.get("kind").and_then(Value::as_str) != Some(Kind::AgentRun.as_str()) {
        return;
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let ann = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = ann.as_object_mut() {
            a.insert(SUBMITTED_BY.into(), Value::String(crate::runs::actor_label(actor)));
        }
    }
}

/// Drop a client-supplied submitted-by annotation (only the server writes it).
fn strip_submitter(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut)
    {
        a.remove(SUBMITTED_BY);
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
}

pub(crate) fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    Kind::from_plural(plural).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no resource type {plural:?}; served: {}",
                Kind::ALL.iter().map(|k| k.plural()).collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

fn path_err(e: PathRejection) -> ApiError {
    ApiError::invalid(format!("bad path: {e}"))
}

fn query_err(e: QueryRejection) -> ApiError {
    ApiError::invalid(format!("bad query string: {e}"))
}

fn field_err(field: &str, reason: Reason, message: String) -> ApiError {
    ApiError::from(ValidationErrors::one(FieldError::new(field, reason, message)))
}

/// Decode, check against the URL, default and validate one document. The result is ready to
/// store: status dropped, server-owned metadata cleared.
pub fn admit(kind: Kind, namespace: &str, url_name: Option<&str>, mut value: Value) -> Result<AnyResource, ApiError> {
    if let Some(obj) = value.as_object_mut() {
        match obj.get("kind").and_then(Value::as_str) {
            None if !obj.contains_key("kind") => {
                obj.insert("kind".into(), json!(kind.as_str()));
            }
            Some(k) if k != kind.as_str() && Kind::from_manifest(k).is_some() => {
                return Err(field_err(
                    "kind",
                    Reason::InvalidValue,
                    format!("the body is a {k} but the URL is for {}", kind.plural()),
                ));
            }
            _ => {}
        }
        if !obj.contains_key("apiVersion") {
            obj.insert("apiVersion".into(), json!(API_VERSION));
        }
    }
    let mut res = decode(value)?;
    {
        let meta = res.meta_mut();
        match meta.namespace.as_deref() {
            None | Some("") => meta.namespace = Some(namespace.to_string()),
            Some(ns) if ns != namespace => {
                return Err(field_err(
                    "metadata.namespace",
                    Reason::NamespaceMismatch,
                    format!("metadata.namespace is {ns:?} but the URL names namespace {namespace:?}"),
                ));
            }
            Some(_) => {}
        }
        if let Some(name) = url_name {
            if meta.name.is_empty() {
                meta.name = name.to_string();
            } else if meta.name != name {
                return Err(field_err(
                    "metadata.name",
                    Reason::InvalidValue,
                    format!("metadata.name is {:?} but the URL names {name:?}", meta.name),
                ));
            }
        }
        meta.uid = None;
        meta.generation = None;
        meta.creation_timestamp = None;
    }
    let mut res = res.default_and_validate()?;
    if let AnyResource::Policy(policy) = &res {
        check_policy(policy)?;
    }
    res.clear_status();
    Ok(res)
}

/// Compile an enabled Policy's Rego modules (and evaluate them once on a sample input), so that a
/// module that does not parse is rejected on apply with its line, not found when a call is decided.
fn check_policy(policy: &agentplane_api::Policy) -> Result<(), ApiError> {
    if !policy.spec.enabled {
        return Ok(());
    }
    match agentplane_policy::RegoPolicy::from_resource(policy) {
        Ok(_) => Ok(()),
        Err(e) => {
            let field = e.field_path().unwrap_or_else(|| "spec.modules".to_owned());
            Err(field_err(&field, Reason::InvalidPolicy, format!("{e}; fix the Rego module and apply again")))
        }
    }
}

/// Create-or-update one admitted resource. With `cas`, a compare-and-swap update of an existing
/// object; without, an upsert that reports created / configured / unchanged.
pub async fn apply(
    store: &dyn Store,
    cache: &AdmissionCache,
    res: &AnyResource,
    cas: Option<Revision>,
    actor: &Actor,
    subject: &agentplane_policy::Subject,
) -> Result<(ApplyResult, Value), ApiError> {
    let updated = || resource_audit(actor.clone(), actions::RESOURCE_UPDATED);
    let (ns, name) = res.key();
    let key = ObjectKey::new(res.kind(), ns, name);
    // Runs are admitted (defaults from their Agent) before comparing, so that re-applying the
    // same manifest is "unchanged".
    let admitted = new_object(store, cache, res, subject).await?;
    let mut desired = admitted.clone();
    strip_server_meta(&mut desired);
    if let Some(rv) = cas {
        let existing = store.get(&key).await?;
        check_immutable(&existing, &desired)?;
        if revision_of(&existing) == Some(rv) && same_desired_state(&existing, &desired) {
            // Nothing to change: do not write (a write would bump the version for nothing).
            return Ok((ApplyResult::Unchanged, existing));
        }
        let next = merged(&existing, &desired);
        let stored = store.update(next, Precondition::ResourceVersion(rv), updated()).await?;
        return Ok((changed_or_not(&existing, &stored), stored));
    }
    // Upsert. Races with other writers are resolved by retrying on AlreadyExists / Conflict.
    let mut last_err = None;
    for _ in 0..8 {
        match store.get(&key).await {
            Err(StoreError::NotFound(_)) => {
                let mut obj = admitted.clone();
                stamp_submitter(&mut obj, actor);
                match store.create(obj, resource_audit(actor.clone(), actions::RESOURCE_CREATED)).await {
                    Ok(stored) => return Ok((ApplyResult::Created, stored)),
                    Err(e @ StoreError::AlreadyExists(_)) => last_err = Some(e),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
            Ok(existing) => {
                check_immutable(&existing, &desired)?;
                if same_desired_state(&existing, &desired) {
                    return Ok((ApplyResult::Unchanged, existing));
                }
                let rv = revision_of(&existing).unwrap_or_default();
                match store.update(merged(&existing, &desired), Precondition::ResourceVersion(rv), updated()).await {
                    Ok(stored) => return Ok((ApplyResult::Configured, stored)),
                    Err(e @ StoreError::Conflict { .. }) => last_err = Some(e),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(last_err
        .map(ApiError::from)
        .unwrap_or_else(|| ApiError::new(ErrorCode::Conflict, "apply kept conflicting; retry")))
}

fn changed_or_not(before: &Value, after: &Value) -> ApplyResult {
    if same_desired_state(before, after) { ApplyResult::Unchanged } else { ApplyResult::Configured }
}

/// The object to create for `res`: admitted (runs get references resolved, defaults and their
/// initial status), server-owned metadata cleared.
async fn new_object(
    store: &dyn Store,
    cache: &AdmissionCache,
    res: &AnyResource,
    subject: &agentplane_policy::Subject,
) -> Result<Value, ApiError> {
    let mut res = res.clone();
    crate::admission::admit_new(store, cache, &mut res, subject).await?;
    let mut obj = res.to_value();
    strip_server_meta_keep_status(&mut obj);
    strip_submitter(&mut obj);
    Ok(obj)
}

fn strip_server_meta_keep_status(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["uid", "resourceVersion", "generation", "creationTimestamp"] {
            m.remove(k);
        }
    }
}

fn strip_server_meta(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["uid", "resourceVersion", "generation", "creationTimestamp"] {
            m.remove(k);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
}

fn user_part(v: &Value) -> (Option<&Value>, Option<&Value>, Option<&Value>) {
    (v.get("spec"), v.pointer("/metadata/labels"), v.pointer("/metadata/annotations"))
}

fn same_desired_state(existing: &Value, desired: &Value) -> bool {
    let (mut a, mut b) = (existing.clone(), desired.clone());
    strip_submitter(&mut a);
    strip_submitter(&mut b);
    user_part(&a) == user_part(&b)
}

/// `spec.idempotencyKey` never changes after create.
fn check_immutable(existing: &Value, desired: &Value) -> Result<(), ApiError> {
    let before = existing.pointer("/spec/idempotencyKey");
    let after = desired.pointer("/spec/idempotencyKey");
    if before.is_some() && before != after {
        return Err(field_err(
            "spec.idempotencyKey",
            Reason::InvalidValue,
            "spec.idempotencyKey cannot change after the run is created".into(),
        ));
    }
    Ok(())
}

/// The existing object with the desired spec, labels and annotations; status and server-owned
/// metadata kept.
fn merged(existing: &Value, desired: &Value) -> Value {
    let mut next = existing.clone();
    if let (Some(n), Some(d)) = (next.as_object_mut(), desired.as_object()) {
        n.insert("spec".into(), d.get("spec").cloned().unwrap_or(Value::Null));
        if let Some(meta) = n.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in ["labels", "annotations"] {
                match desired.pointer(&format!("/metadata/{k}")) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
        }
        // Who submitted a run never changes.
        strip_submitter(&mut next);
        if let Some(by) = existing.pointer(&format!("/metadata/annotations/{}", SUBMITTED_BY.replace('/', "~1")))
            && let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut)
            && let Some(a) = meta.entry("annotations").or_insert_with(|| json!({})).as_object_mut()
        {
            a.insert(SUBMITTED_BY.into(), by.clone());
        }
    }
    next
}

// ---------------------------------------------------------------------------------------------
// Handlers

pub async fn create(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((ns, plural)) = path.map_err(path_err)?;
    let kind = kind_of(&plural)?;
    check_namespace(&ns)?;
    let mut doc = read_document(&headers, body, st.config.max_body_bytes).await?;
    if kind == Kind::AgentRun {
        apply_idempotency_header(&headers, &mut doc)?;
    }
    let mut res = admit(kind, &ns, None, doc)?;
    crate::sandbox::check_limits(&st.config.sandbox, &res)?;
    if let Err(e) =
        crate::admission::admit_new(st.store.as_ref(), &st.admission_cache, &mut res, &principal.policy_subject(&ns))
            .await
    {
        let name = res.meta().name.clone();
        crate::admission::record_denied(st.store.as_ref(), &principal.actor(), &ns, &name, &e).await;
        return Err(e);
    }
    let mut obj = res.to_value();
    strip_server_meta_keep_status(&mut obj);
    let actor = principal.actor();
    strip_submitter(&mut obj);
    stamp_submitter(&mut obj, &actor);
    let desired_spec = obj.get("spec").cloned();
    let action = if kind == Kind::AgentRun { actions::RUN_SUBMITTED } else { actions::RESOURCE_CREATED };
    let created = st.store.create(obj, resource_audit(actor.clone(), action)).await;
    if let Ok(v) = &created
        && let Ok(key) = ObjectKey::of(v)
    {
        st.admission_cache.invalidate(&key);
    }
    match created {
        Ok(stored) => {
            // A run that needs an approval to start gets its Approval now.
            let stored = if kind == Kind::AgentRun {
                crate::approvals::request_for_run(&st, stored, &actor).await
            } else {
                stored
            };
            Ok((StatusCode::CREATED, Json(stored)).into_response())
        }
        Err(StoreError::IdempotencyKeyInUse { existing, idempotency_key }) => {
            // The same key with the same spec is a retry: answer the run that exists. With a
            // different spec it is a conflict.
            let current = match st.store.get(&existing).await {
                Ok(v) => v,
                Err(StoreError::NotFound(_)) => {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the run holding this idempotency key was just deleted; retry",
                    )
                    .with_field("spec.idempotencyKey"));
                }
                Err(e) => return Err(e.into()),
            };
            if current.get("spec") == desired_spec.as_ref() {
                let mut body = current;
                if let Some(o) = body.as_object_mut() {
                    o.insert("idempotent".into(), Value::Bool(true));
                }
                let mut resp = (StatusCode::OK, Json(body)).into_response();
                resp.headers_mut().insert(IDEMPOTENT_HEADER, HeaderValue::from_static("true"));
                Ok(resp)
            } else {
                Err(StoreError::IdempotencyKeyInUse { existing, idempotency_key }.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Header on a create answered from an existing run with the same idempotency key.
pub const IDEMPOTENT_HEADER: &str = "x-agentplane-idempotent";

/// `Idempotency-Key: K` sets `spec.idempotencyKey` (it must agree with the body's if both are
/// given).
fn apply_idempotency_header(headers: &HeaderMap, doc: &mut Value) -> Result<(), ApiError> {
    let Some(h) = headers.get("idempotency-key") else { return Ok(()) };
    let key = h.to_str().ok().map(str::trim).filter(|k| !k.is_empty()).ok_or_else(|| {
        ApiError::invalid("the Idempotency-Key header must be non-empty text").with_field("spec.idempotencyKey")
    })?;
    let Some(spec) = doc.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    match spec.get("idempotencyKey").and_then(Value::as_str) {
        Some(existing) if existing != key => Err(field_err(
            "spec.idempotencyKey",
            Reason::InvalidValue,
            format!("spec.idempotencyKey is {existing:?} but the Idempotency-Key header is {key:?}"),
        )),
        _ => {
            spec.insert("idempotencyKey".into(), Value::String(key.to_string()));
            Ok(())
        }
    }
}

pub async fn put(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((ns, plural, name)) = path.map_err(path_err)?;
    let kind = kind_of(&plural)?;
    check_namespace(&ns)?;
    let doc = read_document(&headers, body, st.config.max_body_bytes).await?;
    let cas = match doc.pointer("/metadata/resourceVersion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(parse_revision(s).ok_or_else(|| {
            field_err("metadata.resourceVersion", Reason::InvalidValue, format!("{s:?} is not a resourceVersion"))
        })?),
        Some(_) => {
            return Err(field_err(
                "metadata.resourceVersion",
                Reason::InvalidType,
                "resourceVersion must be a string".into(),
            ));
        }
    };
    let res = admit(kind, &ns, Some(&name), doc)?;
    crate::sandbox::check_limits(&st.config.sandbox, &res)?;
    let subject = principal.policy_subject(&ns);
    let applied = apply(st.store.as_ref(), &st.admission_cache, &res, cas, &principal.actor(), &subject).await;
    if let Err(e) = &applied {
        crate::admission::record_denied(st.store.as_ref(), &principal.actor(), &ns, &name, e).await;
    }
    st.admission_cache.invalidate(&ObjectKey::new(kind, ns.clone(), name.clone()));
    let (result, stored) = applied?;
    let stored = if kind == Kind::AgentRun && result == ApplyResult::Created {
        crate::approvals::request_for_run(&st, stored, &principal.actor()).await
    } else {
        stored
    };
    let status = if result == ApplyResult::Created { StatusCode::CREATED } else { StatusCode::OK };
    let mut resp = (status, Json(stored)).into_response();
    resp.headers_mut().insert(APPLY_RESULT_HEADER, HeaderValue::from_static(result.as_str()));
    Ok(resp)
}

pub async fn get_one(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((ns, plural, name)) = path.map_err(path_err)?;
    let kind = kind_of(&plural)?;
    let obj = st.store.get(&ObjectKey::new(kind, ns, name)).await?;
    Ok(Json(obj).into_response())
}

pub async fn delete(
    State(st): State<Arc<AppState>>,
    principal: Principal,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((ns, plural, name)) = path.map_err(path_err)?;
    let Query(q) = query.map_err(query_err)?;
    let kind = kind_of(&plural)?;
    let mut pre = Precondition::None;
    for (k, v) in &q {
        match k.as_str() {
            "resourceVersion" => {
                pre = Precondition::ResourceVersion(parse_revision(v).ok_or_else(|| {
                    ApiError::invalid(format!("resourceVersion={v:?} is not a resourceVersion"))
                        .with_field("resourceVersion")
                })?)
            }
            other => {
                return Err(ApiError::invalid(format!("unknown query parameter {other:?}; known: resourceVersion")));
            }
        }
    }
    let audit = resource_audit(principal.actor(), actions::RESOURCE_DELETED);
    let key = ObjectKey::new(kind, ns, name);
    let deleted = st.store.delete(&key, pre, audit).await;
    st.admission_cache.invalidate(&key);
    let obj = deleted?;
    Ok(Json(obj).into_response())
}

fn check_namespace(ns: &str) -> Result<(), ApiError> {
    match agentplane_api::validate_name("metadata.namespace", ns) {
        Some(e) => Err(ValidationErrors::one(e).into()),
        None => Ok(()),
    }
}

/// Query parameters of list and watch.
#[derive(Debug, Default)]
struct ListParams {
    labels: LabelSelector,
    fields: FieldSelector,
    limit: Option<usize>,
    continue_token: Option<String>,
    watch: bool,
    resource_version: Option<Revision>,
}

const LIST_PARAMS: &str = "labelSelector, fieldSelector, limit, continue, watch, resourceVersion";

fn parse_list_params(q: &BTreeMap<String, String>, headers: &HeaderMap) -> Result<ListParams, ApiError> {
    let mut p = ListParams::default();
    for (k, v) in q {
        match k.as_str() {
            "labelSelector" => {
                p.labels =
                    LabelSelector::parse(v).map_err(|e| ApiError::invalid(e.to_string()).with_field("labelSelector"))?
            }
            "fieldSelector" => {
                p.fields =
                    FieldSelector::parse(v).map_err(|e| ApiError::invalid(e.to_string()).with_field("fieldSelector"))?
            }
            "limit" => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::invalid(format!("limit={v:?} is not a positive number")).with_field("limit")
                })?;
                if n == 0 || n > agentplane_store::MAX_LIST_LIMIT {
                    return Err(ApiError::invalid(format!(
                        "limit={n} is out of range; use 1 to {}",
                        agentplane_store::MAX_LIST_LIMIT
                    ))
                    .with_field("limit")
                    .with_details(json!({"limit": agentplane_store::MAX_LIST_LIMIT, "actual": n})));
                }
                p.limit = Some(n);
            }
            "continue" => p.continue_token = Some(v.clone()).filter(|s| !s.is_empty()),
            "watch" => p.watch = matches!(v.as_str(), "true" | "1" | ""),
            "resourceVersion" => {
                p.resource_version = Some(parse_revision(v).ok_or_else(|| {
                    ApiError::invalid(format!("resourceVersion={v:?} is not a resourceVersion"))
                        .with_field("resourceVersion")
                })?)
            }
            other => return Err(ApiError::invalid(format!("unknown query parameter {other:?}; known: {LIST_PARAMS}"))),
        }
    }
    if p.watch
        && p.resource_version.is_none()
        && let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
    {
        p.resource_version = parse_revision(id);
    }
    Ok(p)
}

pub async fn list_namespaced(
    State(st): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((ns, plural)) = path.map_err(path_err)?;
    let Query(q) = query.map_err(query_err)?;
    list_or_watch(st, kind_of(&plural)?, Some(ns), parse_list_params(&q, &headers)?).await
}

pub async fn list_all(
    State(st): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(plural) = path.map_err(path_err)?;
    let Query(q) = query.map_err(query_err)?;
    list_or_watch(st, kind_of(&plural)?, None, parse_list_params(&q, &headers)?).await
}

async fn list_or_watch(st: Arc<AppState>, kind: Kind, ns: Option<String>, p: ListParams) -> Result<Response, ApiError> {
    if p.watch {
        return watch(st, kind, ns, p).await;
    }
    let query = ListQuery {
        kind,
        namespace: ns,
        labels: p.labels,
        fields: p.fields,
        limit: p.limit,
        continue_token: p.continue_token,
    };
    let page = st.store.list(&query).await?;
    let mut meta = json!({ "resourceVersion": page.revision.to_string() });
    if let Some(c) = page.continue_token {
        meta["continue"] = json!(c);
    }
    Ok(Json(json!({
        "apiVersion": API_VERSION,
        "kind": format!("{}List", kind.as_str()),
        "metadata": meta,
        "items": page.items,
    }))
    .into_response())
}

fn sse_event(type_: &str, id: Option<Revision>, data: &Value) -> Event {
    let mut ev = Event::default().event(type_).data(data.to_string());
    if let Some(id) = id {
        ev = ev.id(id.to_string());
    }
    ev
}

/// `?watch=true`: server-sent events. Without `resourceVersion` the current objects come first as
/// `ADDED`, then a `BOOKMARK` carrying the revision they were read at; then every change in
/// revision order, each with `id:` set to its revision so a client can resume with
/// `Last-Event-ID` or `resourceVersion`.
async fn watch(st: Arc<AppState>, kind: Kind, ns: Option<String>, p: ListParams) -> Result<Response, ApiError> {
    let mut initial: Vec<Event> = Vec::new();
    let from = match p.resource_version {
        Some(rv) => rv,
        None => {
            let mut q = ListQuery {
                kind,
                namespace: ns.clone(),
                labels: p.labels.clone(),
                fields: p.fields.clone(),
                limit: Some(agentplane_store::MAX_LIST_LIMIT),
                continue_token: None,
            };
            let mut revision = None;
            loop {
                let page = st.store.list(&q).await?;
                let rev = *revision.get_or_insert(page.revision);
                for item in page.items {
                    initial.push(sse_event("ADDED", None, &json!({"type": "ADDED", "object": item})));
                }
                match page.continue_token {
                    Some(c) => q.continue_token = Some(c),
                    None => break rev,
                }
            }
        }
    };
    if p.resource_version.is_none() {
        initial.push(sse_event("BOOKMARK", Some(from), &json!({"type": "BOOKMARK", "revision": from.to_string()})));
    }
    let stream = st
        .store
        .watch(WatchQuery { kind: Some(kind), namespace: ns, from_revision: from, labels: p.labels, fields: p.fields })
        .await?;
    let live = stream
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            let ev = match item {
                Ok(ev) => {
                    let t = ev.type_.as_str();
                    sse_event(t, Some(ev.revision), &json!({"type": t, "object": ev.object}))
                }
                Err(e) => {
                    *failed = true;
                    let err = ApiError::from(e);
                    sse_event("ERROR", None, &json!({"type": "ERROR", "error": err}))
                }
            };
            futures::future::ready(Some(ev))
        })
        .map(Ok::<Event, Infallible>);
    let mut shutdown = st.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let all = futures::stream::iter(initial.into_iter().map(Ok)).chain(live).take_until(stopped);
    Ok(sse(all))
}

fn sse<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
