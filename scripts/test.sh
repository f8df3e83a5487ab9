#!/usr/bin/env bash
# THE test command: installs the test tools into .tools/ (scripts/install-tools.sh),
# then checks formatting, lints, and runs every test against a real
# nats-server, Centrifugo (the conformance reference) and the JavaScript, Python,
# Go and Java SDKs installed there, and the ScyllaDB backend against a Cassandra
# node it starts (scripts/cassandra.sh).
# Exits non-zero on the first failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

die() {
  echo "test: $*" >&2
  exit 1
}

command -v cargo >/dev/null 2>&1 || die "cargo is missing; install Rust (https://rustup.rs)"
cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing; run: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing; run: rustup component add clippy"

scripts/install-tools.sh

export HERALD_TEST_NATS_SERVER="$root/.tools/py/bin/nats-server"
export HERALD_TEST_CENTRIFUGO="$root/.tools/centrifugo/centrifugo"
export PYTHONPATH="$root/.tools/py${PYTHONPATH:+:$PYTHONPATH}"
export NODE_PATH="$root/.tools/node/node_modules${NODE_PATH:+:$NODE_PATH}"

echo "test: cargo fmt --all -- --check"
cargo fmt --all -- --check
echo "test: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# A real CQL database for the ScyllaDB backend: one Apache Cassandra node on
# loopback (scripts/cassandra.sh), unless HERALD_SCYLLA_NODES already names a
# cluster. If it cannot start, the suite still runs and says why it skips.
if [ -z "${HERALD_SCYLLA_NODES:-}" ]; then
  cassandra_log="$(mktemp)"
  if nodes="$(scripts/cassandra.sh start 2>"$cassandra_log")"; then
    trap 'scripts/cassandra.sh stop' EXIT
    export "${nodes?}"
    cat "$cassandra_log" >&2
  else
    echo "note: ScyllaDB contract suite SKIPPED: Cassandra did not start: $(tail -n 1 "$cassandra_log")" >&2
    tail -n 20 "$cassandra_log" >&2
  fi
  rm -f "$cassandra_log"
fi
if [ -n "${HERALD_SCYLLA_NODES:-}" ]; then
  echo "test: ScyllaDB contract suite against $HERALD_SCYLLA_NODES"
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "note: the browser tests (tests/browser.rs) are SKIPPED: /usr/bin/chromium is missing (scripts/install-tools.sh installs it as root: apt-get install chromium)"
fi
echo "test: cargo test --workspace --all-targets --no-fail-fast"
cargo test --workspace --all-targets --no-fail-fast
