//! The crate's errors.

/// Key and signature errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A key could not be read (wrong length, not base64/PEM, not an ed25519 point).
    #[error("invalid ledger key: {0}")]
    InvalidKey(String),
    /// A checkpoint names a different key than the one it is verified with.
    #[error("checkpoint was signed by key {found}, expected key {expected}")]
    KeyIdMismatch { expected: String, found: String },
    /// A checkpoint's signature does not verify.
    #[error("checkpoint signature does not verify: {0}")]
    BadSignature(String),
}
