//! TLS on the public listener, black-box: a test CA and server certificates
//! made here with rcgen, a `wss://` client trusting only that CA, and the
//! certificate files replaced while Herald runs (rotation without restart).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::node::{TestHerald, test_config};
use common::{TestNats, eventually};
use futures::{SinkExt, StreamExt};
use herald::tls::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for localhost and 127.0.0.1, written as PEM to
    /// `dir/server.crt` and `dir/server.key`; returns its DER.
    fn issue(&self, dir: &Path) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        // Written next to the targets and renamed, as a deploy tool would.
        std::fs::write(dir.join("server.key.new"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("server.crt.new"), cert.pem()).unwrap();
        std::fs::rename(dir.join("server.key.new"), dir.join("server.key")).unwrap();
        std::fs::rename(dir.join("server.crt.new"), dir.join("server.crt")).unwrap();
        cert.der().clone()
    }
}

fn client_config(trusted: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A resumed session reports the certificate of the session it resumes;
    // each connection here must see what the server presents now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Connects over `wss://`, sends a Centrifugo `connect`, returns the reply
/// and the certificate the server presented.
async fn wss_connect(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    token: &str,
) -> Result<(serde_json::Value, CertificateDer<'static>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/connection/websocket", addr.port()),
        tls,
    )
    .await
    .map_err(|e| format!("websocket: {e}"))?;
    let cmd = serde_json::json!({"id": 1, "connect": {"token": token}});
    ws.send(Message::text(cmd.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let reply: serde_json::Value = serde_json::from_str(&t).unwrap();
                return Ok((reply, presented));
            }
            Ok(Some(Ok(_))) => continue,
            other => return Err(format!("no reply: {other:?}")),
        }
    }
}

#[tokio::test]
async fn wss_with_a_test_ca_and_certificate_rotation() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Herald test CA");
    let first = ca.issue(dir.path());
    let mut config = test_config(&nats, dir.path().join("data"));
    config.tls = Some(TlsFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        reload_interval: Duration::from_millis(100),
    });
    let h = TestHerald::start(config).await;
    let trusting = client_config(&ca.der());

    let (reply, presented) = wss_connect(h.addr, trusting.clone(), &h.token("alice"))
        .await
        .expect("wss connect");
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    assert_eq!(presented, first);

    // A client trusting another CA refuses the server; plain ws:// gets nowhere.
    let stranger = client_config(&TestCa::new("Another CA").der());
    let e = wss_connect(h.addr, stranger, &h.token("alice"))
        .await
        .expect_err("untrusted");
    assert!(e.starts_with("tls:"), "{e}");
    assert!(
        herald_client::Client::connect(h.addr, &h.token("alice"))
            .await
            .is_err()
    );

    // Rotation: new files, no restart; new connections get the new certificate.
    let second = ca.issue(dir.path());
    assert_ne!(first, second);
    eventually(
        "the new certificate is served",
        Duration::from_secs(10),
        || {
            let (trusting, token) = (trusting.clone(), h.token("alice"));
            let second = second.clone();
            async move {
                let (_, presented) = wss_connect(h.addr, trusting, &token).await.ok()?;
                (presented == second).then_some(())
            }
        },
    )
    .await;
}
