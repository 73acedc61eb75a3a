//! Upstream TLS: the rustls client configuration built from
//! `upstreams.*.tls` (trust roots from `ca` or the system, an optional client
//! certificate, ALPN `h2`), rebuilt on every change with a new generation
//! number, and [`ClientTls::connect`], whose errors say what went wrong.
//!
//! In TLS 1.3 a server checks the client certificate *after* the client
//! considers the handshake done (in TLS 1.2, before), so a rejected certificate would otherwise
//! surface as a reset on the first read. When the server asked for a
//! certificate, `connect` therefore waits briefly for the server's first
//! records (session tickets, the HTTP/2 SETTINGS — or an alert) and feeds
//! them to rustls, which buffers any data for the caller, so "the server
//! rejected our client certificate: unknown CA" is reported by `connect`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::cert_info::{CertRole, unix_now};
use super::error::{ClientAuthState, LoadError, Problem, TlsError};
use super::load::{self, Sources, Usage};
use super::reload::Reloader;
use super::validate::Material;
use super::{CLIENT_EXPIRY_DRAIN, ReloadOptions, TlsStatus};
use crate::config::UpstreamTls;

/// How long `connect` waits for the server's verdict on our client
/// certificate (only when the server asked for one).
const CLIENT_AUTH_WAIT: Duration = Duration::from_secs(1);

/// TLS towards one upstream's endpoints. Cheap to clone; clones share the
/// certificates, the reloads and the generation.
#[derive(Clone)]
pub struct ClientTls {
    reloader: Arc<Reloader<ClientParts>>,
    server_name: Option<String>,
}

/// What one generation of files builds.
struct ClientParts {
    /// The configuration without client authentication; each connection
    /// gets a copy with its own recording resolver.
    config: Arc<ClientConfig>,
    key: Option<Arc<CertifiedKey>>,
}

impl ClientTls {
    /// Loads and validates the files named by `config` for the upstream
    /// called `upstream` (used in logs). Without `ca` the system's trust
    /// store is read (once per process). Nothing is watched until
    /// [`start_reloading`](Self::start_reloading).
    pub fn new(upstream: &str, config: &UpstreamTls, options: ReloadOptions) -> Result<Self, LoadError> {
        let system_roots = match &config.ca {
            Some(_) => None,
            None => Some(system_roots()?),
        };
        let sources = Sources {
            pair: config.cert.clone().zip(config.key.clone()),
            ca: config.ca.clone(),
            ca_field: "ca",
            pair_role: CertRole::UpstreamClientCert,
            ca_role: CertRole::UpstreamCa,
            usage: Usage::Client,
        };
        let name = format!("upstream {upstream}");
        let reloader = Reloader::new(name, sources, options, build, system_roots)?;
        Ok(Self {
            reloader,
            server_name: config.server_name.clone(),
        })
    }

    /// Watches the files (inotify and a poll) and swaps in valid changes;
    /// needs a tokio runtime. Stops when the last clone is dropped.
    pub fn start_reloading(&self) {
        self.reloader.start_watching();
    }

    /// Reads the files now: `Ok(true)` when a changed, valid set was swapped
    /// in, `Ok(false)` when nothing changed; a bad set is counted and returned.
    pub fn reload_now(&self) -> Result<bool, LoadError> {
        self.reloader.check_now()
    }

    /// The name verified for an endpoint whose host is `host`: the
    /// configured `server_name`, or the host itself.
    pub fn server_name_for<'a>(&'a self, host: &'a str) -> &'a str {
        match &self.server_name {
            Some(name) => name,
            None => host.trim_start_matches('[').trim_end_matches(']'),
        }
    }

    /// Runs the TLS handshake on a connected socket to an endpoint whose
    /// host is `host` (a DNS name or an IP; IPv6 may be in brackets).
    pub async fn connect(&self, tcp: TcpStream, host: &str) -> Result<TlsStream<TcpStream>, TlsError> {
        self.connect_with_generation(tcp, host).await.map(|(stream, _)| stream)
    }

    /// [`connect`](Self::connect), also returning the generation of the
    /// certificates the handshake used, so the connection can be retired when
    /// [`generation`](Self::generation) moves past it.
    pub async fn connect_with_generation(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<(TlsStream<TcpStream>, u64), TlsError> {
        let name = self.server_name_for(host);
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|_| TlsError::InvalidServerName(name.to_string()))?;
        let snapshot = self.reloader.current();
        let resolver = Arc::new(RecordingResolver {
            key: snapshot.built.key.clone(),
            asked: AtomicBool::new(false),
        });
        let mut config = (*snapshot.built.config).clone();
        config.client_auth_cert_resolver = resolver.clone();
        let handshake = TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await;
        let auth = resolver.state();
        let mut stream = handshake.map_err(|e| TlsError::from_client_io(e, auth))?;
        // In TLS 1.2 the server's Finished already carried its verdict.
        let tls13 = stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        if auth.asked && tls13 {
            await_client_auth_verdict(&mut stream, auth).await?;
        }
        Ok((stream, snapshot.generation))
    }

