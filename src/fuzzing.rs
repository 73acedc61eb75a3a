//! Entry points for the fuzz targets under `fuzz/`: thin, hidden wrappers
//! that run crate-private parsers on arbitrary input. They return nothing and
//! must never panic; in builds with debug assertions (fuzz builds) they also
//! check properties of what was parsed, so a wrong answer shows up as a
//! crash. Not part of the supported API.
//!
//! One entry point per target (`fuzz/fuzz_targets/<name>.rs`), each for
//! input a client (or an upstream) controls:
//!
//! - [`path_template`]: `google.api.http` templates and the REST router.
//! - [`grpc_timeout`]: the `grpc-timeout` header, and its encoding.
//! - [`grpc_web_text`]: gRPC-Web text bodies: base64 decoded in any
//!   chunking, then the frame checks a request body gets.
//! - [`grpc_frames`]: length-prefixed frames, by the gRPC-Web request
//!   scanner and by the message decoder, in any chunking.
//! - [`json_transcode`]: JSON request bodies → protobuf messages.
//! - [`wire_json`]: protobuf response messages → JSON, by the wire printer.
//! - [`json_split`]: client-streaming REST bodies (NDJSON or one array)
//!   split into messages, in any chunking.
//! - [`query`]: query strings, and setting message fields from them.
//! - [`config_yaml`]: the YAML configuration.
//! - [`traceparent`]: the W3C `traceparent` header.
//! - [`grpc_message`]: `grpc-status`/`grpc-message`/details headers and the
//!   REST error body made from them.
//! - [`http2_goaway`]: the frame boundaries of what an upstream sends, as
//!   the transport follows them to note GOAWAYs.
//! - [`http2_frames`]: what a client sends the relay, cut into frames,
//!   checked, and header blocks gathered, in any chunking.
//! - [`hpack`]: HTTP/2 header blocks (HPACK), several on one connection, as
//!   the frame relay decodes a client's and re-encodes them.
//!
//! Targets whose input needs a chunking take it from the input itself (see
//! `plan`), so the fuzzer explores chunk boundaries along with the bytes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _};
use prost_types::{DescriptorProto, FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

use crate::config::{Config, JsonOptions, Transcoding};
use crate::descriptors::{MethodInfo, Registry};
use crate::grpc_frame::{self, FrameDecoder, FrameError, HEADER_LEN};
use crate::grpc_web::codec::{FrameScanner, RequestError};
use crate::grpc_web::text::{Base64Decoder, encode_chunk};
use crate::rest::json_split::JsonSplitter;
use crate::rest::router::{Binding, BodyRule, Lookup, RestRouter};
use crate::rest::template::{self, PathTemplate, Segment};
use crate::status::{self, Code, Status};
use crate::telemetry::trace;
use crate::transcode::{self, JsonCodec, fields};

/// Parses `template` as a `google.api.http` path template and, if it parses,
/// builds a small route table around it (with a few fixed bindings that
/// compete with it) and matches `path` against it with a few HTTP methods.
///
/// Checked with debug assertions: the template's canonical form parses back
/// to the same template; every lookup gives what a slow, obvious reference
/// matcher (one template at a time, precedence as a sort key) says it
/// should; and a path made from the template always finds a binding.
pub fn path_template(template: &str, path: &str) {
    let Ok(parsed) = template::parse(template) else {
        return;
    };
    let canonical = parsed.to_string();
    debug_assert_eq!(
        template::parse(&canonical).as_ref(),
        Ok(&parsed),
        "canonical form {canonical:?}"
    );
    let Some(router) = tiny_router(template, &parsed) else {
        return;
    };
    let example = example_path(&parsed);
    for method in [Method::GET, Method::POST, Method::PATCH] {
        for path in [path, example.as_str()] {
            let got = summary(&router.lookup(&method, path));
            let expected = reference::lookup(&router, &method, path);
            debug_assert_eq!(got, expected, "{method} {path:?} with {template:?}");
        }
    }
    debug_assert!(
        matches!(router.lookup(&Method::GET, &example), Lookup::Found { .. }),
        "{example:?} found nothing with {template:?}"
    );
}

/// Fixed bindings that compete with the fuzzed one (`GET`).
const FIXED: &[(&str, &str)] = &[
    ("GET", "/v1/{name=things/*}"),
    ("GET", "/v1/things/{id}:run"),
    ("GET", "/{a}/{b}/x"),
    ("GET", "/v1/**"),
    ("GET", "/{rest=**}:get"),
    ("POST", "/v1/{name=things/*}:run"),
    ("DELETE", "/v1/*/{id}"),
    ("PUT", "/{rest=**}"),
    ("*", "/w/{x}/*"),
];

/// The fuzzed template as `GET` with every fixed binding, or, when it
/// conflicts with a fixed `GET` binding, with only the other methods'.
fn tiny_router(pattern: &str, template: &PathTemplate) -> Option<RestRouter> {
    let method = placeholder_method()?;
    let binding = |http_method: Method, pattern: &str, template: PathTemplate| Binding {
        http_method,
        pattern: pattern.to_string(),
        template,
        body: BodyRule::None,
        response_body: None,
        method: Arc::clone(&method),
    };
    let fixed = |include_get: bool| {
        FIXED.iter().filter_map(move |&(http_method, pattern)| {
            let http_method = Method::from_bytes(http_method.as_bytes()).ok()?;
            if http_method == Method::GET && !include_get {
                return None;
            }
            Some((http_method, pattern, template::parse(pattern).ok()?))
        })
    };
    for include_get in [true, false] {
        let mut bindings = vec![binding(Method::GET, pattern, template.clone())];
        bindings.extend(fixed(include_get).map(|(m, p, t)| binding(m, p, t)));
        if let Ok(router) = RestRouter::from_bindings(bindings) {
            return Some(router);
        }
    }
    None
}

/// A lookup's answer in comparable form.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Found(String, String, Vec<(String, String)>),
    NotAllowed(Vec<Method>),
    NotFound,
    BadPath,
}

fn summary(lookup: &Lookup<'_>) -> Answer {
    match lookup {
        Lookup::Found { binding, variables } => Answer::Found(
            binding.http_method.to_string(),
            binding.pattern.clone(),
            variables.clone(),
        ),
        Lookup::MethodNotAllowed { allowed } => Answer::NotAllowed(allowed.clone()),
        Lookup::NotFound => Answer::NotFound,
        Lookup::BadPath(_) => Answer::BadPath,
    }
}

