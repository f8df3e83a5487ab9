//! The configuration as an operator meets it: the example file stays in step
//! with the option table, and the `herald` binary refuses bad values (exit 64,
//! naming the option, before starting anything) and mints usable tokens.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use herald::auth::Verifier;
use herald::config::{Config, OPTIONS, Sources, env_name};

/// The sysexits-style code for bad configuration.
const EXIT_CONFIG: i32 = 64;

fn example() -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("herald.example.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

#[test]
fn the_example_file_loads_and_holds_the_defaults() {
    let (path, text) = example();
    let mut config = Config::load(&Sources {
        file: Some((path, text)),
        ..Sources::default()
    })
    .unwrap_or_else(|e| panic!("herald.example.toml does not load:\n{e}"));
    let chat = config
        .channels
        .namespaces
        .remove("chat")
        .expect("the example defines [namespaces.chat]");
    assert!(chat.history);
    assert_eq!(
        chat.history_retention,
        Some(Duration::from_secs(30 * 86_400))
    );
    let dm = &config.channels.namespaces[herald::config::BUILTIN_DM_NAMESPACE];
    assert!(
        dm.client_publish,
        "the built-in dm namespace lets clients publish"
    );
    assert!(!config.channels.default.client_publish);
    assert!(dm.presence && dm.join_leave && dm.force_push_join_leave);
    assert_eq!(dm.history, config.channels.default.history);
    let status = &config.channels.namespaces[herald::config::BUILTIN_STATUS_NAMESPACE];
    assert!(!status.history && !status.client_publish);
    assert!(
        config.channels.namespaces.len() == 2,
        "{:?}",
        config.channels.namespaces
    );
    // Everything else is exactly the defaults.
    assert_eq!(format!("{config:?}"), format!("{:?}", Config::defaults()));
}

#[test]
fn the_example_file_lists_every_option_with_its_doc() {
    let (_, text) = example();
    let table: toml::Table = text.parse().expect("TOML");
    let in_file: BTreeSet<&str> = table
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "namespaces" && *k != "rate_limits")
        .collect();
    let options: BTreeSet<&str> = OPTIONS.iter().map(|o| o.key).collect();
    assert_eq!(
        in_file, options,
        "options missing from or unknown to herald.example.toml"
    );
    for option in OPTIONS {
        assert!(
            text.contains(&format!("# {}\n", option.doc)),
            "herald.example.toml lacks the doc of `{}` as a comment line: {:?}",
            option.key,
            option.doc
        );
        assert!(
            text.contains(&format!("# Environment: {}\n", env_name(option.key))),
            "herald.example.toml lacks the environment name of `{}`",
            option.key
        );
    }
}

/// Runs the built `herald` with `args` and, of the HERALD_* environment,
/// only `env` (a developer's own HERALD_* variables must not leak in).
fn herald(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run herald")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_value_exits_64_naming_it_before_starting_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().expect("utf-8 path");
    let out = herald(
        &["serve"],
        &[
            ("HERALD_LISTEN", "nowhere"),
            ("HERALD_CLIENT_PING_INTERVAL", "soon"),
            ("HERALD_DATA_DIR", data),
            // Were it to go on, it would fail another way: no NATS, no autostart.
            ("HERALD_NATS_URL", "nats://127.0.0.1:1"),
            ("HERALD_NATS_AUTOSTART", "false"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("HERALD_LISTEN"), "{err}");
    assert!(
        err.contains("HERALD_CLIENT_PING_INTERVAL"),
        "every bad value is reported: {err}"
    );
    // It stopped at the configuration: no listener announced, no data dir made.
    assert!(!err.contains("ws://"), "{err}");
    assert!(
        !data_dir.exists(),
        "serve created {} before failing",
        data_dir.display()
    );
}

/// Logs written to a pipe or a file carry no ANSI colour codes (issue 14):
/// `NO_COLOR` is unset here on purpose, so only the terminal check decides.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("serve");
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") || name == "NO_COLOR" {
            cmd.env_remove(name);
        }
    }
    // It logs at startup, then fails: no NATS answers and none is started.
    cmd.envs([
        ("HERALD_DATA_DIR", data.to_str().expect("utf-8 path")),
        ("HERALD_NATS_URL", "nats://127.0.0.1:1"),
        ("HERALD_NATS_AUTOSTART", "false"),
        ("HERALD_LISTEN", "127.0.0.1:0"),
    ]);
    let out = cmd.output().expect("run herald");
    let err = stderr(&out);
    assert!(err.contains("INFO"), "it logged something: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in piped logs: {err:?}"
    );
}

#[test]
fn a_short_hmac_secret_exits_64() {
    let out = herald(&["serve"], &[("HERALD_TOKEN_HMAC_SECRET", "a")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("at least 32 bytes"), "{err}");
}

#[test]
fn an_unknown_set_flag_exits_64() {
    let out = herald(&["serve", "--set", "no_such_option=1"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("no_such_option"), "{err}");
}

#[test]
fn token_mints_jwts_the_verifier_accepts() {
    let secret = "a-test-secret-0123456789abcdef-0123";
    let out = herald(
        &["token", "--user", "alice"],
        &[("HERALD_TOKEN_HMAC_SECRET", secret)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let claims = Verifier::new(secret)
        .connect(token.trim())
        .expect("a valid connection token");
    assert_eq!(claims.sub, "alice");
    assert!(
        Verifier::new("another-secret")
            .connect(token.trim())
            .is_err()
    );

    let out = herald(
        &[
            "token",
            "--user",
            "bob",
            "--channel",
            "$room",
            "--ttl",
            "5m",
        ],
        &[("HERALD_TOKEN_HMAC_SECRET", secret)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let claims = Verifier::new(secret)
        .subscription(token.trim(), "bob", "$room")
        .expect("a valid subscription token");
    assert!(claims.exp.expect("minted with exp") <= herald::auth::now_secs() + 300);
}

#[test]
fn token_reads_the_secret_serve_generated() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("token_hmac_secret"),
        "generated-secret-0123456789abcdef-0123\n",
    )
    .expect("write secret");
    let out = herald(
        &["token", "--user", "carol", "--data-dir", path(dir.path())],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        Verifier::new("generated-secret-0123456789abcdef-0123")
            .connect(token.trim())
            .expect("valid")
            .sub,
        "carol"
    );
}

#[test]
fn token_without_any_secret_exits_64_with_a_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = herald(
        &["token", "--user", "alice"],
        &[("HERALD_DATA_DIR", path(dir.path()))],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("HERALD_TOKEN_HMAC_SECRET"), "{err}");
    assert!(out.stdout.is_empty());
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn the_readme_documents_every_option() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for spec in herald::config::OPTIONS {
        let row = format!(
            "| `{}` | `{}` |",
            spec.key,
            herald::config::env_name(spec.key)
        );
        assert!(
            readme.contains(&row),
            "README.md lacks the row of {}",
            spec.key
        );
    }
}
