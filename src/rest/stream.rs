//! REST streaming, both ways.
//!
//! Server streams are written as each message arrives, never buffered whole:
//! NDJSON by default (`{"result":…}` per line; a failure after the first
//! message as a last `{"error":…}` line, as grpc-gateway clients expect) or
//! server-sent events on `Accept: text/event-stream` (`id:` sequence numbers,
//! `data:` messages, a terminal `event: error`, heartbeat comments when idle).
//! The HTTP status waits for the first message, so a call that fails before
//! it gets a real error status.
//!
//! Client streams take an NDJSON (or JSON array) body and feed the backend
//! message by message as the body arrives; an `HttpBody` request streams the
//! raw body in chunks.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body as _, Frame};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::handler::{
    HTTP_BODY, RequestProblem, RestFrontEnd, StreamsItsRecord, check_json_content_type, http_body, http_from_metadata,
    takes_raw_body,
};
use super::json_split::JsonSplitter;
use super::response::{error_response, raw_http_body};
use super::router::Binding;
use crate::body::{Body, BoxError};
use crate::config::StreamFormat;
use crate::grpc_frame::{self, COMPRESSED, FrameDecoder};
use crate::status::{Code, Status};
use crate::telemetry::CallRecord;
use crate::transcode::{FieldViolation, JsonCodec, bad_request, status_json};

/// How long an SSE stream may stay silent before a heartbeat comment.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

/// The format a client asked for with `Accept`, else the configured default.
pub(crate) fn format_for(headers: &HeaderMap, default: StreamFormat) -> StreamFormat {
    let wants_sse = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if wants_sse { StreamFormat::Sse } else { default }
}

/// The next thing a gRPC response body yields.
enum Next {
    Message(Bytes),
    End(Status, HeaderMap),
}

/// Reads whole messages out of a gRPC response body.
struct MessageReader {
    body: Body,
    headers_status: Option<Status>,
    decoder: FrameDecoder,
    ended: bool,
}

impl MessageReader {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        loop {
            if self.ended {
                return Poll::Ready(Next::End(
                    Status::new(Code::Internal, "stream already ended"),
                    HeaderMap::new(),
                ));
            }
            match self.decoder.next_frame() {
                Ok(Some(frame)) if frame.flags & COMPRESSED != 0 => {
                    return self.end(Status::new(
                        Code::Internal,
                        "upstream sent a compressed message; REST needs identity encoding",
                    ));
                }
                Ok(Some(frame)) => return Poll::Ready(Next::Message(frame.data)),
                Ok(None) => {}
                Err(e) => {
                    return self.end(Status::new(
                        Code::ResourceExhausted,
                        format!("upstream response: {e} (transcoding.max_response_message)"),
                    ));
                }
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.decoder.push(&data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        let status = Status::from_headers(&trailers)
                            .unwrap_or_else(|| Status::new(Code::Internal, "upstream trailers carried no grpc-status"));
                        self.ended = true;
                        return Poll::Ready(Next::End(status, trailers));
                    }
                },
                Some(Err(e)) => {
                    return self.end(Status::new(Code::Unavailable, format!("upstream response failed: {e}")));
                }
                None => {
                    let status = match (self.decoder.finish(), self.headers_status.take()) {
                        (Err(e), _) => Status::new(Code::Internal, format!("upstream response: {e}")),
                        (Ok(()), Some(status)) => status,
                        (Ok(()), None) => Status::new(Code::Internal, "upstream response carried no grpc-status"),
                    };
                    return self.end(status);
                }
            }
        }
    }

    fn end(&mut self, status: Status) -> Poll<Next> {
        self.ended = true;
        Poll::Ready(Next::End(status, HeaderMap::new()))
    }
}

