//! Wires the roles of one process: `serve` (edge + writer + sync), or one of
//! `edge`, `writer`, `sync`. Owns startup order (secret, NATS, stream, store,
//! tasks, listener) and shutdown order (stop accepting, close sessions, stop
//! the writer after its batch in hand, stop sync, stop a child nats-server).
//!
//! Used by `main` and, in process, by the integration tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::get;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, publisher::Publisher, server::NatsServer};
use crate::config::{Config, Secret, StoreBackend};
use crate::edge::{Edge, EdgeSettings};
use crate::protocol::Disconnect;
use crate::store::scylla::{ScyllaSettings, ScyllaStore};
use crate::store::{SharedStore, StoreErrorKind, StoreOptions, embedded::EmbeddedStore};
use crate::sync::{SyncService, SyncSettings, client::SyncClient};
use crate::writer::{self, WriterSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Serve,
    Edge,
    Writer,
    Sync,
}

impl From<Role> for crate::metrics::RoleParts {
    fn from(role: Role) -> Self {
        Self {
            label: role.name(),
            edge: role.has_edge(),
            writer: role.has_writer(),
            sync: role.has_sync(),
        }
    }
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Edge => "edge",
            Self::Writer => "writer",
            Self::Sync => "sync",
        }
    }
    pub fn has_edge(self) -> bool {
        matches!(self, Self::Serve | Self::Edge)
    }
    pub fn has_writer(self) -> bool {
        matches!(self, Self::Serve | Self::Writer)
    }
    pub fn has_sync(self) -> bool {
        matches!(self, Self::Serve | Self::Sync)
    }
}

/// Things worth telling the operator at start.
#[derive(Debug, Default)]
pub struct StartNotes {
    /// The secret was generated and stored at this path.
    pub generated_secret: Option<std::path::PathBuf>,
    /// A nats-server child was started at this URL.
    pub started_nats: Option<String>,
    pub api_enabled: bool,
    /// The demo chat is served at /demo.
    pub demo: bool,
    /// The admin console is served at /admin.
    pub admin: bool,
}

/// A started process. Dropping it does not stop it: call [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    pub internal_addr: Option<SocketAddr>,
    /// The server API's own listener (`api_listen`), when configured.
    pub api_addr: Option<SocketAddr>,
    pub notes: StartNotes,
    /// The client token secret in use (generated or configured).
    pub token_secret: Option<Secret>,
    pub nats_url: String,
    shutdown: CancellationToken,
    edge: Option<Arc<Edge>>,
    /// The edge's control subscription (server API per-user commands).
    control: Option<JoinHandle<()>>,
    /// How long `stop` spreads closing client sessions over.
    shutdown_drain: Duration,
    writer: Option<JoinHandle<()>>,
    sync: Option<JoinHandle<()>>,
    http: Vec<JoinHandle<()>>,
    nats_child: Option<NatsServer>,
    nats: async_nats::Client,
}

impl Running {
    /// A token that fires when the process should stop (e.g. for signals).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Graceful stop: close client sessions (3001, they reconnect elsewhere)
    /// spread over `shutdown_drain`, stop listeners, let the writer finish
    /// its batch, stop sync, flush NATS.
    pub async fn stop(mut self) {
        if let Some(edge) = &self.edge {
            edge.close_all(Disconnect::SHUTDOWN, self.shutdown_drain)
                .await;
        }
        self.shutdown.cancel();
        if let Some(c) = self.control.take() {
            let _ = c.await;
        }
        for h in self.http.drain(..) {
            let _ = h.await;
        }
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
        if let Some(s) = self.sync.take() {
            let _ = s.await;
        }
        let _ = self.nats.flush().await;
        if let Some(child) = self.nats_child.take() {
            child.stop().await;
        }
    }

    /// Waits until the shutdown token fires, then stops gracefully.
    pub async fn run_until_stopped(self) {
        self.shutdown.cancelled().await;
        self.stop().await;
    }
}

/// Loads the secret from the data dir, or generates and stores one
/// (`crate::secrets`: 0600, never through a symlink).
fn ensure_secret(config: &Config) -> anyhow::Result<(Secret, bool)> {
    let path = config.generated_secret_path();
    crate::secrets::load_or_generate(&path)
        .with_context(|| format!("storing the generated secret at {}", path.display()))
}

/// Starts `role` with `config`. Returns once every listener is bound.
pub async fn start(role: Role, config: Config) -> anyhow::Result<Running> {
    start_with_shutdown(role, config, CancellationToken::new()).await
}

/// Why `start` returned without a running process.
#[derive(Debug, thiserror::Error)]
#[error("stopped while waiting for the store")]
pub struct StoppedWhileWaiting;

