//! What a scheduler hands to an adapter ([`RunSpec`]) and what it gets back ([`RuntimeRef`],
//! [`RuntimeStatus`]).

use std::collections::BTreeMap;
use std::fmt;

use agentplane_api::{
    AgentLimits, AgentProviderSpec, AgentRunSpec, AgentSpec, ArtifactStatus, ImplementationSpecSpec, RunPhase,
    SandboxStatus,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default cap of `.agent/runner.log`: 10 MiB.
pub const DEFAULT_LOG_CAP_BYTES: u64 = 10 * 1024 * 1024;

/// A secret value. Its `Debug` and `Display` print `[redacted]`; it is not `Serialize`, so it
/// cannot end up in a JSON file or a log by accident. Read it with [`SecretValue::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }
    /// The value itself: only for handing it to the agent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for SecretValue {
    fn from(s: &str) -> Self {
        SecretValue(s.to_string())
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        SecretValue(s)
    }
}

/// Where the run's `workspace/` comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// A git URL or a local path to a git repository.
    pub repository: String,
    /// Branch, tag or commit; the repository's default branch when absent.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
}

/// Which step of an AgentRun's `spec.workflow.steps[]` an attempt runs. Steps run in order in the
/// same run folder: a step after the first finds `workspace/` as the previous step left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSpec {
    /// 0-based position of the step.
    pub index: u32,
    /// The step's `name`.
    pub name: String,
    /// How many steps the workflow has.
    pub count: u32,
}

/// Identity of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunIdentity {
    pub name: String,
    pub uid: String,
    pub namespace: String,
}

/// Everything an adapter needs to start one attempt of one run, already resolved and admitted by
/// the control plane (references followed, defaults applied, secrets checked against the Agent's
/// `security.allowedSecrets`).
///
/// Serialises to camelCase JSON *without* the secrets (the custom adapter adds them explicitly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    pub run: RunIdentity,
    /// 1 for the first attempt; every later attempt of the run (a retry, or the next workflow
    /// step) has a higher number.
    pub attempt: u32,
    /// The AgentRun spec as submitted (written to `run.json`).
    pub run_spec: AgentRunSpec,
    /// Name of the resolved AgentProvider.
    pub provider_name: String,
    pub provider: AgentProviderSpec,
    pub agent_name: String,
    pub agent: AgentSpec,
    pub implementation: ImplementationSpecSpec,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// The resolved memory (for example the Memory resource's spec), if any.
    #[serde(default)]
    pub memory: Option<Value>,
    #[serde(default)]
    pub workspace: Option<WorkspaceSpec>,
    #[serde(default)]
    pub gateway_url: Option<String>,
    /// The run-scoped API token handed to the agent as `AGENTPLANE_TOKEN`: it lets the agent
    /// read its own run (and reach the gateway) until the run ends. Never serialised.
    #[serde(skip)]
    pub token: Option<SecretValue>,
    /// The secret values this run may receive, by secret name (`name`, or `name/key` for a
    /// `secretKeyRef` with a key). Only what the Agent allows; never serialised.
    #[serde(skip)]
    pub secrets: BTreeMap<String, SecretValue>,
    /// Wall-clock limit of the agent process; none when absent.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Cap of the run's log (default [`DEFAULT_LOG_CAP_BYTES`]); the tail is kept.
    #[serde(default = "default_log_cap")]
    pub log_cap_bytes: u64,
    /// The workflow step this attempt runs, when the AgentRun has `spec.workflow.steps[]`;
    /// `implementation` and `parameters` are then already those of the step (the control plane
    /// merges the run's parameters with the step's).
    #[serde(default)]
    pub step: Option<StepSpec>,
    /// The effective limits of this attempt: the Agent's `spec.limits` with the server's
    /// defaults filled in (the control plane merges them and checks the maximums).
    #[serde(default)]
    pub limits: AgentLimits,
}

fn default_log_cap() -> u64 {
    DEFAULT_LOG_CAP_BYTES
}

impl RunSpec {
    /// A spec with the given identity and provider; everything else empty or default.
    pub fn new(namespace: &str, name: &str, uid: &str, provider: AgentProviderSpec) -> Self {
        RunSpec {
            run: RunIdentity { name: name.into(), uid: uid.into(), namespace: namespace.into() },
            attempt: 1,
            run_spec: AgentRunSpec::default(),
            provider_name: String::new(),
            provider,
            agent_name: String::new(),
            agent: AgentSpec::default(),
            implementation: ImplementationSpecSpec::default(),
            parameters: BTreeMap::new(),
            memory: None,
            workspace: None,
            gateway_url: None,
            token: None,
            secrets: BTreeMap::new(),
            timeout_seconds: None,
            log_cap_bytes: DEFAULT_LOG_CAP_BYTES,
            step: None,
            limits: AgentLimits::default(),
        }
    }
}

