//! The access log: one line per call, event `call` at target
//! `grpc_edge::access`, level INFO.
//!
//! In a host application the line is a `tracing` event, so the host's
//! subscriber formats and routes it like any other. The `grpc-edge` binary
//! instead installs a direct writer: the line is formatted here, by hand, in
//! the same shape its subscriber prints (text or JSON), and appended to the
//! log buffer. A gateway serving tens of thousands of calls a second would
//! otherwise spend a sizeable share of its CPU in generic event formatting
//! (field visitors, `Debug` quoting, timestamp formatting) for a line whose
//! fields never change. `RUST_LOG` still decides whether the line is written.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::status::Code;

/// Everything an access log line says about a call.
pub(crate) struct Entry<'a> {
    pub(crate) protocol: &'a str,
    pub(crate) http_method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) grpc_service: &'a str,
    pub(crate) grpc_method: &'a str,
    /// The endpoint that served the call, `-` when none did.
    pub(crate) upstream: &'a str,
    pub(crate) code: Code,
    pub(crate) message: &'a str,
    pub(crate) http_status: u16,
    pub(crate) duration: Duration,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) messages_in: u32,
    pub(crate) messages_out: u32,
    pub(crate) client: Option<IpAddr>,
    pub(crate) retries: u32,
    /// The client certificate's identity, empty without one.
    pub(crate) peer: &'a str,
    pub(crate) trace_id: Option<[u8; 16]>,
}

/// The shape of a directly written line (chosen by the binary's `--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub(crate) enum LineFormat {
    /// `<time>  INFO grpc_edge::access: call key=value ...`
    Text,
    /// `{"timestamp":..,"level":"INFO","message":"call",...,"target":"grpc_edge::access"}`
    Json,
}

struct Direct {
    format: LineFormat,
    write: fn(&[u8]),
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// Makes every later access log line go to `write`, formatted as `format`,
/// instead of through `tracing`. Only the first call counts.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub(crate) fn write_directly(format: LineFormat, write: fn(&[u8])) {
    let _ = DIRECT.set(Direct { format, write });
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// Writes the access log line of a call, if `RUST_LOG` lets it through.
pub(crate) fn emit(entry: &Entry<'_>) {
    if !tracing::enabled!(target: "grpc_edge::access", tracing::Level::INFO) {
        return;
    }
    let Some(direct) = DIRECT.get() else {
        emit_event(entry);
        return;
    };
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        match direct.format {
            LineFormat::Text => format_text(&mut line, crate::turn::wall_now(), entry),
            LineFormat::Json => format_json(&mut line, crate::turn::wall_now(), entry),
        }
        (direct.write)(line.as_bytes());
    });
}

fn emit_event(entry: &Entry<'_>) {
    let mut trace_id = [0u8; 32];
    let trace_id = entry.trace_id.map_or("", |id| hex(&id, &mut trace_id));
    tracing::info!(
        target: "grpc_edge::access",
        protocol = entry.protocol,
        http_method = entry.http_method,
        path = entry.path,
        grpc_service = entry.grpc_service,
        grpc_method = entry.grpc_method,
        upstream = entry.upstream,
        grpc_code = entry.code.as_str(),
        grpc_message = entry.message,
        http_status = entry.http_status,
        duration_ms = entry.duration.as_secs_f64() * 1000.0,
        bytes_in = entry.bytes_in,
        bytes_out = entry.bytes_out,
        messages_in = entry.messages_in,
        messages_out = entry.messages_out,
        client = entry.client.map(|c| c.to_string()).unwrap_or_default(),
        retries = entry.retries,
        peer = entry.peer,
        trace_id = trace_id,
        "call"
    );
}

/// One field's value, in the two line formats.
enum Value<'a> {
    Str(&'a str),
    Int(u64),
    Millis(Duration),
}

