//! The HTTP/2 frame relay (on unless `GRPC_EDGE_RELAY=off`, see
//! docs/relay.md), run as operators would run it: the real binary, real
//! tonic backends and clients. Every integration suite runs over the relay
//! (and again with it off, in CI); these are the cases that concern the
//! relay itself: hostile frames and HPACK from a client, a backend dying
//! mid-stream, and calls the relay hands to the h2 path on the same
//! connection.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;
use tokio_stream::StreamExt;

/// On even in CI's run with the relay off.
const RELAY: [(&str, &str); 1] = [("GRPC_EDGE_RELAY", "on")];

fn relay_gateway(backends: &[SocketAddr]) -> (tempfile::TempDir, GatewayProcess) {
    relay_gateway_with(backends, "")
}

fn relay_gateway_with(backends: &[SocketAddr], upstream_extra: &str) -> (tempfile::TempDir, GatewayProcess) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, config_yaml(backends, upstream_extra, "")).unwrap();
    let gateway = GatewayProcess::start_with_env(&config, &RELAY);
    (dir, gateway)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A literal field without indexing, new name: the simplest HPACK.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0, name.len() as u8];
    out.extend(name.as_bytes());
    out.push(value.len() as u8);
    out.extend(value.as_bytes());
    out
}

fn grpc_request_block(path: &str) -> Vec<u8> {
    [
        literal(":method", "POST"),
        literal(":scheme", "http"),
        literal(":path", path),
        literal(":authority", "relay.test"),
        literal("content-type", "application/grpc"),
        literal("te", "trailers"),
    ]
    .concat()
}

/// Opens a raw connection, sends the preface, SETTINGS and `attack`, and
/// reads until the gateway resets a stream or ends the connection; returns
/// that frame's type (RST_STREAM 3, GOAWAY 7) and error code.
fn refusal_after(addr: SocketAddr, attack: &[u8]) -> Option<(u8, u32)> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    tcp.write_all(&hello).unwrap();
    // The gateway may close before all of it is written.
    let _ = tcp.write_all(attack);
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let mut at = 0;
    loop {
        match tcp.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
        while received.len() >= at + 9 {
            let len = u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
            if received.len() < at + 9 + len {
                break;
            }
            let (kind, payload) = (received[at + 3], &received[at + 9..at + 9 + len]);
            let code_at = if kind == 7 { 4 } else { 0 };
            if (kind == 3 || kind == 7) && payload.len() >= code_at + 4 {
                let code = &payload[code_at..code_at + 4];
                return Some((kind, u32::from_be_bytes([code[0], code[1], code[2], code[3]])));
            }
            at += 9 + len;
        }
    }
}

