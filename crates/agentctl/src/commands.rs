//! The client commands: apply, get, describe, delete, version.

use agentplane_api::Kind;
use chrono::Utc;
use serde_json::{Value, json};

use crate::cli::{ApplyArgs, DeleteArgs, DescribeArgs, GetArgs, OutputFormat};
use crate::client::{Client, ListQuery};
use crate::config::Settings;
use crate::error::{CliError, Exit, ExitTally};
use crate::manifest;
use crate::output::{self, Printer};

/// What every client command needs.
#[derive(Debug)]
pub struct Ctx {
    pub settings: Settings,
    pub printer: Printer,
}

impl Ctx {
    pub fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.settings.server, self.settings.token.clone())
    }
}

fn parse_kind(s: &str) -> Result<Kind, CliError> {
    Kind::parse_loose(s).map_err(|e| CliError::Invalid(e.to_string()))
}

/// `apply -f ...`: each document is applied on its own; failures are reported and the others
/// continue. The exit code is that of the first specific failure. An unreachable server stops
/// everything at once.
pub async fn apply(ctx: &Ctx, args: ApplyArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let p = &ctx.printer;
    let mut tally = ExitTally::default();
    let mut applied = Vec::new();
    let mut seen = 0usize;
    for source in manifest::collect_sources(&args.files, args.recursive) {
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                p.error("", &e);
                tally.record(e.exit());
                continue;
            }
        };
        for doc in manifest::documents(&source) {
            seen += 1;
            let prefix = format!("{}: ", doc.label);
            let target =
                doc.value.and_then(|v| manifest::target(v, &ctx.settings.namespace, ctx.settings.namespace_explicit));
            let target = match target {
                Ok(t) => t,
                Err(e) => {
                    p.error(&prefix, &e);
                    tally.record(e.exit());
                    continue;
                }
            };
            match client.apply(target.kind, &target.namespace, &target.name, &target.body).await {
                Ok((result, stored)) => match p.format {
                    OutputFormat::Table => {
                        p.line(&format!("{} {}", output::kind_name(target.kind, &target.name), result.as_str()))?;
                    }
                    OutputFormat::Name => p.line(&output::kind_name(target.kind, &target.name))?,
                    OutputFormat::Json | OutputFormat::Yaml => applied.push(stored),
                },
                Err(e @ CliError::Unreachable { .. }) => return Err(e),
                Err(e) => {
                    p.error(&prefix, &e);
                    tally.record(e.exit());
                }
            }
        }
    }
    if seen == 0 && tally.result() == Exit::Ok {
        return Err(CliError::Invalid("no objects passed to apply (the files hold no documents)".into()));
    }
    p.values(applied)?;
    Ok(tally.result())
}

/// `get KIND [NAME]`.
pub async fn get(ctx: &Ctx, args: GetArgs) -> Result<Exit, CliError> {
    let kind = parse_kind(&args.kind)?;
    let client = ctx.client()?;
    let p = &ctx.printer;
    let ns = ctx.settings.namespace.as_str();
    let now = Utc::now();

    if let Some(name) = &args.name {
        let obj = client.get(kind, ns, name).await?;
        match p.format {
            OutputFormat::Table => p.out(&output::table(kind, std::slice::from_ref(&obj), false, now))?,
            OutputFormat::Name => p.line(&output::kind_name(kind, output::name_of(&obj)))?,
            OutputFormat::Json | OutputFormat::Yaml => p.value(&obj)?,
        }
        return Ok(Exit::Ok);
    }

    let scope = if args.all_namespaces { None } else { Some(ns) };
    let mut query = ListQuery {
        label_selector: args.selector.clone(),
        field_selector: args.field_selector.clone(),
        limit: args.limit.or(Some(args.chunk_size).filter(|&c| c > 0)),
        continue_token: None,
    };
    let mut list = client.list(kind, scope, &query).await?;
    if args.limit.is_none() {
        // Follow continue tokens to the end; the result is one list without a token.
        let mut items = take_items(&mut list);
        while let Some(token) = continue_token(&list) {
            if query.continue_token.as_deref() == Some(token.as_str()) {
                return Err(CliError::Other(format!("the server repeated continue token {token:?}")));
            }
            query.continue_token = Some(token);
            let mut page = client.list(kind, scope, &query).await?;
            items.append(&mut take_items(&mut page));
            list["metadata"] = page.get("metadata").cloned().unwrap_or(Value::Null);
        }
        if let Some(meta) = list.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("continue");
        }
        list["items"] = Value::Array(items);
    }
    let items = list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();

    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&list)?,
        _ if items.is_empty() => match scope {
            Some(ns) => p.note(&format!("No {} found in namespace {ns}.", kind.plural())),
            None => p.note(&format!("No {} found.", kind.plural())),
        },
        OutputFormat::Table => p.out(&output::table(kind, &items, args.all_namespaces, now))?,
        OutputFormat::Name => {
            let names: String =
                items.iter().map(|o| format!("{}\n", output::kind_name(kind, output::name_of(o)))).collect();
            p.out(&names)?;
        }
    }
    Ok(Exit::Ok)
}

fn take_items(list: &mut Value) -> Vec<Value> {
    match list.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

fn continue_token(list: &Value) -> Option<String> {
    list.pointer("/metadata/continue").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_string)
}

/// `describe KIND NAME`.
pub async fn describe(ctx: &Ctx, args: DescribeArgs) -> Result<Exit, CliError> {
    let kind = parse_kind(&args.kind)?;
    let obj = ctx.client()?.get(kind, &ctx.settings.namespace, &args.name).await?;
    ctx.printer.out(&output::describe(kind, &obj, Utc::now()))?;
    Ok(Exit::Ok)
}

/// `delete KIND NAME...`: each name on its own; the exit code is that of the first specific
/// failure.
pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<Exit, CliError> {
    let kind = parse_kind(&args.kind)?;
    let client = ctx.client()?;
    let p = &ctx.printer;
    let mut tally = ExitTally::default();
    let mut deleted = Vec::new();
    for name in &args.names {
        match client.delete(kind, &ctx.settings.namespace, name).await {
            Ok(last) => match p.format {
                OutputFormat::Table => p.line(&format!("{} deleted", output::kind_name(kind, name)))?,
                OutputFormat::Name => p.line(&output::kind_name(kind, name))?,
                OutputFormat::Json | OutputFormat::Yaml => deleted.push(last),
            },
            Err(e @ CliError::Unreachable { .. }) => return Err(e),
            Err(e) => {
                p.error("", &e);
                tally.record(e.exit());
            }
        }
    }
    p.values(deleted)?;
    Ok(tally.result())
}

/// `version`: an unreachable server is not an error here.
pub async fn version(ctx: &Ctx) -> Result<Exit, CliError> {
    let client_version = env!("CARGO_PKG_VERSION");
    let client = ctx.client()?;
    let server = match client.version().await {
        Ok(v) => Some(v),
        Err(CliError::Unreachable { .. }) => None,
        Err(e) => return Err(e),
    };
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => p.value(&json!({
            "clientVersion": client_version,
            "server": client.server(),
            "serverVersion": server,
        }))?,
        OutputFormat::Table | OutputFormat::Name => {
            p.line(&format!("Client: {client_version}"))?;
            match server {
                Some(v) => {
                    let version = v.get("version").and_then(Value::as_str).unwrap_or("unknown");
                    p.line(&format!("Server: {version} ({})", client.server()))?;
                }
                None => p.line(&format!("Server: unreachable ({})", client.server()))?,
            }
        }
    }
    Ok(Exit::Ok)
}