/// The fields of a line, in order.
fn fields<'a>(entry: &'a Entry<'_>, client: &'a str, trace_id: &'a str) -> [(&'static str, Value<'a>); 19] {
    [
        ("protocol", Value::Str(entry.protocol)),
        ("http_method", Value::Str(entry.http_method)),
        ("path", Value::Str(entry.path)),
        ("grpc_service", Value::Str(entry.grpc_service)),
        ("grpc_method", Value::Str(entry.grpc_method)),
        ("upstream", Value::Str(entry.upstream)),
        ("grpc_code", Value::Str(entry.code.as_str())),
        ("grpc_message", Value::Str(entry.message)),
        ("http_status", Value::Int(u64::from(entry.http_status))),
        ("duration_ms", Value::Millis(entry.duration)),
        ("bytes_in", Value::Int(entry.bytes_in)),
        ("bytes_out", Value::Int(entry.bytes_out)),
        ("messages_in", Value::Int(u64::from(entry.messages_in))),
        ("messages_out", Value::Int(u64::from(entry.messages_out))),
        ("client", Value::Str(client)),
        ("retries", Value::Int(u64::from(entry.retries))),
        ("peer", Value::Str(entry.peer)),
        ("trace_id", Value::Str(trace_id)),
        // Kept last so the two formats list the same fields.
        ("target", Value::Str("grpc_edge::access")),
    ]
}

/// Formats `entry` like `tracing-subscriber`'s text format: values that
/// need it are quoted (Rust string escapes), the rest written bare.
pub(crate) fn format_text(out: &mut String, now: SystemTime, entry: &Entry<'_>) {
    let mut client = [0u8; 64];
    let client = ip(entry.client, &mut client);
    let mut trace_id = [0u8; 32];
    let trace_id = entry.trace_id.map_or("", |id| hex(&id, &mut trace_id));
    timestamp(out, now);
    out.push_str("  INFO grpc_edge::access: call");
    for (key, value) in fields(entry, client, trace_id) {
        if key == "target" {
            continue;
        }
        out.push(' ');
        out.push_str(key);
        out.push('=');
        match value {
            // Written out: `Debug` costs a formatter for each empty field.
            Value::Str("") => out.push_str("\"\""),
            Value::Str(s) if needs_quotes(s) => {
                let _ = write!(out, "{s:?}");
            }
            Value::Str(s) => out.push_str(s),
            Value::Int(n) => out.push_str(itoa::Buffer::new().format(n)),
            Value::Millis(d) => millis(out, d),
        }
    }
    out.push('\n');
}

/// Formats `entry` like `tracing-subscriber`'s JSON format (flattened).
pub(crate) fn format_json(out: &mut String, now: SystemTime, entry: &Entry<'_>) {
    let mut client = [0u8; 64];
    let client = ip(entry.client, &mut client);
    let mut trace_id = [0u8; 32];
    let trace_id = entry.trace_id.map_or("", |id| hex(&id, &mut trace_id));
    out.push_str("{\"timestamp\":\"");
    timestamp(out, now);
    out.push_str("\",\"level\":\"INFO\",\"message\":\"call\"");
    for (key, value) in fields(entry, client, trace_id) {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        match value {
            Value::Str(s) => json_string(out, s),
            Value::Int(n) => out.push_str(itoa::Buffer::new().format(n)),
            Value::Millis(d) => millis(out, d),
        }
    }
    out.push_str("}\n");
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.bytes()
            .any(|b| b <= b' ' || b == b'"' || b == b'=' || b == b'\\' || b >= 0x7f)
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(out: &mut String, d: Duration) {
    let micros = d.as_micros();
    out.push_str(itoa::Buffer::new().format(micros / 1000));
    let fraction = (micros % 1000) as u32;
    out.push('.');
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    for digit in digits {
        out.push(char::from(b'0' + digit as u8));
    }
}

/// The client address as `Display` writes it; IPv4, the usual case, by
/// hand (the formatting machinery was about 1% of a relayed call's CPU).
fn ip(address: Option<IpAddr>, buffer: &mut [u8; 64]) -> &str {
    let address = match address {
        None => return "",
        Some(IpAddr::V4(v4)) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buffer[len] = b'.';
                    len += 1;
                }
                let mut digits = itoa::Buffer::new();
                let digits = digits.format(octet).as_bytes();
                buffer[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            return std::str::from_utf8(&buffer[..len]).unwrap_or("");
        }
        Some(v6) => v6,
    };
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    if std::io::Write::write_fmt(&mut cursor, format_args!("{address}")).is_err() {
        return "";
    }
    let len = cursor.position() as usize;
    std::str::from_utf8(&buffer[..len]).unwrap_or("")
}

fn hex<'b>(bytes: &[u8; 16], buffer: &'b mut [u8; 32]) -> &'b str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in bytes.iter().enumerate() {
        buffer[2 * i] = DIGITS[usize::from(byte >> 4)];
        buffer[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    std::str::from_utf8(&buffer[..]).unwrap_or("")
}

