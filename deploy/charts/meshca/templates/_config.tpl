{{- /*
  meshca's configuration, as YAML (the Deployment's ConfigMap; the node-local DaemonSet's
  starts from it). Its keys are exactly those of src/config/: meshca refuses
  unknown keys, so only settings meshca knows are written here. Credentials never are: a
  token given as vault.token is mounted from a Secret and named by vault.tokenFile, the admin
  token (admin.tokenSecret) is mounted from its Secret and named by admin.tokenFile.
*/}}
{{- define "meshca.config" -}}
{{- $v := .Values }}
{{- $sa := include "meshca.serviceAccountName" . }}
{{- $config := dict
  "trustDomain" $v.trustDomain
  "namespace" .Release.Namespace
  "caBundleSecretName" $v.caBundleSecretName
  "certificateProvider" (dict
    "kind" $v.certificateProvider.kind
    "serviceCertValidityDuration" $v.certificateProvider.serviceCertValidityDuration
    "keyType" $v.certificateProvider.keyType)
  "tresor" (dict
    "store" "kubernetes"
    "rootCommonName" $v.tresor.rootCommonName
    "rootOrganization" $v.tresor.rootOrganization
    "rootValidityDuration" $v.tresor.rootValidityDuration
    "rootKeyType" $v.tresor.rootKeyType)
  "renewal" (dict "fraction" $v.renewal.fraction "jitter" $v.renewal.jitter)
  "sds" (dict
    "listen" (printf "0.0.0.0:%d" (int $v.sds.port))
    "auth" $v.sds.auth
    "serverIdentity" (printf "%s/%s" .Release.Namespace $sa))
  "admin" (dict
    "listen" (printf "0.0.0.0:%d" (int $v.admin.port))
    "perIdentityMetrics" $v.admin.perIdentityMetrics)
  "log" (dict "format" $v.log.format "level" $v.log.level)
}}
{{- if $v.admin.tokenSecret.name }}{{ $_ := set $config.admin "tokenFile" (include "meshca.adminTokenPath" .) }}{{ end }}
{{- with $v.extraTrustedRoots }}{{ $_ := set $config "extraTrustedRoots" . }}{{ end }}
{{- with $v.rotation.ackDeadline }}{{ $_ := set $config "rotation" (dict "ackDeadline" .) }}{{ end }}
{{- if $v.istio.enabled }}
{{- $fullname := include "meshca.fullname" . }}
{{- $serviceNames := list (printf "%s.%s.svc" $fullname .Release.Namespace) (printf "%s.%s.svc.cluster.local" $fullname .Release.Namespace) }}
{{- $_ := set $config "istio" (dict
  "enabled" true
  "listen" (printf "0.0.0.0:%d" (int $v.istio.port))
  "dnsNames" (concat $v.istio.dnsNames $serviceNames | uniq | join ",")
  "tokenAudiences" (join "," $v.istio.tokenAudiences)
  "trustedNodeAgents" (join "," $v.istio.trustedNodeAgents)
  "maxConnections" (int $v.istio.maxConnections)
  "maxMessageBytes" (int $v.istio.maxMessageBytes)
  "maxConcurrentSignings" (int $v.istio.maxConcurrentSignings)
  "signingQueueTimeout" $v.istio.signingQueueTimeout
  "handshakeTimeout" $v.istio.handshakeTimeout
  "prefaceTimeout" $v.istio.prefaceTimeout
  "connectionIdleTimeout" $v.istio.connectionIdleTimeout) }}
{{- end }}
{{- $td := $v.trustDistribution }}
{{- if or $td.configMap.enabled $td.clusterTrustBundle.enabled }}
{{- $_ := set $config "trustDistribution" (dict
  "configMap" (dict
    "enabled" $td.configMap.enabled
    "name" $td.configMap.name
    "key" $td.configMap.key
    "excludeNamespaces" (join "," $td.configMap.excludeNamespaces))
  "clusterTrustBundle" (dict
    "enabled" $td.clusterTrustBundle.enabled
    "signerName" $td.clusterTrustBundle.signerName)
  "resyncInterval" $td.resyncInterval) }}
{{- end }}
{{- if $v.jwtSvid.enabled }}
{{- $jwt := dict
  "enabled" true
  "ttl" $v.jwtSvid.ttl
  "keyRotationInterval" $v.jwtSvid.keyRotationInterval
  "keyActivationDelay" $v.jwtSvid.keyActivationDelay
  "keyRefreshInterval" $v.jwtSvid.keyRefreshInterval }}
{{- if $v.jwtSvid.issuer }}{{ $_ := set $jwt "issuer" $v.jwtSvid.issuer }}{{ end }}
{{- $_ := set $config "jwtSvid" $jwt }}
{{- end }}
{{- if eq $v.certificateProvider.kind "vault" }}
{{- $vault := dict
  "protocol" $v.vault.protocol
  "host" $v.vault.host
  "port" (int $v.vault.port)
  "pkiPath" $v.vault.pkiPath
  "role" $v.vault.role
  "issueMode" $v.vault.issueMode
  "requestTimeout" $v.vault.requestTimeout
  "mode" $v.vault.mode }}
{{- if eq $v.vault.mode "upstream" }}
{{- $_ := set $vault "upstream" (dict
  "intermediateTtl" $v.vault.upstream.intermediateTtl
  "issuer" $v.vault.upstream.issuer
  "commonName" $v.vault.upstream.commonName
  "keyType" $v.vault.upstream.keyType) }}
{{- end }}
{{- if $v.vault.namespace }}{{ $_ := set $vault "namespace" $v.vault.namespace }}{{ end }}
{{- if $v.vault.caSecret.name }}{{ $_ := set $vault "caFile" (include "meshca.vaultCaPath" .) }}{{ end }}
{{- if $v.vault.token }}
{{- $_ := set $vault "tokenFile" (include "meshca.vaultTokenPath" .) }}
{{- else if $v.vault.secret.name }}
{{- $secret := dict "name" $v.vault.secret.name "key" $v.vault.secret.key }}
{{- if $v.vault.secret.namespace }}{{ $_ := set $secret "namespace" $v.vault.secret.namespace }}{{ end }}
{{- $_ := set $vault "secret" $secret }}
{{- else if $v.vault.kubernetes.role }}
{{- $_ := set $vault "kubernetes" (dict "role" $v.vault.kubernetes.role "mount" $v.vault.kubernetes.mount) }}
{{- end }}
{{- $_ := set $config "vault" $vault }}
{{- end }}
{{- toYaml $config }}
{{- end }}
