#!/usr/bin/env bash
# How many client requests each write to Redis carries: Redis's own count of read events
# (INFO stats total_reads_processed) per client request, for redis-benchmark GET unpipelined,
# directly (1 read per request), through the proxy with the tier off (pure pass-through) and
# through twemproxy (Debian's nutcracker, installed when missing; PEER=0 leaves it out), at a few client counts.
# Fewer reads per request: Redis spends fewer system calls per request (see compare.sh's
# "Redis µs/req" columns).
#
#   benches/upstream_writes.sh
#   CLIENTS="8 50 200" N=400000 benches/upstream_writes.sh
CLIENTS=${CLIENTS:-"8 50"}
N=${N:-200000}
PEER=${PEER:-1}
source "$(dirname "$0")/common.sh"
start_redis
sed -e '/^\[cache\]/,/^\[/ s/^enabled = .*/enabled = false/' proxy.toml > "$work/plain.toml"
start_proxy "$work/plain.toml"
targets="direct nearcache"
if [ "$PEER" = 1 ]; then
  start_peer
  targets="$targets twemproxy"
fi
reads() { redis-cli -p "$RPORT" info stats | awk -F: '/^total_reads_processed/ { print $2 + 0 }'; }
echo "redis-benchmark -t get -n $N, unpipelined; Redis read events per client request:"
for c in $CLIENTS; do
  for t in $targets; do
    case $t in direct) port=$RPORT ;; nearcache) port=$PPORT ;; twemproxy) port=$TPORT ;; esac
    before=$(reads)
    rps=$(redis-benchmark -p "$port" -t get -c "$c" -n "$N" --csv | tail -1 | tr -d '"' | cut -d, -f2)
    after=$(reads)
    awk -v t="$t" -v c="$c" -v r=$((after - before)) -v rps="$rps" -v n="$N" \
      'BEGIN { printf "-c %-4s %-10s %8.0f rps   %.3f reads/request (%.1f requests per upstream write)\n", c, t, rps, r / n, n / r }'
  done
done
