//! The server's side of the local runtime's sandbox (docs/sandbox.md): the agent user (looked up,
//! or created with `useradd`), the data directory's permissions, the settings handed to the local
//! adapter, and the admission check of an Agent's `spec.limits` against `[sandbox.maximums]`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use agentplane_api::{AnyResource, FieldError, Reason, ValidationErrors};
use agentplane_runtime::SandboxSettings;
use agentplane_sandbox::policy::Identity;
use agentplane_sandbox::probe;

use crate::config::SandboxConfig;
use crate::error::ApiError;

/// Looks the agent user up, creating it when allowed. `Ok(None)` when the server does not run
/// as root (agents then run as the server's user) or no user is configured.
pub fn agent_identity(cfg: &SandboxConfig) -> Result<Option<Identity>, String> {
    if !nix::unistd::Uid::effective().is_root() || cfg.user.is_empty() {
        return Ok(None);
    }
    match probe::resolve_user(&cfg.user) {
        Ok(id) if id.uid == 0 => Err(format!("sandbox.user = {:?} is root; agents never run as root", cfg.user)),
        Ok(id) => Ok(Some(id)),
        Err(e) if cfg.create_user && !cfg.user.contains(':') => {
            let out = std::process::Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin", "--comment", "agentplane agents", "--", &cfg.user])
                .output()
                .map_err(|e2| format!("{e}; creating it with useradd failed: {e2}"))?;
            // Another server may have created it at the same time (exit 9: already exists).
            if !out.status.success() && out.status.code() != Some(9) {
                return Err(format!("{e}; useradd failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            tracing::info!(user = %cfg.user, "created the agent user");
            probe::resolve_user(&cfg.user).map(Some)
        }
        Err(e) => Err(e),
    }
}

/// Whether the agent user can reach `dir`: every folder above it must let the user search it
/// (the data directory itself is made 0711 by [`harden_data_dir`]). A data directory under a
/// private home (`/root` is 0700) cannot be used with a separate agent user.
pub fn check_reachable(dir: &Path, id: Identity) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let full = std::fs::canonicalize(dir).map_err(|e| format!("data directory {}: {e}", dir.display()))?;
    for ancestor in full.ancestors().skip(1) {
        let m = std::fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        let mode = m.mode();
        let searchable =
            mode & 0o001 != 0 || (m.gid() == id.gid && mode & 0o010 != 0) || (m.uid() == id.uid && mode & 0o100 != 0);
        if !searchable {
            return Err(format!(
                "the agent user (uid {}) cannot reach the data directory {}: {} is mode {:o}; put the data \
                 directory under a folder others may search (e.g. --data-dir /var/lib/agentplane) or allow it \
                 (chmod o+x {})",
                id.uid,
                full.display(),
                ancestor.display(),
                mode & 0o7777,
                ancestor.display()
            ));
        }
    }
    Ok(())
}

/// With an agent user, the data directory must let it reach its run folder (search only, 0711)
/// but nothing else: every file directly inside (database, keys, tokens) becomes 0600 and every
/// folder but `runs/` 0700.
pub fn harden_data_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        let mode = if m.is_dir() {
            if e.file_name() == "runs" { 0o711 } else { 0o700 }
        } else if m.is_file() {
            0o600
        } else {
            continue;
        };
        if m.permissions().mode() & 0o777 != mode {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// The local adapter's settings; `None` when the sandbox is off.
pub fn settings(
    cfg: &SandboxConfig,
    user: Option<Identity>,
    user_unavailable: Option<String>,
    gateway_port: u16,
) -> Option<SandboxSettings> {
    if !cfg.enabled {
        return None;
    }
    Some(SandboxSettings {
        user,
        read_only_paths: cfg.read_only_paths.clone(),
        writable_paths: cfg.writable_paths.clone(),
        gateway_ports: vec![gateway_port],
        filesystem: cfg.filesystem,
        scope_signals: cfg.scope_signals,
        pid_namespace: cfg.pid_namespace,
        cgroups: cfg.cgroups,
        cgroup_root: Some(cfg.cgroup_root.clone()),
        quota_interval: Duration::from_millis(cfg.quota_interval_millis),
        required: if cfg.require { cfg.required.clone() } else { Vec::new() },
        user_unavailable,
    })
}

/// Refuses an Agent whose `spec.limits` exceed `[sandbox.maximums]` (400, naming the field, the
/// maximum and the value).
pub fn check_limits(cfg: &SandboxConfig, res: &AnyResource) -> Result<(), ApiError> {
    let AnyResource::Agent(a) = res else { return Ok(()) };
    match a.spec.limits.exceeds(&cfg.maximums.to_api()) {
        None => Ok(()),
        Some((field, v, max)) => {
            let path = format!("spec.limits.{field}");
            Err(ValidationErrors(vec![FieldError {
                message: format!(
                    "{path} is {v}; this server allows at most {max} ([sandbox.maximums]); lower it or ask the \
                     operator to raise the maximum"
                ),
                field: path,
                reason: Reason::OutOfRange,
                limit: Some(max),
                actual: Some(v),
            }])
            .into())
        }
    }
}

#[cfg(test)]
mod reach_tests {
    use super::*;

    #[test]
    fn a_data_directory_under_a_private_folder_is_unreachable_for_the_agent_user() {
        let base = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let private = base.path().join("home");
        let data = private.join("proj/.agentplane");
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
        let nobody = Identity { uid: 65534, gid: 65534 };
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap_or_else(|e| panic!("{e}"));
        let e = check_reachable(&data, nobody).expect_err("a 0700 ancestor blocks the agent user");
        assert!(e.contains("mode 700") && e.contains("--data-dir"), "{e}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_reachable(&data, nobody), Ok(()));
    }
}
