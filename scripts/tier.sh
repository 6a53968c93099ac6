#!/usr/bin/env bash
# Run one test tier and say how long it took:  scripts/tier.sh NAME CMD [ARG...]
# Prints "tier NAME: <seconds> s (rc <rc>)" after CMD and exits with CMD's status (make stops there).
set -u
name=$1
shift
start=$(date +%s)
"$@"
rc=$?
echo "tier $name: $(( $(date +%s) - start )) s (rc $rc)"
exit "$rc"
