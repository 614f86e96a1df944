#!/usr/bin/env bash
# Mixed read-heavy load, directly and through the proxy (tier on), interleaved: about 90% GET on a
# skewed key space and 10% SET, from three redis-benchmark processes running at once:
#   hot reads:  GET on 100 keys        (35 clients)
#   cold reads: GET on 100000 keys     (10 clients)
#   writes:     SET on 100000 keys     ( 5 clients)
# Each process runs for the same number of requests per client, so the mix follows the client
# counts; the table sums what the three achieved.
#
#   benches/mixed.sh                      # REPS=3, 20000 requests per client
#   REPS=5 PER_CLIENT=40000 benches/mixed.sh
REPS=${REPS:-3}
PER_CLIENT=${PER_CLIENT:-20000}
PIPELINE=${PIPELINE:-1}
source "$(dirname "$0")/common.sh"
start_redis
start_proxy proxy.toml
# Keys exist and the tier is warm (and its tracking connection up) before measuring.
redis-benchmark -p "$RPORT" -t set -r 100000 -n 200000 -c 50 -q >/dev/null
sleep 1
redis-benchmark -p "$PPORT" -t get -r 100000 -n 300000 -c 50 -q >/dev/null

one_run() { # port -> total requests per second of the three processes
  local port=$1 start end
  start=$(date +%s.%N)
  redis-benchmark -p "$port" -c 35 -n $((35 * PER_CLIENT)) -r 100 -P "$PIPELINE" -q GET 'key:__rand_int__' >/dev/null &
  local a=$!
  redis-benchmark -p "$port" -c 10 -n $((10 * PER_CLIENT)) -r 100000 -P "$PIPELINE" -q GET 'key:__rand_int__' >/dev/null &
  local b=$!
  redis-benchmark -p "$port" -c 5 -n $((5 * PER_CLIENT)) -r 100000 -P "$PIPELINE" -q SET 'key:__rand_int__' xxx >/dev/null &
  local c=$!
  wait $a $b $c
  end=$(date +%s.%N)
  awk -v n=$((50 * PER_CLIENT)) -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }'
}

direct=() proxied=()
for rep in $(seq "$REPS"); do
  direct+=("$(one_run "$RPORT")")
  proxied+=("$(one_run "$PPORT")")
  echo "rep $rep/$REPS: direct ${direct[-1]} rps, proxy ${proxied[-1]} rps" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
d=$(median "${direct[@]}") p=$(median "${proxied[@]}")
echo
echo "mixed 90% GET (70% on 100 hot keys) / 10% SET, 50 clients, -P $PIPELINE, median of $REPS (wall-clock rps of all three):"
awk -v d="$d" -v p="$p" 'BEGIN { printf "direct %d rps, proxy %d rps: %.2fx\n", d, p, p / d }'
