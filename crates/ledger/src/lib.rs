//! The agentplane ledger (DESIGN §8): a tamper-evident, append-only record of every action.
//!
//! This crate owns the entry format, its canonical encoding and hash, the hash chain, signed
//! checkpoints, verification over any stream of entries and checkpoints (naming the first entry
//! that breaks and how), the export formats, the documented list of action names, and daily
//! summaries and anomaly rules. It is pure: no I/O beyond reading a caller's `BufRead`, no clocks
//! (callers pass timestamps), no randomness (callers pass key seeds), no persistence (that is the
//! store's: entries are written in the same transaction as the change they record).
//!
//! The formats are specified in `docs/ledger.md`.
//!
//! ```
//! use agentplane_ledger::{Actor, EntryDraft, GENESIS_HASH, LedgerKey, verify};
//! use chrono::{TimeZone, Utc};
//!
//! let draft = EntryDraft {
//!     actor: Actor::user("ann"),
//!     action: agentplane_ledger::actions::RESOURCE_CREATED.into(),
//!     namespace: Some("team-a".into()),
//!     target: None,
//!     run: None,
//!     environment: None,
//!     takeover_level: None,
//!     decision: None,
//!     outcome: agentplane_ledger::outcomes::SUCCESS.into(),
//!     params: serde_json::json!({"kind": "Agent"}),
//!     error: None,
//!     trace_id: None,
//! };
//! let ts = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
//! let first = draft.clone().seal(1, ts, GENESIS_HASH);
//! let second = draft.seal(2, ts, &first.hash);
//!
//! let key = LedgerKey::from_seed(&[7; 32]); // the server uses 32 bytes from the OS RNG
//! let checkpoint = key.sign_checkpoint(second.seq, &second.hash, ts);
//!
//! let entries = [first, second].into_iter().map(Ok::<_, std::convert::Infallible>);
//! let report = verify(entries, &[checkpoint], Some(&key.public_key()), None);
//! assert!(report.intact);
//! assert_eq!(report.entries_checked, 2);
//! ```

pub mod actions;
mod canonical;
mod checkpoint;
mod entry;
mod error;
mod export;
pub mod outcomes;
mod summary;
#[cfg(test)]
mod testutil;
mod verify;

pub use canonical::{
    CHECKPOINT_DOMAIN_TAG, ENTRY_DOMAIN_TAG, canonical_json, format_ts, truncate_to_micros, write_value,
};
pub use checkpoint::{Checkpoint, LedgerKey, LedgerPublicKey};
pub use entry::{Actor, ActorKind, Entry, EntryDraft, GENESIS_HASH, Target};
pub use error::LedgerError;
pub use export::{
    EXPORT_FORMAT, ExportError, ExportHeader, ExportItem, ExportReader, csv_header, csv_row, export_header,
    export_line_checkpoint, export_line_entry, read_export, verify_export, verify_export_from,
};
pub use summary::{
    AgentCount, Anomaly, AnomalyKind, AnomalyRules, Approvals, Baseline, Denials, Summary, TOP_AGENTS, actor_key,
    summarize,
};
pub use verify::{Problem, ProblemKind, VerifyReport, verify};
