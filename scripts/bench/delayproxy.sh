# Sourced by scripts/bench-latency.sh and scripts/bench-get.sh.
#
# delay_proxy BIN DELAY_MS OUT NAME: starts examples/delayproxy (the binary BIN) in front of the
# test bed's S3 and KMS with DELAY_MS each way, its output in the file OUT; waits until it is
# ready, then points AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL_KMS at it (exported). PROXY is its
# pid, set as soon as it starts: the caller stops it. Returns 1, saying why as NAME, if it does
# not start.
delay_proxy() {
  local bin=$1 delay=$2 out=$3 name=$4
  [ -x "$bin" ] || { echo "$name: no $bin (cargo build --release --example delayproxy)" >&2; return 1; }
  "$bin" --delay-ms "$delay" --to "$AWS_ENDPOINT_URL_S3" --to "$AWS_ENDPOINT_URL_KMS" >"$out" &
  PROXY=$!
  for _ in $(seq 1 50); do grep -q '^ready' "$out" && break; sleep 0.1; done
  grep -q '^ready' "$out" || { echo "$name: the delay proxy did not start" >&2; return 1; }
  AWS_ENDPOINT_URL_S3="$(sed -n 1p "$out" | cut -d' ' -f1)"
  AWS_ENDPOINT_URL_KMS="$(sed -n 2p "$out" | cut -d' ' -f1)"
  export AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL_KMS
}
