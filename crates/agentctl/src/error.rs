//! Errors of the CLI and the exit codes they map to.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// Documented exit codes (`docs/cli.md`, `agentctl --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Ok = 0,
    Other = 1,
    // 2 is clap's usage error; clap exits by itself.
    NotFound = 3,
    Conflict = 4,
    Invalid = 5,
    Unreachable = 6,
    Server = 7,
    /// `ledger verify` found an entry, link or checkpoint that does not verify.
    LedgerBroken = 8,
    /// The AgentRun waited for ended `Failed`.
    RunFailed = 9,
    /// The AgentRun waited for ended `Cancelled`.
    RunCancelled = 10,
    /// `run wait --timeout` (or `run submit --wait --wait-timeout`) passed before the run ended.
    WaitTimedOut = 11,
    /// 401: no token, or an unknown, expired or revoked one.
    Unauthenticated = 12,
    /// 403: the token's role does not allow the call.
    Forbidden = 13,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One field error in a `ValidationFailed` reply (`details.errors[]`). Reasons are kept as
/// strings so that a newer server's reasons still print.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldProblem {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() && !self.message.starts_with(&self.field) {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// An error reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// Stable code (`NotFound`, `Conflict`, ...); empty when the body was not an API error.
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// `details.errors` of a `ValidationFailed` reply.
    pub problems: Vec<FieldProblem>,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    details: Option<Value>,
}

impl ApiError {
    /// Parse an error reply; bodies that are not `{code, message}` JSON keep the status only.
    pub fn from_reply(status: u16, reason: &str, body: &[u8]) -> ApiError {
        match serde_json::from_slice::<ApiErrorBody>(body) {
            Ok(b) => {
                let problems = b
                    .details
                    .as_ref()
                    .and_then(|d| d.get("errors"))
                    .and_then(|e| serde_json::from_value::<Vec<FieldProblem>>(e.clone()).ok())
                    .unwrap_or_default();
                ApiError { status, code: b.code, message: b.message, field: b.field, problems }
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let first = text.lines().next().unwrap_or("").trim();
                let mut message = format!("the server replied {status} {reason}");
                if !first.is_empty() {
                    let short: String = first.chars().take(200).collect();
                    message.push_str(": ");
                    message.push_str(&short);
                }
                ApiError { status, code: String::new(), message, field: None, problems: Vec::new() }
            }
        }
    }

    pub fn exit(&self) -> Exit {
        match self.code.as_str() {
            "NotFound" => Exit::NotFound,
            "AlreadyExists" | "Conflict" => Exit::Conflict,
            "ValidationFailed" | "InvalidRequest" | "PayloadTooLarge" | "UnsupportedMediaType" => Exit::Invalid,
            "Internal" | "Unavailable" => Exit::Server,
            "Unauthorized" => Exit::Unauthenticated,
            "Forbidden" => Exit::Forbidden,
            _ => match self.status {
                401 => Exit::Unauthenticated,
                403 => Exit::Forbidden,
                404 => Exit::NotFound,
                409 => Exit::Conflict,
                400 | 413 | 415 | 422 => Exit::Invalid,
                500..=599 => Exit::Server,
                _ => Exit::Other,
            },
        }
    }

    /// One line per problem: each field error of a validation failure, else the message.
    pub fn lines(&self) -> Vec<String> {
        if !self.problems.is_empty() {
            return self.problems.iter().map(ToString::to_string).collect();
        }
        let mut line = String::new();
        if let Some(field) = self.field.as_deref().filter(|f| !f.is_empty() && !self.message.starts_with(f)) {
            line.push_str(field);
            line.push_str(": ");
        }
        line.push_str(&self.message);
        if !self.code.is_empty() && self.exit() != Exit::NotFound {
            line.push_str(&format!(" ({})", self.code));
        }
        if self.exit() == Exit::Unauthenticated && !self.message.contains("--token") {
            line.push_str(
                "; give a token with --token, AGENTCTL_TOKEN or `token` in the config file \
                 (the server's bootstrap admin token is in <data_dir>/admin-token)",
            );
        }
        vec![line]
    }
}

