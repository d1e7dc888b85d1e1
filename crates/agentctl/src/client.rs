//! The HTTP client of the agentplane API (`/api/v1/...`).

use std::time::Duration;

use agentplane_api::Kind;
pub use agentplane_api::wire::{APPLY_RESULT_HEADER, ApplyResult};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde_json::Value;

use crate::config::Token;
use crate::error::{ApiError, CliError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Streamed replies (ledger export) have no overall deadline, only one between reads.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Request header that sets `spec.idempotencyKey` of a submitted AgentRun.
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Reply header of a submission answered from an existing run with the same key.
const IDEMPOTENT_HEADER: &str = "x-agentplane-idempotent";
/// Reply header of `GET .../logs`: the size of the whole log file.
const LOG_SIZE_HEADER: &str = "x-agentplane-log-size";

/// Query of one list request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u32>,
    pub continue_token: Option<String>,
}

/// A streamed reply body, read chunk by chunk (constant memory).
#[derive(Debug)]
pub struct BodyStream {
    resp: Response,
    server: String,
}

impl BodyStream {
    /// The next chunk of the body; `None` at its end. A body cut short is an error.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, CliError> {
        self.resp.chunk().await.map_err(|e| {
            CliError::Other(format!("reading the reply from {} failed: {}", self.server, transport_reason(&e)))
        })
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (default `message`).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// `id:`, if any.
    pub id: Option<String>,
}

/// Splits a `text/event-stream` byte stream into events (comments and empty events skipped).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event in what was pushed, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let (end, sep) = find_blank_line(&self.buf)?;
            let block: Vec<u8> = self.buf.drain(..end + sep).collect();
            let text = String::from_utf8_lossy(&block[..end]);
            let mut event = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            let mut id = None;
            for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
                if line.is_empty() || line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_string(),
                    "data" => data.push(value),
                    "id" => id = Some(value.to_string()),
                    _ => {}
                }
            }
            if data.is_empty() {
                continue;
            }
            return Some(SseEvent { event, data: data.join("\n"), id });
        }
    }
}

/// `(index of the blank line, its length)`: the end of one event.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i + 1, 1));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i + 2, 2));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// A `text/event-stream` reply, read event by event.
#[derive(Debug)]
pub struct EventStream {
    body: BodyStream,
    parser: SseParser,
}

