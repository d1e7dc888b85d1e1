//! Signed checkpoints: the ledger's ed25519 key signs `{hash, seq, ts}` of an entry so a third
//! party holding the public key can later prove the log up to that entry was not rewritten.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::canonical::{CHECKPOINT_DOMAIN_TAG, hex_lower, truncate_to_micros, write_checkpoint_message};
use crate::error::LedgerError;

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): the raw 32 key bytes follow.
const SPKI_ED25519_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A signed statement "entry `seq` has hash `hash`", made at `ts` with key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub seq: u64,
    /// The `hash` of the entry at `seq`.
    pub hash: String,
    /// When the checkpoint was made (whole microseconds; serialized in the canonical form).
    #[serde(with = "crate::canonical::ts_canonical")]
    pub ts: DateTime<Utc>,
    /// [`LedgerPublicKey::key_id`] of the signing key.
    pub key_id: String,
    /// Standard base64 (with padding) of the 64-byte ed25519 signature over
    /// [`Checkpoint::signed_message`].
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes signed: `agentplane.ledger.checkpoint.v1\0` then the canonical JSON of
    /// `{"hash":…,"seq":…,"ts":…}`.
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(self.seq, &self.hash, &self.ts)
    }
}

fn signed_message(seq: u64, hash: &str, ts: &DateTime<Utc>) -> Vec<u8> {
    let mut msg = Vec::with_capacity(160);
    msg.extend_from_slice(CHECKPOINT_DOMAIN_TAG);
    write_checkpoint_message(&mut msg, seq, hash, ts);
    msg
}

/// The ledger's signing key. Secret: its `Debug` prints only the key id; the seed is zeroed when
/// the key is dropped.
#[derive(Clone)]
pub struct LedgerKey {
    signing: SigningKey,
}

impl fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerKey").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

impl LedgerKey {
    /// The key for a 32-byte seed. The caller supplies the randomness (the server reads the OS
    /// RNG); this crate never does.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        LedgerKey { signing: SigningKey::from_bytes(seed) }
    }

    /// Like [`LedgerKey::from_seed`] for a seed read from a file: must be exactly 32 bytes.
    pub fn from_seed_slice(seed: &[u8]) -> Result<Self, LedgerError> {
        let seed: &[u8; 32] =
            seed.try_into().map_err(|_| LedgerError::InvalidKey(format!("a seed is 32 bytes, got {}", seed.len())))?;
        Ok(Self::from_seed(seed))
    }

    /// The secret seed, for the store to persist (with 0600 permissions). Zero it after use.
    pub fn to_seed_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public_key(&self) -> LedgerPublicKey {
        LedgerPublicKey::new(self.signing.verifying_key())
    }

    /// See [`LedgerPublicKey::to_pem`].
    pub fn public_key_pem(&self) -> String {
        self.public_key().to_pem()
    }

    /// See [`LedgerPublicKey::to_base64`].
    pub fn public_key_base64(&self) -> String {
        self.public_key().to_base64()
    }

    /// See [`LedgerPublicKey::key_id`].
    pub fn key_id(&self) -> String {
        self.public_key().key_id().to_owned()
    }

    /// Sign "entry `seq` has hash `hash`" at `ts` (truncated to whole microseconds).
    pub fn sign_checkpoint(&self, seq: u64, hash: &str, ts: DateTime<Utc>) -> Checkpoint {
        let ts = truncate_to_micros(ts);
        let signature = self.signing.sign(&signed_message(seq, hash, &ts));
        Checkpoint {
            seq,
            hash: hash.to_owned(),
            ts,
            key_id: self.key_id(),
            signature: B64.encode(signature.to_bytes()),
        }
    }
}

/// The ledger's public key, as served at `GET /api/v1/ledger/public-key`.
#[derive(Clone, PartialEq, Eq)]
pub struct LedgerPublicKey {
    key: VerifyingKey,
    key_id: String,
}

impl fmt::Debug for LedgerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerPublicKey").field("key_id", &self.key_id).field("base64", &self.to_base64()).finish()
    }
}

impl LedgerPublicKey {
    fn new(key: VerifyingKey) -> Self {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut key_id = hex_lower(&digest);
        key_id.truncate(16);
        LedgerPublicKey { key, key_id }
    }

