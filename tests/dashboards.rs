//! The Grafana dashboards (`grafana/dashboards/*.json`) and the alerting rules
//! (`deploy/prometheus/alerts.yml`) against the real thing: a real
//! nats-server and a real `herald serve` under light load, scraped every
//! second by a real Prometheus (Debian's, in `.tools/prometheus`, from
//! `scripts/install-tools.sh`). Every query of every panel is evaluated
//! through Prometheus's HTTP API and must return data, so a renamed metric
//! or label fails here. The files' own rules (descriptions, units, the
//! `role`/`instance` variables, `promtool check`) are checked too.
//!
//! Knows nothing of how Herald records its metrics: only the names the
//! dashboards and rules mention and what `/metrics` serves.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::follower::{Conn, token};
use common::process::{Api, HeraldProcess, Spec, free_port};
use common::root;
use common::{TestNats, eventually};
use serde_json::{Value, json};

/// What `$__rate_interval` and `$__interval` stand for in the test (the
/// Prometheus here scrapes every second).
const RATE_INTERVAL: &str = "15s";
const INTERVAL: &str = "1s";
/// Scrapes to wait for before evaluating the panels (more than a rate window).
const SCRAPES: u64 = 16;
/// How long a query may keep returning nothing before the test fails (gauges
/// polled every few seconds, histograms needing an observation in the window).
const SETTLE: Duration = Duration::from_secs(20);
/// The filter every metric selector of every panel starts with.
const FILTER: &str = r#"{role=~"$role", instance=~"$instance""#;

/// A binary of Debian's prometheus package, unpacked by
/// `scripts/install-tools.sh`.
fn prometheus_tool(name: &str) -> PathBuf {
    common::tool(&format!("prometheus/usr/bin/{name}"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ------------------------------------------------------------- the files

/// One dashboard: its file name and JSON model.
struct Dashboard {
    file: String,
    model: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = root().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let model = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            let file = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into();
            Dashboard { file, model }
        })
        .collect()
}

/// Every panel of a dashboard that shows data (rows left out, the panels of
/// collapsed rows included).
fn panels(model: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                walk(&panel["panels"], out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&model["panels"], &mut out);
    out
}

/// One query of one panel.
struct PanelQuery {
    dashboard: String,
    panel: String,
    expr: String,
}

fn panel_queries() -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for d in dashboards() {
        for panel in panels(&d.model) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    dashboard: d.file.clone(),
                    panel: panel["title"].as_str().unwrap_or("?").to_string(),
                    expr: target["expr"].as_str().unwrap_or("").to_string(),
                });
            }
        }
    }
    out
}

/// `expr` as Grafana would send it with every role and instance selected.
fn substitute(expr: &str) -> String {
    let mut s = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", RATE_INTERVAL),
        ("${__rate_interval}", RATE_INTERVAL),
        ("$__interval", INTERVAL),
        ("${__interval}", INTERVAL),
        ("${role}", ".*"),
        ("$role", ".*"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
    ] {
        s = s.replace(var, value);
    }
    assert!(!s.contains('$'), "unknown variable left in {expr}");
    s
}

/// The metric names an expression mentions: identifiers outside strings
/// with Herald's or the process prefix.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c == '"' {
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                if c == '"' && !escaped {
                    break;
                }
                escaped = c == '\\' && !escaped;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = start + c.len_utf8();
            while let Some(&(i, c)) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    end = i + c.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[start..end];
            if word.starts_with("herald_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
        }
    }
    names
}

