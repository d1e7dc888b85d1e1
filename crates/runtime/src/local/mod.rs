//! The local adapter: each attempt is a child process of the server, in a run folder
//! `<base>/runs/<namespace>/<run>/` (layout and guarantees in `docs/runtime.md`).
//!
//! The path of one attempt, and the only places it leaves the async runtime:
//!
//! 1. `submit`: one blocking call checks the run folder and writes `.agent/status.json`
//!    (`Pending`); the attempt's task is spawned and `submit` returns.
//! 2. The task renders the templates and, with a git source, prepares the workspace (async git).
//! 3. One blocking call (`launch`) writes the spec files, the input files, finds the binary, sets
//!    up the log FIFO and its drain thread, spawns the agent and writes `status.json` (`Running`
//!    with the pid) — or the final status when the attempt cannot start.
//! 4. The task waits for the exit (or the deadline, or a cancel), then one blocking call writes
//!    the final status; subscribers are told after that write.

mod files;
mod git;
mod log;
mod process;
mod sandbox;

pub use sandbox::{DEFAULT_READ_ONLY_PATHS, DEFAULT_WRITABLE_PATHS, SandboxSettings};

use std::collections::{BTreeMap, HashMap, VecDeque};
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
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use self::files::StatusFile;
use crate::RuntimeAdapter;
use crate::error::RuntimeError;
use crate::spec::{RunSpec, RuntimeRef, RuntimeStatus, SecretValue, StatusReason};
use crate::template::render;

/// The `PATH` an agent gets unless its provider's `envTemplate` or its Agent's `env` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Default of [`LocalConfig::events_capacity`].
pub const EVENTS_CAPACITY: usize = 4096;
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
    /// the group may hold the log open); default 5 s. A normal exit does not wait for it: the
    /// drain ends as soon as the last writer closes the output.
    pub log_drain_timeout: Duration,
    /// How often a re-adopted process (not our child after a restart) is checked; default 500 ms.
    pub adopt_poll_interval: Duration,
    /// How many finished attempts stay in memory (default 10 000); older ones are forgotten and
    /// read back from their run folder when asked about.
    pub finished_cache: usize,
    /// How many terminal notifications a [`RuntimeAdapter::subscribe`] receiver may fall behind
    /// before it gets `Lagged` (default 4096; taken as 1 to 1 048 576).
    pub events_capacity: usize,
    /// Which agent-runner starts the agents (default: search for `agentplane-runner`).
    pub runner: RunnerSetting,
    /// How agents are confined (docs/sandbox.md); `None` (the default here; the server turns it
    /// on) gives them only their own session and process group.
    pub sandbox: Option<SandboxSettings>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            grace_period: Duration::from_secs(10),
            git_timeout: Duration::from_secs(600),
            path: DEFAULT_PATH.to_string(),
            log_drain_timeout: Duration::from_secs(5),
            adopt_poll_interval: Duration::from_millis(500),
            finished_cache: 10_000,
            events_capacity: EVENTS_CAPACITY,
            runner: RunnerSetting::Find,
            sandbox: None,
        }
    }
}

/// Which program starts the agents (see [`LocalAdapter::launcher`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunnerSetting {
    /// `agentplane-runner` found by [`agentplane_sandbox::find_runner`] (`$AGENTPLANE_RUNNER`, next
    /// to the server's executable); the shell fallback when there is none.
    #[default]
    Find,
    /// This runner binary (the shell fallback, with a warning, when it is not an executable file).
    At(PathBuf),
    /// Always the fallback: `setsid(1)` and a `sh` wrapper that records the exit status (slower:
    /// two more programs per attempt).
    ShellFallback,
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
    launcher: process::Launcher,
    runs: Mutex<HashMap<String, Arc<Entry>>>,
    /// Refs of finished attempts, oldest first (bounded by `cfg.finished_cache`).
    finished: Mutex<VecDeque<String>>,
    events: broadcast::Sender<RuntimeRef>,
}

