//! The server HTTP API, black-box over real HTTP against Herald started in
//! process with a real nats-server.
//!
//! Transport rules, validation, ephemeral publishes and `info` need no store:
//! they run Herald as `edge` (the role that serves the API). Publishes into
//! history channels, idempotency, history reads and the `cent` SDK run the
//! whole process (`serve`: edge + writer + sync + embedded store).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestNats;
use futures::StreamExt;
use herald::bus::subjects;
use herald::config::{Config, NamespaceOptions, Secret};
use herald::roles::{self, Role, Running};
use serde_json::{Value, json};

const KEY: &str = "test-api-key";

struct Herald {
    running: Running,
    api: String,
    http: reqwest::Client,
    nats: TestNats,
    _data: tempfile::TempDir,
}

/// Namespaces: `chat` keeps history, `live` does not; the default namespace
/// keeps history unless `default_history` is false.
async fn start_with(role: Role, default_history: bool) -> Herald {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.data_dir = data.path().to_path_buf();
    config.nats.url = nats.url().to_string();
    config.nats.autostart = false;
    config.api_key = Some(Secret::new(KEY));
    config.token_hmac_secret = Some(Secret::new("test-token-secret-0123456789abcdef"));
    config.client.publish_timeout = Duration::from_secs(5);
    config.channels.default.history = default_history;
    let with_history = NamespaceOptions {
        history: true,
        ..config.channels.default.clone()
    };
    let without_history = NamespaceOptions {
        history: false,
        ..with_history.clone()
    };
    config
        .channels
        .namespaces
        .insert("chat".into(), with_history);
    config
        .channels
        .namespaces
        .insert("live".into(), without_history);
    let running = roles::start(role, config).await.expect("herald starts");
    Herald {
        api: format!("http://{}/api", running.addr),
        running,
        http: reqwest::Client::new(),
        nats,
        _data: data,
    }
}

async fn start(role: Role) -> Herald {
    start_with(role, true).await
}

