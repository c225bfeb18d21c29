{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "meshca.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "meshca.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "meshca.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "meshca.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "meshca.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshca.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The meshca server pods only: the rotation job's pods carry component=rotate. */}}
{{- define "meshca.serverSelectorLabels" -}}
{{ include "meshca.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "meshca.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshca.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meshca.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the chart creates for a Vault token given as vault.token. */}}
{{- define "meshca.vaultTokenSecretName" -}}
{{- printf "%s-vault-token" (include "meshca.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The node-local Workload API DaemonSet, its ConfigMap, ServiceAccount and Role. */}}
{{- define "meshca.nodeLocalName" -}}
{{- printf "%s-workload-api" (include "meshca.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshca.nodeServiceAccountName" -}}
{{- printf "%s-node" (include "meshca.serviceAccountName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Workload API socket's path, the same on the node, in meshca and in application pods. */}}
{{- define "meshca.workloadApiSocket" -}}
{{- with .Values.workloadApi.nodeLocal }}{{ printf "%s/%s" .socketDir .socketName }}{{ end }}
{{- end }}

{{- define "meshca.nodeLocalSelectorLabels" -}}
{{ include "meshca.selectorLabels" . }}
app.kubernetes.io/component: workload-api
{{- end }}

{{/* Where configuration and mounted credentials live in the container. */}}
{{- define "meshca.configPath" -}}/etc/meshca/config.yaml{{- end }}
{{- define "meshca.vaultTokenPath" -}}/var/run/secrets/meshca/vault-token/token{{- end }}
{{- define "meshca.vaultCaPath" -}}/var/run/secrets/meshca/vault-ca/ca.crt{{- end }}
{{- define "meshca.adminTokenPath" -}}/var/run/secrets/meshca/admin-token/token{{- end }}

{{/* Checks the values cannot express in the schema: exactly one Vault credential. */}}
{{- define "meshca.validate" -}}
{{- if eq .Values.certificateProvider.kind "vault" }}
{{- $set := list }}
{{- if .Values.vault.token }}{{ $set = append $set "vault.token" }}{{ end }}
{{- if or .Values.vault.secret.name .Values.vault.secret.key }}{{ $set = append $set "vault.secret" }}{{ end }}
{{- if .Values.vault.kubernetes.role }}{{ $set = append $set "vault.kubernetes.role" }}{{ end }}
{{- if gt (len $set) 1 }}
{{- fail (printf "certificateProvider.kind=vault takes exactly one credential, but %s are set: keep one" (join ", " $set)) }}
{{- end }}
{{- if eq (len $set) 0 }}
{{- fail "certificateProvider.kind=vault needs a credential: set vault.token, vault.secret.name and vault.secret.key, or vault.kubernetes.role" }}
{{- end }}
{{- if and (or .Values.vault.secret.name .Values.vault.secret.key) (not (and .Values.vault.secret.name .Values.vault.secret.key)) }}
{{- fail "vault.secret needs both name (the Secret) and key (the key in it holding the Vault token)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod volumes and mounts shared by the Deployment and the rotation CronJob (the node-local
     DaemonSet has its own config volume, then meshca.credentialVolumes). */}}
{{- define "meshca.volumes" -}}
- name: config
  configMap:
    name: {{ include "meshca.fullname" . }}
{{ include "meshca.credentialVolumes" . }}
{{- end }}

{{- define "meshca.credentialVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if and (eq .Values.certificateProvider.kind "vault") .Values.vault.token }}
- name: vault-token
  secret:
    secretName: {{ include "meshca.vaultTokenSecretName" . }}
    defaultMode: 0400
{{- end }}
{{- if .Values.admin.tokenSecret.name }}
- name: admin-token
  secret:
    secretName: {{ .Values.admin.tokenSecret.name }}
    defaultMode: 0400
    items:
      - key: {{ .Values.admin.tokenSecret.key }}
        path: token
{{- end }}
{{- if and (eq .Values.certificateProvider.kind "vault") .Values.vault.caSecret.name }}
- name: vault-ca
  secret:
    secretName: {{ .Values.vault.caSecret.name }}
    items:
      - key: {{ .Values.vault.caSecret.key }}
        path: ca.crt
{{- end }}
{{- end }}

{{- define "meshca.volumeMounts" -}}
- name: config
  mountPath: /etc/meshca
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and (eq .Values.certificateProvider.kind "vault") .Values.vault.token }}
- name: vault-token
  mountPath: {{ include "meshca.vaultTokenPath" . | dir }}
  readOnly: true
{{- end }}
{{- if .Values.admin.tokenSecret.name }}
- name: admin-token
  mountPath: {{ include "meshca.adminTokenPath" . | dir }}
  readOnly: true
{{- end }}
{{- if and (eq .Values.certificateProvider.kind "vault") .Values.vault.caSecret.name }}
- name: vault-ca
  mountPath: {{ include "meshca.vaultCaPath" . | dir }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Environment shared by every meshca container of the release. */}}
{{- define "meshca.env" -}}
- name: MESHCA_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- /* The replica's name in root rotation acknowledgement reports. */}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if eq .Values.certificateProvider.kind "cert-manager" }}
- name: MESHCA_CERT_MANAGER_ISSUER_NAME
  value: {{ .Values.certManager.issuerName | quote }}
- name: MESHCA_CERT_MANAGER_ISSUER_KIND
  value: {{ .Values.certManager.issuerKind | quote }}
- name: MESHCA_CERT_MANAGER_ISSUER_GROUP
  value: {{ .Values.certManager.issuerGroup | quote }}
{{- /* Requests in the release namespace (where the Role grants them); returned chains checked
       against the chart's CA bundle Secret. */}}
- name: MESHCA_CERT_MANAGER_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: MESHCA_CERT_MANAGER_CA_BUNDLE_SECRET_NAME
  value: {{ .Values.caBundleSecretName | quote }}
- name: MESHCA_CERT_MANAGER_CA_BUNDLE_SECRET_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}
{{- end }}

{{- define "meshca.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "meshca.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}
