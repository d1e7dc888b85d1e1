//! Test helpers: a real `agentctl server` on port 0 with a temp data dir, and a runner for
//! `agentctl` commands with an isolated (empty) client config.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_agentctl");
const START_DEADLINE: Duration = Duration::from_secs(60);

/// What one `agentctl` invocation did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// An `agentctl` command with no config file, no `AGENTCTL_*` or `AGENTPLANE_*` variables from the
/// environment of the test run.
pub fn agentctl(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENTCTL_") || k.starts_with("AGENTPLANE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AGENTCTL_CONFIG", config).env("NO_COLOR", "1");
    cmd
}

/// Runs a command to completion, feeding `stdin`.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn agentctl");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait agentctl");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `agentctl server`, killed on drop.
pub struct TestServer {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    /// The bootstrap admin token (also in the client config).
    pub token: String,
}

impl TestServer {
    /// The server's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> TestServer {
        TestServer::start_in(tempfile::tempdir().expect("tempdir"))
    }

    /// Start with extra server flags (e.g. `--ledger-checkpoint-every-entries 1`).
    pub fn start_with(extra: &[&str]) -> TestServer {
        TestServer::start_in_with(tempfile::tempdir().expect("tempdir"), extra)
    }

    /// Start on an existing directory (its `data/` holds the store).
    pub fn start_in(dir: tempfile::TempDir) -> TestServer {
        TestServer::start_in_with(dir, &[])
    }

    pub fn start_in_with(dir: tempfile::TempDir, extra: &[&str]) -> TestServer {
        TestServer::start_full(dir, extra, false)
    }

    /// Start with the local runtime's sandbox on (the other helpers turn it off: their agents
    /// write outside their run folders on purpose; tests/sandbox.rs covers the sandbox).
    pub fn start_sandboxed(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        // The agent user must reach its run folder by absolute path.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
        TestServer::start_full(dir, extra, true)
    }

    fn start_full(dir: tempfile::TempDir, extra: &[&str], sandbox: bool) -> TestServer {
        let mut cmd = agentctl(&dir.path().join("client.toml"));
        // Tests make many requests quickly; the rate limit has its own tests.
        cmd.env("AGENTPLANE_AUTH_RATE_LIMIT_PER_SECOND", "0");
        cmd.env("AGENTPLANE_SANDBOX_ENABLED", if sandbox { "true" } else { "false" });
        cmd.args(["server", "--listen", "127.0.0.1:0", "--log-level", "info", "--log-format", "text"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn agentctl server");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Keeps draining stderr for the server's whole life so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = listening_url(&line) {
                    let _ = tx.send(url);
                }
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let url = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                panic!("agentctl server did not report 'listening on http://' ({e:?}); its stderr:\n{log}");
            }
        };
        // The client config carries the bootstrap admin token, as `server --dev` would write it.
        let token = std::fs::read_to_string(dir.path().join("data").join("admin-token")).expect("admin-token");
        let token = token.trim().to_string();
        std::fs::write(dir.path().join("client.toml"), format!("token = \"{token}\"\n")).expect("client.toml");
        TestServer { child, url, dir, log, token }
    }

    pub fn client_config(&self) -> PathBuf {
        self.dir.path().join("client.toml")
    }

    /// `agentctl --server URL ARGS...`
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = agentctl(&self.client_config());
        cmd.arg("--server").arg(&self.url).args(args).current_dir(self.dir.path());
        cmd
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        run(self.cmd(args), None)
    }

    pub fn ctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run(self.cmd(args), Some(stdin))
    }

    /// Writes a file in the server's temp dir and returns its path (relative names keep
    /// messages, and so snapshots, stable).
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write fixture");
        name.to_string()
    }

    /// `kill -9` the server and hand back its directory, data intact, for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// Send SIGTERM and wait for the process to exit; returns its exit code and its stderr.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the stderr reader drain what the process wrote last.
                let end = Instant::now() + Duration::from_secs(5);
                while !self.log().contains("store flushed and closed") && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return (status.code(), self.log());
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL in a line like `... listening on http://127.0.0.1:41234 addr=...` (colour codes
/// allowed around it).
fn listening_url(line: &str) -> Option<String> {
    let rest = &line[line.find("listening on http://")? + "listening on ".len()..];
    let end = rest["http://".len()..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']' | '-')))
        .map_or(rest.len(), |i| i + "http://".len());
    Some(rest[..end].to_string())
}

/// A manifest of one object.
pub fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: agentplane.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// Filters that make human output stable: ages, timestamps, uids, resource versions, ports.
pub fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", "[TIMESTAMP]"),
        (r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "[UID]"),
        (r"Resource Version: +\d+", "Resource Version: [RV]"),
        (r"\b\d+[smhdy]\b", "[AGE]"),
        (r"http://127\.0\.0\.1:\d+", "[SERVER]"),
    ]
}

#[test]
fn listening_url_is_found_among_colour_codes() {
    assert_eq!(
        listening_url("\u{1b}[2m..\u{1b}[0m agentplane server listening on http://127.0.0.1:43903 \u{1b}[3maddr"),
        Some("http://127.0.0.1:43903".into())
    );
    assert_eq!(listening_url("listening on http://[::1]:80"), Some("http://[::1]:80".into()));
    assert_eq!(listening_url("nothing"), None);
}
