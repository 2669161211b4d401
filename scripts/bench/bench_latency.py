#!/usr/bin/env python3
"""`s3cse rekey` on a latency-bound bed: throughput against --concurrency, next to the bare KMS
GenerateDataKey loop at the same concurrency through the same delay (issue 14, item 2).

Run it through scripts/bench-latency.sh, which puts examples/delayproxy.rs between the
clients and the test bed (AWS_ENDPOINT_URL_S3/KMS point at the proxy). For each concurrency C:

  (d) bare KMS loop   boto3 GenerateDataKey (AES_256, the rekey's encryption context), C threads
  (a) s3cse rekey     --concurrency C on a freshly seeded bucket of small V1 objects, verify on,
                      under /usr/bin/time -v (peak RSS, user+sys CPU)
  (a0) --before-bin   the same with another s3cse binary (an earlier commit), same run

Prints a markdown table: rate, ratio (a)/(d), peak RSS, client CPU per object, the servers'
(proxy included) and the proxy's own CPU, mean request latencies as rekey saw them, and
"(a)/(d) if both CPU-bound": (d)'s CPU per call (boto3 + servers + proxy) over (a)'s CPU per
object (rekey + servers + proxy). If both phases saturated the machine's cores, throughput would
be the cores divided by the CPU per unit and (a)/(d) would be that figure. (d) is usually bound
by moto (one Python process) below that, so (a)/(d) can be above it.
"""
import argparse
import datetime as dt
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_rekey as br  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_latency", description=__doc__.split("\n")[0])
    p.add_argument("--sweep", default="16,64,256", help="concurrencies, comma-separated")
    p.add_argument("--small", type=int, default=3000, help="objects per rekey run")
    p.add_argument("--small-kib", type=int, default=4)
    p.add_argument("--kms-calls", type=int, default=2000, help="calls per bare KMS loop")
    p.add_argument("--delay-ms", default="?", help="the proxy's one-way delay (for the report)")
    p.add_argument("--bin", default=os.path.join(br.ROOT, "target", "release", "s3cse"))
    p.add_argument("--before-bin", help="also run this s3cse binary (a0) at each concurrency")
    p.add_argument("--rekey-arg", action="append", default=[])
    p.add_argument("--command", default="")
    a = p.parse_args(argv)
    sweep = [int(x) for x in a.sweep.split(",") if x]
    # What bench_rekey.Bench reads from its arguments.
    a.concurrency = max(sweep)
    a.seed_threads = 64
    a.large = 0
    a.large_mib = 0
    a.keep = False
    bench = br.Bench(a)
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    before = br.uptime()
    git = br.git_facts(a.bin)
    rows = []
    t0 = time.monotonic()
    try:
        bench.setup()
        # A concurrency may repeat in the sweep (--sweep 16,16,16): each run has its own tag.
        for i, c in enumerate(sweep):
            br.log(f"concurrency {c}")
            d = bench.measure("sweep", f"d{c}.{i}", lambda: bench.kms_loop(a.kms_calls, c))
            b = bench.seed_small(f"lat{c}r{i}")
            r = bench.rekey_checked("sweep", f"a{c}.{i}", b, f"lat{c}r{i}", a.small, concurrency=c)
            bench.drop_bucket(b)
            r0 = None
            if a.before_bin:
                b = bench.seed_small(f"lat0{c}r{i}")
                this, a.bin = a.bin, a.before_bin
                try:
                    r0 = bench.rekey_checked("sweep", f"a0{c}.{i}", b, f"lat0{c}r{i}", a.small,
                                             concurrency=c)
                finally:
                    a.bin = this
                bench.drop_bucket(b)
            rows.append((c, d, r, r0))
    finally:
        bench.cleanup()
    after = br.uptime()
    out = [f"Measured {started} by `{a.command or 'scripts/bench-latency.sh'}` in "
           f"{(time.monotonic() - t0) / 60:.1f} min; one-way delay {a.delay_ms} ms each way "
           f"(examples/delayproxy.rs); {a.small:,} x {a.small_kib} KiB V1 objects per rekey "
           f"run, verify on; {a.kms_calls:,} calls per KMS loop.",
           "",
           f"- s3cse: {git}. Machine: {br.machine_facts()}.",
           f"- `uptime` before: `{before}`; after: `{after}`",
           "",
           "| --concurrency | (d) KMS loop | (a) rekey | (a)/(d) (target ≥ 0.8) | rekey peak RSS "
           "| rekey client CPU / object | servers+proxy CPU / object (proxy) "
           "| (a)/(d) if both CPU-bound | CPU busy during (d) / (a) "
           "| mean S3 / KMS latency (rekey) | foreign CPU; load1 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, d, r, _ in rows:
        dr = d["calls"] / d["wall"]
        ar = r["objects"] / r["wall"]
        ratio = ar / dr
        verdict = "met" if ratio >= 0.8 else "**missed**"
        ld, dl = r["load"], d["load"]
        per_call = (dl["client_cpu_s"] + dl["server_cpu_s"]) / d["calls"]
        per_object = (r["cpu_s"] + ld["server_cpu_s"]) / r["objects"]
        out.append(
            f"| {c} | {dr:,.0f} calls/s | {ar:,.0f} objects/s | **{ratio:.2f}x** {verdict} | "
            f"{r['rss_mib']} MiB | {r['cpu_s'] / r['objects'] * 1000:.2f} ms | "
            f"{ld['server_cpu_s'] / r['objects'] * 1000:.2f} "
            f"({ld['proxy_cpu_s'] / r['objects'] * 1000:.2f}) ms | "
            f"{per_call / per_object:.2f}x | {dl['busy_pct']}% / {ld['busy_pct']}% | "
            f"{r['s3_ms']} / {r['kms_ms']} ms | "
            f"{ld['foreign_pct']}%; {ld['load_start']}→{ld['load_end']} |")
    if a.before_bin:
        when = dt.datetime.fromtimestamp(os.stat(a.before_bin).st_mtime).strftime("%Y-%m-%d %H:%M")
        out += ["", f"(a0): `{a.before_bin}`, built {when}.", "",
                "| --concurrency | (d) KMS loop | (a0) before | (a0)/(d) | (a) after | (a)/(d) "
                "| RSS before / after | client CPU / object before / after |",
                "|---|---|---|---|---|---|---|---|"]
        for c, d, r, r0 in rows:
            dr = d["calls"] / d["wall"]
            ar, a0r = r["objects"] / r["wall"], r0["objects"] / r0["wall"]
            out.append(
                f"| {c} | {dr:,.0f} calls/s | {a0r:,.0f} objects/s | {a0r / dr:.2f}x | "
                f"{ar:,.0f} objects/s | **{ar / dr:.2f}x** | {r0['rss_mib']} / {r['rss_mib']} MiB | "
                f"{r0['cpu_s'] / r0['objects'] * 1000:.2f} / "
                f"{r['cpu_s'] / r['objects'] * 1000:.2f} ms |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
