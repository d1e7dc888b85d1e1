//! Starting one dispatched run: read it, resolve what it references, submit it to its runtime
//! and record `Running` — in a task of its own, reporting a [`StartOutcome`].

use std::collections::BTreeMap;
use std::path::Path;

use agentplane_api::condition::{Condition, ConditionStatus};
use agentplane_api::{
    AgentProviderSpec, AgentRun, AgentSpec, ImplementationSpecSpec, Kind, MemorySpec, Reference, RunPhase,
};
use agentplane_ledger::{actions, outcomes};
use agentplane_runtime::{RunSpec, SecretValue, WorkspaceSpec};
use agentplane_store::{Lease, ObjectKey, StoreError};
use chrono::Utc;
use serde_json::{Value, json};

use super::write::{IN_PROGRESS_CONDITION, Writer, draft, set_condition, workflow_status};
use super::{Ctx, StartOutcome, deadline_of, decode};
use crate::RunKey;
use crate::scheduler::BLOCKED_CONDITION;

/// Why a run cannot start: a `Failed` reason and message (never retried).
struct Unstartable {
    reason: &'static str,
    message: String,
}

fn unstartable(reason: &'static str, message: impl Into<String>) -> Unstartable {
    Unstartable { reason, message: message.into() }
}

/// After this many retryable submit failures in a row, the run ends `Failed`/`SubmitFailed`.
pub(crate) const MAX_SUBMIT_FAILURES: u32 = 5;

