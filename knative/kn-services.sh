#!/usr/bin/env bash
# Every ZeroRec Knative Service as a `kn service create` command: the kn way to the Services that
# knative/serving/*.yaml declares. tests/test_knative_manifests.py runs this script with --target and
# checks that what kn writes equals the committed YAML (semantically), so the two cannot drift.
#
#   knative/kn-services.sh [-n NAMESPACE] [--registry REG] [--tag TAG] [--target DIR] [SERVICE...]
#
# Without --target, kn creates the Services in the cluster of the current kube context, replacing
# any of the same name (--force), without waiting for them to be Ready. With --target DIR it writes
# DIR/<service>.yaml and needs no cluster. SERVICE...: only these (default: all 15). KN: the kn
# binary (default: .venv/bin/kn, else kn on PATH); KN_FLAGS: extra kn flags, e.g. "--context prod".
# Images: zerorec-serve and zerorec-jobs, prefixed with --registry when given (`./local/task images`
# builds them; `./local/task deploy` pushes them).
#
# kn cannot say everything the YAML says; these are written by other means:
# - readOnlyRootFilesystem and seccompProfile: kn's `--security-context strict` sets neither (it
#   sets runAsNonRoot, allowPrivilegeEscalation: false and drops ALL capabilities), so the whole
#   securityContext comes from a base Service given with -f (kn applies its flags on top of it);
# - the KafkaSources, PingSources and the KafkaSink (knative/eventing/) and the init Job
#   (knative/bootstrap/): in kn v0.39 only `kn service` has --target (`kn source ping create`
#   needs a cluster; KafkaSource and KafkaSink are a plugin's, not in kn), and kn has no Jobs:
#   apply them with kubectl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NS=zerorec REGISTRY= TARGET=
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")  # the project's version
usage() { sed -n '6,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case $1 in
    -n | --namespace) NS=${2:?}; shift 2 ;;
    --registry) REGISTRY=${2%/}; shift 2 ;;
    --tag) TAG=${2:?}; shift 2 ;;
    --target) TARGET=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "kn-services: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
KN=${KN:-$ROOT/.venv/bin/kn}
[[ -x $KN ]] || KN=$(command -v kn) || { echo "kn-services: kn not found (./local/bootstrap.sh builds it into .venv/bin/kn)" >&2; exit 1; }
# shellcheck disable=SC2206  # KN_FLAGS is a list of words
KN_CMD=("$KN" ${KN_FLAGS:-})
[[ -z $TARGET ]] || mkdir -p "$TARGET"

SERVE=${REGISTRY:+$REGISTRY/}zerorec-serve:$TAG
JOBS=${REGISTRY:+$REGISTRY/}zerorec-jobs:$TAG
SVC=svc.cluster.local

# What kn cannot express (see above): the container's securityContext.
BASE=$(mktemp)
trap 'rm -f "$BASE"' EXIT
cat >"$BASE" <<'EOF'
apiVersion: serving.knative.dev/v1
kind: Service
spec:
  template:
    spec:
      containers:
      - securityContext:
          runAsNonRoot: true
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities:
            drop: [ALL]
          seccompProfile:
            type: RuntimeDefault
EOF

