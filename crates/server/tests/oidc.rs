//! OIDC / JWT bearer tokens against the real server, with RSA and EC keys generated here and a
//! JWKS (and discovery document) served by a local HTTP server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{TestServer, client_with, manifest};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ISSUER_PATH: &str = "/realms/test";
const AUDIENCE: &str = "agentplane";

struct RsaKey {
    pem: String,
    public_pem: String,
    n: String,
    e: String,
}

/// One RSA key per test binary (generating one is slow in a debug build).
fn rsa_key() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        RsaKey {
            pem: key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap().to_string(),
            public_pem: key.to_public_key().to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap(),
            n: B64.encode(key.n().to_bytes_be()),
            e: B64.encode(key.e().to_bytes_be()),
        }
    })
}

struct EcKey {
    pem: String,
    x: String,
    y: String,
}

fn ec_key() -> EcKey {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = key.public_key().to_encoded_point(false);
    EcKey {
        pem: key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap().to_string(),
        x: B64.encode(point.x().unwrap()),
        y: B64.encode(point.y().unwrap()),
    }
}

fn rsa_jwk(kid: &str) -> Value {
    let k = rsa_key();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": k.n, "e": k.e})
}

fn ec_jwk(kid: &str, k: &EcKey) -> Value {
    json!({"kty": "EC", "kid": kid, "use": "sig", "crv": "P-256", "x": k.x, "y": k.y})
}

