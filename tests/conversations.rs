//! IM conversations black-box (issue 11): membership, read and delivered
//! markers synced across devices, live receipts, typing, unread counts and
//! the conversation list — `herald serve` and two `herald edge` processes on
//! one real nats-server, clients as real WebSockets (and the official JS
//! SDK), the server API and the sync HTTP API over HTTP.
//!
//! The default namespace has `membership = true` here (`channel_membership`),
//! so plain channels are groups whose members the backend sets; the built-in
//! `dm` namespace holds one-to-one channels (`dm:#alice,bob`), whose members
//! are their listed users. "Within one second" bounds are checked with
//! bounded waits and the times measured are printed (`-- --nocapture`).
//! The tests take turns (`SERIAL`): each starts three processes.

mod common;

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use common::TestNats;
use common::follower::token;
use common::process::{Api, HeraldProcess, Spec};
use common::ws::WsClient;
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound of every wait for something the design says takes under a second
/// (generous: the machine may be busy).
const LIMIT: Duration = Duration::from_secs(10);
const DM: &str = "dm:#alice,bob";

struct Cluster {
    _nats: TestNats,
    _dir: tempfile::TempDir,
    serve: HeraldProcess,
    a: HeraldProcess,
    b: HeraldProcess,
}

fn conf(spec: Spec) -> Spec {
    spec.set("channel_membership", true)
}

async fn cluster() -> Cluster {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = HeraldProcess::start(conf(Spec::serve(
        "serve",
        nats.url(),
        &dir.path().join("data"),
    )))
    .await;
    let a = HeraldProcess::start(conf(Spec::edge("edge-a", nats.url()))).await;
    let b = HeraldProcess::start(conf(Spec::edge("edge-b", nats.url()))).await;
    Cluster {
        _nats: nats,
        _dir: dir,
        serve,
        a,
        b,
    }
}

/// An RPC call's result `data`; panics on an error.
async fn rpc(c: &mut WsClient, method: &str, data: Value) -> Value {
    let r = c.call("rpc", json!({"method": method, "data": data})).await;
    assert!(r.get("error").is_none(), "{method} {data}: {r}");
    println!("{method} {data} -> {}", r["rpc"]["data"]);
    r["rpc"]["data"].clone()
}

/// An RPC call's error code; panics on a success.
async fn rpc_error(c: &mut WsClient, method: &str, data: Value) -> u64 {
    let r = c.call("rpc", json!({"method": method, "data": data})).await;
    let code = r["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("{method} {data} should fail: {r}"));
    println!("{method} {data} -> error {}", r["error"]);
    code
}

async fn publish(c: &mut WsClient, channel: &str, data: Value) -> u64 {
    let r = c
        .call("publish", json!({"channel": channel, "data": data}))
        .await;
    assert!(r.get("error").is_none(), "publish into {channel}: {r}");
    r["publish"]["offset"].as_u64().expect("an offset")
}

async fn subscribe(c: &mut WsClient, channel: &str) -> Value {
    c.call("subscribe", json!({ "channel": channel })).await
}

/// A client and the pushes it received that no check has taken yet.
struct Dev {
    ws: WsClient,
    kept: VecDeque<Value>,
}

impl Deref for Dev {
    type Target = WsClient;
    fn deref(&self) -> &WsClient {
        &self.ws
    }
}

impl DerefMut for Dev {
    fn deref_mut(&mut self) -> &mut WsClient {
        &mut self.ws
    }
}

async fn connect(p: &HeraldProcess, user: &str) -> Dev {
    let (ws, _) = WsClient::connect(p.addr(), &token(user)).await;
    Dev {
        ws,
        kept: VecDeque::new(),
    }
}

/// The first push (oldest first) for which `pred` holds, taken out; the
/// others stay. `None` after `limit`.
async fn push_where(d: &mut Dev, pred: impl Fn(&Value) -> bool, limit: Duration) -> Option<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let fresh = d.ws.take_pushes();
        d.kept.extend(fresh);
        if let Some(i) = d.kept.iter().position(&pred) {
            return d.kept.remove(i);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        d.ws.nothing_for(left.min(Duration::from_millis(50))).await;
    }
}

