//! `agentctl token create|list|revoke`: API tokens (admin only; see docs/rbac.md).

use serde_json::{Value, json};

use crate::cli::{OutputFormat, TokenCreateArgs, TokenRevokeArgs};
use crate::commands::Ctx;
use crate::error::{CliError, Exit};
use crate::output::StreamTable;

/// Creates a token and prints it once: the token alone on stdout (table, name), or the whole
/// reply (json, yaml). A note on stderr says it will not be shown again.
pub async fn create(ctx: &Ctx, args: TokenCreateArgs) -> Result<Exit, CliError> {
    let mut body = json!({"name": args.name, "role": args.role});
    if ctx.settings.namespace_explicit {
        body["namespace"] = json!(ctx.settings.namespace);
    }
    if let Some(e) = &args.expires {
        body["expiresIn"] = json!(e);
    }
    let reply = ctx.client()?.create_token(&body).await?;
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
        OutputFormat::Table | OutputFormat::Name => {
            p.line(reply.get("token").and_then(Value::as_str).unwrap_or_default())?;
            let scope = match reply.get("namespace").and_then(Value::as_str) {
                Some(ns) => format!("in namespace {ns}"),
                None => "cluster-wide".to_string(),
            };
            p.note(&format!(
                "token {} created ({} {scope}); it is shown only once, store it now",
                args.name,
                reply.get("role").and_then(Value::as_str).unwrap_or_default()
            ));
        }
    }
    Ok(Exit::Ok)
}

fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

pub async fn list(ctx: &Ctx) -> Result<Exit, CliError> {
    let reply = ctx.client()?.list_tokens().await?;
    let items = reply.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
        OutputFormat::Name => {
            for i in &items {
                p.line(&format!("token/{}", cell(i, "name")))?;
            }
        }
        OutputFormat::Table => {
            let header: Vec<String> =
                ["NAME", "ID", "ROLE", "NAMESPACE", "CREATED BY", "EXPIRES", "STATUS"].map(String::from).to_vec();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    let status = if i.get("revokedAt").is_some_and(|v| !v.is_null()) {
                        "revoked"
                    } else if i.get("active").and_then(Value::as_bool) == Some(true) {
                        "active"
                    } else {
                        "expired"
                    };
                    let ns = match i.get("namespace").and_then(Value::as_str) {
                        Some(ns) => ns.to_string(),
                        None => "(cluster)".into(),
                    };
                    vec![
                        cell(i, "name"),
                        cell(i, "id"),
                        cell(i, "role"),
                        ns,
                        cell(i, "createdBy"),
                        cell(i, "expiresAt"),
                        status.to_string(),
                    ]
                })
                .collect();
            p.out(&StreamTable::render(&header, &rows))?;
        }
    }
    Ok(Exit::Ok)
}

pub async fn revoke(ctx: &Ctx, args: TokenRevokeArgs) -> Result<Exit, CliError> {
    let reply = ctx.client()?.revoke_token(&args.name).await?;
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&reply)?,
        _ => p.line(&format!("token/{} revoked", cell(&reply, "name")))?,
    }
    Ok(Exit::Ok)
}
