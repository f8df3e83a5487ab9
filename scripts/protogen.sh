#!/usr/bin/env bash
# Regenerates src/protocol/protobuf/generated.rs from proto/client.proto.
#
# The generated Rust is committed, so building Herald needs neither protoc nor
# a code generator; run this after changing proto/client.proto and commit the
# result. It builds scripts/protogen (prost-build + protox, pure Rust).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/src/protocol/protobuf/generated.rs"
cargo run --quiet --manifest-path "$root/scripts/protogen/Cargo.toml" \
    --target-dir "$root/target/protogen" -- "$root/proto" "$out"
rustfmt --edition 2024 "$out"
echo "wrote $out"
