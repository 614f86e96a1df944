#!/usr/bin/env bash
# Runs redis-benchmark against Redis directly and through the proxy, interleaved, and prints a
# table of medians with the ratio proxy/direct per row, the p50 latencies, and the proxy's CPU
# time per request (user+sys from /proc, over the whole redis-benchmark run).
#
# Rows:
#   pass    SET, GET  through a proxy with the local tier off (pure pass-through)
#   hit     GET -r 1000 through a proxy with the tier on, after a warm-up (cache hits); the 1000
#           keys hold 3-byte values (redis-benchmark's default -d)
#   hit1k   the same with 1024-byte values (-d 1024)
#   write SET -r 1000 through a proxy with the tier on (writes pay for invalidation)
#   ttl   SET, INCR, HSET -r 1000 with the tier on and default_ttl = "1h" on every key: SET gains
#         PX, INCR and HSET become MULTI + command + PEXPIRE NX + EXEC (not in the default SCENARIOS)
#
#   benches/compare.sh                      # defaults below
#   REPS=5 N1=200000 benches/compare.sh     # override any of them
#
# The last columns are CPU per request of the server answering (redis-server directly, the proxy
# otherwise) and how much of one core redis-benchmark itself used in the proxy run: near 100%,
# redis-benchmark (one thread) is the bottleneck and no server can go faster behind it.
#
# On the pass rows, twemproxy (Debian's nutcracker, installed when missing; PEER=0 leaves it
# out) runs the same load as a pass-through peer, interleaved with the others: a second table
# gives its ratio to direct next to the proxy's, its CPU per request, and Redis's CPU per
# request behind each (what each proxy's way of writing upstream costs the shared Redis).
#
# Starts its own redis-server, and for each row only the release proxy it needs (tier off or on),
# on free loopback ports; stops them at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}            # interleaved repetitions; the table shows medians
N1=${N1:-400000}           # requests per test unpipelined (2+ s each on a 2-core box)
N16=${N16:-4000000}        # requests per test at -P 16
CLIENTS=${CLIENTS:-50}
PIPELINES=${PIPELINES:-"1 16"}
SCENARIOS=${SCENARIOS:-"pass hit hit1k write"}
CONFIG=${CONFIG:-proxy.toml}   # the proxy configuration (the pass row turns the tier off)
PEER=${PEER:-1}

source "$(dirname "$0")/common.sh"
start_redis
REDIS_PID=$REDIS
sed -e '/^\[cache\]/,/^\[/ s/^enabled = .*/enabled = false/' "$CONFIG" > "$work/plain.toml"
grep -q '^enabled = false' "$work/plain.toml" || { echo "could not turn the tier off in $CONFIG" >&2; exit 1; }
sed -e '/^\[default\]/,/^\[/ s/^default_ttl = .*/default_ttl = "1h"/' "$CONFIG" > "$work/ttl.toml"
grep -q '^default_ttl = "1h"' "$work/ttl.toml" || { echo "could not set default_ttl in $CONFIG" >&2; exit 1; }
stop_proxy() { kill "$PROXY" 2>/dev/null || true; wait "$PROXY" 2>/dev/null || true; }

hz=$(getconf CLK_TCK)
TIMEFORMAT="%R %U %S"  # bash's time: wall, user, system seconds of redis-benchmark
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Only the proxy a row needs runs during it (a second proxy's tracking connection would make
# Redis send it a push per write, and both would compete for the same cores).
scenario_setup() { # name -> starts the proxy, sets TESTS_OF and EXTRA
  case "$1" in
    pass)
      start_proxy "$work/plain.toml"
      [ "$PEER" = 1 ] && start_peer
      TESTS_OF=set,get; EXTRA="" ;;
    hit | hit1k | write)
      start_proxy "$CONFIG"
      size=3; [ "$1" = hit1k ] && size=1024
      warm_tier "$size"
      TESTS_OF=get; [ "$1" = write ] && TESTS_OF=set
      EXTRA="-r 1000 -d $size" ;;
    ttl) start_proxy "$work/ttl.toml"; TESTS_OF=set,incr,hset; EXTRA="-r 1000" ;;
    *) echo "unknown scenario $1" >&2; exit 1 ;;
  esac
}