/// The data of the next async message push with `"herald": kind`.
async fn message_of(d: &mut Dev, kind: &str, limit: Duration) -> Option<Value> {
    push_where(d, |p| p["message"]["data"]["herald"] == kind, limit)
        .await
        .map(|p| p["message"]["data"].clone())
}

async fn api_ok(api: &Api, method: &str, body: Value) -> Value {
    let r = api.call(method, &body).await.expect("api reachable");
    assert!(r.get("result").is_some(), "{method} {body}: {r}");
    println!("api {method} {body} -> {}", r["result"]);
    r["result"].clone()
}

async fn api_error(api: &Api, method: &str, body: Value) -> u64 {
    let r = api.call(method, &body).await.expect("api reachable");
    println!("api {method} {body} -> {r}");
    r["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("{method} {body} should fail: {r}"))
}

/// Alice on two devices (one per edge) and bob: bob's messages are unread
/// on both of alice's devices; reading on one moves the other's badge
/// within a second; markers only move forward and are clamped to the head;
/// own messages are never unread.
#[tokio::test]
async fn markers_sync_to_the_other_device_and_unread_is_exact() {
    let _turn = SERIAL.lock().await;
    let c = cluster().await;
    let mut phone = connect(&c.a, "alice").await;
    let mut laptop = connect(&c.b, "alice").await;
    let mut bob = connect(&c.a, "bob").await;
    // A DM's members are its listed users before anything happened in it.
    let before = json!([
        {"user": "alice", "read": 0, "delivered": 0},
        {"user": "bob", "read": 0, "delivered": 0},
    ]);
    let m = api_ok(&c.serve.api(), "members", json!({"channel": DM})).await;
    assert_eq!(m["members"], before);
    let r = rpc(&mut bob, "herald.receipts", json!({"channel": DM})).await;
    assert_eq!(r["receipts"], before);
    for i in 1..=3 {
        assert_eq!(
            publish(&mut bob, DM, json!({"text": format!("hi {i}")})).await,
            i
        );
    }
    let u = rpc(&mut laptop, "herald.unread", json!({})).await;
    assert_eq!(u, json!({"total": 3, "conversations": 1}));
    let u = rpc(&mut bob, "herald.unread", json!({})).await;
    assert_eq!(
        u,
        json!({"total": 0, "conversations": 0}),
        "own messages are read"
    );

    // Read on the phone: the laptop hears of it.
    let started = Instant::now();
    let r = rpc(
        &mut phone,
        "herald.read",
        json!({"channel": DM, "offset": 2}),
    )
    .await;
    assert_eq!(
        r,
        json!({"channel": DM, "read": 2, "delivered": 2, "head": 3, "unread": 1})
    );
    let m = message_of(&mut laptop, "marker", LIMIT)
        .await
        .expect("marker push on the other edge");
    println!(
        "marker reached alice's other device (other edge) after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "within one second"
    );
    assert_eq!(
        m,
        json!({"herald": "marker", "channel": DM, "read": 2, "delivered": 2})
    );
    assert!(
        message_of(&mut phone, "marker", Duration::from_millis(300))
            .await
            .is_none(),
        "the reading device is not told its own change"
    );
    assert_eq!(
        rpc(&mut laptop, "herald.unread", json!({})).await,
        json!({"total": 1, "conversations": 1})
    );

    // Backwards is a no-op (no push); past the head is clamped.
    let r = rpc(
        &mut laptop,
        "herald.read",
        json!({"channel": DM, "offset": 1}),
    )
    .await;
    assert_eq!(
        (r["read"].as_u64(), r["unread"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(
        message_of(&mut phone, "marker", Duration::from_millis(300))
            .await
            .is_none()
    );
    let r = rpc(
        &mut laptop,
        "herald.delivered",
        json!({"channel": DM, "offset": 99}),
    )
    .await;
    assert_eq!(
        (r["read"].as_u64(), r["delivered"].as_u64()),
        (Some(2), Some(3))
    );
    let m = message_of(&mut phone, "marker", LIMIT)
        .await
        .expect("delivered push");
    assert_eq!(
        (m["read"].as_u64(), m["delivered"].as_u64()),
        (Some(2), Some(3))
    );

    // Alice answers: her own message does not count, bob has one unread.
    let four = publish(&mut phone, DM, json!({"text": "hello bob"})).await;
    assert_eq!(four, 4);
    let m = message_of(&mut laptop, "marker", LIMIT)
        .await
        .expect("publish moves read");
    assert_eq!(m["read"], 4);
    assert_eq!(
        rpc(&mut laptop, "herald.unread", json!({})).await,
        json!({"total": 0, "conversations": 0})
    );
    assert_eq!(
        rpc(&mut bob, "herald.unread", json!({})).await,
        json!({"total": 1, "conversations": 1})
    );
    // The server API's view of the same user.
    let api = c.serve.api();
    assert_eq!(
        api_ok(&api, "unread", json!({"user": "bob"})).await,
        json!({"total": 1, "conversations": 1})
    );
}

/// Membership: only members subscribe, publish, read history and set
/// markers; the backend adds and removes; a removed member's subscription
/// ends on the other edge within a second; member changes are pushed.
#[tokio::test]
async fn membership_is_enforced_and_removal_ends_subscriptions() {
    let _turn = SERIAL.lock().await;
    let c = cluster().await;
    let api = c.serve.api();
    let mut alice = connect(&c.a, "alice").await;
    let mut carol = connect(&c.b, "carol").await;
    let team = "team";
    // Not members yet: refused everywhere, nothing stored.
    assert_eq!(subscribe(&mut carol, team).await["error"]["code"], 103);
    let r = carol
        .call("publish", json!({"channel": team, "data": {"x": 1}}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = carol
        .call("history", json!({"channel": team, "limit": 10}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    assert_eq!(
        rpc_error(
            &mut carol,
            "herald.read",
            json!({"channel": team, "offset": 1})
        )
        .await,
        103
    );
    assert_eq!(
        rpc_error(&mut carol, "herald.typing", json!({"channel": team})).await,
        103
    );
    let conv = rpc(&mut carol, "herald.conversations", json!({})).await;
    assert_eq!(
        conv["conversations"],
        json!([]),
        "nothing stored on refusal"
    );

    let added = api_ok(
        &api,
        "add_members",
        json!({"channel": team, "users": ["alice", "carol"]}),
    )
    .await;
    assert_eq!(added, json!({"users": ["alice", "carol"]}));
    let again = api_ok(
        &api,
        "add_members",
        json!({"channel": team, "users": ["carol"]}),
    )
    .await;
    assert_eq!(again, json!({"users": []}), "idempotent");
    let m = message_of(&mut carol, "members", LIMIT)
        .await
        .expect("carol told she was added");
    assert_eq!(m["added"], json!(["alice", "carol"]));
    let r = subscribe(&mut carol, team).await;
    assert!(r.get("error").is_none(), "{r}");
    let r = subscribe(&mut alice, team).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        publish(&mut carol, team, json!({"text": "hi team"})).await,
        1
    );
    let r = carol
        .call("history", json!({"channel": team, "limit": 10}))
        .await;
    assert_eq!(
        r["history"]["publications"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    let members = api_ok(&api, "members", json!({"channel": team})).await;
    assert_eq!(members["members"][0]["user"], "alice");
    assert_eq!(
        members["members"][1],
        json!({"user": "carol", "read": 1, "delivered": 1})
    );

    // Removal: carol's live subscription (edge B) ends within a second.
    let started = Instant::now();
    let removed = api_ok(
        &api,
        "remove_members",
        json!({"channel": team, "users": ["carol"]}),
    )
    .await;
    assert_eq!(removed, json!({"users": ["carol"]}));
    let unsub = push_where(
        &mut carol,
        |p| p["channel"] == team && p.get("unsubscribe").is_some(),
        LIMIT,
    )
    .await
    .expect("carol's unsubscribe push");
    println!(
        "removed member unsubscribed on the other edge after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(unsub["unsubscribe"]["code"], 2000);
    let m = push_where(
        &mut alice,
        |p| p["message"]["data"]["removed"] == json!(["carol"]),
        LIMIT,
    )
    .await
    .expect("alice (subscribed) told of the removal");
    assert_eq!(
        m["message"]["data"],
        json!({"herald": "members", "channel": team, "added": [], "removed": ["carol"]})
    );
    assert_eq!(subscribe(&mut carol, team).await["error"]["code"], 103);
    let r = carol
        .call("publish", json!({"channel": team, "data": {"x": 2}}))
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let members = api_ok(&api, "members", json!({"channel": team})).await;
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
    // History over HTTP: members only.
    let http = reqwest::Client::new();
    for (user, status) in [("alice", 200), ("carol", 403)] {
        let resp = http
            .get(c.serve.url("/api/v1/channels/team/publications"))
            .bearer_auth(token(user))
            .send()
            .await
            .expect("http");
        assert_eq!(resp.status(), status, "{user}'s history over HTTP");
    }

    // Bad member lists.
    assert_eq!(
        api_error(&api, "add_members", json!({"channel": DM, "users": ["x"]})).await,
        107
    );
    assert_eq!(
        api_error(&api, "add_members", json!({"channel": team, "users": []})).await,
        107
    );
    assert_eq!(
        api_error(&api, "add_members", json!({"channel": team, "users": [""]})).await,
        107
    );
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    assert_eq!(
        api_error(&api, "add_members", json!({"channel": team, "users": many})).await,
        106
    );
    let members = api_ok(&api, "members", json!({"channel": team})).await;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(1),
        "nothing stored on refusal"
    );
}

/// Typing: the other subscribed member gets one push per second at most,
/// the typist none.
#[tokio::test]
async fn typing_reaches_the_other_member_at_most_once_a_second() {
    let _turn = SERIAL.lock().await;
    let c = cluster().await;
    let mut alice = connect(&c.a, "alice").await;
    let mut bob = connect(&c.b, "bob").await;
    assert!(subscribe(&mut alice, DM).await.get("error").is_none());
    assert!(subscribe(&mut bob, DM).await.get("error").is_none());
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            rpc(&mut alice, "herald.typing", json!({"channel": DM})).await,
            json!({})
        );
    }
    let t = message_of(&mut bob, "typing", LIMIT)
        .await
        .expect("bob sees alice typing");
    println!(
        "typing reached the other edge after {:?}",
        started.elapsed()
    );
    assert_eq!(
        t,
        json!({"herald": "typing", "channel": DM, "user": "alice"})
    );
    assert!(
        message_of(&mut bob, "typing", Duration::from_millis(500))
            .await
            .is_none(),
        "extra calls within the second are dropped"
    );
    assert!(
        message_of(&mut alice, "typing", Duration::from_millis(100))
            .await
            .is_none(),
        "not to the typist"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    rpc(&mut alice, "herald.typing", json!({"channel": DM})).await;
    assert!(
        message_of(&mut bob, "typing", LIMIT).await.is_some(),
        "the next second's"
    );
}

/// Receipts: the publisher sees the other member's read marker live,
/// coalesced to one per second, and `herald.receipts` pages every member.
#[tokio::test]
async fn receipts_are_live_coalesced_and_paged() {
    let _turn = SERIAL.lock().await;
    let c = cluster().await;
    let mut alice = connect(&c.a, "alice").await;
    let mut bob = connect(&c.b, "bob").await;
    assert!(subscribe(&mut alice, DM).await.get("error").is_none());
    assert!(subscribe(&mut bob, DM).await.get("error").is_none());
    for i in 0..3 {
        publish(&mut bob, DM, json!({ "n": i })).await;
    }
    let started = Instant::now();
    rpc(
        &mut alice,
        "herald.read",
        json!({"channel": DM, "offset": 1}),
    )
    .await;
    rpc(
        &mut alice,
        "herald.read",
        json!({"channel": DM, "offset": 2}),
    )
    .await;
    rpc(
        &mut alice,
        "herald.read",
        json!({"channel": DM, "offset": 3}),
    )
    .await;
    let first = message_of(&mut bob, "receipt", LIMIT)
        .await
        .expect("a receipt");
    let first_at = started.elapsed();
    assert_eq!(
        first,
        json!({"herald": "receipt", "channel": DM, "user": "alice", "read": 1, "delivered": 1})
    );
    let last = message_of(&mut bob, "receipt", LIMIT)
        .await
        .expect("the coalesced receipt");
    let last_at = started.elapsed();
    println!("receipts at {first_at:?} and {last_at:?}");
    assert_eq!(
        last["read"], 3,
        "the latest marker, the one in between coalesced"
    );
    assert!(
        last_at - first_at >= Duration::from_millis(900),
        "at most one per second"
    );
    assert!(
        message_of(&mut bob, "receipt", Duration::from_millis(1200))
            .await
            .is_none()
    );
    let any = message_of(&mut alice, "receipt", Duration::from_millis(500)).await;
    assert!(
        any.is_none(),
        "alice gets neither her own receipts nor receipts for bob's publishes: {any:?}"
    );

    let r = rpc(&mut bob, "herald.receipts", json!({"channel": DM})).await;
    assert_eq!(
        r["receipts"],
        json!([{"user": "alice", "read": 3, "delivered": 3}, {"user": "bob", "read": 3, "delivered": 3}])
    );
    let page = rpc(
        &mut bob,
        "herald.receipts",
        json!({"channel": DM, "limit": 1}),
    )
    .await;
    assert_eq!(page["receipts"][0]["user"], "alice");
    assert_eq!(page["cursor"], "alice");
    let next = rpc(
        &mut bob,
        "herald.receipts",
        json!({"channel": DM, "limit": 1, "after": "alice"}),
    )
    .await;
    assert_eq!(next["receipts"][0]["user"], "bob");
}

/// The conversation list: newest activity first, paged by cursor, with the
/// last message; an incremental sync returns only what changed and the
/// conversations the user was removed from; the same over the sync HTTP
/// API and the server API.
#[tokio::test]
async fn conversation_list_pages_and_syncs_incrementally() {
    let _turn = SERIAL.lock().await;
    let c = cluster().await;
    let api = c.serve.api();
    let mut alice = connect(&c.a, "alice").await;
    // The team first: no message, so its activity is the time alice joined,
    // older than every DM below.
    api_ok(
        &api,
        "add_members",
        json!({"channel": "team", "users": ["alice"]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    for f in ["u1", "u2", "u3", "u4", "u5"] {
        let mut friend = connect(&c.b, f).await;
        publish(
            &mut friend,
            &format!("dm:#alice,{f}"),
            json!({"text": format!("from {f}")}),
        )
        .await;
        friend.ws.close().await;
        // Distinct times: the order is by the last message's time.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past the incremental sync's overlap, so "what changed since" below
    // is only what changes after the full list.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let page = rpc(&mut alice, "herald.conversations", json!({"limit": 2})).await;
    let names = |p: &Value| -> Vec<String> {
        p["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["channel"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page), ["dm:#alice,u5", "dm:#alice,u4"]);
    let first = &page["conversations"][0];
    assert_eq!(
        (
            first["head"].as_u64(),
            first["read"].as_u64(),
            first["unread"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );
    assert_eq!(first["last"]["data"], json!({"text": "from u5"}));
    assert_eq!(first["last"]["offset"], 1);
    assert_eq!(first["last"]["info"]["user"], "u5");
    assert!(first["last"]["time"].as_u64().unwrap() > 0);
    let cursor = page["cursor"].as_str().expect("more pages").to_string();
    let page2 = rpc(
        &mut alice,
        "herald.conversations",
        json!({"limit": 2, "cursor": cursor}),
    )
    .await;
    assert_eq!(names(&page2), ["dm:#alice,u3", "dm:#alice,u2"]);
    let page3 = rpc(
        &mut alice,
        "herald.conversations",
        json!({"limit": 2, "cursor": page2["cursor"]}),
    )
    .await;
    assert_eq!(names(&page3), ["dm:#alice,u1", "team"]);
    assert!(page3.get("cursor").is_none(), "the last page: {page3}");
    let all = rpc(&mut alice, "herald.conversations", json!({"limit": 10})).await;
    assert_eq!(all["conversations"].as_array().unwrap().len(), 6);
    let version = all["version"].as_u64().expect("a version");

    // Offline for a while: u2 writes again, alice leaves the team.
    let mut u2 = connect(&c.b, "u2").await;
    publish(&mut u2, "dm:#alice,u2", json!({"text": "again"})).await;
    api_ok(
        &api,
        "remove_members",
        json!({"channel": "team", "users": ["alice"]}),
    )
    .await;
    let since_version = version;
    let changes = rpc(
        &mut alice,
        "herald.conversations",
        json!({"since": since_version}),
    )
    .await;
    assert_eq!(names(&changes), ["dm:#alice,u2"], "{changes}");
    assert_eq!(changes["conversations"][0]["unread"], 2);
    assert_eq!(changes["removed"], json!(["team"]));

    // The same list over HTTP with alice's token, and for a backend.
    let http = reqwest::Client::new();
    let resp = http
        .get(c.serve.url("/api/v1/users/me/conversations?limit=2"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    println!("GET /api/v1/users/me/conversations?limit=2 -> {body}");
    assert_eq!(names(&body), ["dm:#alice,u2", "dm:#alice,u5"]);
    let resp = http
        .get(c.serve.url("/api/v1/users/me/conversations?limit=0"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status(), 400);
    let resp = http
        .get(c.serve.url("/api/v1/users/me/conversations"))
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status(), 401);
    let backend = api_ok(&api, "conversations", json!({"user": "alice", "limit": 1})).await;
    assert_eq!(names(&backend), ["dm:#alice,u2"]);
    assert!(backend["cursor"].is_string());
}

/// Bad input: 107 for bad fields, 103 for channels the user may not read,
/// 106 past the limits, 108 for unknown methods; nothing stored.
#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let _turn = SERIAL.lock().await;
    let c = cluster().await;
    let mut alice = connect(&c.a, "alice").await;
    let mut bob = connect(&c.a, "bob").await;
    publish(&mut bob, DM, json!({"x": 1})).await;
    for bad in [json!(-1), json!("1"), json!(1.5), Value::Null] {
        assert_eq!(
            rpc_error(
                &mut alice,
                "herald.read",
                json!({"channel": DM, "offset": bad})
            )
            .await,
            107
        );
    }
    assert_eq!(
        rpc_error(&mut alice, "herald.read", json!({"channel": DM})).await,
        107
    );
    assert_eq!(
        rpc_error(
            &mut alice,
            "herald.delivered",
            json!({"channel": "", "offset": 1})
        )
        .await,
        107
    );
    // No history: the status namespace.
    assert_eq!(
        rpc_error(
            &mut alice,
            "herald.read",
            json!({"channel": "status:bob", "offset": 1})
        )
        .await,
        107
    );
    // Not hers, unknown namespace, a group she is not in.
    assert_eq!(
        rpc_error(
            &mut alice,
            "herald.read",
            json!({"channel": "dm:#bob,carol", "offset": 1})
        )
        .await,
        103
    );
    assert_eq!(
        rpc_error(
            &mut alice,
            "herald.read",
            json!({"channel": "nope:x", "offset": 1})
        )
        .await,
        103
    );
    assert_eq!(
        rpc_error(&mut alice, "herald.receipts", json!({"channel": "team"})).await,
        103
    );
    assert_eq!(
        rpc_error(
            &mut alice,
            "herald.conversations",
            json!({"limit": 100_000})
        )
        .await,
        106
    );
    assert_eq!(
        rpc_error(&mut alice, "herald.conversations", json!({"limit": 0})).await,
        107
    );
    assert_eq!(
        rpc_error(&mut alice, "herald.conversations", json!({"cursor": "!!"})).await,
        107
    );
    assert_eq!(
        rpc_error(&mut alice, "herald.conversations", json!({"since": -5})).await,
        107
    );
    assert_eq!(
        rpc_error(
            &mut alice,
            "herald.receipts",
            json!({"channel": DM, "limit": 5000})
        )
        .await,
        106
    );
    assert_eq!(rpc_error(&mut alice, "herald.nope", json!({})).await, 108);
    assert_eq!(rpc_error(&mut alice, "getUser", json!({})).await, 108);
    let r = alice
        .call("rpc", json!({"method": "herald.read", "data": [1, 2]}))
        .await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    // Bob's message made alice a member of the DM; nothing else is hers,
    // and her read marker there did not move.
    let conv = rpc(&mut alice, "herald.conversations", json!({})).await;
    assert_eq!(
        conv["conversations"].as_array().map(Vec::len),
        Some(1),
        "{conv}"
    );
    assert_eq!(conv["conversations"][0]["channel"], DM);
    assert_eq!(conv["conversations"][0]["read"], 0);
    let api = c.serve.api();
    assert_eq!(api_error(&api, "conversations", json!({})).await, 107);
    assert_eq!(api_error(&api, "unread", json!({"user": ""})).await, 107);
    assert_eq!(
        api_error(
            &api,
            "conversations",
            json!({"user": "alice", "cursor": "x"})
        )
        .await,
        107
    );
}

/// The unmodified official JavaScript SDK (`centrifuge` on Node) through
/// `client.rpc`: alice's two devices on two edges, unread, read on one and
/// the `message` event on the other (tests/sdk/conversations_js.mjs).
#[tokio::test]
async fn javascript_sdk_markers_and_unread_through_rpc() {
    let _turn = SERIAL.lock().await;
    let modules = common::tool("node/node_modules");
    common::tool("node/node_modules/centrifuge/package.json");
    let c = cluster().await;
    let ws = |p: &HeraldProcess| format!("ws://{}/connection/websocket", p.addr());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(common::root().join("tests/sdk/conversations_js.mjs"))
            .env("HERALD_NODE_MODULES", &modules)
            .env("HERALD_WS_A", ws(&c.a))
            .env("HERALD_WS_B", ws(&c.b))
            .env("HERALD_TOKEN_ALICE", token("alice"))
            .env("HERALD_TOKEN_BOB", token("bob"))
            .env("HERALD_CHANNEL", DM)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the script finishes within a minute")
    .expect("run the script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("JS SDK report: {report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        report["unreadBefore"],
        json!({"total": 2, "conversations": 1})
    );
    assert_eq!(report["read"]["read"], 2);
    assert_eq!(
        report["marker"],
        json!({"herald": "marker", "channel": DM, "read": 2, "delivered": 2})
    );
    assert_eq!(
        report["unreadAfter"],
        json!({"total": 0, "conversations": 0})
    );
    assert_eq!(report["conversations"], json!([DM]));
}

/// In an open channel (no members: `channel_membership = false`) a client's
/// publish moves the publisher's read marker and lists the channel in their
/// conversations, on the other device too, exactly as in a conversation with
/// members; with `track_publishers = false` it writes no marker, and the
/// channel stays out of the publisher's list until they set one.
#[tokio::test]
async fn a_publish_in_an_open_channel_is_read_for_its_publisher() {
    let _turn = SERIAL.lock().await;
    let nats = TestNats::start().await;
    for track in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let serve = HeraldProcess::start(
            Spec::serve("serve", nats.url(), &dir.path().join("data"))
                .set("channel_history", true)
                .set("channel_track_publishers", track),
        )
        .await;
        let room = format!("room-{track}");
        let mut alice = connect(&serve, "alice").await;
        let mut laptop = connect(&serve, "alice").await;
        let mut bob = connect(&serve, "bob").await;
        assert_eq!(publish(&mut bob, &room, json!({"text": "hi"})).await, 1);
        assert_eq!(
            publish(&mut alice, &room, json!({"text": "hello"})).await,
            2
        );
        let list = rpc(&mut laptop, "herald.conversations", json!({})).await;
        let u = rpc(&mut laptop, "herald.unread", json!({})).await;
        if track {
            assert_eq!(list["conversations"].as_array().map(Vec::len), Some(1));
            let c = &list["conversations"][0];
            assert_eq!(c["channel"], room.as_str());
            assert_eq!(
                (c["read"].as_u64(), c["unread"].as_u64()),
                (Some(2), Some(0))
            );
            assert_eq!(c["last"]["data"], json!({"text": "hello"}));
            assert_eq!(u, json!({"total": 0, "conversations": 0}));
            let m = message_of(&mut laptop, "marker", LIMIT)
                .await
                .expect("the other device hears of the publisher's marker");
            assert_eq!(
                (m["channel"].as_str(), m["read"].as_u64()),
                (Some(room.as_str()), Some(2))
            );
            // bob published first and has not read alice's message.
            let b = rpc(&mut bob, "herald.unread", json!({})).await;
            assert_eq!(b, json!({"total": 1, "conversations": 1}));
        } else {
            assert_eq!(list["conversations"], json!([]), "no marker written");
            assert_eq!(u, json!({"total": 0, "conversations": 0}));
            // Setting a marker lists it; the publisher's own message counts
            // as unread until then, as documented.
            let r = rpc(
                &mut alice,
                "herald.read",
                json!({"channel": room, "offset": 1}),
            )
            .await;
            assert_eq!(r["unread"], 1);
            let u = rpc(&mut laptop, "herald.unread", json!({})).await;
            assert_eq!(u, json!({"total": 1, "conversations": 1}));
        }
    }
}
