#!/usr/bin/env bash
# A local OpenBao (Vault API) PKI for meshca development — the counterpart of FSM's
# deploy-vault.sh.
#
#   deploy/dev/vault.sh          start (or reuse) the dev server and configure it
#   deploy/dev/vault.sh stop     stop the server this script started
#
# What it sets up, idempotently (re-running converges on the same state):
#   - an OpenBao dev server on 127.0.0.1:$VAULT_PORT (default 8200), root token
#     $VAULT_DEV_ROOT_TOKEN (default meshca-dev-root); OpenBao is installed into .tools/ by
#     scripts/install-tools.sh bao when missing. Dev mode keeps everything in memory: stopping
#     the server forgets the CA.
#   - PKI at pki/ (max lease 87600h) with an internal EC P-256 root "meshca dev root"
#   - role pki/roles/meshca: any name, SPIFFE URI SANs, EC 256, max_ttl 24h, no_store, names
#     from meshca's parameters (use_csr_common_name=false use_csr_sans=false)
#   - policy "meshca" and AppRole auth/approle/role/meshca using it
# and writes, under $MESHCA_DEV_DIR/vault (default target/dev/vault):
#   vault-dev.env       VAULT_ADDR, VAULT_TOKEN, the AppRole IDs (source it)
#   secret-id           the AppRole secret ID (mode 0600)
#   meshca-vault.yaml   a meshca configuration using this Vault through AppRole
#   vault.pid, vault.log
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
port=${VAULT_PORT:-8200}
root_token=${VAULT_DEV_ROOT_TOKEN:-meshca-dev-root}
state=${MESHCA_DEV_DIR:-$root/target/dev}/vault
pid_file=$state/vault.pid
address=http://127.0.0.1:$port

log() { echo "vault.sh: $*" >&2; }
die() { log "$*"; exit 1; }

running_pid() { # prints the PID of the server we started, if it is still alive
  [ -f "$pid_file" ] || return 1
  local pid
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    log "stopped OpenBao (pid $pid)"
  else
    log "no OpenBao started by this script is running"
  fi
  rm -f "$pid_file"
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  start) ;;
  *) die "usage: $0 [start|stop]" ;;
esac

mkdir -p "$state"
bao=${MESHCA_BAO:-$root/.tools/bin/bao}
if ! [ -x "$bao" ] || ! "$bao" --version >/dev/null 2>&1; then
  log "OpenBao not found at $bao: installing it with scripts/install-tools.sh bao"
  "$root/scripts/install-tools.sh" bao
  bao=$root/.tools/bin/bao
fi
export BAO_ADDR=$address VAULT_ADDR=$address BAO_TOKEN=$root_token VAULT_TOKEN=$root_token

if pid=$(running_pid); then
  log "reusing OpenBao (pid $pid) at $address"
else
  if "$bao" status >/dev/null 2>&1; then
    die "something else already answers at $address: stop it, or choose another port with VAULT_PORT=8201 $0"
  fi
  log "starting OpenBao dev server at $address (log: $state/vault.log)"
  nohup "$bao" server -dev -dev-listen-address="127.0.0.1:$port" \
    -dev-root-token-id="$root_token" -dev-no-store-token >"$state/vault.log" 2>&1 &
  echo $! >"$pid_file"
fi

for _ in $(seq 1 100); do
  "$bao" status >/dev/null 2>&1 && break
  running_pid >/dev/null || die "OpenBao exited; see $state/vault.log"
  sleep 0.2
done
"$bao" status >/dev/null 2>&1 || die "OpenBao at $address not healthy after 20s; see $state/vault.log"
"$bao" token lookup >/dev/null 2>&1 \
  || die "the root token is not accepted at $address: was the server started with another VAULT_DEV_ROOT_TOKEN? Run $0 stop first"

# PKI engine and root CA.
if ! "$bao" read sys/mounts/pki >/dev/null 2>&1; then
  "$bao" secrets enable -path=pki -max-lease-ttl=87600h pki >/dev/null
  log "enabled PKI at pki/"
