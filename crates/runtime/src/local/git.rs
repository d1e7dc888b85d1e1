//! The git side of a workspace: clone at a ref before the agent starts, diff after it exits.
//! Uses the `git` binary with a scrubbed environment and a timeout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Config that keeps agent-controlled repository settings from running programs in the server's
/// name while we diff (hooks, fsmonitor).
const SAFE_CONFIG: &[&str] = &["-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null"];

/// How git runs: its `HOME` (the run folder), its `PATH`, and the limit of each command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GitEnv<'a> {
    pub home: &'a Path,
    pub path_var: &'a str,
    pub timeout: Duration,
}

fn git(cwd: &Path, g: GitEnv<'_>) -> Command {
    let mut c = Command::new("git");
    c.args(SAFE_CONFIG)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", g.path_var)
        .env("HOME", g.home)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // A sandboxed agent owns its workspace; git (run by the server) would refuse it as a
        // repository of another user otherwise.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", "*")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs `cmd` with a timeout; returns stdout, or a one-line message with git's stderr.
async fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<String, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => return Err(format!("{what} timed out after {}s", timeout.as_secs())),
        Ok(Err(e)) => return Err(format!("{what}: cannot run git: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg: String = stderr.trim().chars().take(1000).collect();
        Err(format!("{what} failed ({}): {msg}", out.status))
    }
}

/// Clones `repository` into `dest` (which must not exist), checks out `ref_` when given, and
/// returns the base commit (`None` for an empty repository).
pub(crate) async fn clone(
    repository: &str,
    ref_: Option<&str>,
    dest: &Path,
    g: GitEnv<'_>,
) -> Result<Option<String>, String> {
    let timeout = g.timeout;
    if repository.starts_with('-') {
        return Err(format!("repository `{repository}` must not start with '-'"));
    }
    let parent = dest.parent().unwrap_or(g.home);
    let mut c = git(parent, g);
    c.args(["clone", "--quiet", "--no-hardlinks", "--"]).arg(repository).arg(dest);
    run(c, &format!("git clone {repository}"), timeout).await?;
    if let Some(r) = ref_ {
        if r.starts_with('-') {
            return Err(format!("ref `{r}` must not start with '-'"));
        }
        let mut sha = None;
        for candidate in [format!("{r}^{{commit}}"), format!("origin/{r}^{{commit}}")] {
            let mut c = git(dest, g);
            c.args(["rev-parse", "--verify", "--quiet", "--end-of-options"]).arg(&candidate);
            if let Ok(s) = run(c, "git rev-parse", timeout).await {
                sha = Some(s);
                break;
            }
        }
        let sha = sha.ok_or_else(|| format!("ref `{r}` not found in {repository}"))?;
        let mut c = git(dest, g);
        c.args(["checkout", "--quiet", "--detach"]).arg(&sha);
        run(c, &format!("git checkout {r}"), timeout).await?;
    }
    let mut c = git(dest, g);
    c.args(["rev-parse", "--verify", "--quiet", "HEAD"]);
    Ok(run(c, "git rev-parse HEAD", timeout).await.ok().filter(|s| !s.is_empty()))
}

/// Writes `git diff --stat <base>` and the full binary patch of the working tree (tracked and
/// untracked files, `.gitignore` respected) to `stat_out` and `patch_out`. Uses a throw-away
/// index so the agent's own index is left alone.
pub(crate) async fn diff(
    ws: &Path,
    base: &str,
    index_file: &Path,
    stat_out: &Path,
    patch_out: &Path,
    g: GitEnv<'_>,
) -> Result<(), String> {
    let timeout = g.timeout;
    let _ = tokio::fs::remove_file(index_file).await;
    let with_index = |args: &[&str]| {
        let mut c = git(ws, g);
        c.env("GIT_INDEX_FILE", index_file).args(args);
        c
    };
    run(with_index(&["add", "-A"]), "git add -A", timeout).await?;
    for (out, extra) in [(stat_out, "--stat"), (patch_out, "--binary")] {
        let file = std::fs::File::create(out).map_err(|e| format!("create {}: {e}", out.display()))?;
        let mut c = with_index(&["diff", "--cached", "--no-color", "--no-ext-diff", "--no-textconv", extra, base]);
        // Not `output()`: it would capture stdout instead of writing the file.
        c.stdout(Stdio::from(file)).stderr(Stdio::piped());
        let child = c.spawn().map_err(|e| format!("git diff: {e}"))?;
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => return Err(format!("git diff timed out after {}s", timeout.as_secs())),
            Ok(Err(e)) => return Err(format!("git diff: {e}")),
            Ok(Ok(o)) if !o.status.success() => {
                return Err(format!("git diff failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = tokio::fs::remove_file(index_file).await;
    Ok(())
}
