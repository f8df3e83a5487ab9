//! Black-box tests of one Herald node end to end: real nats-server, real
//! WebSocket clients speaking protocol v2, real HTTP.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::node::{TestHerald, test_config};
use common::process::metric_value;
use common::ws::WsClient;
use common::{TestNats, eventually};
use serde_json::{Value, json};

async fn node() -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let herald = TestHerald::start(test_config(&nats, dir.path().join("data"))).await;
    (nats, dir, herald)
}

/// Every stored publication of a channel, read through the server API.
async fn stored(h: &TestHerald, channel: &str, limit: usize) -> Vec<Value> {
    let r = h
        .api("history", json!({"channel": channel, "limit": limit}))
        .await;
    r["result"]["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn two_users_chat_in_a_user_limited_channel() {
    let (_nats, _dir, h) = node().await;
    let ch = "dm:#alice,bob";
    let (mut alice, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let (mut bob, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    let (mut eve, _) = WsClient::connect(h.addr, &h.token("eve")).await;

    for c in [&mut alice, &mut bob] {
        let r = c.call("subscribe", json!({"channel": ch})).await;
        assert_eq!(r["subscribe"]["recoverable"], true, "{r}");
    }
    let denied = eve.call("subscribe", json!({"channel": ch})).await;
    assert_eq!(denied["error"]["code"], 103, "{denied}");
    let denied = eve
        .call("publish", json!({"channel": ch, "data": {"text": "hi"}}))
        .await;
    assert_eq!(denied["error"]["code"], 103, "{denied}");

    let r = alice
        .call(
            "publish",
            json!({"channel": ch, "data": {"text": "hi bob"}}),
        )
        .await;
    assert_eq!(r["publish"]["offset"], 1, "{r}");
    let epoch = r["publish"]["epoch"].as_str().expect("epoch").to_string();
    assert!(!epoch.is_empty());
    let p = bob.publication(ch).await;
    assert_eq!(p["data"]["text"], "hi bob");
    assert_eq!(p["offset"], 1);
    assert_eq!(p["info"]["user"], "alice");
    let p = alice.publication(ch).await;
    assert_eq!(p["offset"], 1, "the publisher receives its own message too");

    let r = bob
        .call(
            "publish",
            json!({"channel": ch, "data": {"text": "hi alice"}}),
        )
        .await;
    assert_eq!(r["publish"]["offset"], 2);
    assert_eq!(r["publish"]["epoch"], epoch.as_str());
    let p = alice.publication(ch).await;
    assert_eq!(p["data"]["text"], "hi alice");
    assert_eq!(p["info"]["user"], "bob");
    assert!(
        eve.nothing_for(Duration::from_millis(200)).await,
        "eve got nothing"
    );

    let history = alice
        .call("history", json!({"channel": ch, "limit": 10}))
        .await;
    let pubs = history["history"]["publications"].as_array().expect("pubs");
    assert_eq!(pubs.len(), 2);
    assert_eq!(history["history"]["offset"], 2);
    assert_eq!(history["history"]["epoch"], epoch.as_str());
}

/// As in Centrifugo, a history channel with no publication yet answers with
/// an epoch, and it is the epoch its first publication gets: a client that
/// subscribed to it empty recovers from (0, that epoch) later.
#[tokio::test]
async fn an_empty_history_channel_has_the_epoch_its_first_publication_gets() {
    let (_nats, _dir, h) = node().await;
    let ch = "fresh-news";
    let (mut alice, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = alice.call("subscribe", json!({"channel": ch})).await;
    let epoch = r["subscribe"]["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch for an empty channel: {r}"))
        .to_string();
    assert_eq!(epoch.len(), 8, "{r}");
    let history = alice
        .call("history", json!({"channel": ch, "limit": 10}))
        .await;
    assert_eq!(history["history"]["epoch"], epoch.as_str(), "{history}");
    let api = h.api("history", json!({"channel": ch, "limit": 10})).await;
    assert_eq!(api["result"]["epoch"], epoch.as_str(), "{api}");

    let published = h
        .api("publish", json!({"channel": ch, "data": {"n": 1}}))
        .await;
    assert_eq!(published["result"]["epoch"], epoch.as_str(), "{published}");
    let p = alice.publication(ch).await;
    assert_eq!(p["offset"], 1, "{p}");

    let (mut bob, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    let r = bob
        .call(
            "subscribe",
            json!({"channel": ch, "recover": true, "offset": 0, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(r["subscribe"]["epoch"], epoch.as_str(), "{r}");
    let pubs = r["subscribe"]["publications"]
        .as_array()
        .expect("publications");
    assert_eq!(pubs.len(), 1, "{r}");
    assert_eq!(pubs[0]["data"], json!({"n": 1}), "{r}");
}

/// A client frame many times the connection's read buffer (and several
/// commands in one frame) is read across several socket reads and arrives
/// whole.
#[tokio::test]
async fn frames_larger_than_the_read_buffer_arrive_whole() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(&nats, dir.path().join("data"));
    let read_buffer = config.client.read_buffer_size;
    let h = TestHerald::start(config).await;
    let ch = "big-frames";
    let (mut reader, _) = WsClient::connect(h.addr, &h.token("reader")).await;
    let (mut writer, _) = WsClient::connect(h.addr, &h.token("writer")).await;
    reader.call("subscribe", json!({"channel": ch})).await;

    // 40 KiB of varied text: a misplaced chunk would not compare equal.
    let text: String = (0..40 * 1024)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    assert!(
        text.len() > 20 * read_buffer,
        "the frame must span many reads"
    );
    let r = writer
        .call("publish", json!({"channel": ch, "data": {"text": text}}))
        .await;
    assert_eq!(r["publish"]["offset"], 1, "{r}");
    let p = reader.publication(ch).await;
    assert_eq!(p["data"]["text"].as_str(), Some(text.as_str()));

    // Many commands in one frame, the frame well past the read buffer.
    let commands: Vec<String> = (0..40)
        .map(|i| {
            json!({"id": 100 + i, "publish": {"channel": ch, "data": {"i": i, "pad": "p".repeat(100)}}})
                .to_string()
        })
        .collect();
    let frame = commands.join("\n");
    assert!(frame.len() > 4 * read_buffer);
    writer.send_text(&frame).await;
    for i in 0..40u64 {
        let p = reader.publication(ch).await;
        assert_eq!(p["data"]["i"], i, "{p}");
        assert_eq!(p["offset"], i + 2);
    }
}

#[tokio::test]
async fn concurrent_publishers_get_dense_offsets() {
    let (_nats, _dir, h) = node().await;
    let ch = "load".to_string();
    let mut tasks = Vec::new();
    for publisher in 0..4 {
        let (mut c, _) = WsClient::connect(h.addr, &h.token(&format!("p{publisher}"))).await;
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..500 {
                let r = c
                    .call(
                        "publish",
                        json!({"channel": ch, "data": {"p": publisher, "i": i}}),
                    )
                    .await;
                offsets.push((r["publish"]["offset"].as_u64().expect("offset"), i));
            }
            offsets
        }));
    }
    let mut all = BTreeSet::new();
    let mut replies = Vec::new();
    for (publisher, t) in tasks.into_iter().enumerate() {
        for (offset, i) in t.await.expect("publisher task") {
            assert!(all.insert(offset), "offset {offset} given twice");
            replies.push((offset, publisher, i));
        }
    }
    assert_eq!(all, (1..=2000).collect::<BTreeSet<u64>>());
    let pubs = stored(&h, &ch, 1000).await;
    let mut more = h
        .api(
            "history",
            json!({"channel": ch, "limit": 1000, "since": {"offset": 1000}}),
        )
        .await["result"]["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut pubs = pubs;
    pubs.append(&mut more);
    assert_eq!(pubs.len(), 2000);
    for (n, p) in pubs.iter().enumerate() {
        assert_eq!(
            p["offset"],
            n as u64 + 1,
            "stored offsets are exactly 1..2000"
        );
    }
    for (offset, publisher, i) in replies {
        let p = &pubs[offset as usize - 1];
        assert_eq!(
            p["data"]["p"], publisher,
            "reply offset {offset} names the stored message"
        );
        assert_eq!(p["data"]["i"], i);
    }
}

#[tokio::test]
async fn reconnecting_client_recovers_exactly_what_it_missed() {
    let (_nats, _dir, h) = node().await;
    let ch = "news";
    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = c.call("subscribe", json!({"channel": ch})).await;
    assert_eq!(r["subscribe"]["recoverable"], true);
    for i in 0..3 {
        h.api("publish", json!({"channel": ch, "data": {"i": i}}))
            .await;
    }
    let mut last = Value::Null;
    for _ in 0..3 {
        last = c.publication(ch).await;
    }
    let offset = last["offset"].as_u64().expect("offset");
    assert_eq!(offset, 3);
    let epoch = h.api("history", json!({"channel": ch, "limit": 0})).await["result"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    c.close().await;

    for i in 0..50 {
        let r = h
            .api("publish", json!({"channel": ch, "data": {"missed": i}}))
            .await;
        assert_eq!(r["result"]["offset"], 4 + i);
    }

    let (mut c, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": ch, "recover": true, "offset": offset, "epoch": epoch}),
        )
        .await;
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], true, "{r}");
    assert_eq!(s["was_recovering"], true);
    assert_eq!(
        s["positioned"], true,
        "a history subscription is positioned"
    );
    // As Centrifugo: the offset the client recovered from.
    assert_eq!(s["offset"], offset);
    let pubs = s["publications"]
        .as_array()
        .expect("recovered publications");
    assert_eq!(pubs.len(), 50);
    for (i, p) in pubs.iter().enumerate() {
        assert_eq!(p["offset"], 4 + i as u64);
        assert_eq!(p["data"]["missed"], i as u64);
    }
    // Live delivery continues right after the recovered ones.
    h.api("publish", json!({"channel": ch, "data": "after"}))
        .await;
    let p = c.publication(ch).await;
    assert_eq!(p["offset"], 54);
    assert_eq!(p["data"], "after");
}

#[tokio::test]
async fn recovery_past_the_limit_is_not_recovered() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    config.client.recovery_limit = 5;
    let h = TestHerald::start(config).await;
    for i in 0..10 {
        h.api("publish", json!({"channel": "c", "data": i})).await;
    }
    let (mut c, _) = WsClient::connect(h.addr, &h.token("u")).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "c", "recover": true, "offset": 2}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], serde_json::Value::Null, "{r}");
    assert_eq!(r["subscribe"]["offset"], 10);
    assert!(r["subscribe"].get("publications").is_none());
    c.call("unsubscribe", json!({"channel": "c"})).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "c", "recover": true, "offset": 6}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(
        r["subscribe"]["publications"].as_array().map(Vec::len),
        Some(4)
    );
}

