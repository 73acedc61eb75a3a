//! The `grpc-timeout` header: parsing what a client sent and encoding what
//! remains of a deadline for the upstream. Pure functions over bytes.

use std::time::Duration;

use http::HeaderValue;

/// `grpc-timeout`.
pub(crate) const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Why a `grpc-timeout` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed grpc-timeout {value:?}: expected 1 to 8 digits followed by a unit H, M, S, m, u or n")]
pub(crate) struct InvalidTimeout {
    /// The value as received (lossy).
    pub value: String,
}

/// Parses a `grpc-timeout` value such as `100m` or `5S`.
pub(crate) fn parse(value: &[u8]) -> Result<Duration, InvalidTimeout> {
    let invalid = || InvalidTimeout {
        value: String::from_utf8_lossy(&value[..value.len().min(32)]).into_owned(),
    };
    let (&unit, digits) = value.split_last().ok_or_else(invalid)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let n = digits.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(invalid()),
    })
}

/// Encodes a duration in the finest unit whose value fits in 8 digits.
pub(crate) fn encode(timeout: Duration) -> HeaderValue {
    let mut text = Text::default();
    HeaderValue::from_bytes(text.encode(timeout)).unwrap_or_else(|_| HeaderValue::from_static("1n"))
}

/// Room for an encoded `grpc-timeout` value (8 digits and a unit), so the
/// relay, which copies the value into its header block, allocates nothing.
#[derive(Default)]
pub(crate) struct Text([u8; 9]);

impl Text {
    /// [`encode`], written here.
    pub(crate) fn encode(&mut self, timeout: Duration) -> &[u8] {
        const MAX: u128 = 99_999_999;
        let nanos = timeout.as_nanos();
        let (value, unit) = [
            (1, 'n'),
            (1_000, 'u'),
            (1_000_000, 'm'),
            (1_000_000_000, 'S'),
            (60_000_000_000, 'M'),
            (3_600_000_000_000, 'H'),
        ]
        .into_iter()
        // Round up, so a deadline is never shortened by the encoding below the unit.
        .map(|(per_unit, unit)| (nanos.div_ceil(per_unit), unit))
        .find(|(value, _)| *value <= MAX)
        .unwrap_or((MAX, 'H'));
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(value.max(1) as u64);
        self.0[..digits.len()].copy_from_slice(digits.as_bytes());
        self.0[digits.len()] = unit as u8;
        &self.0[..=digits.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(b"100m"), Ok(Duration::from_millis(100)));
        assert_eq!(parse(b"5S"), Ok(Duration::from_secs(5)));
        assert_eq!(parse(b"2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(b"1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse(b"7u"), Ok(Duration::from_micros(7)));
        assert_eq!(parse(b"99999999n"), Ok(Duration::from_nanos(99_999_999)));
        assert_eq!(parse(b"0m"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"m",
            b"100",
            b"100x",
            b"123456789m",
            b"-1m",
            b"1.5S",
            b"10 m",
            b"\xffm",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(b"abc").unwrap_err().to_string().contains("\"abc\""));
    }

    #[test]
    fn encodes_finest_unit_that_fits_and_round_trips() {
        assert_eq!(encode(Duration::from_millis(100)), "100000u");
        assert_eq!(encode(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(encode(Duration::from_secs(15)), "15000000u");
        assert_eq!(encode(Duration::from_secs(3600)), "3600000m");
        assert_eq!(encode(Duration::ZERO), "1n");
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(99),
            Duration::from_secs(86_400 * 30),
        ] {
            let back = parse(encode(d).as_bytes()).unwrap();
            assert!(
                back >= d && back - d < d / 1000 + Duration::from_nanos(1),
                "{d:?} -> {back:?}"
            );
        }
    }
}
