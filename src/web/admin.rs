//! The admin console (`admin_password` set; otherwise not mounted, 404): at
//! `/admin` on `internal_listen` when one is configured, else on `listen`.
//!
//! Login (`POST /admin/login {password}`) sets a session cookie: an HS256
//! token signed with a key drawn at process start (a restart logs everyone
//! out), holding its expiry (`admin_session_ttl`) and an anti-CSRF value;
//! `HttpOnly`, `SameSite=Strict`, `Path=/admin`, `Secure` behind TLS. No
//! session is kept server-side, so nothing grows with logins. Every
//! `/admin/api/…` call needs the cookie (else 401); every mutating one (all
//! `POST`s) also the header `X-Herald-CSRF` equal to the session's value
//! (else 403), which a page of another site cannot read or set. Wrong
//! passwords spend the client IP's failed-key budget
//! (`api_key_failures_per_minute`, as the server API): past it 429.
//!
//! Endpoints: `GET /admin/api/session` (the CSRF value), `GET
//! /admin/api/overview` (this node, NATS, the writers' members and partition
//! leases, the ingest stream and each partition's consumer backlog), `GET
//! /admin/api/metrics` (this node's Prometheus text, for the charts), `GET
//! /admin/api/local?channel=&user=` (subscriptions and connections on this
//! node), `POST /admin/api/call/<method>` (any server API method, as
//! `crate::api` answers it), `POST /admin/logout`.
//!
//! Knows nothing of how the methods work: it authorizes and forwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::Asset;
use crate::api::Caller;
use crate::api::limit::FailureLimit;
use crate::bus::subjects;
use crate::config::Secret;
use crate::edge::Edge;

/// The session cookie's name.
pub const COOKIE: &str = "herald_admin";
/// The header that carries the session's anti-CSRF value on `POST`s.
pub const CSRF_HEADER: &str = "x-herald-csrf";
/// Longest request body the console sends (a publish's data).
const MAX_BODY_BYTES: usize = crate::api::MAX_BODY_BYTES;
/// Longest a NATS look-up of the overview may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) const ASSETS: &[Asset] = &[
    ("index.html", include_str!("assets/admin/index.html")),
    ("app.js", include_str!("assets/admin/app.js")),
    ("style.css", include_str!("assets/admin/style.css")),
];

/// What the console needs from the process.
pub struct AdminSettings {
    pub password: Secret,
    pub session_ttl: Duration,
    /// The listener serving the console has TLS: the cookie is `Secure`.
    pub secure: bool,
    pub api: Caller,
    pub edge: Arc<Edge>,
    pub nats: async_nats::Client,
    pub partitions: u32,
    pub role: &'static str,
    /// This node's Prometheus text (`crate::metrics::Metrics::render`).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    pub failures: FailureLimit,
}

struct Admin {
    settings: AdminSettings,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    csrf: String,
}

/// `/admin`, its files and its API.
pub fn router(settings: AdminSettings) -> Router {
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let admin = Arc::new(Admin {
        settings,
        encoding: EncodingKey::from_secret(key.as_bytes()),
        decoding: DecodingKey::from_secret(key.as_bytes()),
    });
    Router::new()
        .route(
            "/admin",
            get(|| async { super::asset(ASSETS, "index.html") }),
        )
        .route(
            "/admin/",
            get(|| async { super::asset(ASSETS, "index.html") }),
        )
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/api/session", get(session))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/metrics", get(metrics_text))
        .route("/admin/api/local", get(local))
        .route("/admin/api/call/{method}", post(call))
        .route(
            "/admin/{file}",
            get(|Path(file): Path<String>| async move { super::asset(ASSETS, &file) }),
        )
        .with_state(admin)
}

#[derive(Deserialize)]
struct Login {
    password: String,
}