/// Everything that can make a command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach the agentplane server at {url} ({reason}); start it with 'agentctl server' or set --server / AGENTCTL_SERVER"
    )]
    Unreachable { url: String, reason: String },
    #[error("{}", .0.lines().join("; "))]
    Api(ApiError),
    /// A document or argument that is wrong before it reaches the server.
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {name:?} not found in namespace {namespace}")]
    NotFound { kind: String, name: String, namespace: String },
    #[error("{0}")]
    Other(String),
    /// A wait for a run gave up before the run ended.
    #[error("timed out after {after} waiting for agentrun/{name} (phase {phase})")]
    WaitTimedOut { name: String, after: String, phase: String },
    /// stdout was closed by the reader (e.g. `| head`): exit quietly.
    #[error("broken pipe")]
    BrokenPipe,
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Unreachable { .. } => Exit::Unreachable,
            CliError::Api(e) => e.exit(),
            CliError::Invalid(_) => Exit::Invalid,
            CliError::NotFound { .. } => Exit::NotFound,
            CliError::Other(_) => Exit::Other,
            CliError::WaitTimedOut { .. } => Exit::WaitTimedOut,
            CliError::BrokenPipe => Exit::Ok,
        }
    }

    /// The lines to print after `error: ` (more than one only for validation failures).
    pub fn lines(&self) -> Vec<String> {
        match self {
            CliError::Api(e) => e.lines(),
            CliError::BrokenPipe => Vec::new(),
            other => vec![other.to_string()],
        }
    }
}

/// Picks the exit code of a command that reported several failures: the first specific one
/// (anything but 1), else 1.
#[derive(Debug, Default)]
pub struct ExitTally(Option<Exit>);

impl ExitTally {
    pub fn record(&mut self, exit: Exit) {
        match self.0 {
            None | Some(Exit::Other) => self.0 = Some(exit),
            Some(_) => {}
        }
    }
    pub fn result(&self) -> Exit {
        self.0.unwrap_or(Exit::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_failure_lists_every_field() {
        let body = br#"{"code":"ValidationFailed","message":"2 errors","details":{"errors":[
            {"field":"spec.text","reason":"TextTooLarge","message":"spec.text is 200000 bytes; the limit is 131072 bytes","limit":131072,"actual":200000},
            {"field":"metadata.name","reason":"InvalidName","message":"must be a DNS-1123 label"}]}}"#;
        let e = ApiError::from_reply(400, "Bad Request", body);
        assert_eq!(e.exit(), Exit::Invalid);
        assert_eq!(
            e.lines(),
            vec![
                "spec.text is 200000 bytes; the limit is 131072 bytes (TextTooLarge)".to_string(),
                "metadata.name: must be a DNS-1123 label (InvalidName)".to_string(),
            ]
        );
    }

    #[test]
    fn codes_map_to_exit_codes() {
        let e = |status, code: &str| {
            ApiError::from_reply(status, "", format!(r#"{{"code":"{code}","message":"m"}}"#).as_bytes()).exit()
        };
        assert_eq!(e(404, "NotFound"), Exit::NotFound);
        assert_eq!(e(409, "AlreadyExists"), Exit::Conflict);
        assert_eq!(e(409, "Conflict"), Exit::Conflict);
        assert_eq!(e(413, "PayloadTooLarge"), Exit::Invalid);
        assert_eq!(e(500, "Internal"), Exit::Server);
        assert_eq!(e(503, "Unavailable"), Exit::Server);
        assert_eq!(e(410, "Gone"), Exit::Other);
        assert_eq!(e(403, "Forbidden"), Exit::Forbidden);
        assert_eq!(e(401, "Unauthorized"), Exit::Unauthenticated);
        assert_eq!(e(429, "RateLimited"), Exit::Other);
    }

    #[test]
    fn non_json_reply_keeps_the_status() {
        let e = ApiError::from_reply(502, "Bad Gateway", b"<html>upstream down</html>");
        assert_eq!(e.exit(), Exit::Server);
        assert_eq!(e.lines(), vec!["the server replied 502 Bad Gateway: <html>upstream down</html>".to_string()]);
    }

    #[test]
    fn tally_keeps_first_specific_code() {
        let mut t = ExitTally::default();
        assert_eq!(t.result(), Exit::Ok);
        t.record(Exit::Other);
        t.record(Exit::Invalid);
        t.record(Exit::Conflict);
        assert_eq!(t.result(), Exit::Invalid);
    }
}
