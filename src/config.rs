//! Configuration: every option, its `HERALD_*` name, default and meaning in one
//! table ([`OPTIONS`]); layered TOML file < environment < flags; every bad value
//! reported at once, before any port is bound (the binary exits 64).
//!
//! Knows nothing of how the roles use the values: it produces typed structs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One documented option. `key` is its TOML name and, upper-cased with a
/// `HERALD_` prefix, its environment name.
pub struct OptionSpec {
    pub key: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

macro_rules! options {
    ($($key:literal = $default:literal : $doc:literal;)*) => {
        pub const OPTIONS: &[OptionSpec] = &[$(OptionSpec { key: $key, default: $default, doc: $doc }),*];
    };
}

options! {
    "listen" = "127.0.0.1:8000" : "Address of the public listener: client WebSocket, server API, sync HTTP, /health and /metrics.";
    "internal_listen" = "" : "Optional second listener for /metrics and /health only; when set they leave the public listener.";
    "api_listen" = "" : "Optional listener for the server API alone; when set the API leaves the public listener. Recommended: a private address only backends reach.";
    "api_key_failures_per_minute" = "10" : "Requests with a missing or wrong API key allowed per client IP per minute (as a burst, refilled evenly); past it the API answers 429 with Retry-After. The IPs tracked are bounded (65536).";
    "http_header_read_timeout" = "10s" : "Longest a client may take to send a complete HTTP request head on every listener, and the longest a keep-alive connection may stay idle between requests; then the connection is closed (slow-loris).";
    "http_max_connections" = "65536" : "Most connections open at once on each listener, WebSockets included; one more is answered 503 and closed at once (counted in herald_limit_hits_total{limit=\"http_connections\"}), the open ones are not affected.";
    "api_rate_per_ip" = "1000/1s" : "Server API requests per client IP, as N/period (a burst of N refilled over the period); past it 429 with Retry-After and error 111. Empty = no limit.";
    "api_rate_per_key" = "10000/1s" : "Server API requests per presented API key (right or wrong), as N/period; past it 429 with Retry-After. Empty = no limit.";
    "sync_http_rate_per_ip" = "1000/1s" : "Sync HTTP API (/api/v1/…) requests per client IP, as N/period; past it 429 with Retry-After and error 111. Empty = no limit.";
    "sync_http_rate_per_key" = "100/1s" : "Sync HTTP API requests per presented bearer token, as N/period; past it 429 with Retry-After. Empty = no limit.";
    "rate_limit_default_tier" = "default" : "The rate-limit tier of connections whose token has no `tier` claim or names a tier not configured; must be a `[rate_limits.tiers.<name>]` table (`default` is built in: per connection 1000 commands per second in total; per user 5000 and 100 connects per second).";
    "rate_limit_disconnect_multiple" = "4" : "A client refused with error 111 that keeps sending past this multiple of a limit (its burst and rate times this) is disconnected with 3013 (too many requests; SDKs reconnect after a backoff). 1 = disconnect at the first command over a limit.";
    "tls_cert" = "" : "PEM certificate chain for TLS on the public listener (wss://, https://), with tls_key; reloaded when the file changes. Empty = plain HTTP (e.g. behind a TLS-terminating proxy).";
    "tls_key" = "" : "PEM private key of tls_cert.";
    "tls_internal" = "false" : "Serve internal_listen and api_listen with TLS too (same certificate).";
    "tls_reload_interval" = "10s" : "How often tls_cert and tls_key are checked for changes; a changed, valid pair is used for new connections.";
    "data_dir" = "./data" : "Directory of the embedded store, the generated secret and an auto-started nats-server.";
    "nats_url" = "nats://127.0.0.1:4222" : "NATS servers (>= 2.10 with JetStream) to connect to: one URL or a comma-separated list of a cluster's nodes; the connection moves to any reachable node (also those the cluster announces) when one is lost.";
    "nats_kv_replicas" = "1" : "Replicas of Herald's NATS KV buckets (writer leases, users' last-seen times), 1..=5; 3 on a 3-node NATS cluster so losing a node loses no lease. Applied when a bucket is created or opened.";
    "nats_autostart" = "true" : "`serve` only: when no NATS answers at nats_url, start nats-server from PATH as a child process.";
    "nats_server_bin" = "nats-server" : "The nats-server binary used by nats_autostart.";
    "nats_user" = "" : "NATS user name (with nats_password). Every role connects with the same NATS credentials.";
    "nats_password" = "" : "NATS password of nats_user.";
    "nats_token" = "" : "NATS authentication token.";
    "nats_nkey_seed" = "" : "NATS NKey seed (`SU…`) of a user authorized by its public key.";
    "nats_creds_file" = "" : "Path of a NATS credentials file (JWT + NKey seed, `.creds`).";
    "token_hmac_secret" = "" : "HMAC (HS256/384/512) secret of client connection and subscription JWTs, at least 32 bytes. `serve` generates one in data_dir when unset and no public key or JWKS is configured.";
    "token_public_keys" = "" : "Comma-separated paths of PEM public keys verifying client JWTs: RSA (RS256/384/512), EC P-256/P-384 (ES256/ES384), Ed25519 (EdDSA). Tried in order for a token without `kid`.";
    "token_jwks_url" = "" : "http(s) URL of a JWK Set; a token with a `kid` is verified with the set's key of that kid. Fetched at start, on the refresh interval and on an unknown kid; the last good set is kept when a fetch fails.";
    "token_jwks_refresh_interval" = "5m" : "How often the JWK Set is fetched again.";
    "token_jwks_min_fetch_interval" = "10s" : "Least time between two fetches caused by tokens naming an unknown kid (a flood of made-up kids costs one fetch per interval).";
    "token_audience" = "" : "When set, client JWTs must carry this `aud`.";
    "token_issuer" = "" : "When set, client JWTs must carry this `iss`.";
    "token_require_exp" = "false" : "Refuse connection and subscription tokens without `exp` (invalid token, 3500). Off, as in Centrifugo: such a token never expires.";
    "api_key" = "" : "Key of the server HTTP API (X-API-Key or `Authorization: apikey`). Empty disables the API (404).";
    "admin_password" = "" : "Password of the admin console at /admin (on internal_listen when set, else on listen). Empty = no console (404). Use a long random one: it gives the whole server API.";
    "admin_session_ttl" = "12h" : "How long an admin console login lasts (its HttpOnly, SameSite=Strict session cookie); then the console asks for the password again.";
    "demo" = "false" : "Serve the demo chat at /demo and its token endpoint POST /demo/token, which mints a short-lived connection token for any name it is given: never on a server others can reach. `herald serve --demo` sets it.";
    "log" = "info,lsm_tree=warn,fjall=warn" : "Log filter (tracing EnvFilter syntax), e.g. `info,herald=debug`.";
    "log_format" = "text" : "`text` for humans, `json` for machines.";
    "client_message_size_limit" = "65536" : "Largest client frame in bytes; a larger one closes the connection with WebSocket code 1009 (message too big), whatever its size.";
    "client_read_buffer_size" = "1024" : "Bytes each connection reads from its socket per read call, and the read buffer it keeps while idle; larger frames are read in several calls. Small keeps idle connections cheap.";
    "client_queue_max_bytes" = "1048576" : "Bound of each connection's outbound queue in bytes; a client past it is disconnected with 3008 (slow).";
    "client_emulation_queue" = "64" : "Commands (`/emulation` requests) waiting for one HTTP-streaming or SSE session; past it a request is refused with 429 and its commands dropped.";
    "client_channel_limit" = "128" : "Subscriptions per connection; one more is error 106 (limit exceeded).";
    "client_max_connections" = "0" : "Most client connections on this node; one more upgrade is answered 503 before the WebSocket is accepted. 0 = no cap besides http_max_connections.";
    "client_max_connections_per_ip" = "0" : "Most client connections from one client IP on this node; one more upgrade is answered 429. 0 = no cap (set it on the open internet; behind a proxy set client_trusted_proxies and client_ip_header).";
    "client_connect_rate_per_ip" = "" : "New client connections per client IP on this node, as N/period (a burst of N refilled over the period); one more upgrade is answered 429 with Retry-After. Empty = no limit.";
    "client_max_connections_per_user" = "0" : "Most connections of one user on this node, applied at connect; past it client_user_limit_policy decides who loses (closed with 3504, connection limit). 0 = no cap.";
    "client_user_limit_policy" = "refuse_new" : "Who loses past client_max_connections_per_user: `refuse_new` (the connecting one is closed with 3504) or `close_oldest` (the user's oldest connection on this node is closed with 3504).";
    "client_trusted_proxies" = "" : "Comma-separated IPs or CIDRs of reverse proxies; only for connections from these is the client IP read from client_ip_header.";
    "client_ip_header" = "" : "Header carrying the client IP when the peer is a trusted proxy, e.g. X-Forwarded-For (the rightmost address that is not a trusted proxy is used).";
    "allowed_origins" = "" : "Comma-separated origins allowed to open a client WebSocket from a browser: exact (`https://app.example.com`) or with `*` wildcards (`https://*.example.com`, `*` = any). Empty = same origin only: an upgrade whose Origin is not its Host gets 403. An upgrade without Origin (servers, mobile SDKs) is always allowed.";
    "client_ping_interval" = "25s" : "The server pings every client this often; announced in the connect reply.";
    "client_pong_timeout" = "8s" : "A client not answering a ping within this is disconnected with 3012 (no pong).";
    "client_stale_timeout" = "10s" : "A connection that sends no connect within this is closed with 3502 (stale).";
    "client_expired_close_delay" = "25s" : "Grace after a connection or subscription token's exp for the client to refresh before it is closed (3005) or unsubscribed.";
    "client_recovery_limit" = "300" : "Most publications a recovering subscribe returns; more missed gives `recovered: false`.";
    "client_subscribe_to_user_personal_channel" = "false" : "Subscribe every authenticated user on connect, server-side, to their personal channel `#user` (in the connect reply's `subs`), as Centrifugo's client.subscribe_to_user_personal_channel (v5: user_subscribe_to_personal).";
    "client_publish_timeout" = "10s" : "How long a publish waits for the store commit before answering error 100: the publication may still be stored, so the server API's error names the `idempotency_key` to retry with (the generated one when the request had none), and the client protocol's says a retry may store a second copy (not temporary).";
    "client_conversation_cache_size" = "100000" : "Per edge, the most (user, channel) pairs the typing limit and the live-receipt coalescing remember, and the most user-limited channels whose member rows it remembers writing. Full: entries idle for a second are forgotten, then typing events and live receipts are dropped (counted); the channel set is cleared (rows are written again, idempotently).";
    "history_page_limit" = "1000" : "Largest history page (client history, server API history, sync HTTP).";
    "ingest_partitions" = "16" : "Partitions of the HERALD_INGEST stream; fixed when the stream is created.";
    "ingest_duplicate_window" = "2m" : "JetStream duplicate window of the ingest stream (short-term idempotency).";
    "ingest_max_bytes" = "1073741824" : "Bound of the ingest stream; when full, publishes fail (backpressure) instead of dropping.";
    "ingest_max_ack_pending" = "4096" : "Unacknowledged messages per partition consumer.";
    "ingest_format" = "binary" : "Wire form of the ingest messages this node's edge and API publish: `binary`, or `json` (what writers before the binary form read) while a rolling upgrade still has such writers; writers read both.";
    "ingest_replicas" = "1" : "Replicas of the HERALD_INGEST stream, 1..=5 (at most the NATS cluster's size); 3 on a 3-node NATS cluster so a node lost loses no accepted publish. An existing stream is updated to it at start.";
    "writer_batch_size" = "256" : "Most messages a writer commits in one store batch.";
    "writer_pipeline_depth" = "2" : "Batches a writer partition holds between sequencing and acknowledging, 1..=16: while a batch's store append is in flight the next one is sequenced and its append queued (each published, replied to and acked only after its own commit and its predecessor's, in order). 1 = one batch at a time.";
    "writer_failover_timeout" = "10s" : "Bound on taking over a dead writer's partitions (at least 1s): leases last two thirds of it, so another writer owns them within it; messages the dead writer held are redelivered after it.";
    "store" = "embedded" : "History store: `embedded` (fjall in data_dir, one process) or `scylla` (a ScyllaDB cluster shared by any number of writer and sync processes).";
    "scylla_nodes" = "" : "`store = scylla`: contact points, a comma-separated list of host:port (e.g. `10.0.0.1:9042,10.0.0.2:9042`).";
    "scylla_keyspace" = "herald" : "`store = scylla`: the keyspace `herald migrate` creates and every process uses.";
    "scylla_local_dc" = "" : "`store = scylla`: the preferred (local) datacenter for token- and DC-aware load balancing; empty = no preference.";
    "scylla_consistency" = "local_quorum" : "`store = scylla`: consistency of every read and write: `local_quorum`, `quorum` or `all` (lightweight transactions use `local_serial` with `local_quorum`, else `serial`). `one` and `local_one` are refused: the writer must read its own heads and keys back (I1, I3).";
    "scylla_username" = "" : "`store = scylla`: user name for password authentication; empty = no authentication.";
    "scylla_password" = "" : "`store = scylla`: password for scylla_username.";
    "scylla_tls" = "false" : "`store = scylla`: connect with TLS (rustls, server verified against the system's root certificates).";
    "scylla_replication" = "{'class': 'SimpleStrategy', 'replication_factor': 1}" : "`herald migrate`: replication of the keyspace it creates; the default suits one laptop node, production wants e.g. {'class': 'NetworkTopologyStrategy', 'replication_factor': 3}.";
    "scylla_request_timeout" = "5s" : "`store = scylla`: client-side timeout of each request (a timed-out write is retried by the writer, a timed-out read answers 503).";
    "store_expiry_interval" = "30s" : "`store = embedded`: how often a background pass deletes publications older than their namespace's history_retention (at most 200 000 publications and 10 000 channels per pass, compacting after 50 000 deletions) and idempotency keys older than idempotency_retention.";
    "store_wait_for_lock" = "false" : "`serve`/`writer`/`sync`: when another process holds the embedded store, wait for it (a standby that takes over when the active one dies) instead of exiting.";
    "shutdown_drain" = "5s" : "On SIGTERM, edges close client connections with 3001 spread over this period, so reconnects do not arrive all at once.";
    "sync_timeout" = "5s" : "How long an edge waits for a sync reply (recovery, history).";
    "idempotency_retention" = "24h" : "How long the store remembers idempotency keys (I3); in a namespace with a shorter history_retention a key expires with its publication, and a retry after that is stored as a new publication.";
    "otlp_endpoint" = "" : "Base URL of an OpenTelemetry OTLP/HTTP receiver (plain http, e.g. `http://127.0.0.1:4318`); spans are sent as protobuf to its `/v1/traces`. Empty = no trace export.";
    "otlp_service_name" = "" : "`service.name` of exported spans; empty = `herald-<role>` (herald-serve, herald-edge, herald-writer, herald-sync).";
    "otlp_sample_ratio" = "1.0" : "Share of new traces (API requests and client publishes without a sampled caller trace) that are exported, 0.0 to 1.0; a caller's `traceparent` decision is always followed.";
    "otlp_queue_size" = "2048" : "Bound of the finished spans waiting for export (sent in batches of up to 512 every 5s); past it new spans are dropped.";
    "channel_history" = "true" : "Default namespace: channels keep durable history with offsets.";
    "channel_client_publish" = "false" : "Default namespace: clients may publish into channels they may subscribe to (off, as in Centrifugo: backends publish through the server API). The built-in `dm` namespace has it on.";
    "channel_private" = "false" : "Default namespace: subscribing needs a subscription token.";
    "channel_history_retention" = "0s" : "Default namespace: history older than this is not served (0s = forever); with `store = scylla` its publications are written with this TTL, so the database frees them; the embedded store deletes them in the background (store_expiry_interval).";
    "channel_history_size" = "0" : "Default namespace: most publications a channel's history serves, 0 = no bound; older ones expire as with retention (not served, offsets keep counting), as Centrifugo's history_size.";
    "channel_anonymous" = "false" : "Default namespace: anonymous connections (a token with an empty `sub`) may subscribe, read history and, with channel_client_publish, publish; as Centrifugo's allow_*_for_anonymous.";
    "channel_presence" = "false" : "Default namespace: clients and the server API may ask a channel's presence and presence stats (on for the built-in `dm` namespace).";
    "channel_join_leave" = "false" : "Default namespace: join and leave pushes go to subscribers that ask for them (`join_leave` in subscribe; on for `dm`).";
    "channel_force_push_join_leave" = "false" : "Default namespace: join and leave pushes go to every subscriber, asked or not (on for `dm`).";
    "channel_membership" = "false" : "Default namespace: only members (server API `add_members`) may subscribe, publish, read history and set markers; a removed member's subscriptions end. User-limited channels (`ns:#a,b`) always have their listed users as members.";
    "channel_receipts" = "true" : "Default namespace: members subscribed to a conversation get live read/delivered receipts of the others (at most one per member per second); off for large rooms.";
    "channel_track_publishers" = "true" : "Default namespace: in a history channel without members (an open channel), a client's publish moves the publisher's read marker to it and lists the channel in their conversations, as in channels with members (own messages are never unread). One marker write per client publish: set false where publishes are no conversation (telemetry, game state).";
    "presence_ttl" = "60s" : "An edge that sent no heartbeat for this long is dead: its connections leave every presence, join/leave (leave pushes) and user status. Edges heartbeat every third of it.";
    "push_rate_per_provider" = "500/1s" : "Sends to each push provider per process, as N/period (a burst of N refilled over the period); past it sends wait in the queue. Empty = no limit.";
    "push_concurrency" = "64" : "Sends in flight at once per process (the sends consumer's unacknowledged messages).";
    "push_retry_backoff" = "1s" : "Delay before the first retry of a send the provider asked to retry (timeout, 429, 5xx); doubled per attempt, at least the provider's Retry-After.";
    "push_retry_max_backoff" = "5m" : "Longest delay between two retries of a send.";
    "push_retry_max_age" = "1h" : "A notification not sent this long after send_push_notification queued it is dropped (counted as expired); also the push stream's max_age.";
    "push_queue_max_messages" = "1000000" : "Most jobs and per-device sends the push stream holds; when full, send_push_notification answers 106 (limit exceeded).";
    "channel_allowed_delta_types" = "" : "Default namespace: comma-separated delta types a subscription may ask for (`fossil`, Centrifugo's allowed_delta_types); a subscription with `delta: \"fossil\"` then gets publications as fossil deltas against the previous one it received (README, Delta compression). Empty = no delta: such a request is ignored.";
    "channel_push_unread_delay" = "0s" : "Default namespace: unread-aware push. A member of a conversation (a channel with members) who has an unread message there and no connected device for this long gets one push (coalesced per conversation), badge = their total unread; reading on any device first cancels it. 0s = off. Per namespace: `push_unread_delay`.";
    "push_unread_max_pending" = "100000" : "Channels waiting for their unread-push delay per edge; past it a new one is not timed (counted in herald_push_unread_total{result=\"dropped\"}).";
    "push_max_devices_per_user" = "20" : "Push devices (device_register, herald.device_register) one user may have; registering one more replaces the user's least recently registered device.";
    "push_fcm_credentials_file" = "" : "FCM: path of the Firebase service-account JSON (`project_id`, `client_email`, `private_key`, `token_uri`); its key signs the RS256 assertion exchanged for an OAuth2 access token. Empty = no FCM sender.";
    "push_fcm_endpoint" = "https://fcm.googleapis.com" : "FCM: base URL of the HTTP v1 API; messages go to `<endpoint>/v1/projects/<project_id>/messages:send`.";
    "push_fcm_token_url" = "" : "FCM: OAuth2 token endpoint; empty = the service account's `token_uri`.";
    "push_apns_key_file" = "" : "APNs: path of the `.p8` token-signing key (PEM, P-256) from the Apple developer account. Empty = no APNs sender.";
    "push_apns_key_id" = "" : "APNs: the key's id (`kid` of the provider token).";
    "push_apns_team_id" = "" : "APNs: the team id (`iss` of the provider token).";
    "push_apns_topic" = "" : "APNs: the default `apns-topic` (the app's bundle id); a notification's `apns.headers` may set another.";
    "push_apns_endpoint" = "https://api.push.apple.com" : "APNs: base URL (HTTP/2); https://api.sandbox.push.apple.com for development builds.";
    "push_webpush_vapid_key_file" = "" : "Web Push: path of the VAPID private key (PEM, P-256; `openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt`). Empty = no Web Push sender.";
    "push_webpush_vapid_subject" = "" : "Web Push: the VAPID `sub` claim, a `mailto:` or `https:` URL where the push service can reach the operator.";
    "push_webpush_allowed_hosts" = "fcm.googleapis.com,push.services.mozilla.com,notify.windows.com,push.apple.com" : "Web Push: comma-separated hosts a subscription's endpoint may name (the host itself or any subdomain of it; `*` = any host). Herald sends each notification to the endpoint the browser gave, so this keeps a registered device from making Herald request an internal address. A registration naming another host is refused (107); a stored device whose host is no longer allowed is removed at its next send.";
    "push_webpush_allow_http" = "false" : "Web Push: also allow `http://` endpoints (a local push gateway, tests). Off: https only.";
    "push_ca_file" = "" : "Extra PEM CA certificates trusted for the push providers' endpoints, beside the system's roots (a private gateway, tests).";
    "push_timeout" = "10s" : "Longest one request to a push provider may take (token exchange included); a timed-out send is retried.";
    "user_status_for_clients" = "false" : "Clients may call the RPC method `herald.user_status` (other users' online status).";
    "channel_publish_events" = "false" : "Default namespace: with webhooks on, every publication stored in the namespace is also sent as a `published` event (channel, offset, epoch, data, info), after the writer's commit.";
    "webhook_endpoints" = "" : "Comma-separated http:// or https:// URLs that receive the event webhooks (README, Event webhooks); each event is POSTed to every one. Empty = webhooks off: no event is emitted. Set the webhook_* options alike on every process (edges emit, writers emit `published` and dispatch).";
    "webhook_secret" = "" : "Key of the HMAC-SHA256 signature of each event body (header X-Herald-Signature: sha256=<hex>); required with webhook_endpoints.";
    "webhook_events" = "connected,disconnected,subscribed,unsubscribed,user_online,user_offline,published" : "Comma-separated event types to emit (`published` only in namespaces with publish_events).";
    "webhook_timeout" = "5s" : "Longest one POST may take (connect, send, answer); past it the attempt failed and is retried.";
    "webhook_retry_initial" = "500ms" : "Wait after an event's first failed delivery; doubled after each further failure (±20 % jitter) up to webhook_retry_max.";
    "webhook_retry_max" = "60s" : "Longest wait between two delivery attempts of one event.";
    "webhook_max_age" = "24h" : "An event still not delivered this long after it happened is given up: acked, counted in herald_webhook_events_expired_total and logged. Its user's next events follow.";
    "webhook_concurrency" = "64" : "Events being delivered at once (each from a different key: one user's events go one at a time, in order).";
    "webhook_max_pending" = "10000" : "Events the dispatcher holds at once (the consumer's max_ack_pending); more wait in the stream.";
    "webhook_emit_queue" = "65536" : "Per process, events waiting to be stored in the events stream; full (JetStream down or the stream full): a new event is dropped and counted in herald_webhook_events_dropped_total{reason=\"queue_full\"}, the client is never slowed.";
    "webhook_stream" = "HERALD_EVENTS" : "Name of the JetStream stream holding events until they are delivered (created at start, work-queue retention).";
    "webhook_subject" = "herald.events" : "Subject prefix of events (`<prefix>.<type>`); the stream takes `<prefix>.>`.";
    "webhook_stream_replicas" = "1" : "Replicas of the events stream (1, 3 or 5; a cluster needs that many nodes).";
    "webhook_stream_max_age" = "72h" : "Events older than this leave the stream undelivered; at least webhook_max_age.";
    "webhook_stream_max_bytes" = "1073741824" : "Bytes the events stream may hold; full: new events are refused (dropped, counted) and undelivered ones kept.";
    "backend_ca_file" = "" : "Extra PEM CA certificates trusted for https:// proxy and webhook endpoints, beside the system's roots (a backend with a private CA). Checked at start. Empty = the system's roots.";
    "proxies" = "" : "Named HTTP proxies to the application backend, as Centrifugo v6's `proxies`: in the file `[[proxies]]` tables, in the environment or a flag a JSON array of the same objects. Each has `name`, `endpoint` (an http:// or https:// URL), `timeout` (default 1s), `http_headers` (names of the client's WebSocket upgrade request headers to forward, e.g. cookie), `static_http_headers` (a table of headers sent with every request) and `include_connection_meta` (send the `meta` the connect proxy gave). The *_proxy_enabled options below use them by name. Empty = none.";
    "client_connect_proxy_enabled" = "false" : "A client connecting without a token is authorized by the proxy named by client_connect_proxy_name (Centrifugo's client.proxy.connect); a client with a token is verified by the token as before.";
    "client_connect_proxy_name" = "default" : "The proxy (a `proxies` name) client_connect_proxy_enabled uses.";
    "client_refresh_proxy_enabled" = "false" : "A connection with an expiry is refreshed server side by the proxy named by client_refresh_proxy_name when the expiry comes (Centrifugo's client.proxy.refresh): the connect reply announces no expiry, and a backend answering `expired` closes the connection with 3005.";
    "client_refresh_proxy_name" = "default" : "The proxy client_refresh_proxy_enabled uses.";
    "rpc_proxy_enabled" = "false" : "Client RPC calls go to the proxy named by rpc_proxy_name (Centrifugo's rpc.without_namespace proxy_enabled); methods starting with `herald.` are Herald's own and never proxied.";
    "rpc_proxy_name" = "default" : "The proxy rpc_proxy_enabled uses.";
    "channel_subscribe_proxy_enabled" = "false" : "Default namespace: a subscribe without a token is authorized by the proxy named by channel_subscribe_proxy_name instead of the namespace's permissions (Centrifugo's subscribe_proxy_enabled; user-limited channels keep their own rule, private ones still need a token).";
    "channel_subscribe_proxy_name" = "default" : "Default namespace: the proxy channel_subscribe_proxy_enabled uses.";
    "channel_publish_proxy_enabled" = "false" : "Default namespace: client publishes go to the proxy named by channel_publish_proxy_name, which may refuse them or replace their data before they are stored, instead of the client_publish permission (Centrifugo's publish_proxy_enabled).";
    "channel_publish_proxy_name" = "default" : "Default namespace: the proxy channel_publish_proxy_enabled uses.";
    "channel_sub_refresh_proxy_enabled" = "false" : "Default namespace: subscriptions the subscribe proxy gave an expiry are refreshed server side by the proxy named by channel_sub_refresh_proxy_name when it comes (Centrifugo's sub_refresh_proxy_enabled); a backend answering `expired` ends the subscription (unsubscribe 2501, subscription expired).";
    "channel_sub_refresh_proxy_name" = "default" : "Default namespace: the proxy channel_sub_refresh_proxy_enabled uses.";
}

/// The namespace that exists without configuration, with the default
/// namespace's options: direct messages between the users listed after `#`.
pub const BUILTIN_DM_NAMESPACE: &str = "dm";
/// The namespace that exists without configuration for watching users'
/// online status (`status:<user>`): no history, no client publishing; a
/// `[namespaces.status]` table overrides it (e.g. `private = true`: watching
/// needs a subscription token).
pub const BUILTIN_STATUS_NAMESPACE: &str = "status";

/// A string that never shows in logs or Debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub internal_listen: Option<SocketAddr>,
    /// The server API's own listener; `None` serves it on `listen`.
    pub api_listen: Option<SocketAddr>,
    /// Failed API key attempts allowed per client IP per minute.
    pub api_key_failures_per_minute: u32,
    /// Header-read/idle timeout and connection cap of every listener.
    pub http: crate::http_server::HttpLimits,
    /// Request rates of the HTTP APIs (`None`: not limited).
    pub api_rate_per_ip: Option<Rate>,
    pub api_rate_per_key: Option<Rate>,
    pub sync_http_rate_per_ip: Option<Rate>,
    pub sync_http_rate_per_key: Option<Rate>,
    /// Browser origins allowed to upgrade (`edge::origin`); empty = same origin.
    pub allowed_origins: Vec<String>,
    /// Client connection caps and the client IP (`edge::admission`).
    pub connection_limits: ConnectionLimits,
    /// Per-connection and per-user command rates by tier.
    pub rate_limits: RateLimits,
    /// TLS on the public listener; `None` = plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// TLS on `internal_listen` and `api_listen` too.
    pub tls_internal: bool,
    pub data_dir: PathBuf,
    pub nats: NatsConfig,
    pub token_hmac_secret: Option<Secret>,
    pub token_require_exp: bool,
    pub token: TokenConfig,
    pub api_key: Option<Secret>,
    /// The admin console's password; `None` = no console (`crate::web::admin`).
    pub admin_password: Option<Secret>,
    pub admin_session_ttl: Duration,
    /// The demo chat and its token endpoint (`crate::web::demo`).
    pub demo: bool,
    pub log: String,
    pub log_format: LogFormat,
    pub client: ClientConfig,
    pub ingest: IngestConfig,
    pub writer: WriterConfig,
    pub sync: SyncConfig,
    pub idempotency_retention: Duration,
    pub store: StoreBackend,
    pub scylla: ScyllaConfig,
    pub store_wait_for_lock: bool,
    pub store_expiry_interval: Duration,
    pub shutdown_drain: Duration,
    pub otlp: OtlpConfig,
    pub channels: ChannelsConfig,
    pub presence: PresenceConfig,
    /// Proxies to the application backend and where they are used.
    pub proxies: ProxiesConfig,
    /// Event webhooks (the webhooks module).
    pub webhooks: WebhookConfig,
    /// Push notification providers (`push`).
    pub push: PushConfig,
}

