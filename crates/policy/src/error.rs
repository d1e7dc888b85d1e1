//! The crate's one error type. Every variant is "the caller sent something wrong": a Policy or a
//! role contract that cannot be applied, or a level out of range. Nothing here is retryable.
//!
//! Errors while *deciding* are not errors of this type: they become a `deny` with a reason
//! (fail closed), see [`crate::Decision`].

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// A Rego module of a Policy does not parse or does not compile. `line`/`column` are 1-based
    /// positions in the module's own source when regorus reported one.
    #[error("{}", rego_message(.policy, .module, *.line, *.column, .message))]
    Rego {
        policy: String,
        /// Name of the module (`spec.modules[i].name`), when the error is in one module.
        module: Option<String>,
        /// Index of the module in `spec.modules`, when the error is in one module.
        module_index: Option<usize>,
        line: Option<u32>,
        column: Option<u32>,
        message: String,
    },
    /// A role contract cannot be applied (a bad JSON Schema, an unknown side-effect bound).
    #[error("role contract {contract:?}: {field}: {message}")]
    Contract {
        contract: String,
        /// Path inside the contract, e.g. `inputSchemas["workspace.write"]`.
        field: String,
        message: String,
    },
    /// A takeover level outside 1–5.
    #[error("takeover level {value} is not in 1..=5")]
    InvalidLevel { value: u64 },
}

impl PolicyError {
    /// The 1-based line of a Rego error, when known.
    pub fn line(&self) -> Option<u32> {
        match self {
            PolicyError::Rego { line, .. } => *line,
            _ => None,
        }
    }

    /// The field path of the error inside a Policy's spec (`spec.modules[2].rego`), for the
    /// server's validation errors.
    pub fn field_path(&self) -> Option<String> {
        match self {
            PolicyError::Rego { module_index: Some(i), .. } => Some(format!("spec.modules[{i}].rego")),
            PolicyError::Rego { .. } => Some("spec.modules".to_owned()),
            _ => None,
        }
    }
}

fn rego_message(
    policy: &str,
    module: &Option<String>,
    line: Option<u32>,
    column: Option<u32>,
    message: &str,
) -> String {
    let mut out = format!("policy {policy:?}");
    if let Some(m) = module {
        out.push_str(&format!(" module {m:?}"));
    }
    match (line, column) {
        (Some(l), Some(c)) => out.push_str(&format!(" line {l} column {c}")),
        (Some(l), None) => out.push_str(&format!(" line {l}")),
        _ => {}
    }
    out.push_str(": ");
    out.push_str(message);
    out
}