async fn login(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let failures = &admin.settings.failures;
    if let Some(wait) = failures.blocked(peer.ip()) {
        return too_many(wait);
    }
    let Ok(req) = serde_json::from_slice::<Login>(&body) else {
        return super::error(StatusCode::BAD_REQUEST, "expected {\"password\": \"…\"}");
    };
    let expected = admin.settings.password.expose().as_bytes();
    if !bool::from(req.password.as_bytes().ct_eq(expected)) {
        tracing::warn!(peer = %peer.ip(), "admin login refused");
        if let Some(wait) = failures.failed(peer.ip()) {
            return too_many(wait);
        }
        return super::error(StatusCode::UNAUTHORIZED, "wrong password");
    }
    let ttl = admin.settings.session_ttl;
    let claims = Claims {
        sub: "admin".into(),
        exp: crate::auth::clamp_exp(now_secs().saturating_add(ttl.as_secs())),
        csrf: uuid::Uuid::new_v4().simple().to_string(),
    };
    let Ok(cookie) = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &admin.encoding)
    else {
        return super::error(StatusCode::INTERNAL_SERVER_ERROR, "cannot sign a session");
    };
    tracing::info!(peer = %peer.ip(), "admin logged in");
    let secure = if admin.settings.secure {
        "; Secure"
    } else {
        ""
    };
    let set = format!(
        "{COOKIE}={cookie}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        ttl.as_secs()
    );
    json_with_cookie(serde_json::json!({"csrf": claims.csrf}), &set)
}

async fn logout(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(d) = admin.authorize(&headers, true) {
        return d.into_response();
    }
    json_with_cookie(
        serde_json::json!({}),
        &format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0"),
    )
}

async fn session(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    match admin.authorize(&headers, false) {
        Ok(c) => json(serde_json::json!({"csrf": c.csrf, "expires": c.exp})),
        Err(d) => d.into_response(),
    }
}

async fn metrics_text(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(d) = admin.authorize(&headers, false) {
        return d.into_response();
    }
    let mut r = (admin.settings.metrics)().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    super::secure_headers(r.headers_mut());
    r
}

#[derive(Deserialize)]
struct LocalQuery {
    channel: Option<String>,
    user: Option<String>,
}

async fn local(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Query(q): Query<LocalQuery>,
) -> Response {
    if let Err(d) = admin.authorize(&headers, false) {
        return d.into_response();
    }
    let (subscribers, connections) = admin
        .settings
        .edge
        .local_counts(q.channel.as_deref(), q.user.as_deref());
    json(serde_json::json!({
        "node": admin.settings.api.node().1,
        "subscribers": subscribers,
        "connections": connections,
    }))
}

async fn call(
    State(admin): State<Arc<Admin>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Err(d) = admin.authorize(&headers, true) {
        return d.into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return super::error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    };
    tracing::info!(method = %method, "admin api call");
    let (status, reply) = admin.settings.api.call(&method, &body).await;
    let mut r = (status, reply).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    super::secure_headers(r.headers_mut());
    r
}

async fn overview(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Err(d) = admin.authorize(&headers, false) {
        return d.into_response();
    }
    let s = &admin.settings;
    let (uid, host, uptime) = s.api.node();
    let info = s.nats.server_info();
    let js = async_nats::jetstream::new(s.nats.clone());
    let (writers, ingest, store) = tokio::join!(
        tokio::time::timeout(NATS_TIMEOUT, writers(&js)),
        tokio::time::timeout(NATS_TIMEOUT, ingest(&js, s.partitions)),
        store_probe(&s.api),
    );
    let unanswered =
        |what: &str| serde_json::json!({"error": format!("{what}: no answer in time")});
    json(serde_json::json!({
        "node": {
            "uid": uid,
            "host": host,
            "role": s.role,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": uptime.as_secs(),
            "edge_id": &**s.edge.presence().id(),
            "stats": s.edge.stats(),
        },
        "nats": {
            "state": format!("{:?}", s.nats.connection_state()).to_lowercase(),
            "server_name": info.server_name,
            "version": info.version,
            "jetstream": info.jetstream,
        },
        "writers": writers.unwrap_or_else(|_| unanswered("writers")),
        "ingest": ingest.unwrap_or_else(|_| unanswered("ingest")),
        "store": store,
    }))
}

