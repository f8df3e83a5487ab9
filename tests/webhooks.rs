//! Event webhooks (README, Event webhooks), black box: a receiver the test
//! runs (hyper, in this process) takes Herald's POSTs, checks each
//! signature with its own HMAC-SHA256 and records the events.
//!
//! - Every event type arrives with its fields, signed, its id in the header
//!   and the body alike.
//! - An outage: the receiver is killed (its port refuses), clients connect,
//!   subscribe, unsubscribe and disconnect and the API publishes meanwhile;
//!   the dispatcher's process (`herald serve`) is `kill -9`ed and started
//!   again mid-outage; the receiver comes back on the same port. Every
//!   event the test caused is there exactly once after dedup by id, and each
//!   user's events came in the order they happened.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use common::TestNats;
use common::node::{TestHerald, test_config};
use common::process::{HeraldProcess, Spec, free_port};
use common::ws::WsClient;
use herald::config::Secret;

const HOOK_SECRET: &str = "webhook-test-secret";

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    id_header: String,
    type_header: String,
    signature_ok: bool,
    body: Value,
}

/// The receiver: answers 200 to every POST and records it. `kill` closes
/// the listener and every open connection (the port refuses); `start` on
/// the same port brings it back.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// While set, every POST is answered 500 (and not recorded).
    failing: Arc<std::sync::atomic::AtomicBool>,
}

struct Running(tokio::task::JoinHandle<()>);

