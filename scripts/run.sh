#!/usr/bin/env bash
# Starts a local redis-server on 6379 (unless one is answering there already) and the proxy in
# front of it on 6380, with ./proxy.toml. Extra arguments go to nearcache (e.g. --listen).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
  redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 100); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.05; done
  echo "started redis-server on 127.0.0.1:6379 (stop it with: redis-cli -p 6379 shutdown)" >&2
fi
cargo build --release --quiet
exec target/release/nearcache --config proxy.toml "$@"
