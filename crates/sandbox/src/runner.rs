//! The runner's logic (see the crate documentation for the contract).

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::apply;
use crate::cgroup::{self, Controller};
use crate::policy::{LIMIT_FILE, LimitHit, Limits, Network, Policy, Protection, REPORT_FILE, Report, names};

/// Exit status for a usage error of the runner itself.
pub const USAGE: i32 = 125;
/// Exit status when the agent's program exists but cannot be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// Exit status when the agent's program does not exist.
pub const NOT_FOUND: i32 = 127;
/// Exit status when a required sandbox protection could not be applied (the agent never
/// started; `.agent/limit` says `SandboxUnavailable`).
pub const SANDBOX_UNAVAILABLE: i32 = 123;

/// What the runner is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The outer runner: session, cgroups, namespaces, exit status (and, with a sandbox, starts
    /// the inner runner).
    Outer,
    /// The inner runner (internal): restricts itself, starts the agent, reaps, exits with the
    /// agent's status. Its stdin is a pipe to the outer runner for its report.
    Inner,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub exit_file: PathBuf,
    pub setsid: bool,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The sandbox to apply (`--sandbox JSON`); none runs the agent unconfined.
    pub sandbox: Option<Policy>,
    pub mode: Mode,
}

const USAGE_TEXT: &str = "usage: --exit-file PATH [--no-setsid] [--sandbox JSON] -- PROGRAM [ARG]... | --probe";

/// Parses the runner's arguments (without argv\[0\]).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
    let mut it = args.into_iter();
    let mut exit_file = None;
    let mut setsid = true;
    let mut sandbox = None;
    let mut mode = Mode::Outer;
    loop {
        let Some(a) = it.next() else { return Err("missing `-- PROGRAM [ARG]...`".into()) };
        match a.to_str() {
            Some("--exit-file") => {
                exit_file = Some(PathBuf::from(it.next().ok_or("--exit-file needs a path")?));
            }
            Some("--no-setsid") => setsid = false,
            Some("--sandbox") => {
                let j = it.next().ok_or("--sandbox needs a JSON policy")?;
                let j = j.to_str().ok_or("--sandbox: the policy is not UTF-8")?;
                sandbox = Some(serde_json::from_str::<Policy>(j).map_err(|e| format!("--sandbox: {e}"))?);
            }
            Some("--inner") => mode = Mode::Inner,
            Some("--") => break,
            _ => return Err(format!("unknown argument {a:?}; {USAGE_TEXT}")),
        }
    }
    let exit_file = match (exit_file, &mode) {
        (Some(f), _) => f,
        (None, Mode::Inner) => PathBuf::new(),
        (None, Mode::Outer) => return Err("--exit-file is required".into()),
    };
    if mode == Mode::Inner && sandbox.is_none() {
        return Err("--inner needs --sandbox".into());
    }
    let program = it.next().ok_or("missing PROGRAM after --")?;
    Ok(Invocation { exit_file, setsid, program, args: it.collect(), sandbox, mode })
}

/// The status a shell would report: the exit code, or 128 + the signal that killed the process.
pub fn shell_status(s: ExitStatus) -> i32 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

fn say(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "agentplane-runner: {msg}");
}

/// Writes `status` followed by a newline to `path` (the format the local runtime reads).
fn record(path: &Path, status: i32) {
    if let Err(e) = std::fs::write(path, format!("{status}\n")) {
        say(format_args!("cannot write {}: {e}", path.display()));
    }
}

fn exec_status(program: &OsString, e: &std::io::Error) -> i32 {
    say(format_args!("cannot execute {program:?}: {e}"));
    if e.kind() == std::io::ErrorKind::NotFound { NOT_FOUND } else { CANNOT_EXECUTE }
}

/// Runs the invocation and returns the runner's exit status.
pub fn run(inv: &Invocation) -> i32 {
    if inv.mode == Mode::Inner {
        return match &inv.sandbox {
            Some(p) => inner(inv, p),
            None => USAGE,
        };
    }
    if inv.setsid
        && let Err(e) = nix::unistd::setsid()
    {
        // EPERM: already a group leader. Nothing else may run under a wrong grouping.
        say(format_args!("setsid failed: {e}"));
        record(&inv.exit_file, USAGE);
        return USAGE;
    }
    let status = match &inv.sandbox {
        Some(policy) => outer(inv, policy),
        None => match Command::new(&inv.program).args(&inv.args).status() {
            Ok(s) => shell_status(s),
            Err(e) => exec_status(&inv.program, &e),
        },
    };
    record(&inv.exit_file, status);
    status
}

