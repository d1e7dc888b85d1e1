//! Reading manifests: files, directories and stdin; multi-document YAML and JSON; and finding
//! each document's kind, namespace and name before it is sent.

use std::io::Read;
use std::path::{Path, PathBuf};

use agentplane_api::{API_VERSION, Kind};
use serde::Deserialize;
use serde_json::Value;

use crate::error::CliError;

/// The text of one input file (or stdin).
#[derive(Debug, Clone)]
pub struct Source {
    /// How messages name it: the path as given, or `<stdin>`.
    pub label: String,
    pub text: String,
    /// Parse as JSON (a `.json` file) rather than YAML.
    pub json: bool,
}

/// Expands the `-f` arguments into sources, in order. A directory contributes its `*.yaml`,
/// `*.yml` and `*.json` files, sorted by name (and those of its sub-directories with
/// `recursive`). Unreadable paths are returned as errors and do not stop the others.
pub fn collect_sources(paths: &[PathBuf], recursive: bool) -> Vec<Result<Source, CliError>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            out.push(match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => Ok(Source { label: "<stdin>".into(), text, json: false }),
                Err(e) => Err(CliError::Other(format!("cannot read stdin: {e}"))),
            });
        } else if path.is_dir() {
            let mut files = Vec::new();
            if let Err(e) = walk(path, recursive, &mut files) {
                out.push(Err(e));
            }
            files.sort();
            out.extend(files.iter().map(|f| read_file(f)));
        } else {
            out.push(read_file(path));
        }
    }
    out
}

fn walk(dir: &Path, recursive: bool, files: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| CliError::Other(format!("cannot read directory {}: {e}", dir.display())))?;
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError::Other(format!("cannot read directory {}: {e}", dir.display())))?;
        let path = entry.path();
        if path.is_dir() {
            if recursive {
                subdirs.push(path);
            }
        } else if is_manifest(&path) {
            files.push(path);
        }
    }
    subdirs.sort();
    for sub in subdirs {
        walk(&sub, recursive, files)?;
    }
    Ok(())
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn read_file(path: &Path) -> Result<Source, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::Other(format!("cannot read {}: {e}", path.display())))?;
    let json = path.extension().and_then(|e| e.to_str()) == Some("json");
    Ok(Source { label: path.display().to_string(), text, json })
}

/// One document of a source, or why it could not be parsed.
#[derive(Debug)]
pub struct Document {
    /// `FILE document N` (and ` item M` for members of a list).
    pub label: String,
    pub value: Result<Value, CliError>,
}