/// The identity provider: serves the JWKS and the discovery document, and counts JWKS fetches.
struct Idp {
    base: String,
    keys: Arc<RwLock<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Idp {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(RwLock::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f, b) = (keys.clone(), fetches.clone(), base.clone());
        let app = axum::Router::new()
            .route(
                &format!("{ISSUER_PATH}/jwks"),
                get(move || {
                    let (k, f) = (k.clone(), f.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({"keys": *k.read().unwrap()}))
                    }
                }),
            )
            .route(
                &format!("{ISSUER_PATH}/.well-known/openid-configuration"),
                get(move || {
                    let b = b.clone();
                    async move {
                        axum::Json(json!({"issuer": format!("{b}{ISSUER_PATH}"), "jwks_uri": format!("{b}{ISSUER_PATH}/jwks")}))
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp { base, keys, fetches }
    }

    fn issuer(&self) -> String {
        format!("{}{ISSUER_PATH}", self.base)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn server(idp: &Idp, discovery: bool) -> TestServer {
    let issuer = idp.issuer();
    TestServer::start_with(move |c| {
        c.controller.enabled = false;
        c.auth.oidc = Some(agentplane_server::config::OidcConfig {
            issuer: issuer.clone(),
            audience: AUDIENCE.into(),
            jwks_url: (!discovery).then(|| format!("{issuer}/jwks")),
            jwks_refetch_min_seconds: 1,
            ..Default::default()
        });
    })
    .await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(idp: &Idp, sub: &str, roles: Value) -> Value {
    json!({"iss": idp.issuer(), "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 300, "roles": roles})
}

fn sign_rs(kid: &str, c: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, c, &EncodingKey::from_rsa_pem(rsa_key().pem.as_bytes()).unwrap()).unwrap()
}

fn sign_es(kid: &str, k: &EcKey, c: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, c, &EncodingKey::from_ec_pem(k.pem.as_bytes()).unwrap()).unwrap()
}

async fn get(t: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let r = client_with(token).get(t.url(path)).send().await.unwrap();
    let code = r.status().as_u16();
    if code == 401 {
        assert!(r.headers().contains_key("www-authenticate"));
    }
    (code, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_rs256_and_es256_tokens_authenticate_with_their_roles() {
    let ec = ec_key();
    let idp = Idp::start(vec![rsa_jwk("rsa1"), ec_jwk("ec1", &ec)]).await;
    let t = server(&idp, false).await;
    let admin = sign_rs("rsa1", &claims(&idp, "alice", json!(["admin"])));
    assert_eq!(get(&t, &admin, "/api/v1/tokens").await.0, 200);
    let r = client_with(&admin).post(t.coll("default", "agents")).json(&manifest("Agent", "a")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (_, e) = t.get(&t.url("/api/v1/ledger/entries?action=resource.created")).await;
    assert_eq!(e["entries"][0]["actor"], json!({"kind": "user", "id": "oidc:alice"}));

    let viewer = sign_es("ec1", &ec, &claims(&idp, "bob", json!(["team-a:viewer", "nonsense"])));
    assert_eq!(get(&t, &viewer, "/api/v1/namespaces/team-a/agents").await.0, 200);
    let (code, v) = get(&t, &viewer, "/api/v1/namespaces/team-b/agents").await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(get(&t, &viewer, "/api/v1/agents").await.0, 403, "cluster-wide list needs a cluster-wide grant");
    // Leeway: expired 10 s ago is still fine with 30 s of leeway.
    let mut c = claims(&idp, "carol", json!(["viewer"]));
    c["exp"] = json!(now() - 10);
    assert_eq!(get(&t, &sign_rs("rsa1", &c), "/api/v1/version").await.0, 200);
    assert_eq!(idp.fetches(), 1, "keys are cached by kid");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_jwks() {
    let idp = Idp::start(vec![rsa_jwk("rsa1")]).await;
    let t = server(&idp, true).await;
    let tok = sign_rs("rsa1", &claims(&idp, "alice", json!(["viewer"])));
    assert_eq!(get(&t, &tok, "/api/v1/version").await.0, 200);
    assert_eq!(idp.fetches(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jwts_are_refused() {
    let ec = ec_key();
    let idp = Idp::start(vec![rsa_jwk("rsa1"), ec_jwk("ec1", &ec)]).await;
    let t = server(&idp, false).await;
    let ok = claims(&idp, "alice", json!(["admin"]));
    assert_eq!(get(&t, &sign_rs("rsa1", &ok), "/api/v1/version").await.0, 200);

    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    let mut c = ok.clone();
    c["exp"] = json!(now() - 120);
    cases.push(("expired", sign_rs("rsa1", &c), "expired"));
    let mut c = ok.clone();
    c["nbf"] = json!(now() + 120);
    cases.push(("not yet valid", sign_rs("rsa1", &c), "not valid yet"));
    let mut c = ok.clone();
    c["iss"] = json!("https://evil.example.com");
    cases.push(("wrong issuer", sign_rs("rsa1", &c), "issuer"));
    let mut c = ok.clone();
    c["aud"] = json!("someone-else");
    cases.push(("wrong audience", sign_rs("rsa1", &c), "audience"));
    let mut c = ok.clone();
    c.as_object_mut().unwrap().remove("sub");
    cases.push(("no sub", sign_rs("rsa1", &c), "sub"));
    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT", "kid": "rsa1"}).to_string()),
        B64.encode(ok.to_string())
    );
    cases.push(("alg none", none, "header"));
    // HS256 "signed" with the RSA public key as the HMAC secret.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa1".into());
    let hs = jsonwebtoken::encode(&h, &ok, &EncodingKey::from_secret(rsa_key().public_pem.as_bytes())).unwrap();
    cases.push(("HS256 with the public key", hs, "HS256"));
    // ES256 header on the RSA key's kid: the key type does not match.
    cases.push(("algorithm/key mismatch", sign_es("rsa1", &ec, &ok), "does not match"));
    // Signed by another key that claims a known kid.
    let other = ec_key();
    cases.push(("forged signature", sign_es("ec1", &other, &ok), "signature"));
    cases.push(("unknown kid", sign_rs("nope", &ok), "key id"));
    cases.push(("garbage", "a.b.c".into(), "header"));
    for (what, token, needle) in cases {
        let (code, v) = get(&t, &token, "/api/v1/version").await;
        assert_eq!(code, 401, "{what}: {v}");
        assert_eq!(v["code"], "Unauthorized", "{what}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(!msg.contains(&token[..20.min(token.len())]) || token.len() < 20, "{what}: token echoed");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval() {
    let idp = Idp::start(vec![rsa_jwk("rsa1")]).await;
    let t = server(&idp, false).await;
    let ok = claims(&idp, "alice", json!(["viewer"]));
    assert_eq!(get(&t, &sign_rs("rsa1", &ok), "/api/v1/version").await.0, 200);
    assert_eq!(idp.fetches(), 1);
    for _ in 0..5 {
        assert_eq!(get(&t, &sign_rs("unknown", &ok), "/api/v1/version").await.0, 401);
    }
    assert_eq!(idp.fetches(), 1, "within the interval an unknown kid does not refetch");
    // The provider rotates in a new key.
    let ec = ec_key();
    idp.keys.write().unwrap().push(ec_jwk("ec-new", &ec));
    let rotated = sign_es("ec-new", &ec, &ok);
    assert_eq!(get(&t, &rotated, "/api/v1/version").await.0, 401, "not refetched yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&t, &rotated, "/api/v1/version").await.0, 200, "refetched after the interval");
    assert_eq!(idp.fetches(), 2);
    for _ in 0..5 {
        assert_eq!(get(&t, &sign_rs("still-unknown", &ok), "/api/v1/version").await.0, 401);
    }
    assert_eq!(idp.fetches(), 2);
    t.stop().await;
}

/// An identity provider over HTTPS: `openssl s_server -WWW` (a real TLS server) serving the
/// discovery document and the JWKS from a folder, with a certificate for 127.0.0.1 signed by
/// itself. Needs the `openssl` command (part of this machine image); fails saying so otherwise.
struct TlsIdp {
    child: std::process::Child,
    dir: tempfile::TempDir,
    issuer: String,
}

impl TlsIdp {
    fn start(keys: Vec<Value>) -> TlsIdp {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        // A private CA, and a server certificate for 127.0.0.1 that it signs.
        std::fs::write(
            dir.path().join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let steps: [&[&str]; 3] = [
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=agentplane test CA"],
            ]
            .concat(),
            &[&["req"], &ec[..], &["-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]].concat(),
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "cert.pem",
                "-days",
                "1",
                "-extfile",
                "leaf.ext",
            ],
        ];
        for args in steps {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("the openssl command is needed for the HTTPS JWKS test (apt-get install openssl)");
            assert!(status.success(), "openssl {args:?} failed");
        }
        let mut child = std::process::Command::new("openssl")
            .args(["s_server", "-accept", "0", "-cert", "cert.pem", "-key", "key.pem", "-WWW"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        // Read the port from its "ACCEPT [::]:PORT" line, then keep draining its output so that
        // it never blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACCEPT ") {
                    let _ = tx.send(rest.rsplit(':').next().and_then(|p| p.trim().parse::<u16>().ok()));
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .flatten()
            .expect("openssl s_server did not say which port it accepts on");
        let issuer = format!("https://127.0.0.1:{port}/realm");
        std::fs::create_dir_all(dir.path().join("realm/.well-known")).unwrap();
        std::fs::write(
            dir.path().join("realm/.well-known/openid-configuration"),
            json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")}).to_string(),
        )
        .unwrap();
        std::fs::write(dir.path().join("realm/jwks.json"), json!({"keys": keys}).to_string()).unwrap();
        TlsIdp { child, dir, issuer }
    }

    fn config(&self, ca: bool) -> agentplane_server::config::OidcConfig {
        agentplane_server::config::OidcConfig {
            issuer: self.issuer.clone(),
            audience: AUDIENCE.into(),
            ca_file: ca.then(|| self.dir.path().join("ca.pem")),
            ..Default::default()
        }
    }
}

impl Drop for TlsIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_discovered_and_fetched_over_https_with_a_private_ca() {
    use agentplane_server::auth::oidc::OidcVerifier;
    let idp = TlsIdp::start(vec![rsa_jwk("rsa1")]);
    let c = json!({"iss": idp.issuer, "aud": AUDIENCE, "sub": "alice", "exp": now() + 300, "roles": ["viewer"]});
    let token = sign_rs("rsa1", &c);

    // Trusting the IdP's CA: discovery and the JWKS over TLS, the token verifies.
    let v = OidcVerifier::new(idp.config(true)).unwrap();
    let id = v.verify(&token).await.unwrap();
    assert_eq!(id.subject, "alice");
    assert_eq!(v.jwks_fetches(), 1);

    // Without the CA the certificate is not trusted: no keys, the token is refused.
    let v = OidcVerifier::new(idp.config(false)).unwrap();
    assert!(v.verify(&token).await.is_err());

    // Plain http from another machine is refused by the configuration.
    let mut cfg = agentplane_server::Config::default();
    cfg.auth.oidc = Some(agentplane_server::config::OidcConfig {
        issuer: "http://idp.example.com/realm".into(),
        audience: AUDIENCE.into(),
        ..Default::default()
    });
    let e = cfg.check().unwrap_err().to_string();
    assert!(e.contains("only over https"), "{e}");
    // A CA file that is not a certificate is a clear error.
    let bad = idp.dir.path().join("key.pem");
    let mut cfg = idp.config(true);
    cfg.ca_file = Some(bad);
    let e = OidcVerifier::new(cfg).unwrap_err();
    assert!(e.contains("ca_file"), "{e}");
}
