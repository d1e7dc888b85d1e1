//! What this host provides for the sandbox (`agentctl diagnose`, the server's start-up check).
//! Probing changes nothing in the calling process: namespaces are tried in a throw-away thread
//! (`unshare` of the network and pid namespaces only affects the calling thread), Landlock
//! rulesets are created but never enforced, cgroup groups are created and removed at once.

use std::path::PathBuf;

use landlock::{ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, Scope};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Controller};

/// What to probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeInput {
    /// The agent user to look for (name or `uid:gid`); none skips that check.
    pub user: Option<String>,
    /// Where cgroup v1 hierarchies are mounted (default `/sys/fs/cgroup`).
    pub cgroup_root: Option<PathBuf>,
}

/// One capability of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub available: bool,
    pub detail: String,
}

/// The host's capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostProbe {
    /// The highest Landlock ABI this kernel provides (0: none).
    pub landlock_abi: u8,
    pub running_as_root: bool,
    pub checks: Vec<Check>,
}

fn check(name: &str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check { name: name.into(), available: true, detail },
        Err(detail) => Check { name: name.into(), available: false, detail },
    }
}

/// The highest Landlock ABI the kernel accepts, found by creating (not enforcing) rulesets that
/// need each ABI's access rights.
pub fn landlock_abi() -> u8 {
    let fs = |abi: ABI| {
        Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create())
            .is_ok()
    };
    if !fs(ABI::V1) {
        return 0;
    }
    let mut best = 1;
    for (n, abi) in [(2, ABI::V2), (3, ABI::V3)] {
        if fs(abi) {
            best = n;
        }
    }
    let net = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::from_all(ABI::V4))
        .and_then(|r| r.create())
        .is_ok();
    if best == 3 && net {
        best = 4;
        if fs(ABI::V5) {
            best = 5;
        }
    }
    let scope = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .scope(Scope::Signal)
        .and_then(|r| r.create())
        .is_ok();
    if best == 5 && scope {
        best = 6;
    }
    best
}

fn in_thread(flags: CloneFlags) -> Result<String, String> {
    std::thread::spawn(move || unshare(flags).map_err(|e| e.to_string()))
        .join()
        .map_err(|_| "probe thread panicked".to_string())?
        .map(|()| "unshare works".to_string())
}

/// Looks up the agent user: a name from the user database, or `uid:gid`.
pub fn resolve_user(spec: &str) -> Result<crate::policy::Identity, String> {
    if let Some((u, g)) = spec.split_once(':')
        && let (Ok(uid), Ok(gid)) = (u.parse::<u32>(), g.parse::<u32>())
    {
        return Ok(crate::policy::Identity { uid, gid });
    }
    match nix::unistd::User::from_name(spec) {
        Ok(Some(u)) => Ok(crate::policy::Identity { uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
        Ok(None) => Err(format!("user `{spec}` does not exist")),
        Err(e) => Err(format!("looking up user `{spec}`: {e}")),
    }
}

/// Probes the host.
pub fn probe(input: &ProbeInput) -> HostProbe {
    let root = nix::unistd::Uid::effective().is_root();
    let abi = landlock_abi();
    let mut checks = Vec::new();
    checks.push(check(
        "root",
        if root {
            Ok("the server can run agents as another user".into())
        } else {
            Err("not root: agents run as the server's own user (identity unavailable)".into())
        },
    ));
    let ll = |min: u8, what: &str| {
        if abi >= min {
            Ok(format!("{what} (Landlock ABI {abi} >= {min})"))
        } else {
            Err(format!("{what} needs Landlock ABI {min}; this kernel has {abi}"))
        }
    };
    checks.push(check("landlock-filesystem", ll(1, "filesystem rules")));
    checks.push(check("landlock-network", ll(4, "TCP bind/connect rules")));
    checks.push(check("landlock-scope", ll(6, "signal and abstract-socket scoping")));
    checks.push(check("net-namespace", in_thread(CloneFlags::CLONE_NEWNET)));
    checks.push(check("pid-namespace", in_thread(CloneFlags::CLONE_NEWPID)));
    let croot = input.cgroup_root.clone().unwrap_or_else(|| PathBuf::from(cgroup::DEFAULT_ROOT));
    for (name, c) in [("cgroup-pids", Controller::Pids), ("cgroup-memory", Controller::Memory)] {
        checks.push(check(
            name,
            cgroup::available(&croot, c).map(|()| format!("v1 hierarchy at {}", cgroup::path(&croot, c, "").display())),
        ));
    }
    checks.push(check(
        "no-new-privs",
        nix::sys::prctl::get_no_new_privs().map(|v| format!("prctl works (set here: {v})")).map_err(|e| e.to_string()),
    ));
    if let Some(u) = &input.user {
        checks.push(check("agent-user", resolve_user(u).map(|id| format!("{u}: uid {} gid {}", id.uid, id.gid))));
    }
    HostProbe { landlock_abi: abi, running_as_root: root, checks }
}
