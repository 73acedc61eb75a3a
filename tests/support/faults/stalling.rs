//! An HTTP/2 backend whose event loop can be frozen, the way a backend is
//! frozen by a long GC pause or a container's CPU throttling.
//!
//! It is the `h2` server that hyper and tonic use, with its protection
//! against "rapid reset" attacks: when more than `reset_limit` streams were
//! reset by the peer before the server accepted them, it closes the
//! connection with `GOAWAY(ENHANCE_YOUR_CALM)`. A frozen backend reads
//! nothing; when it thaws it reads, in one go, every request a proxy sent
//! meanwhile and every cancel the proxy then relayed (client deadlines,
//! clients giving up), so a proxy in front of a paused backend trips that
//! protection through no fault of the backend's.
//!
//! Every stream it accepts gets an empty gRPC message and `grpc-status: 0`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub struct StallingBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    stalled: AtomicBool,
    thawed: Notify,
    answered: AtomicU64,
    connections: AtomicU64,
}

impl StallingBackend {
    /// Serves on a loopback port; `reset_limit` is h2's
    /// `max_pending_accept_reset_streams` (hyper's default is 20).
    pub async fn start(reset_limit: usize) -> StallingBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(20), serve(tcp, reset_limit, state)).await;
                });
            }
        });
        StallingBackend { addr, state, task }
    }

    /// Freezes every connection once it has accepted its current stream.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::Release);
    }

    pub fn thaw(&self) {
        self.state.stalled.store(false, Ordering::Release);
        self.state.thawed.notify_waiters();
    }

    /// Calls answered.
    pub fn answered(&self) -> u64 {
        self.state.answered.load(Ordering::Relaxed)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for StallingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(tcp: tokio::net::TcpStream, reset_limit: usize, state: Arc<State>) {
    let Ok(mut connection) = h2::server::Builder::new()
        .max_pending_accept_reset_streams(reset_limit)
        .handshake::<_, Bytes>(tcp)
        .await
    else {
        return;
    };
    loop {
        // Frozen: the connection is not polled, so nothing is read.
        while state.stalled.load(Ordering::Acquire) {
            let thawed = state.thawed.notified();
            if !state.stalled.load(Ordering::Acquire) {
                break;
            }
            thawed.await;
        }
        let Some(Ok((_request, mut respond))) = connection.accept().await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let head = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            let _ = send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            if send.send_trailers(trailers).is_ok() {
                state.answered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
