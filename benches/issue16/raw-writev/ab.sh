#!/bin/bash
# A/B, interleaved, 3 rounds: main (rowcast-pacelean, = 86f4483) and the
# publisher writing with writev(2) straight on the socket (rowcast-rawwritev);
# 10,000 clients, fan-out 100, 500 writes/s, 30 s; user and kernel CPU per delivery.
cd /work/main
O=benches/issue16/raw-writev
for round in 1 2 3; do
  for bin in pacelean rawwritev; do
    target/release/rowcast-bench --scenario throughput --connections 10000 --fanout 100 --rates 500 --duration 30 --rounds 1 --step-retries 0 --rowcast-bin /work/bin/rowcast-$bin > $O/tp-$bin-$round.txt 2>&1
  done
done
echo finished > /tmp/raw-writev-done