const RST_STREAM: u8 = 3;
const GOAWAY: u8 = 7;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_connection_with_the_right_goaway() {
    let backend = Backend::start("b1").await;
    let (_dir, gateway) = relay_gateway(&[backend.addr]);
    let addr = gateway.addr;
    let request = grpc_request_block("/testing.v1.Echo/Unary");
    let cases: Vec<(&str, Vec<u8>, (u8, u32))> = vec![
        (
            "an index past the HPACK table",
            frame(1, 0x5, 1, &[0xff, 0x7f]),
            (GOAWAY, COMPRESSION_ERROR),
        ),
        (
            "a truncated HPACK string",
            frame(1, 0x5, 1, &[0x00, 0x10, b'a']),
            (GOAWAY, COMPRESSION_ERROR),
        ),
        (
            "an endless run of CONTINUATION frames",
            [
                frame(1, 0x0, 1, &request),
                (0..200).flat_map(|_| frame(9, 0x0, 1, &[0u8; 1000])).collect(),
            ]
            .concat(),
            (GOAWAY, ENHANCE_YOUR_CALM),
        ),
        (
            "a frame above the frame size",
            frame(0, 0, 1, &vec![0; 20_000]),
            (GOAWAY, FRAME_SIZE_ERROR),
        ),
        (
            "an even stream id",
            frame(1, 0x5, 2, &request),
            (GOAWAY, PROTOCOL_ERROR),
        ),
        (
            "a WINDOW_UPDATE of zero",
            frame(8, 0, 0, &[0, 0, 0, 0]),
            (GOAWAY, PROTOCOL_ERROR),
        ),
        (
            "a connection window above 2^31-1",
            frame(8, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            (GOAWAY, FLOW_CONTROL_ERROR),
        ),
        (
            "DATA on a stream never opened",
            frame(0, 0, 7, b"x"),
            (GOAWAY, PROTOCOL_ERROR),
        ),
        (
            "DATA after the end of the stream",
            [frame(1, 0x5, 1, &request), frame(0, 0, 1, b"late")].concat(),
            (RST_STREAM, STREAM_CLOSED),
        ),
        ("a PING of 7 bytes", frame(6, 0, 0, &[0; 7]), (GOAWAY, FRAME_SIZE_ERROR)),
        (
            "a PUSH_PROMISE from a client",
            frame(5, 0x4, 1, &[0, 0, 0, 2]),
            (GOAWAY, PROTOCOL_ERROR),
        ),
    ];
    for (what, attack, expected) in cases {
        let code = tokio::task::spawn_blocking(move || refusal_after(addr, &attack))
            .await
            .unwrap();
        assert_eq!(code, Some(expected), "{what}");
    }
    assert_eq!(backend.calls(), 0, "no hostile request reached the backend");
    // A well-behaved client is served throughout.
    let mut client = client(addr).await;
    let answer = client.unary(echo("still here")).await.unwrap().into_inner();
    assert_eq!(answer.message, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_preface_is_closed_without_a_reply() {
    let backend = Backend::start("b1").await;
    let (_dir, gateway) = relay_gateway(&[backend.addr]);
    let addr = gateway.addr;
    let received = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Starts like the preface (so it is sniffed as HTTP/2), then is not.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").unwrap();
        let mut received = Vec::new();
        let _ = tcp.read_to_end(&mut received);
        received
    })
    .await
    .unwrap();
    // At most our SETTINGS and a GOAWAY; never an answer.
    assert!(received.len() < 200, "{received:?}");
    let mut client = client(addr).await;
    client.unary(echo("fine")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_stream_fails_its_calls_fast_and_others_carry_on() {
    let doomed = Backend::start("doomed").await;
    let (_dir, gateway) = relay_gateway(&[doomed.addr]);
    let mut client = client(gateway.addr).await;
    // Warm up, so the relay has its own connection to the backend.
    for _ in 0..20 {
        client.unary(echo("warm")).await.unwrap();
    }
    let mut stream = client
        .server_stream(EchoRequest {
            repeat: 100,
            delay_ms: 50,
            ..echo("s")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    let killed = Instant::now();
    doomed.kill();
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => break status,
            Ok(None) => panic!("the stream ended normally"),
            Err(_) => panic!("the stream hung after its backend died"),
        }
    };
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    assert!(killed.elapsed() < Duration::from_secs(2), "{:?}", killed.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_relayed_calls_and_calls_for_the_h2_path() {
    let backend = Backend::start("b1").await;
    let (_dir, gateway) = relay_gateway(&[backend.addr]);
    let (mut send, _connection) = h2_connection(gateway.addr).await;
    let frame = grpc_frame(&echo("both"));
    // Native gRPC, then gRPC-Web, then a call to no route, all on the same connection.
    for (content_type, path, expected_status) in [
        ("application/grpc", "/testing.v1.Echo/Unary", "0"),
        ("application/grpc-web+proto", "/testing.v1.Echo/Unary", "0"),
        ("application/grpc", "/no.such.Service/Call", "12"),
        ("application/grpc", "/testing.v1.Echo/Unary", "0"),
    ] {
        send = send.ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", gateway.addr))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(frame.clone(), true).unwrap();
        let response = response.await.unwrap();
        let (head, mut body) = response.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        // gRPC-Web carries its status in a trailer frame at the end of the body.
        let status = head
            .headers
            .get("grpc-status")
            .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
            .map(|v| v.to_str().unwrap().to_string())
            .or_else(|| {
                let text = String::from_utf8_lossy(&data);
                text.split("grpc-status:")
                    .nth(1)
                    .map(|s| s.trim().chars().take_while(char::is_ascii_digit).collect())
            });
        assert_eq!(
            status.as_deref(),
            Some(expected_status),
            "{content_type} {path}: {head:?}"
        );
    }
    assert_eq!(backend.calls(), 3);
}

/// With the relay on, an endpoint's connections are one pool, counted and
/// capped together: relayed calls take slots on relay connections, and
/// gRPC-Web calls get a plain HTTP/2 connection of their own when the cap
/// allows (sparing them the relay's in-process bridge), else share the
/// relay connection through the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_and_h2_path_calls_share_one_pool_per_endpoint() {
    for (cap, connections) in [(4, 2), (1, 1)] {
        let pool = format!("pool:\n  max_connections_per_endpoint: {cap}");
        native_and_web_calls(&pool, connections).await;
    }
}

async fn native_and_web_calls(pool: &str, connections: u64) {
    let backend = support::faults::FaultBackend::start("b1").await;
    let (_dir, gateway) = relay_gateway_with(&[backend.addr], pool);
    native_and_web_calls_through(&gateway, &backend, connections, pool).await;
}

async fn native_and_web_calls_through(
    gateway: &GatewayProcess,
    backend: &support::faults::FaultBackend,
    connections: u64,
    what: &str,
) {
    use support::grpc_web_client::{Transport, WebClient, WebEncoding};
    let mut native = client(gateway.addr).await;
    let mut web = WebClient::connect(gateway.addr, Transport::Http1, WebEncoding::Binary).await;
    for round in 0..10 {
        native.unary(echo("native")).await.unwrap();
        let reply = web.unary(echo("web")).await;
        let status = reply.trailers.as_ref().and_then(|t| t.get("grpc-status"));
        assert_eq!(
            status.map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "round {round}: {:?}",
            reply.headers
        );
    }
    assert_eq!(backend.calls(), 20);
    assert_eq!(backend.connections(), connections, "{what}");
}

/// `GRPC_EDGE_RELAY` is read once, at start-up: `off` (or `0`, `false`)
/// leaves native gRPC to the h2 path, anything else keeps the relay, and a
/// value that means nothing is warned about. The log says which path
/// native gRPC takes, and the endpoint's connections show it: with the
/// relay, a relay connection and a plain one for the gRPC-Web calls; without
/// it, one plain connection for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_switch_is_read_at_start_up_and_said_in_the_log() {
    for (value, relayed, warned) in [
        ("on", true, false),
        ("off", false, false),
        ("FALSE", false, false),
        ("sideways", true, true),
    ] {
        let backend = support::faults::FaultBackend::start("b1").await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(&config, config_yaml(&[backend.addr], "", "")).unwrap();
        let gateway = GatewayProcess::start_with_env(&config, &[("GRPC_EDGE_RELAY", value)]);
        let what = format!("GRPC_EDGE_RELAY={value}");
        native_and_web_calls_through(&gateway, &backend, if relayed { 2 } else { 1 }, &what).await;
        // Log lines leave through a buffered writer: give it a moment.
        let says_which = |lines: &Vec<String>| lines.iter().any(|l| l.contains("native gRPC over HTTP/2 goes through"));
        for _ in 0..50 {
            if says_which(&gateway.stderr.lock().unwrap()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lines = gateway.stderr.lock().unwrap().clone();
        let said = lines
            .iter()
            .find(|line| line.contains("native gRPC over HTTP/2 goes through"))
            .unwrap_or_else(|| panic!("{value}: no line says which path native gRPC takes: {lines:#?}"));
        assert_eq!(said.contains("through the frame relay"), relayed, "{value}: {said}");
        let warning = lines.iter().any(|line| line.contains("the relay stays on"));
        assert_eq!(warning, warned, "{value}: {lines:#?}");
    }
}
