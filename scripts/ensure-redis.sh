#!/usr/bin/env bash
# Installs from Debian's packages what the tests need when it is missing: redis-server and
# redis-tools (the server, redis-cli, redis-benchmark), tcl8.6 (Redis's own test suite) and
# python3-redis (redis-py, for the tests about what a client library does with the proxy).
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v tclsh8.6 >/dev/null || missing+=(tcl8.6)
/usr/bin/python3 -c 'import redis' 2>/dev/null || missing+=(python3-redis)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} from Debian's packages..." >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
