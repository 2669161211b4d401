"""Plain-boto3 helper for peer tests (run with $S3CSE_PY_TESTBED; env from .testbed/env).

  create-bucket BUCKET                      (ok if it already exists)
  create-key [--description D]              prints the new KMS key id
  delete-bucket BUCKET                      aborts its multipart uploads, deletes its objects
                                            (every version) and the bucket (ok if it is gone)
  delete-key KEY_ID                         schedules the KMS key's deletion (7 days, the least
                                            KMS allows)
  raw-get --bucket B --key K [--output F]   writes the stored bytes to F, prints JSON
                                            {metadata, content_length} (no decryption)
"""
import argparse
import json
import sys

import boto3

from peer_common import client_kwargs


def client(service):
    # Never AWS itself: this script creates buckets and keys.
    return boto3.client(service, **client_kwargs(service, require_endpoint=True))


def delete_bucket(s3, bucket):
    """Empties `bucket` (open multipart uploads, object versions and delete markers, objects)
    and deletes it; a bucket that does not exist is already done."""
    try:
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for u in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            gone = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if gone:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": gone, "Quiet": True})
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            gone = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if gone:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": gone, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        pass


def main(argv=None):
    p = argparse.ArgumentParser(prog="testbed_admin")
    sub = p.add_subparsers(dest="op", required=True)
    b = sub.add_parser("create-bucket")
    b.add_argument("bucket")
    k = sub.add_parser("create-key")
    k.add_argument("--description", default="s3cse test key")
    db = sub.add_parser("delete-bucket")
    db.add_argument("bucket")
    dk = sub.add_parser("delete-key")
    dk.add_argument("key_id")
    r = sub.add_parser("raw-get")
    r.add_argument("--bucket", required=True)
    r.add_argument("--key", required=True)
    r.add_argument("--output")
    a = p.parse_args(argv)
    try:
        if a.op == "create-bucket":
            s3 = client("s3")
            try:
                s3.create_bucket(Bucket=a.bucket)
            except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
                pass
        elif a.op == "create-key":
            print(client("kms").create_key(Description=a.description)["KeyMetadata"]["KeyId"])
        elif a.op == "delete-bucket":
            delete_bucket(client("s3"), a.bucket)
        elif a.op == "delete-key":
            client("kms").schedule_key_deletion(KeyId=a.key_id, PendingWindowInDays=7)
        else:
            resp = client("s3").get_object(Bucket=a.bucket, Key=a.key)
            data = resp["Body"].read()
            if a.output:
                with open(a.output, "wb") as f:
                    f.write(data)
            print(json.dumps({"metadata": resp["Metadata"], "content_length": len(data)}, sort_keys=True))
    except Exception as e:
        print(f"testbed_admin: {a.op} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
