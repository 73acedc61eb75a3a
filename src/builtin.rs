//! The gateway's own gRPC services, served in-process on the main port:
//!
//! - `grpc.health.v1.Health`: the empty service name is the gateway itself
//!   (SERVING while it serves, NOT_SERVING once it drains); each routed
//!   service name is SERVING while its upstream has an endpoint in service.
//! - `grpc.reflection.v1` and `v1alpha`: every file of the descriptor pool,
//!   so `grpcurl -plaintext host:port list` and `describe` work through the
//!   gateway with no `.proto` files.

use std::sync::Weak;
use std::time::Duration;

use prost_reflect::DescriptorPool;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::local::LocalService;

/// The built-in services and the handle that sets health statuses.
pub(crate) struct Builtins {
    pub(crate) services: Vec<LocalService>,
    pub(crate) health: HealthReporter,
}

/// Builds health and reflection for `pool`.
pub(crate) fn builtins(pool: &DescriptorPool) -> Result<Builtins, String> {
    let (health, health_server) = tonic_health::server::health_reporter();
    let files = prost_types::FileDescriptorSet {
        file: pool.file_descriptor_protos().cloned().collect(),
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(files.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| format!("cannot build the reflection service: {e}"))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| format!("cannot build the reflection service: {e}"))?;
    Ok(Builtins {
        services: vec![
            LocalService::new("grpc.health.v1.Health", health_server),
            LocalService::new("grpc.reflection.v1.ServerReflection", v1),
            LocalService::new("grpc.reflection.v1alpha.ServerReflection", v1alpha),
        ],
        health,
    })
}

/// Keeps per-service health in step with upstream endpoints, every second,
/// until the gateway is dropped.
pub(crate) async fn track_services(gateway: Weak<crate::gateway::GatewayInner>, health: HealthReporter) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let Some(inner) = gateway.upgrade() else {
            return;
        };
        for (service, available) in inner.service_availability() {
            let status = if available {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(service, status).await;
        }
    }
}
