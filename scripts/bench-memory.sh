#!/usr/bin/env bash
# Peak RSS of `s3cse put` and `s3cse get` on a large object (default 1 GiB) against the local test
# bed, measured with /usr/bin/time -v. The numbers go into BENCHMARKS.md ("S3 client memory").
#
#   scripts/bench-memory.sh [--keep] [SIZE_MIB] [debug|release]
#
# On the way out (also on failure, Ctrl-C or SIGTERM) it deletes what it made: the bucket
# bench-mem-PID with its object (and any multipart upload an interrupted put left open), the
# KMS key (scheduled for deletion: 7 days, KMS's least), the local input/output files, and the
# test bed if this run started it. --keep leaves all of them there and says where they are.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KEEP=0
POS=()
for a in "$@"; do
  case "$a" in
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench-memory: unknown option $a (see --help)" >&2; exit 2 ;;
    *) POS+=("$a") ;;
  esac
done
MIB=${POS[0]:-1024}
PROFILE=${POS[1]:-release}

# What this run has made so far; cleanup (the EXIT trap) removes exactly that, unless --keep.
T="" KEY="" BUCKET="" STARTED_TESTBED=0
admin() { "$S3CSE_PY_TESTBED" tests/peers/testbed_admin.py "$@"; }
cleanup() {
  local rc=$?
  set +e
  if [ "$KEEP" = 1 ]; then
    [ -n "$BUCKET" ] && echo "bench-memory: --keep: kept bucket $BUCKET" >&2
    [ -n "$KEY" ] && echo "bench-memory: --keep: kept KMS key $KEY" >&2
    [ -n "$T" ] && echo "bench-memory: --keep: kept $T" >&2
    [ "$STARTED_TESTBED" = 1 ] && echo "bench-memory: --keep: left the test bed running" >&2
    exit "$rc"
  fi
  if [ -n "$BUCKET" ]; then
    admin delete-bucket "$BUCKET" || echo "bench-memory: could not delete bucket $BUCKET" >&2
  fi
  if [ -n "$KEY" ]; then
    admin delete-key "$KEY" || echo "bench-memory: could not delete KMS key $KEY" >&2
  fi
  [ -n "$T" ] && rm -rf "$T"
  [ "$STARTED_TESTBED" = 1 ] && bash scripts/testbed.sh down >/dev/null
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
if ! bash scripts/testbed.sh running; then STARTED_TESTBED=1; fi
bash scripts/testbed.sh up >/dev/null
# shellcheck disable=SC1091
source .testbed/env
if [ "$PROFILE" = release ]; then cargo build --release --bin s3cse >/dev/null 2>&1; BIN=target/release/s3cse
else cargo build --bin s3cse >/dev/null 2>&1; BIN=target/debug/s3cse; fi
T=$(mktemp -d)
head -c $((MIB * 1024 * 1024)) /dev/urandom >"$T/in"
KEY=$(admin create-key --description "s3cse bench-memory" | tail -1)
BUCKET=bench-mem-$$
admin create-bucket "$BUCKET" >/dev/null
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
