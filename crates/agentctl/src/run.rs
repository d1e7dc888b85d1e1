//! `agentctl run`: submit, wait, get, list.

use std::io::IsTerminal;
use std::time::Duration;

use agentplane_api::{API_VERSION, Kind};
use serde_json::{Map, Value, json};

use crate::cli::{GetArgs, OutputFormat, RunGetArgs, RunListArgs, RunSubmitArgs, RunWaitArgs};
use crate::commands::{self, Ctx};
use crate::error::{CliError, Exit};
use crate::output;

/// How often `run wait` reads the run.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// The AgentRun a `run submit` sends.
fn run_document(args: &RunSubmitArgs, inline_text: Option<String>) -> Value {
    let mut spec = Map::new();
    spec.insert("agentRef".into(), json!({ "name": args.agent }));
    if let Some(name) = &args.implementation {
        spec.insert("implementationSpecRef".into(), json!({ "name": name }));
    }
    if let Some(text) = inline_text {
        spec.insert("implementation".into(), json!({ "inline": { "text": text } }));
    }
    if !args.params.is_empty() {
        let params: Map<String, Value> =
            args.params.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        spec.insert("parameters".into(), Value::Object(params));
    }
    if let Some(env) = &args.environment {
        spec.insert("environment".into(), json!(env));
    }
    if let Some(timeout) = args.timeout {
        spec.insert("timeoutSeconds".into(), json!(timeout.as_secs().max(1)));
    }
    if let Some(limit) = args.retry_limit {
        spec.insert("retryLimit".into(), json!(limit));
    }
    let metadata = match &args.name {
        Some(name) => json!({ "name": name }),
        None => json!({ "generateName": format!("{}-", args.agent) }),
    };
    json!({ "apiVersion": API_VERSION, "kind": Kind::AgentRun.as_str(), "metadata": metadata, "spec": spec })
}

/// `run submit`.
pub async fn submit(ctx: &Ctx, args: RunSubmitArgs) -> Result<Exit, CliError> {
    let inline_text = match (&args.text, &args.file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Other(format!("cannot read {}: {e}", path.display())))?,
        ),
        (None, None) => None,
    };
    let body = run_document(&args, inline_text);
    let client = ctx.client()?;
    let ns = ctx.settings.namespace.as_str();
    let (idempotent, obj) = client.create(Kind::AgentRun, ns, &body, args.idempotency_key.as_deref()).await?;
    let name = output::name_of(&obj).to_string();
    let p = &ctx.printer;
    if args.wait {
        // Only the outcome of the wait is printed in the machine formats.
        if p.format == OutputFormat::Table {
            p.line(&output::run_submitted(&name, idempotent))?;
        }
        return wait_for(ctx, &name, args.wait_timeout).await;
    }
    match p.format {
        OutputFormat::Table => p.line(&output::run_submitted(&name, idempotent))?,
        OutputFormat::Name => p.line(&output::kind_name(Kind::AgentRun, &name))?,
        OutputFormat::Json | OutputFormat::Yaml => p.value(&obj)?,
    }
    Ok(Exit::Ok)
}

/// `run wait NAME`.
pub async fn wait(ctx: &Ctx, args: RunWaitArgs) -> Result<Exit, CliError> {
    wait_for(ctx, &args.name, args.timeout).await
}

/// Polls the run until it ends (or `timeout` passes), showing phase changes on stderr when it is
/// a terminal, then prints the outcome. Exit 0 only when the run Succeeded.
async fn wait_for(ctx: &Ctx, name: &str, timeout: Option<Duration>) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let ns = ctx.settings.namespace.as_str();
    let p = &ctx.printer;
    let progress = std::io::stderr().is_terminal();
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last_progress = String::new();
    let obj = loop {
        let obj = client.get(Kind::AgentRun, ns, name).await?;
        let phase = output::run_phase(&obj);
        if matches!(phase, "Succeeded" | "Failed" | "Cancelled") {
            break obj;
        }
        if progress {
            let line = output::run_progress(&obj);
            if line != last_progress {
                p.note(&line);
                last_progress = line;
            }
        }
        let mut sleep = POLL_EVERY;
        if let (Some(deadline), Some(timeout)) = (deadline, timeout) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(CliError::WaitTimedOut {
                    name: name.to_string(),
                    after: human_duration(timeout),
                    phase: phase.to_string(),
                });
            }
            sleep = sleep.min(left);
        }
        tokio::time::sleep(sleep).await;
    };
    match p.format {
        OutputFormat::Table => p.line(&output::run_result(&obj))?,
        OutputFormat::Name => p.line(&output::kind_name(Kind::AgentRun, name))?,
        OutputFormat::Json | OutputFormat::Yaml => p.value(&obj)?,
    }
    Ok(match output::run_phase(&obj) {
        "Succeeded" => Exit::Ok,
        "Cancelled" => Exit::RunCancelled,
        _ => Exit::RunFailed,
    })
}

