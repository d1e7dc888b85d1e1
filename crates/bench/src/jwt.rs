//! `jwt-verify`: how long the server takes to verify an OIDC JWT, RS256 and ES256, with keys
//! generated here and loaded into the verifier directly (no HTTP). Two figures per algorithm:
//! `first_use` (a token not seen before: header, key lookup, signature and claims checks) and
//! `repeat` (the same token again: answered from the verified-token cache).

use std::time::{Duration, Instant};

use agentplane_server::auth::oidc::OidcVerifier;
use agentplane_server::config::OidcConfig;
use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct JwtOpts {
    /// Verifications per algorithm and case.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
}

const ISSUER: &str = "http://issuer.invalid";

fn keys() -> Result<(String, serde_json::Value, String, serde_json::Value)> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let rsa = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).context("RSA key")?;
    let rsa_pem = rsa.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).context("RSA PEM")?.to_string();
    let rsa_jwk = json!({"kty": "RSA", "kid": "rsa", "alg": "RS256",
        "n": B64.encode(rsa.n().to_bytes_be()), "e": B64.encode(rsa.e().to_bytes_be())});
    let ec = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let ec_pem = ec.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).context("EC PEM")?.to_string();
    let point = ec.public_key().to_encoded_point(false);
    let x = point.x().context("EC x")?;
    let y = point.y().context("EC y")?;
    let ec_jwk = json!({"kty": "EC", "kid": "ec", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y)});
    Ok((rsa_pem, rsa_jwk, ec_pem, ec_jwk))
}

fn line(alg: &str, case: &str, ops: usize, elapsed: Duration, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let out = json!({
        "scenario": "jwt-verify",
        "alg": alg,
        "case": case,
        "ops": ops,
        "ops_per_sec": (ops as f64 / elapsed.as_secs_f64()).round(),
        "latency_us": {"p50": us(0.50), "p95": us(0.95), "p99": us(0.99), "max": h.max() as f64 / 1000.0},
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    println!("{out}");
}

pub async fn run(opts: JwtOpts) -> Result<()> {
    let (rsa_pem, rsa_jwk, ec_pem, ec_jwk) = keys()?;
    let verifier = OidcVerifier::new(OidcConfig {
        issuer: ISSUER.into(),
        audience: "agentplane".into(),
        jwks_url: Some(format!("{ISSUER}/jwks")),
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)?;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(json!({"keys": [rsa_jwk, ec_jwk]}))?;
    verifier.set_jwks(&jwks);
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": ISSUER, "aud": "agentplane", "sub": "bench", "exp": now + 3600, "roles": ["viewer"]});
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa", EncodingKey::from_rsa_pem(rsa_pem.as_bytes())?),
        (Algorithm::ES256, "ec", EncodingKey::from_ec_pem(ec_pem.as_bytes())?),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(&header, &claims, &key)?;
        for case in ["first_use", "repeat"] {
            let mut h = Histogram::<u64>::new(3)?;
            let start = Instant::now();
            for _ in 0..opts.ops {
                let t = Instant::now();
                let r = if case == "first_use" {
                    verifier.verify_uncached(&token).await
                } else {
                    verifier.verify(&token).await
                };
                let ns = t.elapsed().as_nanos() as u64;
                r.map_err(|e| anyhow::anyhow!("{alg:?} {case}: {e:?}"))?;
                let _ = h.record(ns);
            }
            line(&format!("{alg:?}"), case, opts.ops, start.elapsed(), &h);
        }
    }
    Ok(())
}
