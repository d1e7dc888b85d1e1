//! The restrictions a process applies to itself before it starts the agent: identity, rlimits,
//! Landlock (filesystem, network, scoping), `no_new_privs`. All are inherited by the agent and
//! everything it starts, and none can be undone. No `unsafe`: the process restricts itself.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use crate::policy::{FsRules, Identity, Limits, Network, Protection, names};

/// The newest Landlock ABI this code asks for (best effort: older kernels get what they have).
pub const LANDLOCK_ABI: ABI = ABI::V6;

/// Drops to `id`: no supplementary groups, real/effective/saved gid and uid set.
pub fn identity(id: Option<Identity>, not_configured: &str) -> Protection {
    let Some(id) = id else { return Protection::disabled(names::IDENTITY, not_configured) };
    if !Uid::effective().is_root() {
        return Protection::unavailable(names::IDENTITY, "the runner does not run as root, so it cannot change user");
    }
    if id.uid == 0 {
        return Protection::unavailable(names::IDENTITY, "the configured agent user is root (uid 0)");
    }
    let gid = Gid::from_raw(id.gid);
    let uid = Uid::from_raw(id.uid);
    let res = setgroups(&[])
        .map_err(|e| format!("setgroups: {e}"))
        .and_then(|()| setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}")))
        .and_then(|()| setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}")));
    match res {
        Ok(()) if Uid::current() == uid && Uid::effective() == uid => {
            Protection::applied(names::IDENTITY, format!("uid {} gid {}, no supplementary groups", id.uid, id.gid))
        }
        Ok(()) => Protection::unavailable(names::IDENTITY, "the user did not change"),
        Err(e) => Protection::unavailable(names::IDENTITY, e),
    }
}

/// For an agent that stays uid 0 (no agent user: `identity` is not applied), takes away root's
/// powers: every capability is dropped from the bounding, ambient, inheritable, permitted and
/// effective sets, so neither this process nor anything it executes (uid 0 regains only what the
/// bounding set still holds) can mount, load modules, bypass file permissions, trace or signal
/// other users' processes, or open raw sockets. Returns what was done, for the `identity` report.
pub fn drop_root_capabilities() -> Result<&'static str, String> {
    use caps::CapSet;
    if !Uid::effective().is_root() {
        return Ok("not root: nothing to drop");
    }
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clearing the ambient set: {e}"))?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| format!("clearing {set:?}: {e}"))?;
    }
    match caps::read(None, CapSet::Effective) {
        Ok(left) if left.is_empty() => Ok("every capability dropped: the agent is uid 0 without root's powers"),
        Ok(left) => Err(format!("capabilities left after dropping: {left:?}")),
        Err(e) => Err(format!("reading capabilities: {e}")),
    }
}

/// Sets the rlimits (soft = hard, except CPU: the hard limit is one second later so that the
/// agent first gets `SIGXCPU`). `processes` becomes `RLIMIT_NPROC` only when `nproc` is true (no
/// per-run `pids` cgroup), and `memoryBytes` becomes `RLIMIT_AS` only when `memory_as` is true (no
/// per-run memory cgroup).
pub fn rlimits(l: &Limits, nproc: bool, memory_as: bool) -> Protection {
    let mut set = Vec::new();
    let mut fail = Vec::new();
    let mut one = |name: &str, r: Resource, soft: Option<u64>, extra: u64| {
        if let Some(v) = soft {
            match setrlimit(r, v, v.saturating_add(extra)) {
                Ok(()) => set.push(format!("{name}={v}")),
                Err(e) => fail.push(format!("{name}: {e}")),
            }
        }
    };
    one("cpu", Resource::RLIMIT_CPU, l.cpu_seconds, 1);
    let aspace = match (l.address_space_bytes, l.memory_bytes.filter(|_| memory_as)) {
        (Some(a), Some(m)) => Some(a.min(m)),
        (a, m) => a.or(m),
    };
    one("as", Resource::RLIMIT_AS, aspace, 0);
    one("fsize", Resource::RLIMIT_FSIZE, l.file_size_bytes, 0);
    one("nofile", Resource::RLIMIT_NOFILE, l.open_files, 0);
    if nproc {
        one("nproc", Resource::RLIMIT_NPROC, l.processes, 0);
    }
    // A core dump of a killed agent would land in its workspace and count against its quota.
    one("core", Resource::RLIMIT_CORE, Some(0), 0);
    if !fail.is_empty() {
        return Protection::unavailable(names::RLIMITS, fail.join("; "));
    }
    Protection::applied(names::RLIMITS, set.join(" "))
}

fn existing(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).filter(|p| p.exists()).collect()
}

