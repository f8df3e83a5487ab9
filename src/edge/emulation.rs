//! Bidirectional emulation, as Centrifugo's: HTTP-streaming
//! (`POST /connection/http_stream`, JSON or Protobuf) and server-sent events
//! (`GET /connection/sse?cf_connect=…` or `POST`, JSON) carry the server's
//! replies and pushes down one long response; the client's later commands
//! come as separate `POST /emulation` requests naming the session and node
//! the connect reply gave. The unidirectional `uni_http_stream` and
//! `uni_sse` share the stream side: one `ConnectRequest` in, pushes out.
//!
//! Owns the two stream endpoints (admission as for a WebSocket, the first
//! command from the request, the response body fed by the session's
//! writer), the `/emulation` endpoint, and the edge's map of emulated
//! sessions (session id → that session's bounded command queue,
//! `client_emulation_queue`; one entry per open emulated connection, so the
//! map is bounded by `http_max_connections`). Knows nothing of the commands
//! themselves: the session's read loop runs them in arrival order, as it
//! does a WebSocket's frames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::Edge;
use super::outbox::Outbox;
use super::session::writer::{StreamFormat, stream_loop};
use super::session::{self, CLIENT_CLOSED, Inbound, Transport};
use crate::http_server::ConnAbort;
use crate::protocol::Encoding;

/// Shards of the session map: emulation requests of different sessions
/// rarely wait on one lock.
const SHARDS: usize = 16;

/// What `/emulation` receives, in JSON (`data`: the commands as a string) or
/// Protobuf (`data`: the commands' bytes), as Centrifugo's protocol defines
/// `EmulationRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EmulationRequest {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(string, tag = "2")]
    pub session: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
}

#[derive(serde::Deserialize)]
struct JsonEmulationRequest {
    #[serde(default)]
    node: String,
    session: String,
    data: String,
}

/// The edge's emulated sessions: where each one's commands go.
#[derive(Default)]
pub(super) struct Sessions {
    shards: [Mutex<HashMap<String, mpsc::Sender<Bytes>>>; SHARDS],
}

/// Whether a session took a command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivered {
    Queued,
    /// Its queue is full (`client_emulation_queue`).
    Full,
    /// No such session here (never was, or already closed).
    Gone,
}

impl Sessions {
    fn shard(&self, session: &str) -> &Mutex<HashMap<String, mpsc::Sender<Bytes>>> {
        let h = session.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        &self.shards[h % SHARDS]
    }

    /// Hands `data` (commands in the session's encoding) to `session`.
    pub(super) fn deliver(&self, session: &str, data: Bytes) -> Delivered {
        let tx = self
            .shard(session)
            .lock()
            .expect("emulation lock")
            .get(session)
            .cloned();
        match tx.map(|tx| tx.try_send(data)) {
            Some(Ok(())) => Delivered::Queued,
            Some(Err(mpsc::error::TrySendError::Full(_))) => Delivered::Full,
            Some(Err(mpsc::error::TrySendError::Closed(_))) | None => Delivered::Gone,
        }
    }
}

/// A session's entry in [`Sessions`]; dropping it removes the entry.
struct Registered {
    edge: Arc<Edge>,
    session: String,
}

impl Registered {
    fn new(edge: Arc<Edge>, session: String, tx: mpsc::Sender<Bytes>) -> Self {
        edge.emulation
            .shard(&session)
            .lock()
            .expect("emulation lock")
            .insert(session.clone(), tx);
        Self { edge, session }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.edge
            .emulation
            .shard(&self.session)
            .lock()
            .expect("emulation lock")
            .remove(&self.session);
    }
}

/// The body of a stream response: what the writer sends. Dropped by hyper
/// when the client goes away, which closes the session at once.
struct StreamBody {
    rx: mpsc::Receiver<Bytes>,
    outbox: Arc<Outbox>,
}

impl futures::Stream for StreamBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|b| b.map(Ok))
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        self.outbox.close(CLIENT_CLOSED);
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Reads a request body of at most `limit` bytes: 413 past it.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"))
}

