#!/bin/bash
cd /work/main
for r in 1 2 3; do for rate in 500 250 1000; do for b in efb stretch; do
  METRICS=1 bash benches/issue16/ab-step.sh benches/issue16/stretch $b $rate $r
done; done; done
touch benches/issue16/stretch/done
