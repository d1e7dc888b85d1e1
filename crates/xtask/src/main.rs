//! Repository tasks. `cargo xtask codegen` writes every generated file (JSON Schemas of the kinds
//! under `schemas/`, the OpenAPI document under `docs/api/`); `cargo xtask codegen --check` fails
//! when a committed copy is stale, naming the file and the command that fixes it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn generated() -> Vec<(PathBuf, String)> {
    let root = root();
    let mut files: Vec<(PathBuf, String)> = agentplane_api::schema::all_schema_files()
        .into_iter()
        .map(|(name, text)| (root.join("schemas").join(name), text))
        .collect();
    let openapi = serde_json::to_string_pretty(&agentplane_server::openapi::openapi()).unwrap_or_default() + "\n";
    files.push((root.join("docs/api/openapi.json"), openapi));
    files
}

#[allow(clippy::print_stderr)]
fn codegen(check: bool) -> Result<bool> {
    let mut fresh = true;
    for (path, text) in generated() {
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(text.as_str()) {
            continue;
        }
        if check {
            eprintln!("stale generated file: {} (run `cargo xtask codegen` and commit the result)", path.display());
            fresh = false;
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(fresh)
}

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["codegen"] => codegen(false),
        ["codegen", "--check"] => codegen(true),
        _ => {
            eprintln!("usage: cargo xtask codegen [--check]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