fn landlock_state(status: RulesetStatus, what: &str) -> Result<Option<String>, String> {
    match status {
        RulesetStatus::FullyEnforced => Ok(None),
        RulesetStatus::PartiallyEnforced => {
            Ok(Some(format!("partially enforced: this kernel's Landlock lacks some {what} access rights")))
        }
        RulesetStatus::NotEnforced => Err("Landlock is not supported or not enabled in this kernel".into()),
    }
}

/// Landlock filesystem rules: every filesystem access is handled; `read` paths get read and
/// execute, `write` paths everything.
pub fn filesystem(rules: Option<&FsRules>) -> Protection {
    let Some(rules) = rules else { return Protection::disabled(names::FILESYSTEM, "filesystem confinement is off") };
    let res = (|| -> Result<RulesetStatus, landlock::RulesetError> {
        let all = AccessFs::from_all(LANDLOCK_ABI);
        let read = AccessFs::from_read(LANDLOCK_ABI);
        Ok(Ruleset::default()
            .handle_access(all)?
            .create()?
            .add_rules(path_beneath_rules(existing(&rules.read), read))?
            .add_rules(path_beneath_rules(existing(&rules.write), all))?
            .restrict_self()?
            .ruleset)
    })();
    match res.map_err(|e| e.to_string()).and_then(|s| landlock_state(s, "filesystem")) {
        Ok(detail) => Protection::applied(
            names::FILESYSTEM,
            detail.or(Some(format!("{} read-only paths, {} writable", rules.read.len(), rules.write.len()))),
        ),
        Err(e) => Protection::unavailable(names::FILESYSTEM, e),
    }
}

/// `gateway`: Landlock TCP rules (ABI 4): `connect` only to `ports`, `bind` never. UDP is not
/// covered by this kernel interface before ABI 10 and is left open (said in the detail).
/// `none` is a network namespace made by the outer runner; `open` is disabled.
pub fn network_gateway(ports: &[u16]) -> Protection {
    let res = (|| -> Result<RulesetStatus, landlock::RulesetError> {
        let mut rs = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
            .create()?;
        for p in ports {
            rs = rs.add_rule(NetPort::new(*p, AccessNet::ConnectTcp))?;
        }
        Ok(rs.restrict_self()?.ruleset)
    })();
    match res {
        Ok(RulesetStatus::FullyEnforced) => Protection::applied(
            names::NETWORK,
            format!(
                "gateway: TCP connect only to port(s) {}, no TCP bind (Landlock); UDP is not restricted",
                ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
            ),
        ),
        Ok(_) => Protection::unavailable(names::NETWORK, "Landlock network rules need ABI 4 (Linux 6.7)"),
        Err(e) => Protection::unavailable(names::NETWORK, format!("Landlock network rules (ABI 4, Linux 6.7): {e}")),
    }
}

/// Landlock scoping (ABI 6): no signals to processes outside this sandbox, no connecting to
/// abstract UNIX sockets made outside it.
pub fn scope_signals(on: bool) -> Protection {
    if !on {
        return Protection::disabled(names::SIGNALS, "signal scoping is off");
    }
    let res = (|| -> Result<RulesetStatus, landlock::RulesetError> {
        Ok(Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .scope(Scope::Signal | Scope::AbstractUnixSocket)?
            .create()?
            .restrict_self()?
            .ruleset)
    })();
    match res {
        Ok(RulesetStatus::FullyEnforced) => Protection::applied(
            names::SIGNALS,
            "no signals to, no abstract sockets of, processes outside the run (Landlock scope)".to_string(),
        ),
        Ok(_) => Protection::unavailable(names::SIGNALS, "Landlock scoping needs ABI 6 (Linux 6.12)"),
        Err(e) => Protection::unavailable(names::SIGNALS, format!("Landlock scoping (ABI 6, Linux 6.12): {e}")),
    }
}

/// Sets `no_new_privs` (Landlock sets it too; this makes sure it is on even without Landlock).
pub fn no_new_privs() -> Protection {
    let _ = nix::sys::prctl::set_no_new_privs();
    match nix::sys::prctl::get_no_new_privs() {
        Ok(true) => Protection::applied(names::NO_NEW_PRIVS, "setuid and file capabilities give nothing".to_string()),
        Ok(false) => Protection::unavailable(names::NO_NEW_PRIVS, "prctl(PR_SET_NO_NEW_PRIVS) did not stick"),
        Err(e) => Protection::unavailable(names::NO_NEW_PRIVS, format!("prctl: {e}")),
    }
}

/// The network protection for a mode handled by the inner runner (`gateway`, `open`); `none` is
/// the outer runner's.
pub fn network(n: &Network) -> Option<Protection> {
    match n {
        Network::Gateway { ports } => Some(network_gateway(ports)),
        Network::Open => Some(Protection::disabled(names::NETWORK, "network: open")),
        Network::None => None,
    }
}
