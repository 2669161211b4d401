#!/usr/bin/env python3
"""Client CPU per small object as instruction counts (issue 14, item 1): `s3cse rekey` of N fresh
4 KiB V1 objects under valgrind's callgrind, for one or two s3cse binaries (before / after a
change), on the test bed as it is (no delay).

Instruction counts, unlike CPU seconds, do not move with the load other processes put on the
machine; this VM has no hardware counters for `perf stat`. User space only: the kernel's share
(0.51 ms per object by `perf record`, BENCHMARKS.md) is not in these counts. Each binary runs
twice, on N and on N/5 objects: the difference divided by 4N/5 is the cost of one more object,
without start-up (migrations, DescribeKey, the listing's first page). Printed per object: all
instructions, and those under SQLite (sqlx's statement loop, `ExecuteIter::next`, inclusive).

  .venv/awsclient/bin/python scripts/bench/bench_cpu.py --bin target/debug/s3cse \\
      [--before-bin OTHER] [--small 500] [--concurrency 64]

`--kernel` instead: one `perf record -e cpu-clock -g` of `--bin` (no valgrind), and the kernel's
samples split by stack: on loopback the receiving side's TCP/IP path (`ip_rcv`, `tcp_v4_rcv`,
run by the sender's softirq: rekey's CPU pays the servers' receive of its requests), the send
path, futex/scheduling, and the rest.
"""
import argparse
import os
import re
import time
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_rekey as br  # noqa: E402


def annotate(out_file):
    """(total Ir, Ir inclusive under sqlx's statement loop)."""
    txt = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out_file],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^\s*([\d,]+).*PROGRAM TOTALS", txt, re.M).group(1).replace(",", ""))
    sqlite = 0
    for line in txt.splitlines():
        m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if m and "sqlx_sqlite::connection::execute::ExecuteIter as core::iter" in m.group(2):
            sqlite = max(sqlite, int(m.group(1).replace(",", "")))
    return total, sqlite


