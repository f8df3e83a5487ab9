//! The sync role, black-box: its HTTP API over a real socket and its NATS
//! responder against a real nats-server, both reading a real embedded store
//! seeded with `Store::append`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{TestNats, eventually};
use herald::auth::{Verifier, mint};
use herald::bus::subjects;
use herald::config::{ChannelsConfig, NamespaceOptions};
use herald::store::embedded::EmbeddedStore;
use herald::store::{
    ChannelAppend, Direction, ReadRange, SharedStore, Store, StoreOptions, StoredPublication,
};
use herald::sync::client::{SyncClient, SyncClientError};
use herald::sync::wire::SyncReply;
use herald::sync::{SyncService, SyncSettings};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "sync-test-secret";
const EPOCH: &str = "epoch-1";
const HOUR_MS: u64 = 3_600_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn channels() -> ChannelsConfig {
    let default = NamespaceOptions {
        history: true,
        client_publish: true,
        private: false,
        history_retention: None,
        history_size: None,
        anonymous: false,
        presence: false,
        join_leave: false,
        force_push_join_leave: false,
        membership: false,
        receipts: true,
        track_publishers: true,
        publish_events: false,
        push_unread_delay: None,
        allowed_delta_types: Vec::new(),
    };
    let mut namespaces = BTreeMap::new();
    namespaces.insert("dm".to_string(), default.clone());
    namespaces.insert(
        "secret".to_string(),
        NamespaceOptions {
            private: true,
            ..default.clone()
        },
    );
    namespaces.insert(
        "live".to_string(),
        NamespaceOptions {
            history: false,
            ..default.clone()
        },
    );
    namespaces.insert(
        "recent".to_string(),
        NamespaceOptions {
            history_retention: Some(Duration::from_secs(3600)),
            ..default.clone()
        },
    );
    ChannelsConfig {
        default,
        namespaces,
    }
}

/// The publication stored at `offset` by [`seed`], as the API returns it.
fn expected(offset: u64) -> Value {
    let data = json!({"n": offset, "text": "hello, \"world\""});
    if offset % 2 == 0 {
        json!({"offset": offset, "data": data, "info": {"user": format!("u{offset}"), "client": "c"}})
    } else {
        json!({"offset": offset, "data": data})
    }
}

/// Appends offsets `from..=to` of `channel`, the time of each given by
/// `time_ms`; even offsets carry client info, every fifth an idempotency key.
async fn seed_with(
    store: &EmbeddedStore,
    channel: &str,
    from: u64,
    to: u64,
    time_ms: impl Fn(u64) -> u64,
) {
    let mut offset = from;
    while offset <= to {
        let end = (offset + 99).min(to);
        let publications = (offset..=end)
            .map(|o| {
                let v = expected(o);
                StoredPublication {
                    offset: o,
                    data: Bytes::from(v["data"].to_string()),
                    info: v.get("info").map(|i| Bytes::from(i.to_string())),
                    time_ms: time_ms(o),
                }
            })
            .collect();
        let idempotency_keys = (offset..=end)
            .filter(|o| o % 5 == 0)
            .map(|o| (format!("key-{o}"), o))
            .collect();
        store
            .append(&[ChannelAppend {
                channel: channel.to_string(),
                epoch: EPOCH.to_string(),
                publications,
                idempotency_keys,
            }])
            .await
            .expect("seed append");
        offset = end + 1;
    }
}

async fn seed(store: &EmbeddedStore, channel: &str, count: u64) {
    seed_with(store, channel, 1, count, |_| now_ms()).await;
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    service: Arc<SyncService>,
}

impl Fixture {
    fn new(page_limit: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            EmbeddedStore::open(
                dir.path(),
                StoreOptions {
                    idempotency_retention: Duration::from_secs(86_400),
                },
            )
            .expect("open store"),
        );
        let service = Arc::new(service(store.clone(), page_limit));
        Self {
            _dir: dir,
            store,
            service,
        }
    }
}

