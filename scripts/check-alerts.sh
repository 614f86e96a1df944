#!/usr/bin/env bash
# Checks the shipped Prometheus alert rules with promtool (Debian's `prometheus` package,
# installed when missing): the rules parse, their unit tests on synthetic series pass
# (deploy/prometheus/alerts.test.yml), and every query of the Grafana dashboard
# (deploy/grafana/nearcache.json) parses as PromQL. That they name only metrics the proxy
# exports is `tests/operate.rs::the_dashboard_and_alert_rules_name_only_exported_metrics`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null; then
  echo "installing prometheus (for promtool) from Debian's packages..." >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
# The dashboard's queries, as recording rules promtool can parse.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 - deploy/grafana/nearcache.json >"$work/dashboard-rules.yml" <<'PY'
import json, sys
panels = json.load(open(sys.argv[1]))["panels"]
print("groups:\n  - name: dashboard\n    rules:")
for p in panels:
    for t in p["targets"]:
        print("      - record: dashboard:panel_%d_%s" % (p["id"], t["refId"].lower()))
        print("        expr: %s" % json.dumps(t["expr"]))
PY
promtool check rules "$work/dashboard-rules.yml"
