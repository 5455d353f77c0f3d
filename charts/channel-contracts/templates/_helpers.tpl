{{/*
Names. The fullname is at most 54 characters so that `<fullname>-operator` and `<fullname>-webhook` stay
valid Service names (DNS labels, at most 63).
*/}}
{{- define "channel-contracts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 54 | trimSuffix "-" }}
{{- end }}

{{- define "channel-contracts.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "channel-contracts.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names, one place each. */}}
{{- define "channel-contracts.operator.name" -}}
{{- printf "%s-operator" (include "channel-contracts.fullname" .) }}
{{- end }}

{{- define "channel-contracts.webhook.name" -}}
{{- printf "%s-webhook" (include "channel-contracts.fullname" .) }}
{{- end }}

{{/* The Lease the operator replicas elect a leader on. */}}
{{- define "channel-contracts.operator.lease" -}}
{{- include "channel-contracts.operator.name" . }}
{{- end }}

{{/* The Lease the webhook replicas elect one audit writer on. */}}
{{- define "channel-contracts.webhook.auditLease" -}}
{{- printf "%s-webhook-audit" (include "channel-contracts.fullname" .) }}
{{- end }}

{{/* The Secret holding the webhook's serving certificate (both modes) and its CA (selfManaged). */}}
{{- define "channel-contracts.webhook.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "channel-contracts.fullname" .) }}
{{- end }}

{{/* The ValidatingWebhookConfiguration. */}}
{{- define "channel-contracts.webhook.configName" -}}
{{- include "channel-contracts.fullname" . }}
{{- end }}

{{/* The DNS names of the webhook Service, as the serving certificate must cover them. */}}
{{- define "channel-contracts.webhook.dnsNames" -}}
{{- $svc := include "channel-contracts.webhook.name" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/* The webhook runs outside the cluster. */}}
{{- define "channel-contracts.webhook.external" -}}
{{- if .Values.webhook.external.url }}true{{ end }}
{{- end }}

{{/*
Labels.
*/}}
{{- define "channel-contracts.labels" -}}
helm.sh/chart: {{ include "channel-contracts.chart" . }}
app.kubernetes.io/name: {{ include "channel-contracts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: channel-contracts
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "channel-contracts.selectorLabels" -}}
app.kubernetes.io/name: {{ include "channel-contracts.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects: (dict "ctx" $ "component" "operator"). */}}
{{- define "channel-contracts.componentLabels" -}}
{{ include "channel-contracts.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image, by digest when one is given. */}}
{{- define "channel-contracts.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The caBundle for the ValidatingWebhookConfiguration: the value when given; otherwise the one already on the
live object (injected by the webhook or by cert-manager), so that `helm upgrade` keeps it. `lookup` returns
nothing under `helm template` and `--dry-run`, hence an empty caBundle there.
*/}}
{{- define "channel-contracts.webhook.caBundle" -}}
{{- if .Values.webhook.caBundle }}
{{- .Values.webhook.caBundle }}
{{- else }}
{{- $live := lookup "admissionregistration.k8s.io/v1" "ValidatingWebhookConfiguration" "" (include "channel-contracts.webhook.configName" .) }}
{{- range (dig "webhooks" list ($live | default dict)) }}
{{- if eq (get . "name") "validate.csp.contracts.dev" }}
{{- dig "clientConfig" "caBundle" "" . }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Scheduling of one component, spread across nodes unless the user gives their own affinity/constraints:
(dict "ctx" $ "component" "webhook" "values" .Values.webhook).
*/}}
{{- define "channel-contracts.scheduling" -}}
{{- $v := .values }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if $v.spread.enabled }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "channel-contracts.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 14 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
{{- else if $v.spread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ $v.spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "channel-contracts.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}

{{/* Checks of combinations the schema cannot express; fails the render with what to do. */}}
{{- define "channel-contracts.validate" -}}
{{- if and .Values.operator.deploy (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled=true: without a leader every replica would reconcile every contract" }}
{{- end }}
{{- if and .Values.webhook.external.url (eq .Values.webhook.certificate.mode "certManager") (not .Values.webhook.caBundle) }}
{{- fail "webhook.external.url runs the webhook outside the cluster, where the cert-manager Secret is not mounted: use webhook.certificate.mode=selfManaged (the external process injects its CA) or give webhook.caBundle" }}
{{- end }}
{{- end }}

{{/* Egress of both components under networkPolicy.enabled: the API server and DNS, nothing else. */}}
{{- define "channel-contracts.networkPolicy.egress" -}}
egress:
  # The API server (watches, status, ConfigMaps, Leases, certificates).
  - to:
      {{- range .Values.networkPolicy.apiServer.cidrs }}
      - ipBlock:
          cidr: {{ . }}
      {{- end }}
    ports:
      {{- range .Values.networkPolicy.apiServer.ports }}
      - protocol: TCP
        port: {{ . }}
      {{- end }}
  # DNS (wherever the cluster runs it: CoreDNS, node-local DNS).
  - ports:
      - protocol: UDP
        port: 53
      - protocol: TCP
        port: 53
{{- end }}
