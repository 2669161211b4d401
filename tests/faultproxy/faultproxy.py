#!/usr/bin/env python3
"""faultproxy: an HTTP/1.1 reverse proxy that breaks a few requests the way networks and S3 do.

It sits on 127.0.0.1 in front of the test bed's S3 (SeaweedFS) and KMS (moto) and routes each
request by what it is: a POST with `X-Amz-Target: TrentService.*` goes to KMS, anything else to
S3. Point a client at it with AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL_KMS both set to the URL it
prints. Requests are forwarded byte for byte, Host header included: SigV4 signs the Host the
client sent (the proxy's host:port) and the servers check the signature against the Host they
receive, so nothing may be rewritten (a signed query string cannot be either).

Faults, each drawn per request from a seeded RNG at its own rate (`--rate KIND=P`):

  refuse        close the connection without answering (nothing forwarded)
  slowdown      S3: 503 SlowDown, nothing forwarded
  lost-answer   S3 PUT/POST/DELETE (puts, copies, completes, deletes): forward it, let it land,
                answer 500 InternalError
  cut           S3 GET: forward it, send the headers and half the body, close the connection
  empty-page    S3 ListObjectsV2 with a continuation-token: answer a well-formed empty page,
                IsTruncated=true, NextContinuationToken = the request's own token (so the
                client's next request is the same one). A token is answered empty once only,
                so the retry goes through.
  kms-throttle  KMS: 400 ThrottlingException, nothing forwarded
  no-token      S3 ListObjectsV2: an empty page with IsTruncated=true and no
                NextContinuationToken (a broken listing: the client must fail, not stop)

Every injected fault is one JSON line in `--log` (kind, method, path, time), so tests count them.
The first line on stdout is `listening on 127.0.0.1:PORT`. Stdlib only (Python 3.9+).

  faultproxy.py --s3 http://127.0.0.1:8333 --kms http://127.0.0.1:4599 --seed 7 \
      --rate refuse=0.02 --rate slowdown=0.03 --rate empty-page=0.5 --log faults.jsonl
"""

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.parse
from xml.sax.saxutils import escape

KINDS = ["refuse", "slowdown", "lost-answer", "cut", "empty-page", "kms-throttle", "no-token"]
MAX_HEAD = 64 * 1024


class Message:
    """One HTTP/1.1 request or response: the head as received, parsed fields, the raw body."""

    def __init__(self, head: bytes):
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        self.headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers[name.strip().lower()] = value.strip()
        self.body = b""

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def chunked(self) -> bool:
        return "chunked" in self.header("transfer-encoding").lower()


