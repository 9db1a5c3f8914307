#!/bin/bash
# A/B, interleaved, 2 rounds: main (rowcast-bell), the lean read of the whole
# log (rowcast-lean), and the lean read with the pace estimate (rowcast-pacelean)
# (binaries in /work/bin; the bench migrates a fresh database with the measured
# binary). 2,000 clients, fan-out 100, 30 s per step; per-backend CPU from
# pg-backends.py 12 s into each step, and the server's source counters
# (reads, notifications, changes) 10 s and 25 s into it.
cd /work/main
O=benches/issue16/lean-read
for round in 1 2; do
  for rate in 100 250 500; do
    for bin in bell lean pacelean; do
      METRICS=1 benches/issue16/ab-step.sh $O $bin $rate $round 12
    done
  done
done
echo finished > /tmp/lean-read-done
