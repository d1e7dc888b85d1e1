//! Earned levels (DESIGN §6, governance.md "Earned levels"): an Agent's earned takeover level
//! follows its track record.
//!
//! - After `governance.suggest_after_clean_runs` clean runs in a row — `Succeeded`, and the
//!   ledger holds no entry for the run whose outcome is `denied` or `failure` (a denied or failed
//!   action) — the server **suggests** raising the level by one: `status.levelSuggestion`, the
//!   condition `LevelRaiseSuggested`, and a `takeover.suggested` ledger entry. Raising always
//!   needs a human (`agentctl takeover set`), which clears the suggestion.
//! - When, over the last `governance.failure_window_runs` finished runs (at least
//!   `failure_min_runs` of them), the share that `Failed` reaches `failure_rate_threshold`, the
//!   server **lowers** the level by one (never below `lowest_earned_level`), records it like a
//!   human change (`status.takeoverHistory`, `takeover.changed`, actor `system:earned-levels`)
//!   with the reason, and sets the condition `LevelLowered`.
//!
//! Only runs that finished after the Agent's last level change count: a change, by a human or by
//! this task, starts a new record. Cancelled runs and runs that never started because their
//! approval was denied or expired count neither way.
//!
//! The task follows the store's change stream (AgentRuns and Agents), so it costs nothing per run
//! beyond the event it already receives; the ledger is read only when a streak is long enough to
//! suggest a raise. Its counts are rebuilt from the store when the server starts. Every write is a
//! compare-and-swap that first checks the Agent's last level change is still the one the counts
//! started from, so replicas sharing a store cannot lower a level twice for the same failures.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::condition::{Condition, ConditionStatus, set_condition};
use agentplane_api::{AgentStatus, Kind, LevelChange, LevelSuggestion, RunPhase};
use agentplane_ledger::{Actor, Target, actions, outcomes};
use agentplane_store::{
    EventType, LedgerQuery, ListQuery, ObjectKey, Precondition, Store, StoreError, WatchQuery, resource_audit,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::GovernanceConfig;
use crate::takeover::push_history;

/// The ledger actor of this task.
pub const ACTOR_ID: &str = "earned-levels";
/// Condition set on the Agent when a raise is suggested.
pub const SUGGESTED_CONDITION: &str = "LevelRaiseSuggested";
/// Condition set on the Agent when its level was lowered automatically.
pub const LOWERED_CONDITION: &str = "LevelLowered";
/// Run IDs remembered to count each run once.
const SEEN_KEPT: usize = 200_000;
const CAS_ATTEMPTS: usize = 8;

/// The thresholds, from `[governance]`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub suggest_after: usize,
    pub window: usize,
    pub min_runs: usize,
    pub threshold: f64,
    pub lowest: u8,
    pub initial: u8,
}

impl Rules {
    pub fn from_config(g: &GovernanceConfig) -> Rules {
        Rules {
            suggest_after: g.suggest_after_clean_runs as usize,
            window: g.failure_window_runs as usize,
            min_runs: g.failure_min_runs as usize,
            threshold: g.failure_rate_threshold,
            lowest: g.lowest_earned_level,
            initial: g.initial_earned_level,
        }
    }
}

/// A finished run that counts for its Agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub namespace: String,
    pub agent: String,
    pub run: String,
    pub uid: String,
    pub finished_at: DateTime<Utc>,
    pub failed: bool,
}

/// What the record asks for after a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Nothing,
    /// The failure rate crossed the threshold: `failed` of the last `total` runs.
    Lower {
        failed: usize,
        total: usize,
    },
    /// A streak long enough to suggest a raise, if the ledger agrees the runs were clean.
    CheckStreak,
}

/// One Agent's record since its last level change.
#[derive(Debug, Default)]
struct Record {
    /// The last level change the record started from (`None`: never changed).
    since: Option<DateTime<Utc>>,
    /// `true` = failed, newest last, at most `window` long.
    window: VecDeque<bool>,
    /// Succeeded runs in a row: `(run, uid)`.
    streak: Vec<(String, String)>,
    /// A raise is already suggested (or the level is at the top): streaks need no more checks
    /// until the level changes.
    settled: bool,
}

