#!/usr/bin/env bash
# Runs the whole test suite. Tests start their own redis-server on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-redis.sh
cargo test --all-targets "$@"
