//! `agentctl approval list|approve|deny` (docs/governance.md, "Approvals").

use serde_json::{Value, json};

use crate::cli::{ApprovalDecideArgs, ApprovalListArgs, ElevateArgs, OutputFormat};
use crate::client::ListQuery;
use crate::commands::Ctx;
use crate::error::{CliError, Exit};
use crate::output::StreamTable;
use agentplane_api::Kind;

fn s(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("-").to_string()
}

pub async fn list(ctx: &Ctx, args: ApprovalListArgs) -> Result<Exit, CliError> {
    let ns = ctx.settings.namespace.clone();
    let client = ctx.client()?;
    let mut q = ListQuery { limit: Some(500), ..Default::default() };
    let mut items = Vec::new();
    loop {
        let page = client.list(Kind::Approval, Some(&ns), &q).await?;
        items.extend(page.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
        match page.pointer("/metadata/continue").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => q.continue_token = Some(c.to_string()),
            _ => break,
        }
    }
    let pending = |v: &Value| s(v, "/status/phase") == "Pending" || s(v, "/status/phase") == "-";
    if args.pending {
        items.retain(pending);
    }
    items.sort_by_key(|v| (!pending(v), s(v, "/spec/expiresAt")));
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&json!({"items": items}))?,
        OutputFormat::Name => {
            for i in &items {
                p.line(&format!("approval/{}", s(i, "/metadata/name")))?;
            }
        }
        OutputFormat::Table => {
            if items.is_empty() {
                p.note(&format!("no approvals in namespace {ns}"));
                return Ok(Exit::Ok);
            }
            let header: Vec<String> =
                ["NAME", "PHASE", "RUN", "ENVIRONMENT", "SUBJECT", "EXPIRES", "DECIDED BY", "WHAT"]
                    .map(String::from)
                    .to_vec();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    vec![
                        s(i, "/metadata/name"),
                        if pending(i) { "Pending".into() } else { s(i, "/status/phase") },
                        s(i, "/spec/run/name"),
                        s(i, "/spec/environment"),
                        s(i, "/spec/subject"),
                        s(i, "/spec/expiresAt"),
                        s(i, "/status/decidedBy"),
                        s(i, "/spec/operation/argumentsSummary"),
                    ]
                })
                .collect();
            p.out(&StreamTable::render(&header, &rows))?;
        }
    }
    Ok(Exit::Ok)
}

pub async fn decide(ctx: &Ctx, args: ApprovalDecideArgs, verb: &str) -> Result<Exit, CliError> {
    let ns = ctx.settings.namespace.clone();
    let body = match &args.reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    };
    let reply = ctx.client()?.approval_decide(&ns, &args.name, verb, &body).await?;
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
        _ => {
            let run = s(&reply, "/spec/run/name");
            let what = if verb == "approve" {
                "approved: agentrun/{run} may start"
            } else {
                "denied: agentrun/{run} ends Failed"
            };
            p.line(&format!("approval/{} {}", args.name, what.replace("{run}", &run)))?;
        }
    }
    Ok(Exit::Ok)
}

/// `agentctl elevate`: creates the request (an Approval) and prints its name.
pub async fn elevate(ctx: &Ctx, args: ElevateArgs) -> Result<Exit, CliError> {
    let ns = ctx.settings.namespace.clone();
    let body = json!({"level": args.to, "minutes": args.minutes, "reason": args.reason});
    let reply = ctx.client()?.request_elevation(&ns, &args.environment, &body).await?;
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
        _ => {
            let name = s(&reply, "/metadata/name");
            p.line(&format!("approval/{name} created"))?;
            p.note(&format!(
                "an authoriser ({}) grants it with: agentctl approval approve {name}",
                reply
                    .pointer("/spec/approvers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(Exit::Ok)
}
