#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ with cargo-fuzz (libFuzzer), each for a bounded time.
#   scripts/fuzz.sh                 every target, 60 s each
#   scripts/fuzz.sh trojan 600      one target, 10 minutes
#   scripts/fuzz.sh --ci [SECS]     every target SECS s (default 20) on a fresh corpus, the
#                                   short pass CI runs, as many targets at once as CPUs; fails
#                                   if any target found a crash
#   scripts/fuzz.sh --long [SECS]   every target SECS s (default 600) on the kept corpus, then a
#                                   table of executions and corpus sizes per target
# Corpora live in fuzz/corpus/<target> (not committed); crashes in fuzz/artifacts/<target>.
# cargo-fuzz needs nightly-only flags (sanitizer coverage); RUSTC_BOOTSTRAP lets the machine's
# one stable toolchain accept them, as no other toolchain can be installed here.
# CARGO_TARGET_DIR is honoured (the sanitizer build cannot share the workspace's artifacts).
set -Eeuo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1

mode=plain
case "${1:-}" in
    --ci) mode=ci; secs=${2:-20} ;;
    --long) mode=long; secs=${2:-600} ;;
    *) secs=${2:-60} ;;
esac
if [ "$mode" = plain ] && [ $# -ge 1 ] && [ "$1" != all ]; then
    targets=("$1")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for every target (each `cargo fuzz run` would otherwise check it again).
cargo fuzz build -O

# run_one TARGET: fuzzes it, prints its findings, and leaves its table row (or FAILED) in
# $results/TARGET.
# (No EXIT trap for it: bash runs a script's EXIT trap in its background subshells too, which
# would delete the directory as soon as the first target ends.)
results=$(mktemp -d)
run_one() {
    local t=$1 corpus log status runs files
    if [ "$mode" = ci ]; then
        corpus=$(mktemp -d)
    else
        corpus="corpus/$t"
        mkdir -p "$corpus"
    fi
    log=$(mktemp)
    # -timeout: one input may take at most 10 s (a hang is a finding too).
    set +e
    cargo fuzz run -O "$t" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=2048 \
        -max_len=4096 -timeout=10 -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    # One block per target, so two targets' lines do not interleave.
    {
        echo "== fuzz $t for ${secs}s"
        grep -E "^(==[0-9]+==|SUMMARY|Done [0-9]+ runs)" "$log" || true
        if [ "$status" -ne 0 ]; then tail -40 "$log"; fi
    } | cat
    runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" | tail -1)
    files=$(find "$corpus" -type f | wc -l)
    if [ "$mode" = ci ]; then rm -rf "$corpus"; fi
    rm -f "$log"
    if [ "$status" -ne 0 ]; then
        echo "!! fuzz target $t failed (exit $status): see fuzz/artifacts/$t"
        echo FAILED >"$results/$t"
        return 1
    fi
    printf '| %-22s | %12s | %8s |' "$t" "${runs:-?}" "$files" >"$results/$t"
}

# The short CI pass runs as many targets at once as there are CPUs (nothing else runs then);
# the long pass one at a time, so each gets a whole core and its executions compare.
jobs=1
if [ "$mode" = ci ]; then jobs=$(nproc); fi
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    run_one "$t" &
done
wait || true
summary=()
for t in "${targets[@]}"; do
    row=$(cat "$results/$t" 2>/dev/null || echo FAILED)
    if [ "$row" = FAILED ]; then
        echo "!! fuzzing failed: $t"
        rm -rf "$results"
        exit 1
    fi
    summary+=("$row")
done
rm -rf "$results"

echo
echo "fuzzing: ${#targets[@]} targets, ${secs}s each, no crash"
printf '| %-22s | %12s | %8s |\n' target executions corpus
printf '|%s|%s|%s|\n' "------------------------" "--------------" "----------"
printf '%s\n' "${summary[@]}"
