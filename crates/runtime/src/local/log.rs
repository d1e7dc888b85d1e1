//! The run's log: a FIFO the agent writes to, drained by a thread into `.agent/runner.log`, which
//! keeps only the last `cap` bytes behind a `[agentplane: N bytes of earlier output were dropped]`
//! marker line.
//!
//! Why a FIFO and not a pipe: the agent holds the FIFO open read-write, so when the server dies
//! the agent's writes do not raise `SIGPIPE`; they block once the buffer is full, and the next
//! server re-opens the FIFO and goes on draining it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};
use std::os::fd::AsFd;
use tokio::sync::oneshot;

const MARKER_PREFIX: &str = "[agentplane: ";
const MARKER_SUFFIX: &str = " bytes of earlier output were dropped]";
/// How much the file may grow past the cap before it is compacted (bounded disk use, amortised
/// copying).
const MIN_SLACK: u64 = 1024 * 1024;

fn marker(dropped: u64) -> String {
    format!("{MARKER_PREFIX}{dropped}{MARKER_SUFFIX}\n")
}

/// An append-only log that keeps its last `cap` bytes. Disk use stays below `2 * cap + 1 MiB`,
/// memory use is constant.
#[derive(Debug)]
pub(crate) struct CappedLog {
    path: PathBuf,
    file: File,
    marker_len: u64,
    content_len: u64,
    dropped: u64,
    cap: u64,
    slack: u64,
}

impl CappedLog {
    /// Opens (or creates) the log, picking up an earlier marker so a restarted server or a new
    /// attempt continues counting.
    pub(crate) fn open(path: &Path, cap: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let (marker_len, dropped) = read_marker(path)?;
        Ok(CappedLog {
            path: path.to_path_buf(),
            file,
            marker_len,
            content_len: len.saturating_sub(marker_len),
            dropped,
            cap,
            slack: cap.max(MIN_SLACK),
        })
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.content_len += buf.len() as u64;
        if self.content_len > self.cap + self.slack {
            self.compact()?;
        }
        Ok(())
    }

    /// Trims the log to exactly the cap (plus the marker).
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.content_len > self.cap {
            self.compact()?;
        }
        self.file.flush()
    }

    fn compact(&mut self) -> io::Result<()> {
        let drop = self.content_len - self.cap;
        let dropped = self.dropped + drop;
        let tmp = self.path.with_extension("log.compacting");
        let mut out = File::create(&tmp)?;
        let m = marker(dropped);
        out.write_all(m.as_bytes())?;
        let mut src = File::open(&self.path)?;
        src.seek(SeekFrom::Start(self.marker_len + drop))?;
        io::copy(&mut src, &mut out)?;
        out.flush()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.marker_len = m.len() as u64;
        self.content_len = self.file.metadata()?.len() - self.marker_len;
        self.dropped = dropped;
        Ok(())
    }
}

/// Reads the marker line at the start of an existing log: (its length, the count it states).
fn read_marker(path: &Path) -> io::Result<(u64, u64)> {
    let mut line = Vec::new();
    let file = File::open(path)?;
    BufReader::new(file).take(256).read_until(b'\n', &mut line)?;
    let text = String::from_utf8_lossy(&line);
    let parsed = text
        .strip_prefix(MARKER_PREFIX)
        .and_then(|t| t.strip_suffix(&format!("{MARKER_SUFFIX}\n")))
        .and_then(|n| n.parse::<u64>().ok());
    Ok(match parsed {
        Some(n) => (line.len() as u64, n),
        None => (0, 0),
    })
}

/// Appends one line to the log (used for the attempt separator).
pub(crate) fn append_line(path: &Path, cap: u64, line: &str) -> io::Result<()> {
    let mut log = CappedLog::open(path, cap)?;
    log.write(line.as_bytes())?;
    log.finish()
}

/// A running drain thread.
#[derive(Debug)]
pub(crate) struct Pump {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) done: oneshot::Receiver<()>,
}

/// Opens the FIFO for reading (non-blocking, so it never waits for a writer) and drains it into
/// the log on a dedicated thread until every writer is gone or `stop` is set.
pub(crate) fn start_pump(fifo: &Path, log_path: &Path, cap: u64) -> io::Result<Pump> {
    let reader = OpenOptions::new().read(true).custom_flags(OFlag::O_NONBLOCK.bits()).open(fifo)?;
    // A bigger pipe buffer means fewer wake-ups for chatty agents; not fatal when refused.
    let _ = fcntl(reader.as_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20));
    let mut log = CappedLog::open(log_path, cap)?;
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(log.dropped()));
    let (tx, done) = oneshot::channel();
    let (stop2, dropped2) = (stop.clone(), dropped.clone());
    std::thread::Builder::new().name("agentplane-log".into()).spawn(move || {
        if let Err(e) = drain(reader, &mut log, &stop2, &dropped2) {
            tracing::warn!(error = %e, log = %log.path.display(), "log drain failed");
        }
        if let Err(e) = log.finish() {
            tracing::warn!(error = %e, log = %log.path.display(), "log finish failed");
        }
        dropped2.store(log.dropped(), Ordering::Relaxed);
        let _ = tx.send(());
    })?;
    Ok(Pump { stop, dropped, done })
}

fn drain(mut reader: File, log: &mut CappedLog, stop: &AtomicBool, dropped: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()), // no writer left
            Ok(n) => {
                log.write(&buf[..n])?;
                dropped.store(log.dropped(), Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, 250u16) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(path: &Path) -> String {
        String::from_utf8(std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn under_cap_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        let mut log = CappedLog::open(&p, 100).unwrap();
        log.write(b"hello\n").unwrap();
        log.finish().unwrap();
        assert_eq!(content(&p), "hello\n");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn keeps_the_tail_and_says_how_much_was_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runner.log");
        let mut log = CappedLog::open(&p, 10).unwrap();
        // Past cap + slack (1 MiB) so compaction runs mid-stream as well as at the end.
        let mut written = Vec::new();
        for i in 0..300_000u32 {
            let line = format!("{i:07}\n");
            written.extend_from_slice(line.as_bytes());
            log.write(line.as_bytes()).unwrap();
        }
        log.finish().unwrap();
        let total = written.len() as u64;
        let text = content(&p);
        let want_tail = &written[written.len() - 10..];
        assert_eq!(text, format!("{}{}", marker(total - 10), String::from_utf8_lossy(want_tail)));
        assert_eq!(log.dropped(), total - 10);

        // Reopening continues the count.
        let mut again = CappedLog::open(&p, 10).unwrap();
        again.write(b"0123456789").unwrap();
        again.finish().unwrap();
        assert_eq!(content(&p), format!("{}0123456789", marker(total)));
    }
}
