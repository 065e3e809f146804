#!/bin/sh
# make-bundle.sh: build a k3s air-gap bundle for Pollen, laid out like the k3s data directory.
#
#   deploy/airgap/make-bundle.sh [-o OUT] [-a ARCH] [-t TAG] [-r REGISTRY] [--skip-images]
#
# Writes (OUT defaults to ./pollen-airgap):
#   OUT/agent/images/pollen-images-ARCH.tar      -> copy to /var/lib/rancher/k3s/agent/images/ on EVERY node
#                                                   (k3s imports it into containerd when it starts)
#   OUT/server/manifests/pollen.yaml             -> optional: copy to /var/lib/rancher/k3s/server/manifests/
#                                                   on a server; k3s's Helm controller then installs the chart
#                                                   from the embedded chart archive (no chart repository needed)
#   OUT/charts/pollen-VERSION.tgz                -> the chart, for `helm install` from a workstation
#   OUT/crds/pollen.dev.yaml                     -> the CRDs (Helm installs them too; kept for kubectl users)
#   OUT/SHA256SUMS
#
# The images (pollen-operator, pollen-edge-node, and busybox for the init container and `helm test`) are
# pulled for linux/ARCH and saved into one docker-archive tarball with docker or podman (env ENGINE picks one).
# --skip-images writes everything but the image tarball (for machines without a container engine).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=./pollen-airgap
ARCH=$(uname -m)
case "$ARCH" in x86_64) ARCH=amd64 ;; aarch64) ARCH=arm64 ;; armv7l) ARCH=arm ;; esac
TAG=""
REGISTRY=ghcr.io/pollen-dev
SKIP_IMAGES=0
while [ $# -gt 0 ]; do
  case "$1" in
    -o) OUT=$2; shift 2 ;;
    -a) ARCH=$2; shift 2 ;;
    -t) TAG=$2; shift 2 ;;
    -r) REGISTRY=$2; shift 2 ;;
    --skip-images) SKIP_IMAGES=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "make-bundle.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ARCH" in amd64|arm64|arm) ;; *) echo "make-bundle.sh: unsupported architecture $ARCH (amd64, arm64, arm)" >&2; exit 2 ;; esac

HELM=${HELM:-}
if [ -z "$HELM" ]; then
  if [ -x "$ROOT/.tools/bin/helm" ]; then HELM="$ROOT/.tools/bin/helm"; else HELM=helm; fi
fi
command -v "$HELM" >/dev/null 2>&1 || { echo "make-bundle.sh: helm not found (run e2e/tools/install-deps.sh)" >&2; exit 1; }

CHART="$ROOT/charts/pollen"
VERSION=$(awk '/^version:/{print $2; exit}' "$CHART/Chart.yaml")
APP_VERSION=$(awk -F'"' '/^appVersion:/{print $2; exit}' "$CHART/Chart.yaml")
[ -n "$TAG" ] || TAG=$APP_VERSION
BUSYBOX=$(awk '/^  volumePermissions:/{f=1} f && /image:/{print $2; exit}' "$CHART/values.yaml")
IMAGES="$REGISTRY/pollen-operator:$TAG $REGISTRY/pollen-edge-node:$TAG $BUSYBOX"

mkdir -p "$OUT/agent/images" "$OUT/server/manifests" "$OUT/charts" "$OUT/crds"

# 1. the chart and the CRDs
"$HELM" package "$CHART" --destination "$OUT/charts" >/dev/null
cp "$ROOT/crds/pollen.dev.yaml" "$OUT/crds/pollen.dev.yaml"

# 2. a k3s HelmChart manifest with the chart embedded (k3s's Helm controller installs it)
TGZ="$OUT/charts/pollen-$VERSION.tgz"
{
  echo "# Copy to /var/lib/rancher/k3s/server/manifests/ on a k3s server. Create the director key Secret first:"
  echo "#   kubectl create namespace pollen-system"
  echo "#   cosign generate-key-pair k8s://pollen-system/pollen-director"
  echo "apiVersion: helm.cattle.io/v1"
  echo "kind: HelmChart"
  echo "metadata:"
  echo "  name: pollen"
  echo "  namespace: kube-system"
  echo "spec:"
  echo "  targetNamespace: pollen-system"
  echo "  createNamespace: true"
  echo "  chartContent: $(base64 < "$TGZ" | tr -d '\n')"
  echo "  valuesContent: |-"
  echo "    image:"
  echo "      registry: $REGISTRY"
  echo "      tag: \"$TAG\""
  echo "      pullPolicy: IfNotPresent"
} > "$OUT/server/manifests/pollen.yaml"

# 3. the images, saved for k3s's agent/images import
if [ "$SKIP_IMAGES" = 1 ]; then
  echo "images skipped; the bundle needs: $IMAGES" >&2
else
  ENGINE=${ENGINE:-}
  if [ -z "$ENGINE" ]; then
    for e in docker podman; do command -v "$e" >/dev/null 2>&1 && { ENGINE=$e; break; }; done
  fi
  [ -n "$ENGINE" ] || { echo "make-bundle.sh: no container engine (docker or podman); use --skip-images and save these elsewhere: $IMAGES" >&2; exit 1; }
  for img in $IMAGES; do
    "$ENGINE" image inspect "$img" >/dev/null 2>&1 || "$ENGINE" pull --platform "linux/$ARCH" "$img"
  done
  # shellcheck disable=SC2086
  "$ENGINE" save -o "$OUT/agent/images/pollen-images-$ARCH.tar" $IMAGES
fi

SUMS=$(cd "$OUT" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum)
printf '%s\n' "$SUMS" > "$OUT/SHA256SUMS"
echo "bundle in $OUT:"
(cd "$OUT" && find . -type f | sort)
