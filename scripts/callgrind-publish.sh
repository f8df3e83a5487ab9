#!/usr/bin/env bash
# Instructions per durable server-API publish, counted by callgrind: a
# repeatable CPU figure that does not drift with the machine's noise the way
# timings do (issue 18; figures in BENCHMARKS.md, "Instructions per publish").
#
# For each N in $COUNTS (default "2000 4000"): a fresh nats-server (JetStream,
# its own temp dir) and `herald serve` under `valgrind --tool=callgrind`
# against it; N `POST /api/publish` of ~120-byte JSON over 50 history channels
# from 8 concurrent keep-alive HTTP clients (each waits for its reply, i.e.
# the store commit); then SIGTERM and callgrind's total for the whole
# process (every thread, start and stop included). Instructions per publish =
# the slope between the two N (start, stop and warm-up cancel out).
#
#   scripts/callgrind-publish.sh                 # builds the `profiling` profile first
#   HERALD_BIN=path/to/herald scripts/callgrind-publish.sh
#   COUNTS="0 2000 4000" KEEP=1 scripts/callgrind-publish.sh   # keep the callgrind files
#   EXTRA_TOML='writer_failover_timeout = "3600s"' scripts/callgrind-publish.sh  # lines added to herald.toml
#
# Prints one line per run (with the messages and bytes nats-server carried),
# the slopes, and the top inclusive costs of the largest run
# (`callgrind_annotate --inclusive=yes`). Needs valgrind and python3; nats-server from .tools/
# (scripts/install-tools.sh --nats).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COUNTS="${COUNTS:-2000 4000}"
CLIENTS="${CLIENTS:-8}"
CHANNELS="${CHANNELS:-50}"
TOP="${TOP:-40}"
NATS="${NATS_SERVER:-$root/.tools/py/bin/nats-server}"

command -v valgrind >/dev/null || { echo "callgrind-publish: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
[ -x "$NATS" ] || { echo "callgrind-publish: no nats-server at $NATS (scripts/install-tools.sh --nats)" >&2; exit 1; }
if [ -z "${HERALD_BIN:-}" ]; then
  # --workspace: the same feature set (and artifacts) as the bench build
  cargo build --profile profiling --workspace --manifest-path "$root/Cargo.toml" >&2
  HERALD_BIN="$root/target/profiling/herald"
fi
bin="$HERALD_BIN"

work="$(mktemp -d "${TMPDIR:-/tmp}/callgrind-publish.XXXXXX")"
nats_pid=""
herald_pid=""
cleanup() {
  [ -n "$herald_pid" ] && kill "$herald_pid" 2>/dev/null || true
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url, seconds
  local deadline=$((SECONDS + $2))
  until python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
EOF
  do
    [ $SECONDS -lt $deadline ] || { echo "callgrind-publish: $1 not up in $2 s" >&2; return 1; }
    sleep 0.5
  done
}

# The load: N publishes from CLIENTS threads, each on its own keep-alive
# connection, round-robin over CHANNELS channels; every reply must carry an
# offset. Runs outside valgrind, so its own instructions are not counted.
load() { # port, api key, n
  python3 - "$@" "$CLIENTS" "$CHANNELS" <<'EOF'
import http.client, json, sys, threading
port, key, n, clients, channels = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
errors = []
def run(c):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(c, n, clients):
        body = json.dumps({"channel": f"cg-{i % channels}",
                           "data": {"seq": i, "from": f"client-{c}", "text": "x" * 64}})
        conn.request("POST", "/api/publish", body, {"X-API-Key": key, "Content-Type": "application/json"})
        r = conn.getresponse()
        out = json.loads(r.read())
        if r.status != 200 or "offset" not in out.get("result", {}):
            errors.append((r.status, out))
threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit(f"{len(errors)} publishes failed, first: {errors[0]}")
EOF
}

run_once() { # n -> prints total instructions
  local n=$1 dir="$work/run-$1"
  mkdir -p "$dir"
  local nport hport mport
  nport=$(free_port)
  mport=$(free_port)
  "$NATS" -js -a 127.0.0.1 -p "$nport" -m "$mport" -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
  nats_pid=$!
  hport=$(free_port)
  local key=cgkey
  printf '%s\n[rate_limits.tiers.bench]\n' "${EXTRA_TOML:-}" >"$dir/herald.toml"
  (
    for v in $(env | grep -o '^HERALD_[A-Z_]*'); do unset "$v"; done
    export HERALD_LISTEN="127.0.0.1:$hport" HERALD_DATA_DIR="$dir/data" \
      HERALD_NATS_URL="nats://127.0.0.1:$nport" HERALD_NATS_AUTOSTART=false \
      HERALD_API_KEY="$key" HERALD_API_RATE_PER_IP= HERALD_API_RATE_PER_KEY= \
      HERALD_RATE_LIMIT_DEFAULT_TIER=bench HERALD_SHUTDOWN_DRAIN=0s HERALD_LOG=warn NO_COLOR=1
    exec valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
      "$bin" serve --config "$dir/herald.toml"
  ) >"$dir/herald.log" 2>&1 &
  herald_pid=$!
  wait_http "http://127.0.0.1:$hport/health" 300
  [ "$n" -eq 0 ] || load "$hport" "$key" "$n"
  kill -TERM "$herald_pid"
  wait "$herald_pid" || true
  herald_pid=""
  # The messages and bytes (headers and payloads) nats-server carried for
  # the run (into it + out of it, from its /varz): counts that, like the
  # instructions, do not drift.
  python3 - "http://127.0.0.1:$mport/varz" >"$work/nats-msgs-$n" <<'EOF'
import json, sys, urllib.request
v = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
print(v["in_msgs"] + v["out_msgs"], v["in_bytes"] + v["out_bytes"])
EOF
  kill "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
  nats_pid=""
  local total
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dir/callgrind.out")
  [ -n "$total" ] || { echo "callgrind-publish: no total in $dir/callgrind.out; see $dir/herald.log" >&2; exit 1; }
  echo "$total"
}

declare -A totals msgs bytes
last=""
for n in $COUNTS; do
  t=$(run_once "$n")
  totals[$n]=$t
  read -r msgs[$n] bytes[$n] <"$work/nats-msgs-$n"
  printf 'publishes %6d  instructions %14d  nats messages %9d  bytes %11d\n' "$n" "$t" "${msgs[$n]}" "${bytes[$n]}"
  last=$n
done

set -- $COUNTS
if [ $# -ge 2 ]; then
  a=${@: -2:1}; b=${@: -1}
  python3 -c "a,b,ia,ib=$a,$b,${totals[$a]},${totals[$b]}; print(f'instructions per publish (slope {a}->{b}): {(ib-ia)/(b-a):,.0f}')"
  python3 -c "a,b,ma,mb=$a,$b,${msgs[$a]},${msgs[$b]}; print(f'nats-server messages per publish (in + out, slope): {(mb-ma)/(b-a):.2f}')"
  python3 -c "a,b,ma,mb=$a,$b,${bytes[$a]},${bytes[$b]}; print(f'nats-server bytes per publish (in + out, slope): {(mb-ma)/(b-a):,.0f}')"
fi

echo
echo "top inclusive costs, $last publishes:"
callgrind_annotate --inclusive=yes "$work/run-$last/callgrind.out" 2>/dev/null | sed -n '/^Ir/,$p' | head -n "$TOP"
if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $work"; fi
