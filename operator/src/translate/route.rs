//! The route configuration: the SLA timeout, the retry policy, the channel selector routes.

use super::*;
use crate::envoy::pb::envoy::config::route::v3::route;
use crate::envoy::pb::envoy::r#type::metadata::v3::{MetadataKey, MetadataKind, metadata_key, metadata_kind};

/// `retry.*` as a route's retry policy; None for strategy None (no retries at all).
///
/// Envoy's back-off is always fully jittered: retry `n` (from 1) waits a random time below `base * (2^n -
/// 1)`, capped at `max_interval`. ExponentialBackoff: `baseInterval` and `maxInterval` (omitted: ten times
/// the base, as the API says). Fixed: base and max both `baseInterval`, so that every retry waits a random
/// time below `baseInterval`, as the field's description says (Envoy has no unjittered interval).
pub(crate) fn retry_policy(
    retry: &RetryPolicy,
) -> Result<Option<crate::envoy::pb::envoy::config::route::v3::RetryPolicy>, TranslateError> {
    if retry.strategy == RetryStrategy::None {
        return Ok(None);
    }
    let base = pb_duration("spec.retry.backoff.baseInterval", &retry.backoff.base_interval)?;
    let max = match (retry.strategy, &retry.backoff.max_interval) {
        (RetryStrategy::Fixed, _) => base,
        (_, Some(max)) => pb_duration("spec.retry.backoff.maxInterval", max)?,
        (_, None) => {
            let base_std = crds::duration::parse(&retry.backoff.base_interval).unwrap_or_default();
            from_std(base_std.saturating_mul(10)).ok_or(TranslateError::Duration {
                field: "spec.retry.backoff.baseInterval",
                value: retry.backoff.base_interval.clone(),
            })?
        }
    };
    let per_try_timeout = match &retry.per_try_timeout {
        Some(t) => Some(pb_duration("spec.retry.perTryTimeout", t)?),
        None => None,
    };
    Ok(Some(crate::envoy::pb::envoy::config::route::v3::RetryPolicy {
        retry_on: retry.retry_on.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
        num_retries: uint(retry.max_retries),
        per_try_timeout,
        retry_back_off: Some(retry_policy::RetryBackOff { base_interval: Some(base), max_interval: Some(max) }),
        ..Default::default()
    }))
}

/// The routes: one per channel selector (in channel order) straight to that channel, then the default
/// route to the aggregate cluster. Every route has the SLA timeout, the retry policy, the tracing tags
/// ([`span_tags`]) and the `x-csp-contract` response header (which replaces one an upstream may have set,
/// and is also added to Envoy's own replies such as a 504 on timeout). During a drill every route adds
/// the request header `x-csp-drill: <run>` ([`super::fault`]).
pub(crate) fn route_configuration(
    spec: &ChannelContractSpec,
    names: &Names<'_>,
    channels: &[ResolvedChannel],
    fault: Option<&ActiveFault>,
) -> Result<RouteConfiguration, TranslateError> {
    let timeout = pb_duration("spec.sla.maxLatency", &spec.sla.max_latency)?;
    let retry = retry_policy(&spec.retry)?;
    let tags = span_tags(&names.contract(), &spec.sla.max_latency);
    let drill_header: Vec<HeaderValueOption> = fault
        .map(|f| HeaderValueOption {
            header: Some(HeaderValue {
                key: super::fault::DRILL_HEADER.to_owned(),
                value: f.run.clone(),
                ..HeaderValue::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            ..HeaderValueOption::default()
        })
        .into_iter()
        .collect();
    let make_route = |name: String, headers: Vec<HeaderMatcher>, cluster: String| Route {
        name,
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            headers,
            ..RouteMatch::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(timeout),
            retry_policy: retry.clone(),
            ..RouteAction::default()
        })),
        tracing: Some(Tracing { custom_tags: tags.clone(), ..Tracing::default() }),
        request_headers_to_add: drill_header.clone(),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: CONTRACT_HEADER.to_owned(),
                value: names.contract(),
                ..HeaderValue::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            ..HeaderValueOption::default()
        }],
        ..Route::default()
    };
    let mut routes: Vec<Route> = channels
        .iter()
        .filter_map(|c| c.selector.as_ref().map(|selector| (c, selector)))
        .map(|(c, selector)| {
            let cluster = names.channel_cluster(&c.name);
            make_route(cluster.clone(), vec![channel_header(selector)], cluster)
        })
        .collect();
    routes.push(make_route(names.base(), Vec::new(), names.base()));
    Ok(RouteConfiguration {
        name: names.base(),
        virtual_hosts: vec![VirtualHost {
            name: names.base(),
            // The listener is the contract's own, so every request it takes is for this service.
            domains: vec!["*".to_owned()],
            routes,
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    })
}

/// `x-channel-priority: <selector>`, exact, ignoring case (selectors are lowercase DNS labels).
pub(crate) fn channel_header(selector: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: CHANNEL_HEADER.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(selector.to_owned())),
            ignore_case: true,
        })),
        ..HeaderMatcher::default()
    }
}

