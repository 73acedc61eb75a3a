//! The byte stream under an upstream HTTP/2 connection: plain TCP, or TLS
//! (with the cluster's `ClientTls`, mTLS when configured). An enum rather
//! than a boxed trait object: one branch per read or write, no allocation.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::ClientTls;

/// A connected stream to an endpoint.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a TLS handshake used: the certificate generation (0 for plaintext)
/// and the client certificate's not-after time (Unix seconds), when known.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Handshake {
    pub(crate) generation: u64,
    pub(crate) client_not_after: Option<i64>,
}

/// Connects to `target` (`host:port`); with `tls`, performs the handshake
/// (SNI and verification against `server_name`, or the host).
pub(crate) async fn connect(target: &str, tls: Option<&ClientTls>) -> Result<(Transport, Handshake), String> {
    let tcp = TcpStream::connect(target).await.map_err(|e| e.to_string())?;
    // Without TCP_NODELAY small gRPC frames wait on Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Transport::Plain(tcp), Handshake::default()));
    };
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
    let (stream, generation) = tls
        .connect_with_generation(tcp, host)
        .await
        .map_err(|e| format!("TLS handshake with {target} failed: {e}"))?;
    let handshake = Handshake {
        generation,
        client_not_after: tls.client_not_after(generation),
    };
    Ok((Transport::Tls(Box::new(stream)), handshake))
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, data),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
