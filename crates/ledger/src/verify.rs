//! Verification: recompute every hash, link and checkpoint signature over a stream of entries in
//! constant memory, and name the first entry that breaks and how.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::GENESIS_HASH;
use crate::canonical::format_ts;
use crate::checkpoint::{Checkpoint, LedgerPublicKey};
use crate::entry::Entry;

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// No problem found.
    pub intact: bool,
    /// Entries that passed every check.
    pub entries_checked: u64,
    /// Seq of the first entry checked.
    pub first_seq: Option<u64>,
    /// Seq of the last entry that passed every check.
    pub last_seq: Option<u64>,
    /// Hash of the last entry that passed every check.
    pub last_hash: Option<String>,
    /// The last checkpoint that matched its entry (and whose signature verified, when a key was
    /// given).
    pub last_checkpoint: Option<Checkpoint>,
    /// Checkpoints that matched their entry.
    pub checkpoints_checked: u64,
    /// Whether checkpoint signatures were checked (a public key was given). Without a key a
    /// forged checkpoint is not detected.
    pub signatures_checked: bool,
    /// The first problem, if any.
    pub problem: Option<Problem>,
}

/// The first place where the log breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The seq (position in the chain) that breaks.
    pub seq: u64,
    pub kind: ProblemKind,
    /// What happened, in plain words, naming the seq.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at seq {}: {}", self.kind, self.seq, self.message)
    }
}

/// How the log breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An entry's content no longer matches its hash, or it was rewritten with a recomputed hash
    /// so the next entry's `prevHash` no longer links to it.
    Edited,
    /// Seq jumps forward: the entries in between are missing.
    Deleted,
    /// Seq goes backwards or repeats, or an entry stored at one seq hash-checks only at another
    /// (two entries swapped).
    Reordered,
    /// The log ends before a signed checkpoint's seq: its tail was removed.
    Truncated,
    /// A checkpoint's hash differs from its entry's: history was rewritten after it was signed.
    CheckpointMismatch,
    /// A checkpoint's signature does not verify with the given public key, or it names another key.
    BadSignature,
    /// An item could not be read (e.g. an export line that does not parse).
    Corrupt,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Deleted => "deleted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Truncated => "truncated",
            ProblemKind::CheckpointMismatch => "checkpoint_mismatch",
            ProblemKind::BadSignature => "bad_signature",
            ProblemKind::Corrupt => "corrupt",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn problem(seq: u64, kind: ProblemKind, message: String) -> Option<Problem> {
    Some(Problem { seq, kind, message })
}

