//! The one error type of the runtime adapters, normalised across adapters.

use serde::{Deserialize, Serialize};

/// What went wrong, in terms the scheduler can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The run could not be handed to the runtime (nothing was started).
    SubmitFailed,
    /// The runtime does not know this ref.
    NotFound,
    /// The runtime did not answer in time.
    Timeout,
    /// The runtime (or something it depends on) is unavailable right now.
    Unavailable,
    /// The run spec itself is wrong; resubmitting the same spec fails the same way.
    InvalidSpec,
}

impl ErrorKind {
    /// The CamelCase name used in status reasons and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::SubmitFailed => "SubmitFailed",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::InvalidSpec => "InvalidSpec",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An adapter call failed. `retryable` says whether calling again (with the same arguments) can
/// help; it never carries secret values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RuntimeError {
    pub kind: ErrorKind,
    pub message: String,
    pub retryable: bool,
}

impl RuntimeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        RuntimeError { kind, message: message.into(), retryable }
    }
    /// Nothing was started; retrying may help (I/O trouble, a busy runtime).
    pub fn submit_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::SubmitFailed, message, true)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message, false)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message, true)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message, true)
    }
    pub fn invalid_spec(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidSpec, message, false)
    }
    /// Whether a retry of the same call can help.
    pub fn retryable(&self) -> bool {
        self.retryable
    }
}

/// A template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{ name }}` names nothing in the context.
    #[error("unknown template variable `{name}`")]
    UnknownVariable { name: String },
    /// `{{` without a closing `}}`.
    #[error("unterminated placeholder starting at byte {offset}")]
    Unterminated { offset: usize },
    /// `{{ }}` or a name with characters other than letters, digits, `_`, `-` and `.`.
    #[error("invalid placeholder `{text}` at byte {offset}")]
    InvalidPlaceholder { text: String, offset: usize },
}
