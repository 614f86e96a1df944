#!/usr/bin/env bash
# Soak: minutes of mixed load through the proxy with redis-server restarted twice in the middle,
# then a report of what is left: client and upstream connections, file descriptors, memory.
#
#   benches/soak.sh                 # 180 s
#   SECONDS_TOTAL=600 benches/soak.sh
#
# Starts its own redis-server and release proxy (tier on, a TTL rule, metrics) on free ports.
TOTAL=${SECONDS_TOTAL:-180}
source "$(dirname "$0")/common.sh"
start_redis
MPORT=$(free_port)
cat > "$work/proxy.toml" <<EOF
[cache]
max_memory = "32MiB"
[[rule]]
pattern = "key:*"
default_ttl = "1h"
[metrics]
address = "127.0.0.1:$MPORT"
EOF
start_proxy "$work/proxy.toml"

rss() { awk '/VmRSS/ { print $2 }' "/proc/$PROXY/status"; }
fds() { ls "/proc/$PROXY/fd" | wc -l; }
metric() { curl -s "http://127.0.0.1:$MPORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
report() {
  echo "$1: rss=$(rss) KiB fds=$(fds) tasks_alive=$(metric nearcache_tasks_alive)" \
    "clients_connected=$(metric nearcache_clients_connected)" \
    "upstream_connections=$(metric nearcache_upstream_connections) breaker_state=$(metric nearcache_breaker_state)"
}
report "start"

# Mixed load (reads, writes, enforced writes, lists, hashes) from 3 loops of redis-benchmark,
# restarted whenever one exits (an error reply during an upstream restart may end one).
end=$((SECONDS + TOTAL))
load() {
  while [ $SECONDS -lt $end ]; do
    redis-benchmark -p "$PPORT" -c 20 -r 10000 -n 200000 -q "$@" >>"$work/bench.log" 2>&1 || true
  done
}
load -t get,set,mget -P 4 & L1=$!
load -t incr,lpush,lpop,hset -d 64 & L2=$!
load -t get -P 16 & L3=$!
sleep $((TOTAL / 3)); report "under load"
echo "restarting redis-server"; kill "$REDIS"; wait "$REDIS" 2>/dev/null || true; sleep 2; start_redis
sleep $((TOTAL / 3)); report "under load, after a restart"
echo "restarting redis-server"; kill -9 "$REDIS"; wait "$REDIS" 2>/dev/null || true; sleep 2; start_redis
wait $L1 $L2 $L3
peak=$(awk '/VmHWM/ { print $2 }' "/proc/$PROXY/status")
sleep 3
report "load stopped"
redis-cli -p "$PPORT" PROXY CACHE CLEAR >/dev/null
sleep 1
report "tier cleared"
echo "peak rss=$peak KiB; requests refused or failed while Redis was down: $(grep -c 'Error' "$work/bench.log" || true) error lines"
redis-cli -p "$PPORT" PROXY INFO | grep -E "^(connected_clients|tasks_alive|total_connections_received|cache_entries|cache_bytes|breaker_|upstream_connections|ttl_enforced)" | tr -d '\r'
