#!/bin/bash
# build-apiserver.sh: build a real (CRD-only) Kubernetes API server for Pollen's integration tests, from
# Debian's archive only (the `sid` suite): apt-get download of the Go source packages behind
# golang-k8s-apiextensions-apiserver-dev plus the Go toolchain, etcd-server and kubectl; dpkg -x; a
# GOPATH-mode `go build` (no module downloads, no cgo) of e2e/tools/crd-apiserver/main.go.
#
#   e2e/tools/build-apiserver.sh
#
# Outputs: .tools/bin/crd-apiserver, .tools/bin/etcd, .tools/bin/kubectl (repository root). Everything else
# (private apt state, .debs, unpacked tree, Go build cache) lives in .tools/apiserver/. Nothing is installed
# into the system and the system's apt configuration is not touched (only its archive keyring is read).
#
# When the three binaries exist the script does nothing. The first build takes about 3-4 minutes on
# 2 cores, downloads ~100 MB and the linker peaks at ~1.5 GB of memory. The downloaded .debs are kept,
# so a rebuild after deleting the binaries skips the download.
# The crd-apiserver serves CustomResourceDefinitions and custom resources only: no core/v1, leases, RBAC.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC="$ROOT/e2e/tools/crd-apiserver/main.go"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
W="$TOOLS/apiserver"
SUITE=${SUITE:-sid}
T0=$(date +%s.%N)
log() { printf '[build-apiserver %6.1fs] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$*"; }

if [ -x "$BIN/crd-apiserver" ] && [ -x "$BIN/etcd" ] && [ -x "$BIN/kubectl" ]; then
  log "crd-apiserver, etcd, kubectl present in $BIN: nothing to do"
  exit 0
fi
log "building crd-apiserver, etcd, kubectl into $BIN (first build: about 3-4 minutes, ~1.5 GB memory)"
mkdir -p "$BIN" "$W"
cd "$W"

# --- 1. private apt configuration for the sid suite -------------------------------------------------------
# the Debian mirror this machine already uses (first URI in its apt sources)
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' \
                   /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
mkdir -p apt/lists/partial apt/cache/archives/partial apt/etc debs
echo "deb $MIRROR $SUITE main" > apt/etc/sources.list
[ -f apt/status ] || : > apt/status
A=(-o Dir::State::Lists="$W/apt/lists" -o Dir::State::status="$W/apt/status" -o Dir::Cache="$W/apt/cache"
   -o Dir::Etc::SourceList="$W/apt/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
   -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
   -o APT::Sandbox::User=root -o Acquire::Languages=none)

# exactly the Debian packages whose Go packages end up in the binary (from `go list -deps`)
PKGS="golang-cel-cel-go-dev golang-cel-expr-dev golang-etcd-server-dev golang-github-antlr4-go-antlr-dev golang-github-beorn7-perks-dev golang-github-blang-semver-dev golang-github-cenkalti-backoff-v5-dev golang-github-cespare-xxhash-v2-dev golang-github-coreos-go-semver-dev golang-github-coreos-go-systemd-dev golang-github-davecgh-go-spew-dev golang-github-docker-spdystream-dev golang-github-emicklei-go-restful-dev golang-github-evanphx-json-patch-dev golang-github-felixge-httpsnoop-dev golang-github-fsnotify-fsnotify-dev golang-github-fxamacker-cbor-dev golang-github-go-logr-logr-dev golang-github-go-logr-stdr-dev golang-github-go-openapi-jsonpointer-dev golang-github-go-openapi-jsonreference-dev golang-github-go-openapi-swag-dev golang-github-gogo-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-github-google-gnostic-models-dev golang-github-google-uuid-dev golang-github-gorilla-websocket-dev golang-github-grpc-ecosystem-go-grpc-middleware-dev golang-github-grpc-ecosystem-grpc-gateway-dev golang-github-json-iterator-go-dev golang-github-kylelemons-godebug-dev golang-github-modern-go-concurrent-dev golang-github-modern-go-reflect2-dev golang-github-munnerz-goautoneg-dev golang-github-mxk-go-flowrate-dev golang-github-nytimes-gziphandler-dev golang-github-pkg-errors-dev golang-github-pmezard-go-difflib-dev golang-github-prometheus-client-golang-dev golang-github-prometheus-client-model-dev golang-github-prometheus-common-dev golang-github-prometheus-procfs-dev golang-github-spf13-cobra-dev golang-github-spf13-pflag-dev golang-github-x448-float16-dev golang-go.uber-multierr-dev golang-go.uber-zap-dev golang-golang-x-crypto-dev golang-golang-x-exp-dev golang-golang-x-net-dev golang-golang-x-oauth2-dev golang-golang-x-sync-dev golang-golang-x-sys-dev golang-golang-x-term-dev golang-golang-x-text-dev golang-golang-x-time-dev golang-google-genproto-dev golang-google-grpc-dev golang-google-protobuf-dev golang-gopkg-inf.v0-dev golang-gopkg-natefinch-lumberjack.v2-dev golang-gopkg-yaml.v2-dev golang-gopkg-yaml.v3-dev golang-k8s-api-dev golang-k8s-apiextensions-apiserver-dev golang-k8s-apimachinery-dev golang-k8s-apiserver-dev golang-k8s-client-go-dev golang-k8s-component-base-dev golang-k8s-klog-dev golang-k8s-kms-dev golang-k8s-kube-openapi-dev golang-k8s-sigs-apiserver-network-proxy-dev golang-k8s-sigs-json-dev golang-k8s-sigs-randfill-dev golang-k8s-sigs-structured-merge-diff-v6-dev golang-k8s-sigs-yaml-dev golang-k8s-streaming-dev golang-k8s-utils-dev golang-opentelemetry-contrib-dev golang-opentelemetry-otel-dev golang-opentelemetry-proto-dev etcd-server kubectl"

# --- 2. download (skipped when a complete set of .debs is cached) ----------------------------------------
have_all_debs() {
  for p in $PKGS; do ls debs/"${p}"_*.deb >/dev/null 2>&1 || return 1; done
  ls debs/golang-1.*-go_*.deb debs/golang-1.*-src_*.deb >/dev/null 2>&1
}
if have_all_debs; then
  log "using cached packages in $W/debs"
else
  apt-get "${A[@]}" -qq update
  log "apt-get update ($SUITE, mirror $MIRROR) done"
  # the Go toolchain sid's golang-go points at (golang-1.NN-go and its -src)
  GOPKGS=$(apt-cache "${A[@]}" depends golang-go | awk '$1=="Depends:" && $2 ~ /^golang-1\.[0-9]+-go$/ {print $2}')
  [ -n "$GOPKGS" ] || { echo "build-apiserver.sh: cannot find the Go toolchain package in $SUITE" >&2; exit 1; }
  rm -f debs/*.deb
  # shellcheck disable=SC2086
  (cd debs && apt-get "${A[@]}" -qq download $PKGS $GOPKGS "${GOPKGS%-go}-src")
  log "downloaded $(ls debs/*.deb | wc -l) packages, $(du -cm debs/*.deb | tail -1 | cut -f1) MB"
fi
rm -rf root && mkdir root
for f in debs/*.deb; do dpkg -x "$f" root; done
log "extracted into $W/root ($(du -sm root | cut -f1) MB)"

# --- 3. build (GOPATH mode over Debian's /usr/share/gocode, no module downloads, no cgo) --------------------
GOROOT=$(ls -d "$W"/root/usr/lib/go-1.*/ | sort -V | tail -1); GOROOT=${GOROOT%/}
export GOROOT PATH="$GOROOT/bin:$PATH" GO111MODULE=off GOPATH="$W/root/usr/share/gocode" \
       GOCACHE="$W/gocache" GOFLAGS=-trimpath GOTOOLCHAIN=local CGO_ENABLED=0 GOPROXY=off
