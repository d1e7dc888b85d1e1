//! WAL checkpoints, off the write path.
//!
//! SQLite's automatic checkpoint runs inside the committing connection: every ~1,000 pages one
//! unlucky commit copies the WAL into the database file, which is a latency spike for every
//! caller in that batch (measured: p99 of creates went from ~2 ms to ~18 ms). So the writer
//! disables it (`wal_autocheckpoint=0`) and this thread, on its own connection, runs `PASSIVE`
//! checkpoints, which never block the writer, when the writer nudges it every [`NUDGE_EVERY`]
//! writes, and every [`IDLE_CHECKPOINT`] anyway. The WAL rewinds at the first write after a
//! checkpoint that caught up with it.
//!
//! Under a steady stream of writes a background checkpoint rarely ends between two commits, so
//! the WAL would never rewind and would grow without bound. So once the background thread
//! reports more than [`REWIND_FRAMES`] frames in the WAL, the writer runs one passive checkpoint
//! itself, between two batches: the background thread has already copied nearly everything, so
//! it is short, and it catches up with the end of the WAL, which then rewinds at the next commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::schema::sql_err;

/// Writes between two nudges of the checkpointer. Small on purpose: a checkpoint copies every
/// page written since the previous one and then syncs the database file, and that burst of IO
/// (and, on a loop-mounted or virtualised disk, of CPU) delays whatever runs meanwhile. Every
/// 1,000 writes it made a ~100 ms stall about once a second at 300 runs/s, which held back the
/// starts of ~20 runs each time (`docs/benchmarks.md`, "Scheduling delay: where the tail came
/// from"); every 100 writes the bursts are ten times smaller and the stalls are gone.
const NUDGE_EVERY: u64 = 100;
/// A quiet store is checkpointed after this long.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(2);
/// WAL frames (pages) past which the writer checkpoints itself so that the WAL rewinds
/// (~64 MiB with 4 KiB pages).
const REWIND_FRAMES: i64 = 16_384;

/// The writer's handle on the checkpointer thread.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    writes_since_nudge: u64,
    /// Frames in the WAL at the background thread's last checkpoint.
    frames: Arc<AtomicI64>,
}

impl Checkpointer {
    /// Start the thread. If it cannot start, the WAL is still checkpointed at close.
    pub(crate) fn start(db_path: &Path) -> Checkpointer {
        let (nudge, nudged) = sync_channel(1);
        let path: PathBuf = db_path.to_path_buf();
        let frames = Arc::new(AtomicI64::new(0));
        let reported = Arc::clone(&frames);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&path, &nudged, &reported))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the sqlite checkpoint thread"))
            .ok();
        Checkpointer { nudge: Some(nudge), thread, writes_since_nudge: 0, frames }
    }

    /// Called by the writer after each commit with the number of writes committed.
    pub(crate) fn committed(&mut self, conn: &Connection, writes: u64) {
        if self.frames.load(Ordering::Acquire) > REWIND_FRAMES {
            self.frames.store(0, Ordering::Release);
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0)) {
                Ok(busy) => tracing::debug!(busy, "writer-side WAL checkpoint to rewind the WAL"),
                Err(e) => tracing::debug!(error = %e, "writer-side WAL checkpoint did not run"),
            }
        }
        self.writes_since_nudge += writes;
        if self.writes_since_nudge < NUDGE_EVERY {
            return;
        }
        self.writes_since_nudge = 0;
        if let Some(nudge) = &self.nudge {
            // Full: a nudge is already pending. Disconnected: the thread is gone.
            let _: Result<(), TrySendError<()>> = nudge.try_send(());
        }
    }

    /// Stop the thread and wait for it (before the writer's final checkpoint).
    pub(crate) fn stop(&mut self) {
        self.nudge.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the sqlite checkpoint thread panicked");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(path: &Path, nudged: &Receiver<()>, frames_in_wal: &AtomicI64) {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match Connection::open_with_flags(path, flags) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %sql_err("opening the checkpoint connection", e), "no background checkpoints");
            return;
        }
    };
    if let Err(e) = conn.busy_timeout(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "cannot set busy_timeout on the checkpoint connection");
    }
    loop {
        // On a timeout too: a passive checkpoint of an already checkpointed WAL does nothing.
        match nudged.recv_timeout(IDLE_CHECKPOINT) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match result {
            Ok((busy, frames, done)) => {
                tracing::trace!(busy, frames, done, "sqlite WAL checkpoint");
                frames_in_wal.store(frames, Ordering::Release);
            }
            Err(e) => tracing::debug!(error = %e, "sqlite WAL checkpoint did not run"),
        }
    }
}
