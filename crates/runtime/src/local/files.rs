//! Files of a run folder: the status file, safe relative paths, input files, artifacts.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use agentplane_api::ArtifactStatus;
use chrono::{DateTime, Utc};
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::RuntimeStatus;

/// `.agent/status.json`: the attempt's status plus what a restarted server needs to re-adopt it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusFile {
    pub uid: String,
    pub attempt: u32,
    #[serde(flatten)]
    pub status: RuntimeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// `/proc/<pid>/stat` start time, to tell our process from a later one with the same pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_start_time: Option<u64>,
    /// Whether the agent got its own session (`setsid`) as well as its own process group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// Output artifacts to collect (`name`, `path`), kept so a restarted server can collect them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_cap_bytes: Option<u64>,
}

pub(crate) async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

pub(crate) async fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).await
}

pub(crate) async fn read_status(path: &Path) -> std::io::Result<Option<StatusFile>> {
    match tokio::fs::read(path).await {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Joins a relative path from a provider spec onto `root`, refusing absolute paths and `..`.
pub(crate) fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() {
        return Err(format!("path `{rel}` must be relative to the run folder"));
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(format!("path `{rel}` escapes the run folder")),
        }
    }
    Ok(root.join(p))
}

/// Checks that `path` (which exists) resolves, symlinks followed, inside `root`.
fn check_inside(root: &Path, path: &Path, rel: &str) -> Result<(), String> {
    let root = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    let real = path.canonicalize().map_err(|e| format!("`{rel}`: {e}"))?;
    if real.starts_with(&root) { Ok(()) } else { Err(format!("path `{rel}` resolves outside the run folder")) }
}

/// Writes a rendered input file at `rel` inside `root`, creating parent folders; refuses paths
/// (or symlinked parents) leading out of the run folder and never follows a symlink at the end.
pub(crate) fn write_input_file(root: &Path, rel: &str, content: &str) -> Result<(), String> {
    let path = safe_join(root, rel)?;
    let parent = path.parent().unwrap_or(root);
    std::fs::create_dir_all(parent).map_err(|e| format!("`{rel}`: {e}"))?;
    check_inside(root, parent, rel)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(|e| format!("`{rel}`: {e}"))?;
    f.write_all(content.as_bytes()).map_err(|e| format!("`{rel}`: {e}"))
}

/// Size and sha256 of an artifact at `rel` inside `root` (streamed). `Err` names what is wrong.
pub(crate) fn describe_artifact(root: &Path, name: &str, rel: &str) -> Result<ArtifactStatus, String> {
    let path = safe_join(root, rel)?;
    if !path.exists() {
        return Err(format!("artifact `{name}` was not produced ({rel})"));
    }
    check_inside(root, &path, rel)?;
    let mut f = std::fs::File::open(&path).map_err(|e| format!("artifact `{name}`: {e}"))?;
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(format!("artifact `{name}` ({rel}) is not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("artifact `{name}`: {e}"))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(ArtifactStatus { name: name.to_string(), path: rel.to_string(), size_bytes: Some(size), sha256: Some(sha256) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_table() {
        let root = Path::new("/r");
        for ok in ["a", "a/b.txt", "./a", "workspace/x/y"] {
            assert!(safe_join(root, ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/.."] {
            assert!(safe_join(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn input_file_refuses_symlinked_parent() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = write_input_file(dir.path(), "link/x", "hi").unwrap_err();
        assert!(err.contains("outside"), "{err}");
        assert!(!outside.path().join("x").exists());
        write_input_file(dir.path(), "ok/x", "hi").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("ok/x")).unwrap(), "hi");
    }

    #[test]
    fn artifact_sha256() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "abc").unwrap();
        let a = describe_artifact(dir.path(), "a", "a.txt").unwrap();
        assert_eq!(a.size_bytes, Some(3));
        assert_eq!(a.sha256.as_deref(), Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        assert!(describe_artifact(dir.path(), "b", "b.txt").is_err());
    }
}