/// How often a standby retries the store lock.
const LOCK_RETRY: Duration = Duration::from_millis(250);

/// How long a process keeps retrying an unreachable ScyllaDB at start.
const SCYLLA_CONNECT_PATIENCE: Duration = Duration::from_secs(60);
/// The pause between two ScyllaDB connection attempts at start.
const SCYLLA_RETRY: Duration = Duration::from_secs(2);

/// Opens the configured store backend, measured (`store::metered`).
async fn open_store(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<SharedStore> {
    let options = StoreOptions {
        idempotency_retention: config.idempotency_retention,
    };
    let (store, backend) = match config.store {
        StoreBackend::Embedded => (open_embedded(config, options, shutdown).await?, "embedded"),
        StoreBackend::Scylla => (
            Box::pin(open_scylla(config, options, shutdown)).await?,
            "scylla",
        ),
    };
    Ok(crate::store::metered::wrap(store, backend))
}

/// Connects to ScyllaDB, retrying retryable failures (the cluster still
/// starting) for [`SCYLLA_CONNECT_PATIENCE`], until `shutdown` fires.
async fn open_scylla(
    config: &Config,
    options: StoreOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<SharedStore> {
    let settings =
        ScyllaSettings::from_config(&config.scylla).with_history_retention(&config.channels);
    let deadline = tokio::time::Instant::now() + SCYLLA_CONNECT_PATIENCE;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Err(StoppedWhileWaiting.into()),
            // Boxed: the driver's connect future is deeply nested, and
            // inlining it in this one overflows the layout depth of the
            // crates that embed `start`.
            r = Box::pin(ScyllaStore::connect(&settings, options.clone())) => r,
        };
        match attempt {
            Ok(store) => {
                tracing::info!(keyspace = %settings.cluster.keyspace, backend = "scylla", "store open");
                return Ok(Arc::new(store));
            }
            Err(e) if e.kind.retryable() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "scylla store not ready; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(StoppedWhileWaiting.into()),
                    _ = tokio::time::sleep(SCYLLA_RETRY) => {}
                }
            }
            Err(e) => {
                bail!(
                    "{e}. Check scylla_nodes (HERALD_SCYLLA_NODES = {}) and that `herald migrate` \
                     has created keyspace {}",
                    settings.cluster.nodes.join(","),
                    settings.cluster.keyspace
                )
            }
        }
    }
}

/// Opens the embedded store; with `store_wait_for_lock`, waits (a standby)
/// while another process holds it, until it can take over or `shutdown`
/// fires.
async fn open_embedded(
    config: &Config,
    options: StoreOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<SharedStore> {
    let dir = config.data_dir.join("store");
    let mut announced = false;
    loop {
        let (d, o) = (dir.clone(), options.clone());
        let (channels, every) = (config.channels.clone(), config.store_expiry_interval);
        let opened = tokio::task::spawn_blocking(move || {
            let mut store = EmbeddedStore::open(&d, o)?;
            store.start_expiry(channels, every)?;
            Ok::<_, crate::store::StoreError>(store)
        })
        .await
        .context("store open task")?;
        match opened {
            Ok(store) => {
                tracing::info!(dir = %dir.display(), backend = "embedded", "store open");
                return Ok(Arc::new(store));
            }
            Err(e) if e.kind == StoreErrorKind::Locked && config.store_wait_for_lock => {
                if !announced {
                    tracing::info!(dir = %dir.display(), "store locked by another process; waiting as a standby");
                    announced = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(StoppedWhileWaiting.into()),
                    _ = tokio::time::sleep(LOCK_RETRY) => {}
                }
            }
            Err(e) if e.kind == StoreErrorKind::Locked => {
                bail!(
                    "{e}. Only one process may open an embedded store: run one `herald serve` per data dir \
                     (plus any number of `herald edge`), or set store_wait_for_lock=true \
                     (HERALD_STORE_WAIT_FOR_LOCK) to wait as a standby"
                )
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("opening the embedded store at {}", dir.display())));
            }
        }
    }
}