fn write_limit(policy: &Policy, hit: LimitHit, msg: &str) {
    let path = policy.state_dir.join(LIMIT_FILE);
    if let Err(e) = std::fs::write(&path, format!("{hit} {msg}\n")) {
        say(format_args!("cannot write {}: {e}", path.display()));
    }
}

fn write_report(policy: &Policy, report: &Report) {
    let path = policy.state_dir.join(REPORT_FILE);
    let body = serde_json::to_vec_pretty(report).unwrap_or_default();
    if let Err(e) = std::fs::write(&path, body) {
        say(format_args!("cannot write {}: {e}", path.display()));
    }
}

/// Disk usage (allocated blocks) beneath `root`, not following symlinks.
pub fn disk_usage(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total = total.saturating_add(m.blocks().saturating_mul(512));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The outer runner with a sandbox: cgroups, namespaces, the inner runner, the quota watch, and
/// which limit (if any) ended the run.
fn outer(inv: &Invocation, policy: &Policy) -> i32 {
    let _ = std::fs::remove_file(policy.state_dir.join(LIMIT_FILE));
    let _ = std::fs::remove_file(policy.state_dir.join(REPORT_FILE));
    let mut report = Report::default();
    let me = std::process::id();
    let root = policy.cgroup_root();
    let l = &policy.limits;

    // Cgroups first, so that everything started from here on is inside them.
    let mut pids_dir = None;
    let mut mem_dir = None;
    match &policy.cgroup {
        Some(name) => {
            // The two runners count too.
            let max = l.processes.map(|p| p.saturating_add(2).to_string()).unwrap_or_else(|| "max".into());
            match cgroup::create_and_join(&root, Controller::Pids, name, &[("pids.max", max)], me) {
                Ok(d) => {
                    report.set(Protection::applied(
                        names::PROCESS_TREE,
                        format!(
                            "cgroup {} (pids.max {})",
                            d.display(),
                            l.processes.map_or("unlimited".into(), |p| p.to_string())
                        ),
                    ));
                    pids_dir = Some(d);
                }
                Err(e) => report.set(Protection::unavailable(names::PROCESS_TREE, e)),
            }
            match l.memory_bytes {
                Some(m) => {
                    let settings = [("memory.limit_in_bytes", m.to_string())];
                    match cgroup::create_and_join(&root, Controller::Memory, name, &settings, me) {
                        Ok(d) => {
                            // Without swap accounting there is no memsw file; with it, cap swap too.
                            let _ = std::fs::write(d.join("memory.memsw.limit_in_bytes"), m.to_string());
                            report.set(Protection::applied(
                                names::MEMORY_CGROUP,
                                format!("cgroup {} limit {m} bytes", d.display()),
                            ));
                            mem_dir = Some(d);
                        }
                        Err(e) => report.set(Protection::unavailable(
                            names::MEMORY_CGROUP,
                            format!("{e}; memoryBytes falls back to RLIMIT_AS"),
                        )),
                    }
                }
                None => report.set(Protection::disabled(names::MEMORY_CGROUP, "no memoryBytes limit")),
            }
        }
        None => {
            report.set(Protection::disabled(names::PROCESS_TREE, "per-run cgroups are off"));
            report.set(Protection::disabled(names::MEMORY_CGROUP, "per-run cgroups are off"));
        }
    }
    // The output quota watcher, started now: no thread can be made after unshare(CLONE_NEWPID).
    let quota_hit = Arc::new(AtomicBool::new(false));
    let (pid_tx, pid_rx) = std::sync::mpsc::channel::<Option<u32>>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let watcher = match policy.quota.clone() {
        Some(q) => {
            let hit = quota_hit.clone();
            let pids_dir = pids_dir.clone();
            let spawned = std::thread::Builder::new().name("quota".into()).spawn(move || {
                let base = disk_usage(&q.root);
                let Ok(Some(inner_pid)) = pid_rx.recv() else { return 0 };
                let every = Duration::from_millis(q.interval_ms.max(10));
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                    let used = disk_usage(&q.root).saturating_sub(base);
                    if used > q.bytes {
                        hit.store(true, Ordering::SeqCst);
                        // The inner runner first: as the pid namespace's init, everything goes with it.
                        let _ = kill(Pid::from_raw(i32::try_from(inner_pid).unwrap_or(0)), Signal::SIGKILL);
                        if let Some(d) = &pids_dir {
                            cgroup::kill_all(d, i32::try_from(std::process::id()).ok());
                        }
                        return used;
                    }
                }
                0
            });
            match spawned {
                Ok(h) => {
                    report.set(Protection::applied(
                        names::OUTPUT_QUOTA,
                        format!("{} bytes, checked every {} ms", q.bytes, q.interval_ms),
                    ));
                    Some(h)
                }
                Err(e) => {
                    report.set(Protection::unavailable(names::OUTPUT_QUOTA, format!("cannot start the watcher: {e}")));
                    None
                }
            }
        }
        None => {
            report.set(Protection::disabled(names::OUTPUT_QUOTA, "no outputQuotaBytes limit"));
            None
        }
    };
    if let Network::None = policy.network {
        report.set(match unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => {
                Protection::applied(names::NETWORK, "none: a new network namespace without interfaces".to_string())
            }
            Err(e) => Protection::unavailable(names::NETWORK, format!("unshare(CLONE_NEWNET): {e}")),
        });
    }
    report.set(if policy.pid_namespace {
        // With a mount namespace too, so that the inner runner can mount a /proc of the new pid
        // namespace (the agent then sees only its own processes there).
        match unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS).or_else(|_| unshare(CloneFlags::CLONE_NEWPID))
        {
            Ok(()) => Protection::applied(names::PID_NAMESPACE, "the agent sees only its own processes".to_string()),
            Err(e) => Protection::unavailable(names::PID_NAMESPACE, format!("unshare(CLONE_NEWPID): {e}")),
        }
    } else {
        Protection::disabled(names::PID_NAMESPACE, "pid namespaces are off")
    });
    let cleanup = |pids_dir: &Option<PathBuf>, mem_dir: &Option<PathBuf>| {
        for (c, d) in [(Controller::Pids, pids_dir), (Controller::Memory, mem_dir)] {
            if let Some(d) = d {
                cgroup::leave(&root, c, me);
                cgroup::destroy(d, Duration::from_secs(2));
            }
        }
    };
    let refuse = |report: &mut Report, what: &str, why: &str| {
        report.sort();
        write_report(policy, report);
        let msg = format!("required protection `{what}` is {why}; the agent was not started");
        say(format_args!("{msg}"));
        write_limit(policy, LimitHit::SandboxUnavailable, &msg);
        cleanup(&pids_dir, &mem_dir);
        SANDBOX_UNAVAILABLE
    };
    let own: Vec<String> = report.protections.iter().map(|p| p.name.clone()).collect();
    let required_here: Vec<String> = policy.required.iter().filter(|r| own.contains(r)).cloned().collect();
    if let Some((what, why)) = report.missing(&required_here) {
        let (what, why) = (what.to_string(), why);
        return refuse(&mut report, &what, &why);
    }

    // The inner runner: the first process of the pid namespace (when there is one).
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            say(format_args!("cannot find own executable: {e}"));
            cleanup(&pids_dir, &mem_dir);
            return USAGE;
        }
    };
    let policy_json = serde_json::to_string(policy).unwrap_or_default();
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            say(format_args!("pipe: {e}"));
            cleanup(&pids_dir, &mem_dir);
            return USAGE;
        }
    };
    let mut cmd = Command::new(&exe);
    cmd.arg("--inner").arg("--sandbox").arg(&policy_json).arg("--").arg(&inv.program).args(&inv.args);
    cmd.stdin(Stdio::from(writer));
    let child = cmd.spawn();
    drop(cmd);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let s = exec_status(&exe.into_os_string(), &e);
            cleanup(&pids_dir, &mem_dir);
            return s;
        }
    };
    let inner_pid = child.id();
    // The inner runner's report: one JSON line, or nothing if it died first.
    let mut line = String::new();
    let _ = std::io::BufReader::new(reader).read_line(&mut line);
    match serde_json::from_str::<Report>(line.trim()) {
        Ok(r) => r.protections.into_iter().for_each(|p| report.set(p)),
        Err(_) => say(format_args!("the inner runner reported nothing")),
    }
    report.sort();
    write_report(policy, &report);

    let _ = pid_tx.send(Some(inner_pid));
    let status = child.wait();
    drop(stop_tx);
    let used = watcher.and_then(|w| w.join().ok()).unwrap_or(0);
    let status = match status {
        Ok(s) => shell_status(s),
        Err(e) => {
            say(format_args!("waiting for the inner runner: {e}"));
            1
        }
    };
    // Whatever is left of the run (a pid namespace is gone with its init; without one, processes
    // that left the session are still in the cgroup).
    if let Some(d) = &pids_dir {
        cgroup::kill_all(d, i32::try_from(me).ok());
    }
    let cpu_used =
        getrusage(UsageWho::RUSAGE_CHILDREN).map(|u| u.user_time().tv_sec() + u.system_time().tv_sec()).unwrap_or(0);
    let hit = if quota_hit.load(Ordering::SeqCst) {
        Some((
            LimitHit::OutputQuotaExceeded,
            format!(
                "the run folder grew by {used} bytes, over the quota of {} bytes",
                policy.quota.as_ref().map_or(0, |q| q.bytes)
            ),
        ))
    } else if status == SANDBOX_UNAVAILABLE && report.missing(&policy.required).is_some() {
        let (what, why) = report.missing(&policy.required).unwrap_or(("?", String::new()));
        Some((
            LimitHit::SandboxUnavailable,
            format!("required protection `{what}` is {why}; the agent was not started"),
        ))
    } else if status != 0 {
        classify(status, l, cpu_used, pids_dir.as_deref(), mem_dir.as_deref())
    } else {
        None
    };
    if let Some((h, msg)) = hit {
        write_limit(policy, h, &msg);
    }
    cleanup(&pids_dir, &mem_dir);
    status
}

