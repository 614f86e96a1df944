#!/usr/bin/env bash
# Mixed read-heavy load, directly and through the proxy (tier on), interleaved: 90% GET on a
# skewed key space (70% of GETs on 100 hot keys, the rest on 100000) and 10% SET on 100000 keys,
# 50 connections. The load comes from examples/loadgen.rs: redis-benchmark runs one command per
# process, and three of them at once make a mix that follows each one's latency; loadgen draws
# every request from the same mix on each connection, so the mix is the same direct and through
# the proxy. It counts what completes in a WINDOW after WARMUP seconds; the CPU per request is
# that of the server answering (redis-server directly, the proxy otherwise) over the window.
#
#   benches/mixed.sh                      # REPS=3, WINDOW=8 s
#   REPS=5 WINDOW=15 SET_PERCENT=20 benches/mixed.sh
REPS=${REPS:-3}
WARMUP=${WARMUP:-1}
WINDOW=${WINDOW:-8}
SET_PERCENT=${SET_PERCENT:-10}
source "$(dirname "$0")/common.sh"
cargo build --release --quiet --example loadgen
start_redis
start_proxy proxy.toml
# Keys exist and the tier is warm (and its tracking connection up) before measuring.
redis-benchmark -p "$RPORT" -t set -r 100000 -n 200000 -c 50 -q >/dev/null
sleep 1
redis-benchmark -p "$PPORT" -t get -r 100000 -n 300000 -c 50 -q >/dev/null

hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

one_run() { # port pid -> "rps set_share p50_ms cpu_us_per_request" (CPU of pid over the window)
  local out="$work/loadgen" before after
  target/release/examples/loadgen --port "$1" --warmup "$WARMUP" --seconds "$WINDOW" --set-percent "$SET_PERCENT" >"$out" &
  local gen=$!
  sleep "$WARMUP"
  before=$(ticks "$2")
  sleep "$WINDOW"
  after=$(ticks "$2")
  wait "$gen"
  awk -v d=$((after - before)) -v hz="$hz" -v w="$WINDOW" '$8 != 0 { print "errors: " $0 > "/dev/stderr"; exit 1 }
    { printf "%s %s %s %.2f\n", $2, $4, $6, d / hz * 1e6 / ($2 * w) }' "$out"
}

direct=() proxied=() dp50=() pp50=() dcpu=() pcpu=()
for rep in $(seq "$REPS"); do
  read -r rps share p50 cpu < <(one_run "$RPORT" "$REDIS"); direct+=("$rps") dp50+=("$p50") dcpu+=("$cpu")
  read -r rps share p50 cpu < <(one_run "$PPORT" "$PROXY"); proxied+=("$rps") pp50+=("$p50") pcpu+=("$cpu")
  echo "rep $rep/$REPS: direct ${direct[-1]} rps (p50 ${dp50[-1]} ms, redis ${dcpu[-1]} µs/req)," \
    "proxy ${proxied[-1]} rps (p50 ${pp50[-1]} ms, proxy ${pcpu[-1]} µs/req), SET share $share" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "mixed $((100 - SET_PERCENT))% GET (70% of them on 100 hot keys) / $SET_PERCENT% SET, 50 connections, median of $REPS ${WINDOW}s windows:"
awk -v d="$(median "${direct[@]}")" -v p="$(median "${proxied[@]}")" -v dl="$(median "${dp50[@]}")" -v pl="$(median "${pp50[@]}")" \
  -v dc="$(median "${dcpu[@]}")" -v pc="$(median "${pcpu[@]}")" 'BEGIN {
  printf "direct %d rps (p50 %.3f ms, redis %.2f µs/req), proxy %d rps (p50 %.3f ms, proxy %.2f µs/req): %.2fx\n", d, dl, dc, p, pl, pc, p / d }'
