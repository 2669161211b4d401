#!/usr/bin/env bash
# Peak RSS of `s3cse put` and `s3cse get` on a large object (default 1 GiB) against the local test
# bed, measured with /usr/bin/time -v. Usage: scripts/bench-memory.sh [SIZE_MIB] [debug|release]
# The numbers go into BENCHMARKS.md ("S3 client memory").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MIB=${1:-1024}
PROFILE=${2:-release}
command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
bash scripts/testbed.sh up >/dev/null
# shellcheck disable=SC1091
source .testbed/env
if [ "$PROFILE" = release ]; then cargo build --release --bin s3cse >/dev/null 2>&1; BIN=target/release/s3cse
else cargo build --bin s3cse >/dev/null 2>&1; BIN=target/debug/s3cse; fi
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
head -c $((MIB * 1024 * 1024)) /dev/urandom >"$T/in"
KEY=$("$S3CSE_PY_TESTBED" tests/peers/testbed_admin.py create-key | tail -1)
BUCKET=bench-mem-$$
"$S3CSE_PY_TESTBED" tests/peers/testbed_admin.py create-bucket "$BUCKET" >/dev/null
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$T/time" >"$T/stdout" || { cat "$T/time"; exit 1; }
  local rss wall
  rss=$(awk -F': ' '/Maximum resident/ {print int($2/1024)}' "$T/time")
  wall=$(awk -F': ' '/Elapsed/ {print $2}' "$T/time")
  printf '| %-34s | %6s MiB | %8s |\n' "$label" "$rss" "$wall"
}
echo "| command ($MIB MiB object, $PROFILE build) | peak RSS | wall |"
echo "|---|---|---|"
measure "s3cse put (multipart, 8 MiB parts)" "$BIN" put "$T/in" "s3://$BUCKET/obj" --kms-key-id "$KEY"
measure "s3cse get -o FILE" "$BIN" get "s3://$BUCKET/obj" -o "$T/out" --kms-key-id "$KEY"
cmp "$T/in" "$T/out"
measure "s3cse get (stdout, verified spool)" "$BIN" get "s3://$BUCKET/obj" --kms-key-id "$KEY"
cmp "$T/in" "$T/stdout"