#[test]
fn every_panel_has_a_description_a_unit_and_role_and_instance_filters() {
    let dashboards = dashboards();
    let names: BTreeSet<&str> = dashboards.iter().map(|d| d.file.as_str()).collect();
    for required in [
        "herald-overview.json",
        "herald-edge.json",
        "herald-writer.json",
        "herald-sync.json",
    ] {
        assert!(
            names.contains(required),
            "grafana/dashboards lacks {required}"
        );
    }
    let mut uids = BTreeSet::new();
    for d in &dashboards {
        let m = &d.model;
        let file = &d.file;
        assert!(
            uids.insert(m["uid"].as_str().expect("uid").to_string()),
            "{file}: uid used twice"
        );
        assert!(
            m["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        assert!(
            m["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
            "{file}: schemaVersion below 39"
        );
        assert!(
            m["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("herald"))),
            "{file}: not tagged herald (the dashboard links use the tag)"
        );

        let vars = m["templating"]["list"].as_array().expect("templating");
        let var = |name: &str| {
            vars.iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{file}: no variable {name}"))
        };
        assert_eq!(var("datasource")["type"], "datasource", "{file}");
        assert_eq!(var("datasource")["query"], "prometheus", "{file}");
        for (name, definition) in [
            ("role", "label_values(herald_build_info, role)"),
            (
                "instance",
                r#"label_values(herald_build_info{role=~"$role"}, instance)"#,
            ),
        ] {
            let v = var(name);
            assert_eq!(v["type"], "query", "{file} ${name}");
            assert_eq!(v["definition"], definition, "{file} ${name}");
            assert_eq!(v["query"]["query"], definition, "{file} ${name}");
            assert_eq!(v["multi"], true, "{file} ${name}");
            assert_eq!(v["includeAll"], true, "{file} ${name}");
            assert_eq!(v["allValue"], ".*", "{file} ${name}");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{file} ${name}");
        }

        let mut ids = BTreeSet::new();
        let panels = panels(m);
        assert!(!panels.is_empty(), "{file}: no panels");
        for p in panels {
            let title = p["title"].as_str().unwrap_or("");
            let at = format!("{file} / {title:?}");
            assert!(!title.is_empty(), "{file}: a panel has no title");
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{at}: id reused"
            );
            assert!(
                p["description"].as_str().is_some_and(|s| s.len() > 20),
                "{at}: no description"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{at}: no unit"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{at}");
            let grid = &p["gridPos"];
            assert!(
                grid["x"].as_u64().unwrap_or(99) + grid["w"].as_u64().unwrap_or(99) <= 24,
                "{at}: wider than the grid"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{at}: no query");
            for target in targets {
                let expr = target["expr"].as_str().expect("expr");
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{at}");
                assert!(!expr.contains("vector("), "{at}: {expr} pads with vector()");
                assert!(!expr.contains("absent("), "{at}: {expr} uses absent()");
                let names = metric_names(expr);
                assert!(!names.is_empty(), "{at}: {expr} reads no Herald metric");
                for name in names {
                    for (i, _) in expr.match_indices(name.as_str()) {
                        let after = &expr[i + name.len()..];
                        // The same name as a prefix of a longer one is
                        // checked with that one.
                        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                            continue;
                        }
                        assert!(
                            after.starts_with(FILTER),
                            "{at}: {name} in {expr} is not filtered by {FILTER}…}}"
                        );
                    }
                }
                if expr.contains("rate(") || expr.contains("increase(") {
                    assert!(
                        expr.contains("[$__rate_interval]"),
                        "{at}: {expr}: rates use $__rate_interval"
                    );
                }
            }
        }
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let out = run(Command::new(prometheus_tool("promtool"))
        .current_dir(root())
        .args(["check", "rules", "deploy/prometheus/alerts.yml"]));
    let said = String::from_utf8_lossy(&out.stdout);
    let alerts = read("deploy/prometheus/alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(alerts >= 10, "only {alerts} alerts");
    assert!(
        said.contains(&format!("SUCCESS: {alerts} rules found")),
        "{said}"
    );
}

#[test]
fn the_compose_prometheus_config_passes_promtool_with_its_rules() {
    let text = read("deploy/prometheus/prometheus.yml");
    assert!(
        !text.contains("role:"),
        "deploy/prometheus/prometheus.yml sets a role label; Herald sets it itself"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["prometheus.yml", "alerts.yml"] {
        std::fs::copy(
            root().join("deploy/prometheus").join(file),
            dir.path().join(file),
        )
        .expect("copy the Prometheus files");
    }
    let out = run(Command::new(prometheus_tool("promtool"))
        .arg("check")
        .arg("config")
        .arg(dir.path().join("prometheus.yml")));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("SUCCESS: 1 rule files found"), "{said}");
    // docker-compose.yml mounts the rules beside the config.
    assert!(
        read("docker-compose.yml")
            .contains("./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"),
        "docker-compose.yml does not mount alerts.yml into the prometheus service"
    );
}

// ------------------------------------------------------------- Prometheus

/// A Prometheus scraping one target every second, with Herald's alerting
/// rules loaded; killed (and its temp dir removed) on drop.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    log: tempfile::NamedTempFile,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = root().join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.reopen().expect("log file handle")))
            .spawn()
            .expect("spawn prometheus");
        let prometheus = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            log,
            _dir: dir,
        };
        eventually("prometheus is ready", Duration::from_secs(20), || {
            let p = &prometheus;
            async move {
                let r = p
                    .http
                    .get(format!("{}/-/ready", p.base))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        prometheus
    }

    /// `GET /api/v1/<path>`: the JSON body (errors answer JSON too).
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /api/v1/{path}: {e}"));
        r.json()
            .await
            .unwrap_or_else(|e| panic!("GET /api/v1/{path}: not JSON: {e}"))
    }

    /// An instant query: the whole answer.
    async fn query(&self, expr: &str) -> Value {
        self.api("query", &[("query", expr)]).await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- prometheus stderr -----\n{}----- end of prometheus -----",
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
        }
    }
}

/// Why an answer shows no data, or `None` when it does: status success, an
/// instant vector, and at least one sample that is a number (not NaN).
fn no_data(answer: &Value) -> Option<String> {
    if answer["status"] != "success" {
        return Some(format!("status {}: {}", answer["status"], answer["error"]));
    }
    if answer["data"]["resultType"] != "vector" {
        return Some(format!("not an instant vector: {}", answer["data"]));
    }
    let result = answer["data"]["result"].as_array()?;
    if result.is_empty() {
        return Some("empty result".into());
    }
    let numbers = result
        .iter()
        .filter_map(|s| s["value"][1].as_str())
        .any(|v| v.parse::<f64>().is_ok_and(|v| !v.is_nan()));
    (!numbers).then(|| format!("only NaN: {result:?}"))
}

// ------------------------------------------------------------- the load

/// Light traffic through every path the panels show, in a task that stops
/// when this is dropped.
struct Load {
    task: tokio::task::JoinHandle<()>,
    rounds: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const CHANNEL: &str = "room";

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let rounds = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let (r, f) = (rounds.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let api = Api::new(addr);
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client");
            let mut clients = None;
            let mut n = 0u64;
            loop {
                n += 1;
                if clients.is_none() {
                    clients = open_clients(addr).await.ok();
                }
                let ok = match clients.as_mut() {
                    Some((reader, publisher)) => {
                        round(addr, &api, &http, reader, publisher, n).await
                    }
                    None => Err("cannot open the load's clients".into()),
                };
                match ok {
                    Ok(()) => r.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        clients = None;
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            task,
            rounds,
            failures,
        }
    }
}

/// A subscriber of the load's channel and a client that publishes into it.
async fn open_clients(addr: SocketAddr) -> Result<(Conn, Conn), String> {
    let mut reader = Conn::open(addr, &token("reader")).await?;
    let reply = reader
        .call("subscribe", json!({ "channel": CHANNEL }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    if reply.get("subscribe").is_none() {
        return Err(format!("subscribe refused: {reply}"));
    }
    let publisher = Conn::open(addr, &token("publisher")).await?;
    Ok((reader, publisher))
}

/// One round of the load: client and API publishes, reading them, history
/// over WebSocket (sync over NATS) and HTTP, a short connection, a control
/// message and a few requests that fail on purpose (their error counters
/// are panels too).
async fn round(
    addr: SocketAddr,
    api: &Api,
    http: &reqwest::Client,
    reader: &mut Conn,
    publisher: &mut Conn,
    n: u64,
) -> Result<(), String> {
    let e = |e| format!("{e:?}");
    let reply = publisher
        .call(
            "publish",
            json!({ "channel": CHANNEL, "data": { "n": n, "from": "client" } }),
        )
        .await
        .map_err(e)?;
    if reply.get("publish").is_none() {
        return Err(format!("client publish failed: {reply}"));
    }
    let answer = api
        .call(
            "publish",
            &json!({ "channel": CHANNEL, "data": { "n": n, "from": "api" } }),
        )
        .await?;
    if answer.get("result").is_none() {
        return Err(format!("api publish failed: {answer}"));
    }
    while reader
        .push(Duration::from_millis(20))
        .await
        .map_err(e)?
        .is_some()
    {}

    publisher
        .call("history", json!({ "channel": CHANNEL, "limit": 5 }))
        .await
        .map_err(e)?;
    // Fails on purpose: an undefined namespace (a command error).
    publisher
        .call("subscribe", json!({ "channel": "nope:room" }))
        .await
        .map_err(e)?;
    // Fails on purpose: an API error.
    api.call(
        "publish",
        &json!({ "channel": "nope:room", "data": { "n": n } }),
    )
    .await?;
    // A control message for a user without connections here.
    api.call("disconnect", &json!({ "user": "nobody" })).await?;

    let bearer = format!("Bearer {}", token("reader"));
    for channel in [CHANNEL, "nope%3Aroom"] {
        http.get(format!(
            "http://{addr}/api/v1/channels/{channel}/publications?after=0&limit=10"
        ))
        .header("Authorization", &bearer)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    }

    // A client that connects and goes away.
    Conn::open(addr, &token("passer-by")).await?.close().await;
    Ok(())
}

// ------------------------------------------------------------- the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_and_alert_rule_returns_data_from_a_real_prometheus() {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let herald = HeraldProcess::start(Spec::serve("herald", nats.url(), data.path())).await;
    let load = Load::start(herald.addr());
    let prometheus = Prometheus::start(herald.addr()).await;

    let wanted = SCRAPES.to_string();
    eventually(
        "Prometheus has scraped herald enough times",
        Duration::from_secs(40),
        || {
            let (p, wanted) = (&prometheus, &wanted);
            async move {
                let answer = p
                    .query(&format!(
                        r#"count_over_time(up{{job="herald"}}[1m]) >= {wanted} and up{{job="herald"}} == 1"#
                    ))
                    .await;
                no_data(&answer).is_none().then_some(())
            }
        },
    )
    .await;
    let rounds = load.rounds.load(Ordering::Relaxed);
    let failures = load.failures.load(Ordering::Relaxed);
    assert!(
        rounds >= 10 && failures <= rounds / 10,
        "the load did not run: {rounds} rounds, {failures} failed"
    );

    // Every panel query, substituted as Grafana would with everything
    // selected. A query that shows nothing yet is asked again until SETTLE.
    let queries = panel_queries();
    assert!(queries.len() >= 40, "only {} panel queries", queries.len());
    let mut failing: Vec<(&PanelQuery, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut pending: Vec<&PanelQuery> = queries.iter().collect();
    loop {
        failing.clear();
        for q in &pending {
            if let Some(why) = no_data(&prometheus.query(&substitute(&q.expr)).await) {
                failing.push((q, why));
            }
        }
        if failing.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        pending = failing.iter().map(|(q, _)| *q).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut report = String::new();
    for (q, why) in &failing {
        let _ = writeln!(
            report,
            "{} / {:?}: {}\n    {why}",
            q.dashboard, q.panel, q.expr
        );
    }
    assert!(
        failing.is_empty(),
        "{} of {} panel queries show no data:\n{report}",
        failing.len(),
        queries.len()
    );

    // The variables: label_values(<selector>, <label>) finds values.
    for d in dashboards() {
        for var in d.model["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(definition) = var["definition"].as_str() else {
                continue;
            };
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{}: {definition} is not label_values", d.file));
            let (selector, label) = inner
                .rsplit_once(',')
                .expect("label_values(selector, label)");
            let answer = prometheus.query(&substitute(selector.trim())).await;
            let series = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                series.iter().any(|s| s["metric"][label.trim()].is_string()),
                "{} variable {}: {definition} finds no values: {answer}",
                d.file,
                var["name"]
            );
        }
    }

    // The alerting rules: loaded by the running Prometheus, evaluated without
    // error, each with a duration, a severity, a summary and a description;
    // every expression is accepted by the query API.
    let alerts_in_file = read("deploy/prometheus/alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let rules = eventually(
        "every alerting rule has been evaluated",
        Duration::from_secs(20),
        || {
            let p = &prometheus;
            async move {
                let answer = p.api("rules", &[("type", "alert")]).await;
                let rules: Vec<Value> = answer["data"]["groups"]
                    .as_array()?
                    .iter()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                (rules.len() == alerts_in_file && rules.iter().all(|r| r["health"] == "ok"))
                    .then_some(rules)
            }
        },
    )
    .await;
    let mut alert_names = BTreeSet::new();
    for rule in &rules {
        let name = rule["name"].as_str().expect("alert name");
        assert!(alert_names.insert(name.to_string()), "alert {name} twice");
        assert!(
            rule["duration"].as_f64().is_some_and(|d| d > 0.0),
            "{name}: no `for:`"
        );
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity {}",
            rule["labels"]["severity"]
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|s| s.len() > 10),
                "{name}: no {annotation}"
            );
        }
        let expr = rule["query"].as_str().expect("rule query");
        let answer = prometheus.query(expr).await;
        assert_eq!(answer["status"], "success", "{name}: {expr}: {answer}");
    }

    // Every metric the dashboards and rules mention is one herald serves.
    let scrape = herald.metrics().await;
    let served: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mentioned: BTreeSet<String> = queries
        .iter()
        .map(|q| q.expr.as_str())
        .chain(rules.iter().filter_map(|r| r["query"].as_str()))
        .flat_map(metric_names)
        .collect();
    let missing: Vec<&String> = mentioned
        .iter()
        .filter(|m| !served.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "mentioned in dashboards or alerts but not in herald's /metrics: {missing:?}"
    );
    drop(load);
}
