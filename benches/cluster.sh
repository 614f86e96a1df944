#!/usr/bin/env bash
# The Redis Cluster row: redis-benchmark through the proxy in front of a 3-master cluster
# (a proxy with the tier off: pass-through GET and SET; one with the tier on: cache-hit GET on
# 1000 keys) against the same cluster driven directly with `redis-benchmark --cluster`, runs
# interleaved, as ratios of requests per second; with the proxy's CPU per client request.
#
#   benches/cluster.sh                # REPS=3, N=200000, C=50, P=1
#   REPS=5 P=16 benches/cluster.sh
#   PROXY_BIN=old/nearcache benches/cluster.sh   # another build
REPS=${REPS:-3}
N=${N:-200000}
C=${C:-50}
P=${P:-1}
source "$(dirname "$0")/common.sh"

seeds=()
for _ in 1 2 3; do
  while :; do
    port=$(free_port)
    [ "$port" -lt 55000 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null && break
  done
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --cluster-enabled yes --cluster-config-file "$work/nodes-$port.conf" --cluster-node-timeout 5000 >/dev/null &
  PIDS+=($!)
  wait_ping "$port"
  seeds+=("127.0.0.1:$port")
done
redis-cli --cluster create "${seeds[@]}" --cluster-yes >/dev/null
until redis-cli --cluster check "${seeds[0]}" 2>/dev/null | grep -q "All 16384 slots covered" &&
  redis-cli -p "${seeds[0]##*:}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
seed=${seeds[0]##*:}

cluster_line=$(printf 'cluster = [%s]' "$(printf '"%s",' "${seeds[@]}" | sed 's/,$//')")
proxy_with() { # tier (true|false) -> sets PPORT and PROXY
  local config="$work/proxy-$1.toml"
  sed -e '/^\[cache\]/,/^\[/ s/^enabled = .*/enabled = '"$1"'/' -e "s/^cluster = \[\]/$cluster_line/" \
    -e '/^\[upstream\]/,/^\[/ s/^address = .*//' proxy.toml >"$config"
  PPORT=$(free_port)
  RUST_LOG=warn "${PROXY_BIN:-target/release/nearcache}" --config "$config" --listen "127.0.0.1:$PPORT" >>"$work/proxy.log" 2>&1 &
  PROXY=$!
  PIDS+=("$PROXY")
  wait_ping "$PPORT"
}
proxy_with false
PLAIN_PORT=$PPORT PLAIN=$PROXY
proxy_with true
TIER_PORT=$PPORT TIER=$PROXY

hz=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rps() { awk -F'"' '/^"/ && $2 != "test" { print $4; exit }'; }
bench() { # name port pid extra-args... -> "rps us_per_request" (CPU of pid, or - for none)
  local port=$2 pid=$3 before after out
  shift 3
  before=$([ "$pid" = - ] && echo 0 || ticks "$pid")
  out=$(redis-benchmark -p "$port" -n "$N" -c "$C" -P "$P" --csv "$@" 2>/dev/null | rps)
  after=$([ "$pid" = - ] && echo 0 || ticks "$pid")
  echo "$out $(awk -v t=$((after - before)) -v hz="$hz" -v n="$N" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }')"
}

# Keys for the hit runs exist on the cluster, and the tier has read them.
redis-benchmark --cluster -p "$seed" -t set -r 1000 -n 20000 -c 50 -q >/dev/null
sleep 1
redis-benchmark -p "$TIER_PORT" -t get -r 1000 -n 100000 -c 50 -q >/dev/null

echo "# 3-master cluster, -n $N -c $C -P $P, $REPS interleaved runs; ratio = through the proxy / direct (redis-benchmark --cluster)"
declare -A got
for rep in $(seq "$REPS"); do
  for test in get set; do
    got[direct_$test]+="$(bench direct "$seed" - --cluster -t "$test" -r 100000 | cut -d' ' -f1) "
    got[plain_$test]+="$(bench plain "$PLAIN_PORT" "$PLAIN" -t "$test" -r 100000) ;"
  done
  got[direct_hit]+="$(bench direct "$seed" - --cluster -t get -r 1000 | cut -d' ' -f1) "
  got[tier_hit]+="$(bench tier "$TIER_PORT" "$TIER" -t get -r 1000) ;"
done
median_of() { tr ' ' '\n' | grep -v '^$' | median; }
row() { # label direct-key proxy-key
  local direct proxied cpu
  direct=$(echo "${got[$2]}" | median_of)
  proxied=$(echo "${got[$3]}" | tr ';' '\n' | awk 'NF { print $1 }' | median)
  cpu=$(echo "${got[$3]}" | tr ';' '\n' | awk 'NF { print $2 }' | median)
  printf '%-28s direct %10.0f  proxy %10.0f  ratio %.2fx  proxy CPU %s us/request\n' \
    "$1" "$direct" "$proxied" "$(awk -v a="$proxied" -v b="$direct" 'BEGIN { print a / b }')" "$cpu"
}
row "GET pass-through (tier off)" direct_get plain_get
row "SET pass-through (tier off)" direct_set plain_set
row "GET cache hit (tier on)" direct_hit tier_hit
