#!/usr/bin/env bash
# Real local servers on 127.0.0.1 for integration tests and local runs:
#   Kafka (KRaft, single node, jars from Maven Central), Redis (Debian's redis-server),
#   S3Proxy (S3 API over a directory, jars from Maven Central) in the MinIO role.
#
#   local/infra.sh start|stop|restart|status [kafka|redis|s3 ...]   (default: all three)
#   local/infra.sh env      export lines that point ZeroRec at these servers
#   local/infra.sh clean    stop all and delete their data and logs
#   local/infra.sh jars P   fetch (once) the jars of local/jars/pom.xml profile P; print their folder
#
# Data, logs and pid files live in .local-infra/ (git-ignored); jars are cached outside the clone in
# ${XDG_CACHE_HOME:-~/.cache}/zerorec/jars so that fresh clones reuse them.
# Overrides (mainly for tests): ZEROREC_INFRA_DIR, ZEROREC_INFRA_{KAFKA,CONTROLLER,REDIS,S3}_PORT,
# ZEROREC_INFRA_START_TIMEOUT (s), ZEROREC_INFRA_STOP_TIMEOUT (s), ZEROREC_INFRA_REDIS_SERVER.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INFRA_DIR=${ZEROREC_INFRA_DIR:-$ROOT/.local-infra}
JAR_CACHE=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/zerorec/jars
POM=$ROOT/local/jars/pom.xml
PY=$ROOT/.venv/bin/python

KAFKA_PORT=${ZEROREC_INFRA_KAFKA_PORT:-19092}
CONTROLLER_PORT=${ZEROREC_INFRA_CONTROLLER_PORT:-19093}
REDIS_PORT=${ZEROREC_INFRA_REDIS_PORT:-16379}
S3_PORT=${ZEROREC_INFRA_S3_PORT:-19000}
START_TIMEOUT=${ZEROREC_INFRA_START_TIMEOUT:-90}
STOP_TIMEOUT=${ZEROREC_INFRA_STOP_TIMEOUT:-20}
REDIS_SERVER=${ZEROREC_INFRA_REDIS_SERVER:-redis-server}
S3_BUCKET=${ZEROREC_S3_BUCKET:-zerorec}
S3_ACCESS_KEY=${ZEROREC_S3_ACCESS_KEY:-zerorec}
S3_SECRET_KEY=${ZEROREC_S3_SECRET_KEY:-zerorec-secret}
ALL=(kafka redis s3)

say() { echo "infra: $*"; }
die() { echo "infra: ERROR: $*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

address() {
  case $1 in
    kafka) echo "127.0.0.1:$KAFKA_PORT" ;;
    redis) echo "redis://127.0.0.1:$REDIS_PORT/0" ;;
    s3) echo "http://127.0.0.1:$S3_PORT" ;;
  esac
}
ports() {
  case $1 in
    kafka) echo "$KAFKA_PORT $CONTROLLER_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    s3) echo "$S3_PORT" ;;
  esac
}
# A string in the server's command line, so a recycled pid is never mistaken for our server.
marker() {
  case $1 in
    redis) echo "127.0.0.1:$REDIS_PORT" ;;
    *) echo "-Dzerorec.infra=$1" ;;
  esac
}

