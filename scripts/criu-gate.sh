#!/bin/sh
# CRIU's action script for phaul-fast (src/criu/gate.ts, which says why). CRIU runs it for
# every action. At PHAUL_FAST_GATE_ACTION (pre-dump: after CRIU's start-up,
# before it freezes the tree) it waits until the agent writes "go" into the
# FIFO PHAUL_FAST_GATE: so CRIU is started ahead and its start-up is no part
# of the pause.
# Anything but "go" (the agent gave up, or died: end of file) fails the
# action, and CRIU stops before it has touched anything.
[ -n "$PHAUL_FAST_GATE" ] && [ "$CRTOOLS_SCRIPT_ACTION" = "$PHAUL_FAST_GATE_ACTION" ] || exit 0
read -r word < "$PHAUL_FAST_GATE" || exit 1
[ "$word" = go ]