impl Running {
    /// Kills the server: the accept loop and every connection task end.
    async fn kill(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

fn expected_signature(body: &[u8]) -> String {
    herald::webhooks::signature(HOOK_SECRET.as_bytes(), body)
}

/// The signature as a receiver computes it, independently of Herald's code.
fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl Receiver {
    async fn start(&self, port: u16) -> Running {
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                // The old socket may linger a moment after a kill.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let got = self.got.clone();
        let failing = self.failing.clone();
        Running(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (got, failing) = (got.clone(), failing.clone());
                conns.spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (got, failing) = (got.clone(), failing.clone());
                        async move {
                            if failing.load(std::sync::atomic::Ordering::SeqCst) {
                                let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                                return Ok(r);
                            }
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let (id_header, type_header, sig) = (
                                header("x-herald-event-id"),
                                header("x-herald-event-type"),
                                header("x-herald-signature"),
                            );
                            let body = req.into_body().collect().await?.to_bytes();
                            let signature_ok = sig == hmac_hex(HOOK_SECRET.as_bytes(), &body);
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            got.lock().unwrap().push(Received {
                                id_header,
                                type_header,
                                signature_ok,
                                body,
                            });
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }))
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Distinct events by id, in the order of their first arrival.
    fn events(&self) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.all()
            .into_iter()
            .filter(|r| seen.insert(r.body["id"].as_str().unwrap_or("").to_string()))
            .map(|r| r.body)
            .collect()
    }
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[tokio::test]
async fn every_event_type_arrives_signed_with_its_fields() {
    let nats = TestNats::start().await;
    let receiver = Receiver::default();
    let port = free_port();
    let _server = receiver.start(port).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats, dir.path().to_path_buf());
    config.webhooks.endpoints = vec![format!("http://127.0.0.1:{port}/hook")];
    config.webhooks.secret = Some(Secret::new(HOOK_SECRET));
    config.webhooks.retry_initial = Duration::from_millis(50);
    config.webhooks.retry_max = Duration::from_millis(500);
    let mut feed = config.channels.default.clone();
    feed.publish_events = true;
    config.channels.namespaces.insert("feed".into(), feed);
    let herald = TestHerald::start(config).await;

    let (mut alice, reply) = WsClient::connect(herald.addr, &herald.token("alice")).await;
    let client = reply["connect"]["client"].as_str().unwrap().to_string();
    alice.call("subscribe", json!({"channel": "feed:a"})).await;
    let published = alice
        .call("publish", json!({"channel": "feed:a", "data": {"n": 1}}))
        .await;
    assert!(published.get("error").is_none(), "{published}");
    // A channel without publish_events: no `published` event.
    alice.call("subscribe", json!({"channel": "quiet"})).await;
    alice
        .call("publish", json!({"channel": "quiet", "data": {"n": 2}}))
        .await;
    alice
        .call("unsubscribe", json!({"channel": "feed:a"}))
        .await;
    alice.close().await;

    let events = common::eventually("alice's events", Duration::from_secs(10), || {
        let events = receiver.events();
        async move {
            let want = [
                "connected",
                "user_online",
                "subscribed",
                "published",
                "unsubscribed",
                "disconnected",
                "user_offline",
            ];
            let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
            // subscribed/unsubscribed twice (feed:a, quiet).
            (want.iter().all(|t| types.contains(t)) && of_type(&events, "unsubscribed").len() == 2)
                .then_some(events)
        }
    })
    .await;
    for r in receiver.all() {
        assert!(r.signature_ok, "bad signature on {}", r.body);
        assert_eq!(r.id_header, r.body["id"].as_str().unwrap(), "{}", r.body);
        assert_eq!(r.type_header, r.body["type"].as_str().unwrap());
        let raw = serde_json::to_vec(&r.body).unwrap();
        // The library's signature agrees with the receiver's own.
        assert_eq!(
            expected_signature(&raw),
            hmac_hex(HOOK_SECRET.as_bytes(), &raw)
        );
    }
    let one = |t: &str| -> Value {
        let found = of_type(&events, t);
        assert!(!found.is_empty(), "no {t}: {events:?}");
        found[0].clone()
    };
    let connected = one("connected");
    assert_eq!(connected["user"], "alice");
    assert_eq!(connected["client"], client.as_str());
    assert!(connected["time_ms"].as_u64().unwrap() > 0);
    let subscribed = of_type(&events, "subscribed");
    assert_eq!(subscribed.len(), 2, "{events:?}");
    assert_eq!(subscribed[0]["channel"], "feed:a");
    assert_eq!(subscribed[0]["client"], client.as_str());
    let p = of_type(&events, "published");
    assert_eq!(p.len(), 1, "only feed:* has publish_events: {events:?}");
    assert_eq!(p[0]["channel"], "feed:a");
    assert_eq!(p[0]["offset"], 1);
    assert_eq!(p[0]["data"], json!({"n": 1}));
    assert_eq!(p[0]["info"]["user"], "alice");
    assert_eq!(p[0]["info"]["client"], client.as_str());
    assert!(p[0]["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    let unsubscribed = of_type(&events, "unsubscribed");
    assert!(unsubscribed.iter().any(|u| u["channel"] == "feed:a"));
    let disconnected = one("disconnected");
    assert_eq!(disconnected["code"], 3000);
    assert_eq!(disconnected["reason"], "connection closed");
    assert_eq!(disconnected["client"], client.as_str());
    assert_eq!(one("user_online")["user"], "alice");
    let offline = one("user_offline");
    assert_eq!(offline["user"], "alice");
    assert!(offline["last_seen"].as_u64().unwrap() >= connected["time_ms"].as_u64().unwrap());
    // One connection's events in the order they happened.
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e["client"] == client.as_str() && e["type"] != "published")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "connected",
            "subscribed",
            "subscribed",
            "unsubscribed",
            "unsubscribed",
            "disconnected"
        ]
    );
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len());
}

/// What the test did, to compare with what arrived.
#[derive(Default)]
struct Expected {
    /// client id → (user, whether it subscribed).
    clients: BTreeMap<String, (String, bool)>,
    /// offsets published into `feed`.
    offsets: Vec<u64>,
}

