//! Status writes of the controller: read–modify–write of a run's `status` with a
//! resourceVersion precondition, fenced by the leader lease, with the ledger entry of the
//! transition in the same transaction.

use agentplane_api::condition::{Condition, ConditionStatus};
use agentplane_api::{AgentRun, AgentRunStatus, Kind, RunPhase, StepStatus, WorkflowStatus};
use agentplane_ledger::{Actor, EntryDraft, actions, outcomes};
use agentplane_runtime::{RuntimeStatus, StatusReason};
use agentplane_store::{Lease, ObjectKey, Precondition, Store, StoreError, revision_of};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{CONTROLLER_ACTOR, ControllerError, decode};
use crate::scheduler::BLOCKED_CONDITION;
use crate::{BackoffPolicy, Blocked, RunKey, next_retry_at};

/// Condition type of a run whose attempt is executing.
pub const IN_PROGRESS_CONDITION: &str = "InProgress";
/// How many times a status write is re-read and re-applied after a conflict.
const CAS_ATTEMPTS: usize = 20;

/// How an attempt's end was recorded.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The run reached a terminal phase.
    Final,
    /// The run is `Pending` again: a retry at `at`, or the next workflow step (`at` = now).
    Retry { at: DateTime<Utc> },
    /// The run is gone or no longer `Running` (somebody else moved it).
    Gone,
}

pub(crate) use agentplane_api::condition::set_condition;

pub(crate) fn draft(action: &str, key: &RunKey, outcome: &str, params: Value) -> EntryDraft {
    let mut d = agentplane_store::resource_audit(Actor::system(CONTROLLER_ACTOR), action);
    d.namespace = Some(key.namespace.clone());
    d.run = Some(key.name.clone());
    d.outcome = outcome.to_string();
    d.params = params;
    d
}

/// The workflow status of `run`, with one entry per step (created on first use).
pub(crate) fn workflow_status(run: &AgentRun, st: &AgentRunStatus) -> Option<WorkflowStatus> {
    let steps = &run.spec.workflow.as_ref()?.steps;
    let mut w = st.workflow.clone().unwrap_or_default();
    if w.steps.len() != steps.len() {
        w.steps = steps.iter().map(|s| StepStatus { name: s.name.clone(), ..Default::default() }).collect();
        w.current_step = Some(0);
    }
    Some(w)
}

/// The terminal part of a status: phase, times, conditions.
fn finish(st: &mut AgentRunStatus, phase: RunPhase, reason: &str, message: &str, now: DateTime<Utc>) {
    st.phase = Some(phase);
    st.finished_at = Some(now);
    st.next_retry_at = None;
    st.updated_at = Some(now);
    st.conditions.retain(|c| c.type_ != BLOCKED_CONDITION);
    set_condition(&mut st.conditions, Condition::new(IN_PROGRESS_CONDITION, ConditionStatus::False, reason, "", now));
    let type_ = match phase {
        RunPhase::Succeeded => "Succeeded",
        RunPhase::Cancelled => "Cancelled",
        _ => "Failed",
    };
    st.conditions.retain(|c| !matches!(c.type_.as_str(), "Succeeded" | "Failed" | "Cancelled") || c.type_ == type_);
    set_condition(&mut st.conditions, Condition::new(type_, ConditionStatus::True, reason, message, now));
    if let Some(w) = st.workflow.as_mut() {
        w.current_step = None;
    }
}

/// Writes through the lease.
pub(crate) struct Writer<'a> {
    pub store: &'a dyn Store,
    pub lease: &'a Lease,
}