async def read_head(reader: asyncio.StreamReader):
    """The next message head, or None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise
        return None
    if len(head) > MAX_HEAD:
        raise ValueError("head too large")
    return Message(head)


async def read_body(reader: asyncio.StreamReader, m: Message, until_eof: bool) -> None:
    """Reads `m`'s body, raw (chunk framing kept), by Transfer-Encoding, Content-Length or EOF."""
    if m.chunked():
        parts = []
        while True:
            line = await reader.readuntil(b"\r\n")
            parts.append(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    t = await reader.readuntil(b"\r\n")
                    parts.append(t)
                    if t == b"\r\n":
                        break
                break
            parts.append(await reader.readexactly(size + 2))
        m.body = b"".join(parts)
    elif m.header("content-length"):
        m.body = await reader.readexactly(int(m.header("content-length")))
    elif until_eof:
        m.body = await reader.read()


def response(status: str, headers: dict, body: bytes, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


class Proxy:
    def __init__(self, args):
        self.upstream = {"s3": urllib.parse.urlsplit(args.s3), "kms": urllib.parse.urlsplit(args.kms)}
        self.rates = dict(args.rate)
        if args.only_kind:
            self.rates = {k: p for k, p in self.rates.items() if k in args.only_kind}
        self.rng = random.Random(args.seed)
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.emptied = set()  # continuation tokens already answered with an empty page
        self.n = 0

    def draw(self, kind: str) -> bool:
        p = self.rates.get(kind, 0.0)
        return p > 0 and self.rng.random() < p

    def record(self, kind: str, req: Message) -> None:
        if self.log:
            entry = {"kind": kind, "method": req.start[0], "target": req.start[1], "t": time.time()}
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    def choose(self, req: Message, service: str, query: dict):
        """The fault for this request (recorded), or None."""
        method = req.start[0]
        eligible = ["refuse"]
        if service == "kms":
            eligible.append("kms-throttle")
        else:
            eligible.append("slowdown")
            if method in ("PUT", "POST", "DELETE"):
                eligible.append("lost-answer")
            if method == "GET":
                eligible.append("cut")
            token = query.get("continuation-token")
            if method == "GET" and query.get("list-type") == "2":
                eligible.append("no-token")
            if method == "GET" and query.get("list-type") == "2" and token and token not in self.emptied:
                eligible.append("empty-page")
        for kind in eligible:
            if self.draw(kind):
                if kind == "empty-page":
                    self.emptied.add(query["continuation-token"])
                self.record(kind, req)
                return kind
        return None

    def request_id(self) -> str:
        self.n += 1
        return f"faultproxy-{self.n}"

    def s3_error(self, status: str, code: str, message: str, req: Message) -> bytes:
        rid = self.request_id()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{rid}</RequestId></Error>"
        ).encode()
        headers = {"Content-Type": "application/xml", "x-amz-request-id": rid}
        return response(status, headers, body, req.start[0] == "HEAD")

    def empty_page(self, req: Message, query: dict, next_token: bool = True) -> bytes:
        path = urllib.parse.urlsplit(req.start[1]).path
        bucket = urllib.parse.unquote(path.strip("/").split("/")[0])
        token = escape(query.get("continuation-token", ""))
        prefix = query.get("prefix", "")
        if query.get("encoding-type") == "url":
            prefix = urllib.parse.quote(prefix, safe="")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>0</KeyCount>"
            f"<MaxKeys>{escape(query.get('max-keys', '1000'))}</MaxKeys><IsTruncated>true</IsTruncated>"
            + (f"<ContinuationToken>{token}</ContinuationToken>" if token else "")
            + (f"<NextContinuationToken>{token}</NextContinuationToken>" if next_token else "")
            + "</ListBucketResult>"
        ).encode()
        headers = {"Content-Type": "application/xml", "x-amz-request-id": self.request_id()}
        return response("200 OK", headers, body, False)

    async def forward(self, service: str, req: Message) -> Message:
        """Sends `req` to its upstream on a fresh connection; the whole response, raw."""
        u = self.upstream[service]
        reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
        try:
            writer.write(req.head + req.body)
            await writer.drain()
            while True:
                resp = await read_head(reader)
                if resp is None:
                    raise ConnectionError("upstream closed without answering")
                if not resp.start[1].startswith("1"):  # skip 100 Continue
                    break
            status = int(resp.start[1])
            if req.start[0] != "HEAD" and status not in (204, 304):
                await read_body(reader, resp, until_eof=True)
            return resp
        finally:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await read_head(reader)
                if req is None:
                    return
                if req.header("expect").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await read_body(reader, req, until_eof=False)
                target = urllib.parse.urlsplit(req.start[1])
                query = dict(urllib.parse.parse_qsl(target.query, keep_blank_values=True))
                kms = req.start[0] == "POST" and req.header("x-amz-target").startswith("TrentService.")
                service = "kms" if kms else "s3"
                fault = self.choose(req, service, query)
                if fault == "refuse":
                    return
                if fault == "slowdown":
                    writer.write(self.s3_error("503 Slow Down", "SlowDown", "Please reduce your request rate.", req))
                elif fault == "kms-throttle":
                    body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
                    headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": self.request_id()}
                    writer.write(response("400 Bad Request", headers, body, False))
                elif fault in ("empty-page", "no-token"):
                    writer.write(self.empty_page(req, query, next_token=fault == "empty-page"))
                else:
                    resp = await self.forward(service, req)
                    if fault == "lost-answer":
                        writer.write(self.s3_error("500 Internal Server Error", "InternalError",
                                                   "We encountered an internal error. Please try again.", req))
                    elif fault == "cut" and resp.body and not resp.chunked():
                        writer.write(resp.head + resp.body[: len(resp.body) // 2])
                        await writer.drain()
                        return
                    else:
                        writer.write(resp.head + resp.body)
                        if "close" in resp.header("connection").lower() or not (
                            resp.header("content-length") or resp.chunked() or req.start[0] == "HEAD"
                            or resp.start[1] in ("204", "304")
                        ):
                            await writer.drain()
                            return
                await writer.drain()
                if "close" in req.header("connection").lower():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError) as e:
            print(f"faultproxy: connection dropped: {e!r}", file=sys.stderr, flush=True)
        finally:
            writer.close()


def parse_rate(s: str):
    kind, _, p = s.partition("=")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown fault kind {kind!r} (one of {', '.join(KINDS)})")
    return kind, float(p)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--s3", required=True, help="S3 upstream URL, e.g. http://127.0.0.1:8333")
    ap.add_argument("--kms", required=True, help="KMS upstream URL, e.g. http://127.0.0.1:4599")
    ap.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=parse_rate, action="append", default=[], metavar="KIND=P",
                    help="probability of KIND per eligible request; repeatable")
    ap.add_argument("--only-kind", action="append", choices=KINDS, help="inject only these kinds")
    ap.add_argument("--log", help="append one JSON line per injected fault to this file")
    args = ap.parse_args()
    proxy = Proxy(args)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, limit=MAX_HEAD * 2)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
