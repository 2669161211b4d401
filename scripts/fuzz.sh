#!/usr/bin/env bash
# Coverage-guided fuzzing of the targets in fuzz/targets.rs with cargo-fuzz (libFuzzer), on the
# stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags cargo-fuzz passes.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Seeds fuzz/corpus/TARGET from tests/vectors/ (what tests/fuzz.rs seeds from), runs each target
# for the given time on one core, and prints libFuzzer's final stats line per target. A crash
# leaves its input in fuzz/artifacts/TARGET/: copy it to fuzz/regressions/TARGET/ so that
# `cargo test --test fuzz` replays it for good. Needs `cargo install cargo-fuzz` and a C++
# compiler (libfuzzer-sys builds libFuzzer).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(envelope instruction_file context range decrypt content)
fi
export RUSTC_BOOTSTRAP=1
cd "$ROOT/fuzz"

seed() {
    local t="$1" dir="$ROOT/fuzz/corpus/$1"
    mkdir -p "$dir"
    case "$t" in
        envelope|instruction_file)
            for c in "$ROOT"/tests/vectors/cases/*/case.json; do
                python3 -c 'import json,sys; sys.stdout.write(json.dumps(json.load(open(sys.argv[1]))["metadata"]))' \
                    "$c" > "$dir/$(basename "$(dirname "$c")")"
            done ;;
        context)
            printf '%s' '{"aws:x-amz-cek-alg":"AES/GCM/NoPadding"}' > "$dir/ctx"
            printf '%s' '=?UTF-8?B?eyJrIjoidsOpIn0=?=' > "$dir/rfc2047-b"
            printf '%s' '=?ISO-8859-1?Q?=7B=22k=22:=22v=E9=22=7D?=' > "$dir/rfc2047-q" ;;
        *)
            printf 'bytes=0-15' > "$dir/range"
            head -c 64 /dev/zero > "$dir/zeros" ;;
    esac
}

cargo fuzz build --sanitizer none 2>&1 | tail -2
for t in "${TARGETS[@]}"; do
    seed "$t"
    mkdir -p "$ROOT/fuzz/artifacts/$t"
    echo "== $t: ${SECS}s"
    cargo fuzz run --sanitizer none "$t" "$ROOT/fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=512 -malloc_limit_mb=128 -print_final_stats=1 \
        -artifact_prefix="$ROOT/fuzz/artifacts/$t/" 2>&1 \
        | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added|Done|==[0-9]+== ERROR|SUMMARY)|panicked at' || true
done
