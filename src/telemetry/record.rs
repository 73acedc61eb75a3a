//! One call's telemetry: started when a front end has routed it, finished
//! once with the gRPC code the client sees — from trailers, from a
//! trailers-only answer, from the REST front end, or CANCELLED when the
//! client went away first. Finishing counts it in the metrics and writes the
//! access log line.
//!
//! A call's bodies carry an `Observer` that counts bytes (and, for streams,
//! messages) as frames pass and reads the final status from the response
//! trailers, without copying or decoding anything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::Telemetry;
use super::metrics::{MethodHandles, Protocol};
use crate::status::{Code, Status};

/// The longest request path an access log line carries, in bytes.
const MAX_LOGGED_PATH: usize = 512;

/// The upstream that served a call, put in the response extensions by the upstream side.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    pub(crate) endpoint: Arc<str>,
    pub(crate) retries: u32,
}

struct State {
    telemetry: Arc<Telemetry>,
    handles: Arc<MethodHandles>,
    protocol: Protocol,
    started: Instant,
    http_method: Method,
    path: String,
    client: Option<SocketAddr>,
    peer: Option<String>,
    trace: Option<super::trace::TraceContext>,
    /// The wall-clock start, read only for a call whose span is exported.
    wall_start: Option<std::time::SystemTime>,
    streaming: bool,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    messages_in: AtomicU32,
    messages_out: AtomicU32,
    http_status: AtomicU16,
    served: Mutex<Option<Served>>,
    finished: AtomicBool,
}

/// A call being measured; clones share one record.
#[derive(Clone)]
pub(crate) struct CallRecord {
    state: Arc<State>,
}

/// What a front end knows when it starts a record.
pub(crate) struct CallStart<'a> {
    pub(crate) protocol: Protocol,
    pub(crate) grpc_path: &'a str,
    pub(crate) http_method: &'a Method,
    pub(crate) http_path: &'a str,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) peer: Option<&'a str>,
    pub(crate) trace: Option<super::trace::TraceContext>,
    pub(crate) streaming: bool,
    /// When the request arrived (read once per call, shared with its deadline).
    pub(crate) started: Instant,
}

