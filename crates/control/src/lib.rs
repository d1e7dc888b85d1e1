//! agentplane's control-loop cores (DESIGN §4): the run scheduler and retry backoff.
//!
//! This crate owns *decisions*, not effects. [`Scheduler`] is the in-memory state the holder of
//! the leader lease keeps: which pending runs may start now under the per-Agent, per-namespace and
//! cluster caps, oldest first, and why the others are blocked. [`retry_delay`] and
//! [`next_retry_at`] compute when a failed attempt may be retried.
//!
//! The cores ([`scheduler`], [`backoff`]) must not do I/O: no store, no runtime, no clocks
//! (callers pass `now`), no randomness (callers pass the jitter sample), no async, no logging.
//! The exceptions are the effectful modules kept apart from them: [`controller`], which holds the
//! leader lease, rebuilds the scheduler from the store, follows its watch, starts runs on their
//! runtime and records every transition with its ledger entry; and [`retention`], the sweeper
//! that removes old finished runs and their files. The design is in `docs/scheduler.md`.
//!
//! ```
//! use agentplane_control::{Caps, CapKind, OrderKey, QueuedRun, RunKey, Scheduler};
//! use chrono::Utc;
//!
//! let mut s = Scheduler::new(Caps { per_namespace: 10, cluster: 100, default_per_agent: 1 });
//! for (i, name) in ["r1", "r2"].into_iter().enumerate() {
//!     s.enqueue(QueuedRun::new(RunKey::new("default", name), "coder", OrderKey::from_seq(i as u64)))?;
//! }
//! let started = s.dispatch(Utc::now());
//! assert_eq!(started.len(), 1);
//! assert_eq!(started[0].key, RunKey::new("default", "r1")); // oldest first
//! let blocked = s.blocked_reason(&RunKey::new("default", "r2")).expect("r2 waits");
//! assert_eq!(blocked.cap, CapKind::Agent);
//! assert_eq!(blocked.message, "agent default/coder has 1 of 1 runs in flight (maxInFlight)");
//! s.finished(&RunKey::new("default", "r1"));
//! assert_eq!(s.dispatch(Utc::now())[0].key, RunKey::new("default", "r2"));
//! # Ok::<(), agentplane_control::Error>(())
//! ```

pub mod backoff;
pub mod controller;
pub mod retention;
pub mod scheduler;

pub use backoff::{BackoffPolicy, next_retry_at, retry_delay};
pub use scheduler::{
    AgentKey, Blocked, CapKind, Caps, Dispatch, OrderKey, QueuedRun, RunKey, RunState, RunningRun, Scheduler,
    SchedulerCounts, blocked_condition,
};

/// Errors of this crate. All of them are the caller's mistake (a 4xx / do-not-retry class).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A run was enqueued or registered as running while the scheduler already tracks it.
    #[error("run {key} is already {state} in the scheduler")]
    DuplicateRun { key: RunKey, state: &'static str },
    /// A backoff policy from configuration is out of range.
    #[error("invalid backoff policy: {field} {message}")]
    InvalidBackoff { field: &'static str, message: String },
}
