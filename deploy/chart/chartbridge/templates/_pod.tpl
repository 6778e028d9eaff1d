{{/*
The pod template shared by the StatefulSet (store.kind disk) and the Deployment (store.kind
s3); included at the workload's `template:` with nindent 4. The "cache" volume mounted at
/var/lib/chartbridge is the StatefulSet's volumeClaimTemplate, or here an emptyDir (the
local tier in front of the bucket).
*/}}
{{- define "chartbridge.podTemplate" -}}
{{- $s3 := eq .Values.store.kind "s3" -}}
{{- $s3Secret := and $s3 .Values.store.s3.existingSecret -}}
metadata:
  annotations:
    # A changed ConfigMap rolls the pods (it reaches a running pod late). The TLS Secret is
    # not in this checksum: a renewal changes the mounted files in place, and chartbridge
    # reads them on SIGHUP or at start (deploy/README.md).
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "chartbridge.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "chartbridge.serviceAccountName" . }}
  serviceAccountName: {{ . | quote }}
  {{- end }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: chartbridge
      image: {{ include "chartbridge.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config
        - /etc/chartbridge/chartbridge.yaml
        - --log-format
        - {{ .Values.logFormat | quote }}
      ports:
        {{- if include "chartbridge.plain" . }}
        - name: http
          containerPort: 5000
          protocol: TCP
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: https
          containerPort: {{ .Values.tls.port }}
          protocol: TCP
        {{- end }}
        {{- if .Values.metrics.enabled }}
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
        {{- end }}
      {{- if or $s3Secret .Values.extraEnv }}
      env:
        {{- if $s3Secret }}
        # The bucket's keys, named in chartbridge.yaml's cache.store.credentials.
        - name: S3_ACCESS_KEY_ID
          valueFrom:
            secretKeyRef:
              name: {{ .Values.store.s3.existingSecret | quote }}
              key: {{ .Values.store.s3.accessKeyIdKey | quote }}
        - name: S3_SECRET_ACCESS_KEY
          valueFrom:
            secretKeyRef:
              name: {{ .Values.store.s3.existingSecret | quote }}
              key: {{ .Values.store.s3.secretAccessKeyKey | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with .Values.extraSecretEnvFrom }}
      envFrom:
        {{- range . }}
        - secretRef:
            name: {{ . | quote }}
        {{- end }}
      {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: {{ include "chartbridge.probePort" . }}
          {{- if eq (include "chartbridge.probePort" .) "https" }}
          scheme: HTTPS
          {{- end }}
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: {{ include "chartbridge.probePort" . }}
          {{- if eq (include "chartbridge.probePort" .) "https" }}
          scheme: HTTPS
          {{- end }}
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/chartbridge
          readOnly: true
        {{- if .Values.tls.enabled }}
        # The TLS Secret, updated in place by the kubelet when it changes (no subPath).
        - name: tls
          mountPath: /etc/chartbridge/tls
          readOnly: true
        {{- end }}
        - name: cache
          mountPath: /var/lib/chartbridge
        # The root filesystem is read-only; a writable /tmp for anything that needs one.
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "chartbridge.fullname" . }}
    - name: tmp
      emptyDir: {}
    {{- if $s3 }}
    # The local tier in front of the bucket: a cache only, lost with the pod (the bucket
    # holds the shared copy). chartbridge keeps it under cache.maxDiskBytes.
    - name: cache
      emptyDir:
        sizeLimit: {{ default .Values.persistence.size .Values.store.emptyDir.sizeLimit | quote }}
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ include "chartbridge.tlsSecretName" . | quote }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
