//! The spec and status of every kind (DESIGN §3). Field names follow the Agents Platform CRDs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::condition::Condition;
use crate::meta::{ObjectMeta, Reference, SecretKeyRef};

/// The Kubernetes-shaped envelope of every kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S, T> {
    /// Always `agentplane.dev/v1alpha1`.
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: S,
    /// Written by the server; ignored when a client creates or applies the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<T>,
}

/// Status of kinds that have no phase: conditions only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

// ---------------------------------------------------------------------------------------------
// AgentProvider

/// How to launch a kind of agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentProviderSpec {
    /// Program to execute (absolute path or a name looked up on `PATH`).
    pub binary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Arguments, each a template over `agentRun`, `agent`, `implementation`, `parameters`,
    /// `memory`, `workspace` and `gateway`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args_template: Vec<String>,
    /// Environment variables, each value a template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_template: BTreeMap<String, String>,
    /// Files written into the workspace before the agent starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_files: Vec<InputFile>,
    /// Files collected as artifacts after the agent exits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_artifacts: Vec<OutputArtifact>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputFile {
    /// Relative path inside the run folder.
    pub path: String,
    /// Template rendered into the file.
    pub content: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutputArtifact {
    pub name: String,
    /// Relative path inside the run folder.
    pub path: String,
}

pub type AgentProvider = Resource<AgentProviderSpec, BasicStatus>;

// ---------------------------------------------------------------------------------------------
// Agent

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSpec {
    pub provider_ref: Reference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_ref: Option<Reference>,
    /// Free-form configuration visible to templates as `agent.config`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub defaults: AgentDefaults,
    #[serde(default)]
    pub security: AgentSecurity,
    /// Which tools and tool servers the agent may see through the gateway.
    #[serde(default)]
    pub tools: AgentTools,
    /// The agent's role contract; may only tighten what policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleContract>,
    /// Runs of this agent in flight at once (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Resource limits of each run (local runtime sandbox); unset fields take the server's
    /// `[sandbox.defaults]`, and no field may exceed the server's `[sandbox.maximums]`.
    #[serde(default, skip_serializing_if = "AgentLimits::is_empty")]
    pub limits: AgentLimits,
    /// The network a run of this agent gets (local runtime sandbox); default `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
}

/// Resource limits of one run (docs/sandbox.md). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentLimits {
    /// CPU seconds of each process (`RLIMIT_CPU`); the run fails with `CpuLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Memory of the whole run (a memory cgroup, else `RLIMIT_AS` per process); `MemoryLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Address space of each process (`RLIMIT_AS`), in addition to `memoryBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space_bytes: Option<u64>,
    /// Largest file a process may write (`RLIMIT_FSIZE`); `FileSizeLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_bytes: Option<u64>,
    /// Open files per process (`RLIMIT_NOFILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Processes and threads of the run at once (a `pids` cgroup, else `RLIMIT_NPROC`);
    /// `ProcessLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// How much the run folder (log, artifacts, workspace, temp dir) may grow while the agent
    /// runs; checked periodically; `OutputQuotaExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_quota_bytes: Option<u64>,
}

impl AgentLimits {
    pub fn is_empty(&self) -> bool {
        *self == AgentLimits::default()
    }

    /// Each field with its name (`cpuSeconds`, …) and value.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 7] {
        [
            ("cpuSeconds", self.cpu_seconds),
            ("memoryBytes", self.memory_bytes),
            ("addressSpaceBytes", self.address_space_bytes),
            ("fileSizeBytes", self.file_size_bytes),
            ("openFiles", self.open_files),
            ("processes", self.processes),
            ("outputQuotaBytes", self.output_quota_bytes),
        ]
    }

    /// This, with unset fields taken from `defaults`.
    pub fn or(&self, defaults: &AgentLimits) -> AgentLimits {
        AgentLimits {
            cpu_seconds: self.cpu_seconds.or(defaults.cpu_seconds),
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            address_space_bytes: self.address_space_bytes.or(defaults.address_space_bytes),
            file_size_bytes: self.file_size_bytes.or(defaults.file_size_bytes),
            open_files: self.open_files.or(defaults.open_files),
            processes: self.processes.or(defaults.processes),
            output_quota_bytes: self.output_quota_bytes.or(defaults.output_quota_bytes),
        }
    }

    /// The first field above its maximum: (field, value, maximum).
    pub fn exceeds(&self, max: &AgentLimits) -> Option<(&'static str, u64, u64)> {
        self.fields().into_iter().zip(max.fields()).find_map(|((name, v), (_, m))| match (v, m) {
            (Some(v), Some(m)) if v > m => Some((name, v, m)),
            _ => None,
        })
    }
}

