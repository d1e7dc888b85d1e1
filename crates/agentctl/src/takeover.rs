//! `agentctl takeover get|set`: an Agent's earned takeover level and an Environment's cap
//! (docs/governance.md).

use agentplane_api::Kind;
use serde_json::{Value, json};

use crate::cli::{OutputFormat, TakeoverGetArgs, TakeoverSetArgs};
use crate::commands::Ctx;
use crate::error::{CliError, Exit};

/// `L<n>`, or `unset` for a level never set.
fn level(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::Number(n)) => format!("L{n}"),
        _ => "unset".into(),
    }
}

fn num(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).map(|x| if x.is_null() { "-".to_string() } else { x.to_string() }).unwrap_or_else(|| "-".into())
}

/// Prints the levels and, after them, the recorded changes (newest last).
pub async fn get(ctx: &Ctx, args: TakeoverGetArgs) -> Result<Exit, CliError> {
    let ns = ctx.settings.namespace.clone();
    let reply = ctx.client()?.takeover_view(&ns, &args.agent, args.environment.as_deref(), args.level).await?;
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
        OutputFormat::Name | OutputFormat::Table => {
            let env = match reply.get("environment").and_then(Value::as_str) {
                Some(e) => format!(
                    "{e} ({})",
                    reply.pointer("/takeover/environmentClass").and_then(Value::as_str).unwrap_or("?")
                ),
                None => "(none: development defaults)".into(),
            };
            let earned_note = if reply.get("earnedIsDefault").and_then(Value::as_bool) == Some(true) {
                " (never set: the server's initial level)"
            } else {
                ""
            };
            let mut out = String::new();
            out.push_str(&format!("Agent:            {}\n", args.agent));
            out.push_str(&format!("Environment:      {env}\n"));
            out.push_str(&format!("Requested:        L{}\n", num(&reply, "/takeover/requested")));
            out.push_str(&format!("Environment cap:  L{}\n", num(&reply, "/takeover/environmentCap")));
            out.push_str(&format!("Earned:           L{}{earned_note}\n", num(&reply, "/takeover/earned")));
            out.push_str(&format!("Effective:        L{}\n", num(&reply, "/takeover/effective")));
            if let Some(sug) = reply.get("suggestion").filter(|v| v.is_object()) {
                out.push_str(&format!(
                    "Suggested:        L{} (pending a human: agentctl takeover set --agent {} --level {} --reason ...): {}\n",
                    num(sug, "/level"),
                    args.agent,
                    num(sug, "/level"),
                    sug.get("reason").and_then(Value::as_str).unwrap_or("")
                ));
            }
            for (title, key) in [("Agent changes:", "agentHistory"), ("Environment changes:", "environmentHistory")] {
                let items = reply.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
                if items.is_empty() {
                    continue;
                }
                out.push_str(&format!("{title}\n"));
                for c in items {
                    out.push_str(&format!(
                        "  {}  {}  {} -> {}  {}\n",
                        c.get("at").and_then(Value::as_str).unwrap_or("-"),
                        c.get("by").and_then(Value::as_str).unwrap_or("-"),
                        level(&c, "/from"),
                        level(&c, "/to"),
                        c.get("reason").and_then(Value::as_str).unwrap_or("")
                    ));
                }
            }
            p.out(&out)?;
        }
    }
    Ok(Exit::Ok)
}

pub async fn set(ctx: &Ctx, args: TakeoverSetArgs) -> Result<Exit, CliError> {
    let ns = ctx.settings.namespace.clone();
    let (kind, name, body) = match (&args.agent, &args.environment) {
        (Some(a), _) => (Kind::Agent, a.clone(), json!({"level": args.level, "reason": args.reason})),
        (None, Some(e)) => (Kind::Environment, e.clone(), json!({"maxLevel": args.max_level, "reason": args.reason})),
        (None, None) => {
            return Err(CliError::Invalid("give --agent NAME --level N or --environment NAME --max-level N".into()));
        }
    };
    let reply = ctx.client()?.takeover_set(kind, &ns, &name, &body).await?;
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
        _ => {
            let what = if kind == Kind::Agent { "earned level" } else { "cap" };
            let line = match reply.get("result").and_then(Value::as_str) {
                Some("unchanged") => {
                    format!("{}/{name} {what} already L{}; nothing changed", kind.plural(), num(&reply, "/to"))
                }
                _ => format!("{}/{name} {what} {} -> {}", kind.plural(), level(&reply, "/from"), level(&reply, "/to")),
            };
            p.line(&line)?;
        }
    }
    Ok(Exit::Ok)
}
