//! The local adapter's side of the sandbox (docs/sandbox.md): the settings, the run folder's
//! ownership and permissions, the policy handed to the agent-runner, secrets as files, and the
//! runner's report and limit read back after the exit.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentplane_api::{AgentLimits, NetworkMode, SandboxProtection, SandboxStatus};
use agentplane_sandbox::cgroup::{self, Controller};
use agentplane_sandbox::policy::{FsRules, Identity, Quota, names};
use agentplane_sandbox::{LimitHit, Limits, Network, Policy};

use crate::spec::{RunSpec, StatusReason};

/// The read-only allowlist agents get by default: what programs need to run.
pub const DEFAULT_READ_ONLY_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/etc/gitconfig",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
];

/// Paths agents may write by default besides their run folder.
pub const DEFAULT_WRITABLE_PATHS: &[&str] = &["/dev/null", "/dev/full", "/dev/tty"];

/// How the local adapter confines agents. `None` in [`super::LocalConfig::sandbox`] starts them
/// unconfined (own session and group only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// The user and group agents run as (the server must run as root); `None` keeps the server's.
    pub user: Option<Identity>,
    /// Read (and execute) beneath these paths, besides the run folder.
    pub read_only_paths: Vec<PathBuf>,
    /// Write beneath these paths, besides the run folder's `workspace/`, `artifacts/`, `tmp/`.
    pub writable_paths: Vec<PathBuf>,
    /// TCP ports a `gateway` network may connect to (the server's; a run's `gatewayUrl` port is
    /// added).
    pub gateway_ports: Vec<u16>,
    /// Apply Landlock filesystem rules.
    pub filesystem: bool,
    /// Landlock scoping of signals and abstract sockets.
    pub scope_signals: bool,
    /// A pid namespace per attempt.
    pub pid_namespace: bool,
    /// Per-attempt cgroups (v1 `pids` and `memory`).
    pub cgroups: bool,
    /// Where the cgroup hierarchies are mounted (default `/sys/fs/cgroup`).
    pub cgroup_root: Option<PathBuf>,
    /// How often the output quota is measured.
    pub quota_interval: Duration,
    /// Protections that must be applied, else the attempt fails with `SandboxUnavailable`.
    pub required: Vec<String>,
    /// Why `user` is `None` although the server runs as root (e.g. the agent user cannot reach
    /// the data directory): `identity` is then reported unavailable with this reason.
    pub user_unavailable: Option<String>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            user: None,
            read_only_paths: DEFAULT_READ_ONLY_PATHS.iter().map(PathBuf::from).collect(),
            writable_paths: DEFAULT_WRITABLE_PATHS.iter().map(PathBuf::from).collect(),
            gateway_ports: Vec::new(),
            filesystem: true,
            scope_signals: true,
            pid_namespace: true,
            cgroups: true,
            cgroup_root: None,
            quota_interval: Duration::from_millis(250),
            required: Vec::new(),
            user_unavailable: None,
        }
    }
}

