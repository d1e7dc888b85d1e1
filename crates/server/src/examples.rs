//! `agentctl server --dev`: apply every manifest under the examples directory, idempotently
//! (a second start reports everything unchanged).

use std::path::{Path, PathBuf};

use agentplane_api::Kind;
use agentplane_store::{Actor, Store};
use serde_json::Value;

use crate::resources::{ApplyResult, admit, apply};

/// What loading did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub created: usize,
    pub configured: usize,
    pub unchanged: usize,
}

/// Manifest files directly in a directory (`*.yaml`, `*.yml`, `*.json`), sorted; like
/// `agentctl apply -f DIR`, subdirectories are not entered.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Split a YAML (or JSON) file into its non-empty documents.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(d).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Apply every manifest in `dir`. Any invalid manifest fails the load with its file and document.
pub async fn load_dir(store: &dyn Store, dir: &Path) -> Result<LoadReport, String> {
    let files = manifest_files(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if files.is_empty() {
        return Err(format!(
            "no manifests found in {}; run from the repository root or pass --examples-dir",
            dir.display()
        ));
    }
    let mut report = LoadReport::default();
    let cache = crate::admission::AdmissionCache::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        for (i, doc) in documents(&text).map_err(|e| format!("{}: {e}", file.display()))?.into_iter().enumerate() {
            let at = || format!("{} document {}", file.display(), i + 1);
            let kind = doc
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::from_manifest)
                .ok_or_else(|| format!("{}: missing or unknown kind", at()))?;
            let ns = doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(agentplane_api::DEFAULT_NAMESPACE)
                .to_string();
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string);
            let res = admit(kind, &ns, name.as_deref(), doc).map_err(|e| format!("{}: {}", at(), e.message))?;
            let subject = agentplane_policy::Subject {
                kind: agentplane_policy::SubjectKind::User,
                id: "system:dev-examples".into(),
                roles: vec!["admin".into()],
            };
            let (result, _) = apply(store, &cache, &res, None, &Actor::system("dev-examples"), &subject)
                .await
                .map_err(|e| format!("{}: {}", at(), e.message))?;
            match result {
                ApplyResult::Created => report.created += 1,
                ApplyResult::Configured => report.configured += 1,
                ApplyResult::Unchanged => report.unchanged += 1,
            }
        }
    }
    Ok(report)
}
