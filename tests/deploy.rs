//! The deployment artefacts as their own tools read them: `docker-compose.yml`
//! through the real Docker Compose v2 `config`, `deploy/nginx.conf` through
//! `nginx -t`, `deploy/nats/nats.conf` through `nats-server -t`, and every
//! manifest in `deploy/k8s/` through `kubernetes-validate --strict`; plus the
//! properties the stack relies on (health checks, restarts, drain timing,
//! known HERALD_* names). The tools come from `.tools/`
//! (`scripts/install-tools.sh`). No Docker engine or cluster is needed, so the
//! image build and a running stack are not covered here.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{root, tool};
use herald::config::{OPTIONS, env_name};
use serde_json::Value;

/// The Kubernetes version the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.30.0";

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

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every HERALD_* name Herald knows.
fn known_env_names() -> BTreeSet<String> {
    OPTIONS.iter().map(|o| env_name(o.key)).collect()
}

fn assert_known_env(names: impl IntoIterator<Item = String>, file: &str) {
    let known = known_env_names();
    for name in names.into_iter().filter(|n| n.starts_with("HERALD_")) {
        assert!(known.contains(&name), "{file}: unknown option {name}");
    }
}

/// `docker-compose config` resolved to JSON (it fails on any schema error,
/// unknown key or dangling reference).
fn compose_config() -> Value {
    let out = run(Command::new(tool("compose/docker-compose"))
        .current_dir(root())
        .args(["-f", "docker-compose.yml", "config", "--format", "json"])
        .env_remove("HERALD_TOKEN_HMAC_SECRET")
        .env_remove("HERALD_API_KEY")
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES"));
    serde_json::from_slice(&out.stdout).expect("docker-compose config prints JSON")
}

fn services(config: &Value) -> &serde_json::Map<String, Value> {
    config["services"].as_object().expect("services")
}

/// The role a Herald service runs (its command), if it runs the Herald image.
fn herald_command(service: &Value) -> Option<&str> {
    (service["image"].as_str()? == "herald:latest")
        .then(|| service["command"][0].as_str())
        .flatten()
}

#[test]
fn the_compose_file_validates_and_has_the_production_stack() {
    let config = compose_config();
    let services = services(&config);
    let roles: Vec<&str> = services.values().filter_map(herald_command).collect();
    for (role, count) in [("edge", 2), ("writer", 2), ("sync", 2), ("migrate", 1)] {
        assert_eq!(
            roles.iter().filter(|r| **r == role).count(),
            count,
            "herald {role} services in {roles:?}"
        );
    }
    for name in [
        "nats1",
        "nats2",
        "nats3",
        "scylla",
        "lb",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name} is missing");
    }
}

#[test]
fn every_long_running_service_restarts_and_has_a_health_check() {
    let config = compose_config();
    for (name, service) in services(&config) {
        if herald_command(service) == Some("migrate") {
            assert_eq!(service["restart"], "no", "{name}");
            assert_eq!(
                service["depends_on"]["scylla"]["condition"], "service_healthy",
                "{name}"
            );
            continue;
        }
        assert_eq!(service["restart"], "unless-stopped", "{name}");
        assert!(
            service["healthcheck"]["test"].is_array(),
            "{name} has no health check"
        );
    }
}

#[test]
fn herald_services_use_scylla_and_wait_for_the_migration() {
    let config = compose_config();
    for (name, service) in services(&config) {
        let Some(role) = herald_command(service) else {
            continue;
        };
        let env = service["environment"].as_object().expect("environment");
        assert_eq!(env["HERALD_STORE"], "scylla", "{name}");
        assert_known_env(env.keys().cloned(), &format!("docker-compose.yml {name}"));
        if role != "migrate" {
            assert_eq!(
                service["depends_on"]["migrate"]["condition"], "service_completed_successfully",
                "{name}"
            );
            assert_eq!(
                service["healthcheck"]["test"][1], "curl",
                "{name}: the image installs curl for its health check"
            );
        }
    }
}