/// One user's whole session on `edge`: connect, subscribe to `feed` and
/// unsubscribe (when `subscribe`: a subscribe needs sync, which lives in
/// `serve`), disconnect.
async fn session(
    addr: SocketAddr,
    user: &str,
    token: &str,
    subscribe: bool,
    expected: &mut Expected,
) {
    let (mut c, reply) = WsClient::connect(addr, token).await;
    let client = reply["connect"]["client"].as_str().unwrap().to_string();
    expected
        .clients
        .insert(client, (user.to_string(), subscribe));
    if subscribe {
        let r = c.call("subscribe", json!({"channel": "feed"})).await;
        assert!(r.get("error").is_none(), "{r}");
        let r = c.call("unsubscribe", json!({"channel": "feed"})).await;
        assert!(r.get("error").is_none(), "{r}");
    }
    c.close().await;
}

async fn publish(edge: &HeraldProcess, n: usize, expected: &mut Expected) {
    let api = edge.api();
    for i in 0..n {
        let r = api
            .ok(
                "publish",
                &json!({"channel": "feed", "data": {"i": i}}),
                Duration::from_secs(20),
            )
            .await;
        expected.offsets.push(r["offset"].as_u64().unwrap());
    }
}

#[tokio::test]
async fn a_receiver_outage_and_a_dispatcher_crash_lose_nothing() {
    let nats = TestNats::start().await;
    let receiver = Receiver::default();
    let port = free_port();
    let server = receiver.start(port).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = |s: Spec| {
        s.set("webhook_endpoints", format!("http://127.0.0.1:{port}/hook"))
            .set("webhook_secret", HOOK_SECRET)
            .set("webhook_retry_initial", "50ms")
            .set("webhook_retry_max", "400ms")
            .set("webhook_timeout", "1s")
            .set("channel_publish_events", "true")
    };
    // The dispatcher runs in `serve` (the writer holding partition 0); the
    // clients use a separate edge, which keeps running throughout.
    let serve_spec = hooks(Spec::serve("serve", nats.url(), &dir.path().join("data")));
    let mut serve = HeraldProcess::start(serve_spec.clone()).await;
    let edge = HeraldProcess::start(hooks(Spec::edge("edge", nats.url()))).await;
    let token =
        |u: &str| herald::auth::mint(common::node::SECRET, u, None, Duration::from_secs(3600));
    let mut expected = Expected::default();
    let mut users = 0;
    let mut next_user = || {
        users += 1;
        format!("u{users}")
    };

    // Receiver up.
    for _ in 0..3 {
        let u = next_user();
        session(edge.addr(), &u, &token(&u), true, &mut expected).await;
    }
    publish(&edge, 5, &mut expected).await;

    // Receiver down: activity goes on, clients notice nothing.
    let outage = Instant::now();
    server.kill().await;
    let mut slowest = Duration::ZERO;
    for _ in 0..4 {
        let u = next_user();
        let started = Instant::now();
        session(edge.addr(), &u, &token(&u), true, &mut expected).await;
        slowest = slowest.max(started.elapsed());
    }
    // Clients notice nothing: a whole session takes what it takes anyway.
    assert!(
        slowest < Duration::from_secs(1),
        "a session took {slowest:?}"
    );
    publish(&edge, 5, &mut expected).await;

    // The dispatcher's process dies mid-outage and comes back.
    serve.kill9().await;
    for _ in 0..3 {
        let u = next_user();
        session(edge.addr(), &u, &token(&u), false, &mut expected).await;
    }
    serve = HeraldProcess::start(serve_spec).await;
    publish(&edge, 5, &mut expected).await;
    for _ in 0..2 {
        let u = next_user();
        session(edge.addr(), &u, &token(&u), true, &mut expected).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down_for = outage.elapsed();
    let _server = receiver.start(port).await;

    let user_count = expected.clients.len();
    let want_total = expected
        .clients
        .values()
        .map(|(_, subscribed)| if *subscribed { 4 } else { 2 })
        .sum::<usize>()
        + user_count * 2
        + expected.offsets.len();
    let started = Instant::now();
    let events = common::eventually(
        "every event after the outage",
        Duration::from_secs(60),
        || {
            let events = receiver.events();
            async move { (events.len() >= want_total).then_some(events) }
        },
    )
    .await;
    let caught_up = started.elapsed();
    // Quiet for a moment: nothing more than expected arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = {
        let later = receiver.events();
        assert_eq!(later.len(), events.len(), "unexpected extra events");
        later
    };
    let all = receiver.all();
    assert!(all.iter().all(|r| r.signature_ok), "every POST is signed");
    let duplicates = all.len() - events.len();

    // Nothing missing, nothing unexpected.
    for (client, (user, subscribed)) in &expected.clients {
        let mine: Vec<&str> = events
            .iter()
            .filter(|e| e["client"] == client.as_str())
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        let want: &[&str] = if *subscribed {
            &["connected", "subscribed", "unsubscribed", "disconnected"]
        } else {
            &["connected", "disconnected"]
        };
        assert_eq!(mine, want, "client {client} of {user}");
        assert!(
            events
                .iter()
                .filter(|e| e["client"] == client.as_str())
                .all(|e| e["user"] == user.as_str()),
            "{client}"
        );
    }
    let mut per_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &events {
        if let (Some(u), Some(t)) = (e["user"].as_str(), e["type"].as_str()) {
            if t == "user_online" || t == "user_offline" {
                per_user.entry(u).or_default().push(t);
            }
        }
    }
    for (user, _) in expected.clients.values() {
        assert_eq!(
            per_user.get(user.as_str()).map(Vec::as_slice),
            Some(&["user_online", "user_offline"][..]),
            "{user}"
        );
    }
    let offsets: Vec<u64> = of_type(&events, "published")
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets, expected.offsets,
        "published events, in offset order"
    );
    assert_eq!(events.len(), want_total);
    let retries = serve.metric("herald_webhook_retries_total", &[]).await;
    println!(
        "webhooks outage: {} events, {} duplicates on the wire, receiver down {:.1}s, caught up {:.1}s after it came back; retries counted by the new dispatcher: {retries}; slowest client session during the outage {slowest:?}",
        events.len(),
        duplicates,
        down_for.as_secs_f64(),
        caught_up.as_secs_f64()
    );
}

