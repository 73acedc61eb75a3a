//! The gRPC-Web front end: `application/grpc-web[+proto]` (binary) and
//! `application/grpc-web-text[+proto]` (base64), unary and server-streaming
//! calls, over HTTP/1.1 and HTTP/2.
//!
//! A call is routed like a native one (`passthrough`'s deadline and header
//! rules), its content type is rewritten to `application/grpc`, and its body
//! goes upstream as the frames the client sent — decoded from base64 in text
//! mode, checked frame by frame against `transcoding.max_request_body`, never
//! decoded into messages. The answer comes back in the encoding the client
//! asked for (`Accept`, else the request's own): the upstream's data as it
//! arrives, its trailers as the final gRPC-Web trailer frame (`codec`),
//! trailers-only answers as trailers-only answers. Every error the gateway
//! makes here is a gRPC-Web answer too: HTTP 200, the gRPC-Web content type,
//! `grpc-status` and `grpc-message` in the headers.
//!
//! This module owns protocol translation only; it opens no sockets, picks
//! no endpoint, and leaves CORS to `crate::cors`.

mod body;
pub(crate) mod codec;
pub(crate) mod text;

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::time::Instant;

use self::body::{Fault, RequestBody, ResponseBody};
use self::codec::RequestError;
use crate::body::Body;
use crate::gateway::{ConnInfo, Gateway};
use crate::passthrough::{call_options, strip_connection_headers, unknown_method};
use crate::status::{GRPC_STATUS, Status};
use crate::telemetry::{self, Protocol};
use crate::upstream::add_forwarded;

/// The gRPC-Web content type prefix; `-text` follows it for base64 bodies.
const GRPC_WEB: &[u8] = b"application/grpc-web";
/// What follows [`GRPC_WEB`] in a text-mode content type.
const TEXT_SUFFIX: &[u8] = b"-text";
/// The native gRPC content type prefix.
const GRPC: &[u8] = b"application/grpc";
/// The header gRPC-Web clients send to say what they are; not metadata.
const X_GRPC_WEB: http::HeaderName = http::HeaderName::from_static("x-grpc-web");

/// How a body is written on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// gRPC frames as they are (`application/grpc-web`).
    Binary,
    /// gRPC frames in base64 (`application/grpc-web-text`).
    Text,
}

impl Encoding {
    /// The response content type for the protobuf subtype.
    fn proto_content_type(self) -> HeaderValue {
        match self {
            Self::Binary => HeaderValue::from_static("application/grpc-web+proto"),
            Self::Text => HeaderValue::from_static("application/grpc-web-text+proto"),
        }
    }

    /// The response content type for the upstream's `application/grpc…` one:
    /// its subtype (`+proto`, `+json`) is kept, none means `+proto`.
    fn content_type_for(self, upstream: Option<&HeaderValue>) -> HeaderValue {
        let subtype = upstream
            .and_then(|value| value.as_bytes().strip_prefix(GRPC))
            .filter(|rest| rest.starts_with(b"+") && !rest.starts_with(b"+proto"));
        let Some(subtype) = subtype else {
            return self.proto_content_type();
        };
        let mut value = GRPC_WEB.to_vec();
        if self == Self::Text {
            value.extend_from_slice(TEXT_SUFFIX);
        }
        value.extend_from_slice(subtype);
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| self.proto_content_type())
    }
}

/// Splits a gRPC-Web content type into its encoding and its message
/// subtype (`""` or `+proto`, `+json`…; parameters dropped); `None` when it
/// is not a gRPC-Web content type.
fn parse_content_type(value: &[u8]) -> Option<(Encoding, &[u8])> {
    let rest = value.strip_prefix(GRPC_WEB)?;
    let (encoding, rest) = match rest.strip_prefix(TEXT_SUFFIX) {
        Some(rest) => (Encoding::Text, rest),
        None => (Encoding::Binary, rest),
    };
    let subtype = rest.split(|&b| b == b';').next().unwrap_or_default().trim_ascii_end();
    match subtype.first() {
        None | Some(b'+') => Some((encoding, subtype)),
        Some(_) => None,
    }
}

