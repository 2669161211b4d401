#!/usr/bin/env python3
"""delayproxy: TCP forwarders that add a one-way delay each way, like a WAN link to S3 and KMS.

Why a proxy and not `tc netem`: this machine's kernel has no netem (CONFIG_NET_SCH_NETEM is not
set and there is no module), nor fq/act_bpf for an EDT delay, so a network namespace with a veth
pair cannot delay packets. The proxy models the same link at the TCP level:

  - every chunk read from one side is written to the other side DELAY ms after it was read, in
    order (a fixed one-way delay, like `netem delay DELAY`, applied in both directions);
  - a new connection costs one extra round trip (2 x DELAY) before its first bytes reach the
    server: the TCP handshake that a loopback connect() skips. moto answers every KMS call with
    `Connection: close`, so each KMS call pays it, for rekey and the KMS loop alike.

Bandwidth is not limited. One listener per target; stdlib only (Python 3.9+).

  delayproxy.py --delay-ms 10 --to http://127.0.0.1:8333 --to http://127.0.0.1:4599
prints one line per target, `http://127.0.0.1:PORT <- http://127.0.0.1:8333`, then a line `ready`.
"""

import argparse
import asyncio
import collections
import sys
import urllib.parse

CHUNK = 256 * 1024


class Pipe:
    """One direction of one connection: reads chunks, writes each `delay` seconds later."""

    def __init__(self, reader, writer, delay, first_extra=0.0):
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.first_extra = first_extra
        self.queue = collections.deque()
        self.ready = asyncio.Event()

    async def pump_in(self):
        loop = asyncio.get_running_loop()
        extra = self.first_extra
        try:
            while True:
                data = await self.reader.read(CHUNK)
                self.queue.append((loop.time() + self.delay + extra, data))
                extra = 0.0
                self.ready.set()
                if not data:
                    return
        except (ConnectionError, OSError):
            self.queue.append((loop.time() + self.delay, b""))
            self.ready.set()

    async def pump_out(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.queue:
                    self.ready.clear()
                    await self.ready.wait()
                due, data = self.queue.popleft()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.writer.write(data)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass


async def serve(target_host, target_port, delay, conn):
    client_r, client_w = conn
    try:
        server_r, server_w = await asyncio.open_connection(target_host, target_port)
    except OSError:
        client_w.close()
        return
    up = Pipe(client_r, server_w, delay, first_extra=2 * delay)
    down = Pipe(server_r, client_w, delay)
    try:
        await asyncio.gather(up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out())
    finally:
        for w in (client_w, server_w):
            w.close()


# The event loop holds its tasks weakly: a connection's task is kept here until it ends.
TASKS = set()


def keep(coro):
    t = asyncio.ensure_future(coro)
    TASKS.add(t)
    t.add_done_callback(TASKS.discard)
    return t


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay, each direction")
    ap.add_argument("--to", action="append", required=True, help="target URL (http://host:port)")
    a = ap.parse_args()
    delay = a.delay_ms / 1000
    servers = []
    for url in a.to:
        u = urllib.parse.urlsplit(url)
        srv = await asyncio.start_server(
            lambda r, w, h=u.hostname, p=u.port: keep(serve(h, p, delay, (r, w))),
            "127.0.0.1", 0, backlog=1024)
        port = srv.sockets[0].getsockname()[1]
        print(f"http://127.0.0.1:{port} <- {url}", flush=True)
        servers.append(srv)
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
