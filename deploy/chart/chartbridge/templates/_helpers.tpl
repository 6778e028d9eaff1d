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
{{- end }}
