#!/usr/bin/env bash
# How far the shared --kms-rps budget of a PostgreSQL run drifts (BENCHMARKS.md, "Shared
# queue"): 90 objects at --kms-rps 10 by one process, then by three sharing it, same run.
# Needs the test bed with PostgreSQL (source .testbed/env).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test postgres budget_drift -- --ignored --nocapture 2>&1 | grep -E '^budget:|test result'