/// Which limit explains a non-zero status, if any.
fn classify(
    status: i32,
    l: &Limits,
    cpu_used: i64,
    pids: Option<&Path>,
    mem: Option<&Path>,
) -> Option<(LimitHit, String)> {
    let sig = |s: Signal| 128 + s as i32;
    if pids.is_some_and(cgroup::pids_limit_hit) {
        let p = l.processes.unwrap_or(0);
        return Some((LimitHit::ProcessLimit, format!("the run reached its limit of {p} processes")));
    }
    if mem.is_some_and(cgroup::memory_limit_hit) {
        let m = l.memory_bytes.unwrap_or(0);
        return Some((LimitHit::MemoryLimit, format!("the run reached its memory limit of {m} bytes")));
    }
    if let Some(c) = l.cpu_seconds
        && (status == sig(Signal::SIGXCPU)
            || (status == sig(Signal::SIGKILL) && u64::try_from(cpu_used).unwrap_or(0) >= c))
    {
        return Some((LimitHit::CpuLimit, format!("a process used its {c} CPU seconds")));
    }
    if let Some(f) = l.file_size_bytes
        && status == sig(Signal::SIGXFSZ)
    {
        return Some((LimitHit::FileSizeLimit, format!("a file reached the limit of {f} bytes")));
    }
    None
}

