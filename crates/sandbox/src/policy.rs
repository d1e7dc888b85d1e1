//! What the runner is asked to apply ([`Policy`], handed over as JSON on its command line) and
//! what it reports back ([`Report`] in `.agent/sandbox.json`, [`LimitHit`] in `.agent/limit`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The names of the protections, as they appear in `.agent/sandbox.json`, in a run's
/// `status.sandbox`, in `agentctl diagnose` and in `[sandbox] required`.
pub mod names {
    /// Agents run as an unprivileged user and group, supplementary groups dropped.
    pub const IDENTITY: &str = "identity";
    /// `PR_SET_NO_NEW_PRIVS`: setuid binaries and file capabilities give nothing.
    pub const NO_NEW_PRIVS: &str = "no-new-privs";
    /// `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE`, `RLIMIT_NOFILE`, `RLIMIT_NPROC`.
    pub const RLIMITS: &str = "rlimits";
    /// Landlock filesystem rules: write only the run folder's writable parts, read only the run
    /// folder and the read-only allowlist.
    pub const FILESYSTEM: &str = "filesystem";
    /// `none`: a network namespace; `gateway`: Landlock TCP rules; `open`: disabled.
    pub const NETWORK: &str = "network";
    /// Landlock scoping: no signals to, no abstract UNIX sockets of, processes outside the run.
    pub const SIGNALS: &str = "signals";
    /// A pid namespace: the agent sees only its own processes; its init ending kills them all.
    pub const PID_NAMESPACE: &str = "pid-namespace";
    /// A cgroup (v1 `pids`) per attempt: every process of the run is tracked and killed at the end,
    /// and `processes` is enforced per run.
    pub const PROCESS_TREE: &str = "process-tree";
    /// A memory cgroup (v1 `memory`) per attempt enforcing `memoryBytes`.
    pub const MEMORY_CGROUP: &str = "memory-cgroup";
    /// The output quota over the run folder's growth, checked while the agent runs.
    pub const OUTPUT_QUOTA: &str = "output-quota";

    /// Every protection, in the order they are reported.
    pub const ALL: &[&str] = &[
        IDENTITY,
        NO_NEW_PRIVS,
        RLIMITS,
        FILESYSTEM,
        NETWORK,
        SIGNALS,
        PID_NAMESPACE,
        PROCESS_TREE,
        MEMORY_CGROUP,
        OUTPUT_QUOTA,
    ];
}

/// Resource limits of one attempt; `None` leaves a limit unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// CPU seconds of each process (`RLIMIT_CPU`; `SIGXCPU` at the limit, `SIGKILL` a second later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Memory of the whole run: a memory cgroup where available, else the address space of each
    /// process (`RLIMIT_AS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Address space of each process (`RLIMIT_AS`), in addition to `memoryBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space_bytes: Option<u64>,
    /// Largest file a process may write (`RLIMIT_FSIZE`; `SIGXFSZ` beyond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_bytes: Option<u64>,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Processes (and threads) of the run at once: a `pids` cgroup where available, else
    /// `RLIMIT_NPROC` (which counts every process of the agents' user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    /// Growth of the run folder (logs, artifacts, workspace, temp dir) while the agent runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_quota_bytes: Option<u64>,
}

/// The agent's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum Network {
    /// No network at all: a fresh network namespace (not even loopback is up).
    None,
    /// TCP `connect` only to these ports; TCP `bind` denied.
    Gateway { ports: Vec<u16> },
    /// Unrestricted.
    #[default]
    Open,
}

/// The user and group the agent runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Landlock filesystem rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsRules {
    /// Read and execute beneath these paths (missing ones are skipped).
    pub read: Vec<PathBuf>,
    /// Full access beneath these paths (missing ones are skipped).
    pub write: Vec<PathBuf>,
}