/// Verify a stream of entries (in the order stored, normally by seq) against the checkpoints.
///
/// Checks, in seq order, stopping at the first problem: seq increases by one with no gap (from 1,
/// or from `from_seq`); each entry's `hash` matches its content; each `prevHash` is the previous
/// entry's `hash` (the first entry's is [`GENESIS_HASH`]; with `from_seq`, it is trusted, or must
/// equal the hash of a checkpoint at `from_seq - 1` if there is one); each checkpoint at a checked
/// seq has a valid signature (when `key` is given) and the hash of the entry at its seq; and no
/// checkpoint lies beyond the last entry. Entries before `from_seq` are skipped; checkpoints
/// before `from_seq - 1` are ignored.
///
/// Memory is constant in the number of entries (the checkpoints are sorted in a vector of
/// references). After a gap or a content mismatch the rest of the stream is read (without
/// further checks) to tell a deletion from a reordering and an edit from a swap.
pub fn verify<I, B, E>(
    entries: I,
    checkpoints: &[Checkpoint],
    key: Option<&LedgerPublicKey>,
    from_seq: Option<u64>,
) -> VerifyReport
where
    I: IntoIterator<Item = Result<B, E>>,
    B: Borrow<Entry>,
    E: fmt::Display,
{
    let start = from_seq.unwrap_or(1).max(1);
    let skip_before = from_seq.is_some();
    let mut cps: Vec<&Checkpoint> = checkpoints.iter().filter(|c| c.seq.saturating_add(1) >= start).collect();
    cps.sort_by_key(|c| c.seq);

    let mut report = VerifyReport {
        intact: false,
        entries_checked: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        last_checkpoint: None,
        checkpoints_checked: 0,
        signatures_checked: key.is_some(),
        problem: None,
    };
    let mut buf = Vec::with_capacity(1024);
    let mut ci = 0;
    // The hash the next entry's prevHash must equal (None: trusted) and where it comes from.
    let mut prev: Option<String> = (start == 1).then(|| GENESIS_HASH.to_owned());
    let mut prev_from_checkpoint = false;

    // Checkpoints just before the start vouch for the first entry's prevHash.
    while ci < cps.len() && cps[ci].seq < start {
        let cp = cps[ci];
        if let Some(p) = check_signature(cp, key) {
            return finish(report, Some(p));
        }
        if let Some(expected) = &prev
            && *expected != cp.hash
        {
            let p = problem(
                cp.seq,
                ProblemKind::CheckpointMismatch,
                format!(
                    "checkpoint at seq {} (signed {}) has hash {} but the chain starts from {}",
                    cp.seq,
                    format_ts(&cp.ts),
                    cp.hash,
                    expected
                ),
            );
            return finish(report, p);
        }
        prev = Some(cp.hash.clone());
        prev_from_checkpoint = true;
        report.checkpoints_checked += 1;
        report.last_checkpoint = Some(cp.clone());
        ci += 1;
    }

    let mut expected = start;
    let mut it = entries.into_iter();
    let mut found = None;
    while let Some(item) = it.next() {
        let e = match &item {
            Ok(e) => e.borrow(),
            Err(err) => {
                found = problem(
                    expected,
                    ProblemKind::Corrupt,
                    match report.last_seq {
                        Some(last) => {
                            format!("the entry expected at seq {expected} (after seq {last}) could not be read: {err}")
                        }
                        None => format!("the entry expected at seq {expected} (the first) could not be read: {err}"),
                    },
                );
                break;
            }
        };
        if skip_before && e.seq < start {
            continue;
        }

        // 1. Position.
        if e.seq != expected {
            found = if !e.hash_matches_with_seq(e.seq, &mut buf) && e.hash_matches_with_seq(expected, &mut buf) {
                problem(
                    expected,
                    ProblemKind::Edited,
                    format!("entry {expected} had its seq changed to {}: it hash-checks only as seq {expected}", e.seq),
                )
            } else if e.seq < expected {
                let after = report.last_seq.map_or_else(|| "the start".to_owned(), |s| format!("seq {s}"));
                problem(
                    expected,
                    ProblemKind::Reordered,
                    format!(
                        "expected seq {expected} after {after} but found seq {} again: the log is out of order \
                         or has a duplicate",
                        e.seq
                    ),
                )
            } else {
                let (lo, hi) = (expected, e.seq - 1);
                let later = it.filter_map(Result::ok).map(|f| f.borrow().seq).find(|s| (lo..=hi).contains(s));
                match later {
                    Some(s) => problem(
                        expected,
                        ProblemKind::Reordered,
                        format!(
                            "expected seq {expected} but found seq {}; seq {s} appears later in the log: \
                             entries were moved or swapped",
                            e.seq
                        ),
                    ),
                    None => problem(
                        expected,
                        ProblemKind::Deleted,
                        format!("{} missing: seq jumps to {}", range(lo, hi), e.seq),
                    ),
                }
            };
            break;
        }

        // 2. Content.
        if !e.hash_matches_with_seq(e.seq, &mut buf) {
            let seq = e.seq;
            let swapped_with = it.filter_map(Result::ok).find_map(|f| {
                let f = f.borrow();
                (f.seq != seq && f.hash_matches_with_seq(seq, &mut buf)).then_some(f.seq)
            });
            found = match swapped_with {
                Some(other) => problem(
                    seq,
                    ProblemKind::Reordered,
                    format!(
                        "entries {seq} and {other} were swapped: the entry stored at seq {other} hash-checks only as \
                         seq {seq}"
                    ),
                ),
                None => problem(
                    seq,
                    ProblemKind::Edited,
                    format!(
                        "entry {seq} was edited: its content no longer matches its hash {} (recomputed {})",
                        e.hash,
                        e.compute_hash()
                    ),
                ),
            };
            break;
        }

        // 3. Link.
        if let Some(p) = &prev
            && *p != e.prev_hash
        {
            found = match report.last_seq {
                Some(last) => problem(
                    last,
                    ProblemKind::Edited,
                    format!(
                        "entry {last} was rewritten: its hash {p} is not the prevHash {} recorded by entry {}",
                        e.prev_hash, e.seq
                    ),
                ),
                None if prev_from_checkpoint => problem(
                    e.seq - 1,
                    ProblemKind::CheckpointMismatch,
                    format!(
                        "the checkpoint at seq {} has hash {p} but entry {} records prevHash {}: history before \
                         seq {} was rewritten after the checkpoint was signed",
                        e.seq - 1,
                        e.seq,
                        e.prev_hash,
                        e.seq
                    ),
                ),
                None => problem(
                    e.seq,
                    ProblemKind::Edited,
                    format!("entry {} was rewritten: its prevHash {} is not the genesis hash", e.seq, e.prev_hash),
                ),
            };
            break;
        }

        // 4. Checkpoints at this seq.
        while ci < cps.len() && cps[ci].seq <= e.seq {
            let cp = cps[ci];
            if let Some(p) = check_signature(cp, key) {
                found = Some(p);
                break;
            }
            if cp.hash != e.hash {
                found = problem(
                    cp.seq,
                    ProblemKind::CheckpointMismatch,
                    format!(
                        "the checkpoint signed {} says entry {} has hash {} but it now has {}: history was \
                         rewritten after the checkpoint was signed",
                        format_ts(&cp.ts),
                        cp.seq,
                        cp.hash,
                        e.hash
                    ),
                );
                break;
            }
            report.checkpoints_checked += 1;
            report.last_checkpoint = Some(cp.clone());
            ci += 1;
        }
        if found.is_some() {
            break;
        }

        report.entries_checked += 1;
        report.first_seq.get_or_insert(e.seq);
        report.last_seq = Some(e.seq);
        match &mut prev {
            Some(p) => p.clone_from(&e.hash),
            None => prev = Some(e.hash.clone()),
        }
        expected += 1;
    }

    if found.is_none()
        && let Some(cp) = cps.get(ci)
    {
        found = check_signature(cp, key).or_else(|| {
            let ends =
                report.last_seq.map_or_else(|| "the log is empty".to_owned(), |s| format!("the log ends at seq {s}"));
            problem(
                expected,
                ProblemKind::Truncated,
                format!(
                    "{ends} but the checkpoint signed {} covers seq {}: {} removed",
                    format_ts(&cp.ts),
                    cp.seq,
                    range(expected, cp.seq)
                ),
            )
        });
    }
    report.last_hash = prev.filter(|_| report.last_seq.is_some());
    finish(report, found)
}

