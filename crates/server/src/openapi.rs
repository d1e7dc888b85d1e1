//! The OpenAPI 3.1 document, generated from the kinds and their JSON Schemas. Served at
//! `/api/openapi.json`; a committed copy lives in `docs/api/openapi.json` (`cargo xtask codegen`).

use agentplane_api::schema::schema_for;
use agentplane_api::{API_VERSION, Kind};
use serde_json::{Map, Value, json};

/// Error responses of an authenticated operation: `codes`, plus 401, 403 and 429.
fn err_responses(codes: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    for c in codes.iter().chain(&["401", "403", "429"]) {
        let desc = match *c {
            "401" => {
                "Not authenticated (`Unauthorized`): no, malformed, unknown, expired or revoked credentials; header WWW-Authenticate: Bearer"
            }
            "403" => {
                "Authenticated but not allowed (`Forbidden`); details name the permission and the roles that hold it"
            }
            "429" => "The token's rate limit is spent (`RateLimited`); header Retry-After",
            "400" => "Invalid request or validation failed (`ValidationFailed`, `InvalidRequest`)",
            "404" => "Not found",
            "409" => "Already exists or stale resourceVersion (`AlreadyExists`, `Conflict`)",
            "410" => "The requested resourceVersion is no longer retained (`Gone`)",
            "413" => "Request body larger than the server's limit (`PayloadTooLarge`)",
            "415" => "Unsupported content type",
            "503" => "Store unavailable",
            _ => "Error",
        };
        m.insert(
            (*c).to_string(),
            json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    m
}

fn with(mut base: Map<String, Value>, extra: Map<String, Value>) -> Value {
    base.extend(extra);
    Value::Object(base)
}

/// Rewrite schemars' local `$defs` references into component references under `prefix`.
fn hoist_defs(kind: Kind, mut schema: Value, components: &mut Map<String, Value>) -> Value {
    let prefix = kind.as_str();
    let defs = schema.as_object_mut().and_then(|o| o.remove("$defs"));
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
        o.remove("$id");
    }
    fn rewrite(v: &mut Value, prefix: &str) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get_mut("$ref")
                    && let Some(name) = r.strip_prefix("#/$defs/")
                {
                    *r = format!("#/components/schemas/{prefix}.{name}");
                }
                for (_, c) in o.iter_mut() {
                    rewrite(c, prefix);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| rewrite(c, prefix)),
            _ => {}
        }
    }
    rewrite(&mut schema, prefix);
    if let Some(Value::Object(defs)) = defs {
        for (name, mut d) in defs {
            rewrite(&mut d, prefix);
            components.insert(format!("{prefix}.{name}"), d);
        }
    }
    schema
}