/// Issue 19 e: a position above the head in the same epoch is not a
/// recovered one (the publications head+1..offset would be skipped when they
/// arrive): the reply says not recovered, at the head.
#[tokio::test]
async fn recovery_from_above_the_head_is_not_recovered() {
    let (_nats, _dir, h) = node().await;
    for i in 0..3 {
        h.api("publish", json!({"channel": "c", "data": i})).await;
    }
    let (mut c, _) = WsClient::connect(h.addr, &h.token("u")).await;
    let r = c.call("subscribe", json!({"channel": "c"})).await;
    let epoch = r["subscribe"]["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(r["subscribe"]["offset"], 3, "{r}");
    c.call("unsubscribe", json!({"channel": "c"})).await;
    let r = c
        .call(
            "subscribe",
            json!({"channel": "c", "recover": true, "offset": 8, "epoch": epoch}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], serde_json::Value::Null, "{r}");
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert_eq!(r["subscribe"]["offset"], 3, "{r}");
    // The next publication (offset 4) is delivered, not dropped.
    h.api("publish", json!({"channel": "c", "data": "next"}))
        .await;
    let p = c.publication("c").await;
    assert_eq!(p["offset"], 4, "{p}");
}

#[tokio::test]
async fn restart_keeps_history_and_offsets_continue() {
    let (_nats, _dir, mut h) = node().await;
    for i in 0..5 {
        let r = h
            .api("publish", json!({"channel": "keep", "data": i}))
            .await;
        assert_eq!(r["result"]["offset"], i + 1);
    }
    let epoch = h
        .api("history", json!({"channel": "keep", "limit": 0}))
        .await["result"]["epoch"]
        .clone();
    h.restart().await;
    let r = h
        .api("publish", json!({"channel": "keep", "data": 5}))
        .await;
    assert_eq!(r["result"]["offset"], 6, "{r}");
    assert_eq!(r["result"]["epoch"], epoch);
    let pubs = stored(&h, "keep", 100).await;
    assert_eq!(pubs.len(), 6);
    for (i, p) in pubs.iter().enumerate() {
        assert_eq!(p["data"], i as u64);
    }
}

#[tokio::test]
async fn api_publish_to_personal_channel_reaches_every_device() {
    let (_nats, _dir, h) = node().await;
    let (mut phone, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let (mut laptop, _) = WsClient::connect(h.addr, &h.token("alice")).await;
    let (mut bob, _) = WsClient::connect(h.addr, &h.token("bob")).await;
    for c in [&mut phone, &mut laptop] {
        let r = c.call("subscribe", json!({"channel": "#alice"})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
    }
    let r = bob.call("subscribe", json!({"channel": "#alice"})).await;
    assert_eq!(r["error"]["code"], 103);
    let r = phone
        .call("publish", json!({"channel": "#alice", "data": 1}))
        .await;
    assert_eq!(
        r["error"]["code"], 103,
        "clients may not publish into a personal channel"
    );

    let r = h
        .api(
            "publish",
            json!({"channel": "#alice", "data": {"notify": "ping"}}),
        )
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    for c in [&mut phone, &mut laptop] {
        let p = c.publication("#alice").await;
        assert_eq!(p["data"]["notify"], "ping");
        assert_eq!(p["offset"], 1);
    }
}

#[tokio::test]
async fn token_channels_claim_makes_server_side_subscriptions() {
    let (_nats, _dir, h) = node().await;
    let exp = herald::auth::now_secs() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "carol", "exp": exp, "channels": ["#carol", "alerts", "$vip"]}),
        &jsonwebtoken::EncodingKey::from_secret(common::node::SECRET.as_bytes()),
    )
    .expect("token");
    let (mut c, reply) = WsClient::connect(h.addr, &token).await;
    let subs = &reply["connect"]["subs"];
    assert_eq!(subs["#carol"]["recoverable"], true, "{reply}");
    assert_eq!(subs["alerts"]["recoverable"], true, "{reply}");
    h.api("publish", json!({"channel": "alerts", "data": "fire"}))
        .await;
    let p = c.publication("alerts").await;
    assert_eq!(p["data"], "fire");
}

