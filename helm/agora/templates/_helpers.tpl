{{/* The release's name prefix for every object. */}}
{{- define "agora.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agora.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one target; call with (dict "root" $ "target" $name). */}}
{{- define "agora.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .target }}
{{- end -}}

{{- define "agora.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "agora.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "agora.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "agora.secretName" -}}
{{- default (printf "%s-secrets" (include "agora.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The seed's URL variable of each upstream. */}}
{{- define "agora.urlVariable" -}}
{{- $names := dict "users" "USER_SERVICE_URL" "catalog" "PRODUCT_SERVICE_URL" "chat" "CHAT_SERVICE_URL" "analytics" "DATA_SERVICE_URL" -}}
{{- get $names . -}}
{{- end -}}

{{/* Environment shared by every agora container. */}}
{{- define "agora.env" -}}
{{- $root := . -}}
- name: AGORA_ADMIN_ADDR
  value: "0.0.0.0:{{ .Values.adminPort }}"
- name: AGORA_DATABASE_MIGRATE_ON_START
  value: {{ (not .Values.migrations.enabled) | quote }}
- name: AGORA_SHUTDOWN_DRAIN_MS
  value: {{ mul .Values.shutdown.drainSeconds 1000 | quote }}
- name: AGORA_SHUTDOWN_GRACE_MS
  value: {{ mul .Values.shutdown.graceSeconds 1000 | quote }}
{{- range $name, $t := .Values.targets }}
{{- if and $t.enabled (ne $name "edge") }}
{{/* Headless Services: clients balance over every pod. */}}
- name: {{ include "agora.urlVariable" $name }}
  value: "http://{{ include "agora.fullname" $root }}-{{ $name }}-headless:{{ $t.port }}"
{{- end }}
{{- end }}
{{- end -}}

{{- define "agora.envFrom" -}}
- configMapRef:
    name: {{ include "agora.fullname" . }}-config
- secretRef:
    name: {{ include "agora.secretName" . }}
{{- end -}}
