//! The canonical encoding of entries and checkpoints, and the entry hash (see `docs/ledger.md`).
//!
//! Canonical JSON: object keys sorted by their UTF-8 bytes at every depth, no insignificant
//! whitespace, every entry field present (an absent optional is `null`), strings escaped as
//! serde_json escapes them, integers as integers, timestamps as RFC 3339 UTC with exactly six
//! fractional digits and `Z`. It is written by hand over [`serde_json::Value`] so it never depends on
//! a map's iteration order (the workspace enables serde_json's `preserve_order`).

use std::cell::RefCell;

use chrono::{DateTime, Datelike, SubsecRound, Timelike, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::entry::{Actor, ActorKind, Entry, EntryDraft, Target};

/// Domain tag hashed before an entry's canonical bytes.
pub const ENTRY_DOMAIN_TAG: &[u8] = b"agentplane.ledger.v1\0";

/// Domain tag signed before a checkpoint's canonical bytes.
pub const CHECKPOINT_DOMAIN_TAG: &[u8] = b"agentplane.ledger.checkpoint.v1\0";

thread_local! {
    /// A reused buffer so hashing an entry does not allocate (beyond the returned hex string).
    static HASH_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// Which optional members [`write_entry`] adds around the hashed fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryForm {
    /// The `seq` written (the entry's own, or another when checking for a swap).
    pub seq: u64,
    /// Add `"hash"` (export lines); never for hashing.
    pub with_hash: bool,
    /// Add `"type":"entry"` (export lines); never for hashing.
    pub with_type: bool,
}

impl EntryDraft {
    /// Give the draft its place in the chain: `seq`, `ts` (truncated to whole microseconds so it
    /// round-trips through storage and the canonical encoding exactly), `prevHash` (the previous
    /// entry's `hash`, or [`crate::GENESIS_HASH`] for seq 1), and compute `hash`.
    pub fn seal(self, seq: u64, ts: DateTime<Utc>, prev_hash: &str) -> Entry {
        let EntryDraft {
            actor,
            action,
            namespace,
            target,
            run,
            environment,
            takeover_level,
            decision,
            outcome,
            params,
            error,
            trace_id,
        } = self;
        let mut entry = Entry {
            seq,
            ts: truncate_to_micros(ts),
            actor,
            action,
            namespace,
            target,
            run,
            environment,
            takeover_level,
            decision,
            outcome,
            params,
            error,
            trace_id,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }
}

impl Entry {
    /// Lowercase hex SHA-256 of [`ENTRY_DOMAIN_TAG`] followed by [`Entry::canonical_bytes`].
    pub fn compute_hash(&self) -> String {
        let digest = with_buf(|buf| self.digest_with_seq(self.seq, buf));
        hex_lower(&digest)
    }

    /// The canonical encoding of every field except `hash` (what the hash covers, without the
    /// domain tag).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        write_entry(&mut out, self, EntryForm { seq: self.seq, with_hash: false, with_type: false });
        out
    }

    /// Whether the stored `hash` matches the content. Does not allocate.
    pub fn hash_is_valid(&self) -> bool {
        with_buf(|buf| self.hash_matches_with_seq(self.seq, buf))
    }

    /// Whether `hash` matches the content if the entry had `seq` instead of its own: used by
    /// verification to recognise an entry that belongs at another position.
    pub(crate) fn hash_matches_with_seq(&self, seq: u64, buf: &mut Vec<u8>) -> bool {
        let digest = self.digest_with_seq(seq, buf);
        let mut hex = [0u8; 64];
        hex_into(&digest, &mut hex);
        self.hash.as_bytes() == hex
    }

    fn digest_with_seq(&self, seq: u64, buf: &mut Vec<u8>) -> [u8; 32] {
        buf.clear();
        buf.extend_from_slice(ENTRY_DOMAIN_TAG);
        write_entry(buf, self, EntryForm { seq, with_hash: false, with_type: false });
        Sha256::digest(buf.as_slice()).into()
    }
}

fn with_buf<T>(f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    HASH_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::with_capacity(1024)),
    })
}

