//! The REST request path: match the HttpRule binding, build the request
//! message from path variables, query parameters and the JSON (or raw
//! `HttpBody`) body, map HTTP headers to gRPC metadata, and make the
//! upstream gRPC call; then hand the response to `response` (unary) or
//! `stream` (server streaming).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage};
use tokio::time::Instant;

use super::router::{Binding, BodyRule, Lookup, RestRouter};
use super::{query, response, stream};
use crate::body::Body;
use crate::config::{StreamFormat, Transcoding, UnknownQueryParameters};
use crate::gateway::{ConnInfo, Gateway};
use crate::grpc_frame;
use crate::passthrough;
use crate::status::{Code, Status};
use crate::telemetry::{self, CallInfo, CallRecord, Protocol};
use crate::transcode::fields::{self, resolve_path};
use crate::transcode::{FieldViolation, JsonCodec, bad_request};
use crate::upstream::add_forwarded;

/// `google.api.HttpBody`: a raw body with its content type.
pub(crate) const HTTP_BODY: &str = "google.api.HttpBody";

/// Everything the REST front end needs, built once with the gateway.
pub(crate) struct RestFrontEnd {
    pub(crate) router: RestRouter,
    pub(crate) codec: JsonCodec,
    pub(crate) pool: DescriptorPool,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_message: usize,
    pub(crate) unknown_query: UnknownQueryParameters,
    pub(crate) default_stream_format: StreamFormat,
}

impl RestFrontEnd {
    pub(crate) fn new(router: RestRouter, pool: DescriptorPool, options: &Transcoding) -> Self {
        Self {
            router,
            codec: JsonCodec::for_pool(options, &pool),
            pool,
            max_request_body: options.max_request_body.as_usize(),
            max_response_message: options.max_response_message.as_usize(),
            unknown_query: options.unknown_query_parameters,
            default_stream_format: options.server_streaming,
        }
    }

    /// An error answer in the REST shape, with the HTTP status of its code.
    pub(crate) fn error(&self, status: &Status) -> Response<Body> {
        response::error_response(status, &self.pool, &self.codec, HeaderMap::new())
    }

    /// An error answer with an HTTP status other than its code's (413, 415).
    pub(crate) fn error_with(&self, (http, status): (StatusCode, Status)) -> Response<Body> {
        let mut response = self.error(&status);
        *response.status_mut() = http;
        response
    }
}

/// Marks a REST response whose body is a stream that finishes its own call record.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamsItsRecord;

/// Handles one REST request, and measures it.
pub(crate) async fn handle(
    gateway: &Gateway,
    rest: &RestFrontEnd,
    request: Request<Body>,
    conn: &ConnInfo,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let mut record = None;
    let response = serve(gateway, rest, &parts, body, conn, &mut record).await;
    let http_status = response.status().as_u16();
    let status = response.extensions().get::<Status>();
    match record {
        Some(record) => {
            record.set_http_status(http_status);
            match status {
                Some(status) => record.finish(status),
                None if response.extensions().get::<StreamsItsRecord>().is_some() => {}
                None => {
                    // The answer's message as the client gets it (a stream
                    // counts its messages' bytes as they go).
                    if let Some(len) = http_body::Body::size_hint(response.body()).exact() {
                        record.add_bytes(false, len as usize);
                    }
                    record.finish(&Status::new(Code::Ok, ""));
                }
            }
        }
        None => {
            let status = status.cloned().unwrap_or_else(|| Status::new(Code::Ok, ""));
            telemetry::refused(gateway, Protocol::Rest, (&parts).into(), conn, &status, http_status);
        }
    }
    response
}

