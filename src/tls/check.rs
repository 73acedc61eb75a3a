//! Start-up and `grpc-edge check` verdicts on the configured certificate
//! files: the listener's files must load and validate before the gateway is
//! built (an expired certificate refuses to start), and the report lists
//! every certificate that has expired or expires within the warning window,
//! on both sides.

use std::time::Duration;

use super::cert_info::{CertInfo, CertRole, human_delta, unix_now};
use super::load::{Contents, Sources, Usage};
use super::validate::validate;
use crate::config::{Config, ConfigError, ConfigErrors};

/// What `grpc-edge check` says about certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertReport {
    /// Certificates expiring within the window, expired CA certificates.
    pub warnings: Vec<String>,
    /// Files that cannot be used, expired certificates.
    pub errors: Vec<String>,
}

/// Loads the listener's TLS files (if `tls` is set) and validates them as
/// `serve` would: a missing, mismatched or expired certificate is a
/// configuration error naming `tls.cert`, `tls.key` or `tls.client_ca`.
pub(crate) fn check_listener(config: &Config) -> Result<(), ConfigErrors> {
    let Some(tls) = &config.tls else {
        return Ok(());
    };
    let sources = super::server::sources(tls);
    Contents::read(&sources)
        .and_then(|contents| validate(&sources, &contents, None, None))
        .map(|_| ())
        .map_err(|e| ConfigError::new(format!("tls.{}", e.field), e.to_string()).into())
}

/// Reads every certificate file the configuration names (listener and
/// upstreams) and reports those expired or expiring within `warn_within`,
/// and files that cannot be used.
pub fn certificate_report(config: &Config, warn_within: Duration) -> CertReport {
    let mut report = CertReport::default();
    let now = unix_now();
    let window = i64::try_from(warn_within.as_secs()).unwrap_or(i64::MAX);
    let mut sides: Vec<(String, Sources)> = Vec::new();
    if let Some(tls) = &config.tls {
        sides.push(("tls".into(), super::server::sources(tls)));
    }
    for (name, upstream) in &config.upstreams {
        if let Some(tls) = &upstream.tls {
            sides.push((
                format!("upstreams.{name}.tls"),
                Sources {
                    pair: tls.cert.clone().zip(tls.key.clone()),
                    ca: tls.ca.clone(),
                    ca_field: "ca",
                    pair_role: CertRole::UpstreamClientCert,
                    ca_role: CertRole::UpstreamCa,
                    usage: Usage::Client,
                },
            ));
        }
    }
    for (key, sources) in sides {
        let material = Contents::read(&sources).and_then(|c| validate(&sources, &c, None, None));
        match material {
            Ok(material) => {
                for cert in &material.certs {
                    note_expiry(&mut report, &key, cert, now, window);
                }
            }
            Err(e) => report.errors.push(format!("{key}.{}: {e}", e.field)),
        }
    }
    report
}

fn note_expiry(report: &mut CertReport, key: &str, cert: &CertInfo, now: i64, window: i64) {
    let left = cert.seconds_left(now);
    let field = match cert.role {
        CertRole::ListenerCert | CertRole::UpstreamClientCert => "cert",
        CertRole::ListenerClientCa => "client_ca",
        CertRole::UpstreamCa => "ca",
    };
    let line = |what: &str| {
        format!(
            "{key}.{field}: {} {what} {} (not after {})",
            cert.describe(),
            human_delta(left),
            cert.not_after_rfc3339
        )
    };
    if left < 0 {
        // An expired root still anchors trust in rustls, but what it signed
        // has most likely expired too.
        match cert.role {
            CertRole::ListenerClientCa | CertRole::UpstreamCa => {
                report.warnings.push(line("expired"));
            }
            _ => report.errors.push(line("expired")),
        }
    } else if left < window {
        report.warnings.push(line("expires"));
    }
}