def run(a, bench, name, binary, b, n):
    """`s3cse rekey` of bucket `b` (n objects) under callgrind; the callgrind file."""
    out = os.path.join(a.out_dir, f"callgrind.{name}.{n}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           binary, "rekey", f"s3://{b}", "--state", os.path.join(bench.work, f"{name}{n}.db"),
           "--kms-key-id", bench.key_id, "--aes-key-file", bench.aes_file,
           "--context", "bench=rekey", "--concurrency", str(a.concurrency), "--log-format", "json"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.returncode != 0 or f"{n:,} migrated" not in p.stdout:
        raise SystemExit(f"rekey ({name}) exited {p.returncode}: {p.stdout}")
    return out


KERNEL_GROUPS = [
    # (label, any of these frames on the stack); the first match wins.
    ("loopback receive path (TCP/IP input, run in the sender's softirq)",
     ("ip_rcv", "ip_local_deliver", "tcp_v4_rcv", "__netif_receive_skb", "process_backlog")),
    ("TCP send path (tcp_sendmsg, ip_output, loopback xmit)",
     ("tcp_sendmsg", "ip_output", "ip_finish_output", "__dev_queue_xmit", "tcp_write_xmit")),
    ("TCP receive by rekey (tcp_recvmsg, copy to user)", ("tcp_recvmsg",)),
    ("futex, scheduler, epoll", ("futex", "schedule", "ep_poll", "do_epoll_wait",
                                 "try_to_wake_up")),
    ("SQLite's file I/O and locks (pread/pwrite, fcntl locks, fsync)",
     ("vfs_read", "vfs_write", "ksys_pread64", "ksys_pwrite64", "vfs_fsync", "do_fsync",
      "__x64_sys_fsync", "__x64_sys_fcntl", "fcntl_setlk", "posix_lock")),
    ("page faults", ("exc_page_fault",)),
    ("interrupts, IPIs, return to user", ("asm_sysvec", "irqentry_exit_to_user_mode")),
    ("connect/accept, socket set-up and close", ("inet_stream_connect", "__sys_connect",
                                                 "tcp_close", "__sys_socket", "tcp_connect")),
]


def kernel_split(a, bench):
    """perf record of one rekey; {group: samples} of kernel samples, and all samples."""
    b = bench.seed_small("cpukernel", a.small)
    data = os.path.join(a.out_dir, "perf.kernel.data")
    cmd = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-g", "-o", data, "--",
           a.bin, "rekey", f"s3://{b}", "--state", os.path.join(bench.work, "kernel.db"),
           "--kms-key-id", bench.key_id, "--aes-key-file", bench.aes_file,
           "--context", "bench=rekey", "--concurrency", str(a.concurrency), "--log-format", "json"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.returncode != 0 or f"{a.small:,} migrated" not in p.stdout:
        raise SystemExit(f"rekey (kernel) exited {p.returncode}: {p.stdout}")
    bench.drop_bucket(b)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"], capture_output=True,
                            text=True).stdout
    counts, total, kernel = {}, 0, 0
    for sample in script.split("\n\n"):
        lines = [l.split() for l in sample.strip().splitlines() if l.strip()]
        if not lines:
            continue
        total += 1
        if not lines[0][0].startswith("ffff"):
            continue
        kernel += 1
        syms = [l[1] if len(l) > 1 else "" for l in lines]
        label = "other kernel"
        for name, frames in KERNEL_GROUPS:
            if any(any(s.startswith(f) for f in frames) for s in syms):
                label = name
                break
        counts[label] = counts.get(label, 0) + 1
    return counts, kernel, total


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--bin", default=os.path.join(br.ROOT, "target", "debug", "s3cse"))
    p.add_argument("--before-bin")
    p.add_argument("--small", type=int, default=500)
    p.add_argument("--small-kib", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--out-dir", default="/tmp", help="where the callgrind files are kept")
    p.add_argument("--kernel", action="store_true", help="split the kernel time (perf record)")
    a = p.parse_args(argv)
    a.seed_threads, a.large, a.large_mib, a.keep, a.kms_calls = 32, 0, 0, False, 0
    a.rekey_arg = []
    bench = br.Bench(a)
    rows = []
    try:
        bench.setup()
        if a.kernel:
            t = time.monotonic()
            counts, kernel, total = kernel_split(a, bench)
            print(f"perf record -e cpu-clock -F 2000 -g of `{a.bin}` rekey, {a.small:,} x "
                  f"{a.small_kib} KiB V1 objects, --concurrency {a.concurrency}, verify on "
                  f"({time.monotonic() - t:.0f} s): {total:,} samples, {kernel:,} in the kernel "
                  f"({kernel / total:.0%}).\n")
            print("| kernel time of the rekey process | share of its samples | ms / object |")
            print("|---|---|---|")
            for label, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                print(f"| {label} | {n / total:.1%} | {n / 2000 / a.small * 1000:.3f} |")
            return 0
        for name, binary in [("before", a.before_bin), ("after", a.bin)]:
            if not binary:
                continue
            counts = {}
            for n in (a.small // 5, a.small):
                b = bench.seed_small(f"cpu{name}{n}", n)
                counts[n] = annotate(run(a, bench, name, binary, b, n))
                bench.drop_bucket(b)
            small, big = counts[a.small // 5], counts[a.small]
            per = [(y - x) / (a.small - a.small // 5) for x, y in zip(small, big)]
            rows.append((name, binary, *per))
            br.log(f"  {name}: {per[0] / 1e6:.2f} M instructions/object, SQLite {per[1] / 1e6:.2f} M")
    finally:
        bench.cleanup()
    print(f"{a.small // 5:,} and {a.small:,} x {a.small_kib} KiB V1 objects, --concurrency "
          f"{a.concurrency}, verify on, under callgrind (user-space instructions of one more "
          "object).\n")
    print("| binary | instructions / object | of which SQLite (sqlx statement loop, inclusive) |")
    print("|---|---|---|")
    for name, binary, total, sqlite in rows:
        print(f"| {name}: `{binary}` | {total / 1e6:.2f} M | {sqlite / 1e6:.2f} M |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