/// The event types `webhook_events` may name (the webhooks module's `Kind`).
pub const WEBHOOK_EVENT_TYPES: &[&str] = &[
    "connected",
    "disconnected",
    "subscribed",
    "unsubscribed",
    "user_online",
    "user_offline",
    "published",
];

/// The `webhook_*` options.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Empty: webhooks off.
    pub endpoints: Vec<String>,
    /// Extra CA certificates for https:// endpoints (`backend_ca_file`).
    pub ca_file: Option<PathBuf>,
    pub secret: Option<Secret>,
    /// Event types to emit, each one of [`WEBHOOK_EVENT_TYPES`].
    pub events: std::collections::BTreeSet<String>,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_age: Duration,
    pub concurrency: usize,
    pub max_pending: i64,
    pub emit_queue: usize,
    pub stream: String,
    pub subject: String,
    pub stream_replicas: usize,
    pub stream_max_age: Duration,
    pub stream_max_bytes: i64,
}

impl WebhookConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// The push providers' credentials and endpoints (`push_*`); a provider
/// without credentials has no sender.
#[derive(Debug, Clone, Default)]
pub struct PushConfig {
    pub fcm_credentials_file: Option<PathBuf>,
    pub fcm_endpoint: String,
    pub fcm_token_url: Option<String>,
    pub apns_key_file: Option<PathBuf>,
    pub apns_key_id: String,
    pub apns_team_id: String,
    pub apns_topic: String,
    pub apns_endpoint: String,
    pub webpush_vapid_key_file: Option<PathBuf>,
    pub webpush_vapid_subject: String,
    /// Which Web Push endpoints a subscription may name.
    pub webpush_endpoints: WebpushEndpoints,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub rate_per_provider: Option<Rate>,
    pub concurrency: usize,
    pub retry_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub retry_max_age: Duration,
    pub queue_max_messages: i64,
    pub unread_max_pending: usize,
}

