#!/usr/bin/env bash
# meshca against a real Kubernetes cluster, end to end. Not run in CI (no API server can run
# there); run it yourself:
#
#   cargo build --release
#   deploy/kind/e2e.sh                 # a throwaway kind cluster, deleted at the end
#   E2E_CONTEXT=current deploy/kind/e2e.sh    # the current kubectl context instead
#
# What it does, failing loudly at the first step that does not hold:
#   1. creates a kind cluster "$E2E_CLUSTER" (default meshca-e2e) with its own kubeconfig
#      (your ~/.kube/config is left alone) — or, with E2E_CONTEXT=current, uses kubectl's current
#      context and works in two namespaces it creates and deletes ($E2E_PREFIX-system and
#      $E2E_PREFIX-app, default prefix meshca-e2e);
#   2. `meshca bootstrap`: creates the CA bundle Secret, shows the root with the printed
#      `kubectl get secret … | base64 -d | openssl x509 -text -noout` pipeline and checks it;
#   3. runs bootstrap again: the Secret is adopted (same root fingerprint, resourceVersion
#      unchanged);
#   4. `meshca issue --secret`: a managed kubernetes.io/tls Secret, checked with openssl (chain
#      verifies against ca.crt, tls.key matches tls.crt, the SPIFFE ID is there, ca.crt is the
#      bootstrapped root); a second issue replaces it; someone else's Secret is refused and left
#      as it was;
#   5. `meshca serve --set sds.auth=token`: an SDS client sends a projected token made by
#      `kubectl create token` (audience meshca); meshca checks it with a TokenReview and hands
#      out that ServiceAccount's certificate; a token for another audience is refused. This step
#      needs python3 with grpcio (`pip install grpcio`; set E2E_PYTHON to use another
#      interpreter) and is skipped with a notice when it is missing;
#   6. cleans up (E2E_KEEP=1 keeps the cluster or namespaces for a look around).
#
# Needs: kubectl, openssl, base64, a built meshca (E2E_MESHCA, else target/release/meshca,
# target/debug/meshca, or meshca on PATH) and kind (unless E2E_CONTEXT=current). The kubeconfig
# user must be allowed to manage Secrets, ServiceAccounts and namespaces and to create
# TokenReviews (kind's admin is).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/deploy/kind
cluster=${E2E_CLUSTER:-meshca-e2e}
context_mode=${E2E_CONTEXT:-kind}
prefix=${E2E_PREFIX:-meshca-e2e}
system_ns=$prefix-system
app_ns=$prefix-app
python=${E2E_PYTHON:-python3}
sds_port=${E2E_SDS_PORT:-15910}

work=$(mktemp -d "${TMPDIR:-/tmp}/meshca-e2e.XXXXXX")
serve_pid=""
created_cluster=""
created_namespaces=()

log() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf '\ne2e.sh: FAILED: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed (needed: $2)"; }

cleanup() {
  local status=$?
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    log "E2E_KEEP=1: leaving the cluster/namespaces; KUBECONFIG=${KUBECONFIG:-~/.kube/config}"
  elif [ -n "$created_cluster" ]; then
    log "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || note "could not delete kind cluster $cluster"
  elif [ "${#created_namespaces[@]}" -gt 0 ]; then
    log "deleting namespaces ${created_namespaces[*]}"
    kubectl delete namespace "${created_namespaces[@]}" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  if [ "$status" = 0 ]; then printf '\ne2e.sh: all checks passed\n' >&2; fi
}
trap cleanup EXIT

# --- preflight --------------------------------------------------------------------------------
need kubectl "to talk to the cluster"
need openssl "to check certificates"
need base64 "to decode Secret values"
meshca=${E2E_MESHCA:-}
if [ -z "$meshca" ]; then
  for candidate in "$root/target/release/meshca" "$root/target/debug/meshca" "$(command -v meshca || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then meshca=$candidate; break; fi
  done
fi
[ -n "$meshca" ] && [ -x "$meshca" ] || die "no meshca binary: run cargo build --release, or set E2E_MESHCA"
note "meshca: $meshca"

# Every meshca command below keeps Tresor's CA in the CA bundle Secret of $system_ns.
export MESHCA_TRESOR_STORE=kubernetes
export MESHCA_NAMESPACE=$system_ns
unset MESHCA_CONFIG KUBERNETES_SERVICE_HOST

# --- 1. a cluster -----------------------------------------------------------------------------
case "$context_mode" in
  kind)
    need kind "to create the cluster (or run with E2E_CONTEXT=current)"
    export KUBECONFIG=$work/kubeconfig
    clusters=$(kind get clusters 2>/dev/null || true)  # whole first: grep -q and pipefail
    if grep -qx "$cluster" <<<"$clusters"; then
      die "a kind cluster named $cluster already exists: delete it (kind delete cluster --name $cluster) or set E2E_CLUSTER"
    fi
    log "creating kind cluster $cluster"
    created_cluster=1
    kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 120s
    ;;
  current)
    log "using the current context: $(kubectl config current-context)"
    ;;
  *) die "E2E_CONTEXT must be kind or current, not $context_mode" ;;
