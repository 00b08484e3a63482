#!/usr/bin/env bash
# Bring a fresh machine (Debian 12, python3.11) to a working checkout: system packages for the local
# servers (redis-server, java, mvn), .venv with the project and its train+dev extras (which bring the
# `task` runner). Idempotent; a warm run only checks, and skips pip while pyproject.toml is unchanged.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
STAMP=$VENV/.zerorec-install-stamp
T0=${EPOCHREALTIME/,/.}

say() { echo "bootstrap: $*" >&2; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

find_python() {
  local c
  for c in ${ZEROREC_PYTHON:-python3.11 python3}; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# --- system packages -----------------------------------------------------------------------------
missing=()
if ! PYTHON=$(find_python); then
  missing+=(python3.11 python3.11-venv)
elif ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  missing+=(python3.11-venv)  # Debian splits venv/ensurepip out of python3.11
fi
command -v redis-server >/dev/null || missing+=(redis-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v setsid >/dev/null || missing+=(util-linux)
# Images and their tests (local/images.sh, tests/containers): podman with runc, a Debian base.
command -v podman >/dev/null || missing+=(podman)
command -v buildah >/dev/null || missing+=(buildah)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v skopeo >/dev/null || missing+=(skopeo)
# The dashboard's browser test (tests/functions/test_dashboard_experiment.py): headless Chromium and
# its WebDriver, driven by selenium (the dev extra).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ((${#missing[@]})); then
  SUDO=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
    SUDO=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; }
  say "installing ${missing[*]} (apt-get)"
  # Update the package lists only when they are absent or the install cannot find the packages.
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || ! apt_install; then
    say "apt-get update"
    "${SUDO[@]}" apt-get update -q
    apt_install
  fi
fi

# Kafka 4.x and S3Proxy 4.x need Java 17+.
jv=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
[[ ${jv%%.*} =~ ^[0-9]+$ ]] && ((${jv%%.*} >= 17)) || die "java ${jv:-?} found; Java 17 or newer is needed"

# --- Python venv and the project ---------------------------------------------------------------
PYTHON=$(find_python) || die "python3.11 not found (set ZEROREC_PYTHON to one)"

if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  say "creating $VENV with $(command -v "$PYTHON")"
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    die "could not create the venv: on Debian, apt-get install python3.11-venv"
  fi
  rm -f "$STAMP"
fi

# pip keeps no HTTP cache on these machines, so a wheelhouse outside the clone is the cache.
WHEELS=${ZEROREC_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/zerorec/wheels}
mkdir -p "$WHEELS"

wheelhouse_install() {  # PYTHON SPEC [-e]: pip install SPEC offline from the wheelhouse
  local py=$1 spec=$2 edit=${3:-} sdist
  local pip=("$py" -m pip --disable-pip-version-check -q)
  # shellcheck disable=SC2086  # $edit is empty or -e
  "${pip[@]}" install --no-index --find-links "$WHEELS" $edit "$spec" 2>/dev/null && return 0
  say "fetching wheels for ${spec##*/} into $WHEELS (torch is several GB: minutes the first time)"
  "${pip[@]}" download -d "$WHEELS" "$spec"
  # Source-only packages (pyspark) become wheels once, so later installs never build them.
  for sdist in "$WHEELS"/*.tar.gz; do
    [[ -e $sdist ]] || continue
    compgen -G "$WHEELS/$(basename "${sdist%-*}")-*.whl" >/dev/null || "${pip[@]}" wheel --no-deps -w "$WHEELS" "$sdist"
  done
  # shellcheck disable=SC2086
  "${pip[@]}" install --no-index --find-links "$WHEELS" $edit "$spec"
}

# Reinstall when pyproject.toml changes (or the venv lost the task runner).
want=$(sha256sum "$ROOT/pyproject.toml" | cut -d" " -f1)
if [[ $want != "$(cat "$STAMP" 2>/dev/null || true)" || ! -x $VENV/bin/task ]]; then
  t=${EPOCHREALTIME/,/.}
  wheelhouse_install "$VENV/bin/python" "$ROOT[train,dev,spark]" -e
  echo "$want" >"$STAMP"
  say "pip install took $(awk -v a="$t" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.0f", b - a }')s"
fi

# The PyFlink job's own venv: apache-flink's pins contradict the project's (jobs/flink_realtime/requirements.txt).
FLINK_VENV=$ROOT/.local-infra/flink-venv
FLINK_REQ=$ROOT/jobs/flink_realtime/requirements.txt
fwant=$(sha256sum "$FLINK_REQ" | cut -d" " -f1)
if [[ $fwant != "$(cat "$FLINK_VENV/.zerorec-install-stamp" 2>/dev/null || true)" ]]; then
  [[ -x $FLINK_VENV/bin/python ]] || "$PYTHON" -m venv "$FLINK_VENV"
  wheelhouse_install "$FLINK_VENV/bin/python" "-r$FLINK_REQ"
  echo "$fwant" >"$FLINK_VENV/.zerorec-install-stamp"
fi

# --- kn, the Knative CLI: built from source once, cached outside the clone like the jars -----------
# knative.dev/client v0.39.0 from the Go module proxy: its go.mod has no replace directives (later
# versions need a knative.dev/client/pkg module the proxy does not serve, so `go install` fails).
# About 3 minutes the first time; used by knative/kn-services.sh and its test. Not fatal: without
# Go (or the proxy) the rest of the checkout works, and the kn test skips saying why.
KN_VERSION=v0.39.0
KN_BIN=${XDG_CACHE_HOME:-$HOME/.cache}/zerorec/bin/kn-$KN_VERSION
build_kn() {
  local dir src log=$VENV/kn-build.log
  command -v go >/dev/null || { say "go not found: kn not built (install Go 1.20+ from go.dev, then rerun)"; return 0; }
  say "building kn $KN_VERSION from source (once, about 3 minutes; log $log)"
  mkdir -p "$(dirname "$KN_BIN")"
  src=$(mktemp -d "${TMPDIR:-/tmp}/zerorec-kn.XXXXXX")
  if dir=$(go mod download -json "knative.dev/client@$KN_VERSION" 2>>"$log" \
      | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
    && cp -r "$dir/." "$src" && chmod -R u+w "$src" \
    && (cd "$src" && go build -mod=mod -o "$KN_BIN.tmp" \
      -ldflags "-X knative.dev/client/pkg/kn/commands/version.Version=$KN_VERSION" ./cmd/kn) >>"$log" 2>&1; then
    mv "$KN_BIN.tmp" "$KN_BIN"  # atomic: an interrupted build never leaves a half-written kn
  else
    say "WARNING: kn build failed (see $log); deploys with kubectl still work"
  fi
  rm -rf "$src" "$KN_BIN.tmp"
}
[[ -x $KN_BIN ]] || build_kn
[[ ! -x $KN_BIN ]] || ln -sfn "$KN_BIN" "$VENV/bin/kn"

say "ready in $(awk -v a="$T0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }')s" \
  "(python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), java $jv)"
