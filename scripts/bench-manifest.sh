#!/usr/bin/env bash
# Manifest ingest rate: `rekey --manifest` on a generated S3 Inventory (CSV gzip, local files)
# of ROWS rows into a fresh SQLite state file (or BENCH_STATE, e.g. a fresh postgres:// database),
# with LISTERS ingesters (`--listers`: data files read at once); prints keys/s from the "manifest
# ingested" log line, then stops the run (the work phase after it is not measured). Then, on the
# state of ROWS jobs: the wall time of `status` and of `status --json`, and the wall time and
# peak RSS of `report` (all rows, CSV to /dev/null), which must not grow with the row count.
# With BENCH_DRYRUN_SECS=N, then `rekey --dry-run` on that state for N seconds: its peak RSS
# (the manifest's objects do not exist, so each plan is a HEAD answered 404 and a row update:
# this measures the memory of walking ROWS pending jobs, not a whole dry run).
#
#   scripts/bench-manifest.sh [ROWS] [FILES] [LISTERS]   (1,000,000 rows in 10 files, 1 lister)
#   BENCH_STATE=postgres://postgres@127.0.0.1:PORT/empty_db scripts/bench-manifest.sh
#
# Needs the test bed (source .testbed/env) only for the bucket check and DescribeKey at start:
# the manifest's keys do not exist. Peak RSS comes from /proc/PID/status (VmHWM).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROWS=${1:-1000000}
FILES=${2:-10}
LISTERS=${3:-1}
BIN=${S3CSE_BIN:-$ROOT/target/release/s3cse}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BUCKET=${BENCH_BUCKET:?a bucket of the test bed}
KEY=${BENCH_KMS_KEY:?a KMS key id of the test bed}

python3 - "$WORK" "$BUCKET" "$ROWS" "$FILES" <<'PY'
import gzip, hashlib, json, sys
work, bucket, rows, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
per = (rows + files - 1) // files
entries = []
for f in range(files):
    path = f"{work}/part-{f}.csv.gz"
    with gzip.open(path, "wt", compresslevel=6) as out:
        for i in range(f * per, min(rows, (f + 1) * per)):
            out.write(f'"{bucket}","bench/obj-{i:09d}.bin","","true","false","1048576",'
                      f'"d41d8cd98f00b204e9800998ecf8427e","STANDARD"\n')
    data = open(path, "rb").read()
    entries.append({"key": f"part-{f}.csv.gz", "size": len(data),
                    "MD5checksum": hashlib.md5(data).hexdigest()})
json.dump({"sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}",
           "fileFormat": "CSV",
           "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, ETag, StorageClass",
           "files": entries}, open(f"{work}/manifest.json", "w"))
PY

LOG=$WORK/log
S3CSE_LOG=info "$BIN" rekey "s3://$BUCKET/bench/" --manifest "$WORK/manifest.json" \
    --state "${BENCH_STATE:-$WORK/state.db}" --kms-key-id "$KEY" --concurrency 1 --log-format json \
    --listers "$LISTERS" \
    >"$WORK/out" 2>"$LOG" &
PID=$!
PEAK=0
while kill -0 "$PID" 2>/dev/null && ! grep -q '"manifest ingested"' "$LOG"; do
    HWM=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
    [ "${HWM:-0}" -gt "$PEAK" ] && PEAK=$HWM
    sleep 0.2
done
kill "$PID" 2>/dev/null || true
wait "$PID" 2>/dev/null || true
python3 - "$LOG" "$PEAK" <<'PY'
import json, sys
from datetime import datetime
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
t = lambda l: datetime.fromisoformat(l["timestamp"].replace("Z", "+00:00"))
start = lines[0]  # the first log line: DescribeKey and the bucket checks are done
done = next(l for l in lines if l["fields"].get("message") == "manifest ingested")
secs = (t(done) - t(start)).total_seconds()
rows = done["fields"]["rows"]
print(f"{rows} rows in {secs:.1f} s: {rows / secs:,.0f} keys/s; peak RSS {int(sys.argv[2]) // 1024} MiB")
PY

# Read-only commands on the state file of ROWS jobs.
T0=$(date +%s.%N); "$BIN" status --state "${BENCH_STATE:-$WORK/state.db}" >/dev/null; T1=$(date +%s.%N)
echo "status: $(echo "$T1 - $T0" | bc) s"
T0=$(date +%s.%N); "$BIN" status --json --state "${BENCH_STATE:-$WORK/state.db}" >/dev/null; T1=$(date +%s.%N)
echo "status --json: $(echo "$T1 - $T0" | bc) s"
/usr/bin/time -f "report: %e s, peak RSS %M KiB" "$BIN" report --state "${BENCH_STATE:-$WORK/state.db}" >/dev/null

if [ -n "${BENCH_DRYRUN_SECS:-}" ]; then
    DLOG=$WORK/dryrun.log
    # `work`: the queue only (`rekey --manifest` would read the manifest again first).
    S3CSE_LOG=info "$BIN" work --state "${BENCH_STATE:-$WORK/state.db}" --kms-key-id "$KEY" \
        --dry-run --log-format json \
        >"$WORK/dryrun.out" 2>"$DLOG" &
    PID=$!
    PEAK=0
    END=$(( $(date +%s) + BENCH_DRYRUN_SECS ))
    while kill -0 "$PID" 2>/dev/null && [ "$(date +%s)" -lt "$END" ]; do
        HWM=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
        [ "${HWM:-0}" -gt "$PEAK" ] && PEAK=$HWM
        sleep 0.5
    done
    RSS=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
    kill -INT "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    tail -n 4 "$WORK/dryrun.out" || true
    echo "rekey --dry-run, ${BENCH_DRYRUN_SECS} s over $ROWS pending jobs: peak RSS $((PEAK / 1024)) MiB, RSS at the end $((RSS / 1024)) MiB"
fi