fn service(store: Arc<EmbeddedStore>, page_limit: usize) -> SyncService {
    let shared: SharedStore = store;
    SyncService::new(
        shared,
        channels(),
        SyncSettings {
            page_limit,
            store_timeout: Duration::from_secs(5),
            concurrency: 8,
            coalesce_capacity: 64,
            max_devices_per_user: 20,
        },
    )
}

/// Serves the service's router on 127.0.0.1:0; returns the base URL.
async fn serve_http(service: &Arc<SyncService>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = service.router(Verifier::new(SECRET));
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

fn token(user: &str) -> String {
    mint(SECRET, user, None, Duration::from_secs(300))
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
        }
    }

    /// GET the publications of an already percent-encoded channel path.
    async fn get(
        &self,
        encoded_channel: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!(
            "{}/api/v1/channels/{encoded_channel}/publications{query}",
            self.base
        );
        let mut req = self.http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("json body");
        (status, body)
    }

    async fn get_as(&self, user: &str, encoded_channel: &str, query: &str) -> (u16, Value) {
        let auth = format!("Bearer {}", token(user));
        self.get(encoded_channel, query, &[("authorization", &auth)])
            .await
    }

    /// Follows `next` cursors from `first_query`; returns every page's body.
    async fn follow(&self, user: &str, channel: &str, first_query: &str) -> Vec<Value> {
        let mut pages = Vec::new();
        let mut query = first_query.to_string();
        loop {
            let (status, body) = self.get_as(user, channel, &query).await;
            assert_eq!(status, 200, "{body}");
            let next = body["next"].clone();
            pages.push(body);
            let Value::Object(cursor) = next else { break };
            let limit = first_query
                .split(['?', '&'])
                .find(|p| p.starts_with("limit="))
                .unwrap_or("limit=100");
            let params: Vec<String> = cursor
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
                .collect();
            query = format!("?{}&{limit}", params.join("&"));
            assert!(pages.len() < 100, "cursor does not end");
        }
        pages
    }
}

fn offsets(page: &Value) -> Vec<u64> {
    page["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

fn assert_error(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], want, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn http_pages_forward_and_backward() {
    let fx = Fixture::new(1000);
    seed(&fx.store, "news", 250).await;
    let api = Api::new(serve_http(&fx.service).await);

    let pages = api.follow("alice", "news", "?after=0&limit=100").await;
    assert_eq!(pages.len(), 3);
    let want: [Vec<u64>; 3] = [
        (1..=100).collect(),
        (101..=200).collect(),
        (201..=250).collect(),
    ];
    for (page, want) in pages.iter().zip(&want) {
        assert_eq!(offsets(page), *want);
        assert_eq!(page["epoch"], EPOCH);
        assert_eq!(page["head"], 250);
        assert_eq!(page["first_available"], 1);
        let bodies: Vec<Value> = want.iter().map(|o| expected(*o)).collect();
        assert_eq!(page["publications"], Value::Array(bodies));
    }
    assert_eq!(pages[0]["next"], json!({"after": 100}));
    assert_eq!(pages[1]["next"], json!({"after": 200}));
    assert_eq!(pages[2]["next"], Value::Null);

    let pages = api
        .follow("alice", "news", "?direction=backward&limit=100")
        .await;
    assert_eq!(pages.len(), 3);
    let want: [Vec<u64>; 3] = [
        (151..=250).rev().collect(),
        (51..=150).rev().collect(),
        (1..=50).rev().collect(),
    ];
    for (page, want) in pages.iter().zip(&want) {
        assert_eq!(offsets(page), *want);
        let bodies: Vec<Value> = want.iter().map(|o| expected(*o)).collect();
        assert_eq!(page["publications"], Value::Array(bodies));
    }
    assert_eq!(pages[0]["next"], json!({"before": 151}));
    assert_eq!(pages[1]["next"], json!({"before": 51}));
    assert_eq!(pages[2]["next"], Value::Null);

    // `before` alone pages backward; the default limit is 100.
    let (status, body) = api.get_as("alice", "news", "?before=251").await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&body), (151..=250).rev().collect::<Vec<_>>());

    // A window, oldest first: the upper bound travels with the cursor.
    let pages = api
        .follow(
            "alice",
            "news",
            "?after=10&before=20&direction=forward&limit=4",
        )
        .await;
    let all: Vec<u64> = pages.iter().flat_map(offsets).collect();
    assert_eq!(all, (11..20).collect::<Vec<_>>());
    assert_eq!(
        pages[0]["next"],
        json!({"after": 14, "before": 20, "direction": "forward"})
    );

    // The same window newest first.
    let pages = api
        .follow("alice", "news", "?after=10&before=20&limit=4")
        .await;
    let all: Vec<u64> = pages.iter().flat_map(offsets).collect();
    assert_eq!(all, (11..20).rev().collect::<Vec<_>>());
    assert_eq!(pages[0]["next"], json!({"after": 10, "before": 16}));

    // Past the head: an empty page and no cursor; an unknown channel reads empty.
    let (status, body) = api.get_as("alice", "news", "?after=250").await;
    assert_eq!(
        (status, offsets(&body).len(), &body["next"]),
        (200, 0, &Value::Null)
    );
    let (status, body) = api.get_as("alice", "empty", "").await;
    assert_eq!(status, 200);
    // An empty channel already has the epoch its first publication gets.
    let epoch = fx.store.position("empty").await.expect("position").epoch;
    assert_eq!(epoch.len(), 8);
    assert_eq!(
        body,
        json!({"publications": [], "epoch": epoch, "head": 0, "first_available": 1, "next": null})
    );
}

