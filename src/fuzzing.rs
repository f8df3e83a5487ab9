//! The entry points of every decoder that reads bytes from outside, one per
//! fuzz target (`fuzz/fuzz_targets/`), also replayed over the committed
//! corpus on stable by `tests/fuzz_corpus.rs`. Each feeds its input through
//! the functions the server runs on such bytes and returns nothing: a finding
//! is a panic, a hang or an unbounded allocation.
//!
//! Inputs with several parts (a token and the claims to check it against, a
//! query string and its headers) split them at newlines, which none of the
//! parts may hold on the wire.
//!
//! Knows which functions decode outside input and a fixed configuration to
//! run them with (a test HMAC secret, a test EC key, a few namespaces); owns
//! none of the decoding.

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey};

use crate::auth::{PublicKey, TokenKeys, Verifier};
use crate::config::{ChannelsConfig, Config, NamespaceOptions};

/// A target: runs one input.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("client_frame", client_frame),
    ("jwt", jwt),
    ("channel_name", channel_name),
    ("api_body", api_body),
    ("sync_http", sync_http),
    ("ingest_wire", ingest_wire),
    ("control_wire", control_wire),
];

/// The HMAC secret of the fuzzing verifier (test only).
pub const HMAC_SECRET: &str = "fuzzing-secret-fuzzing-secret-0123456789";

/// A P-256 key made for these targets only (never used anywhere else).
const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg12HzbXBkl+XLUSqt
DlO5KRQ7vZXN6ISCctV9ghDMZdChRANCAARmmtZOewgVDgbQF57ElbHRgiikGxXk
KVL+GLNWAr0yCEJTNZyPb8y2ftGgues6/SSX8hOfQTEPOcz0vXZg4IW5
-----END PRIVATE KEY-----
";
const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEZprWTnsIFQ4G0BeexJWx0YIopBsV
5ClS/hizVgK9MghCUzWcj2/Mtn7RoLnrOv0kl/ITn0ExDznM9L12YOCFuQ==
-----END PUBLIC KEY-----
";

struct Fixture {
    verifier: Verifier,
    verifier_aud: Verifier,
    channels: ChannelsConfig,
    hmac: EncodingKey,
    ec: EncodingKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys = || TokenKeys {
            hmac_secret: Some(HMAC_SECRET.as_bytes().to_vec()),
            public_keys: vec![PublicKey::from_pem(EC_PUBLIC_PEM.as_bytes()).expect("test key")],
            ..TokenKeys::default()
        };
        let mut channels = Config::defaults().channels;
        let ns = |history, client_publish, private, anonymous| NamespaceOptions {
            history,
            client_publish,
            private,
            anonymous,
            history_retention: None,
            history_size: None,
            presence: true,
            join_leave: false,
            force_push_join_leave: false,
            membership: false,
            receipts: true,
            track_publishers: true,
            publish_events: false,
            push_unread_delay: None,
            allowed_delta_types: Vec::new(),
        };
        channels
            .namespaces
            .insert("chat".into(), ns(true, true, false, false));
        channels
            .namespaces
            .insert("secret".into(), ns(true, false, true, false));
        channels
            .namespaces
            .insert("open".into(), ns(true, true, false, true));
        Fixture {
            verifier: Verifier::with_keys(keys()),
            verifier_aud: Verifier::with_keys(TokenKeys {
                audience: Some("herald".into()),
                issuer: Some("issuer".into()),
                ..keys()
            })
            .require_exp(true),
            channels,
            hmac: EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            ec: EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).expect("test key"),
        }
    })
}

/// A WebSocket text frame of the client protocol: the commands it holds and
/// the method each carries (`Session::handle_frame`).
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(commands) = crate::protocol::decode_commands(text) {
        for c in commands {
            let _ = c.method();
        }
    }
}

/// A client token. First byte: 0 the rest is a token as presented; 1 or 2
/// the rest is `header JSON \n claims JSON`, signed with the test HMAC
/// secret (1) or the test EC key (2) so claims validation is reached. Each
/// token is checked as a connection token and as a subscription token for
/// the `sub` and `channel` its claims name, by a verifier without and one
/// with `aud`/`iss`/`exp` requirements.
pub fn jwt(data: &[u8]) {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let token = match mode % 3 {
        0 => rest.to_string(),
        m => {
            let (header, claims) = rest.split_once('\n').unwrap_or((rest, "{}"));
            sign(header, claims, m == 1)
        }
    };
    let claims: serde_json::Value = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let sub = claims["sub"].as_str().unwrap_or("alice");
    let channel = claims["channel"].as_str().unwrap_or("news");
    for v in [&f.verifier, &f.verifier_aud] {
        let _ = v.connect(&token);
        let _ = v.subscription(&token, sub, channel);
    }
}

