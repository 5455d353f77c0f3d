//! Load assignments: a channel's ready endpoints, grouped by region into priorities.

use super::*;

/// Envoy's overprovisioning factor, written out on every load assignment. 140 (1.4, Envoy's default) is
/// kept deliberately: a region keeps all of the primary's traffic while at least 1/1.4 ≈ 72% of its
/// endpoints are healthy, and spills proportionally to the next region below that; once every endpoint of
/// a region is ejected, all of its traffic goes to the next. A factor of 100 would move traffic away at
/// the first ejection (a partial failure of one region would already load the next region), and a huge
/// factor would pile a whole region's traffic on its last endpoint.
pub const OVERPROVISIONING_FACTOR: u32 = 140;

/// An endpoint that will be published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Published {
    pub(crate) address: String,
    pub(crate) port: u16,
    /// A DNS name rather than an IP address.
    pub(crate) dns: bool,
    pub(crate) region: Option<String>,
}

/// The ready endpoints of a channel, checked, without duplicates (a Pod can sit in two EndpointSlices for
/// a moment) and sorted, so that the input's order never shows in the output.
pub(crate) fn published_endpoints(
    channel: &str,
    endpoints: Option<&Vec<Endpoint>>,
) -> Result<Vec<Published>, TranslateError> {
    let mut published = Vec::new();
    for e in endpoints.into_iter().flatten().filter(|e| e.ready) {
        let invalid = |reason: &str| TranslateError::InvalidEndpoint {
            channel: channel.to_owned(),
            address: e.address.clone(),
            port: e.port,
            reason: reason.to_owned(),
        };
        if e.port == 0 {
            return Err(invalid("0 is not a port"));
        }
        let dns = match e.address.parse::<IpAddr>() {
            Ok(_) => false,
            Err(_) if is_dns_name(&e.address) => true,
            Err(_) => return Err(invalid("not an IP address nor a DNS name")),
        };
        let region = e.region.clone().filter(|r| !r.is_empty());
        published.push(Published { address: e.address.clone(), port: e.port, dns, region });
    }
    // A regionless duplicate sorts after one with a region, so the region is kept.
    published.sort_by(|a, b| {
        (&a.address, a.port, a.region.is_none(), &a.region).cmp(&(&b.address, b.port, b.region.is_none(), &b.region))
    });
    published.dedup_by(|b, a| a.address == b.address && a.port == b.port);
    Ok(published)
}

pub(crate) fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Who an endpoint serves, as its metadata and locality say it to the proxy (see [`endpoint_metadata`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Serving<'a> {
    /// The channel.
    pub(crate) channel: &'a str,
    /// Whether the channel is a fallback (not the contract's first).
    pub(crate) fallback: bool,
    /// A drill's fault in force, if any.
    pub(crate) fault: Option<&'a ActiveFault>,
}

impl Serving<'_> {
    fn faulted(&self, region: Option<&str>) -> bool {
        self.fault.is_some_and(|f| f.hits(self.channel, region))
    }
}

/// The metadata namespace of an endpoint's `filter_metadata` that says who it serves.
pub const METADATA_NAMESPACE: &str = "csp";

