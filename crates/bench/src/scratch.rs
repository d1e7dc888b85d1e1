//! Where a bench keeps its files, and what that file system is.
//!
//! Run folders are many small files, created and deleted by the thousand, so the file system
//! under them weighs on every per-run figure. On ext4 **without a journal** (this kind of VM's
//! root file system) that churn leaves lasting damage: the kernel skips inodes freed recently when
//! it allocates new ones, and after a few thousand runs were created and removed in a folder,
//! creating a run folder next to it took 1–2 ms instead of ~0.1 ms here, minutes later still
//! (`docs/benchmarks.md`, "The file system under the run folders"). `--scratch-fs` therefore runs
//! a bench on a journaled ext4 made for it: a sparse image file, `mkfs.ext4`, `mount -o loop`
//! (root only), unmounted and deleted at the end.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Size of the sparse image behind `--scratch-fs` (only what is written takes disk space).
const IMAGE_BYTES: u64 = 8 << 30;

/// A journaled ext4 mounted for one bench; unmounted and deleted on drop.
pub struct ScratchFs {
    image: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl ScratchFs {
    /// Makes the image in the system's temporary directory and mounts it.
    pub fn create() -> Result<ScratchFs> {
        let tmp = std::env::temp_dir();
        let id = std::process::id();
        let mut fs = ScratchFs {
            image: tmp.join(format!("agentplane-bench-{id}.ext4")),
            mount: tmp.join(format!("agentplane-bench-{id}.mnt")),
            mounted: false,
        };
        let file = std::fs::File::create(&fs.image).with_context(|| format!("creating {}", fs.image.display()))?;
        file.set_len(IMAGE_BYTES).with_context(|| format!("sizing {}", fs.image.display()))?;
        drop(file);
        run(
            // Inode tables and journal written now, not by a kernel thread while the bench runs.
            Command::new("mkfs.ext4").args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]).arg(&fs.image),
            "mkfs.ext4 (package e2fsprogs)",
        )?;
        std::fs::create_dir(&fs.mount).with_context(|| format!("creating {}", fs.mount.display()))?;
        run(
            Command::new("mount").args(["-o", "loop"]).arg(&fs.image).arg(&fs.mount),
            "mount -o loop (needs root and a loop device)",
        )?;
        fs.mounted = true;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount").arg(&self.mount).status().is_ok_and(|s| s.success());
            if !ok {
                // Still busy (a process of the bench not yet gone): detach it now, freed later.
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
            }
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
