//! The writer role, black-box: a real nats-server, the real embedded store in a
//! temp dir, ingest messages published straight into JetStream (as the
//! publisher does: `Nats-Msg-Id` and `Herald-Reply` headers), replies and
//! channel publications read from NATS, history read from the store.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use bytes::Bytes;
use common::ingest::{
    Replies, Running, data_of, history, offsets, open_store, publish, publish_raw, stream,
};
use common::{TestNats, eventually};
use futures::StreamExt;
use herald::bus::ingest::{IngestMessage, WriterReply};
use herald::bus::subjects;
use herald::store::{ChannelAppend, Position, StoredPublication};
use herald::writer::{Fence, Writer, WriterSettings};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(20);

fn settings(partitions: u32) -> WriterSettings {
    WriterSettings {
        partitions,
        batch_size: 64,
        pipeline_depth: 2,
        max_ack_pending: 1024,
        ack_wait: Duration::from_secs(30),
        head_cache_capacity: 1000,
        failover_timeout: Duration::from_secs(10),
        kv_replicas: 1,
    }
}

#[tokio::test]
async fn concurrent_publishers_get_dense_offsets_naming_their_data() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    // One batch at a time (`writer_pipeline_depth = 1`); the other tests run
    // the default pipeline, tests/pipeline.rs deeper ones.
    let writer = Running::start(
        &client,
        &store,
        WriterSettings {
            pipeline_depth: 1,
            ..settings(1)
        },
    );

    let mut publishers = Vec::new();
    for p in 0..4u32 {
        let client = client.clone();
        publishers.push(tokio::spawn(async move {
            let js = jetstream::new(client);
            let mut acks = Vec::new();
            for s in 0..500u32 {
                let reply = format!("rep.{p}.{s}");
                acks.push(
                    publish(
                        &js,
                        1,
                        "chat",
                        &format!("p{p}-{s}"),
                        json!({"p": p, "s": s}),
                        &reply,
                        None,
                    )
                    .await,
                );
            }
            for ack in acks {
                assert!(!ack.await.expect("stream ack").duplicate);
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let all = replies.wait_for(2000).await;

    let stored = history(&store, "chat").await;
    assert_eq!(offsets(&stored), (1..=2000).collect::<Vec<_>>());
    let epoch = store.position("chat").await.unwrap().epoch;
    assert!(!epoch.is_empty());
    for p in 0..4u32 {
        let mut last = 0;
        for s in 0..500u32 {
            let (offset, e) = match &all[&format!("rep.{p}.{s}")] {
                WriterReply::Stored { offset, epoch } => (*offset, epoch.clone()),
                other => panic!("publisher {p} seq {s}: {other:?}"),
            };
            assert_eq!(e, epoch);
            assert_eq!(
                data_of(&stored[offset as usize - 1]),
                json!({"p": p, "s": s})
            );
            assert!(offset > last, "one publisher's messages keep their order");
            last = offset;
        }
    }
    writer.stop().await;
}

#[tokio::test]
async fn sequenced_publications_reach_the_channel_subject_in_offset_order() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut live = client
        .subscribe(subjects::channel_subject("news.a b"))
        .await
        .unwrap();
    let writer = Running::start(&client, &store, settings(2));

    for i in 0..50 {
        publish(
            &js,
            2,
            "news.a b",
            &format!("k{i}"),
            json!({"i": i}),
            &format!("rep.{i}"),
            None,
        )
        .await
        .await
        .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        let msg = tokio::time::timeout(LIMIT, live.next())
            .await
            .expect("channel publication in time")
            .expect("subscription open");
        got.push(msg);
    }
    let epoch = store.position("news.a b").await.unwrap().epoch;
    for (i, msg) in got.iter().enumerate() {
        let n = i as u64 + 1;
        let headers = msg.headers.as_ref().expect("headers");
        assert_eq!(
            headers.get(subjects::OFFSET_HEADER).unwrap().as_str(),
            n.to_string()
        );
        assert_eq!(headers.get(subjects::EPOCH_HEADER).unwrap().as_str(), epoch);
        let body: Value = serde_json::from_slice(&msg.payload).unwrap();
        // The stream's first publication also carries the epoch, as
        // Centrifugo's does, so a subscriber of the empty channel learns it.
        let expected = match n {
            1 => json!({"data": {"i": i}, "offset": n, "epoch": epoch}),
            _ => json!({"data": {"i": i}, "offset": n}),
        };
        assert_eq!(body, expected);
    }
    writer.stop().await;
}

#[tokio::test]
async fn a_stored_key_published_again_keeps_its_offset_and_is_stored_once() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let mut live = client
        .subscribe(subjects::channel_subject("c"))
        .await
        .unwrap();
    let writer = Running::start(&client, &store, settings(1));

    publish(&js, 1, "c", "K", json!("first"), "rep.1", None)
        .await
        .await
        .unwrap();
    let (offset, epoch) = replies.stored("rep.1").await;
    assert_eq!(offset, 1);

    // A retry past JetStream's duplicate window: another message id, same key.
    let ack = publish(
        &js,
        1,
        "c",
        "K",
        json!("retry"),
        "rep.2",
        Some("another-id"),
    )
    .await
    .await
    .unwrap();
    assert!(
        !ack.duplicate,
        "JetStream must not have caught it: the writer has to"
    );
    assert_eq!(replies.stored("rep.2").await, (1, epoch.clone()));
    let stored = store.position("c").await.unwrap();
    assert_eq!(
        Position {
            time_ms: 0,
            ..stored
        },
        Position {
            head: 1,
            epoch: epoch.clone(),
            time_ms: 0
        }
    );

    // The next new key continues after it.
    publish(&js, 1, "c", "K2", json!("second"), "rep.3", None)
        .await
        .await
        .unwrap();
    assert_eq!(replies.stored("rep.3").await, (2, epoch.clone()));
    let stored = history(&store, "c").await;
    assert_eq!(offsets(&stored), [1, 2]);
    assert_eq!(data_of(&stored[0]), json!("first"));

    // The duplicate was not published again on the channel.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let msg = tokio::time::timeout(LIMIT, live.next())
            .await
            .unwrap()
            .unwrap();
        seen.push(
            msg.headers
                .unwrap()
                .get(subjects::OFFSET_HEADER)
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, ["1", "2"]);
    writer.stop().await;
}

#[tokio::test]
async fn a_restarted_writer_continues_the_offsets() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let replies = Replies::listen(&client, "rep").await;

    let store = open_store(dir.path());
    let writer = Running::start(&client, &store, settings(2));
    for i in 0..10 {
        publish(
            &js,
            2,
            "r",
            &format!("a{i}"),
            json!(i),
            &format!("rep.a{i}"),
            None,
        )
        .await;
    }
    assert_eq!(replies.stored("rep.a9").await.0, 10);
    let epoch = store.position("r").await.unwrap().epoch;
    writer.stop().await;
    drop(store);

    let store = open_store(dir.path());
    let writer = Running::start(&client, &store, settings(2));
    for i in 0..10 {
        publish(
            &js,
            2,
            "r",
            &format!("b{i}"),
            json!(10 + i),
            &format!("rep.b{i}"),
            None,
        )
        .await;
    }
    for i in 0..10u64 {
        assert_eq!(
            replies.stored(&format!("rep.b{i}")).await,
            (11 + i, epoch.clone())
        );
    }
    let stored = history(&store, "r").await;
    assert_eq!(offsets(&stored), (1..=20).collect::<Vec<_>>());
    assert!(
        stored
            .iter()
            .enumerate()
            .all(|(i, p)| data_of(p) == json!(i))
    );
    writer.stop().await;
}

#[tokio::test]
async fn many_channels_across_partitions_in_shared_batches_are_each_dense() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let channels: Vec<String> = (0..8).map(|c| format!("room:{c}")).collect();

    // Everything waits in the stream before the writer starts, so batches mix
    // channels.
    let mut acks = Vec::new();
    for i in 0..25 {
        for (c, ch) in channels.iter().enumerate() {
            acks.push(
                publish(
                    &js,
                    4,
                    ch,
                    &format!("k{i}"),
                    json!({"c": c, "i": i}),
                    &format!("rep.{c}.{i}"),
                    None,
                )
                .await,
            );
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    // A head cache smaller than the channel count: evictions must not matter.
    let writer = Running::start(
        &client,
        &store,
        WriterSettings {
            head_cache_capacity: 3,
            ..settings(4)
        },
    );
    let all = replies.wait_for(200).await;

    for (c, ch) in channels.iter().enumerate() {
        let stored = history(&store, ch).await;
        assert_eq!(
            offsets(&stored),
            (1..=25).collect::<Vec<_>>(),
            "channel {ch}"
        );
        for i in 0..25 {
            let WriterReply::Stored { offset, .. } = &all[&format!("rep.{c}.{i}")] else {
                panic!("not stored");
            };
            assert_eq!(
                data_of(&stored[*offset as usize - 1]),
                json!({"c": c, "i": i})
            );
        }
    }
    writer.stop().await;
}

/// Two writers running the same partition (what ownership prevents, and what
/// a failover overlap can still cause): the store refuses the loser's append
/// (`Conflict`), it re-sequences from the store, and no offset is given twice.
#[tokio::test]
async fn two_writers_racing_on_a_partition_never_assign_an_offset_twice() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let small = WriterSettings {
        batch_size: 8,
        pipeline_depth: 2,
        ..settings(1)
    };
    // Both behind fences that stay open: no lease decides between them.
    let (_open, expiry) = watch::channel(Instant::now() + Duration::from_secs(3600));
    let stop = CancellationToken::new();
    let mut racers = Vec::new();
    for client in [client.clone(), nats.client().await] {
        let writer = Writer::new(client, store.clone(), small.clone()).unwrap();
        racers.push(tokio::spawn(writer.partition(
            0,
            stop.clone(),
            Fence::new(expiry.clone()),
        )));
    }

    let mut acks = Vec::new();
    for i in 0..400 {
        acks.push(
            publish(
                &js,
                1,
                "race",
                &format!("k{i}"),
                json!(i),
                &format!("rep.{i}"),
                None,
            )
            .await,
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let all = replies.wait_for(400).await;
    let stored = history(&store, "race").await;
    assert_eq!(offsets(&stored), (1..=400).collect::<Vec<_>>());
    for i in 0..400 {
        let WriterReply::Stored { offset, .. } = &all[&format!("rep.{i}")] else {
            panic!("not stored");
        };
        assert_eq!(data_of(&stored[*offset as usize - 1]), json!(i));
    }
    assert!(
        replies.mismatches().is_empty(),
        "{:?}",
        replies.mismatches()
    );
    stop.cancel();
    for racer in racers {
        tokio::time::timeout(LIMIT, racer).await.unwrap().unwrap();
    }
}

/// A partition task whose fence is closed commits nothing: it hands its
/// messages back, and they are stored once a task with an open fence runs.
#[tokio::test]
async fn a_closed_fence_stops_commits() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    // A message in flight to the stopped task is redelivered after ack_wait.
    let quick = WriterSettings {
        ack_wait: Duration::from_secs(1),
        ..settings(1)
    };
    let writer = Writer::new(client.clone(), store.clone(), quick).unwrap();

    let (_closed, expired) = watch::channel(Instant::now());
    let stop = CancellationToken::new();
    let fenced = tokio::spawn(writer.partition(0, stop.clone(), Fence::new(expired)));
    publish(&js, 1, "f", "k1", json!(1), "rep.1", None)
        .await
        .await
        .unwrap();
    // Delivered to the fenced task, handed back, redelivered, handed back...
    eventually("the message delivered more than once", LIMIT, || {
        let js = js.clone();
        async move {
            let mut consumer: jetstream::consumer::PullConsumer = js
                .get_consumer_from_stream(subjects::writer_consumer(0), subjects::INGEST_STREAM)
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_redelivered > 0).then_some(())
        }
    })
    .await;
    assert!(history(&store, "f").await.is_empty());
    assert!(replies.get("rep.1").is_none());
    stop.cancel();
    tokio::time::timeout(LIMIT, fenced).await.unwrap().unwrap();

    let (_open, expiry) = watch::channel(Instant::now() + Duration::from_secs(3600));
    let stop = CancellationToken::new();
    let open = tokio::spawn(writer.partition(0, stop.clone(), Fence::new(expiry)));
    assert_eq!(replies.stored("rep.1").await.0, 1);
    assert_eq!(offsets(&history(&store, "f").await), [1]);
    stop.cancel();
    tokio::time::timeout(LIMIT, open).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_invalid_message_is_refused_without_blocking_the_partition() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let writer = Running::start(&client, &store, settings(1));

    publish_raw(
        &js,
        1,
        "x",
        Bytes::from_static(b"{not json"),
        "rep.bad",
        "bad".into(),
    )
    .await
    .await
    .unwrap();
    let whole = IngestMessage::encode("x", "cut", b"[1,2,3]", None).unwrap();
    publish_raw(
        &js,
        1,
        "x",
        whole.slice(..whole.len() - 1),
        "rep.cut",
        "cut".into(),
    )
    .await
    .await
    .unwrap();
    publish(&js, 1, "x", "k", json!(1), "rep.good", None)
        .await
        .await
        .unwrap();
    assert_eq!(replies.stored("rep.good").await.0, 1);
    let all = replies.wait_for(3).await;
    assert!(matches!(all["rep.bad"], WriterReply::Failed { .. }));
    assert!(matches!(all["rep.cut"], WriterReply::Failed { .. }));
    assert_eq!(offsets(&history(&store, "x").await), [1]);
    writer.stop().await;
}

/// A rolling upgrade: an edge older than the binary ingest message still
/// publishes the JSON form, and a new writer stores it as before, beside
/// binary messages on the same channel, its `data` and `info` unchanged.
#[tokio::test]
async fn the_json_ingest_message_of_an_older_edge_is_still_stored() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let writer = Running::start(&client, &store, settings(1));

    publish(&js, 1, "up", "new1", json!({"n": 1}), "rep.1", None)
        .await
        .await
        .unwrap();
    let old = json!({"channel": "up", "data": {"n": 2}, "info": {"user": "u1"}, "key": "old"});
    publish_raw(
        &js,
        1,
        "up",
        Bytes::from(old.to_string()),
        "rep.2",
        subjects::message_id("up", "old"),
    )
    .await
    .await
    .unwrap();
    publish(&js, 1, "up", "new3", json!({"n": 3}), "rep.3", None)
        .await
        .await
        .unwrap();
    assert_eq!(replies.stored("rep.1").await.0, 1);
    assert_eq!(replies.stored("rep.2").await.0, 2);
    assert_eq!(replies.stored("rep.3").await.0, 3);
    let stored = history(&store, "up").await;
    assert_eq!(offsets(&stored), [1, 2, 3]);
    assert_eq!(
        stored.iter().map(data_of).collect::<Vec<_>>(),
        [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
    );
    assert_eq!(
        stored[1]
            .info
            .as_deref()
            .map(|i| serde_json::from_slice::<Value>(i).unwrap()),
        Some(json!({"user": "u1"}))
    );
    writer.stop().await;
}

/// Publishers that read batched replies (inboxes under
/// `subjects::reply_prefix`) get one NATS message per writer batch for all of
/// their publications in it; a publisher that does not (one older than
/// batched replies, during a rolling upgrade) still gets one reply per
/// publication. Each answer names the offset its data was stored at, and a
/// duplicate in a batch gets its original's offset.
#[tokio::test]
async fn batched_publishers_get_one_reply_message_per_batch() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let root = subjects::reply_prefix("");
    let batched = Replies::listen(&client, root.trim_end_matches('.')).await;
    let older = Replies::listen(&client, "rep").await;
    let edges = [
        subjects::reply_prefix("edge-a"),
        subjects::reply_prefix("edge-b"),
    ];

    // All in the stream before the writer starts: its first pulls take them
    // in a few batches.
    let mut acks = Vec::new();
    for i in 0..20u64 {
        let inbox = &edges[(i % 2) as usize];
        let reply = format!("{inbox}.{i}");
        acks.push(publish(&js, 1, "bat", &format!("k{i}"), json!(i), &reply, None).await);
    }
    for i in 0..5u64 {
        let reply = format!("rep.{i}");
        acks.push(
            publish(
                &js,
                1,
                "bat",
                &format!("o{i}"),
                json!(100 + i),
                &reply,
                None,
            )
            .await,
        );
    }
    // k0 again under another message id: the writer finds it a duplicate.
    let again = format!("{}.99", edges[0]);
    acks.push(publish(&js, 1, "bat", "k0", json!(0), &again, Some("again")).await);
    for ack in acks {
        ack.await.unwrap();
    }
    let writer = Running::start(&client, &store, settings(1));
    let answers = batched.wait_for(21).await;
    let older_answers = older.wait_for(5).await;

    let stored = history(&store, "bat").await;
    assert_eq!(offsets(&stored), (1..=25).collect::<Vec<u64>>());
    let offset_of = |data: Value| {
        stored
            .iter()
            .find(|p| data_of(p) == data)
            .map(|p| p.offset)
            .unwrap()
    };
    for i in 0..20u64 {
        let reply = format!("{}.{i}", edges[(i % 2) as usize]);
        let WriterReply::Stored { offset, .. } = &answers[&reply] else {
            panic!("{reply}: {:?}", answers[&reply]);
        };
        assert_eq!(*offset, offset_of(json!(i)), "{reply}");
    }
    assert_eq!(answers[&again], answers[&format!("{}.0", edges[0])]);
    for i in 0..5u64 {
        let WriterReply::Stored { offset, .. } = &older_answers[&format!("rep.{i}")] else {
            panic!("rep.{i}");
        };
        assert_eq!(*offset, offset_of(json!(100 + i)));
    }
    assert!(
        batched.messages() < 21,
        "21 publications from two edges took {} reply messages",
        batched.messages()
    );
    assert_eq!(older.messages(), 5);
    assert!(batched.mismatches().is_empty() && older.mismatches().is_empty());
    writer.stop().await;
}

