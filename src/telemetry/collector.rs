//! Metrics read at scrape time from what the gateway already tracks: per
//! upstream and endpoint (calls by code, in flight, connections, streams,
//! latency estimate, ejections by reason, health, state), per upstream
//! (limits, overflows, retries and the retry budget), certificates (expiry
//! and reloads), and the process (memory, open connections, build info).
//! Reading snapshots at scrape time keeps these off the call path.

use std::fmt;
use std::sync::{OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;

use crate::gateway::GatewayInner;

/// Reads gateway state on every scrape.
#[derive(Default)]
pub(crate) struct GatewayCollector {
    pub(crate) gateway: OnceLock<Weak<GatewayInner>>,
}

impl fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointCodeLabels {
    upstream: String,
    endpoint: String,
    grpc_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EjectionLabels {
    upstream: String,
    endpoint: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    upstream: String,
    endpoint: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    upstream: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    side: String,
    role: String,
    file: String,
    subject: String,
    serial: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    side: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// One metric family of constant values.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One metric without labels.
fn single<M: EncodeMetric>(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: M) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, value.metric_type())?;
    value.encode(metric)
}

const STATES: [&str; 6] = ["healthy", "ejected", "probing", "unhealthy", "draining", "backing_off"];

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(inner) = self.gateway.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let clusters = inner.upstream_snapshot();
        let e = &mut encoder;
        let endpoints = || {
            clusters
                .iter()
                .flat_map(|c| c.endpoints.iter().map(move |e| (c.name.as_str(), e)))
        };
        let at = |upstream: &str, e: &crate::upstream::EndpointSnapshot| EndpointLabels {
            upstream: upstream.to_string(),
            endpoint: e.target.clone(),
        };
        family(
            e,
            "grpc_edge_upstream_calls",
            "Calls finished by an upstream endpoint, by gRPC code",
            MetricType::Counter,
            endpoints().flat_map(|(u, ep)| {
                ep.calls_by_code.iter().map(move |(code, n)| {
                    (
                        EndpointCodeLabels {
                            upstream: u.to_string(),
                            endpoint: ep.target.clone(),
                            grpc_code: code.to_string(),
                        },
                        ConstCounter::new(*n),
                    )
                })
            }),
        )?;
        family(
            e,
            "grpc_edge_upstream_failures",
            "Calls counted against the endpoint by outlier detection",
            MetricType::Counter,
            endpoints().map(|(u, ep)| (at(u, ep), ConstCounter::new(ep.failures))),
        )?;
        family(
            e,
            "grpc_edge_upstream_enhance_your_calm",
            "Connections the endpoint closed with GOAWAY(ENHANCE_YOUR_CALM), judging the gateway's traffic abusive \
             (typically: many streams it read already cancelled, after it stalled)",
            MetricType::Counter,
            endpoints().map(|(u, ep)| (at(u, ep), ConstCounter::new(ep.enhance_your_calm))),
        )?;
        family(
            e,
            "grpc_edge_upstream_in_flight",
            "Calls in flight on the endpoint",
            MetricType::Gauge,
            endpoints().map(|(u, ep)| (at(u, ep), ConstGauge::new(i64::from(ep.in_flight)))),
        )?;
        family(
            e,
            "grpc_edge_upstream_connections",
            "Open HTTP/2 connections to the endpoint",
            MetricType::Gauge,
            endpoints().map(|(u, ep)| (at(u, ep), ConstGauge::new(ep.connections.len() as i64))),
        )?;
        family(
            e,
            "grpc_edge_upstream_streams",
            "HTTP/2 streams in use on the endpoint's connections",
            MetricType::Gauge,
            endpoints().map(|(u, ep)| {
                (
                    at(u, ep),
                    ConstGauge::new(ep.connections.iter().map(|n| i64::from(*n)).sum::<i64>()),
                )
            }),
        )?;
        family(
            e,
            "grpc_edge_upstream_latency_ewma_seconds",
            "The balancer's peak-EWMA latency estimate of the endpoint",
            MetricType::Gauge,
            endpoints().map(|(u, ep)| (at(u, ep), ConstGauge::new(ep.rtt_ms / 1000.0))),
        )?;
        family(
            e,
            "grpc_edge_upstream_ejections",
            "Ejections by outlier detection, by reason",
            MetricType::Counter,
            endpoints().flat_map(|(u, ep)| {
                ep.ejections_by_reason.iter().map(move |(reason, n)| {
                    (
                        EjectionLabels {
                            upstream: u.to_string(),
                            endpoint: ep.target.clone(),
                            reason: reason.to_string(),
                        },
                        ConstCounter::new(*n),
                    )
                })
            }),
        )?;
        family(
            e,
            "grpc_edge_upstream_state",
            "1 for the endpoint's current state (healthy, ejected, probing, unhealthy, draining, backing_off)",
            MetricType::Gauge,
            endpoints().flat_map(|(u, ep)| {
                STATES.iter().map(move |state| {
                    (
                        StateLabels {
                            upstream: u.to_string(),
                            endpoint: ep.target.clone(),
                            state: state.to_string(),
                        },
                        ConstGauge::new(i64::from(ep.state == *state)),
                    )
                })
            }),
        )?;
        family(
            e,
            "grpc_edge_upstream_health_check_healthy",
            "Active health check verdict: 1 healthy or not checked, 0 unhealthy",
            MetricType::Gauge,
            endpoints().map(|(u, ep)| (at(u, ep), ConstGauge::new(i64::from(ep.health != "unhealthy")))),
        )?;
        let upstream = |c: &crate::upstream::ClusterSnapshot| UpstreamLabels {
            upstream: c.name.clone(),
        };
        let clusters_ref = &clusters;
        family(
            e,
            "grpc_edge_upstream_overflows",
            "Calls refused at once because a limit was reached (never counted against an endpoint)",
            MetricType::Counter,
            clusters_ref.iter().flat_map(|c| {
                c.overflows.iter().map(move |(limit, n)| {
                    (
                        LimitLabels {
                            upstream: c.name.clone(),
                            limit: limit.clone(),
                        },
                        ConstCounter::new(*n),
                    )
                })
            }),
        )?;
        family(
            e,
            "grpc_edge_upstream_pending",
            "Calls waiting for a connection or stream slot",
            MetricType::Gauge,
            clusters_ref
                .iter()
                .map(|c| (upstream(c), ConstGauge::new(i64::from(c.pending)))),
        )?;
        family(
            e,
            "grpc_edge_upstream_retries",
            "Retries made on retry.on codes",
            MetricType::Counter,
            clusters_ref.iter().map(|c| (upstream(c), ConstCounter::new(c.retries))),
        )?;
        family(
            e,
            "grpc_edge_upstream_retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            MetricType::Counter,
            clusters_ref
                .iter()
                .map(|c| (upstream(c), ConstCounter::new(c.retries_refused_by_budget))),
        )?;
        let certs = inner.certs();
        let sides: Vec<(String, crate::tls::TlsStatus)> = certs
            .listener
            .into_iter()
            .map(|s| ("listener".to_string(), s))
            .chain(
                certs
                    .upstreams
                    .into_iter()
                    .map(|(name, s)| (format!("upstream:{name}"), s)),
            )
            .collect();
        family(
            e,
            "grpc_edge_certificate_expiry_timestamp_seconds",
            "Not-after time of every loaded certificate (Unix seconds)",
            MetricType::Gauge,
            sides.iter().flat_map(|(side, status)| {
                status.certificates.iter().map(move |c| {
                    (
                        CertLabels {
                            side: side.clone(),
                            role: serde_json::to_value(c.role)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            file: c.file.display().to_string(),
                            subject: c.subject.clone(),
                            serial: c.serial.clone(),
                        },
                        ConstGauge::new(c.not_after),
                    )
                })
            }),
        )?;
        family(
            e,
            "grpc_edge_certificate_reloads",
            "Certificate reloads from disk, by result (an error keeps the previous certificates)",
            MetricType::Counter,
            sides.iter().flat_map(|(side, status)| {
                [("success", status.reloads), ("error", status.reload_errors)].map(|(result, n)| {
                    (
                        ReloadLabels {
                            side: side.clone(),
                            result: result.to_string(),
                        },
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        single(
            e,
            "grpc_edge_open_connections",
            "Client connections open now",
            ConstGauge::new(inner.open_connections() as i64),
        )?;
        single(
            e,
            "grpc_edge_premature_reset_closes",
            "Client connections closed for resetting most of their streams early (rapid reset)",
            ConstCounter::new(inner.premature_reset_closes()),
        )?;
        single(
            e,
            "grpc_edge_connections_over_limit",
            "Client connections closed as soon as accepted, at the connection limit",
            ConstCounter::new(inner.connections_over_limit()),
        )?;
        single(
            e,
            "process_resident_memory_bytes",
            "Resident memory of the gateway process",
            ConstGauge::new(resident_memory_bytes() as i64),
        )?;
        // An OpenMetrics info family (`grpc_edge_build`, sample
        // `grpc_edge_build_info`); the text format shows it as a gauge.
        single(
            e,
            "grpc_edge_build",
            "The running version (always 1)",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        )?;
        Ok(())
    }
}

/// `VmRSS` from /proc (0 where there is none).
fn resident_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}