/// The network of a run of an Agent (local runtime sandbox).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// No network at all (a network namespace of its own).
    None,
    /// TCP only to the gateway's (the server's) port.
    #[default]
    Gateway,
    /// No restriction.
    Open,
}

/// How secrets reach the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecretsAs {
    /// As environment variables (the default).
    #[default]
    Env,
    /// As files `secrets/<VAR>` (mode 0400) in the run folder, named by `<VAR>_FILE`; removed
    /// when the attempt ends.
    Files,
}

/// One sandbox protection of a run and whether it was in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxProtection {
    /// `identity`, `no-new-privs`, `rlimits`, `filesystem`, `network`, `signals`,
    /// `pid-namespace`, `process-tree`, `memory-cgroup`, `output-quota`.
    pub name: String,
    /// `applied`, `unavailable` (this host cannot) or `disabled` (not asked for).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which sandbox protections were in force for the run's last attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxStatus {
    pub protections: Vec<SandboxProtection>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource {
    pub secret_key_ref: SecretKeyRef,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_limit: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSecurity {
    /// Secrets a run of this agent may receive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_service_accounts: Vec<String>,
    /// How secrets reach the agent: `env` (default) or `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_as: Option<SecretsAs>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentTools {
    /// Tool names (or `server.*` patterns) the agent may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Tool resources (upstream MCP servers) the agent may see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

/// A role contract (as in the AMAS agent contracts): what the agent may do at most.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleContract {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    /// Tools that always need a human's approval for this role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_approval: Vec<String>,
    /// JSON Schema of each tool's input, by tool name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_schemas: BTreeMap<String, Value>,
    /// Side-effect bounds, e.g. `maxFilesChanged`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub side_effect_bounds: Map<String, Value>,
}

/// Server-owned state of an Agent: the takeover level it has earned and how that level changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// The highest takeover level (1–5) this agent's runs may have, earned by its track record;
    /// absent until first set (the server's `governance.initial_earned_level` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earned_takeover_level: Option<u8>,
    /// The last changes of the earned level, oldest first (at most 20 kept; the ledger has all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub takeover_history: Vec<LevelChange>,
    /// A pending suggestion to raise the earned level, made after a streak of clean runs. Raising
    /// always needs a human (`agentctl takeover set`); any change of the level clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_suggestion: Option<LevelSuggestion>,
}

/// A suggestion, made by the server, to raise an Agent's earned level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LevelSuggestion {
    /// The level suggested (the current earned level + 1).
    pub level: u8,
    pub at: DateTime<Utc>,
    /// The clean runs in a row that support it.
    pub clean_runs: u32,
    pub reason: String,
}

/// One recorded change of a takeover level or cap: who, when, from, to, why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LevelChange {
    pub at: DateTime<Utc>,
    /// `kind:id` of who changed it, e.g. `user:alice`.
    pub by: String,
    /// The level before (absent: the default applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u8>,
    pub to: u8,
    pub reason: String,
}

pub type Agent = Resource<AgentSpec, AgentStatus>;

// ---------------------------------------------------------------------------------------------
// ImplementationSpec