#[tokio::test]
async fn private_channel_needs_a_subscription_token() {
    let (_nats, _dir, h) = node().await;
    let (mut c, _) = WsClient::connect(h.addr, &h.token("dave")).await;
    let r = c.call("subscribe", json!({"channel": "$board"})).await;
    assert_eq!(r["error"]["code"], 103);
    let r = c
        .call(
            "subscribe",
            json!({"channel": "$board", "token": h.sub_token("dave", "$board")}),
        )
        .await;
    assert_eq!(r["subscribe"]["expires"], true, "{r}");
    assert!(r["subscribe"]["ttl"].as_u64().expect("ttl") > 3000);
    let r = c
        .call(
            "sub_refresh",
            json!({"channel": "$board", "token": h.sub_token("dave", "$board")}),
        )
        .await;
    assert_eq!(r["sub_refresh"]["expires"], true, "{r}");
    let r = c
        .call("publish", json!({"channel": "$board", "data": "x"}))
        .await;
    assert_eq!(r["publish"]["offset"], 1, "{r}");
    // An expired token: an empty answer, the subscription keeps its expiry.
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "dave", "channel": "$board", "exp": herald::auth::now_secs() - 60}),
        &jsonwebtoken::EncodingKey::from_secret(common::node::SECRET.as_bytes()),
    )
    .expect("token");
    let r = c
        .call(
            "sub_refresh",
            json!({"channel": "$board", "token": expired}),
        )
        .await;
    assert_eq!(r["sub_refresh"], json!({}), "{r}");
    // A token of another user ends the connection (3500), as Centrifugo.
    c.send(
        "subscribe",
        json!({"channel": "$other", "token": h.sub_token("someone-else", "$other")}),
    )
    .await;
    assert_eq!(c.closed().await.code, 3500);
}