/// Truncate to whole microseconds (the precision of the canonical encoding).
pub fn truncate_to_micros(ts: DateTime<Utc>) -> DateTime<Utc> {
    ts.trunc_subsecs(6)
}

/// Write an entry's canonical JSON. Members in byte order of their keys:
/// action, actor{id,kind}, decision, environment, error, [hash], namespace, outcome, params,
/// prevHash, run, seq, takeoverLevel, target{kind,name,namespace,uid}, traceId, ts, [type].
pub(crate) fn write_entry(out: &mut Vec<u8>, e: &Entry, form: EntryForm) {
    out.extend_from_slice(b"{\"action\":");
    write_str(out, &e.action);
    out.extend_from_slice(b",\"actor\":");
    write_actor(out, &e.actor);
    out.extend_from_slice(b",\"decision\":");
    write_opt_str(out, e.decision.as_deref());
    out.extend_from_slice(b",\"environment\":");
    write_opt_str(out, e.environment.as_deref());
    out.extend_from_slice(b",\"error\":");
    write_opt_str(out, e.error.as_deref());
    if form.with_hash {
        out.extend_from_slice(b",\"hash\":");
        write_str(out, &e.hash);
    }
    out.extend_from_slice(b",\"namespace\":");
    write_opt_str(out, e.namespace.as_deref());
    out.extend_from_slice(b",\"outcome\":");
    write_str(out, &e.outcome);
    out.extend_from_slice(b",\"params\":");
    write_value(out, &e.params);
    out.extend_from_slice(b",\"prevHash\":");
    write_str(out, &e.prev_hash);
    out.extend_from_slice(b",\"run\":");
    write_opt_str(out, e.run.as_deref());
    out.extend_from_slice(b",\"seq\":");
    write_u64(out, form.seq);
    out.extend_from_slice(b",\"takeoverLevel\":");
    match e.takeover_level {
        Some(level) => write_u64(out, u64::from(level)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"target\":");
    match &e.target {
        Some(target) => write_target(out, target),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"traceId\":");
    write_opt_str(out, e.trace_id.as_deref());
    out.extend_from_slice(b",\"ts\":");
    write_ts(out, &e.ts);
    if form.with_type {
        out.extend_from_slice(b",\"type\":\"entry\"");
    }
    out.push(b'}');
}

fn write_actor(out: &mut Vec<u8>, actor: &Actor) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &actor.id);
    out.extend_from_slice(b",\"kind\":");
    out.extend_from_slice(match actor.kind {
        ActorKind::User => b"\"user\"",
        ActorKind::Agent => b"\"agent\"",
        ActorKind::System => b"\"system\"",
    });
    out.push(b'}');
}

fn write_target(out: &mut Vec<u8>, t: &Target) {
    out.extend_from_slice(b"{\"kind\":");
    write_str(out, &t.kind);
    out.extend_from_slice(b",\"name\":");
    write_str(out, &t.name);
    out.extend_from_slice(b",\"namespace\":");
    write_str(out, &t.namespace);
    out.extend_from_slice(b",\"uid\":");
    write_opt_str(out, t.uid.as_deref());
    out.push(b'}');
}

/// The canonical signed message of a checkpoint (without the domain tag):
/// `{"hash":…,"seq":…,"ts":…}`.
pub(crate) fn write_checkpoint_message(out: &mut Vec<u8>, seq: u64, hash: &str, ts: &DateTime<Utc>) {
    out.extend_from_slice(b"{\"hash\":");
    write_str(out, hash);
    out.extend_from_slice(b",\"seq\":");
    write_u64(out, seq);
    out.extend_from_slice(b",\"ts\":");
    write_ts(out, ts);
    out.push(b'}');
}

