#!/usr/bin/env bash
# Listing cost with 1, 4 and 16 listers (`s3cse scan --listers N`, in one process: SQLite has
# one writer process per state file) and with `--shard I/4` (four state files), on a bucket of
# KEYS empty objects under PREFIXES top-level prefixes. Prints ListObjectsV2 requests per
# 1,000 keys (from scan's own count, which tests/listing.rs checks against the SDK's attempt
# counter), range splits and wall time, each against the one-lister run of the same invocation.
#
#   scripts/bench-listing.sh [KEYS] [PREFIXES]     (100,000 keys under 50 prefixes by default)
#
# Needs the test bed (source .testbed/env). Seeds a fresh bucket bench-list-PID with boto3 and
# deletes it on the way out; S3CSE_BENCH_BUCKET=NAME uses (and keeps) that bucket instead, seeded
# only when it is empty (seeding 300k keys takes ~10 min here: seed once, run again). S3CSE_BIN picks the binary (target/release/s3cse by default; the
# dev profile is optimized too).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEYS=${1:-100000}
PREFIXES=${2:-50}
BIN=${S3CSE_BIN:-$ROOT/target/release/s3cse}
PY=${S3CSE_PY_AWSCLIENT:-$ROOT/.venv/awsclient/bin/python}
BUCKET=${S3CSE_BENCH_BUCKET:-bench-list-$$}
WORK=$(mktemp -d)
seed() {
  "$PY" - "$BUCKET" "$1" "$KEYS" "$PREFIXES" <<'PY'
import os, sys, boto3
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config
bucket, what, keys, prefixes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3"),
                  config=Config(max_pool_connections=64, s3={"addressing_style": "path"}))
if what == "up":
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    if s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0):
        sys.exit(0)  # a kept bucket, seeded before
    names = [f"p{i % prefixes:03d}/obj-{i:08d}" for i in range(keys)]
    with ThreadPoolExecutor(64) as ex:
        list(ex.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b""), names))
else:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)
PY
}
cleanup() {
  if [ -n "${S3CSE_BENCH_BUCKET:-}" ]; then rm -rf "$WORK"; return; fi
  seed down >/dev/null 2>&1 || echo "bench-listing: bucket $BUCKET left behind" >&2
  rm -rf "$WORK"
}
trap cleanup EXIT
T0=$(date +%s.%N)
seed up
echo "seeded $KEYS keys under $PREFIXES prefixes in $(echo "$(date +%s.%N) - $T0" | bc) s"

run() { # NAME ARGS...: one scan into a fresh state file; prints "requests splits seconds"
  local name=$1; shift
  local t0 t1 out
  t0=$(date +%s.%N)
  out=$("$BIN" scan "s3://$BUCKET" --state "$WORK/$name.db" "$@" 2>"$WORK/$name.err")
  t1=$(date +%s.%N)
  echo "$out" | sed -E 's/.*\(([0-9,]+) ListObjectsV2 requests, ([0-9,]+) range splits\).*/\1 \2/; s/,//g' \
    | tr '\n' ' '
  echo "$t1 - $t0" | bc
}

shares() { # NAME: the keys each lister enqueued ("lister finished" log lines), as % of KEYS
  grep -o 'lister finished.*keys=[0-9]*' "$WORK/$1.err" | sed 's/.*keys=//' | sort -n \
    | awk -v k="$KEYS" '{ if ($1 > 0) n++; s = s sprintf("%s%.0f", NR > 1 ? " " : "", 100 * $1 / k) }
                         END { printf "%d working: %s", n, s }'
}

printf '%-14s %10s %12s %7s %8s %9s  %s\n' run requests "req/1k keys" splits "wall s" "vs 1" \
  "listers with keys: share of keys per lister, %"
BASE=""
for L in 1 4 16; do
  read -r REQ SPLITS SECS < <(run "l$L" --listers "$L")
  [ -z "$BASE" ] && BASE=$SECS
  printf '%-14s %10d %12.3f %7d %8.2f %9.2f  %s\n' "--listers $L" "$REQ" \
    "$(echo "$REQ * 1000 / $KEYS" | bc -l)" "$SPLITS" "$SECS" "$(echo "$SECS / $BASE" | bc -l)" \
    "$(shares "l$L")"
done
TOTAL=0 SPL=0 MAX=0
for I in 0 1 2 3; do
  read -r REQ SPLITS SECS < <(run "s$I" --shard "$I/4")
  TOTAL=$((TOTAL + REQ)); SPL=$((SPL + SPLITS))
  MAX=$(echo "if ($SECS > $MAX) $SECS else $MAX" | bc -l)
done
printf '%-14s %10d %12.3f %7d %8.2f %9.2f\n' "--shard I/4" "$TOTAL" \
  "$(echo "$TOTAL * 1000 / $KEYS" | bc -l)" "$SPL" "$MAX" "$(echo "$MAX / $BASE" | bc -l)"
echo "(--shard: the four shards' requests summed; wall time of the slowest shard, run one after another)"