#[tokio::test]
async fn http_limit_is_capped_at_the_page_limit() {
    let fx = Fixture::new(30);
    seed(&fx.store, "news", 100).await;
    let api = Api::new(serve_http(&fx.service).await);
    let (status, body) = api.get_as("alice", "news", "?limit=500").await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&body), (1..=30).collect::<Vec<_>>());
    assert_eq!(body["next"], json!({"after": 30}));
}

#[tokio::test]
async fn http_authorization_and_errors() {
    let metrics = herald::metrics::install(herald::roles::Role::Sync);
    let fx = Fixture::new(1000);
    seed(&fx.store, "dm:#alice,bob", 3).await;
    seed(&fx.store, "dm:a/b c#alice", 2).await;
    seed(&fx.store, "secret:room", 2).await;
    let api = Api::new(serve_http(&fx.service).await);

    // 401: no token, a bad one, the wrong scheme, an expired one.
    let (status, body) = api.get("news", "", &[]).await;
    assert_error(status, &body, 401);
    let (status, body) = api
        .get("news", "", &[("authorization", "Bearer garbage")])
        .await;
    assert_error(status, &body, 401);
    let basic = format!("Basic {}", token("alice"));
    let (status, body) = api.get("news", "", &[("authorization", &basic)]).await;
    assert_error(status, &body, 401);
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": herald::auth::now_secs() - 120}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let auth = format!("Bearer {expired}");
    let (status, body) = api.get("news", "", &[("authorization", &auth)]).await;
    assert_error(status, &body, 401);
    assert_eq!(body["error"]["message"], "token expired");
    // A subscription token is not a connection token.
    let sub_token = mint(
        SECRET,
        "alice",
        Some("secret:room"),
        Duration::from_secs(300),
    );
    let auth = format!("Bearer {sub_token}");
    let (status, body) = api.get("news", "", &[("authorization", &auth)]).await;
    assert_error(status, &body, 401);

    // 403: someone else's personal channel, a chat alice is not in.
    let (status, body) = api.get_as("alice", "%23bob", "").await;
    assert_error(status, &body, 403);
    let (status, body) = api.get_as("alice", "dm%3A%23bob%2Ccarol", "").await;
    assert_error(status, &body, 403);

    // 200: alice's own chat, percent-encoded; `/`, ` `, `#` and `:` decode.
    let (status, body) = api.get_as("alice", "dm%3A%23alice%2Cbob", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(offsets(&body), vec![1, 2, 3]);
    assert_eq!(body["publications"][1], expected(2));
    let (status, body) = api.get_as("alice", "dm%3Aa%2Fb%20c%23alice", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(offsets(&body), vec![1, 2]);
    let (status, body) = api.get_as("alice", "%23alice", "").await;
    assert_eq!(status, 200, "{body}");

    // Private: only with a subscription token for this user and channel.
    let (status, body) = api.get_as("alice", "secret%3Aroom", "").await;
    assert_error(status, &body, 403);
    let auth = format!("Bearer {}", token("alice"));
    for (sub_user, sub_channel) in [("alice", "secret:other"), ("bob", "secret:room")] {
        let sub = mint(
            SECRET,
            sub_user,
            Some(sub_channel),
            Duration::from_secs(300),
        );
        let headers = [
            ("authorization", auth.as_str()),
            ("x-herald-subscription-token", sub.as_str()),
        ];
        let (status, body) = api.get("secret%3Aroom", "", &headers).await;
        assert_error(status, &body, 403);
    }
    let expired_sub = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "channel": "secret:room", "exp": herald::auth::now_secs() - 120}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let headers = [
        ("authorization", auth.as_str()),
        ("x-herald-subscription-token", expired_sub.as_str()),
    ];
    let (status, body) = api.get("secret%3Aroom", "", &headers).await;
    assert_error(status, &body, 401);
    assert_eq!(body["error"]["message"], "token expired");
    let sub = mint(
        SECRET,
        "alice",
        Some("secret:room"),
        Duration::from_secs(300),
    );
    let headers = [
        ("authorization", auth.as_str()),
        ("x-herald-subscription-token", sub.as_str()),
    ];
    let (status, body) = api.get("secret%3Aroom", "", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(offsets(&body), vec![1, 2]);
    // Public channels ignore the header.
    let headers = [
        ("authorization", auth.as_str()),
        ("x-herald-subscription-token", "junk"),
    ];
    let (status, body) = api.get("dm%3A%23alice%2Cbob", "", &headers).await;
    assert_eq!(status, 200, "{body}");

    // 400: bad queries and bad channel names.
    for query in [
        "?after=abc",
        "?limit=0",
        "?limit=-1",
        "?offset=3",
        "?direction=sideways",
    ] {
        let (status, body) = api.get_as("alice", "news", query).await;
        assert_error(status, &body, 400);
    }
    for channel in ["dm%3A", "a%0Ab", &"x".repeat(256)] {
        let (status, body) = api.get_as("alice", channel, "").await;
        assert_error(status, &body, 400);
    }

    // 404: an unknown namespace, a namespace without history.
    let (status, body) = api.get_as("alice", "nope%3Aroom", "").await;
    assert_error(status, &body, 404);
    let (status, body) = api.get_as("alice", "live%3Aroom", "").await;
    assert_error(status, &body, 404);

    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with(herald::metrics::SYNC_REQUESTS_TOTAL)
                && l.contains("source=\"http\"")),
        "{rendered}"
    );
}

