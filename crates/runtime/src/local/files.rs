//! Files of a run folder: the status file, safe relative paths, input files, artifacts.

use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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

/// `value` as pretty JSON, written in place (blocking). Not atomic: only for files nobody reads
/// while they are written (`run.json` and `agent-runner.json` are written before the agent
/// starts).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    std::fs::write(path, bytes)
}

/// Writes `.agent/status.json` in place: one `pwrite` of the whole document at offset 0, then a
/// truncation to its length. No new inode per update (creating and freeing one per write is what
/// made status updates expensive on ext4), and no window without a complete document: a crash
/// between the two calls leaves the new document followed by the old one's tail, which
/// [`read_status`] ignores. Blocking; no fsync.
pub(crate) fn write_status(path: &Path, status: &StatusFile) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    f.write_all_at(&bytes, 0)?;
    f.set_len(bytes.len() as u64)
}

/// A status file, or `None` when there is none (blocking). Only the first JSON document counts
/// (see [`write_status`]). An empty file counts as none: only the very first write of a fresh
/// file can leave one (a crash between creating and writing it), and nothing was started then.
pub(crate) fn read_status(path: &Path) -> std::io::Result<Option<StatusFile>> {
    match std::fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Ok(b) => match serde_json::Deserializer::from_slice(&b).into_iter::<StatusFile>().next() {
            Some(Ok(sf)) => Ok(Some(sf)),
            Some(Err(e)) => Err(std::io::Error::other(e)),
            None => Err(std::io::Error::other("empty status file")),
        },
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
    fn status_is_written_in_place_and_read_back_whatever_a_crash_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("status.json");
        assert_eq!(read_status(&p).unwrap(), None);
        let mut long = StatusFile { uid: "u".into(), attempt: 1, ..Default::default() };
        long.status.message = Some("x".repeat(500));
        write_status(&p, &long).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        let short = StatusFile { uid: "u".into(), attempt: 2, ..Default::default() };
        write_status(&p, &short).unwrap();
        assert_eq!(read_status(&p).unwrap(), Some(short.clone()));
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap()), ino, "same inode");

        // A crash between the write and the truncation: the new document, then the old tail.
        let mut torn = serde_json::to_vec_pretty(&short).unwrap();
        torn.extend_from_slice(&serde_json::to_vec_pretty(&long).unwrap()[200..]);
        std::fs::write(&p, &torn).unwrap();
        assert_eq!(read_status(&p).unwrap(), Some(short));
        // A crash between creating the file and writing it.
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_status(&p).unwrap(), None);
        // Garbage is an error, not a missing file.
        std::fs::write(&p, "{not json").unwrap();
        assert!(read_status(&p).is_err());
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
