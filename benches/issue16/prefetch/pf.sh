#!/bin/bash
cd /work/main
for round in 1 2; do
  for bin in prefetch prefetch2; do
    target/release/rowcast-bench --scenario throughput --connections 10000 --fanout 100 --rates 500 --duration 30 --rounds 1 --step-retries 0 --rowcast-bin /work/bin/rowcast-$bin > /tmp/m2/pf2-$bin-$round.txt 2>&1
  done
done
echo finished > /tmp/m2/pf2-done
