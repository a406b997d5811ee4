#!/bin/sh
# Image test setup script that overstays its timeout. Its background child
# leaves the process group with setsid: only the unit's cgroup still holds it.
setsid sleep 600 &
echo $! > /var/tmp/timeout-escapee
echo "sleeping past the timeout"
sleep 600
