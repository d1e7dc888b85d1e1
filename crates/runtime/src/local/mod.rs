//! The local adapter: each attempt is a child process of the server, in a run folder
//! `<base>/runs/<namespace>/<run>/` (layout and guarantees in `docs/runtime.md`).

mod files;
mod git;
mod log;
mod process;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentplane_api::{ArtifactStatus, RunPhase};
use async_trait::async_trait;
use chrono::Utc;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use self::files::StatusFile;
use crate::RuntimeAdapter;
use crate::error::RuntimeError;
use crate::spec::{RunSpec, RuntimeRef, RuntimeStatus, SecretValue, StatusReason};
use crate::template::render;

/// The `PATH` an agent gets unless its provider's `envTemplate` or its Agent's `env` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const REF_PREFIX: &str = "local:";

/// Knobs of the local adapter.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Between SIGTERM and SIGKILL of the process group on timeout or cancel (default 10 s).
    pub grace_period: Duration,
    /// Limit of each git command (clone, checkout, diff); default 10 min.
    pub git_timeout: Duration,
    /// The agent's default `PATH`, also used to find the provider's binary and `git`.
    pub path: String,
    /// How long to wait, after the agent exits, for the rest of its output (processes that left
    /// the group may hold the log open); default 5 s.
    pub log_drain_timeout: Duration,
    /// How often a re-adopted process (not our child after a restart) is checked; default 500 ms.
    pub adopt_poll_interval: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            grace_period: Duration::from_secs(10),
            git_timeout: Duration::from_secs(600),
            path: DEFAULT_PATH.to_string(),
            log_drain_timeout: Duration::from_secs(5),
            adopt_poll_interval: Duration::from_millis(500),
        }
    }
}

/// Runs agents as local child processes. One adapter per base dir. Dropping it detaches from the
/// running agents (they go on running); a new adapter on the same base dir re-adopts them on the
/// first `status` or `cancel` of their ref.
#[derive(Debug)]
pub struct LocalAdapter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: PathBuf,
    cfg: LocalConfig,
    setsid: Option<PathBuf>,
    runs: Mutex<HashMap<String, Arc<Entry>>>,
}

/// One attempt known to this adapter.
#[derive(Debug)]
struct Entry {
    dir: PathBuf,
    /// `None` until loaded or submitted; `Some(Err)` when that failed (the entry is then removed).
    /// Held by whoever sets the entry up, so others wait for the outcome.
    init: Arc<tokio::sync::Mutex<InitState>>,
    state: Mutex<StatusFile>,
    /// Serialises writes of `.agent/status.json`.
    write: tokio::sync::Mutex<()>,
    cancel: watch::Sender<bool>,
    task: Mutex<Option<AbortHandle>>,
    pump_stop: Mutex<Option<Arc<AtomicBool>>>,
    log_dropped: Mutex<Option<Arc<AtomicU64>>>,
}

type InitState = Option<Result<(), RuntimeError>>;
type InitGuard = tokio::sync::OwnedMutexGuard<InitState>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    fn new(dir: PathBuf) -> Self {
        Entry {
            dir,
            init: Arc::new(tokio::sync::Mutex::new(None)),
            state: Mutex::new(StatusFile::default()),
            write: tokio::sync::Mutex::new(()),
            cancel: watch::Sender::new(false),
            task: Mutex::new(None),
            pump_stop: Mutex::new(None),
            log_dropped: Mutex::new(None),
        }
    }

    fn status_path(&self) -> PathBuf {
        self.dir.join(".agent/status.json")
    }

    fn snapshot(&self) -> RuntimeStatus {
        let mut s = lock(&self.state).status.clone();
        if let Some(d) = lock(&self.log_dropped).as_ref() {
            s.log_truncated |= d.load(Ordering::Relaxed) > 0;
        }
        s
    }

    fn file(&self) -> StatusFile {
        lock(&self.state).clone()
    }

    /// Changes the in-memory status and writes it to `.agent/status.json`.
    async fn update(&self, f: impl FnOnce(&mut StatusFile)) {
        let _w = self.write.lock().await;
        let snapshot = {
            let mut s = lock(&self.state);
            f(&mut s);
            s.clone()
        };
        if let Err(e) = files::write_json(&self.status_path(), &snapshot).await {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot write status.json");
        }
    }

    /// Ends the attempt with `status` (keeps what is already known, such as `startedAt`).
    async fn finish(&self, status: RuntimeStatus) {
        self.update(|s| {
            let started = s.status.started_at;
            let base = s.status.base_commit.take();
            s.status = RuntimeStatus {
                started_at: status.started_at.or(started),
                base_commit: status.base_commit.clone().or(base),
                finished_at: Some(Utc::now()),
                ..status
            };
        })
        .await;
    }

    fn detach(&self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        if let Some(s) = lock(&self.pump_stop).take() {
            s.store(true, Ordering::Relaxed);
        }
    }
}

