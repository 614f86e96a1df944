#!/usr/bin/env bash
# The latency of a client's first pinned command (MULTI) on a new connection to the proxy: with
# spare connections it is written to Redis at once; without (spare_connections = 0) it waits for
# a new upstream connection and its handshake. Prints the median and p99 in microseconds over
# N clients (default 300), each connecting, timing MULTI, then DISCARD and disconnecting.
#
#   benches/first_pin.sh               # spare_connections = 2 (the default) and 0
#   N=1000 benches/first_pin.sh
source "$(dirname "$0")/common.sh"
N=${N:-300}
start_redis
for spares in 2 0; do
  printf '[upstream]\nspare_connections = %s\n' "$spares" >"$work/proxy-$spares.toml"
  # A proxy older than spare_connections rejects the key: run it with no file.
  if target/release/nearcache --config "$work/proxy-$spares.toml" --check >/dev/null 2>&1; then
    start_proxy "$work/proxy-$spares.toml"
  else
    printf '' >"$work/proxy-none.toml"; start_proxy "$work/proxy-none.toml"; spares="n/a (older build)"
  fi
  /usr/bin/python3 - "$PPORT" "$N" "$spares" <<'PY'
import socket, sys, time
port, n, spares = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def ask(s, line):
    s.sendall(line)
    data = b""
    while not data.endswith(b"\r\n"):
        data += s.recv(4096)
    return data
times = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    ask(s, b"PING\r\n")  # the connection is up and served
    t = time.perf_counter()
    ask(s, b"MULTI\r\n")
    times.append((time.perf_counter() - t) * 1e6)
    ask(s, b"DISCARD\r\n")
    s.close()
times.sort()
print(f"spare_connections={spares}: first MULTI median {times[len(times)//2]:.0f} us, p99 {times[int(len(times)*0.99)]:.0f} us ({n} clients)")
PY
  kill "$PROXY"; wait "$PROXY" 2>/dev/null || true
done
