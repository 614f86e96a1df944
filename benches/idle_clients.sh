#!/usr/bin/env bash
# Holds many idle client connections open on the proxy and reports its memory per client.
#
#   benches/idle_clients.sh            # 10000 clients
#   CLIENTS=20000 benches/idle_clients.sh
#
# Starts its own redis-server and release proxy on free loopback ports. Every client sends one
# PING and reads PONG (so each is really served), then stays connected and idle. The proxy's
# resident memory (VmRSS) is read before and after, with every client still connected.
CLIENTS=${CLIENTS:-10000}
source "$(dirname "$0")/common.sh"
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((CLIENTS + 100)) ]; then
  echo "need ulimit -n >= $((CLIENTS + 100)) (have $(ulimit -n))" >&2; exit 1
fi
start_redis
printf '[listen]\nmax_clients = %d\n' $((CLIENTS + 100)) > "$work/proxy.toml"
start_proxy "$work/proxy.toml"
rss() { awk '/VmRSS/ { print $2 }' "/proc/$PROXY/status"; }
before=$(rss)

python3 - "$PPORT" "$CLIENTS" "$PROXY" "$before" <<'EOF'
import asyncio, sys
port, clients, pid, before = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

async def client(held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PING\r\n")
    await writer.drain()
    assert await reader.readexactly(7) == b"+PONG\r\n"
    held.append(writer)

async def main():
    held = []
    for start in range(0, clients, 500):
        await asyncio.gather(*(client(held) for _ in range(start, min(start + 500, clients))))
    await asyncio.sleep(1)
    after = rss()
    print(f"{len(held)} idle clients connected and served")
    print(f"proxy RSS: {before} KiB before, {after} KiB with them: "
          f"{(after - before) * 1024 / len(held):.0f} bytes per idle client")
    # Still answering with all of them connected.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PING\r\n")
    await writer.drain()
    assert await reader.readexactly(7) == b"+PONG\r\n"
    for w in held:
        w.close()

asyncio.run(main())
EOF
