//! Escape tests of the local runtime's sandbox (issue #6, docs/sandbox.md): each test starts a
//! real agent process through the real `agentplane-runner` and the local adapter, and the agent
//! tries to get out. Every test also checks that the sandbox report says the protection it relies
//! on was applied: a protection this kernel lacks fails the test loudly unless
//! `AGENTPLANE_SANDBOX_UNAVAILABLE` (comma-separated protection names, e.g.
//! `filesystem,pid-namespace`) says it is unavailable here — then the escape assertions that
//! depend on it are skipped and the test says so.
//!
//! These tests need root (to change user, mount /proc and make cgroups), as CI runs them here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentplane_api::{AgentLimits, AgentProviderSpec, NetworkMode, RunPhase};
use agentplane_runtime::{
    LocalAdapter, LocalConfig, RunSpec, RunnerSetting, RuntimeAdapter, RuntimeRef, RuntimeStatus, SandboxSettings,
    StatusReason,
};

const RUNNER: &str = env!("CARGO_BIN_EXE_agentplane-runner");
/// Only for polling for processes to appear or vanish (never a time limit of a test's logic).
const DEADLINE: Duration = Duration::from_secs(60);

fn unavailable() -> Vec<String> {
    std::env::var("AGENTPLANE_SANDBOX_UNAVAILABLE")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether the escape checks relying on `name` run (the protection is not declared unavailable).
fn relies_on(name: &str) -> bool {
    let ok = !unavailable().iter().any(|u| u == name);
    if !ok {
        eprintln!("SKIPPED: escape checks relying on `{name}` (AGENTPLANE_SANDBOX_UNAVAILABLE)");
    }
    ok
}

fn agent_identity() -> agentplane_sandbox::policy::Identity {
    let cfg = agentplane_server::config::SandboxConfig::default();
    agentplane_server::sandbox::agent_identity(&cfg)
        .expect("the agent user exists or can be created (tests run as root)")
        .expect("tests run as root, so agents get their own user")
}

struct Env {
    base: tempfile::TempDir,
    adapter: LocalAdapter,
    gateway: TcpListener,
    uid: u32,
}

impl Env {
    fn new() -> Env {
        Env::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut SandboxSettings)) -> Env {
        let base = tempfile::tempdir().unwrap();
        let gateway = TcpListener::bind("127.0.0.1:0").unwrap();
        let id = agent_identity();
        let declared = unavailable();
        let mut s = SandboxSettings {
            user: Some(id),
            gateway_ports: vec![gateway.local_addr().unwrap().port()],
            quota_interval: Duration::from_millis(50),
            ..SandboxSettings::default()
        }
        .require_all();
        s.required.retain(|r| !declared.contains(r));
        tweak(&mut s);
        let cfg = LocalConfig {
            runner: RunnerSetting::At(PathBuf::from(RUNNER)),
            grace_period: Duration::from_millis(500),
            sandbox: Some(s),
            ..LocalConfig::default()
        };
        let adapter = LocalAdapter::with_config(base.path(), cfg);
        Env { base, adapter, gateway, uid: id.uid }
    }

    fn spec(&self, name: &str, script: &str, limits: AgentLimits, network: NetworkMode) -> RunSpec {
        let provider = AgentProviderSpec {
            binary: "/bin/bash".into(),
            args_template: vec!["-c".into(), script.into()],
            ..Default::default()
        };
        let unique = self.base.path().file_name().unwrap().to_string_lossy().replace('.', "");
        let mut spec = RunSpec::new("default", name, &format!("{name}-{unique}"), provider);
        spec.agent.limits = limits.clone();
        spec.agent.network = Some(network);
        spec.limits = limits;
        spec.timeout_seconds = Some(120);
        spec
    }

    async fn submit(&self, name: &str, script: &str, limits: AgentLimits, network: NetworkMode) -> RuntimeRef {
        self.adapter.submit(&self.spec(name, script, limits, network)).await.unwrap()
    }

    async fn wait(&self, r: &RuntimeRef) -> RuntimeStatus {
        let mut events = self.adapter.subscribe().unwrap();
        loop {
            let s = self.adapter.status(r).await.unwrap();
            if s.phase.is_terminal() {
                return s;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
        }
    }

    async fn run(
        &self,
        name: &str,
        script: &str,
        limits: AgentLimits,
        network: NetworkMode,
    ) -> (RuntimeStatus, String) {
        let r = self.submit(name, script, limits, network).await;
        let s = self.wait(&r).await;
        (s, self.log(name))
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.adapter.run_dir("default", name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir(name).join(".agent/runner.log")).unwrap_or_default()
    }
}

/// Asserts the report says `names` were applied (unless declared unavailable).
fn assert_applied(s: &RuntimeStatus, names: &[&str]) {
    let report = s.sandbox.as_ref().unwrap_or_else(|| panic!("no sandbox report in {s:?}"));
    for n in names {
        if !relies_on(n) {
            continue;
        }
        let p =
            report.protections.iter().find(|p| p.name == *n).unwrap_or_else(|| panic!("{n} not reported: {report:?}"));
        assert_eq!(
            p.status, "applied",
            "protection {n} was not applied on this host: {p:?}\nSet AGENTPLANE_SANDBOX_UNAVAILABLE={n} only if this kernel really lacks it."
        );
    }
}

fn processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&c).contains(marker)
        {
            out.push(pid);
        }
    }
    out
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < until, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn marker(tag: &str) -> String {
    format!("apsbx-{tag}-{}-{}", std::process::id(), rand_suffix())
}