#[tokio::test]
async fn an_event_failing_past_max_age_is_given_up_and_its_user_goes_on() {
    let nats = TestNats::start().await;
    let receiver = Receiver::default();
    receiver
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let port = free_port();
    let _server = receiver.start(port).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats, dir.path().to_path_buf());
    config.webhooks.endpoints = vec![format!("http://127.0.0.1:{port}/hook")];
    config.webhooks.secret = Some(Secret::new(HOOK_SECRET));
    config.webhooks.retry_initial = Duration::from_millis(50);
    config.webhooks.retry_max = Duration::from_millis(200);
    config.webhooks.max_age = Duration::from_secs(1);
    config.webhooks.events = ["connected".to_string()].into();
    let herald = TestHerald::start(config).await;
    let metric = |name: &'static str| {
        let url = herald.url("/metrics");
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            common::process::metric_value(&text, name, &[("type", "connected")])
        }
    };

    // Answered 500 until past max age: given up, counted. (Metrics are
    // per test process: only this test gives events up or retries.)
    let (first, _) = WsClient::connect(herald.addr, &herald.token("alice")).await;
    common::eventually(
        "alice's event given up",
        Duration::from_secs(10),
        || async { (metric("herald_webhook_events_expired_total").await? >= 1.0).then_some(()) },
    )
    .await;
    assert!(receiver.all().is_empty());
    // alice's next event goes out: her lane did not stay blocked.
    receiver
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (second, reply) = WsClient::connect(herald.addr, &herald.token("alice")).await;
    let client = reply["connect"]["client"].as_str().unwrap().to_string();
    let events = common::eventually("the next event", Duration::from_secs(10), || {
        let events = receiver.events();
        async move { (!events.is_empty()).then_some(events) }
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["client"], client.as_str());
    let retries = {
        let text = reqwest::get(herald.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        common::process::metric_value(&text, "herald_webhook_retries_total", &[]).unwrap()
    };
    assert!(
        retries >= 3.0,
        "retried with backoff before giving up: {retries}"
    );
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn a_full_emit_queue_drops_and_counts_without_slowing_clients() {
    let mut nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats, dir.path().to_path_buf());
    config.webhooks.endpoints = vec![format!("http://127.0.0.1:{}/hook", free_port())];
    config.webhooks.secret = Some(Secret::new(HOOK_SECRET));
    config.webhooks.emit_queue = 2;
    let herald = TestHerald::start(config).await;
    // JetStream unreachable: the emitter cannot store events, the queue fills.
    nats.kill().await;
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        let (c, _) = WsClient::connect(herald.addr, &herald.token(&format!("q{i}"))).await;
        c.close().await;
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a connect took {slowest:?}"
    );
    let dropped = common::eventually("drops counted", Duration::from_secs(10), || {
        let url = herald.url("/metrics");
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            common::process::metric_value(
                &text,
                "herald_webhook_events_dropped_total",
                &[("reason", "queue_full")],
            )
            .filter(|d| *d >= 10.0)
        }
    })
    .await;
    println!(
        "emit queue of 2, NATS down: {dropped} events dropped and counted; slowest connect+close {slowest:?}"
    );
}

