#!/bin/bash
# Interleaved A/B of SSE streams (issue #16): rowcast-bench's throughput
# scenario over SSE, 10,000 clients, fan-out 100, RATE writes/s (default
# 250), 20 s, one round per binary per round, for /work/bin/rowcast-BIN...
# Writes OUT/tp-BIN-RATE-ROUND.txt. Run from the repository's root.
# usage: ab.sh OUT ROUNDS RATE BIN...
O=$1; rounds=$2; rate=$3; shift 3
mkdir -p "$O"
for r in $(seq 1 "$rounds"); do for bin in "$@"; do
  target/release/rowcast-bench --scenario throughput --transport sse --connections 10000 --fanout 100 --rates "$rate" --duration 20 --rounds 1 --step-retries 0 --rowcast-bin "/work/bin/rowcast-$bin" > "$O/tp-$bin-$rate-$r.txt" 2>&1
done; done
