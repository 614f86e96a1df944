#!/usr/bin/env bash
# Counts the system calls and context switches of the server answering, per request, directly
# (redis-server) and through the proxy, for one redis-benchmark run each (perf stat on the
# syscalls tracepoints: needs perf from Debian's linux-perf and permission to trace).
#
#   benches/syscalls.sh                                 # GET -r 1000 through the tier (hits), -P 1
#   CONFIG=plain.toml TEST=set P=16 benches/syscalls.sh # any proxy.toml, test and pipeline depth
CONFIG=${CONFIG:-proxy.toml}
TEST=${TEST:-get}
P=${P:-1}
N=${N:-200000}
source "$(dirname "$0")/common.sh"
start_redis
start_proxy "$CONFIG"
warm_tier
calls="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait futex sched_yield"
events=$(for c in $calls; do printf 'syscalls:sys_enter_%s,' "$c"; done)context-switches
echo "redis-benchmark -t $TEST -r 1000 -c 50 -P $P -n $N, per request (proxy: $CONFIG)"
for target in direct proxy; do
  port=$RPORT pid=$REDIS
  [ "$target" = proxy ] && port=$PPORT pid=$PROXY
  perf stat -x, -e "$events" -p "$pid" -o "$work/stat" &
  stat=$!
  sleep 0.5
  rps=$(redis-benchmark -p "$port" -t "$TEST" -r 1000 -c 50 -P "$P" -n "$N" --csv | tail -1 | tr -d '"' | cut -d, -f2)
  kill -INT "$stat"
  wait "$stat" || true
  awk -F, -v t="$target" -v n="$N" -v rps="$rps" '
    $3 ~ /sys_enter_|context/ && $1 > 0 { name = $3; sub(/.*sys_enter_/, "", name); line = line sprintf(" %s %.3f", name, $1 / n); total += ($3 ~ /sys_enter/) ? $1 : 0 }
    END { printf "%-6s %9.0f rps  syscalls/req %.3f:%s\n", t, rps, total / n, line }' "$work/stat"
done
