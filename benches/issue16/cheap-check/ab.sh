#!/bin/bash
# A/B: main before 009_cheap_check vs with it (binaries in /work/bin; the bench
# migrates a fresh database with the measured binary). Per-backend CPU from
# pg-backends.py 20 s into each 30 s step; then the write path.
cd /work/main
O=benches/issue16/cheap-check
for round in 1 2; do
  for bin in main m009; do
    for rate in 500 250; do
      benches/issue16/ab-step.sh $O $bin $rate $round
    done
  done
done
for round in 1 2; do
  for bin in main m009; do
    target/release/rowcast-bench --scenario write-path --write-path-seconds 5 --write-path-rounds 1 --rowcast-bin /work/bin/rowcast-$bin > $O/wp-$bin-$round.txt 2>&1
  done
done
echo finished > /tmp/cheap-check-done
