//! An axum app or a gateway served on a loopback port, for tests of the
//! library API: stopped gracefully on request, aborted when dropped.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use grpc_edge::Gateway;
use tokio::sync::oneshot;

/// Something serving on a loopback port until dropped or stopped.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Serves an axum app the way `examples/embed_axum.rs` does (with `ConnectInfo`).
    pub async fn axum(app: Router) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Served {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Serves a gateway on its own listener (`grpc_edge::serve`).
    pub async fn gateway(gateway: Gateway) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(grpc_edge::serve(
            gateway,
            listener,
            async {
                let _ = stopped.await;
            },
            grpc_edge::ServeOptions::default(),
        ));
        Served {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the server did not stop")
            .unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}