/// A Perl expression for `m`, written so that the script's text (which the runners' command
/// lines hold) does not contain `m` itself.
fn perl_str(m: &str) -> String {
    let (a, b) = m.split_at(3);
    format!("\"{a}\" . \"{b}\"")
}

fn rand_suffix() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    u64::from(t.subsec_nanos())
}

fn world_writable_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_runs_as_an_unprivileged_user_and_writes_only_inside_its_run_folder() {
    let env = Env::new();
    let outside = world_writable_dir();
    let target = outside.path().join("escaped");
    let script = format!(
        "id -u; id -G; echo inside > \"$PWD/inside\" && cat \"$PWD/inside\"; echo tmp > \"$TMPDIR/t\" && echo tmp-ok; \
         echo x > {t}; echo x > /tmp/{m}; echo x > \"$HOME/at-home\"; exit 0",
        t = target.display(),
        m = marker("w")
    );
    let (s, log) = env.run("write", &script, AgentLimits::default(), NetworkMode::Gateway).await;
    assert_eq!(s.phase, RunPhase::Succeeded, "{s:?}\n{log}");
    assert_applied(&s, &["identity", "no-new-privs", "filesystem", "rlimits"]);
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some(env.uid.to_string().as_str()), "{log}");
    assert_eq!(lines.next().map(|l| l.split(' ').count()), Some(1), "supplementary groups kept: {log}");
    assert!(log.contains("inside\n") && log.contains("tmp-ok"), "the run folder must stay writable: {log}");
    if relies_on("filesystem") {
        assert!(!target.exists(), "wrote outside its run folder: {log}");
        assert!(!env.dir("write").join("at-home").exists(), "wrote into the run folder's top: {log}");
        assert!(log.contains("Permission denied"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_agent_user_the_agent_is_root_without_roots_powers() {
    // No agent user (as when the data directory is out of its reach): the agent stays uid 0, so
    // the runner drops every capability before starting it.
    let env = Env::with(|s| {
        s.user = None;
        s.user_unavailable = Some("the agent user cannot reach the data directory (test)".into());
        s.required.retain(|r| r != "identity");
    });
    let script = "id -u; grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status; mkdir -p m; \
                  mount -t tmpfs none m && echo mounted; chown nobody \"$PWD/m\" && echo chowned; echo done";
    let (s, log) = env.run("rootless", script, AgentLimits::default(), NetworkMode::Gateway).await;
    assert_eq!(s.phase, RunPhase::Succeeded, "{s:?}\n{log}");
    assert!(log.starts_with("0\n"), "the agent should be uid 0 here: {log}");
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert!(log.contains(&format!("{set}:\t0000000000000000")), "{set} not empty: {log}");
    }
    assert!(!log.contains("mounted") && !log.contains("chowned"), "root's powers were left: {log}");
    assert!(log.contains("done"), "{log}");
    let report = s.sandbox.as_ref().expect("a sandbox report");
    let identity = report.protections.iter().find(|p| p.name == "identity").expect("identity reported");
    assert_eq!(identity.status, "unavailable", "{identity:?}");
    let why = identity.reason.as_deref().unwrap_or("");
    assert!(
        why.contains("cannot reach the data directory (test)") && why.contains("every capability dropped"),
        "{identity:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_cannot_read_another_run_or_the_servers_files() {
    let env = Env::new();
    // The server's files: a database and a key, one of them even world-readable.
    let db = env.base.path().join("agentplane.db");
    std::fs::write(&db, "SQLite format 3 secret-db-content").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = env.base.path().join("ledger.key");
    std::fs::write(&key, "secret-signing-key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Another run (same agent user!) leaves a file in its workspace.
    let (a, log_a) =
        env.run("victim", "echo other-run-secret > secret.txt", AgentLimits::default(), NetworkMode::Gateway).await;
    assert_eq!(a.phase, RunPhase::Succeeded, "{a:?} {log_a}");
    let other = env.dir("victim").join("workspace/secret.txt");
    assert!(other.exists());
    let script = format!(
        "cat {o}; cat {db}; cat {key}; ls {base}; ls {base}/runs/default; echo done",
        o = other.display(),
        db = db.display(),
        key = key.display(),
        base = env.base.path().display()
    );
    let (s, log) = env.run("reader", &script, AgentLimits::default(), NetworkMode::Gateway).await;
    assert_eq!(s.phase, RunPhase::Succeeded, "{s:?}\n{log}");
    assert_applied(&s, &["filesystem", "identity"]);
    assert!(log.contains("done"), "{log}");
    if relies_on("filesystem") {
        for secret in ["other-run-secret", "secret-db-content", "secret-signing-key"] {
            assert!(!log.contains(secret), "read {secret:?}: {log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_network_reaches_only_the_gateway_port() {
    let env = Env::new();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let gw = env.gateway.local_addr().unwrap().port();
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{gw} && echo gw-ok; exec 4<>/dev/tcp/127.0.0.1/{o} && echo other-ok; \
         exec 5<>/dev/tcp/192.0.2.1/80 && echo outside-ok; echo done",
        o = other.local_addr().unwrap().port()
    );
    let (s, log) = env.run("net", &script, AgentLimits::default(), NetworkMode::Gateway).await;
    assert_eq!(s.phase, RunPhase::Succeeded, "{s:?}\n{log}");
    assert!(log.contains("gw-ok"), "the gateway must stay reachable: {log}");
    assert_applied(&s, &["network"]);
    if relies_on("network") {
        assert!(!log.contains("other-ok") && !log.contains("outside-ok"), "{log}");
        assert_eq!(log.matches("connect: Permission denied").count(), 2, "both refused by the sandbox: {log}");
        assert!(other.accept().is_err(), "a connection reached the other port");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn network_none_reaches_nothing() {
    let env = Env::new();
    env.gateway.set_nonblocking(true).unwrap();
    let gw = env.gateway.local_addr().unwrap().port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{gw} && echo gw-ok; echo done");
    let (s, log) = env.run("nonet", &script, AgentLimits::default(), NetworkMode::None).await;
    assert_eq!(s.phase, RunPhase::Succeeded, "{s:?}\n{log}");
    assert_applied(&s, &["network"]);
    if relies_on("network") {
        assert!(!log.contains("gw-ok"), "{log}");
        assert!(env.gateway.accept().is_err(), "a connection reached the gateway");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind() {
    let env = Env::new();
    let m = marker("fork");
    let script = format!(
        "exec perl -e 'my $n = 0; while (1) {{ my $p = fork(); if (!defined $p) {{ print \"fork failed after $n\\n\"; exit 3 }} \
         if ($p == 0) {{ $0 = {pm}; sleep 1000; exit 0 }} $n++; if ($n > 5000) {{ print \"forked $n\\n\"; exit 0 }} }}'",
        pm = perl_str(&m)
    );
    let limits = AgentLimits { processes: Some(32), ..Default::default() };
    let (s, log) = env.run("forkbomb", &script, limits, NetworkMode::Gateway).await;
    assert_applied(&s, &["process-tree", "pid-namespace"]);
    if relies_on("process-tree") {
        assert_eq!(s.reason, Some(StatusReason::ProcessLimit), "{s:?}\n{log}");
        let n: u32 = log.split("fork failed after ").nth(1).and_then(|r| r.trim().parse().ok()).unwrap_or(u32::MAX);
        assert!(n <= 32, "forked {n} processes with a limit of 32: {log}");
    }
    eventually("the fork bomb's processes are gone", || processes_with(&m).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn allocating_4_gib_fails_with_memory_limit() {
    let env = Env::new();
    let limits = AgentLimits { memory_bytes: Some(64 << 20), ..Default::default() };
    let script = "perl -e '$x = \"a\" x (4 * 1024 * 1024 * 1024); print \"allocated \", length($x), \"\\n\"'";
    let (s, log) = env.run("mem", script, limits, NetworkMode::Gateway).await;
    assert_eq!(s.phase, RunPhase::Failed, "{s:?}\n{log}");
    assert!(!log.contains("allocated"), "{log}");
    assert_applied(&s, &["memory-cgroup"]);
    if relies_on("memory-cgroup") {
        assert_eq!(s.reason, Some(StatusReason::MemoryLimit), "{s:?}\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spinning_the_cpu_forever_ends_with_cpu_limit() {
    let env = Env::new();
    let limits = AgentLimits { cpu_seconds: Some(1), ..Default::default() };
    let (s, log) = env.run("spin", "while :; do :; done", limits, NetworkMode::Gateway).await;
    assert_applied(&s, &["rlimits"]);
    assert_eq!(s.phase, RunPhase::Failed, "{s:?}\n{log}");
    assert_eq!(s.reason, Some(StatusReason::CpuLimit), "{s:?}\n{log}");
    assert!(!s.retryable);
}

#[tokio::test(flavor = "multi_thread")]
async fn filling_the_disk_hits_the_file_size_limit_and_the_output_quota() {
    let env = Env::new();
    let limits = AgentLimits { file_size_bytes: Some(1 << 20), ..Default::default() };
    let (s, log) = env.run("bigfile", "dd if=/dev/zero of=big bs=64k count=1000", limits, NetworkMode::Gateway).await;
    assert_applied(&s, &["rlimits"]);
    assert_eq!(s.reason, Some(StatusReason::FileSizeLimit), "{s:?}\n{log}");
    let size = std::fs::metadata(env.dir("bigfile").join("workspace/big")).map(|m| m.len()).unwrap_or(0);
    assert!(size <= 1 << 20, "wrote {size} bytes");

    let quota = 4u64 << 20;
    let limits = AgentLimits { output_quota_bytes: Some(quota), ..Default::default() };
    let script = "i=0; while :; do head -c 262144 /dev/zero > f$i; i=$((i+1)); done";
    let (s, log) = env.run("fill", script, limits, NetworkMode::Gateway).await;
    assert_applied(&s, &["output-quota"]);
    assert_eq!(s.reason, Some(StatusReason::OutputQuotaExceeded), "{s:?}\n{log}");
    let used = agentplane_sandbox::runner::disk_usage(&env.dir("fill"));
    assert!(used < 512 << 20, "the run folder grew to {used} bytes with a quota of {quota}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_that_setsids_does_not_outlive_a_cancel() {
    let env = Env::new();
    let m = marker("setsid");
    let script = format!(
        "setsid perl -e '$0 = {pm}; sleep 1000' & (setsid perl -e '$0 = {pm} . \"-2\"; sleep 1000' &); echo started; sleep 1000",
        pm = perl_str(&m)
    );
    let r = env.submit("detach", &script, AgentLimits::default(), NetworkMode::Gateway).await;
    eventually("both detached children run", || processes_with(&m).len() == 2 && env.log("detach").contains("started"));
    env.adapter.cancel(&r).await.unwrap();
    let s = env.wait(&r).await;
    assert_eq!(s.phase, RunPhase::Cancelled, "{s:?}");
    assert_applied(&s, &["pid-namespace", "process-tree"]);
    eventually("the detached children are gone after the cancel", || processes_with(&m).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_another_runs_process_fails() {
    let env = Env::new();
    let m = marker("victim");
    let victim = env
        .submit(
            "victim",
            &format!("exec perl -e '$0 = {}; sleep 1000'", perl_str(&m)),
            AgentLimits::default(),
            NetworkMode::Gateway,
        )
        .await;
    eventually("the victim runs", || !processes_with(&m).is_empty());
    let pid = processes_with(&m)[0];
    let (s, log) =
        env.run("killer", &format!("kill -9 {pid}; echo rc=$?"), AgentLimits::default(), NetworkMode::Gateway).await;
    assert_applied(&s, &["signals", "pid-namespace"]);
    assert!(log.contains("rc=1"), "{log}");
    assert_eq!(processes_with(&m), vec![pid], "the other run's process was killed");
    assert_eq!(env.adapter.status(&victim).await.unwrap().phase, RunPhase::Running);
    env.adapter.cancel(&victim).await.unwrap();
    env.wait(&victim).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_environment_is_unreadable_through_proc() {
    let env = Env::new();
    let me = std::process::id();
    let script = format!("cat /proc/{me}/environ; echo rc=$?; ls /proc | grep -c '^[0-9]'");
    let (s, log) = env.run("environ", &script, AgentLimits::default(), NetworkMode::Gateway).await;
    assert_applied(&s, &["pid-namespace", "identity"]);
    assert!(log.contains("rc=1"), "{log}");
    let ours: BTreeMap<String, String> = std::env::vars().collect();
    let leaked: Vec<&String> = ours.keys().filter(|k| k.len() > 3 && log.contains(&format!("{k}="))).collect();
    let allowed = ["PATH", "HOME"];
    assert!(leaked.iter().all(|k| allowed.contains(&k.as_str())), "leaked {leaked:?}: {log}");
    if relies_on("pid-namespace") {
        // Its own /proc shows the inner runner, bash and ls (and grep) only.
        let n: u32 = log.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(u32::MAX);
        assert!(n <= 5, "the agent sees {n} processes: {log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setuid_binary_does_not_escalate() {
    let suid = tempfile::tempdir().unwrap();
    std::fs::set_permissions(suid.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let id_bin = suid.path().join("id");
    std::fs::copy("/usr/bin/id", &id_bin).unwrap();
    std::fs::set_permissions(&id_bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let dir = suid.path().to_path_buf();
    let env = Env::with(move |s| s.read_only_paths.push(dir));
    let (s, log) =
        env.run("suid", &format!("{} -u", id_bin.display()), AgentLimits::default(), NetworkMode::Gateway).await;
    assert_eq!(s.phase, RunPhase::Succeeded, "{s:?}\n{log}");
    assert_applied(&s, &["no-new-privs", "identity"]);
    assert_eq!(log.trim(), env.uid.to_string(), "the setuid binary ran as {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_required_protection_that_is_missing_fails_the_run_without_starting_it() {
    // A cgroup root where nothing is mounted: the process tree cannot be tracked.
    let fake = tempfile::tempdir().unwrap();
    let root = fake.path().to_path_buf();
    let env = Env::with(move |s| {
        s.cgroup_root = Some(root);
        s.required = vec!["process-tree".into()];
    });
    let m = marker("never");
    let (s, log) = env.run("refused", &format!("echo {m}"), AgentLimits::default(), NetworkMode::Gateway).await;
    assert_eq!(s.phase, RunPhase::Failed, "{s:?}");
    assert_eq!(s.reason, Some(StatusReason::SandboxUnavailable), "{s:?}\n{log}");
    assert!(!s.retryable);
    assert!(s.message.as_deref().unwrap_or_default().contains("process-tree"), "{s:?}");
    assert!(!log.contains(&format!("{m}\n")), "the agent ran: {log}");
    let report = s.sandbox.unwrap();
    let p = report.protections.iter().find(|p| p.name == "process-tree").unwrap();
    assert_eq!(p.status, "unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_as_files_are_0400_and_removed_at_the_end() {
    let env = Env::new();
    let mut spec = env.spec(
        "secret",
        "stat -c %a \"$API_KEY_FILE\"; cat \"$API_KEY_FILE\" | wc -c; echo \"env:${API_KEY:-none}\"",
        AgentLimits::default(),
        NetworkMode::Gateway,
    );
    spec.agent.security.secrets_as = Some(agentplane_api::SecretsAs::Files);
    spec.agent.env.push(agentplane_api::EnvVar {
        name: "API_KEY".into(),
        value: None,
        value_from: Some(agentplane_api::EnvVarSource {
            secret_key_ref: agentplane_api::meta::SecretKeyRef { name: "api".into(), key: None },
        }),
    });
    spec.secrets.insert("api".into(), "s3cr3t-value".into());
    let r = env.adapter.submit(&spec).await.unwrap();
    let s = env.wait(&r).await;
    let log = env.log("secret");
    assert_eq!(s.phase, RunPhase::Succeeded, "{s:?}\n{log}");
    assert_eq!(log, "400\n12\nenv:none\n");
    assert!(!env.dir("secret").join("secrets").exists(), "secret files left behind");
}

/// Through the real server: the run's status shows the protections, the agent cannot read the
/// server's database, signing key or environment, a CPU limit from the Agent ends the run with
/// `CpuLimit`, and an Agent above `[sandbox.maximums]` is refused with a 400 naming the field.
#[test]
fn through_the_server_status_shows_the_sandbox_and_the_servers_files_stay_closed() {
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("server.toml");
    std::fs::write(&cfg, "[sandbox]\nquota_interval_millis = 50\n[sandbox.defaults]\ncpu_seconds = 30\n[sandbox.maximums]\ncpu_seconds = 60\n").unwrap();
    let s = common::TestServer::start_sandboxed(&["--require-sandbox", "--config", cfg.to_str().unwrap()]);
    let data = s.dir.path().join("data");
    let script = format!(
        "head -c 64 {d}/agentplane.db; head -c 64 {d}/ledger.key; ls {d}; cat /proc/1/environ; id -u; echo done",
        d = data.display()
    );
    let manifest = format!(
        "{}---\n{}---\n{}",
        common::doc(
            "AgentProvider",
            "sh",
            "  binary: /bin/sh\n  argsTemplate: [\"-c\", \"{{ parameters.script }}\"]\n"
        ),
        common::doc("Agent", "boxed", "  providerRef:\n    name: sh\n  limits:\n    cpuSeconds: 1\n"),
        common::doc("Agent", "greedy", "  providerRef:\n    name: sh\n  limits:\n    cpuSeconds: 61\n"),
    );
    let f = s.write("agents.yaml", &manifest);
    let out = s.ctl(&["apply", "-f", &f]);
    assert_ne!(out.code, 0, "an Agent above the maximum was accepted: {out:?}");
    assert!(out.stderr.contains("spec.limits.cpuSeconds") && out.stderr.contains("60"), "{out:?}");
    let p = ["--agent", "boxed", "--text", "x", "--retry-limit", "0", "--wait", "--wait-timeout", "120s"];
    let script_param = format!("script={script}");
    let mut args = vec!["run", "submit", "--name", "peek", "--param", &script_param];
    args.extend(p);
    let out = s.ctl(&args);
    assert_eq!(out.code, 0, "{out:?}\nserver log:\n{}", s.log());
    assert!(out.stdout.contains("done"), "{out:?}");
    assert!(!out.stdout.contains("SQLite format"), "read the database: {out:?}");
    assert!(!out.stdout.contains("AGENTPLANE") && !out.stdout.contains("CARGO"), "read an environment: {out:?}");
    assert!(!out.stdout.lines().any(|l| l.trim() == "0"), "ran as root: {out:?}");
    let run: serde_json::Value = serde_json::from_str(&s.ctl(&["get", "run", "peek", "-o", "json"]).stdout).unwrap();
    let protections = run["status"]["sandbox"]["protections"].as_array().cloned().unwrap_or_default();
    assert!(!protections.is_empty(), "no status.sandbox: {run}");
    for p in &protections {
        let name = p["name"].as_str().unwrap();
        if relies_on(name) {
            assert_ne!(p["status"], "unavailable", "{p}");
        }
    }
    // `agentctl diagnose --run` shows the same protections, as a table and as JSON.
    let out = s.ctl(&["diagnose", "--run", "peek"]);
    assert!(out.stdout.contains("agentrun/peek: protections in force"), "{out:?}");
    assert!(out.stdout.lines().any(|l| l.starts_with("filesystem ") && l.contains("applied")), "{out:?}");
    let out = s.ctl(&["diagnose", "--run", "peek", "-o", "json"]);
    let d: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(d["run"]["protections"].as_array().map(Vec::len), Some(protections.len()), "{d}");
    let spin_param = "script=while :; do :; done".to_string();
    let mut args = vec!["run", "submit", "--name", "spin", "--param", &spin_param];
    args.extend(p);
    let out = s.ctl(&args);
    assert_ne!(out.code, 0, "{out:?}");
    let run: serde_json::Value = serde_json::from_str(&s.ctl(&["get", "run", "spin", "-o", "json"]).stdout).unwrap();
    let failed = run["status"]["conditions"].as_array().unwrap().iter().any(|c| c["reason"] == "CpuLimit");
    assert!(failed, "{run}");
}
