{{/* Chart name, cut to 63 characters. */}}
{{- define "vmforge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name when it already contains the chart name, else "<release>-<chart>". */}}
{{- define "vmforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vmforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator's pods; never change them after a release exists. */}}
{{- define "vmforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "vmforge.labels" -}}
helm.sh/chart: {{ include "vmforge.chart" . }}
{{ include "vmforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: vmforge
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vmforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vmforge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vmforge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Settings that cannot work together fail the render with a message. */}}
{{- define "vmforge.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: two active operators would launch duplicate machines" -}}
{{- end -}}
{{- end -}}

{{/* shutdownTimeout in seconds plus 15 s, for terminationGracePeriodSeconds. */}}
{{- define "vmforge.terminationGracePeriod" -}}
{{- $d := .Values.shutdownTimeout -}}
{{- $h := regexFind "[0-9]+h" $d | trimSuffix "h" | default "0" | int -}}
{{- $m := regexFind "[0-9]+m" $d | trimSuffix "m" | default "0" | int -}}
{{- $s := regexFind "[0-9]+s" $d | trimSuffix "s" | default "0" | int -}}
{{- add (mul $h 3600) (mul $m 60) $s 15 -}}
{{- end -}}

{{/* The lowest Kubernetes minor the chart supports, read from Chart.yaml kubeVersion (">=1.31.0-0"). */}}
{{- define "vmforge.minKubernetesVersion" -}}
{{- regexFind "[0-9]+\\.[0-9]+" .Chart.KubeVersion -}}
{{- end -}}

{{/* NO_PROXY: in-cluster names, loopback and the cloud metadata endpoints, plus proxy.noProxy. */}}
{{- define "vmforge.noProxy" -}}
{{- $base := list "localhost" "127.0.0.1" "::1" "kubernetes.default.svc" ".svc" ".cluster.local" "169.254.169.254" "169.254.170.2" "169.254.170.23" -}}
{{- $extra := splitList "," .Values.proxy.noProxy | compact -}}
{{- join "," (concat $base $extra | uniq) -}}
{{- end -}}
