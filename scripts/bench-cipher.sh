#!/usr/bin/env bash
# The content ciphers against OpenSSL on one core, in one run: `openssl speed` (16 KiB blocks,
# user CPU time) for AES-256-CBC decryption, AES-256-CTR, AES-256-GCM and GHASH, then
# `cargo bench --bench pipeline` (groups `content`, `components` in thread CPU time, and
# `content_wall`), then OpenSSL again. Figures go into BENCHMARKS.md ("Content ciphers").
#
#   scripts/bench-cipher.sh [--bench-bin BIN]   (BIN: an already built pipeline bench binary)
#
# Criterion prints GiB/s (2^30); OpenSSL prints 1000s of bytes/s: MB/s = GiB/s * 1073.74.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN=""
[ "${1:-}" = --bench-bin ] && BIN=$2
ossl() {
  echo "openssl $(openssl version | cut -d' ' -f2), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  for a in "-evp aes-256-cbc -decrypt" "-evp aes-256-ctr" "-evp aes-256-gcm" "ghash"; do
    openssl speed -seconds 3 -bytes 16384 $a 2>/dev/null | tail -1 |
      awk -v a="$a" '{v=$NF; sub(/k$/,"",v); printf "  %-28s %6.0f MB/s\n", a, v/1000}'
  done
}
ossl
if [ -n "$BIN" ]; then "$BIN" --bench; else cargo bench --bench pipeline; fi 2>&1 |
  grep -E '^(content|components)|thrpt' | grep -v '^ *change'
ossl
