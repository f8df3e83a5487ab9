//! The Protobuf client protocol (WebSocket subprotocol `centrifuge-protobuf`)
//! over real sockets, against a real nats-server: replies and pushes in
//! binary frames, JSON and Protobuf clients sharing a channel (payloads are
//! carried byte for byte), server pings, recovery after a network cut, and
//! bad binary input closing only its own connection; and, against
//! Centrifugo, why Herald refuses non-JSON `data`. The official SDKs run over
//! Protobuf in tests/sdk.rs, the conformance scripts in tests/conformance.rs.

mod common;

use std::time::Duration;

use common::TestNats;
use common::centrifugo::TestCentrifugo;
use common::node::{SECRET, TestHerald, test_config};
use common::proxy::Proxy;
use common::ws::WsClient;
use herald_client::protobuf::pb;
use prost::Message;
use serde_json::{Value, json};

async fn node(
    configure: impl FnOnce(&mut herald::config::Config),
) -> (TestNats, tempfile::TempDir, TestHerald) {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&nats, dir.path().join("data"));
    configure(&mut config);
    let h = TestHerald::start(config).await;
    (nats, dir, h)
}

/// One length-delimited `Command`.
fn command(c: &pb::Command) -> Vec<u8> {
    c.encode_length_delimited_to_vec()
}

