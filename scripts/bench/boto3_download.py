#!/usr/bin/env python3
"""The baseline of scripts/bench-get.sh: boto3's transfer manager downloading one object
(`download_file`, ranged GETs in parallel) with the given part size and concurrency. Plain
bytes, no decryption: what a parallel download of the same bytes costs.

  boto3_download.py BUCKET KEY OUTPUT PART_MIB CONCURRENCY

Run with the testbed venv's python ($S3CSE_PY_TESTBED), env from .testbed/env.
"""
import os
import sys

import boto3
from boto3.s3.transfer import TransferConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "peers"))
from peer_common import client_kwargs  # noqa: E402


def main():
    bucket, key, output, part_mib, concurrency = sys.argv[1:6]
    part = int(part_mib) << 20
    s3 = boto3.client("s3", **client_kwargs("s3", require_endpoint=True))
    cfg = TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_concurrency=int(concurrency),
        use_threads=True,
    )
    s3.download_file(bucket, key, output, Config=cfg)


if __name__ == "__main__":
    main()