esac
kubectl version >/dev/null || die "kubectl cannot reach the cluster"
for ns in "$system_ns" "$app_ns"; do
  if kubectl get namespace "$ns" >/dev/null 2>&1; then
    die "namespace $ns already exists: set E2E_PREFIX to use other namespaces"
  fi
  kubectl create namespace "$ns" >/dev/null
  created_namespaces+=("$ns")
done

# Prints a Secret value, decoded. Dots in keys are escaped for jsonpath.
secret_value() { # namespace name key
  kubectl get secret "$2" -n "$1" -o "jsonpath={.data.${3//./\\.}}" | base64 -d
}
resource_version() { # namespace name
  kubectl get secret "$2" -n "$1" -o jsonpath='{.metadata.resourceVersion}'
}
# `AB:CD:…` as openssl prints it, for a PEM file.
fingerprint() { openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2; }
# The `root SHA-256:` line of a bootstrap or issue report.
reported_root() { sed -n 's/^ *root SHA-256: *//p' "$1" | head -n1; }

# --- 2. bootstrap -----------------------------------------------------------------------------
log "meshca bootstrap (creates $system_ns/meshca-ca-bundle)"
"$meshca" bootstrap --namespace "$system_ns" | tee "$work/bootstrap-1.txt"
grep -q "created a new root CA" "$work/bootstrap-1.txt" || die "bootstrap did not create a root"
show=$(sed -n 's/^ *\(kubectl get secret .*\)$/\1/p' "$work/bootstrap-1.txt" | head -n1)
[ -n "$show" ] || die "bootstrap did not print the kubectl command for the root"
log "the root, as the report says to look at it: $show"
sh -c "$show" | tee "$work/root.txt" | sed -n '1,12p'
grep -q "CA:TRUE" "$work/root.txt" || die "the stored root is not a CA certificate"
secret_value "$system_ns" meshca-ca-bundle ca.crt > "$work/root.pem"
root_fingerprint=$(fingerprint "$work/root.pem")
[ "$(reported_root "$work/bootstrap-1.txt")" = "$root_fingerprint" ] \
  || die "bootstrap reported root $(reported_root "$work/bootstrap-1.txt"), the Secret holds $root_fingerprint"
note "root SHA-256 $root_fingerprint"
bundle_version=$(resource_version "$system_ns" meshca-ca-bundle)

# --- 3. adopt ---------------------------------------------------------------------------------
log "meshca bootstrap again (adopts, writes nothing)"
"$meshca" bootstrap --namespace "$system_ns" | tee "$work/bootstrap-2.txt"
grep -q "loaded the existing CA" "$work/bootstrap-2.txt" || die "the second bootstrap did not adopt"
[ "$(reported_root "$work/bootstrap-2.txt")" = "$root_fingerprint" ] || die "the second bootstrap reported another root"
[ "$(resource_version "$system_ns" meshca-ca-bundle)" = "$bundle_version" ] || die "the second bootstrap changed the Secret"

# --- 4. a managed TLS Secret ------------------------------------------------------------------
check_tls_secret() { # name expected-uri-san
  local dir=$work/$1
  mkdir -p "$dir"
  secret_value "$app_ns" "$1" tls.crt > "$dir/tls.crt"
  secret_value "$app_ns" "$1" tls.key > "$dir/tls.key"
  secret_value "$app_ns" "$1" ca.crt > "$dir/ca.crt"
  [ "$(kubectl get secret "$1" -n "$app_ns" -o jsonpath='{.type}')" = kubernetes.io/tls ] || die "$1 is not of type kubernetes.io/tls"
  openssl verify -CAfile "$dir/ca.crt" -untrusted "$dir/tls.crt" "$dir/tls.crt" || die "$1: tls.crt does not verify against ca.crt"
  [ "$(openssl x509 -in "$dir/tls.crt" -noout -pubkey)" = "$(openssl pkey -in "$dir/tls.key" -pubout)" ] || die "$1: tls.key does not match tls.crt"
  [ "$(fingerprint "$dir/ca.crt")" = "$root_fingerprint" ] || die "$1: ca.crt is not the bootstrapped root"
  openssl x509 -in "$dir/tls.crt" -noout -ext subjectAltName | tee "$dir/san.txt"
  grep -q "URI:$2" "$dir/san.txt" || die "$1: no URI SAN $2"
}