impl Writer<'_> {
    /// Read–modify–write of a run's `status`, re-read and re-applied on conflict. `apply` gets
    /// the run and its status and returns the ledger entry to record, or `None` to skip the
    /// write (the run is no longer in the expected state). Returns whether it wrote.
    pub(crate) async fn update_status(
        &self,
        key: &RunKey,
        mut apply: impl FnMut(&AgentRun, &mut AgentRunStatus) -> Option<EntryDraft>,
    ) -> Result<bool, ControllerError> {
        let okey = ObjectKey::new(Kind::AgentRun, &key.namespace, &key.name);
        for _ in 0..CAS_ATTEMPTS {
            let mut obj = match self.store.get(&okey).await {
                Ok(o) => o,
                Err(StoreError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let run = decode(&obj)?;
            let mut st = run.status.clone().unwrap_or_default();
            let Some(audit) = apply(&run, &mut st) else { return Ok(false) };
            let rv = revision_of(&obj).unwrap_or(0);
            let st = serde_json::to_value(&st)
                .map_err(|e| ControllerError::Decode { key: key.to_string(), message: e.to_string() })?;
            if let Some(m) = obj.as_object_mut() {
                m.insert("status".into(), st);
            }
            match self.store.update_fenced(obj, Precondition::ResourceVersion(rv), audit, self.lease).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControllerError::TooManyConflicts { key: key.to_string() })
    }

    /// Records that a cap holds a pending run back (`Blocked`/`ConcurrencyLimit`, `run.blocked`).
    pub(crate) async fn blocked(&self, key: &RunKey, b: &Blocked, now: DateTime<Utc>) -> Result<bool, ControllerError> {
        let c = b.condition(now);
        self.update_status(key, |_, st| {
            if st.phase.unwrap_or_default() != RunPhase::Pending {
                return None;
            }
            let already = st.conditions.iter().any(|x| x.type_ == c.type_ && x.status == c.status && x.message == c.message);
            if already {
                return None;
            }
            set_condition(&mut st.conditions, c.clone());
            st.updated_at = Some(now);
            Some(draft(
                actions::RUN_BLOCKED,
                key,
                outcomes::SUCCESS,
                json!({"cap": format!("{:?}", b.cap).to_lowercase(), "inFlight": b.in_flight, "limit": b.limit, "message": b.message}),
            ))
        })
        .await
    }

    /// Ends a run that never started this attempt (`from`: the phase it must be in).
    pub(crate) async fn end_without_start(
        &self,
        key: &RunKey,
        from: RunPhase,
        phase: RunPhase,
        reason: &str,
        message: &str,
    ) -> Result<bool, ControllerError> {
        let now = Utc::now();
        self.update_status(key, |_, st| {
            if st.phase.unwrap_or_default() != from {
                return None;
            }
            finish(st, phase, reason, message, now);
            if let Some(w) = st.workflow.as_mut()
                && let Some(s) = w.steps.iter_mut().find(|s| !s.phase.is_terminal())
                && phase != RunPhase::Succeeded
            {
                s.phase = phase;
                s.reason = reason.to_string();
                s.message = message.to_string();
                s.finished_at = Some(now);
            }
            let mut d = draft(
                actions::RUN_FINISHED,
                key,
                if phase == RunPhase::Succeeded { outcomes::SUCCESS } else { outcomes::FAILURE },
                json!({"attempt": st.attempt.unwrap_or(0), "phase": phase.as_str(), "reason": reason, "started": false}),
            );
            d.error = Some(message.to_string());
            Some(d)
        })
        .await
    }

    /// Records the end of the attempt running for `key`: the run's end, a retry, or the next
    /// workflow step.
    pub(crate) async fn attempt_ended(
        &self,
        key: &RunKey,
        status: RuntimeStatus,
        timed_out: bool,
        backoff: &BackoffPolicy,
        jitter_sample: f64,
    ) -> Result<Ended, ControllerError> {
        let now = Utc::now();
        let mut outcome = Ended::Gone;
        let written = self
            .update_status(key, |run, st| {
                if st.phase.unwrap_or_default() != RunPhase::Running {
                    return None;
                }
                let (d, o) = decide(run, st, &status, timed_out, backoff, jitter_sample, now, key);
                outcome = o;
                Some(d)
            })
            .await?;
        Ok(if written { outcome } else { Ended::Gone })
    }
}

/// What an attempt's end means for its run; changes `st` and returns the ledger entry.
#[allow(clippy::too_many_arguments)]
fn decide(
    run: &AgentRun,
    st: &mut AgentRunStatus,
    status: &RuntimeStatus,
    timed_out: bool,
    backoff: &BackoffPolicy,
    jitter_sample: f64,
    now: DateTime<Utc>,
    key: &RunKey,
) -> (EntryDraft, Ended) {
    let attempt = st.attempt.unwrap_or(1).max(1);
    let cancel_requested = st.cancel_requested_at.is_some();
    // What the attempt's end was, from the control plane's point of view.
    let (mut phase, mut reason, mut retryable) = (
        status.phase,
        status.reason.map(StatusReason::as_str).unwrap_or(match status.phase {
            RunPhase::Succeeded => "Completed",
            RunPhase::Cancelled => "Cancelled",
            _ => "Failed",
        }),
        status.retryable,
    );
    let mut message = status.message.clone().unwrap_or_else(|| match (status.phase, status.exit_code) {
        (RunPhase::Succeeded, _) => "the agent exited 0".to_string(),
        (_, Some(c)) => format!("the agent exited {c}"),
        _ => format!("the attempt ended {}", status.phase.as_str()),
    });
    if phase == RunPhase::Cancelled && !cancel_requested {
        // Nobody here asked: a deadline the controller enforced, or the runtime gave up on it.
        phase = RunPhase::Failed;
        retryable = true;
        if timed_out {
            reason = "TimedOut";
            message =
                format!("timeoutSeconds ({}s) passed; the attempt was stopped", run.spec.timeout_seconds.unwrap_or(0));
        } else {
            reason = "Lost";
            message = "the runtime stopped the attempt though nobody asked".into();
        }
    } else if timed_out && phase == RunPhase::Failed {
        reason = "TimedOut";
        retryable = true;
    }
    if cancel_requested && phase != RunPhase::Succeeded {
        phase = RunPhase::Cancelled;
        reason = "Cancelled";
        message = format!("cancelled by {}", st.cancel_requested_by.clone().unwrap_or_else(|| "a user".into()));
        retryable = false;
    }
    st.exit_code = status.exit_code;
    // The runtime's own spawn time is more precise than when the start was recorded.
    if let Some(t) = status.started_at.filter(|t| st.started_at.is_none_or(|s| *t >= s)) {
        st.started_at = Some(t);
    }
    st.log_truncated |= status.log_truncated;
    if status.sandbox.is_some() {
        st.sandbox = status.sandbox.as_deref().cloned();
    }
    if status.base_commit.is_some() {
        st.base_commit.clone_from(&status.base_commit);
    }
    if !status.artifacts.is_empty() {
        st.artifacts = status.artifacts.clone();
    }
    let ended_at = status.finished_at.unwrap_or(now);

    // Workflow bookkeeping.
    let steps = run.spec.workflow.as_ref().map(|w| w.steps.as_slice()).unwrap_or_default();
    let mut wf = workflow_status(run, st);
    let cur = wf.as_ref().and_then(|w| w.current_step).unwrap_or(0) as usize;
    if let Some(w) = wf.as_mut()
        && let Some(s) = w.steps.get_mut(cur)
    {
        s.phase = phase;
        s.exit_code = status.exit_code;
        s.finished_at = Some(ended_at);
        s.reason = reason.to_string();
        s.message = message.clone();
        s.next_retry_at = None;
    }
    let step_attempts = wf.as_ref().and_then(|w| w.steps.get(cur)).map_or(attempt, |s| s.attempts.max(1));
    let step_spec = steps.get(cur);

    // The next workflow step.
    if phase == RunPhase::Succeeded && wf.is_some() && cur + 1 < steps.len() {
        if let Some(w) = wf.as_mut() {
            w.current_step = u32::try_from(cur + 1).ok();
        }
        st.workflow = wf;
        st.runtime_ref = None;
        st.phase = Some(RunPhase::Pending);
        st.next_retry_at = None;
        st.finished_at = None;
        st.updated_at = Some(now);
        let next = steps.get(cur + 1).map(|s| s.name.clone()).unwrap_or_default();
        set_condition(
            &mut st.conditions,
            Condition::new(
                IN_PROGRESS_CONDITION,
                ConditionStatus::True,
                "StepSucceeded",
                format!("step {} succeeded; step {next} is next", steps[cur].name),
                now,
            ),
        );
        let d = draft(
            actions::RUN_RETRIED,
            key,
            outcomes::SUCCESS,
            json!({"attempt": attempt, "nextAttempt": attempt + 1, "reason": "StepSucceeded", "step": steps[cur].name, "nextStep": next, "nextRetryAt": now}),
        );
        return (d, Ended::Retry { at: now });
    }

    // A retry.
    let limit = step_spec.and_then(|s| s.retries).or(run.spec.retry_limit).unwrap_or(0);
    if phase == RunPhase::Failed && retryable && step_attempts <= limit {
        let policy = match step_spec.and_then(|s| s.retry_backoff_seconds) {
            Some(base) => BackoffPolicy {
                base: std::time::Duration::from_secs(base.max(1)),
                max: backoff.max.max(std::time::Duration::from_secs(base.max(1))),
                jitter: backoff.jitter,
            },
            None => *backoff,
        };
        let at = next_retry_at(now, step_attempts, &policy, jitter_sample);
        if let Some(w) = wf.as_mut()
            && let Some(s) = w.steps.get_mut(cur)
        {
            s.phase = RunPhase::Pending;
            s.next_retry_at = Some(at);
        }
        st.workflow = wf;
        st.runtime_ref = None;
        st.phase = Some(RunPhase::Pending);
        st.next_retry_at = Some(at);
        st.finished_at = None;
        st.updated_at = Some(now);
        set_condition(
            &mut st.conditions,
            Condition::new(
                IN_PROGRESS_CONDITION,
                ConditionStatus::False,
                reason,
                format!("attempt {attempt} failed ({message}); retrying at {}", at.to_rfc3339()),
                now,
            ),
        );
        let d = draft(
            actions::RUN_RETRIED,
            key,
            outcomes::SUCCESS,
            json!({"attempt": attempt, "nextAttempt": attempt + 1, "nextRetryAt": at, "reason": reason, "message": message, "exitCode": status.exit_code}),
        );
        return (d, Ended::Retry { at });
    }

    // The end of the run.
    st.workflow = wf;
    finish(st, phase, reason, &message, now);
    st.finished_at = Some(ended_at);
    let outcome = if phase == RunPhase::Succeeded { outcomes::SUCCESS } else { outcomes::FAILURE };
    let mut d = draft(
        actions::RUN_FINISHED,
        key,
        outcome,
        json!({"attempt": attempt, "phase": phase.as_str(), "exitCode": status.exit_code, "reason": reason}),
    );
    if phase != RunPhase::Succeeded {
        d.error = Some(message);
    }
    (d, Ended::Final)
}