/// The canonical JSON of any value: keys sorted by bytes at every depth, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    // Only valid UTF-8 is ever written (strings are copied whole or escaped as ASCII).
    String::from_utf8(out).unwrap_or_default()
}

/// Append the canonical JSON of `value` to `out`.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                write_u64(out, u);
            } else if let Some(i) = n.as_i64() {
                // Negative (non-negative integers are u64 above).
                out.push(b'-');
                write_u64(out, i.unsigned_abs());
            } else if serde_json::to_writer(&mut *out, n).is_err() {
                // A serde_json float is always finite, so this cannot happen; keep the output valid.
                out.extend_from_slice(b"null");
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

const SMALL_OBJECT: usize = 16;
static NULL: Value = Value::Null;

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    // Maps read back from canonical JSON are already in order: no sort, no allocation.
    if map.keys().is_sorted() {
        for (i, (k, v)) in map.iter().enumerate() {
            write_member(out, i, k, v);
        }
    } else if map.len() <= SMALL_OBJECT {
        // Sort small objects on the stack: no allocation.
        let mut members: [(&str, &Value); SMALL_OBJECT] = [("", &NULL); SMALL_OBJECT];
        for (slot, (k, v)) in members.iter_mut().zip(map) {
            *slot = (k.as_str(), v);
        }
        let members = &mut members[..map.len()];
        // `str`'s order is the order of its UTF-8 bytes.
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (i, (k, v)) in members.iter().enumerate() {
            write_member(out, i, k, v);
        }
    } else {
        let mut members: Vec<(&String, &Value)> = map.iter().collect();
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (i, (k, v)) in members.into_iter().enumerate() {
            write_member(out, i, k, v);
        }
    }
    out.push(b'}');
}

