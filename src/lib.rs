//! grpc-edge: one small edge server for gRPC.
//!
//! It loads protobuf descriptors and serves, on one port, native gRPC
//! (passed through frame by frame), and sends every call to a backend
//! chosen per request by a built-in L7 balancer over pooled HTTP/2
//! connections.
//!
//! # Layout
//!
//! - `config`: the YAML schema, units, loading with key-path errors, validation.
//! - `descriptors`: FileDescriptorSets and `.proto` files merged into one pool; the method registry.
//! - `routing`: gRPC path → upstream and timeouts.
//! - `passthrough`: the native gRPC front end.
//! - `upstream`: clusters, balancing, connection pools, calls.
//! - `server`: listeners, protocol detection, HTTP/2 and HTTP/1.1 serving, graceful shutdown.
//! - `tls`: listener and upstream TLS, certificate loading, validation, rotation and expiry.
//! - `status`, `grpc_timeout`, `body`: shared vocabulary.

#![warn(missing_docs)]

mod admin;
mod body;
mod builder;
mod builtin;
pub mod config;
mod cors;
pub mod descriptors;
mod embed;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
#[allow(dead_code)] // used by the REST and gRPC-Web front ends as they land
mod grpc_frame;
mod grpc_timeout;
mod grpc_web;
mod local;
#[cfg(feature = "cli")]
pub mod logging;
mod passthrough;
mod report;
mod rest;
mod routing;
pub mod server;
mod status;
mod telemetry;
pub mod tls;
mod transcode;
mod upstream;

#[cfg(feature = "demo")]
pub mod demo;

pub use body::Body;
pub use builder::GatewayBuilder;
pub use embed::{GatewayService, ShutdownHandle};
pub use gateway::{BuildError, CertsSnapshot, ConnInfo, Gateway};
pub use report::{check_warnings, route_lines};
pub use server::{ServeOptions, serve, serve_admin};
pub use status::{Code, Status};
pub use upstream::{ClusterSnapshot, DiscoverySnapshot, EndpointSnapshot, Resolve, SystemResolver};
