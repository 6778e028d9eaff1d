{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "chartbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: <release>-<chart>, or the release name when it already contains the
chart name (release "chartbridge" gives Service "chartbridge").
*/}}
{{- define "chartbridge.fullname" -}}
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

{{/*
chart label value: name-version.
*/}}
{{- define "chartbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "chartbridge.labels" -}}
helm.sh/chart: {{ include "chartbridge.chart" . }}
{{ include "chartbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (immutable on the StatefulSet: never add to these).
*/}}
{{- define "chartbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chartbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Container image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "chartbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
Name of the TLS Secret: tls.existingSecret, or <fullname>-tls (the Secret the cert-manager
Certificate writes when tls.certManager.enabled).
*/}}
{{- define "chartbridge.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "chartbridge.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/*
Name of the pods' ServiceAccount: serviceAccount.name, or <fullname> when serviceAccount.create;
empty (the namespace's default ServiceAccount, no serviceAccountName) otherwise.
*/}}
{{- define "chartbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chartbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Whether the plain HTTP listener (listen: 0.0.0.0:5000, port "http") exists: "true" or "".
*/}}
{{- define "chartbridge.plain" -}}
{{- if not (and .Values.tls.enabled .Values.tls.disablePlain) }}true{{ end }}
{{- end }}

{{/*
Port name of the liveness and readiness probes: the plain listener when there is
one, else the metrics listener (plain HTTP), else the TLS listener with scheme HTTPS (the
kubelet verifies no certificate and presents none, so not with tls.clientCA.enabled).
*/}}
{{- define "chartbridge.probePort" -}}
{{- if include "chartbridge.plain" . }}http{{ else if .Values.metrics.enabled }}metrics{{ else }}https{{ end }}
{{- end }}

{{/*
Checks the values that end up in chartbridge.yaml, so a mistake fails `helm install` instead of
crash-looping the pod (chartbridge refuses unknown keys at start-up).
*/}}
{{- define "chartbridge.validate" -}}
{{- $upstreamKeys := list "name" "kind" "url" "index_ttl" "index_format" "tag_ttl" "latest" "credentials" "charts" "timeouts" "retries" "offline" "allow_hosts" "allow_private" "access" }}
{{- $limitKeys := list "max_index_bytes" "max_chart_bytes" "max_blob_bytes" "max_index_tags" "max_connections" "request_head_timeout" "idle_timeout" }}
{{- $names := list }}
{{- if and .Values.upstreams (not (kindIs "slice" .Values.upstreams)) }}
{{- fail "upstreams must be a list" }}
{{- end }}
{{- range $i, $u := .Values.upstreams }}
{{- if not (kindIs "map" $u) }}
{{- fail (printf "upstreams[%d] must be a map" $i) }}
{{- end }}
{{- range $k, $_ := $u }}
{{- if not (has $k $upstreamKeys) }}
{{- fail (printf "upstreams[%d]: unknown key %q (chartbridge accepts %s)" $i $k (join ", " $upstreamKeys)) }}
{{- end }}
{{- end }}
{{- range $k := list "name" "kind" "url" }}
{{- if not (get $u $k) }}
{{- fail (printf "upstreams[%d].%s is required" $i $k) }}
{{- end }}
{{- end }}
{{- if not (has $u.kind (list "helm" "oci")) }}
{{- fail (printf "upstreams[%d].kind: %q is not helm or oci" $i $u.kind) }}
{{- end }}
{{- $names = append $names $u.name }}
{{- end }}
{{- if and .Values.limits (not (kindIs "map" .Values.limits)) }}
{{- fail "limits must be a map" }}
{{- end }}
{{- range $k, $_ := .Values.limits }}
{{- if not (has $k $limitKeys) }}
{{- fail (printf "limits: unknown key %q (chartbridge accepts %s)" $k (join ", " $limitKeys)) }}
{{- end }}
{{- end }}
{{- if and .Values.defaultUpstream (not (has .Values.defaultUpstream $names)) }}
{{- fail (printf "defaultUpstream: no upstream named %q" .Values.defaultUpstream) }}
{{- end }}
{{- $store := .Values.store }}
{{- if not (has $store.kind (list "disk" "s3")) }}
{{- fail (printf "store.kind: %q is not disk or s3" (toString $store.kind)) }}
{{- end }}
{{- if eq $store.kind "s3" }}
{{- if not $store.s3.bucket }}
{{- fail "store.kind s3 needs store.s3.bucket (the bucket's name)" }}
{{- end }}
{{- if and $store.s3.endpoint (not (regexMatch "^https?://" (toString $store.s3.endpoint))) }}
{{- fail (printf "store.s3.endpoint: %q is not an http:// or https:// URL" (toString $store.s3.endpoint)) }}
{{- end }}
{{- if and $store.s3.existingSecret (not (and $store.s3.accessKeyIdKey $store.s3.secretAccessKeyKey)) }}
{{- fail "store.s3.existingSecret needs store.s3.accessKeyIdKey and store.s3.secretAccessKeyKey" }}
{{- end }}
{{- end }}
{{- $hpa := .Values.autoscaling }}
{{- if $hpa.enabled }}
{{- if ne $store.kind "s3" }}
{{- fail "autoscaling.enabled needs store.kind s3: with the disk store each pod has its own cache (a StatefulSet), scale it with replicaCount" }}
{{- end }}
{{- if gt (int $hpa.minReplicas) (int $hpa.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- end }}
{{- if not (and .Values.resources .Values.resources.requests .Values.resources.requests.cpu) }}
{{- fail "autoscaling.enabled needs resources.requests.cpu: the CPU utilization target is relative to it" }}
{{- end }}
{{- end }}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}
{{- if not (or $tls.existingSecret $tls.certManager.enabled) }}
{{- fail "tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret) or tls.certManager.enabled" }}
{{- end }}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" }}
{{- end }}
{{- if and (eq (int $tls.port) 5000) (not $tls.disablePlain) }}
{{- fail "tls.port: 5000 is the plain listener's port" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int $tls.port) (int .Values.metrics.port)) }}
{{- fail (printf "tls.port: %d is metrics.port" (int $tls.port)) }}
{{- end }}
{{- if and $tls.disablePlain (not .Values.metrics.enabled) }}
{{- if $tls.clientCA.enabled }}
{{- fail "tls.disablePlain with tls.clientCA.enabled needs metrics.enabled: the probes carry no client certificate, so they use the plain metrics listener" }}
{{- end }}
{{- if .Values.serviceMonitor.enabled }}
{{- fail "tls.disablePlain with serviceMonitor.enabled needs metrics.enabled: the ServiceMonitor scrapes the plain metrics listener" }}
{{- end }}
{{- end }}
{{- else }}
{{- range $k := list "disablePlain" "certManager" "clientCA" }}
{{- $v := get $tls $k }}
{{- if and (kindIs "map" $v) $v.enabled }}
{{- fail (printf "tls.%s.enabled needs tls.enabled" $k) }}
{{- else if and (kindIs "bool" $v) $v }}
{{- fail (printf "tls.%s needs tls.enabled" $k) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
