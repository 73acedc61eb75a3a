//! In-process services: a `tower::Service` — typically a tonic-generated
//! server — standing where a network upstream would. A call to it goes
//! through the same front ends (REST, gRPC-Web, native gRPC) and deadlines,
//! but as a direct tower call: no socket, no HTTP/2 framing round trip.
//!
//! The gateway's own `grpc.health.v1` and `grpc.reflection` services are
//! served this way too (see `builtin`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::body::{Body, BoxError};
use crate::status::{Code, Status};
use crate::upstream::CallOptions;

type Boxed = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// A service served in-process under its gRPC service name.
#[derive(Clone)]
pub(crate) struct LocalService {
    name: Arc<str>,
    service: Boxed,
}

impl LocalService {
    /// Wraps a tonic server (or any tower service speaking gRPC over HTTP) named `name`.
    pub(crate) fn new<S, B>(name: &str, service: S) -> Self
    where
        S: tower::Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            name: Arc::from(name),
            service: BoxCloneSyncService::new(service.map_response(|response| response.map(Body::new))),
        }
    }

    /// The gRPC service name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Calls the service, under the call's deadline (which it also receives as `grpc-timeout`).
    pub(crate) async fn call(&self, mut request: Request<Body>, options: CallOptions) -> Response<Body> {
        let deadline = options.deadline.map(|d| d.at);
        if let Some(at) = deadline {
            let remaining = at.saturating_duration_since(tokio::time::Instant::now());
            request.headers_mut().insert(
                crate::grpc_timeout::GRPC_TIMEOUT,
                crate::grpc_timeout::encode(remaining),
            );
        }
        let call = self.service.clone().oneshot(request);
        let result = match deadline {
            Some(at) => match tokio::time::timeout_at(at, call).await {
                Ok(result) => result,
                Err(_) => {
                    return Status::new(Code::DeadlineExceeded, "deadline exceeded (in-process service)")
                        .to_grpc_response();
                }
            },
            None => call.await,
        };
        match result {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}