/// A path the template must match: `x` for `*`, `y/z` for `**`, literals
/// and the verb re-encoded.
fn example_path(template: &PathTemplate) -> String {
    let encode = |text: &str, out: &mut String| {
        for &b in text.as_bytes() {
            if template::is_unreserved(b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    };
    let mut out = String::new();
    for segment in &template.segments {
        out.push('/');
        match segment {
            Segment::Literal(text) => encode(text, &mut out),
            Segment::Single => out.push('x'),
            Segment::Multi => out.push_str("y/z"),
        }
    }
    if let Some(verb) = &template.verb {
        out.push(':');
        encode(verb, &mut out);
    }
    out
}

/// The rules written the slow, obvious way, independent of the parsers
/// they check: for the router, each binding on its own with precedence as a
/// sort key; for the byte formats, their definitions read one unit at a time.
mod reference {
    use http::Method;

    use super::{Answer, FrameError, HEADER_LEN, RequestError};
    use crate::rest::router::{Binding, RestRouter, method_rank};
    use crate::rest::template::{self, Segment};

    pub(super) fn lookup(router: &RestRouter, method: &Method, path: &str) -> Answer {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let Some(rest) = path.strip_prefix('/') else {
            return Answer::BadPath;
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let bad = |s: &&str| template::invalid_escape(s).is_some() || template::decode(s, false).is_err();
        if segments.iter().any(bad) {
            return Answer::BadPath;
        }
        let best = router
            .bindings()
            .filter(|b| b.http_method == *method || b.http_method.as_str() == "*")
            .filter_map(|b| {
                let (key, variables) = matches(b, &segments)?;
                Some(((key, b.http_method != *method), b, variables))
            })
            .min_by(|a, b| a.0.cmp(&b.0));
        if let Some((_, binding, variables)) = best {
            return Answer::Found(binding.http_method.to_string(), binding.pattern.clone(), variables);
        }
        let mut allowed: Vec<Method> = router
            .bindings()
            .filter(|b| matches(b, &segments).is_some())
            .map(|b| b.http_method.clone())
            .collect();
        allowed.sort_by(|a, b| (method_rank(a), a.as_str()).cmp(&(method_rank(b), b.as_str())));
        allowed.dedup();
        if allowed.is_empty() {
            Answer::NotFound
        } else {
            Answer::NotAllowed(allowed)
        }
    }

    /// A precedence key and the path variables.
    type Match = (Vec<u8>, Vec<(String, String)>);

    /// Whether one binding matches, with its precedence key (smaller wins:
    /// per segment literal < `*` < `**`, and at the verb's segment a verb
    /// match before a whole-segment one) and its variables.
    fn matches(binding: &Binding, path: &[&str]) -> Option<Match> {
        let t = &binding.template;
        let mut segments: Vec<&str> = path.to_vec();
        let n = segments.len();
        if let Some(verb) = &t.verb {
            let (base, found) = segments.last()?.rsplit_once(':')?;
            if template::decode(found, false).ok()? != *verb {
                return None;
            }
            *segments.last_mut()? = base;
        }
        let with_verb = t.verb.is_some();
        let mut key = Vec::new();
        for (j, segment) in t.segments.iter().enumerate() {
            let at_verb = |j: usize| with_verb && j + 1 == n;
            match segment {
                Segment::Literal(text) => {
                    let got = template::decode(segments.get(j)?, false).ok()?;
                    if got != *text {
                        return None;
                    }
                    key.push(if at_verb(j) { 0 } else { 1 });
                }
                Segment::Single => {
                    if segments.get(j)?.is_empty() {
                        return None;
                    }
                    key.push(if at_verb(j) { 2 } else { 3 });
                }
                Segment::Multi => {
                    if with_verb && j >= n {
                        return None; // a verb needs a segment to hang on
                    }
                    key.push(if with_verb { 4 } else { 5 });
                }
            }
        }
        if !t.segments.contains(&Segment::Multi) && t.segments.len() != n {
            return None;
        }
        let mut variables = Vec::new();
        for v in &t.variables {
            let value = if v.is_single_segment() {
                template::decode(segments.get(v.start)?, false).ok()?.into_owned()
            } else {
                let end = v.end.unwrap_or(n);
                let parts = segments.get(v.start..end).unwrap_or_default();
                let decoded: Option<Vec<String>> = parts
                    .iter()
                    .map(|s| template::decode(s, true).ok().map(|d| d.into_owned()))
                    .collect();
                decoded?.join("/")
            };
            variables.push((v.field_name(), value));
        }
        Some((key, variables))
    }

    /// gRPC-Web text: 4-character groups, each `xxxx`, `xxx=` or `xx==`,
    /// the last possibly cut short to `xx`, `xxx` or `xx=`. The decoded
    /// bytes, or `None` when the body breaks the rules.
    pub(super) fn base64(body: &[u8]) -> Option<Vec<u8>> {
        use base64::Engine as _;
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        let config = GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone);
        let unpadded = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
        let in_alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
        let mut out = Vec::new();
        // Only the last group can be shorter than 4.
        for group in body.chunks(4) {
            let sextets = match group {
                [_, _, b'=', b'='] | [_, _, b'='] => &group[..2],
                [_, _, _, b'='] => &group[..3],
                [_, _, _, _] | [_, _, _] | [_, _] => group,
                _ => return None,
            };
            if !sextets.iter().all(in_alphabet) {
                return None;
            }
            out.extend(unpadded.decode(sextets).ok()?);
        }
        Some(out)
    }

    /// A frame stream read frame by frame: `(flags, message)` for each, or
    /// the first problem. `request` adds the gRPC-Web request rules (flags
    /// 0 or 1, at least one frame) to the framing ones (whole frames,
    /// lengths within `limit`).
    pub(super) fn frames(stream: &[u8], limit: usize, request: bool) -> Result<Vec<(u8, Vec<u8>)>, RequestError> {
        if request && stream.is_empty() {
            return Err(RequestError::Empty);
        }
        let mut frames = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let rest = &stream[at..];
            let offset = at as u64;
            let Some(header) = rest.get(..HEADER_LEN) else {
                let (have, need) = (rest.len(), HEADER_LEN);
                return Err(FrameError::Truncated { have, need, offset }.into());
            };
            let flags = header[0];
            if request && flags > 1 {
                return Err(RequestError::Flags { flags, offset });
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if len as usize > limit {
                let len = u64::from(len);
                return Err(FrameError::TooLarge { len, limit, offset }.into());
            }
            let end = HEADER_LEN + len as usize;
            let Some(message) = rest.get(HEADER_LEN..end) else {
                let (have, need) = (rest.len(), end);
                return Err(FrameError::Truncated { have, need, offset }.into());
            };
            frames.push((flags, message.to_vec()));
            at += end;
        }
        Ok(frames)
    }

    /// What serde_json reads in a client-streaming body: the elements of
    /// one array, or a stream of values; `None` unless every one of them
    /// is an object.
    pub(super) fn json_objects(body: &[u8]) -> Option<Vec<serde_json::Value>> {
        use serde_json::Value;
        let values = match serde_json::from_slice(body) {
            Ok(Value::Array(items)) => items,
            _ => serde_json::Deserializer::from_slice(body)
                .into_iter()
                .collect::<Result<Vec<Value>, _>>()
                .ok()?,
        };
        values.iter().all(Value::is_object).then_some(values)
    }

    /// W3C trace context `traceparent`, by the rules of its section 3.2:
    /// `version-traceid-parentid-flags` in lower-case hex; version `ff` is
    /// invalid, version `00` is exactly 55 characters, a later version may
    /// be longer but only with a `-` after the flags; all-zero ids are invalid.
    pub(super) fn traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
        let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        let decode = |s: &[u8]| -> Vec<u8> {
            s.chunks(2)
                .map(|pair| {
                    let text = std::str::from_utf8(pair).unwrap_or_default();
                    u8::from_str_radix(text, 16).unwrap_or_default()
                })
                .collect()
        };
        let fields = value.get(..55)?;
        let (version, trace_id, parent_id, flags) = (&fields[0..2], &fields[3..35], &fields[36..52], &fields[53..55]);
        let dashes = fields[2] == b'-' && fields[35] == b'-' && fields[52] == b'-';
        if !dashes || ![version, trace_id, parent_id, flags].into_iter().all(lower_hex) || version == b"ff" {
            return None;
        }
        if (version == b"00" && value.len() != 55) || value.get(55).is_some_and(|&c| c != b'-') {
            return None;
        }
        if trace_id.iter().all(|&c| c == b'0') || parent_id.iter().all(|&c| c == b'0') {
            return None;
        }
        let sampled = decode(flags).first().is_some_and(|f| f & 1 == 1);
        Some((
            decode(trace_id).try_into().ok()?,
            decode(parent_id).try_into().ok()?,
            sampled,
        ))
    }

    /// The error code of the last GOAWAY in an HTTP/2 frame stream whose
    /// fixed part (last stream id, error code) is all there: frame by frame,
    /// each header read whole, then its payload skipped.
    pub(super) fn last_goaway(stream: &[u8]) -> Option<u32> {
        let mut last = None;
        let mut at = 0;
        while let Some(header) = stream.get(at..at + 9) {
            let length = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let payload = &stream[at + 9..stream.len().min(at + 9 + length)];
            if header[3] == 0x7 && length >= 8 && payload.len() >= 8 {
                last = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
            }
            at += 9 + length;
        }
        last
    }
}

/// A method (`/fuzz.S/Call`, empty messages) to hang bindings on, built once.
pub(crate) fn placeholder_method() -> Option<Arc<MethodInfo>> {
    static METHOD: OnceLock<Option<Arc<MethodInfo>>> = OnceLock::new();
    METHOD
        .get_or_init(|| {
            let file = FileDescriptorProto {
                name: Some("fuzz.proto".into()),
                package: Some("fuzz".into()),
                syntax: Some("proto3".into()),
                message_type: vec![DescriptorProto {
                    name: Some("M".into()),
                    ..Default::default()
                }],
                service: vec![ServiceDescriptorProto {
                    name: Some("S".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("Call".into()),
                        input_type: Some(".fuzz.M".into()),
                        output_type: Some(".fuzz.M".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let mut pool = DescriptorPool::new();
            pool.add_file_descriptor_proto(file).ok()?;
            Registry::new(&pool).get("/fuzz.S/Call").cloned()
        })
        .clone()
}

// ---------------------------------------------------------------------------
// Chunkings taken from the input.

/// Splits fuzz input into a chunking plan and a body: the first byte says
/// how many of the bytes after it (0 to 31) are piece lengths; the rest is
/// the body.
fn plan(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    rest.split_at((usize::from(count) % 32).min(rest.len()))
}

/// `body` cut into pieces of the given lengths (empty pieces too), with
/// whatever is left as the last piece.
fn pieces<'a>(body: &'a [u8], lengths: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(lengths.len() + 1);
    let mut rest = body;
    for &len in lengths {
        let (piece, tail) = rest.split_at(usize::from(len).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out.push(rest);
    out
}

// ---------------------------------------------------------------------------
// grpc-timeout

/// The longest timeout the header can say: 99,999,999 hours.
const MAX_TIMEOUT: Duration = Duration::from_secs(99_999_999 * 3600);

/// Parses `data` as a `grpc-timeout` value, and encodes a duration made
/// from `data`.
///
/// Checked: a value that parses is 1 to 8 digits and a unit, and encoding
/// what it says and parsing that back gives exactly the same duration (zero
/// becomes `1n`: a deadline is never sent as already expired). Any
/// duration's encoding is a valid value that parses back to no less than
/// the duration (unless above the maximum, which it is clamped to) and at
/// most 1/99,999 more.
pub fn grpc_timeout(data: &[u8]) {
    if let Ok(timeout) = crate::grpc_timeout::parse(data) {
        debug_assert!((2..=9).contains(&data.len()), "{data:?} parsed");
        let expected = if timeout.is_zero() {
            Duration::from_nanos(1)
        } else {
            timeout
        };
        let encoded = crate::grpc_timeout::encode(timeout);
        debug_assert_eq!(
            crate::grpc_timeout::parse(encoded.as_bytes()),
            Ok(expected),
            "{data:?} -> {timeout:?} -> {encoded:?}"
        );
    }
    let mut secs = [0u8; 8];
    let mut nanos = [0u8; 4];
    let tail = data.get(1..).unwrap_or_default();
    for (slot, byte) in secs.iter_mut().chain(nanos.iter_mut()).zip(tail) {
        *slot = *byte;
    }
    // Spread the magnitudes: shift the seconds right by 0..63 bits.
    let shift = data.first().map_or(0, |b| u32::from(b % 64));
    let duration = Duration::new(
        u64::from_le_bytes(secs) >> shift,
        u32::from_le_bytes(nanos) % 1_000_000_000,
    );
    check_timeout_encoding(duration);
}

fn check_timeout_encoding(duration: Duration) {
    let encoded = crate::grpc_timeout::encode(duration);
    let text = encoded.as_bytes();
    debug_assert!((2..=9).contains(&text.len()), "{duration:?} -> {encoded:?}");
    let Ok(back) = crate::grpc_timeout::parse(text) else {
        debug_assert!(false, "{duration:?} -> {encoded:?} does not parse");
        return;
    };
    if duration > MAX_TIMEOUT {
        debug_assert_eq!(back, MAX_TIMEOUT, "{duration:?} -> {encoded:?}");
    } else if duration.is_zero() {
        debug_assert_eq!(back, Duration::from_nanos(1), "{encoded:?}");
    } else {
        debug_assert!(
            back >= duration && (back == duration || (back - duration).as_nanos() * 99_999 < duration.as_nanos()),
            "{duration:?} -> {encoded:?} -> {back:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// gRPC-Web text bodies and frames

/// Decodes a text body given in `pieces` with one decoder, as a request
/// body is decoded.
fn decode_text(pieces: &[&[u8]]) -> Result<Vec<u8>, RequestError> {
    let mut decoder = Base64Decoder::default();
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&decoder.decode(piece)?);
    }
    out.extend_from_slice(&decoder.finish()?);
    Ok(out)
}

/// What a gRPC-Web text request body goes through (`grpc_web::body`):
/// each piece decoded and its bytes scanned for frames, then the end of
/// both. The decoded frame stream, or that it was refused.
fn text_request_body(pieces: &[&[u8]], limit: usize) -> Result<Vec<u8>, RequestError> {
    let mut decoder = Base64Decoder::default();
    let mut scanner = FrameScanner::new(limit);
    let mut out = Vec::new();
    for piece in pieces {
        let decoded = decoder.decode(piece)?;
        scanner.scan(&decoded)?;
        out.extend_from_slice(&decoded);
    }
    let tail = decoder.finish()?;
    scanner.scan(&tail)?;
    scanner.finish()?;
    out.extend_from_slice(&tail);
    Ok(out)
}

/// Runs the text decoder over `data` as a request body.
///
/// Checked: decoding gives the same answer however the body is split into
/// pieces (errors included, with the same offsets), and the same as a
/// slow, obvious reference decoder written from the rules (4-character
/// groups, each optionally padded, an unpadded last group of 2 or 3);
/// every error names a byte that is really there. Messages encoded the way
/// clients do (each on its own, padded) decode back to the messages in
/// any chunking, and so does one unpadded encoding. The whole request body
/// path (decode, then scan frames) accepts or refuses the body regardless
/// of chunking, and what it accepts are whole frames.
pub fn grpc_web_text(data: &[u8]) {
    let (lengths, body) = plan(data);
    let parts = pieces(body, lengths);
    let whole = decode_text(&[body]);
    debug_assert_eq!(decode_text(&parts), whole, "{body:?} split as {lengths:?}");
    let expected = reference::base64(body);
    debug_assert_eq!(whole.as_ref().ok(), expected.as_ref(), "{body:?}");
    match &whole {
        Err(RequestError::Base64 { byte, offset }) => {
            let at = usize::try_from(*offset).ok().and_then(|o| body.get(o));
            debug_assert_eq!(at, Some(byte), "{body:?}");
        }
        Err(RequestError::DanglingBase64 { offset }) => {
            let from_end = body.len() as u64 - offset;
            debug_assert!(offset % 4 == 0 && (1..4).contains(&from_end), "{body:?}: {offset}");
        }
        Err(other) => debug_assert!(false, "{other:?} from the base64 decoder"),
        Ok(_) => {}
    }

    // What clients send: each message encoded on its own.
    let mut sent = Vec::new();
    for message in &parts {
        sent.extend_from_slice(&encode_chunk(message));
    }
    let reversed: Vec<u8> = lengths.iter().rev().copied().collect();
    debug_assert_eq!(decode_text(&pieces(&sent, &reversed)).as_deref(), Ok(body));
    {
        use base64::Engine as _;
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(body);
        debug_assert_eq!(decode_text(&pieces(unpadded.as_bytes(), lengths)).as_deref(), Ok(body));
    }

    // The request body path, with a small limit and a large one.
    for limit in [16, 1 << 20] {
        let whole_body = text_request_body(&[body], limit);
        let chunked_body = text_request_body(&parts, limit);
        // Which error is reported first may depend on the chunking (a frame
        // error in an early piece comes before a base64 error in a later
        // one); whether the body is refused and what it decodes to may not.
        debug_assert_eq!(
            whole_body.as_ref().ok(),
            chunked_body.as_ref().ok(),
            "{body:?} split as {lengths:?}"
        );
        if let Ok(decoded) = &whole {
            let frames = reference::frames(decoded, limit, true);
            debug_assert_eq!(whole_body.is_ok(), frames.is_ok(), "{decoded:?}");
        }
    }
}

/// The outcome of a scanner over the pieces.
fn scan(pieces: &[&[u8]], limit: usize) -> Result<(), RequestError> {
    let mut scanner = FrameScanner::new(limit);
    for piece in pieces {
        scanner.scan(piece)?;
    }
    let clean = scanner.at_clean_end();
    let finished = scanner.finish();
    debug_assert_eq!(clean, finished.is_ok());
    finished
}

/// Every frame a decoder gives for the pieces, and how it ended.
fn decode_frames(pieces: &[&[u8]], limit: usize) -> (Vec<grpc_frame::Frame>, Result<(), FrameError>) {
    let mut decoder = FrameDecoder::new(limit);
    let mut frames = Vec::new();
    for piece in pieces {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Err(error)),
            }
        }
    }
    let end = decoder.finish();
    (frames, end)
}

/// Runs the gRPC-Web request frame scanner and the gRPC message decoder
/// over `data` as a frame stream, with a small and a large limit.
///
/// Checked: both give the same answer however the stream is split into
/// pieces, errors and their offsets included, and the same as a slow,
/// obvious reference parser; the scanner's `at_clean_end` agrees with its
/// `finish`. Messages framed by `grpc_frame::encode` decode back to the
/// messages, and scan clean, in any chunking.
pub fn grpc_frames(data: &[u8]) {
    let (lengths, body) = plan(data);
    let parts = pieces(body, lengths);
    for limit in [16, 1 << 20] {
        let scanned = scan(&[body], limit);
        debug_assert_eq!(scan(&parts, limit), scanned, "{body:?} split as {lengths:?}");
        debug_assert_eq!(scanned, reference::frames(body, limit, true).map(|_| ()), "{body:?}");

        let (frames, end) = decode_frames(&[body], limit);
        debug_assert_eq!(
            decode_frames(&parts, limit),
            (frames.clone(), end.clone()),
            "{body:?} split as {lengths:?}"
        );
        let expected = reference::frames(body, limit, false);
        let got: Result<Vec<(u8, Vec<u8>)>, RequestError> = match end {
            Ok(()) => Ok(frames.iter().map(|f| (f.flags, f.data.to_vec())).collect()),
            Err(error) => Err(error.into()),
        };
        debug_assert_eq!(got, expected, "{body:?}");
    }

    // Messages framed by the encoder, flags alternating.
    let mut stream = Vec::new();
    for (i, message) in parts.iter().enumerate() {
        stream.extend_from_slice(&grpc_frame::encode((i % 2) as u8, message));
    }
    let reversed: Vec<u8> = lengths.iter().rev().copied().collect();
    let chunks = pieces(&stream, &reversed);
    let (frames, end) = decode_frames(&chunks, 1 << 20);
    debug_assert_eq!(end, Ok(()));
    let messages: Vec<&[u8]> = frames.iter().map(|f| &f.data[..]).collect();
    debug_assert_eq!(messages, parts);
    debug_assert!(frames.iter().enumerate().all(|(i, f)| usize::from(f.flags) == i % 2));
    debug_assert_eq!(scan(&chunks, 1 << 20), Ok(()));
}

// ---------------------------------------------------------------------------
// JSON request bodies

/// The message types JSON bodies are fuzzed against: every field type,
/// recursion, and the well-known types with a JSON form of their own.
const JSON_TYPES: [&str; 9] = [
    "testing.rest.v1.AllTypes",
    "testing.rest.v1.Thing",
    "testing.rest.v1.Nested",
    "google.protobuf.Value",
    "google.protobuf.Struct",
    "google.protobuf.Any",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

/// The descriptors of `proto/testing` (every field type, every well-known
/// type), built once.
fn rich_pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(&include_bytes!("../descriptors/testing.binpb")[..]).ok())
        .as_ref()
}

/// A codec with the options in the low four bits of `options`.
fn codec(options: u8) -> JsonCodec {
    JsonCodec::new(&Transcoding {
        reject_unknown_fields: options & 1 != 0,
        json: JsonOptions {
            use_proto_names: options & 2 != 0,
            emit_unpopulated: options & 4 != 0,
            enums_as_ints: options & 8 != 0,
        },
        ..Transcoding::default()
    })
}

/// Parses `data` after its first byte as a JSON request body for one of
/// `JSON_TYPES` (the first byte picks the type and the codec options).
///
/// Checked: no panic, no stack overflow however deep the nesting; an error
/// says what is wrong. A body that parses prints as JSON that parses back
/// to the same message, and that message prints the same JSON.
pub fn json_transcode(data: &[u8]) {
    let Some(pool) = rich_pool() else {
        debug_assert!(false, "descriptors/testing.binpb does not load");
        return;
    };
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let name = JSON_TYPES[usize::from(selector >> 4) % JSON_TYPES.len()];
    let Some(descriptor) = pool.get_message_by_name(name) else {
        debug_assert!(false, "{name} is not in descriptors/testing.binpb");
        return;
    };
    let codec = codec(selector);
    match codec.parse(descriptor, json, "") {
        Ok(message) => check_json_round_trip(&codec, &message),
        Err(violation) => debug_assert!(!violation.description.is_empty(), "{violation:?}"),
    }
}

/// A message prints as JSON that parses back to the same message (by
/// [`same`]), which prints the same JSON again; its protobuf encoding
/// decodes to the same message too.
fn check_json_round_trip(codec: &JsonCodec, message: &DynamicMessage) {
    let printed = codec.print(message);
    let text = String::from_utf8_lossy(&printed);
    let again = match codec.parse(message.descriptor(), &printed, "") {
        Ok(again) => again,
        Err(violation) => {
            debug_assert!(false, "{text} does not parse back: {violation}");
            return;
        }
    };
    let first: Result<serde_json::Value, _> = serde_json::from_slice(&printed);
    let second: Result<serde_json::Value, _> = serde_json::from_slice(&codec.print(&again));
    debug_assert!(first.is_ok(), "{text} is not JSON");
    debug_assert_eq!(first.ok(), second.ok(), "{text}");
    debug_assert!(same(&again, message), "{text}: {} vs {}", show(message), show(&again));
    // The message the upstream gets decodes to the same message.
    let encoded = message.encode_to_vec();
    if let Ok(decoded) = DynamicMessage::decode(message.descriptor(), &encoded[..]) {
        debug_assert!(
            same(&decoded, message),
            "{text}: {} vs {}",
            show(message),
            show(&decoded)
        );
    }
}

/// Whether two messages say the same thing: the same populated fields with
/// the same values. Not `==`, which also compares fields set to their
/// default value (as parsing `{"d": 0}` does) with fields never set, which
/// the wire and the JSON mapping do not tell apart; NaN is the same as NaN;
/// an `Any` is compared by what it holds, since a map's encoding has no
/// fixed order.
fn same(a: &DynamicMessage, b: &DynamicMessage) -> bool {
    use prost_reflect::Value;
    fn value(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Message(a), Value::Message(b)) => same(a, b),
            (Value::List(a), Value::List(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| value(a, b)),
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| value(v, w)))
            }
            (Value::F64(a), Value::F64(b)) => a == b || (a.is_nan() && b.is_nan()),
            (Value::F32(a), Value::F32(b)) => a == b || (a.is_nan() && b.is_nan()),
            (a, b) => a == b,
        }
    }
    if a.descriptor() != b.descriptor() {
        return false;
    }
    if a.descriptor().full_name() == "google.protobuf.Any"
        && let (Some(a), Some(b)) = (unpack_any(a), unpack_any(b))
    {
        return same(&a, &b);
    }
    let a: Vec<_> = a.fields().collect();
    let b: Vec<_> = b.fields().collect();
    a.len() == b.len() && a.iter().zip(&b).all(|((f, v), (g, w))| f == g && value(v, w))
}

