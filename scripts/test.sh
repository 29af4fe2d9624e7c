#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. installs the real third-party peers (idempotent; seconds on a warm machine),
#   2. runs every test of the workspace with the epoll backend,
#   3. runs the data-plane and end-to-end tests again with the io_uring backend,
#   4. builds each protocol feature alone and runs the data plane's unit tests for it,
#   5. runs the benchmark harness in --quick mode (smoke only: every server and scenario runs,
#      nothing about speed is asserted; reports go to a temporary directory).
# Usage: scripts/test.sh [extra cargo test args]
set -Eeuo pipefail
cd "$(dirname "$0")/.."

export V2SP_PEERS=${V2SP_PEERS:-/opt/v2sp-peers}
export PATH="$V2SP_PEERS/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A one-shot run gains nothing from incremental state and it costs gigabytes of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

echo "== installing test peers"
bash scripts/install-test-deps.sh --with-debian-peers --with-shoes

echo "== building"
cargo build --workspace --bins --tests "$@"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== tests, epoll backend"
V2SP_IO=epoll cargo test --workspace --no-fail-fast "$@" 2>&1 | tee -a "$log"

if [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" = "0" ]; then
    echo "== data-plane and end-to-end tests, io_uring backend"
    V2SP_IO=uring cargo test -p v2sp-dataplane -p v2sp-control -p v2sp-testsupport --no-fail-fast "$@" 2>&1 | tee -a "$log"
else
    echo "== io_uring is disabled on this kernel: the io_uring run is skipped"
fi

# Cargo features trim protocols out of the build: each protocol alone must build (every target)
# and pass its unit tests. The list is read from the data plane's [features] table.
echo "== each protocol feature alone"
for f in $(awk '/^\[features\]/{on=1; next} /^\[/{on=0} on && /^[a-z0-9_-]+ *=/ && $1 != "default" {print $1}' dataplane/Cargo.toml); do
    echo "-- --features $f"
    cargo check -q -p v2sp-dataplane --all-targets --no-default-features --features "$f" "$@"
    cargo test -q -p v2sp-dataplane --lib --no-default-features --features "$f" "$@" 2>&1 | tee -a "$log"
done

echo "== benchmark harness, quick mode (v2sp epoll/uring vs ssserver, sing-box, v2ray, shoes where installed)"
out=$(mktemp -d)
cargo run -q -p v2sp-bench "$@" -- run --quick --out "$out"
echo "quick benchmark report: $out/report.md"

# One closing line for the whole run (both backends), summed from cargo's per-binary results.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "all suites: %d passed, %d failed\n", p, f }' "$log"