log "meshca issue --secret $app_ns/web-tls"
"$meshca" issue --identity "$app_ns/web" --dns "web.$app_ns.svc" --lifetime 2h --secret "$app_ns/web-tls" | tee "$work/issue-1.txt"
grep -q "created Secret $app_ns/web-tls" "$work/issue-1.txt" || die "issue did not create the Secret"
kubectl get secret web-tls -n "$app_ns" -o jsonpath='{.metadata.labels}{"\n"}{.metadata.annotations}{"\n"}'
[ "$(kubectl get secret web-tls -n "$app_ns" -o jsonpath='{.metadata.labels.meshca\.io/managed-certificate}')" = true ] || die "web-tls is not labelled as managed"
[ "$(kubectl get secret web-tls -n "$app_ns" -o jsonpath='{.metadata.annotations.meshca\.io/root-sha256}')" = "$root_fingerprint" ] || die "web-tls does not record the root"
check_tls_secret web-tls "spiffe://cluster.local/ns/$app_ns/sa/web"
serial_1=$(openssl x509 -in "$work/web-tls/tls.crt" -noout -serial)
version_1=$(resource_version "$app_ns" web-tls)
kubectl get secrets -n "$app_ns" -l meshca.io/managed-certificate=true

log "meshca issue --secret again (replaces the managed Secret)"
"$meshca" issue --identity "$app_ns/web" --dns "web.$app_ns.svc" --lifetime 2h --secret "$app_ns/web-tls" | tee "$work/issue-2.txt"
grep -q "replaced Secret $app_ns/web-tls" "$work/issue-2.txt" || die "the second issue did not replace the Secret"
check_tls_secret web-tls "spiffe://cluster.local/ns/$app_ns/sa/web"
[ "$(openssl x509 -in "$work/web-tls/tls.crt" -noout -serial)" != "$serial_1" ] || die "the replaced Secret holds the same certificate"
[ "$(resource_version "$app_ns" web-tls)" != "$version_1" ] || die "the Secret's resourceVersion did not change"

log "someone else's Secret is refused"
kubectl create secret generic not-meshcas -n "$app_ns" --from-literal=password=hunter2 >/dev/null
foreign_version=$(resource_version "$app_ns" not-meshcas)
if "$meshca" issue --identity "$app_ns/web" --secret "$app_ns/not-meshcas" 2> "$work/refused.txt"; then
  die "meshca wrote over a Secret it does not manage"
fi
cat "$work/refused.txt" >&2
grep -q "is not a meshca-managed TLS Secret" "$work/refused.txt" || die "the refusal does not say why"
[ "$(resource_version "$app_ns" not-meshcas)" = "$foreign_version" ] || die "the foreign Secret was changed"
[ "$(secret_value "$app_ns" not-meshcas password)" = hunter2 ] || die "the foreign Secret's data changed"

# --- 5. SDS with service-account tokens -------------------------------------------------------
if ! "$python" -c 'import grpc' >/dev/null 2>&1; then
  log "SKIPPED: sds.auth=token (no grpcio for $python: pip install grpcio, or set E2E_PYTHON)"
else
  log "meshca serve --set sds.auth=token on 127.0.0.1:$sds_port"
  kubectl create serviceaccount web -n "$app_ns" >/dev/null
  "$meshca" serve --set sds.auth=token --set sds.tokenAudiences=meshca \
    --set "sds.listen=127.0.0.1:$sds_port" --set 'admin.listen=""' >"$work/serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 1 100); do
    grep -q "meshca is serving" "$work/serve.log" && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; die "meshca serve exited"; }
    sleep 0.2
  done
  grep -q "meshca is serving" "$work/serve.log" || { cat "$work/serve.log" >&2; die "meshca serve did not start"; }

  token=$(kubectl create token web -n "$app_ns" --audience meshca --duration 10m)
  "$python" "$here/sds_client.py" "127.0.0.1:$sds_port" default --token "$token" > "$work/sds.pem" \
    || { cat "$work/serve.log" >&2; die "meshca did not serve the token's owner its certificate"; }
  openssl x509 -in "$work/sds.pem" -noout -subject -ext subjectAltName | tee "$work/sds-san.txt"
  grep -q "URI:spiffe://cluster.local/ns/$app_ns/sa/web" "$work/sds-san.txt" || die "SDS served a certificate for someone else"
  openssl verify -CAfile "$work/root.pem" -untrusted "$work/sds.pem" "$work/sds.pem" || die "the SDS certificate does not verify against the root"

  log "a token for another audience is refused"
  other=$(kubectl create token web -n "$app_ns" --audience not-meshca --duration 10m)
  if "$python" "$here/sds_client.py" "127.0.0.1:$sds_port" default --token "$other" > /dev/null 2> "$work/sds-refused.txt"; then
    die "meshca accepted a token meant for another audience"
  fi
  cat "$work/sds-refused.txt" >&2
  grep -q UNAUTHENTICATED "$work/sds-refused.txt" || die "the refusal is not UNAUTHENTICATED"

  kill "$serve_pid"
  wait "$serve_pid" 2>/dev/null || true
  serve_pid=""
fi