/// The common start of a stream transport: checks as for a WebSocket
/// upgrade, then the session, its writer and the response.
fn open_stream(
    edge: Arc<Edge>,
    peer: SocketAddr,
    headers: HeaderMap,
    abort: Option<ConnAbort>,
    first: Bytes,
    encoding: Encoding,
    format: StreamFormat,
) -> Response {
    if edge.closing.load(Ordering::SeqCst) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    if !super::origin::allowed(&edge.settings.allowed_origins, &headers) {
        metrics::counter!(crate::metrics::LIMIT_HITS_TOTAL, "limit" => "origin").increment(1);
        return json_error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let ip = edge.admission.client_ip(peer, &headers);
    let admitted = match edge.admission.admit(ip) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let id = edge.next_session.fetch_add(1, Ordering::Relaxed);
    let forwarded = edge.proxies.forwarded_headers(&headers);
    let outbox = Arc::new(Outbox::with_encoding(
        edge.settings.client.queue_max_bytes,
        encoding,
    ));
    // One batch in hand between the writer and hyper; the outbox is the
    // bound on what waits for a slow client.
    let (body_tx, body_rx) = mpsc::channel(1);
    tokio::spawn(stream_loop(outbox.clone(), body_tx, format, abort));
    let session_id = uuid::Uuid::new_v4().to_string();
    let uni = matches!(format, StreamFormat::UniHttpStream | StreamFormat::UniSse);
    let (inbound, registered) = if uni {
        // One connect, then nothing comes from the client.
        let first = Inbound::Frame(session::uni_connect(&first));
        let inbound = futures::stream::once(std::future::ready(first))
            .chain(futures::stream::pending())
            .boxed();
        (inbound, None)
    } else {
        let (cmd_tx, cmd_rx) = mpsc::channel(edge.settings.client.emulation_queue);
        let registered = Registered::new(edge.clone(), session_id.clone(), cmd_tx);
        let inbound = futures::stream::once(std::future::ready(Inbound::Frame(first)))
            .chain(futures::stream::unfold(cmd_rx, |mut rx| async move {
                rx.recv().await.map(|b| (Inbound::Frame(b), rx))
            }))
            .boxed();
        (inbound, Some(registered))
    };
    let transport = Transport {
        name: match format {
            StreamFormat::HttpStream => "http_stream",
            StreamFormat::Sse => "sse",
            StreamFormat::UniHttpStream => "uni_http_stream",
            StreamFormat::UniSse => "uni_sse",
        },
        session: Some(session_id),
        node: (!uni).then(|| edge.presence.id().clone()),
        uni,
    };
    let session_outbox = outbox.clone();
    tokio::spawn(async move {
        let _admitted = admitted;
        let _registered = registered;
        session::serve(edge, session_outbox, inbound, id, transport, forwarded).await
    });
    let body = StreamBody {
        rx: body_rx,
        outbox,
    };
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    let content_type = match (format, encoding) {
        (StreamFormat::Sse | StreamFormat::UniSse, _) => "text/event-stream; charset=utf-8",
        (StreamFormat::HttpStream, Encoding::Protobuf) => "application/octet-stream",
        (StreamFormat::HttpStream | StreamFormat::UniHttpStream, _) => "application/json",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `POST /connection/http_stream`: the body is the first command(s), in
/// Protobuf when the content type is `application/octet-stream`.
pub(super) async fn http_stream(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    abort: Option<axum::Extension<ConnAbort>>,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    if method != Method::POST {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "POST expected");
    }
    let first = match read_body(body, edge.settings.client.message_size_limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let encoding = if is_protobuf(&headers) {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    open_stream(
        edge,
        peer,
        headers,
        abort.map(|a| a.0),
        first,
        encoding,
        StreamFormat::HttpStream,
    )
}

/// `GET /connection/sse?cf_connect=<command>` (what an `EventSource` can
/// send) or `POST` with the command as the body. JSON only, as Centrifugo.
pub(super) async fn sse(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    abort: Option<axum::Extension<ConnAbort>>,
    body: Body,
) -> Response {
    let abort = abort.map(|a| a.0);
    sse_like(
        edge,
        peer,
        method,
        headers,
        query,
        abort,
        body,
        StreamFormat::Sse,
    )
    .await
}

/// `GET /connection/uni_sse?cf_connect=<ConnectRequest>` or `POST` with the
/// `ConnectRequest` as the body: pushes only, as `data:` events.
pub(super) async fn uni_sse(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    abort: Option<axum::Extension<ConnAbort>>,
    body: Body,
) -> Response {
    let abort = abort.map(|a| a.0);
    sse_like(
        edge,
        peer,
        method,
        headers,
        query,
        abort,
        body,
        StreamFormat::UniSse,
    )
    .await
}

/// `POST /connection/uni_http_stream` with the `ConnectRequest` (or nothing)
/// as the body: pushes only, one JSON object per line.
pub(super) async fn uni_http_stream(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    abort: Option<axum::Extension<ConnAbort>>,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    if method != Method::POST {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "POST expected");
    }
    let first = match read_body(body, edge.settings.client.message_size_limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    open_stream(
        edge,
        peer,
        headers,
        abort.map(|a| a.0),
        first,
        Encoding::Json,
        StreamFormat::UniHttpStream,
    )
}

#[allow(clippy::too_many_arguments)]
async fn sse_like(
    edge: Arc<Edge>,
    peer: SocketAddr,
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
    abort: Option<ConnAbort>,
    body: Body,
    format: StreamFormat,
) -> Response {
    let first = match method {
        Method::OPTIONS => return StatusCode::OK.into_response(),
        Method::GET => match query_param(query.as_deref(), "cf_connect") {
            Some(c) if !c.is_empty() => Bytes::from(c),
            // A unidirectional connect may carry nothing (a connect proxy
            // decides); the bidirectional one is a command.
            _ if format == StreamFormat::UniSse => Bytes::new(),
            _ => return json_error(StatusCode::BAD_REQUEST, "no cf_connect command"),
        },
        Method::POST => match read_body(body, edge.settings.client.message_size_limit).await {
            Ok(b) => b,
            Err(r) => return r,
        },
        _ => return json_error(StatusCode::METHOD_NOT_ALLOWED, "GET or POST expected"),
    };
    let mut response = open_stream(edge, peer, headers, abort, first, Encoding::Json, format);
    if response.status() == StatusCode::OK {
        // As Centrifugo: a blank line first, so the client sees the stream
        // open before the first event.
        let body = std::mem::replace(response.body_mut(), Body::empty());
        let opened = futures::stream::once(std::future::ready(Ok::<_, axum::Error>(
            Bytes::from_static(b"\r\n"),
        )))
        .chain(body.into_data_stream());
        *response.body_mut() = Body::from_stream(opened);
    }
    response
}

/// `POST /emulation`: one client request's commands for a session, handed
/// to its queue (204), or to the edge holding it.
pub(super) async fn emulate(
    State(edge): State<Arc<Edge>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    if method != Method::POST {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "POST expected");
    }
    if !super::origin::allowed(&edge.settings.allowed_origins, &headers) {
        metrics::counter!(crate::metrics::LIMIT_HITS_TOTAL, "limit" => "origin").increment(1);
        return json_error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    // The whole request, envelope included, as Centrifugo bounds it (its
    // 64 KiB `max_request_body_size`, the default message size limit).
    let limit = edge.settings.client.message_size_limit;
    let raw = match read_body(body, limit).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(req) = decode_request(&headers, raw) else {
        return json_error(StatusCode::BAD_REQUEST, "bad emulation request");
    };
    let own = req.node == **edge.presence.id();
    let delivered = match edge.emulation.deliver(&req.session, req.data.clone()) {
        // Another edge's session: route it there (Centrifugo's survey to
        // the node named in the request).
        Delivered::Gone if !own && edge.presence.is_alive(&req.node) => route(&edge, &req).await,
        d => d,
    };
    match delivered {
        Delivered::Queued => StatusCode::NO_CONTENT.into_response(),
        Delivered::Full => {
            metrics::counter!(crate::metrics::LIMIT_HITS_TOTAL, "limit" => "emulation_queue")
                .increment(1);
            json_error(StatusCode::TOO_MANY_REQUESTS, "emulation queue full")
        }
        // As Centrifugo: a session gone from a running node is 204 (its
        // stream has ended or ends now); an unknown node is 404, which makes
        // the SDK reconnect.
        Delivered::Gone if own || edge.presence.is_alive(&req.node) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Delivered::Gone => json_error(StatusCode::NOT_FOUND, "node not found"),
    }
}

/// How an edge answers a routed request: one byte per [`Delivered`].
fn delivered_byte(d: &Delivered) -> u8 {
    match d {
        Delivered::Queued => b'q',
        Delivered::Full => b'f',
        Delivered::Gone => b'g',
    }
}

/// Sends `req` to the edge holding its session, over NATS; an edge that
/// does not answer within the sync timeout counts as gone.
async fn route(edge: &Edge, req: &EmulationRequest) -> Delivered {
    let subject = crate::bus::subjects::emulation_subject(&req.node);
    let payload = Bytes::from(prost::Message::encode_to_vec(req));
    let ask = edge.nats.request(subject, payload);
    match tokio::time::timeout(edge.sync_timeout, ask).await {
        Ok(Ok(m)) if m.payload.first() == Some(&b'q') => Delivered::Queued,
        Ok(Ok(m)) if m.payload.first() == Some(&b'f') => Delivered::Full,
        _ => Delivered::Gone,
    }
}

/// Answers the requests other edges route to this one's sessions, until
/// `shutdown`. Call once, before accepting connections.
pub(super) async fn serve_routed(
    edge: Arc<Edge>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
    let subject = crate::bus::subjects::emulation_subject(edge.presence.id());
    let mut sub = edge.nats.subscribe(subject).await?;
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = sub.next() => match m {
                    Some(m) => m,
                    None => break,
                },
            };
            let Some(reply) = msg.reply else { continue };
            let answer = match <EmulationRequest as prost::Message>::decode(msg.payload) {
                Ok(req) => delivered_byte(&edge.emulation.deliver(&req.session, req.data)),
                Err(_) => delivered_byte(&Delivered::Gone),
            };
            let _ = edge.nats.publish(reply, Bytes::from(vec![answer])).await;
        }
    }))
}

fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/octet-stream")
}

/// An `/emulation` body: Protobuf by content type, JSON otherwise.
pub(super) fn decode_request(headers: &HeaderMap, raw: Bytes) -> Option<EmulationRequest> {
    if is_protobuf(headers) {
        return prost::Message::decode(raw).ok();
    }
    let r: JsonEmulationRequest = serde_json::from_slice(&raw).ok()?;
    Some(EmulationRequest {
        node: r.node,
        session: r.session,
        data: Bytes::from(r.data),
    })
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_deliver_in_order_and_bound_the_queue() {
        let sessions = Sessions::default();
        let (tx, mut rx) = mpsc::channel(2);
        sessions.shard("s").lock().unwrap().insert("s".into(), tx);
        assert_eq!(sessions.deliver("s", Bytes::from("a")), Delivered::Queued);
        assert_eq!(sessions.deliver("s", Bytes::from("b")), Delivered::Queued);
        assert_eq!(sessions.deliver("s", Bytes::from("c")), Delivered::Full);
        assert_eq!(sessions.deliver("t", Bytes::from("a")), Delivered::Gone);
        assert_eq!(rx.try_recv().unwrap(), Bytes::from("a"));
        assert_eq!(rx.try_recv().unwrap(), Bytes::from("b"));
        drop(rx);
        assert_eq!(sessions.deliver("s", Bytes::from("d")), Delivered::Gone);
    }

    #[test]
    fn requests_decode_in_json_and_protobuf() {
        let json = HeaderMap::new();
        let r = decode_request(
            &json,
            Bytes::from(r#"{"session":"s1","node":"n1","data":"{\"id\":2,\"ping\":{}}"}"#),
        )
        .expect("json");
        assert_eq!((r.session.as_str(), r.node.as_str()), ("s1", "n1"));
        assert_eq!(r.data, Bytes::from(r#"{"id":2,"ping":{}}"#));
        assert!(decode_request(&json, Bytes::from("{")).is_none());
        assert!(decode_request(&json, Bytes::from(r#"{"session":"s","data":1}"#)).is_none());

        let mut pb = HeaderMap::new();
        pb.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let req = EmulationRequest {
            node: "n".into(),
            session: "s".into(),
            data: Bytes::from_static(&[1, 2, 3]),
        };
        let r = decode_request(&pb, Bytes::from(prost::Message::encode_to_vec(&req))).expect("pb");
        assert_eq!(r, req);
        assert!(decode_request(&pb, Bytes::from_static(&[0xff, 0xff])).is_none());
    }

    #[test]
    fn query_param_decodes() {
        assert_eq!(
            query_param(Some("a=1&cf_connect=%7B%22id%22%3A1%7D"), "cf_connect").as_deref(),
            Some(r#"{"id":1}"#)
        );
        assert_eq!(query_param(Some("a=1"), "cf_connect"), None);
        assert_eq!(query_param(None, "cf_connect"), None);
    }
}