/// `cancel`, `logs` and `events` of an AgentRun (see `crate::runs`).
fn run_subresources(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>, ns: &Value, name: &Value) {
    schemas.insert(
        "CancelResult".into(),
        json!({
            "type": "object",
            "required": ["result", "message", "run"],
            "properties": {
                "result": {"type": "string", "enum": ["cancelled", "cancelling", "alreadyFinished"],
                    "description": "cancelled: a Pending run was ended Cancelled; cancelling: a Running run was asked to stop (status.cancelRequestedAt) and the controller ends it; alreadyFinished: nothing changed"},
                "message": {"type": "string"},
                "run": {"$ref": "#/components/schemas/AgentRun"}
            }
        }),
    );
    schemas.insert(
        "RunEventList".into(),
        json!({
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": {
                "type": "object",
                "required": ["type", "reason", "message", "time", "actor", "seq"],
                "properties": {
                    "type": {"type": "string", "enum": ["Submitted", "Blocked", "Started", "Retrying", "Succeeded", "Failed", "TimedOut", "CancelRequested", "Cancelled"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "time": {"type": "string", "format": "date-time"},
                    "actor": {"type": "string", "description": "kind:id, e.g. user:alice, system:controller"},
                    "attempt": {"type": "integer"},
                    "seq": {"type": "integer", "description": "The ledger entry the event comes from"}
                }
            }}}
        }),
    );
    let tags = json!(["AgentRun"]);
    let cancel_ok = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CancelResult"}}}});
    paths.insert(
        "/api/v1/namespaces/{namespace}/agentruns/{name}/cancel".into(),
        json!({"post": {"operationId": "cancelAgentRun", "tags": tags, "summary": "Cancel a run: a Pending run ends Cancelled at once; a Running run is stopped by the controller (SIGTERM, grace, SIGKILL); a finished run is left alone. The body is ignored.",
            "parameters": [ns, name],
            "responses": with(Map::from_iter([
                ("200".to_string(), cancel_ok("cancelled (was Pending) or alreadyFinished")),
                ("202".to_string(), cancel_ok("cancelling (was Running)")),
            ]), err_responses(&["404", "409", "503"]))}}),
    );
    let tk = json!(["Takeover"]);
    let json_ok = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"type": "object"}}}});
    paths.insert(
        "/api/v1/namespaces/{namespace}/takeover".into(),
        json!({"get": {"operationId": "viewTakeover", "tags": tk, "summary": "The takeover levels that apply to an agent (and environment) and the effective level a run would get, with the recorded changes",
            "parameters": [ns,
                {"name": "agent", "in": "query", "required": true, "schema": {"type": "string"}},
                {"name": "environment", "in": "query", "schema": {"type": "string"}},
                {"name": "level", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 5}, "description": "The level a run would ask for"}],
            "responses": with(Map::from_iter([("200".to_string(), json_ok("{agent, environment, earned, earnedIsDefault, takeover: RunTakeover, agentHistory, environmentHistory}"))]),
                err_responses(&["400", "404"]))}}),
    );
    for verb in ["approve", "deny"] {
        paths.insert(
            format!("/api/v1/namespaces/{{namespace}}/approvals/{{name}}/{verb}"),
            json!({"post": {"operationId": format!("{verb}Approval"), "tags": ["Approval"],
                "summary": format!("{} a pending approval (once; not the submitter of its run; a listed approver when spec.approvers is set). Approving lets the run start; denying ends it Failed/ApprovalDenied.", if verb == "approve" { "Approve" } else { "Deny" }),
                "parameters": [ns, name],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "additionalProperties": false,
                    "properties": {"reason": {"type": "string", "maxLength": 1024}}}}}},
                "responses": with(Map::from_iter([("200".to_string(), json!({"description": "The decided approval", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Approval"}}}}))]),
                    err_responses(&["400", "404", "409"]))}}),
        );
    }
    paths.insert(
        "/api/v1/namespaces/{namespace}/environments/{name}/elevation".into(),
        json!({"post": {"operationId": "requestElevation", "tags": tk,
            "summary": "Ask to raise the environment's cap for a while (emergency). Creates an Approval (tool agentplane.elevation) for the environment's emergency.authorizers; approving it puts the elevation in force (status.elevation) until it reverts on its own.",
            "parameters": [ns, name],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["level", "minutes", "reason"], "additionalProperties": false,
                "properties": {"level": {"type": "integer", "minimum": 1, "maximum": 5}, "minutes": {"type": "number", "exclusiveMinimum": 0, "description": "At most spec.emergency.maxMinutes (default 60)"}, "reason": {"type": "string", "minLength": 1, "maxLength": 1024}}}}}},
            "responses": with(Map::from_iter([("201".to_string(), json!({"description": "The elevation request", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Approval"}}}}))]),
                err_responses(&["400", "404", "422"]))}}),
    );
    for (plural, field) in [("agents", "level"), ("environments", "maxLevel")] {
        paths.insert(
            format!("/api/v1/namespaces/{{namespace}}/{plural}/{{name}}/takeover"),
            json!({"post": {"operationId": format!("setTakeover{}", if plural == "agents" { "Agent" } else { "Environment" }), "tags": tk,
                "summary": format!("Change the {} with a reason; recorded in status.takeoverHistory and as a takeover.changed ledger entry", if plural == "agents" { "agent's earned level" } else { "environment's cap (spec.maxTakeoverLevel)" }),
                "parameters": [ns, name],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": [field, "reason"], "additionalProperties": false,
                    "properties": {field: {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string", "minLength": 1, "maxLength": 1024}}}}}},
                "responses": with(Map::from_iter([("200".to_string(), json_ok("{result: changed|unchanged, kind, name, field, from, to, reason, changedBy, object}"))]),
                    err_responses(&["400", "404", "409"]))}}),
        );
    }
    paths.insert(
        "/api/v1/namespaces/{namespace}/agentruns/{name}/logs".into(),
        json!({"get": {"operationId": "readAgentRunLogs", "tags": tags, "summary": "The run's output (stdout and stderr of every attempt). Followed as server-sent events with follow=true or Accept: text/event-stream: `log` events carry the text, `truncated` says output was dropped by the log cap, `end` carries {phase, exitCode} once the run is finished and its log sent.",
            "parameters": [ns, name,
                {"name": "follow", "in": "query", "schema": {"type": "boolean"}, "description": "Stream as server-sent events until the run ends"},
                {"name": "tailBytes", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "Start this many bytes before the end of the log"}],
            "responses": with(Map::from_iter([("200".to_string(), json!({
                "description": "The log (empty when there is none yet, or when the run's runtime is not local); header X-Agentplane-Log-Size is the file's size",
                "content": {"text/plain": {"schema": {"type": "string"}}, "text/event-stream": {"schema": {"type": "string"}}}}))]),
                err_responses(&["400", "404", "503"]))}}),
    );
    paths.insert(
        "/api/v1/namespaces/{namespace}/agentruns/{name}/events".into(),
        json!({"get": {"operationId": "listAgentRunEvents", "tags": tags, "summary": "The run's history, oldest first, from its ledger entries (empty when the ledger is disabled)",
            "parameters": [ns, name],
            "responses": with(Map::from_iter([("200".to_string(), json!({"description": "The events",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunEventList"}}}}))]),
                err_responses(&["404", "503"]))}}),
    );
}

/// Build the OpenAPI document.
pub fn openapi() -> Value {
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": ["ValidationFailed","InvalidRequest","Unauthorized","Forbidden","NotFound","MethodNotAllowed","AlreadyExists","Conflict","Gone","PayloadTooLarge","UnsupportedMediaType","PolicyDenied","RateLimited","Internal","Unavailable"]},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "Path of the offending field, e.g. spec.text"},
                "details": {"type": "object", "description": "For ValidationFailed: {errors: [{field, reason, message, limit?, actual?}]}"}
            }
        }),
    );
    let mut paths = Map::new();
    let ns_param = json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}});
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let list_params = json!([
        {"name": "labelSelector", "in": "query", "schema": {"type": "string"}, "description": "e.g. app=web,tier!=db,env in (dev,test),!legacy"},
        {"name": "fieldSelector", "in": "query", "schema": {"type": "string"}, "description": "e.g. status.phase=Running"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 5000}},
        {"name": "continue", "in": "query", "schema": {"type": "string"}},
        {"name": "watch", "in": "query", "schema": {"type": "boolean"}, "description": "Stream changes as server-sent events (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)"},
        {"name": "resourceVersion", "in": "query", "schema": {"type": "string"}, "description": "With watch: deliver changes after this revision"}
    ]);
    for kind in Kind::ALL {
        let k = kind.as_str();
        let plural = kind.plural();
        let schema = hoist_defs(kind, schema_for(kind), &mut schemas);
        schemas.insert(k.to_string(), schema);
        schemas.insert(
            format!("{k}List"),
            json!({
                "type": "object",
                "properties": {
                    "apiVersion": {"const": API_VERSION},
                    "kind": {"const": format!("{k}List")},
                    "metadata": {"type": "object", "properties": {"resourceVersion": {"type": "string"}, "continue": {"type": "string"}}},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{k}")}}
                }
            }),
        );
        let obj = json!({"$ref": format!("#/components/schemas/{k}")});
        let one = |d: &str| json!({"description": d, "content": {"application/json": {"schema": obj.clone()}}});
        let body = json!({"required": true, "content": {"application/json": {"schema": obj.clone()}, "application/yaml": {"schema": obj.clone()}}});
        let list_resp = json!({"description": format!("A page of {plural}, or with watch=true a text/event-stream"), "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{k}List")}},
            "text/event-stream": {"schema": {"type": "string"}}}});
        paths.insert(
            format!("/api/v1/{plural}"),
            json!({"get": {"operationId": format!("list{k}AllNamespaces"), "tags": [k], "summary": format!("List or watch {plural} in every namespace"),
                "parameters": list_params, "responses": with(Map::from_iter([("200".to_string(), list_resp.clone())]), err_responses(&["400", "410", "503"]))}}),
        );
        let mut p = list_params.as_array().cloned().unwrap_or_default();
        p.insert(0, ns_param.clone());
        paths.insert(
            format!("/api/v1/namespaces/{{namespace}}/{plural}"),
            json!({
                "get": {"operationId": format!("list{k}"), "tags": [k], "summary": format!("List or watch {plural}"), "parameters": p,
                    "responses": with(Map::from_iter([("200".to_string(), list_resp)]), err_responses(&["400", "410", "503"]))},
                "post": {"operationId": format!("create{k}"), "tags": [k], "summary": format!("Create a {k}"), "parameters": [ns_param], "requestBody": body,
                    "responses": with(Map::from_iter([("201".to_string(), one("Created"))]), err_responses(&["400", "409", "413", "415", "503"]))}
            }),
        );
        paths.insert(
            format!("/api/v1/namespaces/{{namespace}}/{plural}/{{name}}"),
            json!({
                "get": {"operationId": format!("read{k}"), "tags": [k], "parameters": [ns_param, name_param],
                    "responses": with(Map::from_iter([("200".to_string(), one("The object"))]), err_responses(&["404", "503"]))},
                "put": {"operationId": format!("apply{k}"), "tags": [k], "summary": format!("Apply a {k}: create, update, or compare-and-swap when metadata.resourceVersion is set. Header X-Agentplane-Apply-Result says created, configured or unchanged."),
                    "parameters": [ns_param, name_param], "requestBody": body,
                    "responses": with(Map::from_iter([("200".to_string(), one("Configured or unchanged")), ("201".to_string(), one("Created"))]), err_responses(&["400", "404", "409", "413", "415", "503"]))},
                "delete": {"operationId": format!("delete{k}"), "tags": [k], "parameters": [ns_param, name_param, {"name": "resourceVersion", "in": "query", "schema": {"type": "string"}}],
                    "responses": with(Map::from_iter([("200".to_string(), one("The deleted object's last state"))]), err_responses(&["404", "409", "503"]))}
            }),
        );
    }
    run_subresources(&mut paths, &mut schemas, &ns_param, &name_param);
    tokens(&mut paths, &mut schemas);
    let simple = |id: &str, d: &str| json!({"get": {"operationId": id, "tags": ["system"], "security": [], "responses": {"200": {"description": d}, "503": {"description": "Not ready"}}}});
    paths.insert("/healthz".into(), simple("healthz", "The process is alive"));
    paths.insert("/readyz".into(), simple("readyz", "The server can serve requests (store reachable)"));
    paths.insert(
        "/api/v1/version".into(),
        json!({"get": {"operationId": "version", "tags": ["system"], "responses": with(Map::from_iter([("200".to_string(), json!({"description": "Server version"}))]), err_responses(&[]))}}),
    );
    paths.insert("/api/openapi.json".into(), simple("openapi", "This document (public)"));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "agentplane API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The agentplane control-plane API. Generated from the code by `cargo xtask codegen`; do not edit."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "An API token (apt_…), an OIDC JWT, or a run's token (apr_…). See docs/rbac.md."}}
        }
    })
}