/// Whether sync answers a history read from the store: the position of a
/// channel nobody uses, through the server API's `history`.
async fn store_probe(api: &Caller) -> serde_json::Value {
    let started = std::time::Instant::now();
    let (_, reply) = api
        .call("history", br#"{"channel":"herald-admin-probe","limit":0}"#)
        .await;
    let ms = started.elapsed().as_millis() as u64;
    match serde_json::from_slice::<serde_json::Value>(&reply) {
        Ok(v) if v.get("result").is_some() => serde_json::json!({"ok": true, "ms": ms}),
        Ok(v) => serde_json::json!({"ok": false, "error": v["error"]["message"]}),
        Err(_) => serde_json::json!({"ok": false, "error": "no reply"}),
    }
}

/// The writers' members and partition leases from their KV bucket.
async fn writers(js: &async_nats::jetstream::Context) -> serde_json::Value {
    let kv = match js.get_key_value(subjects::WRITERS_BUCKET).await {
        Ok(kv) => kv,
        Err(e) => return serde_json::json!({"error": e.to_string()}),
    };
    let mut keys = match kv.keys().await {
        Ok(k) => k,
        Err(e) => return serde_json::json!({"error": e.to_string()}),
    };
    let mut members = Vec::new();
    let mut leases = Vec::new();
    // The bucket holds one key per writer and one per partition.
    while let Some(Ok(key)) = keys.next().await {
        let Ok(Some(value)) = kv.get(&key).await else {
            continue;
        };
        if key.starts_with("member.") {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&value) {
                members.push(v);
            }
        } else if let Some(p) = key.strip_prefix("lease.") {
            leases.push(serde_json::json!({
                "partition": p.parse::<u32>().ok(),
                "holder": String::from_utf8_lossy(&value),
            }));
        }
    }
    leases.sort_by_key(|l| l["partition"].as_u64());
    serde_json::json!({"members": members, "leases": leases})
}

/// The ingest stream's size and each partition consumer's backlog.
async fn ingest(js: &async_nats::jetstream::Context, partitions: u32) -> serde_json::Value {
    let mut stream = match js.get_stream(subjects::INGEST_STREAM).await {
        Ok(s) => s,
        Err(e) => return serde_json::json!({"error": e.to_string()}),
    };
    let state = match stream.info().await {
        Ok(i) => i.state.clone(),
        Err(e) => return serde_json::json!({"error": e.to_string()}),
    };
    let mut consumers = Vec::new();
    for p in 0..partitions {
        let c = match stream.consumer_info(subjects::writer_consumer(p)).await {
            Ok(i) => serde_json::json!({
                "partition": p,
                "pending": i.num_pending,
                "ack_pending": i.num_ack_pending,
                "redelivered": i.num_redelivered,
            }),
            Err(e) => serde_json::json!({"partition": p, "error": e.to_string()}),
        };
        consumers.push(c);
    }
    serde_json::json!({
        "messages": state.messages,
        "bytes": state.bytes,
        "consumers": consumers,
    })
}

impl Admin {
    /// The session of a request with a valid cookie, and with `mutating` the
    /// matching anti-CSRF header.
    fn authorize(&self, headers: &HeaderMap, mutating: bool) -> Result<Claims, Denied> {
        let cookie = session_cookie(headers).ok_or(Denied::NoSession)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(cookie, &self.decoding, &validation)
            .map_err(|_| Denied::NoSession)?
            .claims;
        if mutating {
            let given = headers
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !bool::from(given.ct_eq(claims.csrf.as_bytes())) {
                return Err(Denied::Csrf);
            }
        }
        Ok(claims)
    }
}

/// Why an admin request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    /// No valid session cookie: 401.
    NoSession,
    /// A `POST` without the session's anti-CSRF header: 403.
    Csrf,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Self::NoSession => super::error(StatusCode::UNAUTHORIZED, "log in first"),
            Self::Csrf => super::error(StatusCode::FORBIDDEN, "missing or wrong CSRF header"),
        }
    }
}

/// The value of the session cookie, from any `Cookie` header.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json(value: serde_json::Value) -> Response {
    let mut r = axum::Json(value).into_response();
    super::secure_headers(r.headers_mut());
    r
}

fn json_with_cookie(value: serde_json::Value, cookie: &str) -> Response {
    let mut r = json(value);
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn too_many(wait: Duration) -> Response {
    let mut r = super::error(StatusCode::TOO_MANY_REQUESTS, "too many failed logins");
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_admin=tok.en; b=2"),
        );
        assert_eq!(session_cookie(&h), Some("tok.en"));
        h.insert(header::COOKIE, HeaderValue::from_static("herald_adminx=1"));
        assert_eq!(session_cookie(&h), None);
    }
}
