#!/bin/bash
cd /work/main
for r in 1 2 3; do for rate in 500 300; do for b in bp1 bp4; do
  METRICS=1 bash benches/issue16/ab-step.sh benches/issue16/stretch/fixed-4ms $b $rate $r
done; done; done
touch benches/issue16/stretch/fixed-4ms/done
