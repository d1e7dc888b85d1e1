//! `agentctl run`: submit, wait, watch, logs, cancel, get, list.

use std::io::IsTerminal;
use std::time::Duration;

use agentplane_api::{API_VERSION, Kind};
use serde_json::{Map, Value, json};

use crate::cli::{
    GetArgs, OutputFormat, RunCancelArgs, RunGetArgs, RunListArgs, RunLogsArgs, RunSubmitArgs, RunWaitArgs,
    RunWatchArgs,
};
use crate::client::{Client, ListQuery};
use crate::commands::{self, Ctx};
use crate::error::{CliError, Exit};
use crate::output;

/// How often `run wait` reads the run.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How much of the log `run submit --wait` prints at the end.
const SUBMIT_LOG_TAIL: u64 = 64 * 1024;

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
    if let Some(l) = args.takeover_level {
        spec.insert("takeoverLevel".into(), json!(l));
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
        let done = wait_until_done(ctx, &client, &name, args.wait_timeout).await?;
        let exit = print_outcome(ctx, &name, &done)?;
        if p.format == OutputFormat::Table {
            print_log_tail(ctx, &client, &name).await?;
        }
        return Ok(exit);
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
    let client = ctx.client()?;
    let done = wait_until_done(ctx, &client, &args.name, args.timeout).await?;
    print_outcome(ctx, &args.name, &done)
}

/// The exit code of a finished run: 0 only when it Succeeded.
fn exit_of_phase(phase: &str) -> Exit {
    match phase {
        "Succeeded" => Exit::Ok,
        "Cancelled" => Exit::RunCancelled,
        _ => Exit::RunFailed,
    }
}

/// Prints the outcome line (or the object) of a finished run and returns its exit code.
fn print_outcome(ctx: &Ctx, name: &str, obj: &Value) -> Result<Exit, CliError> {
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Table => p.line(&output::run_result(obj))?,
        OutputFormat::Name => p.line(&output::kind_name(Kind::AgentRun, name))?,
        OutputFormat::Json | OutputFormat::Yaml => p.value(obj)?,
    }
    Ok(exit_of_phase(output::run_phase(obj)))
}

/// Polls the run until it ends (or `timeout` passes) and returns it. On a terminal, stderr shows
/// each change (phase, attempt, retry, why it is blocked) as a line, under a spinner line with
/// the time waited.
async fn wait_until_done(ctx: &Ctx, client: &Client, name: &str, timeout: Option<Duration>) -> Result<Value, CliError> {
    let ns = ctx.settings.namespace.as_str();
    let p = &ctx.printer;
    let progress = std::io::stderr().is_terminal();
    let started = tokio::time::Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut last_progress = String::new();
    let mut frame = 0usize;
    let result = loop {
        let obj = match client.get(Kind::AgentRun, ns, name).await {
            Ok(o) => o,
            Err(e) => break Err(e),
        };
        let phase = output::run_phase(&obj);
        if matches!(phase, "Succeeded" | "Failed" | "Cancelled") {
            break Ok(obj);
        }
        if progress {
            let line = output::run_progress(&obj);
            if line != last_progress {
                p.clear_progress();
                p.note(&line);
                last_progress = line;
            }
            p.progress(&output::spinner_line(frame, &last_progress, started.elapsed()));
            frame += 1;
        }
        let mut sleep = POLL_EVERY;
        if let (Some(deadline), Some(timeout)) = (deadline, timeout) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break Err(CliError::WaitTimedOut {
                    name: name.to_string(),
                    after: human_duration(timeout),
                    phase: phase.to_string(),
                });
            }
            sleep = sleep.min(left);
        }
        tokio::time::sleep(sleep).await;
    };
    if progress && frame > 0 {
        p.clear_progress();
    }
    result
}

/// After `run submit --wait`: the end of the run's log, under a header line.
async fn print_log_tail(ctx: &Ctx, client: &Client, name: &str) -> Result<(), CliError> {
    let p = &ctx.printer;
    let ns = ctx.settings.namespace.as_str();
    let run = output::kind_name(Kind::AgentRun, name);
    let (mut body, size) = match client.run_logs(ns, name, Some(SUBMIT_LOG_TAIL)).await {
        Ok(x) => x,
        Err(e) => {
            p.note(&format!("note: cannot read the log of {run}: {e}"));
            return Ok(());
        }
    };
    let mut text = Vec::new();
    while let Some(chunk) = body.chunk().await? {
        text.extend_from_slice(&chunk);
    }
    if text.is_empty() {
        return p.line(&format!("--- log of {run}: empty ---"));
    }
    match size.filter(|&s| s > text.len() as u64) {
        Some(total) => p.line(&format!(
            "--- log of {run} (last {} of {total} bytes; 'agentctl run logs {name}' prints all) ---",
            text.len()
        ))?,
        None => p.line(&format!("--- log of {run} ---"))?,
    }
    if text.last() != Some(&b'\n') {
        text.push(b'\n');
    }
    p.out_bytes(&text)
}