#[test]
fn the_nats_cluster_config_is_valid() {
    let nats = std::env::var_os("HERALD_TEST_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| tool("py/bin/nats-server"));
    let out = run(Command::new(nats)
        .current_dir(root())
        .args(["-t", "-c", "deploy/nats/nats.conf"])
        .env("NATS_SERVER_NAME", "nats1"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("is valid"), "{said}");
}

#[test]
fn the_load_balancer_config_passes_nginx_t() {
    let dir = tempfile::tempdir().expect("temp dir");
    let temp = path(dir.path());
    let text = read("deploy/nginx.conf");
    // The upstream hosts exist only inside compose's network: a test copy
    // points them at loopback and keeps nginx's files in the temp dir.
    let mut copy = text.clone();
    for (host, local) in [
        ("edge1:8000", "127.0.0.1:8001"),
        ("edge2:8000", "127.0.0.1:8002"),
        ("sync1:8000", "127.0.0.1:8003"),
        ("sync2:8000", "127.0.0.1:8004"),
    ] {
        assert!(
            copy.contains(host),
            "deploy/nginx.conf has no upstream {host}"
        );
        copy = copy.replace(host, local);
    }
    let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("    {kind}_temp_path {temp}/{kind};\n"))
        .collect();
    copy = copy.replacen("http {\n", &format!("http {{\n{temp_paths}"), 1);
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, copy).expect("write nginx.conf copy");
    run(Command::new(tool("nginx/usr/sbin/nginx"))
        .args(["-t", "-q", "-e", "stderr", "-p", temp, "-c", path(&conf)])
        .args(["-g", &format!("pid {temp}/nginx.pid;")]));

    for needle in [
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "location = /connection/websocket",
        "location /api/",
        "location /api/v1/channels/",
        "location = /health",
    ] {
        assert!(text.contains(needle), "deploy/nginx.conf lacks {needle:?}");
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn manifests() -> Vec<PathBuf> {
    let dir = root().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/k8s");
    files
}

#[test]
fn every_kubernetes_manifest_validates_strictly() {
    let py = tool("py");
    let mut cmd = Command::new(py.join("bin/kubernetes-validate"));
    cmd.env("PYTHONPATH", &py)
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
        .args(manifests());
    let out = run(&mut cmd);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("ERROR"), "{said}");
    assert!(
        said.contains("passed for resource deployment/herald-edge"),
        "{said}"
    );
}

/// Every document of every manifest, parsed by PyYAML (installed with
/// kubernetes-validate) and handed over as JSON.
fn k8s_documents() -> Vec<Value> {
    let py = tool("py");
    let mut docs = Vec::new();
    for file in manifests() {
        let out = run(Command::new("python3")
            .env("PYTHONPATH", &py)
            .args([
                "-c",
                "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
            ])
            .arg(&file));
        let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
        docs.extend(parsed);
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/k8s has no {kind} {name}"))
}

fn seconds(duration: &str) -> u64 {
    humantime::parse_duration(duration)
        .unwrap_or_else(|e| panic!("{duration}: {e}"))
        .as_secs()
}

#[test]
fn kubernetes_deployments_probe_health_and_drain_within_the_grace_period() {
    let docs = k8s_documents();
    let config = find(&docs, "ConfigMap", "herald-config");
    let data = config["data"].as_object().expect("data");
    assert_known_env(data.keys().cloned(), "configmap.yaml");
    let secret = find(&docs, "Secret", "herald-secrets");
    assert_known_env(
        secret["stringData"]
            .as_object()
            .expect("stringData")
            .keys()
            .cloned(),
        "secret.yaml",
    );

    for role in ["edge", "writer", "sync"] {
        let deployment = find(&docs, "Deployment", &format!("herald-{role}"));
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["args"][0], role);
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(container[probe]["httpGet"]["path"], "/health", "{role}");
        }
        assert_eq!(container["ports"][0]["containerPort"], 8000, "{role}");
        for bound in ["requests", "limits"] {
            assert!(
                container["resources"][bound]["cpu"].is_string()
                    && container["resources"][bound]["memory"].is_string(),
                "{role}: resources.{bound}"
            );
        }
    }

    let edge = &find(&docs, "Deployment", "herald-edge")["spec"]["template"]["spec"];
    let grace = edge["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("edge terminationGracePeriodSeconds");
    let pre_stop = &edge["containers"][0]["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop[0], "sleep");
    let pre_stop: u64 = pre_stop[1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("preStop sleep seconds");
    let drain = seconds(data["HERALD_SHUTDOWN_DRAIN"].as_str().expect("drain"));
    assert!(
        grace > pre_stop + drain,
        "edge grace period {grace}s does not cover preStop {pre_stop}s + shutdown_drain {drain}s"
    );

    find(&docs, "HorizontalPodAutoscaler", "herald-edge");
    find(&docs, "PodDisruptionBudget", "herald-edge");
    let migrate = find(&docs, "Job", "herald-migrate");
    assert_eq!(
        migrate["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "migrate"
    );
}

/// One instruction of `deploy/Dockerfile` as Docker's own parser (PyPI
/// `dockerfile`) reads it.
#[derive(Debug, serde::Deserialize)]
struct Instruction {
    cmd: String,
    flags: Vec<String>,
    value: Vec<String>,
    json: bool,
}

fn dockerfile() -> Vec<Instruction> {
    let out = run(Command::new("python3")
        .env("PYTHONPATH", tool("py"))
        .args([
            "-c",
            "import json, sys, dockerfile; json.dump([{'cmd': c.cmd, 'flags': c.flags, 'value': c.value, 'json': c.json} for c in dockerfile.parse_file(sys.argv[1])], sys.stdout)",
        ])
        .arg(root().join("deploy/Dockerfile")));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn the_image_builds_locked_and_runs_herald_unprivileged_on_port_8000() {
    let instructions = dockerfile();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.cmd == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(stages.len(), 2, "a build and a runtime stage");
    let (build, runtime) = instructions.split_at(stages[1]);

    // The build stage: an official Rust image at least as new as rust-version.
    let image = &build[0].value[0];
    let version = image
        .strip_prefix("rust:")
        .and_then(|tag| tag.split('-').next())
        .unwrap_or_else(|| panic!("build stage image {image} is not rust:<version>-…"));
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let required = manifest["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let minor = |v: &str| -> u32 {
        v.split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("version {v}"))
    };
    assert!(
        minor(version) >= minor(required),
        "{image} is older than rust-version {required}"
    );
    assert!(
        build
            .iter()
            .any(|i| i.cmd == "RUN" && i.value[0].contains("cargo build --release --locked")),
        "the build is not --release --locked"
    );
    // What the build copies exists and is not left out of the context.
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for dir in ["target", ".tools", "data"] {
        assert!(ignored.contains(dir), ".dockerignore lacks {dir}");
    }
    for copy in build.iter().filter(|i| i.cmd == "COPY") {
        let (destination, sources) = copy.value.split_last().expect("COPY arguments");
        assert!(!destination.is_empty());
        for source in sources {
            assert!(
                root().join(source).exists(),
                "COPY {source}: not in the repository"
            );
            assert!(
                !ignored.contains(source),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }

    // The runtime stage.
    assert_eq!(runtime[0].value[0], "debian:bookworm-slim");
    let last = |cmd: &str| {
        runtime
            .iter()
            .rev()
            .find(|i| i.cmd == cmd)
            .unwrap_or_else(|| panic!("the runtime stage has no {cmd}"))
    };
    assert!(
        last("COPY").flags.iter().any(|f| f == "--from=build"),
        "the binary comes from the build stage"
    );
    let run_steps = &last("RUN").value[0];
    assert!(
        run_steps.contains("ca-certificates") && run_steps.contains(" curl"),
        "{run_steps}"
    );
    let user = &last("USER").value[0];
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as {user}"
    );
    assert_eq!(last("EXPOSE").value, ["8000"]);
    let entrypoint = last("ENTRYPOINT");
    assert!(
        entrypoint.json && entrypoint.value == ["herald"],
        "{entrypoint:?}"
    );
    let cmd = last("CMD");
    assert!(cmd.json && cmd.value == ["serve"], "{cmd:?}");
    let env = &last("ENV").value;
    let listen = env
        .iter()
        .position(|v| v == "HERALD_LISTEN")
        .expect("ENV HERALD_LISTEN");
    assert_eq!(env[listen + 1], "0.0.0.0:8000");
    assert_known_env(env.iter().step_by(2).cloned(), "deploy/Dockerfile");
}
