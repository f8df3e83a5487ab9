//! Logs and traces of the real `herald` binary.
//!
//! - `HERALD_LOG_FORMAT=json`: every stderr line is a JSON object with a
//!   level, a target and fields, and `HERALD_LOG` filters what is written.
//! - `HERALD_OTLP_ENDPOINT`: an OTLP/HTTP receiver in the test (axum,
//!   protobuf decoded with `opentelemetry-proto`) gets the spans of one
//!   publication across processes — the edge's API request (continuing the
//!   caller's `traceparent`), the writer's message span in `herald serve`,
//!   the edge's delivery — linked parent to child, each with its service
//!   name; a client publish over WebSocket starts a trace of its own.
//! - Without the endpoint nothing is exported and no trace context is put on
//!   NATS messages.
//!
//! Spans are awaited by stopping the processes with SIGTERM: the exporter
//! flushes on shutdown, so no test waits for the batch interval.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};

use common::TestNats;
use common::follower::token;
use common::node::API_KEY;
use common::process::{HeraldProcess, Spec};
use common::ws::WsClient;
use herald::bus::subjects;

/// The caller's trace: W3C trace-context of a span in some backend.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(20);

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Got>>,
    requests: AtomicUsize,
    /// Requests that were not protobuf `ExportTraceServiceRequest`s.
    bad: AtomicUsize,
}

/// A minimal OTLP/HTTP trace receiver on a free port.
struct Receiver {
    url: String,
    received: Arc<Received>,
}

impl Receiver {
    async fn start() -> Self {
        let received = Arc::new(Received::default());
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, received }
    }

    fn spans(&self) -> Vec<Got> {
        self.received.spans.lock().expect("spans").clone()
    }

    fn requests(&self) -> usize {
        self.received.requests.load(Ordering::SeqCst)
    }

    /// The only span named `name` in trace `trace_id`.
    fn one(&self, trace_id: &str, name: &str) -> Got {
        let spans: Vec<Got> = self
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id && s.name == name)
            .collect();
        assert_eq!(
            spans.len(),
            1,
            "spans named {name} in trace {trace_id}: {:#?}",
            self.spans()
        );
        spans.into_iter().next().expect("one span")
    }
}

