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

{{/*
The helm-mode mTLS material as JSON, {"agent": data, "operator": data}
(Secret data: tls.crt, tls.key, ca.crt): the Secrets issued at install,
kept on upgrade (looked up), or new ones when there are none or the names
they were issued for changed. Two CAs: the agents trust only the
operator's CA, the operator trusts only the agents' CA. Computed once per
rendering and kept on the root context: every genCA call makes new keys,
so tls.yaml and the pods' checksum annotations must read the same result
(the checksum was once taken over a second rendering, whose certificates
were never installed: the first upgrade after an install then restarted
every pod for nothing). Call with the root context.
*/}}
{{- define "bpfleet.tls.helmData" -}}
{{- if not (hasKey . "bpfleetTlsMaterial") -}}
{{- $agentSecret := include "bpfleet.tls.agentSecret" . -}}
{{- $operatorSecret := include "bpfleet.tls.operatorSecret" . -}}
{{- $agentData := dict -}}
{{- $operatorData := dict -}}
{{- $days := int .Values.tls.validityDays -}}
{{- $oldAgent := lookup "v1" "Secret" .Release.Namespace $agentSecret -}}
{{- $oldOperator := lookup "v1" "Secret" .Release.Namespace $operatorSecret -}}
{{- $sameName := false -}}
{{- if and $oldAgent $oldAgent.metadata.annotations -}}
{{- $sameName = eq (get $oldAgent.metadata.annotations "bpfleet.dev/agent-tls-name") .Values.tls.agentName -}}
{{- end -}}
{{- /* The operator's identity changed: issue again (agents pin it). A
Secret from before the annotation existed was issued for bpfleet-operator. */ -}}
{{- if and $sameName $oldOperator -}}
{{- $oldOpName := "bpfleet-operator" -}}
{{- if $oldOperator.metadata.annotations -}}
{{- $oldOpName = get $oldOperator.metadata.annotations "bpfleet.dev/operator-tls-name" | default "bpfleet-operator" -}}
{{- end -}}
{{- $sameName = eq $oldOpName .Values.tls.operatorName -}}
{{- end -}}
{{- if and $oldAgent $oldOperator $sameName -}}
{{- /* Upgrade: keep what was issued at install. */ -}}
{{- $agentData = $oldAgent.data -}}
{{- $operatorData = $oldOperator.data -}}
{{- else -}}
{{- $agentCA := genCA "bpfleet-agent-ca" $days -}}
{{- $operatorCA := genCA "bpfleet-operator-ca" $days -}}
{{- $agentCert := genSignedCert .Values.tls.agentName nil (list .Values.tls.agentName) $days $agentCA -}}
{{- /* The operator's identity as CN and DNS SAN: agents pin it (--client-identity). */ -}}
{{- $operatorCert := genSignedCert .Values.tls.operatorName nil (list .Values.tls.operatorName) $days $operatorCA -}}
{{- $agentData = dict "tls.crt" ($agentCert.Cert | b64enc) "tls.key" ($agentCert.Key | b64enc) "ca.crt" ($agentCA.Cert | b64enc) -}}
{{- $operatorData = dict "tls.crt" ($operatorCert.Cert | b64enc) "tls.key" ($operatorCert.Key | b64enc) "ca.crt" ($operatorCA.Cert | b64enc) -}}
{{- end -}}
{{- $_ := set . "bpfleetTlsMaterial" (dict "agent" $agentData "operator" $operatorData) -}}
{{- end -}}
{{- toJson (get . "bpfleetTlsMaterial") -}}
{{- end -}}

{{/*
The pods' checksum/tls annotation: it changes when, and only when, the mTLS
material they mount does (new certificates restart the pods). helm mode:
the two certificates as installed; otherwise the rendered tls.yaml
(cert-manager's resources; nothing for existing Secrets).
*/}}
{{- define "bpfleet.tls.checksum" -}}
{{- if eq .Values.tls.mode "helm" -}}
{{- $m := include "bpfleet.tls.helmData" . | fromJson -}}
{{- printf "%s\n%s\n" (get $m.agent "tls.crt") (get $m.operator "tls.crt") | sha256sum | trunc 16 -}}
{{- else -}}
{{- include (print .Template.BasePath "/tls.yaml") . | sha256sum | trunc 16 -}}
{{- end -}}
{{- end -}}
