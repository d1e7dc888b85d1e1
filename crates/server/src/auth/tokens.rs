//! API tokens: `apt_` + 43 characters (32 random bytes, base64url). Only their SHA-256 is
//! stored. Verifying one is a hash and a map lookup: records are cached in memory for a short
//! time, and a revoke through this server replaces the cached record at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentplane_store::{ApiToken, Store, StoreError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthFailure, Secret};

/// Prefix of API tokens.
pub const PREFIX: &str = "apt_";
/// Length of an API token: the prefix and 43 base64url characters.
pub const LEN: usize = PREFIX.len() + 43;
/// The file the bootstrap admin token is written to, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Name of the token made when the store has no admin token.
pub const BOOTSTRAP_NAME: &str = "bootstrap-admin";
/// Records cached before the cache is cleared.
const MAX_CACHED: usize = 10_000;

/// A fresh random token.
pub fn generate() -> Result<Secret, String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(Secret::new(format!("{PREFIX}{}", B64.encode(bytes))))
}

/// SHA-256 of a token, lowercase hex: what the store keeps.
pub fn hash(token: &str) -> String {
    super::run_token::hex_encode(&Sha256::digest(token.as_bytes()))
}

/// Whether `s` looks like an API token (so garbage never reaches the store).
pub fn well_formed(s: &str) -> bool {
    s.len() == LEN
        && s.starts_with(PREFIX)
        && s[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Verified token records by hash, each kept for `ttl`.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (ApiToken, Instant)>>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, hash: &str) -> Option<ApiToken> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(hash).filter(|(_, at)| at.elapsed() < self.ttl).map(|(t, _)| t.clone())
    }

    /// Put (or replace) a record: a revoke through this server calls this with the revoked
    /// record, so the token stops working here at once.
    pub fn put(&self, token: ApiToken) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_CACHED {
            entries.clear();
        }
        entries.insert(token.hash.clone(), (token, Instant::now()));
    }

    /// The active record of `token`, from the cache or the store.
    pub async fn verify(&self, store: &dyn Store, token: &str) -> Result<ApiToken, AuthFailure> {
        if !well_formed(token) {
            return Err(AuthFailure::malformed("the bearer token is not an agentplane API token"));
        }
        let h = hash(token);
        let record = match self.cached(&h) {
            Some(t) => t,
            None => match store.get_token_by_hash(&h).await {
                Ok(Some(t)) => {
                    self.put(t.clone());
                    t
                }
                Ok(None) => return Err(AuthFailure::invalid("unknown token")),
                Err(e) => return Err(AuthFailure::Unavailable(e.to_string())),
            },
        };
        // The lookup was by hash; compare again in constant time all the same.
        if !bool::from(record.hash.as_bytes().ct_eq(h.as_bytes())) {
            return Err(AuthFailure::invalid("unknown token"));
        }
        if record.revoked_at.is_some() {
            return Err(AuthFailure::invalid("the token was revoked"));
        }
        if record.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
            return Err(AuthFailure::invalid("the token expired"));
        }
        Ok(record)
    }
}

/// The bootstrap admin token: if `<data_dir>/admin-token` holds an active cluster-wide admin
/// token, nothing changes. Otherwise, if the store has no active cluster-wide admin token, one
/// named `bootstrap-admin` is created and written to that file (mode 0600). Returns the file's
/// path when it holds a working admin token. The token itself is never logged.
pub async fn bootstrap(store: &dyn Store, data_dir: &Path) -> Result<Option<PathBuf>, String> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let now = chrono::Utc::now();
    let is_admin = |t: &ApiToken| t.role == "admin" && t.namespace.is_none() && t.is_active(now);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let existing = store.get_token_by_hash(&hash(text.trim())).await.map_err(|e| e.to_string())?;
        if existing.as_ref().is_some_and(is_admin) {
            return Ok(Some(path));
        }
    }
    let tokens = store.list_tokens().await.map_err(|e| e.to_string())?;
    if tokens.iter().any(is_admin) {
        tracing::info!(
            file = %path.display(),
            "an admin token exists but {} does not hold it; not creating a bootstrap token",
            path.display()
        );
        return Ok(None);
    }
    let secret = generate()?;
    let record = ApiToken {
        id: new_id()?,
        name: BOOTSTRAP_NAME.into(),
        role: "admin".into(),
        namespace: None,
        hash: hash(secret.expose()),
        created_at: now,
        created_by: "system:bootstrap".into(),
        expires_at: None,
        revoked_at: None,
    };
    let audit = super::api::token_audit(
        agentplane_store::Actor::system("bootstrap"),
        agentplane_ledger::actions::TOKEN_CREATED,
        &record,
    );
    match store.create_token(record, audit).await {
        Ok(_) => {}
        Err(StoreError::TokenExists(_)) => {
            return Err(format!(
                "an active token named {BOOTSTRAP_NAME} exists but is not a cluster-wide admin token; revoke it"
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    super::write_private(&path, &format!("{}\n", secret.expose()))?;
    tracing::info!(file = %path.display(), "created the bootstrap admin token; it is in this file (mode 0600)");
    Ok(Some(path))
}

/// A new token id: `tok-` and 12 hex digits.
pub fn new_id() -> Result<String, String> {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).map_err(|e| format!("no randomness for a token id: {e}"))?;
    Ok(format!("tok-{}", super::run_token::hex_encode(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_well_formed_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(well_formed(a.expose()), "{}", a.expose().len());
        assert_ne!(a.expose(), b.expose());
        assert_eq!(hash(a.expose()).len(), 64);
        assert!(!well_formed("apt_short"));
        assert!(!well_formed(&format!("xpt_{}", &a.expose()[4..])));
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
    }
}
