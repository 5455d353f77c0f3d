{{/*
The gateway fleet's Envoy bootstrap: what `operator bootstrap` prints for

  operator bootstrap --xds-address <fullname>-xds.<ns>.svc.<clusterDomain>:<operator.xds.port> \
    --ca /var/run/csp/xds/ca.crt --fleet <proxy.fleet> --pod-namespace <ns> --admin 127.0.0.1:9901 \
    [--namespaces <proxy.namespaces>] [--client-cert /var/run/csp/xds-client/tls.crt \
    --client-key /var/run/csp/xds-client/tls.key] [--sotw] \
    [--otlp-address <proxy.tracing.otlpAddress> --trace-sampling <proxy.tracing.sampling>]

key for key (charts/test.sh compares the two when an operator binary is at hand, and runs
`envoy --mode validate` on it), plus one static listener of the chart's: `GET /ready` on
proxy.readiness.port for the kubelet, since the admin interface stays on loopback. No node.id (Envoy's
--service-node gives the pod name) and no region (the operator reads the region of the Pod's Node).
*/}}
{{- define "channel-contracts.gateway.bootstrap" -}}
{{- $v := .Values.proxy }}
{{- $host := include "channel-contracts.xds.host" . -}}
admin:
  address:
    socket_address:
      address: 127.0.0.1
      port_value: 9901
# Internal listeners: a ContractDrill's fault is put in through one.
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    '@type': type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
dynamic_resources:
  ads_config:
    api_type: {{ if $v.sotw }}GRPC{{ else }}DELTA_GRPC{{ end }}
    grpc_services:
    - envoy_grpc:
        cluster_name: csp-xds
    set_node_on_first_message_only: true
    transport_api_version: V3
  cds_config:
    ads: {}
    resource_api_version: V3
  lds_config:
    ads: {}
    resource_api_version: V3
node:
  cluster: {{ $v.fleet }}
  # A zone, so that Envoy counts responses per upstream zone (a contract endpoint's zone is its channel,
  # region and fallback): the labels of the proxies' metrics below.
  locality:
    zone: csp-proxy
  metadata:
    csp.contracts.dev/features: drills{{ if $v.tracing.otlpAddress }},tracing{{ end }}
    {{- with $v.namespaces }}
    csp.contracts.dev/namespaces: {{ join "," . }}
    {{- end }}
    csp.contracts.dev/pod-namespace: {{ .Release.Namespace }}
    {{- if $v.tracing.otlpAddress }}
    csp.contracts.dev/trace-sampling: {{ $v.tracing.sampling | toString | quote }}
    {{- end }}
# The labels csp_namespace, csp_contract, csp_channel, csp_region, csp_fallback of the proxies' metrics,
# from the contracts' cluster names (csp~<namespace>~<contract>[~<channel>]) and zones.
stats_config:
  stats_tags:
  - regex: '^cluster\.csp~(([^.~]+)~)[^.~]+(?:~[^.~]*)*\.'
    tag_name: csp_namespace
  - regex: '^cluster\.csp~[^.~]+~(([^.~]+)(?:~[^.~]*)*\.)'
    tag_name: csp_contract
  - regex: '^cluster\.csp~[^.~]+~[^.~]+~(([^.~]+))\.(?!zone\.)'
    tag_name: csp_channel
  - regex: '^cluster\.csp~[^.]+\.zone\.(([^.]+)\.)[^.~]+~[^.~]*~[^.~]+\.'
    tag_name: csp_proxy_zone
  - regex: '^cluster\.csp~[^.]+\.zone\.[^.]+\.(([^.~]+)~)[^.~]*~[^.~]+\.'
    tag_name: csp_channel
  - regex: '^cluster\.csp~[^.]+\.zone\.[^.]+\.[^.~]+(~([^.~]*))~[^.~]+\.'
    tag_name: csp_region
  - regex: '^cluster\.csp~[^.]+\.zone\.[^.]+\.[^.~]+~[^.~]*(~([^.~]+)\.)'
    tag_name: csp_fallback
static_resources:
  clusters:
  - connect_timeout: 2s
    load_assignment:
      cluster_name: csp-xds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: {{ $host }}
                port_value: {{ .Values.operator.xds.port }}
    name: csp-xds
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols:
          - h2
          {{- if .Values.operator.xds.tls.requireClientCert }}
          tls_certificates:
          - certificate_chain:
              filename: /var/run/csp/xds-client/tls.crt
            private_key:
              filename: /var/run/csp/xds-client/tls.key
          {{- end }}
          validation_context:
            trusted_ca:
              filename: /var/run/csp/xds/ca.crt
        sni: {{ $host }}
    type: STRICT_DNS
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
  {{- with $v.tracing.otlpAddress }}
  {{- $otlpHost := regexReplaceAll ":[0-9]+$" . "" | trimPrefix "[" | trimSuffix "]" }}
  # The OpenTelemetry Collector the gateway listeners' tracer exports to.
  - connect_timeout: 2s
    load_assignment:
      cluster_name: csp-otlp
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: {{ $otlpHost }}
                port_value: {{ regexFind "[0-9]+$" . }}
    name: csp-otlp
    type: {{ if regexMatch "^[0-9.]+$|:" $otlpHost }}STATIC{{ else }}STRICT_DNS{{ end }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
  {{- end }}
  # The chart's own: the kubelet's readiness probe. Static listeners open once Envoy has initialized (its
  # first clusters and listeners from the operator, or initial_fetch_timeout); 503 once health checks fail
  # (admin POST /healthcheck/fail).
  listeners:
  - name: csp-ready
    address:
      socket_address:
        address: 0.0.0.0
        port_value: {{ $v.readiness.port }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: csp_ready
          http_filters:
          - name: envoy.filters.http.health_check
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers:
              - name: :path
                string_match:
                  exact: /ready
          - name: envoy.filters.http.router
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: csp-ready
            virtual_hosts:
            - name: csp-ready
              domains:
              - '*'
              routes:
              - match:
                  prefix: /
                direct_response:
                  status: 404
{{- end }}