impl EventStream {
    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, CliError> {
        loop {
            if let Some(ev) = self.parser.next_event() {
                return Ok(Some(ev));
            }
            match self.body.chunk().await? {
                Some(bytes) => self.parser.push(&bytes),
                None => return Ok(None),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Like `http`, without the overall request timeout (for streamed bodies).
    stream_http: reqwest::Client,
    base: Url,
    /// The server URL as given, for messages.
    display: String,
    token: Option<Token>,
}

impl Client {
    pub fn new(server: &str, token: Option<Token>) -> Result<Client, CliError> {
        let base = Url::parse(server).map_err(|e| {
            CliError::Other(format!("invalid server URL {server:?}: {e}; use e.g. http://127.0.0.1:7300"))
        })?;
        match base.scheme() {
            "http" => {}
            "https" => {
                return Err(CliError::Other(format!(
                    "server URL {server} uses https, but this agentctl is built without TLS support; \
                     use an http:// URL (e.g. through a local TLS-terminating proxy)"
                )));
            }
            other => {
                return Err(CliError::Other(format!(
                    "invalid server URL {server:?}: unsupported scheme {other:?}; use http://HOST:PORT"
                )));
            }
        }
        if base.host_str().is_none() {
            return Err(CliError::Other(format!("invalid server URL {server:?}: no host")));
        }
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .user_agent(concat!("agentctl/", env!("CARGO_PKG_VERSION")))
        };
        let build_error = |e: reqwest::Error| CliError::Other(format!("cannot build the HTTP client: {e}"));
        let http = builder().timeout(REQUEST_TIMEOUT).build().map_err(build_error)?;
        let stream_http = builder().read_timeout(STREAM_READ_TIMEOUT).build().map_err(build_error)?;
        Ok(Client { http, stream_http, base, display: server.trim_end_matches('/').to_string(), token })
    }

    /// The server URL, for messages.
    pub fn server(&self) -> &str {
        &self.display
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn collection_url(&self, kind: Kind, namespace: Option<&str>) -> Url {
        match namespace {
            Some(ns) => self.url(&["api", "v1", "namespaces", ns, kind.plural()]),
            None => self.url(&["api", "v1", kind.plural()]),
        }
    }

    fn object_url(&self, kind: Kind, namespace: &str, name: &str) -> Url {
        self.url(&["api", "v1", "namespaces", namespace, kind.plural(), name])
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.request_with(&self.http, method, url)
    }

    fn request_with(&self, http: &reqwest::Client, method: Method, url: Url) -> RequestBuilder {
        let mut req = http.request(method, url);
        if let Some(token) = &self.token
            && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        {
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        req
    }

    /// Sends the request; transport failures become [`CliError::Unreachable`] and non-2xx
    /// replies [`CliError::Api`].
    async fn send(&self, req: RequestBuilder) -> Result<Response, CliError> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        Err(CliError::Api(ApiError::from_reply(status.as_u16(), status.canonical_reason().unwrap_or(""), &body)))
    }

    fn transport_error(&self, e: &reqwest::Error) -> CliError {
        if e.is_connect() || e.is_timeout() {
            return CliError::Unreachable { url: self.display.clone(), reason: transport_reason(e) };
        }
        CliError::Other(format!("request to {} failed: {}", self.display, transport_reason(e)))
    }

    async fn json(&self, resp: Response) -> Result<Value, CliError> {
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::Other(format!("the server at {} sent a reply that is not JSON: {e}", self.display)))
    }

    pub async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::GET, self.object_url(kind, namespace, name))).await;
        let resp = not_found(resp, kind, namespace, name)?;
        self.json(resp).await
    }

    /// One page of a list; `namespace: None` lists across all namespaces.
    pub async fn list(&self, kind: Kind, namespace: Option<&str>, q: &ListQuery) -> Result<Value, CliError> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &q.label_selector {
            params.push(("labelSelector", s.clone()));
        }
        if let Some(s) = &q.field_selector {
            params.push(("fieldSelector", s.clone()));
        }
        if let Some(l) = q.limit {
            params.push(("limit", l.to_string()));
        }
        if let Some(c) = &q.continue_token {
            params.push(("continue", c.clone()));
        }
        let req = self.request(Method::GET, self.collection_url(kind, namespace)).query(&params);
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// `PUT` = apply: upsert, or compare-and-swap when the body carries a resourceVersion.
    pub async fn apply(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        body: &Value,
    ) -> Result<(ApplyResult, Value), CliError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| CliError::Other(format!("cannot encode the document: {e}")))?;
        let req = self
            .request(Method::PUT, self.object_url(kind, namespace, name))
            .header(CONTENT_TYPE, "application/json")
            .body(bytes);
        let resp = self.send(req).await?;
        let result = match resp.headers().get(APPLY_RESULT_HEADER).and_then(|v| v.to_str().ok()) {
            Some("created") => ApplyResult::Created,
            Some("unchanged") => ApplyResult::Unchanged,
            Some(_) => ApplyResult::Configured,
            None if resp.status() == reqwest::StatusCode::CREATED => ApplyResult::Created,
            None => ApplyResult::Configured,
        };
        Ok((result, self.json(resp).await?))
    }

    /// `POST` = create, with an `Idempotency-Key` header when given. Returns whether the server
    /// answered an existing run for the key (`200`, `"idempotent": true`) and the object.
    pub async fn create(
        &self,
        kind: Kind,
        namespace: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<(bool, Value), CliError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| CliError::Other(format!("cannot encode the document: {e}")))?;
        let mut req = self
            .request(Method::POST, self.collection_url(kind, Some(namespace)))
            .header(CONTENT_TYPE, "application/json")
            .body(bytes);
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(key)
                .map_err(|_| CliError::Invalid(format!("idempotency key {key:?} is not valid in an HTTP header")))?;
            req = req.header(IDEMPOTENCY_KEY_HEADER, value);
        }
        let resp = self.send(req).await?;
        let replay_header = resp.headers().get(IDEMPOTENT_HEADER).and_then(|v| v.to_str().ok()) == Some("true");
        let obj = self.json(resp).await?;
        let idempotent = replay_header || obj.get("idempotent").and_then(Value::as_bool) == Some(true);
        Ok((idempotent, obj))
    }

    /// Deletes the object and returns its last state.
    pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::DELETE, self.object_url(kind, namespace, name))).await;
        let resp = not_found(resp, kind, namespace, name)?;
        self.json(resp).await
    }

    fn ledger_url(&self, what: &str) -> Url {
        self.url(&["api", "v1", "ledger", what])
    }

    /// `GET /api/v1/ledger/public-key`.
    pub async fn ledger_public_key(&self) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::GET, self.ledger_url("public-key"))).await?;
        self.json(resp).await
    }

    /// One page of `GET /api/v1/ledger/entries`; `params` are the query's filters.
    pub async fn ledger_entries(&self, params: &[(&str, String)]) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::GET, self.ledger_url("entries")).query(params)).await?;
        self.json(resp).await
    }

    /// `GET /api/v1/ledger/summary?day=`.
    pub async fn ledger_summary(&self, day: &str) -> Result<Value, CliError> {
        let req = self.request(Method::GET, self.ledger_url("summary")).query(&[("day", day)]);
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// `GET /api/v1/ledger/export?format=`, as a stream.
    pub async fn ledger_export(&self, format: &str) -> Result<BodyStream, CliError> {
        let req =
            self.request_with(&self.stream_http, Method::GET, self.ledger_url("export")).query(&[("format", format)]);
        let resp = self.send(req).await?;
        Ok(BodyStream { resp, server: self.display.clone() })
    }

    fn run_url(&self, namespace: &str, name: &str, what: &str) -> Url {
        self.url(&["api", "v1", "namespaces", namespace, Kind::AgentRun.plural(), name, what])
    }

    /// `POST .../agentruns/{name}/cancel`: `{"result", "message", "run"}`.
    pub async fn cancel_run(&self, namespace: &str, name: &str) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::POST, self.run_url(namespace, name, "cancel"))).await;
        let resp = not_found(resp, Kind::AgentRun, namespace, name)?;
        self.json(resp).await
    }

    /// `GET .../agentruns/{name}/events`: `{"items": [...]}`.
    pub async fn run_events(&self, namespace: &str, name: &str) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::GET, self.run_url(namespace, name, "events"))).await;
        let resp = not_found(resp, Kind::AgentRun, namespace, name)?;
        self.json(resp).await
    }

    /// `GET .../agentruns/{name}/logs[?tailBytes=N]` as a stream, with the log's size when the
    /// server says it.
    pub async fn run_logs(
        &self,
        namespace: &str,
        name: &str,
        tail_bytes: Option<u64>,
    ) -> Result<(BodyStream, Option<u64>), CliError> {
        let mut req = self.request_with(&self.stream_http, Method::GET, self.run_url(namespace, name, "logs"));
        if let Some(n) = tail_bytes {
            req = req.query(&[("tailBytes", n.to_string())]);
        }
        let resp = not_found(self.send(req).await, Kind::AgentRun, namespace, name)?;
        let size = resp.headers().get(LOG_SIZE_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok((BodyStream { resp, server: self.display.clone() }, size))
    }

    /// `GET .../agentruns/{name}/logs?follow=true`: `log`, `truncated`, `error` and `end` events.
    pub async fn follow_run_logs(
        &self,
        namespace: &str,
        name: &str,
        tail_bytes: Option<u64>,
    ) -> Result<EventStream, CliError> {
        let mut params = vec![("follow", "true".to_string())];
        if let Some(n) = tail_bytes {
            params.push(("tailBytes", n.to_string()));
        }
        let req = self
            .request_with(&self.stream_http, Method::GET, self.run_url(namespace, name, "logs"))
            .header(ACCEPT, "text/event-stream")
            .query(&params);
        let resp = not_found(self.send(req).await, Kind::AgentRun, namespace, name)?;
        Ok(self.event_stream(resp))
    }

    /// `GET .../{plural}?watch=true`: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` and `ERROR`
    /// events. `resource_version` starts after that revision (without it, the current objects
    /// come first as `ADDED`).
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        q: &ListQuery,
        resource_version: Option<&str>,
    ) -> Result<EventStream, CliError> {
        let mut params: Vec<(&str, String)> = vec![("watch", "true".into())];
        if let Some(s) = &q.label_selector {
            params.push(("labelSelector", s.clone()));
        }
        if let Some(s) = &q.field_selector {
            params.push(("fieldSelector", s.clone()));
        }
        if let Some(rv) = resource_version {
            params.push(("resourceVersion", rv.to_string()));
        }
        let req = self
            .request_with(&self.stream_http, Method::GET, self.collection_url(kind, namespace))
            .header(ACCEPT, "text/event-stream")
            .query(&params);
        let resp = self.send(req).await?;
        Ok(self.event_stream(resp))
    }

    fn event_stream(&self, resp: Response) -> EventStream {
        EventStream { body: BodyStream { resp, server: self.display.clone() }, parser: SseParser::default() }
    }

    /// `POST /api/v1/tokens`: the reply carries the token, once.
    pub async fn create_token(&self, body: &Value) -> Result<Value, CliError> {
        let req = self.request(Method::POST, self.url(&["api", "v1", "tokens"])).json(body);
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// `GET /api/v1/tokens`: `{"items": [...]}`, never secrets.
    pub async fn list_tokens(&self) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::GET, self.url(&["api", "v1", "tokens"]))).await?;
        self.json(resp).await
    }

    /// `DELETE /api/v1/tokens/{id-or-name}`.
    pub async fn revoke_token(&self, name: &str) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::DELETE, self.url(&["api", "v1", "tokens", name]))).await;
        let resp = match resp {
            Err(CliError::Api(e)) if e.status == 404 => {
                return Err(CliError::Other(format!(
                    "no active token named {name:?} (agentctl token list shows them)"
                )));
            }
            other => other?,
        };
        self.json(resp).await
    }

    /// `GET /api/v1/namespaces/{ns}/takeover?agent=A[&environment=E][&level=N]`.
    pub async fn takeover_view(
        &self,
        namespace: &str,
        agent: &str,
        environment: Option<&str>,
        level: Option<u8>,
    ) -> Result<Value, CliError> {
        let mut url = self.url(&["api", "v1", "namespaces", namespace, "takeover"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("agent", agent);
            if let Some(e) = environment {
                q.append_pair("environment", e);
            }
            if let Some(l) = level {
                q.append_pair("level", &l.to_string());
            }
        }
        let resp = self.send(self.request(Method::GET, url)).await?;
        self.json(resp).await
    }

    /// `POST /api/v1/namespaces/{ns}/environments/{name}/elevation`.
    pub async fn request_elevation(&self, namespace: &str, env: &str, body: &Value) -> Result<Value, CliError> {
        let url = self.url(&["api", "v1", "namespaces", namespace, Kind::Environment.plural(), env, "elevation"]);
        let resp = self.send(self.request(Method::POST, url).json(body)).await;
        let resp = not_found(resp, Kind::Environment, namespace, env)?;
        self.json(resp).await
    }

    /// `POST /api/v1/namespaces/{ns}/approvals/{name}/{approve|deny}`.
    pub async fn approval_decide(
        &self,
        namespace: &str,
        name: &str,
        verb: &str,
        body: &Value,
    ) -> Result<Value, CliError> {
        let url = self.url(&["api", "v1", "namespaces", namespace, Kind::Approval.plural(), name, verb]);
        let resp = self.send(self.request(Method::POST, url).json(body)).await;
        let resp = not_found(resp, Kind::Approval, namespace, name)?;
        self.json(resp).await
    }

    /// `POST /api/v1/namespaces/{ns}/{agents|environments}/{name}/takeover`.
    pub async fn takeover_set(&self, kind: Kind, namespace: &str, name: &str, body: &Value) -> Result<Value, CliError> {
        let url = self.url(&["api", "v1", "namespaces", namespace, kind.plural(), name, "takeover"]);
        let resp = self.send(self.request(Method::POST, url).json(body)).await;
        let resp = not_found(resp, kind, namespace, name)?;
        self.json(resp).await
    }

    pub async fn version(&self) -> Result<Value, CliError> {
        let resp = self.send(self.request(Method::GET, self.url(&["api", "v1", "version"]))).await?;
        self.json(resp).await
    }
}