/// What an Agent change records in the ledger.
struct Change {
    action: &'static str,
    outcome: &'static str,
    level: u8,
    params: Value,
}

/// How [`EarnedLevels::update_agent`] ended.
enum Updated {
    /// Written at this time.
    Written(DateTime<Utc>),
    /// `edit` left the Agent as it is (or the Agent is gone).
    Declined,
    /// The Agent's level changed since the record started (the record was restarted), or the
    /// Agent kept changing.
    Stale,
}

/// The pure part: counts per Agent. The driver loads `since` before the first run of an Agent.
#[derive(Debug, Default)]
pub struct Tracker {
    records: HashMap<(String, String), Record>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

impl Tracker {
    pub fn knows(&self, ns: &str, agent: &str) -> bool {
        self.records.contains_key(&(ns.to_string(), agent.to_string()))
    }

    /// Start (or restart) an Agent's record from its last level change.
    pub fn reset(&mut self, ns: &str, agent: &str, since: Option<DateTime<Utc>>) {
        self.records.insert((ns.to_string(), agent.to_string()), Record { since, ..Record::default() });
    }

    /// The last level change an Agent's record started from.
    pub fn since(&self, ns: &str, agent: &str) -> Option<Option<DateTime<Utc>>> {
        self.records.get(&(ns.to_string(), agent.to_string())).map(|r| r.since)
    }

    /// The runs of the current streak.
    pub fn streak(&self, ns: &str, agent: &str) -> Vec<(String, String)> {
        self.records.get(&(ns.to_string(), agent.to_string())).map(|r| r.streak.clone()).unwrap_or_default()
    }

    /// No more suggestions until the level changes (one is pending, or the level is L5).
    pub fn settle(&mut self, ns: &str, agent: &str) {
        if let Some(r) = self.records.get_mut(&(ns.to_string(), agent.to_string())) {
            r.settled = true;
            r.streak.clear();
        }
    }

    /// Keep only the streak's runs after `index` (the last one found not clean).
    pub fn cut_streak(&mut self, ns: &str, agent: &str, keep_from: usize) {
        if let Some(r) = self.records.get_mut(&(ns.to_string(), agent.to_string())) {
            let keep_from = keep_from.min(r.streak.len());
            r.streak.drain(..keep_from);
        }
    }

    /// Count one finished run. Runs finished before the record's start, or seen before, are
    /// ignored.
    pub fn observe(&mut self, f: &Finished, rules: &Rules) -> Next {
        let key = (f.namespace.clone(), f.agent.clone());
        let Some(r) = self.records.get_mut(&key) else { return Next::Nothing };
        if r.since.is_some_and(|s| f.finished_at <= s) {
            return Next::Nothing;
        }
        if !self.seen.insert(f.uid.clone()) {
            return Next::Nothing;
        }
        self.seen_order.push_back(f.uid.clone());
        if self.seen_order.len() > SEEN_KEPT
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        r.window.push_back(f.failed);
        while r.window.len() > rules.window {
            r.window.pop_front();
        }
        if f.failed {
            r.streak.clear();
            let failed = r.window.iter().filter(|x| **x).count();
            let total = r.window.len();
            if total >= rules.min_runs && failed as f64 / total as f64 >= rules.threshold {
                return Next::Lower { failed, total };
            }
            Next::Nothing
        } else {
            if r.settled {
                return Next::Nothing;
            }
            r.streak.push((f.run.clone(), f.uid.clone()));
            if r.streak.len() >= rules.suggest_after { Next::CheckStreak } else { Next::Nothing }
        }
    }
}

/// The run as a [`Finished`] when it counts: `Succeeded`, or `Failed` for a reason of its own
/// (not a denied or expired start approval).
pub fn finished_of(obj: &Value) -> Option<Finished> {
    let status = obj.get("status")?;
    let phase: RunPhase = serde_json::from_value(status.get("phase")?.clone()).ok()?;
    let failed = match phase {
        RunPhase::Succeeded => false,
        RunPhase::Failed => {
            let reason = status
                .get("conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Failed")))
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if matches!(reason, "ApprovalDenied" | "ApprovalExpired") {
                return None;
            }
            true
        }
        _ => return None,
    };
    let finished_at = status.get("finishedAt").and_then(Value::as_str)?.parse::<DateTime<Utc>>().ok()?;
    Some(Finished {
        namespace: obj.pointer("/metadata/namespace")?.as_str()?.to_string(),
        agent: obj.pointer("/spec/agentRef/name")?.as_str()?.to_string(),
        run: obj.pointer("/metadata/name")?.as_str()?.to_string(),
        uid: obj.pointer("/metadata/uid")?.as_str()?.to_string(),
        finished_at,
        failed,
    })
}