#[tokio::test]
async fn a_user_on_two_edges_is_online_once_and_offline_once() {
    let nats = TestNats::start().await;
    let receiver = Receiver::default();
    let port = free_port();
    let _server = receiver.start(port).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = |s: Spec| {
        s.set("webhook_endpoints", format!("http://127.0.0.1:{port}/hook"))
            .set("webhook_secret", HOOK_SECRET)
            .set("webhook_events", "user_online,user_offline,disconnected")
    };
    let _serve = HeraldProcess::start(hooks(Spec::serve(
        "serve",
        nats.url(),
        &dir.path().join("data"),
    )))
    .await;
    let a = HeraldProcess::start(hooks(Spec::edge("edge-a", nats.url()))).await;
    let b = HeraldProcess::start(hooks(Spec::edge("edge-b", nats.url()))).await;
    let token = herald::auth::mint(
        common::node::SECRET,
        "carol",
        None,
        Duration::from_secs(3600),
    );
    let count = |t: &'static str| {
        let events = receiver.events();
        events.iter().filter(|e| e["type"] == t).count()
    };
    let disconnected = |n: usize| {
        common::eventually(
            "the disconnect",
            Duration::from_secs(10),
            move || async move { (count("disconnected") >= n).then_some(()) },
        )
    };

    let (on_a, _) = WsClient::connect(a.addr(), &token).await;
    common::eventually("carol online", Duration::from_secs(10), || async {
        (count("user_online") == 1).then_some(())
    })
    .await;
    // Edge B answers carol online (its status gather reaches edge A)
    // before her second connection opens there: the online check of that
    // connection asks the same way.
    let api_b = b.api();
    common::eventually("edge B sees carol", Duration::from_secs(10), || {
        let api_b = &api_b;
        async move {
            let r = api_b
                .call("user_status", &serde_json::json!({"users": ["carol"]}))
                .await
                .ok()?;
            (r["result"]["statuses"][0]["online"] == true).then_some(())
        }
    })
    .await;
    // A second connection through another edge: still the same online user.
    let (on_b, _) = WsClient::connect(b.addr(), &token).await;
    // Edge B's online check runs after the connect is answered and asks the
    // other edges: closing A before it has asked would make carol offline
    // there, and B would report her online again (at least once, not at most
    // once: a change within one check's time may be reported twice).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    on_a.close().await;
    disconnected(1).await;
    // The offline check of edge A's last connection runs after the
    // disconnect; give it its gather time before judging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count("user_online"), 1, "{:?}", receiver.events());
    assert_eq!(count("user_offline"), 0, "carol is still on edge B");
    on_b.close().await;
    disconnected(2).await;
    common::eventually("carol offline", Duration::from_secs(10), || async {
        (count("user_offline") == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((count("user_online"), count("user_offline")), (1, 1));
}
