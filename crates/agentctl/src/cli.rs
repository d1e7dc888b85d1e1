//! Command-line syntax: every command, flag and help text of `agentctl`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, shown at the end of `agentctl --help`. Keep in sync with `docs/cli.md` and
/// [`crate::error::Exit`].
const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  other error (I/O, configuration, unexpected server reply)
  2  usage error (unknown command or flag, bad flag value)
  3  not found
  4  conflict or already exists
  5  invalid input (validation failed, bad YAML/JSON, unknown kind or apiVersion)
  6  server unreachable (connection refused, timed out)
  7  server error (5xx)
  8  ledger verification failed (an entry, link or checkpoint signature does not verify)
  9  run failed ('run wait', 'run watch', 'run logs -f', 'run submit --wait': the AgentRun ended Failed)
  10 run cancelled (same commands: the AgentRun ended Cancelled)
  11 wait timed out ('run wait --timeout', 'run watch --timeout', 'run submit --wait --wait-timeout')
  12 not authenticated (401: no token, or an unknown, expired or revoked one)
  13 forbidden (403: the token's role does not allow this)

Environment:
  AGENTCTL_SERVER     server URL (overrides the config file; --server overrides it)
  AGENTCTL_NAMESPACE  default namespace (overrides the config file; -n overrides it)
  AGENTCTL_CONFIG     config file path (--config overrides it)
  AGENTCTL_TOKEN      bearer token (overrides the config file; --token overrides it)

See docs/cli.md for the full reference.";

/// agentctl: the agentplane command-line client and server.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags of the client commands. They may be given before the command name (`agentctl -n x get
/// runs`) or after it (`agentctl get runs -n x`); after wins. They are not clap "global" flags so
/// that `agentctl server` keeps its own `--config`.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientArgs {
    /// Server URL (http or https) [env: AGENTCTL_SERVER] [default: http://127.0.0.1:7300]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Namespace [env: AGENTCTL_NAMESPACE] [default: from the config file, else "default"]
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Output format [default: table]
    #[arg(short = 'o', long, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// Client config file [env: AGENTCTL_CONFIG] [default: $XDG_CONFIG_HOME/agentctl/config.toml,
    /// else ~/.config/agentctl/config.toml]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Bearer token (API token or OIDC JWT) [env: AGENTCTL_TOKEN] [default: the config file's
    /// `token`]
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    /// Flags given after the command name override those given before it.
    pub fn merged(&self, after: &ClientArgs) -> ClientArgs {
        ClientArgs {
            server: after.server.clone().or_else(|| self.server.clone()),
            namespace: after.namespace.clone().or_else(|| self.namespace.clone()),
            output: after.output.or(self.output),
            config: after.config.clone().or_else(|| self.config.clone()),
            token: after.token.clone().or_else(|| self.token.clone()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.server.is_none()
            && self.namespace.is_none()
            && self.output.is_none()
            && self.config.is_none()
            && self.token.is_none()
    }
}

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable table (or lines)
    #[default]
    Table,
    /// JSON objects, as the server returns them
    Json,
    /// YAML objects
    Yaml,
    /// `<kind>/<name>` per object
    Name,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from files, directories or stdin
    #[command(after_help = "Examples:\n  agentctl apply -f examples/\n  agentctl apply -f run.yaml -n team-a\n  \
                            cat run.yaml | agentctl apply -f -")]
    Apply(ApplyArgs),
    /// List resources of a kind, or show one
    #[command(after_help = "Examples:\n  agentctl get runs\n  agentctl get run my-run -o yaml\n  \
                            agentctl get agents -A -l team=a\n  agentctl get runs --field-selector status.phase=Running\n  \
                            agentctl get runs -w")]
    Get(GetArgs),
    /// Show one resource in detail
    #[command(after_help = "Example:\n  agentctl describe run my-run")]
    Describe(DescribeArgs),
    /// Delete resources by name
    #[command(after_help = "Example:\n  agentctl delete run my-run other-run")]
    Delete(DeleteArgs),
    /// Submit, wait for, show and list agent runs
    Run(RunArgs),
    /// Verify, query, export and summarise the tamper-evident ledger
    Ledger(LedgerArgs),
    /// Create, list and revoke API tokens (admin)
    Token(TokenArgs),
    /// Show and change takeover levels: an agent's earned level, an environment's cap
    Takeover(TakeoverArgs),
    /// List, approve and deny approvals (for example a production run waiting to start)
    Approval(ApprovalArgs),
    /// Ask for an emergency elevation of an environment's cap (a listed authoriser approves it)
    #[command(
        after_help = "Example:\n  agentctl elevate --environment prod --to L4 --minutes 30 --reason \"incident 77: hotfix rollout\"\n  \
                      # then an authoriser: agentctl approval approve <the printed approval>"
    )]
    Elevate(ElevateArgs),
    /// Print the client and server versions
    Version(VersionArgs),
    /// Check this host for the sandbox of the local runtime (Landlock, namespaces, cgroups, agent
    /// user) and whether the server answers
    #[command(
        after_help = "Examples:\n  agentctl diagnose\n  agentctl diagnose --user agentplane-agent -o json\n  agentctl diagnose --run my-run        # the protections that were in force for a run"
    )]
    Diagnose(DiagnoseArgs),
    /// Print a shell completion script
    #[command(after_help = "Example:\n  agentctl completion bash > /etc/bash_completion.d/agentctl")]
    Completion(CompletionArgs),
    /// Run the agentplane server
    Server(agentplane_server::ServerArgs),
}

