"""What the peer scripts share: clients pointed at the test bed, k=v options, and the exit
convention (0 on success; one line on stderr and 1 on failure; 2 for usage errors).

Imported by aioboto3_peer.py, awsclient_peer.py and testbed_admin.py, each run with its own venv's
python (the script's directory is on sys.path). So it uses only the standard library and
botocore, which every one of those venvs has (aioboto3 through aiobotocore, the others through
boto3).
"""
import os
import sys

from botocore.config import Config


def client_kwargs(service, require_endpoint=False):
    """Keyword arguments for a boto3/aiobotocore client of `service` ("s3" or "kms"): the region
    from AWS_REGION (us-east-1 if unset), the endpoint from AWS_ENDPOINT_URL_<SERVICE> (the test
    bed's .testbed/env sets both), and path-style addressing for S3, which local stores need.
    `require_endpoint`: fail (KeyError) rather than fall back to AWS when the endpoint is unset."""
    kw = {"region_name": os.environ.get("AWS_REGION", "us-east-1")}
    var = "AWS_ENDPOINT_URL_" + service.upper()
    url = os.environ[var] if require_endpoint else os.environ.get(var)
    if url:
        kw["endpoint_url"] = url
    if service == "s3":
        kw["config"] = Config(s3={"addressing_style": "path"})
    return kw


def kv_pairs(prog, items):
    """["k=v", ...] (an argparse nargs="*" list, or None) as a dict; exits 2 on an item without "="."""
    out = {}
    for item in items or []:
        if "=" not in item:
            print(f"{prog}: error: expected k=v, got {item!r}", file=sys.stderr)
            raise SystemExit(2)
        k, v = item.split("=", 1)
        out[k] = v
    return out


def run_op(prog, a, action):
    """Runs `action()` for the parsed arguments `a` (with .op, .bucket, .key); returns the exit
    status: 0, or 1 after one line on stderr naming the operation, the object and the error."""
    try:
        action()
    except SystemExit:
        raise
    except Exception as e:
        msg = str(e).replace("\n", " ")
        print(f"{prog}: {a.op} s3://{a.bucket}/{a.key} failed: {type(e).__name__}: {msg}",
              file=sys.stderr)
        return 1
    return 0