# A process that exited but was not reaped yet (our own child) still answers kill -0.
alive() {
  local pid=$1 stat
  kill -0 "$pid" 2>/dev/null || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Prints the pid of our running server $1, or fails.
our_pid() {
  local f=$INFRA_DIR/$1/pid pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(marker "$1")" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_owner() {
  command -v ss >/dev/null || return 0
  ss -Hltnp "( sport = :$1 )" 2>/dev/null | grep -o 'users:(.*)' | head -1
}

need_venv() {
  [[ -x $PY ]] || die "$PY is missing: run local/bootstrap.sh first"
}

# Jars for Maven profile $1, fetched once per pom content into the cache outside the clone.
jars() {
  local profile=$1 version hash dir tmp
  version=$(sed -n "s:.*<$profile.version>\(.*\)</$profile.version>.*:\1:p" "$POM")
  # Key the cache on this profile's part of the pom only, so editing one profile keeps the other's jars.
  hash=$({ grep -F "<$profile.version>" "$POM"; sed -n "/<id>$profile<\/id>/,/<\/profile>/p" "$POM"; } \
    | sha256sum | cut -c1-10)
  dir=$JAR_CACHE/$profile-$version-$hash
  if [[ ! -f $dir/.complete ]]; then
    command -v mvn >/dev/null || die "mvn not found: run local/bootstrap.sh first"
    mkdir -p "$JAR_CACHE"
    say "$profile: fetching $profile $version jars from Maven Central into $dir (once)" >&2
    tmp=$(mktemp -d "$JAR_CACHE/.$profile.XXXXXX")
    if ! mvn -q -B -f "$POM" "-P$profile" dependency:copy-dependencies -DincludeScope=runtime \
        "-DoutputDirectory=$tmp" >"$tmp.log" 2>&1; then
      tail -n 30 "$tmp.log" >&2
      rm -rf "$tmp"
      die "$profile: mvn could not fetch the jars (log above)"
    fi
    rm -f "$tmp.log"
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"  # atomic: an interrupted fetch never leaves a half-filled cache dir
  fi
  echo "$dir"
}

# Start "$@" in its own session (so it outlives the calling shell and its process group), log to $2.
launch() {
  local name=$1 log=$2
  shift 2
  setsid "$@" </dev/null >>"$log" 2>&1 &
  echo $! >"$INFRA_DIR/$name/pid"
}

# Signal the server's whole process group (launch made it a group leader), so helpers die too.
signal() { kill "-$1" -- "-$2" 2>/dev/null || kill "-$1" "$2" 2>/dev/null; }

kill_pid() {
  local pid=$1 i
  signal TERM "$pid" || return 0
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    alive "$pid" || { signal KILL "$pid" || true; return 0; }
    sleep 0.1
  done
  echo "infra: pid $pid still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL" >&2
  signal KILL "$pid" || true
}

prepare_kafka() {
  local d=$INFRA_DIR/kafka cp cid
  cp=$(jars kafka)/'*'
  cat >"$d/server.properties.new" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
# One partition for internal topics: the default 50 makes the first consumer group slow to start.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$d/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %-5p [%c{1}] %m%n
rootLogger.level = INFO
rootLogger.appenderRef.console.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
EOF
  # The storage is formatted for one listener layout: reformat (local data only) when it changes.
  if [[ ! -f $d/data/meta.properties ]] || ! cmp -s "$d/server.properties.new" "$d/server.properties"; then
    rm -rf "$d/data"
    mv "$d/server.properties.new" "$d/server.properties"
    cid=$("$PY" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=").replace("-", "A"))')
    if ! java -cp "$cp" kafka.tools.StorageTool format --standalone -t "$cid" \
        -c "$d/server.properties" >>"$d/kafka.log" 2>&1; then
      tail -n 20 "$d/kafka.log" >&2
      die "kafka: formatting the KRaft storage failed (log above: $d/kafka.log)"
    fi
  else
    rm -f "$d/server.properties.new"
  fi
  KAFKA_CMD=(java "$(marker kafka)" -Xms256m -Xmx512m -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$d/log4j2.properties"
    -cp "$cp" kafka.Kafka "$d/server.properties")
}

prepare_s3() {
  local d=$INFRA_DIR/s3 cp
  cp=$(jars s3proxy)/'*'
  # The filesystem backend keeps a bucket as a folder under basedir: creating it is a mkdir.
  mkdir -p "$d/data/$S3_BUCKET"
  cat >"$d/s3proxy.conf" <<EOF
s3proxy.endpoint=http://127.0.0.1:$S3_PORT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$S3_ACCESS_KEY
s3proxy.credential=$S3_SECRET_KEY
# Non-chunked SigV4 bodies are buffered in memory; allow model files larger than the 32 MiB default.
s3proxy.v4-max-non-chunked-request-size=134217728
jclouds.provider=filesystem-nio2
jclouds.identity=$S3_ACCESS_KEY
jclouds.credential=$S3_SECRET_KEY
jclouds.filesystem.basedir=$d/data
EOF
  # The Maven jar carries no logging config: without one logback logs at DEBUG.
  cat >"$d/logback.xml" <<'EOF'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
EOF
  S3_CMD=(java "$(marker s3)" -Xms64m -Xmx512m -XX:+ExitOnOutOfMemoryError
    "-Dlogback.configurationFile=$d/logback.xml" -cp "$cp" org.gaul.s3proxy.Main --properties "$d/s3proxy.conf")
}

prepare_redis() {
  local d=$INFRA_DIR/redis
  command -v "$REDIS_SERVER" >/dev/null || die "redis: $REDIS_SERVER not found: run local/bootstrap.sh first"
  # No persistence: the local Redis is a cache for tests and runs.
  REDIS_CMD=("$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$d" --save "" --appendonly no
    --daemonize no --protected-mode yes)
}

start_one() {
  local name=$1 d=$INFRA_DIR/$1 pid port t0 rc log
  log=$d/$name.log
  if pid=$(our_pid "$name"); then
    say "$name: already running (pid $pid) on $(address "$name")"
    return 0
  fi
  for port in $(ports "$name"); do
    if port_open "$port"; then
      die "$name: port 127.0.0.1:$port is already in use by another process $(port_owner "$port")" \
        "(not one started from $INFRA_DIR); stop it, or set ZEROREC_INFRA_*_PORT and the matching ZEROREC_* endpoint"
    fi
  done
  need_venv
  mkdir -p "$d"
  rm -f "$d/pid"
  case $name in
    kafka) prepare_kafka; set -- "${KAFKA_CMD[@]}" ;;
    s3) prepare_s3; set -- "${S3_CMD[@]}" ;;
    redis) prepare_redis; set -- "${REDIS_CMD[@]}" ;;
  esac
  echo "=== $(date -Is) start" >>"$log"
  t0=$(now)
  launch "$name" "$log" "$@"
  pid=$(<"$d/pid")
  rc=0
  "$PY" "$ROOT/local/ready.py" "$name" "$(address "$name")" --timeout "$START_TIMEOUT" --pid "$pid" || rc=$?
  if ((rc != 0)); then
    echo "----- last lines of $log -----" >&2
    tail -n 25 "$log" >&2
    echo "-----" >&2
    kill_pid "$pid"
    rm -f "$d/pid"
    if ((rc == 2)); then
      die "$name: the server exited during start-up (log above)"
    fi
    die "$name: not ready within ${START_TIMEOUT}s (log above); stopped it"
  fi
  say "$name: ready on $(address "$name") in $(since "$t0")s (pid $pid, log ${log#"$ROOT"/})"
}

