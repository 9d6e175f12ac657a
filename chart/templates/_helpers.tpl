{{/*
Names and labels follow rancher-pushprox, so that a release switched to this
chart keeps its object names and selectors (selectors cannot change in
place).
*/}}

{{/* applyKubeVersionOverrides merges the kubeVersionOverrides whose
constraint matches the cluster into .Values. Every template calls it first;
merging twice gives the same result. */}}
{{- define "pushprox.applyKubeVersionOverrides" -}}
{{- $overrides := dict -}}
{{- range $override := .Values.kubeVersionOverrides -}}
{{- if semverCompare $override.constraint $.Capabilities.KubeVersion.Version -}}
{{- $_ := mergeOverwrite $overrides (deepCopy $override.values) -}}
{{- end -}}
{{- end -}}
{{- $_ := mergeOverwrite .Values $overrides -}}
{{- end -}}

{{- define "pushprox.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "pushprox.component" -}}
{{- required "component is required: the name of what is monitored, e.g. kube-etcd" .Values.component -}}
{{- end -}}

{{- define "pushprox.client.name" -}}
{{- printf "pushprox-%s-client" (include "pushprox.component" .) -}}
{{- end -}}

{{- define "pushprox.proxy.name" -}}
{{- printf "pushprox-%s-proxy" (include "pushprox.component" .) -}}
{{- end -}}

{{- define "pushprox.proxy.headlessName" -}}
{{- printf "pushprox-%s-proxy-headless" (include "pushprox.component" .) -}}
{{- end -}}

{{- define "pushprox.client.tokenSecretName" -}}
{{- printf "pushprox-%s-client-service-account-token" (include "pushprox.component" .) -}}
{{- end -}}

{{- define "pushprox.serviceMonitor.name" -}}
{{- printf "%s-%s" .Release.Name (include "pushprox.component" .) -}}
{{- end -}}

{{/* Labels every object has; the first three are rancher-pushprox's and
part of the selectors. */}}
{{- define "pushprox.commonLabels" -}}
release: {{ .Release.Name | quote }}
component: {{ include "pushprox.component" . | quote }}
provider: kubernetes
{{- end -}}

{{- define "pushprox.metaLabels" -}}
app.kubernetes.io/name: pushprox
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pushprox.client.selectorLabels" -}}
k8s-app: {{ include "pushprox.client.name" . }}
{{ include "pushprox.commonLabels" . }}
{{- end -}}

{{- define "pushprox.client.labels" -}}
{{ include "pushprox.client.selectorLabels" . }}
{{ include "pushprox.metaLabels" . }}
app.kubernetes.io/component: client
{{- end -}}

{{- define "pushprox.proxy.selectorLabels" -}}
k8s-app: {{ include "pushprox.proxy.name" . }}
{{ include "pushprox.commonLabels" . }}
{{- end -}}

{{- define "pushprox.proxy.labels" -}}
{{ include "pushprox.proxy.selectorLabels" . }}
{{ include "pushprox.metaLabels" . }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/* image renders registry/repository:tag for an image value; the tag
defaults to the chart's appVersion, as the chart and image are released
together. Call with (list $ .Values.x.image). */}}
{{- define "pushprox.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $registry := $root.Values.global.cattle.systemDefaultRegistry | default $root.Values.global.systemDefaultRegistry -}}
{{- $ref := printf "%s:%s" (required "an image repository is required" $image.repository) (toString ($image.tag | default $root.Chart.AppVersion)) -}}
{{- if $registry -}}
{{- printf "%s/%s" (trimSuffix "/" $registry) $ref -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}

{{- define "pushprox.imagePullSecrets" -}}
{{- $secrets := list -}}
{{- range .Values.global.imagePullSecrets -}}
{{- if kindIs "map" . -}}
{{- $secrets = append $secrets (dict "name" .name) -}}
{{- else -}}
{{- $secrets = append $secrets (dict "name" .) -}}
{{- end -}}
{{- end -}}
{{- with .Values.global.imagePullSecretName -}}
{{- $secrets = append $secrets (dict "name" .) -}}
{{- end -}}
{{- if $secrets -}}
imagePullSecrets: {{ toYaml $secrets | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* The proxy answers over HTTPS when its web config serves TLS. */}}
{{- define "pushprox.proxy.scheme" -}}
{{- if and .Values.proxy.webConfig.enabled .Values.proxy.webConfig.tls -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* Whether clients poll every proxy replica through the headless
Service. */}}
{{- define "pushprox.proxy.headless" -}}
{{- if and .Values.proxy.enabled (or .Values.proxy.headlessService.enabled (gt (int .Values.proxy.replicas) 1)) -}}true{{- end -}}
{{- end -}}

{{/* The URL of the proxy Service, as Prometheus uses it. */}}
{{- define "pushprox.proxy.serviceUrl" -}}
{{- printf "%s://%s.%s.svc:%d" (include "pushprox.proxy.scheme" .) (include "pushprox.proxy.name" .) (include "pushprox.namespace" .) (int (required "proxy.port is required" .Values.proxy.port)) -}}
{{- end -}}

{{/* The URL the clients poll: clients.proxyUrl, else the headless Service
(each replica) or the Service. */}}
{{- define "pushprox.clients.proxyUrl" -}}
{{- if .Values.clients.proxyUrl -}}
{{- .Values.clients.proxyUrl -}}
{{- else if include "pushprox.proxy.headless" . -}}
{{- printf "%s://%s.%s.svc:%d" (include "pushprox.proxy.scheme" .) (include "pushprox.proxy.headlessName" .) (include "pushprox.namespace" .) (int (required "proxy.port is required" .Values.proxy.port)) -}}
{{- else -}}
{{- include "pushprox.proxy.serviceUrl" . -}}
{{- end -}}
{{- end -}}

{{/* The proxy URL Prometheus scrapes through; empty when it scrapes the
targets directly (no proxy in this release and none named). */}}
{{- define "pushprox.prometheus.proxyUrl" -}}
{{- if .Values.serviceMonitor.proxyUrl -}}
{{- .Values.serviceMonitor.proxyUrl -}}
{{- else if .Values.proxy.enabled -}}
{{- if .Values.clients.proxyUrl -}}
{{- .Values.clients.proxyUrl -}}
{{- else -}}
{{- include "pushprox.proxy.serviceUrl" . -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether Prometheus asks for HTTPS targets. */}}
{{- define "pushprox.targets.https" -}}
{{- if or .Values.clients.https.enabled .Values.clients.https.forceHTTPSScheme -}}true{{- end -}}
{{- end -}}

{{/* serviceMonitor.endpoints completed from the other values, as
rancher-pushprox completes them, with two corrections: forceHTTPSScheme
through a proxy becomes _scheme=https (Prometheus cannot ask a plain HTTP
proxy for an HTTPS target), and a bearerTokenSecret is a secret key
reference as the Prometheus Operator expects. */}}
{{- define "pushprox.serviceMonitor.endpoints" -}}
{{- $proxyURL := include "pushprox.prometheus.proxyUrl" . -}}
{{- $https := include "pushprox.targets.https" . -}}
{{- $auth := .Values.clients.https.authenticationMethod -}}
{{- $tokenSecret := include "pushprox.client.tokenSecretName" . -}}
{{- $endpoints := list -}}
{{- range $given := .Values.serviceMonitor.endpoints -}}
{{- $e := deepCopy $given -}}
{{- if $proxyURL -}}
{{- $_ := set $e "proxyUrl" $proxyURL -}}
{{- if $https -}}
{{- $params := deepCopy (default (dict) $e.params) -}}
{{- $_ := set $params "_scheme" (list "https") -}}
{{- $_ := set $e "params" $params -}}
{{- end -}}
{{- with $.Values.serviceMonitor.proxyTLSConfig -}}
{{- $_ := set $e "tlsConfig" (mergeOverwrite (deepCopy (default (dict) $e.tlsConfig)) (deepCopy .)) -}}
{{- end -}}
{{- else -}}
{{- if $https -}}
{{- $_ := set $e "scheme" "https" -}}
{{- end -}}
{{- if $.Values.clients.https.insecureSkipVerify -}}
{{- $_ := set $e "tlsConfig" (mergeOverwrite (deepCopy (default (dict) $e.tlsConfig)) (dict "insecureSkipVerify" true)) -}}
{{- end -}}
{{- end -}}
{{- if $auth.bearerTokenFile.enabled -}}
{{- $_ := set $e "bearerTokenFile" $auth.bearerTokenFile.bearerTokenFilePath -}}
{{- end -}}
{{- if $auth.bearerTokenSecret.enabled -}}
{{- $_ := set $e "bearerTokenSecret" (dict "name" $tokenSecret "key" "token") -}}
{{- end -}}
{{- if $auth.authorization.enabled -}}
{{- $credentials := dict "name" $tokenSecret "key" $auth.authorization.credentials.key "optional" $auth.authorization.credentials.optional -}}
{{- $_ := set $e "authorization" (dict "type" $auth.authorization.type "credentials" $credentials) -}}
{{- end -}}
{{- $relabelings := default (list) $e.metricRelabelings -}}
{{- with $.Values.global.cattle.clusterId -}}
{{- $relabelings = append $relabelings (dict "action" "replace" "sourceLabels" (list "__address__") "targetLabel" "cluster_id" "replacement" .) -}}
{{- end -}}
{{- with $.Values.global.cattle.clusterName -}}
{{- $relabelings = append $relabelings (dict "action" "replace" "sourceLabels" (list "__address__") "targetLabel" "cluster_name" "replacement" .) -}}
{{- end -}}
{{- if $relabelings -}}
{{- $_ := set $e "metricRelabelings" $relabelings -}}
{{- end -}}
{{- $endpoints = append $endpoints $e -}}
{{- end -}}
{{- toYaml $endpoints -}}
{{- end -}}

{{/* Probe renders an HTTP probe, or a TCP one when the listener asks for a
password. Call with (dict "probe" values "path" p "port" n "scheme" s "host" h "tcp" bool). */}}
{{- define "pushprox.probe" -}}
{{- $p := .probe -}}
{{- if .tcp -}}
tcpSocket:
  port: {{ .port }}
  {{- with .host }}
  host: {{ . }}
  {{- end }}
{{- else -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  scheme: {{ .scheme }}
  {{- with .host }}
  host: {{ . }}
  {{- end }}
{{- end }}
{{- with $p.initialDelaySeconds }}
initialDelaySeconds: {{ . }}
{{- end }}
{{- with $p.periodSeconds }}
periodSeconds: {{ . }}
{{- end }}
{{- with $p.timeoutSeconds }}
timeoutSeconds: {{ . }}
{{- end }}
{{- with $p.failureThreshold }}
failureThreshold: {{ . }}
{{- end }}
{{- end -}}

{{/* labels merges label maps, later ones winning, into YAML: chart labels
and user labels never render a key twice. Call with a list of maps. */}}
{{- define "pushprox.labels" -}}
{{- $out := dict -}}
{{- range . -}}
{{- $out = mergeOverwrite $out (deepCopy (default (dict) .)) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "pushprox.linuxTolerations" -}}
- key: cattle.io/os
  value: linux
  effect: NoSchedule
  operator: Equal
{{- end -}}