/// An adapter's handle on a submitted attempt. Opaque to the caller; stable across restarts of
/// the server (store it in `AgentRun.status.runtimeRef`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RuntimeRef(pub String);

impl RuntimeRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuntimeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an attempt ended the way it did (CamelCase on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusReason {
    /// The provider's binary does not exist or is not executable.
    MissingBinary,
    /// The process could not be started (or the runtime refused it).
    SubmitFailed,
    /// An argument, environment or input-file template could not be rendered.
    TemplateError,
    /// The workspace could not be prepared (clone, checkout, input files).
    WorkspaceError,
    /// The run exceeded its timeout and was killed.
    TimedOut,
    /// The run was cancelled.
    Cancelled,
    /// The agent exited with a non-zero code or was killed by a signal.
    NonZeroExit,
    /// The process vanished without a recorded exit (for example the machine rebooted).
    Lost,
    /// A process used up its CPU seconds (`limits.cpuSeconds`).
    CpuLimit,
    /// The run reached its memory limit (`limits.memoryBytes`).
    MemoryLimit,
    /// A process wrote a file larger than `limits.fileSizeBytes`.
    FileSizeLimit,
    /// The run reached its process limit (`limits.processes`).
    ProcessLimit,
    /// The run folder grew beyond `limits.outputQuotaBytes`; the run was stopped.
    OutputQuotaExceeded,
    /// A required sandbox protection is not available on this host; the agent was not started.
    SandboxUnavailable,
}

impl StatusReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::MissingBinary => "MissingBinary",
            StatusReason::SubmitFailed => "SubmitFailed",
            StatusReason::TemplateError => "TemplateError",
            StatusReason::WorkspaceError => "WorkspaceError",
            StatusReason::TimedOut => "TimedOut",
            StatusReason::Cancelled => "Cancelled",
            StatusReason::NonZeroExit => "NonZeroExit",
            StatusReason::Lost => "Lost",
            StatusReason::CpuLimit => "CpuLimit",
            StatusReason::MemoryLimit => "MemoryLimit",
            StatusReason::FileSizeLimit => "FileSizeLimit",
            StatusReason::ProcessLimit => "ProcessLimit",
            StatusReason::OutputQuotaExceeded => "OutputQuotaExceeded",
            StatusReason::SandboxUnavailable => "SandboxUnavailable",
        }
    }

    /// Whether another attempt of the same spec can succeed. Configuration mistakes (missing
    /// binary, bad template), cancellation, a limit of the sandbox (the same spec would hit it
    /// again) and a missing sandbox protection are not retryable; everything else is, within the
    /// run's `retryLimit`.
    pub fn retryable(self) -> bool {
        match self {
            StatusReason::MissingBinary
            | StatusReason::TemplateError
            | StatusReason::Cancelled
            | StatusReason::CpuLimit
            | StatusReason::MemoryLimit
            | StatusReason::FileSizeLimit
            | StatusReason::ProcessLimit
            | StatusReason::OutputQuotaExceeded
            | StatusReason::SandboxUnavailable => false,
            StatusReason::SubmitFailed
            | StatusReason::WorkspaceError
            | StatusReason::TimedOut
            | StatusReason::NonZeroExit
            | StatusReason::Lost => true,
        }
    }
}

impl fmt::Display for StatusReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one attempt stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    pub phase: RunPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<StatusReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For `Failed`: whether another attempt can help (see [`StatusReason::retryable`]).
    #[serde(default)]
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Collected after exit; paths are relative to the run folder (local adapter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactStatus>,
    /// The commit the workspace was checked out at, when it came from git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
    /// Whether earlier log output was dropped to respect the log cap.
    #[serde(default)]
    pub log_truncated: bool,
    /// The sandbox protections in force (local adapter with a sandbox), set when the attempt ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Box<SandboxStatus>>,
}

impl RuntimeStatus {
    /// A `Failed` status with `reason`, its retryability, and `message`.
    pub fn failed(reason: StatusReason, message: impl Into<String>) -> Self {
        RuntimeStatus {
            phase: RunPhase::Failed,
            reason: Some(reason),
            retryable: reason.retryable(),
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_debug_or_json() {
        let mut spec = RunSpec::new("ns", "r", "u", AgentProviderSpec { binary: "x".into(), ..Default::default() });
        spec.secrets.insert("token".into(), SecretValue::new("hunter2-very-secret"));
        let debug = format!("{spec:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("[redacted]"));
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!json.contains("token"), "{json}");
    }

    #[test]
    fn status_wire_format_is_camel_case() {
        let mut s = RuntimeStatus::failed(StatusReason::Lost, "gone");
        s.exit_code = Some(3);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["phase"], "Failed");
        assert_eq!(v["reason"], "Lost");
        assert_eq!(v["exitCode"], 3);
        assert_eq!(v["retryable"], true);
        assert_eq!(v["logTruncated"], false);
        let back: RuntimeStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