#[tokio::test]
async fn ephemeral_namespace_delivers_without_offsets() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    let mut live = config.channels.default.clone();
    live.history = false;
    config.channels.namespaces.insert("live".into(), live);
    let h = TestHerald::start(config).await;
    let (mut a, _) = WsClient::connect(h.addr, &h.token("a")).await;
    let (mut b, _) = WsClient::connect(h.addr, &h.token("b")).await;
    let r = a.call("subscribe", json!({"channel": "live:scores"})).await;
    assert!(r["subscribe"].get("recoverable").is_none(), "{r}");
    assert!(r["subscribe"].get("positioned").is_none(), "{r}");
    // Asking to recover where there is no history: only `was_recovering`.
    let r = b
        .call(
            "subscribe",
            json!({"channel": "live:other", "recover": true, "offset": 3, "epoch": "e"}),
        )
        .await;
    assert_eq!(r["subscribe"], json!({"was_recovering": true}), "{r}");
    let r = b
        .call(
            "publish",
            json!({"channel": "live:scores", "data": {"goal": 1}}),
        )
        .await;
    assert_eq!(r["publish"], json!({}), "{r}");
    let p = a.publication("live:scores").await;
    assert_eq!(p["data"]["goal"], 1);
    assert!(p.get("offset").is_none());
    let r = a.call("history", json!({"channel": "live:scores"})).await;
    assert_eq!(r["error"]["code"], 108);
}

