//! Retention (DESIGN §4 step 7): the sweeper that deletes finished AgentRuns after `runs_ttl`
//! (default 30 days) and removes the logs, artifacts and workspace of their run folders after
//! `files_ttl` (default 7 days). The design, and what it guarantees, is in `docs/scheduler.md`
//! ("Retention").
//!
//! One [`sweep`] pages through every AgentRun of the store:
//!
//! - a run whose phase is `Succeeded`, `Failed` or `Cancelled` and whose `status.finishedAt` is
//!   older than `runs_ttl` is deleted (compare-and-swap on its resourceVersion, ledger entry
//!   `resource.deleted` by `system:retention`), then its whole run folder
//!   `<base_dir>/runs/<namespace>/<name>/` is removed;
//! - a finished run older than `files_ttl` keeps its object, `run.json`, `agent-runner.json` and
//!   the small files of `.agent/` (`status.json`, `status.attempt-N.json`, `exit-code`,
//!   `base-commit`); everything else in its folder (`workspace/`, `artifacts/`,
//!   `.agent/runner.log`, `.agent/output.fifo`, whatever the agent left in its `HOME`) is removed
//!   and `.agent/swept` is written, where later sweeps stop (a marker counts only if its ctime,
//!   which no process can set, is later than `finishedAt`: the agent cannot plant one);
//! - `Pending` and `Running` runs (and runs without a phase) are never touched.
//!
//! Then it walks `<base_dir>/runs/*/*` for **orphans**: folders whose run no longer exists (deleted
//! through the API, say) and whose `.agent/status.json` (or, without one, the folder itself) was
//! last modified longer ago than `files_ttl`; they are removed.
//!
//! The filesystem work runs in `spawn_blocking`. It never follows a symbolic link: `runs/`, the
//! namespace folders, a run folder and its `.agent/` are opened with `O_NOFOLLOW | O_DIRECTORY`
//! and everything below them is reached through `/proc/self/fd/<fd>`, so a link swapped in
//! during a sweep cannot redirect it; a link found inside a run folder is removed as a link,
//! its target untouched; nothing outside `<base_dir>/runs/` is ever removed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use agentplane_api::Kind;
use agentplane_ledger::{Actor, actions};
use agentplane_store::{ListQuery, ObjectKey, Precondition, Store, StoreError, resource_audit, revision_of};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The actor id of the sweeper's ledger entries (`system:retention`).
pub const ACTOR: &str = "retention";
/// The marker written in `.agent/` once a run folder's files were removed.
pub const SWEPT_MARKER: &str = "swept";
/// Most errors a [`SweepReport`] lists; the rest are counted in one last line.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// Files kept at the top of a run folder when its files are removed.
const KEEP_TOP: &[&str] = &["run.json", "agent-runner.json", ".agent"];
/// Files kept in `.agent/` (besides `status.attempt-N.json`).
/// (`swept` is not among them: a marker that reaches the cleaning pass was not written by a
/// sweep after the run finished, so it is removed and written again.)
const KEEP_AGENT: &[&str] = &["status.json", "exit-code", "base-commit"];
/// Most bytes of `.agent/status.json` read to learn which run a folder belongs to.
const STATUS_READ_LIMIT: u64 = 4 << 20;

/// How long finished runs and their files are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// A finished run is deleted once its `finishedAt` is older than this.
    pub runs_ttl: chrono::Duration,
    /// A finished run's logs, artifacts and workspace are removed once its `finishedAt` is older
    /// than this; an orphan folder once its `.agent/status.json` was not modified for this long.
    pub files_ttl: chrono::Duration,
    /// AgentRuns read per store `list` call.
    pub page_size: usize,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy { runs_ttl: TimeDelta::days(30), files_ttl: TimeDelta::days(7), page_size: 500 }
    }
}