mkdir -p src/crd-apiserver
cp "$SRC" src/crd-apiserver/main.go
V=k8s.io/component-base/version
KVER=$(dpkg-deb -f debs/golang-k8s-apiextensions-apiserver-dev_*.deb Version | sed 's/-[^-]*$//; s/^0\./1./')
BD=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LDF="-s -w -X $V.gitVersion=v$KVER -X $V.gitMajor=1 -X $V.gitMinor=$(echo "$KVER" | cut -d. -f2) -X $V.gitTreeState=clean -X $V.buildDate=$BD"
log "go build with $(go version | awk '{print $3}') (Kubernetes v$KVER); this is the slow part"
(cd src/crd-apiserver && go build -ldflags "$LDF" -o "$W/crd-apiserver.new" .)
mv "$W/crd-apiserver.new" "$BIN/crd-apiserver"
log "built $BIN/crd-apiserver ($(du -m "$BIN/crd-apiserver" | cut -f1) MB)"
install -m 0755 root/usr/bin/etcd "$BIN/etcd"
install -m 0755 root/usr/bin/kubectl "$BIN/kubectl"
log "etcd $("$BIN/etcd" --version | awk 'NR==1{print $3}'), kubectl $("$BIN/kubectl" version --client 2>/dev/null | awk '/Client Version/{print $3}')"
# the unpacked tree is only needed for building; the .debs and the Go build cache stay for rebuilds
rm -rf root
log "done"