fn write_member(out: &mut Vec<u8>, i: usize, key: &str, value: &Value) {
    if i > 0 {
        out.push(b',');
    }
    write_str(out, key);
    out.push(b':');
    write_value(out, value);
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    #[inline(always)]
    fn special(b: u8) -> bool {
        (b < 0x20) | (b == b'"') | (b == b'\\')
    }
    // Branch-free over 16-byte chunks so the compiler can vectorize it.
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |acc, &b| acc | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

/// A JSON string escaped exactly as serde_json escapes it: `"` and `\` with a backslash,
/// U+0008/0009/000A/000C/000D as `\b \t \n \f \r`, other controls below U+0020 as `\u00xx`
/// (lowercase hex), everything else (including non-ASCII and U+007F) as its UTF-8 bytes.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Fast path (almost every string): nothing to escape, one copy.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // `n % 10` < 10, so the cast is exact.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC, exactly six fractional digits (truncated, not rounded).
pub(crate) fn write_ts(out: &mut Vec<u8>, ts: &DateTime<Utc>) {
    let year = ts.year();
    let Ok(year) = u32::try_from(year) else {
        out.push(b'"');
        out.extend_from_slice(ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string().as_bytes());
        out.push(b'"');
        return;
    };
    if year > 9999 {
        out.push(b'"');
        out.extend_from_slice(ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string().as_bytes());
        out.push(b'"');
        return;
    }
    let mut nanos = ts.nanosecond();
    let mut second = ts.second();
    if nanos >= 1_000_000_000 {
        // chrono's leap-second representation: second 59 with nanos past one second.
        nanos -= 1_000_000_000;
        second += 1;
    }
    let micros = nanos / 1000;
    let mut b = *b"\"0000-00-00T00:00:00.000000Z\"";
    put_digits(&mut b[1..5], year);
    put_digits(&mut b[6..8], ts.month());
    put_digits(&mut b[9..11], ts.day());
    put_digits(&mut b[12..14], ts.hour());
    put_digits(&mut b[15..17], ts.minute());
    put_digits(&mut b[18..20], second);
    put_digits(&mut b[21..27], micros);
    out.extend_from_slice(&b);
}

fn put_digits(slot: &mut [u8], mut n: u32) {
    for d in slot.iter_mut().rev() {
        // `n % 10` < 10, so the cast is exact.
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The canonical timestamp text (without quotes).
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(29);
    write_ts(&mut out, ts);
    String::from_utf8(out).unwrap_or_default().trim_matches('"').to_owned()
}

pub(crate) fn hex_into(bytes: &[u8; 32], out: &mut [u8; 64]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

pub(crate) fn hex_lower(bytes: &[u8; 32]) -> String {
    let mut hex = [0u8; 64];
    hex_into(bytes, &mut hex);
    hex.iter().map(|&b| char::from(b)).collect()
}

/// Serde for checkpoint timestamps: written in the canonical form, read as any RFC 3339.
pub(crate) mod ts_canonical {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ts(ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testutil::sample_draft;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_depth_without_whitespace() {
        let v = json!({"b": 1, "a": {"z": [ {"y": 2, "x": null} ], "B": true}, "é": "x", "Z": -3});
        assert_eq!(canonical_json(&v), r#"{"Z":-3,"a":{"B":true,"z":[{"x":null,"y":2}]},"b":1,"é":"x"}"#);
    }

    #[test]
    fn canonical_encoding_does_not_depend_on_insertion_order() {
        let mut a = Map::new();
        a.insert("x".into(), json!(1));
        a.insert("a".into(), json!(2));
        let mut b = Map::new();
        b.insert("a".into(), json!(2));
        b.insert("x".into(), json!(1));
        assert_eq!(canonical_json(&Value::Object(a)), canonical_json(&Value::Object(b)));
    }

    #[test]
    fn timestamps_have_exactly_six_fraction_digits() {
        let ts = Utc.with_ymd_and_hms(2026, 11, 24, 9, 5, 7).unwrap();
        assert_eq!(format_ts(&ts), "2026-11-24T09:05:07.000000Z");
        let ts = ts + chrono::Duration::nanoseconds(120_456_789);
        assert_eq!(format_ts(&ts), "2026-11-24T09:05:07.120456Z");
        assert_eq!(format_ts(&Utc.with_ymd_and_hms(7, 1, 2, 3, 4, 5).unwrap()), "0007-01-02T03:04:05.000000Z");
    }

    #[test]
    fn seal_truncates_to_microseconds_and_hash_is_stable() {
        let ts = Utc.with_ymd_and_hms(2026, 11, 24, 9, 5, 7).unwrap() + chrono::Duration::nanoseconds(1_234_567);
        let e = sample_draft().seal(7, ts, crate::GENESIS_HASH);
        assert_eq!(e.ts.timestamp_subsec_nanos(), 1_234_000);
        assert_eq!(e.hash.len(), 64);
        assert!(e.hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(e.hash, e.compute_hash());
        assert!(e.hash_is_valid());
        // Round trip through serde keeps the hash valid.
        let back: Entry = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.compute_hash(), e.hash);
    }

    #[test]
    fn hash_covers_domain_tag_and_canonical_bytes() {
        let e = sample_draft().seal(1, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(), crate::GENESIS_HASH);
        let mut h = Sha256::new();
        h.update(b"agentplane.ledger.v1\0");
        h.update(e.canonical_bytes());
        assert_eq!(hex_lower(&h.finalize().into()), e.hash);
        let text = String::from_utf8(e.canonical_bytes()).unwrap();
        assert!(!text.contains("\"hash\""), "{text}");
        // The canonical bytes are valid JSON holding the same entry.
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["seq"], json!(1));
        assert_eq!(parsed["target"]["uid"], Value::Null);
    }

    /// Every field — top-level and nested — is covered by the hash.
    #[test]
    fn changing_any_single_field_changes_the_hash() {
        let base = sample_draft().seal(5, Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap(), &"ab".repeat(32));
        let h0 = base.compute_hash();
        type Mutation = Box<dyn Fn(&mut Entry)>;
        let mutations: Vec<(&str, Mutation)> = vec![
            ("seq", Box::new(|e| e.seq += 1)),
            ("ts", Box::new(|e| e.ts += chrono::Duration::microseconds(1))),
            ("actor.kind", Box::new(|e| e.actor.kind = ActorKind::User)),
            ("actor.id", Box::new(|e| e.actor.id.push('x'))),
            ("action", Box::new(|e| e.action = "resource.deleted".into())),
            ("namespace", Box::new(|e| e.namespace = None)),
            ("target", Box::new(|e| e.target = None)),
            ("target.kind", Box::new(|e| e.target.as_mut().unwrap().kind.push('s'))),
            ("target.namespace", Box::new(|e| e.target.as_mut().unwrap().namespace = "other".into())),
            ("target.name", Box::new(|e| e.target.as_mut().unwrap().name = "y".into())),
            ("target.uid", Box::new(|e| e.target.as_mut().unwrap().uid = Some("u-2".into()))),
            ("run", Box::new(|e| e.run = Some("run-2".into()))),
            ("environment", Box::new(|e| e.environment = Some("staging".into()))),
            ("takeoverLevel", Box::new(|e| e.takeover_level = Some(3))),
            ("takeoverLevel none", Box::new(|e| e.takeover_level = None)),
            ("decision", Box::new(|e| e.decision = Some("deny".into()))),
            ("outcome", Box::new(|e| e.outcome = "failure".into())),
            ("params.nested", Box::new(|e| e.params["spec"]["replicas"] = json!(4))),
            ("params.key added", Box::new(|e| e.params["extra"] = json!(null))),
            ("params.array", Box::new(|e| e.params["tags"][0] = json!("b"))),
            ("error", Box::new(|e| e.error = Some("boom".into()))),
            ("traceId", Box::new(|e| e.trace_id = None)),
            ("prevHash", Box::new(|e| e.prev_hash = "cd".repeat(32))),
        ];
        for (name, mutate) in mutations {
            let mut e = base.clone();
            mutate(&mut e);
            assert_ne!(e, base, "{name}: mutation did nothing");
            assert_ne!(e.compute_hash(), h0, "{name} is not covered by the hash");
            assert!(!e.hash_is_valid(), "{name}");
        }
        // `hash` itself is not an input.
        let mut e = base.clone();
        e.hash = "00".repeat(32);
        assert_eq!(e.compute_hash(), h0);
    }

    #[test]
    fn absent_and_empty_are_different() {
        let mut a = sample_draft().seal(1, Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(), crate::GENESIS_HASH);
        a.error = None;
        let mut b = a.clone();
        b.error = Some(String::new());
        assert_ne!(a.compute_hash(), b.compute_hash());
        let mut c = a.clone();
        c.params = Value::Null;
        let mut d = a.clone();
        d.params = json!({});
        assert_ne!(c.compute_hash(), d.compute_hash());
    }

    proptest! {
        /// Our string escaping is byte-for-byte serde_json's.
        #[test]
        fn strings_escape_like_serde_json(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn integers_print_like_serde_json(u in any::<u64>(), i in any::<i64>()) {
            prop_assert_eq!(canonical_json(&json!(u)), u.to_string());
            prop_assert_eq!(canonical_json(&json!(i)), i.to_string());
        }

        /// The canonical form parses back to the same value and is a fixed point.
        #[test]
        fn canonical_json_round_trips(v in crate::testutil::arb_json(3)) {
            let text = canonical_json(&v);
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(canonical_json(&back), text);
        }

        #[test]
        fn timestamps_match_chrono_format(secs in 0i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let ts = DateTime::from_timestamp(secs, nanos).unwrap();
            prop_assert_eq!(format_ts(&ts), ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
    }
}
