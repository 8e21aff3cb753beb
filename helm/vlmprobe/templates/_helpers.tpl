{{/*
Helpers of the vlmprobe chart. Every name is prefixed `vlmprobe.`.
*/}}

{{/* The chart name, truncated to a DNS label. */}}
{{- define "vlmprobe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: the release name when it already contains the chart name. */}}
{{- define "vlmprobe.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "vlmprobe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "vlmprobe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vlmprobe
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The namespace the GPU pods run in. */}}
{{- define "vlmprobe.podNamespace" -}}
{{- default .Release.Namespace .Values.namespace.name }}
{{- end }}

{{/* The namespace of the Airflow release, where the settings ConfigMap lives. */}}
{{- define "vlmprobe.airflowNamespace" -}}
{{- default (include "vlmprobe.podNamespace" .) .Values.airflow.namespace }}
{{- end }}

{{/* The settings ConfigMap's name: fixed, because the Airflow values refer to it. */}}
{{- define "vlmprobe.settingsConfigMapName" -}}
vlmprobe-settings
{{- end }}

{{/* The GPU pods' service account. */}}
{{- define "vlmprobe.serviceAccountName" -}}
{{- default (printf "%s-worker" (include "vlmprobe.fullname" .)) .Values.serviceAccount.name }}
{{- end }}

{{/* The Role (and RoleBinding) that lets Airflow launch pods. */}}
{{- define "vlmprobe.podLauncherName" -}}
{{- printf "%s-pod-launcher" (include "vlmprobe.fullname" .) }}
{{- end }}

{{/* The Role (and RoleBinding) that lets the triggerer read pods. */}}
{{- define "vlmprobe.podWatcherName" -}}
{{- printf "%s-pod-watcher" (include "vlmprobe.fullname" .) }}
{{- end }}

{{/* The data claim: the created one, or the existing one. */}}
{{- define "vlmprobe.dataClaimName" -}}
{{- if .Values.data.createClaim }}
{{- printf "%s-data" (include "vlmprobe.fullname" .) }}
{{- else }}
{{- required "data.existingClaim is required when data.createClaim is false" .Values.data.existingClaim }}
{{- end }}
{{- end }}

{{/* The Secret holding the Gemini API key: the created one, or the existing one. */}}
{{- define "vlmprobe.geminiSecretName" -}}
{{- if .Values.gemini.createSecret }}
{{- printf "%s-gemini" (include "vlmprobe.fullname" .) }}
{{- else }}
{{- required "gemini.existingSecret is required when gemini.createSecret is false" .Values.gemini.existingSecret }}
{{- end }}
{{- end }}

{{/* The worker image reference. */}}
{{- define "vlmprobe.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) }}
{{- end }}

{{/* A path or URI under the data mount. */}}
{{- define "vlmprobe.dataPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.data.mountPath) .leaf }}
{{- end }}

{{/* The storage identity's annotations (workload identity, IRSA), as a YAML map; empty when none is set. */}}
{{- define "vlmprobe.storageIdentityAnnotations" -}}
{{- with .Values.storageIdentity.gcpServiceAccount }}
iam.gke.io/gcp-service-account: {{ . | quote }}
{{- end }}
{{- with .Values.storageIdentity.awsRoleArn }}
eks.amazonaws.com/role-arn: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The default output URI of a run (VLMPROBE_OUTPUT_URI). */}}
{{- define "vlmprobe.outputUri" -}}
{{- .Values.params.outputUri | default (include "vlmprobe.dataPath" (dict "root" . "leaf" "output")) }}
{{- end }}
