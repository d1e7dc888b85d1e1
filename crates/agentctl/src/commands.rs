//! The client commands: apply, get (and its watch), describe, delete, version.

use std::collections::HashMap;
use std::time::Duration;

use agentplane_api::Kind;
use chrono::Utc;
use serde_json::{Value, json};

use crate::cli::{ApplyArgs, DeleteArgs, DescribeArgs, GetArgs, OutputFormat};
use crate::client::{Client, ListQuery};
use crate::config::Settings;
use crate::error::{ApiError, CliError, Exit, ExitTally};
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
    if args.watch {
        return watch_get(ctx, &client, kind, &args).await;
    }

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

/// `describe KIND NAME`; a run ends with its `Events:` (from `GET .../events`).
pub async fn describe(ctx: &Ctx, args: DescribeArgs) -> Result<Exit, CliError> {
    let kind = parse_kind(&args.kind)?;
    let client = ctx.client()?;
    let obj = client.get(kind, &ctx.settings.namespace, &args.name).await?;
    let now = Utc::now();
    let mut text = output::describe(kind, &obj, now);
    if kind == Kind::AgentRun {
        match client.run_events(&ctx.settings.namespace, &args.name).await {
            Ok(list) => {
                let items = list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                text.push_str(&output::run_events(&items, now));
            }
            Err(e @ CliError::Unreachable { .. }) => return Err(e),
            Err(e) => text.push_str(&format!("Events:           <unavailable: {e}>\n")),
        }
    }
    ctx.printer.out(&text)?;
    Ok(Exit::Ok)
}

// ---------------------------------------------------------------------------------------------
// Watching

/// `get KIND [NAME] -w`: the current objects, then a line per change until interrupted.
async fn watch_get(ctx: &Ctx, client: &Client, kind: Kind, args: &GetArgs) -> Result<Exit, CliError> {
    let ns = ctx.settings.namespace.as_str();
    let mut query = ListQuery {
        label_selector: args.selector.clone(),
        field_selector: args.field_selector.clone().filter(|f| !f.trim().is_empty()),
        limit: None,
        continue_token: None,
    };
    let (scope, initial, from) = match &args.name {
        Some(name) => {
            let obj = client.get(kind, ns, name).await?;
            let by_name = format!("metadata.name={name}");
            query.field_selector = Some(match query.field_selector.take() {
                Some(f) => format!("{f},{by_name}"),
                None => by_name,
            });
            let from = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0").to_string();
            (Some(ns), vec![obj], from)
        }
        None => {
            let scope = if args.all_namespaces { None } else { Some(ns) };
            let mut page_query = query.clone();
            page_query.limit = Some(args.chunk_size).filter(|&c| c > 0);
            let mut items = Vec::new();
            let mut from = None;
            loop {
                let mut page = client.list(kind, scope, &page_query).await?;
                // Watch from the first page's revision: nothing after it is missed (a change seen
                // twice prints once).
                from.get_or_insert_with(|| {
                    page.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0").to_string()
                });
                items.append(&mut take_items(&mut page));
                match continue_token(&page) {
                    Some(t) if page_query.continue_token.as_deref() != Some(t.as_str()) => {
                        page_query.continue_token = Some(t)
                    }
                    Some(t) => return Err(CliError::Other(format!("the server repeated continue token {t:?}"))),
                    None => break,
                }
            }
            (scope, items, from.unwrap_or_else(|| "0".into()))
        }
    };
    let mut view = WatchView::new(ctx, kind, args.all_namespaces, &initial)?;
    follow_changes(client, kind, scope, &query, from, None, |type_, obj| {
        view.show(type_, obj)?;
        Ok(None)
    })
    .await
}

/// Prints what `get -w` and `run watch` see: in table output a line per change (the same line
/// twice in a row for one object is printed once), `-o json` one `{"type", "object"}` per line,
/// `-o yaml` one document per change, `-o name` `<kind>/<name>` per change.
#[derive(Debug)]
pub struct WatchView<'a> {
    ctx: &'a Ctx,
    kind: Kind,
    all_namespaces: bool,
    table: Option<output::StreamTable>,
    last: HashMap<(String, String), String>,
}

