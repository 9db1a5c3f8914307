#!/bin/bash
# A fifth full run on main (with the commit probe and FLOW_STOP), same
# commands as the fourth; each command runs its own floor rounds.
cd /work/main
benches/issue16/full-run.sh benches/issue16/2026-11-26-probe
echo finished > /tmp/full-probe-done