    /// From the 32 raw key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, LedgerError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|e| LedgerError::InvalidKey(e.to_string()))?;
        Ok(Self::new(key))
    }

    /// From standard base64 (with padding) of the 32 raw key bytes.
    pub fn from_base64(text: &str) -> Result<Self, LedgerError> {
        let bytes = B64.decode(text.trim()).map_err(|e| LedgerError::InvalidKey(format!("not base64: {e}")))?;
        let bytes: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| LedgerError::InvalidKey(format!("an ed25519 public key is 32 bytes, got {}", bytes.len())))?;
        Self::from_bytes(bytes)
    }

    /// From a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo, RFC 8410), as `openssl pkey -pubout`
    /// writes it.
    pub fn from_pem(pem: &str) -> Result<Self, LedgerError> {
        let body = pem
            .trim()
            .strip_prefix("-----BEGIN PUBLIC KEY-----")
            .and_then(|rest| rest.trim_end().strip_suffix("-----END PUBLIC KEY-----"))
            .ok_or_else(|| LedgerError::InvalidKey("not a PEM PUBLIC KEY block".into()))?;
        let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = B64.decode(b64).map_err(|e| LedgerError::InvalidKey(format!("PEM body is not base64: {e}")))?;
        let raw = der
            .strip_prefix(SPKI_ED25519_PREFIX.as_slice())
            .ok_or_else(|| LedgerError::InvalidKey("PEM key is not an ed25519 public key".into()))?;
        let raw: &[u8; 32] =
            raw.try_into().map_err(|_| LedgerError::InvalidKey("PEM key has the wrong length".into()))?;
        Self::from_bytes(raw)
    }

    /// Standard base64 (with padding) of the 32 raw key bytes.
    pub fn to_base64(&self) -> String {
        B64.encode(self.key.as_bytes())
    }

    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo, RFC 8410), readable by OpenSSL and Python's
    /// `cryptography`.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der.extend_from_slice(self.key.as_bytes());
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", B64.encode(der))
    }

    /// The first 16 lowercase hex characters of SHA-256 of the 32 raw key bytes.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Check the checkpoint's key id and signature (strict ed25519 verification).
    pub fn verify_checkpoint(&self, cp: &Checkpoint) -> Result<(), LedgerError> {
        if cp.key_id != self.key_id {
            return Err(LedgerError::KeyIdMismatch { expected: self.key_id.clone(), found: cp.key_id.clone() });
        }
        let sig = B64
            .decode(&cp.signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| LedgerError::BadSignature("the signature is not 64 bytes of base64".into()))?;
        self.key.verify_strict(&cp.signed_message(), &sig).map_err(|e| LedgerError::BadSignature(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use chrono::TimeZone;

    fn key(n: u8) -> LedgerKey {
        LedgerKey::from_seed(&[n; 32])
    }

    fn ts() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + chrono::Duration::nanoseconds(1_500)
    }

    #[test]
    fn sign_and_verify() {
        let k = key(1);
        let cp = k.sign_checkpoint(10, &"ab".repeat(32), ts());
        assert_eq!(cp.ts.timestamp_subsec_nanos(), 1_000, "ts truncated to microseconds");
        assert_eq!(cp.key_id, k.key_id());
        k.public_key().verify_checkpoint(&cp).unwrap();
        // Serde round trip (camelCase, canonical ts) still verifies.
        let json = serde_json::to_string(&cp).unwrap();
        assert!(json.contains("\"keyId\"") && json.contains("\"ts\":\"2026-11-24T12:00:00.000001Z\""), "{json}");
        let back: Checkpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cp);
        k.public_key().verify_checkpoint(&back).unwrap();
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let k = key(1);
        let pk = k.public_key();
        let cp = k.sign_checkpoint(10, &"ab".repeat(32), ts());
        let mut c = cp.clone();
        c.seq = 11;
        assert!(matches!(pk.verify_checkpoint(&c), Err(LedgerError::BadSignature(_))));
        let mut c = cp.clone();
        c.hash = "ac".repeat(32);
        assert!(matches!(pk.verify_checkpoint(&c), Err(LedgerError::BadSignature(_))));
        let mut c = cp.clone();
        c.ts += chrono::Duration::microseconds(1);
        assert!(matches!(pk.verify_checkpoint(&c), Err(LedgerError::BadSignature(_))));
        let mut c = cp.clone();
        c.signature = "not base64!".into();
        assert!(matches!(pk.verify_checkpoint(&c), Err(LedgerError::BadSignature(_))));
    }

    #[test]
    fn another_key_is_rejected_by_key_id_and_by_signature() {
        let cp = key(2).sign_checkpoint(3, &"ab".repeat(32), ts());
        let pk = key(1).public_key();
        assert!(matches!(pk.verify_checkpoint(&cp), Err(LedgerError::KeyIdMismatch { .. })));
        // Even claiming the right key id does not help.
        let mut forged = cp;
        forged.key_id = pk.key_id().to_owned();
        assert!(matches!(pk.verify_checkpoint(&forged), Err(LedgerError::BadSignature(_))));
    }

    #[test]
    fn public_key_encodings_round_trip() {
        let k = key(7);
        let pk = k.public_key();
        assert_eq!(LedgerPublicKey::from_base64(&k.public_key_base64()).unwrap(), pk);
        assert_eq!(LedgerPublicKey::from_pem(&k.public_key_pem()).unwrap(), pk);
        assert!(k.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(pk.key_id().len(), 16);
        let digest: [u8; 32] = Sha256::digest(B64.decode(pk.to_base64()).unwrap()).into();
        assert!(hex_lower(&digest).starts_with(pk.key_id()));
        assert_ne!(key(8).key_id(), k.key_id());
        assert!(LedgerPublicKey::from_base64("AAAA").is_err());
        assert!(LedgerPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
    }

    #[test]
    fn seed_round_trips_and_debug_hides_it() {
        let seed = [42u8; 32];
        let k = LedgerKey::from_seed(&seed);
        assert_eq!(k.to_seed_bytes(), seed);
        assert_eq!(LedgerKey::from_seed_slice(&seed).unwrap().key_id(), k.key_id());
        assert!(LedgerKey::from_seed_slice(&seed[..31]).is_err());
        let debug = format!("{k:?}");
        assert!(debug.contains(&k.key_id()), "{debug}");
        assert!(!debug.contains("42, 42") && !debug.contains("2a2a2a2a"), "Debug leaks key material: {debug}");
        assert!(!debug.contains(&B64.encode(seed)), "{debug}");
    }
}
