#!/usr/bin/env bash
# Runs the fuzz targets of crates/ipckit/fuzz (cargo fuzz, libFuzzer) one after another,
# each for SECONDS (default 60), and prints per target its executions, corpus size and
# crashes. Exits 1 if any target crashed; the crashing inputs are under
# crates/ipckit/fuzz/artifacts/TARGET/, and each one found becomes a regression input in
# FOUND (crates/ipckit/src/fuzzing.rs) with its fix.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 900, scripts/fuzz.sh 60 ring
#
# cargo fuzz needs nightly compiler flags: the stable toolchain with RUSTC_BOOTSTRAP=1, or
# a nightly toolchain if one is installed. With neither, the script says so and skips
# (exit 0). cargo-fuzz itself is installed if missing. FUZZ_SANITIZER picks a sanitizer
# (default none: the unsafe code reads shared memory, which AddressSanitizer does not
# watch; the build keeps debug assertions and overflow checks). The corpus grows in
# crates/ipckit/fuzz/corpus/TARGET/ (not committed), starting from fuzz/seeds/TARGET/.
# FUZZ_TARGET_DIR builds elsewhere than crates/ipckit/fuzz/target: a cache kept between
# clones, as CI's.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
fuzz_dir=crates/ipckit/fuzz
if (($#)); then
    targets=("$@")
else
    targets=()
    for f in "$fuzz_dir"/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi
sanitizer=${FUZZ_SANITIZER:-none}
logs=${FUZZ_LOG_DIR:-$fuzz_dir/target/logs}

# Nightly flags: the toolchain every machine has, let in by RUSTC_BOOTSTRAP, else nightly.
toolchain=()
if RUSTC_BOOTSTRAP=1 rustc -Z help >/dev/null 2>&1; then
    export RUSTC_BOOTSTRAP=1
elif rustup run nightly rustc -Z help >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    echo "fuzz: skipped: cargo fuzz needs nightly compiler flags, and neither RUSTC_BOOTSTRAP=1 on $(rustc -V) nor a nightly toolchain gives them"
    exit 0
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

target_dir=()
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then
    target_dir=(--target-dir "$FUZZ_TARGET_DIR")
fi

# cargo fuzz SUBCOMMAND [ARGS...], from the crate that holds fuzz/.
run_fuzz() {
    local subcommand=$1
    shift
    (cd crates/ipckit && cargo "${toolchain[@]}" fuzz "$subcommand" "${target_dir[@]}" "$@")
}

mkdir -p "$logs"
echo "fuzz: building ${targets[*]} ($(rustc "${toolchain[@]}" -V), sanitizer $sanitizer)"
run_fuzz build -s "$sanitizer" >"$logs/build.log" 2>&1 || {
    cat "$logs/build.log"
    exit 1
}

crashed=0
for target in "${targets[@]}"; do
    corpus=$fuzz_dir/corpus/$target
    artifacts=$fuzz_dir/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    log=$logs/$target.log
    status=0
    started=$SECONDS
    # -timeout: one input running 10 s is a hang; -rss_limit_mb: a decoder that allocates
    # what a peer claims fails here rather than fills the machine.
    run_fuzz run -s "$sanitizer" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    inputs=$(find "$corpus" -type f | wc -l)
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    echo "fuzz: $target: ${executions:-?} executions in $((SECONDS - started)) s, corpus $inputs inputs, $crashes crashes"
    if ((status != 0 || crashes > 0)); then
        crashed=1
        grep -m1 -A3 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /' || true
        sed -n 's/.*Test unit written to /    input: /p' "$log"
        echo "    log: $log; replay: (cd crates/ipckit && cargo fuzz run -s $sanitizer $target ARTIFACT)"
    fi
done
exit $crashed