/// One attempt known to this adapter.
#[derive(Debug)]
struct Entry {
    r: RuntimeRef,
    dir: PathBuf,
    /// `None` until loaded or submitted; `Some(Err)` when that failed (the entry is then removed).
    /// Held by whoever sets the entry up, so others wait for the outcome.
    init: Arc<tokio::sync::Mutex<InitState>>,
    /// What `status` answers; changed only after `.agent/status.json` says the same.
    state: Mutex<StatusFile>,
    /// Serialises writes of `.agent/status.json` (held on a blocking thread only).
    write: Mutex<()>,
    cancel: watch::Sender<bool>,
    task: Mutex<Option<AbortHandle>>,
    pump_stop: Mutex<Option<Arc<AtomicBool>>>,
    log_dropped: Mutex<Option<Arc<AtomicU64>>>,
    /// Set when the adapter is dropped: a drain started after that is stopped at once.
    detached: AtomicBool,
}

type InitState = Option<Result<(), RuntimeError>>;
type InitGuard = tokio::sync::OwnedMutexGuard<InitState>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    fn new(r: RuntimeRef, dir: PathBuf) -> Self {
        Entry {
            r,
            dir,
            init: Arc::new(tokio::sync::Mutex::new(None)),
            state: Mutex::new(StatusFile::default()),
            write: Mutex::new(()),
            cancel: watch::Sender::new(false),
            task: Mutex::new(None),
            pump_stop: Mutex::new(None),
            log_dropped: Mutex::new(None),
            detached: AtomicBool::new(false),
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

    fn is_terminal(&self) -> bool {
        lock(&self.state).status.phase.is_terminal()
    }

    /// Changes the status: writes `.agent/status.json` first, then what `status` answers, so a
    /// caller never sees a state that a restarted server would not find. Blocking.
    fn update_blocking(&self, f: impl FnOnce(&mut StatusFile)) {
        let _w = lock(&self.write);
        let mut next = lock(&self.state).clone();
        f(&mut next);
        if let Err(e) = files::write_status(&self.status_path(), &next) {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot write status.json");
        }
        *lock(&self.state) = next;
    }

    /// [`Entry::update_blocking`] on the blocking pool.
    async fn update(self: &Arc<Self>, f: impl FnOnce(&mut StatusFile) + Send + 'static) {
        let e = self.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || e.update_blocking(f)).await {
            tracing::error!(dir = %self.dir.display(), error = %err, "status update failed");
        }
    }

    fn set_pump(&self, pump: &log::Pump) {
        *lock(&self.pump_stop) = Some(pump.stop.clone());
        *lock(&self.log_dropped) = Some(pump.dropped.clone());
        if self.detached.load(Ordering::SeqCst) {
            pump.stop.store(true, Ordering::Relaxed);
        }
    }

    fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
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

fn make_ref(namespace: &str, name: &str, uid: &str, attempt: u32) -> String {
    format!("{REF_PREFIX}{namespace}/{name}/{uid}/{attempt}")
}

/// What `submit` found in the run folder.
enum Opened {
    /// A new attempt: its `Pending` status is written.
    Fresh(StatusFile),
    /// This attempt was submitted before (by an earlier server): adopt it, start nothing.
    Existing(StatusFile),
}

impl LocalAdapter {
    /// An adapter keeping its run folders under `<base_dir>/runs/`, with default settings.
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        Self::with_config(base_dir, LocalConfig::default())
    }

    pub fn with_config(base_dir: impl Into<PathBuf>, cfg: LocalConfig) -> Self {
        let base = base_dir.into();
        let base = std::path::absolute(&base).unwrap_or(base);
        let (events, _) = broadcast::channel(cfg.events_capacity.clamp(1, 1 << 20));
        LocalAdapter {
            inner: Arc::new(Inner {
                base,
                launcher: process::Launcher::find(&cfg.runner),
                cfg,
                runs: Mutex::new(HashMap::new()),
                finished: Mutex::new(VecDeque::new()),
                events,
            }),
        }
    }

    /// The run folder of a run: `<base>/runs/<namespace>/<name>/`.
    pub fn run_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.inner.run_dir(namespace, name)
    }

    /// Whether agents also get their own session (the runner or `setsid(1)` was found), not only
    /// their own process group.
    pub fn has_session_isolation(&self) -> bool {
        !matches!(self.inner.launcher, process::Launcher::Shell { setsid: None })
    }

    /// How agents are started, for diagnostics: `agentplane-runner (<path>)`, or the fallback
    /// `setsid + sh wrapper` / `sh wrapper (process group only)`.
    pub fn launcher(&self) -> String {
        self.inner.launcher.describe()
    }

    /// The entry of `r`, and the set-up guard when it is new (the caller must set it up).
    fn get_or_insert(&self, r: &RuntimeRef, namespace: &str, name: &str) -> (Arc<Entry>, Option<InitGuard>) {
        let mut runs = lock(&self.inner.runs);
        if let Some(e) = runs.get(r.as_str()) {
            return (e.clone(), None);
        }
        let e = Arc::new(Entry::new(r.clone(), self.run_dir(namespace, name)));
        let g = e.init.clone().try_lock_owned().ok();
        runs.insert(r.0.clone(), e.clone());
        (e, g)
    }

    /// Finds the entry of `r`, loading (and re-adopting) it from disk if this adapter has not
    /// seen it yet (or has forgotten it).
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

    /// Reads `.agent/status.json` of a ref nobody here submitted, and re-adopts it. An attempt
    /// that a later attempt of the same run replaced is read from its archive
    /// (`.agent/status.attempt-N.json`).
    async fn load(&self, entry: &Arc<Entry>, parts: &RefParts<'_>) -> Result<(), RuntimeError> {
        let path = entry.status_path();
        let archive = entry.dir.join(format!(".agent/status.attempt-{}.json", parts.attempt));
        let (uid, attempt) = (parts.uid.to_string(), parts.attempt);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<(Option<StatusFile>, bool)> {
            match files::read_status(&path)? {
                Some(sf) if sf.uid == uid && sf.attempt > attempt => match files::read_status(&archive)? {
                    Some(a) => Ok((Some(a), true)),
                    None => Ok((Some(sf), false)),
                },
                other => Ok((other, false)),
            }
        })
        .await
        .map_err(|e| RuntimeError::unavailable(format!("cannot read {}: {e}", entry.status_path().display())))?;
        let (sf, archived) =
            read.map_err(|e| RuntimeError::unavailable(format!("cannot read {}: {e}", entry.status_path().display())))?;
        let sf =
            sf.ok_or_else(|| RuntimeError::not_found(format!("no run folder for {}/{}", parts.namespace, parts.name)))?;
        if sf.uid != parts.uid || sf.attempt != parts.attempt {
            return Err(RuntimeError::not_found(format!(
                "run folder of {}/{} holds uid {} attempt {}, not uid {} attempt {}",
                parts.namespace, parts.name, sf.uid, sf.attempt, parts.uid, parts.attempt
            )));
        }
        if archived {
            // Replaced by a later attempt: only read, never written (status.json is no longer
            // this attempt's).
            let mut sf = sf;
            if !sf.status.phase.is_terminal() {
                let started = sf.status.started_at;
                sf.status = RuntimeStatus::failed(StatusReason::Lost, "replaced by a later attempt before it ended");
                sf.status.started_at = started;
            }
            *lock(&entry.state) = sf;
            self.inner.remember_finished(&entry.r);
            return Ok(());
        }
        self.adopt(entry, sf).await;
        Ok(())
    }

    /// Takes over an attempt recorded on disk: finished ones are only read; a live process gets a
    /// watcher; one that died without a recorded exit is `Lost`.
    async fn adopt(&self, entry: &Arc<Entry>, sf: StatusFile) {
        *lock(&entry.state) = sf.clone();
        if sf.status.phase.is_terminal() {
            self.inner.remember_finished(&entry.r);
            return;
        }
        let exit_file = entry.dir.join(".agent/exit-code");
        let Some(pid) = sf.pid else {
            let s = RuntimeStatus::failed(StatusReason::Lost, "the server stopped before the agent was started");
            return self.inner.finish(entry, s).await;
        };
        let alive = process::is_alive(pid, sf.proc_start_time);
        if !alive && !exit_file.exists() {
            process::signal_group(sf.pgid.unwrap_or(pid), Some(Signal::SIGKILL));
            let msg = format!("process {pid} ended while no server watched it and recorded no exit code");
            return self.inner.finish(entry, RuntimeStatus::failed(StatusReason::Lost, msg)).await;
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
        if let Some(p) = &pump {
            entry.set_pump(p);
        }
        let proc = Proc::Adopted { pid, start_time: sf.proc_start_time, exit_file };
        let launched = Launched { proc, pid, pgid: sf.pgid.unwrap_or(pid), deadline: sf.deadline, pump };
        let (inner, e) = (self.inner.clone(), entry.clone());
        let handle = tokio::spawn(async move { supervise(inner, e, launched).await });
        *lock(&entry.task) = Some(handle.abort_handle());
    }

    /// Records the attempt in its run folder (one blocking call) and starts its task.
    async fn start(&self, spec: &RunSpec, entry: &Arc<Entry>, agent_env: Vec<AgentEnv>) -> Result<(), RuntimeError> {
        let fresh = StatusFile {
            uid: spec.run.uid.clone(),
            attempt: spec.attempt,
            outputs: spec.provider.output_artifacts.iter().map(|a| (a.name.clone(), a.path.clone())).collect(),
            timeout_seconds: spec.timeout_seconds,
            log_cap_bytes: Some(spec.log_cap_bytes),
            ..Default::default()
        };
        let (inner, dir) = (self.inner.clone(), entry.dir.clone());
        let (namespace, name) = (spec.run.namespace.clone(), spec.run.name.clone());
        let opened = tokio::task::spawn_blocking(move || inner.open_attempt(&dir, &namespace, &name, fresh))
            .await
            .map_err(|e| RuntimeError::submit_failed(format!("run folder: {e}")))??;
        match opened {
            Opened::Existing(existing) => self.adopt(entry, existing).await,
            Opened::Fresh(sf) => {
                *lock(&entry.state) = sf;
                let (inner, e, spec) = (self.inner.clone(), entry.clone(), spec.clone());
                let handle = tokio::spawn(async move { run_attempt(inner, e, spec, agent_env).await });
                *lock(&entry.task) = Some(handle.abort_handle());
            }
        }
        Ok(())
    }
}