# Read-only root: the one writable directory is an emptyDir at /var/tmp (Knative rejects a volume
# at /tmp, a reserved path); TMPDIR and HOME point there.
scratch() {  # SIZE
  echo --volume "scratch=ed:scratch:size=$1" --mount /var/tmp=scratch --env TMPDIR=/var/tmp --env HOME=/var/tmp
}
# Stores and bus, as every function but the BFF sees them; keys from Secrets.
BACKENDS=(
  --env ZEROREC_OBJECT_STORE=s3 --env "ZEROREC_S3_ENDPOINT=http://minio.$NS.$SVC:9000"
  --env ZEROREC_S3_BUCKET=zerorec
  --env-value-from ZEROREC_S3_ACCESS_KEY=secret:zerorec-s3:access-key
  --env-value-from ZEROREC_S3_SECRET_KEY=secret:zerorec-s3:secret-key
  --env ZEROREC_KV_STORE=redis --env "ZEROREC_REDIS_URL=redis://redis.$NS.$SVC:6379/0"
  --env ZEROREC_EVENT_BUS=kafka --env ZEROREC_KAFKA_BOOTSTRAP=zerorec-kafka-bootstrap.kafka.$SVC:9092
)
# The BFF reaches the stages through their cluster-local URLs.
BFF=(
  --env "ZEROREC_RECALL_URL=http://recall.$NS.$SVC" --env "ZEROREC_RANKING_URL=http://ranking.$NS.$SVC"
  --env "ZEROREC_RERANKING_URL=http://reranking.$NS.$SVC" --env "ZEROREC_USER_URL=http://user.$NS.$SVC"
  --env "ZEROREC_ITEM_URL=http://item.$NS.$SVC"
  --env ZEROREC_DEADLINE_MS=300 --env ZEROREC_TOTAL_BUDGET_MS=1000
  # What each answer served (zerorec.ctr: impressions and clicks are attributed from it).
  --env ZEROREC_KV_STORE=redis --env "ZEROREC_REDIS_URL=redis://redis.$NS.$SVC:6379/0"
)
# One thread per BLAS/OpenMP pool: a request's numpy work is small, and more threads only contend
# for the CPU limit.
ONE_THREAD=(--env OPENBLAS_NUM_THREADS=1 --env OMP_NUM_THREADS=1)
# Latency-critical: always one pod warm, scale down slowly. Scale-to-zero: 60 s window.
HOT=(--scale-metric concurrency --scale 1..10 --annotation-revision autoscaling.knative.dev/scale-down-delay=2m)
COLD=(--scale-metric concurrency --scale-window 60s)
HTTP_PROBE=(--probe-readiness http:::/health)  # no port, no period: queue-proxy probes aggressively
# Prometheus scrapes GET /metrics (zerorec.observability) on the function's own port, straight from
# the pod: Knative allows one port per container (named http1), and scrapes that bypass the
# activator and queue-proxy neither count as requests for the autoscaler nor wake a scaled-to-zero
# Service. The prometheus.io annotations are what Prometheus' kubernetes-pods discovery reads; Knative
# copies revision annotations to the pods.
METRICS=(--port http1:8080 --annotation-revision prometheus.io/scrape=true
  --annotation-revision prometheus.io/port=8080 --annotation-revision prometheus.io/path=/metrics)
# CPU: the request is the seed's budget (what the scheduler reserves and the autoscaler sizes for);
# the limit is one core, so a cold start's imports and model load (about one core-second) finish in
# about a second instead of five at 200m (`zerorec bench containers --cpu-sweep`, README), and a
# burst uses idle CPU instead of being throttled. Memory is not compressible: request = limit.
BURST_CPU=1000m

ALL=(recommender recommender-grpc recall ranking reranking user item behavior consumer worker dashboard
  model-training feature-engineering vector-generation flink-realtime)
SELECTED=("$@")
for s in "${SELECTED[@]}"; do
  [[ " ${ALL[*]} " == *" $s "* ]] || { echo "kn-services: no Service $s (one of: ${ALL[*]})" >&2; exit 2; }
done