impl RetentionPolicy {
    /// The policy of configuration values in days (fractions allowed), or `None` if one is
    /// negative, not finite or longer than 100 years.
    pub fn from_days(runs_days: f64, files_days: f64) -> Option<RetentionPolicy> {
        Some(RetentionPolicy { runs_ttl: days(runs_days)?, files_ttl: days(files_days)?, ..RetentionPolicy::default() })
    }
}

fn days(d: f64) -> Option<TimeDelta> {
    if !d.is_finite() || !(0.0..=36_525.0).contains(&d) {
        return None;
    }
    // In range by the check above: at most 3.2e12 ms.
    #[allow(clippy::cast_possible_truncation)]
    let ms = (d * 86_400_000.0).round() as i64;
    TimeDelta::try_milliseconds(ms)
}

/// Where the sweeper gets the time from.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that says what it was told (tests).
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(now: DateTime<Utc>) -> Self {
        ManualClock { now: Mutex::new(now) }
    }

    pub fn set(&self, now: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    /// Moves the clock by `by` (saturating at the representable range).
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if by < TimeDelta::zero() { DateTime::<Utc>::MIN_UTC } else { DateTime::<Utc>::MAX_UTC };
        *now = now.checked_add_signed(by).unwrap_or(limit);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Finished runs deleted from the store (their folders were removed with them).
    pub runs_deleted: u64,
    /// Folders of kept runs whose logs, artifacts and workspace were removed by this sweep.
    pub run_folders_cleaned: u64,
    /// Folders whose run no longer exists, removed.
    pub orphan_folders_removed: u64,
    /// What went wrong (at most [`MAX_REPORTED_ERRORS`] lines, then a count); the sweep goes on
    /// past each of them.
    pub errors: Vec<String>,
}

impl SweepReport {
    /// Whether this sweep deleted or removed anything.
    pub fn removed_anything(&self) -> bool {
        self.runs_deleted + self.run_folders_cleaned + self.orphan_folders_removed > 0
    }
}

/// Collects a report, capping the error list.
#[derive(Default)]
struct Tally {
    report: SweepReport,
    suppressed: u64,
}

impl Tally {
    fn error(&mut self, message: String) {
        tracing::debug!(error = %message, "retention");
        if self.report.errors.len() < MAX_REPORTED_ERRORS {
            self.report.errors.push(message);
        } else {
            self.suppressed += 1;
        }
    }

    fn finish(mut self) -> SweepReport {
        if self.suppressed > 0 {
            self.report.errors.push(format!("… and {} more errors", self.suppressed));
        }
        self.report
    }
}

/// Folder work decided while reading a page of runs.
#[derive(Debug)]
enum Job {
    /// The run was deleted: remove its folder (unless it belongs to another run of that name).
    RemoveFolder { namespace: String, name: String, uid: Option<String> },
    /// The run is kept: remove its files (unless already done or the folder is another run's).
    CleanFiles { namespace: String, name: String, uid: Option<String>, finished: DateTime<Utc> },
}

#[derive(Debug, Default)]
struct JobsOutcome {
    cleaned: u64,
    errors: Vec<String>,
}