impl CallRecord {
    pub(crate) fn start(telemetry: &Arc<Telemetry>, start: CallStart<'_>) -> Self {
        let handles = telemetry.calls.for_path(start.protocol, start.grpc_path);
        if telemetry.metrics {
            handles.started.inc();
        }
        telemetry.in_flight.fetch_add(1, Ordering::Relaxed);
        let logging = telemetry.access_log.enabled;
        let exported = telemetry.exporter.is_some() && start.trace.is_some_and(|t| t.sampled);
        Self {
            state: Arc::new(State {
                telemetry: telemetry.clone(),
                handles,
                protocol: start.protocol,
                started: start.started,
                http_method: start.http_method.clone(),
                // At most 512 bytes of a hostile path go into the log.
                path: if logging {
                    start.http_path[..start.http_path.floor_char_boundary(MAX_LOGGED_PATH)].to_owned()
                } else {
                    String::new()
                },
                client: start.client,
                peer: start.peer.map(str::to_owned),
                trace: start.trace,
                wall_start: exported.then(std::time::SystemTime::now),
                streaming: start.streaming,
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                messages_in: AtomicU32::new(0),
                messages_out: AtomicU32::new(0),
                http_status: AtomicU16::new(200),
                served: Mutex::new(None),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// Whether stream messages are counted for this call.
    pub(crate) fn streaming(&self) -> bool {
        self.state.streaming
    }

    pub(crate) fn set_http_status(&self, status: u16) {
        self.state.http_status.store(status, Ordering::Relaxed);
    }

    pub(crate) fn set_served(&self, served: Option<&Served>) {
        if let (Some(served), Ok(mut slot)) = (served, self.state.served.lock()) {
            *slot = Some(served.clone());
        }
    }

    pub(crate) fn add_bytes(&self, inbound: bool, n: usize) {
        let counter = if inbound {
            &self.state.bytes_in
        } else {
            &self.state.bytes_out
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_messages(&self, inbound: bool, n: u32) {
        if n == 0 {
            return;
        }
        if inbound {
            self.state.messages_in.fetch_add(n, Ordering::Relaxed);
            if self.state.telemetry.metrics {
                self.state.handles.received.inc_by(u64::from(n));
            }
        } else {
            self.state.messages_out.fetch_add(n, Ordering::Relaxed);
            if self.state.telemetry.metrics {
                self.state.handles.sent.inc_by(u64::from(n));
            }
        }
    }

    /// Finishes the call with `status` (only the first finish counts).
    pub(crate) fn finish(&self, status: &Status) {
        self.state.finish(status.code, &status.message);
    }

    /// Finishes with the status of a trailers-only response, if it is one.
    pub(crate) fn finish_if_status_in(&self, headers: &HeaderMap) -> bool {
        match Code::in_headers(headers) {
            Some(Code::Ok) => self.state.finish(Code::Ok, ""),
            Some(_) => match Status::from_headers(headers) {
                Some(status) => self.finish(&status),
                None => return false,
            },
            None => return false,
        }
        true
    }
}

impl State {
    fn finish(&self, code: Code, message: &str) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        self.telemetry.in_flight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = crate::turn::now().into_std().saturating_duration_since(self.started);
        if self.telemetry.metrics {
            self.handles.finish(code, elapsed);
        }
        self.export_span(code, message);
        let log = &self.telemetry.access_log;
        if !log.enabled || (code == Code::Ok && log.sample_successes < 1.0 && fastrand::f64() >= log.sample_successes) {
            return;
        }
        let served = self.served.lock().ok().and_then(|s| s.clone());
        super::access_log::emit(&super::access_log::Entry {
            protocol: self.protocol.as_str(),
            http_method: self.http_method.as_str(),
            path: &self.path,
            grpc_service: &self.handles.service,
            grpc_method: &self.handles.method,
            upstream: served.as_ref().map_or("-", |s| &*s.endpoint),
            code,
            message,
            http_status: self.http_status.load(Ordering::Relaxed),
            duration: elapsed,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            client: self.client.map(|c| c.ip()),
            retries: served.as_ref().map_or(0, |s| s.retries),
            peer: self.peer.as_deref().unwrap_or(""),
            trace_id: self.trace.map(|t| t.trace_id),
        });
    }
}

impl State {
    /// The call's server span, when its trace is exported.
    fn export_span(&self, code: Code, message: &str) {
        let (Some(exporter), Some(trace), Some(start)) = (&self.telemetry.exporter, self.trace, self.wall_start) else {
            return;
        };
        if !trace.sampled {
            return;
        }
        let value = |s: &str| serde_json::Value::String(s.to_string());
        exporter.export(super::otlp::Span {
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_id: trace.parent_id,
            name: format!("{}/{}", self.handles.service, self.handles.method),
            kind: super::otlp::SpanKind::Server,
            start,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("rpc.system", value("grpc")),
                ("rpc.service", value(&self.handles.service)),
                ("rpc.method", value(&self.handles.method)),
                ("rpc.grpc.status_code", serde_json::Value::from(code.as_i32())),
                ("grpc_edge.protocol", value(self.protocol.as_str())),
                ("http.request.method", value(self.http_method.as_str())),
                (
                    "http.response.status_code",
                    serde_json::Value::from(self.http_status.load(Ordering::Relaxed)),
                ),
                (
                    "client.address",
                    value(&self.client.map(|c| c.ip().to_string()).unwrap_or_default()),
                ),
            ],
            error: (code != Code::Ok).then(|| format!("{code}: {message}")),
        });
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Nobody finished it: the client went away before the answer ended.
        self.finish(Code::Cancelled, "the client cancelled the call");
    }
}

/// Counts a body's bytes and messages and reads its final status.
pub(crate) struct Observer {
    record: CallRecord,
    inbound: bool,
    /// For streams only: where the message boundaries are.
    frames: Option<Box<FrameCounter>>,
}

impl Observer {
    pub(crate) fn new(record: CallRecord, inbound: bool) -> Self {
        let frames = record.streaming().then(Box::default);
        Self {
            record,
            inbound,
            frames,
        }
    }

    pub(crate) fn data(&mut self, data: &Bytes) {
        self.record.add_bytes(self.inbound, data.len());
        if let Some(frames) = &mut self.frames {
            let messages = frames.feed(data);
            self.record.add_messages(self.inbound, messages);
        }
    }

    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        if !self.inbound && !self.record.finish_if_status_in(trailers) {
            self.record
                .finish(&Status::new(Code::Unknown, "the response ended without a grpc-status"));
        }
    }

    pub(crate) fn end(&mut self) {
        if !self.inbound {
            self.record
                .finish(&Status::new(Code::Unknown, "the response ended without a grpc-status"));
        }
    }
}

/// Counts whole gRPC messages in a byte stream by their length prefixes.
#[derive(Default)]
struct FrameCounter {
    header: [u8; 5],
    header_len: usize,
    remaining: u64,
}

impl FrameCounter {
    /// Feeds bytes; returns how many messages started in them.
    fn feed(&mut self, mut data: &[u8]) -> u32 {
        let mut started = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                self.header_len = 0;
                started += 1;
                self.remaining = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::FrameCounter;

    #[test]
    fn counts_messages_split_anywhere() {
        let mut stream = Vec::new();
        for len in [0u32, 3, 70_000, 1] {
            stream.push(0);
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for chunk in [1, 2, 3, 5, 7, 1000, stream.len()] {
            let mut counter = FrameCounter::default();
            let total: u32 = stream.chunks(chunk).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 4, "chunks of {chunk}");
        }
    }
}
