//! Test certificates made at test time with rcgen (nothing checked in): CAs,
//! server certificates for 127.0.0.1/localhost, client certificates from the
//! right CA and from another, expired and soon-expiring ones; PEM files in a
//! tempdir (plain, or laid out like a Kubernetes secret volume with its
//! `..data` symlink); and rustls client/server configurations for tests.

#![allow(dead_code, unreachable_pub, clippy::all)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1000);

/// The crypto provider the tests use (the gateway's: ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that signs test certificates.
pub struct Ca {
    pub name: String,
    pub cert_pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub serial: u64,
}

/// What to put in a leaf certificate.
pub struct LeafSpec<'a> {
    pub common_name: &'a str,
    pub names: &'a [&'a str],
    pub uris: &'a [&'a str],
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub client: bool,
}

impl Default for LeafSpec<'_> {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: "test",
            names: &["localhost", "127.0.0.1"],
            uris: &[],
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(30),
            client: false,
        }
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            name: name.to_string(),
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn leaf(&self, spec: LeafSpec<'_>) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = spec.names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        for uri in spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.to_string().try_into().unwrap()));
        }
        params.distinguished_name.push(DnType::CommonName, spec.common_name);
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if spec.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self) -> Leaf {
        self.leaf(LeafSpec::default())
    }

    /// A server certificate for these names.
    pub fn server_for(&self, names: &[&str]) -> Leaf {
        self.leaf(LeafSpec {
            names,
            ..LeafSpec::default()
        })
    }

    /// A client certificate with this common name and a SPIFFE-style URI.
    pub fn client(&self, common_name: &str) -> Leaf {
        let uri = format!("spiffe://test/{common_name}");
        self.leaf(LeafSpec {
            common_name,
            names: &[],
            uris: &[uri.as_str()],
            client: true,
            ..LeafSpec::default()
        })
    }

    /// A server certificate that expired yesterday.
    pub fn expired_server(&self) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.leaf(LeafSpec {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
            ..LeafSpec::default()
        })
    }

    /// A certificate valid for `left` more.
    pub fn expiring_in(&self, left: Duration, client: bool) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.leaf(LeafSpec {
            not_after: now + time::Duration::try_from(left).unwrap(),
            client,
            ..LeafSpec::default()
        })
    }
}

/// A directory of PEM files that the test rewrites.
pub struct CertDir {
    pub dir: tempfile::TempDir,
}

impl CertDir {
    pub fn new() -> CertDir {
        CertDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces a file atomically (write a temporary file, rename it over).
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        let temporary = self.path(&format!(".{name}.tmp"));
        std::fs::write(&temporary, contents).unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        path
    }

    /// Writes a listener or client pair as `{stem}.pem` and `{stem}.key`.
    pub fn write_pair(&self, stem: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{stem}.pem"), &leaf.cert_pem),
            self.write(&format!("{stem}.key"), &leaf.key_pem),
        )
    }
}

/// A directory laid out like a Kubernetes secret volume:
/// `name -> ..data/name`, `..data -> ..<version>/`, swapped atomically.
pub struct SecretVolume {
    pub dir: tempfile::TempDir,
    version: u32,
}

impl SecretVolume {
    pub fn new(files: &[(&str, &str)]) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        volume.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), volume.dir.path().join(name)).unwrap();
        }
        volume
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What kubelet does: write a new timestamped directory, point a new
    /// symlink at it, rename that over `..data`, remove the old directory.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        let old = format!("..v{}", self.version);
        self.version += 1;
        let new = format!("..v{}", self.version);
        let root = self.dir.path();
        std::fs::create_dir(root.join(&new)).unwrap();
        for (name, contents) in files {
            std::fs::write(root.join(&new).join(name), contents).unwrap();
        }
        std::os::unix::fs::symlink(&new, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if self.version > 1 {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

/// A rustls client configuration trusting `cas`, with an optional client
/// certificate, offering `alpn`.
pub fn client_config(cas: &[&Ca], client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der.clone()], private_key(leaf))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The same without session resumption: every connection is a full handshake.
pub fn client_config_no_resumption(cas: &[&Ca], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = (*client_config(cas, None, alpn)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A rustls server configuration presenting `leaf`, requiring client
/// certificates from `client_ca` when given.
pub fn server_config(leaf: &Leaf, client_ca: Option<&Ca>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(vec![leaf.der.clone()], private_key(leaf))
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub fn private_key(leaf: &Leaf) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap()
}

/// Opens a TLS connection to `addr`, verifying `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// The DER of the certificate the server presented on `stream`.
pub fn peer_leaf(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

// Helpers for `tests/tls_upstream.rs`: backends that trust several client
// CAs at once (a CA rotation's overlap), CA bundles, and serial numbers as
// the backend and `GET /certs` see them.

/// A rustls server configuration presenting `leaf` that requires client
/// certificates from any of `client_cas` (none given: asks for none).
pub fn server_config_for_cas(leaf: &Leaf, client_cas: &[&Ca], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for ca in client_cas {
            roots.add(ca.der.clone()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(vec![leaf.der.clone()], private_key(leaf))
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The PEMs of `cas` one after another, as a CA bundle file holds them.
pub fn ca_bundle(cas: &[&Ca]) -> String {
    cas.iter().map(|ca| ca.cert_pem.as_str()).collect()
}

/// The serial number of a DER certificate, as a number (what
/// [`Leaf::serial`] holds for the certificates made here).
pub fn serial_of_der(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let raw = cert.raw_serial();
    (raw.len() <= 9).then(|| raw.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
}

/// A serial number as `GET /certs` and the metrics print it: the bytes of
/// its DER integer in hex, colon-separated (`1000` → `03:e8`).
pub fn serial_hex(serial: u64) -> String {
    let bytes = serial.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
    let mut minimal = bytes[first..].to_vec();
    if minimal[0] & 0x80 != 0 {
        minimal.insert(0, 0);
    }
    minimal.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
