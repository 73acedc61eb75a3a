//! `ClientTls` against small rustls servers on loopback: trust, names,
//! client certificates (TLS 1.3 and 1.2), rotation and generations, expiry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;
use crate::config::UpstreamTls;

#[path = "../../tests/support/certs.rs"]
mod certs;

use certs::{Ca, CertDir, Leaf};

/// A TLS server that greets every client with `hello` and reports the
/// client certificate it saw (or its handshake error).
struct TestServer {
    addr: std::net::SocketAddr,
    seen: mpsc::UnboundedReceiver<Result<Option<Vec<u8>>, String>>,
}

async fn test_server(config: Arc<rustls::ServerConfig>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut stream) => {
                        let peer = stream.get_ref().1.peer_certificates().map(|chain| chain[0].to_vec());
                        let _ = tx.send(Ok(peer));
                        let _ = stream.write_all(b"hello").await;
                        let _ = stream.flush().await;
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    TestServer { addr, seen }
}

fn upstream(ca: Option<PathBuf>, pair: Option<(PathBuf, PathBuf)>, name: Option<&str>) -> UpstreamTls {
    let (cert, key) = pair.unzip();
    UpstreamTls {
        ca,
        cert,
        key,
        server_name: name.map(str::to_owned),
    }
}

async fn connect(
    tls: &ClientTls,
    server: &TestServer,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    tls.connect(tcp, host).await
}

async fn read_hello(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) {
    let mut hello = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut hello))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&hello, b"hello");
}

fn trusting(dir: &CertDir, ca: &Ca) -> ClientTls {
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    ClientTls::new(
        "library",
        &upstream(Some(ca_file), None, None),
        ReloadOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_right_ca_connects_with_h2() {
    let ca = Ca::new("ca");
    let server = test_server(certs::server_config(&ca.server(), None, &[b"h2"])).await;
    let tls = trusting(&CertDir::new(), &ca);
    let mut stream = connect(&tls, &server, "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    read_hello(&mut stream).await;
    let by_ip = connect(&tls, &server, "127.0.0.1").await;
    assert!(by_ip.is_ok(), "{by_ip:?}");
}

#[tokio::test]
async fn another_ca_is_an_unknown_ca() {
    let server = test_server(certs::server_config(&Ca::new("theirs").server(), None, &[b"h2"])).await;
    let tls = trusting(&CertDir::new(), &Ca::new("ours"));
    let error = connect(&tls, &server, "localhost").await.unwrap_err();
    assert!(matches!(error, TlsError::UnknownCa), "{error:?}");
    assert!(error.to_string().starts_with("unknown CA"), "{error}");
}

#[tokio::test]
async fn a_wrong_server_name_says_which_name_was_expected() {
    let ca = Ca::new("ca");
    let server = test_server(certs::server_config(&ca.server(), None, &[b"h2"])).await;
    let dir = CertDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let config = upstream(Some(ca_file), None, Some("library.internal"));
    let tls = ClientTls::new("library", &config, ReloadOptions::default()).unwrap();
    assert_eq!(tls.server_name_for("10.0.0.1"), "library.internal");
    let error = connect(&tls, &server, "127.0.0.1").await.unwrap_err().to_string();
    assert!(
        error.starts_with("certificate name mismatch: expected library.internal"),
        "{error}"
    );
    assert!(error.contains("localhost"), "{error}");
}

#[tokio::test]
async fn a_name_that_is_no_name_is_refused_before_connecting() {
    let ca = Ca::new("ca");
    let server = test_server(certs::server_config(&ca.server(), None, &[b"h2"])).await;
    let tls = trusting(&CertDir::new(), &ca);
    let error = connect(&tls, &server, "not a host!").await.unwrap_err();
    assert!(matches!(error, TlsError::InvalidServerName(_)), "{error:?}");
}

/// A server requiring client certificates from `client_ca`, TLS 1.3 or 1.2 only.
async fn mtls_server(ca: &Ca, client_ca: &Ca, tls12: bool) -> TestServer {
    let mut config = (*certs::server_config(&ca.server(), Some(client_ca), &[b"h2"])).clone();
    if tls12 {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca.der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), certs::provider())
            .build()
            .unwrap();
        let leaf = ca.server();
        config = rustls::ServerConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.der.clone()], certs::private_key(&leaf))
            .unwrap();
    }
    test_server(Arc::new(config)).await
}