/// A writer that committed a message and died before acking it: JetStream
/// redelivers the message to the next writer, which must find its key stored
/// and answer with the original offset instead of storing it again.
#[tokio::test]
async fn a_message_committed_but_not_acked_is_not_stored_twice() {
    let nats = TestNats::start().await;
    let client = nats.client().await;
    let js = stream(&client, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let replies = Replies::listen(&client, "rep").await;
    let ack_wait = Duration::from_secs(1);

    // The dead writer: it pulled the message through the partition's durable
    // consumer and committed it, but never acked.
    let ingest = js.get_stream(subjects::INGEST_STREAM).await.unwrap();
    let consumer = ingest
        .create_consumer(pull::Config {
            durable_name: Some(subjects::writer_consumer(0)),
            filter_subject: subjects::ingest_subject(0),
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await
        .unwrap();
    publish(&js, 1, "crash", "K", json!("once"), "rep.1", None)
        .await
        .await
        .unwrap();
    let mut fetched = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    let msg = fetched.next().await.expect("a message").unwrap();
    let body = IngestMessage::decode(&msg.payload).unwrap();
    assert_eq!(body.key, "K");
    store
        .append(&[ChannelAppend {
            channel: "crash".into(),
            epoch: "dead0001".into(),
            publications: vec![StoredPublication {
                offset: 1,
                data: body.data,
                info: None,
                time_ms: 1,
            }],
            idempotency_keys: vec![("K".into(), 1)],
        }])
        .await
        .unwrap();
    drop((msg, fetched, consumer));

    let writer = Running::start(
        &client,
        &store,
        WriterSettings {
            ack_wait,
            ..settings(1)
        },
    );
    assert_eq!(replies.stored("rep.1").await, (1, "dead0001".to_string()));
    publish(&js, 1, "crash", "K2", json!("next"), "rep.2", None)
        .await
        .await
        .unwrap();
    assert_eq!(replies.stored("rep.2").await, (2, "dead0001".to_string()));
    let stored = history(&store, "crash").await;
    assert_eq!(offsets(&stored), [1, 2]);
    assert_eq!(data_of(&stored[0]), json!("once"));
    writer.stop().await;

    // Everything was acked: nothing is left in the work queue.
    eventually("an empty work queue", LIMIT, || {
        let js = js.clone();
        async move {
            let mut ingest = js.get_stream(subjects::INGEST_STREAM).await.ok()?;
            (ingest.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await;
}