fi
if ! "$bao" read -field=certificate pki/cert/ca >/dev/null 2>&1; then
  # Keep OpenBao's advice about AIA URLs (irrelevant on a dev server) out of the output.
  out=$("$bao" write -field=certificate pki/root/generate/internal \
    common_name="meshca dev root" key_type=ec key_bits=256 ttl=87600h 2>&1) || die "$out"
  log "generated the root CA \"meshca dev root\""
fi

# The role meshca signs with: names come from meshca's parameters, never from a CSR (a caller
# that brings its own key gets only the names meshca gives it); SPIFFE IDs as URI SANs.
"$bao" write pki/roles/meshca \
  allow_any_name=true allowed_uri_sans="spiffe://*" \
  key_type=ec key_bits=256 max_ttl=24h no_store=true \
  require_cn=false enforce_hostnames=false \
  use_csr_common_name=false use_csr_sans=false >/dev/null

"$bao" policy write meshca - >/dev/null <<'EOF'
# meshca: sign (and optionally issue) certificates, read the role and the CA chain, look after
# its own token.
path "pki/sign/meshca"  { capabilities = ["update"] }
path "pki/issuer/+/sign/meshca" { capabilities = ["update"] }
path "pki/issue/meshca" { capabilities = ["update"] }
path "pki/roles/meshca" { capabilities = ["read"] }
path "pki/cert/*"       { capabilities = ["read"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self"  { capabilities = ["update"] }
EOF

# AppRole.
# Read the list whole before searching it: with pipefail, `bao auth list | grep -q` fails
# whenever grep stops reading first and bao dies of SIGPIPE, which made a second run try to
# enable AppRole again and stop ("path is already in use").
auth_methods=$("$bao" auth list 2>/dev/null || true)
if ! grep -q '^approle/' <<<"$auth_methods"; then
  "$bao" auth enable approle >/dev/null
  log "enabled AppRole auth at approle/"
fi
"$bao" write auth/approle/role/meshca token_policies=meshca token_ttl=1h token_max_ttl=24h >/dev/null
role_id=$("$bao" read -field=role_id auth/approle/role/meshca/role-id)
secret_id=""
if [ -f "$state/secret-id" ]; then
  old=$(cat "$state/secret-id")
  if "$bao" write -field=token auth/approle/login role_id="$role_id" secret_id="$old" >/dev/null 2>&1; then
    secret_id=$old
  fi
fi
if [ -z "$secret_id" ]; then
  secret_id=$("$bao" write -f -field=secret_id auth/approle/role/meshca/secret-id)
  log "created a new AppRole secret ID"
fi
(umask 077 && printf '%s\n' "$secret_id" >"$state/secret-id")

(umask 077 && cat >"$state/vault-dev.env" <<EOF
# OpenBao dev server for meshca (written by deploy/dev/vault.sh)
export VAULT_ADDR=$address
export BAO_ADDR=$address
export VAULT_TOKEN=$root_token
export MESHCA_VAULT_ROLE_ID=$role_id
export MESHCA_VAULT_SECRET_ID=$secret_id
EOF
)

cat >"$state/meshca-vault.yaml" <<EOF
# meshca with the OpenBao dev server of deploy/dev/vault.sh, logging in with AppRole.
certificateProvider:
  kind: vault
  serviceCertValidityDuration: 24h
vault:
  protocol: http
  host: 127.0.0.1
  port: $port
  pkiPath: pki
  role: meshca
  appRole:
    roleId: $role_id
    secretIdFile: $state/secret-id
EOF

cat <<EOF

OpenBao dev PKI ready at $address (root token: $root_token)
  AppRole role_id:   $role_id
  AppRole secret_id: $secret_id   (also in $state/secret-id)
  environment:       source $state/vault-dev.env

Run meshca against it (AppRole):
  cargo run -- serve --config $state/meshca-vault.yaml

$(cat "$state/meshca-vault.yaml")

Or with the root token instead of AppRole:
  VAULT_TOKEN=$root_token cargo run -- serve --set certificateProvider.kind=vault \\
    --set vault.host=127.0.0.1 --set vault.port=$port

Stop the server: $0 stop
EOF
