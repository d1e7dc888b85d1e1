//! What the data directory sits on.
//!
//! Run folders are many small files, created and deleted by the thousand. On ext4 **without a
//! journal** that churn does lasting damage: the kernel skips recently freed inodes when it
//! allocates new ones, and after some thousands of runs came and went, creating a run folder took
//! 1–2 ms instead of ~0.1 ms, minutes later still (`docs/benchmarks.md`, "The file system under
//! the run folders"). The server says so when it starts on one.

use std::path::Path;

/// The description [`describe_filesystem`] gives of ext4 without a journal.
pub const EXT4_WITHOUT_JOURNAL: &str = "ext4 (no journal)";

/// What file system holds `path`: "ext4 (journaled)", "ext4 (no journal)", "tmpfs", "xfs", …,
/// or "unknown" — from `/proc/self/mountinfo` (the longest mount point above the path) and, for
/// ext4, whether the kernel runs a journal for its device (`/proc/fs/jbd2/<device>-8`).
pub fn describe_filesystem(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else { return "unknown".into() };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return "unknown".into() };
    // Fields: id parent major:minor root mount-point options ... - fstype source super-options
    let best = info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fstype, source) = (r.next()?, r.next()?);
            path.starts_with(mount_point).then(|| (mount_point.len(), fstype.to_string(), source.to_string()))
        })
        .max_by_key(|(len, _, _)| *len);
    let Some((_, fstype, source)) = best else { return "unknown".into() };
    if fstype != "ext4" {
        return fstype;
    }
    let device = source.rsplit('/').next().unwrap_or_default();
    if Path::new("/proc/fs/jbd2").join(format!("{device}-8")).exists() {
        "ext4 (journaled)".into()
    } else {
        EXT4_WITHOUT_JOURNAL.into()
    }
}

/// Logs a warning when the data directory is on ext4 without a journal.
pub fn warn_about(data_dir: &Path) {
    let fs = describe_filesystem(data_dir);
    if fs == EXT4_WITHOUT_JOURNAL {
        tracing::warn!(
            data_dir = %data_dir.display(),
            "the data directory is on ext4 without a journal: after many runs were created and removed, \
             creating run folders slows down for good (1-2 ms each instead of ~0.1 ms measured), and run \
             starts with it; put --data-dir on a journaled file system"
        );
    } else {
        tracing::debug!(data_dir = %data_dir.display(), filesystem = %fs, "data directory file system");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_the_file_system_of_a_path() {
        assert_eq!(describe_filesystem(Path::new("/proc/self")), "proc");
        assert_eq!(describe_filesystem(Path::new("/no/such/path")), "unknown");
        let root = describe_filesystem(Path::new("/"));
        assert_ne!(root, "unknown");
        // Agrees with /proc/mounts on the root's type.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root_type = mounts
            .lines()
            .rev()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(1) == Some(&"/")).then(|| f[2].to_string())
            })
            .unwrap();
        assert!(root.starts_with(&root_type), "{root} vs {root_type}");
    }
}