/// The message an `Any` holds, when its type is known and it decodes.
fn unpack_any(any: &DynamicMessage) -> Option<DynamicMessage> {
    let type_url = any.get_field_by_name("type_url")?;
    let name = type_url.as_str()?.rsplit('/').next()?;
    let descriptor = any.descriptor().parent_pool().get_message_by_name(name)?;
    let bytes = any.get_field_by_name("value")?;
    DynamicMessage::decode(descriptor, bytes.as_bytes()?.clone()).ok()
}

/// A message's set fields, for assertion messages. (Not `{:?}`: a
/// `DynamicMessage`'s `Debug` prints its descriptor, and a descriptor's
/// `Debug` recurses without end through a message type that contains
/// itself, such as `testing.rest.v1.Nested`, overflowing the stack.)
fn show(message: &DynamicMessage) -> String {
    use prost_reflect::{MapKey, Value};
    fn value(v: &Value) -> String {
        match v {
            Value::Message(m) => show(m),
            Value::List(items) => format!("[{}]", items.iter().map(value).collect::<Vec<_>>().join(", ")),
            Value::Map(entries) => {
                let entries: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            MapKey::String(s) => format!("{s:?}"),
                            other => format!("{other:?}"),
                        };
                        format!("{key}: {}", value(v))
                    })
                    .collect();
                format!("{{{}}}", entries.join(", "))
            }
            scalar => format!("{scalar:?}"),
        }
    }
    let fields: Vec<String> = message
        .fields()
        .map(|(field, v)| format!("{}: {}", field.name(), value(v)))
        .collect();
    format!("{} {{{}}}", message.descriptor().full_name(), fields.join(", "))
}

