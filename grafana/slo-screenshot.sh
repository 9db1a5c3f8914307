#!/usr/bin/env bash
# Reproduces docs/slos.png, the README's picture of FR-021's four SLOs with real
# data: `rowcast demo --traffic`, a real Prometheus (Debian `prometheus`)
# scraping it and evaluating grafana/alerts.yml, and the SLO console
# (grafana/consoles/rowcast-slos.html) captured by headless Chromium (Debian
# `chromium`). Everything stays on loopback.
#
#   grafana/slo-screenshot.sh            # 8 minutes, 300 shoppers
#   MINUTES=20 SHOPPERS=1000 grafana/slo-screenshot.sh
#
# Leave the stack up to look around yourself with KEEP=1 (Ctrl-C stops it):
# the console is at http://127.0.0.1:19090/consoles/rowcast-slos.html
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-8}
SHOPPERS=${SHOPPERS:-300}
OUT=${OUT:-docs/slos.png}
DEMO=127.0.0.1:18080
PROM=127.0.0.1:19090
chromium=$(command -v chromium || command -v chromium-browser || true)
command -v prometheus >/dev/null || { echo "needs prometheus (apt-get install prometheus)"; exit 1; }
[ -n "$chromium" ] || { echo "needs chromium (apt-get install chromium)"; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
./target/release/rowcast demo --listen "$DEMO" --traffic "$SHOPPERS" \
    --run-for $((MINUTES * 60 + 600)) >"$work/demo.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    curl -fs "http://$DEMO/readyz" >/dev/null 2>&1 && break
    sleep 1
done
curl -fs "http://$DEMO/readyz" >/dev/null || { cat "$work/demo.log"; exit 1; }

cat >"$work/prometheus.yml" <<CONF
global:
  scrape_interval: 5s
  evaluation_interval: 15s
rule_files:
  - $PWD/grafana/alerts.yml
scrape_configs:
  - job_name: rowcast
    static_configs:
      - targets: ["$DEMO"]
CONF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="$PROM" \
    --web.console.templates=grafana/consoles --web.console.libraries=grafana/consoles \
    >"$work/prometheus.log" 2>&1 &
pids+=($!)

echo "demo on http://$DEMO with $SHOPPERS shoppers; Prometheus on http://$PROM; waiting $MINUTES minutes ..."
sleep $((MINUTES * 60))

url="http://$PROM/consoles/rowcast-slos.html?range=${MINUTES}m&window=1m"
mkdir -p "$(dirname "$OUT")"
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chromium" --hide-scrollbars --window-size=1280,1400 \
    --virtual-time-budget=20000 --screenshot="$OUT" "$url" >/dev/null 2>&1
echo "wrote $OUT from $url"
if [ -n "${KEEP:-}" ]; then
    echo "KEEP set: the demo and Prometheus stay up; Ctrl-C stops them"
    wait
fi