fn valid_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.len() <= 253 && !s.contains(['/', '\0', ':'])
}

struct RefParts<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    attempt: u32,
}

fn parse_ref(r: &str) -> Option<RefParts<'_>> {
    let mut it = r.strip_prefix(REF_PREFIX)?.split('/');
    let (namespace, name, uid, attempt) = (it.next()?, it.next()?, it.next()?, it.next()?.parse().ok()?);
    if it.next().is_some() || ![namespace, name, uid].iter().all(|c| valid_component(c)) {
        return None;
    }
    Some(RefParts { namespace, name, uid, attempt })
}

impl LocalAdapter {
    /// An adapter keeping its run folders under `<base_dir>/runs/`, with default settings.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self::with_config(base_dir, LocalConfig::default())
    }

    pub fn with_config(base_dir: impl Into<PathBuf>, cfg: LocalConfig) -> Self {
        let base = base_dir.into();
        let base = std::path::absolute(&base).unwrap_or(base);
        LocalAdapter {
            inner: Arc::new(Inner { base, cfg, setsid: process::find_setsid(), runs: Mutex::new(HashMap::new()) }),
        }
    }

    /// The run folder of a run: `<base>/runs/<namespace>/<name>/`.
    pub fn run_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.inner.base.join("runs").join(namespace).join(name)
    }

    /// Whether agents also get their own session (`setsid(1)` was found), not only their own
    /// process group.
    pub fn has_session_isolation(&self) -> bool {
        self.inner.setsid.is_some()
    }

    /// The entry of `r`, and the set-up guard when it is new (the caller must set it up).
    fn get_or_insert(&self, r: &RuntimeRef, namespace: &str, name: &str) -> (Arc<Entry>, Option<InitGuard>) {
        let mut runs = lock(&self.inner.runs);
        if let Some(e) = runs.get(r.as_str()) {
            return (e.clone(), None);
        }
        let e = Arc::new(Entry::new(self.run_dir(namespace, name)));
        let g = e.init.clone().try_lock_owned().ok();
        runs.insert(r.0.clone(), e.clone());
        (e, g)
    }

    /// Finds the entry of `r`, loading (and re-adopting) it from disk if this adapter has not
    /// seen it yet.
    async fn entry_for(&self, r: &RuntimeRef) -> Result<Arc<Entry>, RuntimeError> {
        let parts = parse_ref(r.as_str()).ok_or_else(|| RuntimeError::not_found(format!("not a local ref: {r}")))?;
        let (entry, mut guard) = self.get_or_insert(r, parts.namespace, parts.name);
        if let Some(g) = guard.as_mut() {
            let res = self.load(&entry, &parts).await;
            if res.is_err() {
                lock(&self.inner.runs).remove(r.as_str());
            }
            **g = Some(res.clone());
            res?;
            return Ok(entry);
        }
        let state = entry.init.lock().await.clone();
        match state {
            Some(Ok(())) => Ok(entry),
            Some(Err(e)) => Err(e),
            None => Err(RuntimeError::unavailable(format!("{r} is being set up; try again"))),
        }
    }

    /// Reads `.agent/status.json` of a ref nobody here submitted, and re-adopts it.
    async fn load(&self, entry: &Arc<Entry>, parts: &RefParts<'_>) -> Result<(), RuntimeError> {
        let sf = files::read_status(&entry.status_path())
            .await
            .map_err(|e| RuntimeError::unavailable(format!("cannot read {}: {e}", entry.status_path().display())))?
            .ok_or_else(|| RuntimeError::not_found(format!("no run folder for {}/{}", parts.namespace, parts.name)))?;
        if sf.uid != parts.uid || sf.attempt != parts.attempt {
            return Err(RuntimeError::not_found(format!(
                "run folder of {}/{} holds uid {} attempt {}, not uid {} attempt {}",
                parts.namespace, parts.name, sf.uid, sf.attempt, parts.uid, parts.attempt
            )));
        }
        self.adopt(entry, sf).await;
        Ok(())
    }

    /// Takes over an attempt recorded on disk: finished ones are only read; a live process gets a
    /// watcher; one that died without a recorded exit is `Lost`.
    async fn adopt(&self, entry: &Arc<Entry>, sf: StatusFile) {
        *lock(&entry.state) = sf.clone();
        if sf.status.phase.is_terminal() {
            return;
        }
        let exit_file = entry.dir.join(".agent/exit-code");
        let Some(pid) = sf.pid else {
            entry
                .finish(RuntimeStatus::failed(StatusReason::Lost, "the server stopped before the agent was started"))
                .await;
            return;
        };
        let alive = process::is_alive(pid, sf.proc_start_time);
        if !alive && !exit_file.exists() {
            process::signal_group(sf.pgid.unwrap_or(pid), Some(Signal::SIGKILL));
            entry
                .finish(RuntimeStatus::failed(
                    StatusReason::Lost,
                    format!("process {pid} ended while no server watched it and recorded no exit code"),
                ))
                .await;
            return;
        }
        tracing::info!(dir = %entry.dir.display(), pid, alive, "re-adopting agent process");
        if sf.cancel_requested {
            entry.cancel.send_replace(true);
        }
        let fifo = entry.dir.join(".agent/output.fifo");
        let log_path = entry.dir.join(".agent/runner.log");
        let cap = sf.log_cap_bytes();
        let pump = tokio::task::spawn_blocking(move || log::start_pump(&fifo, &log_path, cap)).await;
        let pump = match pump {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot re-open the agent's output");
                None
            }
            Err(_) => None,
        };
        let proc = Proc::Adopted { pid, start_time: sf.proc_start_time, exit_file };
        let launched = Launched { proc, pid, pgid: sf.pgid.unwrap_or(pid), deadline: sf.deadline, pump };
        let (inner, e) = (self.inner.clone(), entry.clone());
        let handle = tokio::spawn(async move { supervise(inner, e, launched).await });
        *lock(&entry.task) = Some(handle.abort_handle());
    }

    async fn start(
        &self,
        spec: &RunSpec,
        entry: &Arc<Entry>,
        agent_env: Vec<(String, SecretValue)>,
    ) -> Result<(), RuntimeError> {
        let dir = &entry.dir;
        let io = |what: &str, e: std::io::Error| RuntimeError::submit_failed(format!("{what}: {e}"));
        if let Some(existing) = files::read_status(&entry.status_path()).await.map_err(|e| io("status.json", e))? {
            let alive = !existing.status.phase.is_terminal()
                && existing.pid.is_some_and(|p| process::is_alive(p, existing.proc_start_time));
            if existing.uid == spec.run.uid {
                if existing.attempt == spec.attempt {
                    // Submitted before (by an earlier server): never start it twice.
                    self.adopt(entry, existing).await;
                    return Ok(());
                }
                if existing.attempt > spec.attempt {
                    return Err(RuntimeError::invalid_spec(format!(
                        "attempt {} was superseded by attempt {}",
                        spec.attempt, existing.attempt
                    )));
                }
                if alive {
                    return Err(RuntimeError::unavailable(format!("attempt {} is still running", existing.attempt)));
                }
                let archive = dir.join(format!(".agent/status.attempt-{}.json", existing.attempt));
                tokio::fs::copy(entry.status_path(), archive).await.map_err(|e| io("archive status.json", e))?;
            } else {
                if alive {
                    return Err(RuntimeError::unavailable(format!(
                        "an earlier run with this name (uid {}) is still running",
                        existing.uid
                    )));
                }
                tokio::fs::remove_dir_all(dir).await.map_err(|e| io("remove the earlier run's folder", e))?;
            }
        }
        for sub in [".agent", "artifacts"] {
            tokio::fs::create_dir_all(dir.join(sub)).await.map_err(|e| io(sub, e))?;
        }
        files::write_json(&dir.join("run.json"), &spec.run_spec).await.map_err(|e| io("run.json", e))?;
        files::write_json(&dir.join("agent-runner.json"), &runner_spec(spec, dir))
            .await
            .map_err(|e| io("agent-runner.json", e))?;
        let _ = tokio::fs::remove_file(dir.join(".agent/exit-code")).await;
        let sf = StatusFile {
            uid: spec.run.uid.clone(),
            attempt: spec.attempt,
            outputs: spec.provider.output_artifacts.iter().map(|a| (a.name.clone(), a.path.clone())).collect(),
            timeout_seconds: spec.timeout_seconds,
            log_cap_bytes: Some(spec.log_cap_bytes),
            ..Default::default()
        };
        *lock(&entry.state) = sf.clone();
        files::write_json(&entry.status_path(), &sf).await.map_err(|e| io("status.json", e))?;
        let (inner, e, spec) = (self.inner.clone(), entry.clone(), spec.clone());
        let handle = tokio::spawn(async move { run_attempt(inner, e, spec, agent_env).await });
        *lock(&entry.task) = Some(handle.abort_handle());
        Ok(())
    }
}