/// The response encoding: a gRPC-Web type named in `Accept` wins (text if
/// any text type is named), otherwise the request's own encoding.
fn response_encoding(headers: &HeaderMap, request: Encoding) -> Encoding {
    let mut named = None;
    for value in headers.get_all(ACCEPT) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let media = item.split(|&b| b == b';').next().unwrap_or_default();
            match parse_content_type(media.trim_ascii()) {
                Some((Encoding::Text, _)) => return Encoding::Text,
                Some((Encoding::Binary, _)) => named = Some(Encoding::Binary),
                None => {}
            }
        }
    }
    named.unwrap_or(request)
}

/// A gateway-made gRPC-Web answer: trailers-only, the status in the headers.
fn web_error(status: &Status, encoding: Encoding) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, encoding.proto_content_type());
    status.write_to(headers);
    response
}

/// A gateway-made gRPC-Web error for `request`, in the encoding it asked for.
pub(crate) fn error_response(status: &Status, request: &Request<Body>) -> Response<Body> {
    let encoding = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| parse_content_type(v.as_bytes()))
        .map_or(Encoding::Binary, |(encoding, _)| encoding);
    web_error(status, response_encoding(request.headers(), encoding))
}

/// A plain HTTP answer for a request that is not a gRPC-Web call at all.
fn http_error(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Body::full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

/// Handles one gRPC-Web call.
pub(crate) async fn handle(gateway: &Gateway, request: Request<Body>, conn: &ConnInfo) -> Response<Body> {
    let received = Instant::now();
    let content_type = request.headers().get(CONTENT_TYPE);
    let Some((encoding, subtype)) = content_type.and_then(|v| parse_content_type(v.as_bytes())) else {
        let shown = content_type.map_or("none".into(), |v| String::from_utf8_lossy(v.as_bytes()));
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content-type \"{shown}\": expected application/grpc-web[+proto] \
                 or application/grpc-web-text[+proto]"
            ),
        );
    };
    let upstream_content_type = upstream_content_type(subtype);
    let answer = response_encoding(request.headers(), encoding);
    if request.method() != Method::POST {
        return http_error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("gRPC-Web calls use POST, not {}", request.method()),
        );
    }
    let path = request.uri().path();
    let refuse = |status: Status| {
        telemetry::refused(gateway, Protocol::GrpcWeb, (&request).into(), conn, &status, 200);
        web_error(&status, answer)
    };
    let Some(target) = gateway.routes().resolve(path) else {
        return refuse(unknown_method(path));
    };
    let options = match call_options(target, request.headers(), received) {
        Ok(options) => options,
        Err(status) => return refuse(status),
    };
    if request.body().is_end_stream() {
        return refuse(RequestError::Empty.status());
    }

    let (mut parts, body) = request.into_parts();
    if parts.version != Version::HTTP_2 {
        strip_connection_headers(&mut parts.headers);
    }
    let headers = &mut parts.headers;
    headers.insert(CONTENT_TYPE, upstream_content_type);
    headers.insert(TE, HeaderValue::from_static("trailers"));
    for name in [X_GRPC_WEB, ACCEPT, CONTENT_LENGTH, EXPECT] {
        headers.remove(&name);
    }
    add_forwarded(headers, conn.forwarded_for.as_ref(), conn.scheme);

    let fault = Fault::default();
    let limit = gateway.config().transcoding.max_request_body.as_usize();
    let body = Body::new(RequestBody::new(body, encoding, limit, fault.clone()));
    let request = Request::from_parts(parts, body);
    let (request, record) = telemetry::begin_forward(
        gateway,
        Protocol::GrpcWeb,
        request,
        conn,
        options.streaming,
        received.into_std(),
    );
    let mut response = target.upstream.call(request, options).await;
    telemetry::watch_response(record, &mut response);
    into_web(response, answer, fault)
}