/// Answers a server-streaming call.
pub(crate) async fn respond(
    rest: &RestFrontEnd,
    binding: &Binding,
    upstream: Response<Body>,
    format: StreamFormat,
    problem: Option<RequestProblem>,
    record: CallRecord,
) -> Response<Body> {
    let (parts, body) = upstream.into_parts();
    let stall = body.stall_limit();
    let mut reader = MessageReader {
        body,
        headers_status: Status::from_headers(&parts.headers),
        decoder: FrameDecoder::new(rest.max_response_message),
        ended: false,
    };
    let mut headers = HeaderMap::new();
    http_from_metadata(&mut headers, &parts.headers);
    let first = std::future::poll_fn(|cx| reader.poll_next(cx)).await;
    if let Some(violations) = problem.and_then(|p| p.lock().ok().and_then(|mut v| v.take())) {
        return rest.error(&bad_request(&violations));
    }
    let first = match first {
        Next::End(status, trailers) if status.code != Code::Ok => {
            http_from_metadata(&mut headers, &trailers);
            return error_response(&status, &rest.pool, &rest.codec, headers);
        }
        Next::End(_, trailers) => {
            http_from_metadata(&mut headers, &trailers);
            None
        }
        Next::Message(first) => Some(first),
    };
    let output = binding.method.descriptor.output();
    let raw = output.full_name() == HTTP_BODY && binding.response_body.is_none();
    let renderer = Renderer {
        output,
        response_body: binding.response_body.clone(),
        codec: rest.codec.clone(),
        pool: rest.pool.clone(),
        format: if raw { Format::Raw } else { format.into() },
        sequence: 0,
    };
    let content_type = match (&renderer.format, &first) {
        (Format::Raw, Some(first)) => DynamicMessage::decode(renderer.output.clone(), first.clone())
            .map(|m| raw_http_body(&m).0)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        (Format::Raw, None) => HeaderValue::from_static("application/octet-stream"),
        (Format::Ndjson, _) => HeaderValue::from_static("application/x-ndjson"),
        (Format::Sse, _) => HeaderValue::from_static("text/event-stream"),
    };
    if matches!(renderer.format, Format::Sse) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    headers.insert(CONTENT_TYPE, content_type);
    let heartbeat = matches!(renderer.format, Format::Sse).then(|| Box::pin(tokio::time::sleep(SSE_HEARTBEAT)));
    let streaming = first.is_some();
    let stream = EventStream {
        reader,
        renderer,
        pending: first,
        done: false,
        heartbeat,
        record: Some(record),
    };
    let mut response = Response::new(Body::new(stream));
    *response.headers_mut() = headers;
    *response.status_mut() = StatusCode::OK;
    if streaming {
        response.extensions_mut().insert(StreamsItsRecord);
    }
    // So the server can end the call if the client stops reading.
    if let Some(stall) = stall {
        response.extensions_mut().insert(stall);
    }
    response
}

enum Format {
    Ndjson,
    Sse,
    Raw,
}

impl From<StreamFormat> for Format {
    fn from(format: StreamFormat) -> Self {
        match format {
            StreamFormat::Ndjson => Format::Ndjson,
            StreamFormat::Sse => Format::Sse,
        }
    }
}

/// Turns response messages and the final status into output bytes.
struct Renderer {
    output: MessageDescriptor,
    response_body: Option<String>,
    codec: JsonCodec,
    pool: DescriptorPool,
    format: Format,
    sequence: u64,
}

impl Renderer {
    fn message(&mut self, bytes: Bytes) -> Result<Bytes, Status> {
        let printed = match (&self.format, &self.response_body) {
            (Format::Raw, _) => None,
            (_, None) => self.codec.print_encoded(&self.output, &bytes),
            (_, Some(field)) => self.codec.print_encoded_field(&self.output, field, &bytes),
        };
        let json = match printed {
            Some(json) => json,
            None => {
                let message = DynamicMessage::decode(self.output.clone(), bytes)
                    .map_err(|e| Status::new(Code::Internal, format!("cannot decode an upstream message: {e}")))?;
                match (&self.format, &self.response_body) {
                    (Format::Raw, _) => return Ok(Bytes::from(raw_http_body(&message).1)),
                    (_, Some(field)) => self.codec.print_field(&message, field),
                    (_, None) => self.codec.print(&message),
                }
            }
        };
        let mut out = BytesMut::with_capacity(json.len() + 24);
        match self.format {
            Format::Ndjson => {
                out.extend_from_slice(b"{\"result\":");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"}\n");
            }
            Format::Sse => {
                out.extend_from_slice(format!("id: {}\ndata: ", self.sequence).as_bytes());
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\n\n");
            }
            Format::Raw => {}
        }
        self.sequence += 1;
        Ok(out.freeze())
    }

    /// The last chunk for a failed stream (nothing for a raw body, which has no way to say it).
    fn error(&self, status: &Status) -> Option<Bytes> {
        let json = status_json(status, &self.pool, &self.codec);
        let mut out = Vec::with_capacity(json.len() + 24);
        match self.format {
            Format::Ndjson => {
                out.extend_from_slice(b"{\"error\":");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"}\n");
            }
            Format::Sse => {
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\n\n");
            }
            Format::Raw => return None,
        }
        Some(Bytes::from(out))
    }
}

/// The body of a REST server stream.
struct EventStream {
    reader: MessageReader,
    renderer: Renderer,
    pending: Option<Bytes>,
    done: bool,
    heartbeat: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Finished when the stream ends; dropped unfinished (CANCELLED) if the client leaves.
    record: Option<CallRecord>,
}

