//! The OpenAPI 3.1 document, generated from the kinds and their JSON Schemas. Served at
//! `/api/openapi.json`; a committed copy lives in `docs/api/openapi.json` (`cargo xtask codegen`).

use agentplane_api::schema::schema_for;
use agentplane_api::{API_VERSION, Kind};
use serde_json::{Map, Value, json};

fn err_responses(codes: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    for c in codes {
        let desc = match *c {
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
    let simple = |id: &str, d: &str| json!({"get": {"operationId": id, "tags": ["system"], "responses": {"200": {"description": d}, "503": {"description": "Not ready"}}}});
    paths.insert("/healthz".into(), simple("healthz", "The process is alive"));
    paths.insert("/readyz".into(), simple("readyz", "The server can serve requests (store reachable)"));
    paths.insert("/api/v1/version".into(), simple("version", "Server version"));
    paths.insert("/api/openapi.json".into(), simple("openapi", "This document"));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "agentplane API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The agentplane control-plane API. Generated from the code by `cargo xtask codegen`; do not edit."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": schemas}
    })
}