impl SandboxSettings {
    /// Every protection required (what `--require-sandbox` means).
    pub fn require_all(mut self) -> Self {
        self.required = names::ALL.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// The cgroup name of an attempt.
pub(crate) fn cgroup_name(uid: &str, attempt: u32) -> String {
    format!("{uid}-{attempt}")
}

fn limits(l: &AgentLimits) -> Limits {
    Limits {
        cpu_seconds: l.cpu_seconds,
        memory_bytes: l.memory_bytes,
        address_space_bytes: l.address_space_bytes,
        file_size_bytes: l.file_size_bytes,
        open_files: l.open_files,
        processes: l.processes,
        output_quota_bytes: l.output_quota_bytes,
    }
}

fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split(['/', '?', '#']).next()?;
    let port = host.rsplit_once(':').map(|(_, p)| p);
    match port.and_then(|p| p.parse().ok()) {
        Some(p) => Some(p),
        None if url.starts_with("https://") => Some(443),
        None if url.starts_with("http://") => Some(80),
        None => None,
    }
}

/// The policy of one attempt.
pub(crate) fn policy(s: &SandboxSettings, spec: &RunSpec, dir: &Path, program: &Path) -> Policy {
    let mut ports = s.gateway_ports.clone();
    if let Some(p) = spec.gateway_url.as_deref().and_then(url_port) {
        ports.push(p);
    }
    ports.sort_unstable();
    ports.dedup();
    let network = match spec.agent.network.unwrap_or_default() {
        NetworkMode::None => Network::None,
        NetworkMode::Gateway => Network::Gateway { ports },
        NetworkMode::Open => Network::Open,
    };
    let filesystem = s.filesystem.then(|| {
        let mut read = vec![dir.to_path_buf(), program.to_path_buf()];
        read.extend(s.read_only_paths.iter().cloned());
        let mut write: Vec<PathBuf> = ["workspace", "artifacts", "tmp"].iter().map(|d| dir.join(d)).collect();
        write.extend(s.writable_paths.iter().cloned());
        FsRules { read, write }
    });
    let quota = spec.limits.output_quota_bytes.map(|bytes| Quota {
        bytes,
        root: dir.to_path_buf(),
        interval_ms: u64::try_from(s.quota_interval.as_millis()).unwrap_or(u64::MAX),
    });
    Policy {
        user: s.user,
        limits: limits(&spec.limits),
        filesystem,
        network,
        scope_signals: s.scope_signals,
        pid_namespace: s.pid_namespace,
        cgroup: s.cgroups.then(|| cgroup_name(&spec.run.uid, spec.attempt)),
        cgroup_root: s.cgroup_root.clone(),
        quota,
        required: s.required.clone(),
        state_dir: dir.join(".agent"),
        user_unavailable: s.user.is_none().then(|| s.user_unavailable.clone()).flatten(),
    }
}

fn chown_tree(path: &Path, id: Identity) -> std::io::Result<()> {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p)?;
        if m.file_type().is_symlink() {
            std::os::unix::fs::lchown(&p, Some(id.uid), Some(id.gid))?;
            continue;
        }
        chown(&p, Some(id.uid), Some(id.gid))?;
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

/// Gets the run folder ready for a confined agent: `tmp/` exists and is empty; with an agent
/// user, the run folder and its parents up to `base` can be traversed (0711, not listed),
/// `.agent/` is the server's alone (0700), and `workspace/`, `artifacts/`, `tmp/` belong to the
/// agent user (0700). Blocking.
pub(crate) fn prepare_dir(s: &SandboxSettings, base: &Path, dir: &Path) -> std::io::Result<()> {
    let tmp = dir.join("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let Some(id) = s.user else { return Ok(()) };
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    let mut p = dir.to_path_buf();
    while p.starts_with(base) {
        mode(&p, 0o711)?;
        if !p.pop() {
            break;
        }
    }
    mode(&dir.join(".agent"), 0o700)?;
    for sub in ["workspace", "artifacts", "tmp"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d)?;
        // A workspace the server cloned (as root) becomes the agent's; one an earlier attempt
        // left is the agent's already (only its top is checked then).
        let owned = std::fs::metadata(&d).map(|m| std::os::unix::fs::MetadataExt::uid(&m) == id.uid)?;
        if !owned || sub != "workspace" {
            chown_tree(&d, id)?;
        } else {
            chown(&d, Some(id.uid), Some(id.gid))?;
        }
        mode(&d, 0o700)?;
    }
    for f in ["run.json", "agent-runner.json"] {
        let _ = mode(&dir.join(f), 0o644);
    }
    Ok(())
}

/// Writes secrets as files `secrets/<VAR>` (0400, owned by the agent user) and returns the
/// `<VAR>_FILE` variables naming them. Blocking.
pub(crate) fn write_secret_files(
    user: Option<Identity>,
    dir: &Path,
    secrets: &[(String, String)],
) -> std::io::Result<Vec<(String, String)>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let sdir = dir.join("secrets");
    if sdir.exists() {
        std::fs::remove_dir_all(&sdir)?;
    }
    std::fs::create_dir(&sdir)?;
    std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o500))?;
    let mut env = Vec::new();
    for (name, value) in secrets {
        let path = sdir.join(name);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&path)?;
        f.write_all(value.as_bytes())?;
        if let Some(id) = user {
            chown(&path, Some(id.uid), Some(id.gid))?;
        }
        env.push((format!("{name}_FILE"), path.display().to_string()));
    }
    if let Some(id) = user {
        chown(&sdir, Some(id.uid), Some(id.gid))?;
    }
    Ok(env)
}

