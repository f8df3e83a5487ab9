//! The demo chat's and the admin console's HTTP side, over real sockets
//! (the pages themselves run in a browser in tests/browser.rs): both off by
//! default, the demo token endpoint, where the console is served, its login,
//! session cookie, authorization and CSRF rule.

mod common;

use std::time::Duration;

use common::TestNats;
use common::node::{SECRET, TestHerald, test_config};
use herald::auth::Verifier;
use herald::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "web-test-admin-password";

async fn start(
    edit: impl FnOnce(&mut herald::config::Config),
) -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    edit(&mut config);
    let herald = TestHerald::start(config).await;
    (nats, dir, herald)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test]
async fn demo_and_admin_are_off_by_default() {
    let (_n, _d, h) = start(|_| {}).await;
    let c = client();
    for path in [
        "/demo",
        "/demo/app.js",
        "/admin",
        "/admin/app.js",
        "/admin/api/overview",
    ] {
        let r = c.get(h.url(path)).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let r = c
        .post(h.url("/demo/token"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "no token endpoint without demo"
    );
}

#[tokio::test]
async fn the_demo_token_endpoint_mints_short_tokens_and_joins_the_rooms() {
    let (_n, _d, h) = start(|c| c.demo = true).await;
    let c = client();
    let page = c.get(h.url("/demo")).send().await.expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let sdk = c
        .get(h.url("/demo/centrifuge.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(sdk.text().await.expect("body"), herald::web::CENTRIFUGE_JS);

    for bad in [
        json!({"user": ""}),
        json!({"user": "Alice"}),
        json!({"user": "a,b"}),
        json!({}),
    ] {
        let r = c
            .post(h.url("/demo/token"))
            .json(&bad)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], 400);
    }

    let r = c
        .post(h.url("/demo/token"))
        .json(&json!({"user": "alice"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let claims = Verifier::new(SECRET)
        .connect(body["token"].as_str().expect("token"))
        .expect("a valid connection token");
    assert_eq!(claims.sub, "alice");
    let ttl = claims.exp.expect("exp") as i64 - now_secs() as i64;
    assert!((590..=600).contains(&ttl), "a short-lived token: {ttl} s");
    for room in herald::web::demo::ROOMS {
        let members = h.api("members", json!({"channel": room})).await;
        assert_eq!(
            members["result"]["members"][0]["user"], "alice",
            "{room}: {members}"
        );
    }
}

#[tokio::test]
async fn the_admin_console_is_on_the_internal_listener_when_there_is_one() {
    let (_n, _d, h) = start(|c| {
        c.admin_password = Some(Secret::new(PASSWORD));
        c.internal_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let internal = h.running.as_ref().unwrap().internal_addr.expect("internal");
    let c = client();
    let public = c.get(h.url("/admin")).send().await.expect("get");
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let inside = c
        .get(format!("http://{internal}/admin"))
        .send()
        .await
        .expect("get");
    assert_eq!(inside.status(), StatusCode::OK);
}

#[tokio::test]
async fn admin_login_session_and_csrf() {
    let (_n, _d, h) = start(|c| {
        c.admin_password = Some(Secret::new(PASSWORD));
        c.api_key_failures_per_minute = 3;
        // The console works without a server API key.
        c.api_key = None;
    })
    .await;
    let c = client();

    // Nothing without a session.
    for path in [
        "/admin/api/session",
        "/admin/api/overview",
        "/admin/api/metrics",
    ] {
        let r = c.get(h.url(path)).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = c
        .post(h.url("/admin/api/call/info"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A wrong password: 401 with a JSON body, no cookie.
    let r = c
        .post(h.url("/admin/login"))
        .json(&json!({"password": "wrong"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["message"], "wrong password");

    // The right one: an HttpOnly, SameSite=Strict cookie limited to /admin.
    let r = c
        .post(h.url("/admin/login"))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "no Secure without TLS: {set}");
    let csrf = r.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let cookie = set.split(';').next().unwrap().to_string();

    let session: Value = c
        .get(h.url("/admin/api/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["csrf"], csrf);

    let overview: Value = c
        .get(h.url("/admin/api/overview"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["nats"]["state"], "connected", "{overview}");
    assert_eq!(overview["store"]["ok"], true, "{overview}");
    assert_eq!(overview["node"]["version"], env!("CARGO_PKG_VERSION"));
    common::eventually(
        "the writer holds every partition",
        Duration::from_secs(10),
        || {
            let (c, cookie) = (c.clone(), cookie.clone());
            let url = h.url("/admin/api/overview");
            async move {
                let o: Value = c
                    .get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (o["writers"]["leases"].as_array()?.len() == 4
                    && o["ingest"]["consumers"].as_array()?.len() == 4)
                    .then_some(())
            }
        },
    )
    .await;
    let metrics = c
        .get(h.url("/admin/api/metrics"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("herald_edge_connections"));

    let publish = json!({"channel": "news", "data": {"text": "from admin"}});
    // Cookie without the CSRF header, and with a wrong one: 403.
    for header in [None, Some("wrong")] {
        let mut req = c
            .post(h.url("/admin/api/call/publish"))
            .header("cookie", &cookie)
            .json(&publish);
        if let Some(v) = header {
            req = req.header("x-herald-csrf", v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{header:?}");
    }
    // The CSRF header without the cookie: 401.
    let r = c
        .post(h.url("/admin/api/call/publish"))
        .header("x-herald-csrf", &csrf)
        .json(&publish)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A cookie signed by someone else: 401.
    let forged = format!(
        "herald_admin={}",
        herald::auth::mint(SECRET, "admin", None, Duration::from_secs(60))
    );
    let r = c
        .get(h.url("/admin/api/session"))
        .header("cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Both: the server API's answer.
    let r: Value = c
        .post(h.url("/admin/api/call/publish"))
        .header("cookie", &cookie)
        .header("x-herald-csrf", &csrf)
        .json(&publish)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"]["offset"], 1, "{r}");
    let r = c
        .post(h.url("/admin/api/call/no_such_method"))
        .header("cookie", &cookie)
        .header("x-herald-csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Wrong passwords spend the IP's budget (3 per minute here): 1 spent above.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = c
            .post(h.url("/admin/login"))
            .json(&json!({"password": "wrong"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429]);
    let r = c
        .post(h.url("/admin/login"))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right one, until it refills"
    );
    assert!(r.headers().contains_key("retry-after"));

    // Logging out needs the CSRF header too, and clears the cookie.
    let r = c
        .post(h.url("/admin/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .post(h.url("/admin/logout"))
        .header("cookie", &cookie)
        .header("x-herald-csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The pages, the SDK and its license stay small in the binary.
#[test]
fn the_embedded_assets_stay_small() {
    let bytes = herald::web::embedded_bytes();
    println!("embedded web assets: {bytes} bytes");
    assert!(bytes < 160 * 1024, "{bytes} bytes of web assets");
}
