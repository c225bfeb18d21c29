#!/usr/bin/env python3
"""The meshca Helm chart, rendered by Helm's real template engine.

Renders deploy/charts/meshca with helm-python-sdk (Helm v4's Go SDK through its C ABI) for the
chart's defaults and every example values file, lints it, validates every rendered manifest
against the Kubernetes schemas of a current release (kubernetes-validate, strict), asserts the
wiring (configuration, CronJob, exact RBAC, probes, security context, NOTES; the Istio
listener's limits and trustDistribution.resyncInterval), checks that the schema refuses a wrong
certificateProvider.kind, malformed durations and out-of-range limits, and feeds every rendered ConfigMap's config to
the real meshca binary, which refuses unknown keys and bad values. With
workloadApi.nodeLocal.enabled, the node-local Workload API DaemonSet too: hostPID, the hostPath
socket directory, its own ServiceAccount and Role, and a config that is the Deployment's plus
the Workload API (which meshca must accept as well).

Usage: test_chart.py --meshca target/debug/meshca
Needs helm-python-sdk and kubernetes-validate on PYTHONPATH (scripts/install-tools.sh helm puts
them in .tools/pip/helm). Exits non-zero, naming every failed check, when anything is wrong.
"""

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/charts/meshca"
EXAMPLES = CHART / "examples"
KUBE_VERSION = "1.34.0"
NAMESPACE = "meshca-system"
RELEASE = "meshca"
CONFIG_PATH = "/etc/meshca/config.yaml"
NOTES_COMMAND = (
    "kubectl get secret {name} -n {ns} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d | "
    "openssl x509 -text -noout"
)

# The example values files that are chart values (the Issuer manifest is not).
VALUES_EXAMPLES = ["tresor.yaml", "vault-token-secret.yaml", "vault-kubernetes-auth.yaml",
                   "cert-manager.yaml", "istio.yaml", "workload-api-node-local.yaml"]
# The node-local Workload API DaemonSet's objects (DaemonSet, ConfigMap, Role, RoleBinding) and
# its ServiceAccount.
NODE_LOCAL = f"{RELEASE}-workload-api"
NODE_SA = f"{RELEASE}-node"

FAILURES = []
CHECKS = 0


def check(condition, message):
    global CHECKS
    CHECKS += 1
    if not condition:
        FAILURES.append(message)
        print(f"FAIL: {message}", file=sys.stderr)
    return condition


def expect_equal(actual, expected, what):
    return check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


class Rendered:
    """One rendering: its manifests by (kind, name, namespace) and NOTES.txt."""

    def __init__(self, label, values, outputs):
        self.label = label
        self.values = values
        self.notes = ""
        self.objects = []
        for path, text in sorted(outputs.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append((path, doc))

    def all(self, kind):
        return [doc for _, doc in self.objects if doc["kind"] == kind]

    def one(self, kind, name=None):
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"{self.label}: expected one {kind} {name or ''}, found "
                                 f"{[d['metadata']['name'] for d in found]}")
        return found[0]

    def kinds(self):
        return sorted(doc["kind"] for _, doc in self.objects)

    def config(self, name=RELEASE):
        """The config of the Deployment's ConfigMap (or of the ConfigMap `name`)."""
        return yaml.safe_load(self.one("ConfigMap", name)["data"]["config.yaml"])

    def role_rules(self, namespace=NAMESPACE, name=None):
        """The rules of the Roles in `namespace` (named `name`, or all but the node-local
        DaemonSet's)."""
        roles = [r for r in self.all("Role") if r["metadata"]["namespace"] == namespace
                 and (r["metadata"]["name"] == name if name else
                      r["metadata"]["name"] != NODE_LOCAL)]
        return [rule for role in roles for rule in role["rules"]]

    def container(self, name="meshca"):
        pod = self.one("Deployment")["spec"]["template"]["spec"]
        return next(c for c in pod["containers"] if c["name"] == name)

    def node_local(self):
        """The node-local DaemonSet's pod spec and container, or None when not rendered."""
        daemonsets = self.all("DaemonSet")
        if not daemonsets:
            return None
        pod = self.one("DaemonSet", NODE_LOCAL)["spec"]["template"]["spec"]
        return pod, next(c for c in pod["containers"] if c["name"] == "meshca")


def render(chart, label, values):
    outputs = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return Rendered(label, values, outputs)