/// One retention pass at time `now`; see the module documentation. Never fails as a whole: what
/// went wrong is listed in [`SweepReport::errors`] and the sweep goes on where it can (a store
/// error while listing ends the listing and skips the orphan walk, whose correctness needs the
/// full list).
#[tracing::instrument(skip_all, fields(base_dir = %base_dir.display()))]
pub async fn sweep(store: &dyn Store, base_dir: &Path, policy: &RetentionPolicy, now: DateTime<Utc>) -> SweepReport {
    let mut tally = Tally::default();
    if policy.runs_ttl < TimeDelta::zero() || policy.files_ttl < TimeDelta::zero() {
        tally.error(format!(
            "retention policy has a negative duration (runs_ttl {}, files_ttl {}); nothing was removed",
            policy.runs_ttl, policy.files_ttl
        ));
        return tally.finish();
    }
    // Keys of every run seen (hashes: a collision only makes an orphan look owned, and keeps it).
    let mut known: HashSet<u64> = HashSet::new();
    let mut complete = true;
    let mut token = None;
    loop {
        let mut query = ListQuery::new(Kind::AgentRun).limit(policy.page_size.max(1));
        // Keyset pagination: the token is the last (namespace, name) returned, so deleting runs
        // of this page does not move the next one.
        query.continue_token = token.take();
        let page = match store.list(&query).await {
            Ok(page) => page,
            Err(e) => {
                tally.error(format!("listing AgentRuns: {e}; the sweep stopped and looked for no orphan folders"));
                complete = false;
                break;
            }
        };
        let mut jobs = Vec::new();
        for obj in &page.items {
            if let Some(job) = decide(store, obj, policy, now, &mut known, &mut tally).await {
                jobs.push(job);
            }
        }
        if !jobs.is_empty() {
            let base = base_dir.to_path_buf();
            match tokio::task::spawn_blocking(move || run_jobs(&base, jobs, now)).await {
                Ok(outcome) => {
                    tally.report.run_folders_cleaned += outcome.cleaned;
                    outcome.errors.into_iter().for_each(|e| tally.error(e));
                }
                Err(e) => tally.error(format!("run folder task failed: {e}")),
            }
        }
        match page.continue_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    if complete {
        remove_orphans(store, base_dir, policy, now, known, &mut tally).await;
    }
    tally.finish()
}

/// What to do with one listed run; deletes it from the store when its time has come.
async fn decide(
    store: &dyn Store,
    obj: &Value,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    known: &mut HashSet<u64>,
    tally: &mut Tally,
) -> Option<Job> {
    let key = match ObjectKey::of(obj) {
        Ok(key) => key,
        Err(e) => {
            tally.error(format!("skipping a listed AgentRun: {e}"));
            return None;
        }
    };
    known.insert(key_hash(&key.namespace, &key.name));
    let phase = obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
    if !matches!(phase, "Succeeded" | "Failed" | "Cancelled") {
        return None;
    }
    let Some((finished, source)) = finished_at(obj) else {
        tracing::debug!(run = %key, "retention: finished run without status.finishedAt or updatedAt; kept");
        return None;
    };
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string);
    let folder_ok = valid_component(&key.namespace) && valid_component(&key.name);
    if older_than(now, finished, policy.runs_ttl) {
        let Some(rv) = revision_of(obj) else {
            tally.error(format!("{key} has no resourceVersion; not deleted"));
            return None;
        };
        let mut audit = resource_audit(Actor::system(ACTOR), actions::RESOURCE_DELETED);
        audit.namespace = Some(key.namespace.clone());
        audit.run = Some(key.name.clone());
        let mut params =
            json!({"reason": "retention", "finishedAt": finished.to_rfc3339_opts(SecondsFormat::AutoSi, true)});
        if source != "finishedAt" {
            params["finishedAtFrom"] = json!(format!("status.{source}"));
        }
        audit.params = params;
        return match store.delete(&key, Precondition::ResourceVersion(rv), audit).await {
            Ok(_) => {
                tally.report.runs_deleted += 1;
                tracing::debug!(run = %key, finished_at = %finished, "retention: deleted run");
                folder_ok.then_some(Job::RemoveFolder { namespace: key.namespace, name: key.name, uid })
            }
            // Someone changed or deleted it since the list: leave it to them (and the next sweep).
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {
                tracing::debug!(run = %key, "retention: run changed since it was listed; skipped");
                None
            }
            Err(e) => {
                tally.error(format!("deleting {key}: {e}"));
                None
            }
        };
    }
    (folder_ok && older_than(now, finished, policy.files_ttl)).then_some(Job::CleanFiles {
        namespace: key.namespace,
        name: key.name,
        uid,
        finished,
    })
}

