//! The one error type of the HTTP API: a stable code, an HTTP status, and a JSON body
//! `{code, message, field?, details?}`.

use agentplane_api::ValidationErrors;
use agentplane_store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

/// Stable error codes. They are part of the API (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    ValidationFailed,
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    Conflict,
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    PolicyDenied,
    RateLimited,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::ValidationFailed | ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Gone => StatusCode::GONE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PolicyDenied => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An API error. Its `message` says what failed and how to fix it; never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<Value>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), field: None, details: None }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> Self {
        let first = e.first().cloned();
        let message = match (&first, e.0.len()) {
            (Some(f), 1) => format!("{}: {}", f.field, f.message),
            (Some(f), n) => format!("{}: {} (and {} more errors)", f.field, f.message, n - 1),
            (None, _) => "invalid resource".to_string(),
        };
        ApiError {
            code: ErrorCode::ValidationFailed,
            message,
            field: first.map(|f| f.field),
            details: Some(Box::new(json!({ "errors": e.0 }))),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound(key) => ApiError::new(ErrorCode::NotFound, message)
                .with_details(json!({"kind": key.kind.as_str(), "namespace": key.namespace, "name": key.name})),
            StoreError::AlreadyExists(key) => ApiError::new(ErrorCode::AlreadyExists, message)
                .with_details(json!({"kind": key.kind.as_str(), "namespace": key.namespace, "name": key.name})),
            StoreError::IdempotencyKeyInUse { existing, idempotency_key } => ApiError::new(ErrorCode::Conflict, message)
                .with_field("spec.idempotencyKey")
                .with_details(json!({"idempotencyKey": idempotency_key, "existing": {"kind": existing.kind.as_str(), "namespace": existing.namespace, "name": existing.name}})),
            StoreError::Conflict { expected, actual, .. } => ApiError::new(ErrorCode::Conflict, message)
                .with_field("metadata.resourceVersion")
                .with_details(json!({"expected": expected.to_string(), "actual": actual.to_string()})),
            StoreError::Expired { requested, oldest } => ApiError::new(ErrorCode::Gone, message)
                .with_field("resourceVersion")
                .with_details(json!({"requested": requested.to_string(), "oldest": oldest.to_string()})),
            StoreError::InvalidContinueToken(_) => {
                ApiError::new(ErrorCode::InvalidRequest, message).with_field("continue")
            }
            StoreError::TokenNotFound(name) => {
                ApiError::new(ErrorCode::NotFound, message).with_details(json!({"kind": "Token", "name": name}))
            }
            StoreError::TokenExists(name) => {
                ApiError::new(ErrorCode::AlreadyExists, message).with_details(json!({"kind": "Token", "name": name}))
            }
            StoreError::InvalidObject(_) => ApiError::new(ErrorCode::InvalidRequest, message),
            StoreError::Fenced { .. } => {
                tracing::warn!(error = %message, "fenced write");
                ApiError::new(ErrorCode::Unavailable, "this server no longer leads; retry later")
            }
            StoreError::Unavailable { .. } | StoreError::Closed => {
                tracing::error!(error = %message, "store unavailable");
                ApiError::new(ErrorCode::Unavailable, "the store is unavailable; retry later")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        (status, axum::Json(self)).into_response()
    }
}
