#!/usr/bin/env bash
PER_CLIENT=${PER_CLIENT:-20000}
source "$(dirname "$0")/common.sh"
start_redis
start_proxy ${CONF:-proxy.toml}
redis-benchmark -p "$RPORT" -t set -r 100000 -n 200000 -c 50 -q >/dev/null
sleep 1
redis-benchmark -p "$PPORT" -t get -r 100000 -n 300000 -c 50 -q >/dev/null
ut() { awk '{print $14+$15}' "/proc/$1/stat"; }
for port in $RPORT $PPORT; do
  r0=$(ut $REDIS); p0=$(ut $PROXY); start=$(date +%s.%N)
  { time redis-benchmark -p "$port" -c 35 -n $((35 * PER_CLIENT)) -r 100 -q GET 'key:__rand_int__' >/dev/null; } 2>$work/ta &
  a=$!
  { time redis-benchmark -p "$port" -c 10 -n $((10 * PER_CLIENT)) -r 100000 -q GET 'key:__rand_int__' >/dev/null; } 2>$work/tb &
  b=$!
  { time redis-benchmark -p "$port" -c 5 -n $((5 * PER_CLIENT)) -r 100000 -q SET 'key:__rand_int__' xxx >/dev/null ; } 2>$work/tc &
  c=$!
  wait $a $b $c; end=$(date +%s.%N)
  echo "port $port: wall $(echo "$end - $start" | bc) redis $(( $(ut $REDIS) - r0)) proxy $(( $(ut $PROXY) - p0)) ticks; benches: $(tr '\n' ' ' < $work/ta) | $(tr '\n' ' ' < $work/tb) | $(tr '\n' ' ' < $work/tc)"
done
redis-cli -p $PPORT proxy info | grep -E "hits|misses|invalid|fills|entries" 
