//! Reading certificate, key and CA files: the raw bytes of every file in
//! one pass (so a reload can tell "nothing changed" by comparing contents,
//! whatever inotify said), and PEM parsing with errors that name the file and
//! the problem. Checking that the pieces belong together is `validate`'s job.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::SigningKey;

use super::cert_info::{CertInfo, CertRole};
use super::error::{LoadError, Problem};

/// The one crypto provider: rustls with *ring*, default cipher suites and
/// protocol versions (TLS 1.2 and 1.3).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Which way a certificate pair is used, for chain verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    /// The listener's certificate: verified as a TLS server would be.
    Server,
    /// The gateway's client certificate towards upstreams.
    Client,
}

/// The files one TLS side reads, and what each is for.
#[derive(Clone, Debug)]
pub(crate) struct Sources {
    /// Certificate chain and private key.
    pub(crate) pair: Option<(PathBuf, PathBuf)>,
    /// CA bundle.
    pub(crate) ca: Option<PathBuf>,
    /// The configuration key of the CA file (`ca` or `client_ca`).
    pub(crate) ca_field: &'static str,
    pub(crate) pair_role: CertRole,
    pub(crate) ca_role: CertRole,
    pub(crate) usage: Usage,
}

impl Sources {
    /// Every file, for watching.
    pub(crate) fn paths(&self) -> Vec<&Path> {
        let mut paths = Vec::new();
        if let Some((cert, key)) = &self.pair {
            paths.push(cert.as_path());
            paths.push(key.as_path());
        }
        if let Some(ca) = &self.ca {
            paths.push(ca.as_path());
        }
        paths
    }
}

/// The bytes of every file, read in one pass.
pub(crate) struct Contents {
    pub(crate) cert: Option<Vec<u8>>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) ca: Option<Vec<u8>>,
}

impl Contents {
    pub(crate) fn read(sources: &Sources) -> Result<Self, LoadError> {
        let (cert, key) = match &sources.pair {
            Some((cert, key)) => (Some(read_file("cert", cert)?), Some(read_file("key", key)?)),
            None => (None, None),
        };
        let ca = match &sources.ca {
            Some(ca) => Some(read_file(sources.ca_field, ca)?),
            None => None,
        };
        Ok(Self { cert, key, ca })
    }

    /// Identifies these contents: equal fingerprints mean nothing changed.
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.cert.hash(&mut hasher);
        self.key.hash(&mut hasher);
        self.ca.hash(&mut hasher);
        hasher.finish()
    }
}

/// Reads a whole file (following symlinks, as Kubernetes' `..data` layout needs).
pub(crate) fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| LoadError::new(field, path, Problem::Unreadable(e.to_string())))
}

/// Parses every `CERTIFICATE` block of a file, with a [`CertInfo`] for each.
pub(crate) fn parse_certs(
    field: &'static str,
    path: &Path,
    bytes: &[u8],
    role: CertRole,
) -> Result<(Vec<CertificateDer<'static>>, Vec<CertInfo>), LoadError> {
    let mut ders = Vec::new();
    let mut infos = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        let der = item.map_err(|e| LoadError::new(field, path, pem_problem(&e)))?;
        let index = ders.len() + 1;
        let info = CertInfo::parse(&der, role, path, index)
            .map_err(|reason| LoadError::new(field, path, Problem::MalformedCertificate { index, reason }))?;
        ders.push(der);
        infos.push(info);
    }
    if ders.is_empty() {
        return Err(LoadError::new(field, path, Problem::NoCertificate));
    }
    Ok((ders, infos))
}