fn finish(mut report: VerifyReport, problem: Option<Problem>) -> VerifyReport {
    report.intact = problem.is_none();
    report.problem = problem;
    report
}

fn check_signature(cp: &Checkpoint, key: Option<&LedgerPublicKey>) -> Option<Problem> {
    let err = key?.verify_checkpoint(cp).err()?;
    problem(
        cp.seq,
        ProblemKind::BadSignature,
        format!("the checkpoint at seq {} (signed {}) is not valid: {err}", cp.seq, format_ts(&cp.ts)),
    )
}

fn range(lo: u64, hi: u64) -> String {
    if lo == hi { format!("entry {lo} is") } else { format!("entries {lo}–{hi} are") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::LedgerKey;
    use crate::testutil::{arb_json, chain, checkpoints_every, draft_from};
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::json;

    type R = Result<Entry, String>;

    fn run(entries: &[Entry], cps: &[Checkpoint], key: Option<&LedgerPublicKey>) -> VerifyReport {
        verify(entries.iter().cloned().map(R::Ok), cps, key, None)
    }

    fn kind(r: &VerifyReport) -> Option<(ProblemKind, u64)> {
        r.problem.as_ref().map(|p| (p.kind, p.seq))
    }

    fn setup(n: usize, every: u64) -> (Vec<Entry>, Vec<Checkpoint>, LedgerKey) {
        let key = LedgerKey::from_seed(&[9; 32]);
        let entries = chain(n);
        let cps = checkpoints_every(&entries, every, &key);
        (entries, cps, key)
    }

    #[test]
    fn intact_chain() {
        let (entries, cps, key) = setup(25, 10);
        let r = run(&entries, &cps, Some(&key.public_key()));
        assert!(r.intact, "{r:?}");
        assert_eq!(r.entries_checked, 25);
        assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(25)));
        assert_eq!(r.last_hash.as_deref(), Some(entries[24].hash.as_str()));
        assert_eq!(r.checkpoints_checked, 2);
        assert_eq!(r.last_checkpoint.as_ref().map(|c| c.seq), Some(20));
        assert!(r.signatures_checked);
        assert!(r.problem.is_none());
    }

    #[test]
    fn empty_log_is_intact_without_checkpoints_and_truncated_with_one() {
        let r = verify(std::iter::empty::<R>(), &[], None, None);
        assert!(r.intact && r.entries_checked == 0 && r.last_hash.is_none());
        let (entries, cps, _) = setup(3, 3);
        let r = run(&entries[..0], &cps, None);
        assert_eq!(kind(&r), Some((ProblemKind::Truncated, 1)));
    }

    #[test]
    fn chain_without_checkpoints_is_still_checked() {
        let (mut entries, _, _) = setup(5, 10);
        entries[2].outcome = "failure".into();
        let r = run(&entries, &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Edited, 3)));
        assert!(!r.signatures_checked);
        assert_eq!(r.entries_checked, 2);
        assert_eq!(r.last_seq, Some(2));
    }

    #[test]
    fn edited_content() {
        let (mut entries, cps, key) = setup(10, 5);
        entries[6].params["spec"]["replicas"] = json!(99);
        let r = run(&entries, &cps, Some(&key.public_key()));
        assert_eq!(kind(&r), Some((ProblemKind::Edited, 7)));
        assert!(r.problem.unwrap().message.contains("entry 7 was edited"));
    }

    #[test]
    fn edited_with_recomputed_hash_breaks_the_next_link() {
        let (mut entries, _, _) = setup(10, 5);
        entries[3].actor.id = "mallory".into();
        entries[3].hash = entries[3].compute_hash();
        let r = run(&entries, &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Edited, 4)));
        let msg = r.problem.unwrap().message;
        assert!(msg.contains("entry 4 was rewritten") && msg.contains("entry 5"), "{msg}");
    }

    #[test]
    fn first_entry_must_link_to_genesis() {
        let mut entries = chain(3);
        entries[0].prev_hash = "11".repeat(32);
        entries[0].hash = entries[0].compute_hash();
        let r = run(&entries, &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Edited, 1)));
    }

    #[test]
    fn edited_seq_is_named_as_an_edit() {
        let (mut entries, _, _) = setup(10, 5);
        entries[4].seq = 9;
        let r = run(&entries, &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Edited, 5)), "{r:?}");
    }

    #[test]
    fn deleted_entry_names_the_missing_range() {
        let (mut entries, cps, _) = setup(10, 5);
        entries.remove(3);
        let r = run(&entries, &cps, None);
        assert_eq!(kind(&r), Some((ProblemKind::Deleted, 4)));
        assert!(r.problem.as_ref().unwrap().message.contains("entry 4 is missing"), "{r:?}");
        let (mut entries, _, _) = setup(10, 5);
        entries.drain(2..5);
        let r = run(&entries, &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Deleted, 3)));
        assert!(r.problem.unwrap().message.contains("entries 3–5 are missing"));
    }

    #[test]
    fn missing_head_is_a_deletion() {
        let (entries, _, _) = setup(5, 5);
        let r = run(&entries[2..], &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Deleted, 1)));
    }

    #[test]
    fn swapped_positions_are_reordered() {
        let (mut entries, cps, _) = setup(10, 5);
        entries.swap(2, 6);
        let r = run(&entries, &cps, None);
        assert_eq!(kind(&r), Some((ProblemKind::Reordered, 3)), "{r:?}");
        let (mut entries, _, _) = setup(10, 5);
        entries.swap(8, 9);
        assert_eq!(kind(&run(&entries, &[], None)), Some((ProblemKind::Reordered, 9)));
    }

    #[test]
    fn swapped_contents_at_fixed_seqs_are_reordered() {
        let (mut entries, _, _) = setup(10, 5);
        let (a, b) = (entries[2].seq, entries[6].seq);
        entries.swap(2, 6);
        entries[2].seq = a;
        entries[6].seq = b;
        let r = run(&entries, &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Reordered, 3)), "{r:?}");
        assert!(r.problem.unwrap().message.contains("entries 3 and 7 were swapped"));
    }

    #[test]
    fn duplicate_is_reordered() {
        let (mut entries, _, _) = setup(5, 5);
        entries.push(entries[4].clone());
        let r = run(&entries, &[], None);
        assert_eq!(kind(&r), Some((ProblemKind::Reordered, 6)));
    }

    #[test]
    fn truncated_after_a_checkpoint() {
        let (entries, cps, key) = setup(30, 10);
        let r = run(&entries[..24], &cps, Some(&key.public_key()));
        assert_eq!(kind(&r), Some((ProblemKind::Truncated, 25)));
        assert!(r.problem.as_ref().unwrap().message.contains("entries 25–30 are removed"), "{r:?}");
        assert_eq!(r.entries_checked, 24);
        assert_eq!(r.last_checkpoint.map(|c| c.seq), Some(20));
        // Truncated exactly at the last checkpoint: nothing claims more, so it is intact.
        assert!(run(&entries[..30], &cps, None).intact);
    }

    #[test]
    fn checkpoint_mismatch_when_history_is_rewritten_after_signing() {
        let (mut entries, cps, key) = setup(20, 10);
        // Rewrite the whole chain from entry 5 on, recomputing every hash.
        entries[4].outcome = "failure".into();
        for i in 4..entries.len() {
            if i > 4 {
                entries[i].prev_hash = entries[i - 1].hash.clone();
            }
            entries[i].hash = entries[i].compute_hash();
        }
        let r = run(&entries, &cps, Some(&key.public_key()));
        assert_eq!(kind(&r), Some((ProblemKind::CheckpointMismatch, 10)), "{r:?}");
        // Without a key the checkpoint hashes are still compared.
        assert_eq!(kind(&run(&entries, &cps, None)), Some((ProblemKind::CheckpointMismatch, 10)));
        // Without checkpoints a fully rewritten chain is undetectable: that is what they are for.
        assert!(run(&entries, &[], None).intact);
    }

    #[test]
    fn bad_signature_and_replaced_key() {
        let (entries, cps, key) = setup(20, 10);
        let other = LedgerKey::from_seed(&[1; 32]);
        let r = run(&entries, &cps, Some(&other.public_key()));
        assert_eq!(kind(&r), Some((ProblemKind::BadSignature, 10)));
        assert!(r.problem.unwrap().message.contains("signed by key"));
        // Checkpoints re-signed by a replacement key, verified with the real one.
        let forged = checkpoints_every(&entries, 10, &other);
        let r = run(&entries, &forged, Some(&key.public_key()));
        assert_eq!(kind(&r), Some((ProblemKind::BadSignature, 10)));
        // A tampered signature.
        let mut cps2 = cps.clone();
        cps2[1].ts += chrono::Duration::seconds(1);
        let r = run(&entries, &cps2, Some(&key.public_key()));
        assert_eq!(kind(&r), Some((ProblemKind::BadSignature, 20)));
        assert_eq!(r.checkpoints_checked, 1);
        // A bad checkpoint beyond the end is reported as a bad signature, not a truncation.
        let r = run(&entries[..15], &cps2, Some(&key.public_key()));
        assert_eq!(kind(&r), Some((ProblemKind::BadSignature, 20)));
    }

    #[test]
    fn corrupt_item_is_reported_with_its_error() {
        let (entries, _, _) = setup(5, 5);
        let items: Vec<R> = entries[..3]
            .iter()
            .cloned()
            .map(Ok)
            .chain([Err("line 4: expected value at column 1".to_owned())])
            .collect();
        let r = verify(items, &[], None, None);
        assert_eq!(kind(&r), Some((ProblemKind::Corrupt, 4)));
        let msg = r.problem.unwrap().message;
        assert!(msg.contains("seq 4 (after seq 3)") && msg.contains("line 4: expected value"), "{msg}");
    }

    #[test]
    fn from_seq_trusts_or_checks_the_previous_checkpoint() {
        let (entries, cps, key) = setup(30, 10);
        let pk = key.public_key();
        // From 11: the checkpoint at 10 vouches for entry 11's prevHash.
        let r = verify(entries.iter().cloned().map(R::Ok), &cps, Some(&pk), Some(11));
        assert!(r.intact, "{r:?}");
        assert_eq!((r.first_seq, r.entries_checked, r.checkpoints_checked), (Some(11), 20, 3));
        // From 15 with only the tail supplied: prevHash trusted.
        let r = verify(entries[14..].iter().cloned().map(R::Ok), &cps, Some(&pk), Some(15));
        assert!(r.intact && r.first_seq == Some(15) && r.entries_checked == 16, "{r:?}");
        // Entry 11's prevHash no longer matches the checkpoint at 10.
        let mut tail: Vec<Entry> = entries[10..].to_vec();
        tail[0].prev_hash = "22".repeat(32);
        tail[0].hash = tail[0].compute_hash();
        let r = verify(tail.into_iter().map(R::Ok), &cps, Some(&pk), Some(11));
        assert_eq!(kind(&r), Some((ProblemKind::CheckpointMismatch, 10)), "{r:?}");
        // A gap right at the start.
        let r = verify(entries[12..].iter().cloned().map(R::Ok), &[], None, Some(11));
        assert_eq!(kind(&r), Some((ProblemKind::Deleted, 11)));
    }

    #[test]
    fn checkpoints_may_be_given_in_any_order() {
        let (entries, mut cps, key) = setup(30, 10);
        cps.reverse();
        assert!(run(&entries, &cps, Some(&key.public_key())).intact);
    }

    #[test]
    fn report_serializes_camel_case() {
        let (mut entries, _, _) = setup(3, 3);
        entries.remove(1);
        let json = serde_json::to_value(run(&entries, &[], None)).unwrap();
        assert_eq!(json["problem"]["kind"], "deleted");
        assert_eq!(json["entriesChecked"], 1);
        assert!(json.get("lastCheckpoint").is_some());
    }

    #[derive(Debug, Clone)]
    enum Tamper {
        /// Change one byte/number of one field of one entry (field index, entry index, seed).
        Edit(usize, prop::sample::Index, u8),
        Delete(prop::sample::Index),
        Swap(prop::sample::Index, prop::sample::Index),
        SwapContents(prop::sample::Index, prop::sample::Index),
        Truncate(prop::sample::Index, prop::sample::Index),
        ReplaceKey,
    }

    fn arb_tamper() -> impl Strategy<Value = Tamper> {
        prop_oneof![
            3 => (0usize..FIELDS, any::<prop::sample::Index>(), 1u8..=255).prop_map(|(f, i, b)| Tamper::Edit(f, i, b)),
            1 => any::<prop::sample::Index>().prop_map(Tamper::Delete),
            1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Tamper::Swap(a, b)),
            1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Tamper::SwapContents(a, b)),
            1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Tamper::Truncate(a, b)),
            1 => Just(Tamper::ReplaceKey),
        ]
    }

    const FIELDS: usize = 18;

    fn flip_str(s: &mut String, seed: u8, at: usize) {
        let mut bytes = std::mem::take(s).into_bytes();
        if bytes.is_empty() {
            bytes.push(b'a' ^ (seed & 0x1f));
        } else {
            let i = at % bytes.len();
            // Keep it ASCII (valid UTF-8) and different: flip low bits of an ASCII byte, or
            // replace a non-ASCII byte sequence's first byte's char by 'x'.
            if bytes[i].is_ascii() {
                let flipped = bytes[i] ^ (seed & 0x1f).max(1);
                bytes[i] = if flipped.is_ascii() { flipped } else { b'x' };
            } else {
                bytes[i] = b'x';
            }
        }
        *s = String::from_utf8_lossy(&bytes).into_owned();
    }

    /// Change one field of `e` so it differs. Returns false if nothing changed (never for these).
    fn edit_field(e: &mut Entry, field: usize, seed: u8) {
        let at = usize::from(seed);
        match field {
            0 => e.seq = e.seq.wrapping_add(u64::from(seed)),
            1 => e.ts += chrono::Duration::microseconds(i64::from(seed)),
            2 => flip_str(&mut e.actor.id, seed, at),
            3 => {
                e.actor.kind = match e.actor.kind {
                    crate::ActorKind::Agent => crate::ActorKind::User,
                    _ => crate::ActorKind::Agent,
                }
            }
            4 => flip_str(&mut e.action, seed, at),
            5 => flip_str(e.namespace.get_or_insert_with(String::new), seed, at),
            6 => match &mut e.target {
                Some(t) => flip_str(&mut t.name, seed, at),
                None => {
                    e.target =
                        Some(crate::Target { kind: "x".into(), namespace: "y".into(), name: "z".into(), uid: None })
                }
            },
            7 => flip_str(e.run.get_or_insert_with(String::new), seed, at),
            8 => e.takeover_level = Some(e.takeover_level.map_or(0, |l| l.wrapping_add(seed))),
            9 => flip_str(e.decision.get_or_insert_with(String::new), seed, at),
            10 => flip_str(&mut e.outcome, seed, at),
            11 => e.params = bump_json(std::mem::take(&mut e.params), seed),
            12 => flip_str(e.error.get_or_insert_with(String::new), seed, at),
            13 => flip_str(e.trace_id.get_or_insert_with(String::new), seed, at),
            14 => flip_str(&mut e.prev_hash, seed, at),
            15 => flip_str(&mut e.hash, seed, at),
            16 => flip_str(e.environment.get_or_insert_with(String::new), seed, at),
            _ => match &mut e.target {
                Some(t) => flip_str(&mut t.namespace, seed, at),
                None => {
                    e.target =
                        Some(crate::Target { kind: "a".into(), namespace: "b".into(), name: "c".into(), uid: None })
                }
            },
        }
    }

    /// Change one leaf of a JSON value (the first string/number/bool found depth-first), or add a
    /// member if there is none.
    fn bump_json(v: serde_json::Value, seed: u8) -> serde_json::Value {
        fn go(v: &mut serde_json::Value, seed: u8) -> bool {
            match v {
                serde_json::Value::String(s) => {
                    flip_str(s, seed, usize::from(seed));
                    true
                }
                serde_json::Value::Number(n) => {
                    *n = (n.as_i64().unwrap_or(0).wrapping_add(i64::from(seed))).into();
                    true
                }
                serde_json::Value::Bool(b) => {
                    *b = !*b;
                    true
                }
                serde_json::Value::Array(items) => items.iter_mut().any(|i| go(i, seed)),
                serde_json::Value::Object(m) => m.values_mut().any(|i| go(i, seed)),
                serde_json::Value::Null => false,
            }
        }
        let mut v = v;
        if !go(&mut v, seed) {
            v = json!({ "tampered": seed });
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any single modification of a random chain is detected, and deletions, swaps,
        /// truncations and key replacements are named as such.
        #[test]
        fn any_single_modification_is_detected(
            contents in prop::collection::vec((any::<u8>(), arb_json(2), "[a-zé\"\\\\\n ]{0,12}"), 2..200),
            every in 1u64..40,
            tamper in arb_tamper(),
        ) {
            let key = LedgerKey::from_seed(&[3; 32]);
            let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap();
            let mut prev = GENESIS_HASH.to_owned();
            let mut entries = Vec::new();
            for (i, (b, params, s)) in contents.into_iter().enumerate() {
                let seq = i as u64 + 1;
                let e = draft_from(b, params, s).seal(seq, t0 + chrono::Duration::seconds(seq as i64), &prev);
                prev = e.hash.clone();
                entries.push(e);
            }
            let mut cps = checkpoints_every(&entries, every, &key);
            let pk = key.public_key();
            prop_assert!(run(&entries, &cps, Some(&pk)).intact);

            let n = entries.len();
            let expect: Option<ProblemKind>;
            match tamper {
                Tamper::Edit(field, i, seed) => {
                    let i = i.index(n);
                    let before = entries[i].clone();
                    edit_field(&mut entries[i], field, seed);
                    prop_assume!(entries[i] != before);
                    expect = None;
                }
                Tamper::Delete(i) => {
                    let i = i.index(n);
                    // Deleting the last entry is a truncation, detectable only under a checkpoint.
                    prop_assume!(i + 1 < n);
                    entries.remove(i);
                    expect = Some(ProblemKind::Deleted);
                }
                Tamper::Swap(a, b) => {
                    let (a, b) = (a.index(n), b.index(n));
                    prop_assume!(a != b);
                    entries.swap(a, b);
                    expect = Some(ProblemKind::Reordered);
                }
                Tamper::SwapContents(a, b) => {
                    let (a, b) = (a.index(n), b.index(n));
                    prop_assume!(a != b);
                    let (sa, sb) = (entries[a].seq, entries[b].seq);
                    entries.swap(a, b);
                    entries[a].seq = sa;
                    entries[b].seq = sb;
                    expect = Some(ProblemKind::Reordered);
                }
                Tamper::Truncate(c, at) => {
                    prop_assume!(!cps.is_empty());
                    let cp_seq = cps[c.index(cps.len())].seq;
                    // Keep fewer entries than the checkpoint covers.
                    let keep = at.index(usize::try_from(cp_seq).unwrap());
                    entries.truncate(keep);
                    expect = Some(ProblemKind::Truncated);
                }
                Tamper::ReplaceKey => {
                    prop_assume!(!cps.is_empty());
                    cps = checkpoints_every(&entries, every, &LedgerKey::from_seed(&[4; 32]));
                    expect = Some(ProblemKind::BadSignature);
                }
            }
            let r = run(&entries, &cps, Some(&pk));
            prop_assert!(!r.intact, "modification not detected: {:?}", tamper);
            let p = r.problem.clone().unwrap();
            if let Some(k) = expect {
                prop_assert_eq!(p.kind, k, "{:?}: {}", tamper, p);
            }
            prop_assert!(p.message.contains(&p.seq.to_string()), "message does not name the seq: {}", p);
        }
    }
}
