//! Daily summaries and anomaly rules (pure: the caller queries the entries and passes them in).

use std::borrow::Borrow;
use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::entry::{ActorKind, Entry};
use crate::outcomes::{self, decisions};
use crate::{actions, entry::Actor};

/// How many agents [`Summary::top_agents`] lists.
pub const TOP_AGENTS: usize = 10;

/// Thresholds of the anomaly rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AnomalyRules {
    /// `Burst` fires when an actor's actions in one clock hour exceed `burst_factor` × its
    /// baseline hourly mean …
    pub burst_factor: f64,
    /// … and number at least `burst_min`.
    pub burst_min: u64,
    /// `RepeatedDenials` fires when an actor is denied at least this many times …
    pub denials_threshold: u64,
    /// … within any window of this many minutes (`None`: within the day).
    pub denials_window_minutes: Option<u32>,
    /// Names of the environments whose class is production (compared case-insensitively).
    pub production_environments: Vec<String>,
    /// Working hours: `[start, end)` hours of the local day (`start > end` spans midnight).
    pub working_hours_start: u32,
    pub working_hours_end: u32,
    /// Offset of local time from UTC, in minutes (0: working hours are in UTC).
    pub utc_offset_minutes: i32,
    /// Whether Saturday and Sunday (local) are outside working hours.
    pub weekends_are_unusual: bool,
}

impl Default for AnomalyRules {
    fn default() -> Self {
        AnomalyRules {
            burst_factor: 10.0,
            burst_min: 50,
            denials_threshold: 5,
            denials_window_minutes: None,
            production_environments: vec!["production".to_owned()],
            working_hours_start: 8,
            working_hours_end: 18,
            utc_offset_minutes: 0,
            weekends_are_unusual: true,
        }
    }
}

impl AnomalyRules {
    fn is_production(&self, env: &str) -> bool {
        self.production_environments.iter().any(|p| p.eq_ignore_ascii_case(env))
    }

    fn is_working_time(&self, ts: &DateTime<Utc>) -> bool {
        let local = ts.naive_utc() + Duration::minutes(i64::from(self.utc_offset_minutes));
        if self.weekends_are_unusual && matches!(local.weekday(), Weekday::Sat | Weekday::Sun) {
            return false;
        }
        let (h, start, end) = (local.hour(), self.working_hours_start, self.working_hours_end);
        if start <= end { h >= start && h < end } else { h >= start || h < end }
    }
}

/// Each actor's usual hourly rate, from earlier days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Length of the period the counts cover, in hours.
    pub hours: u64,
    /// Actions per actor (`kind:id`) in the period.
    pub counts: BTreeMap<String, u64>,
}

impl Baseline {
    /// Count each actor's entries over a period of `days` days (e.g. the 7 days before the day
    /// summarized). Entries are not filtered: pass exactly the period's.
    pub fn from_entries<I>(entries: I, days: u32) -> Self
    where
        I: IntoIterator,
        I::Item: Borrow<Entry>,
    {
        let mut counts = BTreeMap::new();
        for e in entries {
            *counts.entry(actor_key(&e.borrow().actor)).or_insert(0) += 1;
        }
        Baseline { hours: u64::from(days) * 24, counts }
    }

    /// Mean actions per hour of `actor` (`kind:id`) over the period (0 if unknown).
    pub fn hourly_mean(&self, actor: &str) -> f64 {
        if self.hours == 0 {
            return 0.0;
        }
        // Counts and hours are far below 2^53: exact in f64.
        self.counts.get(actor).map_or(0.0, |&c| c as f64 / self.hours as f64)
    }
}

/// One day of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The UTC day.
    pub day: NaiveDate,
    /// Entries on that day.
    pub total: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub by_action: BTreeMap<String, u64>,
    pub by_outcome: BTreeMap<String, u64>,
    /// Keyed `kind:id`, e.g. `agent:deployer-7`.
    pub by_actor: BTreeMap<String, u64>,
    /// Entries without an environment are not counted here.
    pub by_environment: BTreeMap<String, u64>,
    pub denials: Denials,
    pub approvals: Approvals,
    /// The most active agents (actor kind agent), most active first (ties by id), at most
    /// [`TOP_AGENTS`].
    pub top_agents: Vec<AgentCount>,
    /// Ordered by first seq, then kind.
    pub anomalies: Vec<Anomaly>,
}

