//! Active health checks: `grpc.health.v1.Health/Check` on every endpoint
//! every `interval`, over the endpoint's own pooled connections. After
//! `unhealthy_threshold` failed checks in a row (NOT_SERVING, SERVICE_UNKNOWN,
//! a timeout or a transport error) the endpoint takes no traffic; after
//! `healthy_threshold` SERVING answers in a row it takes traffic again. A
//! backend that does not implement the health service counts as healthy
//! (logged once), so turning checks on never takes a working fleet down.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use prost::Message;

use super::endpoint::{Endpoint, Health};
use super::limits::Limits;
use crate::status::{Code, Status};

/// `upstreams.*.health_check`.
#[derive(Clone, Debug)]
pub(crate) struct HealthSettings {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) unhealthy_threshold: u32,
    pub(crate) healthy_threshold: u32,
    pub(crate) service: String,
}

impl HealthSettings {
    pub(crate) fn from_config(config: &crate::config::HealthCheck) -> Self {
        Self {
            interval: config.interval.get(),
            timeout: config.timeout.get(),
            unhealthy_threshold: config.unhealthy_threshold,
            healthy_threshold: config.healthy_threshold,
            service: config.service.clone(),
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Serving,
    NotServing(String),
    /// The backend has no health service: treated as healthy.
    Unimplemented,
}

/// Checks one endpoint until it is dropped or drained.
pub(crate) async fn run(endpoint: Weak<Endpoint>, settings: HealthSettings, limits: Arc<Limits>) {
    // Spread the checks of many endpoints over the interval.
    tokio::time::sleep(settings.interval.mul_f64(fastrand::f64())).await;
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut told_unimplemented = false;
    loop {
        ticker.tick().await;
        let Some(endpoint) = endpoint.upgrade() else {
            return;
        };
        if endpoint.is_draining() {
            return;
        }
        let verdict = match tokio::time::timeout(settings.timeout, check(&endpoint, &settings.service, &limits)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(why)) => Verdict::NotServing(why),
            Err(_) => Verdict::NotServing(format!("no answer within {:?}", settings.timeout)),
        };
        match verdict {
            Verdict::Serving | Verdict::Unimplemented => {
                if verdict == Verdict::Unimplemented && !told_unimplemented {
                    told_unimplemented = true;
                    tracing::info!(endpoint = %endpoint.target, "backend does not implement grpc.health.v1; counting it healthy");
                }
                failed = 0;
                passed = passed.saturating_add(1);
                if passed >= settings.healthy_threshold && endpoint.health() != Health::Healthy {
                    tracing::info!(endpoint = %endpoint.target, "health check: healthy");
                    endpoint.set_health(Health::Healthy);
                }
            }
            Verdict::NotServing(why) => {
                passed = 0;
                failed = failed.saturating_add(1);
                if failed >= settings.unhealthy_threshold && endpoint.health() != Health::Unhealthy {
                    tracing::warn!(endpoint = %endpoint.target, %why, "health check: unhealthy");
                    endpoint.set_health(Health::Unhealthy);
                }
            }
        }
    }
}

async fn check(endpoint: &Endpoint, service: &str, limits: &Arc<Limits>) -> Result<Verdict, String> {
    // A native gRPC call: it may share a relay connection (`Pool::acquire`).
    let slot = endpoint
        .pool
        .acquire(None, limits, super::pool::ConnKind::Relay)
        .await
        .map_err(|e| e.to_string())?;
    let uri = format!("http://{}/grpc.health.v1.Health/Check", endpoint.authority);
    let mut head = Request::new(());
    *head.method_mut() = http::Method::POST;
    *head.uri_mut() = uri.parse().map_err(|e| format!("{e}"))?;
    *head.version_mut() = http::Version::HTTP_2;
    head.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head.headers_mut()
        .insert(http::header::TE, HeaderValue::from_static("trailers"));
    let (response, mut send) = slot.send_request(head, false).map_err(|e| e.to_string())?;
    let request = HealthCheckRequest {
        service: service.to_string(),
    }
    .encode_to_vec();
    send.send_data(crate::grpc_frame::encode(0, &request), true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if let Some(status) = Status::from_headers(response.headers()) {
        return verdict_for_status(&status, None);
    }
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > 1024 {
            return Err("health response too large".into());
        }
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?.unwrap_or_default();
    let status = Status::from_headers(&trailers).ok_or("health response carried no grpc-status")?;
    let message = data.get(5..).map(HealthCheckResponse::decode);
    verdict_for_status(&status, message.and_then(Result::ok))
}

fn verdict_for_status(status: &Status, message: Option<HealthCheckResponse>) -> Result<Verdict, String> {
    match (status.code, message) {
        (Code::Unimplemented, _) => Ok(Verdict::Unimplemented),
        (Code::Ok, Some(response)) if response.status == SERVING => Ok(Verdict::Serving),
        (Code::Ok, Some(response)) => Ok(Verdict::NotServing(format!("status {}", serving_name(response.status)))),
        (Code::Ok, None) => Err("health response had no message".into()),
        (code, _) => Ok(Verdict::NotServing(format!("{code}: {}", status.message))),
    }
}

fn serving_name(status: i32) -> &'static str {
    match status {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "unrecognized",
    }
}
