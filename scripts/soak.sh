#!/usr/bin/env bash
# Soaks every transport: senders of checksummed, numbered messages and their receivers are
# SIGKILLed at random and restarted; prints, per transport, what was checked and what
# broke (lost, duplicated, torn, reordered, wrongly answered, left behind), and exits
# non-zero on any broken promise.
#
#   scripts/soak.sh [SECONDS per transport, 60] [TRANSPORTS, e.g. uds,shm]
#
# A broadcast transport (events) is soaked with writers and listeners killed about 1,000
# times in a run of any length (at most one kill every 20 ms): `scripts/soak.sh 60 events`.
# So is a durable queue with competing receivers, writers and ?ack=done receivers killed,
# then its directories checked: `scripts/soak.sh 60 spool`.
#
# SOAK_DEBUG=1 runs the debug build (CI's short run, which needs no release build).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -q unlimited 2>/dev/null || ulimit -q "$(ulimit -Hq)"
args=(--seconds "${1:-60}")
if [ -n "${2:-}" ]; then args+=(--transports "$2"); fi
profile=(--release)
if [ "${SOAK_DEBUG:-}" = 1 ]; then profile=(); fi
cargo run --quiet --locked "${profile[@]}" -p ipckit-bench --bin soak -- "${args[@]}"
