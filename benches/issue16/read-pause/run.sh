#!/bin/bash
# PostgreSQL CPU per change, server CPU per delivery and latency with the
# trigger and the source reading a stream every N ms (--source-busy-pause =
# --source-busy-pause-max = N, through ROWCAST_SOURCE_BUSY_PAUSE[_MAX],
# inherited by the server the bench starts) beside the defaults (1 ms,
# stretched to 4 ms), each run with its own floor rounds, interleaved, two
# rounds (issue #16, item 2).
cd "$(dirname "$0")/../../.."
O=benches/issue16/read-pause
for round in 1 2; do
  for v in default 10ms 25ms; do
    if [ "$v" = default ]; then
      ./target/release/rowcast-bench --scenario throughput --floor --connections 10000 --fanout 100 \
        --rates 250,500 --duration 10 --rounds 1 --json $O/$v-$round.json > $O/$v-$round.txt 2>&1
    else
      ROWCAST_SOURCE_BUSY_PAUSE=$v ROWCAST_SOURCE_BUSY_PAUSE_MAX=$v ./target/release/rowcast-bench \
        --scenario throughput --floor --connections 10000 --fanout 100 --rates 250,500 --duration 10 \
        --rounds 1 --json $O/pause-$v-$round.json > $O/pause-$v-$round.txt 2>&1
    fi
  done
done
