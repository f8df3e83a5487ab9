//! A JWKS endpoint over https://, its certificate issued by a CA made in the
//! test (rcgen) and trusted through `SSL_CERT_FILE`, which Herald's root
//! store (rustls-native-certs) honours. Its own test binary: the variable is
//! set before any other thread exists.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::node::{TestHerald, test_config};
use common::{TestNats, eventually};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;

#[test]
fn jwks_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "JWKS test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("jwks.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("jwks.key"), key.serialize_pem()).unwrap();
    // SAFETY: no other thread runs yet (one test in this binary, the
    // runtime is built below).
    unsafe { std::env::set_var("SSL_CERT_FILE", dir.path().join("ca.pem")) };

    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run(dir.path()));
}

async fn run(dir: &std::path::Path) {
    let signing =
        std::fs::read(common::root().join("tests/fixtures/keys/rsa1.key")).expect("key fixture");
    let signing = EncodingKey::from_rsa_pem(&signing).unwrap();
    let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let set = JwkSet { keys: vec![jwk] };

    let shutdown = CancellationToken::new();
    let tls = herald::tls::setup(
        Some(&herald::tls::TlsFiles {
            cert: dir.join("jwks.crt"),
            key: dir.join("jwks.key"),
            reload_interval: Duration::from_secs(60),
        }),
        &shutdown,
    )
    .unwrap()
    .expect("tls config");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = herald::tls::TlsListener::new(tcp, Arc::clone(&tls), shutdown.clone()).unwrap();
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || std::future::ready(axum::Json(set.clone()))),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });

    let nats = TestNats::start().await;
    let mut config = test_config(&nats, dir.join("data"));
    config.token.jwks_url = Some(format!("https://localhost:{port}/jwks"));
    let h = TestHerald::start(config).await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"sub": "alice", "exp": herald::auth::now_secs() + 600}),
        &signing,
    )
    .unwrap();
    eventually("the https JWKS is fetched", Duration::from_secs(10), || {
        let (url, token) = (h.url("/api/v1/channels/news/publications"), token.clone());
        async move {
            let status = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .status();
            (status == 200).then_some(())
        }
    })
    .await;
    shutdown.cancel();
}
