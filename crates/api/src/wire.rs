//! Small pieces of the HTTP contract that the server and the CLI both speak.

/// Header on PUT (apply) responses telling what apply did.
pub const APPLY_RESULT_HEADER: &str = "x-agentplane-apply-result";

/// What an apply did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    Created,
    Configured,
    Unchanged,
}

impl ApplyResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyResult::Created => "created",
            ApplyResult::Configured => "configured",
            ApplyResult::Unchanged => "unchanged",
        }
    }

    /// Parse the header value.
    pub fn parse(s: &str) -> Option<ApplyResult> {
        match s {
            "created" => Some(ApplyResult::Created),
            "configured" => Some(ApplyResult::Configured),
            "unchanged" => Some(ApplyResult::Unchanged),
            _ => None,
        }
    }
}
