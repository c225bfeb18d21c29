#!/usr/bin/env bash
# Runs meshca's cargo-fuzz targets (fuzz/fuzz_targets/) one after the other, each for a given
# time, starting from the committed seed corpus (fuzz/seeds/<target>/) plus whatever earlier
# runs added to fuzz/corpus/<target>/ (git-ignored).
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Defaults: 60 seconds, every target. Exits non-zero if any target crashes (a panic, a failed
# property assertion, an ASan report, a timeout or running out of memory), after printing where
# libFuzzer saved the input and how to replay it. Needs the nightly toolchain; installs
# cargo-fuzz from crates.io if it is missing.
#
# Environment:
#   FUZZ_TARGET_DIR  cargo target directory for the instrumented build (default fuzz/target)
#   CARGO_BUILD_JOBS cargo build jobs (cargo's own variable; cargo fuzz has no -j)
#   FUZZ_ARGS        extra libFuzzer flags for every run, e.g. "-max_len=4096"
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

seconds=60
if [[ $# -gt 0 ]]; then
    case "$1" in
        -h | --help) usage 0 ;;
        *[!0-9]* | '') ;;
        *)
            seconds=$1
            shift
            ;;
    esac
fi
if [[ "$seconds" -lt 1 ]]; then
    echo "fuzz.sh: the time per target must be at least 1 second" >&2
    exit 2
fi

# The list is read whole first: under pipefail, `rustup … | grep -q` can fail when grep stops
# reading before rustup has written everything.
toolchains=$(rustup toolchain list 2>/dev/null || true)
if ! grep -q '^nightly' <<<"$toolchains"; then
    echo "fuzz.sh: the nightly toolchain is missing (cargo-fuzz needs it for the sanitizer" \
        "flags): rustup toolchain install nightly" >&2
    exit 2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked --quiet
fi

mapfile -t all_targets < <(sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^meshca-fuzz$')
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${all_targets[@]}")
fi
for target in "${targets[@]}"; do
    if [[ ! -f "fuzz/fuzz_targets/$target.rs" ]]; then
        echo "fuzz.sh: unknown target $target; the targets are: ${all_targets[*]}" >&2
        exit 2
    fi
done

root=$(pwd)
target_dir=$(realpath -m "${FUZZ_TARGET_DIR:-fuzz/target}")
# -O: optimised, as fuzzing needs the speed; -a: with debug assertions, so that arithmetic
# overflow is a crash rather than a silently wrong value.
build_flags=(-O -a --target-dir "$target_dir")

echo "== building ${#targets[@]} fuzz target(s) (cargo +nightly fuzz build)"
build_start=$SECONDS
if [[ $# -eq 0 ]]; then
    cargo +nightly fuzz build "${build_flags[@]}"
else
    for target in "${targets[@]}"; do
        cargo +nightly fuzz build "${build_flags[@]}" "$target"
    done
fi
echo "== built in $((SECONDS - build_start)) s"

failed=()
summary=()
for target in "${targets[@]}"; do
    corpus="$root/fuzz/corpus/$target"
    seeds="$root/fuzz/seeds/$target"
    artifacts="$root/fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    log=$(mktemp)
    echo "== $target: ${seconds} s"
    # libFuzzer writes new inputs to the first directory only: the seeds stay as committed.
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags.
    if cargo +nightly fuzz run "${build_flags[@]}" "$target" "$corpus" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        summary+=("$target: ok, ${runs:-?} executions in ${seconds} s")
    else
        # The panic message or sanitizer report, then how libFuzzer ended.
        grep -m1 -A12 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer" "$log" || true
        echo "[...]"
        tail -n 25 "$log"
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        if [[ -n "$crash" ]]; then
            crash=${crash#"$root/"}
            summary+=("$target: CRASH, input saved as $crash")
            echo "fuzz.sh: $target crashed; the input is $crash" >&2
            echo "  replay: cargo +nightly fuzz run ${build_flags[*]} $target $crash" >&2
            echo "  shrink: cargo +nightly fuzz tmin ${build_flags[*]} $target $crash" >&2
        else
            summary+=("$target: FAILED (no crash input; see the output above)")
        fi
        failed+=("$target")
    fi
    rm -f "$log"
done

echo "== fuzzing summary"
printf '  %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    exit 1
fi
