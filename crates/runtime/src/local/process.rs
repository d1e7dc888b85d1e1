//! Starting the agent in its own session and process group, signalling the group, and telling
//! whether a recorded process is still the one we started. No `unsafe`: the session comes from
//! the agent-runner (`agentplane-runner`, see `agentplane_sandbox`), which calls `setsid()`,
//! starts the agent and records its exit status. Without the runner binary, a fallback: util-linux
//! `setsid(1)` (which calls `setsid()` and execs without forking, because the child is not a group
//! leader) and a `sh` wrapper that records the exit status; the group from `process_group(0)`
//! where `setsid(1)` is absent too.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp};

/// The wrapper between `setsid` and the agent: it runs the agent and records its exit code in a
/// file, so that a server that restarted while the agent ran can still learn how it ended.
const WRAPPER: &str = r#"f=$1; shift; "$@"; c=$?; echo "$c" > "$f"; exit "$c""#;

/// Where util-linux `setsid` may live.
pub(crate) fn find_setsid() -> Option<PathBuf> {
    ["/usr/bin/setsid", "/bin/setsid"].into_iter().map(PathBuf::from).find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Resolves the provider's binary the way `execvp` would with the child's `PATH`; relative paths
/// with a slash are relative to the agent's working directory.
pub(crate) fn resolve_binary(binary: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, String> {
    if binary.is_empty() {
        return Err("the provider's binary is empty".into());
    }
    if binary.contains('/') {
        let p = if Path::new(binary).is_absolute() { PathBuf::from(binary) } else { cwd.join(binary) };
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!("binary `{binary}` does not exist or is not an executable file"))
        };
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(binary))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("binary `{binary}` not found on PATH {path_var}"))
}

/// How the agent is started.
#[derive(Debug, Clone)]
pub(crate) enum Launcher {
    /// `agentplane-runner --exit-file F -- PROGRAM ARGS...` (session, exit status).
    Runner(PathBuf),
    /// `[setsid] /bin/sh -c WRAPPER ...`: the fallback without the runner binary.
    Shell { setsid: Option<PathBuf> },
}

impl Launcher {
    /// The runner if given (and executable) or found, else the shell fallback.
    pub(crate) fn find(setting: &super::RunnerSetting) -> Launcher {
        use super::RunnerSetting;
        let runner = match setting {
            RunnerSetting::At(p) if is_executable(p) => Some(p.clone()),
            RunnerSetting::At(p) => {
                tracing::warn!(runner = %p.display(), "configured agent-runner is not an executable file; using the sh fallback");
                None
            }
            RunnerSetting::Find => agentplane_sandbox::find_runner(),
            RunnerSetting::ShellFallback => None,
        };
        match runner {
            Some(p) => Launcher::Runner(p),
            None => Launcher::Shell { setsid: find_setsid() },
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Launcher::Runner(p) => format!("agentplane-runner ({})", p.display()),
            Launcher::Shell { setsid: Some(_) } => "setsid + sh wrapper (agentplane-runner not found)".into(),
            Launcher::Shell { setsid: None } => {
                "sh wrapper, process group only (agentplane-runner and setsid not found)".into()
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct SpawnRequest<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub exit_file: &'a Path,
    /// The FIFO, opened read-write; becomes the agent's stdout and stderr.
    pub output: File,
    pub launcher: &'a Launcher,
    /// The sandbox the runner applies (ignored by the shell fallback).
    pub sandbox: Option<&'a agentplane_sandbox::Policy>,
}

#[derive(Debug)]
pub(crate) struct Spawned {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub session: bool,
    pub start_time: Option<u64>,
}

pub(crate) fn spawn(req: SpawnRequest<'_>) -> std::io::Result<Spawned> {
    let (mut cmd, session) = match req.launcher {
        Launcher::Runner(runner) => {
            let mut c = tokio::process::Command::new(runner);
            c.args(agentplane_sandbox::runner_args(req.exit_file, req.sandbox, req.program, req.args));
            (c, true)
        }
        Launcher::Shell { setsid } => {
            let mut c = match setsid {
                Some(setsid) => {
                    let mut c = tokio::process::Command::new(setsid);
                    c.arg("/bin/sh");
                    c
                }
                None => {
                    let mut c = tokio::process::Command::new("/bin/sh");
                    c.process_group(0);
                    c
                }
            };
            let mut args: Vec<OsString> = vec!["-c".into(), WRAPPER.into(), "agentplane-runner".into()];
            args.push(req.exit_file.as_os_str().into());
            args.push(req.program.as_os_str().into());
            args.extend(req.args.iter().map(OsString::from));
            c.args(args);
            (c, setsid.is_some())
        }
    };
    cmd.env_clear()
        .envs(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(req.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(req.output.try_clone()?))
        .stderr(Stdio::from(req.output))
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    let pid =
        child.id().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| std::io::Error::other("child has no pid"))?;
    Ok(Spawned { child, pid, session, start_time: proc_stat(pid).map(|s| s.start_time) })
}

/// Sends `sig` (or only checks, with `None`) to the process group `pgid`. Returns whether the
/// group exists. Refuses to signal group 0/1 or the server's own group.
pub(crate) fn signal_group(pgid: i32, sig: Option<Signal>) -> bool {
    if pgid <= 1 || Pid::from_raw(pgid) == getpgrp() {
        return false;
    }
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!(pgid, error = %e, "killpg failed");
            true
        }
    }
}

/// Sends `sig` to one process (used while the child may not have become a group leader yet).
pub(crate) fn signal_pid(pid: i32, sig: Signal) {
    if pid > 1 {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub start_time: u64,
}

/// `/proc/<pid>/stat`: the state letter and the start time (clock ticks since boot).
pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat { state: fields.first()?.chars().next()?, start_time: fields.get(19)?.parse().ok()? })
}

/// Whether `pid` is alive and is still the process we started (same start time; zombies count
/// as dead). Falls back to `kill(pid, 0)` where `/proc` is unavailable.
pub(crate) fn is_alive(pid: i32, start_time: Option<u64>) -> bool {
    if pid <= 1 {
        return false;
    }
    if Path::new("/proc/self/stat").exists() {
        return match proc_stat(pid) {
            None => false,
            Some(s) => s.state != 'Z' && s.state != 'X' && start_time.is_none_or(|t| t == s.start_time),
        };
    }
    kill(Pid::from_raw(pid), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_on_path_and_rejects_missing() {
        let cwd = Path::new("/");
        assert_eq!(resolve_binary("sh", "/nonexistent:/bin", cwd).unwrap(), PathBuf::from("/bin/sh"));
        assert!(resolve_binary("definitely-not-a-binary-xyz", "/usr/bin:/bin", cwd).unwrap_err().contains("not found"));
        assert!(resolve_binary("/nonexistent/bin", "/bin", cwd).is_err());
        assert!(resolve_binary("", "/bin", cwd).is_err());
        // A directory is not executable.
        assert!(resolve_binary("/bin", "/bin", cwd).is_err());
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = i32::try_from(std::process::id()).unwrap();
        let st = proc_stat(me).unwrap();
        assert!(is_alive(me, Some(st.start_time)));
        assert!(!is_alive(me, Some(st.start_time + 1)));
        assert!(!is_alive(0, None));
    }

    #[test]
    fn never_signals_own_group() {
        let own = getpgrp().as_raw();
        assert!(!signal_group(own, None));
        assert!(!signal_group(1, None));
        assert!(!signal_group(0, None));
    }
}