async fn receive(
    State(received): State<Arc<Received>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    received.requests.fetch_add(1, Ordering::SeqCst);
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    let Ok(request) = ExportTraceServiceRequest::decode(body).map_err(|_| ()) else {
        received.bad.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    if !protobuf {
        received.bad.fetch_add(1, Ordering::SeqCst);
    }
    let mut spans = received.spans.lock().expect("spans");
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Got {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_id: hex(&span.parent_span_id),
                attributes: attributes(&span.attributes),
            });
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /api/publish` with the caller's `traceparent`.
async fn api_publish(process: &HeraldProcess, channel: &str, n: u64) -> Value {
    let response = reqwest::Client::new()
        .post(process.url("/api/publish"))
        .header("X-API-Key", API_KEY)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"channel": channel, "data": {"n": n}}))
        .send()
        .await
        .expect("POST /api/publish");
    let body: Value = response.json().await.expect("JSON reply");
    assert!(body.get("result").is_some(), "publish failed: {body}");
    body["result"].clone()
}

/// The next message on `channel`'s NATS subject within [`WAIT`].
async fn next_on(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a channel publication on NATS")
        .expect("subscription open")
}

fn traceparent(msg: &async_nats::Message) -> Option<String> {
    Some(
        msg.headers
            .as_ref()?
            .get("traceparent")?
            .as_str()
            .to_string(),
    )
}

#[tokio::test]
async fn a_publication_is_traced_from_the_api_through_the_writer_to_delivery() {
    let receiver = Receiver::start().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = HeraldProcess::start(
        Spec::serve("serve", nats.url(), &dir.path().join("data"))
            .set("otlp_endpoint", &receiver.url),
    )
    .await;
    let mut edge =
        HeraldProcess::start(Spec::edge("edge", nats.url()).set("otlp_endpoint", &receiver.url))
            .await;
    let (mut alice, _) = WsClient::connect(edge.addr(), &token("alice")).await;
    let reply = alice.call("subscribe", json!({"channel": "news"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let observer = nats.client().await;
    let mut on_channel = observer
        .subscribe(subjects::channel_subject("news"))
        .await
        .expect("subscribe to the channel subject");
    observer.flush().await.expect("flush");

    // An API publish continuing the caller's trace.
    let published = api_publish(&edge, "news", 1).await;
    assert_eq!(alice.publication("news").await["data"], json!({"n": 1}));
    let carried = traceparent(&next_on(&mut on_channel).await)
        .expect("the channel publication carries a traceparent");
    assert!(carried.contains(CALLER_TRACE), "{carried}");

    // A client publish: a new trace, started at the edge.
    let reply = alice
        .call("publish", json!({"channel": "news", "data": {"n": 2}}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(alice.publication("news").await["data"], json!({"n": 2}));
    let client_trace = traceparent(&next_on(&mut on_channel).await)
        .expect("a client publication carries a traceparent");
    assert!(!client_trace.contains(CALLER_TRACE), "{client_trace}");

    // Stopping flushes what each exporter still holds.
    assert!(edge.sigterm().await.success(), "{}", edge.log());
    assert!(serve.sigterm().await.success(), "{}", serve.log());

    let api = receiver.one(CALLER_TRACE, "api_request");
    assert_eq!(api.service, "herald-edge");
    assert_eq!(api.parent_id, CALLER_SPAN, "the caller's trace continues");
    assert_eq!(api.attributes["method"], "publish");
    assert_eq!(api.attributes["result"], "ok");
    let writer = receiver.one(CALLER_TRACE, "writer_message");
    assert_eq!(writer.service, "herald-serve");
    assert_eq!(writer.parent_id, api.span_id);
    assert_eq!(writer.attributes["offset"], published["offset"].to_string());
    assert_eq!(writer.attributes["outcome"], "sequenced");
    let delivery = receiver.one(CALLER_TRACE, "edge_delivery");
    assert_eq!(delivery.service, "herald-edge");
    assert_eq!(delivery.parent_id, writer.span_id);
    assert_eq!(delivery.attributes["subscribers"], "1");
    assert!(
        carried.contains(&writer.span_id),
        "the channel publication's parent is the writer span: {carried}"
    );

    let client = receiver
        .spans()
        .into_iter()
        .find(|s| s.name == "client_publish")
        .expect("a client_publish span");
    assert_eq!(client.service, "herald-edge");
    assert_eq!(client.parent_id, "", "a client publish is a root span");
    assert_ne!(client.trace_id, CALLER_TRACE);
    let writer = receiver.one(&client.trace_id, "writer_message");
    assert_eq!(writer.parent_id, client.span_id);
    let delivery = receiver.one(&client.trace_id, "edge_delivery");
    assert_eq!(delivery.parent_id, writer.span_id);

    assert_eq!(receiver.received.bad.load(Ordering::SeqCst), 0);
    // The session span is at debug level: not exported at the default filter.
    assert!(receiver.spans().iter().all(|s| s.name != "session"));
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_no_context_travels() {
    let receiver = Receiver::start().await;
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve =
        HeraldProcess::start(Spec::serve("serve", nats.url(), &dir.path().join("data"))).await;
    let (mut alice, _) = WsClient::connect(serve.addr(), &token("alice")).await;
    let reply = alice.call("subscribe", json!({"channel": "news"})).await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    let observer = nats.client().await;
    let mut on_channel = observer
        .subscribe(subjects::channel_subject("news"))
        .await
        .expect("subscribe to the channel subject");
    observer.flush().await.expect("flush");

    api_publish(&serve, "news", 1).await;
    assert_eq!(alice.publication("news").await["data"], json!({"n": 1}));
    let msg = next_on(&mut on_channel).await;
    assert_eq!(traceparent(&msg), None, "no trace context without export");
    assert!(serve.sigterm().await.success(), "{}", serve.log());
    assert_eq!(receiver.requests(), 0);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_follow_the_filter() {
    let nats = TestNats::start().await;
    let mut edge = HeraldProcess::start(
        Spec::edge("edge", nats.url())
            .set("log_format", "json")
            .set("log", "info,herald::api=debug"),
    )
    .await;
    let reply = edge
        .api()
        .call("info", &json!({}))
        .await
        .expect("POST /api/info");
    assert!(reply.get("result").is_some(), "{reply}");
    assert!(edge.sigterm().await.success(), "{}", edge.log());

    let lines: Vec<Value> = edge
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["target"].is_string(), "{line}");
        assert!(
            line["fields"]["message"].is_string(),
            "an event has a message among its fields: {line}"
        );
        let level = line["level"].as_str().expect("a level");
        assert!(
            ["INFO", "WARN", "ERROR"].contains(&level)
                || line["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("herald::api")),
            "only herald::api logs below info: {line}"
        );
    }
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "herald started")
        .expect("the startup line");
    assert_eq!(started["fields"]["role"], "edge");
    let request = lines
        .iter()
        .find(|l| l["fields"]["message"] == "api request")
        .expect("herald::api=debug lets the request's debug line through");
    assert_eq!(request["level"], "DEBUG");
    assert_eq!(request["fields"]["method"], "info");
    assert_eq!(request["fields"]["status"], 200);
}