/// Web Push endpoints a subscription may name (`push_webpush_allowed_hosts`,
/// `push_webpush_allow_http`); `push::registry` applies it. The default
/// allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebpushEndpoints {
    /// Lower-case host names (without `*`).
    pub allowed_hosts: Vec<String>,
    /// `*` was among them.
    pub any_host: bool,
    pub allow_http: bool,
}

/// Presence, join/leave and user status across edges (`presence_ttl`,
/// `user_status_for_clients`).
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// An edge silent this long is dead; edges heartbeat every third of it.
    pub ttl: Duration,
    pub user_status_for_clients: bool,
}

/// OpenTelemetry trace export (`otlp_*` options).
#[derive(Debug, Clone, Default)]
pub struct OtlpConfig {
    /// Base URL of the OTLP/HTTP receiver; `None` = no export.
    pub endpoint: Option<String>,
    /// `None` = `herald-<role>`.
    pub service_name: Option<String>,
    pub sample_ratio: f64,
    pub queue_size: usize,
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// One URL or a comma-separated list (see [`nats_urls`]).
    pub url: String,
    /// Replicas of the KV buckets Herald creates.
    pub kv_replicas: usize,
    pub autostart: bool,
    pub server_bin: PathBuf,
    pub auth: NatsAuth,
}

/// How every role authenticates to NATS (`nats_*` credentials options); at
/// most one kind besides user/password is expected, all are passed on.
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub nkey_seed: Option<Secret>,
    pub creds_file: Option<PathBuf>,
}

/// Asymmetric keys and claim checks of client JWTs (`token_*` options).
#[derive(Debug, Clone, Default)]
pub struct TokenConfig {
    /// PEM public key files, each checked to parse when loading.
    pub public_keys: Vec<PathBuf>,
    pub jwks_url: Option<String>,
    pub jwks_refresh_interval: Duration,
    pub jwks_min_fetch_interval: Duration,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl TokenConfig {
    /// Are tokens verified with something besides the HMAC secret?
    pub fn has_asymmetric(&self) -> bool {
        !self.public_keys.is_empty() || self.jwks_url.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub message_size_limit: usize,
    pub read_buffer_size: usize,
    pub queue_max_bytes: usize,
    /// `/emulation` requests waiting per emulated session.
    pub emulation_queue: usize,
    pub channel_limit: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub stale_timeout: Duration,
    pub expired_close_delay: Duration,
    pub recovery_limit: usize,
    pub publish_timeout: Duration,
    pub history_page_limit: usize,
    /// Server-side subscription of every user to `#user` on connect.
    pub subscribe_to_personal: bool,
    /// Bound of the edge's IM maps (`edge::im`).
    pub conversation_cache_size: usize,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub partitions: u32,
    pub duplicate_window: Duration,
    pub max_bytes: i64,
    pub max_ack_pending: i64,
    /// Replicas of the stream.
    pub replicas: usize,
    /// The wire form publishers send.
    pub format: crate::bus::ingest::IngestFormat,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub batch_size: usize,
    /// Batches in flight per partition (`writer::WriterSettings::pipeline_depth`).
    pub pipeline_depth: usize,
    pub failover_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub timeout: Duration,
    pub page_limit: usize,
    /// Push devices one user may have (`push::registry`).
    pub max_devices_per_user: usize,
}

/// Which `Store` backend the writer and sync use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreBackend {
    #[default]
    Embedded,
    Scylla,
}

/// The consistency level of every ScyllaDB read and write. Only levels whose
/// reads see every acknowledged write (read + write replicas > replication
/// factor): the writer reloads heads and looks up idempotency keys after its
/// own and other writers' commits, and a lagging replica's answer there would
/// break I1/I3. `one` and `local_one` are refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScyllaConsistency {
    #[default]
    LocalQuorum,
    Quorum,
    All,
}

impl ScyllaConsistency {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "local_quorum" => Ok(Self::LocalQuorum),
            "quorum" => Ok(Self::Quorum),
            "all" => Ok(Self::All),
            "one" | "local_one" => Err(format!(
                "{s} cannot guarantee that the writer reads back the heads and idempotency keys it \
                 and other writers committed (a lagging replica would answer), which dense offsets \
                 (I1) and idempotent publish (I3) need; use local_quorum, quorum or all"
            )),
            _ => Err("expected local_quorum, quorum or all".into()),
        }
    }
}

/// Connection settings of the ScyllaDB store (`store = scylla`).
#[derive(Debug, Clone, Default)]
pub struct ScyllaConfig {
    /// Contact points, host:port each.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub local_dc: Option<String>,
    pub consistency: ScyllaConsistency,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: bool,
    /// The CQL replication map `herald migrate` creates the keyspace with.
    pub replication: String,
    pub request_timeout: Duration,
}

/// One named proxy (`[[proxies]]`): Centrifugo v6's `proxies` entry with
/// its HTTP options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub name: String,
    /// An `http://` or `https://` URL.
    pub endpoint: String,
    /// The whole call, connect to last body byte.
    pub timeout: Duration,
    /// Lower-cased names of upgrade request headers forwarded.
    pub http_headers: Vec<String>,
    /// Headers sent with every request (forwarded ones win).
    pub static_http_headers: BTreeMap<String, String>,
    pub include_connection_meta: bool,
}

/// Which proxies a namespace uses; `None` = not proxied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceProxies {
    pub subscribe: Option<String>,
    pub publish: Option<String>,
    pub sub_refresh: Option<String>,
}

