#!/usr/bin/env bash
# Runs redis-benchmark against Redis directly and through the proxy, interleaved, and prints a
# table of medians with the ratio proxy/direct per row, the p50 latencies, and the proxy's CPU
# time per request (user+sys from /proc, over the whole redis-benchmark run).
#
#   benches/compare.sh                      # defaults below
#   REPS=5 N1=200000 benches/compare.sh     # override any of them
#
# Starts its own redis-server and release proxy on free loopback ports and stops them at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}            # interleaved repetitions; the table shows medians
N1=${N1:-400000}           # requests per test unpipelined (2+ s each on a 2-core box)
N16=${N16:-4000000}        # requests per test at -P 16
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-set,get}
PIPELINES=${PIPELINES:-"1 16"}
CONFIG=${CONFIG:-proxy.toml}   # the proxy configuration to benchmark

scripts/ensure-redis.sh
cargo build --release --quiet

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    if port_free "$p"; then echo "$p"; return; fi
  done
  echo "no free port" >&2; exit 1
}
wait_ping() {
  for _ in $(seq 200); do
    if redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; then return 0; fi
    sleep 0.05
  done
  echo "nothing answers on port $1" >&2; exit 1
}

RPORT=$(pick_port)
PPORT=$(pick_port)
work=$(mktemp -d)
cleanup() {
  [ -n "${PROXY_PID:-}" ] && kill "$PROXY_PID" 2>/dev/null || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
REDIS_PID=$!
wait_ping "$RPORT"
RUST_LOG=warn target/release/nearcache --config "$CONFIG" --listen "127.0.0.1:$PPORT" --upstream "127.0.0.1:$RPORT" &
PROXY_PID=$!
wait_ping "$PPORT"

ticks() { awk '{print $14 + $15}' "/proc/$PROXY_PID/stat"; }
hz=$(getconf CLK_TCK)
tests_count=$(echo "$TESTS" | tr ',' '\n' | wc -l)

# results: target pipeline test rps p50 cpu_us_per_request
results="$work/results"
for rep in $(seq "$REPS"); do
  for p in $PIPELINES; do
    n=$N1; [ "$p" -gt 1 ] && n=$N16
    for target in direct proxy; do
      port=$RPORT; [ "$target" = proxy ] && port=$PPORT
      before=$(ticks)
      out=$(redis-benchmark -p "$port" -t "$TESTS" -c "$CLIENTS" -P "$p" -n "$n" --csv)
      after=$(ticks)
      cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v req=$((n * tests_count)) 'BEGIN { printf "%.2f", d / hz * 1e6 / req }')
      [ "$target" = direct ] && cpu="-"
      echo "$out" | tr -d '"' | awk -F, -v t="$target" -v p="$p" -v cpu="$cpu" 'NR > 1 { print t, p, $1, $2, $5, cpu }' >> "$results"
    done
    echo "rep $rep/$REPS, -P $p done" >&2
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
field() { awk -v t="$1" -v p="$2" -v x="$3" -v col="$4" '$1 == t && $2 == p && $3 == x { print $col }' "$results" | median; }

echo
echo "redis-benchmark -c $CLIENTS -t $TESTS, n=$N1 (-P 1) / $N16 (-P 16), median of $REPS interleaved runs"
echo
printf '| %-5s | %-3s | %12s | %12s | %6s | %9s | %9s | %8s | %14s |\n' test -P "direct rps" "proxy rps" ratio "direct p50" "proxy p50" "Δp50 ms" "proxy µs/req"
printf '|-------|-----|--------------|--------------|--------|-----------|-----------|----------|----------------|\n'
for p in $PIPELINES; do
  for x in $(awk -v p="$p" '$2 == p { print $3 }' "$results" | awk '!seen[$0]++'); do
    drps=$(field direct "$p" "$x" 4); prps=$(field proxy "$p" "$x" 4)
    dp50=$(field direct "$p" "$x" 5); pp50=$(field proxy "$p" "$x" 5)
    cpu=$(field proxy "$p" "$x" 6)
    awk -v x="$x" -v p="$p" -v d="$drps" -v q="$prps" -v dl="$dp50" -v pl="$pp50" -v cpu="$cpu" 'BEGIN {
      printf "| %-5s | %-3s | %12.0f | %12.0f | %5.2fx | %9.3f | %9.3f | %+8.3f | %14s |\n", x, p, d, q, q / d, dl, pl, pl - dl, cpu }'
  done
done