#[tokio::test]
async fn protobuf_and_json_clients_share_a_channel_byte_for_byte() {
    let (_nats, _dir, h) = node(|c| {
        c.channels.default.presence = true;
        c.channels.default.join_leave = true;
    })
    .await;
    let (mut pbc, connected) = WsClient::connect_protobuf(h.addr, &h.token("alice")).await;
    assert!(
        connected["connect"]["client"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{connected}"
    );
    assert!(
        connected["connect"]["ping"].as_u64() > Some(0),
        "{connected}"
    );
    assert_eq!(connected["connect"]["pong"], true, "{connected}");
    let (mut json_client, _) = WsClient::connect(h.addr, &h.token("bob")).await;

    let sub = pbc
        .call("subscribe", json!({"channel": "news", "join_leave": true}))
        .await;
    assert_eq!(sub["subscribe"]["recoverable"], true, "{sub}");
    json_client
        .call("subscribe", json!({"channel": "news"}))
        .await;
    loop {
        let push = pbc.push().await;
        if push["join"]["info"]["user"] == "bob" {
            break;
        }
    }

    // Protobuf publishes JSON text as bytes: the JSON client gets that JSON.
    let r = pbc
        .call(
            "publish",
            json!({"channel": "news", "data": {"from": "pb", "n": 1.50}}),
        )
        .await;
    assert!(
        r.get("error").is_none() && r.get("publish").is_some(),
        "{r}"
    );
    let p = json_client.publication("news").await;
    assert_eq!(p["data"], json!({"from": "pb", "n": 1.5}), "{p}");
    assert_eq!(p["offset"], 1);
    assert_eq!(p["info"]["user"], "alice");
    let mine = pbc.publication("news").await;
    assert_eq!(mine["offset"], 1);

    // The JSON client's payload reaches the Protobuf client as its exact text.
    json_client
        .send_text(r#"{"id":9,"publish":{"channel":"news","data":{"b": [1, 2.0]}}}"#)
        .await;
    let frame = loop {
        let f = pbc.recv().await.expect("a frame");
        if let Some(p) = f
            .replies()
            .iter()
            .find_map(|r| r.push.as_ref()?.r#pub.clone())
        {
            break p;
        }
    };
    assert_eq!(&frame.data[..], br#"{"b": [1, 2.0]}"#, "not re-encoded");
    assert_eq!(frame.offset, 2);
    assert_eq!(frame.info.expect("info").user, "bob");
    let history = pbc
        .call("history", json!({"channel": "news", "limit": 10}))
        .await;
    let pubs = history["history"]["publications"].as_array().expect("pubs");
    let data: Vec<&Value> = pubs.iter().map(|p| &p["data"]).collect();
    assert_eq!(
        data,
        [&json!({"from": "pb", "n": 1.5}), &json!({"b": [1, 2.0]})],
        "{history}"
    );
    assert!(
        history["history"]["epoch"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );

    let presence = pbc.call("presence", json!({"channel": "news"})).await;
    let users: Vec<&str> = presence["presence"]["presence"]
        .as_object()
        .expect("presence")
        .values()
        .filter_map(|i| i["user"].as_str())
        .collect();
    assert_eq!(users.len(), 2, "{presence}");
    let stats = pbc.call("presence_stats", json!({"channel": "news"})).await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );

    // Several commands in one frame; their replies, queued together, come
    // back as length-delimited replies back to back (no separator).
    let frame: Vec<u8> = (100..120)
        .flat_map(|id| {
            command(&pb::Command {
                id,
                history: Some(pb::HistoryRequest {
                    channel: "news".into(),
                    ..pb::HistoryRequest::default()
                }),
                ..pb::Command::default()
            })
        })
        .collect();
    pbc.send_binary(frame).await;
    for id in 100..120 {
        assert_eq!(pbc.reply(id).await["history"]["offset"], 2);
    }

    // A server API publication and an error reply, over Protobuf.
    h.api("publish", json!({"channel": "news", "data": {"api": true}}))
        .await;
    assert_eq!(pbc.publication("news").await["data"], json!({"api": true}));
    let denied = pbc.call("subscribe", json!({"channel": "#carol"})).await;
    assert_eq!(denied["error"]["code"], 103, "{denied}");
    let left = pbc.call("unsubscribe", json!({"channel": "news"})).await;
    assert_eq!(left["unsubscribe"], json!({}), "{left}");
}

/// Centrifugo's `data` is bytes: Herald keeps payloads as JSON, so a
/// Protobuf `publish` whose data is not JSON gets error 107 and stores
/// nothing (docs/compatibility.md, `protobuf-binary-data`); the connection
/// stays open.
#[tokio::test]
async fn non_json_data_from_a_protobuf_client_is_a_bad_request() {
    let (_nats, _dir, h) = node(|_| {}).await;
    let (mut c, _) = WsClient::connect_protobuf(h.addr, &h.token("alice")).await;
    c.call("subscribe", json!({"channel": "bin"})).await;
    c.send_binary(command(&pb::Command {
        id: 50,
        publish: Some(pb::PublishRequest {
            channel: "bin".into(),
            data: bytes::Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
        }),
        ..pb::Command::default()
    }))
    .await;
    let r = c.reply(50).await;
    assert_eq!(r["error"]["code"], 107, "{r}");
    let history = c
        .call("history", json!({"channel": "bin", "limit": 10}))
        .await;
    assert_eq!(history["history"]["publications"], json!([]), "{history}");
}

/// Why Herald refuses non-JSON data (the test above): Centrifugo accepts it
/// from a Protobuf client and then closes every JSON subscriber that would
/// receive it with 3506 (inappropriate protocol, terminal).
#[tokio::test]
async fn centrifugo_closes_json_subscribers_on_non_json_data() {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let centrifugo = TestCentrifugo::start(&test_config(&nats, dir.path().join("data")), &[]).await;
    let token = herald::auth::mint(SECRET, "alice", None, Duration::from_secs(3600));
    let (mut json_client, _) = WsClient::connect(centrifugo.addr, &token).await;
    json_client
        .call("subscribe", json!({"channel": "bin"}))
        .await;
    let (mut pbc, _) = WsClient::connect_protobuf(centrifugo.addr, &token).await;
    pbc.send_binary(command(&pb::Command {
        id: 5,
        publish: Some(pb::PublishRequest {
            channel: "bin".into(),
            data: bytes::Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]),
        }),
        ..pb::Command::default()
    }))
    .await;
    assert_eq!(pbc.reply(5).await, json!({"id": 5, "publish": {}}));
    let closed = json_client.closed().await;
    assert_eq!(closed.code, 3506, "{closed:?}");
}

/// The server's pings are empty `Reply`s, answered with empty `Command`s:
/// a Protobuf client that answers stays connected past several pings; one
/// that does not is closed with 3012 (no pong).
#[tokio::test]
async fn pings_and_pongs_over_protobuf() {
    let (_nats, _dir, h) = node(|c| {
        c.client.ping_interval = Duration::from_millis(300);
        c.client.pong_timeout = Duration::from_millis(200);
    })
    .await;
    let (mut answers, _) = WsClient::connect_protobuf(h.addr, &h.token("a")).await;
    let (mut silent, _) = WsClient::connect_protobuf(h.addr, &h.token("b")).await;
    silent.auto_pong = false;
    assert!(answers.nothing_for(Duration::from_millis(1500)).await);
    assert!(
        answers.pings_seen >= 3,
        "pings seen: {}",
        answers.pings_seen
    );
    assert_eq!(silent.closed().await.code, 3012);
    let r = answers
        .call("history", json!({"channel": "pinged", "limit": 0}))
        .await;
    assert_eq!(r["history"]["offset"], 0, "still answering: {r}");
}

/// A Protobuf client loses its network (the connection is cut, no close
/// frame) while the backend publishes; it reconnects and recovers exactly
/// what it missed, then receives live publications again.
#[tokio::test]
async fn recovery_after_a_cut_over_protobuf() {
    let (_nats, _dir, h) = node(|_| {}).await;
    let proxy = Proxy::start(h.addr).await;
    let (mut c, _) = WsClient::connect_protobuf(proxy.addr, &h.token("alice")).await;
    let sub = c.call("subscribe", json!({"channel": "feed"})).await;
    assert!(sub.get("error").is_none(), "{sub}");
    h.api("publish", json!({"channel": "feed", "data": {"n": 0}}))
        .await;
    let first = c.publication("feed").await;
    assert_eq!(first["offset"], 1);
    let epoch = h
        .api("history", json!({"channel": "feed", "limit": 0}))
        .await["result"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();

    proxy.cut();
    let closed = c.closed().await;
    assert_eq!(
        closed.code, 1006,
        "the cut gives no close frame: {closed:?}"
    );
    for n in 1..=5 {
        h.api("publish", json!({"channel": "feed", "data": {"n": n}}))
            .await;
    }
    proxy.restore();

    let (mut c, _) = WsClient::connect_protobuf(proxy.addr, &h.token("alice")).await;
    let rec = c
        .call(
            "subscribe",
            json!({"channel": "feed", "recover": true, "offset": 1, "epoch": epoch}),
        )
        .await;
    let s = &rec["subscribe"];
    assert_eq!(s["recovered"], true, "{rec}");
    assert_eq!(s["was_recovering"], true, "{rec}");
    assert_eq!(s["epoch"], epoch.as_str(), "{rec}");
    let pubs = s["publications"]
        .as_array()
        .expect("recovered publications");
    let offsets: Vec<u64> = pubs.iter().filter_map(|p| p["offset"].as_u64()).collect();
    assert_eq!(offsets, [2, 3, 4, 5, 6], "{rec}");
    let data: Vec<Value> = pubs.iter().map(|p| p["data"].clone()).collect();
    assert_eq!(data, (1..=5).map(|n| json!({"n": n})).collect::<Vec<_>>());
    h.api("publish", json!({"channel": "feed", "data": {"n": 6}}))
        .await;
    let live = c.publication("feed").await;
    assert_eq!(
        (live["offset"].clone(), live["data"].clone()),
        (json!(7), json!({"n": 6}))
    );
}

/// Bad binary input closes its own connection with the protocol's code
/// (3501 bad request; 1009 over the size limit), never panics, and harms no
/// other connection: a Protobuf bystander keeps receiving. As in
/// Centrifugo, the frame's type does not matter, its bytes are read in the
/// connection's encoding.
#[tokio::test]
async fn bad_binary_input_closes_only_its_connection() {
    let (_nats, _dir, h) = node(|c| c.client.message_size_limit = 1024).await;
    let (mut bystander, _) = WsClient::connect_protobuf(h.addr, &h.token("bystander")).await;
    bystander
        .call("subscribe", json!({"channel": "watch"}))
        .await;

    let publish = command(&pb::Command {
        id: 2,
        publish: Some(pb::PublishRequest {
            channel: "watch".into(),
            data: bytes::Bytes::from_static(b"1"),
        }),
        ..pb::Command::default()
    });
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", vec![0xff; 16], 3501),
        ("a truncated length varint", vec![0x80], 3501),
        ("a length past the end", vec![0x20, 0x08, 0x01], 3501),
        (
            "a truncated command",
            publish[..publish.len() - 2].to_vec(),
            3501,
        ),
        ("an invalid field", vec![0x02, 0x0f, 0x00], 3501),
        ("an empty frame", vec![], 3501),
        (
            "over the size limit",
            [publish.clone(), vec![0x00; 2000]].concat(),
            1009,
        ),
        (
            "over twice the size limit",
            [publish.clone(), vec![0x00; 5000]].concat(),
            1009,
        ),
    ];
    for (what, bytes, code) in cases {
        let (mut c, _) = WsClient::connect_protobuf(h.addr, &h.token("mallory")).await;
        c.send_binary(bytes).await;
        assert_eq!(c.closed().await.code, code, "{what}");
    }
    // A text frame on a Protobuf connection is read as Protobuf: JSON text is
    // garbage there.
    let (mut c, _) = WsClient::connect_protobuf(h.addr, &h.token("mallory")).await;
    c.send_text(r#"{"id":2,"history":{"channel":"watch","limit":0}}"#)
        .await;
    assert_eq!(
        c.closed().await.code,
        3501,
        "JSON text on a Protobuf connection"
    );
    // Before connect, too.
    let mut c = WsClient::open_protobuf(h.addr).await;
    c.send_binary(vec![0x80, 0x80]).await;
    assert_eq!(c.closed().await.code, 3501, "garbage before connect");
    // A JSON connection reads binary frames as JSON: garbage closes it, JSON
    // in a binary frame is answered (as Centrifugo does).
    let (mut c, _) = WsClient::connect(h.addr, &h.token("mallory")).await;
    c.send_binary(br#"{"id":7,"history":{"channel":"watch","limit":0}}"#.to_vec())
        .await;
    assert_eq!(c.reply(7).await["history"]["offset"], 0);
    c.send_binary(vec![0xff, 0x00]).await;
    assert_eq!(
        c.closed().await.code,
        3501,
        "binary garbage on a JSON connection"
    );

    // The bystander was not touched: it publishes and receives.
    bystander.send_binary(publish).await;
    assert!(bystander.reply(2).await.get("publish").is_some());
    let p = bystander.publication("watch").await;
    assert_eq!(p["data"], 1);
}
