#!/bin/bash
# A fourth full run on main (with the lean read and the rate estimate), same
# commands as the #16 section's "after" (the before server was measured in
# the two earlier runs); each command runs its own floor rounds.
cd /work/main
B=target/release/rowcast-bench
O=benches/issue16/2026-11-26-lean
step() { # name, args...
  local name=$1; shift
  { echo "### $(date +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"; echo "### rowcast-bench $*"; $B "$@" 2>&1; echo "### rc=$? end $(date +%H:%M:%S)"; } > $O/$name.txt
}
step throughput-after --scenario throughput --floor --connections 10000 --fanout 100 --rates 250,500,750,1000,1250 --duration 10 --rounds 2 --json $O/throughput-after.json
step latency-after --scenario latency --floor --transport ws --connections 10000 --fanout 10 --rate 100 --duration 60 --json $O/latency-after.json
step write-path-after --scenario write-path --write-path-seconds 5 --write-path-rounds 3 --json $O/write-path-after.json
echo finished > /tmp/full-lean-done
