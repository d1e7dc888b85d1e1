//! `sandbox`: what the sandbox adds to starting an agent. `/bin/true` is run `--runs` times
//! through `agentplane-runner` without a sandbox ("plain") and with every protection on
//! ("sandboxed": agent user, rlimits, Landlock filesystem + TCP + scope rules, pid and mount
//! namespaces with a fresh /proc, pids and memory cgroups, the quota watcher), alternating; each
//! run is timed from spawn to exit (the runner has written `.agent/exit-code` by then).
//! Must run as root (agent user, namespaces, cgroups).

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use agentplane_sandbox::policy::{FsRules, Quota};
use agentplane_sandbox::{Limits, Network, Policy};
use anyhow::{Context, Result, bail};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct SandboxOpts {
    /// Runs of each kind.
    #[arg(long, default_value_t = 500)]
    pub runs: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({
        "p50": (percentile(&v, 0.5) * 1000.0).round() / 1000.0,
        "p95": (percentile(&v, 0.95) * 1000.0).round() / 1000.0,
        "p99": (percentile(&v, 0.99) * 1000.0).round() / 1000.0,
    })
}

fn run_once(runner: &Path, dir: &Path, policy: Option<&Policy>) -> Result<f64> {
    let args = agentplane_sandbox::runner_args(&dir.join(".agent/exit-code"), policy, Path::new("/bin/true"), &[]);
    let t = Instant::now();
    let status = Command::new(runner)
        .args(args)
        .current_dir(dir.join("workspace"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .context("spawning the runner")?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        bail!("the runner exited with {status}");
    }
    Ok(ms)
}

pub fn run(opts: SandboxOpts) -> Result<()> {
    let runner = agentplane_sandbox::find_runner()
        .context("agentplane-runner not found next to the bench (cargo build --release -p agentctl)")?;
    let id = agentplane_server::sandbox::agent_identity(&agentplane_server::config::SandboxConfig::default())
        .map_err(anyhow::Error::msg)?
        .context("run the sandbox bench as root")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("run");
    for sub in [".agent", "workspace", "artifacts", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    for sub in ["workspace", "artifacts", "tmp"] {
        chown(dir.join(sub), Some(id.uid), Some(id.gid))?;
    }
    let mut read: Vec<PathBuf> = vec![dir.clone(), PathBuf::from("/bin/true")];
    read.extend(agentplane_runtime::DEFAULT_READ_ONLY_PATHS.iter().map(PathBuf::from));
    let mut write: Vec<PathBuf> = ["workspace", "artifacts", "tmp"].iter().map(|d| dir.join(d)).collect();
    write.extend(agentplane_runtime::DEFAULT_WRITABLE_PATHS.iter().map(PathBuf::from));
    let mut policy = Policy {
        user: Some(id),
        limits: Limits {
            cpu_seconds: Some(60),
            memory_bytes: Some(1 << 30),
            file_size_bytes: Some(1 << 30),
            open_files: Some(1024),
            processes: Some(64),
            output_quota_bytes: Some(1 << 30),
            ..Default::default()
        },
        filesystem: Some(FsRules { read, write }),
        network: Network::Gateway { ports: vec![7300] },
        scope_signals: true,
        pid_namespace: true,
        cgroup: None,
        cgroup_root: None,
        quota: Some(Quota { bytes: 1 << 30, root: dir.clone(), interval_ms: 250 }),
        required: agentplane_sandbox::policy::names::ALL.iter().map(|s| s.to_string()).collect(),
        state_dir: dir.join(".agent"),
        user_unavailable: None,
    };
    let (mut plain, mut boxed) = (Vec::with_capacity(opts.runs), Vec::with_capacity(opts.runs));
    // Warm-up (page cache, first cgroup creation).
    run_once(&runner, &dir, None)?;
    for i in 0..opts.runs {
        policy.cgroup = Some(format!("bench-{}-{i}", std::process::id()));
        plain.push(run_once(&runner, &dir, None)?);
        boxed.push(run_once(&runner, &dir, Some(&policy))?);
    }
    let report = agentplane_sandbox::policy::read_report(&dir.join(".agent")).unwrap_or_default();
    let applied =
        report.protections.iter().filter(|p| p.status == agentplane_sandbox::ProtectionState::Applied).count();
    let mut diff: Vec<f64> = boxed.iter().zip(&plain).map(|(b, p)| b - p).collect();
    diff.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "scenario": "sandbox",
            "runs": opts.runs,
            "plain_ms": summary(plain.clone()),
            "sandboxed_ms": summary(boxed.clone()),
            "overhead_ms": {
                "p50": ((percentile(&{ let mut b = boxed.clone(); b.sort_by(f64::total_cmp); b }, 0.5)
                    - percentile(&{ let mut p = plain.clone(); p.sort_by(f64::total_cmp); p }, 0.5)) * 1000.0).round() / 1000.0,
                "p95": ((percentile(&{ let mut b = boxed; b.sort_by(f64::total_cmp); b }, 0.95)
                    - percentile(&{ let mut p = plain; p.sort_by(f64::total_cmp); p }, 0.95)) * 1000.0).round() / 1000.0,
                "paired_p50": (percentile(&diff, 0.5) * 1000.0).round() / 1000.0,
                "paired_p95": (percentile(&diff, 0.95) * 1000.0).round() / 1000.0,
            },
            "protections_applied": applied,
            "protections": report.protections.iter().map(|p| json!({"name": p.name, "status": p.status.as_str()})).collect::<Vec<_>>(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        })
    );
    Ok(())
}