/// The token endpoints (admin only).
fn tokens(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    schemas.insert(
        "Token".into(),
        json!({
            "type": "object",
            "required": ["id", "name", "role", "createdAt", "createdBy", "active"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "role": {"type": "string", "enum": ["viewer", "submitter", "approver", "operator", "admin"]},
                "namespace": {"type": ["string", "null"], "description": "null = cluster-wide"},
                "createdAt": {"type": "string", "format": "date-time"},
                "createdBy": {"type": "string"},
                "expiresAt": {"type": ["string", "null"], "format": "date-time"},
                "revokedAt": {"type": ["string", "null"], "format": "date-time"},
                "active": {"type": "boolean"},
                "token": {"type": "string", "description": "Only in the reply to create: the token itself, shown once"}
            }
        }),
    );
    let tags = json!(["Token"]);
    let token = json!({"$ref": "#/components/schemas/Token"});
    paths.insert(
        "/api/v1/tokens".into(),
        json!({
            "get": {"operationId": "listTokens", "tags": tags, "summary": "List API tokens (never the tokens or their hashes)",
                "responses": with(Map::from_iter([("200".to_string(), json!({"description": "The tokens", "content": {"application/json": {"schema": {"type": "object", "properties": {"items": {"type": "array", "items": token}}}}}}))]), err_responses(&["503"]))},
            "post": {"operationId": "createToken", "tags": tags, "summary": "Create an API token; the reply carries it once",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
                    "name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "submitter", "approver", "operator", "admin"]},
                    "namespace": {"type": "string", "description": "Grant the role in this namespace only; absent = cluster-wide"},
                    "expiresIn": {"type": "string", "description": "30d, 12h, 90m or seconds"}}}}}},
                "responses": with(Map::from_iter([("201".to_string(), json!({"description": "Created", "content": {"application/json": {"schema": token}}}))]), err_responses(&["400", "409", "503"]))}
        }),
    );
    paths.insert(
        "/api/v1/tokens/{id}".into(),
        json!({"delete": {"operationId": "revokeToken", "tags": tags, "summary": "Revoke an active token by id or name",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "Token id or name"}],
            "responses": with(Map::from_iter([("200".to_string(), json!({"description": "Revoked", "content": {"application/json": {"schema": token}}}))]), err_responses(&["404", "503"]))}}),
    );
}
