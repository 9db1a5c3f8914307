#!/bin/bash
# A/B: main with 009 (rowcast-m009) vs the bell key (rowcast-bell) (binaries in /work/bin; the bench
# migrates a fresh database with the measured binary). Per-backend CPU from
# pg-backends.py 20 s into each 30 s step; then the write path.
cd /work/main
O=benches/issue16/bell-key
for round in 1 2; do
  for bin in m009 bell; do
    for rate in 500 250 100; do
      benches/issue16/ab-step.sh $O $bin $rate $round
    done
  done
done
for round in 1 2; do
  for bin in m009 bell; do
    target/release/rowcast-bench --scenario write-path --write-path-seconds 5 --write-path-rounds 1 --rowcast-bin /work/bin/rowcast-$bin > $O/wp-$bin-$round.txt 2>&1
  done
done
echo finished > /tmp/bell-key-done
