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

{{- define "channel-contracts.fleet.name" -}}
{{- printf "%s-fleet" (include "channel-contracts.fullname" .) }}
{{- end }}

{{- define "channel-contracts.fleet.memberName" -}}
{{- printf "%s-fleet-member" (include "channel-contracts.fullname" .) }}
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

{{- define "channel-contracts.webhook.configName" -}}
{{- include "channel-contracts.fullname" . }}
{{- end }}

{{/* The webhook's name in the ValidatingWebhookConfiguration (the API server's metrics label it `name`). */}}
{{- define "channel-contracts.webhook.webhookName" -}}
validate.csp.contracts.dev
{{- end }}

{{/* The DNS names of the webhook Service, as the serving certificate must cover them. */}}
{{- define "channel-contracts.webhook.dnsNames" -}}
{{- $svc := include "channel-contracts.webhook.name" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/*
xDS. Every operator replica serves ADS on operator.xds.port; the chart renders the Service, the TLS material
and the gateway fleet only when the operator is deployed and publishes to xds.
*/}}
{{- define "channel-contracts.xds.published" -}}
{{- if has "xds" .Values.operator.publish }}true{{ end }}
{{- end }}

{{- define "channel-contracts.xds.enabled" -}}
{{- if and .Values.operator.deploy (include "channel-contracts.xds.published" .) }}true{{ end }}
{{- end }}

{{/* The xDS Service (every replica behind it). `<fullname>-xds`: `-operator-xds` would not fit 63. */}}
{{- define "channel-contracts.xds.name" -}}
{{- printf "%s-xds" (include "channel-contracts.fullname" .) }}
{{- end }}