impl Inner {
    fn git_env<'a>(&'a self, home: &'a Path) -> git::GitEnv<'a> {
        git::GitEnv { home, path_var: &self.cfg.path, timeout: self.cfg.git_timeout }
    }
}

impl Drop for LocalAdapter {
    fn drop(&mut self) {
        for e in lock(&self.inner.runs).values() {
            e.detach();
        }
    }
}

impl StatusFile {
    fn log_cap_bytes(&self) -> u64 {
        self.log_cap_bytes.unwrap_or(crate::DEFAULT_LOG_CAP_BYTES)
    }
}

/// Checks the parts of a spec that do not need rendering, and resolves the Agent's `env`.
fn check_spec(spec: &RunSpec) -> Result<Vec<(String, SecretValue)>, RuntimeError> {
    for (what, v) in [("namespace", &spec.run.namespace), ("name", &spec.run.name), ("uid", &spec.run.uid)] {
        if !valid_component(v) {
            return Err(RuntimeError::invalid_spec(format!("run {what} `{v}` cannot name a folder")));
        }
    }
    if spec.attempt == 0 {
        return Err(RuntimeError::invalid_spec("attempt starts at 1"));
    }
    if spec.provider.binary.is_empty() {
        return Err(RuntimeError::invalid_spec("provider.binary is empty"));
    }
    let root = Path::new("/run");
    for (i, f) in spec.provider.input_files.iter().enumerate() {
        files::safe_join(root, &f.path).map_err(|e| RuntimeError::invalid_spec(format!("inputFiles[{i}]: {e}")))?;
    }
    for (i, a) in spec.provider.output_artifacts.iter().enumerate() {
        files::safe_join(root, &a.path)
            .map_err(|e| RuntimeError::invalid_spec(format!("outputArtifacts[{i}]: {e}")))?;
    }
    let valid_name = |n: &str| !n.is_empty() && !n.contains(['=', '\0']);
    for k in spec.provider.env_template.keys() {
        if !valid_name(k) {
            return Err(RuntimeError::invalid_spec(format!("envTemplate: invalid variable name `{k}`")));
        }
    }
    let mut env = Vec::new();
    for (i, var) in spec.agent.env.iter().enumerate() {
        if !valid_name(&var.name) {
            return Err(RuntimeError::invalid_spec(format!("agent env[{i}]: invalid variable name `{}`", var.name)));
        }
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => SecretValue::new(v.clone()),
            (None, Some(from)) => {
                let r = &from.secret_key_ref;
                let key = match &r.key {
                    Some(k) => format!("{}/{k}", r.name),
                    None => r.name.clone(),
                };
                spec.secrets.get(&key).cloned().ok_or_else(|| {
                    RuntimeError::invalid_spec(format!(
                        "agent env {}: secret `{key}` is not among the secrets this run may receive",
                        var.name
                    ))
                })?
            }
            (None, None) => SecretValue::new(""),
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// The template context (documented in `docs/runtime.md`).
fn template_context(spec: &RunSpec, dir: &Path) -> Value {
    let mut implementation = serde_json::to_value(&spec.implementation).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut implementation {
        for k in ["summary", "description", "source", "riskTier", "mode"] {
            m.entry(k).or_insert(Value::Null);
        }
        for k in ["acceptanceCriteria", "labels"] {
            m.entry(k).or_insert(json!([]));
        }
    }
    let env: serde_json::Map<String, Value> =
        spec.agent.env.iter().filter_map(|v| v.value.as_ref().map(|val| (v.name.clone(), json!(val)))).collect();
    json!({
        "agentRun": {"name": spec.run.name, "uid": spec.run.uid, "namespace": spec.run.namespace, "attempt": spec.attempt},
        "agent": {"name": spec.agent_name, "config": spec.agent.config, "env": env},
        "implementation": implementation,
        "parameters": spec.parameters,
        "memory": spec.memory,
        "workspace": workspace_json(spec, dir),
        "gateway": {"url": spec.gateway_url},
    })
}

/// The `workspace` object templates and `agent-runner.json` both show.
fn workspace_json(spec: &RunSpec, dir: &Path) -> Value {
    json!({
        "path": dir.join("workspace"),
        "repository": spec.workspace.as_ref().map(|w| &w.repository),
        "ref": spec.workspace.as_ref().and_then(|w| w.ref_.as_ref()),
    })
}

/// `agent-runner.json`: what the agent sees (no secrets).
fn runner_spec(spec: &RunSpec, dir: &Path) -> Value {
    json!({
        "apiVersion": agentplane_api::API_VERSION,
        "kind": "AgentRunnerSpec",
        "provider": {"name": spec.provider_name, "spec": spec.provider},
        "agentRun": {
            "name": spec.run.name, "uid": spec.run.uid, "namespace": spec.run.namespace,
            "attempt": spec.attempt, "spec": spec.run_spec,
        },
        "agent": {"name": spec.agent_name, "config": spec.agent.config},
        "implementation": spec.implementation,
        "parameters": spec.parameters,
        "memory": spec.memory,
        "workspace": workspace_json(spec, dir),
        "gateway": {"url": spec.gateway_url},
        "artifacts": {"dir": dir.join("artifacts"), "outputs": spec.provider.output_artifacts},
        "timeoutSeconds": spec.timeout_seconds,
    })
}

/// What `prepare` hands to the spawn.
struct Prepared {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The agent process, whether our child or re-adopted after a restart.
enum Proc {
    Child(tokio::process::Child),
    Adopted { pid: i32, start_time: Option<u64>, exit_file: PathBuf },
}

enum Exit {
    Code(i32),
    Signal(i32),
    /// Re-adopted and gone without an exit-code file.
    Unknown,
}

impl Proc {
    /// Waits for the main process to end. Cancel-safe.
    async fn wait(&mut self, poll: Duration) -> Exit {
        match self {
            Proc::Child(c) => match c.wait().await {
                Ok(st) => st.code().map(Exit::Code).or(st.signal().map(Exit::Signal)).unwrap_or(Exit::Unknown),
                Err(_) => Exit::Unknown,
            },
            Proc::Adopted { pid, start_time, exit_file } => loop {
                if !process::is_alive(*pid, *start_time) {
                    return match tokio::fs::read_to_string(&exit_file).await {
                        Ok(s) => s.trim().parse().map(Exit::Code).unwrap_or(Exit::Unknown),
                        Err(_) => Exit::Unknown,
                    };
                }
                tokio::time::sleep(poll).await;
            },
        }
    }
}

struct Launched {
    proc: Proc,
    pid: i32,
    pgid: i32,
    deadline: Option<chrono::DateTime<Utc>>,
    pump: Option<log::Pump>,
}

/// Renders templates, prepares the workspace and input files, and finds the binary. Any failure
/// is the attempt's final status.
async fn prepare(
    inner: &Inner,
    entry: &Entry,
    spec: &RunSpec,
    agent_env: Vec<(String, SecretValue)>,
) -> Result<Prepared, RuntimeStatus> {
    let dir = &entry.dir;
    let ctx = template_context(spec, dir);
    let tmpl = |what: String, t: &str| {
        render(t, &ctx).map_err(|e| RuntimeStatus::failed(StatusReason::TemplateError, format!("{what}: {e}")))
    };
    let args = spec
        .provider
        .args_template
        .iter()
        .enumerate()
        .map(|(i, t)| tmpl(format!("argsTemplate[{i}]"), t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), inner.cfg.path.clone());
    env.insert("HOME".into(), dir.display().to_string());
    for (k, t) in &spec.provider.env_template {
        env.insert(k.clone(), tmpl(format!("envTemplate.{k}"), t)?);
    }
    for (k, v) in agent_env {
        env.insert(k, v.expose().to_string());
    }
    let reserved = [
        ("AGENT_RUN_SPEC", dir.join("run.json").display().to_string()),
        ("AGENT_RUNNER_SPEC_PATH", dir.join("agent-runner.json").display().to_string()),
        ("AGENT_RUN_NAME", spec.run.name.clone()),
        ("AGENT_RUN_UID", spec.run.uid.clone()),
        ("AGENT_RUN_NAMESPACE", spec.run.namespace.clone()),
        ("AGENT_RUN_ATTEMPT", spec.attempt.to_string()),
        ("AGENT_ARTIFACTS_DIR", dir.join("artifacts").display().to_string()),
    ];
    for (k, v) in reserved {
        env.insert(k.into(), v);
    }
    if let Some(url) = &spec.gateway_url {
        env.insert("AGENTPLANE_GATEWAY_URL".into(), url.clone());
    }
    let inputs = spec
        .provider
        .input_files
        .iter()
        .enumerate()
        .map(|(i, f)| Ok((f.path.clone(), tmpl(format!("inputFiles[{i}] ({})", f.path), &f.content)?)))
        .collect::<Result<Vec<_>, RuntimeStatus>>()?;

    // The workspace: a fresh clone, the clone of an earlier attempt, or an empty folder.
    let ws = dir.join("workspace");
    let ws_err = |m: String| RuntimeStatus::failed(StatusReason::WorkspaceError, m);
    if let Some(src) = &spec.workspace {
        let base_file = dir.join(".agent/base-commit");
        // A retry reuses a clone that completed (its base commit was recorded).
        let base = if spec.attempt > 1 && ws.join(".git").exists() && base_file.exists() {
            tokio::fs::read_to_string(&base_file).await.ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        } else {
            if tokio::fs::try_exists(&ws).await.unwrap_or(false) {
                tokio::fs::remove_dir_all(&ws).await.map_err(|e| ws_err(format!("clean workspace: {e}")))?;
            }
            let res = git::clone(&src.repository, src.ref_.as_deref(), &ws, inner.git_env(dir)).await;
            let base = match res {
                Ok(b) => b,
                Err(m) => {
                    let _ = tokio::fs::remove_dir_all(&ws).await;
                    return Err(ws_err(m));
                }
            };
            if let Some(b) = &base {
                tokio::fs::write(&base_file, b).await.map_err(|e| ws_err(format!("record base commit: {e}")))?;
            }
            base
        };
        entry.update(|s| s.status.base_commit = base).await;
    } else {
        tokio::fs::create_dir_all(&ws).await.map_err(|e| ws_err(format!("create workspace: {e}")))?;
    }
    let root = dir.clone();
    tokio::task::spawn_blocking(move || {
        for (i, (path, content)) in inputs.iter().enumerate() {
            files::write_input_file(&root, path, content).map_err(|m| format!("inputFiles[{i}]: {m}"))?;
        }
        Ok::<(), String>(())
    })
    .await
    .map_err(|e| ws_err(e.to_string()))?
    .map_err(ws_err)?;

    let path_var = env.get("PATH").cloned().unwrap_or_default();
    let program = process::resolve_binary(&spec.provider.binary, &path_var, &ws)
        .map_err(|m| RuntimeStatus::failed(StatusReason::MissingBinary, m))?;
    Ok(Prepared { program, args, env: env.into_iter().collect() })
}

/// The life of one attempt submitted by this adapter.
async fn run_attempt(inner: Arc<Inner>, entry: Arc<Entry>, spec: RunSpec, agent_env: Vec<(String, SecretValue)>) {
    let mut cancel_rx = entry.cancel.subscribe();
    let cancelled = || {
        let mut s = RuntimeStatus::failed(StatusReason::Cancelled, "cancelled before the agent started");
        s.phase = RunPhase::Cancelled;
        s
    };
    let prepared = tokio::select! {
        p = prepare(&inner, &entry, &spec, agent_env) => p,
        _ = cancel_rx.wait_for(|c| *c) => Err(cancelled()),
    };
    let prepared = match prepared {
        Ok(p) if *cancel_rx.borrow() => {
            drop(p);
            Err(cancelled())
        }
        other => other,
    };
    let p = match prepared {
        Ok(p) => p,
        Err(status) => {
            tracing::info!(dir = %entry.dir.display(), reason = ?status.reason, "attempt ended before start");
            // Say it in the log too, so that `run logs` explains an agent that never started.
            let line = format!(
                "[agentplane: attempt {} not started: {}: {}]\n",
                spec.attempt,
                status.reason.map(|r| r.as_str()).unwrap_or("Failed"),
                status.message.as_deref().unwrap_or_default()
            );
            let (log_path, cap) = (entry.dir.join(".agent/runner.log"), spec.log_cap_bytes);
            let _ = tokio::task::spawn_blocking(move || log::append_line(&log_path, cap, &line)).await;
            entry.finish(status).await;
            return;
        }
    };

    // Output: a FIFO drained into the capped log (see log.rs).
    let dir = entry.dir.clone();
    let (cap, attempt) = (spec.log_cap_bytes, spec.attempt);
    let setup = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, log::Pump)> {
        let fifo = dir.join(".agent/output.fifo");
        let log_path = dir.join(".agent/runner.log");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
        let output = std::fs::OpenOptions::new().read(true).write(true).open(&fifo)?;
        if attempt > 1 {
            log::append_line(&log_path, cap, &format!("[agentplane: attempt {attempt}]\n"))?;
        }
        let pump = log::start_pump(&fifo, &log_path, cap)?;
        Ok((output, pump))
    })
    .await;
    let (output, pump) = match setup {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            return entry.finish(RuntimeStatus::failed(StatusReason::SubmitFailed, format!("log: {e}"))).await;
        }
        Err(e) => return entry.finish(RuntimeStatus::failed(StatusReason::SubmitFailed, e.to_string())).await,
    };
    let exit_file = entry.dir.join(".agent/exit-code");
    let ws = entry.dir.join("workspace");
    let spawned = process::spawn(process::SpawnRequest {
        program: &p.program,
        args: &p.args,
        env: &p.env,
        cwd: &ws,
        exit_file: &exit_file,
        output,
        setsid: inner.setsid.as_deref(),
    });
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => {
            pump.stop.store(true, Ordering::Relaxed);
            let msg = format!("cannot start {}: {e}", p.program.display());
            return entry.finish(RuntimeStatus::failed(StatusReason::SubmitFailed, msg)).await;
        }
    };
    *lock(&entry.pump_stop) = Some(pump.stop.clone());
    *lock(&entry.log_dropped) = Some(pump.dropped.clone());
    let started = Utc::now();
    let deadline =
        spec.timeout_seconds.map(|t| started + chrono::Duration::seconds(i64::try_from(t).unwrap_or(i64::MAX / 1000)));
    let pid = spawned.pid;
    entry
        .update(|s| {
            s.status.phase = RunPhase::Running;
            s.status.started_at = Some(started);
            s.pid = Some(pid);
            s.pgid = Some(pid);
            s.proc_start_time = spawned.start_time;
            s.session = Some(spawned.session);
            s.deadline = deadline;
        })
        .await;
    tracing::info!(dir = %entry.dir.display(), pid, "agent started");
    let launched = Launched { proc: Proc::Child(spawned.child), pid, pgid: pid, deadline, pump: Some(pump) };
    supervise(inner, entry, launched).await;
}

