//! Size limits enforced by validation. Every number here is part of the API contract and is
//! documented in `docs/resources.md`.

/// DNS-1123 label length for names and namespaces.
pub const MAX_NAME_LEN: usize = 63;
/// `generateName` prefix; leaves room for a 5-character random suffix.
pub const MAX_GENERATE_NAME_LEN: usize = 58;
/// ImplementationSpec `text` and `description`, in bytes (128 KiB).
pub const MAX_SPEC_TEXT_BYTES: usize = 131_072;
/// ImplementationSpec `summary`, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 256;
/// ImplementationSpec `acceptanceCriteria` entries.
pub const MAX_ACCEPTANCE_CRITERIA: usize = 50;
/// One acceptance criterion, in bytes.
pub const MAX_ACCEPTANCE_CRITERION_BYTES: usize = 4_096;
/// AgentRun / workflow step `parameters` entries.
pub const MAX_PARAMETERS: usize = 100;
/// One parameter value, in UTF-8 bytes.
pub const MAX_PARAMETER_VALUE_BYTES: usize = 2_048;
/// Label keys' name part and label values (Kubernetes rules).
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Label key prefix (a DNS subdomain).
pub const MAX_LABEL_PREFIX_LEN: usize = 253;
/// Labels per object.
pub const MAX_LABELS: usize = 64;
/// All annotations of one object together, in bytes.
pub const MAX_ANNOTATIONS_BYTES: usize = 262_144;
/// Rego source of one Policy module, in bytes.
pub const MAX_REGO_BYTES: usize = 131_072;
/// Generic free-text fields (descriptions, reasons) that have no specific limit, in bytes.
pub const MAX_SHORT_TEXT_BYTES: usize = 4_096;
/// Entries of list fields that have no specific limit.
pub const MAX_LIST_ENTRIES: usize = 256;
/// Takeover levels run from L1 (observe) to L5 (autonomous).
pub const MIN_TAKEOVER_LEVEL: u8 = 1;
pub const MAX_TAKEOVER_LEVEL: u8 = 5;
/// A run may ask for at most one week.
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;
/// Retries of one run.
pub const MAX_RETRY_LIMIT: u32 = 100;
/// An Agent's `maxInFlight`.
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// Default `maxInFlight` of an Agent.
pub const DEFAULT_AGENT_MAX_IN_FLIGHT: u32 = 5;
/// Ranges of an Agent's `spec.limits` (the server's `[sandbox.maximums]` may be lower).
pub const LIMIT_CPU_SECONDS: (u64, u64) = (1, MAX_TIMEOUT_SECONDS);
/// 16 MiB to 1 TiB.
pub const LIMIT_MEMORY_BYTES: (u64, u64) = (16 << 20, 1 << 40);
/// 1 MiB to 1 TiB.
pub const LIMIT_FILE_SIZE_BYTES: (u64, u64) = (1 << 20, 1 << 40);
pub const LIMIT_OPEN_FILES: (u64, u64) = (16, 1 << 20);
pub const LIMIT_PROCESSES: (u64, u64) = (1, 100_000);
/// 1 MiB to 16 TiB.
pub const LIMIT_OUTPUT_QUOTA_BYTES: (u64, u64) = (1 << 20, 1 << 44);
