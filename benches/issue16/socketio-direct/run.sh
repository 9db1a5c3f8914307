#!/bin/bash
cd /work/main
for r in 1 2; do for b in stretch siodirect; do
  echo "### $b round $r $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)" >> benches/issue16/socketio-direct/ab.txt
  target/release/rowcast-bench --scenario throughput --transport socketio --connections 10000 --fanout 100 --rates 250,500 --duration 20 --rounds 1 --step-retries 0 --rowcast-bin /work/bin/rowcast-$b 2>/dev/null | grep "^| throughput |" >> benches/issue16/socketio-direct/ab.txt
done; done
for b in stretch siodirect; do
  echo "### idle $b $(date +%T)" >> benches/issue16/socketio-direct/ab.txt
  target/release/rowcast-bench --scenario idle --transport socketio --connections 5000 --rowcast-bin /work/bin/rowcast-$b 2>/dev/null | grep -i "^| idle\|KiB" >> benches/issue16/socketio-direct/ab.txt
done
touch benches/issue16/socketio-direct/done