# results: scenario pipeline test target rps p50 cpu_us_per_request bench_core_percent
results="$work/results"
for s in $SCENARIOS; do
  scenario_setup "$s"
  ntests=$(echo "$TESTS_OF" | tr ',' '\n' | wc -l)
  for rep in $(seq "$REPS"); do
    for p in $PIPELINES; do
      n=$N1; [ "$p" -gt 1 ] && n=$N16
      targets="direct proxy"
      [ "$s" = pass ] && [ "$PEER" = 1 ] && targets="direct proxy peer"
      for target in $targets; do
        # CPU per request of the server answering: redis-server directly, the proxy otherwise;
        # and Redis's own behind it.
        port=$RPORT pid=$REDIS_PID
        [ "$target" = proxy ] && port=$PPORT pid=$PROXY
        [ "$target" = peer ] && port=$TPORT pid=$PEER_PID
        before=$(ticks "$pid") rbefore=$(ticks "$REDIS_PID")
        # shellcheck disable=SC2086
        { time redis-benchmark -p "$port" -t "$TESTS_OF" -c "$CLIENTS" -P "$p" -n "$n" $EXTRA --csv >"$work/out"; } 2>"$work/time"
        after=$(ticks "$pid") rafter=$(ticks "$REDIS_PID")
        cpu=$(awk -v d=$((after - before)) -v hz="$hz" -v req=$((n * ntests)) 'BEGIN { printf "%.2f", d / hz * 1e6 / req }')
        rcpu=$(awk -v d=$((rafter - rbefore)) -v hz="$hz" -v req=$((n * ntests)) 'BEGIN { printf "%.2f", d / hz * 1e6 / req }')
        bench=$(awk '{ printf "%.0f", ($2 + $3) / $1 * 100 }' "$work/time")
        tr -d '"' <"$work/out" | awk -F, -v s="$s" -v t="$target" -v p="$p" -v cpu="$cpu" -v b="$bench" -v r="$rcpu" \
          'NR > 1 { print s, p, $1, t, $2, $5, cpu, b, r }' >> "$results"
      done
    done
    echo "$s: rep $rep/$REPS done" >&2
  done
  stop_proxy
  [ "$s" = pass ] && [ "$PEER" = 1 ] && stop_peer
done

field() { awk -v s="$1" -v p="$2" -v x="$3" -v t="$4" -v col="$5" '$1 == s && $2 == p && $3 == x && $4 == t { print $col }' "$results" | median; }

echo
echo "redis-benchmark -c $CLIENTS, n=$N1 (-P 1) / $N16 (-P 16), median of $REPS interleaved runs"
echo
printf '| %-5s | %-4s | %-3s | %11s | %11s | %6s | %10s | %9s | %8s | %12s | %12s | %11s |\n' row test -P "direct rps" "proxy rps" ratio "direct p50" "proxy p50" "Δp50 ms" "redis µs/req" "proxy µs/req" "bench core"
printf '|-------|------|-----|-------------|-------------|--------|------------|-----------|----------|--------------|--------------|-------------|\n'
for s in $SCENARIOS; do
  for p in $PIPELINES; do
    for x in $(awk -v s="$s" -v p="$p" '$1 == s && $2 == p { print $3 }' "$results" | awk '!seen[$0]++'); do
      awk -v s="$s" -v x="$x" -v p="$p" -v d="$(field "$s" "$p" "$x" direct 5)" -v q="$(field "$s" "$p" "$x" proxy 5)" \
        -v dl="$(field "$s" "$p" "$x" direct 6)" -v pl="$(field "$s" "$p" "$x" proxy 6)" \
        -v rcpu="$(field "$s" "$p" "$x" direct 7)" -v cpu="$(field "$s" "$p" "$x" proxy 7)" \
        -v bench="$(field "$s" "$p" "$x" proxy 8)" 'BEGIN {
        printf "| %-5s | %-4s | %-3s | %11.0f | %11.0f | %5.2fx | %10.3f | %9.3f | %+8.3f | %12s | %12s | %10s%% |\n", s, x, p, d, q, q / d, dl, pl, pl - dl, rcpu, cpu, bench }'
    done
  done
done

if [ "$PEER" = 1 ] && grep -q ' peer ' "$results"; then
  echo
  echo "pass-through peers in the same run: ratio to direct, CPU per request of each proxy, and of Redis behind it"
  echo
  printf '| %-4s | %-3s | %11s | %10s | %10s | %12s | %11s | %12s | %11s |\n' test -P "direct rps" "nearcache" "twemproxy" "nearcache µs" "twemproxy µs" "redis µs (nc)" "redis µs (tw)"
  printf '|------|-----|-------------|------------|------------|--------------|-------------|---------------|---------------|\n'
  for p in $PIPELINES; do
    for x in $(awk -v p="$p" '$1 == "pass" && $2 == p { print $3 }' "$results" | awk '!seen[$0]++'); do
      awk -v x="$x" -v p="$p" -v d="$(field pass "$p" "$x" direct 5)" -v q="$(field pass "$p" "$x" proxy 5)" \
        -v t="$(field pass "$p" "$x" peer 5)" -v qc="$(field pass "$p" "$x" proxy 7)" -v tc="$(field pass "$p" "$x" peer 7)" \
        -v qr="$(field pass "$p" "$x" proxy 9)" -v tr="$(field pass "$p" "$x" peer 9)" 'BEGIN {
        printf "| %-4s | %-3s | %11.0f | %9.2fx | %9.2fx | %12s | %11s | %13s | %13s |\n", x, p, d, q / d, t / d, qc, tc, qr, tr }'
    done
  done
fi
