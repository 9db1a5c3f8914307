#!/bin/bash
# A/B, interleaved: main before the commit probe (rowcast-rawwritev, 57d7ec1)
# against it (binaries in /work/bin); 2,000 clients, fan-out 100, 30 s per
# step, per-backend CPU and the source's counters (ab-step.sh, METRICS=1).
# Rounds 1-2: BINS="rawwritev probe" (RING_LOCK_SHARE 0.25, and a probe that
# could queue behind a detached wait for writers); rounds 3-4:
# BINS="rawwritev probe2" (0.5, never behind a wait, timed by the node);
# rounds 5-6: BINS="rawwritev probe3" (as committed: timed on the server).
cd /work/main
O=benches/issue16/commit-probe
for round in ${ROUNDS:-5 6}; do
  for rate in 100 250 500; do
    for bin in ${BINS:-rawwritev probe3}; do
      METRICS=1 benches/issue16/ab-step.sh $O $bin $rate $round 12
    done
  done
done
echo finished > /tmp/commit-probe-done