impl Inner {
    fn run_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.base.join("runs").join(namespace).join(name)
    }

    fn git_env<'a>(&'a self, home: &'a Path) -> git::GitEnv<'a> {
        git::GitEnv { home, path_var: &self.cfg.path, timeout: self.cfg.git_timeout }
    }

    /// Whether this adapter still works on that attempt (it may be past its exit, collecting
    /// artifacts, with `status.json` not yet final).
    fn busy(&self, namespace: &str, name: &str, uid: &str, attempt: u32) -> bool {
        let key = make_ref(namespace, name, uid, attempt);
        let e = lock(&self.runs).get(&key).cloned();
        e.is_some_and(|e| !e.is_terminal())
    }

    /// Blocking part of `submit`: decides from `.agent/status.json` whether this is a new
    /// attempt, one submitted before, or one that must wait; a new attempt's `Pending` status is
    /// written before this returns (so a restarted server finds it and never starts it twice).
    fn open_attempt(&self, dir: &Path, namespace: &str, name: &str, fresh: StatusFile) -> Result<Opened, RuntimeError> {
        let io = |what: &str, e: std::io::Error| RuntimeError::submit_failed(format!("{what}: {e}"));
        let status_path = dir.join(".agent/status.json");
        if let Some(existing) = files::read_status(&status_path).map_err(|e| io("status.json", e))? {
            let alive = self.busy(namespace, name, &existing.uid, existing.attempt)
                || (!existing.status.phase.is_terminal()
                    && existing.pid.is_some_and(|p| process::is_alive(p, existing.proc_start_time)));
            if existing.uid == fresh.uid {
                if existing.attempt == fresh.attempt {
                    return Ok(Opened::Existing(existing));
                }
                if existing.attempt > fresh.attempt {
                    return Err(RuntimeError::invalid_spec(format!(
                        "attempt {} was superseded by attempt {}",
                        fresh.attempt, existing.attempt
                    )));
                }
                if alive {
                    return Err(RuntimeError::unavailable(format!("attempt {} is still running", existing.attempt)));
                }
                let archive = dir.join(format!(".agent/status.attempt-{}.json", existing.attempt));
                std::fs::copy(&status_path, archive).map_err(|e| io("archive status.json", e))?;
            } else {
                if alive {
                    return Err(RuntimeError::unavailable(format!(
                        "an earlier run with this name (uid {}) is still running",
                        existing.uid
                    )));
                }
                std::fs::remove_dir_all(dir).map_err(|e| io("remove the earlier run's folder", e))?;
            }
        }
        for sub in [".agent", "artifacts"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(sub, e))?;
        }
        files::write_status(&status_path, &fresh).map_err(|e| io("status.json", e))?;
        Ok(Opened::Fresh(fresh))
    }

    /// Ends the attempt with `status` (keeps what is already known, such as `startedAt`), then
    /// tells subscribers. Blocking.
    fn finish_blocking(&self, entry: &Entry, status: RuntimeStatus) {
        entry.update_blocking(|s| {
            let started = s.status.started_at;
            let base = s.status.base_commit.take();
            s.status = RuntimeStatus {
                started_at: status.started_at.or(started),
                base_commit: status.base_commit.clone().or(base),
                finished_at: Some(Utc::now()),
                ..status
            };
        });
        let _ = self.events.send(entry.r.clone());
        self.remember_finished(&entry.r);
    }

    /// [`Inner::finish_blocking`] on the blocking pool.
    async fn finish(self: &Arc<Self>, entry: &Arc<Entry>, status: RuntimeStatus) {
        let (inner, e) = (self.clone(), entry.clone());
        if let Err(err) = tokio::task::spawn_blocking(move || inner.finish_blocking(&e, status)).await {
            tracing::error!(dir = %entry.dir.display(), error = %err, "cannot record the end of an attempt");
        }
    }

    /// Keeps at most `finished_cache` finished attempts in memory; older ones are read back from
    /// disk when asked about.
    fn remember_finished(&self, r: &RuntimeRef) {
        let mut q = lock(&self.finished);
        q.push_back(r.0.clone());
        while q.len() > self.cfg.finished_cache {
            let Some(old) = q.pop_front() else { break };
            let mut runs = lock(&self.runs);
            if runs.get(&old).is_some_and(|e| e.is_terminal()) {
                runs.remove(&old);
            }
        }
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

/// One variable of the Agent's `env`, resolved.
#[derive(Debug, Clone)]
struct AgentEnv {
    name: String,
    value: SecretValue,
    /// From a secret (`valueFrom`): a file instead of a variable with `secretsAs: files`.
    secret: bool,
}

/// Checks the parts of a spec that do not need rendering, and resolves the Agent's `env`.
fn check_spec(spec: &RunSpec) -> Result<Vec<AgentEnv>, RuntimeError> {
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
    if let Some(step) = &spec.step {
        if step.index >= step.count {
            return Err(RuntimeError::invalid_spec(format!(
                "step.index {} must be below step.count {} (indexes start at 0)",
                step.index, step.count
            )));
        }
        if step.name.is_empty() || step.name.len() > 253 || step.name.chars().any(char::is_control) {
            return Err(RuntimeError::invalid_spec(
                "step.name must be 1 to 253 bytes without control characters (it names the step in the log and \
                 in AGENT_STEP_NAME)",
            ));
        }
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
        let secret = var.value.is_none() && var.value_from.is_some();
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
        env.push(AgentEnv { name: var.name.clone(), value, secret });
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
        "step": spec.step,
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
        "step": spec.step,
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

/// The line that opens an attempt's output in `runner.log`: every attempt after the first, and
/// every workflow step, gets one (`--- attempt 2 (step build 2/3) ---`).
fn attempt_header(spec: &RunSpec) -> Option<String> {
    match &spec.step {
        Some(s) => Some(format!("--- attempt {} (step {} {}/{}) ---\n", spec.attempt, s.name, s.index + 1, s.count)),
        None if spec.attempt > 1 => Some(format!("--- attempt {} ---\n", spec.attempt)),
        None => None,
    }
}

/// What `prepare` hands to `launch`.
struct Prepared {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Rendered input files: (path relative to the run folder, content).
    inputs: Vec<(String, String)>,
    /// The commit a git workspace was checked out at.
    base_commit: Option<String>,
    /// Without a git source, `launch` makes sure `workspace/` exists (keeping what is in it).
    create_workspace: bool,
    /// Secrets to write as files (`secretsAs: files`): variable name, value.
    secret_files: Vec<(String, String)>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("args", &self.args).finish_non_exhaustive()
    }
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

/// Renders the templates and prepares a git workspace (the async part of starting an attempt).
/// Any failure is the attempt's final status.
async fn prepare(
    inner: &Inner,
    entry: &Entry,
    spec: &RunSpec,
    agent_env: Vec<AgentEnv>,
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
    let as_files = spec.agent.security.secrets_as == Some(agentplane_api::SecretsAs::Files);
    let mut secret_files = Vec::new();
    for v in agent_env {
        if v.secret && as_files {
            env.remove(&v.name);
            secret_files.push((v.name, v.value.expose().to_string()));
        } else {
            env.insert(v.name, v.value.expose().to_string());
        }
    }
    if inner.cfg.sandbox.is_some() {
        env.insert("TMPDIR".into(), dir.join("tmp").display().to_string());
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
    if let Some(step) = &spec.step {
        env.insert("AGENT_STEP_NAME".into(), step.name.clone());
        env.insert("AGENT_STEP_INDEX".into(), step.index.to_string());
        env.insert("AGENT_STEP_COUNT".into(), step.count.to_string());
    }
    if let Some(url) = &spec.gateway_url {
        env.insert("AGENTPLANE_GATEWAY_URL".into(), url.clone());
    }
    if let Some(token) = &spec.token {
        env.insert("AGENTPLANE_TOKEN".into(), token.expose().to_string());
    }
    let inputs = spec
        .provider
        .input_files
        .iter()
        .enumerate()
        .map(|(i, f)| Ok((f.path.clone(), tmpl(format!("inputFiles[{i}] ({})", f.path), &f.content)?)))
        .collect::<Result<Vec<_>, RuntimeStatus>>()?;
    let base_commit = match &spec.workspace {
        Some(src) => git_workspace(inner, dir, spec, src).await?,
        None => None,
    };
    Ok(Prepared {
        args,
        env: env.into_iter().collect(),
        inputs,
        base_commit,
        create_workspace: spec.workspace.is_none(),
        secret_files,
    })
}

/// The git workspace of an attempt: a fresh clone, or the one an earlier attempt left.
///
/// - A later workflow step (`step.index > 0`) keeps `workspace/` exactly as the previous step left
///   it, whatever is in it; it clones only when there is no `workspace/` at all.
/// - Any other attempt after the first (a retry) keeps a clone that completed (its base commit
///   was recorded) as the failed attempt left it — changes included, nothing is reset; an
///   incomplete one is removed and cloned again.
/// - A first attempt clones.
async fn git_workspace(
    inner: &Inner,
    dir: &Path,
    spec: &RunSpec,
    src: &crate::spec::WorkspaceSpec,
) -> Result<Option<String>, RuntimeStatus> {
    let ws = dir.join("workspace");
    let base_file = dir.join(".agent/base-commit");
    let ws_err = |m: String| RuntimeStatus::failed(StatusReason::WorkspaceError, m);
    let exists = |p: PathBuf| async move { tokio::fs::try_exists(p).await.unwrap_or(false) };
    let ws_exists = tokio::fs::metadata(&ws).await.is_ok_and(|m| m.is_dir());
    let keep = match &spec.step {
        Some(step) if step.index > 0 => ws_exists,
        _ => spec.attempt > 1 && ws_exists && exists(ws.join(".git")).await && exists(base_file.clone()).await,
    };
    if keep {
        return Ok(tokio::fs::read_to_string(&base_file)
            .await
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()));
    }
    if tokio::fs::symlink_metadata(&ws).await.is_ok() {
        tokio::fs::remove_dir_all(&ws).await.map_err(|e| ws_err(format!("clean workspace: {e}")))?;
    }
    let _ = tokio::fs::remove_file(&base_file).await;
    let base = match git::clone(&src.repository, src.ref_.as_deref(), &ws, inner.git_env(dir)).await {
        Ok(b) => b,
        Err(m) => {
            let _ = tokio::fs::remove_dir_all(&ws).await;
            return Err(ws_err(m));
        }
    };
    if let Some(b) = &base {
        tokio::fs::write(&base_file, b).await.map_err(|e| ws_err(format!("record base commit: {e}")))?;
    }
    Ok(base)
}

fn cancelled_before_start() -> RuntimeStatus {
    let mut s = RuntimeStatus::failed(StatusReason::Cancelled, "cancelled before the agent started");
    s.phase = RunPhase::Cancelled;
    s
}

/// The life of one attempt submitted by this adapter.
async fn run_attempt(inner: Arc<Inner>, entry: Arc<Entry>, spec: RunSpec, agent_env: Vec<AgentEnv>) {
    let mut cancel_rx = entry.cancel.subscribe();
    let prepared = tokio::select! {
        p = prepare(&inner, &entry, &spec, agent_env) => p,
        _ = cancel_rx.wait_for(|c| *c) => Err(cancelled_before_start()),
    };
    let (i, e) = (inner.clone(), entry.clone());
    match tokio::task::spawn_blocking(move || launch(&i, &e, &spec, prepared)).await {
        Ok(Some(launched)) => supervise(inner, entry, launched).await,
        Ok(None) => {}
        Err(err) => {
            let s = RuntimeStatus::failed(StatusReason::SubmitFailed, format!("starting the agent failed: {err}"));
            inner.finish(&entry, s).await;
        }
    }
}

/// The blocking part of starting an attempt: spec files, input files, the binary, the log, the
/// spawn, and `status.json` with the pid (what a restarted server needs to re-adopt the process)
/// — in that order. Returns `None` when the attempt ended before its process started (its final
/// status is then written).
fn launch(inner: &Inner, entry: &Entry, spec: &RunSpec, prepared: Result<Prepared, RuntimeStatus>) -> Option<Launched> {
    let dir = &entry.dir;
    let log_path = dir.join(".agent/runner.log");
    let cap = spec.log_cap_bytes;
    if let Some(h) = attempt_header(spec)
        && let Err(e) = log::append_line(&log_path, cap, &h)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write to runner.log");
    }
    let base = prepared.as_ref().ok().and_then(|p| p.base_commit.clone());
    let not_started = |mut status: RuntimeStatus| {
        tracing::debug!(dir = %dir.display(), reason = ?status.reason, "attempt ended before start");
        // Say it in the log too, so that `run logs` explains an agent that never started.
        let line = format!(
            "[agentplane: attempt {} not started: {}: {}]\n",
            spec.attempt,
            status.reason.map(|r| r.as_str()).unwrap_or("Failed"),
            status.message.as_deref().unwrap_or_default()
        );
        let _ = log::append_line(&log_path, cap, &line);
        status.base_commit = status.base_commit.or(base.clone());
        inner.finish_blocking(entry, status);
        None
    };
    // The spec files, also for an attempt that does not start (they explain it).
    let written =
        files::write_json(&dir.join("run.json"), &spec.run_spec).map_err(|e| format!("run.json: {e}")).and_then(|()| {
            files::write_json(&dir.join("agent-runner.json"), &runner_spec(spec, dir))
                .map_err(|e| format!("agent-runner.json: {e}"))
        });
    let p = match (prepared, written) {
        (Err(s), _) => return not_started(s),
        (Ok(_), Err(m)) => return not_started(RuntimeStatus::failed(StatusReason::SubmitFailed, m)),
        (Ok(p), Ok(())) => p,
    };
    let ws = dir.join("workspace");
    let ws_err = |m: String| RuntimeStatus::failed(StatusReason::WorkspaceError, m);
    if p.create_workspace
        && let Err(e) = std::fs::create_dir_all(&ws)
    {
        return not_started(ws_err(format!("create workspace: {e}")));
    }
    for (i, (path, content)) in p.inputs.iter().enumerate() {
        if let Err(m) = files::write_input_file(dir, path, content) {
            return not_started(ws_err(format!("inputFiles[{i}]: {m}")));
        }
    }
    let path_var = p.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or_default();
    let program = match process::resolve_binary(&spec.provider.binary, path_var, &ws) {
        Ok(p) => p,
        Err(m) => return not_started(RuntimeStatus::failed(StatusReason::MissingBinary, m)),
    };
    if *entry.cancel.borrow() {
        return not_started(cancelled_before_start());
    }
    let mut env = p.env;
    let sandbox = match (&inner.cfg.sandbox, &inner.launcher) {
        (None, _) => None,
        (Some(s), process::Launcher::Shell { .. }) if !s.required.is_empty() => {
            let msg = "the sandbox is required but agentplane-runner was not found (only it can apply it)";
            return not_started(RuntimeStatus::failed(StatusReason::SandboxUnavailable, msg));
        }
        (Some(_), process::Launcher::Shell { .. }) => None,
        (Some(s), process::Launcher::Runner(_)) => {
            if let Err(e) = sandbox::prepare_dir(s, &inner.base, dir) {
                return not_started(RuntimeStatus::failed(
                    StatusReason::SubmitFailed,
                    format!("sandbox run folder: {e}"),
                ));
            }
            Some(sandbox::policy(s, spec, dir, &program))
        }
    };
    if !p.secret_files.is_empty() {
        let user = inner.cfg.sandbox.as_ref().and_then(|s| s.user);
        match sandbox::write_secret_files(user, dir, &p.secret_files) {
            Ok(vars) => env.extend(vars),
            Err(e) => {
                sandbox::remove_secret_files(dir);
                return not_started(RuntimeStatus::failed(StatusReason::SubmitFailed, format!("secret files: {e}")));
            }
        }
    }

    // Output: a FIFO drained into the capped log (see log.rs).
    let fifo = dir.join(".agent/output.fifo");
    let exit_file = dir.join(".agent/exit-code");
    let setup = || -> std::io::Result<(std::fs::File, log::Pump)> {
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::remove_file(&exit_file);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
        let output = std::fs::OpenOptions::new().read(true).write(true).open(&fifo)?;
        let pump = log::start_pump(&fifo, &log_path, cap)?;
        Ok((output, pump))
    };
    let (output, pump) = match setup() {
        Ok(x) => x,
        Err(e) => return not_started(RuntimeStatus::failed(StatusReason::SubmitFailed, format!("log: {e}"))),
    };
    let spawned = process::spawn(process::SpawnRequest {
        program: &program,
        args: &p.args,
        env: &env,
        cwd: &ws,
        exit_file: &exit_file,
        output,
        launcher: &inner.launcher,
        sandbox: sandbox.as_ref(),
    });
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => {
            pump.stop.store(true, Ordering::Relaxed);
            sandbox::remove_secret_files(dir);
            let msg = format!("cannot start {}: {e}", program.display());
            return not_started(RuntimeStatus::failed(StatusReason::SubmitFailed, msg));
        }
    };
    let started = Utc::now();
    entry.set_pump(&pump);
    let deadline =
        spec.timeout_seconds.map(|t| started + chrono::Duration::seconds(i64::try_from(t).unwrap_or(i64::MAX / 1000)));
    let pid = spawned.pid;
    let base = p.base_commit;
    entry.update_blocking(|s| {
        s.status.phase = RunPhase::Running;
        s.status.started_at = Some(started);
        s.status.base_commit = base;
        s.pid = Some(pid);
        s.pgid = Some(pid);
        s.proc_start_time = spawned.start_time;
        s.session = Some(spawned.session);
        s.deadline = deadline;
    });
    tracing::debug!(dir = %dir.display(), pid, "agent started");
    Some(Launched { proc: Proc::Child(spawned.child), pid, pgid: pid, deadline, pump: Some(pump) })
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
    // And, with a sandbox, whatever left the group (its cgroups), the secret files, the report.
    let sf = entry.file();
    let (sb, dir) = (inner.cfg.sandbox.clone(), entry.dir.clone());
    let launcher_is_runner = matches!(inner.launcher, process::Launcher::Runner(_));
    let sandbox_result = tokio::task::spawn_blocking(move || {
        sandbox::remove_secret_files(&dir);
        let s = sb?;
        sandbox::destroy_cgroups(&s, &sf.uid, sf.attempt);
        let report = if launcher_is_runner {
            sandbox::read_status(&dir)
        } else {
            Some(sandbox::unavailable_status("agentplane-runner was not found; the agent ran unconfined"))
        };
        Some((report, sandbox::read_limit(&dir)))
    })
    .await
    .ok()
    .flatten();

    // The drain ends by itself when the last writer closes the output (at once, normally); the
    // timeout only matters when a process that left the group still holds it.
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
    if let Some((report, limit)) = sandbox_result {
        if let (Some((reason, msg)), RunPhase::Failed) = (limit, status.phase) {
            let code = status.exit_code;
            status = RuntimeStatus::failed(reason, msg);
            status.exit_code = code;
        }
        status.sandbox = report.map(Box::new);
    }
    status.artifacts = artifacts;
    status.log_truncated = dropped > 0;
    if !notes.is_empty() {
        let joined = notes.join("; ");
        status.message = Some(match status.message.take() {
            Some(m) => format!("{m}; {joined}"),
            None => joined,
        });
    }
    tracing::debug!(dir = %entry.dir.display(), phase = status.phase.as_str(), reason = ?status.reason, "attempt finished");
    inner.finish(&entry, status).await;
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
    if wanted.is_empty() {
        return (Vec::new(), notes);
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
        let r = RuntimeRef(make_ref(&spec.run.namespace, &spec.run.name, &spec.run.uid, spec.attempt));
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
        if entry.is_terminal() {
            return Ok(());
        }
        entry.update(|s| s.cancel_requested = true).await;
        entry.cancel.send_replace(true);
        Ok(())
    }

    /// Every attempt this adapter watches is announced once its terminal status is written.
    fn subscribe(&self) -> Option<broadcast::Receiver<RuntimeRef>> {
        Some(self.inner.events.subscribe())
    }
}
