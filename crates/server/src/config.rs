//! Server configuration: one typed, strict config. Layers, lowest first: built-in defaults <
//! config file (TOML, `--config` or `AGENTPLANE_CONFIG`) < `AGENTPLANE_*` environment < flags.
//! Unknown keys in the file and unknown `AGENTPLANE_*` variables are errors, so a typo never
//! silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Flags of `agentctl server`. Every flag overrides the file and the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Config file (TOML). Env: AGENTPLANE_CONFIG
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7300]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for the database and keys [default: ./.agentplane]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Development mode: load the example resources from --examples-dir (idempotently)
    #[arg(long)]
    pub dev: bool,
    /// Where --dev finds the example manifests [default: ./examples]
    #[arg(long, value_name = "DIR")]
    pub examples_dir: Option<PathBuf>,
    /// Log format: text or json [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or agentplane_server=debug [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// SQLite synchronous mode: normal (survives a process crash) or full (also survives power
    /// loss) [default: normal]
    #[arg(long, value_name = "MODE")]
    pub store_synchronous: Option<String>,
    /// Sign a ledger checkpoint after this many new entries [default: 1000]
    #[arg(long, value_name = "N")]
    pub ledger_checkpoint_every_entries: Option<u64>,
    /// Sign a ledger checkpoint at least this often when there are new entries [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub ledger_checkpoint_interval_seconds: Option<u64>,
    /// Run the controller that starts admitted runs (the default; overrides a config file or
    /// environment that turned it off)
    #[arg(long, conflicts_with = "no_controller")]
    pub controller: bool,
    /// Do not run the controller: admitted runs stay Pending (for a read-only replica or tests)
    #[arg(long)]
    pub no_controller: bool,
    /// Refuse to start a run when a required sandbox protection is missing on this host (the run
    /// fails with SandboxUnavailable); see `[sandbox] required`
    #[arg(long)]
    pub require_sandbox: bool,
}

/// How SQLite syncs commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Normal,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Store settings (`[store]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub synchronous: SyncMode,
    /// Changes retained for `?watch=true&resourceVersion=N` resumption.
    pub event_history: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { synchronous: SyncMode::Normal, event_history: 100_000 }
    }
}

/// Ledger settings (`[ledger]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Sign a checkpoint after this many new entries.
    pub checkpoint_every_entries: u64,
    /// Sign a checkpoint at least this often (seconds) while there are new entries.
    pub checkpoint_interval_seconds: u64,
    /// How often (seconds) today's anomalies are computed and new ones recorded as
    /// `anomaly.flagged` entries.
    pub anomaly_scan_interval_seconds: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            checkpoint_every_entries: 1_000,
            checkpoint_interval_seconds: 60,
            anomaly_scan_interval_seconds: 300,
        }
    }
}

/// Run controller settings (`[controller]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Dispatch admitted AgentRuns to their runtime and record their outcome. On by default;
    /// without it runs stay `Pending`.
    pub enabled: bool,
    /// Runs in flight per Agent when the Agent sets no `maxInFlight`.
    pub agent_max_in_flight: u32,
    /// Runs in flight per namespace.
    pub namespace_max_in_flight: u32,
    /// Runs in flight in the whole cluster.
    pub cluster_max_in_flight: u32,
    /// Delay before the first retry (seconds; doubles per attempt).
    pub retry_base_seconds: f64,
    /// Longest delay between retries (seconds).
    pub retry_max_seconds: f64,
    /// Relative jitter of retry delays, 0 to 1 (0.2 = ±20 %).
    pub retry_jitter: f64,
    /// How often running attempts are checked and delayed retries released (milliseconds).
    pub tick_millis: u64,
    /// How long the controller's leader lease lasts without renewal (seconds).
    pub lease_seconds: u64,
    /// Between SIGTERM and SIGKILL when a run is cancelled or times out (seconds).
    pub grace_seconds: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            enabled: true,
            agent_max_in_flight: 5,
            namespace_max_in_flight: 10,
            cluster_max_in_flight: 100,
            retry_base_seconds: 5.0,
            retry_max_seconds: 300.0,
            retry_jitter: 0.2,
            tick_millis: 100,
            lease_seconds: 15,
            grace_seconds: 10,
        }
    }
}

/// Retention of finished runs and their files (`[retention]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Run the background sweeper.
    pub enabled: bool,
    /// Finished AgentRuns older than this (by `finishedAt`) are deleted (days).
    pub runs_days: f64,
    /// Logs, artifacts and workspaces of runs finished longer ago than this are removed (days).
    pub logs_days: f64,
    /// How often the sweeper runs (seconds).
    pub sweep_interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { enabled: true, runs_days: 30.0, logs_days: 7.0, sweep_interval_seconds: 3600 }
    }
}

