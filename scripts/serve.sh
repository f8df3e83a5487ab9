#!/usr/bin/env bash
# THE run command: `herald serve` (edge + writer + sync in one process) built
# in release mode. Installs nats-server into .tools/ first and puts it on
# PATH, so the zero-config start (no NATS at nats_url: start one as a child)
# works on a fresh machine. Arguments go to `herald serve`, e.g.
#   scripts/serve.sh --listen 0.0.0.0:8000 --config herald.example.toml
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

command -v cargo >/dev/null 2>&1 || {
  echo "serve: cargo is missing; install Rust (https://rustup.rs)" >&2
  exit 1
}

"$root/scripts/install-tools.sh" --nats

export PATH="$root/.tools/py/bin:$PATH"
exec cargo run --release --manifest-path "$root/Cargo.toml" --bin herald -- serve "$@"
