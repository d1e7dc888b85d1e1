//! The custom adapter: the adapter contract over HTTP JSON, so a team can plug in its own runner.
//! The wire contract is specified in `docs/runtime.md` ("Custom runtime protocol").

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::RuntimeAdapter;
use crate::error::{ErrorKind, RuntimeError};
use crate::spec::{RunSpec, RuntimeRef, RuntimeStatus};

/// How much of an unexpected response body goes into an error message.
const BODY_EXCERPT_CHARS: usize = 200;
/// The largest answer read from the endpoint; a longer one is an error (never buffered whole).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The body of `POST {base}/runs`: the [`RunSpec`] fields plus the secret values and an
/// idempotency key (`<uid>/<attempt>`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SubmitRequest<'a> {
    #[serde(flatten)]
    spec: &'a RunSpec,
    secrets: BTreeMap<&'a str, &'a str>,
    /// The run-scoped API token (`AGENTPLANE_TOKEN` for the agent), when the control plane
    /// minted one.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    idempotency_key: String,
}

#[derive(Debug, Deserialize)]
struct SubmitResponse {
    #[serde(rename = "ref")]
    ref_: String,
}

/// Talks to a runner that implements the custom runtime protocol. The endpoint receives secret
/// values: it must be trusted, and should be reached over HTTPS (through a TLS-terminating proxy
/// in front of it or on a loopback/private link: this build's HTTP client speaks plain HTTP).
#[derive(Debug, Clone)]
pub struct CustomAdapter {
    base: Url,
    client: reqwest::Client,
}

impl CustomAdapter {
    /// An adapter for `base_url` (e.g. `http://runner.internal:8080/v1`) with a 5 s connect and a
    /// 30 s request timeout.
    pub fn new(base_url: &str) -> Result<Self, RuntimeError> {
        Self::with_timeouts(base_url, Duration::from_secs(5), Duration::from_secs(30))
    }

    pub fn with_timeouts(base_url: &str, connect: Duration, request: Duration) -> Result<Self, RuntimeError> {
        let base = Url::parse(base_url)
            .map_err(|e| RuntimeError::invalid_spec(format!("custom runtime URL `{base_url}`: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(RuntimeError::invalid_spec(format!("custom runtime URL `{base_url}` must be http(s)")));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(request)
            .build()
            .map_err(|e| RuntimeError::unavailable(format!("HTTP client: {e}")))?;
        Ok(CustomAdapter { base, client })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends a request; returns the status and body, or a transport error (timeout, refused).
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&SubmitRequest<'_>>,
    ) -> Result<(StatusCode, Body), RuntimeError> {
        let what = format!("{method} {url}");
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let mut resp = req.send().await.map_err(|e| transport_error(&what, &e))?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&what, &e))? {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                let kind = if body.is_some() { ErrorKind::SubmitFailed } else { ErrorKind::Unavailable };
                return Err(RuntimeError::new(
                    kind,
                    format!(
                        "{what}: HTTP {}: the answer is larger than {MAX_BODY_BYTES} bytes, the limit of the custom \
                         runtime protocol; the runner must answer with a smaller body",
                        status.as_u16()
                    ),
                    true,
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, Body { what, bytes }))
    }
}

/// A response body and the request it answers (for messages).
#[derive(Debug)]
struct Body {
    what: String,
    bytes: Vec<u8>,
}

fn transport_error(what: &str, e: &reqwest::Error) -> RuntimeError {
    if e.is_timeout() {
        RuntimeError::timeout(format!("{what}: no answer in time"))
    } else {
        RuntimeError::unavailable(format!("{what}: {e}"))
    }
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(BODY_EXCERPT_CHARS).collect()
}

/// Maps a non-success HTTP status to the normalised error.
fn http_error(status: StatusCode, body: &Body, on_submit: bool) -> RuntimeError {
    let message = format!("{}: HTTP {}: {}", body.what, status.as_u16(), excerpt(&body.bytes));
    match status {
        StatusCode::NOT_FOUND => RuntimeError::not_found(message),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => RuntimeError::invalid_spec(message),
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => RuntimeError::timeout(message),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::CONFLICT => {
            RuntimeError::unavailable(message)
        }
        _ if on_submit => RuntimeError::new(ErrorKind::SubmitFailed, message, false),
        _ => RuntimeError::new(ErrorKind::Unavailable, message, false),
    }
}

/// A success answer we cannot read.
fn garbage(body: &Body, what: &str, on_submit: bool, e: &dyn std::fmt::Display) -> RuntimeError {
    let message = format!("{}: {what} ({e}); body starts: {}", body.what, excerpt(&body.bytes));
    let kind = if on_submit { ErrorKind::SubmitFailed } else { ErrorKind::Unavailable };
    RuntimeError::new(kind, message, true)
}

#[async_trait]
impl RuntimeAdapter for CustomAdapter {
    fn name(&self) -> &str {
        "custom"
    }

    async fn submit(&self, spec: &RunSpec) -> Result<RuntimeRef, RuntimeError> {
        let body = SubmitRequest {
            spec,
            secrets: spec.secrets.iter().map(|(k, v)| (k.as_str(), v.expose())).collect(),
            token: spec.token.as_ref().map(|t| t.expose()),
            idempotency_key: format!("{}/{}", spec.run.uid, spec.attempt),
        };
        let (status, resp) = self.call(Method::POST, self.url(&["runs"]), Some(&body)).await?;
        if !status.is_success() {
            return Err(http_error(status, &resp, true));
        }
        let parsed: SubmitResponse =
            serde_json::from_slice(&resp.bytes).map_err(|e| garbage(&resp, "expected {\"ref\": \"...\"}", true, &e))?;
        if parsed.ref_.is_empty() {
            return Err(garbage(&resp, "empty ref", true, &"ref is \"\""));
        }
        Ok(RuntimeRef(parsed.ref_))
    }

    async fn status(&self, r: &RuntimeRef) -> Result<RuntimeStatus, RuntimeError> {
        let (status, resp) = self.call(Method::GET, self.url(&["runs", r.as_str()]), None).await?;
        if !status.is_success() {
            return Err(http_error(status, &resp, false));
        }
        serde_json::from_slice(&resp.bytes).map_err(|e| garbage(&resp, "expected a RuntimeStatus", false, &e))
    }

    async fn cancel(&self, r: &RuntimeRef) -> Result<(), RuntimeError> {
        let (status, resp) = self.call(Method::POST, self.url(&["runs", r.as_str(), "cancel"]), None).await?;
        if status.is_success() { Ok(()) } else { Err(http_error(status, &resp, false)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_the_ref() {
        let a = CustomAdapter::new("http://h:1/base/").unwrap();
        assert_eq!(a.url(&["runs", "a/b c"]).as_str(), "http://h:1/base/runs/a%2Fb%20c");
        let b = CustomAdapter::new("http://h:1").unwrap();
        assert_eq!(b.url(&["runs"]).as_str(), "http://h:1/runs");
        assert!(CustomAdapter::new("ftp://h").is_err());
        assert!(CustomAdapter::new("not a url").is_err());
    }
}