/// The attributes of every span of a contract's requests (Envoy's tracer adds them to the span it makes):
/// - `csp.contract`: `<namespace>/<name>`;
/// - `csp.channel` and `csp.region`: the channel and region of the endpoint that served the request (the
///   endpoint's metadata, [`super::endpoint::endpoint_metadata`]);
/// - `csp.fallback.used`: that channel's name when it is a fallback, else `false`;
/// - `csp.sla.breached`: `true` when the request took `sla.maxLatency` or longer, or the route's timeout
///   (`sla.maxLatency`) answered it, else `false`: computed by Envoy per request (`%CEL(...)%`). The
///   timeout counts by itself (its response flag UT, bit 4 of `response.flags`): Envoy's timers run on a
///   cached clock, so a timed-out request can measure a few milliseconds under the timeout (seen: 297.9 ms
///   for 300 ms).
pub(crate) fn span_tags(contract: &str, max_latency: &str) -> Vec<CustomTag> {
    let host = host_metadata_tag;
    vec![
        literal_tag(CONTRACT_TAG, contract),
        host(CHANNEL_TAG, "channel", ""),
        host(REGION_TAG, "region", ""),
        host(FALLBACK_TAG, "fallback", "false"),
        CustomTag {
            tag: SLA_BREACHED_TAG.to_owned(),
            r#type: Some(custom_tag::Type::Value(format!(
                "%CEL(request.duration >= duration('{}') || response.code_details == 'upstream_response_timeout' || response.flags / 4 % 2 == 1)%",
                max_latency.replace('\'', "")
            ))),
        },
    ]
}

/// A custom tag (span attribute, access log tag) with the value of key `key` of the serving endpoint's
/// metadata ([`super::endpoint::endpoint_metadata`]), `default` when it has none.
pub(crate) fn host_metadata_tag(tag: &str, key: &str, default: &str) -> CustomTag {
    CustomTag {
        tag: tag.to_owned(),
        r#type: Some(custom_tag::Type::Metadata(custom_tag::Metadata {
            kind: Some(MetadataKind { kind: Some(metadata_kind::Kind::Host(metadata_kind::Host {})) }),
            metadata_key: Some(MetadataKey {
                key: super::endpoint::METADATA_NAMESPACE.to_owned(),
                path: vec![metadata_key::PathSegment {
                    segment: Some(metadata_key::path_segment::Segment::Key(key.to_owned())),
                }],
            }),
            default_value: default.to_owned(),
        })),
    }
}

pub(crate) fn literal_tag(tag: &str, value: &str) -> CustomTag {
    CustomTag {
        tag: tag.to_owned(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value: value.to_owned() })),
    }
}
