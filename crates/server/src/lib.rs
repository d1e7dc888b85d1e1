//! The agentplane server: the HTTP API over the store, wired with configuration, logging,
//! graceful shutdown and the development example loader.
//!
//! This crate owns routing, request decoding and limits, admission (decode → check against the
//! URL → defaults → validation), the API error format, the OpenAPI document, and process
//! lifecycle. Domain rules live in `agentplane-api`; persistence lives behind
//! `agentplane_store::Store`. It must not hold state that the store does not: any replica can
//! serve any request.

pub mod admission;
pub mod approvals;
pub mod auth;
pub mod body;
pub mod config;
pub mod earned;
pub mod error;
pub mod examples;
pub mod ledger;
pub mod openapi;
pub mod resources;
pub mod runs;
pub mod sandbox;
pub mod storage;
pub mod takeover;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentplane_store::Store;
use agentplane_store_sqlite::{SqliteOptions, SqliteStore, Synchronous};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, ConfigError, ServerArgs};
use error::{ApiError, ErrorCode};

/// Shared state of every handler.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Objects admission resolves, cached briefly (see `admission::AdmissionCache`).
    pub admission_cache: Arc<admission::AdmissionCache>,
    /// Signs ledger checkpoints; its public half is served for verification.
    pub ledger_key: Arc<agentplane_ledger::LedgerKey>,
    /// Flips to `true` when shutdown starts; long-lived streams end on it.
    pub shutdown: watch::Receiver<bool>,
    /// Authentication: token cache, run token key, OIDC, rate limits.
    pub auth: Arc<auth::Auth>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Error starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot prepare data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("ledger key: {0}")]
    Key(String),
    #[error("authentication setup: {0}")]
    Auth(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] agentplane_store::StoreError),
    #[error("loading examples: {0}")]
    Examples(String),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// The API router over a store.
pub fn router(state: Arc<AppState>) -> Router {
    let authn = axum::middleware::from_fn_with_state(state.clone(), auth::middleware);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/openapi.json", get(openapi_json))
        .route("/api/v1/version", get(version))
        .route("/api/v1/ledger/public-key", get(ledger::public_key))
        .route("/api/v1/ledger/entries", get(ledger::entries))
        .route("/api/v1/ledger/checkpoints", get(ledger::checkpoints))
        .route("/api/v1/ledger/export", get(ledger::export))
        .route("/api/v1/ledger/summary", get(ledger::summary))
        .route("/api/v1/tokens", get(auth::api::list).post(auth::api::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(auth::api::revoke))
        .route("/api/v1/{plural}", get(resources::list_all))
        .route("/api/v1/namespaces/{namespace}/{plural}", get(resources::list_namespaced).post(resources::create))
        .route(
            "/api/v1/namespaces/{namespace}/{plural}/{name}",
            get(resources::get_one).put(resources::put).delete(resources::delete),
        )
        .route("/api/v1/namespaces/{namespace}/agentruns/{name}/cancel", axum::routing::post(runs::cancel))
        .route("/api/v1/namespaces/{namespace}/takeover", get(takeover::view))
        .route("/api/v1/namespaces/{namespace}/approvals/{name}/{action}", axum::routing::post(approvals::decide))
        .route(
            "/api/v1/namespaces/{namespace}/environments/{name}/elevation",
            axum::routing::post(approvals::request_elevation),
        )
        .route("/api/v1/namespaces/{namespace}/{plural}/{name}/takeover", axum::routing::post(takeover::set))
        .route("/api/v1/namespaces/{namespace}/agentruns/{name}/logs", get(runs::logs))
        .route("/api/v1/namespaces/{namespace}/agentruns/{name}/events", get(runs::events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(authn)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(ErrorCode::Internal, "internal error; see the server log").into_response()
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see /api/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this endpoint; see /api/openapi.json")
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if *st.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "shutting down"}))).into_response();
    }
    match st.store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "store unavailable"}))).into_response()
        }
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "apiVersion": agentplane_api::API_VERSION}))
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::openapi())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests starting several servers in one process) keeps the first subscriber.
    let _ = match config.log_format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

