//! The runner's logic (see the crate documentation for the contract).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

/// Exit status for a usage error of the runner itself.
pub const USAGE: i32 = 125;
/// Exit status when the agent's program exists but cannot be executed.
pub const CANNOT_EXECUTE: i32 = 126;
/// Exit status when the agent's program does not exist.
pub const NOT_FOUND: i32 = 127;

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub exit_file: PathBuf,
    pub setsid: bool,
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// Parses the runner's arguments (without argv\[0\]).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
    let mut it = args.into_iter();
    let mut exit_file = None;
    let mut setsid = true;
    loop {
        let Some(a) = it.next() else { return Err("missing `-- PROGRAM [ARG]...`".into()) };
        match a.to_str() {
            Some("--exit-file") => {
                exit_file = Some(PathBuf::from(it.next().ok_or("--exit-file needs a path")?));
            }
            Some("--no-setsid") => setsid = false,
            Some("--") => break,
            _ => {
                return Err(format!(
                    "unknown argument {a:?}; usage: --exit-file PATH [--no-setsid] -- PROGRAM [ARG]..."
                ));
            }
        }
    }
    let exit_file = exit_file.ok_or("--exit-file is required")?;
    let program = it.next().ok_or("missing PROGRAM after --")?;
    Ok(Invocation { exit_file, setsid, program, args: it.collect() })
}

/// The status a shell would report: the exit code, or 128 + the signal that killed the process.
pub fn shell_status(s: ExitStatus) -> i32 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// Writes `status` followed by a newline to `path` (the format the local runtime reads).
fn record(path: &std::path::Path, status: i32) {
    if let Err(e) = std::fs::write(path, format!("{status}\n")) {
        let _ = writeln!(std::io::stderr(), "agentplane-runner: cannot write {}: {e}", path.display());
    }
}

/// Runs the invocation and returns the runner's exit status.
pub fn run(inv: &Invocation) -> i32 {
    if inv.setsid
        && let Err(e) = nix::unistd::setsid()
    {
        // EPERM: already a group leader. Nothing else may run under a wrong grouping.
        let _ = writeln!(std::io::stderr(), "agentplane-runner: setsid failed: {e}");
        record(&inv.exit_file, USAGE);
        return USAGE;
    }
    let status = match Command::new(&inv.program).args(&inv.args).status() {
        Ok(s) => shell_status(s),
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { NOT_FOUND } else { CANNOT_EXECUTE };
            let _ = writeln!(std::io::stderr(), "agentplane-runner: cannot execute {:?}: {e}", inv.program);
            code
        }
    };
    record(&inv.exit_file, status);
    status
}

/// The binary's entry point: parses `std::env::args_os()`, runs, returns the exit status.
pub fn main() -> i32 {
    match parse(std::env::args_os().skip(1)) {
        Ok(inv) => run(&inv),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "agentplane-runner: {e}");
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
            let inv = Invocation { exit_file: f.clone(), setsid: false, program: prog.into(), args: os(args) };
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