/// Governance defaults (`[governance]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernanceConfig {
    /// The earned takeover level (1–5) of an Agent whose level was never set.
    pub initial_earned_level: u8,
    /// A run in a `production` environment whose effective level is above L1 waits for an
    /// approval before it may start.
    pub production_start_approval: bool,
    /// How long such an approval may wait before it expires (and counts as denied), in minutes.
    pub approval_ttl_minutes: u64,
    /// How often expired approvals are looked for (seconds).
    pub approval_sweep_seconds: u64,
    /// Earned levels follow each Agent's track record: a streak of clean runs suggests a raise,
    /// a failure rate above the threshold lowers the level. `false` leaves levels to humans.
    pub earned_levels: bool,
    /// Clean runs in a row (Succeeded, no denied or failed action in the ledger) after which a
    /// raise of the earned level is suggested.
    pub suggest_after_clean_runs: u32,
    /// The last N finished runs over which the failure rate is measured.
    pub failure_window_runs: u32,
    /// Fewest finished runs in the window before the rate can lower a level.
    pub failure_min_runs: u32,
    /// Failure rate (0–1] at or above which the earned level is lowered by one.
    pub failure_rate_threshold: f64,
    /// The automatic lowering never goes below this level.
    pub lowest_earned_level: u8,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        GovernanceConfig {
            initial_earned_level: 3,
            production_start_approval: true,
            approval_ttl_minutes: 60,
            approval_sweep_seconds: 10,
            earned_levels: true,
            suggest_after_clean_runs: 20,
            failure_window_runs: 20,
            failure_min_runs: 10,
            failure_rate_threshold: 0.5,
            lowest_earned_level: 1,
        }
    }
}

/// Where secret values come from (`[secrets]` in the file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// A folder holding one file per secret (`<dir>/<name>`, or `<dir>/<name>/<key>`), readable
    /// only by the server's user. Default: `<data_dir>/secrets`.
    pub dir: Option<PathBuf>,
}

/// Authentication and abuse limits (`[auth]` in the file). There is no switch to turn
/// authentication off: every API call but `/healthz`, `/readyz`, `/api/openapi.json` (and
/// `/metrics` with `metrics_public`) needs a bearer token. See docs/rbac.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Serve `/metrics` without a token.
    pub metrics_public: bool,
    /// Requests per second each token (or OIDC subject, or run) may make; 0 turns the limit off.
    pub rate_limit_per_second: u32,
    /// Requests a token may make at once before the per-second rate applies.
    pub rate_limit_burst: u32,
    /// How long a verified API token is trusted without reading the store again (seconds). A
    /// revoke through this server takes effect at once; through another replica, within this.
    pub token_cache_seconds: u64,
    /// OIDC / JWT bearer tokens; off when absent.
    pub oidc: Option<OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            metrics_public: false,
            rate_limit_per_second: 50,
            rate_limit_burst: 200,
            token_cache_seconds: 10,
            oidc: None,
        }
    }
}

/// OIDC settings (`[auth.oidc]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The `iss` every token must carry; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Where the signing keys are; discovered from the issuer when absent.
    pub jwks_url: Option<String>,
    /// The claim holding the roles (`admin`, `team-a:submitter`, …).
    pub roles_claim: String,
    /// Accepted signature algorithms; only RS*, PS* and ES* are allowed (never none or HS*).
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (seconds).
    pub leeway_seconds: u64,
    /// An unknown key id refetches the JWKS at most this often (seconds).
    pub jwks_refetch_min_seconds: u64,
    /// PEM file of CA certificates trusted for the issuer's HTTPS endpoints, in addition to the
    /// system's roots (for an identity provider with a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            roles_claim: "roles".into(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway_seconds: 30,
            jwks_refetch_min_seconds: 30,
            ca_file: None,
        }
    }
}

/// Limits of one run (`[sandbox.defaults]`, `[sandbox.maximums]`); see Agent `spec.limits`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub address_space_bytes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
    pub output_quota_bytes: Option<u64>,
}

impl LimitsConfig {
    pub fn to_api(&self) -> agentplane_api::AgentLimits {
        agentplane_api::AgentLimits {
            cpu_seconds: self.cpu_seconds,
            memory_bytes: self.memory_bytes,
            address_space_bytes: self.address_space_bytes,
            file_size_bytes: self.file_size_bytes,
            open_files: self.open_files,
            processes: self.processes,
            output_quota_bytes: self.output_quota_bytes,
        }
    }
}

