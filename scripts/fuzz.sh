#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ with cargo-fuzz (libFuzzer), each for a bounded time.
#   scripts/fuzz.sh                 every target, 60 s each
#   scripts/fuzz.sh trojan 600      one target, 10 minutes
# Corpora live in fuzz/corpus/<target> (not committed); crashes in fuzz/artifacts/<target>.
# cargo-fuzz needs nightly-only flags (sanitizer coverage); RUSTC_BOOTSTRAP lets the machine's
# one stable toolchain accept them, as no other toolchain can be installed here.
set -Eeuo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
secs=${2:-60}
if [ $# -ge 1 ] && [ "$1" != all ]; then targets=("$1"); else mapfile -t targets < <(cargo fuzz list); fi
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "corpus/$t"
    cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=4096
done
