#!/usr/bin/env bash
# Two proxies, one redis-benchmark load, alternating: for differences smaller than this shared
# machine's run-to-run noise (10-20%), which compare.sh's three repetitions cannot separate.
# Both proxies run in front of the same redis-server for the whole run (idle while the other
# is measured); each repetition measures A then B; prints each run, then per proxy the medians
# of throughput, the proxy's CPU per request and Redis's CPU per request behind it.
#
#   A=proxy.toml B=plain.toml benches/ab.sh                 # tier on vs tier off, SET -r 1000
#   A=proxy.toml B=proxy.toml BIN_B=old/nearcache benches/ab.sh   # two builds, one config
#   LOAD="-t set -r 1000 -c 50 -P 16 -n 2000000" REPS=9 A=... B=... benches/ab.sh
#   A=plain.toml B=twemproxy LOAD="-t get -c 50 -n 300000" benches/ab.sh   # against the peer
#     (plain.toml: sed "/^\[cache\]/,/^\[/ s/^enabled = .*/enabled = false/" proxy.toml)
#
# B defaults to A with the tier off (cache.enabled = false); B=twemproxy runs Debian's nutcracker
# (installed when missing) in front of the same Redis instead of a second proxy.
A=${A:-proxy.toml}
B=${B:-}
LOAD=${LOAD:-"-t set -r 1000 -c 50 -P 1 -n 200000"}
REPS=${REPS:-15}
source "$(dirname "$0")/common.sh"
if [ -z "$B" ]; then
  B="$work/b.toml"
  sed -e '/^\[cache\]/,/^\[/ s/^enabled = .*/enabled = false/' "$A" >"$B"
fi
start_redis
PROXY_BIN=${BIN_A:-} start_proxy "$A"
APORT=$PPORT APID=$PROXY
if [ "$B" = twemproxy ]; then
  start_peer
  BPORT=$TPORT BPID=$PEER_PID
else
  PROXY_BIN=${BIN_B:-} start_proxy "$B"
  BPORT=$PPORT BPID=$PROXY
fi
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
n=$(echo "$LOAD" | sed -E 's/.*-n ([0-9]+).*/\1/')
echo "redis-benchmark $LOAD; A=$A${BIN_A:+ ($BIN_A)}, B=$B${BIN_B:+ ($BIN_B)}; $REPS alternations"
for rep in $(seq "$REPS"); do
  for t in A B; do
    port=$APORT pid=$APID
    [ "$t" = B ] && port=$BPORT pid=$BPID
    before=$(ticks "$pid") rbefore=$(ticks "$REDIS")
    # shellcheck disable=SC2086
    rps=$(redis-benchmark -p "$port" $LOAD --csv 2> >(grep -v "Could not fetch server CONFIG" >&2) | tail -1 | tr -d '"' | cut -d, -f2)
    after=$(ticks "$pid") rafter=$(ticks "$REDIS")
    awk -v t="$t" -v rps="$rps" -v p=$((after - before)) -v r=$((rafter - rbefore)) -v hz="$hz" -v n="$n" \
      'BEGIN { printf "%s %.0f %.2f %.2f\n", t, rps, p / hz * 1e6 / n, r / hz * 1e6 / n }' | tee -a "$work/runs"
  done
done
echo
echo "| proxy | median rps | proxy µs/req | redis µs/req |"
echo "|-------|-----------:|-------------:|-------------:|"
for t in A B; do
  col() { awk -v t="$t" -v c="$1" '$1 == t { print $c }' "$work/runs" | median; }
  echo "| $t | $(col 2) | $(col 3) | $(col 4) |"
done
