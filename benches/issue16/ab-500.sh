#!/bin/bash
# An interleaved A/B of user and kernel CPU per delivery (issue #16): for each
# round, each of BIN... (/work/bin/rowcast-<BIN>) serves rowcast-bench's
# throughput scenario, 10,000 WebSocket clients, fan-out 100, 500 writes/s,
# 30 s. Writes OUT/tp-BIN-ROUND.txt. Run from the repository's root.
# usage: ab-500.sh OUT ROUNDS BIN...
O=$1; rounds=$2; shift 2
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    target/release/rowcast-bench --scenario throughput --connections 10000 --fanout 100 --rates 500 --duration 30 --rounds 1 --step-retries 0 --rowcast-bin "/work/bin/rowcast-$bin" > "$O/tp-$bin-$round.txt" 2>&1
  done
done