/// Starts the run `key` if it is still `Pending`. `failures`: retryable submit failures of this
/// run so far (each retry waits twice as long, from 1 s).
/// `agent` is the run's agent as the scheduler knows it: read at the same time as the run (the
/// read is used only if the run still names that agent).
pub(crate) async fn start(ctx: &Ctx, lease: &Lease, key: RunKey, agent: &str, failures: u32) -> StartOutcome {
    let w = Writer { store: ctx.store.as_ref(), lease };
    let delay = chrono::Duration::seconds(1_i64 << failures.min(6));
    let retry_soon = |key: RunKey| StartOutcome::Requeue { key, at: Utc::now() + delay, submit_failed: false };
    let run_key = ObjectKey::new(Kind::AgentRun, &key.namespace, &key.name);
    let (obj, agent_read) = tokio::join!(
        ctx.store.get(&run_key),
        spec_of::<AgentSpec>(ctx, Kind::Agent, &key.namespace, agent, "MissingAgent"),
    );
    let obj = match obj {
        Ok(o) => o,
        Err(StoreError::NotFound(_)) => return StartOutcome::Skipped { key },
        Err(e) => {
            tracing::warn!(run = %key, error = %e, "controller: cannot read a dispatched run; requeued");
            return retry_soon(key);
        }
    };
    let Ok(run) = decode(&obj) else { return StartOutcome::Skipped { key } };
    let st = run.status.clone().unwrap_or_default();
    if st.phase.unwrap_or_default() != RunPhase::Pending {
        // A stale event queued a run that has moved on.
        return StartOutcome::Skipped { key };
    }
    let fail = |e: super::ControllerError, key: RunKey| {
        if e.is_fenced() {
            StartOutcome::Fenced { key }
        } else {
            tracing::warn!(run = %key, error = %e, "controller: cannot record a run's end");
            StartOutcome::Requeue { key, at: Utc::now() + chrono::Duration::seconds(1), submit_failed: false }
        }
    };
    if st.cancel_requested_at.is_some() {
        let by = st.cancel_requested_by.clone().unwrap_or_else(|| "a user".into());
        let msg = format!("cancelled by {by} before it started");
        return match w.end_without_start(&key, RunPhase::Pending, RunPhase::Cancelled, "Cancelled", &msg).await {
            Ok(_) => StartOutcome::Ended { key },
            Err(e) => fail(e, key),
        };
    }
    let attempt = st.attempt.unwrap_or(0) + 1;
    let prepared = match ctx.adapter_for(&run) {
        Ok(a) => {
            let agent_read = (run.spec.agent_ref.name == agent).then_some(agent_read);
            resolve(ctx, &run, attempt, agent_read).await.map(|spec| (a, spec))
        }
        Err(m) => Err(unstartable("InvalidRuntime", m)),
    };
    let (adapter, spec) = match prepared {
        Ok(p) => p,
        Err(u) => {
            tracing::warn!(run = %key, reason = u.reason, message = %u.message, "controller: run cannot start");
            return match w.end_without_start(&key, RunPhase::Pending, RunPhase::Failed, u.reason, &u.message).await {
                Ok(_) => StartOutcome::Ended { key },
                Err(e) => fail(e, key),
            };
        }
    };
    let runtime_ref = match adapter.get().submit(&spec).await {
        Ok(r) => r,
        Err(e) if e.retryable() && failures + 1 < MAX_SUBMIT_FAILURES => {
            tracing::warn!(run = %key, error = %e, "controller: submit failed; requeued");
            return StartOutcome::Requeue { key, at: Utc::now() + delay, submit_failed: true };
        }
        Err(e) if e.retryable() => {
            let msg = format!("the runtime refused the run {MAX_SUBMIT_FAILURES} times in a row; last: {e}");
            return match w.end_without_start(&key, RunPhase::Pending, RunPhase::Failed, "SubmitFailed", &msg).await {
                Ok(_) => StartOutcome::Ended { key },
                Err(e) => fail(e, key),
            };
        }
        Err(e) => {
            let msg = e.to_string();
            return match w.end_without_start(&key, RunPhase::Pending, RunPhase::Failed, "SubmitFailed", &msg).await {
                Ok(_) => StartOutcome::Ended { key },
                Err(e) => fail(e, key),
            };
        }
    };
    let now = Utc::now();
    let r = runtime_ref.clone();
    let written = w
        .update_status(&key, |run, st| {
            if st.phase.unwrap_or_default() != RunPhase::Pending || st.cancel_requested_at.is_some() {
                return None;
            }
            let mut step_name = None;
            st.workflow = workflow_status(run, st);
            if let Some(wf) = st.workflow.as_mut() {
                let cur = wf.current_step.unwrap_or(0) as usize;
                if let Some(s) = wf.steps.get_mut(cur) {
                    s.phase = RunPhase::Running;
                    s.attempts += 1;
                    s.started_at = Some(now);
                    s.finished_at = None;
                    s.next_retry_at = None;
                    s.exit_code = None;
                    step_name = Some(s.name.clone());
                }
            }
            st.phase = Some(RunPhase::Running);
            st.started_at = Some(now);
            st.finished_at = None;
            st.exit_code = None;
            st.next_retry_at = None;
            st.attempt = Some(attempt);
            st.runtime_ref = Some(r.0.clone());
            st.updated_at = Some(now);
            st.conditions.retain(|c| c.type_ != BLOCKED_CONDITION);
            let msg = match &step_name {
                Some(s) => format!("attempt {attempt} (step {s}) started"),
                None => format!("attempt {attempt} started"),
            };
            set_condition(
                &mut st.conditions,
                Condition::new(IN_PROGRESS_CONDITION, ConditionStatus::True, "Started", msg, now),
            );
            Some(draft(
                actions::RUN_STARTED,
                &key,
                outcomes::SUCCESS,
                json!({"attempt": attempt, "runtimeRef": r.as_str(), "step": step_name}),
            ))
        })
        .await;
    match written {
        Ok(true) => {
            let deadline = deadline_of(&run, now, ctx.cfg.grace);
            StartOutcome::Started { key, runtime_ref, adapter, deadline }
        }
        Ok(false) => {
            // The run changed under us (deleted, cancelled): stop what we started.
            let _ = adapter.get().cancel(&runtime_ref).await;
            StartOutcome::Skipped { key }
        }
        Err(e) => {
            // Not recorded: stop the attempt. Should the run be started again with the same
            // attempt number, the runtime reports this attempt as cancelled although nobody asked,
            // which the controller treats as a lost, retryable attempt.
            let _ = adapter.get().cancel(&runtime_ref).await;
            fail(e, key)
        }
    }
}