/// Entries with outcome `denied` or decision `deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Denials {
    pub total: u64,
    /// Keyed `kind:id`.
    pub by_actor: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approvals {
    /// `approval.requested` entries.
    pub requested: u64,
    /// `approval.decided` with outcome `success`.
    pub approved: u64,
    /// `approval.decided` with outcome `denied`.
    pub rejected: u64,
    /// `approval.expired` entries.
    pub expired: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentCount {
    /// The agent's id.
    pub id: String,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// Far more actions in one hour than the actor's usual rate.
    Burst,
    /// Many denials for one actor.
    RepeatedDenials,
    /// Actions in a production environment outside working hours.
    UnusualHours,
    /// Any `elevation.*` entry.
    ElevationUse,
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// `kind:id`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// How many entries the anomaly covers.
    pub count: u64,
    /// The first entry it covers.
    pub first_seq: u64,
    /// What happened, in plain words.
    pub detail: String,
}

/// `kind:id`, as used in summaries and baselines.
pub fn actor_key(actor: &Actor) -> String {
    let kind = match actor.kind {
        ActorKind::User => "user",
        ActorKind::Agent => "agent",
        ActorKind::System => "system",
    };
    format!("{kind}:{}", actor.id)
}

fn is_denial(e: &Entry) -> bool {
    e.outcome == outcomes::DENIED || e.decision.as_deref() == Some(decisions::DENY)
}

#[derive(Default)]
struct ActorDay {
    /// Per UTC hour: count and first seq.
    hours: [(u64, u64); 24],
    denials: Vec<(DateTime<Utc>, u64)>,
    /// Per environment: (count, first seq) of production actions outside working hours.
    off_hours: BTreeMap<String, (u64, u64)>,
    /// Per environment (or none): (count, first seq) of elevation entries.
    elevations: BTreeMap<Option<String>, (u64, u64)>,
}

fn bump(slot: &mut (u64, u64), seq: u64) {
    if slot.0 == 0 {
        slot.1 = seq;
    }
    slot.0 += 1;
}

/// Summarize the entries of the UTC day `day` (entries of other days are ignored) and apply the
/// anomaly rules. Memory grows with the number of actors and denials, not entries.
pub fn summarize<I>(day: NaiveDate, entries: I, baseline: &Baseline, rules: &AnomalyRules) -> Summary
where
    I: IntoIterator,
    I::Item: Borrow<Entry>,
{
    let mut s = Summary {
        day,
        total: 0,
        first_seq: None,
        last_seq: None,
        by_action: BTreeMap::new(),
        by_outcome: BTreeMap::new(),
        by_actor: BTreeMap::new(),
        by_environment: BTreeMap::new(),
        denials: Denials::default(),
        approvals: Approvals::default(),
        top_agents: Vec::new(),
        anomalies: Vec::new(),
    };
    let mut actors: BTreeMap<String, ActorDay> = BTreeMap::new();
    for e in entries {
        let e = e.borrow();
        if e.ts.date_naive() != day {
            continue;
        }
        s.total += 1;
        s.first_seq = Some(s.first_seq.map_or(e.seq, |f| f.min(e.seq)));
        s.last_seq = Some(s.last_seq.map_or(e.seq, |l| l.max(e.seq)));
        *s.by_action.entry(e.action.clone()).or_insert(0) += 1;
        *s.by_outcome.entry(e.outcome.clone()).or_insert(0) += 1;
        let actor = actor_key(&e.actor);
        *s.by_actor.entry(actor.clone()).or_insert(0) += 1;
        if let Some(env) = &e.environment {
            *s.by_environment.entry(env.clone()).or_insert(0) += 1;
        }
        match e.action.as_str() {
            actions::APPROVAL_REQUESTED => s.approvals.requested += 1,
            actions::APPROVAL_DECIDED if e.outcome == outcomes::SUCCESS => s.approvals.approved += 1,
            actions::APPROVAL_DECIDED if e.outcome == outcomes::DENIED => s.approvals.rejected += 1,
            actions::APPROVAL_EXPIRED => s.approvals.expired += 1,
            _ => {}
        }

        let day_of = actors.entry(actor.clone()).or_default();
        bump(&mut day_of.hours[e.ts.hour() as usize], e.seq);
        if is_denial(e) {
            s.denials.total += 1;
            *s.denials.by_actor.entry(actor).or_insert(0) += 1;
            day_of.denials.push((e.ts, e.seq));
        }
        if let Some(env) = &e.environment
            && e.actor.kind != ActorKind::System
            && rules.is_production(env)
            && !rules.is_working_time(&e.ts)
        {
            bump(day_of.off_hours.entry(env.clone()).or_default(), e.seq);
        }
        if e.action.starts_with("elevation.") {
            bump(day_of.elevations.entry(e.environment.clone()).or_default(), e.seq);
        }
    }

    let mut agents: Vec<AgentCount> = s
        .by_actor
        .iter()
        .filter_map(|(k, &count)| k.strip_prefix("agent:").map(|id| AgentCount { id: id.to_owned(), count }))
        .collect();
    agents.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.id.cmp(&b.id)));
    agents.truncate(TOP_AGENTS);
    s.top_agents = agents;

    for (actor, mut d) in actors {
        let mean = baseline.hourly_mean(&actor);
        for (hour, &(count, first_seq)) in d.hours.iter().enumerate() {
            // Counts are far below 2^53: exact in f64.
            if count >= rules.burst_min && count as f64 > rules.burst_factor * mean {
                s.anomalies.push(Anomaly {
                    kind: AnomalyKind::Burst,
                    actor: actor.clone(),
                    environment: None,
                    count,
                    first_seq,
                    detail: format!(
                        "{count} actions between {hour:02}:00 and {hour:02}:59 UTC; usual rate {mean:.2}/hour \
                         (fires above {}× that and at {} or more)",
                        rules.burst_factor, rules.burst_min
                    ),
                });
            }
        }
        if let Some((count, first_seq, within)) = denial_burst(&mut d.denials, rules)
            && count >= rules.denials_threshold
        {
            s.anomalies.push(Anomaly {
                kind: AnomalyKind::RepeatedDenials,
                actor: actor.clone(),
                environment: None,
                count,
                first_seq,
                detail: format!("{count} denials {within} (fires at {})", rules.denials_threshold),
            });
        }
        for (env, (count, first_seq)) in d.off_hours {
            s.anomalies.push(Anomaly {
                kind: AnomalyKind::UnusualHours,
                actor: actor.clone(),
                detail: format!(
                    "{count} actions in production environment {env} outside working hours \
                     ({:02}:00–{:02}:00, UTC{:+} minutes{})",
                    rules.working_hours_start,
                    rules.working_hours_end,
                    rules.utc_offset_minutes,
                    if rules.weekends_are_unusual { ", weekdays" } else { "" }
                ),
                environment: Some(env),
                count,
                first_seq,
            });
        }
        for (env, (count, first_seq)) in d.elevations {
            s.anomalies.push(Anomaly {
                kind: AnomalyKind::ElevationUse,
                actor: actor.clone(),
                detail: format!(
                    "{count} elevation entries{}",
                    env.as_deref().map(|e| format!(" in environment {e}")).unwrap_or_default()
                ),
                environment: env,
                count,
                first_seq,
            });
        }
    }
    s.anomalies.sort_by(|a, b| (a.first_seq, a.kind, &a.actor).cmp(&(b.first_seq, b.kind, &b.actor)));
    s
}