enum Ended {
    Exited(Exit),
    TimedOut,
    Cancelled,
}

/// Waits for the agent to end (or times it out, or cancels it), then collects its artifacts and
/// writes the final status.
async fn supervise(inner: Arc<Inner>, entry: Arc<Entry>, l: Launched) {
    let Launched { mut proc, pid, pgid, deadline, pump } = l;
    if let Some(p) = &pump {
        *lock(&entry.pump_stop) = Some(p.stop.clone());
        *lock(&entry.log_dropped) = Some(p.dropped.clone());
    }
    let mut cancel_rx = entry.cancel.subscribe();
    let poll = inner.cfg.adopt_poll_interval;
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep((d - Utc::now()).to_std().unwrap_or(Duration::ZERO)).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        e = proc.wait(poll) => Ended::Exited(e),
        () = until_deadline => Ended::TimedOut,
        _ = cancel_rx.wait_for(|c| *c) => Ended::Cancelled,
    };
    if !matches!(ended, Ended::Exited(_)) {
        terminate(&mut proc, pid, pgid, inner.cfg.grace_period, poll).await;
    }
    // Whatever the main process left behind in its group goes with it.
    process::signal_group(pgid, Some(Signal::SIGKILL));

    let mut dropped = 0;
    if let Some(p) = pump {
        if tokio::time::timeout(inner.cfg.log_drain_timeout, p.done).await.is_err() {
            tracing::warn!(dir = %entry.dir.display(), "agent output still open after exit; no longer reading it");
            p.stop.store(true, Ordering::Relaxed);
        }
        dropped = p.dropped.load(Ordering::Relaxed);
    }

    let sf = entry.file();
    let (artifacts, notes) = collect_artifacts(&inner, &entry.dir, &sf).await;
    let timeout_s = sf.timeout_seconds.unwrap_or_default();
    let mut status = match ended {
        Ended::Cancelled => RuntimeStatus {
            phase: RunPhase::Cancelled,
            reason: Some(StatusReason::Cancelled),
            message: Some("cancelled; process group stopped".into()),
            ..Default::default()
        },
        Ended::TimedOut => RuntimeStatus::failed(
            StatusReason::TimedOut,
            format!("timed out after {timeout_s}s; process group stopped"),
        ),
        Ended::Exited(Exit::Code(0)) => {
            RuntimeStatus { phase: RunPhase::Succeeded, exit_code: Some(0), ..Default::default() }
        }
        Ended::Exited(Exit::Code(c)) => {
            let mut s = RuntimeStatus::failed(StatusReason::NonZeroExit, format!("exited with code {c}"));
            s.exit_code = Some(c);
            s
        }
        Ended::Exited(Exit::Signal(sig)) => {
            RuntimeStatus::failed(StatusReason::NonZeroExit, format!("killed by signal {sig}"))
        }
        Ended::Exited(Exit::Unknown) => RuntimeStatus::failed(
            StatusReason::Lost,
            "the process ended while no server watched it and recorded no exit code",
        ),
    };
    status.artifacts = artifacts;
    status.log_truncated = dropped > 0;
    if !notes.is_empty() {
        let joined = notes.join("; ");
        status.message = Some(match status.message.take() {
            Some(m) => format!("{m}; {joined}"),
            None => joined,
        });
    }
    tracing::info!(dir = %entry.dir.display(), phase = status.phase.as_str(), reason = ?status.reason, "attempt finished");
    entry.finish(status).await;
}

