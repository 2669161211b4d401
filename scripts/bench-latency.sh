#!/usr/bin/env bash
# `s3cse rekey` on a latency-bound bed (issue 14, item 2): the test bed's S3 and KMS behind a
# fixed one-way delay each way, throughput against --concurrency next to the bare KMS
# GenerateDataKey loop at the same concurrency, with peak RSS and client CPU per object.
#
#   scripts/bench-latency.sh [--delay-ms 10] [--no-build] [bench_latency.py options:
#                            --sweep 16,64,256 --small 3000 --small-kib 4 --kms-calls 2000 ...]
#
# The delay: examples/delayproxy.rs, TCP forwarders on 127.0.0.1 (one for S3, one for KMS) that
# hold every chunk DELAY ms in each direction and charge a new connection one extra round trip
# (its TCP handshake). Not `tc netem` in a network namespace: this machine's kernel has no netem
# qdisc (CONFIG_NET_SCH_NETEM unset, no module), nor fq/act_bpf for an EDT delay. The proxy is
# stopped on exit (trap); its CPU is reported in its own column and counted with the servers'.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ORIG="$*"
BUILD=1
DELAY=10
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0 ;;
    --delay-ms) DELAY=$2; shift ;;
    --delay-ms=*) DELAY=${1#*=} ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
if [ ! -x /usr/bin/time ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
TB="${TESTBED_DIR:-$ROOT/.testbed}"
if [ -z "${S3CSE_TESTBED_DIR:-}" ]; then
  bash scripts/testbed.sh up >/dev/null
  # shellcheck disable=SC1091
  source "$TB/env"
fi
if [ "$BUILD" = 1 ]; then
  cargo build --release --bin s3cse --example delayproxy >&2
fi
[ "$BUILD" = 0 ] || [ -x "${CARGO_TARGET_DIR:-target}/release/s3cse" ] || { echo "bench-latency: no release s3cse" >&2; exit 1; }
# The release proxy, or the dev build's (scripts/test.sh runs a small sweep after `cargo test`).
TARGET="${CARGO_TARGET_DIR:-target}"
PROXY_BIN="$TARGET/release/examples/delayproxy"
[ -x "$PROXY_BIN" ] || [ "$BUILD" = 1 ] || PROXY_BIN="$TARGET/debug/examples/delayproxy"

# shellcheck source=scripts/bench/delayproxy.sh
. scripts/bench/delayproxy.sh
OUT="$(mktemp)" PROXY=""
trap '[ -z "$PROXY" ] || kill "$PROXY" 2>/dev/null || true; rm -f "$OUT"' EXIT
delay_proxy "$PROXY_BIN" "$DELAY" "$OUT" bench-latency || exit 1
export S3CSE_BENCH_SERVER_PIDS="$PROXY" S3CSE_BENCH_PROXY_PID="$PROXY"
echo "bench-latency: S3 $AWS_ENDPOINT_URL_S3, KMS $AWS_ENDPOINT_URL_KMS, ${DELAY} ms each way" >&2
"$S3CSE_PY_AWSCLIENT" scripts/bench/bench_latency.py --delay-ms "$DELAY" \
  --command "scripts/bench-latency.sh $ORIG" "${ARGS[@]}"