async fn spec_of<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    kind: Kind,
    ns: &str,
    name: &str,
    missing: &'static str,
) -> Result<T, Unstartable> {
    let obj = match ctx.store.get(&ObjectKey::new(kind, ns, name)).await {
        Ok(o) => o,
        Err(StoreError::NotFound(_)) => {
            return Err(unstartable(missing, format!("{} {ns}/{name} does not exist", kind.as_str())));
        }
        Err(e) => return Err(unstartable("ResolveFailed", format!("reading {} {ns}/{name}: {e}", kind.as_str()))),
    };
    serde_json::from_value(obj.get("spec").cloned().unwrap_or(Value::Null))
        .map_err(|e| unstartable("ResolveFailed", format!("{} {ns}/{name}: {e}", kind.as_str())))
}

/// Builds the adapter's spec from the run and what it references (for a workflow, the current
/// step's task and parameters).
///
/// `agent_read` is the Agent already read (see [`start`]). The provider, the implementation spec
/// and the memory are read concurrently; a missing one is reported in that order.
async fn resolve(
    ctx: &Ctx,
    run: &AgentRun,
    attempt: u32,
    agent_read: Option<Result<AgentSpec, Unstartable>>,
) -> Result<RunSpec, Unstartable> {
    let ns = run.metadata.namespace_or_default();
    let agent_name = run.spec.agent_ref.name.clone();
    let agent: AgentSpec = match agent_read {
        Some(a) => a?,
        None => spec_of(ctx, Kind::Agent, ns, &agent_name, "MissingAgent").await?,
    };
    let provider_name = agent.provider_ref.name.clone();
    let implementation_of = |inline: &Option<agentplane_api::InlineImplementation>, r: &Option<Reference>| {
        (inline.as_ref().map(|i| i.inline.clone()), r.as_ref().map(|r| r.name.clone()))
    };
    let mut parameters = run.spec.parameters.clone();
    let (mut inline, mut by_ref) = implementation_of(&run.spec.implementation, &run.spec.implementation_spec_ref);
    let mut step = None;
    if let Some(wf) = &run.spec.workflow {
        let st = run.status.clone().unwrap_or_default();
        let cur = st.workflow.as_ref().and_then(|w| w.current_step).unwrap_or(0);
        let s = wf.steps.get(cur as usize).ok_or_else(|| {
            unstartable("ResolveFailed", format!("workflow step {cur} does not exist ({} steps)", wf.steps.len()))
        })?;
        let (i, r) = implementation_of(&s.implementation, &s.implementation_spec_ref);
        if i.is_some() || r.is_some() {
            (inline, by_ref) = (i, r);
        }
        parameters.extend(s.parameters.clone());
        step = Some(agentplane_runtime::StepSpec {
            index: cur,
            name: s.name.clone(),
            count: u32::try_from(wf.steps.len()).unwrap_or(u32::MAX),
        });
    }
    let memory_ref = run.spec.memory_ref.as_ref().or(agent.memory_ref.as_ref());
    let (provider, implementation, memory) = tokio::join!(
        spec_of::<AgentProviderSpec>(ctx, Kind::AgentProvider, ns, &provider_name, "MissingProvider"),
        async {
            match (inline, by_ref) {
                (Some(i), _) => Ok(i),
                (None, Some(name)) => {
                    spec_of::<ImplementationSpecSpec>(ctx, Kind::ImplementationSpec, ns, &name, "MissingImplementation")
                        .await
                }
                (None, None) => Err(unstartable(
                    "MissingImplementation",
                    "the run has neither implementation.inline nor implementationSpecRef",
                )),
            }
        },
        async {
            match memory_ref {
                Some(m) => spec_of::<MemorySpec>(ctx, Kind::Memory, ns, &m.name, "MissingMemory")
                    .await
                    .map(|spec| Some(json!({"name": m.name, "type": spec.type_, "capabilities": spec.capabilities}))),
                None => Ok(None),
            }
        },
    );
    let (provider, implementation, memory) = (provider?, implementation?, memory?);
    let secrets = load_secrets(ctx.cfg.secrets_dir.as_deref(), &run.spec.secrets, &agent)?;
    let limits = agent.limits.or(&ctx.cfg.limit_defaults);
    if let Some((field, v, max)) = limits.exceeds(&ctx.cfg.limit_maximums) {
        return Err(unstartable(
            "LimitExceedsMaximum",
            format!(
                "the Agent's spec.limits.{field} (or the server default) is {v}, above the server maximum {max} \
                 ([sandbox.maximums] {field}); lower it on the Agent"
            ),
        ));
    }
    let uid = run.metadata.uid.clone().unwrap_or_else(|| format!("{ns}-{}", run.metadata.name));
    let mut spec = RunSpec::new(ns, &run.metadata.name, &uid, provider);
    spec.attempt = attempt;
    spec.run_spec = run.spec.clone();
    spec.provider_name = provider_name;
    spec.agent_name = agent_name;
    spec.agent = agent;
    spec.implementation = implementation;
    spec.parameters = parameters;
    spec.memory = memory;
    spec.secrets = secrets;
    spec.step = step;
    spec.workspace =
        run.spec.workspace.as_ref().map(|w| WorkspaceSpec { repository: w.repository.clone(), ref_: w.ref_.clone() });
    spec.timeout_seconds = run.spec.timeout_seconds;
    spec.limits = limits;
    spec.token = ctx.cfg.run_tokens.as_ref().map(|m| SecretValue::new((m.0)(ns, &run.metadata.name, &uid, attempt)));
    Ok(spec)
}