fn prepare_data_dir(dir: &Path) -> Result<(), ServerError> {
    let err = |source| ServerError::DataDir { dir: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Open the store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    prepare_data_dir(&config.data_dir)?;
    let options = SqliteOptions {
        synchronous: match config.store.synchronous {
            config::SyncMode::Normal => Synchronous::Normal,
            config::SyncMode::Full => Synchronous::Full,
        },
        event_history: config.store.event_history,
        record_ledger: !config.bench_disable_ledger,
        ..SqliteOptions::default()
    };
    let path = config.data_dir.join("agentplane.db");
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, options))
        .await
        .map_err(|e| ServerError::Examples(format!("store open task failed: {e}")))??;
    Ok(store)
}

/// A running server: its address, and a handle to stop it.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Start graceful shutdown and wait for it to finish.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Serve(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Start serving `config` in the background (used by `run` and by tests and benchmarks).
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    let addr = config.listen_addr()?;
    // No transparent huge pages for the control plane, whatever the host's THP mode: zeroing a
    // fresh 2 MiB page on first touch stalled run starts by up to 75 ms after a start (see
    // docs/runtime.md, "Memory"). Agents get the host's policy back from `agentplane-runner`.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off for the server");
    }
    let store = open_store(&config).await?;
    storage::warn_about(&config.data_dir);
    let ledger_key = Arc::new(ledger::load_or_create_key(&config.data_dir)?);
    let run_tokens = auth::run_token::RunTokenKey::load_or_create(&config.data_dir).map_err(ServerError::Auth)?;
    let auth = Arc::new(auth::Auth::new(&config.auth, run_tokens.clone()).map_err(ServerError::Auth)?);
    auth::tokens::bootstrap(store.as_ref(), &config.data_dir).await.map_err(ServerError::Auth)?;
    if config.dev {
        let report = examples::load_dir(store.as_ref(), &config.examples_dir).await.map_err(ServerError::Examples)?;
        tracing::info!(dir = %config.examples_dir.display(), created = report.created, configured = report.configured, unchanged = report.unchanged, "loaded example resources");
    }
    let listener =
        TcpListener::bind(addr).await.map_err(|source| ServerError::Listen { addr: addr.to_string(), source })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    let (tx, rx) = watch::channel(false);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let checkpointer = tokio::spawn(ledger::run_checkpointer(
        store.clone(),
        ledger_key.clone(),
        config.ledger.checkpoint_every_entries,
        Duration::from_secs(config.ledger.checkpoint_interval_seconds),
        rx.clone(),
    ));
    let scanner = tokio::spawn(ledger::run_anomaly_scanner(
        store.clone(),
        Duration::from_secs(config.ledger.anomaly_scan_interval_seconds),
        rx.clone(),
    ));
    let sandbox = if config.sandbox.enabled && config.controller.enabled {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::Sandbox(format!("data dir: {e}")))?;
        let (user, user_unavailable) = match sandbox::agent_identity(&config.sandbox).and_then(|u| match u {
            Some(id) => sandbox::check_reachable(&config.data_dir, id).map(|()| Some(id)),
            None => Ok(None),
        }) {
            Ok(u) => (u, None),
            Err(e) if config.sandbox.require => return Err(ServerError::Sandbox(e)),
            Err(e) => {
                tracing::warn!(error = %e, "no agent user: agents run as the server's user, without capabilities (identity unavailable)");
                (None, Some(e))
            }
        };
        if user.is_some() {
            sandbox::harden_data_dir(&config.data_dir).map_err(|e| ServerError::Sandbox(format!("data dir: {e}")))?;
        }
        let host = agentplane_sandbox::probe::probe(&agentplane_sandbox::probe::ProbeInput::default());
        let missing: Vec<&str> = host.checks.iter().filter(|c| !c.available).map(|c| c.name.as_str()).collect();
        tracing::info!(landlock_abi = host.landlock_abi, user = ?user.map(|u| u.uid), missing = ?missing, "sandbox enabled");
        sandbox::settings(&config.sandbox, user, user_unavailable, local.port())
    } else {
        None
    };
    let controller = config.controller.enabled.then(|| {
        tracing::info!("run controller enabled");
        let mut cfg = controller_config(&config);
        cfg.sandbox = sandbox;
        let key = run_tokens.clone();
        cfg.run_tokens =
            Some(agentplane_control::controller::RunTokenMinter(Arc::new(move |ns, name, uid, attempt| {
                key.mint(ns, name, uid, attempt)
            })));
        tokio::spawn(agentplane_control::controller::run_controller(store.clone(), cfg, rx.clone()))
    });
    let retention = match agentplane_control::retention::RetentionPolicy::from_days(
        config.retention.runs_days,
        config.retention.logs_days,
    ) {
        Some(policy) if config.retention.enabled => Some(tokio::spawn(agentplane_control::retention::run_retention(
            store.clone(),
            config.data_dir.clone(),
            policy,
            Duration::from_secs(config.retention.sweep_interval_seconds),
            Arc::new(agentplane_control::retention::SystemClock),
            rx.clone(),
        ))),
        _ => None,
    };
    let expiry = tokio::spawn(approvals::run_expiry(
        store.clone(),
        Duration::from_secs(config.governance.approval_sweep_seconds),
        rx.clone(),
    ));
    let admission_cache = Arc::new(admission::AdmissionCache::new(&config.governance));
    let earned = config.governance.earned_levels.then(|| {
        let rules = earned::Rules::from_config(&config.governance);
        tokio::spawn(earned::EarnedLevels::new(store.clone(), rules, admission_cache.clone()).run(rx.clone()))
    });
    let state = Arc::new(AppState {
        store: store.clone(),
        config: Arc::new(config),
        ledger_key,
        admission_cache,
        shutdown: rx.clone(),
        auth,
    });
    let app = router(state);
    let mut stop = rx.clone();
    let task = tokio::spawn(async move {
        let mut stop2 = stop.clone();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
            tracing::info!("shutting down: no new connections; finishing in-flight requests");
        });
        let serve = serve.into_future();
        tokio::pin!(serve);
        let result = tokio::select! {
            r = &mut serve => r.map_err(ServerError::Serve),
            _ = async {
                let _ = stop2.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_seconds = grace.as_secs(), "in-flight requests did not finish in time; closing");
                Ok(())
            }
        };
        // The checkpointer signs a last checkpoint when it sees shutdown; wait for it.
        let _ = scanner.await;
        if let Some(c) = controller {
            let _ = c.await;
        }
        if let Some(r) = retention {
            let _ = r.await;
        }
        let _ = expiry.await;
        if let Some(e) = earned {
            let _ = e.await;
        }
        let _ = checkpointer.await;
        store.close().await?;
        tracing::info!("store flushed and closed");
        result
    });
    tracing::info!(addr = %local, "agentplane server listening on http://{local}");
    Ok(RunningServer { addr: local, shutdown: tx, task })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("received SIGTERM"),
                    _ = int.recv() => tracing::info!("received SIGINT"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `agentctl server`: load the config (flags, `AGENTPLANE_*` environment, file), serve until
/// SIGTERM or SIGINT, then shut down gracefully.
pub async fn run(args: ServerArgs) -> Result<(), ServerError> {
    run_with(args, |_| {}).await
}

/// [`run`], calling `on_ready` with the effective config once the server listens (the CLI uses
/// it to write the dev token into its config file).
pub async fn run_with(args: ServerArgs, on_ready: impl FnOnce(&Config)) -> Result<(), ServerError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = Config::load(&args, &env)?;
    init_logging(&config);
    let server = start(config.clone()).await?;
    on_ready(&config);
    wait_for_signal().await;
    server.shutdown().await
}