/// `status.finishedAt`, or `status.updatedAt` for a finished run that lacks it, with its field.
fn finished_at(obj: &Value) -> Option<(DateTime<Utc>, &'static str)> {
    ["finishedAt", "updatedAt"].into_iter().find_map(|field| {
        let s = obj.get("status")?.get(field)?.as_str()?;
        DateTime::parse_from_rfc3339(s).ok().map(|t| (t.with_timezone(&Utc), field))
    })
}

/// Whether `then` is more than `ttl` before `now`.
fn older_than(now: DateTime<Utc>, then: DateTime<Utc>, ttl: TimeDelta) -> bool {
    now.signed_duration_since(then) > ttl
}

fn key_hash(namespace: &str, name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    namespace.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

/// Whether `s` can name one folder (the local runtime's rule for run folders).
fn valid_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.len() <= 253 && !s.contains(['/', '\0'])
}

// ---------------------------------------------------------------------------------------------
// Orphans

async fn remove_orphans(
    store: &dyn Store,
    base_dir: &Path,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    known: HashSet<u64>,
    tally: &mut Tally,
) {
    let base = base_dir.to_path_buf();
    let ttl = policy.files_ttl;
    let found = tokio::task::spawn_blocking(move || find_orphans(&base, &known, now, ttl)).await;
    let (candidates, errors) = match found {
        Ok(found) => found,
        Err(e) => {
            tally.error(format!("orphan folder task failed: {e}"));
            return;
        }
    };
    errors.into_iter().for_each(|e| tally.error(e));
    for chunk in candidates.chunks(policy.page_size.max(1)) {
        // The walk saw no run for these folders; ask the store again, now, so that a run created
        // since the list (reusing an old folder) keeps it.
        let mut confirmed = Vec::new();
        for (namespace, name) in chunk {
            match store.get(&ObjectKey::new(Kind::AgentRun, namespace.clone(), name.clone())).await {
                Err(StoreError::NotFound(_)) => confirmed.push((namespace.clone(), name.clone())),
                Ok(_) => {}
                Err(e) => tally.error(format!("checking whether AgentRun {namespace}/{name} exists: {e}")),
            }
        }
        if confirmed.is_empty() {
            continue;
        }
        let base = base_dir.to_path_buf();
        match tokio::task::spawn_blocking(move || remove_orphan_folders(&base, confirmed, now, ttl)).await {
            Ok((removed, errors)) => {
                tally.report.orphan_folders_removed += removed;
                errors.into_iter().for_each(|e| tally.error(e));
            }
            Err(e) => tally.error(format!("orphan folder task failed: {e}")),
        }
    }
}

/// Folders under `runs/<ns>/` that no listed run owns and that are older than `ttl`.
fn find_orphans(
    base: &Path,
    known: &HashSet<u64>,
    now: DateTime<Utc>,
    ttl: TimeDelta,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let Some(runs) = open_runs(base, &mut errors) else { return (out, errors) };
    // One folder open at a time (besides `runs/` and its namespace): never many descriptors.
    for namespace in subdir_names(&runs, &base.join("runs").display().to_string(), &mut errors) {
        let ns_dir = match open_dir_opt(&runs.path.join(&namespace)) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                errors.push(format!("opening {}: {e}", display(base, &namespace, None)));
                continue;
            }
        };
        for name in subdir_names(&ns_dir, &display(base, &namespace, None), &mut errors) {
            if known.contains(&key_hash(&namespace, &name)) {
                continue;
            }
            let modified = open_dir_opt(&ns_dir.path.join(&name))
                .and_then(|d| d.map_or(Ok(None), |run_dir| folder_modified(&run_dir)));
            match modified {
                Ok(Some(modified)) if older_than(now, modified, ttl) => out.push((namespace.clone(), name)),
                Ok(_) => {}
                Err(e) => errors.push(format!("reading {}: {e}", display(base, &namespace, Some(&name)))),
            }
        }
    }
    (out, errors)
}