/// The proxies and their use: connection-wide (`client_*_proxy_*`, `rpc_*`)
/// and per namespace (`[namespaces.<name>]` `*_proxy_enabled`/`_name`,
/// else the `channel_*_proxy_*` defaults). Every name used is one of
/// `proxies` (checked at load).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxiesConfig {
    pub proxies: Vec<ProxyConfig>,
    /// Extra CA certificates for https:// endpoints (`backend_ca_file`).
    pub ca_file: Option<PathBuf>,
    pub connect: Option<String>,
    pub refresh: Option<String>,
    pub rpc: Option<String>,
    pub default_namespace: NamespaceProxies,
    /// Only namespaces with a table; the others use `default_namespace`.
    pub namespaces: BTreeMap<String, NamespaceProxies>,
}

impl ProxiesConfig {
    /// The proxies of the namespace `ns` (`None`: the default namespace).
    pub fn namespace(&self, ns: Option<&str>) -> &NamespaceProxies {
        ns.and_then(|n| self.namespaces.get(n))
            .unwrap_or(&self.default_namespace)
    }
}

/// Per-namespace channel options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceOptions {
    pub history: bool,
    pub client_publish: bool,
    pub private: bool,
    /// `None` keeps history forever.
    pub history_retention: Option<Duration>,
    /// `None`: no bound; `Some(n)`: only the newest n are served.
    pub history_size: Option<u64>,
    /// Anonymous connections (empty user) may subscribe, read history and
    /// publish (when `client_publish`); a subscription token lets them
    /// subscribe either way.
    pub anonymous: bool,
    /// Presence and presence stats may be asked (Centrifugo's `presence`).
    pub presence: bool,
    /// Join/leave pushes to subscribers asking for them (`join_leave`).
    pub join_leave: bool,
    /// Join/leave pushes to every subscriber (`force_push_join_leave`).
    pub force_push_join_leave: bool,
    /// Only members subscribe, publish, read history and set markers.
    pub membership: bool,
    /// Live receipts to subscribed members.
    pub receipts: bool,
    /// A client publish into an open history channel moves the publisher's
    /// read marker (always so in channels with members).
    pub track_publishers: bool,
    /// Stored publications are sent as `published` webhook events.
    pub publish_events: bool,
    /// Unread-aware push (`push::unread`): a member with an unread message
    /// and no connected device this long gets a push. `None` = off.
    pub push_unread_delay: Option<Duration>,
    /// Delta types a subscription may ask for ([`DELTA_TYPES`]); empty: none.
    pub allowed_delta_types: Vec<String>,
}

/// The delta types Herald knows (as Centrifugo: only `fossil`).
pub const DELTA_TYPES: &[&str] = &["fossil"];

#[derive(Debug, Clone)]
pub struct ChannelsConfig {
    pub default: NamespaceOptions,
    pub namespaces: BTreeMap<String, NamespaceOptions>,
}

/// The command kinds a rate limit names: `[rate_limits.tiers.<name>]`
/// `connection` and `user` tables map these to `"N/period"`.
pub const RATE_KINDS: &[&str] = &[
    "connect",
    "subscribe",
    "publish",
    "history",
    "presence",
    "rpc",
    "total",
];

/// A token bucket: `burst` commands at once, refilled at `burst` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub per: Duration,
}

/// One tier's limits by command kind (a key of [`RATE_KINDS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierLimits {
    /// Per connection (`connect` does not apply: one per connection).
    pub connection: BTreeMap<String, Rate>,
    /// Per user, over the user's connections on one edge (`connect`: per
    /// user on one edge whether connected or not).
    pub user: BTreeMap<String, Rate>,
}

/// `rate_limit_*` options and the `[rate_limits.tiers.<name>]` tables.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub default_tier: String,
    pub disconnect_multiple: u32,
    /// Always holds `default_tier`.
    pub tiers: BTreeMap<String, TierLimits>,
}

/// Who loses past the per-user connection cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserLimitPolicy {
    #[default]
    RefuseNew,
    CloseOldest,
}

/// An IP network (`10.0.0.0/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u32,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        match (self.addr, ip) {
            (V4(n), V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (V6(n), V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}`: expected an IP or a CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`{s}`: bad prefix length"))?
        };
        Ok(Self { addr, prefix })
    }
}

/// The `client_max_*`, `client_connect_rate_per_ip`, trusted proxy options.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: Option<usize>,
    pub max_per_ip: Option<usize>,
    pub connect_rate_per_ip: Option<Rate>,
    pub max_per_user: Option<usize>,
    pub user_policy: UserLimitPolicy,
    pub trusted_proxies: Vec<IpNet>,
    /// Lower-case header name.
    pub ip_header: Option<String>,
}

/// The built-in `default` tier.
pub fn builtin_default_tier() -> TierLimits {
    let sec = Duration::from_secs(1);
    TierLimits {
        connection: BTreeMap::from([(
            "total".to_string(),
            Rate {
                burst: 1000,
                per: sec,
            },
        )]),
        user: BTreeMap::from([
            (
                "connect".to_string(),
                Rate {
                    burst: 100,
                    per: sec,
                },
            ),
            (
                "total".to_string(),
                Rate {
                    burst: 5000,
                    per: sec,
                },
            ),
        ]),
    }
}

/// The tier table of the TOML file: `[rate_limits.tiers.<name>]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TierFile {
    #[serde(default)]
    connection: BTreeMap<String, String>,
    #[serde(default)]
    user: BTreeMap<String, String>,
}

/// `"N/period"`, e.g. `"10/1s"`: a burst of N refilled over the period.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected N/period, e.g. 10/1s"))?;
    let burst: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{s}`: expected a whole number above 0 before the /"))?;
    let per = humantime::parse_duration(per.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{s}`: expected a period after the /, e.g. 1s or 1m"))?;
    Ok(Rate { burst, per })
}

/// 0 = no cap.
fn parse_cap(s: &str) -> Result<Option<usize>, String> {
    match s.parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err("expected a whole number (0 = no cap)".into()),
    }
}

fn parse_optional_rate(s: &str) -> Result<Option<Rate>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse_rate(s).map(Some)
    }
}

fn tier_limits(name: &str, f: TierFile, errors: &mut Vec<String>) -> TierLimits {
    let mut side = |which: &str, m: BTreeMap<String, String>| {
        let mut out = BTreeMap::new();
        for (kind, v) in m {
            if !RATE_KINDS.contains(&kind.as_str()) {
                errors.push(format!(
                    "rate_limits.tiers.{name}.{which}.{kind}: unknown command kind (one of {})",
                    RATE_KINDS.join(", ")
                ));
                continue;
            }
            match parse_rate(&v) {
                Ok(r) => {
                    out.insert(kind, r);
                }
                Err(e) => errors.push(format!("rate_limits.tiers.{name}.{which}.{kind}: {e}")),
            }
        }
        out
    };
    TierLimits {
        connection: side("connection", f.connection),
        user: side("user", f.user),
    }
}

fn parse_rate_limits(
    origin: &str,
    v: toml::Value,
    out: &mut BTreeMap<String, TierFile>,
    errors: &mut Vec<String>,
) {
    let toml::Value::Table(mut t) = v else {
        errors.push(format!("{origin}: rate_limits: expected a table"));
        return;
    };
    let Some(tiers) = t.remove("tiers") else {
        return;
    };
    for k in t.keys() {
        errors.push(format!("{origin}: rate_limits.{k}: unknown (only `tiers`)"));
    }
    let toml::Value::Table(tiers) = tiers else {
        errors.push(format!(
            "{origin}: rate_limits.tiers: expected a table of tables"
        ));
        return;
    };
    for (name, body) in tiers {
        match body.try_into::<TierFile>() {
            Ok(f) => {
                out.insert(name, f);
            }
            Err(e) => errors.push(format!("{origin}: rate_limits.tiers.{name}: {e}")),
        }
    }
}

/// Every problem found while loading, each naming its option.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The namespace table of the TOML file: `[namespaces.<name>]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NamespaceFile {
    history: Option<bool>,
    client_publish: Option<bool>,
    private: Option<bool>,
    history_retention: Option<String>,
    history_size: Option<u64>,
    anonymous: Option<bool>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    force_push_join_leave: Option<bool>,
    subscribe_proxy_enabled: Option<bool>,
    subscribe_proxy_name: Option<String>,
    publish_proxy_enabled: Option<bool>,
    publish_proxy_name: Option<String>,
    sub_refresh_proxy_enabled: Option<bool>,
    sub_refresh_proxy_name: Option<String>,
    membership: Option<bool>,
    receipts: Option<bool>,
    track_publishers: Option<bool>,
    publish_events: Option<bool>,
    push_unread_delay: Option<String>,
    allowed_delta_types: Option<Vec<String>>,
}

/// One `[[proxies]]` entry as written (TOML or JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    name: String,
    endpoint: String,
    timeout: Option<String>,
    #[serde(default)]
    http_headers: Vec<String>,
    #[serde(default)]
    static_http_headers: BTreeMap<String, String>,
    #[serde(default)]
    include_connection_meta: bool,
}

/// Where the raw values come from, lowest precedence first.
#[derive(Debug, Default)]
pub struct Sources {
    /// Contents of the `--config` file, if any, and its path for messages.
    pub file: Option<(PathBuf, String)>,
    /// Environment variables (all of them; only `HERALD_*` are read).
    pub env: Vec<(String, String)>,
    /// `key=value` pairs from flags.
    pub flags: Vec<(String, String)>,
}

impl Sources {
    /// Reads the file named by `--config` and the process environment.
    pub fn from_process(
        config_file: Option<&Path>,
        flags: Vec<(String, String)>,
    ) -> Result<Self, ConfigErrors> {
        let file = match config_file {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(s) => Some((p.to_path_buf(), s)),
                Err(e) => return Err(ConfigErrors(vec![format!("--config {}: {e}", p.display())])),
            },
            None => None,
        };
        Ok(Self {
            file,
            env: std::env::vars().collect(),
            flags,
        })
    }
}

pub fn env_name(key: &str) -> String {
    format!("HERALD_{}", key.to_ascii_uppercase())
}

fn spec(key: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.key == key)
}

impl Config {
    /// All defaults; what tests start from.
    pub fn defaults() -> Self {
        Self::load(&Sources::default()).expect("defaults are valid")
    }

    pub fn load(sources: &Sources) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut raw: BTreeMap<&'static str, (String, String)> = BTreeMap::new();
        let mut namespaces = BTreeMap::new();
        let mut tier_files = BTreeMap::new();

        if let Some((path, text)) = &sources.file {
            let origin = path.display().to_string();
            match text.parse::<toml::Table>() {
                Err(e) => errors.push(format!("{origin}: {e}")),
                Ok(table) => {
                    for (k, v) in table {
                        if k == "namespaces" {
                            parse_namespaces(&origin, v, &mut namespaces, &mut errors);
                            continue;
                        }
                        if k == "rate_limits" {
                            parse_rate_limits(&origin, v, &mut tier_files, &mut errors);
                            continue;
                        }
                        // `[[proxies]]` tables: kept as the JSON the
                        // environment form uses, parsed once below.
                        if let ("proxies", toml::Value::Array(_)) = (k.as_str(), &v) {
                            match serde_json::to_string(&v) {
                                Ok(json) => {
                                    raw.insert("proxies", (json, format!("{origin}: proxies")));
                                }
                                Err(e) => errors.push(format!("{origin}: proxies: {e}")),
                            }
                            continue;
                        }
                        match spec(&k) {
                            None => errors.push(format!("{origin}: unknown option `{k}`")),
                            Some(s) => {
                                let value = match v {
                                    toml::Value::String(s) => s,
                                    other => other.to_string(),
                                };
                                raw.insert(s.key, (value, format!("{origin}: {k}")));
                            }
                        }
                    }
                }
            }
        }
        for (name, value) in &sources.env {
            if let Some(s) = OPTIONS.iter().find(|o| env_name(o.key) == *name) {
                raw.insert(s.key, (value.clone(), name.clone()));
            }
        }
        for (k, v) in &sources.flags {
            match spec(k) {
                None => errors.push(format!("--set {k}: unknown option")),
                Some(s) => {
                    raw.insert(s.key, (v.clone(), format!("--{}", k.replace('_', "-"))));
                }
            }
        }

