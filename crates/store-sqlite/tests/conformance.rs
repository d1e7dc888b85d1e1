//! The shared `Store` conformance suite, run against SQLite with a temporary directory per test.

use std::path::PathBuf;
use std::sync::Arc;

use agentplane_store::Store;
use agentplane_store::conformance::Harness;
use agentplane_store_sqlite::{SqliteOptions, SqliteStore};
use async_trait::async_trait;

/// One database in its own temporary directory; every `open` opens that same file.
struct SqliteHarness {
    dir: tempfile::TempDir,
}

fn sqlite_harness() -> SqliteHarness {
    SqliteHarness { dir: tempfile::tempdir().expect("create a temporary directory") }
}

impl SqliteHarness {
    fn path(&self) -> PathBuf {
        // A parent that does not exist yet: `open` must create it.
        self.dir.path().join("data").join("store.db")
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn open(&self) -> Arc<dyn Store> {
        let path = self.path();
        let store: Arc<SqliteStore> =
            tokio::task::spawn_blocking(move || SqliteStore::open(&path, SqliteOptions::default()))
                .await
                .expect("the open task")
                .expect("open the sqlite store");
        store as Arc<dyn Store>
    }
}

agentplane_store::conformance_tests!(sqlite_harness());