def load_example(name):
    with open(EXAMPLES / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


# --- the checks ----------------------------------------------------------------------------


def check_lint(label, values):
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    check(not report["errors"] and not problems,
          f"{label}: helm lint --strict reports {report['errors'] or problems}")


def check_kubernetes_schemas(r):
    for path, doc in r.objects:
        what = f"{r.label}: {path} {doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            check(True, what)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{what} is not a valid Kubernetes {KUBE_VERSION} object: "
                         f"{'/'.join(str(p) for p in e.path)}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            check(False, f"{what}: no Kubernetes {KUBE_VERSION} schema for it ({e})")


def check_common_wiring(r):
    """What every provider's rendering must have."""
    label = r.label
    for kind in ["ConfigMap", "CronJob", "Deployment", "PodDisruptionBudget", "Role",
                 "RoleBinding", "Service", "ServiceAccount"]:
        check(r.all(kind), f"{label}: no {kind} rendered")

    config = r.config()
    values_kind = (r.values.get("certificateProvider") or {}).get("kind", "tresor")
    expect_equal(config["certificateProvider"]["kind"], values_kind, f"{label}: config kind")
    expect_equal(config["namespace"], NAMESPACE, f"{label}: config namespace")
    expect_equal(config["caBundleSecretName"], r.values.get("caBundleSecretName", "meshca-ca-bundle"),
                 f"{label}: config caBundleSecretName")
    expect_equal(config["sds"]["listen"], "0.0.0.0:15010", f"{label}: sds.listen")
    expect_equal(config["sds"]["auth"], "mtls", f"{label}: sds.auth")
    expect_equal(config["admin"]["listen"], "0.0.0.0:15014", f"{label}: admin.listen")
    # The admin port is reachable through the Service: nothing there may change state without
    # a token, and no metric may list every workload unless asked for.
    admin_token = (r.values.get("admin") or {}).get("tokenSecret", {}).get("name")
    if not admin_token:
        check("tokenFile" not in config["admin"],
              f"{label}: admin.tokenFile set without admin.tokenSecret")
    expect_equal(config["admin"]["perIdentityMetrics"],
                 (r.values.get("admin") or {}).get("perIdentityMetrics", False),
                 f"{label}: admin.perIdentityMetrics")
    sa = r.one("ServiceAccount", RELEASE)["metadata"]["name"]
    expect_equal(config["sds"]["serverIdentity"], f"{NAMESPACE}/{sa}",
                 f"{label}: sds.serverIdentity is the ServiceAccount's identity")

    deployment = r.one("Deployment")
    expect_equal(deployment["spec"]["replicas"], r.values.get("replicaCount", 2),
                 f"{label}: replicas")
    pod = deployment["spec"]["template"]["spec"]
    expect_equal(pod["serviceAccountName"], sa, f"{label}: Deployment ServiceAccount")
    expect_equal(pod["securityContext"]["runAsNonRoot"], True, f"{label}: pod runAsNonRoot")
    container = r.container()
    expect_equal(container["args"], ["--config", CONFIG_PATH, "serve"], f"{label}: serve args")
    security = container["securityContext"]
    expect_equal(security["readOnlyRootFilesystem"], True, f"{label}: read-only root fs")
    expect_equal(security["allowPrivilegeEscalation"], False, f"{label}: no privilege escalation")
    expect_equal(security["capabilities"]["drop"], ["ALL"], f"{label}: capabilities dropped")
    env = {e["name"]: e for e in container["env"]}
    expect_equal(env.get("MESHCA_NAMESPACE", {}).get("valueFrom"),
                 {"fieldRef": {"fieldPath": "metadata.namespace"}},
                 f"{label}: MESHCA_NAMESPACE from the downward API")
    istio_on = (r.values.get("istio") or {}).get("enabled", False)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected_ports = {"grpc-sds": 15010, "http-admin": 15014}
    if istio_on:
        expected_ports["grpc-istio-ca"] = 15012
    expect_equal(ports, expected_ports, f"{label}: container ports")
    expect_equal(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http-admin"},
                 f"{label}: readiness probe")
    expect_equal(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "http-admin"},
                 f"{label}: liveness probe")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    expect_equal(mounts.get("config"), "/etc/meshca", f"{label}: config mount")
    volumes = {v["name"]: v for v in pod["volumes"]}
    expect_equal(volumes["config"]["configMap"]["name"], r.one("ConfigMap", RELEASE)["metadata"]["name"],
                 f"{label}: config volume is the ConfigMap")

    service = r.one("Service")
    expect_equal(sorted((p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]),
                 sorted((name, port, name) for name, port in expected_ports.items()),
                 f"{label}: Service ports")
    check(istio_on == ("istio" in config), f"{label}: istio section in the config iff istio.enabled")
    selector = deployment["spec"]["selector"]["matchLabels"]
    expect_equal(service["spec"]["selector"], selector, f"{label}: Service selects the Deployment")
    expect_equal(r.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], selector,
                 f"{label}: PDB selects the Deployment")

    cron = r.one("CronJob")
    expect_equal(cron["spec"]["schedule"], (r.values.get("rotation") or {}).get("schedule", "17 * * * *"),
                 f"{label}: CronJob schedule is rotation.schedule")
    job_pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    job = job_pod["spec"]["containers"][0]
    expect_equal(job["args"], ["--config", CONFIG_PATH, "rotate"], f"{label}: CronJob runs meshca rotate")
    expect_equal(job["image"], container["image"], f"{label}: CronJob image")
    expect_equal(job["volumeMounts"], container["volumeMounts"], f"{label}: CronJob mounts")
    expect_equal(job_pod["spec"]["volumes"], pod["volumes"], f"{label}: CronJob has the same config")
    expect_equal(job["env"], container["env"], f"{label}: CronJob environment")
    expect_equal(job_pod["spec"]["serviceAccountName"], sa, f"{label}: CronJob ServiceAccount")
    job_labels = job_pod["metadata"]["labels"]
    check(not all(job_labels.get(k) == v for k, v in selector.items()),
          f"{label}: rotation pods {job_labels} would match the Service/Deployment selector {selector}")

    binding = next(b for b in r.all("RoleBinding") if b["metadata"]["namespace"] == NAMESPACE)
    expect_equal(binding["subjects"], [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}],
                 f"{label}: RoleBinding subject")
    expect_equal(binding["roleRef"]["name"], r.all("Role")[0]["metadata"]["name"],
                 f"{label}: RoleBinding role")
    check(not any(rule["resources"] == ["leases"] for rule in r.role_rules()),
          f"{label}: leases granted, but meshca does not use Leases")

    expected_notes = NOTES_COMMAND.format(name=config["caBundleSecretName"], ns=NAMESPACE)
    check(expected_notes in r.notes, f"{label}: NOTES.txt lacks {expected_notes!r}:\n{r.notes}")
    check("runs `meshca rotate`" in r.notes and "renews the managed" in r.notes
          and "A failed Job means something needs you" in r.notes,
          f"{label}: NOTES.txt does not say what the `meshca rotate` CronJob does:\n{r.notes}")


SECRET_GET = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
SECRET_CREATE = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}
# Tresor's root rotation: the stage and the replicas' acknowledgement reports live in the CA Secret.
UPDATE_CA = {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["meshca-ca-bundle"],
             "verbs": ["update"]}
# The CronJob's `meshca rotate`: list managed TLS Secrets, re-read one after a conflict, update it.
ROTATE_SECRETS = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "get", "update"]}
CERTIFICATE_REQUESTS = {"apiGroups": ["cert-manager.io"], "resources": ["certificaterequests"],
                        "verbs": ["create", "get", "list", "watch", "delete"]}
TOKEN_REVIEWS = {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                 "verbs": ["create"]}


PODS_READ = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
PODS_LIST = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
NAMESPACES_WATCH = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}
CONFIGMAPS_KEEP = {"apiGroups": [""], "resources": ["configmaps"],
                   "verbs": ["get", "list", "watch", "create", "update"]}
CLUSTER_TRUST_BUNDLES = {"apiGroups": ["certificates.k8s.io"], "resources": ["clustertrustbundles"],
                         "verbs": ["get", "list", "watch", "create", "update"]}


def attest(signer):
    return {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
            "resourceNames": [signer], "verbs": ["attest"]}


def get_secrets(*names):
    return dict(SECRET_GET, resourceNames=list(names))


def check_tresor(r):
    config = r.config()
    expect_equal(config["tresor"]["store"], "kubernetes", "tresor: tresor.store")
    check("vault" not in config, "tresor: a vault section in the config")
    expect_equal(r.role_rules(),
                 [get_secrets("meshca-ca-bundle"), SECRET_CREATE, UPDATE_CA, ROTATE_SECRETS],
                 "tresor: Role rules")
    check(not r.all("ClusterRole") and not r.all("ClusterRoleBinding"),
          "tresor: cluster-wide RBAC rendered")
    check(not r.all("Secret"), "tresor: the chart renders a Secret")
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    check("initContainers" not in pod, "tresor: an init container (Tresor bootstraps in serve)")