fn last_change(status: &AgentStatus) -> Option<DateTime<Utc>> {
    status.takeover_history.last().map(|c| c.at)
}

fn agent_status(obj: &Value) -> AgentStatus {
    obj.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default()
}

/// The driver: the tracker plus the store.
pub struct EarnedLevels {
    store: Arc<dyn Store>,
    rules: Rules,
    tracker: Tracker,
    /// Told about every change of an Agent here, so admission sees a lowered level at once.
    admission: Arc<crate::admission::AdmissionCache>,
}

impl std::fmt::Debug for EarnedLevels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarnedLevels")
            .field("rules", &self.rules)
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl EarnedLevels {
    pub fn new(store: Arc<dyn Store>, rules: Rules, admission: Arc<crate::admission::AdmissionCache>) -> Self {
        EarnedLevels { store, rules, tracker: Tracker::default(), admission }
    }

    async fn ensure_record(&mut self, ns: &str, agent: &str) -> Result<bool, StoreError> {
        if self.tracker.knows(ns, agent) {
            return Ok(true);
        }
        match self.store.get(&ObjectKey::new(Kind::Agent, ns, agent)).await {
            Ok(obj) => {
                self.tracker.reset(ns, agent, last_change(&agent_status(&obj)));
                Ok(true)
            }
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Count one run object (from the change stream or the start-up scan) and act on it.
    pub async fn on_run(&mut self, obj: &Value) -> Result<(), StoreError> {
        let Some(f) = finished_of(obj) else { return Ok(()) };
        if !self.ensure_record(&f.namespace, &f.agent).await? {
            return Ok(());
        }
        match self.tracker.observe(&f, &self.rules) {
            Next::Nothing => Ok(()),
            Next::Lower { failed, total } => self.lower(&f.namespace, &f.agent, failed, total).await,
            Next::CheckStreak => self.check_streak(&f.namespace, &f.agent).await,
        }
    }

    /// An Agent changed: if its level changed, its record starts again.
    pub fn on_agent(&mut self, obj: &Value, deleted: bool) {
        let (Some(ns), Some(name)) = (
            obj.pointer("/metadata/namespace").and_then(Value::as_str),
            obj.pointer("/metadata/name").and_then(Value::as_str),
        ) else {
            return;
        };
        if deleted {
            self.tracker.records.remove(&(ns.to_string(), name.to_string()));
            return;
        }
        let changed = last_change(&agent_status(obj));
        if let Some(since) = self.tracker.since(ns, name)
            && since != changed
        {
            self.tracker.reset(ns, name, changed);
        }
    }

    /// Whether the ledger holds a denied or failed entry for this run.
    async fn run_is_clean(&self, ns: &str, run: &str, uid: &str) -> Result<bool, StoreError> {
        let mut q = LedgerQuery { namespace: Some(ns.to_string()), run: Some(run.to_string()), ..Default::default() };
        loop {
            let page = self.store.ledger_query(&q).await?;
            for e in &page.entries {
                let entry_uid = e.target.as_ref().and_then(|t| t.uid.as_deref());
                if entry_uid.is_some_and(|u| u != uid) {
                    continue;
                }
                if e.outcome == outcomes::DENIED || e.outcome == outcomes::FAILURE {
                    return Ok(false);
                }
            }
            match page.next_after_seq {
                Some(after) if q.after_seq != Some(after) => q.after_seq = Some(after),
                _ => return Ok(true),
            }
        }
    }

    async fn check_streak(&mut self, ns: &str, agent: &str) -> Result<(), StoreError> {
        // Cheap check first: a pending suggestion or the top level needs no ledger reads.
        let key = ObjectKey::new(Kind::Agent, ns, agent);
        let status = match self.store.get(&key).await {
            Ok(obj) => agent_status(&obj),
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let earned = status.earned_takeover_level.unwrap_or(self.rules.initial);
        if earned >= 5 || status.level_suggestion.as_ref().is_some_and(|s| s.level > earned) {
            self.tracker.settle(ns, agent);
            return Ok(());
        }
        let streak = self.tracker.streak(ns, agent);
        let mut keep_from = 0;
        for (i, (run, uid)) in streak.iter().enumerate() {
            if !self.run_is_clean(ns, run, uid).await? {
                keep_from = i + 1;
            }
        }
        self.tracker.cut_streak(ns, agent, keep_from);
        let clean = streak.len() - keep_from;
        if clean < self.rules.suggest_after {
            return Ok(());
        }
        let rules_initial = self.rules.initial;
        let since = self.tracker.since(ns, agent).flatten();
        let written = self
            .update_agent(ns, agent, |status, now| {
                let earned = status.earned_takeover_level.unwrap_or(rules_initial);
                let pending = status.level_suggestion.as_ref().is_some_and(|s| s.level > earned);
                if earned >= 5 || pending {
                    return None;
                }
                let to = earned + 1;
                let reason = format!(
                    "{clean} runs in a row succeeded with no denied or failed action since {}; raising the earned level to L{to} needs a human (agentctl takeover set)",
                    since.map_or_else(|| "the agent was created".to_string(), |s| format!("the level changed at {s}")),
                );
                status.level_suggestion = Some(LevelSuggestion {
                    level: to,
                    at: now,
                    clean_runs: u32::try_from(clean).unwrap_or(u32::MAX),
                    reason: reason.clone(),
                });
                set_condition(
                    &mut status.conditions,
                    Condition::new(SUGGESTED_CONDITION, ConditionStatus::True, "CleanRunStreak", reason.clone(), now),
                );
                Some(Change {
                    action: actions::TAKEOVER_SUGGESTED,
                    outcome: outcomes::PENDING,
                    level: to,
                    params: json!({"from": earned, "to": to, "cleanRuns": clean, "reason": reason}),
                })
            })
            .await?;
        match written {
            Updated::Written(_) => {
                tracing::info!(namespace = %ns, agent = %agent, clean, "earned level raise suggested");
                self.tracker.settle(ns, agent);
            }
            Updated::Declined => self.tracker.settle(ns, agent),
            Updated::Stale => {}
        }
        Ok(())
    }

    async fn lower(&mut self, ns: &str, agent: &str, failed: usize, total: usize) -> Result<(), StoreError> {
        let (initial, lowest, threshold) = (self.rules.initial, self.rules.lowest, self.rules.threshold);
        let written = self
            .update_agent(ns, agent, |status, now| {
                let earned = status.earned_takeover_level.unwrap_or(initial);
                if earned <= lowest {
                    return None;
                }
                let to = earned - 1;
                let pct = |x: f64| format!("{:.0}%", x * 100.0);
                let reason = format!(
                    "{failed} of the last {total} finished runs failed ({}), at or above governance.failure_rate_threshold ({}); lowered from L{earned} to L{to}",
                    pct(failed as f64 / total as f64),
                    pct(threshold),
                );
                status.earned_takeover_level = Some(to);
                status.level_suggestion = None;
                status.conditions.retain(|c| c.type_ != SUGGESTED_CONDITION);
                set_condition(
                    &mut status.conditions,
                    Condition::new(LOWERED_CONDITION, ConditionStatus::True, "FailureRate", reason.clone(), now),
                );
                let by = format!("system:{ACTOR_ID}");
                push_history(
                    &mut status.takeover_history,
                    LevelChange { at: now, by, from: Some(earned), to, reason: reason.clone() },
                );
                Some(Change {
                    action: actions::TAKEOVER_CHANGED,
                    outcome: outcomes::SUCCESS,
                    level: to,
                    params: json!({"field": "level", "from": earned, "to": to, "reason": reason,
                        "failedRuns": failed, "windowRuns": total}),
                })
            })
            .await?;
        if let Updated::Written(at) = written {
            self.admission.invalidate(&ObjectKey::new(Kind::Agent, ns, agent));
            tracing::warn!(namespace = %ns, agent = %agent, failed, total, "earned level lowered");
            self.tracker.reset(ns, agent, Some(at));
        }
        Ok(())
    }

    /// Compare-and-swap an Agent's status. `edit` sees the status (only while the Agent's last
    /// level change is still the one the record started from) and returns what to record in the
    /// ledger, or `None` to leave the Agent as it is. A stale record is restarted from the
    /// Agent's actual last change.
    async fn update_agent(
        &mut self,
        ns: &str,
        agent: &str,
        mut edit: impl FnMut(&mut AgentStatus, DateTime<Utc>) -> Option<Change>,
    ) -> Result<Updated, StoreError> {
        let since = self.tracker.since(ns, agent).flatten();
        let key = ObjectKey::new(Kind::Agent, ns, agent);
        for _ in 0..CAS_ATTEMPTS {
            let obj = self.store.get(&key).await?;
            let rv = agentplane_store::revision_of(&obj).unwrap_or_default();
            let mut status = agent_status(&obj);
            if last_change(&status) != since {
                self.tracker.reset(ns, agent, last_change(&status));
                return Ok(Updated::Stale);
            }
            let now = Utc::now();
            let Some(change) = edit(&mut status, now) else { return Ok(Updated::Declined) };
            status.updated_at = Some(now);
            let mut next = obj.clone();
            crate::approvals::set_part(&mut next, "status", serde_json::to_value(&status).unwrap_or(Value::Null));
            let mut audit = resource_audit(Actor::system(ACTOR_ID), change.action);
            audit.namespace = Some(ns.to_string());
            audit.target = Some(Target { kind: "Agent".into(), namespace: ns.into(), name: agent.into(), uid: None });
            audit.takeover_level = Some(change.level);
            audit.outcome = change.outcome.to_string();
            audit.params = change.params;
            match self.store.update(next, Precondition::ResourceVersion(rv), audit).await {
                Ok(_) => return Ok(Updated::Written(now)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Ok(Updated::Declined),
                Err(e) => return Err(e),
            }
        }
        Ok(Updated::Stale)
    }

    /// Count the runs already finished (oldest first), then follow the change stream from the
    /// revision the scan started at.
    async fn catch_up(&mut self) -> Result<u64, StoreError> {
        let revision = self.store.revision().await?;
        let mut runs = Vec::new();
        let mut q = ListQuery::new(Kind::AgentRun).limit(agentplane_store::MAX_LIST_LIMIT);
        loop {
            let page = self.store.list(&q).await?;
            runs.extend(page.items.into_iter().filter_map(|o| finished_of(&o).map(|f| (f.finished_at, o))));
            match page.continue_token {
                Some(t) => q.continue_token = Some(t),
                None => break,
            }
        }
        runs.sort_by_key(|(at, _)| *at);
        for (_, obj) in &runs {
            self.on_run(obj).await?;
        }
        Ok(revision)
    }

    /// Run until shutdown; on a store error, start again after a pause.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.follow(&mut shutdown).await {
                tracing::warn!(error = %e, "earned levels: store error; starting again in 5 s");
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.tracker = Tracker::default();
        }
    }

    async fn follow(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), StoreError> {
        let from = self.catch_up().await?;
        let mut stream = self.store.watch(WatchQuery::all_from(from)).await?;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            let Some(ev) = ev else { return Ok(()) };
            let ev = ev?;
            match ev.object.get("kind").and_then(Value::as_str) {
                Some("AgentRun") if ev.type_ != EventType::Deleted => self.on_run(&ev.object).await?,
                Some("Agent") => self.on_agent(&ev.object, ev.type_ == EventType::Deleted),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules { suggest_after: 3, window: 4, min_runs: 2, threshold: 0.5, lowest: 1, initial: 3 }
    }

    fn run(i: u32, failed: bool) -> Finished {
        Finished {
            namespace: "ns".into(),
            agent: "a".into(),
            run: format!("r{i}"),
            uid: format!("u{i}"),
            finished_at: DateTime::from_timestamp(1_000 + i64::from(i), 0).unwrap_or_default(),
            failed,
        }
    }

    #[test]
    fn a_streak_of_clean_runs_asks_for_a_check_and_a_failure_breaks_it() {
        let mut t = Tracker::default();
        t.reset("ns", "a", None);
        let r = rules();
        assert_eq!(t.observe(&run(1, false), &r), Next::Nothing);
        assert_eq!(t.observe(&run(2, false), &r), Next::Nothing);
        assert_eq!(t.observe(&run(3, false), &r), Next::CheckStreak);
        assert_eq!(t.streak("ns", "a").len(), 3);
        // The same run again counts once.
        assert_eq!(t.observe(&run(3, false), &r), Next::Nothing);
        assert_eq!(t.observe(&run(4, true), &r), Next::Nothing, "1 of 4 failed: 25% < 50%");
        assert!(t.streak("ns", "a").is_empty());
    }

    #[test]
    fn a_settled_record_asks_for_no_more_checks_until_the_level_changes() {
        let mut t = Tracker::default();
        t.reset("ns", "a", None);
        let r = rules();
        for i in 1..=2 {
            assert_eq!(t.observe(&run(i, false), &r), Next::Nothing);
        }
        assert_eq!(t.observe(&run(3, false), &r), Next::CheckStreak);
        t.settle("ns", "a");
        for i in 4..=10 {
            assert_eq!(t.observe(&run(i, false), &r), Next::Nothing, "a suggestion is pending");
        }
        // Failures still count while settled.
        assert_eq!(t.observe(&run(11, true), &r), Next::Nothing);
        assert_eq!(t.observe(&run(12, true), &r), Next::Lower { failed: 2, total: 4 });
        // A level change starts a new record that may suggest again.
        t.reset("ns", "a", DateTime::from_timestamp(2_000, 0));
        for i in 2_001..=2_002 {
            assert_eq!(t.observe(&run(i - 1_000, false), &r), Next::Nothing);
        }
        assert_eq!(t.observe(&run(1_003, false), &r), Next::CheckStreak);
    }

    #[test]
    fn the_failure_rate_over_the_window_lowers_once_it_reaches_the_threshold() {
        let mut t = Tracker::default();
        t.reset("ns", "a", None);
        let r = rules();
        assert_eq!(t.observe(&run(1, true), &r), Next::Nothing, "one run is below min_runs");
        assert_eq!(t.observe(&run(2, true), &r), Next::Lower { failed: 2, total: 2 });
        // After a change, only runs that finished after it count.
        let changed = DateTime::from_timestamp(1_005, 0);
        t.reset("ns", "a", changed);
        assert_eq!(t.observe(&run(4, true), &r), Next::Nothing, "finished before the change");
        assert_eq!(t.observe(&run(6, false), &r), Next::Nothing);
        assert_eq!(t.observe(&run(7, false), &r), Next::Nothing);
        assert_eq!(t.observe(&run(8, true), &r), Next::Nothing, "1 of 3");
        assert_eq!(t.observe(&run(9, true), &r), Next::Lower { failed: 2, total: 4 });
        // A success never lowers; the window slides, the oldest falls out.
        assert_eq!(t.observe(&run(10, false), &r), Next::Nothing, "2 of 4, but a success");
        assert_eq!(t.observe(&run(11, false), &r), Next::Nothing);
        // [9F, 10, 11, 12F]: run 8's failure fell out of the window, 2 of 4 remain.
        assert_eq!(t.observe(&run(12, true), &r), Next::Lower { failed: 2, total: 4 });
    }

    #[test]
    fn unknown_agents_and_runs_that_do_not_count_are_ignored() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(&run(1, true), &rules()), Next::Nothing, "no record loaded");
        let denied = json!({"metadata": {"namespace": "ns", "name": "r", "uid": "u"},
            "spec": {"agentRef": {"name": "a"}},
            "status": {"phase": "Failed", "finishedAt": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Failed", "status": "True", "reason": "ApprovalDenied"}]}});
        assert_eq!(finished_of(&denied), None);
        let mut failed = denied.clone();
        failed["status"]["conditions"][0]["reason"] = json!("ExitCode");
        assert!(finished_of(&failed).is_some_and(|f| f.failed && f.agent == "a"));
        let mut cancelled = denied.clone();
        cancelled["status"]["phase"] = json!("Cancelled");
        assert_eq!(finished_of(&cancelled), None);
    }
}
