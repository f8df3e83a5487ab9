//! The connector of Herald's outbound HTTP clients (proxies to the
//! application backend, event webhooks, push providers): plain `http://` or
//! `https://` with rustls, trusting the system's roots plus the certificates
//! of an optional PEM CA file (a private backend, tests).
//!
//! Knows TLS and connection setup only: who calls which URL, pooling and
//! timeouts belong to the callers.

use std::path::Path;
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

/// The client TLS configuration: the system's roots and `ca_file`'s
/// certificates (a file without one is an error).
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls::pki_types::CertificateDer<'static> =
                cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificate", path.display()));
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// An HTTP/1.1 connector for `http://` and `https://` URLs (TCP_NODELAY).
/// A CA file that can no longer be read (it was checked when the
/// configuration loaded) is logged, and the system's roots alone are used.
pub fn connector(ca_file: Option<&Path>) -> HttpsConnector<HttpConnector> {
    let tls = tls_config(ca_file).unwrap_or_else(|e| {
        tracing::error!(error = %e, "CA file unusable: trusting the system's roots only");
        tls_config(None).expect("a TLS configuration of the system's roots")
    });
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