    /// Increases with every change that was loaded (starts at 1).
    pub fn generation(&self) -> u64 {
        self.reloader.generation()
    }

    /// Receives every new generation number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.reloader.subscribe()
    }

    /// True when the client certificate expires within
    /// [`CLIENT_EXPIRY_DRAIN`] (5 minutes): drain the connections made with
    /// it before the server starts refusing them.
    pub fn expiring_soon(&self) -> bool {
        self.expires_within(CLIENT_EXPIRY_DRAIN)
    }

    /// The window within which connections made with a rotated certificate are retired.
    pub fn upstream_drain(&self) -> Duration {
        self.reloader.options().upstream_drain
    }

    /// True when the client certificate expires within `window` (false
    /// without a client certificate).
    pub fn expires_within(&self, window: Duration) -> bool {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        self.reloader
            .current()
            .material
            .leaf()
            .is_some_and(|leaf| leaf.seconds_left(unix_now()) < window)
    }

    /// The not-after time (Unix seconds) of the client certificate of `generation`,
    /// if that generation is still the current one and has a client certificate.
    pub fn client_not_after(&self, generation: u64) -> Option<i64> {
        let current = self.reloader.current();
        (current.generation == generation)
            .then(|| current.material.leaf().map(|leaf| leaf.not_after))
            .flatten()
    }

    /// The certificates in use and the reload counters.
    pub fn status(&self) -> TlsStatus {
        self.reloader.status()
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("generation", &self.generation())
            .finish()
    }
}

/// Presents the client certificate, remembering whether the server asked.
#[derive(Debug)]
struct RecordingResolver {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicBool,
}

impl RecordingResolver {
    fn state(&self) -> ClientAuthState {
        ClientAuthState {
            asked: self.asked.load(Ordering::Acquire),
            sent: self.key.is_some(),
        }
    }
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Release);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Reads the server's first records after the handshake (bounded by
/// [`CLIENT_AUTH_WAIT`]) so that an alert rejecting our certificate fails
/// here. Data that arrives is buffered by rustls for the caller.
async fn await_client_auth_verdict(stream: &mut TlsStream<TcpStream>, auth: ClientAuthState) -> Result<(), TlsError> {
    let deadline = tokio::time::Instant::now() + CLIENT_AUTH_WAIT;
    let mut buffer = [0u8; 4096];
    loop {
        let (tcp, connection) = stream.get_mut();
        match tokio::time::timeout_at(deadline, tcp.readable()).await {
            Err(_) => return Ok(()), // nothing to say: the server accepted it
            Ok(Err(e)) => return Err(TlsError::Io(e)),
            Ok(Ok(())) => {}
        }
        let read = match tcp.try_read(&mut buffer) {
            Ok(0) if auth.sent => {
                return Err(TlsError::ClientCertificateRejected(
                    "the server closed the connection".into(),
                ));
            }
            Ok(0) => return Err(TlsError::ClientCertificateRequired),
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(TlsError::Io(e)),
        };
        let mut data = &buffer[..read];
        while !data.is_empty() {
            match connection.read_tls(&mut data) {
                Ok(0) => {
                    return Err(TlsError::Protocol("could not buffer the server's first records".into()));
                }
                Ok(_) => {}
                Err(e) => return Err(TlsError::Io(e)),
            }
            if let Err(e) = connection.process_new_packets() {
                return Err(TlsError::from_client_rustls(&e, auth));
            }
        }
        return Ok(());
    }
}

fn build(sources: &Sources, material: &Material) -> Result<ClientParts, LoadError> {
    let provider = load::provider();
    let ca_path = sources.ca.clone().unwrap_or_else(|| "system trust store".into());
    let unusable = |reason: String| LoadError::new("ca", &ca_path, Problem::Unusable(reason));
    let roots = material
        .roots
        .clone()
        .ok_or_else(|| unusable("no trust roots".into()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ClientParts {
        config: Arc::new(config),
        key: material.key.clone(),
    })
}

/// The operating system's trust store, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, LoadError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(%error, "while reading the system trust store");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(LoadError::new("ca", "system trust store", Problem::NoSystemRoots));
    }
    tracing::debug!(added, ignored, "system trust roots loaded");
    Ok(ROOTS.get_or_init(|| Arc::new(roots)).clone())
}
