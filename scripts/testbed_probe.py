"""Readiness probe and smoke check for the local S3+KMS test bed (run with .venv/testbed's python).

usage: testbed_probe.py wait SECONDS   # until S3 (SeaweedFS) and KMS (moto) both answer signed calls
       testbed_probe.py smoke          # bucket + put/get on S3, CreateKey + GenerateDataKey on KMS

Endpoints and credentials come from the environment that .testbed/env exports.
"""
import os
import sys
import time
import uuid

import boto3
from botocore.config import Config

CFG = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
             connect_timeout=2, read_timeout=10)


def client(service):
    return boto3.client(service, endpoint_url=os.environ["AWS_ENDPOINT_URL_" + service.upper()],
                        region_name=os.environ.get("AWS_REGION", "us-east-1"), config=CFG)


def wait(seconds):
    deadline = time.monotonic() + seconds
    pending = {"s3": lambda c: c.list_buckets(), "kms": lambda c: c.list_keys(Limit=1)}
    last = {}
    while pending and time.monotonic() < deadline:
        for name, call in list(pending.items()):
            try:
                call(client(name))
                del pending[name]
            except Exception as e:  # not up yet: connection refused, 503, ...
                last[name] = f"{type(e).__name__}: {e}"
        if pending:
            time.sleep(0.25)
    if pending:
        for name in pending:
            print(f"testbed: {name} not ready after {seconds}s: {last.get(name)}", file=sys.stderr)
        return 1
    return 0


def smoke():
    s3, kms = client("s3"), client("kms")
    bucket = "smoke-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(1000)
    s3.put_object(Bucket=bucket, Key="k", Body=body, Metadata={"x-amz-probe": "1"})
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == body, "S3 body mismatch"
    assert got["Metadata"].get("x-amz-probe") == "1", got["Metadata"]
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)
    kid = kms.create_key(Description="testbed smoke")["KeyMetadata"]["KeyId"]
    dk = kms.generate_data_key(KeyId=kid, KeySpec="AES_256", EncryptionContext={"a": "b"})
    pt = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"a": "b"})["Plaintext"]
    assert pt == dk["Plaintext"], "KMS round trip mismatch"
    print(f"smoke ok: S3 put/get in bucket {bucket} (removed), KMS key {kid} GenerateDataKey/Decrypt")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "wait":
        sys.exit(wait(float(sys.argv[2])))
    if len(sys.argv) == 2 and sys.argv[1] == "smoke":
        try:
            sys.exit(smoke())
        except Exception as e:
            print(f"testbed smoke FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