def check_vault_common(r, label):
    values = r.values["vault"]
    vault = r.config()["vault"]
    for key in ["protocol", "host", "port", "pkiPath", "role"]:
        expect_equal(vault[key], values[key], f"{label}: vault.{key} reaches the config")
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    init = pod.get("initContainers", [])
    expect_equal([c["args"] for c in init], [["--config", CONFIG_PATH, "bootstrap"]],
                 f"{label}: init container publishing Vault's root")
    return vault


def check_vault_token_secret(r):
    label = "vault-token-secret"
    vault = check_vault_common(r, label)
    expect_equal(vault["secret"], {"name": "meshca-vault-token", "key": "token"},
                 f"{label}: vault.secret")
    for other in ["token", "tokenFile", "kubernetes", "appRole"]:
        check(other not in vault, f"{label}: vault.{other} set beside vault.secret")
    expect_equal(vault["caFile"], "/var/run/secrets/meshca/vault-ca/ca.crt", f"{label}: vault.caFile")
    mounts = {m["name"]: m["mountPath"] for m in r.container()["volumeMounts"]}
    expect_equal(mounts.get("vault-ca"), "/var/run/secrets/meshca/vault-ca", f"{label}: CA mount")
    volumes = {v["name"]: v for v in r.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    expect_equal(volumes["vault-ca"]["secret"]["secretName"], "vault-tls-ca", f"{label}: CA Secret")
    expect_equal(r.role_rules(),
                 [get_secrets("meshca-ca-bundle", "meshca-vault-token"), SECRET_CREATE,
                  UPDATE_CA, ROTATE_SECRETS],
                 f"{label}: Role rules")
    check(not r.all("ClusterRole"), f"{label}: a ClusterRole rendered")


def check_vault_kubernetes_auth(r):
    label = "vault-kubernetes-auth"
    vault = check_vault_common(r, label)
    expect_equal(vault["kubernetes"], {"role": "meshca", "mount": "kubernetes"},
                 f"{label}: vault.kubernetes")
    for other in ["token", "tokenFile", "secret", "appRole"]:
        check(other not in vault, f"{label}: vault.{other} set beside vault.kubernetes")
    expect_equal(r.role_rules(), [get_secrets("meshca-ca-bundle"), SECRET_CREATE, UPDATE_CA,
                                  ROTATE_SECRETS],
                 f"{label}: Role rules")
    cluster_role = r.one("ClusterRole")
    expect_equal(cluster_role["rules"], [TOKEN_REVIEWS], f"{label}: ClusterRole rules")
    binding = r.one("ClusterRoleBinding")
    expect_equal(binding["roleRef"]["name"], cluster_role["metadata"]["name"],
                 f"{label}: ClusterRoleBinding role")
    expect_equal(binding["subjects"],
                 [{"kind": "ServiceAccount", "name": "meshca", "namespace": NAMESPACE}],
                 f"{label}: ClusterRoleBinding subject")


def check_cert_manager(r):
    label = "cert-manager"
    check("vault" not in r.config(), f"{label}: a vault section in the config")
    expect_equal(r.role_rules(),
                 [get_secrets("meshca-ca-bundle"), ROTATE_SECRETS, CERTIFICATE_REQUESTS],
                 f"{label}: Role rules")
    check(not r.all("ClusterRole"), f"{label}: a ClusterRole rendered")
    pod_namespace = {"fieldRef": {"fieldPath": "metadata.namespace"}}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in r.container()["env"]}
    expect_equal({k: v for k, v in env.items() if k.startswith("MESHCA_CERT_MANAGER_")},
                 {"MESHCA_CERT_MANAGER_ISSUER_NAME": "meshca-ca",
                  "MESHCA_CERT_MANAGER_ISSUER_KIND": "Issuer",
                  "MESHCA_CERT_MANAGER_ISSUER_GROUP": "cert-manager.io",
                  # Requests where the Role grants them; chains checked against the chart's
                  # CA bundle Secret.
                  "MESHCA_CERT_MANAGER_NAMESPACE": pod_namespace,
                  "MESHCA_CERT_MANAGER_CA_BUNDLE_SECRET_NAME": "meshca-ca-bundle",
                  "MESHCA_CERT_MANAGER_CA_BUNDLE_SECRET_NAMESPACE": pod_namespace},
                 f"{label}: issuer settings in the environment")


def check_istio(r):
    """examples/istio.yaml: the CA listener, its names, token audiences, node agents, and the
    root-cert ConfigMaps, each with exactly the cluster-wide rules it needs."""
    label = "istio"
    config = r.config()
    istio = config["istio"]
    expect_equal(istio["enabled"], True, f"{label}: istio.enabled")
    expect_equal(istio["listen"], "0.0.0.0:15012", f"{label}: istio.listen")
    expect_equal(istio["dnsNames"],
                 f"istiod.istio-system.svc,meshca.{NAMESPACE}.svc,meshca.{NAMESPACE}.svc.cluster.local",
                 f"{label}: the listener's DNS names include the chart's Service")
    expect_equal(istio["tokenAudiences"], "istio-ca", f"{label}: istio.tokenAudiences")
    expect_equal(istio["trustedNodeAgents"], "istio-system/ztunnel",
                 f"{label}: istio.trustedNodeAgents")
    for key, default in ISTIO_LIMIT_DEFAULTS.items():
        expect_equal(istio.get(key), default, f"{label}: istio.{key} (meshca's default)")
    expect_equal(config["trustDistribution"].get("resyncInterval"), "5m",
                 f"{label}: trustDistribution.resyncInterval")
    expect_equal(config["trustDistribution"]["configMap"],
                 {"enabled": True, "name": "istio-ca-root-cert", "key": "root-cert.pem",
                  "excludeNamespaces": "kube-system,kube-public,kube-node-lease"},
                 f"{label}: trustDistribution.configMap")
    expect_equal(config["trustDistribution"]["clusterTrustBundle"]["enabled"], False,
                 f"{label}: clusterTrustBundle off")
    cluster_role = r.one("ClusterRole")
    expect_equal(cluster_role["rules"], [TOKEN_REVIEWS, PODS_READ, NAMESPACES_WATCH, CONFIGMAPS_KEEP],
                 f"{label}: ClusterRole rules")
    binding = r.one("ClusterRoleBinding")
    expect_equal(binding["roleRef"]["name"], cluster_role["metadata"]["name"],
                 f"{label}: ClusterRoleBinding role")
    expect_equal(binding["subjects"],
                 [{"kind": "ServiceAccount", "name": "meshca", "namespace": NAMESPACE}],
                 f"{label}: ClusterRoleBinding subject")


