"""Plain-boto3 helper for peer tests (run with $S3CSE_PY_TESTBED; env from .testbed/env).

  create-bucket BUCKET                      (ok if it already exists)
  create-key [--description D]              prints the new KMS key id
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="testbed_admin")
    sub = p.add_subparsers(dest="op", required=True)
    b = sub.add_parser("create-bucket")
    b.add_argument("bucket")
    k = sub.add_parser("create-key")
    k.add_argument("--description", default="s3cse test key")
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