/// The task an agent is asked to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImplementationSpecSpec {
    /// The task text (at most 131072 bytes).
    pub text: String,
    /// One line (at most 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// At most 131072 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// At most 50 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance_criteria: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SpecSource>,
    // The working spec (optional).
    /// 1 (low) to 3 (high).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_tier: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_budget: Option<ChangeBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invariants: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecSource {
    pub provider: SourceProvider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceProvider {
    Github,
    Linear,
    #[default]
    Manual,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkMode {
    Feature,
    Refactor,
    Fix,
    Doc,
    Chore,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_loc: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scope {
    /// Path globs the change may touch.
    #[serde(default, rename = "in", skip_serializing_if = "Vec::is_empty")]
    pub in_: Vec<String>,
    /// Path globs the change must not touch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlastRadius {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    #[serde(default)]
    pub data_migration: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImplementationSpecStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Version of the upstream issue this spec was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

pub type ImplementationSpec = Resource<ImplementationSpecSpec, ImplementationSpecStatus>;

// ---------------------------------------------------------------------------------------------
// ImplementationSource

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImplementationSourceSpec {
    pub provider: IssueProvider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SourceAuth>,
    #[serde(default)]
    pub webhook: WebhookConfig,
    #[serde(default)]
    pub scope: SourceScope,
    /// Field mapping overrides (e.g. `summary: title`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mapping: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IssueProvider {
    #[default]
    Github,
    Linear,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceAuth {
    pub secret_ref: SecretKeyRef,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Secret holding the HMAC-SHA256 key used to verify deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

pub type ImplementationSource = Resource<ImplementationSourceSpec, BasicStatus>;

// ---------------------------------------------------------------------------------------------
// AgentRun

/// One run of an agent on one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRunSpec {
    pub agent_ref: Reference,
    /// The task, by reference. Exactly one of `implementationSpecRef` and `implementation.inline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation_spec_ref: Option<Reference>,
    /// The task, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<InlineImplementation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_ref: Option<Reference>,
    /// At most 100 entries, each value at most 2048 UTF-8 bytes. Numbers and booleans are
    /// accepted and stored as strings.
    #[serde(default, deserialize_with = "de_params", skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub parameters: BTreeMap<String, String>,
    /// Secrets the run asks for; each must be in the Agent's `security.allowedSecrets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Unique per namespace: resubmitting the same key returns the existing run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Name of an Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Requested takeover level (1–5); capped by the environment and the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover_level: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Workflow>,
    /// Source checked out into the run's workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceSource>,
}

/// A parameter value as written in a manifest: a string, number or boolean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    String(String),
    Number(serde_json::Number),
    Bool(bool),
}

fn de_params<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, ParamValue>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                ParamValue::String(s) => s,
                ParamValue::Number(n) => n.to_string(),
                ParamValue::Bool(b) => b.to_string(),
            };
            (k, s)
        })
        .collect())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlineImplementation {
    pub inline: ImplementationSpecSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSpec {
    #[serde(rename = "type", default)]
    pub type_: RuntimeType,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeType {
    #[default]
    Local,
    Job,
    Custom,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub resources: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workflow {
    pub steps: Vec<WorkflowStep>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowStep {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation_spec_ref: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<InlineImplementation>,
    #[serde(default, deserialize_with = "de_params", skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "BTreeMap<String, ParamValue>")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceSource {
    /// A git URL or a local path.
    pub repository: String,
    /// Branch, tag or commit; the default branch when absent.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Pending => "Pending",
            RunPhase::Running => "Running",
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Failed => "Failed",
            RunPhase::Cancelled => "Cancelled",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactStatus>,
    /// The change gate's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Value>,
    /// Per-step status of a `spec.workflow` run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowStatus>,
    /// When a cancel was asked for a running run (the controller then stops it and ends it
    /// `Cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Who asked for the cancel (`user:alice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_by: Option<String>,
    /// The commit `spec.workspace` was checked out at (recorded before the agent starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
    /// The run's takeover level and how it was derived (set at admission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<RunTakeover>,
    /// The agent's output exceeded the log cap: `.agent/runner.log` holds its tail only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_truncated: bool,
    /// The sandbox protections in force for the last attempt (local runtime), each applied,
    /// unavailable on this host (with the reason) or disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// A run's effective takeover level: `min(requested, environmentCap, earned)` (DESIGN §6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunTakeover {
    /// `spec.takeoverLevel`, else the environment's `defaultTakeoverLevel` (3 without an
    /// environment).
    pub requested: u8,
    /// The environment's `maxTakeoverLevel` (5 without an environment), raised by an emergency
    /// elevation in force.
    pub environment_cap: u8,
    /// The level of the emergency elevation in force at admission, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elevation: Option<u8>,
    /// The Agent's earned level at admission.
    pub earned: u8,
    /// What the run may do: the minimum of the three.
    pub effective: u8,
    /// The environment's class (`development` without an environment).
    pub environment_class: EnvironmentClass,
}

/// Status of a multi-step run: one entry per `spec.workflow.steps[]`, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowStatus {
    /// Index of the step running or next to run; absent once the run is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<u32>,
    #[serde(default)]
    pub steps: Vec<StepStatus>,
}

/// Status of one workflow step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepStatus {
    pub name: String,
    pub phase: RunPhase,
    /// Attempts of this step so far (1 for the first).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactStatus {
    pub name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

pub type AgentRun = Resource<AgentRunSpec, AgentRunStatus>;

// ---------------------------------------------------------------------------------------------
// Memory

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemorySpec {
    #[serde(rename = "type")]
    pub type_: MemoryType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<MemoryConnection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<MemoryCapability>,
    /// The namespace's default memory.
    #[serde(default)]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<MemoryRetention>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemoryType {
    #[default]
    Sqlite,
    Postgres,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemoryCapability {
    Kv,
    Events,
    Search,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryConnection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// For `sqlite`: a file path relative to the server's data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryRetention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

pub type Memory = Resource<MemorySpec, MemoryStatus>;

// ---------------------------------------------------------------------------------------------
// Environment

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentSpec {
    pub class: EnvironmentClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Highest takeover level a run may have here (1–5); defaults by class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_takeover_level: Option<u8>,
    /// Level a run gets when it asks for none (1–5); defaults by class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_takeover_level: Option<u8>,
    /// Users or groups who may decide approvals here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency: Option<EmergencySettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EnvironmentClass {
    #[default]
    Development,
    Test,
    PreProduction,
    Production,
}

impl EnvironmentClass {
    /// `(maxTakeoverLevel, defaultTakeoverLevel)` of the class (DESIGN §6).
    pub fn default_levels(self) -> (u8, u8) {
        match self {
            EnvironmentClass::Development => (5, 3),
            EnvironmentClass::Test => (4, 2),
            EnvironmentClass::PreProduction => (3, 2),
            EnvironmentClass::Production => (2, 1),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            EnvironmentClass::Development => "development",
            EnvironmentClass::Test => "test",
            EnvironmentClass::PreProduction => "pre-production",
            EnvironmentClass::Production => "production",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmergencySettings {
    #[serde(default)]
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<u32>,
    /// Highest takeover level an emergency elevation may raise the cap to (1–5; default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_level: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorizers: Vec<String>,
}

impl EmergencySettings {
    /// Emergency ceiling when `maxLevel` is not set: L4 (auto). L5 (autonomous) must be allowed
    /// explicitly.
    pub const DEFAULT_MAX_LEVEL: u8 = 4;

    pub fn max_level_or_default(&self) -> u8 {
        self.max_level.unwrap_or(Self::DEFAULT_MAX_LEVEL)
    }
}

/// Server-owned state of an Environment: how its takeover cap changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// The last changes of `spec.maxTakeoverLevel` made with `agentctl takeover set`, oldest first
    /// (at most 20 kept; the ledger has all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub takeover_history: Vec<LevelChange>,
    /// An emergency elevation in force (or ended but not yet cleared by the sweeper: compare
    /// `until` with the time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elevation: Option<Elevation>,
}

/// A granted emergency elevation: the environment's cap is raised to `level` until `until`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Elevation {
    pub level: u8,
    pub until: DateTime<Utc>,
    /// Who asked (`user:alice`).
    pub requested_by: String,
    /// The authoriser who granted it.
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
    pub reason: String,
    /// The Approval that carried the request.
    pub approval: String,
}

impl Elevation {
    /// The elevated level while `now` is before `until`.
    pub fn active_level(&self, now: DateTime<Utc>) -> Option<u8> {
        (now < self.until).then_some(self.level)
    }
}

pub type Environment = Resource<EnvironmentSpec, EnvironmentStatus>;

// ---------------------------------------------------------------------------------------------
// Tool

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// An upstream MCP server; absent for built-in tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpServer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<ToolOperation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<Redaction>,
}

/// Exactly one of `url` (streamable HTTP) and `command` (stdio).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolOperation {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: OperationType,
    #[serde(default)]
    pub critical: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    Deployment,
    ConfigurationChange,
    DataMigration,
    Rollback,
    MonitoringUpdate,
    Troubleshooting,
    FeedbackResponse,
    PermissionChange,
    Read,
    Write,
    Exec,
    Network,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_minute: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redaction {
    /// Argument or result fields whose values are replaced before logging.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Regular expressions whose matches are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

pub type Tool = Resource<ToolSpec, BasicStatus>;

// ---------------------------------------------------------------------------------------------
// Approval

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Who (user or agent) the decision is about.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Reference>,
    pub operation: ApprovalOperation,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Who may decide; from the Environment when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalOperation {
    pub tool: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<OperationType>,
    #[serde(default)]
    pub critical: bool,
    /// Redacted summary of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_summary: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApprovalPhase {
    #[default]
    Pending,
    Approved,
    Denied,
    Expired,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

pub type Approval = Resource<ApprovalSpec, ApprovalStatus>;

// ---------------------------------------------------------------------------------------------
// Policy

/// Rego modules evaluated after the built-in rules; they may only tighten a decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub modules: Vec<RegoModule>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegoModule {
    pub name: String,
    /// Rego source (at most 131072 bytes).
    pub rego: String,
}

pub type Policy = Resource<PolicySpec, BasicStatus>;
