#!/bin/bash
cd /work/main
B=target/release/rowcast-bench
step() { # name, args...
  local name=$1; shift
  { echo "### $(date +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg)"; echo "### rowcast-bench $*"; $B "$@" 2>&1; echo "### rc=$? end $(date +%H:%M:%S)"; } > /tmp/m2/$name.txt
}
step throughput-before --scenario throughput --floor --connections 10000 --fanout 100 --rates 250,500,750,1000,1250 --duration 10 --rounds 2 --rowcast-bin /work/bin/rowcast-before-16 --json /tmp/m2/throughput-before.json
step throughput-after --scenario throughput --floor --connections 10000 --fanout 100 --rates 250,500,750,1000,1250 --duration 10 --rounds 2 --json /tmp/m2/throughput-after.json
step latency-after --scenario latency --floor --transport ws --connections 10000 --fanout 10 --rate 100 --duration 60 --json /tmp/m2/latency-after.json
step write-path-before --scenario write-path --write-path-seconds 5 --write-path-rounds 3 --rowcast-bin /work/bin/rowcast-before-16 --json /tmp/m2/write-path-before.json
step write-path-after --scenario write-path --write-path-seconds 5 --write-path-rounds 3 --json /tmp/m2/write-path-after.json
for r in 100 250; do
  ( sleep 20; python3 benches/issue16/pg-backends.py 12 > /tmp/m2/pg-backends-$r.txt ) &
  step pg-run-$r --scenario throughput --connections 2000 --fanout 100 --rates $r --duration 30 --rounds 1 --step-retries 0
  wait
done
echo finished > /tmp/m2/done