/// The inner runner: restricts itself (identity, rlimits, Landlock, no_new_privs), reports on its
/// stdin pipe, starts the agent and reaps every process that ends up as its child (it is the pid
/// namespace's init when there is one) until the agent ends.
fn inner(inv: &Invocation, policy: &Policy) -> i32 {
    let mut report = Report::default();
    let cg = |c: Controller| policy.cgroup.as_ref().is_some_and(|n| cgroup::path(&policy.cgroup_root(), c, n).is_dir());
    let (pids_cg, mem_cg) = (cg(Controller::Pids), cg(Controller::Memory));
    // rlimits before the user change (RLIMIT_NPROC is checked against the new user at fork).
    report.set(apply::rlimits(&policy.limits, !pids_cg, !mem_cg));
    // As the first process of a new pid namespace (and mount namespace), a /proc of its own
    // (while still root).
    let fresh_proc = nix::unistd::getpid().as_raw() == 1 && own_proc().is_ok();
    let mut who = match (&policy.user, &policy.user_unavailable) {
        (None, Some(why)) => Protection::unavailable(names::IDENTITY, why.clone()),
        _ => apply::identity(policy.user, "no agent user: the server does not run as root or none is configured"),
    };
    if nix::unistd::Uid::effective().is_root() {
        // Still root (no agent user, or the switch failed): never hand root's powers to an agent.
        match apply::drop_root_capabilities() {
            Ok(done) => {
                who.reason = Some(match who.reason.take() {
                    Some(r) => format!("{r}; {done}"),
                    None => done.to_string(),
                })
            }
            Err(e) => {
                say(format_args!("cannot drop root's capabilities ({e}); the agent was not started"));
                return SANDBOX_UNAVAILABLE;
            }
        }
    }
    report.set(who);
    if let Some(p) = apply::network(&policy.network) {
        report.set(p);
    }
    report.set(apply::scope_signals(policy.scope_signals));
    let mut fs_rules = policy.filesystem.clone();
    if fresh_proc && let Some(r) = fs_rules.as_mut() {
        r.read.push(PathBuf::from("/proc"));
    }
    // The filesystem rules last: the rules above need no path access, and Landlock sets
    // no_new_privs itself.
    report.set(apply::filesystem(fs_rules.as_ref()));
    report.set(apply::no_new_privs());
    let own: Vec<String> = report.protections.iter().map(|p| p.name.clone()).collect();
    let required_here: Vec<String> = policy.required.iter().filter(|r| own.contains(r)).cloned().collect();
    let missing = report.missing(&required_here).map(|(w, why)| (w.to_string(), why));
    let line = format!("{}\n", serde_json::to_string(&report).unwrap_or_default());
    let _ = nix::unistd::write(std::io::stdin().as_fd(), line.as_bytes());
    if let Some((what, why)) = missing {
        say(format_args!("required protection `{what}` is {why}; the agent was not started"));
        return SANDBOX_UNAVAILABLE;
    }
    let child = match Command::new(&inv.program).args(&inv.args).stdin(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => return exec_status(&inv.program, &e),
    };
    let agent = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    // Reap everything (orphans are re-parented to the namespace's init); return when the agent ends.
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, c)) if p == agent => return c,
            Ok(WaitStatus::Signaled(p, s, _)) if p == agent => return 128 + s as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                say(format_args!("waitpid: {e}"));
                return 1;
            }
        }
    }
}