fn sign(header: &str, claims: &str, hmac: bool) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let message = format!("{}.{}", b64(header), b64(claims));
    let f = fixture();
    let signature = if hmac {
        jsonwebtoken::crypto::sign(message.as_bytes(), &f.hmac, Algorithm::HS256)
    } else {
        jsonwebtoken::crypto::sign(message.as_bytes(), &f.ec, Algorithm::ES256)
    };
    format!("{message}.{}", signature.unwrap_or_default())
}

/// A channel name: parsed, then every permission check for a few users.
pub fn channel_name(data: &[u8]) {
    let f = fixture();
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::channel::history_retention_of(name, &f.channels);
    if let Ok(c) = crate::channel::Channel::parse(name, &f.channels) {
        for user in ["", "alice", "bob"] {
            for token in [false, true] {
                let _ = c.check_subscribe(user, token);
                let _ = c.check_client_publish(user, token);
                let _ = c.check_history(user, token);
            }
        }
    }
}

/// A server API request: `method name \n body`.
pub fn api_body(data: &[u8]) {
    let f = fixture();
    let (method, body) = split_line(data);
    let Ok(method) = std::str::from_utf8(method) else {
        return;
    };
    let _ = crate::api::check_request(method, body, &f.channels);
}

/// A sync HTTP page request: `path segment \n query \n Authorization \n
/// subscription token`. Fuzzed tokens are seldom signed by us, so a
/// token line that is just `=` stands for a valid token minted here (for
/// user `alice`; the subscription token for the decoded channel), to reach
/// the checks past authentication.
pub fn sync_http(data: &[u8]) {
    let f = fixture();
    let (path, rest) = split_line(data);
    let (query, rest) = split_line(rest);
    let (authorization, subscription) = split_line(rest);
    let (Ok(path), Ok(query)) = (std::str::from_utf8(path), std::str::from_utf8(query)) else {
        return;
    };
    let ttl = std::time::Duration::from_secs(60);
    let minted_auth;
    let authorization = if authorization == b"=" {
        minted_auth = format!(
            "Bearer {}",
            crate::auth::mint(HMAC_SECRET, "alice", None, ttl)
        );
        minted_auth.as_bytes()
    } else {
        authorization
    };
    let minted_sub;
    let subscription = if subscription == b"=" {
        let channel = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        minted_sub = crate::auth::mint(HMAC_SECRET, "alice", Some(&channel), ttl);
        minted_sub.as_bytes()
    } else {
        subscription
    };
    let n = data.len() as u64;
    let req = crate::sync::RequestBytes {
        path_channel: path,
        query,
        authorization,
        subscription_token: subscription,
        head: n.wrapping_mul(7919),
        first_available: n,
        last_offset: (n % 3 != 0).then_some(n.wrapping_mul(31)),
    };
    let _ = crate::sync::check_http_request(&f.verifier, &f.channels, 100, &req);
}

/// The formats of the ingest path between roles: an ingest message as the
/// writer decodes it, the writer's reply and its binary batch of replies as
/// a publisher decodes them, a sync request as the sync role decodes it (then
/// its channel name), a sync reply as an edge or publisher decodes it (then
/// each publication's offset).
pub fn ingest_wire(data: &[u8]) {
    use crate::bus::ingest::{StoredBatch, WriterReply};
    use crate::sync::wire::{SyncReply, SyncRequest};
    let f = fixture();
    let _ = crate::writer::check_ingest(data);
    let _ = serde_json::from_slice::<WriterReply>(data);
    let _ = StoredBatch::decode(data);
    if let Ok(SyncRequest::Read { channel, .. } | SyncRequest::Idempotency { channel, .. }) =
        serde_json::from_slice::<SyncRequest>(data)
    {
        let _ = crate::channel::Channel::parse(&channel, &f.channels);
    }
    if let Ok(SyncReply::Page(page)) = serde_json::from_slice::<SyncReply>(data) {
        for p in &page.publications {
            crate::edge::check_feed_message("chat:room", p.get().as_bytes());
        }
    }
}

/// The JSON formats of the control path between roles: a control message as
/// an edge decodes it, a channel subject's join/leave message, the presence
/// messages between edges, and a revocation bucket entry (`key \n value`).
pub fn control_wire(data: &[u8]) {
    let _ = serde_json::from_slice::<crate::edge::control::ControlMessage>(data);
    crate::edge::check_feed_message("chat:room", data);
    crate::edge::presence::check_wire_message(data);
    let (key, value) = split_line(data);
    if let Ok(key) = std::str::from_utf8(key) {
        crate::revocation::check_entry(key, value);
    }
}

/// The bytes before the first newline and those after it.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
