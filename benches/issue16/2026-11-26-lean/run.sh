#!/bin/bash
# A fourth full run on main (with the lean read and the rate estimate), same
# commands as the #16 section's "after" (the before server was measured in
# the two earlier runs); each command runs its own floor rounds.
cd /work/main
benches/issue16/full-run.sh benches/issue16/2026-11-26-lean
echo finished > /tmp/full-lean-done
