#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The custom adapter against small HTTP servers: one that implements the protocol, one that
//! answers 500, one that answers garbage, one that never answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentplane_api::{AgentProviderSpec, RunPhase};
use agentplane_runtime::{CustomAdapter, ErrorKind, RunSpec, RuntimeAdapter, RuntimeRef, SecretValue, StatusReason};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Runner {
    /// ref → (phase, submitted body)
    runs: Arc<Mutex<HashMap<String, (String, Value)>>>,
    /// idempotency key → ref
    keys: Arc<Mutex<HashMap<String, String>>>,
}

async fn submit(State(s): State<Runner>, Json(body): Json<Value>) -> impl IntoResponse {
    let key = body["idempotencyKey"].as_str().unwrap_or_default().to_string();
    let mut keys = s.keys.lock().unwrap();
    let r = keys.entry(key).or_insert_with(|| format!("run-{}", s.runs.lock().unwrap().len() + 1)).clone();
    s.runs.lock().unwrap().entry(r.clone()).or_insert_with(|| ("Running".into(), body));
    Json(json!({"ref": r}))
}

async fn status(State(s): State<Runner>, Path(r): Path<String>) -> axum::response::Response {
    match s.runs.lock().unwrap().get(&r) {
        None => (StatusCode::NOT_FOUND, "no such run").into_response(),
        Some((phase, _)) if phase == "Cancelled" => {
            Json(json!({"phase": "Cancelled", "reason": "Cancelled", "message": "cancelled by request"}))
                .into_response()
        }
        Some((phase, _)) => Json(json!({"phase": phase, "startedAt": "2026-01-01T00:00:00Z"})).into_response(),
    }
}

async fn cancel(State(s): State<Runner>, Path(r): Path<String>) -> StatusCode {
    match s.runs.lock().unwrap().get_mut(&r) {
        None => StatusCode::NOT_FOUND,
        Some((phase, _)) => {
            *phase = "Cancelled".into();
            StatusCode::NO_CONTENT
        }
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v1")
}

fn run_spec() -> RunSpec {
    let mut s =
        RunSpec::new("team-a", "r1", "uid-1", AgentProviderSpec { binary: "agent".into(), ..Default::default() });
    s.secrets.insert("tok".into(), SecretValue::new("s3cr3t"));
    s.parameters.insert("branch".into(), "main".into());
    s
}

fn v1(router: Router) -> Router {
    Router::new().nest("/v1", router)
}

#[tokio::test]
async fn implements_the_contract() {
    let state = Runner::default();
    let router = v1(Router::new()
        .route("/runs", post(submit))
        .route("/runs/{r}", get(status))
        .route("/runs/{r}/cancel", post(cancel))
        .with_state(state.clone()));
    let a = CustomAdapter::new(&serve(router).await).unwrap();
    assert_eq!(a.name(), "custom");
    let spec = run_spec();
    let r = a.submit(&spec).await.unwrap();
    assert_eq!(a.submit(&spec).await.unwrap(), r, "same uid and attempt, same ref");
    assert_eq!(state.runs.lock().unwrap().len(), 1);

    let body = state.runs.lock().unwrap()[r.as_str()].1.clone();
    assert_eq!(body["run"]["name"], "r1");
    assert_eq!(body["run"]["namespace"], "team-a");
    assert_eq!(body["attempt"], 1);
    assert_eq!(body["provider"]["binary"], "agent");
    assert_eq!(body["parameters"]["branch"], "main");
    assert_eq!(body["secrets"]["tok"], "s3cr3t");
    assert_eq!(body["idempotencyKey"], "uid-1/1");

    let st = a.status(&r).await.unwrap();
    assert_eq!(st.phase, RunPhase::Running);
    assert!(st.started_at.is_some());
    a.cancel(&r).await.unwrap();
    let st = a.status(&r).await.unwrap();
    assert_eq!((st.phase, st.reason), (RunPhase::Cancelled, Some(StatusReason::Cancelled)));

    let missing = RuntimeRef("nope/with slash".into());
    let e = a.status(&missing).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(!e.retryable());
    assert_eq!(a.cancel(&missing).await.unwrap_err().kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn server_error_is_unavailable_and_retryable() {
    let long = "x".repeat(1000);
    let body = long.clone();
    let router = v1(Router::new().fallback(move || {
        let b = body.clone();
        async move { (StatusCode::INTERNAL_SERVER_ERROR, b) }
    }));
    let a = CustomAdapter::new(&serve(router).await).unwrap();
    let e = a.submit(&run_spec()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.retryable());
    assert!(e.message.contains("HTTP 500"), "{e}");
    assert!(e.message.contains(&long[..200]) && !e.message.contains(&long[..201]), "{e}");
    let e = a.status(&RuntimeRef("r".into())).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::Unavailable, true));
    assert!(!e.message.contains("s3cr3t"));
}

#[tokio::test]
async fn garbage_is_a_clear_error() {
    let router = v1(Router::new().fallback(|| async { "<html>surprise</html>" }));
    let a = CustomAdapter::new(&serve(router).await).unwrap();
    let e = a.submit(&run_spec()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SubmitFailed);
    assert!(e.retryable());
    assert!(e.message.contains("<html>surprise</html>"), "{e}");
    let e = a.status(&RuntimeRef("r".into())).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("<html>surprise"), "{e}");
    // Cancel only looks at the status code.
    a.cancel(&RuntimeRef("r".into())).await.unwrap();
}

