#!/usr/bin/env bash
# End-to-end `s3cse rekey` throughput benchmark on the local test bed, with its baselines measured
# in the same run (plain boto3 GET+PUT copy, a Python rekey loop with AWS's S3 encryption client,
# a bare KMS GenerateDataKey loop). Prints a markdown report; --write-md BENCHMARKS.md puts it in
# that file's "## rekey throughput" section (the other sections are left alone).
#
#   scripts/bench-rekey.sh [--small N] [--small-kib K] [--large N] [--large-mib M]
#                          [--concurrency C] [--kms-calls N] [--rekey-arg=--no-verify]
#                          [--no-python-large] [--also-no-verify] [--also-concurrency N]
#                          [--floors] [--write-md BENCHMARKS.md] [--keep] [--no-build]
#
# --floors: also examples/sdk_floor and examples/raw_floor, each on its own fresh bucket: client
# CPU per object of rekey's four requests through aws-sdk-rust, and hand-signed over hyper.
#
# Defaults: 10,000 x 1 KiB and 3 x 256 MiB V1 raw-AES CBC objects, concurrency 16 (about 9 min
# on a 2-core machine; --also-no-verify --also-concurrency 64 add informative rows, ~4 min more).
# Options are those of scripts/bench/bench_rekey.py (see its --help), plus --no-build (use the
# existing target/release/s3cse as is; a release build is LTO'd: ~10 min on 2 cores).
# For runs to compare, restart the test bed first (scripts/testbed.sh down, then up): a bed left up
# all day through benchmarks got slower in every phase (BENCHMARKS.md, "An aged test bed"). The
# script does not do it itself, since other runs (tests, another benchmark) may share the bed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD=1
ARGS=()
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    *) ARGS+=("$a") ;;
  esac
done
if [ ! -x /usr/bin/time ]; then
  echo "bench-rekey: installing /usr/bin/time (apt-get install -y time)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
bash scripts/testbed.sh up >/dev/null
# shellcheck disable=SC1091
source .testbed/env
if [ "$BUILD" = 1 ]; then
  echo "bench-rekey: cargo build --release --bin s3cse --example sdk_floor --example raw_floor" >&2
  cargo build --release --bin s3cse --example sdk_floor --example raw_floor >&2
fi
[ -x target/release/s3cse ] || { echo "bench-rekey: no target/release/s3cse" >&2; exit 1; }
exec "$S3CSE_PY_AWSCLIENT" scripts/bench/bench_rekey.py \
  --command "scripts/bench-rekey.sh $*" "${ARGS[@]}"
