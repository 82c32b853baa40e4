{{/* Names and labels shared by every template. */}}

{{- define "bpfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bpfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bpfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "bpfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bpfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "bpfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bpfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Component names. */}}
{{- define "bpfleet.operator.fullname" -}}
{{- printf "%s-operator" (include "bpfleet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "bpfleet.agent.fullname" -}}
{{- printf "%s-agent" (include "bpfleet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bpfleet.operator.selectorLabels" -}}
{{ include "bpfleet.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}
{{- define "bpfleet.agent.selectorLabels" -}}
{{ include "bpfleet.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{/* image: repository[:tag] or repository@digest. */}}
{{- define "bpfleet.image" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secrets holding the mTLS material, whatever the mode. */}}
{{- define "bpfleet.tls.agentSecret" -}}
{{- if eq .Values.tls.mode "existing" -}}
{{- required "tls.existing.agentSecret is required with tls.mode=existing" .Values.tls.existing.agentSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "bpfleet.agent.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- define "bpfleet.tls.operatorSecret" -}}
{{- if eq .Values.tls.mode "existing" -}}
{{- required "tls.existing.operatorSecret is required with tls.mode=existing" .Values.tls.existing.operatorSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "bpfleet.operator.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* A label map as a selector string: k=v,k=v (sorted). */}}
{{- define "bpfleet.selectorString" -}}
{{- $terms := list -}}
{{- range $k, $v := . -}}
{{- $terms = append $terms (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $terms -}}
{{- end -}}