impl EventStream {
    fn finish(&mut self, status: &Status) {
        if let Some(record) = self.record.take() {
            record.finish(status);
        }
    }
}

impl http_body::Body for EventStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let next = match this.pending.take() {
            Some(message) => Next::Message(message),
            None => match this.reader.poll_next(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    if let Some(heartbeat) = &mut this.heartbeat
                        && heartbeat.as_mut().poll(cx).is_ready()
                    {
                        heartbeat.as_mut().reset(tokio::time::Instant::now() + SSE_HEARTBEAT);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": keepalive\n\n")))));
                    }
                    return Poll::Pending;
                }
            },
        };
        if let Some(heartbeat) = &mut this.heartbeat {
            heartbeat.as_mut().reset(tokio::time::Instant::now() + SSE_HEARTBEAT);
        }
        let failed = match next {
            Next::Message(bytes) => match this.renderer.message(bytes) {
                Ok(chunk) => {
                    if let Some(record) = &this.record {
                        record.add_messages(false, 1);
                        record.add_bytes(false, chunk.len());
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(status) => status,
            },
            Next::End(status, _) if status.code == Code::Ok => {
                this.done = true;
                this.finish(&status);
                return Poll::Ready(None);
            }
            Next::End(status, _) => status,
        };
        this.done = true;
        this.finish(&failed);
        match this.renderer.error(&failed) {
            Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            None => Poll::Ready(Some(Err(failed.to_string().into()))),
        }
    }
}

use std::future::Future as _;

/// The upstream request body of a client-streaming call: messages parsed from
/// NDJSON or a JSON array as the body arrives (or raw chunks for `HttpBody`),
/// each sent as one gRPC frame. A malformed message stops the stream and is
/// reported through the returned handle.
pub(crate) fn request_stream(
    rest: &RestFrontEnd,
    binding: &Binding,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Body, RequestProblem), (StatusCode, Status)> {
    let input = binding.method.descriptor.input();
    let raw = takes_raw_body(binding);
    if !raw {
        check_json_content_type(headers)?;
    }
    let problem = RequestProblem::default();
    let stream = JsonToFrames {
        body,
        input,
        raw_content_type: raw.then(|| headers.clone()),
        codec: rest.codec.clone(),
        splitter: JsonSplitter::new(rest.max_request_body),
        problem: problem.clone(),
        index: 0,
        finished: false,
    };
    Ok((Body::new(stream), problem))
}

struct JsonToFrames {
    body: Body,
    input: MessageDescriptor,
    /// For `HttpBody` streams: the request headers (for the content type).
    raw_content_type: Option<HeaderMap>,
    codec: JsonCodec,
    splitter: JsonSplitter,
    problem: RequestProblem,
    index: usize,
    finished: bool,
}

impl JsonToFrames {
    fn fail(&mut self, violation: FieldViolation) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finished = true;
        let text = violation.to_string();
        if let Ok(mut slot) = self.problem.lock() {
            *slot = Some(vec![violation]);
        }
        Poll::Ready(Some(Err(text.into())))
    }

    fn frame(&mut self, json: &[u8]) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let index = self.index;
        self.index += 1;
        match self.codec.parse(self.input.clone(), json, "") {
            Ok(message) => Poll::Ready(Some(Ok(Frame::data(grpc_frame::encode(0, &message.encode_to_vec()))))),
            Err(mut violation) => {
                violation.description = format!("message {index} of the stream: {}", violation.description);
                self.fail(violation)
            }
        }
    }
}

impl http_body::Body for JsonToFrames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if this.raw_content_type.is_none() {
                match this.splitter.next_value() {
                    Ok(Some(value)) => return this.frame(&value),
                    Ok(None) => {}
                    Err(why) => return this.fail(FieldViolation::new("", why)),
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match &this.raw_content_type {
                        Some(headers) => {
                            if data.is_empty() {
                                continue;
                            }
                            let message = http_body(&this.input, headers, data);
                            return Poll::Ready(Some(Ok(Frame::data(grpc_frame::encode(0, &message.encode_to_vec())))));
                        }
                        None => this.splitter.push(&data),
                    }
                }
                Some(Err(e)) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    if this.raw_content_type.is_none() {
                        if let Err(why) = this.splitter.finish() {
                            return this.fail(FieldViolation::new("", why));
                        }
                        if let Ok(Some(value)) = this.splitter.next_value() {
                            return this.frame(&value);
                        }
                    }
                    this.finished = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}
