#!/bin/bash
# A full run of the commands the #16 section's "after" columns come from, on
# main (each command runs its own floor rounds), into OUT; run from the
# repository's root. usage: full-run.sh OUT
B=target/release/rowcast-bench
O=$1
step() { # name, args...
  local name=$1; shift
  { echo "### $(date +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"; echo "### rowcast-bench $*"; $B "$@" 2>&1; echo "### rc=$? end $(date +%H:%M:%S)"; } > $O/$name.txt
}
step throughput-after --scenario throughput --floor --connections 10000 --fanout 100 --rates 250,500,750,1000,1250 --duration 10 --rounds 2 --json $O/throughput-after.json
step latency-after --scenario latency --floor --transport ws --connections 10000 --fanout 10 --rate 100 --duration 60 --json $O/latency-after.json
step write-path-after --scenario write-path --write-path-seconds 5 --write-path-rounds 3 --json $O/write-path-after.json
