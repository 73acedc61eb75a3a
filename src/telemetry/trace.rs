//! W3C trace context (`traceparent`, `tracestate`). A call that arrives with
//! a valid `traceparent` continues that trace: the gateway takes a span id of
//! its own and sends the backend a `traceparent` naming that span as the
//! parent, so the backend's span is a child of the gateway's, which is a
//! child of the client's. `tracestate` passes unchanged. A call without one
//! starts a new trace only when spans are exported (starting traces nobody
//! records would cost every call for nothing).

use http::{HeaderMap, HeaderValue};

/// `traceparent`.
pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The trace context of one call at the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub(crate) trace_id: [u8; 16],
    /// The client's span, when the trace came from the client.
    pub(crate) parent_id: Option<[u8; 8]>,
    /// The gateway's span for this call.
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
}

impl TraceContext {
    #[cfg(test)]
    pub(crate) fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// Continues (or, when `start_new` allows, starts) the trace of a request and
/// rewrites its `traceparent` for the upstream. `None` when there is no trace.
pub(crate) fn propagate(headers: &mut HeaderMap, start_new: Option<f64>) -> Option<TraceContext> {
    let context = match (continued(headers), start_new) {
        (Some(context), _) => context,
        (None, Some(ratio)) => TraceContext {
            trace_id: random_trace_id(),
            parent_id: None,
            span_id: random_id(),
            sampled: fastrand::f64() < ratio,
        },
        (None, None) => {
            headers.remove(TRACEPARENT);
            return None;
        }
    };
    headers.insert(
        TRACEPARENT,
        encode(&context.trace_id, &context.span_id, context.sampled),
    );
    Some(context)
}

/// The trace a request's valid `traceparent` continues, without touching the
/// request: for calls the gateway answers itself.
pub(crate) fn continued(headers: &HeaderMap) -> Option<TraceContext> {
    continued_from(headers.get(TRACEPARENT)?.as_bytes())
}

/// The trace a `traceparent` value continues, with a span id of the
/// gateway's own; `None` when the value is not valid.
pub(crate) fn continued_from(traceparent: &[u8]) -> Option<TraceContext> {
    let (trace_id, parent_id, sampled) = parse(traceparent)?;
    Some(TraceContext {
        trace_id,
        parent_id: Some(parent_id),
        span_id: random_id(),
        sampled,
    })
}

/// Gives an upstream attempt a span of its own under the call's span: a new
/// span id, written into `traceparent`. Returns the id.
pub(crate) fn child_of(headers: &mut HeaderMap, call: &TraceContext) -> [u8; 8] {
    let span_id = random_id();
    headers.insert(TRACEPARENT, encode(&call.trace_id, &span_id, call.sampled));
    span_id
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>` (a later version: that, then nothing or `-` and
/// anything); all-zero ids, version `ff` and unknown versions' bad shapes are invalid.
pub(crate) fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    // A later version may add fields, but only after another `-`: the flags
    // are followed by the end of the value or a dash (W3C trace context, 4.3).
    if value.get(55).is_some_and(|&c| c != b'-') {
        return None;
    }
    let trace_id = unhex::<16>(&value[3..35])?;
    let parent_id = unhex::<8>(&value[36..52])?;
    let flags = unhex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags & 1 == 1))
}

fn encode(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    HeaderValue::from_bytes(&traceparent(trace_id, span_id, sampled)).unwrap_or(HeaderValue::from_static(""))
}

/// The `traceparent` that names the gateway's span of `call` as the parent.
pub(crate) fn upstream_traceparent(call: &TraceContext) -> [u8; 55] {
    traceparent(&call.trace_id, &call.span_id, call.sampled)
}

fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> [u8; 55] {
    let mut text = [0u8; 55];
    text[0..3].copy_from_slice(b"00-");
    write_hex(&mut text[3..35], trace_id);
    text[35] = b'-';
    write_hex(&mut text[36..52], span_id);
    text[52..55].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    text
}

fn random_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_client_trace_is_continued_with_the_gateway_as_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(CLIENT));
        let context = propagate(&mut headers, None).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            context.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let sent = headers[TRACEPARENT].to_str().unwrap().to_string();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{sent}");
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "the backend's parent is the gateway's span"
        );
        assert_eq!(&sent[36..52], hex(&context.span_id));
        assert!(sent.ends_with("-01"));
    }

    #[test]
    fn no_trace_is_started_unless_spans_are_exported() {
        let mut headers = HeaderMap::new();
        assert_eq!(propagate(&mut headers, None), None);
        assert!(headers.get(TRACEPARENT).is_none());
        let context = propagate(&mut headers, Some(1.0)).unwrap();
        assert!(context.sampled && context.parent_id.is_none());
        assert!(parse(headers[TRACEPARENT].as_bytes()).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn later_versions_need_a_dash_after_the_flags() {
        // Found by fuzzing (fuzz/fuzz_targets/traceparent.rs): a version-01
        // value with more after the flags was read although no `-` followed.
        for bad in [
            "01-0af7651916cd4ed3d4388b211c80319c-b7ad16cd43dd8331-00%e]tra",
            "01-0af7651916cd4ed3d4388b211c80319c-b7ad16cd43dd8331-001",
            "cc-0af7651916cd4ed3d4388b211c80319c-b7ad16cd43dd8331-01x-",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
        for good in [
            "01-0af7651916cd4ed3d4388b211c80319c-b7ad16cd43dd8331-00",
            "01-0af7651916cd4ed3d4388b211c80319c-b7ad16cd43dd8331-00-",
            "cc-0af7651916cd4ed3d4388b211c80319c-b7ad16cd43dd8331-01-what-the-future-holds",
        ] {
            assert!(parse(good.as_bytes()).is_some(), "{good}");
        }
    }
}
