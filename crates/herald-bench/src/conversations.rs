//! `herald bench conversations`: what IM conversations cost (issue 11 §5).
//!
//! Two phases against one `herald serve`:
//! - **publish**: `--concurrency` clients publish `--publishes` messages
//!   each, as fast as replies come, into one channel of each kind: `plain`
//!   (an open channel with `track_publishers = false`: no markers), `open`
//!   (an open channel: each publish moves the publisher's read marker), `dm` (`dm:#p,q`, two members: each
//!   publish also moves the publisher's read marker, and the first writes
//!   the member rows) and `group` (a `membership` namespace with `--members`
//!   members added through the server API: the same marker write, and the
//!   channel's size must not matter). Publishes/s and publish→reply latency
//!   of each.
//! - **list**: one user is made a member of `--conversations` channels
//!   (server API `add_members`), the first `--with-messages` of which get a
//!   message; then `herald.conversations {limit: 50}` and `herald.unread` are
//!   asked `--queries` times each: latency, and a check that the answers
//!   count every conversation.
//!
//! No peer (Centrifugo has no conversations).

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::{Value, json};

use super::payload::now_us;
use super::report::{Measured, Report, Row};
use super::stats::{Count, Latencies, note};
use super::target::{Herald, HeraldOptions};
use super::{BenchError, Common};
use herald_client::Client;

#[derive(Args, Clone, Debug)]
pub struct ConversationsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Publishes per client and channel kind.
    #[arg(long, default_value_t = 2000)]
    pub publishes: usize,
    /// Publishing clients per channel kind.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Members of the group channel.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Conversations of the user whose list is read.
    #[arg(long, default_value_t = 10_000)]
    pub conversations: usize,
    /// Of those, how many hold a message.
    #[arg(long, default_value_t = 1000)]
    pub with_messages: usize,
    /// `herald.conversations` and `herald.unread` calls.
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
}

const NAMESPACES: &str = "[namespaces.plain]\nclient_publish = true\ntrack_publishers = false\n\
[namespaces.open]\nclient_publish = true\ntrack_publishers = true\n\
[namespaces.group]\nclient_publish = true\nmembership = true\n";

/// Members per `add_members` call (the server's limit).
const ADD_CHUNK: usize = 1000;

fn server(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Server(format!("{what}: {e}"))
}

pub async fn run(args: ConversationsArgs) -> Result<Report, BenchError> {
    if args.publishes == 0 || args.concurrency == 0 || args.queries == 0 || args.members == 0 {
        return Err(BenchError::Internal(
            "--publishes, --concurrency, --members and --queries must be at least 1".into(),
        ));
    }
    let quiet = args.common.quiet;
    note(quiet, "starting nats-server and herald serve…");
    let mut herald = Herald::start(
        &args.common.nats_bin(),
        &HeraldOptions {
            options: vec![],
            toml: NAMESPACES.into(),
        },
    )
    .await?;
    let mut m = Measured::default();
    let mut api = herald.api(None).await?;
    let members: Vec<String> = (0..args.members.max(args.concurrency))
        .map(|i| format!("m{i}"))
        .collect();
    for chunk in members.chunks(ADD_CHUNK) {
        api.method(
            "add_members",
            &json!({"channel": "group:big", "users": chunk}),
        )
        .await
        .map_err(|e| server("add_members", e))?;
    }
    let kinds = [
        ("plain", "plain:room", "p"),
        ("open", "open:room", "p"),
        ("dm", "dm:#p,q", "p"),
        ("group", "group:big", "m"),
    ];
    for (kind, channel, user) in kinds {
        note(quiet, &format!("publishing into {kind}…"));
        publish(&args, &herald, kind, channel, user, &mut m).await?;
        herald.check_alive()?;
    }
    note(quiet, "filling one user's conversations…");
    list(&args, &herald, &mut api, &mut m).await?;
    herald.check_alive()?;
    let mut rows = Vec::new();
    for (kind, _, _) in kinds {
        rows.push(Row::herald(
            &format!("publishes/s, {kind}"),
            &format!("{kind}_per_sec"),
        ));
        rows.push(Row::herald(
            &format!("publish p50 (ms), {kind}"),
            &format!("{kind}_p50_ms"),
        ));
        rows.push(Row::herald(
            &format!("publish p99 (ms), {kind}"),
            &format!("{kind}_p99_ms"),
        ));
    }
    let n = args.conversations;
    rows.push(Row::herald(
        &format!("herald.conversations p50 (ms), {n} conversations"),
        "list_p50_ms",
    ));
    rows.push(Row::herald(
        &format!("herald.conversations p99 (ms), {n} conversations"),
        "list_p99_ms",
    ));
    rows.push(Row::herald(
        &format!("herald.unread p50 (ms), {n} conversations"),
        "unread_p50_ms",
    ));
    rows.push(Row::herald(
        &format!("herald.unread p99 (ms), {n} conversations"),
        "unread_p99_ms",
    ));
    Ok(Report {
        scenario: "conversations",
        params: json!({
            "publishes": args.publishes,
            "concurrency": args.concurrency,
            "members": args.members,
            "conversations": args.conversations,
            "with_messages": args.with_messages,
            "queries": args.queries,
        }),
        herald: m,
        peers: Vec::new(),
        rows,
        notes: vec![
            "one herald serve; plain = open channel without markers (track_publishers = false), open = open channel (publisher's marker moves), dm = 2 members, group = --members members; markers move on every dm/group publish".into(),
        ],
    })
}

