//! Reading request bodies: a hard size limit (413 with a JSON error), JSON or YAML.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};

fn too_large(limit: usize, actual: Option<u64>) -> ApiError {
    let msg = match actual {
        Some(n) => format!("request body is {n} bytes; the limit is {limit} bytes (server setting max_body_bytes)"),
        None => format!("request body exceeds the limit of {limit} bytes (server setting max_body_bytes)"),
    };
    let mut details = serde_json::json!({ "limit": limit });
    if let Some(n) = actual {
        details["actual"] = n.into();
    }
    ApiError::new(ErrorCode::PayloadTooLarge, msg).with_details(details)
}

/// Read the whole body, refusing more than `limit` bytes, and parse one JSON or YAML document.
pub async fn read_document(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, ApiError> {
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large(limit, Some(len)));
    }
    let yaml = match headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => {
            let ct = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            match ct.as_str() {
                "application/json" => false,
                "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "" => true,
                other => {
                    return Err(ApiError::new(
                        ErrorCode::UnsupportedMediaType,
                        format!("content type {other:?} is not supported; send application/json or application/yaml"),
                    ));
                }
            }
        }
    };
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large(limit, None))?;
    parse_document(&bytes, yaml)
}

/// Parse one document. YAML is a superset of JSON, so YAML parsing accepts both.
pub fn parse_document(bytes: &[u8], yaml: bool) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("request body is empty; send one resource as JSON or YAML"));
    }
    if !yaml {
        return serde_json::from_slice(bytes).map_err(|e| {
            ApiError::invalid(format!("body is not valid JSON: {e} (line {}, column {})", e.line(), e.column()))
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ApiError::invalid(format!("body is not UTF-8: {e}")))?;
    let mut docs = serde_yaml::Deserializer::from_str(text);
    let Some(first) = docs.next() else {
        return Err(ApiError::invalid("request body is empty; send one resource as JSON or YAML"));
    };
    let value: Value = serde::Deserialize::deserialize(first).map_err(|e| yaml_error(&e))?;
    if let Some(next) = docs.next() {
        let extra: Result<Value, _> = serde::Deserialize::deserialize(next);
        if !matches!(extra, Ok(Value::Null)) {
            return Err(ApiError::invalid(
                "body holds more than one YAML document; send one resource per request (agentctl apply splits files for you)",
            ));
        }
    }
    Ok(value)
}

fn yaml_error(e: &serde_yaml::Error) -> ApiError {
    let msg = match e.location() {
        Some(l) => format!("body is not valid YAML at line {}, column {}: {e}", l.line(), l.column()),
        None => format!("body is not valid YAML: {e}"),
    };
    ApiError::invalid(msg)
}
