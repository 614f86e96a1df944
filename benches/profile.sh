#!/usr/bin/env bash
# Records a CPU profile of the release proxy (perf, call graphs) under one redis-benchmark load
# and prints where the time goes: user vs kernel, then the proxy's own top functions.
#
#   benches/profile.sh                                   # GET -r 1000 -P 16 through the tier
#   TEST=set P=1 benches/profile.sh                      # any test and pipeline depth
#   CONFIG=my.toml TEST=get P=16 N=4000000 benches/profile.sh
# The profile stays in perf.data.proxy for `perf report -i perf.data.proxy`.
CONFIG=${CONFIG:-proxy.toml}
TEST=${TEST:-get}
P=${P:-16}
N=${N:-2000000}
source "$(dirname "$0")/common.sh"
start_redis
start_proxy "$CONFIG"
warm_tier
perf record -F 2000 -g -p "$PROXY" -o perf.data.proxy 2>/dev/null &
rec=$!
sleep 0.5
redis-benchmark -p "$PPORT" -t "$TEST" -r 1000 -c 50 -P "$P" -n "$N" -q | tr '\r' '\n' | grep -a 'requests per second' | tail -1
kill -INT "$rec"
wait "$rec" || true
perf report -i perf.data.proxy --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9.]+%'
perf report -i perf.data.proxy --no-children --dso nearcache --stdio --percent-limit 0.7 -g none 2>/dev/null |
  grep -E '^ +[0-9.]+%' | head -25
