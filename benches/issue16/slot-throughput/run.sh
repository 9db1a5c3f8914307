#!/bin/bash
# PostgreSQL CPU per change and server CPU per delivery with the products
# captured by the slot, beside the floor, then the same with the trigger
# (issue #16, item 2), one after the other on the same machine.
cd "$(dirname "$0")/../../.."
O=benches/issue16/slot-throughput
./target/release/rowcast-bench --scenario throughput --floor --capture-by-slot --connections 10000 --fanout 100 \
  --rates 250,500 --duration 10 --rounds 2 --json $O/slot.json > $O/slot.txt 2>&1
./target/release/rowcast-bench --scenario throughput --floor --connections 10000 --fanout 100 \
  --rates 250,500 --duration 10 --rounds 2 --json $O/trigger.json > $O/trigger.txt 2>&1