/// The controller's settings from the server's `[controller]` section.
pub fn controller_config(config: &Config) -> agentplane_control::controller::ControllerConfig {
    let c = &config.controller;
    let mut cfg = agentplane_control::controller::ControllerConfig::new(config.data_dir.clone());
    cfg.caps = agentplane_control::Caps {
        per_namespace: c.namespace_max_in_flight,
        cluster: c.cluster_max_in_flight,
        default_per_agent: c.agent_max_in_flight,
    };
    cfg.backoff = agentplane_control::BackoffPolicy {
        base: Duration::from_secs_f64(c.retry_base_seconds),
        max: Duration::from_secs_f64(c.retry_max_seconds),
        jitter: c.retry_jitter,
    };
    cfg.tick = Duration::from_millis(c.tick_millis);
    cfg.lease_ttl = Duration::from_secs(c.lease_seconds);
    cfg.grace = Duration::from_secs(c.grace_seconds);
    cfg.secrets_dir = Some(config.secrets.dir.clone().unwrap_or_else(|| config.data_dir.join("secrets")));
    cfg.limit_defaults = config.sandbox.defaults.to_api();
    cfg.limit_maximums = config.sandbox.maximums.to_api();
    match agentplane_control::controller::node_holder_id(&config.data_dir) {
        Ok(id) => cfg.holder = id,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or write data_dir/node-id; using a per-process lease holder id")
        }
    }
    cfg
}
