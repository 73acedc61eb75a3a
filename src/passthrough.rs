//! The native gRPC front end: routes a call by its `:path`, settles its
//! deadline, adds forwarding metadata and hands it to the upstream cluster.
//! Frames pass through untouched in both directions; nothing here reads a
//! message. The deadline and header rules here are shared with the other
//! front ends, which also end in an upstream gRPC call.

use std::time::Duration;

use http::{HeaderMap, Request, Response};
use tokio::time::Instant;

use crate::body::Body;
use crate::descriptors::CallKind;
use crate::gateway::{ConnInfo, Gateway};
use crate::grpc_timeout::{self, GRPC_TIMEOUT};
use crate::routing::RouteTarget;
use crate::status::{Code, Status};
use crate::telemetry::{self, Protocol};
use crate::upstream::{CallOptions, Deadline, add_forwarded};

/// Forwards one native gRPC call.
pub(crate) async fn forward(gateway: &Gateway, mut request: Request<Body>, conn: &ConnInfo) -> Response<Body> {
    let received = Instant::now();
    let refuse = |request: &Request<Body>, status: Status| {
        telemetry::refused(gateway, Protocol::Grpc, request.into(), conn, &status, 200);
        status.to_grpc_response()
    };
    let Some(target) = gateway.routes().resolve(request.uri().path()) else {
        return refuse(&request, unknown_method(request.uri().path()));
    };
    let options = match call_options(target, request.headers(), received) {
        Ok(options) => CallOptions {
            native: true,
            ..options
        },
        Err(status) => return refuse(&request, status),
    };
    if request.version() != http::Version::HTTP_2 {
        strip_connection_headers(request.headers_mut());
    }
    add_forwarded(request.headers_mut(), conn.forwarded_for.as_ref(), conn.scheme);
    let (request, record) = telemetry::begin_forward(
        gateway,
        Protocol::Grpc,
        request,
        conn,
        options.streaming,
        received.into_std(),
    );
    let mut response = target.upstream.call(request, options).await;
    telemetry::watch_response(record, &mut response);
    response
}

/// The deadline and idle timeout of a call: unary calls get the earlier of
/// the route's timeout and the client's `grpc-timeout`; streams get only the
/// client's, plus the route's idle timeout.
pub(crate) fn call_options(
    target: &RouteTarget,
    headers: &HeaderMap,
    received: Instant,
) -> Result<CallOptions, Status> {
    let client_timeout = match headers.get(GRPC_TIMEOUT) {
        None => None,
        Some(value) => Some(
            grpc_timeout::parse(value.as_bytes())
                .map_err(|error| Status::new(Code::InvalidArgument, error.to_string()))?,
        ),
    };
    let streaming = target.kind.is_none_or(|kind| kind.is_streaming());
    Ok(CallOptions {
        deadline: deadline(received, client_timeout, (!streaming).then_some(target.timeout)),
        idle_timeout: streaming.then_some(target.stream_idle_timeout),
        streaming,
        read_ahead: target
            .kind
            .is_some_and(|kind| matches!(kind, CallKind::Unary | CallKind::ServerStreaming)),
        native: false,
    })
}

/// The earlier of the client's `grpc-timeout` and the route's timeout.
pub(crate) fn deadline(received: Instant, client: Option<Duration>, route: Option<Duration>) -> Option<Deadline> {
    match (client, route) {
        (Some(c), Some(r)) if r < c => Some(Deadline {
            at: received + r,
            from_client: false,
        }),
        (Some(c), _) => Some(Deadline {
            at: received + c,
            from_client: true,
        }),
        (None, Some(r)) => Some(Deadline {
            at: received + r,
            from_client: false,
        }),
        (None, None) => None,
    }
}

/// The status for a path no route matches.
pub(crate) fn unknown_method(path: &str) -> Status {
    let shown: String = path.chars().take(256).collect();
    let message = match crate::routing::split_grpc_path(path) {
        Some((service, _)) => format!("unknown service {service}: no route matches {shown}"),
        None => format!("malformed gRPC path {shown:?}: expected /package.Service/Method"),
    };
    Status::new(Code::Unimplemented, message)
}

/// Removes headers that describe one HTTP/1.1 hop and must not travel upstream.
pub(crate) fn strip_connection_headers(headers: &mut HeaderMap) {
    use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
    if let Some(listed) = headers.get(CONNECTION).and_then(|v| v.to_str().ok()).map(str::to_owned) {
        for name in listed.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}