/// Splits a source into its documents. Empty YAML documents are skipped; a document that is a
/// list (a JSON array, or `kind: ...List` with `items`) contributes each item. A YAML syntax
/// error spoils only its own document; a JSON syntax error ends the file.
pub fn documents(src: &Source) -> Vec<Document> {
    let mut values = Vec::new();
    if src.json {
        for v in serde_json::Deserializer::from_str(&src.text).into_iter::<Value>() {
            match v {
                Ok(v) => values.push(Ok(v)),
                Err(e) => {
                    values.push(Err(CliError::Invalid(format!("invalid JSON: {e}"))));
                    break;
                }
            }
        }
    } else {
        for (offset, chunk) in split_yaml(&src.text) {
            for doc in serde_yaml::Deserializer::from_str(&chunk) {
                match Option::<Value>::deserialize(doc) {
                    Ok(None) => {}
                    Ok(Some(v)) => values.push(Ok(v)),
                    Err(e) => {
                        // The parser's positions are relative to the chunk: shift them.
                        let msg = shift_lines(&e.to_string(), offset);
                        let line = e.location().map(|l| format!(" at line {}", l.line() + offset)).unwrap_or_default();
                        let msg = if msg.contains(" at line ") { msg } else { format!("{msg}{line}") };
                        values.push(Err(CliError::Invalid(format!("invalid YAML: {msg}"))));
                        // After a syntax error the parser cannot continue.
                        break;
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        let label = format!("{} document {}", src.label, i + 1);
        match v {
            Ok(v) => match list_items(v) {
                Ok(items) => out.extend(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(j, v)| Document { label: format!("{label} item {}", j + 1), value: Ok(v) }),
                ),
                Err(v) => out.push(Document { label, value: Ok(v) }),
            },
            Err(e) => out.push(Document { label, value: Err(e) }),
        }
    }
    out
}

/// The items of a list document, or the document itself.
fn list_items(v: Value) -> Result<Vec<Value>, Value> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Object(mut map)
            if map.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"))
                && map.get("items").is_some_and(Value::is_array) =>
        {
            match map.remove("items") {
                Some(Value::Array(items)) => Ok(items),
                _ => Err(Value::Object(map)),
            }
        }
        other => Err(other),
    }
}

/// Splits YAML text at document markers (`---`, `...` at column 0), which YAML forbids inside
/// content. Returns each chunk with the number of lines before it. Directives (`%YAML`) stay
/// with the document they precede.
fn split_yaml(text: &str) -> Vec<(usize, String)> {
    fn is_marker(line: &str, m: &str) -> bool {
        line.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    }
    fn only_preamble(chunk: &str) -> bool {
        chunk.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || l.starts_with('%')
        })
    }
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut cur = String::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line, "---") && !only_preamble(&cur) {
            chunks.push((start, std::mem::take(&mut cur)));
            start = i;
        }
        cur.push_str(line);
        if is_marker(line, "...") {
            chunks.push((start, std::mem::take(&mut cur)));
            start = i + 1;
        }
    }
    if !cur.is_empty() {
        chunks.push((start, cur));
    }
    chunks
}

/// Adds `offset` to every `line N` in a parser message.
fn shift_lines(msg: &str, offset: usize) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(pos) = rest.find("line ") {
        let (before, after) = rest.split_at(pos + 5);
        out.push_str(before);
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<usize>() {
            out.push_str(&(n + offset).to_string());
        }
        rest = &after[digits.len()..];
    }
    out.push_str(rest);
    out
}

/// Where a document goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The document, with `metadata.namespace` filled in.
    pub body: Value,
}