/// SIGTERM to the group, up to `grace` for it to go, then SIGKILL.
async fn terminate(proc: &mut Proc, pid: i32, pgid: i32, grace: Duration, poll: Duration) {
    let until = tokio::time::Instant::now() + grace;
    if !process::signal_group(pgid, Some(Signal::SIGTERM)) {
        // Not yet a group leader (between fork and setsid): signal the process itself.
        process::signal_pid(pid, Signal::SIGTERM);
    }
    let exited = tokio::time::timeout_at(until, proc.wait(poll)).await.is_ok();
    while process::signal_group(pgid, None) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process::signal_group(pgid, Some(Signal::SIGKILL));
    if !exited {
        process::signal_pid(pid, Signal::SIGKILL);
        proc.wait(poll).await;
    }
}

/// Output artifacts and, for a git workspace, `diff.stat` and `changes.patch`. Problems become
/// notes in the status message; they do not fail the run.
async fn collect_artifacts(inner: &Inner, dir: &Path, sf: &StatusFile) -> (Vec<ArtifactStatus>, Vec<String>) {
    let mut wanted = sf.outputs.clone();
    let mut notes = Vec::new();
    if let Some(base) = &sf.status.base_commit {
        let ws = dir.join("workspace");
        let stat = dir.join("artifacts/diff.stat");
        let patch = dir.join("artifacts/changes.patch");
        let index = dir.join(".agent/diff.index");
        match git::diff(&ws, base, &index, &stat, &patch, inner.git_env(dir)).await {
            Ok(()) => {
                wanted.push(("diff.stat".into(), "artifacts/diff.stat".into()));
                wanted.push(("changes.patch".into(), "artifacts/changes.patch".into()));
            }
            Err(m) => notes.push(format!("workspace diff: {m}")),
        }
    }
    let root = dir.to_path_buf();
    let res = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for (name, path) in wanted {
            match files::describe_artifact(&root, &name, &path) {
                Ok(a) => out.push(a),
                Err(m) => notes.push(m),
            }
        }
        (out, notes)
    })
    .await;
    match res {
        Ok((a, n)) => {
            notes.extend(n);
            (a, notes)
        }
        Err(e) => {
            notes.push(format!("artifacts: {e}"));
            (Vec::new(), notes)
        }
    }
}

