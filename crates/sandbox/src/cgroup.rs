//! Per-attempt cgroups (v1 `pids` and `memory` hierarchies): they track every process of a run,
//! however it detaches (`setsid`, double fork), enforce the process and memory limits per run,
//! and tell afterwards whether a limit was hit.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where the cgroup hierarchies are mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// The parent of every per-attempt group in each hierarchy.
pub const PARENT: &str = "agentplane";

/// The two controllers used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Pids,
    Memory,
}

impl Controller {
    fn dir(self) -> &'static str {
        match self {
            Controller::Pids => "pids",
            Controller::Memory => "memory",
        }
    }
}

/// `<root>/<controller>/agentplane/<name>`.
pub fn path(root: &Path, c: Controller, name: &str) -> PathBuf {
    root.join(c.dir()).join(PARENT).join(name)
}

/// Whether a v1 hierarchy of `c` is mounted and writable here (a `tasks` file exists and the
/// `agentplane` parent can be created).
pub fn available(root: &Path, c: Controller) -> Result<(), String> {
    let base = root.join(c.dir());
    if !base.join("cgroup.procs").exists() {
        return Err(format!("no cgroup v1 `{}` hierarchy at {}", c.dir(), base.display()));
    }
    let parent = base.join(PARENT);
    if let Err(e) = std::fs::create_dir_all(&parent) {
        return Err(format!("cannot create {}: {e}", parent.display()));
    }
    Ok(())
}

/// Creates the group `name` of `c`, writes the settings (file, value), and moves `pid` into it.
pub fn create_and_join(
    root: &Path,
    c: Controller,
    name: &str,
    settings: &[(&str, String)],
    pid: u32,
) -> Result<PathBuf, String> {
    available(root, c)?;
    let dir = path(root, c, name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    for (file, value) in settings {
        std::fs::write(dir.join(file), value).map_err(|e| format!("{}/{file} = {value}: {e}", dir.display()))?;
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .map_err(|e| format!("cannot join {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The pids in a group (empty when it does not exist).
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILLs every process in the group except `spare` (the caller itself, when it is inside).
/// Returns how many were signalled.
pub fn kill_all(dir: &Path, spare: Option<i32>) -> usize {
    let mut n = 0;
    // A process may fork while we kill: repeat until a pass finds nobody new (bounded).
    for _ in 0..16 {
        let pids: Vec<i32> = procs(dir).into_iter().filter(|p| Some(*p) != spare && *p > 1).collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            if kill(Pid::from_raw(p), Signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Moves `pid` back to the root of the hierarchy (so its own group can be removed).
pub fn leave(root: &Path, c: Controller, pid: u32) {
    let _ = std::fs::write(root.join(c.dir()).join("cgroup.procs"), pid.to_string());
}

/// Kills what is left in the group and removes it; waits (polling, up to `patience`) for the
/// killed processes to go, since a group with members cannot be removed.
pub fn destroy(dir: &Path, patience: std::time::Duration) -> bool {
    if !dir.exists() {
        return true;
    }
    let until = std::time::Instant::now() + patience;
    loop {
        kill_all(dir, None);
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) if std::time::Instant::now() < until => std::thread::sleep(std::time::Duration::from_millis(2)),
            Err(e) => {
                let _ = e;
                return false;
            }
        }
    }
}

/// Reads a `key value` line of a flat-keyed cgroup file (`pids.events`, `memory.oom_control`).
pub fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads a single-number cgroup file (`memory.failcnt`).
pub fn number(dir: &Path, file: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
}

/// Whether the `pids` group refused a fork because of `pids.max`.
pub fn pids_limit_hit(dir: &Path) -> bool {
    keyed(dir, "pids.events", "max").is_some_and(|n| n > 0)
}

/// Whether the `memory` group hit its limit (an OOM kill, or a charge that failed).
pub fn memory_limit_hit(dir: &Path) -> bool {
    keyed(dir, "memory.oom_control", "oom_kill").is_some_and(|n| n > 0)
        || number(dir, "memory.failcnt").is_some_and(|n| n > 0)
}