#[tokio::test]
async fn history_retention_cuts_a_prefix() {
    let fx = Fixture::new(1000);
    // Offsets 1..=37 are two hours old, 38..=50 fresh; retention is one hour.
    seed_with(&fx.store, "recent:room", 1, 50, |o| {
        if o <= 37 {
            now_ms() - 2 * HOUR_MS
        } else {
            now_ms()
        }
    })
    .await;
    seed_with(&fx.store, "recent:gone", 1, 5, |_| now_ms() - 2 * HOUR_MS).await;
    let api = Api::new(serve_http(&fx.service).await);

    let (status, body) = api.get_as("alice", "recent%3Aroom", "?after=0").await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&body), (38..=50).collect::<Vec<_>>());
    assert_eq!(
        (body["first_available"].as_u64(), body["head"].as_u64()),
        (Some(38), Some(50))
    );
    let pages = api
        .follow("alice", "recent%3Aroom", "?direction=backward&limit=5")
        .await;
    let all: Vec<u64> = pages.iter().flat_map(offsets).collect();
    assert_eq!(all, (38..=50).rev().collect::<Vec<_>>());

    let (status, body) = api.get_as("alice", "recent%3Agone", "").await;
    assert_eq!(status, 200);
    assert_eq!(offsets(&body).len(), 0);
    assert_eq!(
        (body["first_available"].as_u64(), body["head"].as_u64()),
        (Some(6), Some(5))
    );

    // The same over NATS, where an edge tells an impossible recovery by it.
    let nats = TestNats::start().await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        fx.service
            .clone()
            .serve_nats(nats.client().await, shutdown.clone()),
    );
    let client = SyncClient::new(nats.client().await, Duration::from_secs(5));
    let page = ready(&client, "recent:room").await;
    assert_eq!(page.first_available, 38);
    let page = client
        .read("recent:room", 10, None, 100, false)
        .await
        .unwrap();
    assert_eq!(page.publications.len(), 13);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Reads `channel` once a responder answers.