/// Parses a CA bundle into trust roots; every certificate must be usable as one.
pub(crate) fn parse_ca(
    field: &'static str,
    path: &Path,
    bytes: &[u8],
    role: CertRole,
) -> Result<(RootCertStore, Vec<CertInfo>), LoadError> {
    let (ders, infos) = parse_certs(field, path, bytes, role).map_err(|e| match e.problem {
        Problem::NoCertificate => LoadError::new(field, path, Problem::NoCaCertificates),
        _ => e,
    })?;
    let mut roots = RootCertStore::empty();
    for (i, der) in ders.into_iter().enumerate() {
        roots.add(der).map_err(|e| {
            LoadError::new(
                field,
                path,
                Problem::BadCa {
                    index: i + 1,
                    reason: e.to_string(),
                },
            )
        })?;
    }
    Ok((roots, infos))
}

/// Parses the first private key of a file and loads it for signing.
pub(crate) fn parse_key(path: &Path, bytes: &[u8]) -> Result<Arc<dyn SigningKey>, LoadError> {
    let error = |problem| LoadError::new("key", path, problem);
    let der = match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(der) => der,
        Err(pem::Error::NoItemsFound) => {
            let text = String::from_utf8_lossy(bytes);
            return Err(error(if text.contains("ENCRYPTED PRIVATE KEY") {
                Problem::EncryptedKey
            } else if text.contains("-----BEGIN ") && text.contains(" PRIVATE KEY-----") {
                Problem::UnsupportedKey(key_label(&text))
            } else {
                Problem::NoPrivateKey
            }));
        }
        Err(e) => return Err(error(pem_problem(&e))),
    };
    provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| error(Problem::UnsupportedKey(e.to_string())))
}

/// The label of the first `-----BEGIN … PRIVATE KEY-----` line.
fn key_label(text: &str) -> String {
    text.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
        })
        .unwrap_or("unknown")
        .to_string()
}

fn pem_problem(error: &pem::Error) -> Problem {
    Problem::MalformedPem(match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "the file ends inside a block, before its \"{}\" line (truncated?)",
            String::from_utf8_lossy(end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("bad BEGIN line {:?}", String::from_utf8_lossy(line).trim())
        }
        pem::Error::Base64Decode(e) => format!("bad base64 inside a block (truncated?): {e}"),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_has_no_certificate() {
        let e = parse_certs("cert", Path::new("/x/c.pem"), b"", CertRole::ListenerCert).unwrap_err();
        assert_eq!(e.problem, Problem::NoCertificate);
        let e = parse_ca("ca", Path::new("/x/ca.pem"), b"hello", CertRole::UpstreamCa).unwrap_err();
        assert_eq!(e.problem, Problem::NoCaCertificates);
        assert_eq!(e.field, "ca");
    }

    #[test]
    fn a_truncated_block_is_malformed_pem() {
        let text = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n";
        let e = parse_certs("cert", Path::new("c.pem"), text, CertRole::ListenerCert).unwrap_err();
        assert!(
            matches!(&e.problem, Problem::MalformedPem(m) if m.contains("truncated")),
            "{e}"
        );
    }

    #[test]
    fn keys_are_told_apart() {
        let encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            parse_key(Path::new("k"), encrypted).err().map(|e| e.problem),
            Some(Problem::EncryptedKey)
        );
        assert_eq!(
            parse_key(Path::new("k"), b"nothing here").err().map(|e| e.problem),
            Some(Problem::NoPrivateKey)
        );
        let dsa = b"-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n";
        assert_eq!(
            parse_key(Path::new("k"), dsa).err().map(|e| e.problem),
            Some(Problem::UnsupportedKey("DSA PRIVATE KEY".into()))
        );
        let garbage = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            parse_key(Path::new("k"), garbage).err().map(|e| e.problem),
            Some(Problem::UnsupportedKey(_))
        ));
    }

    #[test]
    fn an_unreadable_file_says_why() {
        let e = read_file("cert", Path::new("/nonexistent/grpc-edge/c.pem")).unwrap_err();
        assert!(matches!(e.problem, Problem::Unreadable(_)));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/grpc-edge/c.pem: cannot read the file")
        );
    }
}
