//! Herald in the browser: the demo chat ([`demo`], `herald serve --demo`) and
//! the admin console ([`admin`], with `admin_password`). Both are plain
//! HTML, CSS and JavaScript without a build step, embedded in the binary
//! (`assets/`), and talk to Herald only through what any client or backend
//! has: the demo through the unmodified centrifuge-js browser bundle
//! (`assets/vendor/`, npm `centrifuge`, pinned in scripts/install-tools.sh
//! and checked equal to the installed package by tests/browser.rs), the
//! console through the server API's methods ([`crate::api::Caller`]) and a
//! few read-only admin endpoints.
//!
//! Owns the routes under `/demo` and `/admin`, the demo's token endpoint and
//! the console's login session. Knows nothing of sessions, the store or
//! subjects beyond what `api`, `edge` and `bus::subjects` expose.

pub mod admin;
pub mod demo;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The centrifuge-js browser bundle as published in the npm package, and
/// the version it was taken from.
pub const CENTRIFUGE_JS: &str = include_str!("assets/vendor/centrifuge.js");
pub const CENTRIFUGE_JS_VERSION: &str = "5.8.0";
const CENTRIFUGE_JS_LICENSE: &str = include_str!("assets/vendor/centrifuge.LICENSE");

/// The bytes of every embedded file (the demo's include the SDK and its
/// license), for the README's figure and a test that keeps it small.
pub fn embedded_bytes() -> usize {
    demo::ASSETS
        .iter()
        .chain(admin::ASSETS)
        .map(|a| a.1.len())
        .sum()
}

/// Served with each page: nothing but this origin may be loaded or framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// An embedded file by its name: (name, bytes).
type Asset = (&'static str, &'static str);

/// The response for `name` among `assets`, or 404.
fn asset(assets: &[Asset], name: &str) -> Response {
    let Some((name, body)) = assets.iter().find(|a| a.0 == name) else {
        return not_found();
    };
    let content_type = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let mut r = (StatusCode::OK, *body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(h);
    r
}

/// Headers every web response carries.
fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
}

/// A JSON error body `{"error": {"code", "message"}}` with `status`.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": status.as_u16(), "message": message}});
    let mut r = (status, axum::Json(body)).into_response();
    secure_headers(r.headers_mut());
    r
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}
