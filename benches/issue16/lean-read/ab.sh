#!/bin/bash
# A/B, interleaved, 2 rounds: main (rowcast-bell), the lean read of the whole
# log (rowcast-lean), and the lean read with the pace estimate (rowcast-pacelean)
# (binaries in /work/bin; the bench migrates a fresh database with the measured
# binary). 2,000 clients, fan-out 100, 30 s per step; per-backend CPU from
# pg-backends.py 12 s into each step, and the server's source counters
# (reads, notifications, changes) 10 s and 25 s into it.
cd /work/main
O=benches/issue16/lean-read
scrape() {
  pid=$(pgrep -f "rowcast.* serve" | head -1)
  port=$(ss -ltnp 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | sed 's/.*://' | head -1)
  curl -s http://127.0.0.1:$port/metrics | grep -E "^rowcast_(source_read_seconds_count|source_notifications_total|source_batches_total|events_total|source_idle)"
}
for round in 1 2; do
  for rate in 100 250 500; do
    for bin in bell lean pacelean; do
      ( sleep 10; echo "## t10"; scrape; sleep 15; echo "## t25"; scrape ) > $O/metrics-$bin-$rate-$round.txt &
      ( sleep 12; python3 benches/issue16/pg-backends.py 12 > $O/pg-$bin-$rate-$round.txt ) &
      target/release/rowcast-bench --scenario throughput --connections 2000 --fanout 100 --rates $rate --duration 30 --rounds 1 --step-retries 0 --rowcast-bin /work/bin/rowcast-$bin > $O/tp-$bin-$rate-$round.txt 2>&1
      wait
    done
  done
done
echo finished > /tmp/lean-read-done
