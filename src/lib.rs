//! grpc-edge
pub mod config;
pub mod descriptors;
