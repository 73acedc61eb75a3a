//! What an operator needs to know about a certificate, read once with
//! x509-parser when it is loaded: subject, serial, validity and names
//! ([`CertInfo`], serializable for the admin view), and the identity a
//! verified client presented ([`PeerIdentity`]). Nothing here verifies
//! signatures; rustls does that.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Which configured file a certificate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertRole {
    /// The listener's own chain (`tls.cert`).
    ListenerCert,
    /// A root that client certificates must chain to (`tls.client_ca`).
    ListenerClientCa,
    /// A root the upstream servers must chain to (`upstreams.*.tls.ca`).
    UpstreamCa,
    /// The gateway's client chain towards upstreams (`upstreams.*.tls.cert`).
    UpstreamClientCert,
}

/// One loaded certificate, for `GET /certs`, metrics and `grpc-edge check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// What the certificate is used for.
    pub role: CertRole,
    /// The file it was read from.
    pub file: PathBuf,
    /// Its position in that file, from 1 (1 is the leaf of a chain).
    pub index: usize,
    /// Subject distinguished name, e.g. `CN=library.internal, O=Example`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// Not valid before, seconds since the Unix epoch.
    pub not_before: i64,
    /// Not valid after, seconds since the Unix epoch.
    pub not_after: i64,
    /// `not_after` as RFC 3339 (UTC).
    pub not_after_rfc3339: String,
    /// Subject alternative names, as `DNS:…`, `IP:…`, `URI:…`, `email:…`.
    pub sans: Vec<String>,
    /// A CA certificate (basic constraints).
    pub is_ca: bool,
}

impl CertInfo {
    /// Parses `der`; the error is x509-parser's complaint.
    pub(crate) fn parse(der: &[u8], role: CertRole, file: &Path, index: usize) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let validity = cert.validity();
        let not_after = validity.not_after.timestamp();
        Ok(Self {
            role,
            file: file.to_path_buf(),
            index,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: validity.not_before.timestamp(),
            not_after,
            not_after_rfc3339: rfc3339(not_after),
            sans: sans(&cert).iter().map(ToString::to_string).collect(),
            is_ca: cert.is_ca(),
        })
    }

    /// Seconds left before expiry at `now` (negative once expired).
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.not_after.saturating_sub(now)
    }

    /// A one-line description: `CN=x (serial 01:02, file /p, #1)`.
    pub fn describe(&self) -> String {
        format!(
            "{} (serial {}, {} #{})",
            self.subject,
            self.serial,
            self.file.display(),
            self.index
        )
    }
}

/// One subject alternative name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum SubjectAltName {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// A URI, e.g. a SPIFFE ID.
    Uri(String),
    /// An e-mail address.
    Email(String),
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "DNS:{name}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
            Self::Uri(uri) => write!(f, "URI:{uri}"),
            Self::Email(email) => write!(f, "email:{email}"),
        }
    }
}

/// The identity of a client whose certificate the listener verified
/// against `tls.client_ca`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerIdentity {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The full subject distinguished name.
    pub subject: String,
    /// Subject alternative names.
    pub sans: Vec<SubjectAltName>,
    /// Serial number, colon-separated hex.
    pub serial: String,
}

impl PeerIdentity {
    /// Reads the identity from a verified end-entity certificate.
    pub(crate) fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Some(Self {
            common_name,
            subject: cert.subject().to_string(),
            sans: sans(&cert),
            serial: cert.raw_serial_as_string(),
        })
    }
}

fn sans(cert: &X509Certificate<'_>) -> Vec<SubjectAltName> {
    let Ok(Some(extension)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    extension
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(SubjectAltName::Dns((*dns).to_string())),
            GeneralName::URI(uri) => Some(SubjectAltName::Uri((*uri).to_string())),
            GeneralName::RFC822Name(email) => Some(SubjectAltName::Email((*email).to_string())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => None,
            }
            .map(SubjectAltName::Ip),
            _ => None,
        })
        .collect()
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Formats seconds since the Unix epoch as RFC 3339 in UTC, e.g. `2025-03-01T12:00:00Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// "in 3 days", "in 2 hours", "5 minutes ago".
pub(crate) fn human_delta(seconds: i64) -> String {
    let magnitude = seconds.unsigned_abs();
    let (amount, unit) = match magnitude {
        0..120 => (magnitude, "second"),
        120..7_200 => (magnitude / 60, "minute"),
        7_200..172_800 => (magnitude / 3600, "hour"),
        _ => (magnitude / 86_400, "day"),
    };
    let plural = if amount == 1 { "" } else { "s" };
    if seconds >= 0 {
        format!("in {amount} {unit}{plural}")
    } else {
        format!("{amount} {unit}{plural} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn human_deltas_pick_a_readable_unit() {
        assert_eq!(human_delta(30), "in 30 seconds");
        assert_eq!(human_delta(3 * 86_400 + 5), "in 3 days");
        assert_eq!(human_delta(-3600 * 5), "5 hours ago");
        assert_eq!(human_delta(-60), "60 seconds ago");
        assert_eq!(human_delta(86_400), "in 24 hours");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let err = CertInfo::parse(b"\x30\x03\x02\x01", CertRole::UpstreamCa, Path::new("x"), 1);
        assert!(err.is_err());
        assert!(PeerIdentity::from_der(b"nope").is_none());
    }

    #[test]
    fn sans_display_with_their_kind() {
        assert_eq!(SubjectAltName::Dns("a.b".into()).to_string(), "DNS:a.b");
        assert_eq!(
            SubjectAltName::Ip("127.0.0.1".parse().unwrap()).to_string(),
            "IP:127.0.0.1"
        );
        assert_eq!(
            SubjectAltName::Uri("spiffe://x/y".into()).to_string(),
            "URI:spiffe://x/y"
        );
    }
}