/// The local runtime's sandbox (`[sandbox]` in the file; docs/sandbox.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Confine agents of the local runtime. Off: own session and process group only.
    pub enabled: bool,
    /// The user agents run as when the server runs as root: a name, or `uid:gid`.
    pub user: String,
    /// Create `user` (useradd --system) at start when it does not exist.
    pub create_user: bool,
    /// Refuse to start runs when a protection in `required` is missing (`--require-sandbox`).
    pub require: bool,
    /// The protections `require` insists on (default: all of them).
    pub required: Vec<String>,
    /// What agents may read (and execute) besides their run folder.
    pub read_only_paths: Vec<PathBuf>,
    /// What agents may write besides their run folder's workspace/, artifacts/ and tmp/.
    pub writable_paths: Vec<PathBuf>,
    /// Landlock filesystem rules.
    pub filesystem: bool,
    /// A pid namespace per attempt.
    pub pid_namespace: bool,
    /// Per-attempt cgroups (v1 pids and memory).
    pub cgroups: bool,
    /// Where cgroup v1 hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// Landlock scoping of signals and abstract UNIX sockets.
    pub scope_signals: bool,
    /// How often the output quota is measured (milliseconds).
    pub quota_interval_millis: u64,
    /// Limits of runs whose Agent does not set them.
    pub defaults: LimitsConfig,
    /// Limits no Agent may exceed (an Agent above them is refused with 400).
    pub maximums: LimitsConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            enabled: true,
            user: "agentplane-agent".into(),
            create_user: true,
            require: false,
            required: agentplane_sandbox::policy::names::ALL.iter().map(|s| s.to_string()).collect(),
            read_only_paths: agentplane_runtime::DEFAULT_READ_ONLY_PATHS.iter().map(PathBuf::from).collect(),
            writable_paths: agentplane_runtime::DEFAULT_WRITABLE_PATHS.iter().map(PathBuf::from).collect(),
            filesystem: true,
            pid_namespace: true,
            cgroups: true,
            cgroup_root: PathBuf::from(agentplane_sandbox::cgroup::DEFAULT_ROOT),
            scope_signals: true,
            quota_interval_millis: 250,
            defaults: LimitsConfig {
                cpu_seconds: Some(3600),
                memory_bytes: Some(4 << 30),
                address_space_bytes: None,
                file_size_bytes: Some(1 << 30),
                open_files: Some(4096),
                processes: Some(512),
                output_quota_bytes: Some(10 << 30),
            },
            maximums: LimitsConfig::default(),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub dev: bool,
    pub examples_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace_seconds: u64,
    pub store: StoreConfig,
    pub ledger: LedgerConfig,
    pub controller: ControllerConfig,
    pub retention: RetentionConfig,
    pub secrets: SecretsConfig,
    pub governance: GovernanceConfig,
    pub auth: AuthConfig,
    pub sandbox: SandboxConfig,
    /// Benchmarks only: do not record writes in the ledger (never settable from a file, the
    /// environment or a flag).
    #[serde(skip)]
    pub bench_disable_ledger: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7300".into(),
            data_dir: PathBuf::from("./.agentplane"),
            max_body_bytes: 1024 * 1024,
            dev: false,
            examples_dir: PathBuf::from("./examples"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            shutdown_grace_seconds: 30,
            store: StoreConfig::default(),
            ledger: LedgerConfig::default(),
            controller: ControllerConfig::default(),
            retention: RetentionConfig::default(),
            secrets: SecretsConfig::default(),
            governance: GovernanceConfig::default(),
            auth: AuthConfig::default(),
            sandbox: SandboxConfig::default(),
            bench_disable_ledger: false,
        }
    }
}