svc() {  # NAME PHASE IMAGE FUNCTION_TARGET [kn flags...]: one Service, unless SERVICE... leaves it out
  local name=$1 phase=$2 image=$3 target=$4
  shift 4
  ((${#SELECTED[@]} == 0)) || [[ " ${SELECTED[*]} " == *" $name "* ]] || return 0
  local function_env=()
  # every zerorec.runner function serves /metrics (the gRPC BFF, target -, does not)
  [[ $target == - ]] || function_env=(--env "FUNCTION_TARGET=$target" --env "FUNCTION_SOURCE=functions/$name/main.py"
    "${METRICS[@]}")
  local out=()
  [[ -z $TARGET ]] || out=(--target "$TARGET/$name.yaml")
  # --no-wait: on a fresh cluster the serving Services are not Ready before the init Job has
  # published a model; `kn service list -n NS` shows them coming up.
  "${KN_CMD[@]}" service create "$name" -n "$NS" --force --no-wait -f "$BASE" --image "$image" \
    --label "app.kubernetes.io/name=$name" --label-service app.kubernetes.io/part-of=zerorec \
    --label-service "zerorec.dev/phase=$phase" \
    "${function_env[@]}" --env WORKERS=1 "$@" "${out[@]}"
}

# shellcheck disable=SC2046  # scratch prints flags: word splitting wanted
# core: the recommendation path. The BFF is public (HTTP and gRPC); the stages are cluster-local.
svc recommender core "$SERVE" recommender "${HOT[@]}" --concurrency-limit 32 --scale-target 22 \
  --timeout 10 --request cpu=50m,memory=128Mi --limit "cpu=$BURST_CPU,memory=128Mi" "${BFF[@]}" $(scratch 16Mi) \
  "${HTTP_PROBE[@]}"
svc recommender-grpc core "$SERVE" - "${HOT[@]}" --concurrency-limit 32 --scale-target 22 \
  --timeout 10 --request cpu=50m,memory=128Mi --limit "cpu=$BURST_CPU,memory=128Mi" "${BFF[@]}" $(scratch 16Mi) \
  --env ZEROREC_GRPC_PORT=10072 --label-service zerorec.dev/budget-of=recommender \
  --port h2c:10072 --cmd python --arg functions/recommender/grpc_server.py --probe-readiness tcp::
svc recall core "$SERVE" recall "${HOT[@]}" --concurrency-limit 8 --scale-target 6 --timeout 10 \
  --request cpu=200m,memory=512Mi --limit "cpu=$BURST_CPU,memory=512Mi" "${ONE_THREAD[@]}" "${BACKENDS[@]}" \
  $(scratch 64Mi) "${HTTP_PROBE[@]}" --cluster-local
svc ranking core "$SERVE" ranking "${HOT[@]}" --concurrency-limit 4 --scale-target 3 --timeout 10 \
  --request cpu=200m,memory=512Mi --limit "cpu=$BURST_CPU,memory=512Mi" "${ONE_THREAD[@]}" "${BACKENDS[@]}" \
  $(scratch 64Mi) "${HTTP_PROBE[@]}" --cluster-local
svc reranking core "$SERVE" reranking "${HOT[@]}" --concurrency-limit 8 --scale-target 6 --timeout 10 \
  --request cpu=100m,memory=256Mi --limit "cpu=$BURST_CPU,memory=256Mi" "${ONE_THREAD[@]}" "${BACKENDS[@]}" \
  $(scratch 64Mi) "${HTTP_PROBE[@]}" --cluster-local

# data: profiles, catalogue, event intake and sync. behavior is public (clients POST /events with
# the API key of the zerorec-api-keys Secret); item's and user's admin endpoints take the admin key.
svc user data "$SERVE" user "${HOT[@]}" --concurrency-limit 32 --scale-target 22 --timeout 10 \
  --request cpu=150m,memory=256Mi --limit "cpu=$BURST_CPU,memory=256Mi" "${ONE_THREAD[@]}" "${BACKENDS[@]}" \
  --env-value-from ZEROREC_ADMIN_API_KEY=secret:zerorec-api-keys:admin \
  $(scratch 64Mi) "${HTTP_PROBE[@]}" --cluster-local
svc item data "$SERVE" item "${HOT[@]}" --concurrency-limit 32 --scale-target 22 --timeout 10 \
  --request cpu=150m,memory=256Mi --limit "cpu=$BURST_CPU,memory=256Mi" "${ONE_THREAD[@]}" "${BACKENDS[@]}" \
  --env-value-from ZEROREC_ADMIN_API_KEY=secret:zerorec-api-keys:admin \
  $(scratch 64Mi) "${HTTP_PROBE[@]}" --cluster-local
svc behavior data "$SERVE" behavior "${COLD[@]}" --scale 0..5 --concurrency-limit 32 --scale-target 22 \
  --annotation-revision autoscaling.knative.dev/scale-to-zero-pod-retention-period=1m --timeout 10 \
  --request cpu=150m,memory=256Mi --limit "cpu=$BURST_CPU,memory=256Mi" "${BACKENDS[@]}" \
  --env-value-from ZEROREC_BEHAVIOR_API_KEY=secret:zerorec-api-keys:behavior \
  $(scratch 64Mi) "${HTTP_PROBE[@]}" --no-cluster-local
svc consumer data "$SERVE" consumer "${COLD[@]}" --scale 0..5 --concurrency-limit 8 --scale-target 6 \
  --annotation-revision autoscaling.knative.dev/scale-to-zero-pod-retention-period=1m --timeout 60 \
  --request cpu=250m,memory=256Mi --limit "cpu=$BURST_CPU,memory=256Mi" "${BACKENDS[@]}" \
  $(scratch 64Mi) "${HTTP_PROBE[@]}" --cluster-local
svc worker data "$SERVE" worker "${COLD[@]}" --scale 0..3 --concurrency-limit 1 --scale-target 1 \
  --annotation-revision autoscaling.knative.dev/scale-to-zero-pod-retention-period=1m --timeout 300 \
  --request cpu=200m,memory=256Mi --limit "cpu=$BURST_CPU,memory=256Mi" "${BACKENDS[@]}" \
  $(scratch 256Mi) "${HTTP_PROBE[@]}" --cluster-local
# dashboard: the operators' pages (zerorec.dashboard), cluster-local and without a key: reach it in
# the cluster, or publish it behind an authenticating ingress. Scales to zero when nobody looks.
# Memory: 145 MB RSS measured after every page, plus the ALS factors it may load (16 MiB at most).
svc dashboard data "$SERVE" dashboard "${COLD[@]}" --scale 0..2 --concurrency-limit 16 --scale-target 10 \
  --annotation-revision autoscaling.knative.dev/scale-to-zero-pod-retention-period=1m --timeout 30 \
  --request cpu=100m,memory=256Mi --limit "cpu=$BURST_CPU,memory=256Mi" "${ONE_THREAD[@]}" "${BACKENDS[@]}" \
  --env "ZEROREC_RECOMMENDER_URL=http://recommender.$NS.$SVC" --env "ZEROREC_USER_URL=http://user.$NS.$SVC" \
  --env "ZEROREC_ITEM_URL=http://item.$NS.$SVC" --env ZEROREC_EVALUATION_DIR=/app/docs/evaluation \
  $(scratch 16Mi) "${HTTP_PROBE[@]}" --cluster-local

# compute: on demand, one job at a time, on the jobs image. CPU: limit = the seed's budget, request
# 100m: a job soaks up the CPU the serving pods leave idle, and under contention the serving pods
# (request = limit) keep theirs. Requesting the whole budget would leave the job unschedulable in
# the seed's 2-CPU environment, where the always-on pods and their queue-proxies request ~1.1 CPU
# (~1.75 with behavior, consumer and worker up).
JOB=(--scale 0..1 --concurrency-limit 1 --scale-target 1
  --annotation-revision autoscaling.knative.dev/scale-to-zero-pod-retention-period=0s "${COLD[@]}")
SINKS=
for fn in recall ranking reranking user item; do SINKS+=${SINKS:+,}http://$fn.$NS.$SVC/events/model-published; done
SINKS+=,http://vector-generation.$NS.$SVC/  # a new model: new vectors from its factors
svc model-training compute "$JOBS" model_training "${JOB[@]}" --timeout 600 \
  --request cpu=100m,memory=2Gi --limit cpu=2000m,memory=2Gi "${BACKENDS[@]}" \
  --env "ZEROREC_PUBLISHED_SINKS=$SINKS" $(scratch 1Gi) "${HTTP_PROBE[@]}" --cluster-local
# Spark and Flink run on the JVM, whose temporary directory is /tmp unless told otherwise.
svc feature-engineering compute "$JOBS" feature_engineering "${JOB[@]}" --timeout 600 \
  --request cpu=100m,memory=1Gi --limit cpu=500m,memory=1Gi "${BACKENDS[@]}" \
  --env 'ZEROREC_SPARK_MASTER=local[1]' --env ZEROREC_SPARK_DRIVER_MEMORY=512m \
  --env JAVA_TOOL_OPTIONS=-Djava.io.tmpdir=/var/tmp $(scratch 4Gi) "${HTTP_PROBE[@]}" --cluster-local
svc vector-generation compute "$JOBS" vector_generation "${JOB[@]}" --timeout 600 \
  --request cpu=100m,memory=512Mi --limit cpu=300m,memory=512Mi "${BACKENDS[@]}" \
  --env ZEROREC_TOPIC_MODELS=zerorec.models $(scratch 1Gi) "${HTTP_PROBE[@]}" --cluster-local
# flink-realtime holds a streaming job: it must never scale to zero (min-scale 1, max-scale 1;
# knative/README.md "flink-realtime" says why not the Flink Kubernetes Operator).
svc flink-realtime compute "$JOBS" flink_realtime --scale 1..1 --concurrency-limit 1 --scale-target 1 \
  "${COLD[@]}" --timeout 60 \
  --request cpu=100m,memory=1Gi --limit cpu=500m,memory=1Gi "${BACKENDS[@]}" \
  --env ZEROREC_FLINK_AUTOSTART=1 --env JAVA_TOOL_OPTIONS=-Djava.io.tmpdir=/var/tmp \
  $(scratch 1Gi) "${HTTP_PROBE[@]}" --cluster-local