/// [`start`] with a shutdown token the caller owns (signals), so a standby
/// waiting for the store lock can be stopped.
pub async fn start_with_shutdown(
    role: Role,
    mut config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    if config.demo {
        crate::web::demo::add_rooms(&mut config.channels);
    }
    let metrics = crate::metrics::install(role);
    let mut notes = StartNotes::default();
    if role.has_writer() || role.has_sync() || role == Role::Serve {
        crate::secrets::ensure_private_dir(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    }

    // The token secret: required by roles that verify tokens.
    let token_secret = match (&config.token_hmac_secret, role) {
        (Some(s), _) => Some(s.clone()),
        (None, Role::Serve) if !config.token.has_asymmetric() => {
            let (s, generated) = ensure_secret(&config)?;
            if generated {
                notes.generated_secret = Some(config.generated_secret_path());
            }
            Some(s)
        }
        (None, Role::Edge | Role::Sync) if !config.token.has_asymmetric() => {
            bail!(
                "token_hmac_secret (HERALD_TOKEN_HMAC_SECRET) must be set for `herald {}`",
                role.name()
            )
        }
        (None, _) => None,
    };
    let verifier = crate::tokens::verifier(&config.token, token_secret.as_ref(), &shutdown)?
        .require_exp(config.token_require_exp);
    let tls = crate::tls::setup(config.tls.as_ref(), &shutdown)?;
    let internal_tls = tls.clone().filter(|_| config.tls_internal);

    // The store first: a standby must not touch the zero-config nats-server
    // of the data dir before it holds the store.
    let store: Option<SharedStore> = if role.has_writer() || role.has_sync() {
        Some(open_store(&config, &shutdown).await?)
    } else {
        None
    };

    // NATS, with the zero-config child for `serve`.
    let mut nats_child = None;
    let name = format!("herald-{}", role.name());
    let nats = match bus::connect(&config.nats.url, &name, &config.nats.auth).await {
        Ok(c) => c,
        Err(bus::ConnectError::Unreachable { url, message })
            if role == Role::Serve && config.nats.autostart =>
        {
            tracing::info!(%url, %message, "no NATS answers; starting nats-server as a child");
            let auth = crate::secrets::child_nats_auth(&config)?;
            let child = NatsServer::start_authenticated(
                &config.nats.server_bin,
                &config.data_dir.join("nats"),
                &auth,
            )
            .await
            .context("starting nats-server (nats_autostart)")?;
            let client = bus::connect(&child.url, &name, &auth).await?;
            notes.started_nats = Some(child.url.clone());
            nats_child = Some(child);
            client
        }
        Err(e) => return Err(e.into()),
    };
    let nats_url = nats_child
        .as_ref()
        .map_or(config.nats.url.clone(), |c| c.url.clone());
    let js = async_nats::jetstream::new(nats.clone());
    bus::ingest::ensure_stream(&js, &config.ingest).await?;
    if config.webhooks.enabled() && (role.has_edge() || role.has_writer()) {
        crate::webhooks::ensure_stream(&js, &config.webhooks)
            .await
            .map_err(|e| anyhow::anyhow!("creating the webhook events stream: {e}"))?;
    }
    let info = nats.server_info();
    tracing::info!(
        url = %crate::secrets::redact_urls(&nats_url),
        version = %info.version,
        server = %info.server_name,
        "nats connected"
    );
    tracing::info!(
        stream = bus::subjects::INGEST_STREAM,
        subjects = bus::subjects::ingest_wildcard(),
        partitions = config.ingest.partitions,
        duplicate_window = ?config.ingest.duplicate_window,
        max_bytes = config.ingest.max_bytes,
        "ingest stream ready"
    );

    // One watch of the revocations bucket per process, enforced by its edge
    // (sessions) and its sync HTTP API alike.
    let revocations = if role.has_sync() || role.has_edge() {
        Some(
            crate::revocation::Revocations::open(
                nats.clone(),
                config.nats.kv_replicas,
                shutdown.clone(),
            )
            .await
            .context("opening the revocations bucket")?,
        )
    } else {
        None
    };

    let mut router = Router::new();
    let mut sync_task = None;
    let mut sync_service = None;
    if role.has_sync() {
        let service = Arc::new(SyncService::new(
            store.clone().expect("sync has a store"),
            config.channels.clone(),
            SyncSettings::from_config(&config.sync),
        ));
        if let Some(r) = &revocations {
            service.set_revocations(r.clone());
        }
        let limit = crate::http_limit::RequestLimit::new(
            config.sync_http_rate_per_ip,
            config.sync_http_rate_per_key,
            ("sync_ip", "sync_key"),
        );
        router = router.merge(limit.wrap(service.router(verifier.clone())));
        let (client, token) = (nats.clone(), shutdown.clone());
        let svc = service.clone();
        sync_service = Some(service.clone());
        sync_task = Some(tokio::spawn(async move {
            if let Err(e) = svc.serve_nats(client, token).await {
                tracing::error!(error = %e, "sync responder stopped");
            }
        }));
    }

    let push_settings = crate::push::queue_settings(&config.push, config.nats.kv_replicas);
    if role.has_edge() || role.has_sync() {
        crate::push::queue::register_metrics();
    }
    if role.has_sync() {
        let senders = crate::push::senders(&config.push)
            .map_err(|e| anyhow::anyhow!("push notifications: {e}"))?;
        if !senders.is_empty() {
            let senders = crate::push::queue::Senders::new(senders, config.push.rate_per_provider);
            let (js, store, token, settings) = (
                js.clone(),
                store.clone().expect("sync has a store"),
                shutdown.clone(),
                push_settings.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = crate::push::queue::run(js, store, senders, settings, token).await {
                    tracing::error!(error = %e, "push worker stopped");
                }
            });
        }
    }

    let mut writer_task = None;
    if role.has_writer() {
        let settings = WriterSettings {
            partitions: config.ingest.partitions,
            batch_size: config.writer.batch_size,
            pipeline_depth: config.writer.pipeline_depth,
            max_ack_pending: config.ingest.max_ack_pending,
            ack_wait: config.writer.failover_timeout,
            head_cache_capacity: writer::DEFAULT_HEAD_CACHE_CAPACITY,
            failover_timeout: config.writer.failover_timeout,
            kv_replicas: config.nats.kv_replicas,
        };
        let (client, store, token) = (
            nats.clone(),
            store.clone().expect("writer has a store"),
            shutdown.clone(),
        );
        let hooks =
            crate::webhooks::WriterHooks::new(nats.clone(), &config.webhooks, &config.channels);
        writer_task = Some(tokio::spawn(async move {
            let run = match writer::WriterInstance::new(client, store, settings) {
                Ok(w) => w.with_webhooks(hooks).run(token.clone()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = run {
                tracing::error!(error = %e, "writer stopped");
                token.cancel();
            }
        }));
    }

    let mut edge = None;
    let mut admin = None;
    let mut control_task = None;
    let mut http = Vec::new();
    let mut api_addr = None;
    if role.has_edge() {
        let sync_client = SyncClient::new(nats.clone(), config.sync.timeout);
        let publisher = Publisher::start(
            nats.clone(),
            Arc::new(sync_client.clone()),
            config.ingest.partitions,
            config.ingest.max_ack_pending.max(1) as usize * config.ingest.partitions as usize,
            config.client.publish_timeout,
            config.ingest.format,
        )
        .await?;
        let e = Edge::new(
            EdgeSettings {
                client: config.client.clone(),
                channels: config.channels.clone(),
                presence: config.presence.clone(),
                kv_replicas: config.nats.kv_replicas,
                rate_limits: config.rate_limits.clone(),
                connection_limits: config.connection_limits.clone(),
                allowed_origins: config.allowed_origins.clone(),
                proxies: config.proxies.clone(),
                webpush_endpoints: config.push.webpush_endpoints.clone(),
            },
            nats.clone(),
            publisher.clone(),
            sync_client.clone(),
            verifier.clone(),
            config.sync.timeout,
        );
        if let Some(r) = &revocations {
            e.set_revocations(r.clone());
        }
        let control = e
            .serve_control(shutdown.clone())
            .await
            .context("subscribing to the per-user control subjects")?;
        let presence = e
            .serve_presence(shutdown.clone())
            .await
            .context("starting presence (queries, heartbeats, status bucket)")?;
        let emulation = e
            .serve_emulation(shutdown.clone())
            .await
            .context("subscribing to routed emulation requests")?;
        let webhooks = config
            .webhooks
            .enabled()
            .then(|| e.start_webhooks(&config.webhooks, shutdown.clone()));
        control_task = Some(tokio::spawn(async move {
            let _ = control.await;
            let _ = presence.await;
            let _ = emulation.await;
            if let Some(w) = webhooks {
                let _ = w.await;
            }
        }));
        router = router.merge(e.router());
        let push_queue = crate::push::queue::Enqueuer::new(js.clone(), &push_settings)
            .await
            .context("creating the push stream")?;
        if crate::push::unread::enabled(&config.channels) {
            let run = crate::push::unread::run(
                nats.clone(),
                config.channels.clone(),
                sync_client.clone(),
                e.presence_handle(),
                push_queue.clone(),
                config.push.unread_max_pending,
                shutdown.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = run.await {
                    tracing::error!(error = %e, "unread push dispatcher stopped");
                }
            });
        }
        notes.api_enabled = config.api_key.is_some();
        let api_caller = crate::api::Caller::new(crate::api::ApiState {
            key: config.api_key.clone(),
            publisher,
            sync: sync_client,
            channels: config.channels.clone(),
            history_page_limit: config.client.history_page_limit,
            edge: e.clone(),
            failures: crate::api::limit::FailureLimit::per_minute(
                config.api_key_failures_per_minute,
            ),
            push: push_queue,
        });
        if config.demo {
            let secret = token_secret
                .clone()
                .context("demo mints tokens: it needs token_hmac_secret")?;
            router = router.merge(crate::web::demo::router(secret, api_caller.clone()));
            notes.demo = true;
        }
        if let Some(password) = config.admin_password.clone() {
            let metrics = metrics.clone();
            admin = Some(crate::web::admin::router(
                crate::web::admin::AdminSettings {
                    password,
                    session_ttl: config.admin_session_ttl,
                    secure: if config.internal_listen.is_some() {
                        internal_tls.is_some()
                    } else {
                        tls.is_some()
                    },
                    api: api_caller.clone(),
                    edge: e.clone(),
                    nats: nats.clone(),
                    partitions: config.ingest.partitions,
                    role: role.name(),
                    metrics: Arc::new(move || metrics.render()),
                    failures: crate::api::limit::FailureLimit::per_minute(
                        config.api_key_failures_per_minute,
                    ),
                },
            ));
        }
        if notes.api_enabled {
            let api = crate::api::router(api_caller);
            let api = crate::http_limit::RequestLimit::new(
                config.api_rate_per_ip,
                config.api_rate_per_key,
                ("api_ip", "api_key"),
            )
            .wrap(api);
            match config.api_listen {
                Some(addr) => {
                    let (bound, task) = serve_http(
                        addr,
                        api,
                        config.http,
                        shutdown.clone(),
                        internal_tls.clone(),
                    )
                    .await?;
                    http.push(task);
                    api_addr = Some(bound);
                }
                None => router = router.merge(api),
            }
        }
        edge = Some(e);
    }

    let readiness = Readiness {
        role,
        nats: nats.clone(),
        sync: sync_service,
    };
    let ops = Router::new()
        .route(
            "/health",
            get(move || std::future::ready(readiness.check())),
        )
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    if config.admin_password.is_some() && admin.is_none() {
        tracing::warn!(
            role = role.name(),
            "admin_password is set but this role has no edge: no admin console"
        );
    }
    notes.admin = admin.is_some();
    let ops = match admin {
        Some(a) => ops.merge(a),
        None => ops,
    };
    let internal_addr = match config.internal_listen {
        Some(addr) => {
            let (bound, task) =
                serve_http(addr, ops, config.http, shutdown.clone(), internal_tls).await?;
            http.push(task);
            Some(bound)
        }
        None => {
            router = router.merge(ops);
            None
        }
    };
    let (addr, task) =
        serve_http(config.listen, router, config.http, shutdown.clone(), tls).await?;
    http.push(task);
    tracing::info!(role = role.name(), %addr, internal = ?internal_addr, api = ?api_addr, tls = config.tls.is_some(), "listening");

    Ok(Running {
        addr,
        internal_addr,
        api_addr,
        notes,
        token_secret,
        nats_url,
        shutdown,
        edge,
        control: control_task,
        shutdown_drain: config.shutdown_drain,
        writer: writer_task,
        sync: sync_task,
        http,
        nats_child,
        nats,
    })
}

/// What `/health` checks: NATS connected, and each component's NATS
/// subscriptions in place. 200 `{"status":"ok"}` when ready, otherwise 503
/// with the reason, so a load balancer or orchestrator stops sending traffic.
#[derive(Clone)]
struct Readiness {
    role: Role,
    nats: async_nats::Client,
    sync: Option<Arc<SyncService>>,
}

impl Readiness {
    fn check(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut problems = Vec::new();
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            problems.push("nats disconnected");
        }
        if self.sync.as_ref().is_some_and(|s| !s.is_ready()) {
            problems.push("sync responder not subscribed");
        }
        let body = if problems.is_empty() {
            serde_json::json!({"status": "ok", "role": self.role.name()})
        } else {
            serde_json::json!({"status": "unavailable", "role": self.role.name(), "problems": problems})
        };
        let status = if problems.is_empty() {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        };
        (status, axum::Json(body)).into_response()
    }
}

async fn serve_http(
    addr: SocketAddr,
    router: Router,
    limits: crate::http_server::HttpLimits,
    shutdown: CancellationToken,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    if let Some(tls) = tls {
        return Ok((
            bound,
            crate::tls::serve(listener, router, limits, tls, shutdown)?,
        ));
    }
    // Pushes are small frames written as they come: without TCP_NODELAY,
    // Nagle's algorithm holds one back until the client's delayed ACK
    // (tens of ms; measured with `herald bench fanout`).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    Ok((
        bound,
        crate::http_server::spawn(listener, router, limits, shutdown),
    ))
}