# The Istio CA listener's limits as values.yaml gives them: meshca's own defaults
# (src/config/istio.rs).
ISTIO_LIMIT_DEFAULTS = {
    "maxConnections": 10000,
    "maxMessageBytes": 65536,
    "maxConcurrentSignings": 64,
    "signingQueueTimeout": "5s",
    "handshakeTimeout": "10s",
    "prefaceTimeout": "10s",
    "connectionIdleTimeout": "5m",
}


def check_istio_limits(chart):
    """Every Istio listener limit and trustDistribution.resyncInterval set away from its
    default reaches meshca's config as given (and meshca accepts it: the rendering is returned
    for check_meshca_accepts)."""
    label = "istio limits"
    limits = {
        "maxConnections": 500,
        "maxMessageBytes": 8192,
        "maxConcurrentSignings": 8,
        "signingQueueTimeout": "2s",
        "handshakeTimeout": "3s",
        "prefaceTimeout": "4s",
        "connectionIdleTimeout": "1h30m",
    }
    values = {"istio": {"enabled": True, **limits},
              "trustDistribution": {"configMap": {"enabled": True}, "resyncInterval": "90s"}}
    chart.validate_schema(values)
    r = render(chart, label, values)
    config = r.config()
    for key, value in limits.items():
        expect_equal(config["istio"].get(key), value, f"{label}: istio.{key}")
    expect_equal(config["trustDistribution"].get("resyncInterval"), "90s",
                 f"{label}: trustDistribution.resyncInterval")
    check_kubernetes_schemas(r)
    return r


def check_istio_variants(chart):
    """No node agents: no pod access. A ClusterTrustBundle alone: its objects and `attest` on
    the one signer, nothing about namespaces or tokens."""
    label = "istio without node agents"
    r = render(chart, label, {"istio": {"enabled": True, "trustedNodeAgents": []}})
    expect_equal(r.one("ClusterRole")["rules"], [TOKEN_REVIEWS], f"{label}: ClusterRole rules")
    expect_equal(r.config()["istio"]["trustedNodeAgents"], "", f"{label}: trustedNodeAgents")
    check_kubernetes_schemas(r)
    label = "clusterTrustBundle"
    r2 = render(chart, label, {"trustDistribution": {"clusterTrustBundle": {
        "enabled": True, "signerName": "example.com/mesh"}}})
    expect_equal(r2.one("ClusterRole")["rules"], [CLUSTER_TRUST_BUNDLES, attest("example.com/mesh")],
                 f"{label}: ClusterRole rules")
    expect_equal(r2.config()["trustDistribution"]["clusterTrustBundle"],
                 {"enabled": True, "signerName": "example.com/mesh"}, f"{label}: config")
    check("istio" not in r2.config(), f"{label}: istio section without istio.enabled")
    check_kubernetes_schemas(r2)
    return r2


def check_inline_vault_token(chart):
    """vault.token: stored in a chart Secret, mounted as vault.tokenFile, never in the ConfigMap."""
    label = "vault.token"
    token = "hvs.chart-test-token-4242"
    r = render(chart, label, {"certificateProvider": {"kind": "vault"},
                              "vault": {"host": "vault.example", "token": token}})
    check_kubernetes_schemas(r)
    configmap = yaml.safe_dump(r.one("ConfigMap", RELEASE))
    check(token not in configmap, f"{label}: the token is in the ConfigMap")
    check(token not in yaml.safe_dump(r.one("Deployment")), f"{label}: the token is in the Deployment")
    secret = r.one("Secret")
    expect_equal(base64.b64decode(secret["data"]["token"]).decode(), token, f"{label}: Secret data")
    vault = r.config()["vault"]
    expect_equal(vault.get("tokenFile"), "/var/run/secrets/meshca/vault-token/token",
                 f"{label}: vault.tokenFile")
    mounts = {m["name"]: m["mountPath"] for m in r.container()["volumeMounts"]}
    expect_equal(mounts.get("vault-token"), "/var/run/secrets/meshca/vault-token",
                 f"{label}: token mount")
    volumes = {v["name"]: v for v in r.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    expect_equal(volumes["vault-token"]["secret"]["secretName"], secret["metadata"]["name"],
                 f"{label}: token volume")
    expect_equal(r.role_rules(), [get_secrets("meshca-ca-bundle"), SECRET_CREATE, UPDATE_CA,
                                  ROTATE_SECRETS],
                 f"{label}: Role rules (the mounted token needs no API access)")
    return r


def check_vault_upstream(chart):
    """vault.mode: upstream with its intermediate settings reaches the config (and loads in the
    real meshca in check_meshca_accepts, which refuses an intermediate too short for the
    leaves); in sign mode no vault.upstream section is written."""
    label = "vault.mode=upstream"
    check("upstream" not in render(chart, "vault sign mode", {
        "certificateProvider": {"kind": "vault"},
        "vault": {"host": "vault.example", "kubernetes": {"role": "meshca"}}})
        .config()["vault"], "vault sign mode: a vault.upstream section in the config")
    upstream = {"intermediateTtl": "24h", "issuer": "mesh", "commonName": "mesh intermediate",
                "keyType": "p384"}
    r = render(chart, label, {"certificateProvider": {"kind": "vault",
                                                      "serviceCertValidityDuration": "1h"},
                              "vault": {"host": "vault.example", "mode": "upstream",
                                        "kubernetes": {"role": "meshca"},
                                        "upstream": upstream}})
    check_kubernetes_schemas(r)
    vault = r.config()["vault"]
    expect_equal(vault.get("mode"), "upstream", f"{label}: vault.mode")
    expect_equal(vault.get("upstream"), upstream, f"{label}: vault.upstream")
    # No rotation of Vault's issuers in upstream mode, so no acknowledgement reports.
    check(UPDATE_CA not in r.role_rules(), f"{label}: update on the CA Secret without jwtSvid")
    return r


def check_extra_trusted_roots(chart):
    """extraTrustedRoots: inline PEM CA certificates, written into the config as given (and
    loaded by the real meshca in check_meshca_accepts); absent from the config when empty."""
    label = "extraTrustedRoots"
    with tempfile.TemporaryDirectory() as tmp:
        # `openssl req -x509` makes a self-signed CA (basicConstraints CA:TRUE).
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(Path(tmp, "k.pem")),
                        "-out", str(Path(tmp, "root.pem")), "-subj", "/CN=chart-extra-root",
                        "-days", "1"], check=True, capture_output=True)
        pem = Path(tmp, "root.pem").read_text(encoding="utf-8")
    check("extraTrustedRoots" not in render(chart, "defaults again", {}).config(),
          f"{label}: an empty list must not be written to the config")
    r = render(chart, label, {"extraTrustedRoots": [pem], "rotation": {"ackDeadline": "24h"}})
    check_kubernetes_schemas(r)
    expect_equal(r.config().get("extraTrustedRoots"), [pem], f"{label}: config")
    expect_equal(r.config().get("rotation"), {"ackDeadline": "24h"},
                 "rotation.ackDeadline reaches the config")
    check("rotation" not in render(chart, "defaults once more", {}).config(),
          "an empty rotation.ackDeadline must not be written to the config")
    return r


