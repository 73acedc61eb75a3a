//! The byte stream under an upstream HTTP/2 connection: plain TCP, or TLS
//! (with the cluster's `ClientTls`, mTLS when configured). An enum rather
//! than a boxed trait object: one branch per read or write, no allocation.
//! It also notes every GOAWAY the server sends, for when the connection
//! then ends with an I/O error instead (see [`super::goaway_watch`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::goaway_watch::{FrameScan, LastGoAway};
use crate::tls::ClientTls;

/// A connected stream to an endpoint, watching the frames it reads for a
/// GOAWAY (see [`super::goaway_watch`]).
pub(crate) struct Transport {
    io: Io,
    scan: FrameScan,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-process connection to the HTTP/2 frame relay, which carries
    /// its streams on the relay's connection to the endpoint.
    Bridge(tokio::io::DuplexStream),
}

/// Reads left unread once a write failed, looking for the GOAWAY that
/// explains the failure, are bounded: the connection is dead anyway.
const DRAIN_AFTER_WRITE_ERROR: usize = 256 << 10;

/// What a TLS handshake used: the certificate generation (0 for plaintext)
/// and the client certificate's not-after time (Unix seconds), when known.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Handshake {
    pub(crate) generation: u64,
    pub(crate) client_not_after: Option<i64>,
}

impl Handshake {
    /// Whether a connection made with this handshake should retire now, a
    /// newer client certificate having been loaded since: at a random
    /// moment within the drain window (`deadline` keeps the one drawn), or
    /// at once if the certificate it was made with is about to expire.
    pub(crate) fn outdated(&self, tls: &ClientTls, deadline: &mut Option<tokio::time::Instant>) -> bool {
        if self.generation >= tls.generation() {
            return false;
        }
        let now = tokio::time::Instant::now();
        let deadline = *deadline.get_or_insert_with(|| now + tls.upstream_drain().mul_f64(fastrand::f64()));
        let expiring = self.client_not_after.is_some_and(|not_after| {
            let left = not_after - crate::tls::unix_now();
            left < crate::tls::CLIENT_EXPIRY_DRAIN.as_secs() as i64
        });
        expiring || now >= deadline
    }
}

/// Connects to `target` (`host:port`); with `tls`, performs the handshake
/// (SNI and verification against `server_name`, or the host).
pub(crate) async fn connect(target: &str, tls: Option<&ClientTls>) -> Result<(Transport, Handshake), String> {
    let tcp = TcpStream::connect(target).await.map_err(|e| e.to_string())?;
    // Without TCP_NODELAY small gRPC frames wait on Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Transport::new(Io::Plain(tcp)), Handshake::default()));
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
    Ok((Transport::new(Io::Tls(Box::new(stream))), handshake))
}

impl Transport {
    /// The h2 side of a bridge onto a relay connection.
    pub(crate) fn bridge(io: tokio::io::DuplexStream) -> Self {
        Self::new(Io::Bridge(io))
    }

    fn new(io: Io) -> Self {
        Self {
            io,
            scan: FrameScan::default(),
        }
    }

    /// Where the error code of the last GOAWAY read on this connection is kept.
    pub(crate) fn last_goaway(&self) -> LastGoAway {
        self.scan.last_goaway()
    }

    fn poll_read_io(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Bridge(s) => Pin::new(s).poll_read(cx, buf),
        };
        if result.is_ready() {
            self.scan.feed(&buf.filled()[before..]);
        }
        result
    }

    /// After a failed write, reads what the server sent before it closed:
    /// HTTP/2 will not read again, and the reason it closed (a GOAWAY) may
    /// be there, unread, ahead of the reset that failed the write.
    fn read_what_is_left(&mut self, cx: &mut Context<'_>) {
        let mut chunk = [0u8; 8192];
        let mut total = 0;
        while total < DRAIN_AFTER_WRITE_ERROR {
            let mut buf = ReadBuf::new(&mut chunk);
            match self.poll_read_io(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => total += buf.filled().len(),
                _ => return,
            }
        }
    }

    fn after_write<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &result {
            self.read_what_is_left(cx);
        }
        result
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_io(cx, buf)
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            Io::Bridge(s) => Pin::new(s).poll_write(cx, data),
        };
        this.after_write(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Bridge(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        };
        this.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Bridge(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Bridge(s) => Pin::new(s).poll_flush(cx),
        };
        this.after_write(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Bridge(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const GOAWAY_CALM: [u8; 17] = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xb];

    /// A server that sends `GOAWAY(ENHANCE_YOUR_CALM)` and closes with a
    /// reset, as one does with requests it never read still queued.
    async fn server_that_goes_away() -> (Transport, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tcp.write_all(&GOAWAY_CALM).await.unwrap();
            tcp.set_zero_linger().unwrap();
        });
        let (transport, _) = connect(&target, None).await.unwrap();
        (transport, server)
    }

    #[tokio::test]
    async fn a_goaway_read_before_the_reset_is_recorded() {
        let (mut transport, server) = server_that_goes_away().await;
        server.await.unwrap();
        let mut buf = [0u8; 64];
        while matches!(transport.read(&mut buf).await, Ok(n) if n > 0) {}
        assert_eq!(transport.last_goaway().reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
    }

    #[tokio::test]
    async fn a_goaway_left_unread_when_a_write_fails_is_recorded() {
        let (mut transport, server) = server_that_goes_away().await;
        server.await.unwrap();
        // Give the reset time to arrive, then write without ever reading.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(transport.last_goaway().reason(), None);
        let mut failed = false;
        for _ in 0..100 {
            if transport.write_all(&[0; 1024]).await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(failed, "writes to a reset connection kept succeeding");
        assert_eq!(transport.last_goaway().reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
    }
}