{{/* The xDS Service's fully qualified DNS name: where proxies connect and what they check (SNI). */}}
{{- define "channel-contracts.xds.host" -}}
{{- printf "%s.%s.svc.%s" (include "channel-contracts.xds.name" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* The DNS names of the xDS Service, as its serving certificate must cover them. */}}
{{- define "channel-contracts.xds.dnsNames" -}}
{{- $svc := include "channel-contracts.xds.name" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/* The Secret of the xDS server: tls.crt, tls.key and ca.crt (every mode). */}}
{{- define "channel-contracts.xds.tlsSecret" -}}
{{- if eq .Values.operator.xds.tls.mode "existingSecret" }}
{{- .Values.operator.xds.tls.existingSecret }}
{{- else }}
{{- printf "%s-xds-tls" (include "channel-contracts.fullname" .) }}
{{- end }}
{{- end }}

{{/* helm mode: the Secret of the CA that signs the xDS certificates (never mounted). */}}
{{- define "channel-contracts.xds.caSecret" -}}
{{- printf "%s-xds-ca" (include "channel-contracts.fullname" .) }}
{{- end }}

{{/* The Secret of the gateway's client certificate (requireClientCert): tls.crt, tls.key. */}}
{{- define "channel-contracts.xds.clientSecret" -}}
{{- if .Values.proxy.xdsClientSecret }}
{{- .Values.proxy.xdsClientSecret }}
{{- else }}
{{- printf "%s-xds-client-tls" (include "channel-contracts.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The chart's own cert-manager CA chain (selfsigned Issuer -> CA Certificate -> CA Issuer `<fullname>-ca`): used
by the webhook's and the xDS server's certificates in certManager mode without an issuerRef, rendered once
(with the webhook's objects when the webhook uses it, else with the xDS server's).
*/}}
{{- define "channel-contracts.webhook.usesChartCA" -}}
{{- if and (eq .Values.webhook.certificate.mode "certManager") (not (include "channel-contracts.webhook.external" .)) (not .Values.webhook.certificate.certManager.issuerRef) }}true{{ end }}
{{- end }}

{{- define "channel-contracts.xds.usesChartCA" -}}
{{- if and (include "channel-contracts.xds.enabled" .) (eq .Values.operator.xds.tls.mode "certManager") (not .Values.operator.xds.tls.certManager.issuerRef) }}true{{ end }}
{{- end }}

{{/* The gateway fleet (proxy.enabled). */}}
{{- define "channel-contracts.gateway.name" -}}
{{- printf "%s-gateway" (include "channel-contracts.fullname" .) }}
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
{{- if eq (get . "name") (include "channel-contracts.webhook.webhookName" $) }}
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
{{- $xdsTls := .Values.operator.xds.tls }}
{{- if and (include "channel-contracts.xds.enabled" .) (eq $xdsTls.mode "existingSecret") (not $xdsTls.existingSecret) }}
{{- fail "operator.xds.tls.mode=existingSecret needs operator.xds.tls.existingSecret: the name of a Secret in the release namespace with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- if and .Values.proxy.enabled (not (include "channel-contracts.xds.enabled" .)) }}
{{- fail "proxy.enabled needs the operator's xDS server in this release: operator.deploy=true and xds in operator.publish" }}
{{- end }}
{{- if and .Values.proxy.enabled $xdsTls.requireClientCert (eq $xdsTls.mode "existingSecret") (not .Values.proxy.xdsClientSecret) }}
{{- fail "operator.xds.tls.requireClientCert with mode existingSecret: give proxy.xdsClientSecret, a Secret with the gateway's client certificate (tls.crt, tls.key) signed by the CA in the xDS Secret's ca.crt" }}
{{- end }}
{{- if .Values.proxy.enabled }}
{{- range .Values.proxy.ports }}
{{- if eq (int .) (int $.Values.proxy.readiness.port) }}
{{- fail (printf "proxy.ports has %d, which is proxy.readiness.port: the gateway's readiness listener takes that port; move one of them" (int .)) }}
{{- end }}
{{- end }}
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

{{/*
The chart's self-signed CA chain for cert-manager: (dict "ctx" $ "component" "webhook" "caDuration" "87600h").
*/}}
{{- define "channel-contracts.certManager.chartCA" -}}
{{- $fullname := include "channel-contracts.fullname" .ctx }}
# A self-signed CA chain private to this release: selfsigned Issuer -> CA Certificate -> CA Issuer.
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: {{ $fullname }}-selfsigned
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "channel-contracts.componentLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  selfSigned: {}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ $fullname }}-ca
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "channel-contracts.componentLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  isCA: true
  commonName: {{ $fullname }}-ca
  secretName: {{ $fullname }}-ca
  duration: {{ .caDuration }}
  privateKey:
    algorithm: ECDSA
    size: 256
    rotationPolicy: Always
  issuerRef:
    group: cert-manager.io
    kind: Issuer
    name: {{ $fullname }}-selfsigned
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: {{ $fullname }}-ca
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "channel-contracts.componentLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  ca:
    secretName: {{ $fullname }}-ca
{{- end }}

{{/*
helm mode: the xDS Secrets as a dict name -> {cert, key, notAfter, names} (PEM), computed once per render and
memoized on .Release, so that the Secrets and the pods' checksums agree. Kept across upgrades: each Secret is
read back with `lookup` and rendered again unchanged unless it is missing, within renewBeforeDays of the end
it records (annotation csp.contracts.dev/not-after), issued by another CA, or (a leaf) for other names.
`lookup` answers nothing under `helm template` and --dry-run: there every render issues new ones.
*/}}
{{- define "channel-contracts.xds.helmIssued" -}}
{{- if not (hasKey .Release "cspXdsIssued") }}
{{- $tls := .Values.operator.xds.tls }}
{{- $fullname := include "channel-contracts.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $dnsNames := include "channel-contracts.xds.dnsNames" . | fromJsonArray }}
{{- $clientCert := and $tls.requireClientCert (not .Values.proxy.xdsClientSecret) }}
{{- $now := now | unixEpoch | int64 }}
{{- $renewBefore := mul (int64 $tls.helm.renewBeforeDays) 86400 }}
{{- $fresh := dict }}
{{- range $name := list (include "channel-contracts.xds.caSecret" .) (include "channel-contracts.xds.tlsSecret" .) (include "channel-contracts.xds.clientSecret" .) }}
{{- $live := lookup "v1" "Secret" $ns $name | default dict }}
{{- $notAfter := dig "metadata" "annotations" "csp.contracts.dev/not-after" "" $live }}
{{- if and $notAfter (gt (toDate "2006-01-02T15:04:05Z07:00" $notAfter | unixEpoch | int64) (add $now $renewBefore)) (dig "data" "tls.crt" "" $live) (dig "data" "tls.key" "" $live) }}
{{- $_ := set $fresh $name $live }}
{{- end }}
{{- end }}
{{- $issued := dict }}
{{- /* The CA: kept while it is fresh, else a new one (and then new certificates). */}}
{{- $caName := include "channel-contracts.xds.caSecret" . }}
{{- $ca := dict }}
{{- $caLive := get $fresh $caName }}
{{- if $caLive }}
{{- $ca = buildCustomCert (get $caLive.data "tls.crt") (get $caLive.data "tls.key") }}
{{- $_ := set $issued $caName (dict "cert" $ca.Cert "key" $ca.Key "notAfter" (get $caLive.metadata.annotations "csp.contracts.dev/not-after") "names" "") }}
{{- else }}
{{- $ca = genCA (printf "%s-xds-ca" $fullname) (int $tls.helm.caValidityDays) }}
{{- $_ := set $issued $caName (dict "cert" $ca.Cert "key" $ca.Key "notAfter" (dateInZone "2006-01-02T15:04:05Z07:00" (now | dateModify (printf "+%dh" (mul (int $tls.helm.caValidityDays) 24))) "UTC") "names" "") }}
{{- end }}
{{- $caCrt := get (get $issued $caName) "cert" }}
{{- /* The serving certificate, and the gateway's client certificate (requireClientCert). */}}
{{- $leaves := list (list (include "channel-contracts.xds.tlsSecret" .) (printf "%s.%s.svc" (include "channel-contracts.xds.name" .) $ns) $dnsNames "server") }}
{{- if $clientCert }}
{{- $leaves = append $leaves (list (include "channel-contracts.xds.clientSecret" .) .Values.proxy.fleet (list) "client") }}
{{- end }}
{{- range $leaf := $leaves }}
{{- $name := index $leaf 0 }}
{{- $names := index $leaf 2 | join "," }}
{{- $live := get $fresh $name }}
{{- if and $live $caLive (eq (b64dec (dig "data" "ca.crt" "" $live)) $caCrt) (eq (dig "metadata" "annotations" "csp.contracts.dev/dns-names" "" $live) $names) }}
{{- $_ := set $issued $name (dict "cert" (b64dec (get $live.data "tls.crt")) "key" (b64dec (get $live.data "tls.key")) "notAfter" (get $live.metadata.annotations "csp.contracts.dev/not-after") "names" $names) }}
{{- else }}
{{- $cert := genSignedCert (index $leaf 1) nil (index $leaf 2) (int $tls.helm.validityDays) $ca }}
{{- $_ := set $issued $name (dict "cert" $cert.Cert "key" $cert.Key "notAfter" (dateInZone "2006-01-02T15:04:05Z07:00" (now | dateModify (printf "+%dh" (mul (int $tls.helm.validityDays) 24))) "UTC") "names" $names) }}
{{- end }}
{{- end }}
{{- $_ := set .Release "cspXdsIssued" $issued }}
{{- end }}
{{- get .Release "cspXdsIssued" | toJson }}
{{- end }}

{{/*
The labels of one alert of the PrometheusRule: its severity and metrics.prometheusRule.alertLabels
(the schema keeps `severity` out of those): (dict "ctx" $ "severity" "warning").
*/}}
{{- define "channel-contracts.prometheusRule.alertLabels" -}}
severity: {{ .severity }}
{{- with .ctx.Values.metrics.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}