/// The most denials in one window (or the whole day): (count, first seq in it, wording).
fn denial_burst(denials: &mut [(DateTime<Utc>, u64)], rules: &AnomalyRules) -> Option<(u64, u64, String)> {
    let first = denials.first()?;
    let Some(minutes) = rules.denials_window_minutes else {
        let first_seq = denials.iter().map(|d| d.1).min().unwrap_or(first.1);
        return Some((denials.len() as u64, first_seq, "in the day".to_owned()));
    };
    denials.sort();
    let window = Duration::minutes(i64::from(minutes));
    let (mut best, mut best_start, mut lo) = (0usize, 0usize, 0usize);
    for hi in 0..denials.len() {
        while denials[hi].0 - denials[lo].0 >= window {
            lo += 1;
        }
        if hi + 1 - lo > best {
            best = hi + 1 - lo;
            best_start = lo;
        }
    }
    Some((best as u64, denials[best_start].1, format!("within {minutes} minutes")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testutil::sample_draft;
    use crate::{Actor, GENESIS_HASH};
    use chrono::TimeZone;

    /// Seal a list of (actor, action, outcome, decision, env, utc time) into entries.
    struct Log {
        entries: Vec<Entry>,
    }

    impl Log {
        fn new() -> Self {
            Log { entries: Vec::new() }
        }

        fn add(
            &mut self,
            actor: Actor,
            action: &str,
            outcome: &str,
            env: Option<&str>,
            ts: DateTime<Utc>,
        ) -> &mut Entry {
            let mut d = sample_draft();
            d.actor = actor;
            d.action = action.into();
            d.outcome = outcome.into();
            d.decision = None;
            d.environment = env.map(Into::into);
            let seq = self.entries.len() as u64 + 1;
            let prev = self.entries.last().map_or(GENESIS_HASH.to_owned(), |e| e.hash.clone());
            self.entries.push(d.seal(seq, ts, &prev));
            self.entries.last_mut().unwrap()
        }
    }

    /// Tuesday 2026-11-24.
    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, h, m, 0).unwrap()
    }

    fn kinds(s: &Summary) -> Vec<(AnomalyKind, &str)> {
        s.anomalies.iter().map(|a| (a.kind, a.actor.as_str())).collect()
    }

    #[test]
    fn counts() {
        let mut log = Log::new();
        log.add(Actor::user("ann"), actions::RESOURCE_CREATED, "success", Some("dev"), at(9, 0));
        log.add(Actor::agent("a1"), actions::RUN_SUBMITTED, "success", Some("dev"), at(9, 1));
        log.add(Actor::agent("a1"), actions::POLICY_DECIDED, "denied", Some("dev"), at(9, 2)).decision =
            Some("deny".into());
        log.add(Actor::agent("a2"), actions::POLICY_DECIDED, "success", None, at(9, 3)).decision = Some("deny".into());
        log.add(Actor::agent("a2"), actions::APPROVAL_REQUESTED, "pending", None, at(9, 4));
        log.add(Actor::user("bob"), actions::APPROVAL_DECIDED, "success", None, at(9, 5));
        log.add(Actor::user("bob"), actions::APPROVAL_DECIDED, "denied", None, at(9, 6));
        log.add(Actor::system("approvals"), actions::APPROVAL_EXPIRED, "expired", None, at(9, 7));
        log.add(Actor::agent("a2"), actions::RUN_STARTED, "success", None, at(9, 8));
        // Another day: ignored.
        log.add(Actor::agent("a9"), actions::RUN_STARTED, "success", None, at(9, 8) + Duration::days(1));

        let s = summarize(day(), &log.entries, &Baseline::default(), &AnomalyRules::default());
        assert_eq!(s.total, 9);
        assert_eq!((s.first_seq, s.last_seq), (Some(1), Some(9)));
        assert_eq!(s.by_action["approval.decided"], 2);
        assert_eq!(s.by_outcome["success"], 5);
        assert_eq!(s.by_actor["agent:a2"], 3);
        assert_eq!(s.by_actor["user:bob"], 2);
        assert!(!s.by_actor.contains_key("agent:a9"));
        assert_eq!(s.by_environment.get("dev"), Some(&3));
        // Denials: a1 (outcome denied + decision deny counted once), a2 (decision deny), bob's rejection.
        assert_eq!(s.denials.total, 3);
        assert_eq!(s.denials.by_actor["agent:a1"], 1);
        assert_eq!(s.approvals, Approvals { requested: 1, approved: 1, rejected: 1, expired: 1 });
        assert_eq!(
            s.top_agents,
            vec![AgentCount { id: "a2".into(), count: 3 }, AgentCount { id: "a1".into(), count: 2 }]
        );
        assert!(s.anomalies.is_empty(), "{:?}", s.anomalies);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["day"], "2026-11-24");
        assert_eq!(json["byActor"]["agent:a2"], 3);
        assert_eq!(json["topAgents"][0]["id"], "a2");
    }

    #[test]
    fn top_agents_keeps_ten_most_active() {
        let mut log = Log::new();
        for i in 0..12u32 {
            for _ in 0..=i {
                log.add(Actor::agent(format!("a{i:02}")), actions::RUN_STARTED, "success", None, at(10, 0));
            }
        }
        let s = summarize(day(), &log.entries, &Baseline::default(), &AnomalyRules::default());
        assert_eq!(s.top_agents.len(), 10);
        assert_eq!(s.top_agents[0], AgentCount { id: "a11".into(), count: 12 });
        assert_eq!(s.top_agents[9].id, "a02");
    }

    #[test]
    fn burst_fires_above_factor_times_baseline_and_min() {
        let rules = AnomalyRules { burst_factor: 10.0, burst_min: 20, ..AnomalyRules::default() };
        // Baseline: 7 days × 24 h, 336 actions = 2/hour.
        let mut history = Log::new();
        for i in 0..336 {
            history.add(
                Actor::agent("busy"),
                actions::RUN_STARTED,
                "success",
                None,
                at(0, 0) - Duration::hours(i / 2 + 1),
            );
        }
        for i in 0..24 {
            history.add(
                Actor::agent("quiet"),
                actions::RUN_STARTED,
                "success",
                None,
                at(0, 0) - Duration::hours(i + 1),
            );
        }
        let baseline = Baseline::from_entries(&history.entries, 7);
        assert!((baseline.hourly_mean("agent:busy") - 2.0).abs() < 1e-9);

        let mut log = Log::new();
        // busy: 20 in hour 10 (= 10×2, not above) and 21 in hour 11 (fires).
        for m in 0..20 {
            log.add(Actor::agent("busy"), actions::RUN_STARTED, "success", None, at(10, m));
        }
        for m in 0..21 {
            log.add(Actor::agent("busy"), actions::RUN_STARTED, "success", None, at(11, m));
        }
        // quiet: mean 1/7 per hour; 19 in one hour is far above but below burst_min.
        for m in 0..19 {
            log.add(Actor::agent("quiet"), actions::RUN_STARTED, "success", None, at(12, m));
        }
        // new: no baseline; 20 in one hour fires.
        for m in 0..20 {
            log.add(Actor::agent("new"), actions::RUN_STARTED, "success", None, at(13, m));
        }
        let s = summarize(day(), &log.entries, &baseline, &rules);
        assert_eq!(kinds(&s), vec![(AnomalyKind::Burst, "agent:busy"), (AnomalyKind::Burst, "agent:new")]);
        let busy = &s.anomalies[0];
        assert_eq!((busy.count, busy.first_seq), (21, 21));
        assert!(busy.detail.contains("11:00") && busy.detail.contains("2.00/hour"), "{}", busy.detail);
    }

    #[test]
    fn repeated_denials_in_the_day_or_a_window() {
        let mut log = Log::new();
        for h in [1, 5, 9, 13] {
            log.add(Actor::agent("d"), actions::POLICY_DECIDED, "denied", None, at(h, 0));
        }
        log.add(Actor::agent("d"), actions::RUN_STARTED, "success", None, at(14, 0));
        let rules = AnomalyRules { denials_threshold: 5, ..AnomalyRules::default() };
        assert!(summarize(day(), &log.entries, &Baseline::default(), &rules).anomalies.is_empty());
        log.add(Actor::agent("d"), actions::AUTH_FAILED, "denied", None, at(20, 0));
        let s = summarize(day(), &log.entries, &Baseline::default(), &rules);
        assert_eq!(kinds(&s), vec![(AnomalyKind::RepeatedDenials, "agent:d")]);
        assert_eq!((s.anomalies[0].count, s.anomalies[0].first_seq), (5, 1));

        // Within 10 minutes: 3 close together fire at threshold 3; spread ones do not.
        let windowed =
            AnomalyRules { denials_threshold: 3, denials_window_minutes: Some(10), ..AnomalyRules::default() };
        assert!(summarize(day(), &log.entries, &Baseline::default(), &windowed).anomalies.is_empty());
        for m in [30, 35, 39] {
            log.add(Actor::agent("d"), actions::POLICY_DECIDED, "denied", None, at(21, m));
        }
        let s = summarize(day(), &log.entries, &Baseline::default(), &windowed);
        assert_eq!(kinds(&s), vec![(AnomalyKind::RepeatedDenials, "agent:d")]);
        assert_eq!((s.anomalies[0].count, s.anomalies[0].first_seq), (3, 7));
        assert!(s.anomalies[0].detail.contains("within 10 minutes"));
    }

    #[test]
    fn unusual_hours_in_production_only() {
        let rules = AnomalyRules::default();
        let mut log = Log::new();
        log.add(Actor::user("ann"), actions::RESOURCE_UPDATED, "success", Some("production"), at(10, 0));
        log.add(Actor::user("ann"), actions::RESOURCE_UPDATED, "success", Some("staging"), at(3, 0));
        log.add(Actor::system("gc"), actions::RESOURCE_DELETED, "success", Some("production"), at(3, 0));
        let s = summarize(day(), &log.entries, &Baseline::default(), &rules);
        assert!(s.anomalies.is_empty(), "{:?}", s.anomalies);

        log.add(Actor::agent("night"), actions::RUN_STARTED, "success", Some("Production"), at(3, 0));
        log.add(Actor::agent("night"), actions::RUN_FINISHED, "success", Some("Production"), at(18, 0));
        let s = summarize(day(), &log.entries, &Baseline::default(), &rules);
        assert_eq!(kinds(&s), vec![(AnomalyKind::UnusualHours, "agent:night")]);
        let a = &s.anomalies[0];
        assert_eq!((a.count, a.first_seq, a.environment.as_deref()), (2, 4, Some("Production")));

        // With a UTC+9 offset, 03:00 UTC is 12:00 local (working) and 18:00 UTC is 03:00 local.
        let tokyo = AnomalyRules { utc_offset_minutes: 9 * 60, ..AnomalyRules::default() };
        let s = summarize(day(), &log.entries, &Baseline::default(), &tokyo);
        let night: Vec<_> = s.anomalies.iter().filter(|a| a.actor == "agent:night").collect();
        assert_eq!((night.len(), night[0].count, night[0].first_seq), (1, 1, 5));
        // Weekends: Saturday 2026-11-28 at noon.
        let mut sat = Log::new();
        let noon = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        sat.add(Actor::user("ann"), actions::RESOURCE_UPDATED, "success", Some("production"), noon);
        let saturday = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        assert_eq!(summarize(saturday, &sat.entries, &Baseline::default(), &rules).anomalies.len(), 1);
        let weekend_ok = AnomalyRules { weekends_are_unusual: false, ..AnomalyRules::default() };
        assert!(summarize(saturday, &sat.entries, &Baseline::default(), &weekend_ok).anomalies.is_empty());
    }

    #[test]
    fn working_hours_may_span_midnight() {
        let night_shift = AnomalyRules { working_hours_start: 22, working_hours_end: 6, ..AnomalyRules::default() };
        assert!(night_shift.is_working_time(&at(23, 0)) && night_shift.is_working_time(&at(5, 59)));
        assert!(!night_shift.is_working_time(&at(6, 0)) && !night_shift.is_working_time(&at(12, 0)));
    }

    #[test]
    fn elevation_use_is_always_flagged() {
        let mut log = Log::new();
        log.add(Actor::user("ann"), actions::RESOURCE_UPDATED, "success", Some("dev"), at(10, 0));
        let s = summarize(day(), &log.entries, &Baseline::default(), &AnomalyRules::default());
        assert!(s.anomalies.is_empty());
        log.add(Actor::user("ann"), actions::ELEVATION_REQUESTED, "pending", Some("dev"), at(10, 1));
        log.add(Actor::user("root"), actions::ELEVATION_GRANTED, "success", Some("dev"), at(10, 2));
        log.add(Actor::user("ann"), actions::ELEVATION_EXPIRED, "expired", Some("dev"), at(11, 0));
        let s = summarize(day(), &log.entries, &Baseline::default(), &AnomalyRules::default());
        assert_eq!(kinds(&s), vec![(AnomalyKind::ElevationUse, "user:ann"), (AnomalyKind::ElevationUse, "user:root")]);
        assert_eq!((s.anomalies[0].count, s.anomalies[0].first_seq), (2, 2));
        assert_eq!(serde_json::to_value(&s.anomalies[0]).unwrap()["kind"], "elevation_use");
    }
}
