//! Run-scoped tokens: `apr_<payload>.<mac>`, an HMAC-SHA256 over the run's namespace, name, uid
//! and attempt, with a key kept in `<data_dir>/run-token.key`. The controller mints one per
//! attempt and hands it to the agent as `AGENTPLANE_TOKEN`; the server accepts it only for reading
//! that run (and, later, the gateway), and only while the run has not ended.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of run tokens.
pub const PREFIX: &str = "apr_";
const KEY_FILE: &str = "run-token.key";

/// What a valid run token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunClaims {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub attempt: u32,
}

/// The HMAC key. `Debug` never shows it.
#[derive(Clone)]
pub struct RunTokenKey(Arc<[u8; 32]>);

impl std::fmt::Debug for RunTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunTokenKey(<redacted>)")
    }
}

impl RunTokenKey {
    /// Read `<data_dir>/run-token.key`, creating it (mode 0600) with a random key if missing.
    pub fn load_or_create(data_dir: &Path) -> Result<RunTokenKey, String> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex_decode(text.trim()).filter(|b| b.len() == 32).ok_or_else(|| {
                    format!("{} is not a 64-digit hex key; delete it to make a new one", path.display())
                })?;
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(RunTokenKey(Arc::new(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::getrandom(&mut key).map_err(|e| format!("no randomness for the run token key: {e}"))?;
                super::write_private(&path, &hex_encode(&key))?;
                Ok(RunTokenKey(Arc::new(key)))
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// A key from bytes (tests, benchmarks).
    pub fn from_bytes(key: [u8; 32]) -> RunTokenKey {
        RunTokenKey(Arc::new(key))
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice()).expect("HMAC takes keys of any length");
        mac.update(payload);
        mac
    }

    /// The token of one attempt of one run.
    pub fn mint(&self, namespace: &str, name: &str, uid: &str, attempt: u32) -> String {
        let payload = format!("{namespace}/{name}/{uid}/{attempt}");
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{PREFIX}{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The run a token names, if its MAC verifies (compared in constant time).
    pub fn verify(&self, token: &str) -> Option<RunClaims> {
        let rest = token.strip_prefix(PREFIX)?;
        let (payload, tag) = rest.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.split('/');
        let (ns, name, uid, attempt) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(RunClaims {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            attempt: attempt.parse().ok()?,
        })
    }
}

pub(crate) fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_verify_and_tamper() {
        let k = RunTokenKey::from_bytes([7; 32]);
        let t = k.mint("ns", "run-1", "uid-1", 2);
        assert!(t.starts_with(PREFIX));
        assert_eq!(
            k.verify(&t),
            Some(RunClaims { namespace: "ns".into(), name: "run-1".into(), uid: "uid-1".into(), attempt: 2 })
        );
        let other = RunTokenKey::from_bytes([8; 32]);
        assert_eq!(other.verify(&t), None);
        // Swap the payload for another run's, keep the tag.
        let forged = format!("{PREFIX}{}.{}", B64.encode("ns/run-2/uid-1/2"), t.split_once('.').unwrap().1);
        assert_eq!(k.verify(&forged), None);
        assert_eq!(k.verify("apr_"), None);
        assert!(!format!("{k:?}").contains('7'));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunTokenKey::load_or_create(dir.path()).unwrap();
        let b = RunTokenKey::load_or_create(dir.path()).unwrap();
        assert_eq!(b.verify(&a.mint("n", "r", "u", 1)).map(|c| c.attempt), Some(1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
