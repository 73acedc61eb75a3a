//! A minimal HTTP/2 server that refuses every stream with GOAWAY, politely
//! or in anger.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

/// A minimal HTTP/2 server (raw frames, no HPACK): it answers SETTINGS and
/// PING, and answers every request's HEADERS with `GOAWAY(last_stream_id:
/// 0, NO_ERROR)` — so every stream sent to it is, provably, unprocessed and
/// safe to send elsewhere.
///
/// [`RefusingBackend::start_resetting`] makes the other kind: it answers a
/// request's HEADERS with `GOAWAY(last_stream_id: that stream,
/// ENHANCE_YOUR_CALM)` and then closes with a TCP reset, the way a backend
/// closes when requests it will never read are still queued. The gateway then
/// sees the GOAWAY and, right after, a connection reset.
pub struct RefusingBackend {
    pub addr: SocketAddr,
    refused: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RefusingBackend {
    pub async fn start() -> RefusingBackend {
        Self::start_in(Mode::Refuse).await
    }

    pub async fn start_resetting() -> RefusingBackend {
        Self::start_in(Mode::CalmThenReset).await
    }

    async fn start_in(mode: Mode) -> RefusingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicU64::new(0));
        let counter = refused.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), refuse_streams(tcp, counter, mode)).await;
                });
            }
        });
        RefusingBackend { addr, refused, task }
    }

    /// Streams answered with GOAWAY.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for RefusingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Refuse,
    CalmThenReset,
}

async fn refuse_streams(mut tcp: tokio::net::TcpStream, refused: Arc<AtomicU64>, mode: Mode) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const HEADERS: u8 = 0x1;
    const GOAWAY: u8 = 0x7;
    const ACK: u8 = 0x1;
    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }
    // Frames leave as they are written, as an HTTP/2 server flushes them:
    // with Nagle's algorithm a GOAWAY written while an earlier frame awaits
    // its (delayed) ACK stays in the socket, and the reset below would
    // discard it unsent.
    tcp.set_nodelay(true)?;
    let mut preface = [0u8; 24];
    tcp.read_exact(&mut preface).await?;
    tcp.write_all(&frame(SETTINGS, 0, &[])).await?;
    loop {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).await?;
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let mut payload = vec![0u8; length];
        tcp.read_exact(&mut payload).await?;
        match kind {
            SETTINGS if flags & ACK == 0 => tcp.write_all(&frame(SETTINGS, ACK, &[])).await?,
            PING if flags & ACK == 0 => tcp.write_all(&frame(PING, ACK, &payload)).await?,
            HEADERS if matches!(mode, Mode::Refuse) => {
                refused.fetch_add(1, Ordering::Relaxed);
                // Last processed stream 0: this stream was never looked at.
                tcp.write_all(&frame(GOAWAY, 0, &[0; 8])).await?;
            }
            HEADERS => {
                refused.fetch_add(1, Ordering::Relaxed);
                const ENHANCE_YOUR_CALM: u32 = 0xb;
                let mut payload = [0u8; 8];
                // This stream counts as processed: its call is lost, not retried.
                payload[..4].copy_from_slice(&head[5..9]);
                payload[4..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
                tcp.write_all(&frame(GOAWAY, 0, &payload)).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                // Closing with a linger of zero sends a reset, as a close with unread data does.
                tcp.set_zero_linger()?;
                return Ok(());
            }
            _ => {}
        }
    }
}