        let mut p = Parser {
            raw: &raw,
            errors: &mut errors,
        };
        let default_ns = NamespaceOptions {
            history: p.parse("channel_history", parse_bool),
            client_publish: p.parse("channel_client_publish", parse_bool),
            private: p.parse("channel_private", parse_bool),
            history_retention: p.parse("channel_history_retention", parse_retention),
            history_size: p.parse("channel_history_size", parse_history_size),
            anonymous: p.parse("channel_anonymous", parse_bool),
            presence: p.parse("channel_presence", parse_bool),
            join_leave: p.parse("channel_join_leave", parse_bool),
            force_push_join_leave: p.parse("channel_force_push_join_leave", parse_bool),
            membership: p.parse("channel_membership", parse_bool),
            receipts: p.parse("channel_receipts", parse_bool),
            track_publishers: p.parse("channel_track_publishers", parse_bool),
            publish_events: p.parse("channel_publish_events", parse_bool),
            push_unread_delay: p.parse("channel_push_unread_delay", parse_retention),
            allowed_delta_types: p.parse("channel_allowed_delta_types", |s| {
                parse_delta_types(s.split(',').map(str::trim).filter(|t| !t.is_empty()))
            }),
        };
        let backend_ca_file = p.parse("backend_ca_file", parse_ca_file);
        let webhooks = WebhookConfig {
            endpoints: p.parse("webhook_endpoints", parse_endpoints),
            ca_file: backend_ca_file.clone(),
            secret: p.optional_secret("webhook_secret"),
            events: p.parse("webhook_events", |s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| {
                        if WEBHOOK_EVENT_TYPES.contains(&k) {
                            Ok(k.to_string())
                        } else {
                            Err(format!("unknown event type {k:?}"))
                        }
                    })
                    .collect()
            }),
            timeout: p.parse("webhook_timeout", parse_duration_positive),
            retry_initial: p.parse("webhook_retry_initial", parse_duration_positive),
            retry_max: p.parse("webhook_retry_max", parse_duration_positive),
            max_age: p.parse("webhook_max_age", parse_duration_positive),
            concurrency: p.parse("webhook_concurrency", parse_positive),
            max_pending: p.parse("webhook_max_pending", |s| {
                parse_positive(s).map(|n| n as i64)
            }),
            emit_queue: p.parse("webhook_emit_queue", parse_positive),
            stream: p.parse("webhook_stream", |s| {
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    Ok(s.to_string())
                } else {
                    Err("expected letters, digits, `_` or `-`".into())
                }
            }),
            subject: p.parse("webhook_subject", |s| {
                if !s.is_empty()
                    && s.split('.').all(|t| {
                        !t.is_empty() && !t.contains(['*', '>']) && !t.contains(char::is_whitespace)
                    })
                {
                    Ok(s.to_string())
                } else {
                    Err("expected dot-separated tokens without wildcards".into())
                }
            }),
            stream_replicas: p.parse("webhook_stream_replicas", parse_replicas),
            stream_max_age: p.parse("webhook_stream_max_age", parse_duration_positive),
            stream_max_bytes: p.parse("webhook_stream_max_bytes", |s| {
                parse_positive(s).map(|n| n as i64)
            }),
        };
        if webhooks.enabled() && webhooks.secret.is_none() {
            p.errors.push(
                "webhook_secret (HERALD_WEBHOOK_SECRET): required with webhook_endpoints".into(),
            );
        }
        if webhooks.stream_max_age < webhooks.max_age {
            p.errors.push("webhook_stream_max_age (HERALD_WEBHOOK_STREAM_MAX_AGE): must be at least webhook_max_age".into());
        }
        if webhooks.retry_initial > webhooks.retry_max {
            p.errors.push("webhook_retry_initial (HERALD_WEBHOOK_RETRY_INITIAL): must not exceed webhook_retry_max".into());
        }
        let proxy_list = p.parse("proxies", parse_proxies);
        let proxy_name = |p: &mut Parser<'_>, enabled: &'static str, name: &'static str| {
            p.parse(enabled, parse_bool).then(|| p.string(name))
        };
        let proxies = ProxiesConfig {
            ca_file: backend_ca_file,
            connect: proxy_name(
                &mut p,
                "client_connect_proxy_enabled",
                "client_connect_proxy_name",
            ),
            refresh: proxy_name(
                &mut p,
                "client_refresh_proxy_enabled",
                "client_refresh_proxy_name",
            ),
            rpc: proxy_name(&mut p, "rpc_proxy_enabled", "rpc_proxy_name"),
            default_namespace: NamespaceProxies {
                subscribe: proxy_name(
                    &mut p,
                    "channel_subscribe_proxy_enabled",
                    "channel_subscribe_proxy_name",
                ),
                publish: proxy_name(
                    &mut p,
                    "channel_publish_proxy_enabled",
                    "channel_publish_proxy_name",
                ),
                sub_refresh: proxy_name(
                    &mut p,
                    "channel_sub_refresh_proxy_enabled",
                    "channel_sub_refresh_proxy_name",
                ),
            },
            namespaces: BTreeMap::new(),
            proxies: proxy_list,
        };
        let presence = PresenceConfig {
            ttl: p.parse("presence_ttl", parse_duration_positive),
            user_status_for_clients: p.parse("user_status_for_clients", parse_bool),
        };
        let config = Config {
            listen: p
                .parse("listen", |s| parse_addr(s).map(Some))
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8000))),
            internal_listen: p.parse("internal_listen", |s| {
                if s.is_empty() {
                    Ok(None)
                } else {
                    parse_addr(s).map(Some)
                }
            }),
            api_listen: p.parse("api_listen", |s| {
                if s.is_empty() {
                    Ok(None)
                } else {
                    parse_addr(s).map(Some)
                }
            }),
            api_key_failures_per_minute: p.parse("api_key_failures_per_minute", |s| {
                parse_positive(s).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            }),
            api_rate_per_ip: p.parse("api_rate_per_ip", parse_optional_rate),
            api_rate_per_key: p.parse("api_rate_per_key", parse_optional_rate),
            sync_http_rate_per_ip: p.parse("sync_http_rate_per_ip", parse_optional_rate),
            sync_http_rate_per_key: p.parse("sync_http_rate_per_key", parse_optional_rate),
            allowed_origins: p.parse("allowed_origins", |s| {
                Ok(s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect())
            }),
            connection_limits: ConnectionLimits {
                max_connections: p.parse("client_max_connections", parse_cap),
                max_per_ip: p.parse("client_max_connections_per_ip", parse_cap),
                connect_rate_per_ip: p.parse("client_connect_rate_per_ip", parse_optional_rate),
                max_per_user: p.parse("client_max_connections_per_user", parse_cap),
                user_policy: p.parse("client_user_limit_policy", |s| match s {
                    "refuse_new" => Ok(UserLimitPolicy::RefuseNew),
                    "close_oldest" => Ok(UserLimitPolicy::CloseOldest),
                    _ => Err("expected `refuse_new` or `close_oldest`".into()),
                }),
                trusted_proxies: p.parse("client_trusted_proxies", |s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::parse)
                        .collect()
                }),
                ip_header: p.parse("client_ip_header", |s| {
                    if s.is_empty() {
                        return Ok(None);
                    }
                    axum::http::HeaderName::from_bytes(s.trim().as_bytes())
                        .map(|h| Some(h.as_str().to_string()))
                        .map_err(|_| "expected an HTTP header name".to_string())
                }),
            },
            rate_limits: RateLimits {
                default_tier: p.string("rate_limit_default_tier"),
                disconnect_multiple: p.parse("rate_limit_disconnect_multiple", |s| {
                    parse_positive(s).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                }),
                tiers: BTreeMap::from([("default".to_string(), builtin_default_tier())]),
            },
            http: crate::http_server::HttpLimits {
                header_read_timeout: p.parse("http_header_read_timeout", parse_duration_positive),
                max_connections: p.parse("http_max_connections", parse_positive),
            },
            tls: {
                let cert = p.parse("tls_cert", |s| Ok(PathBuf::from(s)));
                let key = p.parse("tls_key", |s| Ok(PathBuf::from(s)));
                let reload_interval = p.parse("tls_reload_interval", parse_duration_positive);
                match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
                    (true, true) => None,
                    (false, false) => match crate::tls::load_pair(&cert, &key) {
                        Ok(_) => Some(crate::tls::TlsFiles {
                            cert,
                            key,
                            reload_interval,
                        }),
                        Err(e) => {
                            p.errors
                                .push(format!("tls_cert / tls_key (HERALD_TLS_CERT, HERALD_TLS_KEY): {e}"));
                            None
                        }
                    },
                    _ => {
                        p.errors.push(
                            "tls_cert and tls_key (HERALD_TLS_CERT, HERALD_TLS_KEY): set both or neither"
                                .into(),
                        );
                        None
                    }
                }
            },
            tls_internal: p.parse("tls_internal", parse_bool),
            data_dir: PathBuf::from(p.string("data_dir")),
            nats: NatsConfig {
                url: p.parse("nats_url", |s| nats_urls(s).map(|_| s.trim().to_string())),
                kv_replicas: p.parse("nats_kv_replicas", parse_replicas),
                autostart: p.parse("nats_autostart", parse_bool),
                server_bin: PathBuf::from(p.string("nats_server_bin")),
                auth: NatsAuth {
                    user: p.parse("nats_user", |s| Ok((!s.is_empty()).then(|| s.to_string()))),
                    password: p.optional_secret("nats_password"),
                    token: p.optional_secret("nats_token"),
                    nkey_seed: p.optional_secret("nats_nkey_seed"),
                    creds_file: p.parse("nats_creds_file", |s| {
                        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
                    }),
                },
            },
            token_hmac_secret: p.optional_secret("token_hmac_secret"),
            token_require_exp: p.parse("token_require_exp", parse_bool),
            token: TokenConfig {
                public_keys: p.parse("token_public_keys", parse_public_keys),
                jwks_url: p.parse("token_jwks_url", |s| {
                    if s.is_empty() {
                        Ok(None)
                    } else if s.starts_with("http://") || s.starts_with("https://") {
                        Ok(Some(s.to_string()))
                    } else {
                        Err("expected an http:// or https:// URL".into())
                    }
                }),
                jwks_refresh_interval: p
                    .parse("token_jwks_refresh_interval", parse_duration_positive),
                jwks_min_fetch_interval: p
                    .parse("token_jwks_min_fetch_interval", parse_duration_positive),
                audience: p.parse("token_audience", |s| Ok((!s.is_empty()).then(|| s.to_string()))),
                issuer: p.parse("token_issuer", |s| Ok((!s.is_empty()).then(|| s.to_string()))),
            },
            api_key: p.optional_secret("api_key"),
            admin_password: p.optional_secret("admin_password"),
            admin_session_ttl: p.parse("admin_session_ttl", parse_duration_positive),
            demo: p.parse("demo", parse_bool),
            log: p.string("log"),
            log_format: p.parse("log_format", |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `text` or `json`".into()),
            }),
            client: ClientConfig {
                message_size_limit: p.parse("client_message_size_limit", parse_positive),
                read_buffer_size: p.parse("client_read_buffer_size", parse_positive),
                queue_max_bytes: p.parse("client_queue_max_bytes", parse_positive),
                emulation_queue: p.parse("client_emulation_queue", parse_positive),
                channel_limit: p.parse("client_channel_limit", parse_positive),
                ping_interval: p.parse("client_ping_interval", parse_duration_positive),
                pong_timeout: p.parse("client_pong_timeout", parse_duration_positive),
                stale_timeout: p.parse("client_stale_timeout", parse_duration_positive),
                expired_close_delay: p.parse("client_expired_close_delay", parse_duration),
                recovery_limit: p.parse("client_recovery_limit", parse_positive),
                publish_timeout: p.parse("client_publish_timeout", parse_duration_positive),
                history_page_limit: p.parse("history_page_limit", parse_positive),
                subscribe_to_personal: p.parse(
                    "client_subscribe_to_user_personal_channel",
                    parse_bool,
                ),
                conversation_cache_size: p.parse("client_conversation_cache_size", parse_positive),
            },
            ingest: IngestConfig {
                partitions: p.parse("ingest_partitions", |s| {
                    let n: u32 = s
                        .parse()
                        .map_err(|_| "expected a whole number".to_string())?;
                    if (1..=1024).contains(&n) {
                        Ok(n)
                    } else {
                        Err("expected 1..=1024".into())
                    }
                }),
                duplicate_window: p.parse("ingest_duplicate_window", parse_duration_positive),
                max_bytes: p.parse("ingest_max_bytes", |s| {
                    parse_positive(s).map(|n: usize| n as i64)
                }),
                max_ack_pending: p.parse("ingest_max_ack_pending", |s| {
                    parse_positive(s).map(|n: usize| n as i64)
                }),
                replicas: p.parse("ingest_replicas", parse_replicas),
                format: p.parse("ingest_format", |s| match s {
                    "binary" => Ok(crate::bus::ingest::IngestFormat::Binary),
                    "json" => Ok(crate::bus::ingest::IngestFormat::Json),
                    _ => Err("expected `binary` or `json`".into()),
                }),
            },
            writer: WriterConfig {
                batch_size: p.parse("writer_batch_size", parse_positive),
                pipeline_depth: p.parse("writer_pipeline_depth", |s| match parse_positive(s)? {
                    n @ 1..=16 => Ok(n),
                    _ => Err("expected 1..=16".into()),
                }),
                failover_timeout: p.parse("writer_failover_timeout", |s| {
                    match parse_duration(s)? {
                        d if d < Duration::from_secs(1) => Err("must be at least 1s".into()),
                        d => Ok(d),
                    }
                }),
            },
            sync: SyncConfig {
                timeout: p.parse("sync_timeout", parse_duration_positive),
                page_limit: p.parse("history_page_limit", parse_positive),
                max_devices_per_user: p.parse("push_max_devices_per_user", parse_positive),
            },
            idempotency_retention: p.parse("idempotency_retention", parse_duration_positive),
            store: p.parse("store", |s| match s {
                "embedded" => Ok(StoreBackend::Embedded),
                "scylla" => Ok(StoreBackend::Scylla),
                _ => Err("expected `embedded` or `scylla`".into()),
            }),
            scylla: ScyllaConfig {
                nodes: p.parse("scylla_nodes", parse_nodes),
                keyspace: p.parse("scylla_keyspace", parse_keyspace),
                local_dc: p.parse("scylla_local_dc", |s| {
                    Ok((!s.is_empty()).then(|| s.to_string()))
                }),
                consistency: p.parse("scylla_consistency", ScyllaConsistency::parse),
                username: p.parse("scylla_username", |s| {
                    Ok((!s.is_empty()).then(|| s.to_string()))
                }),
                password: p.optional_secret("scylla_password"),
                tls: p.parse("scylla_tls", parse_bool),
                replication: p.parse("scylla_replication", |s| {
                    if s.starts_with('{') && s.ends_with('}') && s.contains("'class'") {
                        Ok(s.to_string())
                    } else {
                        Err("expected a CQL replication map like {'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into())
                    }
                }),
                request_timeout: p.parse("scylla_request_timeout", parse_duration_positive),
            },
            store_wait_for_lock: p.parse("store_wait_for_lock", parse_bool),
            store_expiry_interval: p.parse("store_expiry_interval", parse_duration_positive),
            shutdown_drain: p.parse("shutdown_drain", parse_duration),
            otlp: OtlpConfig {
                endpoint: p.parse("otlp_endpoint", parse_otlp_endpoint),
                service_name: p.parse("otlp_service_name", |s| {
                    Ok((!s.is_empty()).then(|| s.to_string()))
                }),
                sample_ratio: p.parse("otlp_sample_ratio", |s| match s.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err("expected a number from 0.0 to 1.0".into()),
                }),
                queue_size: p.parse("otlp_queue_size", parse_positive),
            },
            channels: ChannelsConfig {
                namespaces: BTreeMap::new(),
                default: default_ns.clone(),
            },
            presence,
            proxies,
            webhooks,
            push: PushConfig {
                fcm_credentials_file: p.parse("push_fcm_credentials_file", parse_optional_path),
                fcm_endpoint: p.parse("push_fcm_endpoint", parse_http_url),
                fcm_token_url: p.parse("push_fcm_token_url", |s| {
                    if s.is_empty() {
                        Ok(None)
                    } else {
                        parse_http_url(s).map(Some)
                    }
                }),
                apns_key_file: p.parse("push_apns_key_file", parse_optional_path),
                apns_key_id: p.string("push_apns_key_id"),
                apns_team_id: p.string("push_apns_team_id"),
                apns_topic: p.string("push_apns_topic"),
                apns_endpoint: p.parse("push_apns_endpoint", parse_http_url),
                webpush_vapid_key_file: p
                    .parse("push_webpush_vapid_key_file", parse_optional_path),
                webpush_vapid_subject: p.string("push_webpush_vapid_subject"),
                webpush_endpoints: {
                    let hosts: Vec<String> = p.parse("push_webpush_allowed_hosts", |s| {
                        Ok(s.split(',')
                            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                            .filter(|h| !h.is_empty())
                            .collect())
                    });
                    WebpushEndpoints {
                        any_host: hosts.iter().any(|h| h == "*"),
                        allowed_hosts: hosts.into_iter().filter(|h| h != "*").collect(),
                        allow_http: p.parse("push_webpush_allow_http", parse_bool),
                    }
                },
                ca_file: p.parse("push_ca_file", parse_optional_path),
                timeout: p.parse("push_timeout", parse_duration_positive),
                rate_per_provider: p.parse("push_rate_per_provider", parse_optional_rate),
                concurrency: p.parse("push_concurrency", parse_positive),
                retry_backoff: p.parse("push_retry_backoff", parse_duration_positive),
                retry_max_backoff: p.parse("push_retry_max_backoff", parse_duration_positive),
                retry_max_age: p.parse("push_retry_max_age", parse_duration_positive),
                unread_max_pending: p.parse("push_unread_max_pending", parse_positive),
                queue_max_messages: p.parse("push_queue_max_messages", |s| {
                    parse_positive(s).map(|n| i64::try_from(n).unwrap_or(i64::MAX))
                }),
            },
        };
        let mut config = config;
        // Built in, so one-to-one chats (`dm:#alice,bob`) work with no
        // configuration, clients publishing, with presence and join/leave; a
        // `[namespaces.dm]` table changes what it sets.
        config.channels.namespaces.insert(
            BUILTIN_DM_NAMESPACE.to_string(),
            NamespaceOptions {
                client_publish: true,
                presence: true,
                join_leave: true,
                force_push_join_leave: true,
                ..default_ns.clone()
            },
        );
        config.channels.namespaces.insert(
            BUILTIN_STATUS_NAMESPACE.to_string(),
            NamespaceOptions {
                history: false,
                client_publish: false,
                presence: false,
                join_leave: false,
                force_push_join_leave: false,
                // Watching a user's status is no conversation.
                membership: false,
                receipts: false,
                track_publishers: false,
                push_unread_delay: None,
                allowed_delta_types: Vec::new(),
                ..default_ns.clone()
            },
        );
        for (name, f) in namespaces {
            let d = &config.proxies.default_namespace;
            let pick = |enabled: Option<bool>, n: &Option<String>, default: &Option<String>| {
                // As the channel_* defaults: enabled or not, and the name,
                // each inherited unless the table sets it.
                let enabled = enabled.unwrap_or(default.is_some());
                enabled.then(|| {
                    n.clone()
                        .or_else(|| default.clone())
                        .unwrap_or_else(|| "default".to_string())
                })
            };
            let bound = NamespaceProxies {
                subscribe: pick(
                    f.subscribe_proxy_enabled,
                    &f.subscribe_proxy_name,
                    &d.subscribe,
                ),
                publish: pick(f.publish_proxy_enabled, &f.publish_proxy_name, &d.publish),
                sub_refresh: pick(
                    f.sub_refresh_proxy_enabled,
                    &f.sub_refresh_proxy_name,
                    &d.sub_refresh,
                ),
            };
            if bound != *d {
                config.proxies.namespaces.insert(name.clone(), bound);
            }
            let history_retention = match f.history_retention.as_deref().map(parse_retention) {
                None => default_ns.history_retention,
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    errors.push(format!("namespaces.{name}.history_retention: {e}"));
                    None
                }
            };
            // A table for a built-in namespace changes only what it sets.
            let base = config
                .channels
                .namespaces
                .get(&name)
                .cloned()
                .unwrap_or_else(|| default_ns.clone());
            let o = NamespaceOptions {
                history: f.history.unwrap_or(base.history),
                client_publish: f.client_publish.unwrap_or(base.client_publish),
                private: f.private.unwrap_or(base.private),
                history_retention: if f.history_retention.is_some() {
                    history_retention
                } else {
                    base.history_retention
                },
                presence: f.presence.unwrap_or(base.presence),
                join_leave: f.join_leave.unwrap_or(base.join_leave),
                force_push_join_leave: f
                    .force_push_join_leave
                    .unwrap_or(base.force_push_join_leave),
                history_size: match f.history_size {
                    None => base.history_size,
                    Some(n) => (n > 0).then_some(n),
                },
                anonymous: f.anonymous.unwrap_or(base.anonymous),
                membership: f.membership.unwrap_or(base.membership),
                receipts: f.receipts.unwrap_or(base.receipts),
                track_publishers: f.track_publishers.unwrap_or(base.track_publishers),
                publish_events: f.publish_events.unwrap_or(base.publish_events),
                push_unread_delay: match f.push_unread_delay.as_deref().map(parse_retention) {
                    None => base.push_unread_delay,
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        errors.push(format!("namespaces.{name}.push_unread_delay: {e}"));
                        None
                    }
                },
                allowed_delta_types: match &f.allowed_delta_types {
                    None => base.allowed_delta_types,
                    Some(list) => match parse_delta_types(list.iter().map(String::as_str)) {
                        Ok(l) => l,
                        Err(e) => {
                            errors.push(format!("namespaces.{name}.allowed_delta_types: {e}"));
                            Vec::new()
                        }
                    },
                },
            };
            config.channels.namespaces.insert(name, o);
        }
        for (name, f) in tier_files {
            let t = tier_limits(&name, f, &mut errors);
            config.rate_limits.tiers.insert(name, t);
        }
        if !config
            .rate_limits
            .tiers
            .contains_key(&config.rate_limits.default_tier)
        {
            errors.push(format!(
                "rate_limit_default_tier (HERALD_RATE_LIMIT_DEFAULT_TIER): no [rate_limits.tiers.{}] table",
                config.rate_limits.default_tier
            ));
        }
        check_proxy_names(&config.proxies, &mut errors);
        if config.store == StoreBackend::Scylla && config.scylla.nodes.is_empty() {
            errors.push(
                "scylla_nodes (HERALD_SCYLLA_NODES): must list at least one host:port when store = scylla"
                    .into(),
            );
        }
        if let Some(s) = &config.token_hmac_secret {
            if s.expose().len() < crate::auth::MIN_HMAC_SECRET_BYTES {
                errors.push(format!(
                    "token_hmac_secret (HERALD_TOKEN_HMAC_SECRET): must be at least {} bytes \
                     (e.g. `openssl rand -hex 32`)",
                    crate::auth::MIN_HMAC_SECRET_BYTES
                ));
            }
        }
        if config.nats.auth.password.is_some() != config.nats.auth.user.is_some() {
            errors.push("nats_user and nats_password (HERALD_NATS_USER, HERALD_NATS_PASSWORD): set both or neither".into());
        }
        if config.scylla.password.is_some() && config.scylla.username.is_none() {
            errors.push("scylla_password (HERALD_SCYLLA_PASSWORD): set scylla_username too".into());
        }
        if errors.is_empty() && config.client.pong_timeout >= config.client.ping_interval {
            errors.push("client_pong_timeout: must be shorter than client_ping_interval".into());
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Path of the secret `serve` generates when none is configured.
    pub fn generated_secret_path(&self) -> PathBuf {
        self.data_dir.join("token_hmac_secret")
    }
}

