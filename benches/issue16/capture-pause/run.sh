#!/bin/bash
# PostgreSQL CPU per change, server CPU per delivery and latency with the
# market's products captured by the slot at several --capture-pause values
# (ROWCAST_CAPTURE_PAUSE, inherited by the server the bench starts), beside
# the trigger, each run with its own floor rounds; the variants interleaved,
# two rounds (issue #16, item 2).
cd "$(dirname "$0")/../../.."
O=benches/issue16/capture-pause
for round in 1 2; do
  for v in trigger 2ms 25ms 50ms; do
    if [ "$v" = trigger ]; then
      ./target/release/rowcast-bench --scenario throughput --floor --connections 10000 --fanout 100 \
        --rates 250,500 --duration 10 --rounds 1 --json $O/$v-$round.json > $O/$v-$round.txt 2>&1
    else
      ROWCAST_CAPTURE_PAUSE=$v ./target/release/rowcast-bench --scenario throughput --floor --capture-by-slot \
        --connections 10000 --fanout 100 --rates 250,500 --duration 10 --rounds 1 \
        --json $O/slot-$v-$round.json > $O/slot-$v-$round.txt 2>&1
    fi
  done
done
