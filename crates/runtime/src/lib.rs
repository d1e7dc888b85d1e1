//! agentplane runtime adapters (DESIGN §5): how an admitted AgentRun attempt becomes a running
//! agent, and how its outcome is read back.
//!
//! This crate owns the adapter contract ([`RuntimeAdapter`]: idempotent `submit` / `status` /
//! `cancel` with normalised [`RuntimeError`]s), template rendering ([`template::render`]), the
//! [`LocalAdapter`] (a child process in its own process group and session, in a run folder with a
//! scrubbed environment, capped log, timeout, artifacts and an optional git workspace) and the
//! [`CustomAdapter`] (the same contract over HTTP JSON).
//!
//! It must not decide *whether* a run may start (admission, policy, caps and retries belong to the
//! control plane), must not read the store, and never writes secret values anywhere but into the
//! agent's environment (or the trusted custom endpoint's request). The contract and file layout
//! are specified in `docs/runtime.md`.

pub mod custom;
pub mod error;
pub mod local;
pub mod spec;
pub mod template;

pub use custom::CustomAdapter;
pub use error::{ErrorKind, RuntimeError, TemplateError};
pub use local::{
    DEFAULT_READ_ONLY_PATHS, DEFAULT_WRITABLE_PATHS, LocalAdapter, LocalConfig, RunnerSetting, SandboxSettings,
};
pub use spec::{
    DEFAULT_LOG_CAP_BYTES, RunIdentity, RunSpec, RuntimeRef, RuntimeStatus, SecretValue, StatusReason, StepSpec,
    WorkspaceSpec,
};

pub use agentplane_api::{ArtifactStatus, RunPhase};

/// A way to run agents. Every method is idempotent:
///
/// - `submit` of the same run uid and attempt returns the same ref and never starts a second
///   process;
/// - `status` only reads;
/// - `cancel` of a finished (or already cancelling) run is `Ok`.
///
/// `submit` returns an error only when nothing was started and nothing was recorded; once it
/// returns a ref, every outcome (including a template error or a missing binary) is reported by
/// `status` as a `Failed` phase with a [`StatusReason`].
#[async_trait::async_trait]
pub trait RuntimeAdapter: Send + Sync {
    /// A short name (`local`, `custom`).
    fn name(&self) -> &str;
    async fn submit(&self, spec: &RunSpec) -> Result<RuntimeRef, RuntimeError>;
    async fn status(&self, r: &RuntimeRef) -> Result<RuntimeStatus, RuntimeError>;
    /// Asks the runtime to stop the run; returns once the request is taken (the phase becomes
    /// `Cancelled` when the process is gone).
    async fn cancel(&self, r: &RuntimeRef) -> Result<(), RuntimeError>;
    /// Notifications of attempts reaching a terminal phase, so a caller need not poll `status`
    /// often. `None` (the default) when the adapter cannot tell.
    ///
    /// The ref is sent once the terminal status is final: a `status` of it right after the
    /// notification returns that status. The channel is bounded: a receiver that falls behind
    /// gets [`tokio::sync::broadcast::error::RecvError::Lagged`] and misses notifications, and
    /// attempts that ended while no adapter watched them are only noticed when they are looked at
    /// — so callers must still poll `status` now and then (for example every few seconds, and
    /// at once after a `Lagged`).
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<RuntimeRef>> {
        None
    }
}
