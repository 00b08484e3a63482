#!/usr/bin/env bash
# Build the two images of the Containerfile with podman: zerorec-serve and zerorec-jobs, each tagged
# `latest` and the project's version.
#
#   local/images.sh [serve|jobs|all]      (default all; ./local/task images)
#
# BASE: the base image (the Containerfile's default is the official python:3.11-slim-bookworm).
#   Unset, a base is made from Debian's packages once (debootstrap minbase + python3, imported as
#   localhost/debian-py:bookworm), because no container registry is reachable from these machines.
# Wheels come from the bootstrap's wheel cache (mounted at /wheels: pip installs offline); the Flink
# connector jar from the jar cache. podman runs with runc and explicit rlimits (crun fails on this
# host's cgroups; raising rlimits is not permitted here).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/zerorec
WHEELS=${ZEROREC_WHEELHOUSE:-$CACHE/wheels}
DEBIAN_BASE=localhost/debian-py:bookworm
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")
PODMAN=(podman --runtime runc)
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

say() { echo "images: $*" >&2; }
die() { echo "images: ERROR: $*" >&2; exit 1; }
secs() { awk -v a="$1" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.0f", b - a }'; }

command -v podman >/dev/null || die "podman not found: apt-get install podman buildah runc (local/bootstrap.sh does)"
command -v runc >/dev/null || die "runc not found: apt-get install runc"
compgen -G "$WHEELS/*.whl" >/dev/null || die "no wheels in $WHEELS: run local/bootstrap.sh first"

# The bootstrap fills the wheel cache for this machine's Python; Debian bookworm's is 3.11.2, and a
# few packages need more below 3.11.3 (redis: async-timeout). Fetch those into the cache once.
EXTRA_WHEELS=("async-timeout>=4.0.3")
for spec in "${EXTRA_WHEELS[@]}"; do
  compgen -G "$WHEELS/$(echo "${spec%%[<>=]*}" | tr - _)-*.whl" >/dev/null && continue
  "$ROOT/.venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps -d "$WHEELS" "$spec" \
    || die "could not fetch $spec into $WHEELS"
done

# A python3.11 base from Debian's packages, made once (about a minute) and kept in podman's store.
debian_base() {
  "${PODMAN[@]}" image exists "$DEBIAN_BASE" && return 0
  command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
  local t rootfs
  t=${EPOCHREALTIME/,/.}
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/zerorec-rootfs.XXXXXX")
  say "making $DEBIAN_BASE with debootstrap (once)"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
    http://deb.debian.org/debian >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; die "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import -q - "$DEBIAN_BASE" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  say "$DEBIAN_BASE ready in $(secs "$t")s"
}

build() {  # TARGET: build and tag zerorec-TARGET
  local target=$1 t mounts=(-v "$WHEELS:/wheels:ro")
  if [[ $target == jobs ]]; then
    mounts+=(-v "$("$ROOT/local/infra.sh" jars flink-kafka):/jars:ro")
  fi
  t=${EPOCHREALTIME/,/.}
  say "building zerorec-$target (base $BASE)"
  "${PODMAN[@]}" build "${ULIMITS[@]}" --layers --target "$target" --build-arg "BASE=$BASE" "${mounts[@]}" \
    -t "zerorec-$target:latest" -t "zerorec-$target:$VERSION" -f "$ROOT/Containerfile" "$ROOT" >&2 \
    || { say "ERROR: zerorec-$target failed to build"; return 1; }  # `build a && build b` turns off errexit
  say "zerorec-$target:$VERSION built in $(secs "$t")s," \
    "$(("$("${PODMAN[@]}" image inspect --format '{{.Size}}' "zerorec-$target:latest")" / 1000000)) MB"
}

if [[ -z ${BASE:-} ]]; then
  debian_base
  BASE=$DEBIAN_BASE
fi
case ${1:-all} in
  serve | jobs) build "$1" || die "the $1 image failed" ;;
  all) build serve || die "the serve image failed"; build jobs || die "the jobs image failed" ;;
  *) die "usage: local/images.sh [serve|jobs|all]" ;;
esac
# Rebuilt tags leave their old images dangling (GBs for the jobs image): drop them.
"${PODMAN[@]}" image prune -f >/dev/null
