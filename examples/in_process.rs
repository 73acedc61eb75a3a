//! A tonic service served in-process: the demo `OrderDesk` as REST/JSON,
//! gRPC-Web and native gRPC on one port, with no network hop to itself.
//!
//! The gateway hands each call to the tonic server as a direct tower call.
//! There is no backend listener at all: the only socket is the one clients
//! connect to.
//!
//! ```sh
//! cargo run --example in_process                             # 127.0.0.1:8080, until Ctrl-C
//! cargo run --example in_process -- --listen 127.0.0.1:3000
//! cargo run --example in_process -- --once                   # a free port, one call per protocol, exit
//! ```
//!
//! Then, from another terminal:
//!
//! ```sh
//! curl -s localhost:8080/v1/orders/1                  # REST/JSON
//! curl -sN localhost:8080/v1/orders/1:watch           # a server stream as NDJSON
//! grpcurl -plaintext -d '{"name":"orders/1"}' localhost:8080 demo.v1.OrderService/GetOrder
//! ```
//!
//! (`grpcurl` needs no `.proto` file: the gateway serves reflection.)

use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use grpc_edge::demo::pb::GetOrderRequest;
use grpc_edge::demo::pb::order_service_client::OrderServiceClient;
use grpc_edge::demo::{DESCRIPTOR_SET, OrderDesk};
use grpc_edge::{BuildError, Gateway, ServeOptions};
use http_body_util::Full;
use tokio::net::TcpListener;

mod support;
use support::{BoxError, check, http1, send};

/// The gateway: the demo descriptors (REST and gRPC-Web need the message
/// types) and the tonic server itself. No `.upstream`, no `.route`: an
/// in-process service takes every call to its own service name.
pub fn gateway() -> Result<Gateway, BuildError> {
    Gateway::builder()
        .descriptor_set(DESCRIPTOR_SET)
        .service(OrderDesk::new("in-process").into_server())
        .build()
}

pub use support::Options;

const USAGE: &str = "usage: cargo run --example in_process -- [--listen ADDR] [--once]";

/// Serves until Ctrl-C (or, with `--once`, until the self-check is done).
pub async fn run(options: Options) -> Result<(), BoxError> {
    let gateway = gateway()?;
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // `grpc_edge::serve` speaks HTTP/1.1 and h2c on the one port and, once
    // `stopped` resolves, drains: calls in flight finish, new ones are refused.
    let server = tokio::spawn(grpc_edge::serve(
        gateway,
        listener,
        async {
            let _ = stopped.await;
        },
        ServeOptions::default(),
    ));
    println!("OrderDesk in-process on http://{addr} (REST/JSON, gRPC-Web, native gRPC)");

    let result = if options.once {
        self_check(addr).await
    } else {
        println!("  curl -s http://{addr}/v1/orders/1");
        println!("  grpcurl -plaintext -d '{{\"name\":\"orders/1\"}}' {addr} demo.v1.OrderService/GetOrder");
        println!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await.map_err(BoxError::from)
    };
    let _ = stop.send(());
    server.await?;
    result
}

/// One call per protocol; every answer must come from the in-process desk.
pub async fn self_check(addr: SocketAddr) -> Result<(), BoxError> {
    let (status, _, body) = http1(addr, "GET", "/v1/orders/1", &[]).await?;
    println!(
        "REST      GET /v1/orders/1 -> {status} {}",
        String::from_utf8_lossy(&body)
    );
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    check(
        status == http::StatusCode::OK && json["servedBy"] == "in-process",
        "REST answer",
    )?;

    let request = GetOrderRequest {
        name: "orders/2".into(),
    };
    let (order, grpc_status) = grpc_web_unary(addr, "/demo.v1.OrderService/GetOrder", &request).await?;
    println!("gRPC-Web  GetOrder -> grpc-status {grpc_status}, {order:?}");
    check(grpc_status == "0" && order.served_by == "in-process", "gRPC-Web answer")?;

    let mut client = OrderServiceClient::connect(format!("http://{addr}")).await?;
    let order = client
        .get_order(GetOrderRequest {
            name: "orders/3".into(),
        })
        .await?
        .into_inner();
    println!("gRPC      GetOrder -> {order:?}");
    check(order.served_by == "in-process", "native gRPC answer")?;
    Ok(())
}

/// A unary gRPC-Web call as a browser makes it: one length-prefixed message
/// in, message frames and a trailer frame (flag 0x80) out.
async fn grpc_web_unary(
    addr: SocketAddr,
    path: &str,
    message: &impl prost::Message,
) -> Result<(grpc_edge::demo::pb::Order, String), BoxError> {
    let encoded = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(encoded.len())?.to_be_bytes());
    frame.extend_from_slice(&encoded);
    let request = http::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Full::new(Bytes::from(frame)))?;
    let (_, _, mut body) = send(addr, request).await?;
    let (mut reply, mut grpc_status) = (None, String::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = body.slice(5..(5 + len).min(body.len()));
        if body[0] & 0x80 == 0 {
            reply = Some(prost::Message::decode(payload.clone())?);
        } else {
            let trailers = String::from_utf8_lossy(&payload).into_owned();
            grpc_status = trailers
                .lines()
                .find_map(|line| line.strip_prefix("grpc-status:"))
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        body = body.slice((5 + len).min(body.len())..);
    }
    Ok((reply.ok_or("no message in the gRPC-Web answer")?, grpc_status))
}

#[tokio::main]
async fn main() -> ExitCode {
    support::main(USAGE, Options::parse, run).await
}