async fn serve(
    gateway: &Gateway,
    rest: &RestFrontEnd,
    parts: &http::request::Parts,
    body: Body,
    conn: &ConnInfo,
    record: &mut Option<CallRecord>,
) -> Response<Body> {
    let received = Instant::now();
    let (binding, variables) = match rest.router.lookup(&parts.method, parts.uri.path()) {
        Lookup::Found { binding, variables } => (binding, variables),
        Lookup::MethodNotAllowed { allowed } => {
            return method_not_allowed(rest, &parts.method, parts.uri.path(), &allowed);
        }
        Lookup::NotFound => {
            let shown: String = parts.uri.path().chars().take(256).collect();
            let status = Status::new(Code::NotFound, format!("no route for {} {shown}", parts.method));
            return rest.error(&status);
        }
        Lookup::BadPath(why) => return rest.error(&bad_request(&[FieldViolation::new("", why)])),
    };
    let method = &binding.method;
    let Some(target) = gateway.routes().resolve(&method.path) else {
        return rest.error(&passthrough::unknown_method(&method.path));
    };
    let options = match passthrough::call_options(target, &parts.headers, received) {
        Ok(options) => options,
        Err(status) => return rest.error(&status),
    };

    let client_streaming = method.descriptor.is_client_streaming();
    let (mut upstream_body, request_problem) = if client_streaming {
        match stream::request_stream(rest, binding, &parts.headers, body) {
            Ok((body, problem)) => (body, Some(problem)),
            Err(rejection) => return rest.error_with(rejection),
        }
    } else {
        let bytes = match read_body(rest, &parts.headers, body, binding).await {
            Ok(bytes) => bytes,
            Err(rejection) => return rest.error_with(rejection),
        };
        let message = match build_message(rest, binding, &variables, parts.uri.query(), &parts.headers, bytes) {
            Ok(message) => message,
            Err(violations) => return rest.error(&bad_request(&violations)),
        };
        (Body::full(grpc_frame::encode(0, &message.encode_to_vec())), None)
    };

    let mut headers = metadata_from_http(&parts.headers);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    add_forwarded(&mut headers, conn.forwarded_for.as_ref(), conn.scheme);
    let Ok(uri) = method.path.parse() else {
        return rest.error(&Status::new(Code::Internal, format!("bad method path {}", method.path)));
    };
    let info = CallInfo {
        protocol: Protocol::Rest,
        grpc_path: &method.path,
        http_method: &parts.method,
        http_path: parts.uri.path(),
        streaming: options.streaming,
        received: received.into_std(),
    };
    let mut extensions = http::Extensions::new();
    let call = telemetry::begin(gateway, info, &mut headers, &mut extensions, &mut upstream_body, conn);
    *record = Some(call.clone());
    let mut upstream_request = Request::new(upstream_body);
    *upstream_request.method_mut() = Method::POST;
    *upstream_request.uri_mut() = uri;
    *upstream_request.headers_mut() = headers;
    *upstream_request.extensions_mut() = extensions;
    let upstream_response = target.upstream.call(upstream_request, options).await;
    if let Some(served) = upstream_response.extensions().get::<telemetry::Served>() {
        call.set_served(Some(served));
    }

    if method.descriptor.is_server_streaming() {
        let format = stream::format_for(&parts.headers, rest.default_stream_format);
        stream::respond(rest, binding, upstream_response, format, request_problem, call).await
    } else {
        response::unary(rest, binding, upstream_response, request_problem).await
    }
}

fn method_not_allowed(rest: &RestFrontEnd, method: &Method, path: &str, allowed: &[Method]) -> Response<Body> {
    let shown: String = path.chars().take(256).collect();
    let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let status = Status::new(
        Code::Unimplemented,
        format!("{method} is not allowed on {shown}; allowed: {}", list.join(", ")),
    );
    let mut response = rest.error(&status);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
        response.headers_mut().insert(ALLOW, value);
    }
    response
}

/// Reads a whole request body, refusing more than `max_request_body` (413)
/// and content types the binding cannot take (415).
async fn read_body(
    rest: &RestFrontEnd,
    headers: &HeaderMap,
    body: Body,
    binding: &Binding,
) -> Result<Bytes, (StatusCode, Status)> {
    let limit = rest.max_request_body;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Status::new(
                Code::ResourceExhausted,
                format!("request body exceeds transcoding.max_request_body ({limit} bytes)"),
            ),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    if matches!(binding.body, BodyRule::None) {
        // The binding takes no body; what was sent is not read.
        return Ok(Bytes::new());
    }
    if !takes_raw_body(binding) {
        check_json_content_type(headers)?;
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err((
            StatusCode::BAD_REQUEST,
            Status::new(Code::Cancelled, format!("reading the request body failed: {error}")),
        )),
    }
}