async fn publish(
    args: &ConversationsArgs,
    herald: &Herald,
    kind: &str,
    channel: &str,
    user: &str,
    m: &mut Measured,
) -> Result<(), BenchError> {
    let latency = Arc::new(Latencies::default());
    let errors = Arc::new(Count::default());
    let mut clients = Vec::new();
    for w in 0..args.concurrency {
        let who = if user == "m" {
            format!("m{w}")
        } else {
            user.to_string()
        };
        let (client, _) = Client::connect(herald.addr, &herald.token(&who))
            .await
            .map_err(|e| server("connect", e))?;
        clients.push(client);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let (latency, errors, channel, n) = (
            latency.clone(),
            errors.clone(),
            channel.to_string(),
            args.publishes,
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let sent = now_us();
                let r = client
                    .call(
                        "publish",
                        json!({"channel": channel, "data": {"w": w, "i": i}}),
                    )
                    .await;
                latency.record_one(w, now_us().saturating_sub(sent));
                // Marker and receipt pushes are not what is measured.
                client.take_pushes();
                if !matches!(&r, Ok(v) if v.get("publish").is_some()) {
                    errors.add(1);
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| BenchError::Internal(format!("publish task: {e}")))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = (args.publishes * args.concurrency) as f64;
    m.set(&format!("{kind}_publishes"), total);
    m.set(&format!("{kind}_per_sec"), total / secs.max(1e-6));
    m.latency(kind, latency.merged());
    m.check(&format!("{kind}_errors"), errors.get());
    Ok(())
}

async fn list(
    args: &ConversationsArgs,
    herald: &Herald,
    api: &mut super::target::Api,
    m: &mut Measured,
) -> Result<(), BenchError> {
    let user = "heavy";
    for i in 0..args.conversations {
        let channel = format!("group:c{i}");
        api.method("add_members", &json!({"channel": channel, "users": [user]}))
            .await
            .map_err(|e| server("add_members", e))?;
        if i < args.with_messages {
            api.publish(&channel, &json!({"i": i}))
                .await
                .map_err(|e| server("publish", e))?;
        }
    }
    let (mut client, _) = Client::connect(herald.addr, &herald.token(user))
        .await
        .map_err(|e| server("connect", e))?;
    let list_latency = Latencies::default();
    let unread_latency = Latencies::default();
    let mut wrong: u64 = 0;
    let expected_unread = args.with_messages.min(args.conversations) as u64;
    for _ in 0..args.queries {
        let sent = now_us();
        let r = rpc(&mut client, "herald.conversations", json!({"limit": 50})).await?;
        list_latency.record_one(0, now_us().saturating_sub(sent));
        let page = r["conversations"].as_array().map_or(0, Vec::len);
        if page != args.conversations.min(50) {
            wrong += 1;
        }
        let sent = now_us();
        let u = rpc(&mut client, "herald.unread", json!({})).await?;
        unread_latency.record_one(0, now_us().saturating_sub(sent));
        if u["total"].as_u64() != Some(expected_unread) {
            wrong += 1;
        }
    }
    m.latency("list", list_latency.merged());
    m.latency("unread", unread_latency.merged());
    m.check("list_wrong_answers", wrong);
    Ok(())
}

async fn rpc(client: &mut Client, method: &str, data: Value) -> Result<Value, BenchError> {
    let r = client
        .call("rpc", json!({"method": method, "data": data}))
        .await
        .map_err(|e| server(method, e))?;
    if r.get("error").is_some() {
        return Err(server(method, &r));
    }
    Ok(r["rpc"]["data"].clone())
}
