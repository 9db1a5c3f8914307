#!/bin/bash
cd /work/main
for round in 1 2; do
  for bin in adaptive cheap-arm; do
    for rate in 100 250 500; do
      out=/tmp/ab3/$bin-$rate-r$round.txt
      ( sleep 20; python3 benches/issue16/pg-backends.py 12 > /tmp/ab3/pg-$bin-$rate-r$round.txt ) &
      target/release/rowcast-bench --scenario throughput --connections 2000 --fanout 100 --rates $rate --duration 30 --rounds 1 --step-retries 0 --rowcast-bin /work/bin/rowcast-$bin > $out 2>&1
      wait
    done
  done
done
echo finished > /tmp/ab3/done2