#[derive(Debug, Args)]
pub struct ElevateArgs {
    /// The Environment whose cap is raised
    #[arg(long, value_name = "NAME")]
    pub environment: String,
    /// The level, L1–L5 (or 1–5)
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    pub to: u8,
    /// For how long (at most the environment's spec.emergency.maxMinutes)
    #[arg(long, value_name = "N")]
    pub minutes: f64,
    /// Why (required; recorded)
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_level(s: &str) -> Result<u8, String> {
    let n = s.strip_prefix(['L', 'l']).unwrap_or(s);
    match n.parse::<u8>() {
        Ok(l @ 1..=5) => Ok(l),
        _ => Err(format!("{s:?} is not a takeover level; use L1 to L5")),
    }
}

#[derive(Debug, Args)]
pub struct ApprovalArgs {
    #[command(subcommand)]
    pub command: ApprovalCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// List approvals in the namespace (pending first)
    #[command(after_help = "Examples:\n  agentctl approval list\n  agentctl approval list --pending -n prod-team")]
    List(ApprovalListArgs),
    /// Approve: the run it holds may start
    #[command(after_help = "Example:\n  agentctl approval approve deploy-42-start --reason \"change ticket 1234\"")]
    Approve(ApprovalDecideArgs),
    /// Deny: the run it holds ends Failed (ApprovalDenied)
    #[command(after_help = "Example:\n  agentctl approval deny deploy-42-start --reason \"not during the freeze\"")]
    Deny(ApprovalDecideArgs),
}

#[derive(Debug, Args)]
pub struct ApprovalListArgs {
    /// Only approvals still waiting for a decision
    #[arg(long)]
    pub pending: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ApprovalDecideArgs {
    /// The Approval's name (see `agentctl approval list`)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Why (recorded with the decision)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TakeoverArgs {
    #[command(subcommand)]
    pub command: TakeoverCommand,
}

#[derive(Debug, Subcommand)]
pub enum TakeoverCommand {
    /// Show the levels that apply to an agent (and environment) and the effective level a run gets
    #[command(
        after_help = "Examples:\n  agentctl takeover get --agent coder\n  agentctl takeover get --agent coder --environment prod --level 4"
    )]
    Get(TakeoverGetArgs),
    /// Change an agent's earned level or an environment's cap; a reason is required and recorded
    #[command(after_help = "Examples:\n  agentctl takeover set --agent coder --level 4 --reason \"50 clean runs\"\n  \
                      agentctl takeover set --environment prod --max-level 1 --reason \"release freeze\"")]
    Set(TakeoverSetArgs),
}

