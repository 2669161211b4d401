#!/usr/bin/env bash
# The main job on the local default, from a fresh machine: start the local S3 (SeaweedFS) + KMS
# (moto) test bed, let real peers write a bucket of legacy client-side-encrypted objects, show
# `s3cse inspect` / `get`, re-key the bucket to V2 kms+context AES-GCM with `s3cse rekey`
# (SQLite state in .demo/), show `s3cse status`, the metrics, and that AWS's own Python client
# now reads every object. Everything runs on 127.0.0.1. Env: S3CSE_KEEP_TESTBED=1 keeps it up.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building s3cse"
cargo build --bin s3cse
S3CSE="$ROOT/target/debug/s3cse"

say "starting the local S3 + KMS test bed"
started=0
if ! bash scripts/testbed.sh running; then bash scripts/testbed.sh up; started=1; fi
cleanup() { if [ "$started" = 1 ] && [ "${S3CSE_KEEP_TESTBED:-0}" != 1 ]; then bash scripts/testbed.sh down; fi; }
trap cleanup EXIT
# shellcheck disable=SC1091
source .testbed/env

DEMO="$ROOT/.demo"; rm -rf "$DEMO"; mkdir -p "$DEMO"
BUCKET="demo-$(date +%s)"
admin() { "$S3CSE_PY_TESTBED" tests/peers/testbed_admin.py "$@"; }
admin create-bucket "$BUCKET" >/dev/null
OLD_KEY=$(admin create-key --description "legacy app key" | tail -1)
NEW_KEY=$(admin create-key --description "s3cse target key" | tail -1)
AES="$ROOT/tests/vectors/keys/aes256.hex"
RSA="$ROOT/tests/vectors/keys/rsa2048-private.pem"
head -c 200000 /dev/urandom >"$DEMO/report.bin"
echo "hello, plaintext" >"$DEMO/plain.txt"

say "legacy writers fill s3://$BUCKET"
aio() { "$S3CSE_PY_AIOBOTO3" tests/peers/aioboto3_peer.py put --bucket "$BUCKET" --input "$DEMO/report.bin" "$@"; }
aio --key legacy/v1-aes.bin --kind symmetric --aes-key-file "$AES"
aio --key legacy/v1-rsa.bin --kind asymmetric --rsa-key-file "$RSA"
aio --key legacy/kms-cbc.bin --kind kms --cbc --kms-key-id "$OLD_KEY"
aio --key legacy/kms-gcm.bin --kind kms --kms-key-id "$OLD_KEY"
"$S3CSE_PY_AWSCLIENT" tests/peers/awsclient_peer.py put --bucket "$BUCKET" --key modern/v3.bin \
  --input "$DEMO/report.bin" --kms-key-id "$NEW_KEY" --format v3
"$S3CSE_PY_TESTBED" - "$BUCKET" "$DEMO/plain.txt" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
s3.put_object(Bucket=sys.argv[1], Key="public/plain.txt", Body=open(sys.argv[2], "rb").read())
PY
"$S3CSE" put "$DEMO/plain.txt" "s3://$BUCKET/modern/v2.txt" --kms-key-id "$NEW_KEY" --context app=demo

say "s3cse inspect: what is in the bucket (metadata only, no keys)"
for k in legacy/v1-aes.bin legacy/v1-rsa.bin legacy/kms-cbc.bin legacy/kms-gcm.bin modern/v3.bin; do
  "$S3CSE" inspect "s3://$BUCKET/$k" | sed -n '1p;3,5p'; echo
done

say "s3cse get: legacy objects read back (with the explicit --allow-legacy opt-in)"
"$S3CSE" get "s3://$BUCKET/legacy/v1-aes.bin" -o "$DEMO/v1-aes.out" --aes-key-file "$AES" --allow-legacy
"$S3CSE" get "s3://$BUCKET/legacy/v1-rsa.bin" -o "$DEMO/v1-rsa.out" --rsa-key-file "$RSA" --allow-legacy
cmp "$DEMO/report.bin" "$DEMO/v1-aes.out" && cmp "$DEMO/report.bin" "$DEMO/v1-rsa.out" && echo "byte-identical"
echo "without --allow-legacy:"; "$S3CSE" get "s3://$BUCKET/legacy/v1-aes.bin" -o "$DEMO/x" --aes-key-file "$AES" || true

say "s3cse rekey: every legacy object -> V2 kms+context AES-GCM under the target key"
"$S3CSE" rekey "s3://$BUCKET" --state "$DEMO/state.db" --kms-key-id "$NEW_KEY" \
  --aes-key-file "$AES" --rsa-key-file "$RSA" --metrics-addr 127.0.0.1:0 \
  --metrics-textfile "$DEMO/metrics.prom" || true

say "s3cse status"
"$S3CSE" status --state "$DEMO/state.db"

say "the finished run's metrics (--metrics-textfile: node_exporter's textfile format)"
grep -E '^s3cse_(rekey_objects_total|kms_requests_total|rekey_bytes_total)' "$DEMO/metrics.prom"

say "s3cse report (S3 Batch Operations columns)"
"$S3CSE" report --state "$DEMO/state.db" --format csv

say "a second run writes nothing"
"$S3CSE" rekey "s3://$BUCKET" --state "$DEMO/state.db" --kms-key-id "$NEW_KEY" \
  --aes-key-file "$AES" --rsa-key-file "$RSA" --log-format json 2>&1 | tail -1

say "AWS's Python client reads every re-keyed object under the target key"
for k in legacy/v1-aes.bin legacy/v1-rsa.bin legacy/kms-cbc.bin legacy/kms-gcm.bin; do
  "$S3CSE_PY_AWSCLIENT" tests/peers/awsclient_peer.py get --bucket "$BUCKET" --key "$k" \
    --output "$DEMO/aws.out" --kms-key-id "$NEW_KEY"
  cmp "$DEMO/report.bin" "$DEMO/aws.out" && echo "$k: ok ($("$S3CSE" inspect "s3://$BUCKET/$k" | sed -n 3p | tr -s ' '))"
done
say "done: state in $DEMO/state.db"