// ---------------------------------------------------------------------------
// Client-streaming JSON bodies

/// Every value a splitter gives for the pieces, then how it ended.
fn split_json(pieces: &[&[u8]], limit: usize) -> (Vec<Bytes>, Result<(), String>) {
    let mut splitter = JsonSplitter::new(limit);
    let mut values = Vec::new();
    for piece in pieces {
        splitter.push(piece);
        loop {
            match splitter.next_value() {
                Ok(Some(value)) => values.push(value),
                Ok(None) => break,
                Err(error) => return (values, Err(error)),
            }
        }
    }
    let end = splitter.finish();
    (values, end)
}

/// Prints `data` after its first byte as an encoded response message of one
/// of sixteen types (every field type, recursion, the well-known types) with the wire printer, the REST
/// front end's fast path; the first byte picks the type and the options.
///
/// Checked: no panic; what the wire printer prints, the `DynamicMessage`
/// path decodes and prints as the same JSON (it declines the rest, and the
/// `DynamicMessage` path answers for it); the same for one field of any
/// kind, as a `response_body` prints it.
pub fn wire_json(data: &[u8]) {
    const TYPES: [&str; 16] = [
        "testing.rest.v1.AllTypes",
        "testing.rest.v1.Thing",
        "testing.rest.v1.Nested",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BytesValue",
        "google.protobuf.StringValue",
        "google.protobuf.Empty",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.Any",
        "google.protobuf.FieldMask",
    ];
    let Some(pool) = rich_pool() else {
        debug_assert!(false, "descriptors/testing.binpb does not load");
        return;
    };
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let name = TYPES[usize::from(selector >> 4) % TYPES.len()];
    let Some(descriptor) = pool.get_message_by_name(name) else {
        debug_assert!(false, "{name} is not in descriptors/testing.binpb");
        return;
    };
    let options = |bits: usize| Transcoding {
        json: JsonOptions {
            use_proto_names: bits & 1 != 0,
            emit_unpopulated: bits & 2 != 0,
            enums_as_ints: bits & 4 != 0,
        },
        ..Transcoding::default()
    };
    // Compiling the wire printer's plans takes longer than printing: once
    // per combination of options.
    static CODECS: OnceLock<Vec<JsonCodec>> = OnceLock::new();
    let codecs = CODECS.get_or_init(|| (0..8).map(|bits| JsonCodec::for_pool(&options(bits), pool)).collect());
    let bits = usize::from(selector >> 1) & 7;
    // `response_body` naming one of its fields, if it has any.
    let fields: Vec<_> = descriptor.fields().collect();
    if let Some(field) = fields.get(bytes.len() % fields.len().max(1))
        && let Some(printed) = codecs[bits].print_encoded_field(&descriptor, field.name(), bytes)
    {
        let decoded = DynamicMessage::decode(descriptor.clone(), bytes);
        debug_assert!(
            decoded.is_ok(),
            "printed a field of bytes that do not decode: {bytes:02x?}"
        );
        if let Ok(message) = decoded {
            let reference = JsonCodec::new(&options(bits)).print_field(&message, field.name());
            let a: Result<serde_json::Value, _> = serde_json::from_slice(&printed);
            let b: Result<serde_json::Value, _> = serde_json::from_slice(&reference);
            debug_assert!(a.is_ok(), "not JSON: {}", String::from_utf8_lossy(&printed));
            debug_assert_eq!(a.ok(), b.ok(), "{}", field.name());
        }
    }
    let Some(printed) = codecs[bits].print_encoded(&descriptor, bytes) else {
        return;
    };
    let decoded = DynamicMessage::decode(descriptor, bytes);
    debug_assert!(decoded.is_ok(), "printed bytes that do not decode: {bytes:02x?}");
    if let Ok(message) = decoded {
        let reference = JsonCodec::new(&options(bits)).print(&message);
        let a: Result<serde_json::Value, _> = serde_json::from_slice(&printed);
        let b: Result<serde_json::Value, _> = serde_json::from_slice(&reference);
        debug_assert!(a.is_ok(), "not JSON: {}", String::from_utf8_lossy(&printed));
        debug_assert_eq!(
            a.ok(),
            b.ok(),
            "{} vs {}",
            String::from_utf8_lossy(&printed),
            String::from_utf8_lossy(&reference)
        );
    }
}