#[tokio::test]
async fn refresh_extends_the_connection() {
    let (_nats, _dir, h) = node().await;
    let (mut c, reply) = WsClient::connect(h.addr, &h.token("erin")).await;
    assert_eq!(reply["connect"]["expires"], true);
    assert_eq!(reply["connect"]["pong"], true);
    assert_eq!(reply["connect"]["ping"], 25);
    let r = c.call("refresh", json!({"token": h.token("erin")})).await;
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    // Centrifugo's reply is {expires, ttl} only.
    assert!(r["refresh"].get("client").is_none(), "{r}");
    assert!(r["refresh"].get("version").is_none(), "{r}");
    // A token of another user on refresh ends the connection.
    c.send("refresh", json!({"token": h.token("mallory")}))
        .await;
    let closed = c.closed().await;
    assert_eq!(closed.code, 3500);
    // An expired token on refresh ends it too, as expired (3005).
    let (mut c, _) = WsClient::connect(h.addr, &h.token("erin")).await;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "erin", "exp": herald::auth::now_secs() - 60}),
        &jsonwebtoken::EncodingKey::from_secret(common::node::SECRET.as_bytes()),
    )
    .expect("token");
    c.send("refresh", json!({"token": expired})).await;
    assert_eq!(c.closed().await.code, 3005);
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let (_nats, _dir, h) = node().await;
    let health: Value = reqwest::get(h.url("/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let (_c, _) = WsClient::connect(h.addr, &h.token("m")).await;
    let text = eventually(
        "metrics show the connection",
        Duration::from_secs(5),
        || async {
            let t = reqwest::get(h.url("/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            // Every series exists from startup at zero: wait for the
            // connection to be counted, not for the name to show.
            let connects = metric_value(&t, "herald_edge_connects_total", &[])?;
            (connects >= 1.0).then_some(t)
        },
    )
    .await;
    let open = metric_value(&text, "herald_edge_connections", &[]).expect("connections gauge");
    assert!(
        open >= 1.0,
        "connections gauge {open} with a client connected"
    );
}

#[tokio::test]
async fn graceful_stop_closes_clients_with_shutdown_3001() {
    let (_nats, _dir, mut h) = node().await;
    let (mut c, _) = WsClient::connect(h.addr, &h.token("zed")).await;
    c.call("subscribe", json!({"channel": "bye"})).await;
    let stopping = tokio::spawn(async move {
        h.stop().await;
        h
    });
    let closed = c.closed().await;
    assert_eq!(closed.code, 3001, "{closed:?}");
    assert_eq!(closed.reason, "shutdown");
    stopping.await.expect("stop finished");
}

/// A writer whose durable consumers are deleted under it opens them again:
/// publishes are stored and answered rather than timing out for as long as
/// the process lives.
#[tokio::test]
async fn a_writer_whose_consumers_are_deleted_opens_them_again() {
    let (nats, _dir, h) = node().await;
    let first = h
        .api("publish", json!({"channel": "pull-a", "data": {"n": 0}}))
        .await;
    assert!(first.get("error").is_none(), "{first}");
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js
        .get_stream(herald::bus::subjects::INGEST_STREAM)
        .await
        .expect("ingest stream");
    for p in 0..4 {
        let name = herald::bus::subjects::writer_consumer(p);
        stream
            .delete_consumer(&name)
            .await
            .expect("delete consumer");
    }
    // Every partition gets a publish: channels spread over all four.
    for i in 0..12 {
        let channel = format!("pull-{i}");
        let key = format!("k-{i}");
        let stored = eventually("the publish stored", Duration::from_secs(60), || {
            let (h, channel, key) = (&h, channel.clone(), key.clone());
            async move {
                let r = h
                    .api(
                        "publish",
                        json!({"channel": channel, "data": {"n": i}, "idempotency_key": key}),
                    )
                    .await;
                r.get("result")
                    .filter(|r| r.get("offset").is_some())
                    .cloned()
            }
        })
        .await;
        assert_eq!(stored["offset"], 1, "{channel}: {stored}");
    }
}

/// `ingest_format`: the default binary form, and the JSON form a node sends
/// during a rolling upgrade whose writers predate the binary form; a
/// writer stores either (the message on `herald.in.*` is tapped with a core
/// NATS subscription).
#[tokio::test]
async fn both_ingest_formats_are_published_and_stored() {
    use futures::StreamExt;
    use herald::bus::ingest::{INGEST_BINARY_V1, IngestFormat};
    for (format, first_byte) in [
        (IngestFormat::Binary, INGEST_BINARY_V1),
        (IngestFormat::Json, b'{'),
    ] {
        let nats = TestNats::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(&nats, dir.path().join("data"));
        config.ingest.format = format;
        let h = TestHerald::start(config).await;
        let tap_client = nats.client().await;
        let mut tap = tap_client
            .subscribe(herald::bus::subjects::ingest_wildcard())
            .await
            .expect("tap");
        // A round trip on the tap's connection: once its own message comes
        // back, the server has processed the SUB before it (flush alone
        // only writes it out).
        let mut ready = tap_client.subscribe("tap.ready").await.expect("ready");
        tap_client
            .publish("tap.ready", "".into())
            .await
            .expect("ready publish");
        tokio::time::timeout(Duration::from_secs(5), ready.next())
            .await
            .expect("the tap's round trip within 5 s")
            .expect("ready open");
        let r = h
            .api("publish", json!({"channel": "room", "data": {"n": 1}}))
            .await;
        assert_eq!(r["result"]["offset"], 1, "{format:?}: {r}");
        let msg = tokio::time::timeout(Duration::from_secs(5), tap.next())
            .await
            .unwrap_or_else(|_| panic!("{format:?}: no ingest message within 5 s"))
            .expect("tap open");
        assert_eq!(msg.payload[0], first_byte, "{format:?}");
        let decoded = herald::bus::ingest::IngestMessage::decode(&msg.payload).expect("decodes");
        assert_eq!(decoded.channel, "room");
        let history = h
            .api("history", json!({"channel": "room", "limit": 10}))
            .await;
        let pubs = history["result"]["publications"]
            .as_array()
            .expect("publications");
        assert_eq!(pubs.len(), 1, "{format:?}: {history}");
        assert_eq!(pubs[0]["data"], json!({"n": 1}), "{format:?}");
    }
}