fn with_client_cert(dir: &CertDir, ca: &Ca, client: &Leaf) -> ClientTls {
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let pair = dir.write_pair("client", client);
    ClientTls::new(
        "library",
        &upstream(Some(ca_file), Some(pair), None),
        ReloadOptions::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_server_requiring_a_client_certificate_says_so() {
    let ca = Ca::new("ca");
    for tls12 in [false, true] {
        let server = mtls_server(&ca, &ca, tls12).await;
        let tls = trusting(&CertDir::new(), &ca);
        let error = connect(&tls, &server, "localhost").await.unwrap_err();
        assert!(
            matches!(error, TlsError::ClientCertificateRequired),
            "tls12 {tls12}: {error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("the server requires a client certificate")
        );
    }
}

#[tokio::test]
async fn a_client_certificate_from_the_right_ca_is_accepted_and_data_is_kept() {
    let ca = Ca::new("ca");
    let client = ca.client("gateway");
    for tls12 in [false, true] {
        let mut server = mtls_server(&ca, &ca, tls12).await;
        let tls = with_client_cert(&CertDir::new(), &ca, &client);
        let mut stream = connect(&tls, &server, "localhost").await.unwrap();
        // Bytes read while waiting for the server's verdict reach the caller.
        read_hello(&mut stream).await;
        let seen = server.seen.recv().await.unwrap().unwrap();
        assert_eq!(seen, Some(client.der.to_vec()), "tls12 {tls12}");
    }
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_rejected_by_name() {
    let ca = Ca::new("ca");
    let stranger = Ca::new("stranger").client("gateway");
    for tls12 in [false, true] {
        let server = mtls_server(&ca, &ca, tls12).await;
        let tls = with_client_cert(&CertDir::new(), &ca, &stranger);
        let error = connect(&tls, &server, "localhost").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "the server rejected our client certificate: unknown CA",
            "tls12 {tls12}"
        );
    }
}

#[tokio::test]
async fn rotation_bumps_the_generation_and_new_handshakes_use_the_new_pair() {
    let ca = Ca::new("ca");
    let mut server = mtls_server(&ca, &ca, false).await;
    let dir = CertDir::new();
    let first = ca.client("gateway");
    let tls = with_client_cert(&dir, &ca, &first);
    tls.start_reloading();
    let mut generations = tls.subscribe();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (_old, generation) = tls.connect_with_generation(tcp, "localhost").await.unwrap();
    assert_eq!(generation, 1);
    assert_eq!(server.seen.recv().await.unwrap().unwrap(), Some(first.der.to_vec()));

    let second = ca.client("gateway");
    dir.write_pair("client", &second);
    tokio::time::timeout(Duration::from_secs(10), generations.changed())
        .await
        .expect("inotify saw the new pair")
        .unwrap();
    assert_eq!(*generations.borrow_and_update(), 2);
    assert_eq!(tls.generation(), 2);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (_new, generation) = tls.connect_with_generation(tcp, "localhost").await.unwrap();
    assert_eq!(generation, 2);
    assert_eq!(server.seen.recv().await.unwrap().unwrap(), Some(second.der.to_vec()));

    // A key that does not match: the pair in use stays, the error is counted.
    dir.write("client.key", &ca.client("x").key_pem);
    assert!(tls.reload_now().is_err());
    let status = tls.status();
    assert_eq!((status.generation, status.reload_errors), (2, 1), "{status:?}");
}

#[tokio::test]
async fn expiring_soon_is_true_within_five_minutes() {
    let ca = Ca::new("ca");
    let soon = with_client_cert(&CertDir::new(), &ca, &ca.expiring_in(Duration::from_secs(180), true));
    assert!(soon.expiring_soon());
    let later = with_client_cert(&CertDir::new(), &ca, &ca.client("gateway"));
    assert!(!later.expiring_soon());
    assert!(later.expires_within(Duration::from_secs(90 * 86_400)));
    let none = trusting(&CertDir::new(), &ca);
    assert!(!none.expiring_soon(), "no client certificate, nothing expires");
}

#[tokio::test]
async fn a_ca_bundle_with_old_and_new_roots_trusts_both() {
    let old = Ca::new("old");
    let new = Ca::new("new");
    let dir = CertDir::new();
    let bundle = dir.write("ca.pem", &format!("{}{}", old.cert_pem, new.cert_pem));
    let tls = ClientTls::new("library", &upstream(Some(bundle), None, None), ReloadOptions::default()).unwrap();
    for ca in [&old, &new] {
        let server = test_server(certs::server_config(&ca.server(), None, &[b"h2"])).await;
        let result = connect(&tls, &server, "localhost").await;
        assert!(result.is_ok(), "server from {}: {result:?}", ca.name);
    }
}

#[tokio::test]
async fn without_a_ca_file_the_system_roots_decide() {
    let ca = Ca::new("private");
    let server = test_server(certs::server_config(&ca.server(), None, &[b"h2"])).await;
    match ClientTls::new("library", &upstream(None, None, None), ReloadOptions::default()) {
        Ok(tls) => {
            let error = connect(&tls, &server, "localhost").await.unwrap_err();
            assert!(matches!(error, TlsError::UnknownCa), "{error:?}");
        }
        // A machine without a CA bundle: the error says what to do.
        Err(e) => assert_eq!(e.problem, Problem::NoSystemRoots),
    }
}
