#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer) on the stable toolchain.
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]   run TARGET, or every target one after the other
#                                            (default), for SECONDS each (default 60)
#   scripts/fuzz.sh seeds                    (re)write the seed inputs into fuzz/corpus/
#   scripts/fuzz.sh cmin [TARGET|all]        minimize the corpora in place (keep them small)
#   scripts/fuzz.sh list                     the targets
#
# Targets: fuzz/fuzz_targets/*.rs, each a call into src/fuzzing.rs, where the invariants each one
# checks are written. Runs start from and add to fuzz/corpus/TARGET/ (kept in git, minimized);
# a failure is saved in fuzz/artifacts/TARGET/ (not kept) and replays with
#   fuzz/target/x86_64-unknown-linux-gnu/release/TARGET fuzz/artifacts/TARGET/crash-…
# and becomes a unit test. One libFuzzer process at a time (the machines have 2 cores).
#
# How cargo fuzz runs on stable: `-s none` (no sanitizer). Its default, AddressSanitizer, passes
# -Zsanitizer=address, which only nightly accepts; with `-s none` no unstable flag is used, so no
# nightly and no RUSTC_BOOTSTRAP. The build keeps debug assertions and overflow checks on
# (cargo fuzz's default), and the targets' allocator aborts on any allocation above 64 MiB
# (libFuzzer's -malloc_limit_mb needs a sanitizer's malloc hooks).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(http_head http_framing json_bodies wal_record wal_recovery)
SANITIZER=(-s none)

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# Longest input libFuzzer makes: the connection driver's read buffer starts at 4 KiB, so its
# target gets room to grow it.
max_len() {
    case "$1" in
    http_framing) echo 16384 ;;
    *) echo 4096 ;;
    esac
}

known() {
    local target
    for target in "${TARGETS[@]}"; do
        [[ $target == "$1" ]] && return 0
    done
    echo "fuzz.sh: no target '$1' (targets: ${TARGETS[*]})" >&2
    exit 2
}

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz.sh: cargo-fuzz is not installed; installing it: cargo install cargo-fuzz --locked" >&2
        cargo install cargo-fuzz --locked
    fi
}

seeds() {
    echo "== writing seeds into fuzz/corpus/"
    cargo test --lib fuzzing::tests::write_seeds -- --ignored --exact
}

run_one() {
    local target=$1 seconds=$2
    local log="fuzz/target/fuzz-$target.log"
    mkdir -p "fuzz/corpus/$target" fuzz/target
    echo "== $target for ${seconds}s (log: $log)"
    set +e
    cargo fuzz run "${SANITIZER[@]}" "$target" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
    local status=$?
    set -e
    # libFuzzer's last status line (runs, coverage, corpus) and its final statistics.
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    if ((status != 0)); then
        grep -E 'panicked at|^thread|bounded_alloc|ERROR: libFuzzer' -A2 "$log" | head -20 >&2 || true
        echo "== $target FAILED (exit $status): the input is in fuzz/artifacts/$target/" >&2
    fi
    echo "   corpus: $(find "fuzz/corpus/$target" -type f | wc -l) files, $(du -sh --apparent-size "fuzz/corpus/$target" | cut -f1)"
    return "$status"
}

cmin_one() {
    local target=$1
    echo "== cmin $target: $(find "fuzz/corpus/$target" -type f | wc -l) files before"
    cargo fuzz cmin "${SANITIZER[@]}" "$target" -- -max_len="$(max_len "$target")" >"fuzz/target/cmin-$target.log" 2>&1
    echo "   $(find "fuzz/corpus/$target" -type f | wc -l) files, $(du -sh --apparent-size "fuzz/corpus/$target" | cut -f1) after"
}

command=${1:-all}
case "$command" in
-h | --help | help) usage ;;
list) printf '%s\n' "${TARGETS[@]}" ;;
seeds) seeds ;;
cmin)
    ensure_cargo_fuzz
    mkdir -p fuzz/target
    if [[ ${2:-all} == all ]]; then
        for target in "${TARGETS[@]}"; do cmin_one "$target"; done
    else
        known "$2"
        cmin_one "$2"
    fi
    ;;
*)
    seconds=${2:-60}
    [[ $seconds =~ ^[0-9]+$ ]] || usage
    ensure_cargo_fuzz
    if [[ $command == all ]]; then
        selected=("${TARGETS[@]}")
    else
        known "$command"
        selected=("$command")
    fi
    echo "== building the fuzz targets (cargo fuzz build ${SANITIZER[*]})"
    cargo fuzz build "${SANITIZER[@]}"
    failed=()
    for target in "${selected[@]}"; do
        run_one "$target" "$seconds" || failed+=("$target")
    done
    if ((${#failed[@]} > 0)); then
        echo "fuzz.sh: failed: ${failed[*]}" >&2
        exit 1
    fi
    echo "fuzz.sh: ${#selected[@]} target(s), no failure"
    ;;
esac
