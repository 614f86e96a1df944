# Shared by the benches/*.sh scripts (sourced): a work directory removed at exit with every
# process started here, free loopback ports, and starting redis-server and the release proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
cargo build --release --quiet

work=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ping() {
  for _ in $(seq 200); do redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.05; done
  echo "nothing answers on port $1" >&2; exit 1
}

# Sets RPORT (chosen once) and REDIS (the pid); call again to restart on the same port.
RPORT=${RPORT:-$(free_port)}
start_redis() {
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
  REDIS=$!
  PIDS+=("$REDIS")
  wait_ping "$RPORT"
}

# start_proxy CONFIG [UPSTREAM_PORT]: sets PPORT and PROXY (the pid); its log goes to
# $work/proxy.log. Its upstream is Redis on RPORT unless UPSTREAM_PORT is given (a relay).
# PROXY_BIN runs another build (to compare two versions with the same script).
start_proxy() {
  PPORT=$(free_port)
  RUST_LOG=warn "${PROXY_BIN:-target/release/nearcache}" --config "$1" --listen "127.0.0.1:$PPORT" \
    --upstream "127.0.0.1:${2:-$RPORT}" >>"$work/proxy.log" 2>&1 &
  PROXY=$!
  PIDS+=("$PROXY")
  wait_ping "$PPORT"
}

# start_peer [UPSTREAM_PORT]: twemproxy (Debian's nutcracker, installed when missing) in front of
# Redis on RPORT (or UPSTREAM_PORT: a relay), one server and one connection as its docs suggest;
# sets TPORT and PEER_PID.
start_peer() {
  if ! command -v nutcracker >/dev/null; then
    echo "installing nutcracker (twemproxy) from Debian's packages..." >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nutcracker >/dev/null
  fi
  TPORT=$(free_port)
  cat >"$work/nutcracker.yml" <<YML
peer:
  listen: 127.0.0.1:$TPORT
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:${1:-$RPORT}:1
YML
  nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" -s "$(free_port)" &
  PEER_PID=$!
  PIDS+=("$PEER_PID")
  wait_ping "$TPORT"
}
stop_peer() { kill "$PEER_PID" 2>/dev/null || true; wait "$PEER_PID" 2>/dev/null || true; }

# warm_tier [SIZE]: the 1000 keys of `redis-benchmark -r 1000` hold SIZE-byte values (default 3;
# 20 draws per key: all are set), and the proxy's tier has read them, its tracking connection up.
warm_tier() {
  redis-benchmark -p "$RPORT" -t set -r 1000 -n 20000 -d "${1:-3}" -c 50 -q >/dev/null
  sleep 1
  redis-benchmark -p "$PPORT" -t get -r 1000 -n 100000 -c 50 -q >/dev/null
}

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
