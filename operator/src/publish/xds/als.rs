//! The access log service every replica serves next to ADS (`envoy.service.accesslog.v3`): the proxies'
//! gateway listeners log every request of a contract to it (`csp-slo`), which becomes the contracts' SLO
//! metrics ([`crate::observe::slo`]).

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::envoy::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use crate::envoy::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogService;
use crate::envoy::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use crate::envoy::pb::envoy::service::accesslog::v3::{StreamAccessLogsMessage, StreamAccessLogsResponse};
use crate::observe::drill::TryLog;
use crate::observe::slo::{RequestLog, SloMetrics};

/// The log name of the connection manager's access log of every contract request.
pub const SLO_LOG: &str = "csp-slo";

/// The custom tags the proxies add to each entry: the serving endpoint's metadata.
pub const TAG_CHANNEL: &str = "csp.channel";
/// See [`TAG_CHANNEL`].
pub const TAG_REGION: &str = "csp.region";
/// See [`TAG_CHANNEL`].
pub const TAG_FALLBACK: &str = "csp.fallback";

/// The log name of the router's log of every try of a drill's request.
pub const DRILL_LOG: &str = "csp-drill";

/// The custom tag that says whether the endpoint was under a drill's fault.
pub const TAG_FAULTED: &str = "csp.faulted";

/// The service.
#[derive(Debug, Clone)]
pub struct AccessLogs {
    /// Where the requests are counted.
    pub slo: Arc<SloMetrics>,
    /// Where the drills' tries go.
    pub xds: Arc<super::Xds>,
}

/// One entry of the drill log: a try of a drill's request by proxy `proxy`. None without the run header.
pub fn try_log(entry: &HttpAccessLogEntry, proxy: &str) -> Option<TryLog> {
    let common = entry.common_properties.clone().unwrap_or_default();
    let run = entry.request.as_ref()?.request_headers.get(crate::translate::fault::DRILL_HEADER)?.clone();
    let tag = |k: &str| common.custom_tags.get(k).filter(|v| !v.is_empty() && *v != "-").cloned();
    let start = common.start_time.as_ref().map(|t| t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos))?;
    let took = common
        .time_to_last_upstream_rx_byte
        .or(common.time_to_last_downstream_tx_byte)
        .map_or(0, |d| d.seconds.saturating_mul(1_000_000_000) + i64::from(d.nanos));
    Some(TryLog {
        run,
        proxy: proxy.to_owned(),
        start,
        end: start + took,
        faulted: tag(TAG_FAULTED).is_some_and(|f| f == "true"),
        channel: tag(TAG_CHANNEL).unwrap_or_default(),
        region: tag(TAG_REGION).unwrap_or_default(),
        status: entry.response.as_ref().and_then(|r| r.response_code).map_or(0, |c| c.value),
    })
}

/// One entry of the SLO log as the metrics read it.
pub fn request_log(entry: &HttpAccessLogEntry) -> RequestLog {
    let common = entry.common_properties.clone().unwrap_or_default();
    let tag = |k: &str| common.custom_tags.get(k).filter(|v| !v.is_empty() && *v != "-").cloned();
    let duration = common
        .time_to_last_downstream_tx_byte
        .map(|d| std::time::Duration::new(u64::try_from(d.seconds).unwrap_or(0), u32::try_from(d.nanos).unwrap_or(0)))
        .unwrap_or_default();
    RequestLog {
        route: common.route_name.clone(),
        channel: tag(TAG_CHANNEL),
        region: tag(TAG_REGION),
        fallback: tag(TAG_FALLBACK).is_some_and(|f| f != "false"),
        status: entry.response.as_ref().and_then(|r| r.response_code).map_or(0, |c| c.value),
        duration,
        timed_out: common.response_flags.as_ref().is_some_and(|f| f.upstream_request_timeout),
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLogs {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        let (mut log_name, mut proxy) = (String::new(), String::new());
        while let Some(message) = stream.next().await {
            let message = message?;
            if let Some(identifier) = &message.identifier {
                log_name.clone_from(&identifier.log_name);
                proxy = identifier.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
            }
            let Some(LogEntries::HttpLogs(logs)) = message.log_entries else { continue };
            if log_name == SLO_LOG {
                for entry in &logs.log_entry {
                    let _ = self.slo.record(&request_log(entry));
                }
            } else if log_name == DRILL_LOG {
                for t in logs.log_entry.iter().filter_map(|e| try_log(e, &proxy)) {
                    self.xds.drill_try(&t);
                }
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}
