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
      benches/issue16/ab-step.sh $O $bin $rate $round 12
      wait
    done
  done
done
echo finished > /tmp/lean-read-done
