#!/bin/bash
# Interleaved A/B of the latency scenario (10k WebSocket clients, fan-out
# 10, 100 writes/s, 30 s; the server's default --keepalive 15s) for
# /work/bin/rowcast-BIN..., ROUNDS rounds; one line per run in OUT/ab.txt.
# usage: ab.sh OUT ROUNDS BIN...
O=$1; rounds=$2; shift 2
mkdir -p "$O"
for r in $(seq 1 "$rounds"); do for bin in "$@"; do
  echo "### $bin round $r $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$O/ab.txt"
  target/release/rowcast-bench --scenario latency --transport ws --connections 10000 --fanout 10 --rate 100 --duration 30 --rowcast-bin "/work/bin/rowcast-$bin" 2>/dev/null | grep "^| latency |" >> "$O/ab.txt"
done; done
