#!/usr/bin/env bash
# Instruction counts of the micro-benchmarks (issue 6): every case of the criterion benches
# runs exactly N times (V2SP_BENCH_ITERS, no criterion; see bench/benches/support/instr.rs)
# under `valgrind --tool=callgrind --toggle-collect='*instr_measured*'`, so only the measured
# iterations are counted; the table shows instructions per iteration. Deterministic up to a
# fraction of a percent (hash seeds, random padding), independent of machine load: compare
# commits with it, not with wall-clock numbers. Not run in CI (several minutes).
#
#   scripts/instr-count.sh                     # all benches, table to stdout + results file
#   scripts/instr-count.sh records limits      # some benches only
#   CASE='tls_seal/*' scripts/instr-count.sh records   # cases matching a shell pattern
#   scripts/instr-count.sh --compare results/instr/<earlier>.tsv [benches...]
#
# Env: CARGO_TARGET_DIR (default target), ITERS (default 20; publish_users uses 2), OUT (the
# results file, default results/instr/<UTC timestamp>.tsv), CASE (shell pattern on case names).
set -euo pipefail
cd "$(dirname "$0")/.."

compare=""
if [[ "${1:-}" == "--compare" ]]; then
    compare="$2"
    shift 2
fi
all=(records limits ss_framing vmess_auth publish)
benches=("$@")
[[ ${#benches[@]} -eq 0 ]] && benches=("${all[@]}")
iters="${ITERS:-20}"
case_pat="${CASE:-*}"
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }

pkg_of() {
    case "$1" in
        records | limits) echo v2sp-bench ;;
        ss_framing | vmess_auth) echo v2sp-dataplane ;;
        publish) echo v2sp-shared ;;
        *) echo "unknown bench $1 (${all[*]})" >&2; exit 2 ;;
    esac
}

# Build every bench once; cargo prints each executable's path.
args=()
for b in "${benches[@]}"; do args+=(-p "$(pkg_of "$b")" --bench "$b"); done
build_log=$(cargo bench "${args[@]}" --no-run --message-format=short 2>&1) || { echo "$build_log" >&2; exit 1; }

out="${OUT:-results/instr/$(date -u +%Y%m%d-%H%M%S).tsv}"
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'case\titers\tinstructions_per_iter\n' >"$out"
printf '%-56s %8s %16s' case iters "Ir/iter"
[[ -n "$compare" ]] && printf ' %16s %8s' before change
printf '\n'
for b in "${benches[@]}"; do
    exe=$(echo "$build_log" | sed -n "s|.*Executable benches/$b.rs (\(.*\))|\1|p" | tail -1)
    [[ -x "$exe" ]] || { echo "no executable for $b" >&2; exit 1; }
    while IFS= read -r name; do
        # shellcheck disable=SC2053
        [[ "$name" == $case_pat ]] || continue
        n="$iters"
        [[ "$name" == publish_users/* ]] && n=2
        cg="$tmp/cg.out"
        V2SP_BENCH_ITERS="$n" V2SP_BENCH_CASE="$name" valgrind --tool=callgrind \
            --toggle-collect='*instr_measured*' --callgrind-out-file="$cg" "$exe" --bench \
            >"$tmp/log" 2>&1 || { echo "FAILED $name:"; tail -20 "$tmp/log"; exit 1; }
        ir=$(sed -n 's/^summary: *//p' "$cg" | head -1)
        per=$(( ir / n ))
        printf '%s\t%s\t%s\n' "$name" "$n" "$per" >>"$out"
        printf '%-56s %8s %16s' "$name" "$n" "$per"
        if [[ -n "$compare" ]]; then
            before=$(awk -F'\t' -v c="$name" '$1 == c { print $3 }' "$compare")
            if [[ -n "$before" && "$before" -gt 0 ]]; then
                printf ' %16s %+7.1f%%' "$before" "$(echo "scale=4; ($per - $before) * 100 / $before" | bc)"
            else
                printf ' %16s %8s' - -
            fi
        fi
        printf '\n'
    done < <(V2SP_BENCH_LIST=1 "$exe" --bench)
done
echo "results: $out"