/// Reads the secrets a run asks for (admission checked them against the Agent's
/// `security.allowedSecrets`; this checks again, failing closed). A secret is a file
/// `<dir>/<name>` (its content, one trailing newline removed) or a folder `<dir>/<name>/` whose
/// files are the keys (`name/key`). Files readable by group or others are refused.
fn load_secrets(
    dir: Option<&Path>,
    names: &[String],
    agent: &AgentSpec,
) -> Result<BTreeMap<String, SecretValue>, Unstartable> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let allowed = agent.security.allowed_secrets.as_slice();
    let Some(dir) = dir else {
        return Err(unstartable("SecretNotFound", "the run asks for secrets but the server has no secrets.dir"));
    };
    let read = |path: &Path, what: &str| -> Result<String, Unstartable> {
        let meta = std::fs::metadata(path)
            .map_err(|e| unstartable("SecretNotFound", format!("secret {what}: cannot read it: {}", e.kind())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(unstartable(
                "SecretNotFound",
                format!("secret {what} is readable by group or others; chmod 600 {}", path.display()),
            ));
        }
        let mut v = std::fs::read_to_string(path)
            .map_err(|e| unstartable("SecretNotFound", format!("secret {what}: cannot read it: {}", e.kind())))?;
        if v.ends_with('\n') {
            v.pop();
        }
        Ok(v)
    };
    for name in names {
        if !allowed.iter().any(|a| a == name) {
            return Err(unstartable(
                "SecretNotAllowed",
                format!("secret {name:?} is not in the Agent's allowedSecrets"),
            ));
        }
        if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
            return Err(unstartable("SecretNotFound", format!("secret name {name:?} cannot name a file")));
        }
        let path = dir.join(name);
        if path.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| unstartable("SecretNotFound", format!("secret {name}: {}", e.kind())))?;
            for e in entries.flatten() {
                let k = e.file_name().to_string_lossy().into_owned();
                let v = read(&e.path(), &format!("{name}/{k}"))?;
                out.insert(format!("{name}/{k}"), SecretValue::new(v));
            }
        } else {
            out.insert(name.clone(), SecretValue::new(read(&path, name)?));
        }
    }
    Ok(out)
}
