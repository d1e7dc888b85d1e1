//! The registry of kinds: names, plurals and short forms (as `kubectl` accepts them).

use std::fmt;
use std::str::FromStr;

/// Every resource kind agentplane serves. All kinds are namespaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    AgentProvider,
    Agent,
    ImplementationSpec,
    ImplementationSource,
    AgentRun,
    Memory,
    Environment,
    Tool,
    Approval,
    Policy,
}

/// A kind name that matches no kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {given:?}; known kinds: {}", Kind::ALL.iter().map(|k| k.plural()).collect::<Vec<_>>().join(", "))]
pub struct UnknownKind {
    pub given: String,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::AgentProvider,
        Kind::Agent,
        Kind::ImplementationSpec,
        Kind::ImplementationSource,
        Kind::AgentRun,
        Kind::Memory,
        Kind::Environment,
        Kind::Tool,
        Kind::Approval,
        Kind::Policy,
    ];

    /// The `kind` field of a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AgentProvider => "AgentProvider",
            Kind::Agent => "Agent",
            Kind::ImplementationSpec => "ImplementationSpec",
            Kind::ImplementationSource => "ImplementationSource",
            Kind::AgentRun => "AgentRun",
            Kind::Memory => "Memory",
            Kind::Environment => "Environment",
            Kind::Tool => "Tool",
            Kind::Approval => "Approval",
            Kind::Policy => "Policy",
        }
    }

    /// The lowercase plural used in URLs (`/api/v1/namespaces/{ns}/{plural}`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::AgentProvider => "agentproviders",
            Kind::Agent => "agents",
            Kind::ImplementationSpec => "implementationspecs",
            Kind::ImplementationSource => "implementationsources",
            Kind::AgentRun => "agentruns",
            Kind::Memory => "memories",
            Kind::Environment => "environments",
            Kind::Tool => "tools",
            Kind::Approval => "approvals",
            Kind::Policy => "policies",
        }
    }

    /// The lowercase singular.
    pub fn singular(self) -> String {
        self.as_str().to_ascii_lowercase()
    }

    /// Short names accepted by the CLI.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::AgentProvider => &["provider", "providers", "ap"],
            Kind::Agent => &["ag"],
            Kind::ImplementationSpec => &["spec", "specs", "impl", "impls", "is"],
            Kind::ImplementationSource => &["source", "sources", "isrc"],
            Kind::AgentRun => &["run", "runs", "ar"],
            Kind::Memory => &["mem"],
            Kind::Environment => &["env", "envs"],
            Kind::Tool => &[],
            Kind::Approval => &["appr"],
            Kind::Policy => &["pol"],
        }
    }

    /// Resolve a kind from its `kind` name, singular, plural or short form (case-insensitive).
    pub fn parse_loose(s: &str) -> Result<Kind, UnknownKind> {
        let l = s.trim().to_ascii_lowercase();
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.singular() == l || k.plural() == l || k.short_names().contains(&l.as_str()))
            .ok_or_else(|| UnknownKind { given: s.to_string() })
    }

    /// Resolve a kind from the exact `kind` field of a manifest (case-sensitive).
    pub fn from_manifest(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// Resolve a kind from a URL plural.
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.plural() == s)
    }

    /// Whether objects of this kind carry a `status.phase`.
    pub fn has_phase(self) -> bool {
        matches!(self, Kind::AgentRun | Kind::Approval)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::parse_loose(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_resolves() {
        assert_eq!(Kind::parse_loose("run").unwrap(), Kind::AgentRun);
        assert_eq!(Kind::parse_loose("agentrun").unwrap(), Kind::AgentRun);
        assert_eq!(Kind::parse_loose("AgentRuns").unwrap(), Kind::AgentRun);
        assert_eq!(Kind::parse_loose("memories").unwrap(), Kind::Memory);
        assert_eq!(Kind::parse_loose("policy").unwrap(), Kind::Policy);
        assert!(Kind::parse_loose("pods").is_err());
    }

    #[test]
    fn names_do_not_collide() {
        let mut seen = std::collections::BTreeSet::new();
        for k in Kind::ALL {
            assert!(seen.insert(k.singular()), "{k}");
            assert!(seen.insert(k.plural().to_string()), "{k}");
            for s in k.short_names() {
                assert!(seen.insert((*s).to_string()), "{s}");
            }
            assert_eq!(Kind::from_plural(k.plural()), Some(k));
            assert_eq!(Kind::from_manifest(k.as_str()), Some(k));
        }
    }
}