impl<'a> WatchView<'a> {
    /// Prints the objects that exist now.
    pub fn new(ctx: &'a Ctx, kind: Kind, all_namespaces: bool, initial: &[Value]) -> Result<WatchView<'a>, CliError> {
        let mut view = WatchView { ctx, kind, all_namespaces, table: None, last: HashMap::new() };
        if ctx.printer.format == OutputFormat::Table && !initial.is_empty() {
            let now = Utc::now();
            let rows: Vec<Vec<String>> =
                initial.iter().map(|o| output::watch_row(kind, o, all_namespaces, now)).collect();
            view.start_table(&rows)?;
        }
        for obj in initial {
            view.show("ADDED", obj)?;
        }
        Ok(view)
    }

    fn start_table(&mut self, rows: &[Vec<String>]) -> Result<(), CliError> {
        let (table, header) = output::watch_table(self.kind, self.all_namespaces, rows);
        self.ctx.printer.out(&table.line(&header))?;
        self.table = Some(table);
        Ok(())
    }

    /// Prints one change.
    pub fn show(&mut self, type_: &str, obj: &Value) -> Result<(), CliError> {
        let p = &self.ctx.printer;
        match p.format {
            OutputFormat::Json => {
                let line = serde_json::to_string(&json!({"type": type_, "object": obj})).unwrap_or_default();
                p.line(&line)
            }
            OutputFormat::Yaml => p.out(&format!("---\n{}", output::to_yaml(&json!({"type": type_, "object": obj})))),
            OutputFormat::Name => p.line(&output::kind_name(self.kind, output::name_of(obj))),
            OutputFormat::Table => {
                let row = output::watch_row(self.kind, obj, self.all_namespaces, Utc::now());
                if self.table.is_none() {
                    self.start_table(std::slice::from_ref(&row))?;
                }
                let Some(table) = &self.table else { return Ok(()) };
                let mut line = table.line(&row);
                if type_ == "DELETED" {
                    line.insert_str(line.len() - 1, "   (deleted)");
                }
                let key = (output::namespace_of(obj).to_string(), output::name_of(obj).to_string());
                if self.last.get(&key) == Some(&line) {
                    return Ok(());
                }
                p.out(&line)?;
                self.last.insert(key, line);
                Ok(())
            }
        }
    }
}

/// Times the server may close a watch in a row before giving up.
const WATCH_RECONNECTS: u32 = 3;

/// Follows the changes of `kind` after revision `from`, calling `on_change(type, object)` for
/// each `ADDED`, `MODIFIED` and `DELETED`, until it returns an exit code (or an error). A watch
/// the server closes (restart, shutdown) is opened again from the last revision seen. Past
/// `deadline`: [`CliError::WaitTimedOut`] (with empty fields for the caller to fill in).
pub async fn follow_changes<F>(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
    query: &ListQuery,
    mut from: String,
    deadline: Option<tokio::time::Instant>,
    mut on_change: F,
) -> Result<Exit, CliError>
where
    F: FnMut(&str, &Value) -> Result<Option<Exit>, CliError>,
{
    let timed_out = || CliError::WaitTimedOut { name: String::new(), after: String::new(), phase: String::new() };
    let mut closed_in_a_row = 0;
    loop {
        let mut stream = client.watch(kind, namespace, query, Some(&from)).await?;
        loop {
            let next = match deadline {
                Some(d) => tokio::time::timeout_at(d, stream.next()).await.map_err(|_| timed_out())??,
                None => stream.next().await?,
            };
            let Some(ev) = next else { break };
            closed_in_a_row = 0;
            if let Some(id) = ev.id.as_ref().filter(|id| !id.is_empty()) {
                from = id.clone();
            }
            let data: Value = serde_json::from_str(&ev.data).map_err(|e| {
                CliError::Other(format!("the server at {} sent a watch event that is not JSON: {e}", client.server()))
            })?;
            match ev.event.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    if let Some(obj) = data.get("object")
                        && let Some(exit) = on_change(&ev.event, obj)?
                    {
                        return Ok(exit);
                    }
                }
                "BOOKMARK" => {
                    if let Some(r) = data.get("revision").and_then(Value::as_str) {
                        from = r.to_string();
                    }
                }
                "ERROR" => {
                    let err = data.get("error").cloned().unwrap_or(Value::Null);
                    let status = if err.get("code").and_then(Value::as_str) == Some("Gone") { 410 } else { 500 };
                    let body = serde_json::to_vec(&err).unwrap_or_default();
                    return Err(CliError::Api(ApiError::from_reply(status, "", &body)));
                }
                _ => {}
            }
        }
        closed_in_a_row += 1;
        if closed_in_a_row > WATCH_RECONNECTS {
            return Err(CliError::Other(format!(
                "the server at {} keeps closing the watch; run the command again",
                client.server()
            )));
        }
        let pause = tokio::time::sleep(Duration::from_millis(500));
        match deadline {
            Some(d) => tokio::time::timeout_at(d, pause).await.map_err(|_| timed_out())?,
            None => pause.await,
        }
    }
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

