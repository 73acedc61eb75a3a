//! Validating a set of files before it is used: the key matches the
//! certificate, every certificate of the chain is inside its validity
//! period, and — when the pair in use chains to the configured CA — the new
//! pair chains to it too (a certificate from the wrong issuer is the classic
//! rotation outage). A pair that never chained to the configured CA, such as
//! a public server certificate beside a private client CA, is not held to it.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::sign::CertifiedKey;

use super::cert_info::{CertInfo, rfc3339, unix_now};
use super::error::{LoadError, Problem};
use super::load::{self, Contents, Sources, Usage};

/// Everything one TLS side needs, validated.
pub(crate) struct Material {
    /// The certificate chain and signing key.
    pub(crate) key: Option<Arc<CertifiedKey>>,
    /// Trust roots: the CA file, or the system's for upstreams without one.
    pub(crate) roots: Option<Arc<RootCertStore>>,
    /// Every certificate read from the files (not the system roots).
    pub(crate) certs: Vec<CertInfo>,
    /// The pair's leaf certificate chains to the configured CA file.
    pub(crate) chains_to_ca: bool,
}

impl Material {
    /// The leaf certificate of the pair.
    pub(crate) fn leaf(&self) -> Option<&CertInfo> {
        // The pair's certificates come first in `certs`.
        self.key.as_ref().and(self.certs.first())
    }
}

/// Parses and validates `contents`. `previous` is the material in use (for
/// the CA pinning rule); `system_roots` stand in when there is no CA file.
pub(crate) fn validate(
    sources: &Sources,
    contents: &Contents,
    previous: Option<&Material>,
    system_roots: Option<&Arc<RootCertStore>>,
) -> Result<Material, LoadError> {
    let mut certs = Vec::new();
    let roots = match (&sources.ca, &contents.ca) {
        (Some(path), Some(bytes)) => {
            let (roots, infos) = load::parse_ca(sources.ca_field, path, bytes, sources.ca_role)?;
            certs.extend(infos);
            Some(Arc::new(roots))
        }
        _ => system_roots.cloned(),
    };
    let mut key = None;
    let mut chains_to_ca = false;
    if let (Some((cert_path, key_path)), Some(cert_bytes), Some(key_bytes)) =
        (&sources.pair, &contents.cert, &contents.key)
    {
        let (chain, infos) = load::parse_certs("cert", cert_path, cert_bytes, sources.pair_role)?;
        let signing_key = load::parse_key(key_path, key_bytes)?;
        let certified = CertifiedKey::new(chain, signing_key);
        check_key_matches(&certified, cert_path, key_path)?;
        let now = unix_now();
        for info in &infos {
            check_validity(info, now, cert_path)?;
        }
        if let (Some(ca_path), Some(roots)) = (&sources.ca, &roots) {
            match verify_chain(&certified.cert, roots, sources.usage) {
                Ok(()) => chains_to_ca = true,
                Err(reason) if previous.is_some_and(|p| p.chains_to_ca) => {
                    return Err(LoadError::new(
                        "cert",
                        cert_path,
                        Problem::UntrustedChain {
                            ca: ca_path.clone(),
                            reason,
                        },
                    ));
                }
                Err(reason) => {
                    tracing::debug!(cert = %cert_path.display(), ca = %ca_path.display(), %reason,
                        "the certificate does not chain to the configured CA; not required");
                }
            }
        }
        certs.splice(0..0, infos);
        key = Some(Arc::new(certified));
    }
    Ok(Material {
        key,
        roots,
        certs,
        chains_to_ca,
    })
}

fn check_key_matches(certified: &CertifiedKey, cert_path: &Path, key_path: &Path) -> Result<(), LoadError> {
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(LoadError::new(
            "key",
            key_path,
            Problem::KeyMismatch {
                cert: cert_path.to_path_buf(),
            },
        )),
        Err(e) => Err(LoadError::new(
            "cert",
            cert_path,
            Problem::MalformedCertificate {
                index: 1,
                reason: e.to_string(),
            },
        )),
    }
}

/// Refuses a certificate outside its validity period at `now`.
pub(crate) fn check_validity(info: &CertInfo, now: i64, path: &Path) -> Result<(), LoadError> {
    if now > info.not_after {
        return Err(LoadError::new(
            "cert",
            path,
            Problem::Expired {
                not_after: info.not_after_rfc3339.clone(),
                subject: info.subject.clone(),
                serial: info.serial.clone(),
            },
        ));
    }
    if now < info.not_before {
        return Err(LoadError::new(
            "cert",
            path,
            Problem::NotYetValid {
                not_before: rfc3339(info.not_before),
                subject: info.subject.clone(),
                serial: info.serial.clone(),
            },
        ));
    }
    Ok(())
}

/// Verifies `chain` (leaf first) against `roots` as its peers will.
fn verify_chain(chain: &[CertificateDer<'static>], roots: &Arc<RootCertStore>, usage: Usage) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let provider = load::provider();
    let now = UnixTime::now();
    match usage {
        Usage::Server => {
            let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                provider.signature_verification_algorithms.all,
            )
            .map_err(|e| e.to_string())
        }
        Usage::Client => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| e.to_string())?;
            verifier
                .verify_client_cert(leaf, intermediates, now)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}
