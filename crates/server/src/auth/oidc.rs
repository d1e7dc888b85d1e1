//! OIDC / JWT bearer tokens: the signature is checked against the issuer's JWKS (keys cached by
//! key id; an unknown kid refetches the JWKS at most once per `jwks_refetch_min_seconds`), then
//! `iss`, `aud`, `exp` and `nbf` (with a small leeway), against an explicit algorithm list
//! (never `none`, never HMAC). Roles come from a configurable claim.
//!
//! Keys are fetched over HTTPS (system roots plus `auth.oidc.ca_file`); plain http is accepted
//! only from this machine (config validation, `key_url_is_safe`).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuthFailure;
use super::rbac::Grant;
use crate::config::OidcConfig;

/// Verified JWTs kept (by hash) before the cache is cleared.
const MAX_VERIFIED: usize = 10_000;
/// A verified JWT is trusted again without its signature check for at most this long (and
/// never past its `exp`).
const VERIFIED_TTL: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Who a verified JWT names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub grants: Vec<Grant>,
}

struct Key {
    key: DecodingKey,
    family: AlgorithmFamily,
    alg: Option<String>,
}

/// Verifies JWTs for one issuer.
pub struct OidcVerifier {
    cfg: OidcConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Key>>,
    /// When the JWKS was last fetched; serialises fetches.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    jwks_url: tokio::sync::OnceCell<String>,
    verified: std::sync::Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier").field("issuer", &self.cfg.issuer).finish_non_exhaustive()
    }
}

/// Parse the configured algorithm names; only RS*, PS* and ES* are accepted.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("auth.oidc.algorithms is empty; use e.g. [\"RS256\", \"ES256\"]".into());
    }
    names
        .iter()
        .map(|n| match n.as_str() {
            "RS256" => Ok(Algorithm::RS256),
            "RS384" => Ok(Algorithm::RS384),
            "RS512" => Ok(Algorithm::RS512),
            "PS256" => Ok(Algorithm::PS256),
            "PS384" => Ok(Algorithm::PS384),
            "PS512" => Ok(Algorithm::PS512),
            "ES256" => Ok(Algorithm::ES256),
            "ES384" => Ok(Algorithm::ES384),
            other => Err(format!(
                "auth.oidc.algorithms: {other:?} is not accepted (allowed: RS256, RS384, RS512, PS256, PS384, PS512, \
                 ES256, ES384; never none or HMAC)"
            )),
        })
        .collect()
}