/// Splits `data` as a client-streaming REST body (NDJSON or one JSON
/// array of objects), with a small and a large per-message limit.
///
/// Checked: the values and the outcome (errors with their offsets) do not
/// depend on how the body is split into pieces; every value is `{…}` and
/// within the limit; and when serde_json reads the body as an array of
/// objects, or as a stream of objects, the splitter gives exactly those
/// objects.
pub fn json_split(data: &[u8]) {
    let (lengths, body) = plan(data);
    let parts = pieces(body, lengths);
    for limit in [16, 1 << 20] {
        let (values, end) = split_json(&[body], limit);
        debug_assert_eq!(
            split_json(&parts, limit),
            (values.clone(), end.clone()),
            "{body:?} split as {lengths:?}"
        );
        for value in &values {
            debug_assert!(value.starts_with(b"{") && value.len() >= 2, "{value:?}");
            debug_assert!(value.len() <= limit, "{} bytes with a limit of {limit}", value.len());
        }
        if limit < body.len() {
            continue;
        }
        let objects = reference::json_objects(body);
        if let Some(objects) = objects {
            let got: Vec<serde_json::Value> = values.iter().filter_map(|v| serde_json::from_slice(v).ok()).collect();
            debug_assert_eq!(end, Ok(()), "{body:?}");
            debug_assert_eq!(got, objects, "{body:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Query strings

/// Parses `data` (as UTF-8, lossily) as a query string and sets the fields
/// it names on a `testing.rest.v1.AllTypes`, as the REST front end does.
///
/// Checked: names come out once each; the parameters, percent-encoded
/// again, parse back to the same parameters; an error names the offset of
/// a `%` in the query. Fields that could be set print as JSON that parses
/// back to the same message.
pub fn query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let params = match crate::rest::query::parse(&text) {
        Ok(params) => params,
        Err(error) => {
            let at = error
                .rsplit_once("at byte ")
                .and_then(|(_, n)| n.parse::<usize>().ok())
                .and_then(|n| text.as_bytes().get(n));
            debug_assert_eq!(at, Some(&b'%'), "{text:?}: {error}");
            return;
        }
    };
    for (i, param) in params.iter().enumerate() {
        debug_assert!(!param.values.is_empty());
        debug_assert!(params[..i].iter().all(|p| p.name != param.name), "{text:?}");
    }
    let encode = |s: &str| {
        let mut out = String::new();
        for &b in s.as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    let again: Vec<String> = params
        .iter()
        .flat_map(|p| p.values.iter().map(|v| format!("{}={}", encode(&p.name), encode(v))))
        .collect();
    debug_assert_eq!(
        crate::rest::query::parse(&again.join("&")).as_ref(),
        Ok(&params),
        "{text:?}"
    );

    let Some(descriptor) = rich_pool().and_then(|p| p.get_message_by_name("testing.rest.v1.AllTypes")) else {
        return;
    };
    let mut message = DynamicMessage::new(descriptor);
    for param in &params {
        let values: Vec<&str> = param.values.iter().map(String::as_str).collect();
        // A violation leaves the message as it was: fields are set whole or not at all.
        let _ = fields::set_from_text(&mut message, &param.name, &values);
    }
    check_json_round_trip(&codec(data.first().copied().unwrap_or_default()), &message);
}

// ---------------------------------------------------------------------------
// Configuration

/// Parses `data` as the YAML configuration (when it is UTF-8, as a file
/// must be).
///
/// Checked: no panic and no hang on any text (aliases, anchors, nesting);
/// an error names at least one problem. A configuration that loads shows
/// (`GET /config`, serialized) as something that loads again to the same
/// configuration.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_yaml(text) {
        Ok(config) => config,
        Err(errors) => {
            debug_assert!(!errors.0.is_empty(), "{text:?}");
            return;
        }
    };
    let Ok(shown) = serde_json::to_value(&config) else {
        debug_assert!(false, "{text:?} loads but does not serialize");
        return;
    };
    // JSON is YAML: the JSON form must load as it is.
    let reloaded = Config::from_yaml(&shown.to_string());
    debug_assert!(reloaded.is_ok(), "{text:?} shows as {shown}: {reloaded:?}");
    if let Ok(reloaded) = reloaded {
        debug_assert_eq!(serde_json::to_value(&reloaded).ok(), Some(shown), "{text:?}");
    }
}

// ---------------------------------------------------------------------------
// traceparent

/// Parses `data` as a `traceparent` header.
///
/// Checked: the answer is the reference reading of the W3C rules (lower-case
/// hex, version `ff` invalid, version `00` exactly 55 characters, a later
/// version longer only after a `-`, no all-zero ids). A parsed trace is
/// continued: the header sent upstream is version `00` with the same trace
/// id and sampled flag and the gateway's own span as the parent.
pub fn traceparent(data: &[u8]) {
    let parsed = trace::parse(data);
    debug_assert_eq!(parsed, reference::traceparent(data), "{data:?}");
    let (Some((trace_id, parent_id, sampled)), Ok(value)) = (parsed, HeaderValue::from_bytes(data)) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(trace::TRACEPARENT, value);
    let context = trace::propagate(&mut headers, None);
    debug_assert!(
        context.is_some_and(|c| c.trace_id == trace_id && c.parent_id == Some(parent_id) && c.sampled == sampled),
        "{data:?}: {context:?}"
    );
    let sent = headers
        .get(trace::TRACEPARENT)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    debug_assert!(sent.len() == 55 && sent.starts_with(b"00-"), "{sent:?}");
    debug_assert_eq!(
        trace::parse(sent),
        context.map(|c| (trace_id, c.span_id, sampled)),
        "{sent:?}"
    );
}

// ---------------------------------------------------------------------------
// grpc-status, grpc-message and details

/// Reads a status from headers made of `data` (`grpc-status`,
/// `grpc-message` and `grpc-status-details-bin`, split at newlines) and
/// makes the REST error body from it; percent-decodes and -encodes `data`
/// as a `grpc-message`.
///
/// Checked: decoding never fails; any text, encoded, is a valid header
/// value and decodes back to itself; a status written to headers reads
/// back the same; the REST error body is JSON with the status's code and
/// message.
pub fn grpc_message(data: &[u8]) {
    let decoded = status::percent_decode(data);
    let text = String::from_utf8_lossy(data);
    for message in [decoded.as_str(), &text] {
        let encoded = status::percent_encode(message);
        debug_assert!(HeaderValue::from_str(&encoded).is_ok(), "{encoded:?}");
        debug_assert_eq!(status::percent_decode(encoded.as_bytes()), message);
    }

    let mut lines = data.splitn(3, |&b| b == b'\n');
    let mut headers = HeaderMap::new();
    for name in [status::GRPC_STATUS, status::GRPC_MESSAGE, status::GRPC_STATUS_DETAILS] {
        if let Some(Ok(value)) = lines.next().map(HeaderValue::from_bytes) {
            headers.insert(name, value);
        }
    }
    if let Some(received) = Status::from_headers(&headers) {
        debug_assert!(Code::ALL.contains(&received.code));
        let round_trip = Status::from_headers(&received.to_trailers());
        debug_assert_eq!(
            round_trip.map(|s| (s.code, s.message)),
            Some((received.code, received.message.clone()))
        );
        if let Some(pool) = rich_pool() {
            let body = transcode::status_json(&received, pool, &codec(0));
            let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            debug_assert!(
                json.as_ref()
                    .is_some_and(|j| j["code"] == received.code.as_i32() && j["message"] == received.message.as_str()),
                "{received:?} -> {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/2 frames from an upstream

/// Feeds `data` (after its chunking plan) to the upstream transport's
/// GOAWAY watch, whole and in pieces.
///
/// Checked: the same code is noted in any chunking, and it is the code of
/// the last GOAWAY (with at least its fixed 8 bytes) that a slow, obvious
/// reference walk of the frames finds.
pub fn http2_goaway(data: &[u8]) {
    use crate::upstream::goaway_watch::FrameScan;
    let (lengths, body) = plan(data);
    let noted = |chunks: &[&[u8]]| {
        let mut scan = FrameScan::default();
        let last = scan.last_goaway();
        for chunk in chunks {
            scan.feed(chunk);
        }
        last.reason().map(u32::from)
    };
    let whole = noted(&[body]);
    debug_assert_eq!(noted(&pieces(body, lengths)), whole, "{body:?} split as {lengths:?}");
    debug_assert_eq!(whole, reference::last_goaway(body), "{body:?}");
}

// ---------------------------------------------------------------------------
// HPACK header blocks from a client

/// The header list limit of the `hpack` target: small, so that the fuzzer
/// reaches it.
const HPACK_LIST_LIMIT: usize = 1024;

/// Decodes `data` (after its chunking plan: each piece is one header block)
/// as the header blocks of one connection, until a connection error.
///
/// Checked: a decoder without the list limit gets the same outcome and
/// fields, so a list over the limit leaves the table in step (and stops
/// the fields where it crosses the limit); each list that decodes, our
/// encoder re-encodes (with table size changes between blocks) and a
/// separate decoder reads back the same, block after block; every name
/// and value survives Huffman coding.
pub fn hpack(data: &[u8]) {
    use crate::relay::hpack::{Decoder, Encoder, HpackError, huffman_decode, huffman_encode};
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;
    let collect = |decoder: &mut Decoder, block: &[u8]| {
        let mut fields: Fields = Vec::new();
        let result = decoder.decode(block, |n, v| fields.push((n.to_vec(), v.to_vec())));
        (result, fields)
    };
    let (lengths, body) = plan(data);
    let mut decoder = Decoder::new(4096, HPACK_LIST_LIMIT);
    let mut unlimited = Decoder::new(4096, usize::MAX);
    let mut encoder = Encoder::new();
    let mut peer = Decoder::new(4096, usize::MAX);
    for block in pieces(body, lengths) {
        let (result, fields) = collect(&mut decoder, block);
        if cfg!(debug_assertions) {
            let (reference, all) = collect(&mut unlimited, block);
            let size: usize = all.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            match result {
                Err(HpackError::ListTooLarge) => {
                    debug_assert_eq!(reference, Ok(()), "{block:?}");
                    debug_assert!(size > HPACK_LIST_LIMIT, "{block:?}");
                    debug_assert!(fields.len() < all.len() && all.starts_with(&fields), "{block:?}");
                }
                Err(error) => debug_assert_eq!(reference, Err(error), "{block:?}"),
                Ok(()) => {
                    debug_assert_eq!((reference, &all), (Ok(()), &fields), "{block:?}");
                    debug_assert!(size <= HPACK_LIST_LIMIT, "{block:?}");
                    encoder.set_max_table_size([4096, 0, 4096, 256, 4096][block.len() % 5]);
                    let mut encoded = Vec::new();
                    encoder.begin_block(&mut encoded);
                    for (name, value) in &fields {
                        encoder.encode(name, value, &mut encoded);
                    }
                    let (again, back) = collect(&mut peer, &encoded);
                    debug_assert_eq!((again, &back), (Ok(()), &fields), "{block:?} re-encoded as {encoded:?}");
                }
            }
            for text in all.iter().flat_map(|(n, v)| [n, v]) {
                let mut coded = Vec::new();
                huffman_encode(text, &mut coded);
                let mut decoded = Vec::new();
                debug_assert_eq!(huffman_decode(&coded, &mut decoded), Ok(()), "{text:?}");
                debug_assert_eq!(&decoded, text, "{coded:?}");
            }
        }
        if result.is_err_and(|e| e.is_connection_error()) {
            return;
        }
    }
}

/// Cuts what a client sends into HTTP/2 frames as the relay does (whole,
/// and in the pieces the input asks for), checks each one, and gathers
/// header blocks over CONTINUATION frames.
///
/// Checked with debug assertions: the frames and the first error are the
/// same in any chunking; a SETTINGS frame that parses is written back to
/// the same settings; no block outgrows its bound.
pub fn http2_frames(data: &[u8]) {
    use crate::relay::frame::{self, BlockAssembler, Frame};
    const MAX_BLOCK: usize = 4096;
    let (lengths, body) = plan(data);
    let walk = |chunks: &[&[u8]]| {
        let mut buf = bytes::BytesMut::new();
        let mut assembler = BlockAssembler::default();
        let mut seen: Vec<String> = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let (head, payload) = match frame::next_frame(&mut buf, frame::DEFAULT_MAX_FRAME_SIZE) {
                    Ok(Some(cut)) => cut,
                    Ok(None) => break,
                    Err(error) => {
                        seen.push(format!("error {error}"));
                        return seen;
                    }
                };
                let parsed = frame::parse(&head, &payload).and_then(|parsed| {
                    assembler.check_order(&parsed)?;
                    if let Frame::Settings(settings) = &parsed {
                        let mut written = Vec::new();
                        settings.write(&mut written);
                        let again = frame::next_frame(&mut bytes::BytesMut::from(&written[..]), u32::MAX)
                            .ok()
                            .flatten()
                            .and_then(|(h, p)| frame::parse(&h, &p).ok().map(|f| format!("{f:?}")));
                        debug_assert_eq!(again, Some(format!("{:?}", Frame::Settings(*settings))));
                    }
                    let block = match parsed {
                        Frame::Headers {
                            stream,
                            end_stream,
                            end_headers,
                            fragment,
                        } => assembler.headers(stream, end_stream, end_headers, fragment, MAX_BLOCK)?,
                        Frame::Continuation {
                            end_headers, fragment, ..
                        } => assembler.continuation(end_headers, fragment, MAX_BLOCK)?,
                        other => {
                            seen.push(format!("{other:?}"));
                            None
                        }
                    };
                    if let Some(block) = block {
                        debug_assert!(block.block.len() <= MAX_BLOCK);
                        seen.push(format!("block {} {} {:?}", block.stream, block.end_stream, block.block));
                    }
                    Ok(())
                });
                if let Err(error) = parsed {
                    seen.push(format!("error {error}"));
                    if error.stream.is_none() {
                        return seen;
                    }
                }
            }
        }
        seen
    };
    let whole = walk(&[body]);
    debug_assert_eq!(walk(&pieces(body, lengths)), whole, "{body:?} split as {lengths:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first byte of a `json_transcode` input that picks `name` (and
    /// codec options 0).
    fn selector(name: &str) -> u8 {
        let index = JSON_TYPES.iter().position(|t| *t == name).unwrap();
        u8::try_from(index).unwrap() << 4
    }

    /// Runs `f` on a thread with a 2 MiB stack: what a tokio worker gets by
    /// default, so what a request body is parsed with.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn deep_json_nesting_is_an_error_not_a_stack_overflow() {
        on_small_stack(|| {
            let depth = 100_000;
            let open = |unit: &str| unit.repeat(depth);
            let cases = [
                ("google.protobuf.Value", open("[")),
                ("google.protobuf.Value", format!("{}{}", open("["), "]".repeat(depth))),
                ("google.protobuf.Value", open("{\"a\":")),
                (
                    "google.protobuf.Struct",
                    format!("{}1{}", open("{\"a\":"), "}".repeat(depth)),
                ),
                ("testing.rest.v1.Nested", open("{\"deeper\":")),
                (
                    "testing.rest.v1.Thing",
                    format!("{}{}", open("{\"thing\":"), "}".repeat(depth)),
                ),
                (
                    "testing.rest.v1.AllTypes",
                    format!("{{\"nested\":{}", open("{\"deeper\":")),
                ),
                (
                    "google.protobuf.Any",
                    format!(
                        "{{\"value\":{},\"@type\":\"type.googleapis.com/google.protobuf.Value\"}}",
                        open("[")
                    ),
                ),
            ];
            let pool = rich_pool().unwrap();
            for (name, json) in cases {
                let descriptor = pool.get_message_by_name(name).unwrap();
                let violation = codec(0).parse(descriptor, json.as_bytes(), "").unwrap_err();
                assert!(
                    violation.description.contains("recursion limit exceeded"),
                    "{name}: {}",
                    violation.description
                );
                let mut input = vec![selector(name)];
                input.extend_from_slice(json.as_bytes());
                json_transcode(&input);
            }
            // Values of unknown fields are skipped without recursing: however
            // deep, they cost no stack.
            let descriptor = pool.get_message_by_name("testing.rest.v1.Thing").unwrap();
            let unknown = format!("{{\"unknown\":{}{}}}", open("["), "]".repeat(depth));
            assert!(codec(0).parse(descriptor.clone(), unknown.as_bytes(), "").is_ok());
            assert!(codec(1).parse(descriptor, unknown.as_bytes(), "").is_err());
        });
    }

    #[test]
    fn json_nesting_below_the_limit_round_trips() {
        on_small_stack(|| {
            for depth in [1, 50, 120] {
                let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let mut input = vec![selector("google.protobuf.Value")];
                input.extend_from_slice(json.as_bytes());
                json_transcode(&input);
                let json = format!("{}{{}}{}", "{\"deeper\":".repeat(depth), "}".repeat(depth));
                let mut input = vec![selector("testing.rest.v1.Nested")];
                input.extend_from_slice(json.as_bytes());
                json_transcode(&input);
            }
        });
    }

    #[test]
    fn wire_json_checks_ordinary_and_corrupted_messages() {
        let pool = rich_pool().unwrap();
        let all = pool.get_message_by_name("testing.rest.v1.AllTypes").unwrap();
        let codec = codec(0);
        let json = br#"{"d": 1.5, "i64": "-3", "text": "hi", "color": "RED", "ids": [1, 2],
            "nested": {"label": "n", "deeper": {"big": "9"}}, "when": "2024-01-02T03:04:05.678Z",
            "wait": "1.5s", "wI32": 7, "counts": {"a": 1, "b": 2}, "pickText": "t", "maybe": ""}"#;
        let bytes = codec.parse(all.clone(), json, "").unwrap().encode_to_vec();
        let fast = JsonCodec::for_pool(&Transcoding::default(), pool);
        assert!(fast.print_encoded(&all, &bytes).is_some(), "the wire printer declined");
        for options in [0x00, 0x02, 0x04, 0x08, 0x0e] {
            let mut input = vec![options];
            input.extend_from_slice(&bytes);
            wire_json(&input);
            for cut in 0..bytes.len() {
                wire_json(&input[..=cut]);
            }
        }
    }

    #[test]
    fn yaml_alias_bombs_are_rejected_quickly() {
        // Bounded: at most 10^5 copies even if nothing stopped the expansion.
        let mut bomb = String::from(
            "listen: 0.0.0.0:8080\ndescriptors: []\nupstreams:\n  l0: &l0 {endpoints: [\"127.0.0.1:1\"]}\n",
        );
        for level in 1..=5 {
            let refs = vec![format!("*l{}", level - 1); 10].join(", ");
            bomb.push_str(&format!("  l{level}: &l{level} {{<<: [{refs}]}}\n"));
        }
        bomb.push_str("routes: [{match: \"*\", upstream: l0}]\n");
        let start = std::time::Instant::now();
        assert!(Config::from_yaml(&bomb).is_err());
        config_yaml(bomb.as_bytes());
        // About 0.6 s unoptimised for both; it was 5 to 7 s.
        assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    }

    #[test]
    fn grpc_message_decoding_takes_any_bytes() {
        let cases: [&[u8]; 10] = [
            b"%",
            b"%4",
            b"abc%",
            b"abc%4",
            b"%zz%4g%%41",
            b"%E2%82",          // a UTF-8 sequence cut short
            b"%C3%28",          // an invalid continuation byte
            b"\xff\xfe%\xff%F", // raw bytes that are not UTF-8, and escapes cut short
            b"%F0%9F%98%80%",   // a whole emoji, then a lone %
            b"0\n%FF%\nAAAA",   // status, message, details
        ];
        for raw in cases {
            let decoded = status::percent_decode(raw);
            assert_eq!(
                status::percent_decode(status::percent_encode(&decoded).as_bytes()),
                decoded
            );
            grpc_message(raw);
        }
        assert_eq!(status::percent_decode(b"%"), "%");
        assert_eq!(status::percent_decode(b"a%4"), "a%4");
        assert_eq!(status::percent_decode(b"%E2%82"), "\u{fffd}");
        assert_eq!(status::percent_decode(b"%41%42c"), "ABc");
    }

    /// Every entry point on a few ordinary inputs, so a wrong property shows
    /// up in `cargo test` before it costs a fuzzing run.
    #[test]
    fn entry_points_accept_ordinary_inputs() {
        path_template("/v1/{name=things/*}:run", "/v1/things/a:run");
        for timeout in [
            &b"1S"[..],
            b"99999999H",
            b"0n",
            b"100m",
            b"",
            b"\x3f\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            grpc_timeout(timeout);
        }
        for body in [&b"\x00AAAAAQ=="[..], b"\x02\x03\x01AAAAAAE=AAAAAA", b"\x00AAAAAAA"] {
            grpc_web_text(body);
        }
        for stream in [
            &b"\x00\x00\x00\x00\x00\x01x"[..],
            b"\x01\x03\x00\x00\x00\x00\x02ab",
            b"\x00\x02",
        ] {
            grpc_frames(stream);
        }
        for json in [
            &b"\x00{\"d\":1.5,\"text\":\"hi\",\"nested\":{\"deeper\":{\"big\":\"7\"}}}"[..],
            b"\x30{\"a\":[1,\"x\",null,{\"b\":true}]}",
            b"\x50{\"@type\":\"type.googleapis.com/google.protobuf.Duration\",\"value\":\"1.5s\"}",
            b"\x60\"2024-05-01T12:00:00Z\"",
            b"\x00{\"d\":\"NaN\"}",
        ] {
            json_transcode(json);
        }
        for body in [
            &b"\x00{\"a\":1}\n{\"b\":[2]}"[..],
            b"\x01\x03[{\"a\":1},{}]",
            b"\x00[1]",
        ] {
            json_split(body);
        }
        for text in [
            &b"text=a%20b&ids=1&ids=2&nested.label=x"[..],
            b"a=%zz",
            b"w_d=NaN&raw=AQ",
        ] {
            query(text);
        }
        for yaml in [MINIMAL_CONFIG.as_bytes(), b"listen: [", b"a: &a [*a]"] {
            config_yaml(yaml);
        }
        for header in [
            &b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
            b"ff-00",
            b"",
        ] {
            traceparent(header);
        }
        grpc_message(b"3\nbad%20name\nCAMSCGJhZCBuYW1l");
        // RFC 7541 C.4.1 and C.4.2 (split after 17 bytes), then an integer cut short.
        let mut blocks = vec![1, 17];
        blocks.extend(b"\x82\x86\x84\x41\x8c\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff");
        blocks.extend(b"\x82\x86\x84\xbe\x58\x86\xa8\xeb\x10\x64\x9c\xbf");
        hpack(&blocks);
        hpack(&[0, 0xff]);
        // A SETTINGS frame, a split HEADERS block, a PING, a bad WINDOW_UPDATE.
        let mut frames = vec![3, 5, 11, 2];
        frames.extend([0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        frames.extend([0, 0, 2, 1, 1, 0, 0, 0, 1, 0x82, 0x86]);
        frames.extend([0, 0, 1, 9, 4, 0, 0, 0, 1, 0x84]);
        frames.extend([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        frames.extend([0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        http2_frames(&frames);
        http2_frames(&frames[..frames.len() - 3]);
    }

    const MINIMAL_CONFIG: &str = "listen: 0.0.0.0:8080\ndescriptors: []\nupstreams: {u: {endpoints: [\"127.0.0.1:1\"]}}\nroutes: [{match: \"*\", upstream: u}]\n";

    #[test]
    fn the_goaway_target_and_its_reference_find_a_real_goaway() {
        // Two piece lengths (3 and 10), then an empty SETTINGS and a GOAWAY(ENHANCE_YOUR_CALM).
        let mut input = vec![2, 3, 10];
        input.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        input.extend([0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xb]);
        assert_eq!(reference::last_goaway(&input[3..]), Some(0xb));
        http2_goaway(&input);
        http2_goaway(&input[..input.len() - 1]);
    }
}
