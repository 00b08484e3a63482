#!/usr/bin/env bash
# A throw-away Redis Cluster on loopback: three masters, no replicas, no persistence.
#
#   local/redis_cluster.sh start [DIR] [PORT PORT PORT]   prints the ZEROREC_REDIS_URL of the cluster
#   local/redis_cluster.sh stop [DIR]                      stops the nodes started in DIR, removes DIR
#   local/redis_cluster.sh status [DIR]
#
# DIR defaults to .local-infra/redis-cluster, ports to 17001 17002 17003 (each node also listens on
# its port + 10000, the cluster bus). The contract tests start one on free ports in a temporary DIR
# and stop it after (tests/contract/conftest.py). Needs redis-server and redis-cli (Debian's
# redis-server package, as local/infra.sh).
set -euo pipefail

cmd=${1:-}
dir=${2:-.local-infra/redis-cluster}
shift $(($# >= 2 ? 2 : $#))
ports=("$@")
[ ${#ports[@]} -eq 0 ] && ports=(17001 17002 17003)
server=${ZEROREC_INFRA_REDIS_SERVER:-redis-server}
cli=${ZEROREC_INFRA_REDIS_CLI:-redis-cli}

die() { echo "redis_cluster: $*" >&2; exit 1; }

wait_for() {  # wait_for SECONDS COMMAND...: retry until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.1
  done
}

fail() { local message=$*; stop; die "$message"; }  # stop what was started, then say why

cluster_ok() { "$cli" -p "$1" cluster info | grep -q '^cluster_state:ok'; }

stop() {
  local pidfile pid
  [ -d "$dir" ] || return 0
  for pidfile in "$dir"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    wait_for 10 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}

start() {
  command -v "$server" >/dev/null || die "$server not found (apt-get install redis-server)"
  command -v "$cli" >/dev/null || die "$cli not found (apt-get install redis-tools)"
  [ ${#ports[@]} -eq 3 ] || die "give three ports, got ${#ports[@]}"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local port nodes=()
  for port in "${ports[@]}"; do
    mkdir -p "$dir/$port"
    "$server" --port "$port" --bind 127.0.0.1 --protected-mode yes --daemonize yes \
      --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout 5000 \
      --save "" --appendonly no --dir "$dir/$port" \
      --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log"
    nodes+=("127.0.0.1:$port")
  done
  for port in "${ports[@]}"; do
    wait_for 10 "$cli" -p "$port" ping || fail "node $port did not start: $(tail -3 "$dir/$port/redis.log")"
  done
  "$cli" --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
    || fail "cluster create failed: $(tail -5 "$dir/create.log")"
  for port in "${ports[@]}"; do
    wait_for 30 cluster_ok "$port" || fail "node $port: cluster state not ok"
  done
  local IFS=,
  echo "redis-cluster://${nodes[*]}"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status)
    for port in "${ports[@]}"; do
      printf '%s: ' "$port"
      "$cli" -p "$port" cluster info 2>/dev/null | grep '^cluster_state' || echo down
    done
    ;;
  *) die "usage: $0 start|stop|status [DIR] [PORT PORT PORT]" ;;
esac
