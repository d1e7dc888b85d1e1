//! The agent-runner: the small program the local runtime starts for every attempt, between the
//! server and the agent.
//!
//! It puts itself in a new session (so it and everything it starts form one process group that
//! the server signals as a whole, without a controlling terminal), starts the agent as its child
//! with the environment, working directory and output it was given, waits for it, and writes the
//! agent's exit status to a file before exiting with the same status. The file is what lets a
//! server that restarted while the agent ran learn how the agent ended (the restarted server is
//! not the runner's parent, so it cannot wait for it).
//!
//! With `--sandbox POLICY` (JSON, [`policy::Policy`]) it also confines the agent (docs/sandbox.md):
//! the outer runner (still root) puts the attempt into its own cgroups, network and pid
//! namespaces and starts an inner runner (itself, with `--inner`), which becomes the pid
//! namespace's init, drops to the agent user, sets rlimits, Landlock rules and `no_new_privs` on
//! itself, reports what it applied, starts the agent and reaps. The outer runner writes
//! `.agent/sandbox.json` (what was in force), watches the output quota, and writes `.agent/limit`
//! when a limit ended the run. Nothing here is `unsafe`: each process restricts itself.
//!
//! The binary is `agentplane-runner` (built with `agentctl`, installed next to it); its logic is
//! here so that it is tested as a library. Command line:
//!
//! ```text
//! agentplane-runner --exit-file PATH [--no-setsid] [--sandbox JSON] -- PROGRAM [ARG]...
//! agentplane-runner --probe        # what this host provides, as JSON
//! ```
//!
//! Exit status: the agent's exit code; `128 + N` when the agent was killed by signal N (as a
//! shell reports it); `127` when PROGRAM could not be found, `126` when it could not be executed
//! (with one line on stderr saying why); `125` for a runner usage error; `123` when a required
//! protection could not be applied (the agent was not started).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub mod apply;
pub mod cgroup;
pub mod policy;
pub mod probe;
pub mod runner;

pub use policy::{LimitHit, Limits, Network, Policy, Protection, ProtectionState, Report};

/// The runner binary's file name.
pub const RUNNER_NAME: &str = "agentplane-runner";

/// Environment variable naming the runner binary explicitly (overrides the search).
pub const RUNNER_ENV: &str = "AGENTPLANE_RUNNER";

/// Finds the runner binary: `$AGENTPLANE_RUNNER` if set, else next to the current executable,
/// else one directory up (Cargo puts test binaries in `target/<profile>/deps/`, the runner in
/// `target/<profile>/`). `None` when there is none.
pub fn find_runner() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(RUNNER_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let mut candidates = vec![dir.join(RUNNER_NAME)];
    if dir.file_name().is_some_and(|n| n == "deps")
        && let Some(up) = dir.parent()
    {
        candidates.push(up.join(RUNNER_NAME));
    }
    candidates.into_iter().find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The runner's command line for one agent (what follows the runner's own path).
pub fn runner_args(exit_file: &Path, sandbox: Option<&Policy>, program: &Path, args: &[String]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--exit-file".into(), exit_file.as_os_str().into()];
    if let Some(p) = sandbox {
        v.push("--sandbox".into());
        v.push(serde_json::to_string(p).unwrap_or_default().into());
    }
    v.push("--".into());
    v.push(program.as_os_str().into());
    v.extend(args.iter().map(OsString::from));
    v
}