fn parse_namespaces(
    origin: &str,
    v: toml::Value,
    out: &mut BTreeMap<String, NamespaceFile>,
    errors: &mut Vec<String>,
) {
    let toml::Value::Table(t) = v else {
        errors.push(format!("{origin}: namespaces: expected a table of tables"));
        return;
    };
    for (name, body) in t {
        if let Err(e) = crate::channel::validate_namespace_name(&name) {
            errors.push(format!("{origin}: namespaces.{name}: {e}"));
            continue;
        }
        match body.try_into::<NamespaceFile>() {
            Ok(ns) => {
                out.insert(name, ns);
            }
            Err(e) => errors.push(format!("{origin}: namespaces.{name}: {e}")),
        }
    }
}

/// `proxies`: a JSON array of `[[proxies]]` objects; empty = none.
fn parse_proxies(s: &str) -> Result<Vec<ProxyConfig>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let files: Vec<ProxyFile> =
        serde_json::from_str(s).map_err(|e| format!("expected a JSON array of proxies: {e}"))?;
    let mut out: Vec<ProxyConfig> = Vec::with_capacity(files.len());
    for f in files {
        let at = |e: String| format!("proxy {:?}: {e}", f.name);
        if f.name.is_empty() || out.iter().any(|p| p.name == f.name) {
            return Err(at("names must be non-empty and unique".into()));
        }
        let endpoint = f.endpoint.trim().to_string();
        match endpoint.parse::<hyper::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => {
                return Err(at(format!(
                    "endpoint {endpoint:?}: expected an http:// or https:// URL"
                )));
            }
        }
        let timeout = match f.timeout.as_deref() {
            None => Duration::from_secs(1),
            Some(t) => parse_duration_positive(t).map_err(|e| at(format!("timeout: {e}")))?,
        };
        let mut http_headers = Vec::new();
        for h in &f.http_headers {
            let h = axum::http::HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| at(format!("http_headers: {h:?} is not a header name")))?;
            http_headers.push(h.as_str().to_string());
        }
        for (k, v) in &f.static_http_headers {
            axum::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| at(format!("static_http_headers: {k:?} is not a header name")))?;
            axum::http::HeaderValue::from_str(v).map_err(|_| {
                at(format!(
                    "static_http_headers: the value of {k:?} is not a header value"
                ))
            })?;
        }
        out.push(ProxyConfig {
            name: f.name,
            endpoint,
            timeout,
            http_headers,
            static_http_headers: f.static_http_headers,
            include_connection_meta: f.include_connection_meta,
        });
    }
    Ok(out)
}