/// The output quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Allowed growth of the disk usage beneath `root` since the start, in bytes.
    pub bytes: u64,
    /// The run folder.
    pub root: PathBuf,
    /// How often the usage is measured.
    pub interval_ms: u64,
}

/// Everything the runner applies before it starts the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Drop to this user and group (requires the runner to run as root).
    #[serde(default)]
    pub user: Option<Identity>,
    #[serde(default)]
    pub limits: Limits,
    /// Landlock filesystem rules; `None` disables the filesystem protection.
    #[serde(default)]
    pub filesystem: Option<FsRules>,
    #[serde(default)]
    pub network: Network,
    /// Landlock scoping of signals and abstract UNIX sockets.
    #[serde(default)]
    pub scope_signals: bool,
    /// Start the agent in a new pid namespace (under a small init).
    #[serde(default)]
    pub pid_namespace: bool,
    /// A per-attempt cgroup name (one path component), created under `<cgroupRoot>/pids/agentplane/`
    /// and `<cgroupRoot>/memory/agentplane/`.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Where the cgroup v1 hierarchies are mounted (default `/sys/fs/cgroup`).
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Protections that must be applied: when one is not, the agent is not started.
    #[serde(default)]
    pub required: Vec<String>,
    /// Where `sandbox.json` and `limit` are written (the run's `.agent/`).
    pub state_dir: PathBuf,
    /// Why there is no `user` although the server asked for one (reported as `identity`
    /// unavailable with this reason instead of disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_unavailable: Option<String>,
}

impl Policy {
    pub fn cgroup_root(&self) -> PathBuf {
        self.cgroup_root.clone().unwrap_or_else(|| PathBuf::from(crate::cgroup::DEFAULT_ROOT))
    }
}

/// How one protection fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectionState {
    /// In force for this run.
    Applied,
    /// Asked for, but this host cannot provide it (the reason says why).
    Unavailable,
    /// Not asked for (by configuration or by the Agent, e.g. `network: open`).
    Disabled,
}

impl ProtectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtectionState::Applied => "applied",
            ProtectionState::Unavailable => "unavailable",
            ProtectionState::Disabled => "disabled",
        }
    }
}

/// One protection and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    pub name: String,
    pub status: ProtectionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Protection {
    pub fn applied(name: &str, detail: impl Into<Option<String>>) -> Self {
        Protection { name: name.into(), status: ProtectionState::Applied, reason: detail.into() }
    }
    pub fn unavailable(name: &str, reason: impl Into<String>) -> Self {
        Protection { name: name.into(), status: ProtectionState::Unavailable, reason: Some(reason.into()) }
    }
    pub fn disabled(name: &str, reason: impl Into<String>) -> Self {
        Protection { name: name.into(), status: ProtectionState::Disabled, reason: Some(reason.into()) }
    }
}

/// `.agent/sandbox.json`: what was in force for the attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub protections: Vec<Protection>,
}

impl Report {
    pub fn get(&self, name: &str) -> Option<&Protection> {
        self.protections.iter().find(|p| p.name == name)
    }

    /// Sets (or replaces) the entry of `p.name`.
    pub fn set(&mut self, p: Protection) {
        match self.protections.iter_mut().find(|x| x.name == p.name) {
            Some(x) => *x = p,
            None => self.protections.push(p),
        }
    }

    /// The first required protection that was asked for but is unavailable, with why. A
    /// protection that is disabled (not asked for, e.g. no memory limit or `network: open`) is
    /// not missing; one not reported is not checked here.
    pub fn missing<'a>(&'a self, required: &'a [String]) -> Option<(&'a str, String)> {
        required.iter().find_map(|r| match self.get(r) {
            Some(p) if p.status == ProtectionState::Unavailable => {
                Some((r.as_str(), format!("unavailable ({})", p.reason.as_deref().unwrap_or("-"))))
            }
            _ => None,
        })
    }

    /// Orders the entries as [`names::ALL`] (unknown names last).
    pub fn sort(&mut self) {
        let pos = |n: &str| names::ALL.iter().position(|x| *x == n).unwrap_or(usize::MAX);
        self.protections.sort_by_key(|p| pos(&p.name));
    }
}