fn family_of(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

impl OidcVerifier {
    pub fn new(cfg: OidcConfig) -> Result<OidcVerifier, String> {
        let algorithms = parse_algorithms(&cfg.algorithms)?;
        let mut builder = reqwest::Client::builder().timeout(FETCH_TIMEOUT);
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("auth.oidc.ca_file {}: cannot read it: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("auth.oidc.ca_file {}: not a PEM certificate bundle: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("auth.oidc.ca_file {}: holds no certificate", path.display()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(OidcVerifier {
            cfg,
            algorithms,
            http,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            jwks_url: tokio::sync::OnceCell::new(),
            verified: std::sync::Mutex::new(HashMap::new()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many times the JWKS was fetched (tests, metrics).
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Load keys from a JWKS document (tests and benchmarks call this instead of fetching).
    pub fn set_jwks(&self, jwks: &JwkSet) {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                // Symmetric and other keys are never used to verify.
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let alg = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
            keys.insert(kid, Key { key, family, alg });
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    async fn jwks_url(&self) -> Result<String, String> {
        self.jwks_url
            .get_or_try_init(|| async {
                if let Some(u) = &self.cfg.jwks_url {
                    return Ok(u.clone());
                }
                let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer.trim_end_matches('/'));
                let doc: Value = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("OIDC discovery {url}: {e}"))?
                    .json()
                    .await
                    .map_err(|e| format!("OIDC discovery {url}: {e}"))?;
                let uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("OIDC discovery {url}: no jwks_uri"))?;
                if !crate::config::key_url_is_safe(&uri) {
                    return Err(format!(
                        "OIDC discovery {url}: jwks_uri {uri:?} is not https (plain http only from this machine)"
                    ));
                }
                Ok(uri)
            })
            .await
            .cloned()
    }

    async fn fetch(&self) -> Result<(), String> {
        let url = self.jwks_url().await?;
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let jwks: JwkSet = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("fetching JWKS {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("JWKS {url}: {e}"))?;
        self.set_jwks(&jwks);
        Ok(())
    }

    fn has_key(&self, kid: &str) -> bool {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).contains_key(kid)
    }

    /// Refetch the JWKS for an unknown kid, at most once per `jwks_refetch_min_seconds`.
    async fn refresh_for(&self, kid: &str) {
        let mut last = self.last_fetch.lock().await;
        if self.has_key(kid) {
            return;
        }
        let min = Duration::from_secs(self.cfg.jwks_refetch_min_seconds);
        if last.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "cannot fetch the OIDC JWKS");
        }
    }

    /// Verify a JWT; the identity it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((id, until)) = cache.get(&digest)
                && Instant::now() < *until
            {
                return Ok(id.clone());
            }
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthFailure::invalid(format!("the JWT header is not valid ({e}); alg none is refused")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthFailure::invalid(format!("JWT algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.clone().ok_or_else(|| AuthFailure::invalid("the JWT has no kid"))?;
        if !self.has_key(&kid) {
            self.refresh_for(&kid).await;
        }
        let claims = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let key = keys.get(&kid).ok_or_else(|| AuthFailure::invalid("the JWT's key id is not in the JWKS"))?;
            if key.family != family_of(header.alg)
                || key.alg.as_deref().is_some_and(|a| a != format!("{:?}", header.alg))
            {
                return Err(AuthFailure::invalid("the JWT's algorithm does not match its key"));
            }
            let mut v = Validation::new(header.alg);
            v.algorithms = vec![header.alg];
            v.leeway = self.cfg.leeway_seconds;
            v.validate_nbf = true;
            v.validate_exp = true;
            v.set_issuer(&[&self.cfg.issuer]);
            v.set_audience(&[&self.cfg.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            jsonwebtoken::decode::<Value>(token, &key.key, &v).map_err(|e| {
                AuthFailure::invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "the JWT expired".to_string(),
                    ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)".to_string(),
                    ErrorKind::InvalidIssuer => "the JWT's issuer is not the configured one".to_string(),
                    ErrorKind::InvalidAudience => "the JWT's audience is not the configured one".to_string(),
                    ErrorKind::InvalidSignature => "the JWT's signature does not verify".to_string(),
                    ErrorKind::MissingRequiredClaim(c) => format!("the JWT has no {c} claim"),
                    other => format!("the JWT is not valid: {other:?}"),
                })
            })?
        }
        .claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthFailure::invalid("the JWT has no sub"))?
            .to_string();
        let grants = roles(claims.get(&self.cfg.roles_claim));
        let identity = Identity { subject, grants };
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let now = jsonwebtoken::get_current_timestamp();
        let ttl = Duration::from_secs(exp.saturating_sub(now)).min(VERIFIED_TTL);
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_VERIFIED {
            cache.clear();
        }
        cache.insert(digest, (identity.clone(), Instant::now() + ttl));
        Ok(identity)
    }

    /// Verify without the verified-token cache (benchmarks measure the signature check).
    pub async fn verify_uncached(&self, token: &str) -> Result<Identity, AuthFailure> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.verify(token).await
    }
}

/// Grants from the roles claim: an array of strings, or one string of space-separated roles.
/// `admin` is cluster-wide, `team-a:submitter` is in namespace team-a; others are ignored.
fn roles(v: Option<&Value>) -> Vec<Grant> {
    let names: Vec<&str> = match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split_whitespace().collect(),
        _ => Vec::new(),
    };
    names.into_iter().filter_map(Grant::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_list_refuses_none_and_hmac() {
        assert!(parse_algorithms(&["RS256".into(), "ES256".into()]).is_ok());
        for bad in ["none", "HS256", "HS512", "EdDSA", ""] {
            assert!(parse_algorithms(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_algorithms(&[]).is_err());
    }

    #[test]
    fn roles_claim_forms() {
        let g = roles(Some(&serde_json::json!(["admin", "ns1:viewer", "bogus"])));
        assert_eq!(g.len(), 2);
        assert_eq!(roles(Some(&serde_json::json!("viewer submitter"))).len(), 2);
        assert!(roles(None).is_empty());
    }
}