/// JSON bodies must say so (or say nothing); anything else is 415.
pub(crate) fn check_json_content_type(headers: &HeaderMap) -> Result<(), (StatusCode, Status)> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") || essence == "application/x-ndjson" {
        Ok(())
    } else {
        Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::new(
                Code::InvalidArgument,
                format!("unsupported content type \"{essence}\": send the body as application/json"),
            ),
        ))
    }
}

/// Whether the body is taken raw into a `google.api.HttpBody`.
pub(crate) fn takes_raw_body(binding: &Binding) -> bool {
    body_target(binding).is_some_and(|m| m.full_name() == HTTP_BODY)
}

/// The message type the body fills, when it is a message.
pub(crate) fn body_target(binding: &Binding) -> Option<MessageDescriptor> {
    let input = binding.method.descriptor.input();
    match &binding.body {
        BodyRule::None => None,
        BodyRule::Whole => Some(input),
        BodyRule::Field(path) => match resolve_path(&input, path).ok()?.last()?.kind() {
            Kind::Message(message) => Some(message),
            _ => None,
        },
    }
}

/// Builds the request message: body, then path variables, then query parameters.
pub(crate) fn build_message(
    rest: &RestFrontEnd,
    binding: &Binding,
    variables: &[(String, String)],
    query_string: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<DynamicMessage, Vec<FieldViolation>> {
    let input = binding.method.descriptor.input();
    let mut message = match &binding.body {
        BodyRule::None => DynamicMessage::new(input.clone()),
        BodyRule::Whole if input.full_name() == HTTP_BODY => http_body(&input, headers, body),
        BodyRule::Whole if body.iter().all(u8::is_ascii_whitespace) => DynamicMessage::new(input.clone()),
        BodyRule::Whole => rest.codec.parse(input.clone(), &body, "").map_err(|v| vec![v])?,
        BodyRule::Field(path) => body_field(rest, &input, path, headers, body).map_err(|v| vec![v])?,
    };
    let mut violations = Vec::new();
    for (path, value) in variables {
        if let Err(v) = fields::set_from_text(&mut message, path, &[value.as_str()]) {
            violations.push(v);
        }
    }
    if let Some(query_string) = query_string.filter(|q| !q.is_empty()) {
        match query::parse(query_string) {
            Ok(params) => apply_query(rest, binding, variables, &mut message, &params, &mut violations),
            Err(why) => violations.push(FieldViolation::new("", why)),
        }
    }
    if violations.is_empty() {
        Ok(message)
    } else {
        Err(violations)
    }
}

fn apply_query(
    rest: &RestFrontEnd,
    binding: &Binding,
    variables: &[(String, String)],
    message: &mut DynamicMessage,
    params: &[query::Param],
    violations: &mut Vec<FieldViolation>,
) {
    let input = message.descriptor();
    for param in params {
        let bound_by_body = match &binding.body {
            BodyRule::Whole => true,
            BodyRule::Field(body) => same_field_or_child(&input, &param.name, body),
            BodyRule::None => false,
        };
        let bound_by_path = variables
            .iter()
            .any(|(path, _)| same_field_or_child(&input, &param.name, path));
        // Known when its first segment names a field; deeper problems are
        // reported precisely by `set_from_text`.
        let first = param.name.split('.').next().unwrap_or_default();
        let known = input
            .get_field_by_name(first)
            .or_else(|| input.get_field_by_json_name(first))
            .is_some();
        if !known || bound_by_body {
            if rest.unknown_query == UnknownQueryParameters::Reject {
                let why = if known {
                    "unknown query parameter: this field is set by the request body".to_string()
                } else {
                    format!("unknown query parameter: {} has no such field", input.full_name())
                };
                violations.push(FieldViolation::new(&param.name, why));
            }
            continue;
        }
        if bound_by_path {
            violations.push(FieldViolation::new(&param.name, "already set by the URL path"));
            continue;
        }
        let values: Vec<&str> = param.values.iter().map(String::as_str).collect();
        if let Err(v) = fields::set_from_text(message, &param.name, &values) {
            violations.push(v);
        }
    }
}

/// Whether the field at `path` is `bound` or lies inside it (names in either JSON or proto form).
fn same_field_or_child(input: &MessageDescriptor, path: &str, bound: &str) -> bool {
    let (Ok(a), Ok(b)) = (resolve_path(input, path), resolve_path(input, bound)) else {
        return false;
    };
    a.len() >= b.len() && a.iter().zip(&b).all(|(x, y)| x == y)
}

/// Parses the body into one field (`body: "field"`), by wrapping it as
/// `{"a":{"b": BODY}}` so that errors carry the full field path.
fn body_field(
    rest: &RestFrontEnd,
    input: &MessageDescriptor,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<DynamicMessage, FieldViolation> {
    let chain = resolve_path(input, path)?;
    if let Some(Kind::Message(target)) = chain.last().map(|f| f.kind())
        && target.full_name() == HTTP_BODY
    {
        let mut message = DynamicMessage::new(input.clone());
        let raw = http_body(&target, headers, body);
        set_nested(&mut message, &chain, prost_reflect::Value::Message(raw));
        return Ok(message);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    let names: Vec<&str> = chain.iter().map(|f| f.json_name()).collect();
    let mut wrapped = Vec::with_capacity(body.len() + 16 * names.len());
    for name in &names {
        wrapped.extend_from_slice(b"{\"");
        wrapped.extend_from_slice(name.as_bytes());
        wrapped.extend_from_slice(b"\":");
    }
    wrapped.extend_from_slice(&body);
    wrapped.extend(std::iter::repeat_n(b'}', names.len()));
    rest.codec.parse(input.clone(), &wrapped, "").map_err(|mut v| {
        // Field paths come back in JSON names; report the body field as configured.
        if v.field.is_empty() {
            v.field = path.to_string();
        }
        v
    })
}

fn set_nested(message: &mut DynamicMessage, chain: &[prost_reflect::FieldDescriptor], value: prost_reflect::Value) {
    let Some((leaf, parents)) = chain.split_last() else {
        return;
    };
    let mut target = message;
    for parent in parents {
        match target.get_field_mut(parent) {
            prost_reflect::Value::Message(inner) => target = inner,
            _ => return,
        }
    }
    target.set_field(leaf, value);
}

/// A `google.api.HttpBody` holding the raw request body and its content type.
pub(crate) fn http_body(descriptor: &MessageDescriptor, headers: &HeaderMap, body: Bytes) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    message.set_field_by_name("content_type", prost_reflect::Value::String(content_type.to_string()));
    message.set_field_by_name("data", prost_reflect::Value::Bytes(body));
    message
}

/// Request headers that describe the HTTP exchange itself and are not gRPC metadata.
const HTTP_ONLY: [&str; 14] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-length",
    "content-type",
    "content-encoding",
    "accept",
    "accept-encoding",
    "expect",
    "http2-settings",
];

/// HTTP request headers → gRPC metadata: everything but HTTP-only and
/// hop-by-hop headers and the gRPC-reserved ones the gateway sets itself.
pub(crate) fn metadata_from_http(headers: &HeaderMap) -> HeaderMap {
    let mut metadata = HeaderMap::with_capacity(headers.len() + 4);
    let listed_in_connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in headers {
        let n = name.as_str();
        if HTTP_ONLY.contains(&n)
            || listed_in_connection.iter().any(|c| c == n)
            || (n.starts_with("grpc-") && n != "grpc-timeout")
        {
            continue;
        }
        metadata.append(name.clone(), value.clone());
    }
    metadata
}

/// Response metadata (headers and trailers of the gRPC response) → HTTP
/// response headers, without the gRPC-reserved ones.
pub(crate) fn http_from_metadata(into: &mut HeaderMap, metadata: &HeaderMap) {
    for (name, value) in metadata {
        let n = name.as_str();
        let reserved = n.starts_with("grpc-") && n != crate::upstream::OVERLOADED_HEADER;
        if reserved || n == "content-type" || n == "content-length" || n == "te" {
            continue;
        }
        into.append(HeaderName::clone(name), value.clone());
    }
}

/// Shared handle to a problem found while streaming the request body (a
/// malformed message in a client stream), reported instead of the upstream's answer.
pub(crate) type RequestProblem = Arc<std::sync::Mutex<Option<Vec<FieldViolation>>>>;
