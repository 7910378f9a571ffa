{{/* The chart and its version, as the helm.sh/chart label takes it. */}}
{{- define "srv6pipes.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels every object of the release carries (add app.kubernetes.io/component). */}}
{{- define "srv6pipes.labels" -}}
helm.sh/chart: {{ include "srv6pipes.chart" . }}
app.kubernetes.io/name: srv6pipes
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: srv6pipes
{{- end -}}

{{/* The pull secrets of every pod: the chart's own, then global ones (as a subchart). */}}
{{- define "srv6pipes.imagePullSecrets" -}}
{{- $secrets := concat (.Values.imagePullSecrets | default list) ((.Values.global).imagePullSecrets | default list) -}}
{{- with $secrets }}
imagePullSecrets: {{ toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* A component's placement (dict "c" .Values.COMPONENT): nodeSelector, affinity, tolerations. */}}
{{- define "srv6pipes.placement" -}}
{{- with .c.nodeSelector }}
nodeSelector: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity: {{ toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations: {{ toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A component's own environment entries (dict "root" . "c" .Values.COMPONENT): RUST_LOG
     from its logLevel or the chart's, then its extraEnv. */}}
{{- define "srv6pipes.env" -}}
- {name: RUST_LOG, value: {{ default .root.Values.logLevel .c.logLevel | quote }}}
{{- with .c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