impl Herald {
    /// POSTs `body` (raw text) to `/api/<method>` with `headers`; returns the
    /// status and the body, which must be JSON.
    async fn post_raw(&self, method: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/{method}", self.api))
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("http body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text:?}"));
        (status, value)
    }

    /// A keyed call that must answer HTTP 200; returns the body.
    async fn call(&self, method: &str, body: Value) -> Value {
        let (status, value) = self
            .post_raw(method, &[("X-API-Key", KEY)], &body.to_string())
            .await;
        assert_eq!(status, 200, "{method}: {value}");
        value
    }

    /// A call whose body must be `{"result": …}`; returns the result.
    async fn ok(&self, method: &str, body: Value) -> Value {
        let value = self.call(method, body).await;
        assert!(value.get("error").is_none(), "{method}: {value}");
        value["result"].clone()
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// Subscribes to a channel's NATS subject and returns once the server has the
/// subscription: a probe published on it came back (a client `flush` only
/// proves the SUB left this process). The probe is consumed.
async fn subscribe_channel(nats: &async_nats::Client, channel: &str) -> async_nats::Subscriber {
    let subject = subjects::channel_subject(channel);
    let mut sub = nats.subscribe(subject.clone()).await.expect("subscribe");
    nats.publish(subject, "probe".into()).await.expect("probe");
    let probe = next_message(&mut sub).await;
    assert_eq!(&probe.payload[..], b"probe");
    sub
}

async fn next_message(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5s")
        .expect("subscription open")
}

fn error_code(value: &Value) -> u64 {
    value["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error object: {value}"))
}

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .expect("publications array")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect()
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_with_a_json_error() {
    let h = start(Role::Edge).await;
    let cases: [&[(&str, &str)]; 5] = [
        &[],
        &[("X-API-Key", "wrong")],
        &[("Authorization", "apikey wrong")],
        &[("Authorization", &*format!("Bearer {KEY}"))],
        &[("X-API-Key", "")],
    ];
    for headers in cases {
        let (status, body) = h.post_raw("info", headers, "{}").await;
        assert_eq!(status, 401, "{headers:?}");
        assert_eq!(error_code(&body), 101, "{headers:?}");
    }
    // The key is checked before the method is looked up.
    let (status, _) = h.post_raw("nosuchmethod", &[], "{}").await;
    assert_eq!(status, 401);
    // Both header styles carry the right key.
    let (status, body) = h.post_raw("info", &[("X-API-Key", KEY)], "{}").await;
    assert_eq!(
        (status, body["result"]["nodes"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (status, body) = h
        .post_raw("info", &[("Authorization", &format!("apikey {KEY}"))], "{}")
        .await;
    assert_eq!(
        (status, body["result"]["nodes"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    h.stop().await;
}

#[tokio::test]
async fn unknown_method_is_404_and_malformed_json_is_400() {
    let h = start(Role::Edge).await;
    let key = [("X-API-Key", KEY)];
    let (status, body) = h.post_raw("presence_of_mind", &key, "{}").await;
    assert_eq!((status, error_code(&body)), (404, 104));
    for bad in [
        r#"{"channel": "live:x", "data": "#,
        "not json",
        r#"{"channel": 5, "data": {}}"#,
        "[1,2]",
    ] {
        let (status, body) = h.post_raw("publish", &key, bad).await;
        assert_eq!((status, error_code(&body)), (400, 107), "{bad}");
    }
    let (status, body) = h
        .post_raw("history", &key, r#"{"channel": "chat:x", "limit": "ten"}"#)
        .await;
    assert_eq!((status, error_code(&body)), (400, 107));
    // An empty body is `{}`: well-formed, so a method error (no channel), not a 400.
    let (status, body) = h.post_raw("publish", &key, "").await;
    assert_eq!((status, error_code(&body)), (200, 107));
    h.stop().await;
}

#[tokio::test]
async fn ephemeral_publish_reaches_nats_subscribers_with_raw_data() {
    let h = start(Role::Edge).await;
    let nats = h.nats.client().await;
    let mut sub = subscribe_channel(&nats, "live:room 1").await;

    // Spacing and number formatting show the data is passed on unparsed.
    let body = r#"{"channel": "live:room 1", "data": {"text": "hi",  "n": 1.50}}"#;
    let (status, reply) = h.post_raw("publish", &[("X-API-Key", KEY)], body).await;
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"result": {}}));

    let msg = next_message(&mut sub).await;
    let payload = std::str::from_utf8(&msg.payload).expect("utf-8");
    assert!(
        payload.contains(r#"{"text": "hi",  "n": 1.50}"#),
        "{payload}"
    );
    let publication: Value = serde_json::from_str(payload).expect("publication JSON");
    assert_eq!(publication["data"]["text"], "hi");
    assert!(publication.get("offset").is_none(), "{payload}");
    h.stop().await;
}

#[tokio::test]
async fn the_api_may_publish_into_personal_channels() {
    let h = start_with(Role::Edge, false).await;
    let nats = h.nats.client().await;
    let mut sub = subscribe_channel(&nats, "#alice").await;
    let result = h
        .ok("publish", json!({"channel": "#alice", "data": {"note": 1}}))
        .await;
    assert_eq!(result, json!({}));
    let msg = next_message(&mut sub).await;
    let publication: Value = serde_json::from_slice(&msg.payload).expect("publication JSON");
    assert_eq!(publication["data"], json!({"note": 1}));
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_are_method_errors_with_http_200() {
    let h = start(Role::Edge).await;
    let cases = [
        ("publish", json!({"channel": "", "data": {}}), 107),
        (
            "publish",
            json!({"channel": "x".repeat(256), "data": {}}),
            107,
        ),
        ("publish", json!({"channel": "live:a\nb", "data": {}}), 107),
        ("publish", json!({"channel": "nope:x", "data": {}}), 102),
        ("publish", json!({"channel": "live:x"}), 107),
        (
            "publish",
            json!({"channel": "live:x", "data": {}, "idempotency_key": "a\r\nb"}),
            107,
        ),
        ("broadcast", json!({"channels": [], "data": {}}), 107),
        ("broadcast", json!({"channels": ["live:x"]}), 107),
        ("history", json!({"channel": "live:x", "limit": 10}), 108),
        ("history", json!({"channel": "nope:x", "limit": 10}), 102),
        ("history", json!({"channel": ""}), 107),
    ];
    for (method, body, code) in cases {
        let reply = h.call(method, body.clone()).await;
        assert_eq!(error_code(&reply), code, "{method} {body}: {reply}");
        assert!(reply.get("result").is_none(), "{reply}");
    }
    h.stop().await;
}

#[tokio::test]
async fn broadcast_answers_each_channel_in_order() {
    let h = start(Role::Edge).await;
    let nats = h.nats.client().await;
    let mut a = subscribe_channel(&nats, "live:a").await;
    let mut b = subscribe_channel(&nats, "live:b").await;
    let result = h
        .ok(
            "broadcast",
            json!({"channels": ["live:a", "nope:x", "", "live:b"], "data": {"v": 7}}),
        )
        .await;
    assert_eq!(
        result,
        json!({"responses": [
            {"result": {}},
            {"error": {"code": 102, "message": "unknown channel"}},
            {"error": {"code": 107, "message": "bad request"}},
            {"result": {}},
        ]})
    );
    for sub in [&mut a, &mut b] {
        let msg = next_message(sub).await;
        let publication: Value = serde_json::from_slice(&msg.payload).expect("publication JSON");
        assert_eq!(publication["data"], json!({"v": 7}));
    }
    h.stop().await;
}

#[tokio::test]
async fn info_returns_this_node_and_requests_are_counted() {
    let h = start(Role::Edge).await;
    let result = h.ok("info", json!({})).await;
    let nodes = result["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{result}");
    let node = &nodes[0];
    assert!(!node["uid"].as_str().expect("uid").is_empty());
    assert!(!node["name"].as_str().expect("name").is_empty());
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    for field in [
        "num_clients",
        "num_users",
        "num_channels",
        "num_subs",
        "uptime",
    ] {
        assert!(node[field].is_u64(), "{field}: {node}");
    }
    // An empty body is accepted as `{}`.
    let (status, _) = h.post_raw("info", &[("X-API-Key", KEY)], "").await;
    assert_eq!(status, 200);

    let metrics = h
        .http
        .get(format!("http://{}/metrics", h.running.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_api_requests_total")
                && l.contains(r#"method="info""#)
                && l.contains(r#"result="ok""#)),
        "{metrics}"
    );
    h.stop().await;
}

// ---- The whole process: these need the writer, sync and the embedded store.

#[tokio::test]
async fn history_publishes_get_dense_offsets_in_one_epoch() {
    let h = start(Role::Serve).await;
    let mut epochs = Vec::new();
    for expected in 1..=3u64 {
        let result = h
            .ok(
                "publish",
                json!({"channel": "chat:dense", "data": {"n": expected}}),
            )
            .await;
        assert_eq!(result["offset"], expected, "{result}");
        epochs.push(result["epoch"].as_str().expect("epoch").to_string());
    }
    assert!(!epochs[0].is_empty());
    assert!(epochs.iter().all(|e| *e == epochs[0]), "{epochs:?}");
    // The default namespace keeps history too.
    let result = h
        .ok("publish", json!({"channel": "plain", "data": 1}))
        .await;
    assert_eq!(result["offset"], 1, "{result}");
    h.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_offset_and_stores_once() {
    let h = start(Role::Serve).await;
    let first = h
        .ok(
            "publish",
            json!({"channel": "chat:idem", "data": {"n": 1}, "idempotency_key": "k1"}),
        )
        .await;
    let again = h
        .ok(
            "publish",
            json!({"channel": "chat:idem", "data": {"n": 1}, "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(first, again);
    assert_eq!(first["offset"], 1);
    // The key is per channel.
    let other = h
        .ok(
            "publish",
            json!({"channel": "chat:idem2", "data": {"n": 1}, "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(other["offset"], 1);
    let next = h
        .ok("publish", json!({"channel": "chat:idem", "data": {"n": 2}}))
        .await;
    assert_eq!(next["offset"], 2);
    let history = h
        .ok("history", json!({"channel": "chat:idem", "limit": 10}))
        .await;
    assert_eq!(offsets(&history["publications"]), vec![1, 2], "{history}");
    assert_eq!(history["offset"], 2);
    h.stop().await;
}

#[tokio::test]
async fn broadcast_to_three_history_channels() {
    let h = start(Role::Serve).await;
    h.ok("publish", json!({"channel": "chat:b2", "data": "earlier"}))
        .await;
    let result = h
        .ok("broadcast", json!({"channels": ["chat:b1", "chat:b2", "chat:b3"], "data": {"all": true}, "idempotency_key": "bk"}))
        .await;
    let responses = result["responses"].as_array().expect("responses");
    let got: Vec<u64> = responses
        .iter()
        .map(|r| {
            r["result"]["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("{r}"))
        })
        .collect();
    assert_eq!(got, vec![1, 2, 1]);
    for channel in ["chat:b1", "chat:b2", "chat:b3"] {
        let history = h
            .ok(
                "history",
                json!({"channel": channel, "limit": 1, "reverse": true}),
            )
            .await;
        assert_eq!(
            history["publications"][0]["data"],
            json!({"all": true}),
            "{channel}: {history}"
        );
    }
    // Retrying the broadcast with its key publishes nothing new.
    let again = h
        .ok("broadcast", json!({"channels": ["chat:b1", "chat:b2", "chat:b3"], "data": {"all": true}, "idempotency_key": "bk"}))
        .await;
    assert_eq!(again, result);
    h.stop().await;
}

#[tokio::test]
async fn history_pages_with_limit_since_and_reverse() {
    let h = start(Role::Serve).await;
    let mut epoch = String::new();
    for n in 1..=5 {
        let r = h
            .ok(
                "publish",
                json!({"channel": "chat:pages", "data": {"n": n}}),
            )
            .await;
        epoch = r["epoch"].as_str().expect("epoch").to_string();
    }
    let history = |body: Value| h.ok("history", body);

    let r = history(json!({"channel": "chat:pages"})).await;
    assert_eq!(
        (offsets(&r["publications"]), &r["offset"], &r["epoch"]),
        (vec![], &json!(5), &json!(epoch))
    );
    let r = history(json!({"channel": "chat:pages", "limit": 2})).await;
    assert_eq!(offsets(&r["publications"]), vec![1, 2]);
    assert_eq!(r["publications"][0]["data"], json!({"n": 1}));
    let r = history(json!({"channel": "chat:pages", "limit": 2, "reverse": true})).await;
    assert_eq!(offsets(&r["publications"]), vec![5, 4]);
    let r = history(
        json!({"channel": "chat:pages", "limit": 10, "since": {"offset": 2, "epoch": epoch}}),
    )
    .await;
    assert_eq!(offsets(&r["publications"]), vec![3, 4, 5]);
    let r = history(json!({"channel": "chat:pages", "limit": 2, "reverse": true, "since": {"offset": 4, "epoch": epoch}})).await;
    assert_eq!(offsets(&r["publications"]), vec![3, 2]);
    let r = history(json!({"channel": "chat:pages", "limit": -1})).await;
    assert_eq!(offsets(&r["publications"]), vec![1, 2, 3, 4, 5]);

    let reply = h
        .call(
            "history",
            json!({"channel": "chat:pages", "limit": 10, "since": {"offset": 2, "epoch": "other"}}),
        )
        .await;
    assert_eq!(error_code(&reply), 112, "{reply}");
    // A channel nobody published into: empty, head 0.
    let r = history(json!({"channel": "chat:empty", "limit": 10})).await;
    assert_eq!(
        (offsets(&r["publications"]), &r["offset"]),
        (vec![], &json!(0))
    );
    h.stop().await;
}

/// The PyPI `cent` SDK (5.x) against Herald: tests/sdk/cent_publish.py.
#[tokio::test]
async fn cent_python_sdk_publishes_and_reads_history() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".tools/py");
    assert!(
        py.join("cent").is_dir(),
        "the Python `cent` SDK is not in {}: run scripts/install-tools.sh",
        py.display()
    );
    let h = start(Role::Serve).await;
    let output = tokio::process::Command::new("python3")
        .arg(root.join("tests/sdk/cent_publish.py"))
        .args([&h.api, KEY, "chat:cent"])
        .env("PYTHONPATH", &py)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "cent script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let step = |name: &str| -> Vec<&Value> { steps.iter().filter(|s| s["step"] == name).collect() };

    assert_eq!(step("info")[0]["nodes"], 1, "{stdout}");
    assert_eq!(step("wrong_key")[0]["unauthorized"], true, "{stdout}");
    assert_eq!(step("unknown_namespace")[0]["code"], 102, "{stdout}");
    let publishes = step("publish");
    assert_eq!(publishes.len(), 3, "{stdout}");
    let offsets: Vec<&Value> = publishes.iter().map(|p| &p["offset"]).collect();
    assert_eq!(
        offsets,
        [&json!(1), &json!(2), &json!(2)],
        "a retried key answers its offset: {stdout}"
    );
    let epoch = &publishes[0]["epoch"];
    assert!(epoch.as_str().is_some_and(|e| !e.is_empty()), "{stdout}");
    let history = step("history")[0];
    assert_eq!(&history["epoch"], epoch, "{stdout}");
    assert_eq!(history["offset"], 2, "{stdout}");
    assert_eq!(
        history["publications"],
        json!([{"offset": 1, "data": {"n": 1}}, {"offset": 2, "data": {"n": 2}}]),
        "{stdout}"
    );
    h.stop().await;
}