/// Checks what is needed to address a document (apiVersion, kind, name, namespace) and fills
/// in the namespace. Everything else is the server's to validate.
pub fn target(mut doc: Value, default_namespace: &str, namespace_explicit: bool) -> Result<Target, CliError> {
    let invalid = |field: &str, msg: String, reason: &str| CliError::Invalid(format!("{field}: {msg} ({reason})"));
    let Value::Object(map) = &mut doc else {
        return Err(invalid(
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
            "InvalidType",
        ));
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => {
            return Err(invalid(
                "apiVersion",
                format!("unknown apiVersion {v:?}; use {API_VERSION:?}"),
                "UnknownApiVersion",
            ));
        }
        _ => return Err(invalid("apiVersion", format!("apiVersion is required; use {API_VERSION:?}"), "Required")),
    }
    let kind = match map.get("kind") {
        Some(Value::String(k)) => Kind::from_manifest(k).ok_or_else(|| {
            let known = Kind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
            invalid("kind", format!("unknown kind {k:?}; known kinds: {known}"), "UnknownKind")
        })?,
        _ => return Err(invalid("kind", "kind is required".into(), "Required")),
    };
    let meta = map.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
    let Value::Object(meta) = meta else {
        return Err(invalid("metadata", "metadata must be a mapping".into(), "InvalidType"));
    };
    let name = match meta.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(invalid("metadata.name", "metadata.name is required to apply a document".into(), "Required"));
        }
        Some(_) => return Err(invalid("metadata.name", "metadata.name must be a string".into(), "InvalidType")),
    };
    let namespace = match meta.get("namespace") {
        Some(Value::String(ns)) if !ns.is_empty() => {
            if namespace_explicit && ns != default_namespace {
                return Err(invalid(
                    "metadata.namespace",
                    format!("the document's namespace {ns:?} does not match --namespace {default_namespace:?}"),
                    "NamespaceMismatch",
                ));
            }
            ns.clone()
        }
        None | Some(Value::Null) | Some(Value::String(_)) => default_namespace.to_string(),
        Some(_) => {
            return Err(invalid("metadata.namespace", "metadata.namespace must be a string".into(), "InvalidType"));
        }
    };
    meta.insert("namespace".into(), Value::String(namespace.clone()));
    Ok(Target { kind, namespace, name, body: doc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(text: &str) -> Vec<Document> {
        documents(&Source { label: "f.yaml".into(), text: text.into(), json: false })
    }

    #[test]
    fn multi_document_yaml_skips_empty_documents() {
        let docs = yaml("---\na: 1\n---\n# nothing\n---\nb: 2\n...\n---\nc: 3\n");
        let labels: Vec<_> = docs.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, ["f.yaml document 1", "f.yaml document 2", "f.yaml document 3"]);
        assert_eq!(docs[2].value.as_ref().unwrap(), &json!({"c": 3}));
    }

    #[test]
    fn a_syntax_error_spoils_only_its_document_and_names_the_line() {
        let docs = yaml("a: 1\n---\nb: [1,\nc: 2\n---\nd: 4\n");
        assert_eq!(docs.len(), 3);
        let err = docs[1].value.as_ref().unwrap_err().to_string();
        assert!(err.starts_with("invalid YAML: "), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert_eq!(docs[2].value.as_ref().unwrap(), &json!({"d": 4}));
    }

    #[test]
    fn block_scalars_and_directives_are_not_split() {
        let docs = yaml("%YAML 1.2\n---\na: |\n  x\n  --- not a marker\n---\nb: 1\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value.as_ref().unwrap(), &json!({"a": "x\n--- not a marker\n"}));
    }

    #[test]
    fn lists_are_expanded() {
        let docs = documents(&Source {
            label: "l.json".into(),
            text: r#"{"kind":"AgentList","items":[{"a":1},{"b":2}]}"#.into(),
            json: true,
        });
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].label, "l.json document 1 item 2");
    }

    #[test]
    fn json_errors_name_the_line() {
        let docs = documents(&Source { label: "x.json".into(), text: "{\n\"a\": 1,\n}".into(), json: true });
        let err = docs[0].value.as_ref().unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn target_fills_namespace_and_checks_the_envelope() {
        let doc = json!({"apiVersion": API_VERSION, "kind": "Agent", "metadata": {"name": "a"}, "spec": {}});
        let t = target(doc.clone(), "team", false).unwrap();
        assert_eq!((t.kind, t.namespace.as_str(), t.name.as_str()), (Kind::Agent, "team", "a"));
        assert_eq!(t.body["metadata"]["namespace"], "team");

        let mut other = doc.clone();
        other["metadata"]["namespace"] = json!("other");
        assert_eq!(target(other.clone(), "team", false).unwrap().namespace, "other");
        let err = target(other, "team", true).unwrap_err().to_string();
        assert!(err.contains("NamespaceMismatch"), "{err}");

        let mut pod = doc.clone();
        pod["kind"] = json!("Pod");
        assert!(target(pod, "d", false).unwrap_err().to_string().contains("(UnknownKind)"));
        let mut v1 = doc.clone();
        v1["apiVersion"] = json!("v1");
        assert!(target(v1, "d", false).unwrap_err().to_string().contains("(UnknownApiVersion)"));
        let mut nameless = doc;
        nameless["metadata"] = json!({});
        assert!(target(nameless, "d", false).unwrap_err().to_string().starts_with("metadata.name:"));
    }

    #[test]
    fn shift_lines_moves_every_position() {
        assert_eq!(
            shift_lines("x at line 3 column 1, while y at line 1 column 2", 10),
            "x at line 13 column 1, while y at line 11 column 2"
        );
    }
}
