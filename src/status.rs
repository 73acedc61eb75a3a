//! gRPC status codes and the answers the gateway makes itself: trailers-only
//! responses, status trailers, the code ⇄ HTTP status table, and the mapping
//! of HTTP/2 reset reasons to codes (from the gRPC HTTP/2 protocol spec).
//!
//! Every error the gateway produces goes through here, so a client always
//! sees a gRPC code and a message that says what happened.

use std::fmt;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;

/// `grpc-status`.
pub(crate) const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub(crate) const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
/// `grpc-status-details-bin`.
pub(crate) const GRPC_STATUS_DETAILS: http::HeaderName = http::HeaderName::from_static("grpc-status-details-bin");

/// The gRPC status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code for a number; unknown numbers are `UNKNOWN`, as the spec says.
    pub fn from_i32(n: i32) -> Code {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(Code::Unknown)
    }

    /// Parses a `grpc-status` header value.
    pub fn from_header(value: &HeaderValue) -> Code {
        let bytes = value.as_bytes();
        match bytes {
            [d] if d.is_ascii_digit() => Self::from_i32(i32::from(d - b'0')),
            [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
                Self::from_i32(i32::from(a - b'0') * 10 + i32::from(b - b'0'))
            }
            _ => Code::Unknown,
        }
    }

    /// The code in `grpc-status`, if the headers carry one. Cheaper than
    /// [`Status::from_headers`] when the message does not matter (an OK call).
    pub(crate) fn in_headers(headers: &HeaderMap) -> Option<Code> {
        headers.get(GRPC_STATUS).map(Code::from_header)
    }

    /// The code as a number.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The canonical upper-case name (`UNAVAILABLE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The `grpc-status` header value, without allocating.
    pub fn header_value(self) -> HeaderValue {
        const VALUES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        ];
        HeaderValue::from_static(VALUES[self as usize])
    }

    /// The HTTP status a REST client sees for this code (google.rpc / grpc-gateway table).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Ok => StatusCode::OK,
            Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code for an HTTP/2 RST_STREAM / GOAWAY reason (gRPC PROTOCOL-HTTP2 "Errors").
    pub fn from_h2_reason(reason: h2::Reason) -> Code {
        match reason {
            h2::Reason::REFUSED_STREAM => Code::Unavailable,
            h2::Reason::CANCEL => Code::Cancelled,
            h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        }
    }

    /// The code for a non-gRPC HTTP answer from an upstream (gRPC "HTTP to gRPC status" table).
    pub fn from_http_status(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gRPC status: code, message, optional encoded `google.rpc.Status` details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The code.
    pub code: Code,
    /// A developer-facing message.
    pub message: String,
    /// `grpc-status-details-bin`, as received (an encoded `google.rpc.Status`).
    pub details: Option<Bytes>,
}

impl Status {
    /// A status with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Reads a status from headers or trailers (`grpc-status`, `grpc-message`, details).
    pub fn from_headers(headers: &HeaderMap) -> Option<Status> {
        let code = Code::from_header(headers.get(GRPC_STATUS)?);
        let message = headers
            .get(GRPC_MESSAGE)
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default();
        let details = headers.get(GRPC_STATUS_DETAILS).and_then(|v| {
            use base64::Engine;
            let raw = v.as_bytes();
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(
                    raw.strip_suffix(b"==")
                        .or_else(|| raw.strip_suffix(b"="))
                        .unwrap_or(raw),
                )
                .ok()
                .map(Bytes::from)
        });
        Some(Status { code, message, details })
    }

    /// Writes `grpc-status` and `grpc-message` into a header map.
    pub fn write_to(&self, headers: &mut HeaderMap) {
        headers.insert(GRPC_STATUS, self.code.header_value());
        if !self.message.is_empty()
            && let Ok(value) = HeaderValue::from_str(&percent_encode(&self.message))
        {
            headers.insert(GRPC_MESSAGE, value);
        }
    }

    /// Trailers carrying this status.
    pub fn to_trailers(&self) -> HeaderMap {
        let mut trailers = HeaderMap::with_capacity(2);
        self.write_to(&mut trailers);
        trailers
    }

    /// A gRPC trailers-only response (HTTP 200, status in the headers, no body).
    pub fn to_grpc_response(&self) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        self.write_to(headers);
        response
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Percent-encodes a `grpc-message` (everything outside printable ASCII, and `%`).
pub(crate) fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded `grpc-message`; malformed escapes are kept as they are.
pub(crate) fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = |c: u8| char::from(c).to_digit(16);
            if let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_headers() {
        for code in Code::ALL {
            assert_eq!(Code::from_header(&code.header_value()), code);
        }
        assert_eq!(Code::from_header(&HeaderValue::from_static("99")), Code::Unknown);
        assert_eq!(Code::from_header(&HeaderValue::from_static("x")), Code::Unknown);
        assert_eq!(Code::from_header(&HeaderValue::from_static("")), Code::Unknown);
    }

    #[test]
    fn http_table_matches_the_design() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Internal, 500),
            (Code::Unknown, 500),
        ];
        for (code, http) in table {
            assert_eq!(code.http_status().as_u16(), http, "{code}");
        }
    }

    #[test]
    fn messages_are_percent_encoded_both_ways() {
        let message = "bad value: 100% \"ü\"\n";
        let encoded = percent_encode(message);
        assert_eq!(encoded, "bad value: 100%25 \"%C3%BC\"%0A");
        assert_eq!(percent_decode(encoded.as_bytes()), message);
        assert_eq!(percent_decode(b"50%"), "50%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
    }

    #[test]
    fn status_reads_back_from_headers() {
        let status = Status::new(Code::NotFound, "no book \"x\"");
        let headers = status.to_trailers();
        assert_eq!(Status::from_headers(&headers), Some(status));
    }
}