/// A configuration problem, naming the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Every environment variable the server reads, with the config key it sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("AGENTPLANE_CONFIG", "config file path"),
    ("AGENTPLANE_LISTEN", "listen"),
    ("AGENTPLANE_DATA_DIR", "data_dir"),
    ("AGENTPLANE_MAX_BODY_BYTES", "max_body_bytes"),
    ("AGENTPLANE_DEV", "dev"),
    ("AGENTPLANE_EXAMPLES_DIR", "examples_dir"),
    ("AGENTPLANE_LOG_FORMAT", "log_format"),
    ("AGENTPLANE_LOG_LEVEL", "log_level"),
    ("AGENTPLANE_SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds"),
    ("AGENTPLANE_STORE_SYNCHRONOUS", "store.synchronous"),
    ("AGENTPLANE_STORE_EVENT_HISTORY", "store.event_history"),
    ("AGENTPLANE_LEDGER_CHECKPOINT_EVERY_ENTRIES", "ledger.checkpoint_every_entries"),
    ("AGENTPLANE_LEDGER_CHECKPOINT_INTERVAL_SECONDS", "ledger.checkpoint_interval_seconds"),
    ("AGENTPLANE_LEDGER_ANOMALY_SCAN_INTERVAL_SECONDS", "ledger.anomaly_scan_interval_seconds"),
    ("AGENTPLANE_CONTROLLER_ENABLED", "controller.enabled"),
    ("AGENTPLANE_CONTROLLER_AGENT_MAX_IN_FLIGHT", "controller.agent_max_in_flight"),
    ("AGENTPLANE_CONTROLLER_NAMESPACE_MAX_IN_FLIGHT", "controller.namespace_max_in_flight"),
    ("AGENTPLANE_CONTROLLER_CLUSTER_MAX_IN_FLIGHT", "controller.cluster_max_in_flight"),
    ("AGENTPLANE_CONTROLLER_RETRY_BASE_SECONDS", "controller.retry_base_seconds"),
    ("AGENTPLANE_CONTROLLER_RETRY_MAX_SECONDS", "controller.retry_max_seconds"),
    ("AGENTPLANE_GOVERNANCE_INITIAL_EARNED_LEVEL", "governance.initial_earned_level"),
    ("AGENTPLANE_GOVERNANCE_PRODUCTION_START_APPROVAL", "governance.production_start_approval"),
    ("AGENTPLANE_GOVERNANCE_APPROVAL_TTL_MINUTES", "governance.approval_ttl_minutes"),
    ("AGENTPLANE_RETENTION_ENABLED", "retention.enabled"),
    ("AGENTPLANE_RETENTION_RUNS_DAYS", "retention.runs_days"),
    ("AGENTPLANE_RETENTION_LOGS_DAYS", "retention.logs_days"),
    ("AGENTPLANE_SECRETS_DIR", "secrets.dir"),
    ("AGENTPLANE_AUTH_METRICS_PUBLIC", "auth.metrics_public"),
    ("AGENTPLANE_AUTH_RATE_LIMIT_PER_SECOND", "auth.rate_limit_per_second"),
    ("AGENTPLANE_AUTH_RATE_LIMIT_BURST", "auth.rate_limit_burst"),
    ("AGENTPLANE_AUTH_OIDC_ISSUER", "auth.oidc.issuer"),
    ("AGENTPLANE_AUTH_OIDC_AUDIENCE", "auth.oidc.audience"),
    ("AGENTPLANE_AUTH_OIDC_JWKS_URL", "auth.oidc.jwks_url"),
    ("AGENTPLANE_AUTH_OIDC_CA_FILE", "auth.oidc.ca_file"),
    ("AGENTPLANE_SANDBOX_ENABLED", "sandbox.enabled"),
    ("AGENTPLANE_SANDBOX_USER", "sandbox.user"),
    ("AGENTPLANE_SANDBOX_REQUIRE", "sandbox.require"),
];

fn parse<T: std::str::FromStr>(var: &str, v: &str) -> Result<T, ConfigError> {
    v.parse().map_err(|_| ConfigError(format!("{var}={v:?} is not a valid value")))
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> Result<T, ConfigError> {
    serde_json::from_value(serde_json::Value::String(v.to_ascii_lowercase()))
        .map_err(|_| ConfigError(format!("{what}={v:?} is not a valid value")))
}

fn parse_bool(var: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError(format!("{var}={v:?} is not a boolean (true/false)"))),
    }
}

