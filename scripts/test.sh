#!/usr/bin/env bash
# THE test command: everything CI runs (.ci/run execs this), runnable the same way on a laptop.
#
#   1. cargo fmt --check
#   2. scripts/testbed.sh up (venvs + SeaweedFS + moto + Prometheus + Pushgateway, on free ports),
#      in the background while clippy builds; Prometheus and the Pushgateway (and promtool) are
#      installed with apt-get when missing (Debian packages prometheus, prometheus-pushgateway)
#   3. cargo clippy --all-targets -- -D warnings
#   4. cargo test --all-targets, then cargo test --doc, then the crash matrix (tests/crash.rs,
#      built with the `failpoints` feature), with the test-bed env sourced
#   5. pytest tests/chart (if that directory exists), with S3CSE_BIN set to the built binary and
#      S3CSE_METRICS_SCRAPE to the scrape the Rust tests saved (if they did)
#   6. tests/peers/smoke.sh (the peer scripts against the test bed)
#   7. a slice of the benchmark scripts (bench_rekey.py with the floors, bench-latency.sh through
#      the delay proxy) on a few objects with the dev build: they run end to end, no figure judged
#   8. scripts/testbed.sh down, on exit, if this run started the test bed (PostgreSQL included)
#
# Every step runs even if an earlier one failed; exit status is non-zero if any failed. The last
# line is "s3cse: N passed, N failed": tests counted from cargo's, pytest's and the smoke script's
# own summaries, plus one failure for each step that failed without a test count (fmt, clippy,
# test bed, a build error).
# Env: S3CSE_KEEP_TESTBED=1 leaves the test bed running at the end; TESTBED_DIR (default .testbed)
# picks the test bed, so two checkouts (or two runs) each use their own.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export TESTBED_DIR="${TESTBED_DIR:-$ROOT/.testbed}"
LOGS="$TESTBED_DIR/logs"
mkdir -p "$LOGS"
T0=$SECONDS

passed=0 failed=0 steps=()
step_ok() { steps+=("$1 ok"); }
step_fail() { steps+=("$1 FAILED"); }
banner() { printf '\n==== %s\n' "$*"; }

started_testbed=0
cleanup() {
  local rc=$?
  if [ -n "${TESTBED_UP_PID:-}" ]; then wait "$TESTBED_UP_PID" 2>/dev/null || true; fi
  if [ "$started_testbed" = 1 ] && [ "${S3CSE_KEEP_TESTBED:-0}" != 1 ]; then
    bash scripts/testbed.sh down || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# Prints "PASSED FAILED" summed over the lines of file $1 that match regex $2, counting the
# "N passed" / "N failed" / "N error(s)" in them (cargo: "test result: ok. 3 passed; 0 failed; ...",
# pytest: "2 failed, 40 passed, 1 skipped in 3.1s").
count_tests() {
  awk -v re="$2" '$0 ~ re { gsub(/[;,=]/, " "); for (i = 1; i < NF; i++) {
      if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^(failed|errors?)$/) f += $i } }
    END { print p + 0, f + 0 }' "$1"
}

# ---- toolchain
command -v cargo >/dev/null || { echo "test.sh: cargo not found" >&2; exit 1; }
for c in fmt clippy; do
  cargo "$c" --version >/dev/null 2>&1 || { echo "test.sh: 'cargo $c' is missing (rustup component add $c)" >&2; exit 1; }
done

# ---- 1. format
banner "cargo fmt --check"
if cargo fmt --all --check; then step_ok fmt; else step_fail fmt; failed=$((failed + 1)); fi

# ---- 2. test bed, in the background (the venv install overlaps with the clippy build)
# tests/observability.rs needs a real Prometheus, Pushgateway and promtool (INFRA.md §6).
if ! command -v prometheus >/dev/null || ! command -v prometheus-pushgateway >/dev/null \
  || ! command -v promtool >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing prometheus and prometheus-pushgateway with apt-get"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-pushgateway; } \
      >"$LOGS/apt-prometheus.log" 2>&1 || echo "test.sh: apt-get failed, see $LOGS/apt-prometheus.log" >&2
  else
    echo "test.sh: prometheus/prometheus-pushgateway missing and apt-get unusable; their tests will fail" >&2
  fi
fi
# tests/postgres.rs and the store's PostgreSQL tests need PostgreSQL 15's server binaries.
if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing postgresql-15 with apt-get"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; } \
      >"$LOGS/apt-postgresql.log" 2>&1 || echo "test.sh: apt-get failed, see $LOGS/apt-postgresql.log" >&2
  else
    echo "test.sh: PostgreSQL 15 missing and apt-get unusable; the PostgreSQL tests will fail" >&2
  fi
fi
if bash scripts/testbed.sh running; then
  # `up` reuses every server running and starts only what the bed lacks (e.g. PostgreSQL, on
  # a bed started by an older script); the bed stays up after the run.
  echo "test.sh: test bed already running; reusing it and leaving it up"
  bash scripts/testbed.sh up >"$LOGS/testbed-up.log" 2>&1 &
  TESTBED_UP_PID=$!
else
  started_testbed=1
  bash scripts/testbed.sh up >"$LOGS/testbed-up.log" 2>&1 &
  TESTBED_UP_PID=$!
fi

# ---- 3. clippy
banner "cargo clippy --all-targets -- -D warnings"
if cargo clippy --locked --all-targets -- -D warnings; then step_ok clippy; else step_fail clippy; failed=$((failed + 1)); fi

banner "scripts/testbed.sh up"
testbed_ok=1
if [ -n "$TESTBED_UP_PID" ]; then
  if wait "$TESTBED_UP_PID"; then cat "$LOGS/testbed-up.log"; else testbed_ok=0; cat "$LOGS/testbed-up.log"; fi
  TESTBED_UP_PID=""
