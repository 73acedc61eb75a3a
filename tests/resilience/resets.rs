//! The rapid-reset guard: a client that opens streams and resets them at
//! once loses its connection (GOAWAY ENHANCE_YOUR_CALM) after a few hundred,
//! while other clients' calls and the backend carry on; clients whose resets
//! are their own deadlines, or long streams they end, keep theirs.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::support::faults::FaultBackend;
use crate::support::{echo, echo_call_head, grpc_frame, h2_connection};
use crate::{edge, wait_for};

/// Opens a unary `testing.v1.Echo/Unary` call: its message sent, the
/// request left open.
async fn open_call(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    timeout: Option<&str>,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
    let mut request = echo_call_head(addr, "Unary");
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let ready = send.clone().ready().await?;
    *send = ready;
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false)?;
    stream.send_data(grpc_frame(&echo("x")), false)?;
    Ok((response, stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_every_stream_at_once_loses_its_connection_and_no_one_else_notices() {
    let backend = FaultBackend::start("target").await;
    backend.set_latency(Duration::from_millis(200));
    let edge = edge(&[&backend], "", "").await;
    let addr = edge.addr;

    // A well-behaved client on its own connection, calling all along.
    let mut client = edge.client().await;
    let bystander = tokio::spawn(async move {
        let mut answered = 0;
        for _ in 0..10 {
            client
                .unary(echo("bystander"))
                .await
                .expect("a bystander's call failed");
            answered += 1;
        }
        answered
    });

    // The attack: a batch of calls, a moment for the gateway to start them
    // upstream, and a reset for each. (A reset in the same read as its
    // HEADERS never reaches the gateway's code: the HTTP/2 layer drops
    // the stream before it is accepted.)
    let (mut send, connection) = h2_connection(addr).await;
    let attack_began = std::time::Instant::now();
    let mut opened = 0;
    'attack: while opened < 5_000 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            match open_call(&mut send, addr, None).await {
                Ok(call) => batch.push(call),
                Err(error) => {
                    println!("rapid reset: a call could not be opened after {opened} streams: {error}");
                    break 'attack;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        for (_response, stream) in &mut batch {
            stream.send_reset(h2::Reason::CANCEL);
        }
        opened += batch.len();
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .unwrap_or_else(|_| panic!("the attacking connection was never closed ({opened} streams opened)"))
        .unwrap();
    // The client learns why: the gateway reads what it still sends rather
    // than resetting the socket under the GOAWAY.
    let error = closed.expect_err("the connection ended without an error");
    assert!(error.is_go_away(), "{error:?}");
    assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{error:?}");
    // Closed soon after the 251st early reset (stream tasks report them
    // asynchronously, so a few more may have been opened).
    assert!((251..1_500).contains(&opened), "closed after {opened} streams");
    println!(
        "rapid reset: the connection was closed after {opened} streams, {:?} into the attack",
        attack_began.elapsed()
    );
    assert!(
        edge.gateway
            .render_metrics(false)
            .contains("grpc_edge_premature_reset_closes_total 1\n")
    );

    assert_eq!(bystander.await.unwrap(), 10);
    wait_for(
        &edge,
        "the cancelled calls to leave the backend",
        Duration::from_secs(3),
        || backend.in_flight() == 0,
    )
    .await;
    let seen = edge.endpoint(&backend);
    assert_eq!(seen.state, "healthy", "{seen:#?}");
    assert_eq!((seen.failures, seen.total_ejections), (0, 0), "{seen:#?}");
    // A new connection from the same client is served.
    let mut again = edge.client().await;
    again.unary(echo("after")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_at_the_clients_deadline_or_after_long_streams_keep_the_connection() {
    let backend = FaultBackend::start("slow").await;
    backend.set_latency(Duration::from_millis(1_500));
    let edge = edge(&[&backend], "", "").await;
    let addr = edge.addr;

    // Each on its own connection, every call reset by the client:
    let (deadlines, long_streams) = tokio::join!(
        // 600 calls whose client gives up at its own declared deadline,
        // each just before the gateway would answer DEADLINE_EXCEEDED;
        async {
            let (mut send, connection) = h2_connection(addr).await;
            // Reset 10 ms before the 800 ms deadline: 70 ms inside the
            // tenth the rule allows for the client's own scheduling, so a
            // busy machine does not make these look early; a reset that
            // comes after the gateway's answer does not count either.
            let mut resets = tokio::task::JoinSet::new();
            for _ in 0..600 {
                let (response, mut stream) = open_call(&mut send, addr, Some("800m")).await.unwrap();
                resets.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(790)).await;
                    stream.send_reset(h2::Reason::CANCEL);
                    drop(response);
                });
            }
            while resets.join_next().await.is_some() {}
            (send, connection)
        },
        // 600 calls the client ends well after a second.
        async {
            let (mut send, connection) = h2_connection(addr).await;
            let mut streams = Vec::new();
            for _ in 0..600 {
                streams.push(open_call(&mut send, addr, None).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(1_300)).await;
            for (_response, stream) in &mut streams {
                stream.send_reset(h2::Reason::CANCEL);
            }
            (send, connection)
        }
    );

    // Both connections still serve.
    tokio::time::sleep(Duration::from_millis(100)).await;
    backend.set_latency(Duration::ZERO);
    for (mut send, connection) in [deadlines, long_streams] {
        let (response, mut stream) = open_call(&mut send, addr, None).await.unwrap();
        stream.send_data(Bytes::new(), true).unwrap();
        let mut body = response.await.unwrap().into_body();
        while body.data().await.is_some() {}
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert!(!connection.is_finished());
    }
    assert!(
        edge.gateway
            .render_metrics(false)
            .contains("grpc_edge_premature_reset_closes_total 0\n")
    );
}
