#!/bin/bash
# rss.sh: measure pollen-edge-node's resident memory while two nodes move a large payload on 127.0.0.1.
#
#   edge-node/bench/rss.sh [MIB]        (default 1024)
#
# Needs: docker-registry and openssl on PATH (e2e/tools/install-deps.sh), and release builds of
# pollen-edge-node and pollen (cargo build --release -p pollen-edge-node -p pollen-trust).
# Starts a registry, publishes and indexes MIB MiB of random bytes with fresh keys, issues a fleet CA and two
# node certificates, runs node a (origin allowed) and node b, and samples VmRSS of both every 100 ms.
# Prints per node: steady RSS (median of the samples while the transfer runs) and peak RSS (VmHWM), and
# the median split of RSS into anonymous memory (heap, stacks) and file pages (the mapped binary and libraries).
set -euo pipefail
MIB=${1:-1024}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EDGE=${EDGE:-$ROOT/target/release/pollen-edge-node}
POLLEN=${POLLEN:-$ROOT/target/release/pollen}
REGISTRY=$(command -v docker-registry || echo "$ROOT/.tools/bin/docker-registry")
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
uport() { python3 -c 'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

RP=$(port)
cat > "$W/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$RP
log:
  level: error
YML
"$REGISTRY" serve "$W/registry.yml" > "$W/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$RP/v2/" >/dev/null && break; sleep 0.1; done

cd "$W"
export COSIGN_PASSWORD=bench
"$POLLEN" keygen --output-prefix publisher >/dev/null
"$POLLEN" keygen --output-prefix director >/dev/null
head -c "$((MIB * 1024 * 1024))" /dev/urandom > payload.bin
REF=$("$POLLEN" publish payload.bin --to "127.0.0.1:$RP/bench/app:v1" --key publisher.key --insecure-registry "127.0.0.1:$RP" 2>/dev/null | tail -1)
IDX=$("$POLLEN" index --payload "$REF" --key director.key --rollout default/bench --sequence 1 \
  --target-path payload.bin --publisher-key publisher.pub --insecure-registry "127.0.0.1:$RP" 2>/dev/null | tail -1)

# Fleet CA and node certificates (serverAuth + clientAuth, name in the DNS SAN).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -days 1 -subj "/CN=bench fleet" >/dev/null 2>&1
for n in a b; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$n.key" -out "$n.csr" \
    -subj "/CN=$n" >/dev/null 2>&1
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n' "$n" > "$n.ext"
  openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile "$n.ext" \
    -out "$n.pem" >/dev/null 2>&1
done

PA=$(uport); PB=$(uport)
LAST=
run() { # name listen peer extra...; sets LAST to the pid
  local n=$1 l=$2 p=$3; shift 3
  "$EDGE" standalone --name "$n" --listen "127.0.0.1:$l" --peer "127.0.0.1:$p" --cert "$n.pem" --key "$n.key" \
    --ca ca.pem --index "$IDX" --publisher-key publisher.pub --director-key director.pub --insecure-registry \
    --data-dir "$W/$n/data" --install-root "$W/$n/install" "$@" > "$W/$n.out" 2> "$W/$n.log" &
  LAST=$!
  PIDS+=("$LAST")
}
T0=$(date +%s.%N)
run a "$PA" "$PB" --seed-for 600
A=$LAST
run b "$PB" "$PA" --exit-when-done
B=$LAST
: > rss_a; : > rss_b; : > anon_a; : > anon_b; : > file_a; : > file_b
hwm_a=0; hwm_b=0
while kill -0 "$B" 2>/dev/null; do
  for n in a b; do
    pid=$([ $n = a ] && echo "$A" || echo "$B")
    s=$(cat "/proc/$pid/status" 2>/dev/null) || continue
    rss=$(awk '/^VmRSS/{print $2}' <<<"$s"); hwm=$(awk '/^VmHWM/{print $2}' <<<"$s")
    [ -n "$rss" ] && echo "$rss" >> "rss_$n"
    awk '/^RssAnon/{print $2}' <<<"$s" >> "anon_$n"; awk '/^RssFile/{print $2}' <<<"$s" >> "file_$n"
    if [ $n = a ]; then hwm_a=${hwm:-$hwm_a}; else hwm_b=${hwm:-$hwm_b}; fi
  done
  sleep 0.1
done
T1=$(date +%s.%N)
wait "$B" || { echo "node b failed:"; tail -5 "$W/b.log"; exit 1; }
cmp -s payload.bin "$W/b/install/current/payload.bin" || { echo "node b installed wrong bytes"; exit 1; }
med() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf 'payload %d MiB moved in %.1f s (node b: %s)\n' "$MIB" "$(echo "$T1 - $T0" | bc)" "$(cat "$W/b.out")"
printf 'node a (origin + seed): steady RSS %.1f MiB, peak RSS (VmHWM) %.1f MiB, %d samples\n' \
  "$(echo "$(med rss_a) / 1024" | bc -l)" "$(echo "$hwm_a / 1024" | bc -l)" "$(wc -l < rss_a)"
printf 'node b (peer + origin):  steady RSS %.1f MiB, peak RSS (VmHWM) %.1f MiB, %d samples\n' \
  "$(echo "$(med rss_b) / 1024" | bc -l)" "$(echo "$hwm_b / 1024" | bc -l)" "$(wc -l < rss_b)"
for n in a b; do
  printf 'node %s: median RssAnon %.1f MiB, RssFile %.1f MiB\n' "$n" \
    "$(echo "$(med "anon_$n") / 1024" | bc -l)" "$(echo "$(med "file_$n") / 1024" | bc -l)"
done