/// Every proxy an option enables must be one of `proxies`.
fn check_proxy_names(c: &ProxiesConfig, errors: &mut Vec<String>) {
    let known = |n: &str| c.proxies.iter().any(|p| p.name == n);
    let mut check = |what: String, name: &Option<String>| {
        if let Some(n) = name
            && !known(n)
        {
            errors.push(format!("{what}: no proxy named {n:?} in `proxies`"));
        }
    };
    check("client_connect_proxy_name".into(), &c.connect);
    check("client_refresh_proxy_name".into(), &c.refresh);
    check("rpc_proxy_name".into(), &c.rpc);
    let d = &c.default_namespace;
    check("channel_subscribe_proxy_name".into(), &d.subscribe);
    check("channel_publish_proxy_name".into(), &d.publish);
    check("channel_sub_refresh_proxy_name".into(), &d.sub_refresh);
    for (ns, p) in &c.namespaces {
        check(
            format!("namespaces.{ns}.subscribe_proxy_name"),
            &p.subscribe,
        );
        check(format!("namespaces.{ns}.publish_proxy_name"), &p.publish);
        check(
            format!("namespaces.{ns}.sub_refresh_proxy_name"),
            &p.sub_refresh,
        );
    }
}

struct Parser<'a> {
    raw: &'a BTreeMap<&'static str, (String, String)>,
    errors: &'a mut Vec<String>,
}

impl Parser<'_> {
    fn value(&self, key: &'static str) -> (String, String) {
        match self.raw.get(key) {
            Some((v, origin)) => (v.clone(), origin.clone()),
            None => {
                let s = spec(key).expect("option is in the table");
                (s.default.to_string(), format!("{key} (default)"))
            }
        }
    }

    fn parse<T: Default>(
        &mut self,
        key: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let (v, origin) = self.value(key);
        match f(v.trim()) {
            Ok(t) => t,
            Err(e) => {
                self.errors.push(format!(
                    "{origin} ({}): invalid value {v:?}: {e}",
                    env_name(key)
                ));
                T::default()
            }
        }
    }

    fn string(&mut self, key: &'static str) -> String {
        self.value(key).0
    }

    /// A secret, trimmed: a trailing newline from a file or a heredoc must
    /// not become part of a key that presented keys (trimmed too) are
    /// compared with.
    fn optional_secret(&mut self, key: &'static str) -> Option<Secret> {
        let v = self.value(key).0;
        let v = v.trim();
        if v.is_empty() {
            None
        } else {
            Some(Secret(v.to_string()))
        }
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected host:port, e.g. 127.0.0.1:8000".into())
}

/// Comma-separated PEM public key files, each read and checked.
fn parse_public_keys(s: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for path in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        crate::auth::PublicKey::from_pem(&pem).map_err(|e| format!("{path}: {e}"))?;
        out.push(PathBuf::from(path));
    }
    Ok(out)
}

/// The servers of `nats_url`: one URL or a comma-separated list, each a
/// valid NATS URL (`nats://host:port`, `tls://…`, or `host:port`).
pub fn nats_urls(s: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = s.split(',').map(|u| u.trim().to_string()).collect();
    if urls.iter().any(String::is_empty) {
        return Err("expected one URL or a comma-separated list of URLs, none empty".into());
    }
    for url in &urls {
        url.parse::<async_nats::ServerAddr>().map_err(|e| {
            let url = crate::secrets::redact_url(url);
            format!("`{url}` is not a NATS URL: {e}")
        })?;
    }
    Ok(urls)
}

/// Replicas of a JetStream stream or KV bucket: 1 to 5, as JetStream allows.
fn parse_replicas(s: &str) -> Result<usize, String> {
    match parse_positive(s)? {
        n @ 1..=5 => Ok(n),
        _ => Err("expected 1..=5 (JetStream's limit)".into()),
    }
}

/// Comma-separated http:// or https:// URLs (webhook receivers).
fn parse_endpoints(s: &str) -> Result<Vec<String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.parse::<axum::http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Ok(e.to_string())
            }
            _ => Err(format!("{e:?} is not an http:// or https:// URL")),
        })
        .collect()
}

/// A PEM CA file that exists and holds a certificate; empty = none.
fn parse_ca_file(s: &str) -> Result<Option<PathBuf>, String> {
    let Some(path) = parse_optional_path(s)? else {
        return Ok(None);
    };
    crate::http_client::tls_config(Some(&path))?;
    Ok(Some(path))
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number above 0".into()),
    }
}

/// A comma-separated list of host:port; empty is an empty list.
fn parse_nodes(s: &str) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    for node in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match node.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                nodes.push(node.to_string())
            }
            _ => return Err(format!("`{node}` is not host:port, e.g. 127.0.0.1:9042")),
        }
    }
    Ok(nodes)
}

/// An `http://host:port[/path]` URL, or empty (no export). No https: the
/// exporter speaks plain HTTP to a collector or agent nearby.
fn parse_otlp_endpoint(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let rest = s
        .strip_prefix("http://")
        .ok_or("expected an http:// URL such as http://127.0.0.1:4318 (https is not supported: export to a collector nearby)")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".into());
    }
    Ok(Some(s.trim_end_matches('/').to_string()))
}

/// A CQL identifier Herald can use unquoted: letters, digits and `_`,
/// starting with a letter, at most 48 characters.
fn parse_keyspace(s: &str) -> Result<String, String> {
    let ok = (1..=48).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected 1 to 48 letters, digits and `_`, starting with a letter".into())
    }
}

fn parse_optional_path(s: &str) -> Result<Option<PathBuf>, String> {
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// An http:// or https:// URL, without a trailing slash.
fn parse_http_url(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && s.parse::<axum::http::Uri>().is_ok();
    if ok {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err("expected an http:// or https:// URL".into())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("expected a duration like 10s or 5m: {e}"))
}

fn parse_duration_positive(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

/// 0 = no bound.
/// A list of delta types, each one of [`DELTA_TYPES`].
fn parse_delta_types<'a>(types: impl Iterator<Item = &'a str>) -> Result<Vec<String>, String> {
    types
        .map(|t| {
            if DELTA_TYPES.contains(&t) {
                Ok(t.to_string())
            } else {
                Err(format!("unknown delta type {t:?} (known: fossil)"))
            }
        })
        .collect()
}

fn parse_history_size(s: &str) -> Result<Option<u64>, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| "expected a whole number (0 = no bound)".to_string())?;
    Ok((n > 0).then_some(n))
}