impl Config {
    /// Build the effective config from the flags and an environment map (pass
    /// `std::env::vars().collect()` in production, a literal map in tests).
    pub fn load(args: &ServerArgs, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        for k in env.keys() {
            if k.starts_with("AGENTPLANE_") && !ENV_VARS.iter().any(|(v, _)| v == k) {
                return Err(ConfigError(format!(
                    "unknown environment variable {k}; known: {}",
                    ENV_VARS.iter().map(|(v, _)| *v).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let file = args.config.clone().or_else(|| env.get("AGENTPLANE_CONFIG").map(PathBuf::from));
        let mut c = match &file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        for (var, v) in env {
            match var.as_str() {
                "AGENTPLANE_LISTEN" => c.listen = v.clone(),
                "AGENTPLANE_DATA_DIR" => c.data_dir = PathBuf::from(v),
                "AGENTPLANE_MAX_BODY_BYTES" => c.max_body_bytes = parse(var, v)?,
                "AGENTPLANE_DEV" => c.dev = parse_bool(var, v)?,
                "AGENTPLANE_EXAMPLES_DIR" => c.examples_dir = PathBuf::from(v),
                "AGENTPLANE_LOG_FORMAT" => c.log_format = parse_enum(var, v)?,
                "AGENTPLANE_LOG_LEVEL" => c.log_level = v.clone(),
                "AGENTPLANE_SHUTDOWN_GRACE_SECONDS" => c.shutdown_grace_seconds = parse(var, v)?,
                "AGENTPLANE_STORE_SYNCHRONOUS" => c.store.synchronous = parse_enum(var, v)?,
                "AGENTPLANE_STORE_EVENT_HISTORY" => c.store.event_history = parse(var, v)?,
                "AGENTPLANE_LEDGER_CHECKPOINT_EVERY_ENTRIES" => c.ledger.checkpoint_every_entries = parse(var, v)?,
                "AGENTPLANE_LEDGER_ANOMALY_SCAN_INTERVAL_SECONDS" => {
                    c.ledger.anomaly_scan_interval_seconds = parse(var, v)?
                }
                "AGENTPLANE_LEDGER_CHECKPOINT_INTERVAL_SECONDS" => {
                    c.ledger.checkpoint_interval_seconds = parse(var, v)?
                }
                "AGENTPLANE_CONTROLLER_ENABLED" => c.controller.enabled = parse_bool(var, v)?,
                "AGENTPLANE_CONTROLLER_AGENT_MAX_IN_FLIGHT" => c.controller.agent_max_in_flight = parse(var, v)?,
                "AGENTPLANE_CONTROLLER_NAMESPACE_MAX_IN_FLIGHT" => {
                    c.controller.namespace_max_in_flight = parse(var, v)?
                }
                "AGENTPLANE_CONTROLLER_CLUSTER_MAX_IN_FLIGHT" => c.controller.cluster_max_in_flight = parse(var, v)?,
                "AGENTPLANE_CONTROLLER_RETRY_BASE_SECONDS" => c.controller.retry_base_seconds = parse(var, v)?,
                "AGENTPLANE_CONTROLLER_RETRY_MAX_SECONDS" => c.controller.retry_max_seconds = parse(var, v)?,
                "AGENTPLANE_GOVERNANCE_INITIAL_EARNED_LEVEL" => c.governance.initial_earned_level = parse(var, v)?,
                "AGENTPLANE_GOVERNANCE_PRODUCTION_START_APPROVAL" => {
                    c.governance.production_start_approval = parse_bool(var, v)?
                }
                "AGENTPLANE_GOVERNANCE_APPROVAL_TTL_MINUTES" => c.governance.approval_ttl_minutes = parse(var, v)?,
                "AGENTPLANE_RETENTION_ENABLED" => c.retention.enabled = parse_bool(var, v)?,
                "AGENTPLANE_RETENTION_RUNS_DAYS" => c.retention.runs_days = parse(var, v)?,
                "AGENTPLANE_RETENTION_LOGS_DAYS" => c.retention.logs_days = parse(var, v)?,
                "AGENTPLANE_SECRETS_DIR" => c.secrets.dir = Some(PathBuf::from(v)),
                "AGENTPLANE_AUTH_METRICS_PUBLIC" => c.auth.metrics_public = parse_bool(var, v)?,
                "AGENTPLANE_AUTH_RATE_LIMIT_PER_SECOND" => c.auth.rate_limit_per_second = parse(var, v)?,
                "AGENTPLANE_AUTH_RATE_LIMIT_BURST" => c.auth.rate_limit_burst = parse(var, v)?,
                "AGENTPLANE_AUTH_OIDC_ISSUER" => c.auth.oidc.get_or_insert_with(OidcConfig::default).issuer = v.clone(),
                "AGENTPLANE_AUTH_OIDC_CA_FILE" => {
                    c.auth.oidc.get_or_insert_with(OidcConfig::default).ca_file = Some(PathBuf::from(v))
                }
                "AGENTPLANE_AUTH_OIDC_AUDIENCE" => {
                    c.auth.oidc.get_or_insert_with(OidcConfig::default).audience = v.clone()
                }
                "AGENTPLANE_AUTH_OIDC_JWKS_URL" => {
                    c.auth.oidc.get_or_insert_with(OidcConfig::default).jwks_url = Some(v.clone())
                }
                "AGENTPLANE_SANDBOX_ENABLED" => c.sandbox.enabled = parse_bool(var, v)?,
                "AGENTPLANE_SANDBOX_USER" => c.sandbox.user = v.clone(),
                "AGENTPLANE_SANDBOX_REQUIRE" => c.sandbox.require = parse_bool(var, v)?,
                _ => {}
            }
        }
        if let Some(v) = &args.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &args.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = args.max_body_bytes {
            c.max_body_bytes = v;
        }
        if args.dev {
            c.dev = true;
        }
        if let Some(v) = &args.examples_dir {
            c.examples_dir = v.clone();
        }
        if let Some(v) = &args.log_format {
            c.log_format = parse_enum("--log-format", v)?;
        }
        if let Some(v) = &args.log_level {
            c.log_level = v.clone();
        }
        if let Some(v) = &args.store_synchronous {
            c.store.synchronous = parse_enum("--store-synchronous", v)?;
        }
        if let Some(v) = args.ledger_checkpoint_every_entries {
            c.ledger.checkpoint_every_entries = v;
        }
        if let Some(v) = args.ledger_checkpoint_interval_seconds {
            c.ledger.checkpoint_interval_seconds = v;
        }
        if args.controller {
            c.controller.enabled = true;
        }
        if args.no_controller {
            c.controller.enabled = false;
        }
        if args.require_sandbox {
            c.sandbox.require = true;
        }
        c.check()?;
        Ok(c)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.to_string().trim())))
    }

    /// Checks that hold whatever the source.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.max_body_bytes < 1024 || self.max_body_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError(format!(
                "max_body_bytes = {} is out of range; use 1024 to 67108864",
                self.max_body_bytes
            )));
        }
        if self.ledger.checkpoint_every_entries == 0
            || self.ledger.checkpoint_interval_seconds == 0
            || self.ledger.anomaly_scan_interval_seconds == 0
        {
            return Err(ConfigError(
                "ledger.checkpoint_every_entries, ledger.checkpoint_interval_seconds and \
                 ledger.anomaly_scan_interval_seconds must be at least 1"
                    .into(),
            ));
        }
        if self.store.event_history < 1_000 {
            return Err(ConfigError(format!(
                "store.event_history = {} is too small; use at least 1000",
                self.store.event_history
            )));
        }
        let ctl = &self.controller;
        for (name, v) in [
            ("controller.agent_max_in_flight", ctl.agent_max_in_flight),
            ("controller.namespace_max_in_flight", ctl.namespace_max_in_flight),
            ("controller.cluster_max_in_flight", ctl.cluster_max_in_flight),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("{name} = 0 would never start a run; use at least 1")));
            }
        }
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !finite_pos(ctl.retry_base_seconds) || !finite_pos(ctl.retry_max_seconds) {
            return Err(ConfigError(format!(
                "controller.retry_base_seconds = {} and controller.retry_max_seconds = {} must be positive numbers",
                ctl.retry_base_seconds, ctl.retry_max_seconds
            )));
        }
        if ctl.retry_max_seconds < ctl.retry_base_seconds {
            return Err(ConfigError(format!(
                "controller.retry_max_seconds = {} is less than controller.retry_base_seconds = {}",
                ctl.retry_max_seconds, ctl.retry_base_seconds
            )));
        }
        if !(0.0..=1.0).contains(&ctl.retry_jitter) {
            return Err(ConfigError(format!("controller.retry_jitter = {} must be between 0 and 1", ctl.retry_jitter)));
        }
        if ctl.tick_millis == 0 || ctl.tick_millis > 60_000 || ctl.lease_seconds < 2 {
            return Err(ConfigError(
                "controller.tick_millis must be 1 to 60000 and controller.lease_seconds at least 2".into(),
            ));
        }
        if !(1..=5).contains(&self.governance.initial_earned_level) {
            return Err(ConfigError(format!(
                "governance.initial_earned_level = {} must be a takeover level from 1 to 5",
                self.governance.initial_earned_level
            )));
        }
        if self.governance.approval_ttl_minutes == 0 || self.governance.approval_sweep_seconds == 0 {
            return Err(ConfigError(
                "governance.approval_ttl_minutes and governance.approval_sweep_seconds must be at least 1".into(),
            ));
        }
        let g = &self.governance;
        if g.suggest_after_clean_runs == 0 || g.failure_window_runs == 0 || g.failure_min_runs == 0 {
            return Err(ConfigError(
                "governance.suggest_after_clean_runs, failure_window_runs and failure_min_runs must be at least 1"
                    .into(),
            ));
        }
        if g.failure_min_runs > g.failure_window_runs {
            return Err(ConfigError(format!(
                "governance.failure_min_runs = {} cannot exceed governance.failure_window_runs = {}",
                g.failure_min_runs, g.failure_window_runs
            )));
        }
        if !(g.failure_rate_threshold > 0.0 && g.failure_rate_threshold <= 1.0) {
            return Err(ConfigError(format!(
                "governance.failure_rate_threshold = {} must be above 0 and at most 1",
                g.failure_rate_threshold
            )));
        }
        if !(1..=5).contains(&g.lowest_earned_level) {
            return Err(ConfigError(format!(
                "governance.lowest_earned_level = {} must be a takeover level from 1 to 5",
                g.lowest_earned_level
            )));
        }
        let a = &self.auth;
        if a.rate_limit_per_second > 0 && a.rate_limit_burst == 0 {
            return Err(ConfigError("auth.rate_limit_burst must be at least 1 when a rate limit is set".into()));
        }
        if let Some(o) = &a.oidc {
            if o.issuer.is_empty() || o.audience.is_empty() {
                return Err(ConfigError("auth.oidc needs issuer and audience".into()));
            }
            for (field, url) in [("auth.oidc.issuer", Some(&o.issuer)), ("auth.oidc.jwks_url", o.jwks_url.as_ref())] {
                if let Some(url) = url
                    && !key_url_is_safe(url)
                {
                    return Err(ConfigError(format!(
                        "{field} = {url:?}: signing keys are fetched only over https (plain http only from 127.0.0.1, ::1 or localhost)"
                    )));
                }
            }
            if o.roles_claim.is_empty() || o.jwks_refetch_min_seconds == 0 || o.leeway_seconds > 300 {
                return Err(ConfigError(
                    "auth.oidc: roles_claim must be set, jwks_refetch_min_seconds at least 1, leeway_seconds at most 300"
                        .into(),
                ));
            }
            crate::auth::oidc::parse_algorithms(&o.algorithms).map_err(ConfigError)?;
        }
        let sb = &self.sandbox;
        for name in &sb.required {
            if !agentplane_sandbox::policy::names::ALL.contains(&name.as_str()) {
                return Err(ConfigError(format!(
                    "sandbox.required: unknown protection {name:?}; known: {}",
                    agentplane_sandbox::policy::names::ALL.join(", ")
                )));
            }
        }
        if sb.require && !sb.enabled {
            return Err(ConfigError("sandbox.require = true needs sandbox.enabled = true".into()));
        }
        if sb.quota_interval_millis == 0 || sb.quota_interval_millis > 60_000 {
            return Err(ConfigError(format!(
                "sandbox.quota_interval_millis = {} must be 1 to 60000",
                sb.quota_interval_millis
            )));
        }
        for (section, l) in [("sandbox.defaults", &sb.defaults), ("sandbox.maximums", &sb.maximums)] {
            let mut errs = Vec::new();
            agentplane_api::validate_limits(section, &l.to_api(), &mut errs);
            if let Some(e) = errs.first() {
                return Err(ConfigError(e.message.clone()));
            }
        }
        if let Some((field, v, max)) = sb.defaults.to_api().exceeds(&sb.maximums.to_api()) {
            return Err(ConfigError(format!(
                "sandbox.defaults {field} = {v} is above sandbox.maximums {field} = {max}"
            )));
        }
        let r = &self.retention;
        if !finite_pos(r.runs_days) || !finite_pos(r.logs_days) || r.sweep_interval_seconds == 0 {
            return Err(ConfigError(format!(
                "retention.runs_days = {}, retention.logs_days = {} and retention.sweep_interval_seconds = {} must be positive",
                r.runs_days, r.logs_days, r.sweep_interval_seconds
            )));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError(format!("listen = {:?} is not an address like 127.0.0.1:7300", self.listen)))
    }
}

