//! Listener TLS: the rustls server configuration built from `tls.cert`,
//! `tls.key` and `tls.client_ca` (ALPN `h2` then `http/1.1`, TLS 1.2+ with
//! rustls' defaults), rebuilt on every certificate change, and the handshake
//! that tells the server which protocol was negotiated and who the client
//! is. The accept loop and HTTP serving stay in `crate::server`.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::cert_info::{CertRole, PeerIdentity};
use super::error::{LoadError, Problem};
use super::load::{self, Sources, Usage};
use super::reload::Reloader;
use super::validate::Material;
use super::{ReloadOptions, TlsStatus};
use crate::config::ListenerTls;

/// ALPN identifiers, in order of preference.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// TLS termination for the listener. Cheap to clone; clones share the
/// certificates, the reloads and the counters.
#[derive(Clone)]
pub struct ServerTls {
    reloader: Arc<Reloader<Arc<ServerConfig>>>,
}

/// The protocol a TLS client chose over ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Negotiated {
    Http2,
    Http1,
    /// No ALPN: the server sniffs the HTTP/2 preface, as for plaintext.
    Unknown,
}

/// A finished listener handshake.
pub(crate) struct Accepted {
    pub(crate) stream: TlsStream<TcpStream>,
    pub(crate) protocol: Negotiated,
    pub(crate) peer: Option<PeerIdentity>,
}

pub(crate) fn sources(config: &ListenerTls) -> Sources {
    Sources {
        pair: Some((config.cert.clone(), config.key.clone())),
        ca: config.client_ca.clone(),
        ca_field: "client_ca",
        pair_role: CertRole::ListenerCert,
        ca_role: CertRole::ListenerClientCa,
        usage: Usage::Server,
    }
}

impl ServerTls {
    /// Loads and validates the files named by `config`. Nothing is watched
    /// until [`start_reloading`](Self::start_reloading).
    pub fn new(config: &ListenerTls, options: ReloadOptions) -> Result<Self, LoadError> {
        let reloader = Reloader::new("listener".into(), sources(config), options, build, None)?;
        Ok(Self { reloader })
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

    /// The certificates in use and the reload counters.
    pub fn status(&self) -> TlsStatus {
        self.reloader.status()
    }

    /// Increases with every change that was loaded (starts at 1).
    pub fn generation(&self) -> u64 {
        self.reloader.generation()
    }

    /// True when clients must present a certificate signed by `client_ca`.
    pub fn requires_client_certificates(&self) -> bool {
        self.reloader.current().material.roots.is_some()
    }

    /// The reload options in effect.
    pub fn options(&self) -> &ReloadOptions {
        self.reloader.options()
    }

    /// Runs the server handshake with the certificates in use now.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> io::Result<Accepted> {
        let config = self.reloader.current().built.clone();
        let stream = TlsAcceptor::from(config).accept(tcp).await?;
        let connection = stream.get_ref().1;
        let protocol = match connection.alpn_protocol() {
            Some(ALPN_H2) => Negotiated::Http2,
            Some(ALPN_HTTP1) => Negotiated::Http1,
            _ => Negotiated::Unknown,
        };
        let peer = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| PeerIdentity::from_der(leaf));
        Ok(Accepted { stream, protocol, peer })
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("generation", &self.generation())
            .field("requires_client_certificates", &self.requires_client_certificates())
            .finish()
    }
}

/// Always presents the one certificate.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn build(sources: &Sources, material: &Material) -> Result<Arc<ServerConfig>, LoadError> {
    let provider = load::provider();
    let cert_path = sources.pair.as_ref().map(|(cert, _)| cert.clone()).unwrap_or_default();
    let unusable = |reason: String| LoadError::new("cert", &cert_path, Problem::Unusable(reason));
    let Some(key) = material.key.clone() else {
        return Err(unusable("the listener needs a certificate and key".into()));
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(e.to_string()))?;
    let builder = match &material.roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                .build()
                .map_err(|e| unusable(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCert(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}