fi
if [ "$testbed_ok" = 1 ]; then
  step_ok testbed
  # shellcheck disable=SC1091
  . "$TESTBED_DIR/env"
else
  step_fail testbed; failed=$((failed + 1))
  echo "test.sh: test bed failed to start; tests that need it will fail or skip" >&2
fi

# ---- 4. cargo test
# The Rust integration tests (tests/rekey.rs) save a real /metrics scrape to $S3CSE_METRICS_SCRAPE,
# default .testbed/metrics-scrape.txt; the chart tests (step 5) check names against it if it exists.
SCRAPE="${S3CSE_METRICS_SCRAPE:-$TESTBED_DIR/metrics-scrape.txt}"
export S3CSE_METRICS_SCRAPE="$SCRAPE"
rm -f "$SCRAPE"
for args in "--all-targets" "--doc" "--features failpoints --test crash"; do
  banner "cargo test $args"
  rc=0
  # shellcheck disable=SC2086
  cargo test --locked $args 2>&1 | tee "$LOGS/cargo-test.log" || rc=$?
  read -r p f < <(count_tests "$LOGS/cargo-test.log" '^test result:')
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$rc" = 0 ]; then step_ok "test$args"
  else
    step_fail "test$args"
    [ "$f" -gt 0 ] || failed=$((failed + 1)) # a build error or crash: no test count to show it
  fi
done

# ---- 5. chart tests
if [ -d tests/chart ]; then
  banner "pytest tests/chart"
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/s3cse"
  if [ -x "$BIN" ]; then export S3CSE_BIN="$BIN"; fi
  if [ ! -s "$SCRAPE" ]; then
    unset S3CSE_METRICS_SCRAPE
    echo "test.sh: no metrics scrape from the Rust tests; chart tests use their built-in contract"
  fi
  rc=0
  "$ROOT/.venv/testbed/bin/python" -m pytest tests/chart -q -p no:cacheprovider 2>&1 | tee "$LOGS/pytest-chart.log" || rc=$?
  # pytest's closing line: "40 passed, 1 skipped in 3.10s" (-q) or "=== ... in 3.10s ===".
  read -r p f < <(tail -n 1 "$LOGS/pytest-chart.log" > "$LOGS/pytest-chart.last"
    count_tests "$LOGS/pytest-chart.last" ' in [0-9.]+s')
  passed=$((passed + p)); failed=$((failed + f))
  case "$rc" in
    0) step_ok chart ;;
    5) steps+=("chart collected no tests") ;; # pytest's "no tests collected": not a failure
    *) step_fail chart; [ "$f" -gt 0 ] || failed=$((failed + 1)) ;;
  esac
else
  steps+=("chart skipped (no tests/chart)")
fi

# ---- 6. peers against the test bed
banner "tests/peers/smoke.sh"
rc=0
bash tests/peers/smoke.sh 2>&1 | tee "$LOGS/peers-smoke.log" || rc=$?
read -r p f < <(count_tests "$LOGS/peers-smoke.log" '^peers: [0-9]+ passed, [0-9]+ failed$')
passed=$((passed + p)); failed=$((failed + f))
if [ "$rc" = 0 ]; then step_ok peers; else step_fail peers; [ "$f" -gt 0 ] || failed=$((failed + 1)); fi

# ---- 7. a slice of the benchmarks: the scripts end to end on a few objects, dev build. Their
# own checks hold (every object migrated, none failed, one GenerateDataKey per object, objects
# read back with AWS's client); the figures need a release build and a quiet machine, so none
# is judged here (BENCHMARKS.md).
banner "benchmark slice"
bench_failed=0
bench_slice() { # label, command... (15 minutes at most: a hung proxy must not hang CI)
  local label=$1 rc=0; shift
  timeout 900 "$@" >"$LOGS/bench-$label.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1)); echo "bench $label: ok"
  else
    failed=$((failed + 1)); bench_failed=1
    echo "bench $label: FAILED (exit $rc), $LOGS/bench-$label.log:"
    tail -n 20 "$LOGS/bench-$label.log"
  fi
}
# The dev build's s3cse here is the failpoints build of step 4 (inert without S3CSE_FAILPOINT).
DEV="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
if [ ! -x /usr/bin/time ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null 2>&1; } || true
fi
if [ ! -x "$DEV/s3cse" ] || [ -z "${S3CSE_PY_AWSCLIENT:-}" ]; then
  step_fail "benchmark slice (no dev build or test bed)"; failed=$((failed + 1))
elif [ ! -x /usr/bin/time ]; then
  step_fail "benchmark slice (no /usr/bin/time)"; failed=$((failed + 1))
# cargo test builds the examples as test harnesses; the scripts run them as programs.
elif ! cargo build --locked --examples; then
  step_fail "benchmark slice (cargo build --examples)"; failed=$((failed + 1))
else
  bench_slice rekey "$S3CSE_PY_AWSCLIENT" scripts/bench/bench_rekey.py --bin "$DEV/s3cse" \
    --small 100 --small-kib 4 --large 0 --kms-calls 100 --floors
  bench_slice latency bash scripts/bench-latency.sh --no-build --bin "$DEV/s3cse" \
    --sweep 4 --small 60 --kms-calls 60
  if [ "$bench_failed" = 0 ]; then step_ok "benchmark slice"; else step_fail "benchmark slice"; fi
fi

# ---- summary (the test bed goes down in the EXIT trap)
banner "summary ($((SECONDS - T0))s)"
summary="$(IFS=','; echo "${steps[*]}")"
echo "steps: ${summary//,/, }"
echo "s3cse: $passed passed, $failed failed"
[ "$failed" = 0 ]
