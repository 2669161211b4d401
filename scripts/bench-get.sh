#!/usr/bin/env bash
# `s3cse get -o FILE` of a large V2 GCM object (parallel ranged GETs, CTR in parallel, the whole
# tag checked before the file appears) against boto3's transfer manager downloading the same
# stored bytes (`download_file`, same part size and concurrency, no decryption), in the same run.
# Reports wall clock, client CPU (user+sys), peak RSS (/usr/bin/time -v) and the throughput ratio.
# Figures go into BENCHMARKS.md ("Parallel authenticated GET").
#
#   scripts/bench-get.sh [--keep] [--no-build] [--bin BIN] [--mib N] [--rounds R]
#                        [--part-mib P] [--concurrency C] [--delay-ms D]
#
# Defaults: 1024 MiB, 3 rounds (alternating the tools), 8 MiB parts, 10 in flight (boto3's
# defaults). Each round also runs `s3cse get --concurrency 1` (one GET, the old path) for
# reference. The release build (thin LTO) takes ~10 minutes the first time.
# --delay-ms D: the timed GETs go through examples/delayproxy.rs (D ms each way, as in
# scripts/bench-latency.sh; the put goes direct). The proxy buffers without limit, so it adds
# latency, not a bandwidth-delay cap, and its CPU shares the machine with the tools.
# On the way out it deletes the bucket bench-get-PID, the KMS key (scheduled, 7 days) and the
# local files, unless --keep.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KEEP=0 BUILD=1 BIN=target/release/s3cse MIB=1024 ROUNDS=3 PART=8 CONC=10 DELAY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --bin) BIN=$2; BUILD=0; shift ;;
    --mib) MIB=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --part-mib) PART=$2; shift ;;
    --concurrency) CONC=$2; shift ;;
    --delay-ms) DELAY=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-get: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

T="" KEY="" BUCKET="" PROXY=""
admin() { "$S3CSE_PY_TESTBED" tests/peers/testbed_admin.py "$@"; }
cleanup() {
  local rc=$?
  set +e
  # The proxy is gone: clean up through the bed's own endpoints.
  [ -n "$PROXY" ] && { kill "$PROXY" 2>/dev/null; export AWS_ENDPOINT_URL_S3="$DIRECT_S3" AWS_ENDPOINT_URL_KMS="$DIRECT_KMS"; }
  if [ "$KEEP" = 1 ]; then
    echo "bench-get: --keep: kept bucket $BUCKET, KMS key $KEY, files in $T" >&2
    exit "$rc"
  fi
  [ -n "$BUCKET" ] && { admin delete-bucket "$BUCKET" || echo "bench-get: could not delete $BUCKET" >&2; }
  [ -n "$KEY" ] && { admin delete-key "$KEY" >/dev/null || echo "bench-get: could not delete key $KEY" >&2; }
  [ -n "$T" ] && rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v /usr/bin/time >/dev/null || apt-get install -y time >/dev/null
# The bed of this checkout, or another one's with TESTBED_DIR=/path/.testbed.
TB="${TESTBED_DIR:-$ROOT/.testbed}"
[ -f "$TB/env" ] || { echo "bench-get: no $TB/env: start the test bed first (scripts/testbed.sh up)" >&2; exit 1; }
# shellcheck disable=SC1091
source "$TB/env"
[ "$BUILD" = 1 ] && cargo build --release --bin s3cse --example delayproxy
T=$(mktemp -d "${TMPDIR:-/tmp}/bench-get.XXXXXX")
head -c $((MIB << 20)) /dev/urandom >"$T/in"
KEY=$(admin create-key --description "s3cse bench-get" | tail -1)
BUCKET=bench-get-$$
admin create-bucket "$BUCKET" >/dev/null
"$BIN" put "$T/in" "s3://$BUCKET/obj" --kms-key-id "$KEY" --format v2 >/dev/null 2>&1
if [ "$DELAY" != 0 ]; then
  DIRECT_S3=$AWS_ENDPOINT_URL_S3 DIRECT_KMS=$AWS_ENDPOINT_URL_KMS
  # shellcheck source=scripts/bench/delayproxy.sh
  . scripts/bench/delayproxy.sh
  delay_proxy "${CARGO_TARGET_DIR:-target}/release/examples/delayproxy" "$DELAY" "$T/proxy" bench-get ||
    exit 1
fi

# label -> lists of "wall cpu rss" per round
declare -A RES
measure() { # label, command...
  local label=$1; shift
  sync
  /usr/bin/time -v "$@" 2>"$T/time" >/dev/null || { cat "$T/time" >&2; exit 1; }
  local rss wall cpu
  rss=$(awk -F': ' '/Maximum resident/ {printf "%.1f", $2/1024}' "$T/time")
  wall=$(awk -F': ' '/Elapsed/ {n=split($2,p,":"); s=0; for(i=1;i<=n;i++) s=s*60+p[i]; printf "%.2f", s}' "$T/time")
  cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u+s}' "$T/time")
  RES[$label]+="$wall $cpu $rss;"
  printf 'bench-get: round %s %-12s wall %6ss cpu %6ss rss %7s MiB load %s\n' "$r" "$label" "$wall" \
    "$cpu" "$rss" "$(cut -d' ' -f1 /proc/loadavg)" >&2
}
for r in $(seq 1 "$ROUNDS"); do
  rm -f "$T/plain" "$T/out" "$T/out1"
  measure boto3 "$S3CSE_PY_TESTBED" scripts/bench/boto3_download.py "$BUCKET" obj "$T/plain" "$PART" "$CONC"
  measure s3cse "$BIN" get "s3://$BUCKET/obj" -o "$T/out" --kms-key-id "$KEY" \
    --part-size-mib "$PART" --concurrency "$CONC"
  cmp "$T/in" "$T/out"
  measure s3cse-1get "$BIN" get "s3://$BUCKET/obj" -o "$T/out1" --kms-key-id "$KEY" --concurrency 1
  cmp "$T/in" "$T/out1"
done

# Medians per column, then the table.
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { echo "${RES[$1]}" | tr ';' '\n' | sed '/^$/d' | awk -v c="$2" '{print $c}' | tr '\n' ' ' | median; }
bw=$(col boto3 1)
echo
echo "$MIB MiB V2 GCM object, ${PART} MiB parts, $CONC in flight, delay ${DELAY} ms each way;" \
  "median of $ROUNDS rounds ($(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| tool | wall | MB/s | client CPU (user+sys) | peak RSS | throughput vs boto3 |"
echo "|---|---|---|---|---|---|"
for l in boto3 s3cse s3cse-1get; do
  w=$(col "$l" 1); c=$(col "$l" 2); m=$(col "$l" 3)
  awk -v l="$l" -v w="$w" -v c="$c" -v m="$m" -v b="$bw" -v mib="$MIB" 'BEGIN {
    printf "| %s | %.2f s | %.0f | %.2f s | %.1f MiB | %.2fx |\n", l, w, mib*1048576/1e6/w, c, m, b/w }'
done