#[derive(Debug, Args)]
pub struct TakeoverGetArgs {
    /// The Agent
    #[arg(long, value_name = "NAME")]
    pub agent: String,
    /// The Environment a run would use [default: none — development defaults]
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// The level a run would ask for (1–5) [default: the environment's default]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub level: Option<u8>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["agent", "environment"])))]
pub struct TakeoverSetArgs {
    /// Set this Agent's earned level (with --level)
    #[arg(long, value_name = "NAME", requires = "level", conflicts_with = "max_level")]
    pub agent: Option<String>,
    /// Set this Environment's cap, spec.maxTakeoverLevel (with --max-level)
    #[arg(long, value_name = "NAME", requires = "max_level", conflicts_with = "level")]
    pub environment: Option<String>,
    /// The agent's new earned level (1–5)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub level: Option<u8>,
    /// The environment's new cap (1–5)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub max_level: Option<u8>,
    /// Why (required; recorded with who and when)
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored)
    ///
    /// The role is granted in the namespace given with -n/--namespace, or cluster-wide without it
    /// (the configured default namespace does not apply).
    #[command(
        after_help = "Examples:\n  agentctl token create --name ci --role submitter --namespace team-a --expires 30d\n  \
                            agentctl token create --name ops --role operator"
    )]
    Create(TokenCreateArgs),
    /// List tokens (never the tokens themselves)
    List(TokenListArgs),
    /// Revoke a token by name or id; it stops working at once
    #[command(after_help = "Example:\n  agentctl token revoke ci")]
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Name of the token (unique among active tokens; the ledger records its calls as user:NAME)
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// viewer, submitter, approver, operator or admin (see docs/rbac.md)
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// Lifetime, e.g. 30d, 12h, 90m [default: no expiry]
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// Name or id of the token
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// File, directory (its *.yaml, *.yml and *.json files) or '-' for stdin; repeatable
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", required = true)]
    pub files: Vec<PathBuf>,
    /// Descend into sub-directories of directories given with -f
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Kind: singular, plural or short name (run, agentruns, ar, ...)
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// Name of one object; omit to list
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Label selector, e.g. 'team=a,tier!=prod'
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Field selector, e.g. 'status.phase=Running'
    #[arg(long, value_name = "SELECTOR")]
    pub field_selector: Option<String>,
    /// List across all namespaces
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Return at most N objects (one request; the list's continue token is kept in -o json/yaml)
    #[arg(long, value_name = "N", conflicts_with = "name")]
    pub limit: Option<u32>,
    /// Page size used to fetch whole lists; 0 fetches in one request
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub chunk_size: u32,
    /// After the current state, print a line for every change until interrupted
    #[arg(short = 'w', long, conflicts_with = "limit")]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Kind: singular, plural or short name
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// Name of the object
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kind: singular, plural or short name
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// Names of the objects
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The agent user to look for (a name or uid:gid), as in the server's `[sandbox] user`
    #[arg(long, value_name = "USER", default_value = "agentplane-agent")]
    pub user: String,
    /// Also show which protections were in force for this run (its `status.sandbox`)
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(subcommand)]
    pub command: RunCommand,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Submit an AgentRun (POST; idempotent with --idempotency-key), optionally waiting for it
    #[command(after_help = concat!(
        "With --wait: exit 0 when the run Succeeded, 9 when it Failed, 10 when it was Cancelled, \
         11 when --wait-timeout passed.\n\n",
        "Examples:\n  agentctl run submit --agent hello --text \"say hi\" --wait\n  \
         agentctl run submit --agent coder --impl fix-bug --param issue=42 --idempotency-key fix-42\n  \
         agentctl run submit --agent coder --file task.md --timeout 30m --retry-limit 2 -o name"
    ))]
    Submit(RunSubmitArgs),
    /// Wait until a run ends; exit 0 only when it Succeeded
    #[command(after_help = concat!(
        "Exit codes: 0 when the run Succeeded, 9 when it Failed, 10 when it was Cancelled, \
         11 when the wait timed out (3 if the run does not exist).\n\n",
        "Example:\n  agentctl run wait my-run --timeout 10m"
    ))]
    Wait(RunWaitArgs),
    /// Show one run (like 'get agentrun NAME')
    #[command(after_help = "Example:\n  agentctl run get my-run -o yaml")]
    Get(RunGetArgs),
    /// List runs, optionally by phase and agent (like 'get agentruns')
    #[command(after_help = "Examples:\n  agentctl run list --phase Running\n  agentctl run list --agent coder -A")]
    List(RunListArgs),
    /// Print a line for every change of a run until it ends
    #[command(after_help = concat!(
        "Exit codes as 'run wait': 0 when the run Succeeded, 9 when it Failed, 10 when it was Cancelled, \
         11 when --timeout passed, 3 if the run does not exist or is deleted.\n\n",
        "Example:\n  agentctl run watch my-run"
    ))]
    Watch(RunWatchArgs),
    /// Print a run's output (stdout and stderr of every attempt); -f follows it until the run ends
    #[command(after_help = concat!(
        "With -f: exit 0 when the run Succeeded, 9 when it Failed, 10 when it was Cancelled \
         (3 if the run does not exist).\n\n",
        "Examples:\n  agentctl run logs my-run\n  agentctl run logs my-run -f\n  agentctl run logs my-run --tail-bytes 4096"
    ))]
    Logs(RunLogsArgs),
    /// Cancel a run: a pending run ends at once, a running one is stopped (SIGTERM, then SIGKILL)
    #[command(after_help = concat!(
        "Exit 0 when the run is cancelled, being stopped, or had already finished; 3 if it does not exist.\n\n",
        "Example:\n  agentctl run cancel my-run && agentctl run wait my-run"
    ))]
    Cancel(RunCancelArgs),
}