#[async_trait]
impl RuntimeAdapter for LocalAdapter {
    fn name(&self) -> &str {
        "local"
    }

    async fn submit(&self, spec: &RunSpec) -> Result<RuntimeRef, RuntimeError> {
        let agent_env = check_spec(spec)?;
        let r = RuntimeRef(format!(
            "{REF_PREFIX}{}/{}/{}/{}",
            spec.run.namespace, spec.run.name, spec.run.uid, spec.attempt
        ));
        let (entry, mut guard) = self.get_or_insert(&r, &spec.run.namespace, &spec.run.name);
        let Some(g) = guard.as_mut() else {
            // Known already: the same attempt is never started twice.
            return match entry.init.lock().await.clone() {
                Some(Err(e)) => Err(e),
                _ => Ok(r),
            };
        };
        let res = self.start(spec, &entry, agent_env).await;
        if res.is_err() {
            lock(&self.inner.runs).remove(r.as_str());
        }
        **g = Some(res.clone());
        res.map(|()| r)
    }

    async fn status(&self, r: &RuntimeRef) -> Result<RuntimeStatus, RuntimeError> {
        Ok(self.entry_for(r).await?.snapshot())
    }

    async fn cancel(&self, r: &RuntimeRef) -> Result<(), RuntimeError> {
        let entry = self.entry_for(r).await?;
        if lock(&entry.state).status.phase.is_terminal() {
            return Ok(());
        }
        entry.update(|s| s.cancel_requested = true).await;
        entry.cancel.send_replace(true);
        Ok(())
    }
}
