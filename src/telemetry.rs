//! Logs and traces: the process's one `tracing` subscriber, and OpenTelemetry
//! export when `otlp_endpoint` is set.
//!
//! The subscriber has two layers, each with its own filter:
//! - log lines on stderr (text or JSON, `log_format`), filtered by `log`
//!   (`HERALD_LOG`, EnvFilter syntax), coloured only when stderr is a
//!   terminal;
//! - with `otlp_endpoint`: Herald's info-level spans (API requests, client
//!   publishes, writer messages, edge deliveries) and the events inside them,
//!   exported over OTLP/HTTP (protobuf) by a batch processor on its own
//!   thread, with a bounded queue (`otlp_queue_size`; a span past it is
//!   dropped) and a flush on shutdown ([`Telemetry::shutdown`]).
//!
//! A trace follows a publication across processes in W3C `traceparent` /
//! `tracestate` headers: on the API request (a caller's trace continues), on
//! the JetStream ingest message, and on the channel publication the writer
//! publishes. [`enabled`] is one atomic load: with export off the hot paths
//! check it and do nothing else (no header parsing, no per-message span).
//!
//! Knows nothing of roles, NATS subjects or what a span means: callers name
//! their spans and decide where a trace continues.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::http;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{Config, LogFormat, OtlpConfig};

/// The OTLP/HTTP path of traces under `otlp_endpoint`.
const TRACES_PATH: &str = "/v1/traces";
/// Bound on one export request (connect, send, read the answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector answer read (it is only checked for its status).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The `target` prefix of the spans and events that are exported.
const EXPORTED_TARGET: &str = "herald";

/// Set once, when export starts; read on every hot-path check.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: false unless `otlp_endpoint` is set.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// What must be shut down before the process exits: the span exporter.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter thread. Blocks
    /// (at most the export timeout); call it outside the runtime but while
    /// the runtime still exists, since exports run on it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
    }
}

/// Log lines only (commands that are not a role, e.g. `migrate`).
pub fn init_logs(config: &Config) -> Result<Telemetry, TelemetryError> {
    Registry::default()
        .with(log_layer(config))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider: None })
}

/// Log lines, plus span export when `otlp_endpoint` is set. `runtime` runs
/// the export requests; `role` names the service (`herald-<role>`) unless
/// `otlp_service_name` does.
pub fn init(
    config: &Config,
    role: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<Telemetry, TelemetryError> {
    let Some(endpoint) = &config.otlp.endpoint else {
        return init_logs(config);
    };
    let provider = provider(&config.otlp, endpoint, role, runtime)?;
    let export = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("herald"))
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(EXPORTED_TARGET, tracing::Level::INFO));
    Registry::default()
        .with(log_layer(config))
        .with(export)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn log_layer(config: &Config) -> Box<dyn Layer<Registry> + Send + Sync> {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_stderr());
    match config.log_format {
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
        LogFormat::Text => layer.with_filter(filter).boxed(),
    }
}

/// Colour codes only for a person at a terminal: a file or a pipe (a log
/// collector, `2> herald.log`) gets plain text, and `NO_COLOR` turns colour
/// off everywhere (no-color.org).
fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn provider(
    otlp: &OtlpConfig,
    endpoint: &str,
    role: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<SdkTracerProvider, TelemetryError> {
    let url = format!("{endpoint}{TRACES_PATH}");
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(RuntimeHttpClient {
            runtime: runtime.clone(),
        })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: url,
            source,
        })?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(otlp.queue_size)
        .build();
    let service = otlp
        .service_name
        .clone()
        .unwrap_or_else(|| format!("herald-{role}"));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build())
}

/// The exporter's HTTP/1.1 client. The batch processor runs exports on its
/// own thread, outside the runtime; each request is spawned onto the runtime
/// (the socket needs its reactor) and awaited from there. One connection per
/// export: exports are a few per second at most.
#[derive(Debug)]
struct RuntimeHttpClient {
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // Built inside the task: a timer needs the runtime's context.
        let exchange = async move { tokio::time::timeout(EXPORT_TIMEOUT, post(request)).await };
        match self.runtime.spawn(exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("OTLP export timed out".into()),
            Err(e) => Err(Box::new(e)),
        }
    }
}

async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .ok_or("OTLP endpoint has no host")?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "OTLP connection failed");
        }
    });
    // HTTP/1.1 wants the path in the request line and the host in a header.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    parts.headers.insert(
        http::header::HOST,
        http::HeaderValue::from_str(authority.as_str())?,
    );
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Writes `span`'s trace context (`traceparent`, `tracestate`) into NATS
/// message headers. Nothing when export is off or the span is not traced.
pub fn inject_nats(span: &Span, headers: &mut async_nats::HeaderMap) {
    if enabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut NatsHeaders(headers));
    }
}

/// [`inject_nats`] with the current span: a publish continues the trace of
/// the request or command it serves.
pub fn inject_current_nats(headers: &mut async_nats::HeaderMap) {
    if enabled() {
        inject_nats(&Span::current(), headers);
    }
}

/// A span continuing the trace carried by NATS `headers`: `make` builds it
/// (a root span, `parent: None`) and it is made the remote span's child.
/// [`Span::none`] — and `make` not called — when export is off or the
/// headers carry no trace context.
pub fn nats_child(headers: Option<&async_nats::HeaderMap>, make: impl FnOnce() -> Span) -> Span {
    if !enabled() {
        return Span::none();
    }
    let Some(parent) = headers.and_then(|h| remote(&NatsHeaderReader(h))) else {
        return Span::none();
    };
    let span = make();
    // Fails only when the span is not exported (filtered out): nothing to link.
    let _ = span.set_parent(parent);
    span
}

/// Makes `span` (not yet entered) a child of the caller's trace when the
/// HTTP `headers` carry one and export is on; otherwise it stays a root.
pub fn continue_http(span: &Span, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    if let Some(parent) = remote(&opentelemetry_http::HeaderExtractor(headers)) {
        let _ = span.set_parent(parent);
    }
}

/// The remote span context in `carrier`, if it holds a valid one.
fn remote(carrier: &dyn Extractor) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// `Injector` over NATS headers; invalid names or values are skipped.
struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let Ok(name) = async_nats::header::HeaderName::from_str(key)
            && !value.contains(['\r', '\n'])
        {
            self.0.insert(name, value);
        }
    }
}

struct NatsHeaderReader<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_context_round_trips_through_nats_headers() {
        let mut incoming = async_nats::HeaderMap::new();
        incoming.insert("traceparent", PARENT);
        let cx = remote(&NatsHeaderReader(&incoming)).expect("a valid context");
        let mut outgoing = async_nats::HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut NatsHeaders(&mut outgoing));
        assert_eq!(
            outgoing.get("traceparent").map(|v| v.as_str()),
            Some(PARENT)
        );
    }

    #[test]
    fn no_context_without_a_valid_traceparent() {
        let mut h = async_nats::HeaderMap::new();
        assert!(remote(&NatsHeaderReader(&h)).is_none());
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        );
        assert!(remote(&NatsHeaderReader(&h)).is_none());
        h.insert("traceparent", "garbage");
        assert!(remote(&NatsHeaderReader(&h)).is_none());
    }

    #[test]
    fn export_is_off_until_started() {
        // No test in this binary starts export, so nothing is injected.
        let mut h = async_nats::HeaderMap::new();
        inject_current_nats(&mut h);
        assert!(h.is_empty());
        let span = nats_child(None, || unreachable!("not called when export is off"));
        assert!(span.is_none());
    }
}
