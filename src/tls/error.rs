//! The two failure vocabularies of TLS: [`LoadError`] — a certificate, key
//! or CA file that cannot be used, naming the file and the problem — and
//! [`TlsError`] — a handshake that failed, naming the TLS cause in words an
//! operator can act on ("certificate name mismatch: expected
//! library.internal", "unknown CA", "the server requires a client
//! certificate"). Classifying rustls' errors happens here and nowhere else.

use std::io;
use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError};

/// A certificate, key or CA file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct LoadError {
    /// The configuration key the file came from: `cert`, `key`, `ca` or `client_ca`.
    pub field: &'static str,
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

impl LoadError {
    pub(crate) fn new(field: &'static str, file: impl Into<PathBuf>, problem: Problem) -> Self {
        Self {
            field,
            file: file.into(),
            problem,
        }
    }
}

/// What is wrong with a certificate, key or CA file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    /// The PEM text is broken (a truncated file, a missing END line, bad base64).
    #[error("malformed PEM: {0}")]
    MalformedPem(String),
    /// No `CERTIFICATE` block.
    #[error("no certificate in the file (expected a \"-----BEGIN CERTIFICATE-----\" block)")]
    NoCertificate,
    /// A CA file without a single certificate.
    #[error("CA file with no certificates (expected one or more \"-----BEGIN CERTIFICATE-----\" blocks)")]
    NoCaCertificates,
    /// A certificate that does not parse.
    #[error("certificate #{index} in the file is not a valid X.509 certificate: {reason}")]
    MalformedCertificate {
        /// Its position in the file, from 1.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// No private key block.
    #[error(
        "no private key in the file (expected a \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" PEM block)"
    )]
    NoPrivateKey,
    /// A passphrase-protected key.
    #[error("the private key is encrypted; give an unencrypted PEM key")]
    EncryptedKey,
    /// A key that is not RSA, ECDSA P-256/P-384 or Ed25519.
    #[error("unsupported key type ({0}); use RSA, ECDSA P-256/P-384 or Ed25519")]
    UnsupportedKey(String),
    /// The key is not the one the certificate was issued for.
    #[error("the private key does not match the certificate in {}", cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
    },
    /// The leaf certificate's not-after is in the past.
    #[error("certificate expired on {not_after} (subject {subject}, serial {serial})")]
    Expired {
        /// RFC 3339 not-after.
        not_after: String,
        /// Subject distinguished name.
        subject: String,
        /// Serial number, hex.
        serial: String,
    },
    /// The leaf certificate's not-before is in the future.
    #[error("certificate not valid before {not_before} (subject {subject}, serial {serial})")]
    NotYetValid {
        /// RFC 3339 not-before.
        not_before: String,
        /// Subject distinguished name.
        subject: String,
        /// Serial number, hex.
        serial: String,
    },
    /// The pair in use chained to the configured CA and this one does not.
    #[error("the certificate does not chain to the CA in {}: {reason}", ca.display())]
    UntrustedChain {
        /// The CA file.
        ca: PathBuf,
        /// Why verification failed.
        reason: String,
    },
    /// A CA certificate that cannot serve as a trust anchor.
    #[error("CA certificate #{index} cannot be used as a trust root: {reason}")]
    BadCa {
        /// Its position in the file, from 1.
        index: usize,
        /// Why.
        reason: String,
    },
    /// rustls refused to build a configuration from the files.
    #[error("cannot be used for TLS: {0}")]
    Unusable(String),
    /// No CA file configured and the operating system's store is empty.
    #[error("no system CA certificates found (install ca-certificates, set SSL_CERT_FILE, or set the `ca` key)")]
    NoSystemRoots,
}