/// `diagnose`: what this host provides for the local runtime's sandbox (docs/sandbox.md), and
/// whether the configured server answers. Exit 0 when every check passes, 1 otherwise (the table
/// says which failed).
pub async fn diagnose(ctx: &Ctx, args: crate::cli::DiagnoseArgs) -> Result<Exit, CliError> {
    use agentplane_sandbox::probe::{Check, ProbeInput, probe};
    let input = ProbeInput { user: Some(args.user.clone()), cgroup_root: None };
    let host =
        tokio::task::spawn_blocking(move || probe(&input)).await.map_err(|e| CliError::Other(format!("probe: {e}")))?;
    let runner = agentplane_sandbox::find_runner();
    let mut checks = host.checks.clone();
    checks.push(match &runner {
        Some(p) => Check { name: "agent-runner".into(), available: true, detail: p.display().to_string() },
        None => Check {
            name: "agent-runner".into(),
            available: false,
            detail: "agentplane-runner not found next to agentctl or in $AGENTPLANE_RUNNER".into(),
        },
    });
    let client = ctx.client()?;
    let server = match client.version().await {
        Ok(v) => Check {
            name: "server".into(),
            available: true,
            detail: format!(
                "{} answers (version {})",
                client.server(),
                v.get("version").and_then(Value::as_str).unwrap_or("unknown")
            ),
        },
        Err(e) => Check { name: "server".into(), available: false, detail: format!("{}: {e}", client.server()) },
    };
    checks.push(server);
    let ok = checks.iter().all(|c| c.available);
    // The protections a run had: its status.sandbox (written when an attempt ends).
    let run = match &args.run {
        Some(name) => {
            let obj = client.get(Kind::AgentRun, &ctx.settings.namespace, name).await?;
            let protections = obj.pointer("/status/sandbox/protections").cloned().unwrap_or(Value::Null);
            Some((name.clone(), protections))
        }
        None => None,
    };
    let p = &ctx.printer;
    match p.format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let mut v = json!({
                "landlockAbi": host.landlock_abi,
                "runningAsRoot": host.running_as_root,
                "checks": checks,
                "ok": ok,
            });
            if let Some((name, protections)) = &run {
                v["run"] = json!({"name": name, "protections": protections});
            }
            p.value(&v)?
        }
        OutputFormat::Table | OutputFormat::Name => {
            let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
            p.line(&format!("{:width$}  {:4}  DETAIL", "CHECK", "OK"))?;
            for c in &checks {
                p.line(&format!("{:width$}  {:4}  {}", c.name, if c.available { "yes" } else { "no" }, c.detail))?;
            }
            if let Some((name, protections)) = &run {
                p.line("")?;
                match protections.as_array() {
                    Some(list) if !list.is_empty() => {
                        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        let width = list.iter().map(|v| s(v, "name").len()).max().unwrap_or(0).max(10);
                        p.line(&format!("agentrun/{name}: protections in force"))?;
                        p.line(&format!("{:width$}  {:11}  REASON", "PROTECTION", "STATUS"))?;
                        for v in list {
                            p.line(&format!("{:width$}  {:11}  {}", s(v, "name"), s(v, "status"), s(v, "reason")))?;
                        }
                    }
                    _ => p.line(&format!(
                        "agentrun/{name}: no sandbox report yet (written when an attempt ends; none for runs not started by the local runtime)"
                    ))?,
                }
            }
        }
    }
    Ok(if ok { Exit::Ok } else { Exit::Other })
}