/// Whether keys may be fetched from `url`: https anywhere, plain http only from this machine.
pub fn key_url_is_safe(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => match u.host_str() {
            Some("localhost") => true,
            Some(h) => h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_over_https_or_from_this_machine() {
        for ok in
            ["https://idp.example.com/realms/a", "http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]:9/x"]
        {
            assert!(key_url_is_safe(ok), "{ok}");
        }
        for bad in ["http://idp.example.com/x", "http://10.0.0.1/x", "ftp://h/x", "not a url", "file:///etc/keys"] {
            assert!(!key_url_is_safe(bad), "{bad}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn layers_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1000\"\nmax_body_bytes = 2048\n[store]\nsynchronous = \"full\"\n")
            .unwrap();
        let args = ServerArgs { config: Some(f.clone()), ..Default::default() };
        let c = Config::load(&args, &env(&[])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1000");
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.store.synchronous, SyncMode::Full);
        assert_eq!(c.data_dir, PathBuf::from("./.agentplane"));

        let c = Config::load(&args, &env(&[("AGENTPLANE_LISTEN", "127.0.0.1:2000")])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2000");

        let args = ServerArgs { listen: Some("127.0.0.1:3000".into()), ..args };
        let c = Config::load(&args, &env(&[("AGENTPLANE_LISTEN", "127.0.0.1:2000")])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3000");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let args = ServerArgs { config: Some(f), ..Default::default() };
        let e = Config::load(&args, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");

        let e = Config::load(&ServerArgs::default(), &env(&[("AGENTPLANE_LSTEN", "x")])).unwrap_err().to_string();
        assert!(e.contains("AGENTPLANE_LSTEN"), "{e}");
    }

    #[test]
    fn controller_is_on_by_default_and_layered() {
        let c = Config::load(&ServerArgs::default(), &env(&[])).unwrap();
        assert!(c.controller.enabled);
        assert_eq!(
            (
                c.controller.agent_max_in_flight,
                c.controller.namespace_max_in_flight,
                c.controller.cluster_max_in_flight
            ),
            (5, 10, 100)
        );
        let off = ServerArgs { no_controller: true, ..Default::default() };
        assert!(!Config::load(&off, &env(&[])).unwrap().controller.enabled);

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[controller]\nenabled = true\nnamespace_max_in_flight = 3\n").unwrap();
        let args = ServerArgs { config: Some(f.clone()), ..Default::default() };
        let c = Config::load(&args, &env(&[])).unwrap();
        assert!(c.controller.enabled);
        assert_eq!(c.controller.namespace_max_in_flight, 3);
        let c = Config::load(&args, &env(&[("AGENTPLANE_CONTROLLER_NAMESPACE_MAX_IN_FLIGHT", "7")])).unwrap();
        assert_eq!(c.controller.namespace_max_in_flight, 7);
        let e = Config::load(&args, &env(&[("AGENTPLANE_CONTROLLER_CLUSTER_MAX_IN_FLIGHT", "0")])).unwrap_err();
        assert!(e.to_string().contains("cluster_max_in_flight"), "{e}");
        // The environment overrides the file.
        let c = Config::load(&args, &env(&[("AGENTPLANE_CONTROLLER_ENABLED", "false")])).unwrap();
        assert!(!c.controller.enabled);
        // The flag overrides both.
        let args = ServerArgs { controller: true, ..args };
        assert!(Config::load(&args, &env(&[("AGENTPLANE_CONTROLLER_ENABLED", "false")])).unwrap().controller.enabled);
        let c = Config::load(&ServerArgs::default(), &env(&[("AGENTPLANE_CONTROLLER_ENABLED", "1")])).unwrap();
        assert!(c.controller.enabled);

        let e = Config::load(&ServerArgs::default(), &env(&[("AGENTPLANE_CONTROLLER_ENABLED", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("AGENTPLANE_CONTROLLER_ENABLED"), "{e}");
        std::fs::write(&f, "[controller]\nenabeld = true\n").unwrap();
        let e = Config::load(&ServerArgs { config: Some(f), ..Default::default() }, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("enabeld"), "{e}");
    }

    #[test]
    fn auth_section_is_strict_and_refuses_weak_algorithms() {
        let c = Config::load(&ServerArgs::default(), &env(&[])).unwrap();
        assert_eq!((c.auth.rate_limit_per_second, c.auth.rate_limit_burst), (50, 200));
        assert!(c.auth.oidc.is_none());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[auth.oidc]\nissuer = \"https://i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\n")
            .unwrap();
        let args = ServerArgs { config: Some(f.clone()), ..Default::default() };
        let e = Config::load(&args, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("HS256"), "{e}");
        std::fs::write(&f, "[auth.oidc]\nissuer = \"https://i\"\naudience = \"a\"\nalgorithms = [\"none\"]\n").unwrap();
        assert!(Config::load(&args, &env(&[])).is_err());
        std::fs::write(&f, "[auth]\nenabled = false\n").unwrap();
        let e = Config::load(&args, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("enabled"), "{e}");
        std::fs::write(&f, "[auth.oidc]\nissuer = \"https://i\"\naudience = \"a\"\n").unwrap();
        let c = Config::load(&args, &env(&[("AGENTPLANE_AUTH_RATE_LIMIT_PER_SECOND", "0")])).unwrap();
        assert_eq!(c.auth.rate_limit_per_second, 0);
        let o = c.auth.oidc.unwrap();
        assert_eq!((o.roles_claim.as_str(), o.leeway_seconds, o.jwks_refetch_min_seconds), ("roles", 30, 30));
        assert_eq!(o.algorithms, ["RS256", "ES256"]);
    }

    #[test]
    fn bad_values_are_errors() {
        let e = Config::load(&ServerArgs::default(), &env(&[("AGENTPLANE_MAX_BODY_BYTES", "lots")])).unwrap_err();
        assert!(e.to_string().contains("AGENTPLANE_MAX_BODY_BYTES"));
        let e =
            Config::load(&ServerArgs { listen: Some("nowhere".into()), ..Default::default() }, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("nowhere"));
        let e =
            Config::load(&ServerArgs { store_synchronous: Some("sometimes".into()), ..Default::default() }, &env(&[]))
                .unwrap_err();
        assert!(e.to_string().contains("sometimes"));
    }
}
