#!/usr/bin/env bash
# Redis a network hop away: a relay (examples/delay_relay.rs) delays every byte between the
# load and Redis, and between the proxy and Redis, by DELAY microseconds one way. The direct
# run and the proxy's upstream go through the same relay; the proxy itself is where the
# application is (no delay), so its cache hits skip the hop. Interleaved, median of REPS.
#
# Rows, at each delay:
#   pass   SET, GET through the proxy with the tier off (the hop is paid either way), and
#          through twemproxy (Debian's nutcracker, installed when missing) in front of the same
#          relay: the pass-through peer, measured in the same rounds
#   hit    GET -r 1000 through the proxy with the tier on, warm
#   mixed  examples/loadgen.rs: 90% GET on a skewed key space (70% of them on 100 hot keys),
#          10% SET, through the proxy with the tier on
# and the relay's own accuracy: how late it wrote chunks past their deadline (p50, p99).
#
#   benches/network.sh                          # DELAYS="100 250 500", CLIENTS=8, REPS=3
#   DELAYS=250 CLIENTS=50 benches/network.sh    # CPU-bound at -c 50 on a 2-core box: context only
REPS=${REPS:-3}
DELAYS=${DELAYS:-"100 250 500"}
CLIENTS=${CLIENTS:-8}
N=${N:-20000}             # requests per redis-benchmark run through the hop
N_HIT=${N_HIT:-100000}    # cache hits are faster
WINDOW=${WINDOW:-5}       # seconds per mixed run
CONFIG=${CONFIG:-proxy.toml}

source "$(dirname "$0")/common.sh"
cargo build --release --quiet --example delay_relay --example loadgen
start_redis
sed -e '/^\[cache\]/,/^\[/ s/^enabled = .*/enabled = false/' "$CONFIG" > "$work/plain.toml"
grep -q '^enabled = false' "$work/plain.toml" || { echo "could not turn the tier off in $CONFIG" >&2; exit 1; }
stop_proxy() { kill "$PROXY" 2>/dev/null || true; wait "$PROXY" 2>/dev/null || true; }
# Keys for the mixed load (loadgen's key space) and for -r 1000.
redis-benchmark -p "$RPORT" -t set -r 100000 -n 200000 -c 50 -q >/dev/null

results="$work/results"   # row delay test target rps p50_ms
bench() { # row delay port tests n extra...
  local row=$1 delay=$2 port=$3 tests=$4 n=$5 target=$6
  shift 6
  redis-benchmark -p "$port" -t "$tests" -c "$CLIENTS" -n "$n" "$@" --csv | tr -d '"' |
    awk -F, -v r="$row" -v d="$delay" -v t="$target" 'NR > 1 { print r, d, $1, t, $2, $5 }' >> "$results"
}
mixed() { # delay port target
  target/release/examples/loadgen --port "$2" --clients "$CLIENTS" --warmup 1 --seconds "$WINDOW" |
    awk -v d="$1" -v t="$3" '{ print "mixed", d, "MIX", t, $2, $6 }' >> "$results"
}

accuracy=()
for delay in $DELAYS; do
  RELAY=$(free_port)
  target/release/examples/delay_relay --listen "127.0.0.1:$RELAY" --target "127.0.0.1:$RPORT" \
    --delay-us "$delay" 2>"$work/relay.log" &
  relay_pid=$!
  PIDS+=("$relay_pid")
  wait_ping "$RELAY"

  start_proxy "$work/plain.toml" "$RELAY"
  start_peer "$RELAY"
  for rep in $(seq "$REPS"); do
    bench pass "$delay" "$RELAY" set,get "$N" direct
    bench pass "$delay" "$PPORT" set,get "$N" proxy
    bench pass "$delay" "$TPORT" set,get "$N" peer
  done
  stop_peer
  stop_proxy

  start_proxy "$CONFIG" "$RELAY"
  redis-benchmark -p "$PPORT" -t get -r 1000 -n 20000 -c "$CLIENTS" -q >/dev/null
  redis-benchmark -p "$PPORT" -t get -r 100000 -n 100000 -c "$CLIENTS" -q >/dev/null
  for rep in $(seq "$REPS"); do
    bench hit "$delay" "$RELAY" get "$N" direct -r 1000
    bench hit "$delay" "$PPORT" get "$N_HIT" proxy -r 1000
    mixed "$delay" "$RELAY" direct
    mixed "$delay" "$PPORT" proxy
  done
  stop_proxy

  kill -TERM "$relay_pid"
  wait "$relay_pid" 2>/dev/null || true
  accuracy+=("$delay us: $(grep '^relay' "$work/relay.log" | tail -1)")
  echo "delay $delay us done" >&2
done

field() { awk -v r="$1" -v d="$2" -v x="$3" -v t="$4" -v col="$5" '$1 == r && $2 == d && $3 == x && $4 == t { print $col }' "$results" | median; }

echo
echo "one-way delay to Redis through examples/delay_relay.rs, -c $CLIENTS, median of $REPS interleaved runs;"
echo "twemproxy (peer) on the pass-through rows, in front of the same relay"
echo
printf '| %-5s | %-4s | %-8s | %11s | %11s | %6s | %10s | %9s | %8s | %6s | %13s |\n' row test "delay µs" "direct rps" "proxy rps" ratio "direct p50" "proxy p50" "Δp50 ms" "peer" "peer Δp50 ms"
printf '|-------|------|----------|-------------|-------------|--------|------------|-----------|----------|--------|---------------|\n'
for delay in $DELAYS; do
  for row in pass hit mixed; do
    for x in $(awk -v r="$row" -v d="$delay" '$1 == r && $2 == d { print $3 }' "$results" | awk '!seen[$0]++'); do
      awk -v r="$row" -v x="$x" -v dl="$delay" -v d="$(field "$row" "$delay" "$x" direct 5)" \
        -v q="$(field "$row" "$delay" "$x" proxy 5)" -v dp="$(field "$row" "$delay" "$x" direct 6)" \
        -v pp="$(field "$row" "$delay" "$x" proxy 6)" -v t="$(field "$row" "$delay" "$x" peer 5)" \
        -v tp="$(field "$row" "$delay" "$x" peer 6)" 'BEGIN {
        peer = "-"; peerd = "-"
        if (t != "") { peer = sprintf("%.2fx", t / d); peerd = sprintf("%+.3f", tp - dp) }
        printf "| %-5s | %-4s | %8s | %11.0f | %11.0f | %5.2fx | %10.3f | %9.3f | %+8.3f | %6s | %13s |\n", r, x, dl, d, q, q / d, dp, pp, pp - dp, peer, peerd }'
    done
  done
done
echo
echo "relay accuracy (how late chunks were written past their deadline, µs):"
printf '  %s\n' "${accuracy[@]}"