fn remove_orphan_folders(
    base: &Path,
    folders: Vec<(String, String)>,
    now: DateTime<Utc>,
    ttl: TimeDelta,
) -> (u64, Vec<String>) {
    let mut removed = 0;
    let mut errors = Vec::new();
    let Some(runs) = open_runs(base, &mut errors) else { return (removed, errors) };
    let mut namespaces = NsCache::default();
    for (namespace, name) in folders {
        let shown = display(base, &namespace, Some(&name));
        let result = (|| -> io::Result<bool> {
            let Some(ns_dir) = namespaces.get(&runs, &namespace)? else { return Ok(false) };
            // Look again: a run may have started writing in it since the walk.
            let Some(run_dir) = open_dir_opt(&ns_dir.path.join(&name))? else { return Ok(false) };
            match folder_modified(&run_dir)? {
                Some(modified) if older_than(now, modified, ttl) => {}
                _ => return Ok(false),
            }
            drop(run_dir);
            remove_entry(&ns_dir.path.join(&name))
        })();
        match result {
            Ok(true) => {
                removed += 1;
                tracing::debug!(folder = %shown, "retention: removed orphan run folder");
            }
            Ok(false) => {}
            Err(e) => errors.push(format!("removing orphan folder {shown}: {e}")),
        }
    }
    (removed, errors)
}