/// `run logs NAME [-f]`: the log as text; with `-f`, followed until the run ends, exiting with
/// the run's outcome.
pub async fn logs(ctx: &Ctx, args: RunLogsArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let ns = ctx.settings.namespace.as_str();
    let p = &ctx.printer;
    if !args.follow {
        let (mut body, _) = client.run_logs(ns, &args.name, args.tail_bytes).await?;
        while let Some(chunk) = body.chunk().await? {
            p.out_bytes(&chunk)?;
        }
        return Ok(Exit::Ok);
    }
    let mut stream = client.follow_run_logs(ns, &args.name, args.tail_bytes).await?;
    loop {
        let Some(ev) = stream.next().await? else {
            return Err(CliError::Other(format!(
                "the log stream of agentrun/{} ended before the run did (the server may be restarting); \
                 run the command again",
                args.name
            )));
        };
        let data = || serde_json::from_str::<Value>(&ev.data).unwrap_or(Value::Null);
        match ev.event.as_str() {
            "log" => p.out(&ev.data)?,
            "truncated" => {
                let message = data().get("message").and_then(Value::as_str).unwrap_or("output was dropped").to_string();
                p.note(&format!("agentctl: {message}"));
            }
            "error" => {
                let message = data().get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string();
                return Err(CliError::Other(format!("the server stopped sending the log: {message}")));
            }
            "end" => {
                let end = data();
                if end.get("deleted").and_then(Value::as_bool) == Some(true) {
                    return Err(CliError::NotFound {
                        kind: Kind::AgentRun.singular(),
                        name: args.name.clone(),
                        namespace: ns.to_string(),
                    });
                }
                return Ok(exit_of_phase(end.get("phase").and_then(Value::as_str).unwrap_or("")));
            }
            _ => {}
        }
    }
}

/// `run cancel NAME`.
pub async fn cancel(ctx: &Ctx, args: RunCancelArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let reply = client.cancel_run(&ctx.settings.namespace, &args.name).await?;
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Table => p.line(&output::cancel_result(&args.name, &reply))?,
        OutputFormat::Name => p.line(&output::kind_name(Kind::AgentRun, &args.name))?,
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
    }
    Ok(Exit::Ok)
}

/// `run watch NAME`: one line per change of the run until it ends; exit codes as `run wait`.
pub async fn watch(ctx: &Ctx, args: RunWatchArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let ns = ctx.settings.namespace.as_str();
    let name = args.name.as_str();
    let obj = client.get(Kind::AgentRun, ns, name).await?;
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut view = commands::WatchView::new(ctx, Kind::AgentRun, false, std::slice::from_ref(&obj))?;
    let not_found =
        || CliError::NotFound { kind: Kind::AgentRun.singular(), name: name.to_string(), namespace: ns.to_string() };
    let phase = output::run_phase(&obj).to_string();
    if matches!(phase.as_str(), "Succeeded" | "Failed" | "Cancelled") {
        return Ok(exit_of_phase(&phase));
    }
    let query = ListQuery { field_selector: Some(format!("metadata.name={name}")), ..ListQuery::default() };
    let from = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0").to_string();
    let mut last_phase = phase;
    let result = commands::follow_changes(&client, Kind::AgentRun, Some(ns), &query, from, deadline, |type_, obj| {
        if type_ == "DELETED" {
            return Err(not_found());
        }
        view.show(type_, obj)?;
        last_phase = output::run_phase(obj).to_string();
        Ok(matches!(last_phase.as_str(), "Succeeded" | "Failed" | "Cancelled").then(|| exit_of_phase(&last_phase)))
    })
    .await;
    match result {
        Err(CliError::WaitTimedOut { after, .. }) => {
            let after = args.timeout.map(human_duration).unwrap_or(after);
            Err(CliError::WaitTimedOut { name: name.to_string(), after, phase: last_phase })
        }
        other => other,
    }
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
        watch: false,
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
        watch: false,
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
