#!/usr/bin/env bash
# Mixed read-heavy load, directly and through the proxy (tier on), interleaved: about 90% GET on a
# skewed key space and 10% SET, from three redis-benchmark processes running at once:
#   hot reads:  GET on 100 keys        (35 clients)
#   cold reads: GET on 100000 keys     (10 clients)
#   writes:     SET on 100000 keys     ( 5 clients)
# The three run together for WARMUP + WINDOW seconds; throughput is the GETs and SETs completed
# during the WINDOW (Redis's INFO commandstats directly, the proxy's PROXY INFO request counters
# through it), so it is measured while all three run, and the table shows the share of SETs
# each run achieved (closed-loop clients: slower writes make a smaller share).
#
#   benches/mixed.sh                      # REPS=3, WINDOW=8 s
#   REPS=5 WINDOW=15 benches/mixed.sh
REPS=${REPS:-3}
WARMUP=${WARMUP:-1}
WINDOW=${WINDOW:-8}
PIPELINE=${PIPELINE:-1}
source "$(dirname "$0")/common.sh"
start_redis
start_proxy proxy.toml
# Keys exist and the tier is warm (and its tracking connection up) before measuring.
redis-benchmark -p "$RPORT" -t set -r 100000 -n 200000 -c 50 -q >/dev/null
sleep 1
redis-benchmark -p "$PPORT" -t get -r 100000 -n 300000 -c 50 -q >/dev/null

counts() { # port -> "gets sets" completed so far
  if [ "$1" = "$RPORT" ]; then
    redis-cli -p "$1" info commandstats | tr -d '\r' | awk -F'[:=,]' '
      $1 == "cmdstat_get" { g = $3 } $1 == "cmdstat_set" { s = $3 } END { print g + 0, s + 0 }'
  else
    redis-cli -p "$1" proxy info proxy | tr -d '\r' | awk -F'[:,]' '
      function total(from,  i, n, kv) { n = 0; for (i = from; i <= NF; i++) { split($i, kv, "="); n += kv[2] } return n }
      $1 == "requests_get" { g = total(2) } $1 == "requests_set" { s = total(2) } END { print g + 0, s + 0 }'
  fi
}

one_run() { # port -> "rps set_share" over the window
  local port=$1 n=1000000000 pids=() before after
  redis-benchmark -p "$port" -c 35 -n $n -r 100 -P "$PIPELINE" -q GET 'key:__rand_int__' >/dev/null & pids+=($!)
  redis-benchmark -p "$port" -c 10 -n $n -r 100000 -P "$PIPELINE" -q GET 'key:__rand_int__' >/dev/null & pids+=($!)
  redis-benchmark -p "$port" -c 5 -n $n -r 100000 -P "$PIPELINE" -q SET 'key:__rand_int__' xxx >/dev/null & pids+=($!)
  sleep "$WARMUP"
  before=$(counts "$port")
  sleep "$WINDOW"
  after=$(counts "$port")
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "$before $after" | awk -v w="$WINDOW" '{ g = $3 - $1; s = $4 - $2; printf "%.0f %.3f\n", (g + s) / w, s / (g + s) }'
}

direct=() proxied=() dshare=() pshare=()
for rep in $(seq "$REPS"); do
  read -r rps share < <(one_run "$RPORT"); direct+=("$rps") dshare+=("$share")
  read -r rps share < <(one_run "$PPORT"); proxied+=("$rps") pshare+=("$share")
  echo "rep $rep/$REPS: direct ${direct[-1]} rps (SET ${dshare[-1]}), proxy ${proxied[-1]} rps (SET ${pshare[-1]})" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
d=$(median "${direct[@]}") p=$(median "${proxied[@]}")
echo
echo "mixed GET (70% of clients on 100 hot keys) / SET, 50 clients, -P $PIPELINE, median of $REPS ${WINDOW}s windows:"
awk -v d="$d" -v p="$p" -v ds="$(median "${dshare[@]}")" -v ps="$(median "${pshare[@]}")" \
  'BEGIN { printf "direct %d rps (%.1f%% SET), proxy %d rps (%.1f%% SET): %.2fx\n", d, ds * 100, p, ps * 100, p / d }'
