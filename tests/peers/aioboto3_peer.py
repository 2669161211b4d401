"""Command-line peer: aioboto3's S3CSE (15.5.0), the client that wrote the aioboto3-* vectors.

Run with the aioboto3 venv's python ($S3CSE_PY_AIOBOTO3); endpoints and credentials come from the
test bed's environment (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_KMS, AWS_ACCESS_KEY_ID, ...).

  put --bucket B --key K --input FILE --kind kms|symmetric|asymmetric
      [--kms-key-id ID] [--cbc] [--aes-key-file HEXFILE] [--rsa-key-file PEM]
      [--metadata k=v ...] [--content-type T]
  get --bucket B --key K --output FILE --kind kms|symmetric|asymmetric
      [--aes-key-file HEXFILE] [--rsa-key-file PEM] [--range bytes=A-B]

What aioboto3 writes (FORMATS.md section 5):
  kind kms        V2 `x-amz-key-v2`, wrap `kms`, matdesc {"kms_cmk_id": ID}; content AES/GCM, or
                  AES/CBC with --cbc (KMSCryptoContext(authenticated_encryption=False))
  kind symmetric  V1 `x-amz-key` = AES-256/ECB(CEK) under the hex key in --aes-key-file; AES/CBC
  kind asymmetric V1 `x-amz-key` = RSA PKCS#1 v1.5(CEK); AES/CBC. --rsa-key-file is a PEM private
                  key (PKCS#8 or PKCS#1; its public half is used to put) or, for put only, a public key.
Quirks of aioboto3 15.5.0 seen against the test bed (tests/peers/smoke.sh checks them):
  - --range: the end offset is treated as exclusive, so `bytes=100-299` yields plaintext[100:299]
    (199 bytes, one short of HTTP semantics); ranges work only for GCM (V2 kms) objects.
  - get on a V3 object (x-amz-3, no x-amz-key/x-amz-key-v2) succeeds and returns the stored
    ciphertext unchanged: aioboto3 treats it as "not encrypted".
Exit 0 on success; on failure a one-line message on stderr and exit 1 (2 for usage errors).
"""
import argparse
import asyncio
import sys

from aioboto3.s3.cse import S3CSE, AsymmetricCryptoContext, KMSCryptoContext, SymmetricCryptoContext
from cryptography.hazmat.primitives import serialization

from peer_common import client_kwargs, kv_pairs, run_op

PROG = "aioboto3_peer"


def crypto_context(a, op):
    if a.kind == "kms":
        if op == "put" and not a.kms_key_id:
            raise SystemExit(f"{PROG}: error: put --kind kms needs --kms-key-id")
        return KMSCryptoContext(keyid=a.kms_key_id, kms_client_args=client_kwargs("kms"),
                                authenticated_encryption=not a.cbc)
    if a.kind == "symmetric":
        if not a.aes_key_file:
            raise SystemExit(f"{PROG}: error: --kind symmetric needs --aes-key-file")
        key = bytes.fromhex(open(a.aes_key_file).read().strip())
        return SymmetricCryptoContext(key)
    if not a.rsa_key_file:
        raise SystemExit(f"{PROG}: error: --kind asymmetric needs --rsa-key-file")
    pem = open(a.rsa_key_file, "rb").read()
    if b"PRIVATE KEY" in pem:
        priv = serialization.load_pem_private_key(pem, password=None)
        return AsymmetricCryptoContext(public_key=priv.public_key(), private_key=priv)
    if op == "get":
        raise SystemExit(f"{PROG}: error: get --kind asymmetric needs a private key PEM")
    return AsymmetricCryptoContext(public_key=serialization.load_pem_public_key(pem))


async def run(a):
    # Built inside the running loop: the raw-key contexts grab the current event loop.
    ctx = crypto_context(a, a.op)
    # S3CSE takes separate client kwargs for S3 and for KMS, so each gets its own endpoint.
    async with S3CSE(crypto_context=ctx, s3_client_args=client_kwargs("s3")) as c:
        if a.op == "put":
            body = open(a.input, "rb").read()
            kw = {}
            if a.content_type:
                kw["ContentType"] = a.content_type
            await c.put_object(Body=body, Bucket=a.bucket, Key=a.key,
                               Metadata=kv_pairs(PROG, a.metadata) or None, **kw)
        else:
            kw = {"Range": a.range} if a.range else {}
            resp = await c.get_object(Bucket=a.bucket, Key=a.key, **kw)
            data = await resp["Body"].read()
            with open(a.output, "wb") as f:
                f.write(data)


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, description="aioboto3 S3CSE peer for s3cse interop tests")
    sub = p.add_subparsers(dest="op", required=True)
    for op in ("put", "get"):
        s = sub.add_parser(op)
        s.add_argument("--bucket", required=True)
        s.add_argument("--key", required=True)
        s.add_argument("--kind", required=True, choices=["kms", "symmetric", "asymmetric"])
        s.add_argument("--kms-key-id")
        s.add_argument("--aes-key-file", help="file holding the 32-byte AES master key as hex")
        s.add_argument("--rsa-key-file", help="PEM RSA key (private; public is enough for put)")
        s.add_argument("--cbc", action="store_true", help="kms only: AES/CBC content (no GCM)")
        if op == "put":
            s.add_argument("--input", required=True)
            s.add_argument("--metadata", nargs="*", metavar="K=V", help="extra user metadata")
            s.add_argument("--content-type")
        else:
            s.add_argument("--output", required=True)
            s.add_argument("--range", help="ranged GET, e.g. bytes=0-99 (GCM only; aioboto3 treats the end as exclusive)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    return run_op(PROG, a, lambda: asyncio.run(run(a)))


if __name__ == "__main__":
    sys.exit(main())