fn parse_retention(s: &str) -> Result<Option<Duration>, String> {
    let d = parse_duration(s)?;
    Ok(if d.is_zero() { None } else { Some(d) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Config, ConfigErrors> {
        Config::load(&Sources {
            file: file.map(|f| (PathBuf::from("herald.toml"), f.to_string())),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            flags: flags
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        })
    }

    #[test]
    fn proxies_from_toml_tables_and_namespaces() {
        let c = load(
            Some(
                r#"
client_connect_proxy_enabled = true
channel_publish_proxy_enabled = true
channel_publish_proxy_name = "app"
[[proxies]]
name = "default"
endpoint = "http://127.0.0.1:3000/centrifugo"
timeout = "250ms"
http_headers = ["Cookie"]
static_http_headers = { "X-Secret" = "s" }
[[proxies]]
name = "app"
endpoint = "http://app:8080/p"
include_connection_meta = true
[namespaces.chat]
subscribe_proxy_enabled = true
publish_proxy_enabled = false
[namespaces.feed]
history = false
"#,
            ),
            &[],
            &[],
        )
        .expect("loads");
        let p = &c.proxies;
        assert_eq!(p.proxies.len(), 2);
        assert_eq!(p.proxies[0].timeout, Duration::from_millis(250));
        assert_eq!(p.proxies[0].http_headers, vec!["cookie".to_string()]);
        assert_eq!(p.proxies[1].timeout, Duration::from_secs(1));
        assert!(p.proxies[1].include_connection_meta);
        assert_eq!(p.connect.as_deref(), Some("default"));
        assert_eq!(p.refresh, None);
        let chat = p.namespace(Some("chat"));
        assert_eq!(chat.subscribe.as_deref(), Some("default"));
        assert_eq!(chat.publish, None);
        // A table that says nothing about proxies keeps the defaults.
        assert_eq!(p.namespace(Some("feed")).publish.as_deref(), Some("app"));
        assert_eq!(p.namespace(None).publish.as_deref(), Some("app"));
    }

    #[test]
    fn proxies_from_the_environment_as_json() {
        let c = load(
            None,
            &[
                (
                    "HERALD_PROXIES",
                    r#"[{"name":"rpc","endpoint":"http://10.0.0.1:9000/rpc","timeout":"2s"}]"#,
                ),
                ("HERALD_RPC_PROXY_ENABLED", "true"),
                ("HERALD_RPC_PROXY_NAME", "rpc"),
            ],
            &[],
        )
        .expect("loads");
        assert_eq!(c.proxies.rpc.as_deref(), Some("rpc"));
        assert_eq!(c.proxies.proxies[0].timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_proxies_are_each_reported() {
        let e = load(
            Some(
                r#"
client_refresh_proxy_enabled = true
[[proxies]]
name = "a"
endpoint = "ftp://secure/p"
[namespaces.chat]
publish_proxy_enabled = true
publish_proxy_name = "nope"
"#,
            ),
            &[],
            &[],
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("expected an http:// or https:// URL"), "{e}");
        assert!(
            e.contains("client_refresh_proxy_name: no proxy named \"default\""),
            "{e}"
        );
        assert!(
            e.contains("namespaces.chat.publish_proxy_name: no proxy named \"nope\""),
            "{e}"
        );
        let e = load(
            None,
            &[(
                "HERALD_PROXIES",
                r#"[{"name":"a","endpoint":"http://x/","timeout":"soon"}]"#,
            )],
            &[],
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("timeout"), "{e}");
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.client.message_size_limit, 65536);
        assert_eq!(c.client.queue_max_bytes, 1 << 20);
        assert_eq!(c.client.channel_limit, 128);
        assert_eq!(c.client.ping_interval, Duration::from_secs(25));
        assert_eq!(c.client.pong_timeout, Duration::from_secs(8));
        assert_eq!(c.client.stale_timeout, Duration::from_secs(10));
        assert_eq!(c.client.recovery_limit, 300);
        assert_eq!(c.sync.page_limit, 1000);
        assert!(c.token_hmac_secret.is_none());
        assert!(c.channels.default.history);
        assert!(!c.channels.default.client_publish);
        assert_eq!(
            c.channels.namespaces[BUILTIN_DM_NAMESPACE],
            NamespaceOptions {
                client_publish: true,
                presence: true,
                join_leave: true,
                force_push_join_leave: true,
                ..c.channels.default.clone()
            }
        );
        assert!(!c.channels.default.presence && !c.channels.default.join_leave);
        let status = &c.channels.namespaces[BUILTIN_STATUS_NAMESPACE];
        assert!(!status.history && !status.client_publish && !status.private);
        assert_eq!(c.presence.ttl, Duration::from_secs(60));
        assert!(!c.presence.user_status_for_clients);
    }

    #[test]
    fn trace_export_is_off_unless_an_http_endpoint_is_given() {
        let c = Config::defaults();
        assert_eq!(c.otlp.endpoint, None);
        assert_eq!((c.otlp.sample_ratio, c.otlp.queue_size), (1.0, 2048));
        let c = load(
            None,
            &[("HERALD_OTLP_ENDPOINT", "http://collector:4318/")],
            &[],
        )
        .unwrap();
        assert_eq!(c.otlp.endpoint.as_deref(), Some("http://collector:4318"));
        let e = load(
            None,
            &[
                ("HERALD_OTLP_ENDPOINT", "https://collector:4318"),
                ("HERALD_OTLP_SAMPLE_RATIO", "2"),
            ],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
    }

    #[test]
    fn file_then_env_then_flags() {
        let c = load(
            Some("listen = \"127.0.0.1:1\"\ndata_dir = \"/a\"\nclient_channel_limit = 5"),
            &[("HERALD_LISTEN", "127.0.0.1:2"), ("HERALD_DATA_DIR", "/b")],
            &[("listen", "127.0.0.1:3")],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.data_dir, PathBuf::from("/b"));
        assert_eq!(c.client.channel_limit, 5);
    }

    #[test]
    fn every_bad_value_is_reported_by_name() {
        let e = load(
            Some("bogus = 1\nclient_ping_interval = \"soon\""),
            &[("HERALD_LISTEN", "nowhere")],
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("unknown option `bogus`"), "{text}");
        assert!(text.contains("client_ping_interval"), "{text}");
        assert!(text.contains("HERALD_LISTEN"), "{text}");
        assert_eq!(e.0.len(), 3);
    }

    #[test]
    fn rate_limit_tiers_parse_and_are_checked() {
        let c = load(
            Some("rate_limit_default_tier = \"free\"\n[rate_limits.tiers.free]\nconnection = { publish = \"10/1s\" }\nuser = { total = \"60/1m\" }"),
            &[],
            &[],
        )
        .unwrap();
        let free = &c.rate_limits.tiers["free"];
        assert_eq!(
            free.connection["publish"],
            Rate {
                burst: 10,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(free.user["total"].per, Duration::from_secs(60));
        assert_eq!(c.rate_limits.tiers["default"], builtin_default_tier());
        let e = load(
            Some("rate_limit_default_tier = \"gold\"\n[rate_limits.tiers.free]\nconnection = { jump = \"1/1s\", publish = \"0/1s\" }"),
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rate_limits.tiers.free.connection.jump"), "{e}");
        assert!(
            e.contains("rate_limits.tiers.free.connection.publish"),
            "{e}"
        );
        assert!(e.contains("rate_limit_default_tier"), "{e}");
    }

    #[test]
    fn namespaces_inherit_defaults() {
        let c = load(
            Some("channel_client_publish = false\n[namespaces.chat]\nprivate = true\n[namespaces.feed]\nhistory = false\nhistory_retention = \"7d\""),
            &[],
            &[],
        )
        .unwrap();
        let chat = &c.channels.namespaces["chat"];
        assert!(chat.private && chat.history && !chat.client_publish);
        let feed = &c.channels.namespaces["feed"];
        assert!(!feed.history);
        assert_eq!(feed.history_retention, Some(Duration::from_secs(7 * 86400)));
    }

    /// `allowed_delta_types`: a list per namespace, comma-separated for the
    /// default one; an unknown type is a config error naming where.
    #[test]
    fn allowed_delta_types_per_namespace() {
        let c = load(
            Some("[namespaces.game]\nallowed_delta_types = [\"fossil\"]\n[namespaces.chat]\nprivate = true"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.channels.namespaces["game"].allowed_delta_types,
            ["fossil"]
        );
        assert!(c.channels.namespaces["chat"].allowed_delta_types.is_empty());
        assert!(c.channels.default.allowed_delta_types.is_empty());
        let c = load(
            Some("[namespaces.chat]\nprivate = true"),
            &[("HERALD_CHANNEL_ALLOWED_DELTA_TYPES", "fossil")],
            &[],
        )
        .unwrap();
        assert_eq!(c.channels.default.allowed_delta_types, ["fossil"]);
        assert_eq!(
            c.channels.namespaces["chat"].allowed_delta_types,
            ["fossil"],
            "inherited"
        );
        let e = load(
            Some("[namespaces.game]\nallowed_delta_types = [\"zstd\"]"),
            &[("HERALD_CHANNEL_ALLOWED_DELTA_TYPES", "fossil,xdelta")],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("namespaces.game.allowed_delta_types"), "{e}");
        assert!(e.contains("HERALD_CHANNEL_ALLOWED_DELTA_TYPES"), "{e}");
    }

    /// A table for a built-in namespace changes only what it sets: a
    /// private `status` still keeps no history; `dm` without join/leave
    /// keeps its presence.
    #[test]
    fn built_in_namespaces_are_overridden_by_what_a_table_sets() {
        let c = load(
            Some("channel_presence = false\n[namespaces.status]\nprivate = true\n[namespaces.dm]\njoin_leave = false\nforce_push_join_leave = false\n[namespaces.room]\npresence = true"),
            &[("HERALD_PRESENCE_TTL", "5s")],
            &[],
        )
        .unwrap();
        let status = &c.channels.namespaces[BUILTIN_STATUS_NAMESPACE];
        assert!(status.private && !status.history && !status.client_publish);
        let dm = &c.channels.namespaces[BUILTIN_DM_NAMESPACE];
        assert!(dm.presence && !dm.join_leave && !dm.force_push_join_leave);
        let room = &c.channels.namespaces["room"];
        assert!(room.presence && !room.join_leave && room.history);
        assert_eq!(c.presence.ttl, Duration::from_secs(5));
        assert!(load(None, &[("HERALD_PRESENCE_TTL", "0s")], &[]).is_err());
    }

    /// `membership` and `receipts` per namespace; the default namespace's
    /// `membership` never reaches the built-in `status` namespace.
    #[test]
    fn conversation_options_by_namespace() {
        let c = load(
            Some("[namespaces.group]\nmembership = true\nreceipts = false"),
            &[("HERALD_CHANNEL_MEMBERSHIP", "true")],
            &[],
        )
        .unwrap();
        let group = &c.channels.namespaces["group"];
        assert!(group.membership && !group.receipts);
        assert!(c.channels.default.membership && c.channels.default.receipts);
        let status = &c.channels.namespaces[BUILTIN_STATUS_NAMESPACE];
        assert!(!status.membership && !status.receipts);
        let defaults = load(None, &[], &[]).unwrap();
        assert!(!defaults.channels.default.membership && defaults.channels.default.receipts);
        assert_eq!(defaults.client.conversation_cache_size, 100_000);
    }

    #[test]
    fn scylla_options_parse_and_validate_by_name() {
        let c = load(
            None,
            &[
                ("HERALD_STORE", "scylla"),
                ("HERALD_SCYLLA_NODES", "10.0.0.1:9042, db.local:19042"),
                ("HERALD_SCYLLA_CONSISTENCY", "QUORUM"),
                ("HERALD_SCYLLA_LOCAL_DC", "dc1"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.store, StoreBackend::Scylla);
        assert_eq!(c.scylla.nodes, vec!["10.0.0.1:9042", "db.local:19042"]);
        assert_eq!(c.scylla.consistency, ScyllaConsistency::Quorum);
        assert_eq!(c.scylla.local_dc.as_deref(), Some("dc1"));
        assert_eq!(c.scylla.keyspace, "herald");
        assert_eq!(c.scylla.request_timeout, Duration::from_secs(5));

        let e = load(None, &[("HERALD_STORE", "scylla")], &[]).unwrap_err();
        assert!(e.to_string().contains("scylla_nodes"), "{e}");
        // Weak levels break read-your-writes for the writer's head and key
        // reads (issue 16 §5c): refused, with the reason.
        for weak in ["one", "LOCAL_ONE"] {
            let e = load(
                None,
                &[
                    ("HERALD_STORE", "scylla"),
                    ("HERALD_SCYLLA_NODES", "10.0.0.1:9042"),
                    ("HERALD_SCYLLA_CONSISTENCY", weak),
                ],
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("HERALD_SCYLLA_CONSISTENCY"), "{e}");
            assert!(e.contains("cannot guarantee"), "{e}");
            assert!(e.contains("local_quorum, quorum or all"), "{e}");
        }
        let e = load(
            None,
            &[
                ("HERALD_SCYLLA_NODES", "nohost"),
                ("HERALD_SCYLLA_CONSISTENCY", "two"),
                ("HERALD_SCYLLA_KEYSPACE", "a-b"),
                ("HERALD_STORE", "cassandra"),
            ],
            &[],
        )
        .unwrap_err();
        let text = e.to_string();
        for name in [
            "HERALD_SCYLLA_NODES",
            "HERALD_SCYLLA_CONSISTENCY",
            "HERALD_SCYLLA_KEYSPACE",
            "HERALD_STORE",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        let secret = "hunter2-hunter2-hunter2-hunter2-hunter2";
        let c = load(None, &[("HERALD_TOKEN_HMAC_SECRET", secret)], &[]).unwrap();
        assert!(!format!("{c:?}").contains(secret));
        assert_eq!(c.token_hmac_secret.unwrap().expose(), secret);
    }

    #[test]
    fn short_hmac_secrets_are_refused_and_keys_trimmed() {
        let e = load(None, &[("HERALD_TOKEN_HMAC_SECRET", "a")], &[]).unwrap_err();
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
        let padded = format!("{}\n", "k".repeat(31));
        let e = load(None, &[("HERALD_TOKEN_HMAC_SECRET", &padded)], &[]).unwrap_err();
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
        let c = load(None, &[("HERALD_API_KEY", "key\n")], &[]).unwrap();
        assert_eq!(c.api_key.unwrap().expose(), "key");
    }

    #[test]
    fn nats_url_takes_a_list_and_replicas_are_bounded() {
        let c = load(
            None,
            &[
                (
                    "HERALD_NATS_URL",
                    " nats://10.0.0.1:4222, 10.0.0.2:4222 ,tls://n3:4222",
                ),
                ("HERALD_INGEST_REPLICAS", "3"),
                ("HERALD_NATS_KV_REPLICAS", "3"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            nats_urls(&c.nats.url).unwrap(),
            ["nats://10.0.0.1:4222", "10.0.0.2:4222", "tls://n3:4222"]
        );
        assert_eq!((c.ingest.replicas, c.nats.kv_replicas), (3, 3));
        for (key, bad) in [
            ("HERALD_NATS_URL", "nats://a:4222,,nats://b:4222"),
            ("HERALD_NATS_URL", "http://a:4222"),
            ("HERALD_INGEST_REPLICAS", "0"),
            ("HERALD_INGEST_REPLICAS", "6"),
            ("HERALD_NATS_KV_REPLICAS", "7"),
        ] {
            let e = load(None, &[(key, bad)], &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{key}={bad}: {e}");
        }
    }

    #[test]
    fn webhooks_are_off_by_default_and_checked_when_on() {
        let c = Config::defaults();
        assert!(!c.webhooks.enabled());
        assert_eq!(c.webhooks.events.len(), 7);
        assert!(!c.channels.default.publish_events);
        let c = load(
            Some("webhook_endpoints = \"http://a:1/h, http://b:2/h\"\nwebhook_secret = \"s\"\nwebhook_events = \"connected,published\"\n[namespaces.feed]\npublish_events = true"),
            &[],
            &[],
        )
        .unwrap();
        assert!(c.webhooks.enabled());
        assert_eq!(c.webhooks.endpoints, ["http://a:1/h", "http://b:2/h"]);
        assert_eq!(c.webhooks.events.len(), 2);
        assert!(c.channels.namespaces["feed"].publish_events);
        for (env, needle) in [
            (
                &[("HERALD_WEBHOOK_ENDPOINTS", "http://a/h")][..],
                "webhook_secret",
            ),
            (
                &[("HERALD_WEBHOOK_ENDPOINTS", "ftp://a/h")][..],
                "WEBHOOK_ENDPOINTS",
            ),
            (&[("HERALD_WEBHOOK_EVENTS", "connected,typo")][..], "typo"),
            (
                &[("HERALD_WEBHOOK_MAX_AGE", "100d")][..],
                "webhook_stream_max_age",
            ),
            (
                &[("HERALD_WEBHOOK_RETRY_INITIAL", "2m")][..],
                "webhook_retry_initial",
            ),
            (&[("HERALD_WEBHOOK_SUBJECT", "a.*")][..], "WEBHOOK_SUBJECT"),
            (&[("HERALD_WEBHOOK_STREAM", "a.b")][..], "WEBHOOK_STREAM"),
        ] {
            let e = load(None, env, &[]).unwrap_err().to_string();
            assert!(e.contains(needle), "{env:?}: {e}");
        }
    }
}
