//! Proxies to an application backend over `https://`, black-box: a backend
//! the test runs behind TLS with a certificate of a test CA (rcgen), Herald
//! trusting that CA through `backend_ca_file` — and, without it, refusing
//! the backend's certificate (the client gets the proxy's error, nothing
//! hangs). Webhooks use the same connector (`http_client`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::TestNats;
use common::node::{TestHerald, test_config};
use common::ws::WsClient;
use herald::config::{NamespaceProxies, ProxiesConfig, ProxyConfig};
use http_body_util::{BodyExt, Full};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};

/// A CA and a server certificate for 127.0.0.1 it signed: (CA PEM, server
/// TLS configuration).
fn test_ca() -> (String, Arc<rustls::ServerConfig>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "herald backend test CA");
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (issuer.pem(), Arc::new(server))
}

/// An HTTPS connect proxy backend: every request is counted and answered
/// with the user `tls-user`. Returns its address and the count of requests
/// that got through TLS.
async fn https_backend(tls: Arc<rustls::ServerConfig>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let body: Bytes = req.into_body().collect().await?.to_bytes();
                            let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            println!("backend got over TLS: {asked}");
                            count.fetch_add(1, Ordering::SeqCst);
                            let answer = json!({"result": {"user": "tls-user"}});
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                                answer.to_string(),
                            ))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, served)
}

fn proxies(backend: SocketAddr, ca_file: Option<std::path::PathBuf>) -> ProxiesConfig {
    ProxiesConfig {
        proxies: vec![ProxyConfig {
            name: "connect".into(),
            endpoint: format!("https://{backend}/connect"),
            timeout: Duration::from_secs(2),
            http_headers: vec![],
            static_http_headers: BTreeMap::new(),
            include_connection_meta: false,
        }],
        ca_file,
        connect: Some("connect".into()),
        refresh: None,
        rpc: None,
        default_namespace: NamespaceProxies::default(),
        namespaces: BTreeMap::new(),
    }
}

/// Connects without a token: the connect proxy decides.
async fn connect_reply(addr: SocketAddr) -> Value {
    let mut c = WsClient::open(addr).await;
    c.call("connect", json!({})).await
}

#[tokio::test]
async fn a_connect_proxy_over_https_trusting_a_test_ca() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, tls) = test_ca();
    let ca_file = dir.path().join("backend-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let (backend, served) = https_backend(tls).await;

    // Trusting the test CA: the backend's answer makes the connection.
    let mut c = test_config(&nats, dir.path().join("trusting"));
    c.proxies = proxies(backend, Some(ca_file.clone()));
    let mut herald = TestHerald::start(c).await;
    let r = connect_reply(herald.addr).await;
    println!("trusting the CA: {r}");
    assert_eq!(
        r["connect"]["client"].as_str().map(str::is_empty),
        Some(false),
        "{r}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 1);
    herald.stop().await;

    // The system's roots only: the handshake fails, the backend never
    // answers, and the client gets the proxy's error at once.
    let mut c = test_config(&nats, dir.path().join("system-roots"));
    c.proxies = proxies(backend, None);
    let mut herald = TestHerald::start(c).await;
    let started = std::time::Instant::now();
    let r = connect_reply(herald.addr).await;
    println!("system roots only: {r} after {:?}", started.elapsed());
    assert!(r.get("connect").is_none(), "{r}");
    assert_eq!(served.load(Ordering::SeqCst), 1, "no request got through");
    herald.stop().await;
}

#[test]
fn backend_ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "no certificate here").unwrap();
    let sources = herald::config::Sources {
        env: vec![("HERALD_BACKEND_CA_FILE".into(), bad.display().to_string())],
        ..Default::default()
    };
    let err = herald::config::Config::load(&sources).expect_err("a CA file without a certificate");
    println!("{err:?}");
    assert!(format!("{err:?}").contains("no PEM certificate"), "{err:?}");
}
