#!/bin/bash
cd /work/main
for round in 1 2; do
  for bin in before-16 cheap-arm adaptive; do
    target/release/rowcast-bench --scenario write-path --write-path-seconds 5 --write-path-rounds 1 --rowcast-bin /work/bin/rowcast-$bin > /tmp/m2/wp-$bin-$round.txt 2>&1
  done
done
echo finished > /tmp/m2/wp-done