/// Turns a 404 into a message naming the kind, object and namespace.
fn not_found(resp: Result<Response, CliError>, kind: Kind, namespace: &str, name: &str) -> Result<Response, CliError> {
    match resp {
        Err(CliError::Api(e)) if e.status == 404 => {
            Err(CliError::NotFound { kind: kind.singular(), name: name.to_string(), namespace: namespace.to_string() })
        }
        other => other,
    }
}

/// A short reason for a transport failure: "connection refused", "timed out", ...
fn transport_reason(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                _ => {}
            }
        }
        innermost = err.to_string();
        source = err.source();
    }
    if e.is_timeout() { "timed out".into() } else { innermost }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_comments_and_crlf() {
        let mut p = SseParser::default();
        p.push(b": keep-alive\n\nevent: log\ndata: a\nda");
        assert_eq!(p.next_event(), None);
        p.push(b"ta: b\ndata: \n\nevent: end\r\nid: 7\r\ndata: {}\r\n\r\n");
        assert_eq!(p.next_event(), Some(SseEvent { event: "log".into(), data: "a\nb\n".into(), id: None }));
        assert_eq!(p.next_event(), Some(SseEvent { event: "end".into(), data: "{}".into(), id: Some("7".into()) }));
        assert_eq!(p.next_event(), None);
        p.push(b"data:x\n\n");
        assert_eq!(p.next_event(), Some(SseEvent { event: "message".into(), data: "x".into(), id: None }));
    }

    #[test]
    fn https_is_refused_clearly() {
        let err = Client::new("https://example.com", None).unwrap_err().to_string();
        assert!(err.contains("without TLS"), "{err}");
    }

    #[test]
    fn urls_keep_a_path_prefix_and_escape_names() {
        let c = Client::new("http://h:1/prefix/", None).unwrap();
        assert_eq!(
            c.object_url(Kind::AgentRun, "ns", "a/b").as_str(),
            "http://h:1/prefix/api/v1/namespaces/ns/agentruns/a%2Fb"
        );
        let c = Client::new("http://h:1", None).unwrap();
        assert_eq!(c.collection_url(Kind::Memory, None).as_str(), "http://h:1/api/v1/memories");
    }
}
