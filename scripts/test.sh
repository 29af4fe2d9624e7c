#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   1. installs the real third-party peers (idempotent; seconds on a warm machine),
#   2. runs every test of the workspace with the epoll backend,
#   3. runs the data-plane and end-to-end tests again with the io_uring backend,
#   4. builds each protocol feature alone and runs the data plane's unit tests for it,
#   5. runs the benchmark harness in --quick mode (smoke only: every server and scenario runs,
#      nothing about speed is asserted; reports go to a temporary directory),
#   6. fuzzes every target for 20 s (scripts/fuzz.sh --ci: cargo-fuzz, fresh corpora, as many at
#      once as CPUs),
#   7. tests packaging: release.sh --dry-run on a clone, the .deb installed, removed and purged,
#      install.sh from that release (scripts/test-packaging.sh).
# Every pass runs even when an earlier one failed, so one failing suite never hides the results
# of the others; the script ends with a summary of the passes and exits non-zero if any failed.
# Usage: scripts/test.sh [extra cargo test args]
set -Euo pipefail
cd "$(dirname "$0")/.."

export V2SP_PEERS=${V2SP_PEERS:-/opt/v2sp-peers}
export PATH="$V2SP_PEERS/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A one-shot run gains nothing from incremental state and it costs gigabytes of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed_passes=()
passes=0

# pass NAME CMD...: runs CMD with its output kept for the closing count; a failure is recorded,
# not fatal.
pass() {
    local name=$1
    shift
    passes=$((passes + 1))
    echo "== $name"
    if ! "$@" 2>&1 | tee -a "$log"; then
        echo "!! pass failed: $name"
        failed_passes+=("$name")
    fi
}

echo "== installing test peers"
if ! bash scripts/install-test-deps.sh --with-debian-peers --with-shoes --with-xray; then
    # Without the peers most suites cannot run: stop here, loudly.
    echo "!! installing the test peers failed; nothing was tested"
    echo "all suites: 0 passed, 1 failed"
    exit 1
fi

echo "== building"
if ! cargo build --workspace --bins --tests "$@"; then
    echo "!! the workspace does not build; nothing was tested"
    echo "all suites: 0 passed, 1 failed"
    exit 1
fi

# cargo-nextest runs each test in its own process and keeps both CPUs busy across test
# binaries (cargo test runs the binaries one after another, so one long interop test holds up
# the rest). The workspace has no doctests (its code blocks are diagrams).
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
pass "tests, epoll backend" env V2SP_IO=epoll cargo nextest run --workspace --no-fail-fast "$@"

# The QUIC suites (Hysteria 2, TUIC) are left out of the io_uring pass: QUIC runs on quinn's
# own UDP sockets and copy loops whatever the backend, so a second run would test nothing new
# (they are a third of this pass's time). upgrade_e2e keeps its QUIC tests in both passes.
if [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" = "0" ]; then
    pass "data-plane and end-to-end tests, io_uring backend" \
        env V2SP_IO=uring cargo nextest run -p v2sp-dataplane -p v2sp-control -p v2sp-testsupport --no-fail-fast \
        -E 'not (binary(hysteria2_interop) | binary(tuic_interop) | binary(quic_adversarial))' "$@"
else
    echo "== io_uring is disabled on this kernel: the io_uring run is skipped"
fi

# Cargo features trim protocols out of the build: each protocol alone must build (every target)
# and pass its unit tests (the wire code's in v2sp-proto, the driving code's in the data plane). The list is read from the data plane's [features] table.
feature_pass() {
    local f=$1
    shift
    cargo check -q -p v2sp-dataplane --all-targets --no-default-features --features "$f" "$@" &&
        cargo test -q -p v2sp-proto --lib --no-default-features --features "$f" "$@" &&
        cargo test -q -p v2sp-dataplane --lib --no-default-features --features "$f" "$@"
}
for f in $(awk '/^\[features\]/{on=1; next} /^\[/{on=0} on && /^[a-z0-9_-]+ *=/ && $1 != "default" && $1 != "quic" {print $1}' dataplane/Cargo.toml); do
    pass "protocol feature alone: $f" feature_pass "$f" "$@"
done

out=$(mktemp -d)
# With Xray installed and `unshare --net` permitted, the quick run includes the XHTTP suites and
# re-runs itself inside a loopback-only network namespace (Xray runs nowhere else).
pass "benchmark harness, quick mode (v2sp epoll/uring vs ssserver, sing-box, v2ray, shoes, xray where installed)" \
    cargo run -q -p v2sp-bench "$@" -- run --quick --out "$out"
echo "quick benchmark report: $out/report.md"

# The short fuzz pass (issue 11): every target for 20 s on a fresh corpus under AddressSanitizer
# (cargo-fuzz, libFuzzer), two targets at a time; fails if any crashed. The sanitizer build has its own target
# directory. scripts/fuzz.sh --long is the long run (not in CI).
pass "fuzz: every target 20 s (cargo-fuzz / libFuzzer, fresh corpus)" \
    env CARGO_TARGET_DIR="$PWD/target/fuzz" bash scripts/fuzz.sh --ci 20

# Last: it builds release tarballs of a clone of HEAD into the same target directory.
pass "packaging: release.sh --dry-run, .deb install/remove/purge, install.sh from a release" \
    bash scripts/test-packaging.sh

echo "== summary: $((passes - ${#failed_passes[@]})) of $passes passes succeeded"
for p in "${failed_passes[@]}"; do
    echo "   FAILED: $p"
done
# One closing line for the whole run (both backends), summed from nextest's summaries and
# cargo test's per-binary results; a failed pass with no failed test (a build error, a crash)
# still counts as a failure.
awk -v extra="${#failed_passes[@]}" '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
    /^ *Summary \[/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed,?$/) p += $(i-1); if ($i ~ /^failed,?$/) f += $(i-1) } }
    END { if (f == 0 && extra > 0) f = extra; printf "all suites: %d passed, %d failed\n", p, f }' "$log"
[ ${#failed_passes[@]} -eq 0 ]
