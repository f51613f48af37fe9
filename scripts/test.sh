#!/usr/bin/env bash
# Installs what the tests need (idempotently) and runs the whole suite:
# formatting, lints, unit and doc tests, the cross-process conformance suite, CLI tests,
# the loom model of the ring, and a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v socat >/dev/null || missing+=(socat)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing ${missing[*]} for the CLI tests"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# POSIX message queues: raise the soft RLIMIT_MSGQUEUE as far as allowed, and mount the
# mqueue filesystem, through which servers find and remove the reply queues of clients
# that crashed.
ulimit -q unlimited 2>/dev/null || ulimit -q "$(ulimit -Hq)"
if [ "$(id -u)" = 0 ] && ! mountpoint -q /dev/mqueue; then
    mkdir -p /dev/mqueue
    mount -t mqueue none /dev/mqueue || echo "note: /dev/mqueue not mounted; stale mq reply queues will not be reclaimed"
fi

# spool: every client and receiver watches its directories through an inotify instance of
# its own, and the suite runs hundreds at once, where a user has 128 by default.
if [ "$(id -u)" = 0 ] && [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 1024 ]; then
    sysctl -qw fs.inotify.max_user_instances=1024 ||
        echo "note: fs.inotify.max_user_instances stays at $(cat /proc/sys/fs/inotify/max_user_instances); spool checks may fail for want of instances"
fi

cargo fmt --all -- --check
# The library as a blocking-only user builds it, then everything with every feature.
cargo clippy --workspace --locked -- -D warnings
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked --quiet
# The tests turn on the async API (feature tokio) themselves: see crates/ipckit/Cargo.toml.
cargo test --workspace --locked

# A short soak of every transport, peers killed at random (scripts/soak.sh runs longer).
SOAK_DEBUG=1 scripts/soak.sh 2

# The lock-free shared-memory ring, model-checked: its own build with loom's atomics.
RUSTFLAGS="--cfg ipckit_loom" cargo test -p ipckit --release --locked --test loom_ring --test loom_broadcast --target-dir target/loom

# Every fuzz target for a few seconds, from its seeds and the corpus grown so far: a decoder
# change that breaks a target's checks fails here. It needs cargo fuzz's nightly flags
# (RUSTC_BOOTSTRAP=1 on stable, or nightly) and cargo-fuzz; a machine without cargo-fuzz
# says so and skips, since installing it and the cold fuzz build cost five minutes
# (`scripts/fuzz.sh 5` installs it; IPCKIT_FUZZ=1 makes this step do so). Longer runs:
# scripts/fuzz.sh SECONDS. The build goes to a cache outside the clone, as CI clones afresh.
if cargo fuzz --version >/dev/null 2>&1 || [ "${IPCKIT_FUZZ:-}" = 1 ]; then
    FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ipckit/fuzz-target}" \
        scripts/fuzz.sh 5
else
    echo "fuzz: skipped: cargo-fuzz is not installed here (scripts/fuzz.sh 5 installs it and runs every target)"
fi
