#!/usr/bin/env bash
# Installs redis-server and redis-tools from Debian's packages when they are missing.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null; then
  exit 0
fi
echo "installing redis-server and redis-tools from Debian's packages..." >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
