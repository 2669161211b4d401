#!/usr/bin/env bash
# The job queue at scale, SQLite and PostgreSQL in the same run (BENCHMARKS.md, "Shared queue"):
# enqueue keys/s, `status` latency and the claim+complete rate of 8 workers with ROWS rows.
#
#   scripts/bench-queue.sh [ROWS]      (1,000,000 by default)
#
# PostgreSQL is the test bed's (S3CSE_TEST_PG_URL from .testbed/env; a fresh database per run).
# Built in the dev profile unless BENCH_RELEASE=1 (dependencies, sqlx included, are optimized
# in both; the time goes to the databases).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PROFILE=()
[ "${BENCH_RELEASE:-0}" = 1 ] && PROFILE=(--release)
BENCH_ROWS=${1:-1000000} cargo test "${PROFILE[@]}" --lib store::tests::queue_scale \
    -- --ignored --nocapture --test-threads 1 2>&1 | grep -E '^(sqlite|postgres):|test result'
