#!/usr/bin/env bash
# Stops what tests/slurm/start.sh DIR started (slurmd and slurmctld; munged is left running).
dir=$(realpath -m "${1:?usage: stop.sh DIR}")
for p in slurmd slurmctld; do
    [ -f "$dir/run/$p.pid" ] && kill "$(cat "$dir/run/$p.pid")" 2>/dev/null
done
exit 0
