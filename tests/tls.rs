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

/// Runs tests/sdk/centrifuge_js_wss.mjs (the official JavaScript SDK on
/// Node) against `wss://localhost:<port>`, trusting `ca_pem` through
/// `NODE_EXTRA_CA_CERTS` when given; returns its exit success and report.
async fn js_sdk_over_wss(
    port: u16,
    token: &str,
    channel: &str,
    ca_pem: Option<&Path>,
    timeout_ms: u64,
) -> (bool, serde_json::Value, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join(".tools/node/node_modules");
    assert!(
        modules.join("centrifuge/package.json").exists()
            && modules.join("ws/package.json").exists(),
        "{} lacks centrifuge or ws: run scripts/install-tools.sh to install the client SDKs",
        modules.display()
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(root.join("tests/sdk/centrifuge_js_wss.mjs"))
        .env("HERALD_NODE_MODULES", &modules)
        .env(
            "HERALD_WSS",
            format!("wss://localhost:{port}/connection/websocket"),
        )
        .env("HERALD_TOKEN", token)
        .env("HERALD_CHANNEL", channel)
        .env("HERALD_TIMEOUT_MS", timeout_ms.to_string())
        .env_remove("NODE_EXTRA_CA_CERTS")
        .env_remove("NODE_TLS_REJECT_UNAUTHORIZED")
        .kill_on_drop(true);
    if let Some(ca) = ca_pem {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the SDK script finishes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        report,
        format!("--- stdout\n{stdout}\n--- stderr\n{stderr}"),
    )
}

/// The official JavaScript SDK connects over `wss://` to Herald serving a
/// certificate of a test CA that Node trusts only through
/// `NODE_EXTRA_CA_CERTS`, subscribes, publishes and receives its own
/// publication; without the CA it cannot connect.
#[tokio::test]
async fn javascript_sdk_over_wss_trusting_a_test_ca() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Herald SDK test CA");
    ca.issue(dir.path());
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.issuer.pem()).unwrap();
    let mut config = test_config(&nats, dir.path().join("data"));
    config.tls = Some(TlsFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        reload_interval: Duration::from_secs(60),
    });
    let h = TestHerald::start(config).await;
    // The built-in `dm` namespace lets its users publish from clients.
    let channel = "dm:#alice,bob";
    let token = h.token("alice");

    let (ok, report, output) =
        js_sdk_over_wss(h.addr.port(), &token, channel, Some(&ca_pem), 10_000).await;
    assert!(ok && report["ok"] == true, "SDK over wss failed: {output}");
    assert_eq!(
        report["received"],
        serde_json::json!({"over": "wss", "n": 1}),
        "{output}"
    );
    assert!(report["client"].is_string(), "{output}");
    println!("JavaScript SDK over wss: {report}");

    // The same SDK without the test CA is refused by its own TLS check.
    let (ok, report, output) = js_sdk_over_wss(h.addr.port(), &token, channel, None, 3_000).await;
    assert!(
        !ok && report["ok"] == false,
        "connected without trusting the CA: {output}"
    );
    println!("JavaScript SDK over wss without the CA: {report}");
}