/// Removes `secrets/` of a run folder (at the end of every attempt). Blocking.
pub(crate) fn remove_secret_files(dir: &Path) {
    let sdir = dir.join("secrets");
    if sdir.exists() {
        let _ = std::fs::set_permissions(&sdir, std::fs::Permissions::from_mode(0o700));
        if let Err(e) = std::fs::remove_dir_all(&sdir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the run's secret files");
        }
    }
}

/// Kills whatever is left in the attempt's cgroups and removes them (after a cancel or timeout
/// the runner may have been killed before it could). Blocking.
pub(crate) fn destroy_cgroups(s: &SandboxSettings, uid: &str, attempt: u32) {
    if !s.cgroups {
        return;
    }
    let root = s.cgroup_root.clone().unwrap_or_else(|| PathBuf::from(cgroup::DEFAULT_ROOT));
    let name = cgroup_name(uid, attempt);
    for c in [Controller::Pids, Controller::Memory] {
        let d = cgroup::path(&root, c, &name);
        if d.exists() && !cgroup::destroy(&d, Duration::from_secs(2)) {
            tracing::warn!(cgroup = %d.display(), "cannot remove the attempt's cgroup");
        }
    }
}

/// The runner's report (`.agent/sandbox.json`) as the run's status shows it.
pub(crate) fn read_status(dir: &Path) -> Option<SandboxStatus> {
    let r = agentplane_sandbox::policy::read_report(&dir.join(".agent"))?;
    Some(SandboxStatus {
        protections: r
            .protections
            .into_iter()
            .map(|p| SandboxProtection { name: p.name, status: p.status.as_str().to_string(), reason: p.reason })
            .collect(),
    })
}

/// A status for an attempt the runner could not confine at all (no runner binary).
pub(crate) fn unavailable_status(why: &str) -> SandboxStatus {
    SandboxStatus {
        protections: names::ALL
            .iter()
            .map(|n| SandboxProtection { name: n.to_string(), status: "unavailable".into(), reason: Some(why.into()) })
            .collect(),
    }
}

/// The limit that ended the attempt (`.agent/limit`), as a status reason and message.
pub(crate) fn read_limit(dir: &Path) -> Option<(StatusReason, String)> {
    let (hit, msg) = agentplane_sandbox::policy::read_limit(&dir.join(".agent"))?;
    let reason = match hit {
        LimitHit::CpuLimit => StatusReason::CpuLimit,
        LimitHit::MemoryLimit => StatusReason::MemoryLimit,
        LimitHit::FileSizeLimit => StatusReason::FileSizeLimit,
        LimitHit::ProcessLimit => StatusReason::ProcessLimit,
        LimitHit::OutputQuotaExceeded => StatusReason::OutputQuotaExceeded,
        LimitHit::SandboxUnavailable => StatusReason::SandboxUnavailable,
    };
    Some((reason, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ports_come_from_urls() {
        assert_eq!(url_port("http://127.0.0.1:7300/mcp"), Some(7300));
        assert_eq!(url_port("https://gw.example/mcp"), Some(443));
        assert_eq!(url_port("http://gw.example"), Some(80));
        assert_eq!(url_port("gw:81"), Some(81));
        assert_eq!(url_port("nonsense"), None);
    }
}
