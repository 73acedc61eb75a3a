//! REST answers: the unary response (one message rendered as JSON, a
//! `response_body` field, or a raw `google.api.HttpBody`), with response
//! metadata and trailers as HTTP headers; and the error body,
//! `google.rpc.Status` as JSON under the HTTP status of its code.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, ReflectMessage, Value};

use super::handler::{HTTP_BODY, RequestProblem, RestFrontEnd, http_from_metadata};
use super::router::Binding;
use crate::body::Body;
use crate::grpc_frame::{COMPRESSED, FrameDecoder};
use crate::status::{Code, Status};
use crate::transcode::{JsonCodec, bad_request, status_json};

const JSON: &str = "application/json";

/// The REST error answer for a status.
pub(crate) fn error_response(
    status: &Status,
    pool: &DescriptorPool,
    codec: &JsonCodec,
    headers: HeaderMap,
) -> Response<Body> {
    let mut response = Response::new(Body::full(status_json(status, pool, codec)));
    *response.status_mut() = status.code.http_status();
    // For the call record: the code behind this answer.
    response.extensions_mut().insert(status.clone());
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    if status.code == Code::Unavailable {
        // Let well-behaved clients back off instead of retrying at once.
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// What a gRPC response body held: its messages and its final status.
pub(crate) struct Collected {
    pub(crate) messages: Vec<Bytes>,
    pub(crate) status: Status,
    pub(crate) trailers: HeaderMap,
}

/// Reads a whole unary gRPC response: every frame (each checked against the
/// limit before it is buffered) and the status from trailers or headers.
pub(crate) async fn collect(headers: &HeaderMap, mut body: Body, limit: usize) -> Collected {
    let mut decoder = FrameDecoder::new(limit);
    let mut messages = Vec::new();
    let mut trailers = HeaderMap::new();
    let mut failure: Option<Status> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                failure = Some(Status::new(Code::Unavailable, format!("upstream response failed: {e}")));
                break;
            }
        };
        match frame.into_data() {
            Ok(data) => {
                decoder.push(&data);
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) if frame.flags & COMPRESSED != 0 => {
                            failure = Some(Status::new(
                                Code::Internal,
                                "upstream sent a compressed message; REST needs identity encoding",
                            ));
                            break;
                        }
                        Ok(Some(frame)) => messages.push(frame.data),
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(Status::new(
                                Code::ResourceExhausted,
                                format!("upstream response: {e} (transcoding.max_response_message)"),
                            ));
                            break;
                        }
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = t;
                }
            }
        }
    }
    if failure.is_none()
        && let Err(e) = decoder.finish()
    {
        failure = Some(Status::new(Code::Internal, format!("upstream response: {e}")));
    }
    let status = failure
        .or_else(|| Status::from_headers(&trailers))
        .or_else(|| Status::from_headers(headers))
        .unwrap_or_else(|| Status::new(Code::Internal, "upstream response carried no grpc-status"));
    Collected {
        messages,
        status,
        trailers,
    }
}

/// Renders a unary gRPC response as the REST answer.
pub(crate) async fn unary(
    rest: &RestFrontEnd,
    binding: &Binding,
    upstream: Response<Body>,
    problem: Option<RequestProblem>,
) -> Response<Body> {
    let (parts, body) = upstream.into_parts();
    let collected = collect(&parts.headers, body, rest.max_response_message).await;
    if let Some(violations) = problem.and_then(|p| p.lock().ok().and_then(|mut v| v.take())) {
        return rest.error(&bad_request(&violations));
    }
    let mut headers = HeaderMap::new();
    http_from_metadata(&mut headers, &parts.headers);
    http_from_metadata(&mut headers, &collected.trailers);
    if collected.status.code != Code::Ok {
        return error_response(&collected.status, &rest.pool, &rest.codec, headers);
    }
    let [message] = collected.messages.as_slice() else {
        let status = Status::new(
            Code::Internal,
            format!("upstream sent {} messages for a unary call", collected.messages.len()),
        );
        return error_response(&status, &rest.pool, &rest.codec, headers);
    };
    let output = binding.method.descriptor.output();
    let printed = match &binding.response_body {
        None => rest.codec.print_encoded(&output, message),
        Some(field) => rest.codec.print_encoded_field(&output, field, message),
    };
    if let Some(json) = printed {
        let mut response = Response::new(Body::full(json));
        *response.headers_mut() = headers;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
        return response;
    }
    let decoded = match DynamicMessage::decode(output, message.clone()) {
        Ok(decoded) => decoded,
        Err(e) => {
            let status = Status::new(Code::Internal, format!("cannot decode the upstream response: {e}"));
            return error_response(&status, &rest.pool, &rest.codec, headers);
        }
    };
    let (content_type, body) = render(rest, binding, &decoded);
    let mut response = Response::new(Body::full(body));
    *response.headers_mut() = headers;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// Renders one response message: its `response_body` field or the whole
/// message, as JSON, or raw when it is a `google.api.HttpBody`.
pub(crate) fn render(rest: &RestFrontEnd, binding: &Binding, message: &DynamicMessage) -> (HeaderValue, Vec<u8>) {
    // A `google.api.HttpBody` (the answer itself, or the `response_body`
    // field) is sent raw. Looked up by descriptor: the message is never copied.
    match &binding.response_body {
        None if message.descriptor().full_name() == HTTP_BODY => return raw_http_body(message),
        None => {}
        Some(field) => {
            if let Some(f) = message.descriptor().get_field_by_name(field)
                && matches!(f.kind(), Kind::Message(m) if m.full_name() == HTTP_BODY)
                && let Value::Message(inner) = message.get_field(&f).as_ref()
            {
                return raw_http_body(inner);
            }
        }
    }
    let json = match &binding.response_body {
        Some(field) => rest.codec.print_field(message, field),
        None => rest.codec.print(message),
    };
    (HeaderValue::from_static(JSON), json)
}

/// The content type and bytes of a `google.api.HttpBody`.
pub(crate) fn raw_http_body(message: &DynamicMessage) -> (HeaderValue, Vec<u8>) {
    let content_type = match message.get_field_by_name("content_type").as_deref() {
        Some(Value::String(ct)) if !ct.is_empty() => {
            HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("application/octet-stream"))
        }
        _ => HeaderValue::from_static("application/octet-stream"),
    };
    let data = match message.get_field_by_name("data").as_deref() {
        Some(Value::Bytes(data)) => data.to_vec(),
        _ => Vec::new(),
    };
    (content_type, data)
}
