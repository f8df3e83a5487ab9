#!/usr/bin/env bash
# Installs the fuzzing tool into the project-local, gitignored `.tools/`:
#   .tools/cargo-fuzz/bin/cargo-fuzz   cargo-fuzz, pinned, built from crates.io
# Not part of the normal test command: the fuzz targets (fuzz/) need nightly
# compiler flags; on a stable toolchain run them with RUSTC_BOOTSTRAP=1 (see
# docs/fuzzing.md). The committed corpus is replayed on stable by
# tests/fuzz_corpus.rs without this tool.
# Idempotent: skipped when the pinned version is already installed.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/cargo-fuzz"

if [ -x "$dest/bin/cargo-fuzz" ] && "$dest/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "install-fuzz-tools: cargo-fuzz $CARGO_FUZZ_VERSION already installed"
  exit 0
fi
mkdir -p "$dest"
cargo install --locked --root "$dest" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
"$dest/bin/cargo-fuzz" --version