#[tokio::test]
async fn bad_request_is_invalid_spec() {
    let router = v1(Router::new().fallback(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "missing field run") }));
    let a = CustomAdapter::new(&serve(router).await).unwrap();
    let e = a.submit(&run_spec()).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::InvalidSpec, false));
    assert!(e.message.contains("missing field run"));
}

#[tokio::test]
async fn unreachable_and_silent_endpoints() {
    // Nothing listens on a port we bound and released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let a = CustomAdapter::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let e = a.submit(&run_spec()).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::Unavailable, true), "{e}");

    let router = v1(Router::new().fallback(std::future::pending::<&'static str>));
    let a =
        CustomAdapter::with_timeouts(&serve(router).await, Duration::from_secs(5), Duration::from_millis(200)).unwrap();
    let e = a.status(&RuntimeRef("r".into())).await.unwrap_err();
    assert_eq!((e.kind, e.retryable), (ErrorKind::Timeout, true), "{e}");
}

/// An endpoint that answers every request with `code` and `body`.
async fn answering(code: u16, body: String) -> CustomAdapter {
    let code = StatusCode::from_u16(code).unwrap();
    let router = v1(Router::new().fallback(move || {
        let b = body.clone();
        async move { (code, [("content-type", "application/json")], b) }
    }));
    CustomAdapter::new(&serve(router).await).unwrap()
}

#[tokio::test]
async fn bad_answers_are_normalised_errors() {
    let huge = format!("{{\"ref\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    // (code, body, submit → (kind, retryable), status → (kind, retryable), message must contain)
    type Case = (u16, String, (ErrorKind, bool), (ErrorKind, bool), &'static str);
    let cases: Vec<Case> = vec![
        (500, "boom".into(), (ErrorKind::Unavailable, true), (ErrorKind::Unavailable, true), "HTTP 500: boom"),
        (503, "later".into(), (ErrorKind::Unavailable, true), (ErrorKind::Unavailable, true), "HTTP 503"),
        (429, "slow down".into(), (ErrorKind::Unavailable, true), (ErrorKind::Unavailable, true), "HTTP 429"),
        (504, "".into(), (ErrorKind::Timeout, true), (ErrorKind::Timeout, true), "HTTP 504"),
        (403, "no".into(), (ErrorKind::SubmitFailed, false), (ErrorKind::Unavailable, false), "HTTP 403: no"),
        (200, "not json at all".into(), (ErrorKind::SubmitFailed, true), (ErrorKind::Unavailable, true), "not json"),
        (
            200,
            r#"{"id": "x"}"#.into(),
            (ErrorKind::SubmitFailed, true),
            (ErrorKind::Unavailable, true),
            "missing field",
        ),
        (
            200,
            r#"{"ref": 5, "phase": 5}"#.into(),
            (ErrorKind::SubmitFailed, true),
            (ErrorKind::Unavailable, true),
            r#"body starts: {"ref": 5"#,
        ),
        (200, r#"{"phase": "Bogus"}"#.into(), (ErrorKind::SubmitFailed, true), (ErrorKind::Unavailable, true), "Bogus"),
        (200, huge, (ErrorKind::SubmitFailed, true), (ErrorKind::Unavailable, true), "larger than 1048576 bytes"),
    ];
    for (code, body, on_submit, on_status, needle) in cases {
        let a = answering(code, body.clone()).await;
        let e = a.submit(&run_spec()).await.unwrap_err();
        assert_eq!((e.kind, e.retryable()), on_submit, "submit, {code} {:.40}: {e}", body);
        assert!(e.message.contains(needle), "submit {code}: {e}");
        assert!(!e.message.contains("s3cr3t"), "{e}");
        assert!(e.message.len() < 1000, "the message carries an excerpt, not the body: {}", e.message.len());
        let e = a.status(&RuntimeRef("r-1".into())).await.unwrap_err();
        assert_eq!((e.kind, e.retryable()), on_status, "status, {code} {:.40}: {e}", body);
        assert!(e.message.contains(needle), "status {code}: {e}");
    }
}

#[tokio::test]
async fn empty_ref_is_refused() {
    let a = answering(200, r#"{"ref": ""}"#.into()).await;
    let e = a.submit(&run_spec()).await.unwrap_err();
    assert_eq!((e.kind, e.retryable()), (ErrorKind::SubmitFailed, true));
    assert!(e.message.contains("empty ref"), "{e}");
}

#[tokio::test]
async fn the_custom_adapter_has_no_notifications() {
    let a = answering(200, "{}".into()).await;
    assert!(a.subscribe().is_none());
}
