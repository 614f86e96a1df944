#!/usr/bin/env bash
source "$(dirname "$0")/common.sh"
start_redis
start_proxy ${CONF:-proxy.toml}
sleep 1
redis-benchmark -p $PPORT -t get -r 1000 -n 100000 -c 50 -q >/dev/null
perf record -F 2000 -g -p $PROXY -o /tmp/perf.data 2>/dev/null &
S=$!; sleep 0.5
redis-benchmark -p $PPORT -t ${T:-get} -r 1000 -n ${N:-2000000} -c 50 ${EXTRA:-} --csv | tail -1
kill -INT $S; wait $S || true