thread_local! {
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the last second seen.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` prints it:
/// `2026-11-27T16:40:07.123456Z`. The date part is cached per second.
fn timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != seconds {
            *cache = (seconds, civil(seconds));
        }
        out.push_str(std::str::from_utf8(&cache.1).unwrap_or("1970-01-01T00:00:00"));
    });
    let micros = since_epoch.subsec_micros();
    out.push('.');
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), by the days-to-civil
/// algorithm from Howard Hinnant's date library.
fn civil(seconds: u64) -> [u8; 19] {
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut text = [0u8; 19];
    let mut put = |at: usize, value: u64, width: usize| {
        let mut value = value;
        for i in (0..width).rev() {
            text[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, of_day / 3600, 2);
    put(14, of_day / 60 % 60, 2);
    put(17, of_day % 60, 2);
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        text[at] = separator;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for address in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.1.100",
            "::1",
            "::ffff:10.0.0.1",
            "2001:db8::8a2e:370:7334",
            "fe80::1:2:3:4",
        ] {
            let address: IpAddr = address.parse().unwrap();
            let mut buffer = [0u8; 64];
            assert_eq!(ip(Some(address), &mut buffer), address.to_string());
        }
        assert_eq!(ip(None, &mut [0u8; 64]), "");
    }

    fn entry() -> Entry<'static> {
        Entry {
            protocol: "rest",
            http_method: "GET",
            path: "/v1/orders/a b",
            grpc_service: "demo.v1.OrderService",
            grpc_method: "GetOrder",
            upstream: "127.0.0.1:50051",
            code: Code::NotFound,
            message: "no order \"7\"\n",
            http_status: 404,
            duration: Duration::from_micros(12_345),
            bytes_in: 0,
            bytes_out: 61,
            messages_in: 0,
            messages_out: 0,
            client: Some("10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            retries: 1,
            peer: "",
            trace_id: Some([0xab; 16]),
        }
    }

    #[test]
    fn civil_time_matches_known_dates() {
        assert_eq!(&civil(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&civil(1_796_143_207), b"2026-12-01T16:40:07");
        assert_eq!(&civil(4_107_542_399), b"2100-02-28T23:59:59");
    }

    #[test]
    fn text_lines_quote_what_needs_it() {
        let mut line = String::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_143_207_000_042);
        format_text(&mut line, at, &entry());
        assert_eq!(
            line,
            "2026-12-01T16:40:07.000042Z  INFO grpc_edge::access: call protocol=rest http_method=GET \
             path=\"/v1/orders/a b\" grpc_service=demo.v1.OrderService grpc_method=GetOrder \
             upstream=127.0.0.1:50051 grpc_code=NOT_FOUND grpc_message=\"no order \\\"7\\\"\\n\" \
             http_status=404 duration_ms=12.345 bytes_in=0 bytes_out=61 messages_in=0 messages_out=0 \
             client=10.1.2.3 retries=1 peer=\"\" trace_id=abababababababababababababababab\n"
        );
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut line = String::new();
        format_json(&mut line, SystemTime::UNIX_EPOCH + Duration::from_secs(1), &entry());
        assert!(line.ends_with("}\n"));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(parsed["timestamp"], "1970-01-01T00:00:01.000000Z");
        assert_eq!(parsed["level"], "INFO");
        assert_eq!(parsed["message"], "call");
        assert_eq!(parsed["target"], "grpc_edge::access");
        assert_eq!(parsed["grpc_message"], "no order \"7\"\n");
        assert_eq!(parsed["grpc_code"], "NOT_FOUND");
        assert_eq!(parsed["http_status"], 404);
        assert_eq!(parsed["duration_ms"], 12.345);
        assert_eq!(parsed["client"], "10.1.2.3");
        assert_eq!(parsed["retries"], 1);
        assert_eq!(parsed["trace_id"], "ab".repeat(16));
        assert_eq!(parsed.as_object().map(|o| o.len()), Some(22));
    }

    #[test]
    fn control_characters_are_escaped_in_json() {
        let mut out = String::new();
        json_string(&mut out, "a\u{1}b\u{7f}");
        assert_eq!(out, "\"a\\u0001b\u{7f}\"");
    }
}