/// The upstream content type for what follows `application/grpc-web[-text]`.
fn upstream_content_type(subtype: &[u8]) -> HeaderValue {
    match subtype {
        b"" => HeaderValue::from_static("application/grpc"),
        b"+proto" => HeaderValue::from_static("application/grpc+proto"),
        other => {
            let mut value = GRPC.to_vec();
            value.extend_from_slice(other);
            HeaderValue::from_bytes(&value).unwrap_or_else(|_| HeaderValue::from_static("application/grpc"))
        }
    }
}

/// Turns the upstream's (or the cluster's own) gRPC answer into gRPC-Web.
fn into_web(response: Response<Body>, encoding: Encoding, fault: Fault) -> Response<Body> {
    if let Some(status) = fault.get() {
        return web_error(status, encoding);
    }
    let (mut parts, body) = response.into_parts();
    let content_type = encoding.content_type_for(parts.headers.get(CONTENT_TYPE));
    parts.headers.insert(CONTENT_TYPE, content_type);
    parts.headers.remove(CONTENT_LENGTH);
    if parts.headers.contains_key(GRPC_STATUS) {
        // Trailers-only: the status is in the headers and nothing follows.
        return Response::from_parts(parts, Body::empty());
    }
    // The wrapped body cannot be asked how long it may wait for the client.
    if let Some(stall) = body.stall_limit() {
        parts.extensions.insert(stall);
    }
    Response::from_parts(parts, Body::new(ResponseBody::new(body, encoding, fault)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_recognised_with_their_encoding() {
        for (value, expected) in [
            (&b"application/grpc-web"[..], Some((Encoding::Binary, &b""[..]))),
            (b"application/grpc-web+proto", Some((Encoding::Binary, b"+proto"))),
            (b"application/grpc-web-text", Some((Encoding::Text, b""))),
            (b"application/grpc-web-text+proto", Some((Encoding::Text, b"+proto"))),
            (b"application/grpc-web;charset=utf-8", Some((Encoding::Binary, b""))),
            (
                b"application/grpc-web-text+proto ; q=1",
                Some((Encoding::Text, b"+proto")),
            ),
            (b"application/grpc-web ;x=y", Some((Encoding::Binary, b""))),
            (b"application/grpc-webby", None),
            (b"application/grpc-web-textual", None),
            (b"application/grpc", None),
        ] {
            assert_eq!(parse_content_type(value), expected, "{value:?}");
        }
    }

    #[test]
    fn upstream_content_types_keep_the_subtype() {
        assert_eq!(upstream_content_type(b""), "application/grpc");
        assert_eq!(upstream_content_type(b"+proto"), "application/grpc+proto");
        assert_eq!(upstream_content_type(b"+json"), "application/grpc+json");
        let json = HeaderValue::from_static("application/grpc+json");
        assert_eq!(
            Encoding::Text.content_type_for(Some(&json)),
            "application/grpc-web-text+json"
        );
        for upstream in [None, Some(HeaderValue::from_static("application/grpc"))] {
            assert_eq!(
                Encoding::Binary.content_type_for(upstream.as_ref()),
                "application/grpc-web+proto"
            );
        }
    }

    #[test]
    fn accept_chooses_the_response_encoding() {
        let with_accept = |accept: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static(accept));
            headers
        };
        let none = HeaderMap::new();
        assert_eq!(response_encoding(&none, Encoding::Text), Encoding::Text);
        assert_eq!(response_encoding(&none, Encoding::Binary), Encoding::Binary);
        let text = with_accept("application/grpc-web-text");
        assert_eq!(response_encoding(&text, Encoding::Binary), Encoding::Text);
        let binary = with_accept("application/grpc-web+proto; q=1");
        assert_eq!(response_encoding(&binary, Encoding::Text), Encoding::Binary);
        let both = with_accept("application/grpc-web, application/grpc-web-text+proto");
        assert_eq!(response_encoding(&both, Encoding::Binary), Encoding::Text);
        let any = with_accept("*/*");
        assert_eq!(response_encoding(&any, Encoding::Text), Encoding::Text);
    }
}
