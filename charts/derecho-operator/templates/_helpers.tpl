{{/* The chart name, as used in labels. */}}
{{- define "derecho-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name of the operator's objects: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "derecho-operator.fullname" -}}
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

{{- define "derecho-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "derecho-operator.labels" -}}
helm.sh/chart: {{ include "derecho-operator.chart" . }}
app.kubernetes.io/name: {{ include "derecho-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: derecho-operator
{{- end -}}

{{/* The operator pods' selector (stable across upgrades: never add to it). */}}
{{- define "derecho-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "derecho-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "derecho-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "derecho-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces the operator watches, comma-separated ("" = all): watchNamespaces, then the deprecated
watchNamespace if it is not already listed. Split with: splitList "," | compact.
*/}}
{{- define "derecho-operator.watchNamespaces" -}}
{{- $list := list -}}
{{- range .Values.watchNamespaces -}}
{{- $list = append $list . -}}
{{- end -}}
{{- with .Values.watchNamespace -}}
{{- $list = append $list . -}}
{{- end -}}
{{- $list | uniq | join "," -}}
{{- end -}}

{{/* The leader-election Lease (--lease-name): one per release, so two releases in a namespace do not share it. */}}
{{- define "derecho-operator.leaseName" -}}
{{- include "derecho-operator.fullname" . -}}
{{- end -}}

{{/* The extended resource RDMA member pods request (--rdma-resource-name): rdmaResourceName, else the device plugin's. */}}
{{- define "derecho-operator.operatorRdmaResourceName" -}}
{{- default (include "derecho-operator.rdmaResourceName" .) .Values.rdmaResourceName -}}
{{- end -}}

{{/* repository:tag or repository@digest. */}}
{{- define "derecho-operator.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .appVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The RDMA device plugin: its namespace, object names and the extended resource it advertises. */}}
{{- define "derecho-operator.rdmaNamespace" -}}
{{- default .Release.Namespace .Values.rdmaDevicePlugin.namespace -}}
{{- end -}}

{{- define "derecho-operator.rdmaName" -}}
{{- printf "%s-rdma-shared-dp" (include "derecho-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "derecho-operator.rdmaResourceName" -}}
{{- printf "%s/%s" .Values.rdmaDevicePlugin.resourcePrefix .Values.rdmaDevicePlugin.resourceName -}}
{{- end -}}

{{/* Checks across values that the JSON schema cannot express. */}}
{{- define "derecho-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicas is %d but leaderElection.enabled is false: several operator replicas without leader election would reconcile the same groups at once (set replicas: 1 or enable leader election)" (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "serviceMonitor.enabled needs metrics.service.enabled (the ServiceMonitor selects the metrics Service)" -}}
{{- end -}}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) -}}
{{- fail (printf "metrics.port and health.port are both %d: they must differ" (int .Values.metrics.port)) -}}
{{- end -}}
{{- end -}}
