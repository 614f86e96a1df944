#!/usr/bin/env bash
# Mixed read-heavy load, directly and through the proxy (tier on), interleaved: 90% GET on a
# skewed key space (70% of GETs on 100 hot keys, the rest on 100000) and 10% SET on 100000 keys,
# 50 connections. The load comes from examples/loadgen.rs: redis-benchmark runs one command per
# process, and three of them at once make a mix that follows each one's latency; loadgen draws
# every request from the same mix on each connection, so the mix is the same direct and through
# the proxy. It counts what completes in a WINDOW after WARMUP seconds. Three targets per
# repetition: Redis directly, the proxy with its tier on, and a proxy with the tier off (pure
# pass-through); for each, the CPU per client request of the server answering (redis-server
# directly, the proxy otherwise) and of redis-server itself: what the tier saves the shared Redis.
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
sed -e '/^\[cache\]/,/^\[/ s/^enabled = .*/enabled = false/' proxy.toml > "$work/plain.toml"
start_proxy "$work/plain.toml"
PLAIN_PORT=$PPORT PLAIN=$PROXY
start_proxy proxy.toml
# Keys exist and the tier is warm (and its tracking connection up) before measuring.
redis-benchmark -p "$RPORT" -t set -r 100000 -n 200000 -c 50 -q >/dev/null
sleep 1
redis-benchmark -p "$PPORT" -t get -r 100000 -n 300000 -c 50 -q >/dev/null

hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

one_run() { # port pid -> "rps set_share p50_ms server_us redis_us" (CPU per request over the window)
  local out="$work/loadgen" before after rbefore rafter
  target/release/examples/loadgen --port "$1" --warmup "$WARMUP" --seconds "$WINDOW" --set-percent "$SET_PERCENT" >"$out" &
  local gen=$!
  sleep "$WARMUP"
  before=$(ticks "$2") rbefore=$(ticks "$REDIS")
  sleep "$WINDOW"
  after=$(ticks "$2") rafter=$(ticks "$REDIS")
  wait "$gen"
  awk -v d=$((after - before)) -v r=$((rafter - rbefore)) -v hz="$hz" -v w="$WINDOW" '$8 != 0 { print "errors: " $0 > "/dev/stderr"; exit 1 }
    { printf "%s %s %s %.2f %.2f\n", $2, $4, $6, d / hz * 1e6 / ($2 * w), r / hz * 1e6 / ($2 * w) }' "$out"
}

declare -A rps p50 cpu rcpu
targets="direct tier-on tier-off"
for rep in $(seq "$REPS"); do
  for t in $targets; do
    case $t in
      direct) port=$RPORT pid=$REDIS ;;
      tier-on) port=$PPORT pid=$PROXY ;;
      tier-off) port=$PLAIN_PORT pid=$PLAIN ;;
    esac
    read -r r share l c rc < <(one_run "$port" "$pid")
    rps[$t]+="$r " p50[$t]+="$l " cpu[$t]+="$c " rcpu[$t]+="$rc "
    echo "rep $rep/$REPS $t: $r rps, p50 $l ms, server $c µs/req, redis $rc µs/req, SET share $share" >&2
  done
done
echo
echo "mixed $((100 - SET_PERCENT))% GET (70% of them on 100 hot keys) / $SET_PERCENT% SET, 50 connections, median of $REPS ${WINDOW}s windows:"
printf '%-9s %9s %6s %9s %16s %15s\n' target rps ratio "p50 ms" "server µs/req" "redis µs/req"
med() { printf '%s\n' $1 | median; }
base=$(med "${rps[direct]}")
for t in $targets; do
  m=$(med "${rps[$t]}")
  awk -v t="$t" -v m="$m" -v b="$base" -v l="$(med "${p50[$t]}")" -v c="$(med "${cpu[$t]}")" -v rc="$(med "${rcpu[$t]}")" \
    'BEGIN { printf "%-9s %9d %5.2fx %9.3f %16.2f %15.2f\n", t, m, m / b, l, c, rc }'
done
