#!/bin/sh
# Image test setup script: records who ran it, once per run.
id -un >> /var/tmp/whoami-runs
echo "ran as $(id -un) in $(pwd)"