def check_vault_secret_elsewhere(chart):
    """vault.secret in another namespace: `get` on that Secret there, nothing more."""
    label = "vault.secret.namespace"
    r = render(chart, label, {"certificateProvider": {"kind": "vault"},
                              "vault": {"host": "vault.example",
                                        "secret": {"name": "tok", "key": "t", "namespace": "vault"}}})
    check_kubernetes_schemas(r)
    expect_equal(r.config()["vault"]["secret"], {"name": "tok", "key": "t", "namespace": "vault"},
                 f"{label}: vault.secret")
    expect_equal(r.role_rules(), [get_secrets("meshca-ca-bundle"), SECRET_CREATE, UPDATE_CA,
                                  ROTATE_SECRETS],
                 f"{label}: Role rules in the release namespace")
    expect_equal(r.role_rules("vault"), [get_secrets("tok")], f"{label}: Role rules in vault")
    binding = next(b for b in r.all("RoleBinding") if b["metadata"]["namespace"] == "vault")
    expect_equal(binding["subjects"][0]["namespace"], NAMESPACE, f"{label}: binding subject")
    return r


def check_admin_token(chart):
    """admin.tokenSecret: the Secret's key mounted read-only (0400) and named by admin.tokenFile,
    so `POST /rotate/leaves` works with that token; without it the route is disabled."""
    label = "admin.tokenSecret"
    defaults = render(chart, "defaults (admin)", {})
    pod = defaults.one("Deployment")["spec"]["template"]["spec"]
    check(all(v["name"] != "admin-token" for v in pod["volumes"]),
          f"{label}: an admin-token volume without admin.tokenSecret")
    check("POST /rotate/leaves is disabled" in defaults.notes,
          f"{label}: NOTES.txt does not say the mutating route is disabled:\n{defaults.notes}")
    r = render(chart, label, {"admin": {"tokenSecret": {"name": "meshca-admin-token", "key": "t"},
                                        "perIdentityMetrics": True}})
    check_kubernetes_schemas(r)
    admin = r.config()["admin"]
    expect_equal(admin.get("tokenFile"), "/var/run/secrets/meshca/admin-token/token",
                 f"{label}: admin.tokenFile")
    expect_equal(admin.get("perIdentityMetrics"), True, f"{label}: admin.perIdentityMetrics")
    mounts = {m["name"]: m for m in r.container()["volumeMounts"]}
    expect_equal(mounts.get("admin-token"),
                 {"name": "admin-token", "mountPath": "/var/run/secrets/meshca/admin-token",
                  "readOnly": True}, f"{label}: token mount")
    volumes = {v["name"]: v for v in r.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    expect_equal(volumes.get("admin-token", {}).get("secret"),
                 {"secretName": "meshca-admin-token", "defaultMode": 0o400,
                  "items": [{"key": "t", "path": "token"}]}, f"{label}: token volume")
    check("needs the bearer token in Secret meshca-admin-token" in r.notes,
          f"{label}: NOTES.txt does not name the token Secret:\n{r.notes}")
    expect_equal(r.role_rules(), defaults.role_rules(),
                 f"{label}: Role rules (the mounted token needs no API access)")
    return r


def check_rotation_disabled(chart):
    """rotation.enabled=false: no CronJob, and no Secret access beyond the daemon's own."""
    label = "rotation.enabled=false"
    r = render(chart, label, {"rotation": {"enabled": False}})
    check_kubernetes_schemas(r)
    check(not r.all("CronJob"), f"{label}: a CronJob rendered")
    expect_equal(r.role_rules(), [get_secrets("meshca-ca-bundle"), SECRET_CREATE, UPDATE_CA],
                 f"{label}: Role rules")
    check("meshca rotate" not in r.notes, f"{label}: NOTES.txt describes the CronJob")
    return r


def check_jwt_svid(chart):
    """jwtSvid.*: rendered into meshca's config as given (and accepted by meshca), the issuer
    only when set; with a Vault backend the CA Secret is updatable (the keys live there, as do
    the replicas' acknowledgements of a new Vault root), which Tresor's Role has anyway; in
    vault.mode: upstream only with jwtSvid."""
    label = "jwtSvid"
    values = {"jwtSvid": {"enabled": True, "ttl": "2m", "issuer": "https://meshca.example/oidc",
                          "keyRotationInterval": "12h", "keyActivationDelay": "5m",
                          "keyRefreshInterval": "30s"}}
    chart.validate_schema(values)
    r = render(chart, label, values)
    expect_equal(r.config().get("jwtSvid"), {**values["jwtSvid"]}, f"{label}: jwtSvid config")
    check_kubernetes_schemas(r)
    vault = load_example("vault-token-secret.yaml")
    vault["jwtSvid"] = {"enabled": True}
    r2 = render(chart, f"{label} with vault", vault)
    check(UPDATE_CA in r2.role_rules(), f"{label} with vault: no update on the CA Secret: "
          f"{r2.role_rules()}")
    check("issuer" not in r2.config()["jwtSvid"], f"{label} with vault: an empty issuer rendered")
    without = render(chart, f"{label} off with vault", load_example("vault-token-secret.yaml"))
    check(UPDATE_CA in without.role_rules(), "vault without jwtSvid: no update on the CA "
          f"Secret for the replicas' acknowledgement reports: {without.role_rules()}")
    check("jwtSvid" not in without.config(), "jwtSvid rendered while disabled")
    return r


def check_node_local(r, values=None):
    """The node-local Workload API DaemonSet as `values` (workloadApi.nodeLocal, defaults filled
    in) ask: the Deployment's config and CA store plus the Workload API, hostPID, the hostPath
    socket directory at the same path inside, root's uid with every capability dropped but the
    ones asked for, its own ServiceAccount bound to the Deployment's Secret rules without the
    CronJob's."""
    label = f"{r.label}: node-local"
    given = dict(values if values is not None else r.values["workloadApi"]["nodeLocal"])
    nl = {"socketDir": "/run/meshca", "socketName": "workload-api.sock", "socketMode": "0666",
          "socketGroup": "", "executableSelectors": True, "attestors": ["unix"], **given}
    k8s = "k8s" in nl["attestors"]
    socket = f"{nl['socketDir']}/{nl['socketName']}"
    pod, container = r.node_local()
    deployment_pod = r.one("Deployment")["spec"]["template"]["spec"]

    node = r.config(NODE_LOCAL)
    expected_wl = {"enabled": True, "socketPath": socket, "socketMode": nl["socketMode"],
                   "attestors": nl["attestors"], "entries": nl["entries"]}
    if nl["socketGroup"] != "":
        expected_wl["socketGroup"] = str(nl["socketGroup"])
    expect_equal(node.get("workloadApi"), expected_wl, f"{label}: workloadApi config")
    deployment = r.config()
    expect_equal({k: v for k, v in node.items() if k not in ("workloadApi", "sds")},
                 {k: v for k, v in deployment.items()
                  if k not in ("sds", "istio", "trustDistribution")},
                 f"{label}: the rest of the config is the Deployment's, without the Istio CA "
                 f"listener and the trust distribution")
    expect_equal(node["sds"], {**deployment["sds"], "listen": "127.0.0.1:15010"},
                 f"{label}: SDS on loopback only")
    if deployment["certificateProvider"]["kind"] == "tresor":
        expect_equal(node["tresor"]["store"], "kubernetes",
                     f"{label}: Tresor's CA from the Secret the replicas share")

    expect_equal(pod["hostPID"], True, f"{label}: hostPID")
    expect_equal(pod["serviceAccountName"], NODE_SA, f"{label}: ServiceAccount")
    check(any(sa["metadata"]["name"] == NODE_SA for sa in r.all("ServiceAccount")),
          f"{label}: no ServiceAccount {NODE_SA}")
    expect_equal(container["args"], ["--config", CONFIG_PATH, "serve"], f"{label}: serve args")
    expect_equal(container["image"], r.container()["image"], f"{label}: image")
    volumes = {v["name"]: v for v in pod["volumes"]}
    expect_equal(volumes["config"], {"name": "config", "configMap": {"name": NODE_LOCAL}},
                 f"{label}: config volume")
    expect_equal(volumes["workload-api"],
                 {"name": "workload-api",
                  "hostPath": {"path": nl["socketDir"], "type": "DirectoryOrCreate"}},
                 f"{label}: socket directory")
    expect_equal([v for v in pod["volumes"] if v["name"] not in ("config", "workload-api")],
                 [v for v in deployment_pod["volumes"] if v["name"] != "config"],
                 f"{label}: the Deployment's credential volumes")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    expect_equal(mounts.get("workload-api"), nl["socketDir"], f"{label}: socket directory mount")
    expect_equal({k: v for k, v in mounts.items() if k != "workload-api"},
                 {m["name"]: m["mountPath"] for m in r.container()["volumeMounts"]},
                 f"{label}: the Deployment's mounts")
    env = {e["name"]: e for e in container["env"]}
    node_name = {"MESHCA_WORKLOAD_API_NODE_NAME": {
        "name": "MESHCA_WORKLOAD_API_NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}} if k8s else {}
    expect_equal(env, {**{e["name"]: e for e in r.container()["env"]}, **node_name},
                 f"{label}: the Deployment's environment (and the node's name for k8s)")
    expect_equal(pod["securityContext"]["runAsUser"], 0, f"{label}: root's uid")
    security = container["securityContext"]
    expect_equal(security["allowPrivilegeEscalation"], False, f"{label}: no privilege escalation")
    expect_equal(security["readOnlyRootFilesystem"], True, f"{label}: read-only root fs")
    expect_equal(security["capabilities"].get("drop"), ["ALL"], f"{label}: capabilities dropped")
    added = (["SYS_PTRACE"] if nl["executableSelectors"] else []) + \
        (["CHOWN"] if nl["socketGroup"] != "" else [])
    expect_equal(security["capabilities"].get("add", []), added, f"{label}: capabilities added")
    expect_equal(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http-admin"},
                 f"{label}: readiness probe")
    labels = r.one("DaemonSet", NODE_LOCAL)["spec"]["template"]["metadata"]["labels"]
    service_selector = r.one("Service")["spec"]["selector"]
    check(not all(labels.get(k) == v for k, v in service_selector.items()),
          f"{label}: DaemonSet pods {labels} would match the Service selector {service_selector}")

    expected_notes = f"SPIFFE_ENDPOINT_SOCKET=unix://{socket}"
    check(expected_notes in r.notes, f"{label}: NOTES.txt lacks {expected_notes!r}:\n{r.notes}")

    # Its Role: the Deployment's rules minus the CronJob's access to every Secret.
    expect_equal(r.role_rules(name=NODE_LOCAL),
                 [rule for rule in r.role_rules() if rule != ROTATE_SECRETS],
                 f"{label}: Role rules")
    binding = r.one("RoleBinding", NODE_LOCAL)
    node_subject = [{"kind": "ServiceAccount", "name": NODE_SA, "namespace": NAMESPACE}]
    expect_equal((binding["roleRef"]["name"], binding["subjects"]), (NODE_LOCAL, node_subject),
                 f"{label}: RoleBinding")
    # The k8s attestor's LIST of the node's pods, and nothing else, cluster-wide.
    pods_role = f"{NAMESPACE}-{RELEASE}-workload-api-pods"
    roles = [c for c in r.all("ClusterRole") if c["metadata"]["name"] == pods_role]
    bindings = [b for b in r.all("ClusterRoleBinding") if b["metadata"]["name"] == pods_role]
    if k8s:
        expect_equal([c["rules"] for c in roles], [[PODS_LIST]], f"{label}: pods ClusterRole")
        expect_equal([(b["roleRef"]["name"], b["subjects"]) for b in bindings],
                     [(pods_role, node_subject)], f"{label}: pods ClusterRoleBinding")
    else:
        check(not roles and not bindings, f"{label}: pods ClusterRole without the k8s attestor")


def check_node_local_example(r):
    check_node_local(r)
    expect_equal(r.config(NODE_LOCAL)["workloadApi"]["socketPath"],
                 "/run/meshca/workload-api.sock", "node-local example: the README's socket path")
    expect_equal(r.config(NODE_LOCAL)["workloadApi"]["attestors"], ["unix", "k8s"],
                 "node-local example: attested by pod and process")
    check("k8s:pod-label:track:canary" in
          [s for e in r.config(NODE_LOCAL)["workloadApi"]["entries"] for s in e["selectors"]],
          "node-local example: a k8s:pod-label entry")


def check_node_local_variants(chart):
    """Off by default; a custom socket directory and group, no executable selectors; with Vault's
    Kubernetes auth (its TokenReview binding names both ServiceAccounts), JWT-SVIDs (the keys in
    the CA Secret: update for both) and the Istio CA listener (not on the nodes)."""
    defaults = render(chart, "defaults (node-local)", {})
    check(not defaults.all("DaemonSet"), "node-local: a DaemonSet rendered by default")
    check(all(sa["metadata"]["name"] != NODE_SA for sa in defaults.all("ServiceAccount")),
          "node-local: its ServiceAccount rendered by default")
    check(not defaults.role_rules(name=NODE_LOCAL), "node-local: its Role rendered by default")
    check("SPIFFE_ENDPOINT_SOCKET" not in defaults.notes,
          "node-local: NOTES.txt describes the DaemonSet by default")

    nl = {"enabled": True, "socketDir": "/var/run/spiffe", "socketName": "agent.sock",
          "socketMode": "0660", "socketGroup": 2000, "executableSelectors": False,
          "entries": [{"spiffeId": "spiffe://cluster.local/ns/db/sa/postgres",
                       "selectors": ["unix:uid:70", "unix:gid:70"], "hint": "internal"}]}
    values = load_example("vault-kubernetes-auth.yaml")
    values.update({"workloadApi": {"nodeLocal": nl}, "jwtSvid": {"enabled": True},
                   "istio": {"enabled": True}})
    chart.validate_schema(values)
    r = render(chart, "node-local with vault", values)
    check_kubernetes_schemas(r)
    check_node_local(r, nl)
    node = r.config(NODE_LOCAL)
    check("istio" not in node and "istio" in r.config(),
          "node-local with vault: the Istio CA listener is the Deployment's only")
    check(UPDATE_CA in r.role_rules(name=NODE_LOCAL),
          "node-local with vault: jwtSvid keys need update on the CA Secret")
    binding = next(b for b in r.all("ClusterRoleBinding")
                   if b["roleRef"]["name"].endswith("-tokenreview"))
    expect_equal([s["name"] for s in binding["subjects"]], ["meshca", NODE_SA],
                 "node-local with vault: TokenReview binding subjects")
    return r


def check_refusals(chart):
    """Values the chart must refuse, with the reason in the error."""
    bad_kind = {"certificateProvider": {"kind": "vaultt"}}
    try:
        chart.validate_schema(bad_kind)
        check(False, "schema: certificateProvider.kind=vaultt was accepted")
    except helm.HelmValuesError as e:
        check("certificateProvider/kind" in str(e) and "tresor" in str(e),
              f"schema: the error does not name the key and the choices: {e}")
    try:
        chart.render(bad_kind, name=RELEASE, namespace=NAMESPACE)
        check(False, "render: certificateProvider.kind=vaultt rendered")
    except helm.HelmValuesError as e:
        check("certificateProvider/kind" in str(e), f"render: unexpected error {e}")
    report = helm.lint(str(CHART), bad_kind, namespace=NAMESPACE)
    check(any("certificateProvider/kind" in err for err in report["errors"]),
          f"lint: certificateProvider.kind=vaultt not reported: {report}")

    for values, needle in [
        ({"certificateProvider": {"kind": "vault"}}, "/vault/host"),
        ({"certificateProvider": {"kind": "cert-manager"}}, "/certManager/issuerName"),
        ({"sds": {"auth": "development"}}, "/sds/auth"),
        ({"certificateProvider": {"kind": "tresor", "serviceCertValidityDuration": "3d"}},
         "serviceCertValidityDuration"),
        ({"vault": {"hots": "x"}}, "hots"),
        ({"extraTrustedRoots": ["/etc/roots/vault.pem"]}, "extraTrustedRoots"),
        ({"admin": {"tokenSecret": {"name": "Not A Secret"}}}, "tokenSecret"),
        ({"admin": {"token": "inline"}}, "token"),
        ({"istio": {"maxMessageBytes": 1024}}, "maxMessageBytes"),
        ({"jwtSvid": {"ttl": "5min"}}, "ttl"),
        ({"jwtSvid": {"issuer": "https://meshca.example/"}}, "issuer"),
        ({"jwtSvid": {"issuer": "meshca.example"}}, "issuer"),
        ({"jwtSvid": {"keyRotationInterval": 24}}, "keyRotationInterval"),
        ({"istio": {"maxConnections": 0}}, "maxConnections"),
        ({"istio": {"maxConcurrentSignings": "64"}}, "maxConcurrentSignings"),
        ({"trustDistribution": {"resyncInterval": "5 minutes"}}, "resyncInterval"),
        ({"workloadApi": {"nodeLocal": {"enabled": True}}}, "entries"),
        ({"workloadApi": {"nodeLocal": {"socketDir": "run/meshca"}}}, "socketDir"),
        ({"workloadApi": {"nodeLocal": {"socketDir": "/run/meshca/"}}}, "socketDir"),
        ({"workloadApi": {"nodeLocal": {"socketMode": "0999"}}}, "socketMode"),
        ({"workloadApi": {"nodeLocal": {"socketMode": 660}}}, "socketMode"),
        ({"workloadApi": {"nodeLocal": {"socketGroup": "wheel"}}}, "socketGroup"),
        ({"workloadApi": {"nodeLocal": {"entries": [{"spiffeId": "a/b", "selectors": []}]}}},
         "selectors"),
        ({"workloadApi": {"nodeLocal": {"entries": [{"spiffeId": "a/b",
                                                     "selectors": ["k8s:pod-label:a"]}]}}},
         "selectors"),
        ({"workloadApi": {"nodeLocal": {"entries": [{"spiffeId": "a/b",
                                                     "selectors": ["k8s:pod-label:a:b:c"]}]}}},
         "selectors"),
        ({"workloadApi": {"nodeLocal": {"attestors": []}}}, "attestors"),
        ({"workloadApi": {"nodeLocal": {"attestors": ["unix", "docker"]}}}, "attestors"),
        ({"workloadApi": {"socketPath": "/x"}}, "socketPath"),
        ({"vault": {"mode": "intermediate"}}, "mode"),
        ({"vault": {"upstream": {"intermediateTtl": "1d"}}}, "intermediateTtl"),
        ({"vault": {"upstream": {"issuer": "../sys"}}}, "issuer"),
    ] + [({"istio": {key: bad}}, key)
         for key in ("signingQueueTimeout", "handshakeTimeout", "prefaceTimeout",
                     "connectionIdleTimeout")
         for bad in ("10", "5min")]:
        try:
            chart.validate_schema(values)
            check(False, f"schema accepted {values}")
        except helm.HelmValuesError as e:
            check(needle in str(e), f"schema error for {values} does not name {needle}: {e}")

    for values, needle in [
        ({"certificateProvider": {"kind": "vault"}, "vault": {"host": "v"}}, "needs a credential"),
        ({"certificateProvider": {"kind": "vault"},
          "vault": {"host": "v", "token": "x", "kubernetes": {"role": "r"}}}, "exactly one credential"),
        ({"certificateProvider": {"kind": "vault"},
          "vault": {"host": "v", "secret": {"name": "s"}}}, "both name"),
    ]:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
            check(False, f"render accepted {values}")
        except helm.HelmRenderError as e:
            check(needle in str(e), f"render error for {values} does not say {needle!r}: {e}")


def check_meshca_accepts(meshca, renderings):
    """Every rendered config, with the container's environment, loads in the real meshca.

    meshca loads its configuration before running any command and exits 2 when it is refused
    (unknown key, bad value); `inspect` of a real certificate then exits 0, so exit 0 means
    the configuration was accepted."""
    with tempfile.TemporaryDirectory() as tmp:
        cert = Path(tmp, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(Path(tmp, "key.pem")),
                        "-out", str(cert), "-subj", "/CN=chart-test", "-days", "1"],
                       check=True, capture_output=True)

        def run(config_text, env_vars):
            path = Path(tmp, "config.yaml")
            path.write_text(config_text, encoding="utf-8")
            env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
            env.update(env_vars)
            return subprocess.run([meshca, "--config", str(path), "inspect", str(cert)],
                                  env=env, capture_output=True, text=True, timeout=60)

        for r in renderings:
            env_vars = {}
            for e in r.container()["env"]:
                if "value" in e:
                    env_vars[e["name"]] = e["value"]
                elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                    env_vars[e["name"]] = NAMESPACE
            text = r.one("ConfigMap", RELEASE)["data"]["config.yaml"]
            done = run(text, env_vars)
            check(done.returncode == 0,
                  f"{r.label}: meshca refused the rendered config (exit {done.returncode}): "
                  f"{done.stderr.strip()}\n{text}")
            if r.node_local():
                # The DaemonSet's own config, with its container's environment.
                _, container = r.node_local()
                node_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
                node_env.update({k: v for k, v in env_vars.items() if k not in node_env})
                for e in container["env"]:
                    if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                        node_env[e["name"]] = "node-a"
                node_text = r.one("ConfigMap", NODE_LOCAL)["data"]["config.yaml"]
                done = run(node_text, node_env)
                check(done.returncode == 0,
                      f"{r.label}: meshca refused the node-local config (exit {done.returncode}): "
                      f"{done.stderr.strip()}\n{node_text}")

        # The same check must be able to fail: an unknown key and a bad value are refused, and
        # so are a node-local socket group the system does not know (checked at load) and the
        # example's k8s attestor without a node name.
        text = renderings[0].one("ConfigMap", RELEASE)["data"]["config.yaml"]
        node_text = next(r for r in renderings if r.label == "workload-api-node-local.yaml").one(
            "ConfigMap", NODE_LOCAL)["data"]["config.yaml"]
        node_config = yaml.safe_load(node_text)
        node_config["workloadApi"]["socketGroup"] = "no-such-group-here"
        for bad, needle in [(text + "certManagr:\n  issuerName: x\n", "certManagr"),
                            (text.replace("auth: mtls", "auth: mtlss"), "mtlss"),
                            (yaml.safe_dump(node_config), "workloadApi.socketGroup"),
                            # The k8s attestor without the node's name from the downward API.
                            (node_text, "workloadApi.nodeName")]:
            done = run(bad, {})
            check(done.returncode == 2 and needle in done.stderr,
                  f"meshca accepted a broken config (exit {done.returncode}, {done.stderr!r})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshca", required=True, help="the meshca binary")
    args = parser.parse_args()

    print(f"helm-python-sdk: Helm SDK {helm.helm_sdk_version()}; "
          f"kubernetes-validate {kubernetes_validate.version.__version__}; Kubernetes {KUBE_VERSION}")
    chart = helm.Chart.load(str(CHART))
    expect_equal(chart.name, "meshca", "chart name")

    specific = {
        "tresor.yaml": check_tresor,
        "vault-token-secret.yaml": check_vault_token_secret,
        "vault-kubernetes-auth.yaml": check_vault_kubernetes_auth,
        "cert-manager.yaml": check_cert_manager,
        "istio.yaml": check_istio,
        "workload-api-node-local.yaml": check_node_local_example,
    }
    present = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "cert-manager-issuer.yaml")
    expect_equal(present, sorted(VALUES_EXAMPLES), "example values files")

    renderings = []
    for label, values in [("defaults", {})] + [(n, load_example(n)) for n in VALUES_EXAMPLES]:
        failed_before = len(FAILURES)
        try:
            check_lint(label, values)
            chart.validate_schema(values)
            r = render(chart, label, values)
            renderings.append(r)
            check_kubernetes_schemas(r)
            check_common_wiring(r)
            if label in specific:
                specific[label](r)
            elif label == "defaults":
                check_tresor(r)
            status = "ok" if len(FAILURES) == failed_before else "FAILED"
            print(f"{status}: {label}: {len(r.objects)} manifests ({', '.join(r.kinds())})")
        except Exception:  # one broken rendering must not hide the others' results
            check(False, f"{label}: {traceback.format_exc()}")

    # The Issuer example is a manifest, not values: it must at least be well-formed YAML with
    # the cert-manager kinds the values name.
    issuer_docs = list(yaml.safe_load_all((EXAMPLES / "cert-manager-issuer.yaml").read_text()))
    issuers = [d["metadata"]["name"] for d in issuer_docs if d["kind"] == "Issuer"]
    check(load_example("cert-manager.yaml")["certManager"]["issuerName"] in issuers,
          f"cert-manager-issuer.yaml does not define the Issuer cert-manager.yaml names: {issuers}")

    for extra in (check_inline_vault_token, check_vault_secret_elsewhere, check_vault_upstream,
                  check_extra_trusted_roots, check_rotation_disabled, check_admin_token,
                  check_istio_variants, check_istio_limits, check_jwt_svid,
                  check_node_local_variants):
        try:
            renderings.append(extra(chart))
        except Exception:
            check(False, f"{extra.__name__}: {traceback.format_exc()}")
    try:
        check_refusals(chart)
    except Exception:
        check(False, f"refusals: {traceback.format_exc()}")
    check_meshca_accepts(args.meshca, renderings)

    if FAILURES:
        print(f"{len(FAILURES)} of {CHECKS} chart checks failed", file=sys.stderr)
        return 1
    print(f"all {CHECKS} chart checks passed ({len(renderings)} renderings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