stop_one() {
  local name=$1 pid t0
  if ! pid=$(our_pid "$name"); then
    rm -f "$INFRA_DIR/$name/pid"
    say "$name: not running"
    return 0
  fi
  t0=$(now)
  kill_pid "$pid"
  rm -f "$INFRA_DIR/$name/pid"
  say "$name: stopped (pid $pid) in $(since "$t0")s"
}

# 0 when running and answering a real request.
status_one() {
  local name=$1 pid
  if ! pid=$(our_pid "$name"); then
    say "$name: stopped"
    return 1
  fi
  if [[ -x $PY ]] && "$PY" "$ROOT/local/ready.py" "$name" "$(address "$name")" --timeout 5 --pid "$pid" 2>/dev/null; then
    say "$name: running (pid $pid) on $(address "$name"), answering"
    return 0
  fi
  say "$name: running (pid $pid) on $(address "$name") but NOT answering (see $INFRA_DIR/$name/$name.log)"
  return 1
}

print_env() {
  cat <<EOF
export ZEROREC_OBJECT_STORE=s3
export ZEROREC_KV_STORE=redis
export ZEROREC_EVENT_BUS=kafka
export ZEROREC_S3_ENDPOINT=$(address s3)
export ZEROREC_S3_BUCKET=$S3_BUCKET
export ZEROREC_S3_ACCESS_KEY=$S3_ACCESS_KEY
export ZEROREC_S3_SECRET_KEY=$S3_SECRET_KEY
export ZEROREC_REDIS_URL=$(address redis)
export ZEROREC_KAFKA_BOOTSTRAP=$(address kafka)
EOF
}

usage() {
  sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

cmd=${1:-}
[[ -n $cmd ]] || usage
shift
if [[ $cmd == jars ]]; then jars "${1:?usage: local/infra.sh jars PROFILE}"; exit 0; fi
servers=("$@")
((${#servers[@]})) || servers=("${ALL[@]}")
for s in "${servers[@]}"; do
  [[ " ${ALL[*]} " == *" $s "* ]] || die "unknown server '$s' (choose from: ${ALL[*]})"
done

case $cmd in
  start)
    for s in "${servers[@]}"; do start_one "$s"; done ;;
  stop)
    for s in "${servers[@]}"; do stop_one "$s"; done ;;
  restart)
    for s in "${servers[@]}"; do stop_one "$s"; done
    for s in "${servers[@]}"; do start_one "$s"; done ;;
  status)
    rc=0
    for s in "${servers[@]}"; do status_one "$s" || rc=3; done
    exit "$rc" ;;
  env) print_env ;;
  clean)
    for s in "${ALL[@]}"; do stop_one "$s"; done
    rm -rf "$INFRA_DIR"
    say "removed $INFRA_DIR" ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
