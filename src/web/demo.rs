//! The demo chat (`demo = true`, `herald serve --demo`; never on by
//! default): `GET /demo` and its files, and `POST /demo/token`, which mints
//! a short-lived connection token ([`TOKEN_TTL`]) for whatever name it is
//! given — anyone who reaches it is whoever they say — and makes that user a
//! member of the demo rooms ([`ROOMS`], the `room` namespace
//! [`add_rooms`] sets up unless configured). The page uses the unmodified
//! centrifuge-js bundle and the `herald.*` conversation RPCs.
//!
//! Owns the demo's routes and the `room` namespace default; knows nothing of
//! what the page does with the token.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::Asset;
use crate::api::Caller;
use crate::config::{ChannelsConfig, NamespaceOptions, Secret};

/// The demo's rooms; every name that gets a token becomes a member.
pub const ROOMS: &[&str] = &["room:lobby", "room:random"];
/// The namespace of [`ROOMS`].
pub const ROOM_NAMESPACE: &str = "room";
/// Lifetime of a demo token; the page fetches a new one through the SDK's
/// `getToken` before it ends.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);
/// Longest demo name; names are `[a-z0-9_-]` so they fit `dm:#a,b`.
pub const MAX_NAME_LEN: usize = 32;

pub(super) const ASSETS: &[Asset] = &[
    ("index.html", include_str!("assets/demo/index.html")),
    ("app.js", include_str!("assets/demo/app.js")),
    ("style.css", include_str!("assets/demo/style.css")),
    ("centrifuge.js", super::CENTRIFUGE_JS),
    ("centrifuge.LICENSE", super::CENTRIFUGE_JS_LICENSE),
];

/// The `room` namespace of the demo, unless the configuration has one:
/// clients publish, members only (so receipts and unread counts cover every
/// member), presence with join/leave pushed to everyone.
pub fn add_rooms(channels: &mut ChannelsConfig) {
    let options = NamespaceOptions {
        history: true,
        client_publish: true,
        presence: true,
        join_leave: true,
        force_push_join_leave: true,
        membership: true,
        receipts: true,
        ..channels.default.clone()
    };
    channels
        .namespaces
        .entry(ROOM_NAMESPACE.to_string())
        .or_insert(options);
}

struct Demo {
    secret: Secret,
    api: Caller,
}

/// `/demo`, `/demo/<file>`, `POST /demo/token`.
pub fn router(secret: Secret, api: Caller) -> Router {
    Router::new()
        .route(
            "/demo",
            get(|| async { super::asset(ASSETS, "index.html") }),
        )
        .route(
            "/demo/",
            get(|| async { super::asset(ASSETS, "index.html") }),
        )
        .route("/demo/token", post(token))
        .route(
            "/demo/{file}",
            get(|Path(file): Path<String>| async move { super::asset(ASSETS, &file) }),
        )
        .with_state(std::sync::Arc::new(Demo { secret, api }))
}

#[derive(Deserialize)]
struct TokenRequest {
    user: String,
}

/// Is `name` a demo user name?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

async fn token(State(demo): State<std::sync::Arc<Demo>>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<TokenRequest>(&body) else {
        return super::error(StatusCode::BAD_REQUEST, "expected {\"user\": \"name\"}");
    };
    if !valid_name(&req.user) {
        return super::error(
            StatusCode::BAD_REQUEST,
            "a name is 1-32 characters of a-z, 0-9, _ and -",
        );
    }
    // The rooms the user was not a member of before: the page marks them
    // read, so a newcomer does not start with the whole backlog unread.
    let mut joined = Vec::new();
    for room in ROOMS {
        let body = serde_json::json!({"channel": room, "users": [&req.user]}).to_string();
        let (status, reply) = demo.api.call("add_members", body.as_bytes()).await;
        let reply = serde_json::from_slice::<serde_json::Value>(&reply).unwrap_or_default();
        let Some(added) = reply["result"]["users"]
            .as_array()
            .filter(|_| status == StatusCode::OK)
        else {
            tracing::warn!(room, "demo: adding a member failed");
            return super::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot join the demo rooms",
            );
        };
        if !added.is_empty() {
            joined.push(*room);
        }
    }
    let token = crate::auth::mint(demo.secret.expose(), &req.user, None, TOKEN_TTL);
    let mut r = axum::Json(serde_json::json!({
        "token": token,
        "user": req.user,
        "rooms": ROOMS,
        "joined": joined,
        "expires_in": TOKEN_TTL.as_secs(),
    }))
    .into_response();
    super::secure_headers(r.headers_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("alice"));
        assert!(valid_name("bob_2-x"));
        assert!(!valid_name(""));
        assert!(!valid_name("Alice"));
        assert!(!valid_name("a,b"));
        assert!(!valid_name("#a"));
        assert!(!valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
    }
}
