#!/bin/bash
# One step of an interleaved A/B (issue #16): rowcast-bench's throughput
# scenario, 2,000 WebSocket clients, fan-out 100, RATE writes/s for 30 s,
# served by /work/bin/rowcast-BIN (the bench migrates a fresh database with
# it); pg-backends.py measures each PostgreSQL backend's CPU for 12 s from
# DELAY s (default 20) into the step. Writes OUT/tp-BIN-RATE-ROUND.txt and
# OUT/pg-BIN-RATE-ROUND.txt; with METRICS=1 also the server's source
# counters (reads, notifications, changes) 10 s and 25 s into the step, in
# OUT/metrics-BIN-RATE-ROUND.txt. Run from the repository's root.
# usage: [METRICS=1] ab-step.sh OUT BIN RATE ROUND [DELAY]
O=$1; bin=$2; rate=$3; round=$4; delay=${5:-20}
scrape() {
  pid=$(pgrep -f "rowcast.* serve" | head -1)
  port=$(ss -ltnp 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | sed 's/.*://' | head -1)
  curl -s http://127.0.0.1:$port/metrics | grep -E "^rowcast_(source_read_seconds_count|source_notifications_total|source_batches_total|events_total|source_idle|source_commit_seconds)"
}
if [ "${METRICS:-0}" = 1 ]; then
  ( sleep 10; echo "## t10"; scrape; sleep 15; echo "## t25"; scrape ) > "$O/metrics-$bin-$rate-$round.txt" &
fi
( sleep "$delay"; python3 benches/issue16/pg-backends.py 12 > "$O/pg-$bin-$rate-$round.txt" ) &
target/release/rowcast-bench --scenario throughput --connections 2000 --fanout 100 --rates "$rate" --duration 30 --rounds 1 --step-retries 0 --rowcast-bin "/work/bin/rowcast-$bin" > "$O/tp-$bin-$rate-$round.txt" 2>&1
wait
