#!/usr/bin/env bash
# How much memory the tier really takes against cache.max_memory: reads of many distinct keys
# through the proxy (more than fit), with writes churning them, then the proxy's resident
# memory above its idle baseline compared with max_memory and with what the tier counts.
#
#   benches/tier_memory.sh                         # 64MiB tier, 1 KiB values, 200000 keys
#   MAX_MEMORY=128MiB VALUE=256 KEYS=1000000 benches/tier_memory.sh
MAX_MEMORY=${MAX_MEMORY:-64MiB}
VALUE=${VALUE:-1024}
KEYS=${KEYS:-200000}
source "$(dirname "$0")/common.sh"
start_redis
printf '[cache]\nmax_memory = "%s"\nmax_entry_size = "64KiB"\n' "$MAX_MEMORY" > "$work/proxy.toml"
start_proxy "$work/proxy.toml"
rss() { awk '/VmRSS/ { print $2 }' "/proc/$PROXY/status"; }
info() { redis-cli -p "$PPORT" PROXY INFO cache | tr -d '\r' | awk -F: -v k="$1" '$1 == k { print $2 }'; }

redis-benchmark -p "$RPORT" -t set -r "$KEYS" -n $((KEYS * 2)) -d "$VALUE" -c 50 -P 16 -q >/dev/null
sleep 1
base=$(rss)
for round in 1 2 3; do
  # Reads fill the tier past its bound; writes (through the proxy) invalidate and churn.
  redis-benchmark -p "$PPORT" -t get -r "$KEYS" -n $((KEYS * 2)) -c 50 -P 16 -q >/dev/null
  redis-benchmark -p "$PPORT" -t set -r "$KEYS" -n $((KEYS / 2)) -d "$VALUE" -c 50 -P 16 -q >/dev/null
  echo "round $round: rss $(rss) KiB, tier counts $(info cache_bytes) bytes in $(info cache_entries) keys" \
    "(max $(info cache_max_bytes)), evictions $(info cache_evictions)"
done
redis-benchmark -p "$PPORT" -t get -r "$KEYS" -n $((KEYS * 2)) -c 50 -P 16 -q >/dev/null
after=$(rss)
counted=$(info cache_bytes)
max=$(info cache_max_bytes)
awk -v b="$base" -v a="$after" -v c="$counted" -v m="$max" 'BEGIN {
  grown = (a - b) * 1024
  printf "rss above baseline %.1f MiB; the tier counts %.1f MiB (%.1f%% of max_memory %.1f MiB); rss growth / max_memory = %.2f\n",
    grown / 1048576, c / 1048576, 100 * c / m, m / 1048576, grown / m }'
