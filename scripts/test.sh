#!/usr/bin/env bash
# THE test command: installs the test tools into .tools/ (scripts/install-tools.sh),
# then checks formatting, lints, and runs every test against a real
# nats-server, Centrifugo (the conformance reference) and the Python and
# JavaScript SDKs installed there.
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
echo "test: cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
if [ -z "${HERALD_SCYLLA_NODES:-}" ]; then
  echo "note: ScyllaDB contract suite skipped (HERALD_SCYLLA_NODES not set)"
else
  echo "test: ScyllaDB contract suite against $HERALD_SCYLLA_NODES"
fi
echo "test: cargo test --all-targets --no-fail-fast"
cargo test --all-targets --no-fail-fast