/// Which limit ended a run (`.agent/limit`, one word, then optionally a space and a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitHit {
    CpuLimit,
    MemoryLimit,
    FileSizeLimit,
    ProcessLimit,
    OutputQuotaExceeded,
    /// A required protection could not be applied; the agent was not started.
    SandboxUnavailable,
}

impl LimitHit {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::CpuLimit => "CpuLimit",
            LimitHit::MemoryLimit => "MemoryLimit",
            LimitHit::FileSizeLimit => "FileSizeLimit",
            LimitHit::ProcessLimit => "ProcessLimit",
            LimitHit::OutputQuotaExceeded => "OutputQuotaExceeded",
            LimitHit::SandboxUnavailable => "SandboxUnavailable",
        }
    }

    pub fn parse(s: &str) -> Option<LimitHit> {
        Some(match s {
            "CpuLimit" => LimitHit::CpuLimit,
            "MemoryLimit" => LimitHit::MemoryLimit,
            "FileSizeLimit" => LimitHit::FileSizeLimit,
            "ProcessLimit" => LimitHit::ProcessLimit,
            "OutputQuotaExceeded" => LimitHit::OutputQuotaExceeded,
            "SandboxUnavailable" => LimitHit::SandboxUnavailable,
            _ => return None,
        })
    }
}

impl fmt::Display for LimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads `.agent/limit`: the limit and its message.
pub fn read_limit(state_dir: &std::path::Path) -> Option<(LimitHit, String)> {
    let text = std::fs::read_to_string(state_dir.join(LIMIT_FILE)).ok()?;
    let line = text.lines().next()?.trim();
    let (word, msg) = line.split_once(' ').unwrap_or((line, ""));
    Some((LimitHit::parse(word)?, msg.trim().to_string()))
}

/// Reads `.agent/sandbox.json`.
pub fn read_report(state_dir: &std::path::Path) -> Option<Report> {
    let text = std::fs::read(state_dir.join(REPORT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// File name of the report in the state dir.
pub const REPORT_FILE: &str = "sandbox.json";
/// File name of the limit record in the state dir.
pub const LIMIT_FILE: &str = "limit";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn policy_round_trips_and_rejects_unknown_fields() {
        let p = Policy {
            user: Some(Identity { uid: 5, gid: 6 }),
            network: Network::Gateway { ports: vec![7300] },
            limits: Limits { cpu_seconds: Some(1), ..Default::default() },
            state_dir: "/x/.agent".into(),
            ..Default::default()
        };
        let j = serde_json::to_string(&p).unwrap();
        assert!(j.contains(r#""network":{"mode":"gateway","ports":[7300]}"#), "{j}");
        assert_eq!(serde_json::from_str::<Policy>(&j).unwrap(), p);
        assert!(serde_json::from_str::<Policy>(r#"{"stateDir":"/x","bogus":1}"#).is_err());
    }

    #[test]
    fn report_names_the_first_missing_requirement() {
        let mut r = Report::default();
        r.set(Protection::applied(names::RLIMITS, None));
        r.set(Protection::disabled(names::MEMORY_CGROUP, "no limit"));
        r.set(Protection::unavailable(names::FILESYSTEM, "no landlock"));
        let req = vec![names::RLIMITS.to_string(), names::FILESYSTEM.to_string(), names::MEMORY_CGROUP.to_string()];
        let (n, why) = r.missing(&req).unwrap();
        assert_eq!(n, names::FILESYSTEM);
        assert!(why.contains("no landlock"));
        assert!(r.missing(&req[..1]).is_none());
        assert_eq!(LimitHit::parse("CpuLimit"), Some(LimitHit::CpuLimit));
        assert_eq!(LimitHit::parse("x"), None);
    }
}