/// When the folder was last used: the mtime of `.agent/status.json`, or of the folder itself
/// when it has none. `None` when the time cannot be represented.
fn folder_modified(run_dir: &PinnedDir) -> io::Result<Option<DateTime<Utc>>> {
    let status = match open_dir_opt(&run_dir.path.join(".agent"))? {
        Some(agent) => match std::fs::symlink_metadata(agent.path.join("status.json")) {
            Ok(m) if m.is_file() => Some(m.modified()?),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let modified = match status {
        Some(t) => t,
        None => run_dir.file.metadata()?.modified()?,
    };
    Ok(utc(modified))
}

fn utc(t: SystemTime) -> Option<DateTime<Utc>> {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let t = DateTime::from_timestamp(-i64::try_from(d.as_secs()).ok()?, 0)?;
            t.checked_sub_signed(TimeDelta::nanoseconds(i64::from(d.subsec_nanos())))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Run folders

fn run_jobs(base: &Path, jobs: Vec<Job>, now: DateTime<Utc>) -> JobsOutcome {
    let mut outcome = JobsOutcome::default();
    let Some(runs) = open_runs(base, &mut outcome.errors) else { return outcome };
    let mut namespaces = NsCache::default();
    for job in jobs {
        match job {
            Job::RemoveFolder { namespace, name, uid } => {
                let result = namespaces
                    .get(&runs, &namespace)
                    .and_then(|ns| ns.map_or(Ok(false), |ns| remove_run_folder(ns, &name, uid.as_deref())));
                if let Err(e) = result {
                    let shown = display(base, &namespace, Some(&name));
                    outcome.errors.push(format!("removing the folder {shown} of a deleted run: {e}"));
                }
            }
            Job::CleanFiles { namespace, name, uid, finished } => {
                let result = namespaces.get(&runs, &namespace).and_then(|ns| {
                    ns.map_or(Ok(false), |ns| clean_run_files(ns, &name, uid.as_deref(), finished, now))
                });
                match result {
                    Ok(true) => outcome.cleaned += 1,
                    Ok(false) => {}
                    Err(e) => {
                        let shown = display(base, &namespace, Some(&name));
                        outcome.errors.push(format!("removing the files of {shown}: {e}"));
                    }
                }
            }
        }
    }
    outcome
}

/// Removes the folder of a deleted run. A link in its place is removed as a link. A folder that
/// belongs to another run of the same name (created since) is left alone.
fn remove_run_folder(ns_dir: &PinnedDir, name: &str, uid: Option<&str>) -> io::Result<bool> {
    let path = ns_dir.path.join(name);
    if let Some(run_dir) = open_dir_opt(&path)?
        && let Some(agent) = open_dir_opt(&run_dir.path.join(".agent"))?
        && owner(&agent, uid) == Owner::Other
    {
        tracing::debug!(folder = %path.display(), "retention: folder belongs to a newer run of that name; kept");
        return Ok(false);
    }
    remove_entry(&path)
}

/// Removes what a kept run no longer needs; `Ok(true)` when this call did it.
fn clean_run_files(
    ns_dir: &PinnedDir,
    name: &str,
    uid: Option<&str>,
    finished: DateTime<Utc>,
    now: DateTime<Utc>,
) -> io::Result<bool> {
    // A missing folder (the run never started) or a link in its place: nothing of ours to clean.
    let Some(run_dir) = open_dir_opt(&ns_dir.path.join(name))? else { return Ok(false) };
    let agent = match open_dir_opt(&run_dir.path.join(".agent"))? {
        Some(agent) => {
            // What every later sweep does: two opens and one lstat.
            if swept_since(&agent, finished)? || owner(&agent, uid) == Owner::Other {
                return Ok(false);
            }
            agent
        }
        None => {
            // Not a real folder (a link, a file) or missing: replace it with an empty one.
            remove_entry(&run_dir.path.join(".agent"))?;
            std::fs::create_dir(run_dir.path.join(".agent"))?;
            match open_dir_opt(&run_dir.path.join(".agent"))? {
                Some(agent) => agent,
                None => return Err(io::Error::other(".agent was replaced while it was being created")),
            }
        }
    };
    for entry in std::fs::read_dir(&run_dir.path)? {
        let entry = entry?;
        let file_name = entry.file_name();
        if file_name.to_str().is_some_and(|n| KEEP_TOP.contains(&n)) {
            continue;
        }
        remove_entry(&run_dir.path.join(&file_name))?;
    }
    for entry in std::fs::read_dir(&agent.path)? {
        let entry = entry?;
        let file_name = entry.file_name();
        if file_name.to_str().is_some_and(keep_in_agent) {
            continue;
        }
        remove_entry(&agent.path.join(&file_name))?;
    }
    let marker = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(agent.path.join(SWEPT_MARKER));
    match marker {
        Ok(mut f) => {
            let body = json!({"sweptAt": now.to_rfc3339_opts(SecondsFormat::Secs, true)});
            writeln!(f, "{body}")?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(true)
}

/// Whether `.agent/swept` is a file a sweep wrote after the run finished. Its ctime, which
/// (unlike its mtime) no process can set, must be later than `finished`: a marker the agent
/// planted while it ran does not count.
fn swept_since(agent: &PinnedDir, finished: DateTime<Utc>) -> io::Result<bool> {
    match std::fs::symlink_metadata(agent.path.join(SWEPT_MARKER)) {
        Ok(m) => Ok(m.is_file()
            && u32::try_from(m.ctime_nsec())
                .ok()
                .and_then(|ns| DateTime::from_timestamp(m.ctime(), ns))
                .is_some_and(|changed| changed > finished)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn keep_in_agent(name: &str) -> bool {
    KEEP_AGENT.contains(&name)
        || name
            .strip_prefix("status.attempt-")
            .and_then(|rest| rest.strip_suffix(".json"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// `.agent/status.json` names this run's uid.
    Same,
    /// It names another uid: the folder belongs to a newer run of the same name.
    Other,
    /// No readable status file (or no uid to compare with).
    Unknown,
}

/// Whose run folder this is, from the `uid` in its `.agent/status.json`.
fn owner(agent: &PinnedDir, uid: Option<&str>) -> Owner {
    let Some(uid) = uid else { return Owner::Unknown };
    let read = || -> io::Result<Option<String>> {
        // O_NOFOLLOW: never read through a link; O_NONBLOCK: never wait on a FIFO.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
            .open(agent.path.join("status.json"))?;
        if !file.metadata()?.is_file() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        file.take(STATUS_READ_LIMIT).read_to_end(&mut bytes)?;
        let status: Value = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        Ok(status.get("uid").and_then(Value::as_str).map(str::to_string))
    };
    match read() {
        Ok(Some(found)) if found == uid => Owner::Same,
        Ok(Some(_)) => Owner::Other,
        _ => Owner::Unknown,
    }
}

// ---------------------------------------------------------------------------------------------
// Directories reached without following links

/// A directory opened with `O_NOFOLLOW | O_DIRECTORY`. `path` reaches exactly that directory:
/// `/proc/self/fd/<fd>` (resolved by the kernel to the open directory, whatever happens to the
/// path it was opened by), or the path it was opened by where `/proc` is not available.
#[derive(Debug)]
struct PinnedDir {
    file: File,
    path: PathBuf,
}

/// Opens `path` as a directory; `Ok(None)` when it is missing, a link or not a directory.
fn open_dir_opt(path: &Path) -> io::Result<Option<PinnedDir>> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound || is_not_a_directory(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let proc = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let path = match std::fs::metadata(&proc) {
        Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => proc,
        _ => path.to_path_buf(),
    };
    Ok(Some(PinnedDir { file, path }))
}

fn is_not_a_directory(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|c| c == Errno::ELOOP as i32 || c == Errno::ENOTDIR as i32)
}

/// `<base>/runs`, or `None` (with an error when it exists but is not a real directory).
fn open_runs(base: &Path, errors: &mut Vec<String>) -> Option<PinnedDir> {
    let path = base.join("runs");
    match open_dir_opt(&path) {
        Ok(Some(d)) => Some(d),
        Ok(None) => {
            if std::fs::symlink_metadata(&path).is_ok() {
                errors.push(format!(
                    "{} is not a directory (a symbolic link?); no run folder was touched",
                    path.display()
                ));
            }
            None
        }
        Err(e) => {
            errors.push(format!("opening {}: {e}", path.display()));
            None
        }
    }
}

/// The names of the real subdirectories of `dir` that can name a folder. Links, files and
/// names that are not UTF-8 are skipped.
fn subdir_names(dir: &PinnedDir, shown: &str, errors: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir.path) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(format!("listing {shown}: {e}"));
            return out;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(format!("listing {shown}: {e}"));
                break;
            }
        };
        // `file_type` does not follow links.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(name) = entry.file_name().to_str().filter(|n| valid_component(n)) {
            out.push(name.to_string());
        }
    }
    out
}

/// The namespace folder of the previous job, reused while jobs stay in one namespace.
#[derive(Default)]
struct NsCache {
    current: Option<(String, Option<PinnedDir>)>,
}

impl NsCache {
    fn get(&mut self, runs: &PinnedDir, namespace: &str) -> io::Result<Option<&PinnedDir>> {
        if self.current.as_ref().is_none_or(|(ns, _)| ns != namespace) {
            let dir = open_dir_opt(&runs.path.join(namespace))?;
            self.current = Some((namespace.to_string(), dir));
        }
        Ok(self.current.as_ref().and_then(|(_, d)| d.as_ref()))
    }
}

/// Removes a file, link or directory tree without following links (`remove_dir_all` removes a
/// link it meets as a link, also one swapped in while it runs); `Ok(false)` if it was not there.
fn remove_entry(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let removed = if meta.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match removed {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `<base>/runs/<namespace>[/<name>]` for messages (never the `/proc` path).
fn display(base: &Path, namespace: &str, name: Option<&str>) -> String {
    let p = base.join("runs").join(namespace);
    match name {
        Some(n) => p.join(n).display().to_string(),
        None => p.display().to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The loop

/// Sweeps at once, then every `interval` (at least 1 ms), with the time from `clock`, until
/// `shutdown` turns `true` (or its sender is gone); a sweep in progress is abandoned then (store
/// deletes are atomic each; a folder removal already running in the blocking pool finishes). Logs
/// a summary when a sweep removed something and a warning when it met errors.
pub async fn run_retention(
    store: Arc<dyn Store>,
    base_dir: PathBuf,
    policy: RetentionPolicy,
    interval: std::time::Duration,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = interval.max(std::time::Duration::from_millis(1));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = clock.now();
        let report = tokio::select! {
            report = sweep(&*store, &base_dir, &policy, now) => report,
            () = stopped(&mut shutdown) => return,
        };
        if report.removed_anything() {
            tracing::info!(
                runs_deleted = report.runs_deleted,
                run_folders_cleaned = report.run_folders_cleaned,
                orphan_folders_removed = report.orphan_folders_removed,
                errors = report.errors.len(),
                "retention sweep removed finished runs and files"
            );
        }
        if let Some(first) = report.errors.first() {
            tracing::warn!(errors = report.errors.len(), first = %first, "retention sweep met errors");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves once `shutdown` is `true` (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_small_agent_files() {
        for keep in ["status.json", "status.attempt-1.json", "status.attempt-12.json", "exit-code", "base-commit"] {
            assert!(keep_in_agent(keep), "{keep}");
        }
        for drop in
            ["runner.log", "output.fifo", "status.tmp", "status.attempt-.json", "status.attempt-1x.json", "swept"]
        {
            assert!(!keep_in_agent(drop), "{drop}");
        }
    }

    #[test]
    fn policy_from_days() {
        let p = RetentionPolicy::from_days(30.0, 0.5).unwrap();
        assert_eq!(p.runs_ttl, TimeDelta::days(30));
        assert_eq!(p.files_ttl, TimeDelta::hours(12));
        assert_eq!(p.page_size, 500);
        assert!(RetentionPolicy::from_days(-1.0, 7.0).is_none());
        assert!(RetentionPolicy::from_days(f64::NAN, 7.0).is_none());
        assert!(RetentionPolicy::from_days(30.0, f64::INFINITY).is_none());
        assert!(RetentionPolicy::from_days(1e9, 7.0).is_none());
    }

    #[test]
    fn system_times_convert_without_panicking() {
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(utc(epoch), DateTime::from_timestamp(0, 0));
        let before = epoch - std::time::Duration::from_millis(1500);
        assert_eq!(utc(before), DateTime::from_timestamp_millis(-1500));
        if let Some(far) = epoch.checked_add(std::time::Duration::from_secs(u64::MAX / 4)) {
            assert_eq!(utc(far), None);
        }
    }

    #[test]
    fn pinned_folders_are_real_and_stay_put() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("dir");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(dir.join("f"), "ours").unwrap();
        std::fs::write(outside.join("f"), "not ours").unwrap();
        std::fs::write(t.path().join("file"), "").unwrap();
        std::os::unix::fs::symlink(&outside, t.path().join("link")).unwrap();
        assert!(open_dir_opt(&t.path().join("missing")).unwrap().is_none());
        assert!(open_dir_opt(&t.path().join("file")).unwrap().is_none());
        assert!(open_dir_opt(&t.path().join("link")).unwrap().is_none(), "a link is never opened");

        let pinned = open_dir_opt(&dir).unwrap().unwrap();
        assert!(pinned.path.starts_with("/proc/self/fd/"), "{}", pinned.path.display());
        // Swap the folder for a link out after it was opened: the pinned path still reaches
        // the folder that was opened.
        std::fs::rename(&dir, t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &dir).unwrap();
        assert!(remove_entry(&pinned.path.join("f")).unwrap());
        assert!(!t.path().join("moved/f").exists());
        assert_eq!(std::fs::read_to_string(outside.join("f")).unwrap(), "not ours");
    }

    #[test]
    fn folder_names() {
        assert!(valid_component("run-1"));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(!valid_component(bad), "{bad:?}");
        }
    }

    #[test]
    fn manual_clock_moves() {
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let c = ManualClock::new(t0);
        c.advance(TimeDelta::days(2));
        assert_eq!(c.now(), t0 + TimeDelta::days(2));
        c.set(t0);
        assert_eq!(c.now(), t0);
        c.advance(TimeDelta::MAX);
        assert_eq!(c.now(), DateTime::<Utc>::MAX_UTC);
    }
}
