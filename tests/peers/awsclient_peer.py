"""Command-line peer: AWS's amazon-s3-encryption-client-python 4.0.0 (import name s3_encryption),
the client that wrote the awsv4-* vectors. KMS keyring only (the Python client has no raw keys).

Run with the awsclient venv's python ($S3CSE_PY_AWSCLIENT); endpoints and credentials come from the
test bed's environment (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_KMS, AWS_ACCESS_KEY_ID, ...).

  put  --bucket B --key K --input FILE --kms-key-id ID [--format v2|v3] [--context k=v ...]
       [--content-type T] [--metadata k=v ...] [--tag k=v ...]
  get  --bucket B --key K --output FILE --kms-key-id ID [--context k=v ...] [--allow-legacy]
       [--strict]
  head --bucket B --key K      prints JSON {metadata, content_type, content_length, etag, tags}

put --format v3 (default): V3 key-committing (ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY, x-amz-c 115),
    policy REQUIRE_ENCRYPT_REQUIRE_DECRYPT (the client's defaults).
put --format v2: V2 AES/GCM wrapped `kms+context` (ALG_AES_256_GCM_IV12_TAG16_NO_KDF), policy
    FORBID_ENCRYPT_ALLOW_DECRYPT.
get: policy REQUIRE_ENCRYPT_ALLOW_DECRYPT, so it reads V2 and V3; --strict uses
    REQUIRE_ENCRYPT_REQUIRE_DECRYPT (V3 only). --allow-legacy turns on legacy unauthenticated modes
    (AES/CBC content) and legacy wrapping algorithms (`kms` without context), so it can try
    objects written by aioboto3 or older clients.
--context is the caller's encryption context; a get must pass the same one the put used.
Exit 0 on success; on failure a one-line message on stderr and exit 1 (2 for usage errors).
"""
import argparse
import json
import sys

import boto3
from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
from s3_encryption.materials.kms_keyring import KmsKeyring
from s3_encryption.materials.materials import AlgorithmSuite, CommitmentPolicy

from peer_common import client_kwargs, kv_pairs, run_op

PROG = "awsclient_peer"


def client(service):
    return boto3.client(service, **client_kwargs(service))


def put(a):
    keyring = KmsKeyring(client("kms"), a.kms_key_id)
    if a.format == "v2":
        cfg = S3EncryptionClientConfig(
            keyring=keyring, encryption_algorithm=AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
            commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)
    else:
        cfg = S3EncryptionClientConfig(keyring=keyring)
    kw = {}
    ctx = kv_pairs(PROG, a.context)
    if ctx:
        kw["EncryptionContext"] = ctx
    if a.content_type:
        kw["ContentType"] = a.content_type
    md = kv_pairs(PROG, a.metadata)
    if md:
        kw["Metadata"] = md
    tags = kv_pairs(PROG, a.tag)
    if tags:
        from urllib.parse import urlencode
        kw["Tagging"] = urlencode(tags)
    body = open(a.input, "rb").read()
    S3EncryptionClient(client("s3"), cfg).put_object(Bucket=a.bucket, Key=a.key, Body=body, **kw)


def get(a):
    keyring = KmsKeyring(client("kms"), a.kms_key_id, enable_legacy_wrapping_algorithms=a.allow_legacy)
    policy = (CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT if a.strict
              else CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT)
    cfg = S3EncryptionClientConfig(keyring=keyring, commitment_policy=policy,
                                   enable_legacy_unauthenticated_modes=a.allow_legacy)
    kw = {}
    ctx = kv_pairs(PROG, a.context)
    if ctx:
        kw["EncryptionContext"] = ctx
    resp = S3EncryptionClient(client("s3"), cfg).get_object(Bucket=a.bucket, Key=a.key, **kw)
    data = resp["Body"].read()
    with open(a.output, "wb") as f:
        f.write(data)


def head(a):
    s3 = client("s3")
    h = s3.head_object(Bucket=a.bucket, Key=a.key)
    tags = s3.get_object_tagging(Bucket=a.bucket, Key=a.key).get("TagSet", [])
    print(json.dumps({"metadata": h.get("Metadata", {}), "content_type": h.get("ContentType"),
                      "content_length": h.get("ContentLength"), "etag": h.get("ETag"),
                      "tags": {t["Key"]: t["Value"] for t in tags}}, sort_keys=True))


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, description="AWS S3 Encryption Client (Python) peer")
    sub = p.add_subparsers(dest="op", required=True)
    s = sub.add_parser("put")
    s.add_argument("--input", required=True)
    s.add_argument("--kms-key-id", required=True)
    s.add_argument("--format", choices=["v2", "v3"], default="v3")
    s.add_argument("--context", nargs="*", metavar="K=V", help="caller encryption context")
    s.add_argument("--content-type")
    s.add_argument("--metadata", nargs="*", metavar="K=V", help="extra user metadata")
    s.add_argument("--tag", nargs="*", metavar="K=V", help="object tags")
    g = sub.add_parser("get")
    g.add_argument("--output", required=True)
    g.add_argument("--kms-key-id", required=True)
    g.add_argument("--context", nargs="*", metavar="K=V", help="caller encryption context")
    g.add_argument("--allow-legacy", action="store_true",
                   help="legacy unauthenticated modes (CBC) + legacy wrapping (kms)")
    g.add_argument("--strict", action="store_true", help="REQUIRE_ENCRYPT_REQUIRE_DECRYPT: V3 only")
    h = sub.add_parser("head")
    for x in (s, g, h):
        x.add_argument("--bucket", required=True)
        x.add_argument("--key", required=True)
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    return run_op(PROG, a, lambda: {"put": put, "get": get, "head": head}[a.op](a))


if __name__ == "__main__":
    sys.exit(main())