async fn ready(client: &SyncClient, channel: &str) -> herald::sync::wire::Page {
    eventually(
        "a sync responder answers",
        Duration::from_secs(5),
        || async { client.read(channel, 0, None, 0, false).await.ok() },
    )
    .await
}

fn start_responder(
    service: &Arc<SyncService>,
    client: async_nats::Client,
) -> (
    CancellationToken,
    JoinHandle<Result<(), async_nats::SubscribeError>>,
) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(service.clone().serve_nats(client, shutdown.clone()));
    (shutdown, task)
}

fn published_offsets(page: &herald::sync::wire::Page) -> Vec<u64> {
    page.publications
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p.get()).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn nats_reads_pages_and_idempotency_keys() {
    let fx = Fixture::new(120);
    seed(&fx.store, "news", 250).await;
    let nats = TestNats::start().await;
    let (shutdown, task) = start_responder(&fx.service, nats.client().await);
    let client = SyncClient::new(nats.client().await, Duration::from_secs(5));
    let page = ready(&client, "news").await;
    assert_eq!(
        (page.head, page.epoch.as_str(), page.first_available),
        (250, EPOCH, 1)
    );
    assert!(
        page.publications.is_empty(),
        "limit 0 reads only the position"
    );

    let page = client.read("news", 0, None, 100, false).await.unwrap();
    assert_eq!(published_offsets(&page), (1..=100).collect::<Vec<_>>());
    let got: Vec<Value> = page
        .publications
        .iter()
        .map(|p| serde_json::from_str(p.get()).unwrap())
        .collect();
    assert_eq!(got, (1..=100).map(expected).collect::<Vec<_>>());
    let page = client.read("news", 200, None, 100, false).await.unwrap();
    assert_eq!(published_offsets(&page), (201..=250).collect::<Vec<_>>());
    let page = client.read("news", 0, None, 10, true).await.unwrap();
    assert_eq!(
        published_offsets(&page),
        (241..=250).rev().collect::<Vec<_>>()
    );
    let page = client.read("news", 10, Some(15), 100, false).await.unwrap();
    assert_eq!(published_offsets(&page), vec![11, 12, 13, 14]);
    let page = client.read("news", 0, None, 1000, false).await.unwrap();
    assert_eq!(page.publications.len(), 120, "capped at the page limit");

    assert_eq!(
        client.idempotent_offset("news", "key-35").await.unwrap(),
        Some((35, EPOCH.to_string()))
    );
    assert_eq!(
        client.idempotent_offset("news", "key-36").await.unwrap(),
        None
    );

    for (channel, kind) in [
        ("dm:", "bad_request"),
        ("nope:x", "unknown_channel"),
        ("live:x", "not_available"),
    ] {
        match client.read(channel, 0, None, 10, false).await {
            Err(SyncClientError::Remote { kind: got, .. }) => assert_eq!(got, kind, "{channel}"),
            other => panic!("{channel}: {other:?}"),
        }
    }
    match client.idempotent_offset("", "k").await {
        Err(SyncClientError::Remote { kind, .. }) => assert_eq!(kind, "bad_request"),
        other => panic!("{other:?}"),
    }

    // An undecodable request is answered with an error, not dropped.
    let raw = nats.client().await;
    let msg = raw
        .request(subjects::SYNC, Bytes::from_static(b"{nonsense"))
        .await
        .unwrap();
    match serde_json::from_slice::<SyncReply>(&msg.payload).unwrap() {
        SyncReply::Error { kind, .. } => assert_eq!(kind, "bad_request"),
        other => panic!("{other:?}"),
    }

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_second_instance_answers_when_one_stops() {
    let fx = Fixture::new(1000);
    seed(&fx.store, "news", 20).await;
    let other = Arc::new(service(fx.store.clone(), 1000));
    let nats = TestNats::start().await;
    let (stop_a, task_a) = start_responder(&fx.service, nats.client().await);
    let (stop_b, task_b) = start_responder(&other, nats.client().await);
    let client = SyncClient::new(nats.client().await, Duration::from_secs(5));
    ready(&client, "news").await;
    // Both instances are in the queue group: each gets a share of requests.
    eventually("both instances answer", Duration::from_secs(10), || async {
        client.read("news", 0, None, 5, false).await.unwrap();
        (fx.service.store_calls() > 0 && other.store_calls() > 0).then_some(())
    })
    .await;

    stop_a.cancel();
    task_a.await.unwrap().unwrap();
    let before = (fx.service.store_calls(), other.store_calls());
    for after in 0..20 {
        let page = client.read("news", after, None, 5, false).await.unwrap();
        assert_eq!(published_offsets(&page).first(), Some(&(after + 1)));
    }
    assert_eq!(
        fx.service.store_calls(),
        before.0,
        "the stopped instance answers nothing"
    );
    assert!(other.store_calls() > before.1);

    stop_b.cancel();
    task_b.await.unwrap().unwrap();
    match client.read("news", 0, None, 5, false).await {
        Err(SyncClientError::NoResponders) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn identical_concurrent_reads_share_store_calls() {
    let fx = Fixture::new(1000);
    seed(&fx.store, "hot", 50).await;
    let range = ReadRange {
        after: 10,
        before: None,
        limit: 20,
        direction: Direction::Forward,
    };

    let calls = fx.service.store_calls();
    let page = fx.service.read("hot", range).await.unwrap();
    let one_read = fx.service.store_calls() - calls;
    assert!(one_read >= 1);

    let calls = fx.service.store_calls();
    let requests = 50;
    let reads = (0..requests).map(|_| fx.service.read("hot", range));
    let results = futures::future::join_all(reads).await;
    let used = fx.service.store_calls() - calls;
    for r in &results {
        let p = r.as_ref().unwrap();
        assert_eq!(p.last_offset, Some(30));
        assert_eq!(p.page.publications.len(), 20);
        assert_eq!(
            p.page.publications[0].get(),
            page.page.publications[0].get()
        );
    }
    assert!(
        used < requests as u64 * one_read,
        "{requests} reads made {used} store calls, one read makes {one_read}"
    );
    assert_eq!(used, one_read, "all joined one execution");
    assert_eq!(fx.service.reads_in_flight(), 0);

    // Different ranges are not merged.
    let calls = fx.service.store_calls();
    let reads = (0..5u64).map(|after| fx.service.read("hot", ReadRange { after, ..range }));
    let results = futures::future::join_all(reads).await;
    for (after, r) in results.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().last_offset, Some(after as u64 + 20));
    }
    assert_eq!(fx.service.store_calls() - calls, 5 * one_read);
}