/// Why a TLS handshake failed, in the words an operator needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The name to verify is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// The server's certificate is for other names.
    #[error("certificate name mismatch: expected {expected}{}", presented_names(presented))]
    NameMismatch {
        /// The name we verified against (`server_name`, or the endpoint host).
        expected: String,
        /// The names in the server's certificate, when rustls reported them.
        presented: Vec<String>,
    },
    /// The server's chain does not lead to a trusted root.
    #[error("unknown CA: the server's certificate is not signed by a trusted CA")]
    UnknownCa,
    /// The server's certificate has expired (or is not valid yet).
    #[error("the server's certificate is outside its validity period: {0}")]
    ServerCertificateExpired(String),
    /// Another problem with the server's certificate.
    #[error("the server's certificate is invalid: {0}")]
    InvalidServerCertificate(String),
    /// We sent no client certificate and the server wants one.
    #[error("the server requires a client certificate (set `cert` and `key`)")]
    ClientCertificateRequired,
    /// The server refused the client certificate we sent.
    #[error("the server rejected our client certificate: {0}")]
    ClientCertificateRejected(String),
    /// The server does not speak any protocol we offered over ALPN.
    #[error("no common application protocol: the server does not accept h2 over TLS")]
    NoApplicationProtocol,
    /// The server sent an alert during the handshake.
    #[error("the server aborted the handshake: {0}")]
    AlertReceived(String),
    /// The peer closed the connection mid-handshake (often: it does not speak TLS on this port).
    #[error("the connection closed during the TLS handshake (does the server speak TLS on this port?)")]
    ClosedDuringHandshake,
    /// Another TLS protocol failure.
    #[error("TLS handshake failed: {0}")]
    Protocol(String),
    /// The socket failed.
    #[error("connection failed during the TLS handshake: {0}")]
    Io(io::Error),
}

fn presented_names(presented: &[String]) -> String {
    if presented.is_empty() {
        String::new()
    } else {
        // rustls reports names in their Debug form (`DnsName("a.example")`).
        let names: Vec<&str> = presented
            .iter()
            .map(|name| {
                name.split_once("(\"")
                    .and_then(|(_, rest)| rest.strip_suffix("\")"))
                    .unwrap_or(name)
            })
            .collect();
        format!(", the certificate is for {}", names.join(", "))
    }
}

/// What the client knew about its own certificate when the handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClientAuthState {
    /// The server sent a CertificateRequest.
    pub(crate) asked: bool,
    /// We answered it with a certificate.
    pub(crate) sent: bool,
}

impl TlsError {
    /// Classifies an error from a client handshake (tokio-rustls wraps
    /// rustls errors in `io::Error`).
    pub(crate) fn from_client_io(error: io::Error, auth: ClientAuthState) -> Self {
        match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => Self::from_client_rustls(tls, auth),
            None if error.kind() == io::ErrorKind::UnexpectedEof => {
                if auth.asked && !auth.sent {
                    Self::ClientCertificateRequired
                } else {
                    Self::ClosedDuringHandshake
                }
            }
            None => Self::Io(error),
        }
    }

    pub(crate) fn from_client_rustls(error: &rustls::Error, auth: ClientAuthState) -> Self {
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::NotValidForName => Self::NameMismatch {
                    expected: String::new(),
                    presented: Vec::new(),
                },
                CertificateError::NotValidForNameContext { expected, presented } => Self::NameMismatch {
                    expected: server_name_text(expected),
                    presented: presented.clone(),
                },
                CertificateError::UnknownIssuer => Self::UnknownCa,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => {
                    Self::ServerCertificateExpired(describe_certificate_error(cert))
                }
                other => Self::InvalidServerCertificate(describe_certificate_error(other)),
            },
            rustls::Error::NoApplicationProtocol
            | rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => Self::NoApplicationProtocol,
            rustls::Error::AlertReceived(alert) => {
                let about_certificates = matches!(
                    alert,
                    AlertDescription::CertificateRequired
                        | AlertDescription::HandshakeFailure
                        | AlertDescription::BadCertificate
                        | AlertDescription::UnsupportedCertificate
                        | AlertDescription::CertificateRevoked
                        | AlertDescription::CertificateExpired
                        | AlertDescription::CertificateUnknown
                        | AlertDescription::UnknownCA
                        | AlertDescription::AccessDenied
                );
                if *alert == AlertDescription::CertificateRequired || (about_certificates && auth.asked && !auth.sent) {
                    Self::ClientCertificateRequired
                } else if about_certificates && auth.sent {
                    Self::ClientCertificateRejected(alert_text(*alert))
                } else {
                    Self::AlertReceived(alert_text(*alert))
                }
            }
            other => Self::Protocol(other.to_string()),
        }
    }

    /// True when the handshake failed because of certificates or names
    /// (configuration on one side or the other), not the network.
    pub fn is_certificate_problem(&self) -> bool {
        matches!(
            self,
            Self::NameMismatch { .. }
                | Self::UnknownCa
                | Self::ServerCertificateExpired(_)
                | Self::InvalidServerCertificate(_)
                | Self::ClientCertificateRequired
                | Self::ClientCertificateRejected(_)
        )
    }
}