/// `90s`, `30m`, `2h`, or whole seconds.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `run get NAME`: `get agentrun NAME`.
pub async fn get(ctx: &Ctx, args: RunGetArgs) -> Result<Exit, CliError> {
    let get = GetArgs {
        kind: Kind::AgentRun.singular(),
        name: Some(args.name),
        selector: None,
        field_selector: None,
        all_namespaces: false,
        limit: None,
        chunk_size: 500,
        client: args.client,
    };
    commands::get(ctx, get).await
}

/// The field selector of `run list`.
fn list_field_selector(args: &RunListArgs) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(phase) = args.phase {
        parts.push(format!("status.phase={}", phase.as_str()));
    }
    if let Some(agent) = &args.agent {
        parts.push(format!("spec.agentRef.name={agent}"));
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

/// `run list`: `get agentruns` with field selectors on the phase and the agent.
pub async fn list(ctx: &Ctx, args: RunListArgs) -> Result<Exit, CliError> {
    if let Some(agent) = &args.agent
        && (agent.contains(',') || agent.is_empty())
    {
        return Err(CliError::Invalid(format!("--agent {agent:?} is not an agent name")));
    }
    let get = GetArgs {
        kind: Kind::AgentRun.singular(),
        name: None,
        selector: args.selector.clone(),
        field_selector: list_field_selector(&args),
        all_namespaces: args.all_namespaces,
        limit: None,
        chunk_size: 500,
        client: args.client,
    };
    commands::get(ctx, get).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, PhaseArg, RunCommand};
    use clap::Parser;

    fn submit_args(argv: &[&str]) -> RunSubmitArgs {
        let mut full = vec!["agentctl", "run", "submit"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_from(full).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        let RunCommand::Submit(s) = run.command else { panic!("not submit") };
        s
    }

    #[test]
    fn submit_builds_the_run() {
        let a = submit_args(&[
            "--agent",
            "hello",
            "--text",
            "say hi",
            "--param",
            "a=1",
            "--param",
            "b=x=y",
            "--timeout",
            "1h30m",
            "--retry-limit",
            "0",
            "--environment",
            "dev",
        ]);
        let doc = run_document(&a, a.text.clone());
        assert_eq!(
            doc,
            json!({"apiVersion": API_VERSION, "kind": "AgentRun", "metadata": {"generateName": "hello-"},
                   "spec": {"agentRef": {"name": "hello"}, "implementation": {"inline": {"text": "say hi"}},
                            "parameters": {"a": "1", "b": "x=y"}, "environment": "dev",
                            "timeoutSeconds": 5400, "retryLimit": 0}})
        );
        let a = submit_args(&["--agent", "a", "--impl", "fix", "--name", "r1"]);
        let doc = run_document(&a, None);
        assert_eq!(doc["metadata"], json!({"name": "r1"}));
        assert_eq!(doc["spec"]["implementationSpecRef"], json!({"name": "fix"}));
        assert!(doc["spec"].get("implementation").is_none());
    }

    #[test]
    fn submit_needs_exactly_one_task() {
        let parse = |argv: &[&str]| {
            let mut full = vec!["agentctl", "run", "submit", "--agent", "a"];
            full.extend_from_slice(argv);
            Cli::try_parse_from(full).map(|_| ())
        };
        assert!(parse(&[]).is_err());
        assert!(parse(&["--text", "x", "--impl", "y"]).is_err());
        assert!(parse(&["--text", "x", "--param", "novalue"]).is_err());
        assert!(parse(&["--text", "x", "--timeout", "soon"]).is_err());
        assert!(parse(&["--text", "x", "--wait-timeout", "1s"]).is_err(), "--wait-timeout needs --wait");
        assert!(parse(&["--text", "x", "--wait", "--wait-timeout", "1s"]).is_ok());
    }

    #[test]
    fn list_selects_phase_and_agent() {
        let cli = Cli::try_parse_from(["agentctl", "run", "list", "--phase", "pending", "--agent", "coder"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        let RunCommand::List(l) = run.command else { panic!("not list") };
        assert_eq!(l.phase, Some(PhaseArg::Pending));
        assert_eq!(list_field_selector(&l).as_deref(), Some("status.phase=Pending,spec.agentRef.name=coder"));
    }

    #[test]
    fn durations_print_in_their_unit() {
        assert_eq!(human_duration(Duration::from_secs(1)), "1s");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
        assert_eq!(human_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
    }
}