/// Mounts a fresh /proc (of the current pid namespace) in the current mount namespace, after
/// making every mount private so that nothing propagates back to the host.
fn own_proc() -> Result<(), nix::errno::Errno> {
    use nix::mount::{MsFlags, mount};
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

/// The binary's entry point: parses `std::env::args_os()`, runs, returns the exit status.
/// `--probe` prints what this host provides (JSON) instead.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--probe") {
        let p = crate::probe::probe(&crate::probe::ProbeInput::default());
        let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&p).unwrap_or_default());
        return 0;
    }
    // The server's allocator turns transparent huge pages off for the server process (see
    // docs/runtime.md, "Memory"), and that setting survives `exec`: give the agent the host's
    // own THP policy back. Failing changes nothing but that (it is a performance setting).
    let _ = nix::sys::prctl::set_thp_disable(false);
    match parse(args) {
        Ok(inv) => run(&inv),
        Err(e) => {
            say(format_args!("{e}"));
            USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_and_rejects() {
        let inv = parse(os(&["--exit-file", "/x", "--", "prog", "a", "--b"])).unwrap();
        assert_eq!(inv.exit_file, PathBuf::from("/x"));
        assert!(inv.setsid);
        assert_eq!(inv.program, "prog");
        assert_eq!(inv.args, os(&["a", "--b"]));
        assert!(!parse(os(&["--no-setsid", "--exit-file", "/x", "--", "p"])).unwrap().setsid);
        assert!(parse(os(&["--", "p"])).unwrap_err().contains("--exit-file"));
        assert!(parse(os(&["--exit-file", "/x", "--"])).unwrap_err().contains("PROGRAM"));
        assert!(parse(os(&["--exit-file", "/x"])).unwrap_err().contains("missing"));
        assert!(parse(os(&["--bogus"])).unwrap_err().contains("unknown argument"));
        assert!(parse(os(&["--exit-file"])).unwrap_err().contains("needs a path"));
    }

    #[test]
    fn records_exit_codes_signals_and_missing_programs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("exit");
        let go = |prog: &str, args: &[&str]| {
            let inv = Invocation {
                exit_file: f.clone(),
                setsid: false,
                program: prog.into(),
                args: os(args),
                sandbox: None,
                mode: Mode::Outer,
            };
            let s = run(&inv);
            assert_eq!(std::fs::read_to_string(&f).unwrap(), format!("{s}\n"));
            s
        };
        assert_eq!(go("/bin/sh", &["-c", "exit 3"]), 3);
        assert_eq!(go("/bin/true", &[]), 0);
        assert_eq!(go("/bin/sh", &["-c", "kill -9 $$"]), 128 + 9);
        assert_eq!(go("/nonexistent/agent", &[]), NOT_FOUND);
        assert_eq!(go(dir.path().to_str().unwrap(), &[]), CANNOT_EXECUTE);
    }
}
