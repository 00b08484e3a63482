#!/usr/bin/env bash
# Deploy ZeroRec to a Knative cluster: build the images, push them, apply the manifests.
#
#   ./local/task deploy REGISTRY=registry.example/zerorec [CONTEXT=kube-context]
#                       [PHASE=core|data|compute|all | SERVICE=name] [DRY_RUN=1]
#
# REGISTRY  where the images go (host[:port][/path]); the manifests' short names
#           (zerorec-serve:VERSION, zerorec-jobs:VERSION) become REGISTRY/zerorec-serve:VERSION...
# CONTEXT   the kube context kubectl applies to (default: the current one)
# PHASE     the seed's phases: core (BFF, recall, ranking, reranking and the init Job that trains the
#           first model), data (user, item, behavior, consumer, worker, their sources), compute (the
#           on-demand jobs and their schedules), or all (default)
# SERVICE   one Service (and the sources that deliver to it), e.g. SERVICE=recall; or zerorec-init
# DRY_RUN=1 build, push and apply nothing: render every object it would apply under OUT/objects
#           (with the registry filled in), validate them (CRD schemas, strict) and print the plan
# OUT       where the rendered objects go (default .local-infra/deploy)
# PUSH_FLAGS extra `podman push` flags, e.g. PUSH_FLAGS=--tls-verify=false for a plain-HTTP registry
#
# Before the first deploy the namespace and the Secrets must exist (knative/README.md):
#   kubectl create namespace zerorec
#   kubectl -n zerorec create secret generic zerorec-s3 --from-literal=access-key=... --from-literal=secret-key=...
#   kubectl -n zerorec create secret generic zerorec-api-keys --from-literal=behavior=... --from-literal=admin=...
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NAMESPACE=zerorec
REGISTRY=${REGISTRY:-}
CONTEXT=${CONTEXT:-}
PHASE=${PHASE:-all}
SERVICE=${SERVICE:-}
DRY_RUN=${DRY_RUN:-}
OUT=${OUT:-$ROOT/.local-infra/deploy}
PUSH_FLAGS=${PUSH_FLAGS:-}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")
PY=${PYTHON:-$ROOT/.venv/bin/python}

say() { echo "deploy: $*" >&2; }
die() { echo "deploy: ERROR: $*" >&2; exit 1; }
[[ $DRY_RUN =~ ^(|0|1)$ ]] || die "DRY_RUN=$DRY_RUN: 1 or nothing"
[[ -n $REGISTRY ]] || die "REGISTRY is required, e.g. ./local/task deploy REGISTRY=registry.example/zerorec"
[[ -z $SERVICE || $PHASE == all ]] || die "give PHASE or SERVICE, not both"

# 1. Render and validate first: a broken manifest fails here, before minutes of building.
listed=$("$PY" "$ROOT/local/deploy.py" render --registry "$REGISTRY" --tag "$VERSION" \
  --phase "$PHASE" ${SERVICE:+--service "$SERVICE"} --out "$OUT") || die "render failed (see above)"
mapfile -t IMAGES <<<"$listed"  # the images the rendered objects use
OBJECTS=("$OUT"/objects/*.yaml)
KUBECTL=(kubectl ${CONTEXT:+--context "$CONTEXT"})

if [[ $DRY_RUN == 1 ]]; then
  say "dry run: ${#OBJECTS[@]} objects in $OUT/objects; would run:"
  echo "  ./local/task images"
  for ref in "${IMAGES[@]}"; do
    name=${ref##*/}
    echo "  podman push ${PUSH_FLAGS:+$PUSH_FLAGS }localhost/${name%%:*}:$VERSION $ref"
  done
  echo "  ${KUBECTL[*]} apply -f $OUT/objects"
  exit 0
fi

command -v kubectl >/dev/null || die "kubectl not found (https://kubernetes.io/docs/tasks/tools/)"
command -v podman >/dev/null || die "podman not found: apt-get install podman"

# 2. The cluster must be ready for the objects: namespace and Secrets (the pods would not start).
"${KUBECTL[@]}" get namespace "$NAMESPACE" >/dev/null \
  || die "no namespace $NAMESPACE in context ${CONTEXT:-(current)}: kubectl create namespace $NAMESPACE"
for secret in zerorec-s3 zerorec-api-keys; do
  "${KUBECTL[@]}" -n "$NAMESPACE" get secret "$secret" >/dev/null \
    || die "no Secret $secret in namespace $NAMESPACE: create it as knative/README.md says"
done

# 3. Build (both images, cached layers make a rebuild quick), 4. push what the objects use.
"$ROOT/local/task" images
for ref in "${IMAGES[@]}"; do
  name=${ref##*/}
  say "pushing $ref"
  # shellcheck disable=SC2086  # PUSH_FLAGS is a list of flags
  podman push $PUSH_FLAGS "localhost/${name%%:*}:$VERSION" "$ref"
done

# 5. Apply, in the rendered order (init Job, sinks, Services, sources; phase by phase).
"${KUBECTL[@]}" apply -f "$OUT/objects" \
  || die "kubectl apply failed. A changed init Job cannot be updated in place (a Job's pod template is
immutable): kubectl -n $NAMESPACE delete job zerorec-init, then deploy again"
say "applied ${#OBJECTS[@]} objects; readiness: kubectl -n $NAMESPACE get ksvc (or kn service list -n $NAMESPACE)"
