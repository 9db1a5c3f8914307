#!/bin/bash
# A third full run on main (with 009_cheap_check and 010_bell_lock), same
# commands as the #16 section's "after" (the before server was measured in
# the two earlier runs); each command runs its own floor rounds.
cd /work/main
benches/issue16/full-run.sh benches/issue16/2026-11-26-bell
echo finished > /tmp/full-bell-done
