#!/usr/bin/env bash
# Redis's own test suite (7.0.15, ../shared/redis-suite) against the proxy: starts a private
# redis-server and the proxy in front of it (default configuration: tier on), runs
# PROFILE=proxy UNIT_SET=extended against that ONE proxy and ONE redis-server, and prints the
# runner's per-unit lines and total ("N passed, M failed").
#
#   scripts/conformance.sh                      # the whole extended set, tier on
#   CACHE=off scripts/conformance.sh            # the same with cache.enabled = false
#   scripts/conformance.sh unit/pubsub unit/multi   # single units
#   CLUSTER=3 scripts/conformance.sh            # in front of a 3-master Redis Cluster, with the
#                                               # suite's --cluster-mode (db 0 only; tests Redis
#                                               # tags cluster:skip are left out)
#
# Knobs: SUITE_DIR (default ../shared/redis-suite), MIN_PASSED (exit non-zero when fewer tests
# pass; default 0 = only report), BUILD (release|debug, default release), SKIP_BUILD=1 (use the
# binary already in target/$BUILD), LOG_DIR (per-unit logs), UNIT_TIMEOUT (seconds per unit,
# default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
SUITE_DIR=${SUITE_DIR:-$root/../shared/redis-suite}
BUILD=${BUILD:-release}
CACHE=${CACHE:-on}
MIN_PASSED=${MIN_PASSED:-0}

scripts/ensure-redis.sh
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  :
elif [ "$BUILD" = release ]; then
  cargo build --release --quiet --bin nearcache
else
  cargo build --quiet --bin nearcache
fi
bin=$root/target/$BUILD/nearcache

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
  echo $((20000 + RANDOM % 20000)); }

work=$(mktemp -d -t nearcache-conformance.XXXXXX)
redis_pid=""; proxy_pid=""; cluster_pids=()
cleanup() {
  local rc=$?
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null || true; fi
  for pid in "${cluster_pids[@]}"; do kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
  # KILL: a redis-server inside a test's endless script defers a TERM's shutdown.
  if [ -n "$redis_pid" ]; then kill -9 "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
# Stopped from outside: still stop the servers (a redis-server left in a test's busy script
# would keep burning a core).
trap 'exit 143' TERM INT

wait_for() { # $1 = port: until it answers PING (bounded)
  for _ in $(seq 600); do
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2; return 1
}

enabled=true; [ "$CACHE" = off ] && enabled=false
printf '[cache]\nenabled = %s\n' "$enabled" >"$work/proxy.toml"
if [ "${CLUSTER:-0}" -gt 0 ]; then
  # Nodes whose cluster bus port (+10000) is free too.
  seeds=()
  for _ in $(seq "$CLUSTER"); do
    while :; do
      port=$(free_port)
      [ "$port" -lt 55000 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null && break
    done
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
      --cluster-enabled yes --cluster-config-file "$work/nodes-$port.conf" --cluster-node-timeout 5000 \
      --logfile "$work/redis-$port.log" &
    cluster_pids+=($!)
    wait_for "$port"
    seeds+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${seeds[@]}" --cluster-yes >/dev/null
  for _ in $(seq 300); do
    redis-cli --cluster check "${seeds[0]}" 2>/dev/null | grep -q "All 16384 slots covered" &&
      redis-cli -p "${seeds[0]##*:}" cluster info | grep -q "cluster_state:ok" && break
    sleep 0.1
  done
  rport=${seeds[0]##*:}
  printf '[upstream]\ncluster = [%s]\n' "$(printf '"%s",' "${seeds[@]}" | sed 's/,$//')" >>"$work/proxy.toml"
  SUITE_ARGS="${SUITE_ARGS:-} --cluster-mode"
  export SUITE_ARGS
  # Tests that assume one server: keyspace notifications (per node in Redis Cluster: a
  # subscriber hears one master's, and the test waits forever for another's), and the
  # "script timeout" tests (a script runs on one master while the others answer; when the
  # test's assertion fails first, its SCRIPT KILL never runs and the script blocks that master
  # for every later unit).
  export SKIPFILE=${SKIPFILE:-$root/scripts/cluster-skips.txt}
else
  for attempt in 1 2 3; do
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
      --logfile "$work/redis.log" &
    redis_pid=$!
    wait_for "$rport" && break
    kill "$redis_pid" 2>/dev/null; redis_pid=""
  done
  [ -n "$redis_pid" ] || { echo "redis-server did not start" >&2; exit 1; }
fi
for attempt in 1 2 3; do
  pport=$(free_port)
  upstream=(--upstream "127.0.0.1:$rport")
  [ "${CLUSTER:-0}" -gt 0 ] && upstream=()
  RUST_LOG=${RUST_LOG:-warn} "$bin" --config "$work/proxy.toml" --listen "127.0.0.1:$pport" \
    "${upstream[@]}" 2>"$work/proxy.log" &
  proxy_pid=$!
  wait_for "$pport" && break
  kill "$proxy_pid" 2>/dev/null; proxy_pid=""
done
[ -n "$proxy_pid" ] || { echo "the proxy did not start:" >&2; cat "$work/proxy.log" >&2; exit 1; }
echo "# redis-server on $rport, nearcache ($BUILD, cache $CACHE) on $pport" >&2

status=0
# In the background: a TERM interrupts `wait` at once, and cleanup stops the servers.
REDIS_TESTS_DIR="$SUITE_DIR/redis-7.0.15" HOST=127.0.0.1 PORT=$pport PROFILE=proxy \
  UNIT_SET=${UNIT_SET:-extended} "$SUITE_DIR/run.sh" "$@" >"$work/out" &
wait $! || status=$?
out=$(cat "$work/out")
echo "$out"
if ! kill -0 "$proxy_pid" 2>/dev/null; then
  echo "the proxy died during the run:" >&2; tail -50 "$work/proxy.log" >&2; exit 1
fi
passed=$(echo "$out" | awk '/ passed, .* failed$/ {print $1}' | tail -1)
if [ "${passed:-0}" -lt "$MIN_PASSED" ]; then
  echo "conformance: ${passed:-0} passed, fewer than MIN_PASSED=$MIN_PASSED" >&2
  exit 1
fi
# The runner's own exit status says whether anything failed: reported, not fatal (MIN_PASSED is
# the bar), so that one unit's failure does not hide the others' numbers from CI.
[ "$status" -eq 0 ] || echo "conformance: some tests failed (runner status $status)" >&2
exit 0
