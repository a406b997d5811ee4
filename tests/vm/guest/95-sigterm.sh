#!/bin/sh
# Image test setup script that is ended by SIGTERM: systemd counts that as a
# clean end of a service; the agent must record the run failed.
echo "about to be terminated"
kill -TERM $$
sleep 5
