#!/bin/bash
# The capturer's append pause (1d5d516) A/B: the write-path scenario with the
# server of e5893d9 (no pause) and of 1d5d516 (2 ms), interleaved, twice.
# Binaries copied to /tmp/bin-ab first (see the README's issue #16 section).
cd "$(dirname "$0")/../../.."
for round in 1 2; do
  for v in nopause pause; do
    ./target/release/rowcast-bench --scenario write-path --write-path-seconds 5 --write-path-rounds 3 \
      --rowcast-bin /tmp/bin-ab/rowcast-$v --json benches/issue16/slot-write-path/ab-$v-$round.json 2>&1 \
      | grep -v '^\s*$' | tail -16 > benches/issue16/slot-write-path/ab-$v-$round.txt
  done
done