/// Describes a failed listener handshake for the debug log: what the client
/// did wrong, in words.
pub(crate) fn describe_server_side(error: &io::Error) -> String {
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return error.to_string();
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "the client sent no certificate (client_ca requires one)".into(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the client's certificate is not signed by the client CA".into()
        }
        rustls::Error::InvalidCertificate(cert) => {
            format!(
                "the client's certificate is invalid: {}",
                describe_certificate_error(cert)
            )
        }
        rustls::Error::NoApplicationProtocol => "the client offered neither h2 nor http/1.1 over ALPN".into(),
        rustls::Error::AlertReceived(alert) => {
            format!("the client aborted the handshake: {}", alert_text(*alert))
        }
        other => other.to_string(),
    }
}

fn server_name_text(name: &rustls::pki_types::ServerName<'_>) -> String {
    match name {
        rustls::pki_types::ServerName::DnsName(dns) => dns.as_ref().to_string(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn describe_certificate_error(error: &CertificateError) -> String {
    let date =
        |t: &rustls::pki_types::UnixTime| super::cert_info::rfc3339(i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
    match error {
        CertificateError::Expired => "expired".into(),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("expired on {}", date(not_after))
        }
        CertificateError::NotValidYet => "not valid yet".into(),
        CertificateError::NotValidYetContext { not_before, .. } => {
            format!("not valid before {}", date(not_before))
        }
        CertificateError::UnknownIssuer => "unknown CA".into(),
        CertificateError::BadSignature => "bad signature".into(),
        CertificateError::Revoked => "revoked".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not issued for this purpose (extended key usage)".into()
        }
        other => format!("{other:?}"),
    }
}

fn alert_text(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::UnknownCA => "unknown CA".into(),
        AlertDescription::BadCertificate => "bad certificate".into(),
        AlertDescription::CertificateExpired => "certificate expired".into(),
        AlertDescription::CertificateRevoked => "certificate revoked".into(),
        AlertDescription::CertificateUnknown => "certificate unknown".into(),
        AlertDescription::UnsupportedCertificate => "unsupported certificate".into(),
        AlertDescription::CertificateRequired => "certificate required".into(),
        AlertDescription::AccessDenied => "access denied".into(),
        AlertDescription::HandshakeFailure => "handshake failure".into(),
        AlertDescription::ProtocolVersion => "protocol version not supported".into(),
        AlertDescription::UnrecognisedName => "unrecognised server name".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: ClientAuthState = ClientAuthState {
        asked: false,
        sent: false,
    };

    #[test]
    fn name_mismatch_names_both_sides() {
        let error = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("library.internal")
                .map(|n| n.to_owned())
                .unwrap(),
            presented: vec!["DnsName(\"localhost\")".into()],
        });
        let text = TlsError::from_client_rustls(&error, NONE).to_string();
        assert!(
            text.starts_with("certificate name mismatch: expected library.internal"),
            "{text}"
        );
        assert!(text.contains("localhost"), "{text}");
    }

    #[test]
    fn alerts_about_certificates_depend_on_what_we_sent() {
        let alert = rustls::Error::AlertReceived(AlertDescription::BadCertificate);
        let asked_none = ClientAuthState {
            asked: true,
            sent: false,
        };
        let asked_sent = ClientAuthState {
            asked: true,
            sent: true,
        };
        assert!(matches!(
            TlsError::from_client_rustls(&alert, asked_none),
            TlsError::ClientCertificateRequired
        ));
        assert_eq!(
            TlsError::from_client_rustls(&alert, asked_sent).to_string(),
            "the server rejected our client certificate: bad certificate"
        );
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(matches!(
            TlsError::from_client_rustls(&required, NONE),
            TlsError::ClientCertificateRequired
        ));
    }

    #[test]
    fn unknown_issuer_is_unknown_ca() {
        let error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let classified = TlsError::from_client_rustls(&error, NONE);
        assert!(classified.is_certificate_problem());
        assert!(classified.to_string().starts_with("unknown CA"));
    }

    #[test]
    fn an_eof_without_tls_is_a_closed_handshake() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert!(matches!(
            TlsError::from_client_io(eof, NONE),
            TlsError::ClosedDuringHandshake
        ));
    }

    #[test]
    fn load_errors_name_the_file() {
        let e = LoadError::new("cert", "/etc/x/server.pem", Problem::NoCertificate);
        assert_eq!(
            e.to_string(),
            "/etc/x/server.pem: no certificate in the file (expected a \"-----BEGIN CERTIFICATE-----\" block)"
        );
    }
}
