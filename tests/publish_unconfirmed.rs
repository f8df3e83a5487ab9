//! A publish whose store commit is not confirmed in time (issue 16 §5e),
//! black-box over real HTTP and WebSocket with a real nats-server: Herald runs
//! as `edge` only, so the ingest stream accepts publications and no writer
//! commits them until a `serve` joins.
//!
//! The server API's error names the idempotency key the publication went out
//! with — the generated one when the request had none — and publishing again
//! with it stores the publication once. The client protocol cannot carry a
//! key, so its error says a retry may store a second copy and is not
//! `temporary`.

mod common;

use std::time::Duration;

use common::TestNats;
use common::node::{API_KEY, TestHerald, test_config};
use common::ws::WsClient;
use herald::roles::{self, Role};
use serde_json::{Value, json};

async fn api(addr: std::net::SocketAddr, method: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("http://{addr}/api/{method}"))
        .header("X-API-Key", API_KEY)
        .json(&body)
        .send()
        .await
        .expect("api request")
        .json()
        .await
        .expect("api json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_names_its_key_and_a_retry_with_it_stores_once() {
    let nats = TestNats::start().await;
    let edge_dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(&nats, edge_dir.path().to_path_buf());
    config.client.publish_timeout = Duration::from_secs(1);
    config.channels.default.history = true;
    let edge = roles::start(Role::Edge, config).await.expect("edge starts");

    // Server API, no idempotency key: the error carries the generated one.
    let reply = api(
        edge.addr,
        "publish",
        json!({"channel": "unconfirmed", "data": {"n": 1}}),
    )
    .await;
    let error = &reply["error"];
    assert_eq!(error["code"], 100, "{reply}");
    let key = error["idempotency_key"]
        .as_str()
        .unwrap_or_else(|| panic!("the error names the key: {reply}"))
        .to_string();
    assert!(!key.is_empty(), "{reply}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("may still be stored"), "{message}");
    assert!(message.contains("idempotency_key"), "{message}");

    // A caller's own key comes back as well.
    let reply = api(
        edge.addr,
        "publish",
        json!({"channel": "unconfirmed", "data": {"n": 2}, "idempotency_key": "mine"}),
    )
    .await;
    assert_eq!(reply["error"]["idempotency_key"], "mine", "{reply}");

    // Client protocol: no key to retry with; the error says so and is not
    // temporary (SDKs retry temporary errors).
    let (mut client, _) = WsClient::connect(
        edge.addr,
        &herald::auth::mint(
            common::node::SECRET,
            "alice",
            None,
            Duration::from_secs(3600),
        ),
    )
    .await;
    let reply = client
        .call(
            "publish",
            json!({"channel": "unconfirmed", "data": {"n": 3}}),
        )
        .await;
    let error = &reply["error"];
    assert_eq!(error["code"], 100, "{reply}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("may still be stored"), "{message}");
    assert!(message.contains("second copy"), "{message}");
    assert!(
        error.get("temporary").is_none_or(|t| t == false),
        "not temporary: {reply}"
    );
    client.close().await;

    // A writer joins: it stores what the stream held (1, 2, 3 in order).
    // Publishing again with the returned key finds that copy.
    let serve_dir = tempfile::tempdir().expect("temp dir");
    let mut serve_config = test_config(&nats, serve_dir.path().to_path_buf());
    serve_config.channels.default.history = true;
    let mut serve = TestHerald::start(serve_config).await;
    let retried = api(
        serve.addr,
        "publish",
        json!({"channel": "unconfirmed", "data": {"n": 1}, "idempotency_key": key}),
    )
    .await;
    assert!(retried.get("error").is_none(), "{retried}");
    let offset = retried["result"]["offset"].as_u64().expect("offset");

    let history = api(
        serve.addr,
        "history",
        json!({"channel": "unconfirmed", "limit": 100}),
    )
    .await;
    let publications = history["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("publications: {history}"));
    let ones: Vec<_> = publications
        .iter()
        .filter(|p| p["data"] == json!({"n": 1}))
        .collect();
    assert_eq!(ones.len(), 1, "stored once: {history}");
    assert_eq!(ones[0]["offset"].as_u64(), Some(offset), "{history}");
    assert_eq!(publications.len(), 3, "{history}");

    serve.stop().await;
    edge.stop().await;
}
