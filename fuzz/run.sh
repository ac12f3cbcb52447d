#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, from the seeds in fuzz/seeds/TARGET,
# and prints per target the inputs tried and the crashes. Exits non-zero when a target crashed
# (panic, overflow, timeout or out of memory); the crashing input is kept and its path printed.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Installs nothing: needs cargo-fuzz (`cargo install cargo-fuzz --locked --version 0.13.2`) and a
# C++ compiler for libFuzzer. Works on a stable toolchain: with FUZZ_SANITIZER=none cargo-fuzz passes
# only stable -C flags; for `address` it passes -Zsanitizer, which stable rustc takes under
# RUSTC_BOOTSTRAP=1 (set here for both, so that switching does not rebuild everything).
# New corpus entries go to a scratch directory, never into the repo.
#
# Environment:
#   FUZZ_SANITIZER  address, or none (default: the parsers are safe Rust, so ASan finds nothing
#                   there that the debug assertions and overflow checks of the build do not, and it
#                   halves the executions; set `address` for a run that also checks unsafe code)
#   FUZZ_BUILD      extra `cargo fuzz build` options, e.g. `--dev` (CI: a faster build)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 10)
#   FUZZ_WORK       the scratch directory (default: a new one in /tmp, removed unless a crash)
set -uo pipefail
cd "$(dirname "$0")"

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(proc_files mallocstats tracer_output process_log)
fi
sanitizer=${FUZZ_SANITIZER:-none}
timeout=${FUZZ_TIMEOUT:-10}
export RUSTC_BOOTSTRAP=1
work=${FUZZ_WORK:-$(mktemp -d /tmp/pymemtrace-fuzz.XXXXXX)}
mkdir -p "$work"

# shellcheck disable=SC2086 # FUZZ_BUILD is a list of options
if ! cargo fuzz build --sanitizer "$sanitizer" ${FUZZ_BUILD:-} "${targets[@]:0:$(( ${#targets[@]} == 1 ? 1 : 0 ))}"; then
    echo "fuzz: build failed" >&2
    exit 1
fi

failed=0
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    artifacts="$work/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    log="$work/$target.log"
    start=$(date +%s)
    # The first corpus directory takes the new inputs; the seeds are only read.
    # shellcheck disable=SC2086
    cargo fuzz run --sanitizer "$sanitizer" ${FUZZ_BUILD:-} "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1
    status=$?
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    crashes=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="? (exit $status)"
    fi
    echo "fuzz: $target: ${execs:-?} inputs tried in ${took} s, corpus now $(find "$corpus" -type f | wc -l) inputs, crashes: $crashes"
    if [ "$status" -ne 0 ]; then
        failed=1
        grep -E -m 5 "panicked|ERROR|SUMMARY|Test unit written" "$log" | sed 's/^/fuzz:   /'
        echo "fuzz:   full log: $log" >&2
    fi
done

if [ "$failed" -ne 0 ]; then
    echo "fuzz: crashes found; inputs and logs kept in $work" >&2
    exit 1
fi
[ -z "${FUZZ_WORK:-}" ] && rm -rf "$work"
exit 0