/// A channel's endpoints grouped by locality (region), one priority per region in `region_order`, compacted
/// so that priorities stay contiguous (a declared region with no endpoint takes no level); the endpoints
/// of regions not in the order, and those without a region, share the level after them.
///
/// `policy.overprovisioning_factor` is written out (see [`OVERPROVISIONING_FACTOR`]). Endpoints carry no
/// health status (UNKNOWN, which counts as healthy): health comes from outlier detection, and only ready
/// endpoints are here at all.
///
/// Each locality's `zone` is `<channel>~<region>~<fallback>`: a proxy whose node has a zone counts its
/// responses per upstream zone (`cluster.<aggregate>.zone.<proxy zone>.<zone>.upstream_rq_*`), which the
/// bootstrap's tag extractors turn into the labels `csp_channel`, `csp_region` and `csp_fallback` of the
/// proxies' own metrics. Each endpoint carries its channel, region and fallback in its metadata
/// ([`endpoint_metadata`]); an endpoint under a drill's fault is reached through the fault's internal
/// listener instead of its address ([`super::fault`]).
pub(crate) fn load_assignment(
    cluster_name: &str,
    endpoints: &[Published],
    region_order: &[String],
    serving: Serving<'_>,
) -> ClusterLoadAssignment {
    let rank = |region: &Option<String>| {
        region.as_ref().and_then(|r| region_order.iter().position(|o| o == r)).unwrap_or(region_order.len())
    };
    // (rank, region) -> endpoints; the regionless sort last within the shared last level.
    let mut groups: BTreeMap<(usize, bool, Option<String>), Vec<&Published>> = BTreeMap::new();
    for e in endpoints {
        groups.entry((rank(&e.region), e.region.is_none(), e.region.clone())).or_default().push(e);
    }
    let mut priorities: Vec<usize> = groups.keys().map(|k| k.0).collect();
    priorities.dedup();
    let localities = groups
        .into_iter()
        .map(|((rank, _, region), members)| LocalityLbEndpoints {
            locality: Some(Locality {
                zone: format!("{}~{}~{}", serving.channel, region.as_deref().unwrap_or_default(), serving.fallback),
                region: region.clone().unwrap_or_default(),
                ..Locality::default()
            }),
            lb_endpoints: members
                .into_iter()
                .map(|e| lb_endpoint(e, serving, serving.faulted(region.as_deref())))
                .collect(),
            priority: u32::try_from(priorities.iter().position(|p| *p == rank).unwrap_or(0)).unwrap_or(u32::MAX),
            ..LocalityLbEndpoints::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: localities,
        policy: Some(cluster_load_assignment::Policy {
            overprovisioning_factor: Some(UInt32Value { value: OVERPROVISIONING_FACTOR }),
            ..cluster_load_assignment::Policy::default()
        }),
        ..ClusterLoadAssignment::default()
    }
}

/// `filter_metadata.csp` of an endpoint: `channel`, `region` (when it has one), `fallback` (the channel's
/// name, for a fallback channel's endpoint only) and `faulted: "true"` under a drill's fault. The
/// proxies read it back per request: the `x-channel-priority` header to the backend, the span's
/// attributes, the access logs' tags.
pub(crate) fn endpoint_metadata(serving: Serving<'_>, region: Option<&str>, faulted: bool) -> core::Metadata {
    use crate::envoy::pb::google::protobuf::{Struct, Value, value};
    let text = |s: &str| Value { kind: Some(value::Kind::StringValue(s.to_owned())) };
    let mut fields = std::collections::HashMap::from([("channel".to_owned(), text(serving.channel))]);
    if let Some(region) = region {
        fields.insert("region".to_owned(), text(region));
    }
    if serving.fallback {
        fields.insert("fallback".to_owned(), text(serving.channel));
    }
    if faulted {
        fields.insert("faulted".to_owned(), text("true"));
    }
    core::Metadata {
        filter_metadata: std::collections::HashMap::from([(METADATA_NAMESPACE.to_owned(), Struct { fields })]),
        ..core::Metadata::default()
    }
}

pub(crate) fn lb_endpoint(e: &Published, serving: Serving<'_>, faulted: bool) -> LbEndpoint {
    let address = if faulted {
        super::fault::internal_address(&e.address, e.port)
    } else {
        socket_address(&e.address, u32::from(e.port))
    };
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
            crate::envoy::pb::envoy::config::endpoint::v3::Endpoint { address: Some(address), ..Default::default() },
        )),
        metadata: Some(endpoint_metadata(serving, e.region.as_deref(), faulted)),
        ..LbEndpoint::default()
    }
}

pub(crate) fn socket_address(address: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

pub(crate) fn channel_status(name: &str, assignment: &ClusterLoadAssignment, endpoints: usize) -> ChannelStatus {
    let mut regions: Vec<String> = Vec::new();
    for region in assignment.endpoints.iter().filter_map(|l| l.locality.as_ref()).map(|l| &l.region) {
        if !region.is_empty() && !regions.contains(region) {
            regions.push(region.clone());
        }
    }
    ChannelStatus { name: name.to_owned(), endpoints: i32::try_from(endpoints).unwrap_or(i32::MAX), regions }
}