/// A duration flag: `<number><unit>` pairs with units s, m, h, d, w (`90s`, `30m`, `1h30m`).
pub fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::ledger::parse_duration(s)
        .and_then(|d| d.to_std().ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration such as 90s, 30m, 2h or 1h30m"))
}

/// A `--param k=v` flag.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("task").required(true).args(["implementation", "text", "file"])))]
pub struct RunSubmitArgs {
    /// The Agent that runs the task
    #[arg(long, value_name = "AGENT")]
    pub agent: String,
    /// The task by reference: the name of an ImplementationSpec
    #[arg(long = "impl", value_name = "NAME")]
    pub implementation: Option<String>,
    /// The task inline, as text
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// The task inline, read from a file (e.g. a Markdown spec)
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A parameter for the agent's templates; repeatable
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Resubmitting with the same key (and the same spec) answers the existing run
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// The Environment to run in
    #[arg(long, value_name = "ENV")]
    pub environment: Option<String>,
    /// The takeover level to ask for (1–5; capped by the environment and the agent's earned level)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub takeover_level: Option<u8>,
    /// Time limit of one attempt (90s, 30m, 2h) [default: the Agent's]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub timeout: Option<std::time::Duration>,
    /// Retries of retryable failures [default: the Agent's]
    #[arg(long, value_name = "N")]
    pub retry_limit: Option<u32>,
    /// Name of the run [default: generated from the agent's name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Then wait until the run ends, as 'run wait' does, and print its log
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 11) [default: wait until the run ends]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg, requires = "wait")]
    pub wait_timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RunWaitArgs {
    /// Name of the run
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Give up after this long (exit 11) [default: wait until the run ends]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RunWatchArgs {
    /// Name of the run
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Give up after this long (exit 11) [default: until the run ends]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RunLogsArgs {
    /// Name of the run
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Keep printing output as it is written until the run ends
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N bytes of the log (with -f: then follow from there)
    #[arg(long, value_name = "N")]
    pub tail_bytes: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RunCancelArgs {
    /// Name of the run
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct RunGetArgs {
    /// Name of the run
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A run phase, as `--phase` takes it (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    #[value(name = "Pending")]
    Pending,
    #[value(name = "Running")]
    Running,
    #[value(name = "Succeeded")]
    Succeeded,
    #[value(name = "Failed")]
    Failed,
    #[value(name = "Cancelled")]
    Cancelled,
}

impl PhaseArg {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseArg::Pending => "Pending",
            PhaseArg::Running => "Running",
            PhaseArg::Succeeded => "Succeeded",
            PhaseArg::Failed => "Failed",
            PhaseArg::Cancelled => "Cancelled",
        }
    }
}

#[derive(Debug, Args)]
pub struct RunListArgs {
    /// Only runs in this phase
    #[arg(long, value_enum, ignore_case = true, value_name = "PHASE")]
    pub phase: Option<PhaseArg>,
    /// Only runs of this Agent
    #[arg(long, value_name = "AGENT")]
    pub agent: Option<String>,
    /// Label selector, e.g. 'team=a'
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// List across all namespaces
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute every hash, link and checkpoint signature, online or on an exported file
    #[command(after_help = "Exit code 8 when the ledger does not verify.\n\nExamples:\n  \
                            agentctl ledger verify\n  agentctl ledger verify --from 5000\n  \
                            agentctl ledger verify --export-file ledger.jsonl --public-key ledger.pub")]
    Verify(LedgerVerifyArgs),
    /// List ledger entries matching filters (follows pages to the end unless --limit)
    ///
    /// -n/--namespace filters by namespace when given on the command line; without it, entries of
    /// every namespace are listed (the configured default namespace does not apply).
    #[command(after_help = "Examples:\n  agentctl ledger query --since 1h\n  \
                            agentctl ledger query --target agent/default/coder -o json\n  \
                            agentctl ledger query --actor user:alice --action resource.deleted --since 7d")]
    Query(LedgerQueryArgs),
    /// Stream the whole ledger (checkpoints and entries) as JSON lines or CSV
    #[command(after_help = "Examples:\n  agentctl ledger export --format jsonl -f ledger.jsonl\n  \
                            agentctl ledger export --format csv > ledger.csv")]
    Export(LedgerExportArgs),
    /// Counts, denials, approvals, top agents and anomalies of one day (UTC)
    #[command(after_help = "Example:\n  agentctl ledger summary --day 2026-11-24")]
    Summary(LedgerSummaryArgs),
    /// Print the server's ledger public key (PEM; -o json for key id and base64), to pin it
    #[command(after_help = "Example:\n  agentctl ledger public-key > ledger.pub\n  \
                            agentctl ledger verify --export-file ledger.jsonl --public-key ledger.pub")]
    PublicKey(LedgerPublicKeyArgs),
}

#[derive(Debug, Args)]
pub struct LedgerPublicKeyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct LedgerVerifyArgs {
    /// Start at this entry: its prevHash is trusted, earlier entries are not checked
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// Verify this file written by 'agentctl ledger export --format jsonl' (offline: no server)
    #[arg(long, value_name = "FILE")]
    pub export_file: Option<PathBuf>,
    /// The ed25519 public key to check checkpoint signatures with: a file (PEM, base64, or the
    /// JSON of GET /api/v1/ledger/public-key) or the base64 key itself [default: the server's
    /// key; offline, the key in the export's header, which is not pinned]
    #[arg(long, value_name = "FILE|BASE64")]
    pub public_key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct LedgerQueryArgs {
    /// Entries at or after this time: RFC 3339 or a duration ago (30s, 15m, 1h, 7d, 2w, 1h30m)
    #[arg(long, value_name = "TIME", value_parser = crate::ledger::parse_time_arg)]
    pub since: Option<crate::ledger::TimeArg>,
    /// Entries before this time: RFC 3339 or a duration ago
    #[arg(long, value_name = "TIME", value_parser = crate::ledger::parse_time_arg)]
    pub until: Option<crate::ledger::TimeArg>,
    /// Entries of this AgentRun
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
    /// Entries by this actor: 'ID' or 'KIND:ID' (user:alice, agent:coder, system:scheduler)
    #[arg(long, value_name = "ACTOR")]
    pub actor: Option<String>,
    /// Entries with this action, e.g. resource.created
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Entries with this outcome: success, failure, denied, pending, ...
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Option<String>,
    /// Entries about one object: KIND/NAMESPACE/NAME (kind as singular, plural or short name)
    #[arg(long, value_name = "KIND/NS/NAME")]
    pub target: Option<String>,
    /// Return at most N entries (the JSON/YAML output keeps the continue token)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Entries fetched per request while following pages (1 to 5000)
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub chunk_size: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Format of `ledger export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Header line, checkpoint lines, entry lines: what 'ledger verify --export-file' reads
    Jsonl,
    /// One row per entry, with a header row
    Csv,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        }
    }
}

#[derive(Debug, Args)]
pub struct LedgerExportArgs {
    /// Export format
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: ExportFormat,
    /// Write to this file instead of stdout (written to FILE.partial, renamed when complete)
    #[arg(short = 'f', long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct LedgerSummaryArgs {
    /// The day (UTC) to summarise, YYYY-MM-DD [default: today, UTC]
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub day: Option<chrono::NaiveDate>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// Shell to generate the script for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        // Catches flag clashes, e.g. a server flag named like a global flag.
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_command() {
        let cli = Cli::try_parse_from(["agentctl", "get", "runs", "-n", "x", "-o", "json"]).unwrap();
        let Command::Get(get) = cli.command else { panic!("not get") };
        assert_eq!(get.client.namespace.as_deref(), Some("x"));
        assert_eq!(get.client.output, Some(OutputFormat::Json));
        let cli =
            Cli::try_parse_from(["agentctl", "-n", "x", "--server", "http://a:1", "get", "runs", "-n", "y"]).unwrap();
        let Command::Get(get) = cli.command else { panic!("not get") };
        let merged = cli.global.merged(&get.client);
        assert_eq!(merged.namespace.as_deref(), Some("y"));
        assert_eq!(merged.server.as_deref(), Some("http://a:1"));
    }

    #[test]
    fn name_and_all_namespaces_conflict() {
        assert!(Cli::try_parse_from(["agentctl", "get", "runs", "a", "-A"]).is_err());
    }
}
